// Crash images (reference/reliability.md design T1): power cuts beyond what
// kill -9 can do. A seeded workload runs on the real ring with recording on;
// test/support/crash_images.ts then builds, at every persistence point and
// between them, disk states a power cut could leave (un-synced writes dropped,
// applied whole, or torn at 512 bytes; directory entries not yet synced old
// or new) and the real recovery runs on each. What must hold:
//  - every write acknowledged durable before the crash reads back, unless a
//    later write to the same block was issued before the crash;
//  - no block holds content that was never written (no phantom), and the WAL
//    holds no record that was never appended;
//  - recovery never fails on an image that only a crash produced.
// Planted bugs (a durable write left out of an image, junk in a sector) must
// be reported, so the checker is shown to catch what it looks for.
//
// Images are checked by worker processes (one per core), each with its own
// working directory. BLOCKWAL_CRASH_IMAGES_SEED replays a run;
// BLOCKWAL_CRASH_IMAGES sets the number of volume images (default 20,000).
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { fork } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { Volume, type VolumeOptions } from '../../lib/engine/volume';
import { decodeDirListing, OpKind, OpPurpose, type RecordingEvent, Ring } from '../../lib/native/ring';
import { Wal } from '../../lib/native/wal';
import { decodeRecord, encodeRecord, type RecordKind, scanWal } from '../../lib/native/wal_format';
import {
  type CrashModel,
  CrashModel as Model,
  type CrashPoint,
  type ImageSpec,
  ImageWorkspace,
  inodeKey,
  type MaterializeStats,
  loadRun,
  referenceSector,
  sampleImage,
  saveRun,
  SECTOR_BYTES,
  snapshotTree,
  verifyImage,
} from '../support/crash_images';
import { prng } from '../support/tmp';

const BLOCK_BYTES = 4096;
const SEGMENT_BYTES = 1 << 20;
const SEGMENTS_MAX = 4;
const GROUP_BYTES = 64 << 10;
const VOLUME_BYTES = 1 << 20;
const ARENA_BYTES = 32 << 20;
const IMAGES_DEFAULT = 20000;
const WAL_IMAGES_DEFAULT = 3000;
const RECOVERY_TIMEOUT_MS = 3000;
// A worker stops after this many recoveries that never answered (each one
// holds its image's lock and ring for good).
const HANGS_MAX = 3;
const CANARIES = 12;

// Marks the workloads add to the recording when they observe something.
const MARK_APPEND = 1; // WAL: a = LSN acknowledged, b = 1 when FUA (durable)
const MARK_FLUSH = 2; // WAL: every LSN <= a is durable
const MARK_RELEASE = 3; // WAL: records <= a may be dropped (the checkpoint)
const MARK_ISSUE = 11; // volume: operation a was called
const MARK_ACK = 12; // volume: operation a resolved
const MARK_FLUSH_ACK = 13; // volume: flush a resolved

const SEED =
  process.env.BLOCKWAL_CRASH_IMAGES_SEED !== undefined
    ? Number(process.env.BLOCKWAL_CRASH_IMAGES_SEED)
    : (Date.now() ^ (process.pid << 16)) >>> 0;
const IMAGES = Number(process.env.BLOCKWAL_CRASH_IMAGES ?? IMAGES_DEFAULT);
const VERIFY_ALL = process.env.BLOCKWAL_CRASH_VERIFY_ALL === '1';
const WAL_IMAGES = Math.max(1, Math.round((IMAGES * WAL_IMAGES_DEFAULT) / IMAGES_DEFAULT));

interface Canary {
  point: number;
  dropDurable?: number; // write id
  junk?: { inode: string; sector: number };
  expect: 'lost' | 'phantom';
  what: string;
}

interface ExpectedRecord {
  lsn: number;
  kind: RecordKind;
  lba: number;
  lengthBlocks: number;
  checksum: string; // XXH3-64 of header + payload, as the scan reports it
}

interface WalPlan {
  mode: 'wal';
  seed: number;
  images: number;
  workers: number;
  records: ExpectedRecord[];
  canaries: Canary[];
}

interface VolumeOp {
  id: number;
  kind: 'write' | 'trim' | 'zero';
  fua: boolean;
  offsetBytes: number;
  lengthBytes: number;
}

interface VolumePlan {
  mode: 'volume';
  seed: number;
  images: number;
  workers: number;
  sizeBytes: number;
  ops: VolumeOp[];
  ackOrder: number[]; // op ids in the order their acknowledgements were seen
  flushes: { id: number; ackedBefore: number }[]; // covers ackOrder[0, ackedBefore)
  // Per block, its versions in issue order: the content before the run (op
  // -1), then one per operation that touched it. content: index into plan.bin.
  blocks: { op: number; content: number }[][];
  canaries: Canary[];
}

type Plan = WalPlan | VolumePlan;

function pattern(seed: number, n: number, bytes: number): Buffer {
  const b = Buffer.alloc(bytes);
  const r = prng((seed ^ Math.imul(n + 1, 0x9e3779b1)) >>> 0);
  for (let i = 0; i + 4 <= bytes; i += 4) b.writeUInt32LE((r() * 0x100000000) >>> 0, i);
  for (let i = bytes - (bytes % 4); i < bytes; i++) b[i] = (r() * 256) | 0;
  return b;
}

// ---- the recorded run: the WAL alone ---------------------------------------------------

async function recordWalRun(runDir: string, seed: number): Promise<{ records: ExpectedRecord[]; ops: number }> {
  const root = path.join(runDir, 'volume');
  fs.mkdirSync(path.join(root, 'wal'), { recursive: true });
  const initial = snapshotTree(root);
  const ring = Ring.open({ depth: 128, arenaBytes: ARENA_BYTES });
  ring.setRecording(true, { capBytes: 512 << 20 });
  const { wal } = await Wal.open(ring, { dir: path.join(root, 'wal'), segmentBytes: SEGMENT_BYTES, groupBytes: GROUP_BYTES, segmentsMax: SEGMENTS_MAX });
  const rand = prng(seed);
  const records: ExpectedRecord[] = [];
  let ops = 0;
  let maxAcked = 0;
  let remaining = 700;
  const worker = async (): Promise<void> => {
    while (remaining-- > 0) {
      ops++;
      const r = rand();
      if (r < 0.06) {
        const covered = maxAcked;
        await wal.flush();
        ring.recordMark(MARK_FLUSH, covered, 0);
        if (rand() < 0.5) {
          const lsn = wal.lsnDurable; // a checkpoint: everything durable may go
          ring.recordMark(MARK_RELEASE, lsn, 0);
          wal.release(lsn);
        }
        continue;
      }
      const n = records.length;
      const kind: RecordKind = r < 0.1 ? 'trim' : 'write';
      const lengthBlocks = kind === 'trim' ? 1 + Math.floor(rand() * 64) : 1 + Math.floor(rand() * 4);
      const payload = kind === 'write' ? pattern(seed, n, lengthBlocks * BLOCK_BYTES) : null;
      const lba = Math.floor(rand() * 512);
      const fua = rand() < 0.25;
      const lsn = await wal.append({
        kind,
        epoch: 1,
        lba,
        lengthBlocks,
        payload,
        fua,
        onAssigned: (a) => {
          const decoded = decodeRecord(encodeRecord({ kind, epoch: 1, lsn: a.lsn, lba, lengthBlocks }, payload));
          records.push({ lsn: a.lsn, kind, lba, lengthBlocks, checksum: decoded.checksum.toString() });
        },
      });
      maxAcked = Math.max(maxAcked, lsn);
      ring.recordMark(MARK_APPEND, lsn, fua ? 1 : 0);
    }
  };
  await Promise.all(Array.from({ length: 1 + Math.floor(rand() * 12) }, worker));
  await wal.flush();
  ring.recordMark(MARK_FLUSH, maxAcked, 0);
  await wal.close();
  const events = ring.takeRecording();
  await ring.close();
  saveRun(runDir, root, initial, events);
  records.sort((x, y) => x.lsn - y.lsn);
  return { records, ops };
}

