// The demo's "filesystem-like" workload, driven through an NBD client. The
// volume is laid out the way a small filesystem would use it: a superblock
// at 0, an inode table (small random metadata writes), a circular journal
// (sequential commits written with FUA) and a data area where files are
// extents: created with sequential writes, partly overwritten, deleted with
// a TRIM. Every so often a commit drains the requests in flight and FLUSHes
// (an fsync).
//
// Rules:
// - The operation sequence comes from a seeded PRNG and the data from a
//   seeded AES-CTR keystream: a seed replays a run.
// - Requests are pipelined (at most WINDOW_REQUESTS in flight) but never two
//   overlapping ones together; so the final content is defined, and the
//   workload keeps it in `model` (what every node must hold at the end).
import * as crypto from 'node:crypto';

import { XXHash3 } from 'xxhash-addon';

import { assert } from '../util/assert';
import type { NbdClient } from './nbd_client';
import { mulberry32 } from '../util/prng';

const KiB = 1024;
const MiB = 1024 * KiB;
const BLOCK_BYTES = 4 * KiB;
const WINDOW_REQUESTS = 16;
// A file's sequential writes go in pieces of at most this size.
const EXTENT_WRITE_BYTES = 1 * MiB;
// Layout (byte offsets).
const SUPERBLOCK_BYTES = 4 * KiB;
const INODES_FROM = 64 * KiB;
const INODES_TO = 4 * MiB;
const JOURNAL_FROM = 4 * MiB;
const JOURNAL_TO = 12 * MiB;
const DATA_FROM = 16 * MiB;
// Operations between commits (a commit is a journal write + FLUSH).
const OPS_PER_COMMIT = 24;

export interface WorkloadStats {
  writes: number;
  bytesWritten: number;
  trims: number;
  bytesTrimmed: number;
  flushes: number;
  filesCreated: number;
  filesDeleted: number;
}

interface File {
  offsetBytes: number;
  lengthBytes: number;
  inodeOffsetBytes: number;
}

export class FsWorkload {
  // The content every node must hold once the workload's requests are done.
  readonly model: Buffer;
  readonly stats: WorkloadStats = { writes: 0, bytesWritten: 0, trims: 0, bytesTrimmed: 0, flushes: 0, filesCreated: 0, filesDeleted: 0 };
  private readonly random: () => number;
  private readonly keystream: crypto.Cipher;
  private readonly zeros = Buffer.alloc(EXTENT_WRITE_BYTES);
  private readonly files: File[] = [];
  // Free extents of the data area, sorted by offset, never adjacent.
  private free: { offsetBytes: number; lengthBytes: number }[];
  private journalAtBytes = JOURNAL_FROM;
  private readonly inFlight = new Set<Promise<void>>();
  private failure: Error | undefined;

  constructor(
    readonly sizeBytes: number,
    readonly seed: number,
  ) {
    assert(sizeBytes >= DATA_FROM + 16 * MiB && sizeBytes % BLOCK_BYTES === 0, `a ${sizeBytes}-byte volume fits the demo's layout`);
    this.model = Buffer.alloc(sizeBytes);
    this.random = mulberry32(seed);
    const key = crypto.createHash('sha256').update(`blockwal-demo-${seed}`).digest();
    this.keystream = crypto.createCipheriv('aes-256-ctr', key, Buffer.alloc(16));
    this.free = [{ offsetBytes: DATA_FROM, lengthBytes: sizeBytes - DATA_FROM }];
  }

  // The "mkfs": a superblock and a zeroed-out inode table, then a FLUSH.
  async format(client: NbdClient): Promise<void> {
    this.write(client, 0, SUPERBLOCK_BYTES);
    for (let at = INODES_FROM; at < INODES_TO; at += 256 * KiB) this.write(client, at, 16 * KiB);
    await this.commit(client);
  }

