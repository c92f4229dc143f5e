// Crash images from a ring recording: the ALICE / CrashMonkey idea done in
// userspace (reference/reliability.md §2.4, design T1).
//
// Input: a snapshot of the volume directory taken before the recorded run
// (every file's bytes and inode) and the ring's recording of the run (every
// submission and completion with its file identity, a copy of each write's
// bytes, file paths at first sight, directory listings at each directory
// fsync). Files are tracked by inode, not by path, because the WAL renames
// segments outside the ring.
//
// The disk model (strict, as in durability_model.ts):
//  - a write is durable once it completed with RWF_DSYNC, or once an fsync or
//    fdatasync of its inode that was submitted after the write completed has
//    completed; a punched hole is a write of zeros;
//  - a directory listing is durable once the directory fsync that recorded it
//    completed; until then an inode has, chosen per inode, its durable name
//    (or is absent when it has none) or any name it was seen with since that
//    listing was taken (a first sight of a new file, a later listing);
//  - at a crash, every write submitted and not durable is, per seeded choice,
//    dropped, applied whole, or torn: a random subset of its 512-byte sectors
//    applied, the old content in the others. Later writes win over earlier
//    ones sector by sector (submission order), and a durable write is never
//    undone by an earlier one.
//
// Crash points sit just before the next event that changes what a crash may
// leave (a write submitted, a sync or DSYNC write completed, a new name seen),
// so every acknowledgement the caller marked in between has been observed when
// the crash happens. A point right after the completion of a sync or a DSYNC
// write is a persistence point; the others fall between.
//
// Not modelled: writes outside the ring (the recording cannot see them; the
// workspace notices files changed that way after recovery and rewrites them
// whole), directories created during the run (reported as a finding), and
// overlapping writes in flight together (ordered by submission).
//
// Images are materialized into one working directory per process, incrementally:
// per inode the builder keeps the durable baseline at the current point and
// rewrites only the sectors that differ from what the directory holds (the
// previous image's choices, newly durable writes, and whatever recovery
// itself wrote, known from a recording of the recovery run). Directories are
// put back by inode after recovery (segments it created or recycled).
import * as fs from 'node:fs';
import * as path from 'node:path';

import { decodeDirListing, OpKind, OpPurpose, RECORD_BIT_CHANGED, RECORD_BIT_FORCED, type RecordingEvent, RWF_DSYNC } from '../../lib/native/ring';

export const SECTOR_BYTES = 512;
const ZERO_SECTOR = Buffer.alloc(SECTOR_BYTES);

// ---- snapshot of a directory tree -------------------------------------------

export interface TreeFile {
  rel: string; // path relative to the root, '/' separated
  dev: number;
  ino: number;
  content: Buffer;
}

export interface TreeDir {
  rel: string; // '' for the root
  dev: number;
  ino: number;
}

export interface TreeSnapshot {
  files: TreeFile[];
  dirs: TreeDir[];
}

// Every regular file (with its bytes) and directory under root.
export function snapshotTree(root: string): TreeSnapshot {
  const out: TreeSnapshot = { files: [], dirs: [] };
  const walk = (rel: string): void => {
    const full = path.join(root, rel);
    const st = fs.statSync(full);
    out.dirs.push({ rel, dev: st.dev, ino: st.ino });
    for (const name of fs.readdirSync(full).sort()) {
      const childRel = rel === '' ? name : `${rel}/${name}`;
      const cst = fs.lstatSync(path.join(root, childRel));
      if (cst.isDirectory()) walk(childRel);
      else if (cst.isFile()) {
        out.files.push({ rel: childRel, dev: cst.dev, ino: cst.ino, content: fs.readFileSync(path.join(root, childRel)) });
      }
    }
  };
  walk('');
  return out;
}

// ---- the model built from a recording ----------------------------------------

export interface WriteModel {
  id: number;
  inode: string; // "dev:ino"
  offsetBytes: number;
  lengthBytes: number;
  data: Uint8Array | null; // null: zeros (a punched hole)
  submitSeq: number;
  completeSeq: number; // Infinity while in flight at the end of the recording
  ok: boolean;
  dsync: boolean;
  durableSeq: number; // Infinity when never durable
  purpose: OpPurpose;
  a: number; // the owner's trace values (a WAL group: its LSN range)
  b: number;
}

interface Listing {
  seq: number; // of the dir event (recorded when its fsync was submitted)
  completeSeq: number;
  ok: boolean;
  names: Map<string, string>; // name -> inode (regular files only)
}

interface DirModel {
  key: string;
  rel: string;
  initial: Map<string, string>;
  listings: Listing[];
}

interface InFlight {
  write?: WriteModel;
  sync?: SyncModel;
  listing?: Listing; // a directory fsync: the listing it persists
}

interface Sighting {
  seq: number;
  inode: string;
  dir: string;
  name: string;
}

export interface Mark {
  seq: number;
  kind: number;
  a: number;
  b: number;
}

export interface CrashPoint {
  index: number;
  seq: number; // the crash happens after every event with seq <= this
  persistence: boolean; // right after a completed sync or DSYNC write
  pendingWrites: number; // submitted, not durable
  uncertainNames: number; // inodes whose name is not durable yet
}

