// The flusher: applies WAL records to base.img and advances the checkpoint.
//
// A checkpoint at `to` (the head LSN when it starts, snapshotted at once;
// applied once the WAL has written it): punch every zeroed
// range with LSN <= to, then write every block whose newest version has
// LSN <= to, then fdatasync base.img (and the WAL up to `to`, so its segments
// may be recycled), then write the checkpoint into the superblock (RWF_DSYNC)
// with the WAL floor (wal_retention.ts), and only then forget those entries
// and release the WAL up to the floor (at most `to`). Zero
// ranges go first: a block written after a trim is in both sets, and the
// write must land last. Newer records that arrive meanwhile keep their dirty
// entries. A failure stops writes to the volume (io.fail) and is never retried.
//
// How the blocks are applied: a pure plan (checkpoint_plan.ts) groups them
// into pieces (consecutive blocks of one record on consecutive LBAs), the
// records in WAL order into extents (nearby records of one segment, read as
// one span of a few MiB), and each extent's pieces in LBA order into runs
// (base.img writes of consecutive blocks). Per extent: one arena slice
// [write area | read area]; one native call that copies its pieces into the
// write area straight from the WAL's memory (group slots, WAL cache) when it
// still holds the records, else one read of the span and one native call
// that verifies every record (checksum, LSN, kind, block range) and copies
// its pieces; then the runs are written. No payload byte crosses into a JS
// Buffer. Extents run concurrently within a byte budget (APPLY_BYTES_MAX, at
// most a share of the arena's JS part, so foreground reads keep room), writes
// within WRITES_IN_FLIGHT_MAX. One allocation per extent means no
// hold-and-wait on the arena between the flusher's own buffers.
import { performance } from 'node:perf_hooks';
import { setImmediate as yieldTurn } from 'node:timers/promises';

import { BLOCK_BYTES } from '../native/base_image';
import type { ArenaSlice } from '../native/ring';
import { GATHER, GATHER_FIELDS, GATHER_OPS_MAX } from '../native/wal';
import { type CheckpointBlocks, type Plan, type PlanExtent, type Run, alignDown, planCheckpoint, planRuns } from './checkpoint_plan';
import { durabilityCode } from '../statemachine/control';
import type { VolumeIo } from './volume_io';
import { WalRetention } from './wal_retention';

const PUNCH_BYTES_MAX = 1 << 30;
// Bytes of arena the flusher holds at once (reads and writes in flight), and
// at most this share of the arena's JS part.
const APPLY_BYTES_MAX = 32 << 20;
const APPLY_ARENA_SHARE = 0.5;
// One WAL read: at most this much (and a quarter of the budget), bridging
// gaps of obsolete records up to EXTENT_GAP_BYTES_MAX rather than splitting.
const EXTENT_READ_BYTES_MAX = 4 << 20;
const EXTENT_GAP_BYTES_MAX = 64 << 10;
// One base.img write: at most this many blocks (4 MiB).
const RUN_BLOCKS_MAX = 1024;
// base.img writes in flight at once. Each batch is submitted inline by one
// io_uring_enter on the JS thread, and the WAL's group writes queue behind
// them in the device: 128 let a checkpoint of 4 KiB random writes cut client
// writes to a fraction for its whole length (and a replica's acks with them);
// 32 keep the disk busy and clients moving.
const WRITES_IN_FLIGHT_MAX = 32;

export interface FlusherOptions {
  triggerBytes: number;
  idleMs: number;
  // WAL bytes kept below the checkpoint for replicas that need catch-up.
  retentionBytes: number;
  // At most this many WAL bytes are held for a pin (walPin).
  pinBudgetBytes: number;
}

