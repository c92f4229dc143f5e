// The crash test's content, history and checker (shared by the parent test
// and the child program, test/support/crash_child.ts).
//
// Granularity: 512-byte sectors. Every sector a write carries is generated
// from (write id, absolute sector number): a header {magic, id, sector,
// mix(id, sector)} and 496 bytes of a seeded xorshift stream. Reading a
// sector back therefore names exactly one version (a write id, or 0 for all
// zeros), and any mix of two versions inside a sector, or stray bytes, fails
// the byte-for-byte regeneration (torn). Writes and zeroing ops are issued at
// sector granularity only: block-aligned most of the time, and a share at
// sector offsets that are not block-aligned (so the engine's sub-block
// read-modify-write runs, including concurrently on disjoint sectors of one
// block). Byte-granular writes would make versions mix legitimately inside a
// sector, and a per-byte model of a 64 MiB volume would not be exact and cheap
// at the same time; sector granularity keeps the check exact (1 KiB nbdfuse
// writes are sector-aligned).
//
// History: ids grow in issue order across all cycles. The child never has
// two overlapping operations in flight (checked here), so the operations on
// one sector are ordered by real time: each was issued after the previous
// one was acknowledged (or after the child that issued it was killed). An
// operation is durable when it was a FUA write and resolved, or when it
// resolved before the start of a flush, by the same child, that resolved.
//
// Rule checked per sector after a crash and recovery (R-sector): with the
// sector's history [baseline, op1..opN] since the last verification, where baseline is what
// the previous verification read (a recovered, hence durable, state) and opK
// the last durable op (K = 0 for the baseline), the sector must hold the
// version of opK or of any op issued after it. Otherwise it is: torn (no
// version's bytes), lost (an older version: a durable write rolled back) or
// phantom (a well-formed version that was never issued to this sector).
// What is read becomes the baseline of the next cycle.

export const SECTOR_BYTES = 512;
export const BLOCK_BYTES = 4096;
const SECTOR_WORDS = SECTOR_BYTES / 4;
const MAGIC = 0x4b435742; // "BWCK"

// Shared configuration of the volume under test.
export const CRASH_VOLUME_BYTES = 64 << 20;
export const CRASH_WAL_SEGMENT_BYTES = 1 << 20;
export const CRASH_WAL_SEGMENTS_MAX = 8;
// The ring arena is zeroed and registered at every open (about 1 ms per MiB
// here); the default 64 MiB would add ~70 ms to each of the two opens a cycle
// makes. 24 MiB holds the WAL's 16 group slots and the I/O buffers.
export const CRASH_ARENA_BYTES = 24 << 20;

export const ZERO_VERSION = 0;
const UNKNOWN_BASELINE = 0xffffffff; // after an anomaly: accept whatever is read next