export interface InodeModel {
  key: string;
  initial: Buffer;
  writes: WriteModel[]; // in submission order
  sizeMaxBytes: number;
}

export interface SyncModel {
  inode: string;
  submitSeq: number;
  completeSeq: number;
  ok: boolean;
  dir: boolean;
}

export interface ModelFinding {
  kind: 'buffer_changed_in_flight' | 'unknown_inode' | 'outside_root';
  seq: number;
  detail: string;
}

export function inodeKey(dev: number, ino: number): string {
  return `${dev}:${ino}`;
}

export class CrashModel {
  readonly inodes = new Map<string, InodeModel>();
  readonly writes: WriteModel[] = [];
  readonly dirs = new Map<string, DirModel>();
  readonly marks: Mark[] = [];
  readonly findings: ModelFinding[] = [];
  readonly syncs: SyncModel[] = [];
  private readonly sightings: Sighting[] = [];
  private readonly dirByRel = new Map<string, string>();
  private readonly eventSeqs: number[] = [];
  private readonly changeSeqs: { seq: number; persistence: boolean }[] = [];
  private pendingCache: { seq: number; writes: WriteModel[] } | undefined;
  private namesCache = new Map<string, unknown>();

  constructor(
    readonly root: string,
    readonly initial: TreeSnapshot,
    events: readonly RecordingEvent[],
  ) {
    for (const d of initial.dirs) {
      const key = inodeKey(d.dev, d.ino);
      this.dirs.set(key, { key, rel: d.rel, initial: new Map(), listings: [] });
      this.dirByRel.set(d.rel, key);
    }
    for (const f of initial.files) {
      const key = inodeKey(f.dev, f.ino);
      this.inodes.set(key, { key, initial: f.content, writes: [], sizeMaxBytes: f.content.length });
      const { dir, name } = splitRel(f.rel);
      this.dirs.get(this.dirByRel.get(dir)!)!.initial.set(name, key);
    }
    this.ingest(events);
  }

  private inode(key: string): InodeModel {
    let m = this.inodes.get(key);
    if (m === undefined) {
      m = { key, initial: Buffer.alloc(0), writes: [], sizeMaxBytes: 0 };
      this.inodes.set(key, m);
    }
    return m;
  }

  private ingest(events: readonly RecordingEvent[]): void {
    const bySlot = new Map<number, InFlight>();
    let pendingListing: Listing | undefined;
    for (const e of events) {
      this.eventSeqs.push(e.seq);
      switch (e.type) {
        case 'mark':
          this.marks.push({ seq: e.seq, kind: e.kind, a: e.a, b: e.b });
          break;
        case 'file':
          this.onSighting(e);
          this.changeSeqs.push({ seq: e.seq, persistence: false });
          break;
        case 'dir':
          pendingListing = this.onListing(e);
          this.changeSeqs.push({ seq: e.seq, persistence: false });
          break;
        case 'submit':
          bySlot.set(e.slot, this.onSubmit(e, pendingListing));
          if (e.kind === OpKind.fsync || e.kind === OpKind.fdatasync) pendingListing = undefined;
          break;
        case 'complete': {
          const op = bySlot.get(e.slot);
          bySlot.delete(e.slot);
          if (op?.write !== undefined) this.onWriteComplete(op.write, e);
          if (op?.sync !== undefined) this.onSyncComplete(op.sync, op.listing, e);
          break; // op undefined: submitted before the recording started
        }
        default:
          assertNever(e.type);
      }
    }
  }

  private onSubmit(e: RecordingEvent, pendingListing: Listing | undefined): InFlight {
    const key = inodeKey(e.dev, e.ino);
    if ((e.bits & RECORD_BIT_FORCED) !== 0) return {}; // fault injection: never reached the disk
    if (e.kind === OpKind.write || e.kind === OpKind.punchHole) {
      if (e.kind === OpKind.write && e.data === undefined) throw new Error(`write #${e.seq} was recorded without its bytes`);
      const w: WriteModel = {
        id: this.writes.length,
        inode: key,
        offsetBytes: e.offsetBytes,
        lengthBytes: e.lengthBytes,
        data: e.kind === OpKind.write ? e.data! : null,
        submitSeq: e.seq,
        completeSeq: Infinity,
        ok: false,
        dsync: e.kind === OpKind.write && (e.flags & RWF_DSYNC) !== 0,
        durableSeq: Infinity,
        purpose: e.purpose,
        a: e.a,
        b: e.b,
      };
      this.writes.push(w);
      const m = this.inode(key);
      m.writes.push(w);
      m.sizeMaxBytes = Math.max(m.sizeMaxBytes, w.offsetBytes + w.lengthBytes);
      this.changeSeqs.push({ seq: e.seq, persistence: false });
      return { write: w };
    }
    if (e.kind === OpKind.fsync || e.kind === OpKind.fdatasync) {
      const sync: SyncModel = { inode: key, submitSeq: e.seq, completeSeq: Infinity, ok: false, dir: this.dirs.has(key) };
      this.syncs.push(sync);
      return sync.dir && pendingListing !== undefined ? { sync, listing: pendingListing } : { sync };
    }
    return {};
  }

