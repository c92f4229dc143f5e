// The block cache: base.img blocks in memory, so a read of blocks the WAL no
// longer holds is answered without a disk read.
//
// Reads fill it: a read that went to base.img leaves its blocks here. What it
// holds is always what base.img holds: BaseImage tells it of every write
// (checkpoints, rebuilds) and punch as it submits them, and a cached block
// takes the new content (or leaves, when punched). A write does not bring a
// block in: the cache costs the write path a lookup per block, not a copy,
// and a replica that serves no reads keeps nothing. A block that has a newer
// version in the WAL is read from the WAL (the dirty map decides), so while a
// checkpoint writes it no read asks the cache for it.
//
// A read that missed fills the cache only if base.img did not change
// meanwhile: `generation` counts every change, the read takes it before its
// disk read and hands it back with the blocks (fillFromRead). A read that
// raced a checkpoint may carry blocks older than what the checkpoint wrote;
// it then fills nothing.
//
// Large transfers (more than TRANSFER_BLOCKS_MAX blocks: sequential scans,
// copies, big checkpoint runs) go around the cache: such a read is served by
// the disk at full bandwidth and fills nothing, such a write drops the blocks
// it covers, so neither pushes the working set out nor pays a copy per block.
//
// Space: slots of 4 KiB in slabs allocated as the cache fills, at most
// capacityBlocks; a Map from LBA to slot; eviction by CLOCK (a block read
// from the cache gets a second chance; a block only filled gets none).
import { BLOCK_BYTES } from '../native/base_image';

const SLAB_BLOCKS = 4096; // 16 MiB per slab
export const TRANSFER_BLOCKS_MAX = 32; // 128 KiB

export class BlockCache {
  readonly capacityBlocks: number;
  private readonly slabs: Uint8Array[] = [];
  private readonly slotOf = new Map<number, number>();
  // Per slot: the LBA it holds (-1: free) and its CLOCK bit.
  private slotLba = new Float64Array(0);
  private referenced = new Uint8Array(0);
  private slotsMade = 0;
  private readonly freeSlots: number[] = [];
  private hand = 0;
  private readonly scratch = new Float64Array(TRANSFER_BLOCKS_MAX);
  private changes = 0;
  hits = 0; // blocks of reads answered from the cache
  misses = 0; // blocks of reads that went to base.img

  constructor(capacityBytes: number) {
    if (!Number.isSafeInteger(capacityBytes) || capacityBytes < 0) throw new RangeError('the block cache size must be an integer >= 0');
    this.capacityBlocks = Math.floor(capacityBytes / BLOCK_BYTES);
  }

  // Bumped by every change of base.img's content (store, drop).
  get generation(): number {
    return this.changes;
  }

  get usedBlocks(): number {
    return this.slotOf.size;
  }

  // True when every block of [first, first + count) is cached (and the
  // transfer is small enough to be served from the cache).
  holds(first: number, count: number): boolean {
    if (count > TRANSFER_BLOCKS_MAX || this.slotOf.size < count) return false;
    for (let b = first; b < first + count; b++) if (!this.slotOf.has(b)) return false;
    return true;
  }

  // Copies bytes [fromBytes, fromBytes + lengthBytes) of the blocks starting
  // at `first` into out at outOffset when every one of them is cached (and
  // the transfer is small enough); false, copying nothing, otherwise. One
  // lookup per block; blocks in consecutive slots of one slab (filled
  // together) go in one copy.
  copyOutIfHeld(first: number, fromBytes: number, lengthBytes: number, out: Uint8Array, outOffset: number): boolean {
    const firstLba = first + Math.floor(fromBytes / BLOCK_BYTES);
    const count = first + Math.floor((fromBytes + lengthBytes - 1) / BLOCK_BYTES) - firstLba + 1;
    if (count > TRANSFER_BLOCKS_MAX || this.slotOf.size < count) return false;
    const slots = this.scratch;
    for (let i = 0; i < count; i++) {
      const slot = this.slotOf.get(firstLba + i);
      if (slot === undefined) return false;
      slots[i] = slot;
    }
    let skip = fromBytes % BLOCK_BYTES; // bytes of the first block left out
    let at = outOffset;
    let i = 0;
    while (i < count) {
      // A run of consecutive slots in one slab.
      let n = 1;
      while (i + n < count && slots[i + n] === slots[i]! + n && slots[i + n]! % SLAB_BLOCKS !== 0) n++;
      const slot = slots[i]!;
      const start = this.slotBytes(slot) + skip;
      const end = Math.min(this.slotBytes(slot) + n * BLOCK_BYTES, start + (lengthBytes - (at - outOffset)));
      out.set(this.slabs[Math.floor(slot / SLAB_BLOCKS)]!.subarray(start, end), at);
      at += end - start;
      for (let k = 0; k < n; k++) this.referenced[slot + k] = 1;
      skip = 0;
      i += n;
    }
    this.hits += count;
    return true;
  }