export class Flusher {
  checkpoints = 0;
  private chain: Promise<void> = Promise.resolve();
  private pending = false;
  private idleTimer: NodeJS.Timeout | undefined;
  private writesSinceArmed = 0;
  private stopped = false;
  // What the WAL keeps below the checkpoint (wal_retention.ts).
  private readonly retention: WalRetention;
  // The lowest LSN some reader still needs from the WAL (a replica catching
  // up, or one that is away and may come back); honoured within pinBudgetBytes.
  private walPin: (() => number) | undefined;
  // A rebuild's base writes (see baseWrite): how many run, and checkpoints
  // waiting for them to end before taking their snapshot.
  private baseWritesInFlight = 0;
  private snapshotWaiters: (() => void)[] = [];
  private baseWaiters: (() => void)[] = [];

  constructor(
    private readonly io: VolumeIo,
    private readonly options: FlusherOptions,
  ) {
    io.onPressure = () => this.kick();
    // Open scanned the WAL from the retention floor: what it found is kept.
    this.retention = new WalRetention(options, io.walIndex, io.log, io.walTail, io.sb.fields.checkpointLsn);
  }

  // Sets or withdraws the reader's pin (a withdrawn pin leaves a hold on what it kept).
  setWalPin(pin: (() => number) | undefined): void {
    const last = this.walPin?.();
    this.walPin = pin;
    if (pin !== undefined) this.retention.pinned();
    else this.retention.unpinned(last);
  }

  // The WAL was replaced by one starting after lsn (rebuild, dropped unapplied records).
  walReplaced(lsn: number): void {
    this.retention.replaced(lsn);
  }

  // After each write: start a checkpoint when enough is dirty, and (re)arm the
  // idle timer.
  noteWrite(): void {
    if (this.stopped) return;
    if (this.io.dirty.dirtyBlocks * BLOCK_BYTES >= this.options.triggerBytes) this.kick();
    if (this.options.idleMs > 0) {
      // One timer, not one per write: when it fires after writes it only
      // re-arms, so the checkpoint comes idleMs to 2 × idleMs after the last.
      this.writesSinceArmed++;
      if (this.idleTimer === undefined) this.armIdle();
    }
  }

  private armIdle(): void {
    this.writesSinceArmed = 0;
    this.idleTimer = setTimeout(this.onIdleTimer, this.options.idleMs);
    this.idleTimer.unref();
  }

  private readonly onIdleTimer = (): void => {
    this.idleTimer = undefined;
    if (this.stopped) return;
    if (this.writesSinceArmed > 0) this.armIdle();
    else this.kick();
  };

  // A background checkpoint unless one is already queued; errors are kept in io.failure.
  kick(): void {
    if (this.pending || this.stopped) return;
    this.checkpoint().catch(() => undefined);
  }

  get pinBudgetBytes(): number {
    return this.options.pinBudgetBytes;
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

  // Runs fn once queued checkpoints are done, with none running meanwhile.
  exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.chain.then(fn);
    this.chain = run.then(
      () => undefined,
      () => undefined,
    );
    return run;
  }

  // Runs a rebuild's base write: plan() (the compare-and-set against the
  // rebuild bitmap) and its writes. A checkpoint already past its snapshot
  // goes on meanwhile: its blocks were marked before plan() ran, so plan()
  // leaves them alone. A checkpoint that would take its snapshot now waits
  // until the write is done, so a record applied after plan() reaches
  // base.img after the base data. New base writes wait while a checkpoint
  // waits for its snapshot (checkpoints are never starved).
  async baseWrite<T>(plan: () => T, write: (planned: T) => Promise<void>): Promise<T> {
    while (this.snapshotWaiters.length > 0) await new Promise<void>((resolve) => this.baseWaiters.push(resolve));
    this.baseWritesInFlight++;
    try {
      const planned = plan();
      await write(planned);
      return planned;
    } finally {
      this.baseWritesInFlight--;
      if (this.baseWritesInFlight === 0) for (const wake of this.snapshotWaiters.splice(0)) wake();
    }
  }