  private onSighting(e: RecordingEvent): void {
    const full = Buffer.from(e.data!).toString('utf8');
    const rel = path.relative(this.root, full);
    if (rel.startsWith('..') || path.isAbsolute(rel)) {
      this.findings.push({ kind: 'outside_root', seq: e.seq, detail: full });
      return;
    }
    const key = inodeKey(e.dev, e.ino);
    if (this.dirs.has(key)) return;
    const { dir, name } = splitRel(rel.split(path.sep).join('/'));
    const dirKey = this.dirByRel.get(dir);
    if (dirKey === undefined) {
      this.findings.push({ kind: 'unknown_inode', seq: e.seq, detail: `${full}: its directory was created during the recording` });
      return;
    }
    this.sightings.push({ seq: e.seq, inode: key, dir: dirKey, name });
  }

  private onListing(e: RecordingEvent): Listing | undefined {
    const key = inodeKey(e.dev, e.ino);
    const dir = this.dirs.get(key);
    if (dir === undefined) return undefined;
    const names = new Map<string, string>();
    for (const entry of decodeDirListing(e.data!)) {
      if ((entry.mode & 0o170000) !== 0o100000) continue; // regular files only
      const ikey = inodeKey(e.dev, entry.ino);
      names.set(entry.name, ikey);
      if (!this.inodes.has(ikey) && entry.sizeBytes > 0) {
        this.findings.push({ kind: 'unknown_inode', seq: e.seq, detail: `${dir.rel}/${entry.name}: content never seen` });
      }
      this.inode(ikey);
    }
    const listing: Listing = { seq: e.seq, completeSeq: Infinity, ok: false, names };
    dir.listings.push(listing);
    return listing;
  }

  private onWriteComplete(w: WriteModel, e: RecordingEvent): void {
    w.completeSeq = e.seq;
    w.ok = w.data === null ? e.result >= 0 : e.result === w.lengthBytes;
    if ((e.bits & RECORD_BIT_CHANGED) !== 0) {
      this.findings.push({
        kind: 'buffer_changed_in_flight',
        seq: e.seq,
        detail: `write of ${w.lengthBytes} bytes at ${w.offsetBytes} (purpose ${w.purpose}): its buffer changed before it completed`,
      });
    }
    if (w.ok && w.dsync) {
      w.durableSeq = e.seq;
      this.changeSeqs.push({ seq: e.seq, persistence: true });
    }
  }

  private onSyncComplete(sync: SyncModel, listing: Listing | undefined, e: RecordingEvent): void {
    sync.completeSeq = e.seq;
    sync.ok = e.result >= 0;
    if (!sync.ok) return;
    this.changeSeqs.push({ seq: e.seq, persistence: true });
    if (listing !== undefined) {
      listing.completeSeq = e.seq;
      listing.ok = true;
    }
    for (const w of this.inodes.get(sync.inode)?.writes ?? []) {
      if (w.ok && w.completeSeq < sync.submitSeq && w.durableSeq === Infinity) w.durableSeq = e.seq;
    }
  }

  // The crash points: one just before each event that changes the disk state
  // (so the marks recorded after the previous change are included).
  points(): CrashPoint[] {
    const changes = [...this.changeSeqs].sort((x, y) => x.seq - y.seq);
    const seqs = this.eventSeqs;
    const out: CrashPoint[] = [];
    let e = 0;
    for (let i = 0; i < changes.length; i++) {
      const next = i + 1 < changes.length ? changes[i + 1]!.seq : Infinity;
      // The last event before the next change.
      while (e + 1 < seqs.length && seqs[e + 1]! < next) e++;
      const seq = seqs[e]!;
      if (out.length > 0 && out[out.length - 1]!.seq === seq) {
        out[out.length - 1]!.persistence ||= changes[i]!.persistence;
        continue;
      }
      out.push({ index: out.length, seq, persistence: changes[i]!.persistence, pendingWrites: 0, uncertainNames: 0 });
    }
    for (const p of out) {
      p.pendingWrites = this.writes.filter((w) => w.submitSeq <= p.seq && w.durableSeq > p.seq).length;
      p.uncertainNames = this.nameChoices(p.seq).length;
    }
    return out;
  }

  // Per inode whose name at seq is not durable: the names it may have
  // (null: absent), the durable one first.
  nameChoices(seq: number): { dir: string; inode: string; names: (string | null)[] }[] {
    return this.memo(`c${seq}`, () => this.computeNameChoices(seq));
  }

  private memo<T>(key: string, compute: () => T): T {
    if (!this.namesCache.has(key)) {
      if (this.namesCache.size > 64) this.namesCache.clear();
      this.namesCache.set(key, compute());
    }
    return this.namesCache.get(key) as T;
  }