function mix32(a: number, b: number): number {
  let h = (Math.imul(a ^ 0x9e3779b9, 0x85ebca6b) ^ Math.imul(b + 0x7f4a7c15, 0xc2b2ae35)) >>> 0;
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

// Fills one sector's 128 words with the content of version `id` of `sector`.
function fillWords(words: Uint32Array, at: number, id: number, sector: number): void {
  const check = mix32(id, sector);
  words[at] = MAGIC;
  words[at + 1] = id;
  words[at + 2] = sector;
  words[at + 3] = check;
  let x = check | 1;
  for (let i = 4; i < SECTOR_WORDS; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    words[at + i] = x >>> 0;
  }
}

function wordsOf(buf: Uint8Array): Uint32Array {
  if (buf.byteOffset % 4 !== 0) throw new RangeError('content buffer must be 4-byte aligned');
  return new Uint32Array(buf.buffer, buf.byteOffset, buf.byteLength >>> 2);
}

// The payload of write `id` at `firstSector`, `sectorCount` sectors long.
export function writeContent(id: number, firstSector: number, sectorCount: number): Buffer {
  if (id <= 0 || id >= UNKNOWN_BASELINE) throw new RangeError(`bad write id ${id}`);
  const buf = Buffer.alloc(sectorCount * SECTOR_BYTES); // Buffer.alloc is never pooled: aligned
  const words = wordsOf(buf);
  for (let i = 0; i < sectorCount; i++) fillWords(words, i * SECTOR_WORDS, id, firstSector + i);
  return buf;
}

export const SECTOR_TORN = -1; // bytes of no version
export const SECTOR_MISPLACED = -2; // a whole version, but of another sector

// Which version a sector's bytes are: a write id, ZERO_VERSION, or a negative verdict.
export function decodeSector(words: Uint32Array, at: number, sector: number, scratch: Uint32Array): number {
  if (words[at] !== MAGIC) {
    for (let i = 0; i < SECTOR_WORDS; i++) if (words[at + i] !== 0) return SECTOR_TORN;
    return ZERO_VERSION;
  }
  const id = words[at + 1]!;
  const claimed = words[at + 2]!;
  if (id === 0 || words[at + 3] !== mix32(id, claimed)) return SECTOR_TORN;
  fillWords(scratch, 0, id, claimed);
  for (let i = 4; i < SECTOR_WORDS; i++) if (words[at + i] !== scratch[i]) return SECTOR_TORN;
  return claimed === sector ? id : SECTOR_MISPLACED;
}

// ---- the child's protocol -------------------------------------------------
// One line per event, written synchronously to stdout (a pipe: the parent
// has the line before the child goes on):
//   O                       about to open (or create) the volume
//   R                       open and ready
//   W <id> <sector> <count> <fua 0|1>   before issuing a write
//   T <id> <sector> <count>  before issuing a trim
//   Z <id> <sector> <count>  before issuing a write-zeroes
//   A <id>                  the op resolved
//   F <n>                   before calling flush number n
//   G <n>                   flush n resolved
//   X                       closed cleanly (the child ran out of time)

export type OpKind = 'write' | 'trim' | 'zero';

interface Op {
  readonly id: number;
  readonly kind: OpKind;
  readonly firstSector: number;
  readonly sectorCount: number;
  readonly fua: boolean;
  ackSeq: number; // 0 until resolved
  durable: boolean;
}

export interface CycleReport {
  opsIssued: number;
  opsAcked: number;
  opsDurable: number;
  flushesResolved: number;
  sectorsVerified: number;
  durableOpsChecked: number; // durable ops that are the newest durable version of >= 1 verified sector
  durableSectorsChecked: number;
  lostSectors: number;
  lostOps: number; // distinct durable ops (or the baseline) with a lost sector
  phantomSectors: number;
  tornSectors: number;
  ackedOnlyMissing: number; // acked, not durable, and not visible (allowed; 0 expected under SIGKILL)
  inFlightLanded: number; // issued, never acked, yet visible
  anomalies: string[]; // the first few, described
}

const MAX_ANOMALIES_KEPT = 20;

function versionOf(op: Op): number {
  return op.kind === 'write' ? op.id : ZERO_VERSION;
}

export class CrashModel {
  readonly sectors: number;
  private readonly baseline: Uint32Array; // per sector: version known at cycle start
  private ops = new Map<number, Op>();
  private touched = new Map<number, number[]>(); // sector -> op ids, issue order
  private inFlightSectors: Uint8Array;
  private ackOrder: number[] = []; // op ids in the order they resolved (ackSeq - 1)
  private flushMarkedUpTo = 0; // every ack up to here is covered by a resolved flush of this child
  private flushStarts = new Map<number, number>(); // flush n -> ack count at its start
  private flushesResolved = 0;
  private cycleFirstId = 1;
  nextId = 1; // the first id the next cycle's child may use
  opening = false;
  ready = false;
  closedCleanly = false;

  constructor(volumeBytes: number) {
    if (volumeBytes % BLOCK_BYTES !== 0) throw new RangeError('volume size must be whole blocks');
    this.sectors = volumeBytes / SECTOR_BYTES;
    this.baseline = new Uint32Array(this.sectors); // a new volume reads as zeros
    this.inFlightSectors = new Uint8Array(this.sectors);
  }

  // Starts a cycle (after a verification): the child will use ids from nextId on.
  beginCycle(): void {
    this.ops.clear();
    this.touched.clear();
    this.ackOrder = [];
    this.flushesResolved = 0;
    this.cycleFirstId = this.nextId;
    this.nextChild();
  }

  // Another child on the same unverified history (the previous one was
  // killed): its ops follow every op issued before, its flushes cover only
  // its own acknowledgements, and ops left in flight by the dead child never
  // resolve.
  nextChild(): void {
    this.inFlightSectors.fill(0);
    this.flushMarkedUpTo = this.ackOrder.length;
    this.flushStarts.clear();
    this.opening = false;
    this.ready = false;
    this.closedCleanly = false;
  }

  // Feeds one protocol line; throws on a line the protocol does not allow
  // (a harness bug, not a volume bug).
  ingest(line: string): void {
    const f = line.split(' ');
    const num = (i: number): number => {
      const v = Number(f[i]);
      if (!Number.isSafeInteger(v) || v < 0) throw new Error(`crash protocol: bad field ${i} in "${line}"`);
      return v;
    };
    switch (f[0]) {
      case 'O':
        this.opening = true;
        return;
      case 'R':
        this.ready = true;
        return;
      case 'X':
        this.closedCleanly = true;
        return;
      case 'W':
        return this.issue({ id: num(1), kind: 'write', firstSector: num(2), sectorCount: num(3), fua: num(4) === 1, ackSeq: 0, durable: false });
      case 'T':
        return this.issue({ id: num(1), kind: 'trim', firstSector: num(2), sectorCount: num(3), fua: false, ackSeq: 0, durable: false });
      case 'Z':
        return this.issue({ id: num(1), kind: 'zero', firstSector: num(2), sectorCount: num(3), fua: false, ackSeq: 0, durable: false });
      case 'A':
        return this.ack(num(1));
      case 'F':
        this.flushStarts.set(num(1), this.ackOrder.length);
        return;
      case 'G': {
        const start = this.flushStarts.get(num(1));
        if (start === undefined) throw new Error(`crash protocol: flush resolved but never started: "${line}"`);
        for (let i = this.flushMarkedUpTo; i < start; i++) this.ops.get(this.ackOrder[i]!)!.durable = true;
        this.flushMarkedUpTo = Math.max(this.flushMarkedUpTo, start);
        this.flushesResolved++;
        return;
      }
      default:
        throw new Error(`crash protocol: unknown line "${line}"`);
    }
  }

  private issue(op: Op): void {
    if (op.id !== this.nextId) throw new Error(`crash protocol: id ${op.id} issued, expected ${this.nextId}`);
    if (op.sectorCount < 1 || op.firstSector + op.sectorCount > this.sectors) throw new Error(`crash protocol: op ${op.id} out of range`);
    for (let s = op.firstSector; s < op.firstSector + op.sectorCount; s++) {
      if (this.inFlightSectors[s] !== 0) throw new Error(`crash protocol: op ${op.id} overlaps an op in flight at sector ${s}`);
    }
    this.nextId++;
    this.ops.set(op.id, op);
    for (let s = op.firstSector; s < op.firstSector + op.sectorCount; s++) {
      this.inFlightSectors[s] = 1;
      const list = this.touched.get(s);
      if (list === undefined) this.touched.set(s, [op.id]);
      else list.push(op.id);
    }
  }

  private ack(id: number): void {
    const op = this.ops.get(id);
    if (op === undefined || op.ackSeq !== 0) throw new Error(`crash protocol: ack of unknown or acked op ${id}`);
    this.ackOrder.push(id);
    op.ackSeq = this.ackOrder.length;
    op.durable = op.fua;
    this.inFlightSectors.fill(0, op.firstSector, op.firstSector + op.sectorCount);
  }

  private isDurable(op: Op): boolean {
    return op.durable;
  }

  // Test hook for the self-check: the model claims a durable FUA write that
  // the volume never received.
  plantDurableWrite(firstSector: number, sectorCount: number): number {
    const id = this.nextId;
    this.ingest(`W ${id} ${firstSector} ${sectorCount} 1`);
    this.ingest(`A ${id}`);
    return id;
  }

  // Sector ranges [first, end) to read: every sector touched this cycle,
  // merged, plus `extra` ranges (a scan of untouched ones).
  rangesToVerify(extra: ReadonlyArray<readonly [number, number]>): Array<[number, number]> {
    const starts = [...this.touched.keys()].sort((a, b) => a - b);
    const ranges: Array<[number, number]> = extra.map(([a, b]) => [a, b]);
    for (const s of starts) ranges.push([s, s + 1]);
    ranges.sort((a, b) => a[0] - b[0]);
    const merged: Array<[number, number]> = [];
    for (const r of ranges) {
      const last = merged[merged.length - 1];
      if (last !== undefined && r[0] <= last[1]) last[1] = Math.max(last[1], r[1]);
      else merged.push([r[0], r[1]]);
    }
    return merged;
  }

  // Reads the given sector ranges through `read` and checks R-sector on
  // each sector; then the read state becomes the baseline.
  async verify(
    read: (offsetBytes: number, lengthBytes: number) => Promise<Uint8Array>,
    ranges: ReadonlyArray<readonly [number, number]>,
    chunkSectors = 2048,
  ): Promise<CycleReport> {
    const report = this.emptyReport();
    const durableCheckedOps = new Set<number>();
    const lostOps = new Set<number>();
    const visibleOps = new Set<number>();
    const scratch = new Uint32Array(SECTOR_WORDS);
    for (const [first, end] of ranges) {
      for (let at = first; at < end; at += chunkSectors) {
        const count = Math.min(chunkSectors, end - at);
        const data = await read(at * SECTOR_BYTES, count * SECTOR_BYTES);
        if (data.byteLength !== count * SECTOR_BYTES) throw new Error(`short read at sector ${at}: ${data.byteLength} bytes`);
        const words = data.byteOffset % 4 === 0 ? wordsOf(data) : wordsOf(Uint8Array.from(data));
        for (let i = 0; i < count; i++) {
          const got = decodeSector(words, i * SECTOR_WORDS, at + i, scratch);
          this.checkSector(at + i, got, report, durableCheckedOps, lostOps, visibleOps);
        }
      }
    }
    this.finishReport(report, durableCheckedOps, lostOps, visibleOps);
    return report;
  }

  private emptyReport(): CycleReport {
    let acked = 0;
    let durable = 0;
    for (const op of this.ops.values()) {
      if (op.ackSeq !== 0) acked++;
      if (this.isDurable(op)) durable++;
    }
    return {
      opsIssued: this.ops.size, opsAcked: acked, opsDurable: durable, flushesResolved: this.flushesResolved,
      sectorsVerified: 0, durableOpsChecked: 0, durableSectorsChecked: 0, lostSectors: 0, lostOps: 0,
      phantomSectors: 0, tornSectors: 0, ackedOnlyMissing: 0, inFlightLanded: 0, anomalies: [],
    };
  }

  private checkSector(sector: number, got: number, report: CycleReport, durableChecked: Set<number>, lostOps: Set<number>, visible: Set<number>): void {
    report.sectorsVerified++;
    const ids = this.touched.get(sector) ?? [];
    const history = ids.map((id) => this.ops.get(id)!);
    let k = -1; // index of the newest durable op; -1: the baseline
    for (let i = history.length - 1; i >= 0; i--) {
      if (this.isDurable(history[i]!)) {
        k = i;
        break;
      }
    }
    const base = this.baseline[sector]!;
    if (k >= 0) {
      durableChecked.add(history[k]!.id);
      report.durableSectorsChecked++;
    }
    let matched = -2; // index in history of the version read; -1 the baseline
    if (got >= 0) {
      for (let i = history.length - 1; i >= Math.max(k, 0); i--) {
        if (versionOf(history[i]!) === got) {
          matched = i;
          break;
        }
      }
      if (matched === -2 && k === -1 && (base === got || base === UNKNOWN_BASELINE)) matched = -1;
    } else if (k === -1 && base === UNKNOWN_BASELINE) {
      matched = -1;
    }
    if (matched !== -2) {
      this.noteVisible(history, matched, visible);
      this.baseline[sector] = got >= 0 ? got : UNKNOWN_BASELINE;
      return;
    }
    this.classifyAnomaly(sector, got, history, k, base, report, lostOps);
    this.baseline[sector] = got >= 0 ? got : UNKNOWN_BASELINE;
  }

  // Informational figures: which non-durable ops turned out visible.
  private noteVisible(history: Op[], matched: number, visible: Set<number>): void {
    if (matched >= 0) visible.add(history[matched]!.id);
    // Every op on this sector before the one read was overtaken, so it did
    // reach the log too (the log is a prefix); count those as visible.
    for (let i = 0; i < matched; i++) visible.add(history[i]!.id);
  }

  private classifyAnomaly(sector: number, got: number, history: Op[], k: number, base: number, report: CycleReport, lostOps: Set<number>): void {
    const expected = k >= 0 ? `op ${history[k]!.id} (${history[k]!.kind}) or later` : `baseline ${base === 0 ? 'zeros' : `v${base}`}`;
    const allowed = [...(k === -1 ? [base] : []), ...history.slice(Math.max(k, 0)).map(versionOf)];
    let verdict: string;
    if (got === SECTOR_TORN) {
      report.tornSectors++;
      verdict = 'torn (bytes of no version)';
    } else if (got === SECTOR_MISPLACED) {
      report.phantomSectors++;
      verdict = 'phantom (a version of another sector)';
    } else if (got === ZERO_VERSION || got < this.cycleFirstId || history.slice(0, Math.max(k, 0)).some((op) => versionOf(op) === got)) {
      report.lostSectors++;
      lostOps.add(k >= 0 ? history[k]!.id : 0);
      verdict = `lost (older version ${got === 0 ? 'zeros' : `v${got}`})`;
    } else {
      report.phantomSectors++;
      verdict = `phantom (v${got} was never issued to this sector)`;
    }
    if (report.anomalies.length < MAX_ANOMALIES_KEPT) {
      report.anomalies.push(`sector ${sector} (byte ${sector * SECTOR_BYTES}): ${verdict}; expected ${expected}; allowed [${allowed.map((v) => (v === 0 ? 'zeros' : `v${v}`)).join(' ')}]`);
    }
  }

  private finishReport(report: CycleReport, durableChecked: Set<number>, lostOps: Set<number>, visible: Set<number>): void {
    report.durableOpsChecked = durableChecked.size;
    report.lostOps = lostOps.size;
    for (const op of this.ops.values()) {
      if (op.ackSeq !== 0 && !this.isDurable(op) && !visible.has(op.id) && this.wasVerifiable(op)) report.ackedOnlyMissing++;
      if (op.ackSeq === 0 && visible.has(op.id)) report.inFlightLanded++;
    }
  }

  // Whether an op could have shown anywhere: some sector of it has it as
  // its newest op (so its absence there is meaningful).
  private wasVerifiable(op: Op): boolean {
    for (let s = op.firstSector; s < op.firstSector + op.sectorCount; s++) {
      const ids = this.touched.get(s);
      if (ids !== undefined && ids[ids.length - 1] === op.id) return true;
    }
    return false;
  }
}

// Sums cycle reports.
export function addReports(total: CycleReport, r: CycleReport): void {
  for (const key of Object.keys(total) as Array<keyof CycleReport>) {
    if (key === 'anomalies') {
      for (const a of r.anomalies) if (total.anomalies.length < MAX_ANOMALIES_KEPT) total.anomalies.push(a);
    } else {
      total[key] += r[key];
    }
  }
}

export function zeroReport(): CycleReport {
  return {
    opsIssued: 0, opsAcked: 0, opsDurable: 0, flushesResolved: 0, sectorsVerified: 0, durableOpsChecked: 0,
    durableSectorsChecked: 0, lostSectors: 0, lostOps: 0, phantomSectors: 0, tornSectors: 0, ackedOnlyMissing: 0,
    inFlightLanded: 0, anomalies: [],
  };
}
