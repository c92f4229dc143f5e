// The primary's in-memory backlog: the newest records in LSN order, encoded
// as shipped, bounded by bytes. Replicas that are behind by less than it
// holds are fed from here (keep-up and the end of a catch-up); a dirty
// bitmap made when a replica leaves is marked from it.
import type { ApplyChecksum } from './apply_checksum';
import type { ShippedRecord } from '../engine/volume';
import { hugePageBuffer } from '../native/memory';

export interface BacklogEntry {
  lsn: number;
  bytes: Buffer;
  applyChecksum: ApplyChecksum; // the chain after this record
  atMs: number;
  // The blocks it touches (a dirty bitmap made later marks them).
  kind: ShippedRecord['kind'];
  lba: number;
  lengthBlocks: number;
}

const KIND_CODES: readonly ShippedRecord['kind'][] = ['write', 'trim', 'zero', 'control'];
const BACKLOG_CAPACITY_MIN = 1024;
// The records' memory: slabs of this size, each carved into many records
// (the largest record, 1 MiB of payload, fits); larger records get a buffer
// of their own.
const SLAB_BYTES = 4 << 20;
const SLAB_RECORD_BYTES_MAX = SLAB_BYTES / 2;
// Slabs kept free for reuse at most, and the most released ones kept while
// output stays queued.
const SLABS_SPARE = 4;

interface Slab {
  readonly buffer: Buffer;
  live: number; // entries held in it
  sealed: boolean; // no more records are carved from it
}

// What the output taken when a slab was released looked like; opaque here.
export type OutputMark = unknown;

// Whether the sockets that frames go out on still refer to memory they were
// given (a write that did not complete at once refers to its bytes until it
// does): mark() notes the output handed to them so far, passed(m) says
// whether all of it has completed since (ReplicationLink.outputFence).
export interface OutputFence {
  mark(): OutputMark;
  passed(mark: OutputMark): boolean;
}

// No sockets known: a released slab is never reused.
const NEVER_PASSED: OutputFence = { mark: () => undefined, passed: () => false };

interface Released {
  readonly slab: Slab;
  readonly mark: OutputMark; // the output that may still refer to it
}

// Contiguous LSNs, oldest first; bounded by bytes. Held in typed arrays
// (a ring that doubles when full), not an object per record: tens of
// thousands of long-lived entries would each be old-generation garbage
// for the collector once dropped. An entry's bytes stay where the WAL
// encoded them; get() makes a view and an object.
//
// Where the WAL encodes them (take): slabs the backlog reuses. A slab held
// for seconds is old-generation memory, and fresh ones at the write rate
// (100 MB/s and more) made V8 run a full mark-compact for external memory
// pressure twice a second. A slab is reused once it is sealed, no entry is
// held in it, and the output written before it was released has completed
// (the fence: a socket write that did not complete at once still refers to
// the bytes it was given; output written later cannot refer to the slab).
// Until then, or beyond the spare budget, a new slab is allocated and the
// old one left to the collector.
export class Backlog {
  private capacity = BACKLOG_CAPACITY_MIN;
  private head = 0; // ring index of the oldest entry
  private count = 0;
  private lsnOldest = 0;
  private buffers: (ArrayBufferLike | undefined)[] = new Array<ArrayBufferLike | undefined>(BACKLOG_CAPACITY_MIN);
  private byteOffsets = new Float64Array(BACKLOG_CAPACITY_MIN);
  private byteLengths = new Uint32Array(BACKLOG_CAPACITY_MIN);
  private applyChecksums = new BigUint64Array(BACKLOG_CAPACITY_MIN);
  private atMs = new Float64Array(BACKLOG_CAPACITY_MIN);
  private kinds = new Uint8Array(BACKLOG_CAPACITY_MIN);
  private lbas = new Float64Array(BACKLOG_CAPACITY_MIN);
  private lengthBlocks = new Uint32Array(BACKLOG_CAPACITY_MIN);
  bytes = 0;
  private readonly slabs = new Map<ArrayBufferLike, Slab>();
  private slab: Slab | undefined; // the one records are carved from
  private slabUsed = 0;
  private released: Released[] = []; // sealed and empty, maybe still referenced by a socket, oldest first
  private readonly spare: Slab[] = []; // free to reuse
  slabsReused = 0;
  slabsAllocated = 0;