  private computeNameChoices(seq: number): { dir: string; inode: string; names: (string | null)[] }[] {
    const out: { dir: string; inode: string; names: (string | null)[] }[] = [];
    for (const dir of this.dirs.values()) {
      // The durable listing, and every name an inode had since it was taken:
      // any of those renames (or creations) may have reached the disk.
      let durable = dir.initial;
      let durableSeq = 0;
      for (const l of dir.listings) {
        if (l.ok && l.completeSeq <= seq) {
          durable = l.names;
          durableSeq = l.seq;
        }
      }
      const durableName = invert(durable);
      const candidates = new Map<string, Set<string | null>>();
      const add = (inode: string, name: string | null): void => {
        let s = candidates.get(inode);
        if (s === undefined) {
          candidates.set(inode, (s = new Set()));
          s.add(durableName.get(inode) ?? null);
        }
        s.add(name);
      };
      for (const l of dir.listings) {
        if (l.seq <= durableSeq || l.seq > seq) continue;
        const names = invert(l.names);
        for (const inode of new Set([...durableName.keys(), ...names.keys()])) add(inode, names.get(inode) ?? null);
      }
      for (const s of this.sightings) {
        if (s.dir === dir.key && s.seq > durableSeq && s.seq <= seq) add(s.inode, s.name);
      }
      for (const [inode, names] of candidates) {
        if (names.size > 1) out.push({ dir: dir.key, inode, names: [...names] });
      }
    }
    return out;
  }

  // Where each inode is at seq when every name is the durable one, or (newest)
  // the latest one known.
  durableNames(seq: number, newest = false): Map<string, { dir: string; name: string }> {
    return this.memo(`${newest ? 'n' : 'd'}${seq}`, () => this.computeNames(seq, newest));
  }

  private computeNames(seq: number, newest: boolean): Map<string, { dir: string; name: string }> {
    const out = new Map<string, { dir: string; name: string }>();
    for (const dir of this.dirs.values()) {
      let names = dir.initial;
      for (const l of dir.listings) if (newest ? l.seq <= seq : l.ok && l.completeSeq <= seq) names = l.names;
      for (const [name, inode] of names) out.set(inode, { dir: dir.key, name });
    }
    return out;
  }

  dirRel(dirKey: string): string {
    return this.dirs.get(dirKey)!.rel;
  }

  // Writes submitted and not durable at seq, in submission order.
  pendingAt(seq: number): WriteModel[] {
    if (this.pendingCache?.seq !== seq) {
      this.pendingCache = { seq, writes: this.writes.filter((w) => w.submitSeq <= seq && w.durableSeq > seq) };
    }
    return this.pendingCache.writes;
  }

  // Marks observed before a crash at seq.
  marksUpTo(seq: number): Mark[] {
    return this.marks.filter((m) => m.seq <= seq);
  }
}

function assertNever(x: never): never {
  throw new Error(`unexpected value ${String(x)}`);
}

function splitRel(rel: string): { dir: string; name: string } {
  const i = rel.lastIndexOf('/');
  return i < 0 ? { dir: '', name: rel } : { dir: rel.slice(0, i), name: rel.slice(i + 1) };
}

function invert(names: Map<string, string>): Map<string, string> {
  const out = new Map<string, string>();
  for (const [name, inode] of names) out.set(inode, name);
  return out;
}

// ---- one crash image ----------------------------------------------------------

export type WriteChoice = 'drop' | 'whole' | boolean[]; // boolean[]: torn, per sector applied

export interface ImageSpec {
  point: CrashPoint;
  choices: Map<number, WriteChoice>; // by write id, for every pending write
  names: Map<string, { dir: string; name: string } | null>; // inode -> where it is (null: absent)
  // Planted bugs (canaries): a durable write left out, or junk in one sector.
  dropDurable?: number; // write id
  junk?: { inode: string; sector: number };
  key: string; // identifies the choices (distinct images have distinct keys)
}

export interface SampleOptions {
  dropWeight?: number;
  wholeWeight?: number;
  tornWeight?: number;
}

// Draws one image at point p with the seeded rng.
export function sampleImage(model: CrashModel, p: CrashPoint, rand: () => number, options: SampleOptions = {}): ImageSpec {
  const wd = options.dropWeight ?? 1;
  const ww = options.wholeWeight ?? 1;
  const wt = options.tornWeight ?? 1;
  const choices = new Map<number, WriteChoice>();
  const keyParts: string[] = [];
  for (const w of model.pendingAt(p.seq)) {
    const r = rand() * (wd + ww + wt);
    const sectors = Math.ceil(w.lengthBytes / SECTOR_BYTES);
    let c: WriteChoice;
    if (r < wd) c = 'drop';
    else if (r < wd + ww || sectors < 2) c = 'whole';
    else {
      const mask = Array.from({ length: sectors }, () => rand() < 0.5);
      // A torn write applies some sectors and not others.
      mask[Math.floor(rand() * sectors)] = true;
      mask[Math.floor(rand() * sectors)] = false;
      c = mask.every(Boolean) ? 'whole' : mask;
    }
    choices.set(w.id, c);
    keyParts.push(`${w.id}:${c === 'drop' ? 'd' : c === 'whole' ? 'w' : maskKey(c)}`);
  }
  const names = new Map<string, { dir: string; name: string } | null>(model.durableNames(p.seq));
  for (const choice of model.nameChoices(p.seq)) {
    const k = Math.floor(rand() * choice.names.length);
    const name = choice.names[k]!;
    names.set(choice.inode, name === null ? null : { dir: choice.dir, name });
    keyParts.push(`n${choice.inode}:${k}`);
  }
  resolveNameClashes(model, p, names);
  return { point: p, choices, names, key: `${p.index}|${keyParts.join(',')}` };
}