  private async baseWritesDone(): Promise<void> {
    while (this.baseWritesInFlight > 0) await new Promise<void>((resolve) => this.snapshotWaiters.push(resolve));
    for (const wake of this.baseWaiters.splice(0)) wake();
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
    // A replica's WAL may hold records beyond what it has applied: those are
    // not the checkpoint's (they are not committed yet).
    await this.baseWritesDone();
    const to = io.lsnApplied;
    const applyChecksum = io.applyChecksum;
    // What control records made of the volume up to `to` (the superblock
    // holds the state at its checkpoint; later records are replayed).
    const { features, sizeBytes, durability } = io.state;
    const epochStarts = io.epochStarts;
    if (to <= io.sb.fields.checkpointLsn) {
      // Nothing to apply, but appends may wait for a segment that only WAL
      // kept below the checkpoint occupies: no later checkpoint would come
      // to release it.
      if (io.wal.full) await this.releaseKept();
      return;
    }
    const { zeros, blocks } = io.dirty.collect(to);
    const startedMs = performance.now();
    // The plan is synchronous work (tens of ms for tens of thousands of
    // blocks): requests waiting behind it get a turn between its steps.
    await yieldTurn();
    let walTailLsn = 0;
    let appliedMs = startedMs;
    let syncedMs = startedMs;
    try {
      await io.wal.waitWritten(to); // base.img gets only what the WAL has written
      for (const z of zeros) await this.punch(z.startBlock, z.endBlock);
      await this.applyBlocks(blocks);
      appliedMs = performance.now();
      // The WAL below `to` is released afterwards, and the writer recycles only
      // durable segments: make it durable alongside base.img.
      await Promise.all([io.base.fdatasync(), io.wal.waitDurable(to)]);
      syncedMs = performance.now();
      io.beforeCheckpoint?.();
      // The floor goes into the superblock with the checkpoint, before the
      // WAL below it is released.
      walTailLsn = this.walTailAt(to);
      await io.sb.update({ checkpointLsn: to, applyChecksum, features, sizeBytes, durabilityCode: durabilityCode(durability), walTailLsn, epochStarts });
    } catch (err) {
      throw io.fail(err);
    }
    io.dirty.dropUpTo(to);
    if (walTailLsn > 0) io.wal.release(walTailLsn);
    this.checkpoints++;
    io.log.debug(
      {
        checkpointLsn: to,
        walTailLsn,
        blocks: blocks.count,
        zeroRanges: zeros.length,
        ms: Math.round(performance.now() - startedMs),
        applyMs: Math.round(appliedMs - startedMs),
        syncMs: Math.round(syncedMs - appliedMs),
      },
      'checkpoint',
    );
  }

  // The WAL is full and everything placed is checkpointed: decide the floor
  // at the checkpoint again (a full WAL keeps nothing for readers or the
  // budget), record it, then release.
  private async releaseKept(): Promise<void> {
    const io = this.io;
    const floorBefore = this.retention.floor;
    const walTailLsn = this.walTailAt(io.sb.fields.checkpointLsn);
    if (walTailLsn <= floorBefore) return;
    try {
      await io.sb.update({ walTailLsn });
    } catch (err) {
      throw io.fail(err);
    }
    io.wal.release(walTailLsn);
    io.log.info({ checkpointLsn: io.sb.fields.checkpointLsn, walTailLsn, walTailBefore: floorBefore }, 'WAL full with nothing to apply: released what was kept below the checkpoint');
  }

  // The WAL floor for the checkpoint at `to`: up to the newest checkpoint
  // that lies at least retentionBytes behind the head (all of it when
  // retention is 0), but not past a pin (or a hold) while what it keeps fits
  // in pinBudgetBytes (wal_retention.ts).
  private walTailAt(to: number): number {
    const wal = this.io.wal;
    return this.retention.decide({ to, walBytes: wal.status().bytesWritten, pin: this.walPin?.(), walFull: wal.full });
  }

  private async punch(startBlock: number, endBlock: number): Promise<void> {
    const blocksMax = PUNCH_BYTES_MAX / BLOCK_BYTES;
    for (let b = startBlock; b < endBlock; b += blocksMax) {
      await this.io.base.punchHole(b, Math.min(blocksMax, endBlock - b));
    }
  }

