// The dirty map: where the newest version of each block lives until the
// flusher has applied it to base.img and the checkpoint has passed it.
//
// Two structures: per-block entries for write records (the record's location
// in the WAL, kept once per record, and the block's index in it), and an
// interval map of zeroed ranges (trim and write-zeroes records, which may
// cover a whole 16 TiB volume, so they are never expanded per block).
//
// Invariant (newest-wins, checked in tests): a block entry is always newer
// than any zero range covering its block, because inserting a zero range
// deletes the older block entries inside it and records arrive in LSN order.
// So a lookup is: block entry, else covering zero range, else base.img.

import type { CheckpointBlocks } from './checkpoint_plan';

export interface BlockEntry {
  readonly lsn: number;
  readonly segmentSeq: number;
  readonly recordOffsetBytes: number; // record header in its segment
  readonly recordSpanBytes: number;
  readonly indexInRecord: number; // which block of the record's payload
}

export interface ZeroRange {
  startBlock: number;
  endBlock: number; // exclusive
  lsn: number;
  kind: 'trim' | 'zero';
}

export type Lookup = { kind: 'write'; entry: BlockEntry } | { kind: 'zero'; range: ZeroRange } | undefined;

// Blocks of a record (RECORD_BLOCKS_MAX is 256): a block's value packs its
// record's slot and its index in that record.
const INDEX_SPAN = 1024;
const SLOTS_MIN = 1024;

export class DirtyMap {
  // lba → slot × INDEX_SPAN + indexInRecord. No object per block: the map
  // lives from one checkpoint to the next, long enough for the collector to
  // move every entry to the old generation, where a million small objects
  // (a few GiB of sequential writes) would cost every major collection.
  private readonly blocks = new Map<number, number>();
  // Per record slot: where the record lies, and how many blocks point to it
  // (the slot is free again at 0).
  private lsn = new Float64Array(SLOTS_MIN);
  private segmentSeq = new Float64Array(SLOTS_MIN);
  private recordOffsetBytes = new Float64Array(SLOTS_MIN);
  private recordSpanBytes = new Float64Array(SLOTS_MIN);
  private refs = new Uint32Array(SLOTS_MIN);
  private freeSlots: number[] = [];
  private slotsUsed = 0; // slots ever handed out (the rest lie above)
  private zeros: ZeroRange[] = []; // sorted by startBlock, non-overlapping

  get dirtyBlocks(): number {
    return this.blocks.size;
  }

  get zeroRanges(): number {
    return this.zeros.length;
  }

  // A write record covering [lba, lba + lengthBlocks).
  setWrite(lba: number, lengthBlocks: number, lsn: number, segmentSeq: number, recordOffsetBytes: number, recordSpanBytes: number): void {
    if (lengthBlocks <= 0) return;
    if (lengthBlocks > INDEX_SPAN) throw new RangeError(`a record of ${lengthBlocks} blocks is larger than the dirty map takes (${INDEX_SPAN})`);
    const slot = this.takeSlot();
    this.lsn[slot] = lsn;
    this.segmentSeq[slot] = segmentSeq;
    this.recordOffsetBytes[slot] = recordOffsetBytes;
    this.recordSpanBytes[slot] = recordSpanBytes;
    this.refs[slot] = lengthBlocks;
    const base = slot * INDEX_SPAN;
    for (let i = 0; i < lengthBlocks; i++) {
      const old = this.blocks.get(lba + i);
      if (old !== undefined) this.unref(old);
      this.blocks.set(lba + i, base + i);
    }
  }

  // Whether the dirty map holds anything for the block (a write or a zero range).
  has(lba: number): boolean {
    return this.blocks.has(lba) || this.findZero(lba) !== undefined;
  }

  // A trim or zero record: replaces what it covers (it is the newest record).
  setZero(startBlock: number, lengthBlocks: number, lsn: number, kind: 'trim' | 'zero'): void {
    const endBlock = startBlock + lengthBlocks;
    this.deleteBlocksIn(startBlock, endBlock);
    const kept: ZeroRange[] = [];
    for (const r of this.zeros) {
      if (r.endBlock <= startBlock || r.startBlock >= endBlock) {
        kept.push(r);
        continue;
      }
      if (r.startBlock < startBlock) kept.push({ ...r, endBlock: startBlock });
      if (r.endBlock > endBlock) kept.push({ ...r, startBlock: endBlock });
    }
    kept.push({ startBlock, endBlock, lsn, kind });
    kept.sort((a, b) => a.startBlock - b.startBlock);
    this.zeros = kept;
  }

  lookup(lba: number): Lookup {
    const value = this.blocks.get(lba);
    if (value !== undefined) return { kind: 'write', entry: this.entryOf(value) };
    const range = this.findZero(lba);
    return range === undefined ? undefined : { kind: 'zero', range };
  }

  // The first zero range ending after lba (or undefined), for range scans.
  zeroRangeAtOrAfter(lba: number): ZeroRange | undefined {
    return this.zeros[this.zeroIndexAtOrAfter(lba)];
  }

  private zeroIndexAtOrAfter(lba: number): number {
    let lo = 0;
    let hi = this.zeros.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.zeros[mid]!.endBlock <= lba) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  // Dirty block numbers in [startBlock, endBlock), sorted.
  blocksIn(startBlock: number, endBlock: number): number[] {
    const out: number[] = [];
    if (endBlock - startBlock < this.blocks.size) {
      for (let b = startBlock; b < endBlock; b++) if (this.blocks.has(b)) out.push(b);
      return out;
    }
    for (const lba of this.blocks.keys()) if (lba >= startBlock && lba < endBlock) out.push(lba);
    return out.sort((a, b) => a - b);
  }