// ---- the recorded run: the volume --------------------------------------------------------

interface VolumeRun {
  plan: Omit<VolumePlan, 'seed' | 'images' | 'workers' | 'canaries'>;
  contents: Buffer[];
  counts: Record<string, number>;
}

async function recordVolumeRun(runDir: string, seed: number): Promise<VolumeRun> {
  const root = path.join(runDir, 'volume');
  const rand = prng(seed);
  const blocksTotal = VOLUME_BYTES / BLOCK_BYTES;
  const current: Buffer[] = Array.from({ length: blocksTotal }, () => Buffer.alloc(BLOCK_BYTES));
  const options = { walSegmentsMax: SEGMENTS_MAX, flushIdleMs: 0, arenaBytes: ARENA_BYTES };

  // Before the recording: some content in base.img.
  let vol = await Volume.create(root, { sizeBytes: VOLUME_BYTES, walSegmentBytes: SEGMENT_BYTES, ...options });
  for (let i = 0; i < blocksTotal / 4; i++) {
    const lba = Math.floor(rand() * blocksTotal);
    current[lba] = pattern(seed, 1_000_000 + i, BLOCK_BYTES);
    await vol.write(lba * BLOCK_BYTES, current[lba]!);
  }
  await vol.close();
  vol = await Volume.open(root, options);
  const initial = snapshotTree(root);
  const ring = vol.ring;
  ring.setRecording(true, { capBytes: 1 << 30 });

  const contents: Buffer[] = [];
  const contentIndex = new Map<string, number>();
  const intern = (b: Buffer): number => {
    const k = b.toString('base64');
    let i = contentIndex.get(k);
    if (i === undefined) {
      i = contents.length;
      contents.push(Buffer.from(b));
      contentIndex.set(k, i);
    }
    return i;
  };
  const blocks = current.map((b) => [{ op: -1, content: intern(b) }]);
  const ops: VolumeOp[] = [];
  const ackOrder: number[] = [];
  const flushes: { id: number; ackedBefore: number }[] = [];
  const counts: Record<string, number> = {};
  const busy = new Set<number>();
  let remaining = 900;

  // A range whose blocks no operation in flight touches (so each block's
  // versions are ordered by issue), or undefined.
  const pickRange = (aligned: boolean, maxBytes: number): { offsetBytes: number; lengthBytes: number } | undefined => {
    for (let attempt = 0; attempt < 8; attempt++) {
      let offsetBytes: number;
      let lengthBytes: number;
      if (aligned) {
        const n = 1 + Math.floor(rand() * (maxBytes / BLOCK_BYTES));
        offsetBytes = Math.floor(rand() * (blocksTotal - n + 1)) * BLOCK_BYTES;
        lengthBytes = n * BLOCK_BYTES;
      } else {
        lengthBytes = 1 + Math.floor(rand() * maxBytes);
        offsetBytes = Math.floor(rand() * (VOLUME_BYTES - lengthBytes + 1));
      }
      const first = Math.floor(offsetBytes / BLOCK_BYTES);
      const end = Math.ceil((offsetBytes + lengthBytes) / BLOCK_BYTES);
      let free = true;
      for (let b = first; b < end && free; b++) free = !busy.has(b);
      if (free) return { offsetBytes, lengthBytes };
    }
    return undefined;
  };

  const runOp = async (op: VolumeOp, data: Buffer | undefined): Promise<void> => {
    const first = Math.floor(op.offsetBytes / BLOCK_BYTES);
    const end = Math.ceil((op.offsetBytes + op.lengthBytes) / BLOCK_BYTES);
    for (let b = first; b < end; b++) {
      busy.add(b);
      const next = Buffer.from(current[b]!);
      const from = Math.max(op.offsetBytes, b * BLOCK_BYTES) - b * BLOCK_BYTES;
      const to = Math.min(op.offsetBytes + op.lengthBytes, (b + 1) * BLOCK_BYTES) - b * BLOCK_BYTES;
      if (data === undefined) next.fill(0, from, to);
      else data.copy(next, from, from + b * BLOCK_BYTES - op.offsetBytes, to + b * BLOCK_BYTES - op.offsetBytes);
      current[b] = next;
      blocks[b]!.push({ op: op.id, content: intern(next) });
    }
    ops.push(op);
    const key = `${op.kind}${op.fua ? '+fua' : ''}${op.offsetBytes % BLOCK_BYTES === 0 && op.lengthBytes % BLOCK_BYTES === 0 ? '' : ' unaligned'}`;
    counts[key] = (counts[key] ?? 0) + 1;
    ring.recordMark(MARK_ISSUE, op.id, 0);
    if (op.kind === 'write') await vol.write(op.offsetBytes, data!, { fua: op.fua });
    else if (op.kind === 'trim') await vol.trim(op.offsetBytes, op.lengthBytes);
    else await vol.writeZeroes(op.offsetBytes, op.lengthBytes, { fua: op.fua });
    ring.recordMark(MARK_ACK, op.id, 0);
    ackOrder.push(op.id);
    for (let b = first; b < end; b++) busy.delete(b);
  };

  const worker = async (): Promise<void> => {
    while (remaining-- > 0) {
      const r = rand();
      if (r < 0.06) {
        const id = flushes.length;
        flushes.push({ id, ackedBefore: ackOrder.length });
        counts.flush = (counts.flush ?? 0) + 1;
        await vol.flush();
        ring.recordMark(MARK_FLUSH_ACK, id, 0);
        continue;
      }
      if (r < 0.09) {
        counts.checkpoint = (counts.checkpoint ?? 0) + 1;
        // Half the checkpoints start while a write has its LSN but is not
        // written yet: the race between the flusher and new writes.
        const range = rand() < 0.5 ? pickRange(true, 4 * BLOCK_BYTES) : undefined;
        const racing = range === undefined ? undefined : runOp({ id: ops.length, kind: 'write', fua: false, ...range }, pattern(seed, ops.length, range.lengthBytes));
        await vol.checkpoint();
        await racing;
        continue;
      }
      const kind = r < 0.14 ? 'trim' : r < 0.19 ? 'zero' : 'write';
      const aligned = rand() < (kind === 'write' ? 0.6 : 0.7);
      const range = pickRange(aligned, kind === 'write' ? 8 * BLOCK_BYTES : 32 * BLOCK_BYTES);
      if (range === undefined) {
        await new Promise<void>((resolve) => setImmediate(resolve));
        continue;
      }
      const id = ops.length;
      const fua = kind !== 'trim' && rand() < 0.2;
      const data = kind === 'write' ? pattern(seed, id, range.lengthBytes) : undefined;
      await runOp({ id, kind, fua, ...range }, data);
    }
  };
  // At least two writers: a checkpoint racing a write is where it gets interesting.
  await Promise.all(Array.from({ length: 2 + Math.floor(rand() * 7) }, worker));
  const id = flushes.length;
  flushes.push({ id, ackedBefore: ackOrder.length });
  await vol.flush();
  ring.recordMark(MARK_FLUSH_ACK, id, 0);
  await vol.close(); // its checkpoint is recorded too
  const events = ring.takeRecording();
  saveRun(runDir, root, initial, events);
  return { plan: { mode: 'volume', sizeBytes: VOLUME_BYTES, ops, ackOrder, flushes, blocks }, contents, counts };
}

