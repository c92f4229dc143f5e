// The flusher: applies WAL records to base.img and advances the checkpoint.
//
// A checkpoint at `to` (the head LSN when it starts, snapshotted at once;
// applied once the WAL has written it): punch every zeroed
// range with LSN <= to, then write every block whose newest version has
// LSN <= to, coalesced into runs of consecutive blocks, then fdatasync
// base.img (and the WAL up to `to`, so its segments may be recycled), then
// write the checkpoint into the superblock (RWF_DSYNC), and
// only then forget those entries and release the WAL below `to`. Zero ranges
// go first: a block written after a trim is in both sets, and the write must
// land last. Newer records that arrive meanwhile keep their dirty entries.
// A failure stops writes to the volume (io.fail) and is never retried.
import { performance } from 'node:perf_hooks';

import { BLOCK_BYTES } from '../native/base_image';
import type { BlockEntry } from './dirty_map';
import { RECORD_BLOCKS_MAX, type VolumeIo } from './volume_io';

const RUNS_IN_FLIGHT = 16;
const PUNCH_BYTES_MAX = 1 << 30;
const RECORD_CACHE_MAX = 64;
const RECORD_HEADER_BYTES = 64;

export interface FlusherOptions {
  triggerBytes: number;
  idleMs: number;
  // WAL bytes kept below the checkpoint for replicas that need catch-up.
  retentionBytes: number;
}

export class Flusher {
  checkpoints = 0;
  private chain: Promise<void> = Promise.resolve();
  private pending = false;
  private idleTimer: NodeJS.Timeout | undefined;
  private stopped = false;
  // (checkpoint LSN, WAL bytes written when it was taken), oldest first: maps
  // the retention budget in bytes to an LSN below which the WAL may go.
  private readonly marks: { lsn: number; walBytes: number }[] = [];

  constructor(
    private readonly io: VolumeIo,
    private readonly options: FlusherOptions,
  ) {
    io.onPressure = () => this.kick();
  }

  // After each write: start a checkpoint when enough is dirty, and (re)arm the
  // idle timer.
  noteWrite(): void {
    if (this.stopped) return;
    if (this.io.dirty.dirtyBlocks * BLOCK_BYTES >= this.options.triggerBytes) this.kick();
    if (this.options.idleMs > 0) {
      if (this.idleTimer !== undefined) clearTimeout(this.idleTimer);
      this.idleTimer = setTimeout(() => this.kick(), this.options.idleMs);
      this.idleTimer.unref();
    }
  }

  // A background checkpoint unless one is already queued; errors are kept in io.failure.
  kick(): void {
    if (this.pending || this.stopped) return;
    this.checkpoint().catch(() => undefined);
  }

  // A checkpoint covering every write resolved before the call.
  checkpoint(): Promise<void> {
    this.pending = true;
    const run = this.chain.then(() => {
      this.pending = false;
      return this.checkpointOnce();
    });
    this.chain = run.catch(() => undefined);
    return run;
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.idleTimer !== undefined) clearTimeout(this.idleTimer);
    await this.chain;
  }

  private async checkpointOnce(): Promise<void> {
    const io = this.io;
    if (io.failure !== undefined) throw io.failure;
    // Every record that has an LSN is in the snapshot: taking it synchronously
    // at the head means no block's newest version lies above `to` while an
    // older one below is skipped (the older one may be durable when the newer
    // is lost in a crash). Versions replaced later stay in the snapshot.
    const to = io.wal.lsnHead;
    if (to <= io.sb.fields.checkpointLsn) return;
    const { zeros, blocks } = io.dirty.collect(to);
    const startedMs = performance.now();
    try {
      await io.wal.waitWritten(to); // base.img gets only what the WAL has written
      for (const z of zeros) await this.punch(z.startBlock, z.endBlock);
      await this.writeRuns(blocks);
      // The WAL below `to` is released afterwards, and the writer recycles only
      // durable segments: make it durable alongside base.img.
      await Promise.all([io.base.fdatasync(), io.wal.waitDurable(to)]);
      await io.sb.update({ checkpointLsn: to });
    } catch (err) {
      throw io.fail(err);
    }
    io.dirty.dropUpTo(to);
    this.releaseWal(to);
    this.checkpoints++;
    io.log.debug(
      { checkpointLsn: to, blocks: blocks.length, zeroRanges: zeros.length, ms: Math.round(performance.now() - startedMs) },
      'checkpoint',
    );
  }

  // Releases the WAL up to the newest checkpoint that lies at least
  // retentionBytes behind the head (all of it when retention is 0).
  private releaseWal(to: number): void {
    const walBytes = this.io.wal.status().bytesWritten;
    if (this.options.retentionBytes === 0) {
      this.io.wal.release(to);
      return;
    }
    this.marks.push({ lsn: to, walBytes });
    let releasable = 0;
    while (this.marks.length > 0 && walBytes - this.marks[0]!.walBytes >= this.options.retentionBytes) {
      releasable = this.marks.shift()!.lsn;
    }
    if (releasable > 0) this.io.wal.release(releasable);
  }

  private async punch(startBlock: number, endBlock: number): Promise<void> {
    const blocksMax = PUNCH_BYTES_MAX / BLOCK_BYTES;
    for (let b = startBlock; b < endBlock; b += blocksMax) {
      await this.io.base.punchHole(b, Math.min(blocksMax, endBlock - b));
    }
  }

  private async writeRuns(blocks: [number, BlockEntry][]): Promise<void> {
    const runs: [number, BlockEntry][][] = [];
    for (const item of blocks) {
      const run = runs[runs.length - 1];
      const last = run?.[run.length - 1];
      if (run !== undefined && last !== undefined && last[0] + 1 === item[0] && run.length < RECORD_BLOCKS_MAX) run.push(item);
      else runs.push([item]);
    }
    const records = new Map<string, Promise<Buffer>>();
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < runs.length) await this.writeRun(runs[next++]!, records);
    };
    await Promise.all(Array.from({ length: Math.min(RUNS_IN_FLIGHT, runs.length) }, worker));
  }

  // Fills one slice for a run of consecutive blocks and writes it. Blocks that
  // sit next to each other in one record are copied as one span.
  private async writeRun(run: [number, BlockEntry][], records: Map<string, Promise<Buffer>>): Promise<void> {
    const slice = await this.io.pool.alloc(run.length * BLOCK_BYTES);
    try {
      let i = 0;
      while (i < run.length) {
        const entry = run[i]![1];
        let n = 1;
        while (i + n < run.length && sameRecordNext(entry, run[i + n]![1], n)) n++;
        if (records.size > RECORD_CACHE_MAX) records.clear();
        const record = await this.io.readRecordCached(entry, records);
        const from = RECORD_HEADER_BYTES + entry.indexInRecord * BLOCK_BYTES;
        slice.bytes.set(record.subarray(from, from + n * BLOCK_BYTES), i * BLOCK_BYTES);
        i += n;
      }
      await this.io.base.writeBlocks(run[0]![0], run.length, slice);
    } finally {
      this.io.pool.free(slice);
    }
  }
}

// True when `next` is the block `distance` places after `first` in the same record.
function sameRecordNext(first: BlockEntry, next: BlockEntry, distance: number): boolean {
  return (
    next.segmentSeq === first.segmentSeq &&
    next.recordOffsetBytes === first.recordOffsetBytes &&
    next.lsn === first.lsn &&
    next.indexInRecord === first.indexInRecord + distance
  );
}