  // base.img gets `count` blocks at `first` from src (at srcOffset): the
  // cached ones among them take the new content.
  store(first: number, count: number, src: Uint8Array, srcOffset: number): void {
    if (this.capacityBlocks === 0) return;
    if (count > TRANSFER_BLOCKS_MAX) return this.drop(first, count);
    this.changes++;
    if (this.slotOf.size === 0) return;
    for (let i = 0; i < count; i++) {
      const slot = this.slotOf.get(first + i);
      if (slot !== undefined) this.copyIn(slot, src, srcOffset + i * BLOCK_BYTES);
    }
  }

  // base.img no longer holds these blocks' old content (punched, or written
  // by a large transfer).
  drop(first: number, count: number): void {
    if (this.capacityBlocks === 0) return;
    this.changes++;
    if (count > this.slotOf.size) {
      for (const [lba, slot] of this.slotOf) if (lba >= first && lba < first + count) this.release(lba, slot);
      return;
    }
    for (let b = first; b < first + count; b++) {
      const slot = this.slotOf.get(b);
      if (slot !== undefined) this.release(b, slot);
    }
  }

  // A read found these blocks in base.img, having taken `generation` before
  // its disk read: they are cached unless base.img changed since.
  fillFromRead(generation: number, first: number, count: number, src: Uint8Array, srcOffset: number): void {
    this.misses += count;
    if (this.capacityBlocks === 0 || count > TRANSFER_BLOCKS_MAX || generation !== this.changes) return;
    for (let i = 0; i < count; i++) if (!this.slotOf.has(first + i)) this.put(first + i, src, srcOffset + i * BLOCK_BYTES);
  }

  // A block not cached yet.
  private put(lba: number, src: Uint8Array, srcOffset: number): void {
    const slot = this.takeSlot();
    this.slotOf.set(lba, slot);
    this.slotLba[slot] = lba;
    this.referenced[slot] = 0;
    this.copyIn(slot, src, srcOffset);
  }

  private copyIn(slot: number, src: Uint8Array, srcOffset: number): void {
    this.slabs[Math.floor(slot / SLAB_BLOCKS)]!.set(src.subarray(srcOffset, srcOffset + BLOCK_BYTES), this.slotBytes(slot));
  }

  private takeSlot(): number {
    const free = this.freeSlots.pop();
    if (free !== undefined) return free;
    if (this.slotsMade < this.capacityBlocks) return this.makeSlot();
    // CLOCK: the first slot whose bit is clear, clearing bits on the way.
    for (;;) {
      const slot = this.hand;
      this.hand = (this.hand + 1) % this.slotsMade;
      if (this.referenced[slot] === 1) {
        this.referenced[slot] = 0;
        continue;
      }
      this.slotOf.delete(this.slotLba[slot]!);
      this.slotLba[slot] = -1;
      return slot;
    }
  }

  private makeSlot(): number {
    const slot = this.slotsMade++;
    if (slot % SLAB_BLOCKS === 0) {
      const blocks = Math.min(SLAB_BLOCKS, this.capacityBlocks - slot);
      this.slabs.push(Buffer.allocUnsafeSlow(blocks * BLOCK_BYTES));
      const lba = new Float64Array(slot + blocks);
      lba.set(this.slotLba);
      this.slotLba = lba;
      const ref = new Uint8Array(slot + blocks);
      ref.set(this.referenced);
      this.referenced = ref;
    }
    return slot;
  }

  private release(lba: number, slot: number): void {
    this.slotOf.delete(lba);
    this.slotLba[slot] = -1;
    this.referenced[slot] = 0;
    this.freeSlots.push(slot);
  }

  private slotBytes(slot: number): number {
    return (slot % SLAB_BLOCKS) * BLOCK_BYTES;
  }
}