// ---- checking one image --------------------------------------------------------------------

interface Verdict {
  lost: string[];
  phantom: string[];
  recoveryFailure: string | undefined;
  durableChecked: number;
  torn: number; // blocks mixing sectors of versions that may both be there
  hung?: boolean; // recovery did not answer: the image's lock stays held
}

function emptyVerdict(): Verdict {
  return { lost: [], phantom: [], recoveryFailure: undefined, durableChecked: 0, torn: 0 };
}

// What the WAL workload had been told before a crash at p.
function walPromises(model: CrashModel, p: CrashPoint): { durable: Set<number>; flushed: number; released: number } {
  const durable = new Set<number>();
  let flushed = 0;
  let released = 0;
  for (const m of model.marksUpTo(p.seq)) {
    if (m.kind === MARK_APPEND && m.b === 1) durable.add(m.a);
    else if (m.kind === MARK_FLUSH) flushed = Math.max(flushed, m.a);
    else if (m.kind === MARK_RELEASE) released = Math.max(released, m.a);
  }
  return { durable, flushed, released };
}

async function checkWalImage(walDir: string, model: CrashModel, p: CrashPoint, expected: Map<number, ExpectedRecord>): Promise<Verdict> {
  const { durable, flushed, released } = walPromises(model, p);
  const verdict = emptyVerdict();
  let scan;
  try {
    scan = await scanWal({ dir: walDir, lsnFrom: released + 1, segmentBytes: SEGMENT_BYTES });
  } catch (err) {
    verdict.recoveryFailure = (err as Error).message;
    return verdict;
  }
  const found = new Set<number>();
  const r = scan.records;
  for (let i = 0; i < r.count; i++) {
    const lsn = r.lsn[i]!;
    const want = expected.get(lsn);
    found.add(lsn);
    if (want === undefined || want.checksum !== r.checksum[i]!.toString() || want.lba !== r.lba[i] || want.lengthBlocks !== r.lengthBlocks[i]) {
      verdict.phantom.push(`LSN ${lsn} (segment ${r.segmentSeq[i]} offset ${r.offsetBytes[i]}) is not the record appended with that LSN`);
    }
  }
  const required = new Set<number>(durable);
  for (let lsn = released + 1; lsn <= flushed; lsn++) required.add(lsn);
  for (const lsn of required) {
    if (lsn <= released) continue;
    verdict.durableChecked++;
    if (!found.has(lsn)) verdict.lost.push(`LSN ${lsn} was acknowledged durable but is not in the recovered log (it ends at ${scan.lsnNext - 1})`);
  }
  return verdict;
}

// Runs the writer itself on the image: reopen (recovery), one durable
// append, close. Returns why recovery refused the image, if it did.
async function reopenWal(ring: Ring, walDir: string, released: number): Promise<{ failure?: string; hung?: boolean }> {
  try {
    const opened = Wal.open(ring, {
      dir: walDir,
      segmentBytes: SEGMENT_BYTES,
      groupBytes: GROUP_BYTES,
      segmentsMax: SEGMENTS_MAX,
      lsnFrom: released + 1,
    });
    const { wal } = await withTimeout(opened, RECOVERY_TIMEOUT_MS, 'Wal.open');
    const appended = wal.append({ kind: 'write', epoch: 2, lba: 0, lengthBlocks: 1, payload: Buffer.alloc(BLOCK_BYTES, 7), fua: true });
    appended.catch(() => undefined);
    // Every segment may hold unreleased records (the workload filled the
    // WAL): the append then waits for a checkpoint to release some, as a
    // volume's would. Without it nothing is in flight and the worker's event
    // loop would just end.
    if (wal.full) wal.release(wal.lsnDurable);
    await withTimeout(appended, RECOVERY_TIMEOUT_MS, 'Wal.append after reopen');
    await withTimeout(wal.close(), RECOVERY_TIMEOUT_MS, 'Wal.close after reopen');
    return {};
  } catch (err) {
    const message = (err as Error).message;
    return { failure: message, hung: message.includes('no answer') };
  }
}

// The volume's promises, as seqs of the recording.
class VolumeOracle {
  private readonly issueSeq: number[];
  private readonly durableSeq: number[];

  constructor(
    model: CrashModel,
    private readonly plan: VolumePlan,
    private readonly contents: Buffer[],
  ) {
    this.issueSeq = plan.ops.map(() => Infinity);
    const ackSeq = plan.ops.map(() => Infinity);
    const flushAck = plan.flushes.map(() => Infinity);
    for (const m of model.marks) {
      if (m.kind === MARK_ISSUE) this.issueSeq[m.a] = m.seq;
      else if (m.kind === MARK_ACK) ackSeq[m.a] = m.seq;
      else if (m.kind === MARK_FLUSH_ACK) flushAck[m.a] = m.seq;
    }
    this.durableSeq = plan.ops.map((op) => (op.fua ? ackSeq[op.id]! : Infinity));
    plan.ackOrder.forEach((opId, k) => {
      for (const f of plan.flushes) if (k < f.ackedBefore) this.durableSeq[opId] = Math.min(this.durableSeq[opId]!, flushAck[f.id]!);
    });
  }