function maskKey(mask: boolean[]): string {
  let s = '';
  for (let i = 0; i < mask.length; i += 4) {
    let v = 0;
    for (let j = 0; j < 4 && i + j < mask.length; j++) if (mask[i + j]) v |= 1 << j;
    s += v.toString(16);
  }
  return s;
}

// Two inodes may not share a name: where a mix of old and new names clashes,
// both take their newest names.
function resolveNameClashes(model: CrashModel, p: CrashPoint, names: Map<string, { dir: string; name: string } | null>): void {
  const seen = new Map<string, string>();
  const newest = model.durableNames(p.seq, true);
  for (const [inode, where] of [...names]) {
    if (where === null) continue;
    const k = `${where.dir}/${where.name}`;
    const other = seen.get(k);
    if (other === undefined) {
      seen.set(k, inode);
      continue;
    }
    names.set(inode, newest.get(inode) ?? null);
    names.set(other, newest.get(other) ?? null);
  }
}

// The reference semantics, sector by sector (slow; for checking the builder
// and for planted images): the content of one sector of inode in image spec.
export function referenceSector(model: CrashModel, spec: ImageSpec, inode: string, sector: number): Buffer | undefined {
  const m = model.inodes.get(inode)!;
  const start = sector * SECTOR_BYTES;
  let content: Buffer | undefined =
    start < m.initial.length ? padSector(m.initial.subarray(start, start + SECTOR_BYTES)) : undefined;
  for (const w of m.writes) {
    if (w.submitSeq > spec.point.seq) break;
    if (start < w.offsetBytes || start >= w.offsetBytes + w.lengthBytes) continue;
    const index = (start - w.offsetBytes) / SECTOR_BYTES;
    if (!writeApplies(spec, w, index)) continue;
    content = w.data === null ? Buffer.alloc(SECTOR_BYTES) : Buffer.from(w.data.subarray(start - w.offsetBytes, start - w.offsetBytes + SECTOR_BYTES));
  }
  if (spec.junk !== undefined && spec.junk.inode === inode && spec.junk.sector === sector) content = junkSector(sector);
  return content;
}

function writeApplies(spec: ImageSpec, w: WriteModel, sectorIndex: number): boolean {
  if (w.submitSeq > spec.point.seq) return false;
  if (w.durableSeq <= spec.point.seq) return spec.dropDurable !== w.id;
  const c = spec.choices.get(w.id);
  if (c === undefined || c === 'drop') return false;
  return c === 'whole' || c[sectorIndex] === true;
}

function padSector(b: Buffer): Buffer {
  if (b.length === SECTOR_BYTES) return Buffer.from(b);
  const out = Buffer.alloc(SECTOR_BYTES);
  b.copy(out);
  return out;
}

export function junkSector(sector: number): Buffer {
  const b = Buffer.alloc(SECTOR_BYTES);
  for (let i = 0; i < SECTOR_BYTES; i += 4) b.writeUInt32LE((0xdeadbeef ^ Math.imul(sector + 1, 2654435761) ^ i) >>> 0, i);
  return b;
}

// ---- materializing images -------------------------------------------------------

// Where an overlaid sector's bytes come from: a sector of a recorded write
// (write id * 65536 + sector index in the write), or a buffer of its own.
type Source = number | Buffer;
const SOURCE_SECTORS = 65536;

interface InodeState {
  model: InodeModel;
  base: Buffer; // durable content at the current point (sizeMaxBytes)
  owner: Float64Array; // per sector: submitSeq of the durable write that set it (0: initial)
  baseSizeBytes: number;
  applied: Set<number>; // ids of writes in base
  dirty: Set<number>; // sectors to rewrite: base changed or recovery wrote there
  overlay: Map<number, Source>; // the current image's sectors that differ from base
  // The working file: where it is and its descriptor (null: absent).
  where: { dir: string; name: string } | null;
  fd: number;
  workIno: number;
  fileSizeBytes: number; // what the working file holds
  mtimeNs: bigint;
}

export interface MaterializeStats {
  images: number;
  bytesWritten: number;
  filesRecreated: number;
  renames: number;
  recoverySectors: number; // rewritten because recovery wrote there
  unexplainedFiles: number; // rewritten whole: changed outside the recording
}

export class ImageWorkspace {
  readonly stats: MaterializeStats = { images: 0, bytesWritten: 0, filesRecreated: 0, renames: 0, recoverySectors: 0, unexplainedFiles: 0 };
  private readonly states = new Map<string, InodeState>();
  private readonly pendingByPoint: WriteModel[]; // writes by durableSeq
  private durableCursor = 0;
  private pointSeq = -1;
  private spec: ImageSpec | undefined;
  private readonly scratch = Buffer.alloc(1 << 20);