  // Slabs the backlog refers to: holding records, the one being carved,
  // released or spare.
  get slabsKept(): number {
    return this.slabs.size;
  }

  constructor(
    readonly bytesMax: number,
    private readonly output: OutputFence = NEVER_PASSED,
  ) {}

  // Room for one encoded record of spanBytes (a multiple of 8), to be pushed
  // in the same synchronous step (a slab in use is never reused, and one
  // carved but never pushed only wastes its room).
  take(spanBytes: number): Buffer {
    if (spanBytes > SLAB_RECORD_BYTES_MAX) return Buffer.allocUnsafeSlow(spanBytes);
    if (this.slab === undefined || this.slabUsed + spanBytes > SLAB_BYTES) {
      if (this.slab !== undefined) {
        this.slab.sealed = true;
        if (this.slab.live === 0) this.release(this.slab);
      }
      this.slab = this.nextSlab();
      this.slabUsed = 0;
    }
    const out = this.slab.buffer.subarray(this.slabUsed, this.slabUsed + spanBytes);
    this.slabUsed += spanBytes;
    return out;
  }

  private release(slab: Slab): void {
    this.released.push({ slab, mark: this.output.mark() });
  }

  private nextSlab(): Slab {
    // Released slabs whose output has completed are free. Marks are taken in
    // order and output completes in order, so the first one not passed ends
    // the look.
    let free = 0;
    while (free < this.released.length && this.output.passed(this.released[free]!.mark)) free++;
    for (const { slab } of this.released.splice(0, free)) {
      // Beyond a few spares, the collector has it: how many slabs the
      // budget's records fill depends on their sizes (three records of
      // 1 MiB fill a slab), not on the budget alone.
      if (this.spare.length >= SLABS_SPARE) this.slabs.delete(slab.buffer.buffer);
      else this.spare.push(slab);
    }
    // Output not completing (a replica that reads slowly): the oldest
    // released slabs are left to the collector, which frees each once its
    // socket lets go of it; only reusing one would be unsafe.
    while (this.released.length > SLABS_SPARE) this.slabs.delete(this.released.shift()!.slab.buffer.buffer);
    const reused = this.spare.pop();
    if (reused !== undefined) {
      reused.sealed = false;
      this.slabsReused++;
      return reused;
    }
    // Touched whole now: pages first written while records are carved would
    // fault on the write path, and a slab first filled with large records
    // (three of 1 MiB) leaves its last quarter untouched until it is reused.
    // On huge pages: every shipped record is copied into a slab and read
    // back by the socket, a new 4 KiB page (and TLB miss) per record.
    const slab: Slab = { buffer: hugePageBuffer(SLAB_BYTES), live: 0, sealed: false };
    this.slabsAllocated++;
    this.slabs.set(slab.buffer.buffer, slab);
    return slab;
  }

  // An entry no longer held: its slab may be released.
  private drop(buffer: ArrayBufferLike | undefined): void {
    const slab = buffer === undefined ? undefined : this.slabs.get(buffer);
    if (slab === undefined) return;
    slab.live--;
    if (slab.live === 0 && slab.sealed) this.release(slab);
  }

  get lsnFirst(): number {
    return this.count > 0 ? this.lsnOldest : 0;
  }
  get lsnLast(): number {
    return this.count > 0 ? this.lsnOldest + this.count - 1 : 0;
  }

  push(entry: BacklogEntry): void {
    // LSNs come in order; should one ever skip, what is held no longer
    // connects to it: start again from it.
    if (this.count > 0 && entry.lsn !== this.lsnOldest + this.count) this.clear();
    if (this.count === this.capacity) this.grow();
    if (this.count === 0) this.lsnOldest = entry.lsn;
    const i = (this.head + this.count) & (this.capacity - 1);
    this.buffers[i] = entry.bytes.buffer;
    const slab = this.slabs.get(entry.bytes.buffer);
    if (slab !== undefined) slab.live++;
    this.byteOffsets[i] = entry.bytes.byteOffset;
    this.byteLengths[i] = entry.bytes.byteLength;
    this.applyChecksums[i] = entry.applyChecksum;
    this.atMs[i] = entry.atMs;
    this.kinds[i] = KIND_CODES.indexOf(entry.kind);
    this.lbas[i] = entry.lba;
    this.lengthBlocks[i] = entry.lengthBlocks;
    this.count++;
    this.bytes += entry.bytes.byteLength;
    while (this.bytes > this.bytesMax && this.count > 1) {
      this.bytes -= this.byteLengths[this.head]!;
      this.drop(this.buffers[this.head]);
      this.buffers[this.head] = undefined;
      this.head = (this.head + 1) & (this.capacity - 1);
      this.count--;
      this.lsnOldest++;
    }
  }