  // Operations acknowledged durable by the end of the run.
  durableOps(): number {
    return this.durableSeq.filter((d) => d !== Infinity).length;
  }

  // The version of block lba that must survive a crash at seq, and those that may be there.
  required(lba: number, seq: number): { d: number; allowed: number[] } {
    const versions = this.plan.blocks[lba]!;
    let d = 0;
    for (let j = 1; j < versions.length; j++) if (this.durableSeq[versions[j]!.op]! <= seq) d = j;
    const allowed: number[] = [];
    for (let j = d; j < versions.length; j++) if (j === 0 || this.issueSeq[versions[j]!.op]! <= seq) allowed.push(j);
    return { d, allowed };
  }

  // Sector by sector (512 bytes): each sector must hold that sector of a
  // version allowed at seq. A block mixing sectors of allowed versions is
  // counted as torn (block atomicity is not promised for writes not yet
  // durable) but is neither lost nor phantom.
  check(image: Buffer, seq: number): Verdict {
    const verdict = emptyVerdict();
    for (let lba = 0; lba < this.plan.blocks.length; lba++) {
      const got = image.subarray(lba * BLOCK_BYTES, (lba + 1) * BLOCK_BYTES);
      const versions = this.plan.blocks[lba]!;
      const { d, allowed } = this.required(lba, seq);
      if (d > 0) verdict.durableChecked++;
      if (allowed.some((j) => this.contents[versions[j]!.content]!.equals(got))) continue;
      const sectorOf = (j: number, s: number): Buffer => this.contents[versions[j]!.content]!.subarray(s * SECTOR_BYTES, (s + 1) * SECTOR_BYTES);
      const lost: number[] = [];
      const phantom: number[] = [];
      for (let s = 0; s < BLOCK_BYTES / SECTOR_BYTES; s++) {
        const sector = got.subarray(s * SECTOR_BYTES, (s + 1) * SECTOR_BYTES);
        if (allowed.some((j) => sectorOf(j, s).equals(sector))) continue;
        if (versions.some((_, j) => j < d && sectorOf(j, s).equals(sector))) lost.push(s);
        else phantom.push(s);
      }
      const need = versions[d]!;
      if (lost.length > 0) {
        verdict.lost.push(`block ${lba} sectors ${lost.join(',')}: hold an older version, but op ${need.op} (version ${d} of ${versions.length - 1}) was acknowledged durable`);
      }
      if (phantom.length > 0) verdict.phantom.push(`block ${lba} sectors ${phantom.join(',')}: hold content never written there`);
      if (lost.length === 0 && phantom.length === 0) verdict.torn++;
    }
    return verdict;
  }
}

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise<T>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what}: no answer in ${ms} ms`)), ms);
    }),
  ]);
}

// Recovery on the image: open, read everything, close (which checkpoints).
// The ring's recording (from before the open when the volume takes the
// caller's ring) tells the workspace what recovery changed.
let sharedRing: Ring | undefined;

// The worker's ring, lent to every recovery through Volume.open's `ring`
// option: a fresh ring costs about 10 ms here (pinning its arena), more than
// the rest of a recovery. The worker closes it at the end.
function lentRing(): Ring {
  sharedRing ??= Ring.open({ depth: 256, arenaBytes: ARENA_BYTES });
  return sharedRing;
}

async function closeLentRing(): Promise<void> {
  await sharedRing?.close();
  sharedRing = undefined;
}

async function recoverVolume(dir: string, oracle: VolumeOracle, seq: number): Promise<{ verdict: Verdict; events: RecordingEvent[] | undefined }> {
  const shared = lentRing();
  shared.setRecording(true, { capBytes: 64 << 20, withData: false });
  let vol: Volume;
  try {
    const options: VolumeOptions = { flushIdleMs: 0, arenaBytes: ARENA_BYTES };
    vol = await withTimeout(Volume.open(dir, { ...options, walSegmentsMax: SEGMENTS_MAX, ring: shared }), RECOVERY_TIMEOUT_MS, 'Volume.open');
  } catch (err) {
    const hung = (err as Error).message.includes('no answer');
    if (hung) sharedRing = undefined; // the open that hangs keeps it
    const events = hung ? undefined : takeOrNone(shared);
    return { verdict: { ...emptyVerdict(), recoveryFailure: `open: ${(err as Error).message}`, hung }, events };
  }
  const ring = vol.ring;
  if (ring !== shared) {
    // The volume made its own ring: its own open is not in the recording.
    shared.setRecording(false);
    ring.setRecording(true, { capBytes: 64 << 20, withData: false });
  }
  let verdict: Verdict;
  try {
    const image = await vol.read(0, VOLUME_BYTES);
    verdict = oracle.check(image, seq);
  } catch (err) {
    verdict = { ...emptyVerdict(), recoveryFailure: `read: ${(err as Error).message}` };
  }
  try {
    await withTimeout(vol.close(), RECOVERY_TIMEOUT_MS, 'close');
  } catch (err) {
    verdict.recoveryFailure ??= `close: ${(err as Error).message}`;
  }
  const events = takeOrNone(ring);
  if (ring.info().open) ring.setRecording(false);
  if (!shared.info().open) sharedRing = undefined;
  return { verdict, events };
}

// The recording, or undefined when it overflowed (the workspace then
// rewrites every changed file whole).
function takeOrNone(ring: Ring): RecordingEvent[] | undefined {
  try {
    return ring.takeRecording();
  } catch {
    return undefined;
  }
}

// ---- images per point -----------------------------------------------------------------------

// How many distinct images to draw at each point: one where nothing is
// uncertain, the rest spread by how much is.
function allocate(points: CrashPoint[], total: number): number[] {
  const weight = points.map((p) => (p.pendingWrites + p.uncertainNames === 0 ? 0 : Math.min(1 + p.pendingWrites + p.uncertainNames, 8)));
  const fixed = weight.filter((w) => w === 0).length;
  const sum = weight.reduce((a, b) => a + b, 0);
  const spread = Math.max(total - fixed, 0) * 1.04; // some draws repeat an image
  return weight.map((w) => (w === 0 ? 1 : Math.max(1, Math.ceil((spread * w) / sum))));
}

function pointRng(seed: number, point: number, attempt: number): () => number {
  return prng((seed ^ Math.imul(point + 1, 0x85ebca6b) ^ Math.imul(attempt + 1, 0xc2b2ae35)) >>> 0);
}

// ---- canaries: planted bugs the checker must report -------------------------------------------

function walCanaries(model: CrashModel, points: CrashPoint[]): Canary[] {
  const out: Canary[] = [];
  const groups = model.writes.filter((w) => w.purpose === OpPurpose.walGroup);
  for (const p of [...points].reverse()) {
    if (out.length >= CANARIES) break;
    const { released } = walPromises(model, p);
    const fua = model.marksUpTo(p.seq).filter((m) => m.kind === MARK_APPEND && m.b === 1 && m.a > released).pop();
    if (fua === undefined) continue;
    const g = groups.find((w) => w.a <= fua.a && fua.a <= w.b && w.durableSeq <= p.seq);
    if (g === undefined || out.some((c) => c.dropDurable === g.id)) continue;
    out.push({ point: p.index, dropDurable: g.id, expect: 'lost', what: `WAL group with LSNs ${g.a}..${g.b} left out (LSN ${fua.a} was FUA-acknowledged)` });
  }
  return out;
}

function volumeCanaries(model: CrashModel, points: CrashPoint[], plan: VolumePlan, contents: Buffer[]): Canary[] {
  const out: Canary[] = [];
  const oracle = new VolumeOracle(model, plan, contents);
  const groups = model.writes.filter((w) => w.purpose === OpPurpose.walGroup && w.data !== null);
  const baseFile = model.initial.files.find((f) => f.rel === 'base.img')!;
  const baseInode = inodeKey(baseFile.dev, baseFile.ino);
  const baseWrites = model.writes.filter((w) => w.inode === baseInode);
  // A durable write left out: the WAL group holding the record of a block
  // version that is the one required at the point, with nothing newer issued
  // and not yet in base.img.
  for (const p of points) {
    if (out.length >= CANARIES / 2 || p.index % 7 !== 3) continue;
    for (let lba = 0; lba < plan.blocks.length; lba++) {
      const versions = plan.blocks[lba]!;
      const { d, allowed } = oracle.required(lba, p.seq);
      if (d === 0 || allowed.length !== 1 || plan.ops[versions[d]!.op]!.kind !== 'write') continue;
      const content = contents[versions[d]!.content]!;
      const inBase = baseWrites.some(
        (w) => w.durableSeq <= p.seq && w.data !== null && w.offsetBytes <= lba * BLOCK_BYTES && lba * BLOCK_BYTES < w.offsetBytes + w.lengthBytes &&
          Buffer.from(w.data.subarray(lba * BLOCK_BYTES - w.offsetBytes, lba * BLOCK_BYTES - w.offsetBytes + BLOCK_BYTES)).equals(content),
      );
      if (inBase) continue;
      const g = groups.find((w) => w.durableSeq <= p.seq && Buffer.from(w.data!).indexOf(content) >= 0);
      if (g === undefined) continue;
      out.push({ point: p.index, dropDurable: g.id, expect: 'lost', what: `WAL group ${g.id} left out (block ${lba}, op ${versions[d]!.op})` });
      break;
    }
  }
  // Junk in one sector of base.img after the last checkpoint completed (the
  // one close() takes), when every block is read from base.img.
  const sbFile = model.initial.files.find((f) => f.rel === 'superblock')!;
  const sbInode = inodeKey(sbFile.dev, sbFile.ino);
  const lastCheckpoint = Math.max(...model.writes.filter((w) => w.inode === sbInode && w.durableSeq !== Infinity).map((w) => w.durableSeq));
  const after = points.filter((p) => p.seq >= lastCheckpoint);
  for (let i = 0; i < CANARIES / 2 && after.length > 0; i++) {
    const p = after[i % after.length]!;
    const lba = Math.floor(((i + 0.5) * plan.blocks.length) / (CANARIES / 2));
    out.push({ point: p.index, junk: { inode: baseInode, sector: lba * 8 + (i % 8) }, expect: 'phantom', what: `junk in base.img block ${lba} after the last checkpoint` });
  }
  return out;
}

// ---- worker process ------------------------------------------------------------------------------

interface WorkerResult {
  images: number;
  points: number;
  durableChecked: number;
  lost: string[];
  phantom: string[];
  recoveryFailures: string[];
  builderProblems: string[];
  torn: number;
  canaries: { what: string; expect: string; caught: boolean; detail: string }[];
  reopened: number;
  bytesWritten: number;
  stats: MaterializeStats[];
  ms: number;
}

async function runWorker(runDir: string, index: number): Promise<WorkerResult> {
  const started = Date.now();
  const plan = JSON.parse(fs.readFileSync(path.join(runDir, 'plan.json'), 'utf8')) as Plan;
  const run = loadRun(runDir);
  const model = new Model(run.root, run.initial, run.events);
  const points = model.points();
  const counts = allocate(points, plan.images);
  const result: WorkerResult = {
    images: 0, points: 0, durableChecked: 0, lost: [], phantom: [], recoveryFailures: [], builderProblems: [], torn: 0, canaries: [], reopened: 0, bytesWritten: 0, stats: [], ms: 0,
  };
  let ring = Ring.open({ depth: 64, arenaBytes: ARENA_BYTES });
  let check: (ws: ImageWorkspace, p: CrashPoint, imageNo: number) => Promise<Verdict>;
  if (plan.mode === 'wal') {
    const expected = new Map(plan.records.map((r) => [r.lsn, r]));
    check = async (ws, p, imageNo) => {
      const walDir = path.join(ws.dir, 'wal');
      const v = await checkWalImage(walDir, model, p, expected);
      // The writer itself reopens a share of the images.
      if (imageNo % 8 === 0 && v.recoveryFailure === undefined) {
        ring.setRecording(true, { capBytes: 64 << 20, withData: false });
        const reopened = await reopenWal(ring, walDir, walPromises(model, p).released);
        result.reopened++;
        if (reopened.failure !== undefined) v.recoveryFailure = `reopen: ${reopened.failure}`;
        if (reopened.hung) {
          v.hung = true; // the WAL that hangs keeps this ring
          ring = Ring.open({ depth: 64, arenaBytes: ARENA_BYTES });
          return v;
        }
        ws.afterRecovery(takeOrNone(ring));
        ring.setRecording(false);
      }
      return v;
    };
  } else {
    const bin = fs.readFileSync(path.join(runDir, 'plan.bin'));
    const contents = Array.from({ length: bin.length / BLOCK_BYTES }, (_, i) => bin.subarray(i * BLOCK_BYTES, (i + 1) * BLOCK_BYTES));
    const oracle = new VolumeOracle(model, plan, contents);
    check = async (ws, p) => {
      const { verdict, events } = await recoverVolume(ws.dir, oracle, p.seq);
      if (!verdict.hung) ws.afterRecovery(events);
      result.reopened++;
      return verdict;
    };
  }

  let workspaces = 0;
  const workspace = (): ImageWorkspace => new ImageWorkspace(model, path.join(runDir, `work-${index}-${workspaces++}`));
  const retire = (w: ImageWorkspace): void => {
    result.bytesWritten += w.stats.bytesWritten;
    result.stats.push(w.stats);
    w.close();
  };
  let ws = workspace();
  let hangs = 0;
  for (const p of points) {
    if (hangs >= HANGS_MAX) break;
    if (p.index % plan.workers !== index) continue;
    result.points++;
    const seen = new Set<string>();
    for (let attempt = 0; seen.size < counts[p.index]! && attempt < counts[p.index]! * 4; attempt++) {
      const spec = sampleImage(model, p, pointRng(plan.seed, p.index, attempt));
      if (seen.has(spec.key)) continue;
      seen.add(spec.key);
      ws.materialize(spec);
      result.images++;
      // The builder checks itself against the reference semantics now and then.
      if (result.images % 997 === 1 || VERIFY_ALL) result.builderProblems.push(...verifyImage(model, ws, spec));
      const v = await check(ws, p, result.images);
      result.durableChecked += v.durableChecked;
      result.torn += v.torn;
      if (v.hung) {
        // The open that hangs keeps the directory locked: go on in a new one.
        retire(ws);
        ws = workspace();
        if (++hangs >= HANGS_MAX) {
          result.recoveryFailures.push(`worker ${index} stopped after ${hangs} recoveries that never answered`);
          break;
        }
      }
      const where = `point ${p.index} (seq ${p.seq}) image ${spec.key.slice(0, 80)}`;
      for (const l of v.lost) result.lost.push(`${where}: ${l}`);
      for (const ph of v.phantom) result.phantom.push(`${where}: ${ph}`);
      if (v.recoveryFailure !== undefined) result.recoveryFailures.push(`${where}: ${v.recoveryFailure}`);
    }
  }
  retire(ws);

  // Planted bugs, in their own workspace, by the first worker.
  if (index === 0) {
    const cws = new ImageWorkspace(model, path.join(runDir, 'canary'));
    for (const c of [...plan.canaries].sort((x, y) => x.point - y.point)) {
      const p = points[c.point]!;
      const spec: ImageSpec = sampleImage(model, p, pointRng(plan.seed, p.index, 999), { dropWeight: 1, wholeWeight: 0, tornWeight: 0 });
      if (c.dropDurable !== undefined) spec.dropDurable = c.dropDurable;
      if (c.junk !== undefined) spec.junk = c.junk;
      cws.materialize(spec);
      const problems = verifyImage(model, cws, spec);
      const v = await check(cws, p, 0);
      const caught = c.expect === 'lost' ? v.lost.length > 0 || v.recoveryFailure !== undefined : v.phantom.length > 0;
      result.canaries.push({ what: c.what, expect: c.expect, caught, detail: [...problems, ...v.lost, ...v.phantom, v.recoveryFailure ?? ''].join('; ').slice(0, 300) });
    }
    cws.close();
  }
  await ring.close();
  await closeLentRing();
  result.ms = Date.now() - started;
  return result;
}

if (process.env.BLOCKWAL_CRASH_WORKER !== undefined) {
  const [runDir, index] = process.env.BLOCKWAL_CRASH_WORKER.split(',');
  let finished = false;
  // Nothing in flight and nothing settled: say so rather than end quietly.
  process.on('beforeExit', () => {
    if (finished) return;
    console.error(`crash_images worker ${index}: the event loop emptied before the run finished (a promise nothing will settle)`);
    process.exit(3);
  });
  runWorker(runDir!, Number(index)).then(
    (r) => {
      finished = true;
      process.send!(r, () => process.disconnect());
    },
    (err: Error) => {
      console.error(err.stack);
      process.exit(1);
    },
  );
} else {
  defineTests();
}

function runWorkers(runDir: string, workers: number): Promise<WorkerResult[]> {
  return Promise.all(
    Array.from(
      { length: workers },
      (_, i) =>
        new Promise<WorkerResult>((resolve, reject) => {
          const child = fork(__filename, [], {
            env: { ...process.env, BLOCKWAL_CRASH_WORKER: `${runDir},${i}` },
            execArgv: [],
            stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
          });
          let got: WorkerResult | undefined;
          child.on('message', (m) => (got = m as WorkerResult));
          child.on('exit', (code) => (got !== undefined ? resolve(got) : reject(new Error(`worker ${i} exited with ${code}`))));
        }),
    ),
  );
}

// ---- tests ----------------------------------------------------------------------------------------

interface Summary {
  results: WorkerResult[];
  model: CrashModel;
  points: CrashPoint[];
}

async function checkImages(runDir: string, plan: Plan): Promise<Summary> {
  fs.writeFileSync(path.join(runDir, 'plan.json'), JSON.stringify(plan));
  const results = await runWorkers(runDir, plan.workers);
  const run = loadRun(runDir);
  const model = new Model(run.root, run.initial, run.events);
  return { results, model, points: model.points() };
}

function report(label: string, s: Summary, started: number, extra: string, seed: number): void {
  const sum = (f: (r: WorkerResult) => number): number => s.results.reduce((a, r) => a + f(r), 0);
  const all = <T>(f: (r: WorkerResult) => T[]): T[] => s.results.flatMap(f);
  const canaries = all((r) => r.canaries);
  const torn = sum((r) => r.torn);
  console.log(
    `crash_images: ${sum((r) => r.images)} images at ${s.points.length} persistence points ` +
      `(${s.points.filter((p) => p.persistence).length} right after a sync or DSYNC write), ` +
      `${sum((r) => r.durableChecked)} durable writes checked, ${all((r) => r.lost).length} lost, ` +
      `${all((r) => r.phantom).length} phantom, seed ${seed}`,
  );
  console.log(
    `crash_images: ${label}: ${all((r) => r.recoveryFailures).length} recovery failures; ${extra}; ` +
      `${s.model.writes.length} writes and ${s.model.syncs.length} syncs recorded; ` +
      `${(sum((r) => r.bytesWritten) / 2 ** 20).toFixed(0)} MiB materialized; ` +
      `${torn} torn blocks (sectors of different versions, none of them required); ` +
      `canaries caught ${canaries.filter((c) => c.caught).length}/${canaries.length}; ${Date.now() - started} ms on ${s.results.length} workers`,
  );
  for (const f of s.model.findings) console.log(`crash_images: finding: ${f.kind} at #${f.seq}: ${f.detail}`);
  for (const c of canaries.filter((x) => !x.caught)) console.log(`crash_images: canary missed: ${c.what}: ${c.detail}`);
  for (const line of all((r) => r.recoveryFailures).slice(0, 5)) console.log(`crash_images: recovery failure: ${line}`);
  for (const line of all((r) => r.phantom).slice(0, 5)) console.log(`crash_images: phantom: ${line}`);
  for (const line of all((r) => r.lost).slice(0, 5)) console.log(`crash_images: lost: ${line}`);
  for (const line of all((r) => r.builderProblems).slice(0, 5)) console.log(`crash_images: builder: ${line}`);
  const show = (list: string[]): string => `${list.length}: ${list.slice(0, 8).join('\n')}`;
  assert.deepEqual(all((r) => r.builderProblems), [], 'the image builder agrees with the reference semantics');
  assert.equal(all((r) => r.lost).length, 0, show(all((r) => r.lost)));
  assert.equal(all((r) => r.phantom).length, 0, show(all((r) => r.phantom)));
  assert.equal(all((r) => r.recoveryFailures).length, 0, show(all((r) => r.recoveryFailures)));
  assert.deepEqual(s.model.findings, [], 'the recording shows no buffer changed in flight and no unknown file');
  assert.ok(canaries.length > 0, 'planted bugs were tried');
  assert.deepEqual(canaries.filter((c) => !c.caught).map((c) => c.what), [], 'every planted bug is reported');
}

