// The primary's in-memory backlog: the newest records in LSN order, encoded
// as shipped, bounded by bytes. Replicas that are behind by less than it
// holds are fed from here (keep-up and the end of a catch-up); a dirty
// bitmap made when a replica leaves is marked from it.
import type { ApplyChecksum } from './apply_checksum';
import type { ShippedRecord } from '../engine/volume';

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

// Contiguous LSNs, oldest first; bounded by bytes. Held in typed arrays
// (a ring that doubles when full), not an object per record: tens of
// thousands of long-lived entries would each be old-generation garbage
// for the collector once dropped. An entry's bytes stay where the WAL
// encoded them (its copy-out slab); get() makes a view and an object.
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

  constructor(readonly bytesMax: number) {}

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