  get(lsn: number): BacklogEntry | undefined {
    if (this.count === 0 || lsn < this.lsnOldest || lsn >= this.lsnOldest + this.count) return undefined;
    const i = (this.head + (lsn - this.lsnOldest)) & (this.capacity - 1);
    return {
      lsn,
      bytes: Buffer.from(this.buffers[i]!, this.byteOffsets[i]!, this.byteLengths[i]!),
      applyChecksum: this.applyChecksums[i]!,
      atMs: this.atMs[i]!,
      kind: KIND_CODES[this.kinds[i]!]!,
      lba: this.lbas[i]!,
      lengthBlocks: this.lengthBlocks[i]!,
    };
  }

  // The record at lsn as shipped (undefined when not held): a view, without
  // the rest of an entry (what the pump needs per record).
  recordBytes(lsn: number): Buffer | undefined {
    if (this.count === 0 || lsn < this.lsnOldest || lsn >= this.lsnOldest + this.count) return undefined;
    const i = (this.head + (lsn - this.lsnOldest)) & (this.capacity - 1);
    return Buffer.from(this.buffers[i]!, this.byteOffsets[i]!, this.byteLengths[i]!);
  }

  // Bytes of the record at lsn (0 when not held), without making an entry.
  bytesOf(lsn: number): number {
    if (this.count === 0 || lsn < this.lsnOldest || lsn >= this.lsnOldest + this.count) return 0;
    return this.byteLengths[(this.head + (lsn - this.lsnOldest)) & (this.capacity - 1)]!;
  }

  // When the record at lsn was written (undefined when not held).
  atMsOf(lsn: number): number | undefined {
    if (this.count === 0 || lsn < this.lsnOldest || lsn >= this.lsnOldest + this.count) return undefined;
    return this.atMs[(this.head + (lsn - this.lsnOldest)) & (this.capacity - 1)]!;
  }

  // Bytes of records in (fromLsn, toLsn] still held.
  bytesBetween(fromLsn: number, toLsn: number): number {
    let sum = 0;
    for (let lsn = Math.max(fromLsn + 1, this.lsnFirst); lsn <= toLsn; lsn++) sum += this.bytesOf(lsn);
    return sum;
  }

  private clear(): void {
    for (let n = 0; n < this.count; n++) this.drop(this.buffers[(this.head + n) & (this.capacity - 1)]);
    this.buffers.fill(undefined);
    this.head = 0;
    this.count = 0;
    this.bytes = 0;
  }

  // Twice the room, the entries laid out oldest first from index 0.
  private grow(): void {
    const old = this.capacity;
    const cap = old * 2;
    const order = (i: number): number => (this.head + i) & (old - 1);
    const buffers = new Array<ArrayBufferLike | undefined>(cap);
    const copy = <T extends Float64Array | Uint32Array | BigUint64Array | Uint8Array>(from: T, make: (n: number) => T): T => {
      const to = make(cap);
      for (let i = 0; i < this.count; i++) to[i] = from[order(i)]!;
      return to;
    };
    for (let i = 0; i < this.count; i++) buffers[i] = this.buffers[order(i)];
    this.byteOffsets = copy(this.byteOffsets, (n) => new Float64Array(n));
    this.byteLengths = copy(this.byteLengths, (n) => new Uint32Array(n));
    this.applyChecksums = copy(this.applyChecksums, (n) => new BigUint64Array(n));
    this.atMs = copy(this.atMs, (n) => new Float64Array(n));
    this.kinds = copy(this.kinds, (n) => new Uint8Array(n));
    this.lbas = copy(this.lbas, (n) => new Float64Array(n));
    this.lengthBlocks = copy(this.lengthBlocks, (n) => new Uint32Array(n));
    this.buffers = buffers;
    this.capacity = cap;
    this.head = 0;
  }
}