function runRoot(): string {
  return fs.mkdtempSync(path.join(fs.existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir(), 'blockwal-crash-'));
}

// A failed run (or any, with BLOCKWAL_CRASH_IMAGES_KEEP=1) is kept: the
// recording, the plan and the working directories, for a closer look.
function cleanupRun(runDir: string, passed: boolean): void {
  if (!passed || process.env.BLOCKWAL_CRASH_IMAGES_KEEP === '1') console.log(`crash_images: kept ${runDir}`);
  else fs.rmSync(runDir, { recursive: true, force: true });
}

const WORKERS = Math.max(1, Math.min(os.cpus().length, 4));

function defineTests(): void {
  test('the ring records writes with their bytes, file identities, syncs, directory listings and marks, within a cap', async () => {
    const runDir = runRoot();
    const ring = Ring.open({ depth: 32, arenaBytes: 1 << 20 });
    try {
      const file = path.join(runDir, 'f');
      const fileId = ring.openFile(file, { write: true, create: true, direct: true });
      const slice = ring.alloc(8192);
      slice.bytes.fill(0x5a);
      await ring.write(fileId, slice, 0, 4096); // not recorded: recording is off
      assert.deepEqual(ring.takeRecording(), []);
      ring.setRecording(true, { capBytes: 1 << 20 });
      await ring.write(fileId, slice, 4096, 8192, { dsync: true });
      slice.bytes.fill(0x33); // after completion: allowed
      ring.injectFault({ kind: OpKind.write, errno: 5 });
      await assert.rejects(ring.write(fileId, slice, 0, 4096));
      await ring.fdatasync(fileId);
      const dirId = ring.openFile(runDir);
      await ring.fsync(dirId);
      const markSeq = ring.recordMark(42, 7, 8);
      const events = ring.takeRecording();
      const st = fs.statSync(file);
      const sighting = events.find((e) => e.type === 'file')!;
      assert.equal(Buffer.from(sighting.data!).toString(), file);
      assert.equal(sighting.ino, st.ino);
      const writes = events.filter((e) => e.type === 'submit' && e.kind === OpKind.write);
      assert.equal(writes.length, 2);
      assert.equal(writes[0]!.flags, 2, 'RWF_DSYNC');
      assert.ok(Buffer.from(writes[0]!.data!).equals(Buffer.alloc(8192, 0x5a)), 'the bytes as submitted');
      assert.equal(writes[1]!.bits & 1, 1, 'the injected fault never reached the disk');
      const completes = events.filter((e) => e.type === 'complete');
      assert.deepEqual(completes.map((e) => e.result), [8192, -5, 0, 0]);
      const listing = events.find((e) => e.type === 'dir')!;
      assert.deepEqual(decodeDirListing(listing.data!).map((d) => [d.name, d.ino]), [['f', st.ino]]);
      assert.equal(completes[0]!.bits & 2, 0, 'the buffer did not change in flight');
      assert.ok(events.some((e) => e.type === 'submit' && e.kind === OpKind.fdatasync && e.ino === st.ino));
      assert.deepEqual(events.at(-1), { ...events.at(-1)!, type: 'mark', seq: markSeq, kind: 42, a: 7, b: 8 });
      assert.ok(events.every((e, i) => i === 0 || e.seq > events[i - 1]!.seq), 'in order');
      // A buffer changed after submission and before completion is flagged.
      ring.setRecording(true, { capBytes: 1 << 20 });
      const pending = ring.write(fileId, slice, 0, 4096);
      ring.submitNow(); // submitted now, not at the loop iteration's kick
      slice.bytes.fill(0x77);
      await pending;
      const changed = ring.takeRecording().find((e) => e.type === 'complete')!;
      assert.equal(changed.bits & 2, 2, 'changed in flight');
      // Past the cap the recording stops and says so.
      ring.setRecording(true, { capBytes: 6000 });
      await ring.write(fileId, slice, 0, 8192);
      assert.throws(() => ring.takeRecording(), { code: 'ERR_RECORDING_FULL' });
      ring.setRecording(false);
      ring.free(slice);
    } finally {
      await ring.close();
      fs.rmSync(runDir, { recursive: true, force: true });
    }
  });

  test('the disk model: durability by DSYNC and by a sync after completion, torn and dropped writes, names by inode', () => {
    const runDir = runRoot();
    try {
      const root = path.join(runDir, 'volume');
      fs.mkdirSync(root);
      fs.writeFileSync(path.join(root, 'f'), Buffer.alloc(4096, 'A'));
      const initial = snapshotTree(root);
      const f = initial.files[0]!;
      const d = initial.dirs[0]!;
      const gPath = path.join(root, 'g');
      fs.writeFileSync(gPath, '');
      const g = fs.statSync(gPath);
      const listing = Buffer.alloc(24 + 1);
      listing.writeBigUInt64LE(BigInt(g.ino), 0);
      listing.writeUInt32LE(0o100644, 16);
      listing.writeUInt32LE(1, 20);
      listing.write('g', 24);
      let seq = 0;
      const ev = (e: Partial<RecordingEvent>): RecordingEvent => ({
        seq: ++seq, type: 'submit', kind: 2, purpose: OpPurpose.js, bits: 0, fd: 9, result: 0, flags: 0, slot: 0,
        lengthBytes: 0, offsetBytes: 0, dev: f.dev, ino: f.ino, a: 0, b: 0, data: undefined, timeNs: 0, ...e,
      });
      const events: RecordingEvent[] = [
        ev({ slot: 0, lengthBytes: 1024, data: Buffer.alloc(1024, 'B') }), // 1: write B at 0
        ev({ type: 'complete', slot: 0, result: 1024 }), // 2
        ev({ slot: 1, offsetBytes: 1024, lengthBytes: 512, flags: 2, data: Buffer.alloc(512, 'C') }), // 3: DSYNC C at 1024
        ev({ slot: 2, kind: 4 }), // 4: fdatasync f
        ev({ type: 'complete', slot: 1, result: 512 }), // 5: C durable
        ev({ type: 'complete', slot: 2, kind: 4 }), // 6: B durable
        ev({ type: 'file', kind: 0, dev: g.dev, ino: g.ino, data: Buffer.from(path.join(root, 'g.tmp')) }), // 7
        ev({ slot: 3, dev: g.dev, ino: g.ino, lengthBytes: 512, data: Buffer.alloc(512, 'G') }), // 8: write G to g
        ev({ type: 'complete', slot: 3, result: 512 }), // 9
        ev({ type: 'dir', kind: 0, dev: d.dev, ino: d.ino, data: listing }), // 10: g.tmp renamed to g
        ev({ slot: 4, kind: 3, dev: d.dev, ino: d.ino }), // 11: fsync of the directory
        ev({ slot: 5, lengthBytes: 512, data: Buffer.alloc(512, 'D') }), // 12: write D at 0, never completes
        ev({ type: 'mark', kind: 99 }), // 13
        ev({ type: 'complete', slot: 4, kind: 3 }), // 14: the name g is durable
      ];
      const model = new Model(root, initial, events);
      const points = model.points();
      assert.deepEqual(points.map((p) => [p.seq, p.persistence, p.pendingWrites]), [
        [2, false, 1], [4, false, 2], [5, true, 1], [6, true, 0], [7, false, 0], [9, false, 1], [11, false, 1], [13, false, 2], [14, true, 2],
      ]);
      const fKey = inodeKey(f.dev, f.ino);
      const gKey = inodeKey(g.dev, g.ino);
      const sector = (spec: ImageSpec, inode: string, s: number): string => referenceSector(model, spec, inode, s)?.toString('latin1', 0, 1) ?? '-';
      const at = (index: number): CrashPoint => points[index]!;
      // Before the sync completes B may or may not be there; at 7 it must.
      const seen = new Set<string>();
      for (let i = 0; i < 400; i++) {
        const spec = sampleImage(model, at(1), pointRng(1, 1, i));
        seen.add(sector(spec, fKey, 0) + sector(spec, fKey, 1) + sector(spec, fKey, 2));
      }
      assert.deepEqual([...seen].sort(), ['AAA', 'AAC', 'ABA', 'ABC', 'BAA', 'BAC', 'BBA', 'BBC'], 'B dropped, torn or whole; C likewise');
      const durable = sampleImage(model, at(3), prng(1));
      assert.equal(sector(durable, fKey, 0) + sector(durable, fKey, 1) + sector(durable, fKey, 2) + sector(durable, fKey, 3), 'BBCA');
      // The new file: absent or under its first name until a directory fsync
      // makes its rename durable; G itself is never synced.
      const names = new Set<string>();
      for (let i = 0; i < 400; i++) {
        const spec = sampleImage(model, at(7), pointRng(1, 7, i));
        names.add(`${spec.names.get(gKey)?.name ?? 'absent'}:${sector(spec, fKey, 0)}`);
      }
      assert.deepEqual([...names].sort(), ['absent:B', 'absent:D', 'g.tmp:B', 'g.tmp:D', 'g:B', 'g:D']);
      assert.equal(sampleImage(model, at(8), prng(1)).names.get(gKey)?.name, 'g');
      // The workspace writes what the reference says, and a planted drop of a
      // durable write is visible.
      const ws = new ImageWorkspace(model, path.join(runDir, 'work'));
      for (const [i, p] of points.entries()) {
        const spec = sampleImage(model, p, prng(100 + i));
        if (i === 4) spec.dropDurable = 0;
        ws.materialize(spec);
        assert.deepEqual(verifyImage(model, ws, spec), [], `point ${i}`);
        if (i === 4) assert.equal(fs.readFileSync(ws.pathOfInode(fKey)!).toString('latin1', 0, 1), 'A', 'the planted drop took B out');
      }
      ws.close();
    } finally {
      fs.rmSync(runDir, { recursive: true, force: true });
    }
  });

  test(`crash images of the WAL alone: no lost durable record, no phantom (seed ${SEED})`, async () => {
    const started = Date.now();
    const runDir = runRoot();
    let passed = false;
    try {
      const { records, ops } = await recordWalRun(runDir, SEED);
      const run = loadRun(runDir);
      const model = new Model(run.root, run.initial, run.events);
      const canaries = walCanaries(model, model.points());
      const s = await checkImages(runDir, { mode: 'wal', seed: SEED, images: WAL_IMAGES, workers: WORKERS, records, canaries });
      report('WAL alone', s, started, `${ops} operations, ${records.length} records, ${s.results.reduce((a, r) => a + r.reopened, 0)} images reopened by the writer`, SEED);
      passed = true;
    } finally {
      cleanupRun(runDir, passed);
    }
  });

  test(`crash images of the volume: no lost durable write, no phantom block (seed ${SEED})`, async () => {
    const started = Date.now();
    // BLOCKWAL_CRASH_IMAGES_RUN=<a kept run> checks that run's recording again
    // (the seed replays the workload's choices, not the kernel's timing).
    const kept = process.env.BLOCKWAL_CRASH_IMAGES_RUN;
    const runDir = kept ?? runRoot();
    let passed = false;
    try {
      let opsLine = `a kept run (${runDir})`;
      if (kept === undefined) {
        const { plan: base, contents, counts } = await recordVolumeRun(runDir, SEED);
        fs.writeFileSync(path.join(runDir, 'plan.bin'), Buffer.concat(contents));
        fs.writeFileSync(path.join(runDir, 'plan.json'), JSON.stringify({ ...base, seed: SEED, images: 0, workers: 0, canaries: [] }));
        opsLine = `operations: ${Object.entries(counts).map(([k, v]) => `${v} ${k}`).join(', ')}`;
      }
      const bin = fs.readFileSync(path.join(runDir, 'plan.bin'));
      const contents = Array.from({ length: bin.length / BLOCK_BYTES }, (_, i) => bin.subarray(i * BLOCK_BYTES, (i + 1) * BLOCK_BYTES));
      const plan = JSON.parse(fs.readFileSync(path.join(runDir, 'plan.json'), 'utf8')) as VolumePlan;
      Object.assign(plan, { images: IMAGES, workers: WORKERS });
      const run = loadRun(runDir);
      const model = new Model(run.root, run.initial, run.events);
      plan.canaries = volumeCanaries(model, model.points(), plan, contents);
      const s = await checkImages(runDir, plan);
      const durableOps = new VolumeOracle(model, plan, contents).durableOps();
      report('volume', s, started, `${opsLine}; ${durableOps} of them acknowledged durable (each checked block by block in every later image)`, plan.seed);
      const images = s.results.reduce((a, r) => a + r.images, 0);
      if (IMAGES >= IMAGES_DEFAULT) assert.ok(images >= IMAGES_DEFAULT, `${images} images: at least 20,000`);
      passed = true;
    } finally {
      if (kept === undefined) cleanupRun(runDir, passed);
    }
  });

}