  constructor(
    private readonly model: CrashModel,
    readonly dir: string,
  ) {
    fs.rmSync(dir, { recursive: true, force: true });
    for (const d of [...model.dirs.values()].sort((x, y) => x.rel.length - y.rel.length)) {
      fs.mkdirSync(path.join(dir, d.rel), { recursive: true });
    }
    for (const m of model.inodes.values()) {
      const base = Buffer.alloc(roundUp(Math.max(m.sizeMaxBytes, m.initial.length), SECTOR_BYTES));
      m.initial.copy(base);
      this.states.set(m.key, {
        model: m,
        base,
        owner: new Float64Array(base.length / SECTOR_BYTES),
        baseSizeBytes: m.initial.length,
        applied: new Set(),
        dirty: new Set(),
        overlay: new Map(),
        where: null,
        fd: -1,
        workIno: 0,
        fileSizeBytes: 0,
        mtimeNs: 0n,
      });
    }
    this.pendingByPoint = model.writes.filter((w) => w.durableSeq !== Infinity).sort((x, y) => x.durableSeq - y.durableSeq);
  }

  // Moves the durable baseline forward to seq (points must come in order).
  private advance(seq: number): void {
    if (seq < this.pointSeq) throw new Error(`crash points must be materialized in order (${seq} after ${this.pointSeq})`);
    this.pointSeq = seq;
    while (this.durableCursor < this.pendingByPoint.length && this.pendingByPoint[this.durableCursor]!.durableSeq <= seq) {
      const w = this.pendingByPoint[this.durableCursor++]!;
      const st = this.states.get(w.inode)!;
      st.applied.add(w.id);
      const first = w.offsetBytes / SECTOR_BYTES;
      const count = Math.ceil(w.lengthBytes / SECTOR_BYTES);
      for (let i = 0; i < count; i++) {
        const s = first + i;
        if (st.owner[s]! > w.submitSeq) continue; // a later durable write holds it
        st.owner[s] = w.submitSeq;
        if (w.data === null) st.base.fill(0, s * SECTOR_BYTES, (s + 1) * SECTOR_BYTES);
        else st.base.set(w.data.subarray(i * SECTOR_BYTES, (i + 1) * SECTOR_BYTES), s * SECTOR_BYTES);
        st.dirty.add(s);
      }
      st.baseSizeBytes = Math.max(st.baseSizeBytes, w.offsetBytes + w.lengthBytes);
    }
  }

  // Writes image spec into the working directory.
  materialize(spec: ImageSpec): void {
    this.advance(spec.point.seq);
    this.spec = spec;
    const overlays = this.overlays(spec);
    for (const st of this.states.values()) {
      const where = spec.names.get(st.model.key) ?? null;
      const next = overlays.get(st.model.key) ?? new Map<number, Source>();
      this.place(st, where);
      if (st.where === null) {
        st.overlay = next;
        continue;
      }
      const sectors = new Set<number>([...st.dirty, ...st.overlay.keys(), ...next.keys()]);
      st.overlay = next;
      st.dirty.clear();
      this.writeSectors(st, [...sectors].sort((x, y) => x - y));
      let size = st.baseSizeBytes;
      for (const s of next.keys()) size = Math.max(size, Math.min((s + 1) * SECTOR_BYTES, st.base.length));
      if (size !== st.fileSizeBytes) {
        fs.ftruncateSync(st.fd, size);
        st.fileSizeBytes = size;
      }
      st.mtimeNs = fs.fstatSync(st.fd, { bigint: true }).mtimeNs;
    }
    this.stats.images++;
  }

  // Per inode, the sectors of spec that differ from the baseline.
  private overlays(spec: ImageSpec): Map<string, Map<number, Source>> {
    const out = new Map<string, Map<number, Source>>();
    const get = (inode: string): Map<number, Source> => {
      let m = out.get(inode);
      if (m === undefined) out.set(inode, (m = new Map()));
      return m;
    };
    // Pending writes in submission order (sampleImage adds them in that order).
    for (const [id, c] of spec.choices) {
      const w = this.model.writes[id]!;
      if (c === 'drop') continue;
      const st = this.states.get(w.inode)!;
      const first = w.offsetBytes / SECTOR_BYTES;
      const count = Math.ceil(w.lengthBytes / SECTOR_BYTES);
      const m = get(w.inode);
      for (let i = 0; i < count; i++) {
        if (c !== 'whole' && !c[i]) continue;
        const s = first + i;
        if (st.owner[s]! > w.submitSeq) continue; // a later durable write wins
        m.set(s, w.data === null ? ZERO_SECTOR : id * SOURCE_SECTORS + i);
      }
    }
    if (spec.dropDurable !== undefined) {
      const w = this.model.writes[spec.dropDurable]!;
      const m = get(w.inode);
      const count = Math.ceil(w.lengthBytes / SECTOR_BYTES);
      for (let i = 0; i < count; i++) {
        const s = w.offsetBytes / SECTOR_BYTES + i;
        m.set(s, referenceSector(this.model, spec, w.inode, s) ?? ZERO_SECTOR);
      }
    }
    if (spec.junk !== undefined) get(spec.junk.inode).set(spec.junk.sector, junkSector(spec.junk.sector));
    return out;
  }

  // Copies sector s of st's current image into the scratch buffer at k.
  private copySector(st: InodeState, s: number, k: number): void {
    const src = st.overlay.get(s);
    if (src === undefined) st.base.copy(this.scratch, k * SECTOR_BYTES, s * SECTOR_BYTES, (s + 1) * SECTOR_BYTES);
    else if (typeof src !== 'number') src.copy(this.scratch, k * SECTOR_BYTES);
    else {
      const w = this.model.writes[Math.floor(src / SOURCE_SECTORS)]!;
      const at = (src % SOURCE_SECTORS) * SECTOR_BYTES;
      this.dataOf(w).copy(this.scratch, k * SECTOR_BYTES, at, at + SECTOR_BYTES);
    }
  }

