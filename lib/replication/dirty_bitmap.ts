// A primary's dirty bitmap for one replica that is away: one bit per 4 KiB
// block, set for every block a write, trim or zero record touches after
// lsnFrom (in epoch). While the replica is away and the WAL no longer holds
// its gap, the bitmap bounds what differs, so the primary resyncs only the
// marked chunks instead of rebuilding the whole image (protocol/decide.ts,
// bitmap_resync).
//
// Trust (the bits must cover every record after lsnFrom, or the bitmap is
// worse than none):
//  - it is created only when every record after lsnFrom is still in the
//    primary's in-memory backlog, and those records are marked at once;
//  - later records are marked as they get their LSN (the volume's onRecord
//    hook), before anything acknowledges them;
//  - it survives a restart only when it was closed cleanly (DenseBitmap's
//    checksum) and its tag names this volume's epoch; a crash, a torn file or
//    another epoch deletes it, and the replica is rebuilt instead;
//  - a record it cannot mark (blocks beyond it: the volume grew) deletes it.
import * as fs from 'node:fs';
import * as path from 'node:path';

import { DenseBitmap } from '../native/bitmap';

const TAG_MAGIC = 'bwdirty1';
// What pathFor's file names look like.
const FILE_NAME = /^replica-[0-9A-Za-z._-]+\.dirty$/;
const TAG_BYTES = 24; // magic 8, epoch u64 LE, lsnFrom u64 LE

export interface DirtyBitmapFacts {
  epoch: number;
  lsnFrom: number;
  dirtyBlocks: number;
}

export class DirtyBitmap {
  private constructor(
    readonly path: string,
    private readonly bits: DenseBitmap,
    readonly epoch: number,
    readonly lsnFrom: number,
  ) {}

  // Deletes the dirty bitmaps in dir of replicas not in keep (addresses as
  // pathFor takes them): a replica dropped from the configuration leaves no
  // file behind. Returns the names deleted.
  static dropStale(dir: string, keep: readonly string[]): string[] {
    const kept = new Set(keep.map((address) => path.basename(DirtyBitmap.pathFor(dir, address))));
    const dropped: string[] = [];
    for (const name of fs.readdirSync(dir)) {
      if (!FILE_NAME.test(name) || kept.has(name)) continue;
      fs.rmSync(path.join(dir, name), { force: true });
      dropped.push(name);
    }
    return dropped;
  }

  // The file for the replica at address in the volume directory dir.
  static pathFor(dir: string, address: string): string {
    return path.join(dir, `replica-${address.replace(/[^0-9A-Za-z.-]/g, '_')}.dirty`);
  }

  // A fresh bitmap (any old file at the path goes first).
  static create(file: string, blockCount: number, epoch: number, lsnFrom: number): DirtyBitmap {
    fs.rmSync(file, { force: true });
    const tag = Buffer.alloc(TAG_BYTES);
    tag.write(TAG_MAGIC, 0, 'latin1');
    tag.writeBigUInt64LE(BigInt(epoch), 8);
    tag.writeBigUInt64LE(BigInt(lsnFrom), 16);
    return new DirtyBitmap(file, DenseBitmap.create(file, { blockCount: Math.max(1, blockCount), tag }), epoch, lsnFrom);
  }

  // The bitmap a clean close left at the path for this epoch, or undefined
  // (and the file deleted) when there is none it may trust; why says which.
  static openTrusted(file: string, epoch: number, blockCount: number): { bitmap: DirtyBitmap | undefined; why: string | undefined } {
    if (!fs.existsSync(file)) return { bitmap: undefined, why: undefined };
    let bits: DenseBitmap | undefined;
    let why: string;
    try {
      bits = DenseBitmap.open(file);
      const tag = bits.tag;
      const tagEpoch = tag.byteLength === TAG_BYTES && tag.toString('latin1', 0, 8) === TAG_MAGIC ? Number(tag.readBigUInt64LE(8)) : -1;
      if (!bits.wasClean) why = 'it was not closed cleanly (the primary stopped without closing it)';
      else if (tagEpoch !== epoch) why = `it is of epoch ${tagEpoch}, not ${epoch}`;
      else if (bits.blockCount < blockCount) why = `it covers ${bits.blockCount} blocks, the volume has ${blockCount}`;
      else return { bitmap: new DirtyBitmap(file, bits, epoch, Number(tag.readBigUInt64LE(16))), why: undefined };
    } catch (err) {
      why = `it does not open: ${(err as Error).message}`;
    }
    bits?.close({ clean: false });
    fs.rmSync(file, { force: true });
    return { bitmap: undefined, why };
  }

  // Marks [lba, lba + lengthBlocks); false when the range lies beyond the
  // bitmap (the caller must then drop it).
  mark(lba: number, lengthBlocks: number): boolean {
    if (lengthBlocks <= 0) return true;
    if (lba + lengthBlocks > this.bits.blockCount) return false;
    this.bits.setRange(lba, lengthBlocks);
    return true;
  }

  anyIn(startBlock: number, lengthBlocks: number): boolean {
    const end = Math.min(this.bits.blockCount, startBlock + lengthBlocks);
    return end > startBlock && this.bits.anySetInRange(startBlock, end - startBlock);
  }

  facts(): DirtyBitmapFacts {
    return { epoch: this.epoch, lsnFrom: this.lsnFrom, dirtyBlocks: this.bits.countSet() };
  }

  // Clean: synced with its checksum recorded, trusted by the next open.
  close(): void {
    this.bits.close({ clean: true });
  }

  // Gone: closed without trust and deleted.
  remove(): void {
    this.bits.close({ clean: false });
    fs.rmSync(this.path, { force: true });
  }
}