  // Applies the blocks extent by extent in WAL order, several extents at once
  // within the byte budget (see the module comment).
  private async applyBlocks(blocks: CheckpointBlocks): Promise<void> {
    if (blocks.count === 0) return;
    const io = this.io;
    const budgetBytes = Math.max(BLOCK_BYTES, Math.min(APPLY_BYTES_MAX, alignDown(io.ring.jsRegionBytes * APPLY_ARENA_SHARE, BLOCK_BYTES)));
    const readBytesMax = Math.max(BLOCK_BYTES, Math.min(EXTENT_READ_BYTES_MAX, alignDown(budgetBytes / 4, BLOCK_BYTES)));
    const plan = planCheckpoint(blocks, { readBytesMax, gapBytesMax: EXTENT_GAP_BYTES_MAX });
    await yieldTurn();
    const budget = new Budget(budgetBytes);
    const writeSlots = new Budget(WRITES_IN_FLIGHT_MAX);
    const jobs: Promise<void>[] = [];
    let failure: { err: unknown } | undefined;
    for (const extent of plan.extents) {
      const runs = planRuns(plan, extent, RUN_BLOCKS_MAX);
      const needBytes = extent.blocks * BLOCK_BYTES + (extent.endBytes - extent.startBytes);
      await budget.take(needBytes);
      if (failure !== undefined) {
        budget.give(needBytes);
        break;
      }
      jobs.push(
        this.applyExtent(plan, extent, runs, budget, writeSlots).catch((err: unknown) => {
          failure ??= { err };
        }),
      );
    }
    await Promise.all(jobs);
    if (failure !== undefined) throw failure.err;
  }

  // One extent: a slice holding [write area | read area]; copy its pieces
  // into the write area from the WAL's memory, or else read the extent into
  // the read area and verify and copy them from there (one native call
  // either way), free the read area, write the runs, free the write area.
  // Holds needBytes of the budget until then and gives it back in two parts.
  private async applyExtent(plan: Plan, extent: PlanExtent, runs: Run[], budget: Budget, writeSlots: Budget): Promise<void> {
    const io = this.io;
    const writeBytes = extent.blocks * BLOCK_BYTES;
    const readBytes = extent.endBytes - extent.startBytes;
    let slice: ArenaSlice;
    try {
      slice = await io.ring.allocWait(writeBytes + readBytes);
    } catch (err) {
      budget.give(writeBytes + readBytes);
      throw err;
    }
    const writeArea = this.subSlice(slice, 0, writeBytes);
    const readArea = this.subSlice(slice, writeBytes, readBytes);
    try {
      if (!this.gatherFromMemory(plan, extent, writeArea)) {
        await io.wal.readSpan(extent.segmentSeq, extent.startBytes, readBytes, readArea);
        this.gather(plan, extent, readArea, writeArea);
      }
    } catch (err) {
      io.ring.free(writeArea);
      budget.give(writeBytes);
      throw err;
    } finally {
      io.ring.free(readArea);
      budget.give(readBytes);
    }
    // Every write settles before the area is freed: the kernel may still be
    // reading a buffer whose write has not completed.
    const batches: Promise<void>[] = [];
    for (let i = 0; i < runs.length; i += WRITES_IN_FLIGHT_MAX) {
      const batch = runs.slice(i, i + WRITES_IN_FLIGHT_MAX).map((r) => ({ lba: r.lba, lengthBlocks: r.lengthBlocks, srcBytes: r.dstBytes }));
      await writeSlots.take(batch.length);
      const written = io.base.writeRuns(batch, writeArea);
      batches.push(written.finally(() => writeSlots.give(batch.length)));
    }
    const results = await Promise.allSettled(batches);
    io.ring.free(writeArea);
    budget.give(writeBytes);
    for (const r of results) if (r.status === 'rejected') throw r.reason;
  }

