// The dirty map: where the newest version of each block lives until the
// flusher has applied it to base.img and the checkpoint has passed it.
//
// Two structures: per-block entries for write records (the record's location
// in the WAL and the block's index in it), and an interval map of zeroed
// ranges (trim and write-zeroes records, which may cover a whole 16 TiB
// volume, so they are never expanded per block).
//
// Invariant (newest-wins, checked in tests): a block entry is always newer
// than any zero range covering its block, because inserting a zero range
// deletes the older block entries inside it and records arrive in LSN order.
// So a lookup is: block entry, else covering zero range, else base.img.

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

export class DirtyMap {
  private readonly blocks = new Map<number, BlockEntry>();
  private zeros: ZeroRange[] = []; // sorted by startBlock, non-overlapping

  get dirtyBlocks(): number {
    return this.blocks.size;
  }

  get zeroRanges(): number {
    return this.zeros.length;
  }

  // A write record covering [lba, lba + lengthBlocks).
  setWrite(lba: number, lengthBlocks: number, lsn: number, segmentSeq: number, recordOffsetBytes: number, recordSpanBytes: number): void {
    for (let i = 0; i < lengthBlocks; i++) {
      this.blocks.set(lba + i, { lsn, segmentSeq, recordOffsetBytes, recordSpanBytes, indexInRecord: i });
    }
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
    const entry = this.blocks.get(lba);
    if (entry !== undefined) return { kind: 'write', entry };
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

  // What the flusher applies for a checkpoint at lsnMax.
  collect(lsnMax: number): { zeros: ZeroRange[]; blocks: [number, BlockEntry][] } {
    const zeros = this.zeros.filter((r) => r.lsn <= lsnMax).map((r) => ({ ...r }));
    const blocks: [number, BlockEntry][] = [];
    for (const [lba, entry] of this.blocks) if (entry.lsn <= lsnMax) blocks.push([lba, entry]);
    blocks.sort((a, b) => a[0] - b[0]);
    return { zeros, blocks };
  }

  // After a checkpoint at lsnMax: forget what base.img now holds. Entries
  // replaced meanwhile by newer records stay.
  dropUpTo(lsnMax: number): void {
    for (const [lba, entry] of this.blocks) if (entry.lsn <= lsnMax) this.blocks.delete(lba);
    this.zeros = this.zeros.filter((r) => r.lsn > lsnMax);
  }

  private findZero(lba: number): ZeroRange | undefined {
    const r = this.zeroRangeAtOrAfter(lba);
    return r !== undefined && r.startBlock <= lba ? r : undefined;
  }

  private deleteBlocksIn(startBlock: number, endBlock: number): void {
    if (endBlock - startBlock < this.blocks.size) {
      for (let b = startBlock; b < endBlock; b++) this.blocks.delete(b);
      return;
    }
    for (const lba of this.blocks.keys()) if (lba >= startBlock && lba < endBlock) this.blocks.delete(lba);
  }
}