  private dataOf(w: WriteModel): Buffer {
    const d = w.data!;
    return Buffer.isBuffer(d) ? d : Buffer.from(d.buffer, d.byteOffset, d.byteLength);
  }

  private writeSectors(st: InodeState, sectors: number[]): void {
    const runMax = this.scratch.length / SECTOR_BYTES;
    for (let i = 0; i < sectors.length; ) {
      let j = i + 1;
      while (j < sectors.length && sectors[j] === sectors[j - 1]! + 1 && j - i < runMax) j++;
      const first = sectors[i]!;
      const count = j - i;
      for (let k = 0; k < count; k++) this.copySector(st, first + k, k);
      fs.writeSync(st.fd, this.scratch, 0, count * SECTOR_BYTES, first * SECTOR_BYTES);
      this.stats.bytesWritten += count * SECTOR_BYTES;
      i = j;
    }
  }

  // Puts the working file of st where the image wants it.
  private place(st: InodeState, where: { dir: string; name: string } | null): void {
    const same = (a: typeof where, b: typeof where): boolean =>
      a === b || (a !== null && b !== null && a.dir === b.dir && a.name === b.name);
    if (same(st.where, where)) return;
    if (where === null) {
      fs.unlinkSync(this.pathOf(st.where!));
      fs.closeSync(st.fd);
      st.where = null;
      st.fd = -1;
      return;
    }
    if (st.where !== null) {
      this.moveAside(where, st);
      fs.renameSync(this.pathOf(st.where), this.pathOf(where));
      st.where = where;
      this.stats.renames++;
      return;
    }
    this.moveAside(where, st);
    this.create(st, where);
  }

  // Another inode's working file holding this name moves to a temporary name
  // (it is placed properly when its own turn comes).
  private moveAside(where: { dir: string; name: string }, self: InodeState): void {
    for (const other of this.states.values()) {
      if (other === self || other.where === null) continue;
      if (other.where.dir !== where.dir || other.where.name !== where.name) continue;
      const aside = { dir: where.dir, name: `${where.name}.aside-${other.model.key.replace(':', '-')}` };
      fs.renameSync(this.pathOf(other.where), this.pathOf(aside));
      other.where = aside;
    }
  }

  private create(st: InodeState, where: { dir: string; name: string }): void {
    const p = this.pathOf(where);
    st.fd = fs.openSync(p, 'w+');
    st.where = where;
    st.workIno = fs.fstatSync(st.fd).ino;
    st.fileSizeBytes = 0;
    // Everything that is not zero in base or overlay.
    const sectors: number[] = [];
    for (let s = 0; s < st.base.length / SECTOR_BYTES; s++) if (st.owner[s]! > 0 || s * SECTOR_BYTES < st.model.initial.length) sectors.push(s);
    for (const s of st.overlay.keys()) sectors.push(s);
    st.dirty = new Set(sectors);
    this.stats.filesRecreated++;
  }

  private pathOf(where: { dir: string; name: string }): string {
    return path.join(this.dir, this.model.dirRel(where.dir), where.name);
  }

  // After recovery ran on the working directory: notes what it wrote (from a
  // recording of the recovery run, by the working file's inode), puts back
  // files it renamed or removed, removes files it created, and rewrites
  // whole any file changed in a way the recording does not explain.
  afterRecovery(recoveryEvents: readonly RecordingEvent[] | undefined): void {
    const byIno = new Map<number, InodeState>();
    for (const st of this.states.values()) if (st.where !== null) byIno.set(st.workIno, st);
    const explained = new Set<InodeState>();
    for (const e of recoveryEvents ?? []) {
      if (e.type !== 'submit' || (e.kind !== OpKind.write && e.kind !== OpKind.punchHole)) continue;
      if ((e.bits & RECORD_BIT_FORCED) !== 0) continue;
      const st = byIno.get(e.ino);
      if (st === undefined) continue;
      explained.add(st);
      const first = Math.floor(e.offsetBytes / SECTOR_BYTES);
      const end = Math.ceil((e.offsetBytes + e.lengthBytes) / SECTOR_BYTES);
      for (let s = first; s < end; s++) st.dirty.add(s);
      this.stats.recoverySectors += end - first;
    }
    // Directory entries: what is there now, by working inode.
    const present = new Map<number, { dir: string; name: string }>();
    for (const d of this.model.dirs.values()) {
      const full = path.join(this.dir, d.rel);
      for (const name of fs.readdirSync(full)) {
        const st = fs.lstatSync(path.join(full, name));
        if (!st.isFile()) continue;
        const owner = byIno.get(st.ino);
        if (owner === undefined) fs.unlinkSync(path.join(full, name)); // made by recovery
        else present.set(st.ino, { dir: d.key, name });
      }
    }
    for (const st of this.states.values()) {
      if (st.where === null) continue;
      const now = present.get(st.workIno);
      if (now === undefined) {
        // Removed by recovery: recreate it whole at the next image.
        fs.closeSync(st.fd);
        const want = st.where;
        st.where = null;
        st.fd = -1;
        this.create(st, want);
        continue;
      }
      if (now.dir !== st.where.dir || now.name !== st.where.name) {
        st.where = now; // materialize() moves it back
        this.stats.renames++;
      }
      const stat = fs.fstatSync(st.fd, { bigint: true });
      const sizeNow = Number(stat.size);
      if (sizeNow !== st.fileSizeBytes) {
        for (let s = Math.floor(Math.min(sizeNow, st.fileSizeBytes) / SECTOR_BYTES); s * SECTOR_BYTES < Math.max(sizeNow, st.fileSizeBytes); s++) {
          if (s < st.base.length / SECTOR_BYTES) st.dirty.add(s);
        }
        st.fileSizeBytes = sizeNow;
      }
      if (stat.mtimeNs !== st.mtimeNs && !explained.has(st)) {
        // Changed outside the ring (or the recording was not available).
        this.stats.unexplainedFiles++;
        for (let s = 0; s < st.base.length / SECTOR_BYTES; s++) st.dirty.add(s);
      }
    }
  }