  // Copies the extent's pieces to their places in the write area straight
  // from the WAL's memory when it still holds every record of the extent
  // (the common case: a checkpoint follows the writes closely): no read of
  // the span and no second hash of the payloads. False when it does not
  // (nothing copied).
  private gatherFromMemory(plan: Plan, extent: PlanExtent, writeArea: ArenaSlice): boolean {
    const pieces = plan.pieceStart[extent.end]! - plan.pieceStart[extent.first]!;
    if (pieces > GATHER_OPS_MAX) return false;
    const desc = new Float64Array(pieces * GATHER_FIELDS);
    let count = 0;
    for (let p = extent.first; p < extent.end; p++) {
      const r = plan.recOrder[p]!;
      const src = plan.blocks.recOffsetBytes[r]!;
      for (let j = plan.pieceStart[p]!; j < plan.pieceStart[p + 1]!; j++) describePiece(desc, count++, src, plan, r, plan.piecesOf[j]!, writeArea);
    }
    return this.io.wal.gatherFromMemory(extent.segmentSeq, desc, count);
  }

  // Verifies every record of the extent (read into readArea) and copies its
  // pieces to their places in the write area, in batches of descriptors (one
  // record's together).
  private gather(plan: Plan, extent: PlanExtent, readArea: ArenaSlice, writeArea: ArenaSlice): void {
    const pieces = plan.pieceStart[extent.end]! - plan.pieceStart[extent.first]!;
    const batch = Math.min(pieces, GATHER_OPS_MAX);
    const desc = new Float64Array(batch * GATHER_FIELDS);
    let count = 0;
    for (let p = extent.first; p < extent.end; p++) {
      const r = plan.recOrder[p]!;
      const first = plan.pieceStart[p]!;
      const end = plan.pieceStart[p + 1]!;
      if (count + (end - first) > batch) {
        this.io.wal.gatherBlocks(desc, count);
        count = 0;
      }
      const src = readArea.offsetBytes + (plan.blocks.recOffsetBytes[r]! - extent.startBytes);
      for (let j = first; j < end; j++) describePiece(desc, count++, src, plan, r, plan.piecesOf[j]!, writeArea);
    }
    if (count > 0) this.io.wal.gatherBlocks(desc, count);
  }

  private subSlice(slice: ArenaSlice, fromBytes: number, lengthBytes: number): ArenaSlice {
    const offsetBytes = slice.offsetBytes + fromBytes;
    return { offsetBytes, lengthBytes, bytes: this.io.ring.arenaView(offsetBytes, lengthBytes) };
  }
}
// Gather descriptor i: piece k of record r (found at src) to its place in the write area.
function describePiece(desc: Float64Array, i: number, src: number, plan: Plan, r: number, k: number, writeArea: ArenaSlice): void {
  const d = i * GATHER_FIELDS;
  desc[d + GATHER.src] = src;
  desc[d + GATHER.spanBytes] = plan.blocks.recSpanBytes[r]!;
  desc[d + GATHER.lsn] = plan.blocks.recLsn[r]!;
  desc[d + GATHER.firstIndex] = plan.pieceIndex[k]!;
  desc[d + GATHER.lengthBlocks] = plan.pieceLength[k]!;
  desc[d + GATHER.dst] = writeArea.offsetBytes + plan.pieceDstBytes[k]!;
}

// A counting limit with a FIFO of waiters (bytes, or write slots). A request
// larger than the whole limit is let through when nothing else is held, so
// it can never wait forever.
class Budget {
  private held = 0;
  private readonly waiting: { amount: number; resolve: () => void }[] = [];

  constructor(private readonly limit: number) {}

  take(amount: number): Promise<void> {
    if (this.waiting.length === 0 && this.fits(amount)) {
      this.held += amount;
      return Promise.resolve();
    }
    return new Promise<void>((resolve) => this.waiting.push({ amount, resolve }));
  }

  give(amount: number): void {
    this.held -= amount;
    if (this.held < 0) throw new Error(`flusher budget below zero (${this.held})`);
    while (this.waiting.length > 0 && this.fits(this.waiting[0]!.amount)) {
      const w = this.waiting.shift()!;
      this.held += w.amount;
      w.resolve();
    }
  }

  private fits(amount: number): boolean {
    return this.held === 0 || this.held + amount <= this.limit;
  }
}