  // Zero ranges overlapping [startBlock, endBlock), in order.
  zeroRangesIn(startBlock: number, endBlock: number): ZeroRange[] {
    const out: ZeroRange[] = [];
    for (let i = this.zeroIndexAtOrAfter(startBlock); i < this.zeros.length && this.zeros[i]!.startBlock < endBlock; i++) out.push(this.zeros[i]!);
    return out;
  }

  // What the flusher applies for a checkpoint at lsnMax: a snapshot (later
  // writes may reuse a record's slot) of the blocks in LBA order, with each
  // record's place copied out once (checkpoint_plan.ts).
  collect(lsnMax: number): { zeros: ZeroRange[]; blocks: CheckpointBlocks } {
    const zeros = this.zeros.filter((r) => r.lsn <= lsnMax).map((r) => ({ ...r }));
    const lba = new Float64Array(this.blocks.size);
    let count = 0;
    this.blocks.forEach((value, block) => {
      if (this.lsn[Math.floor(value / INDEX_SPAN)]! <= lsnMax) lba[count++] = block;
    });
    lba.subarray(0, count).sort(); // numeric order, no comparator
    const rec = new Uint32Array(count);
    const index = new Uint32Array(count);
    const recOfSlot = new Int32Array(this.slotsUsed).fill(-1);
    const slots = new Uint32Array(count);
    let records = 0;
    for (let i = 0; i < count; i++) {
      const value = this.blocks.get(lba[i]!)!;
      const slot = Math.floor(value / INDEX_SPAN);
      let r = recOfSlot[slot]!;
      if (r < 0) {
        r = recOfSlot[slot] = records;
        slots[records++] = slot;
      }
      rec[i] = r;
      index[i] = value - slot * INDEX_SPAN;
    }
    const column = (from: Float64Array): Float64Array => {
      const out = new Float64Array(records);
      for (let r = 0; r < records; r++) out[r] = from[slots[r]!]!;
      return out;
    };
    return {
      zeros,
      blocks: {
        count,
        lba: lba.subarray(0, count),
        rec,
        index,
        records,
        recLsn: column(this.lsn),
        recSegmentSeq: column(this.segmentSeq),
        recOffsetBytes: column(this.recordOffsetBytes),
        recSpanBytes: column(this.recordSpanBytes),
      },
    };
  }

  // After a checkpoint at lsnMax: forget what base.img now holds. Entries
  // replaced meanwhile by newer records stay.
  dropUpTo(lsnMax: number): void {
    this.blocks.forEach((value, lba) => {
      if (this.lsn[Math.floor(value / INDEX_SPAN)]! <= lsnMax) {
        this.blocks.delete(lba);
        this.unref(value);
      }
    });
    this.zeros = this.zeros.filter((r) => r.lsn > lsnMax);
  }

  private entryOf(value: number): BlockEntry {
    const slot = Math.floor(value / INDEX_SPAN);
    return {
      lsn: this.lsn[slot]!,
      segmentSeq: this.segmentSeq[slot]!,
      recordOffsetBytes: this.recordOffsetBytes[slot]!,
      recordSpanBytes: this.recordSpanBytes[slot]!,
      indexInRecord: value - slot * INDEX_SPAN,
    };
  }

  private takeSlot(): number {
    const free = this.freeSlots.pop();
    if (free !== undefined) return free;
    if (this.slotsUsed === this.lsn.length) this.growSlots();
    return this.slotsUsed++;
  }

  // One block no longer points to the record in the slot of `value`.
  private unref(value: number): void {
    const slot = Math.floor(value / INDEX_SPAN);
    if (--this.refs[slot]! === 0) this.freeSlots.push(slot);
  }

  private growSlots(): void {
    const n = this.lsn.length * 2;
    const grow = (a: Float64Array<ArrayBuffer>): Float64Array<ArrayBuffer> => {
      const b = new Float64Array(n);
      b.set(a);
      return b;
    };
    this.lsn = grow(this.lsn);
    this.segmentSeq = grow(this.segmentSeq);
    this.recordOffsetBytes = grow(this.recordOffsetBytes);
    this.recordSpanBytes = grow(this.recordSpanBytes);
    const refs = new Uint32Array(n);
    refs.set(this.refs);
    this.refs = refs;
  }

  private findZero(lba: number): ZeroRange | undefined {
    const r = this.zeroRangeAtOrAfter(lba);
    return r !== undefined && r.startBlock <= lba ? r : undefined;
  }

  private deleteBlocksIn(startBlock: number, endBlock: number): void {
    if (endBlock - startBlock < this.blocks.size) {
      for (let b = startBlock; b < endBlock; b++) this.deleteBlock(b);
      return;
    }
    this.blocks.forEach((value, lba) => {
      if (lba >= startBlock && lba < endBlock) {
        this.blocks.delete(lba);
        this.unref(value);
      }
    });
  }

  private deleteBlock(lba: number): void {
    const value = this.blocks.get(lba);
    if (value === undefined) return;
    this.blocks.delete(lba);
    this.unref(value);
  }
}