  // The working path of an inode in the current image (undefined: absent).
  pathOfInode(inode: string): string | undefined {
    const st = this.states.get(inode);
    return st?.where ? this.pathOf(st.where) : undefined;
  }

  currentSpec(): ImageSpec | undefined {
    return this.spec;
  }

  close(): void {
    for (const st of this.states.values()) if (st.fd >= 0) fs.closeSync(st.fd);
    this.states.clear();
  }
}

function roundUp(value: number, multiple: number): number {
  return Math.ceil(value / multiple) * multiple;
}

// Compares the working directory with the reference semantics, sector by
// sector, for every file of the image; returns the differences (empty: the
// builder is right).
export function verifyImage(model: CrashModel, ws: ImageWorkspace, spec: ImageSpec): string[] {
  const problems: string[] = [];
  for (const m of model.inodes.values()) {
    const where = spec.names.get(m.key) ?? null;
    const p = ws.pathOfInode(m.key);
    if ((where === null) !== (p === undefined)) {
      problems.push(`${m.key}: present ${p !== undefined}, want ${where !== null}`);
      continue;
    }
    if (p === undefined) continue;
    const actual = fs.readFileSync(p);
    const sectors = Math.ceil(Math.max(actual.length, m.sizeMaxBytes) / SECTOR_BYTES);
    for (let s = 0; s < sectors; s++) {
      const want = referenceSector(model, spec, m.key, s);
      const got = actual.subarray(s * SECTOR_BYTES, (s + 1) * SECTOR_BYTES);
      const wantBytes = want ?? Buffer.alloc(0);
      const gotPadded = padSector(got);
      if (want === undefined ? got.length > 0 && !isZero(got) : !gotPadded.equals(wantBytes)) {
        problems.push(`${p}: sector ${s} differs from the reference`);
        if (problems.length > 20) return problems;
      }
    }
  }
  return problems;
}

function isZero(b: Uint8Array): boolean {
  for (let i = 0; i < b.length; i++) if (b[i] !== 0) return false;
  return true;
}

// ---- handing a run to worker processes -------------------------------------------

export interface SavedRun {
  root: string;
  initial: { files: (Omit<TreeFile, 'content'> & { at: number; bytes: number })[]; dirs: TreeDir[] };
  events: (Omit<RecordingEvent, 'data'> & { at: number; bytes: number })[];
}

// Saves (snapshot, recording) as run.json + run.bin under dir.
export function saveRun(dir: string, root: string, initial: TreeSnapshot, events: readonly RecordingEvent[]): void {
  const chunks: Buffer[] = [];
  let at = 0;
  const put = (b: Uint8Array | undefined): { at: number; bytes: number } => {
    if (b === undefined) return { at: -1, bytes: 0 };
    chunks.push(Buffer.from(b.buffer, b.byteOffset, b.byteLength));
    const r = { at, bytes: b.byteLength };
    at += b.byteLength;
    return r;
  };
  const saved: SavedRun = {
    root,
    initial: { files: initial.files.map(({ content, ...f }) => ({ ...f, ...put(content) })), dirs: initial.dirs },
    events: events.map(({ data, ...e }) => ({ ...e, ...put(data) })),
  };
  fs.writeFileSync(path.join(dir, 'run.bin'), Buffer.concat(chunks));
  fs.writeFileSync(path.join(dir, 'run.json'), JSON.stringify(saved));
}

export function loadRun(dir: string): { root: string; initial: TreeSnapshot; events: RecordingEvent[] } {
  const saved = JSON.parse(fs.readFileSync(path.join(dir, 'run.json'), 'utf8')) as SavedRun;
  const bin = fs.readFileSync(path.join(dir, 'run.bin'));
  const view = (at: number, bytes: number): Buffer | undefined => (at < 0 ? undefined : bin.subarray(at, at + bytes));
  return {
    root: saved.root,
    initial: {
      files: saved.initial.files.map(({ at, bytes, ...f }) => ({ ...f, content: view(at, bytes)! })),
      dirs: saved.initial.dirs,
    },
    events: saved.events.map(({ at, bytes, ...e }) => ({ ...e, data: view(at, bytes) })),
  };
}
