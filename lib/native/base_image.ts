// The base block image: `base.img`, a sparse file of the volume's size read
// and written in whole 4 KiB blocks with O_DIRECT through the ring. Blocks
// never written (or punched) read as zeros and take no space. Durability is
// explicit: fdatasync() covers writes completed before it.
import * as fs from 'node:fs';
import * as path from 'node:path';

import { BlockwalError } from './errors';
import type { ArenaSlice, Ring } from './ring';

export const BLOCK_BYTES = 4096;

// Told of every change to the image's content as the change is submitted (the
// engine's block cache).
export interface BaseImageWatcher {
  store(first: number, count: number, src: Uint8Array, srcOffset: number): void;
  drop(first: number, count: number): void;
}

export class BaseImage {
  private closed = false;
  watcher: BaseImageWatcher | undefined;

  private constructor(
    private readonly ring: Ring,
    private readonly fileId: number,
    readonly path: string,
    private blocks: number,
  ) {}

  get sizeBlocks(): number {
    return this.blocks;
  }

  // Grows the image to sizeBlocks (sparse; a no-op when it is that large
  // already). The new size is durable with the next fdatasync.
  grow(sizeBlocks: number): void {
    if (!Number.isSafeInteger(sizeBlocks) || sizeBlocks <= 0) throw new RangeError(`sizeBlocks ${sizeBlocks} must be a positive integer`);
    if (sizeBlocks <= this.blocks) return;
    fs.truncateSync(this.path, sizeBlocks * BLOCK_BYTES);
    this.blocks = sizeBlocks;
  }

  // Creates a sparse image of sizeBytes (a multiple of 4096) and makes its
  // size and name durable (fsync of the file and its directory).
  static async create(ring: Ring, file: string, sizeBytes: number): Promise<BaseImage> {
    if (!Number.isSafeInteger(sizeBytes) || sizeBytes <= 0 || sizeBytes % BLOCK_BYTES !== 0) {
      throw new RangeError('sizeBytes must be a positive multiple of 4096');
    }
    const fd = fs.openSync(file, fs.constants.O_RDWR | fs.constants.O_CREAT | fs.constants.O_EXCL, 0o644);
    try {
      fs.ftruncateSync(fd, sizeBytes);
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    const dirFd = fs.openSync(path.dirname(file), fs.constants.O_RDONLY | fs.constants.O_DIRECTORY);
    try {
      fs.fsyncSync(dirFd);
    } finally {
      fs.closeSync(dirFd);
    }
    return BaseImage.open(ring, file);
  }

  static open(ring: Ring, file: string): BaseImage {
    const fileId = ring.openFile(file, { write: true, direct: true });
    const sizeBytes = ring.fileSize(fileId);
    if (sizeBytes % BLOCK_BYTES !== 0) {
      ring.closeFile(fileId);
      throw new BlockwalError('ERR_OPEN', `${file}: size ${sizeBytes} is not a multiple of 4096`);
    }
    return new BaseImage(ring, fileId, file, sizeBytes / BLOCK_BYTES);
  }

  // Reads lengthBlocks blocks at lba into the arena slice.
  async readBlocks(lba: number, lengthBlocks: number, slice: ArenaSlice): Promise<void> {
    this.check(lba, lengthBlocks, slice);
    const n = await this.ring.read(this.fileId, slice, lba * BLOCK_BYTES, lengthBlocks * BLOCK_BYTES);
    if (n !== lengthBlocks * BLOCK_BYTES) {
      throw new BlockwalError('ERR_IO', `short read of ${this.path}: ${n} of ${lengthBlocks * BLOCK_BYTES} bytes`);
    }
  }

  async writeBlocks(lba: number, lengthBlocks: number, slice: ArenaSlice, options: { dsync?: boolean } = {}): Promise<void> {
    this.check(lba, lengthBlocks, slice);
    this.watcher?.store(lba, lengthBlocks, slice.bytes, 0);
    await this.ring.write(this.fileId, slice, lba * BLOCK_BYTES, lengthBlocks * BLOCK_BYTES, options);
  }

  // Writes several runs from one arena slice, with one promise for all
  // (Ring.writeMany): each run is lengthBlocks blocks at lba, taken from
  // the slice at srcBytes.
  writeRuns(runs: readonly { lba: number; lengthBlocks: number; srcBytes: number }[], slice: ArenaSlice): Promise<void> {
    const writes: [number, number, number][] = [];
    try {
      for (const run of runs) {
        this.check(run.lba, run.lengthBlocks);
        if (run.srcBytes < 0 || run.srcBytes + run.lengthBlocks * BLOCK_BYTES > slice.lengthBytes) {
          throw new RangeError('a run lies outside the arena slice');
        }
        writes.push([slice.offsetBytes + run.srcBytes, run.lengthBlocks * BLOCK_BYTES, run.lba * BLOCK_BYTES]);
      }
    } catch (err) {
      return Promise.reject(err);
    }
    if (this.watcher !== undefined) for (const run of runs) this.watcher.store(run.lba, run.lengthBlocks, slice.bytes, run.srcBytes);
    return this.ring.writeMany(this.fileId, writes);
  }

  // Deallocates blocks; they read as zeros afterwards.
  async punchHole(lba: number, lengthBlocks: number): Promise<void> {
    this.check(lba, lengthBlocks);
    this.watcher?.drop(lba, lengthBlocks);
    await this.ring.punchHole(this.fileId, lba * BLOCK_BYTES, lengthBlocks * BLOCK_BYTES);
  }

  async fdatasync(): Promise<void> {
    this.checkOpen();
    await this.ring.fdatasync(this.fileId);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.ring.closeFile(this.fileId);
  }

  private checkOpen(): void {
    if (this.closed) throw new BlockwalError('ERR_CLOSED', `${this.path} is closed`);
  }

  private check(lba: number, lengthBlocks: number, slice?: ArenaSlice): void {
    this.checkOpen();
    if (!Number.isSafeInteger(lba) || lba < 0 || !Number.isSafeInteger(lengthBlocks) || lengthBlocks <= 0) {
      throw new RangeError('lba and lengthBlocks must be non-negative integers (lengthBlocks > 0)');
    }
    if (lba + lengthBlocks > this.sizeBlocks) {
      throw new RangeError(`blocks ${lba}+${lengthBlocks} lie beyond the image (${this.sizeBlocks} blocks)`);
    }
    if (slice !== undefined && slice.lengthBytes < lengthBlocks * BLOCK_BYTES) {
      throw new RangeError('the arena slice is smaller than the transfer');
    }
  }
}
