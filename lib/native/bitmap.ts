// DenseBitmap: one bit per 4 KiB block in an mmap'd file (native/bitmap).
// Rebuild bitmaps and dirty bitmaps are built on it.
//
// The bits never cross into JS memory: every query runs natively on the
// mapping. Iterating set runs goes a page of runs at a time through one
// reused Float64Array, so a 16 TiB volume (2^32 blocks) can be walked in
// bounded pieces.
//
// Durability (details in native/bitmap/bitmap.h): bits changed before a
// completed sync() (or an fsync of `fd`) survive a crash; later changes may
// or may not, page by page. open() durably marks the file not-clean;
// close({ clean: true }) syncs the bits and records their checksum, which the
// next open verifies (ERR_BITMAP_CORRUPT on a mismatch). `wasClean` reports
// whether the previous session closed cleanly.
import { addon } from './addon';
import { BlockwalError, nativeCall } from './errors';
import type { Ring } from './ring';
import type { RawBitmap, RawBitmapLimits } from './raw';

export interface BitRun {
  startBlock: number;
  lengthBlocks: number;
}

export interface BitmapCreateOptions {
  blockCount: number;
  // The caller's identity for the bitmap (replica, epoch, LSN...), at most
  // bitmapLimits().tagBytesMax (64) bytes. Stored and returned verbatim.
  tag?: Uint8Array;
}

export interface BitmapRunsOptions {
  endBlock?: number; // exclusive; defaults to blockCount
  runsPerCall?: number; // runs fetched per native call; defaults to 4096
}

const kRunsPerCallDefault = 4096;

export function bitmapLimits(): RawBitmapLimits {
  return addon().bitmapLimits;
}

export class DenseBitmap {
  readonly path: string;
  readonly blockCount: number;
  readonly tag: Buffer;
  // Bumped at every open: which session last changed the bits.
  readonly generation: number;
  // Whether the previous session closed cleanly (its checksum was verified).
  readonly wasClean: boolean;
  readonly #raw: RawBitmap;

  private constructor(path: string, raw: RawBitmap) {
    this.path = path;
    this.#raw = raw;
    this.blockCount = raw.blockCount;
    this.tag = raw.tag;
    this.generation = raw.generation;
    this.wasClean = raw.wasClean;
  }

  // Creates the file (sparse, all bits clear; fails if it exists), makes it
  // and its directory entry durable, and opens it.
  static create(path: string, opts: BitmapCreateOptions): DenseBitmap {
    const { blockCount, tag } = opts;
    nativeCall(() => addon().bitmapCreate(path, blockCount, tag));
    return DenseBitmap.open(path);
  }

  // Maps an existing file; exclusive (a second opener gets ERR_BITMAP, EAGAIN).
  static open(path: string): DenseBitmap {
    const Bitmap = addon().Bitmap;
    return new DenseBitmap(
      path,
      nativeCall(() => new Bitmap(path)),
    );
  }

  // The file descriptor, for an fsync through the I/O pipeline; -1 once closed.
  get fd(): number {
    return this.#raw.fd;
  }

  get isOpen(): boolean {
    return this.#raw.isOpen;
  }

  get(block: number): boolean {
    return nativeCall(() => this.#raw.get(block));
  }

  setRange(startBlock: number, lengthBlocks: number): void {
    nativeCall(() => this.#raw.setRange(startBlock, lengthBlocks));
  }

  clearRange(startBlock: number, lengthBlocks: number): void {
    nativeCall(() => this.#raw.clearRange(startBlock, lengthBlocks));
  }

  countSet(): number {
    return nativeCall(() => this.#raw.countSet());
  }

  countSetInRange(startBlock: number, lengthBlocks: number): number {
    return nativeCall(() => this.#raw.countSetInRange(startBlock, lengthBlocks));
  }

  anySetInRange(startBlock: number, lengthBlocks: number): boolean {
    return nativeCall(() => this.#raw.anySetInRange(startBlock, lengthBlocks));
  }

  // The first set block at or after fromBlock, or -1.
  nextSet(fromBlock: number): number {
    return nativeCall(() => this.#raw.nextSet(fromBlock));
  }

  // The first clear block at or after fromBlock, or blockCount.
  nextClear(fromBlock: number): number {
    return nativeCall(() => this.#raw.nextClear(fromBlock));
  }

  // One page of the runs walk: writes maximal set runs inside
  // [fromBlock, endBlock) into out as (startBlock, lengthBlocks) pairs and
  // returns how many. A full page (out.length / 2 runs, capped at
  // runsPerCallMax) means more may follow from the end of the last run.
  readRuns(fromBlock: number, endBlock: number, out: Float64Array): number {
    return nativeCall(() => this.#raw.runs(fromBlock, endBlock, out));
  }

  // Maximal runs of set blocks from fromBlock on. Each page is read when the
  // walk reaches it, so changes made while iterating are seen from the next
  // page on.
  *runs(fromBlock = 0, opts: BitmapRunsOptions = {}): Generator<BitRun, void, undefined> {
    const endBlock = opts.endBlock ?? this.blockCount;
    const runsPerCall = opts.runsPerCall ?? kRunsPerCallDefault;
    const limit = bitmapLimits().runsPerCallMax;
    if (!Number.isInteger(runsPerCall) || runsPerCall < 1 || runsPerCall > limit) {
      throw new RangeError(`runsPerCall must be an integer from 1 to ${limit}`);
    }
    const out = new Float64Array(2 * runsPerCall);
    let at = fromBlock;
    for (;;) {
      const runCount = this.readRuns(at, endBlock, out);
      if (runCount === 0) return;
      // out is only refilled after this page's runs are all yielded.
      for (let i = 0; i < runCount; i++) yield { startBlock: out[2 * i], lengthBlocks: out[2 * i + 1] };
      at = out[2 * runCount - 2] + out[2 * runCount - 1];
      if (runCount < runsPerCall) return;
    }
  }

  // Makes every change so far durable (msync + fdatasync). A failure is
  // final: later syncs and a clean close refuse.
  // Makes every bit changed before the call durable with an fdatasync through
  // the ring (pages changed through the mapping are written back by it), so
  // the JS thread never blocks on the disk. Prefer this to sync() on hot paths.
  async persist(ring: Ring): Promise<void> {
    const fd = this.fd;
    if (fd < 0) throw new BlockwalError('ERR_BITMAP', `${this.path} is closed`);
    const fileId = ring.adoptFd(fd);
    try {
      await ring.fdatasync(fileId);
    } finally {
      ring.closeFile(fileId);
    }
  }

  sync(): void {
    nativeCall(() => this.#raw.sync());
  }

  // clean (the default) syncs the bits and records their checksum; without it
  // the file stays not-clean, as after a crash. Always unmaps; safe to repeat.
  close(opts: { clean?: boolean } = {}): void {
    const clean = opts.clean ?? true;
    nativeCall(() => this.#raw.close(clean));
  }
}