  // Runs operations until about `bytes` more have been written, at most
  // `bytesPerSecond` when given; ends with a commit, so everything it wrote
  // is durable.
  async run(client: NbdClient, bytes: number, o: { bytesPerSecond?: number; onProgress?: (bytesDone: number) => void } = {}): Promise<WorkloadStats> {
    const startBytes = this.stats.bytesWritten;
    const startMs = performance.now();
    const onProgress = o.onProgress;
    for (let op = 1; this.stats.bytesWritten - startBytes < bytes; op++) {
      const dice = this.random();
      if (dice < 0.45 || this.files.length < 4) await this.createFile(client);
      else if (dice < 0.8) await this.overwrite(client);
      else await this.deleteFile(client);
      if (op % OPS_PER_COMMIT === 0) {
        await this.commit(client);
        onProgress?.(this.stats.bytesWritten - startBytes);
      }
      if (o.bytesPerSecond !== undefined) {
        const aheadMs = ((this.stats.bytesWritten - startBytes) / o.bytesPerSecond) * 1000 - (performance.now() - startMs);
        if (aheadMs > 0) await new Promise((resolve) => setTimeout(resolve, aheadMs));
      }
    }
    await this.commit(client);
    onProgress?.(this.stats.bytesWritten - startBytes);
    return { ...this.stats };
  }

  // XXH3-64 of the model, as `blockwal checksum` prints it.
  modelChecksum(): string {
    const h = new XXHash3(Buffer.alloc(8));
    for (let at = 0; at < this.model.length; at += 8 * MiB) h.update(this.model.subarray(at, Math.min(this.model.length, at + 8 * MiB)));
    return h.digest().toString('hex');
  }

  // A file of mostly small, sometimes large size, written front to back.
  private async createFile(client: NbdClient): Promise<void> {
    const r = this.random();
    const blocks = r < 0.7 ? 4 + this.int(60) : r < 0.95 ? 256 + this.int(768) : 2048 + this.int(2048);
    const lengthBytes = blocks * BLOCK_BYTES;
    let offsetBytes = this.allocate(lengthBytes);
    while (offsetBytes === undefined && this.files.length > 0) {
      await this.deleteFile(client, 0); // the disk is full: the oldest file goes
      offsetBytes = this.allocate(lengthBytes);
    }
    if (offsetBytes === undefined) return;
    const file = { offsetBytes, lengthBytes, inodeOffsetBytes: INODES_FROM + this.int((INODES_TO - INODES_FROM) / BLOCK_BYTES) * BLOCK_BYTES };
    for (let at = 0; at < lengthBytes; at += EXTENT_WRITE_BYTES) await this.issueWrite(client, offsetBytes + at, Math.min(EXTENT_WRITE_BYTES, lengthBytes - at));
    await this.issueWrite(client, file.inodeOffsetBytes, BLOCK_BYTES);
    this.files.push(file);
    this.stats.filesCreated++;
  }

  // 4 KiB to 64 KiB somewhere inside an existing file, and its inode.
  private async overwrite(client: NbdClient): Promise<void> {
    const file = this.files[this.int(this.files.length)]!;
    const blocks = Math.min(file.lengthBytes / BLOCK_BYTES, 1 + this.int(16));
    const at = this.int(file.lengthBytes / BLOCK_BYTES - blocks + 1) * BLOCK_BYTES;
    await this.issueWrite(client, file.offsetBytes + at, blocks * BLOCK_BYTES);
    await this.issueWrite(client, file.inodeOffsetBytes, BLOCK_BYTES);
  }

  // TRIM of the file's extent (a filesystem's discard) and an inode update.
  private async deleteFile(client: NbdClient, index = this.int(this.files.length)): Promise<void> {
    const [file] = this.files.splice(index, 1);
    if (file === undefined) return;
    await this.slot(client, file.offsetBytes, file.lengthBytes);
    this.model.fill(0, file.offsetBytes, file.offsetBytes + file.lengthBytes);
    this.track(client.trim(file.offsetBytes, file.lengthBytes));
    this.stats.trims++;
    this.stats.bytesTrimmed += file.lengthBytes;
    this.release(file.offsetBytes, file.lengthBytes);
    await this.issueWrite(client, file.inodeOffsetBytes, BLOCK_BYTES);
    this.stats.filesDeleted++;
  }

  // Drain, a journal record with FUA, drain, FLUSH: an fsync.
  private async commit(client: NbdClient): Promise<void> {
    await this.drain();
    const lengthBytes = (1 + this.int(8)) * BLOCK_BYTES;
    if (this.journalAtBytes + lengthBytes > JOURNAL_TO) this.journalAtBytes = JOURNAL_FROM;
    this.write(client, this.journalAtBytes, lengthBytes, true);
    this.journalAtBytes += lengthBytes;
    this.write(client, 0, SUPERBLOCK_BYTES);
    await this.drain();
    await client.flush();
    this.stats.flushes++;
  }

  private async issueWrite(client: NbdClient, offsetBytes: number, lengthBytes: number): Promise<void> {
    await this.slot(client, offsetBytes, lengthBytes);
    this.write(client, offsetBytes, lengthBytes);
  }

  // Waits until a request on [offsetBytes, +lengthBytes) may be issued.
  private async slot(client: NbdClient, offsetBytes: number, lengthBytes: number): Promise<void> {
    if (client.overlapsInFlight(offsetBytes, lengthBytes)) await this.drain();
    while (this.inFlight.size >= WINDOW_REQUESTS) await Promise.race(this.inFlight);
    this.check();
  }

  private write(client: NbdClient, offsetBytes: number, lengthBytes: number, fua = false): void {
    const payload = this.keystream.update(this.zeros.subarray(0, lengthBytes));
    assert(payload.length === lengthBytes, 'the keystream gives as many bytes as asked');
    payload.copy(this.model, offsetBytes);
    this.track(client.write(offsetBytes, payload, { fua }));
    this.stats.writes++;
    this.stats.bytesWritten += lengthBytes;
  }

  private track(request: Promise<void>): void {
    const p: Promise<void> = request.then(
      () => void this.inFlight.delete(p),
      (err: Error) => {
        this.inFlight.delete(p);
        this.failure ??= err;
      },
    );
    this.inFlight.add(p);
  }

  private async drain(): Promise<void> {
    while (this.inFlight.size > 0) await Promise.race(this.inFlight);
    this.check();
  }

  private check(): void {
    if (this.failure !== undefined) throw this.failure;
  }

  private int(n: number): number {
    return Math.floor(this.random() * n);
  }

  // First fit in the data area.
  private allocate(lengthBytes: number): number | undefined {
    const i = this.free.findIndex((f) => f.lengthBytes >= lengthBytes);
    if (i < 0) return undefined;
    const f = this.free[i]!;
    const offsetBytes = f.offsetBytes;
    if (f.lengthBytes === lengthBytes) this.free.splice(i, 1);
    else this.free[i] = { offsetBytes: f.offsetBytes + lengthBytes, lengthBytes: f.lengthBytes - lengthBytes };
    return offsetBytes;
  }

  private release(offsetBytes: number, lengthBytes: number): void {
    let i = this.free.findIndex((f) => f.offsetBytes > offsetBytes);
    if (i < 0) i = this.free.length;
    this.free.splice(i, 0, { offsetBytes, lengthBytes });
    // Merge with the neighbours.
    for (let j = Math.max(0, i - 1); j < this.free.length - 1 && j <= i; ) {
      const a = this.free[j]!;
      const b = this.free[j + 1]!;
      assert(a.offsetBytes + a.lengthBytes <= b.offsetBytes, 'free extents do not overlap');
      if (a.offsetBytes + a.lengthBytes === b.offsetBytes) this.free.splice(j, 2, { offsetBytes: a.offsetBytes, lengthBytes: a.lengthBytes + b.lengthBytes });
      else j++;
    }
  }
}
