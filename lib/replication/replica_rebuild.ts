// The replica's side of a two-lane rebuild (DESIGN.md §4): REBUILD_START
// drops everything local and sets the volume to the primary's checkpoint
// (or resumes the running session); BASE_CHUNKs are verified and written
// where no applied record marked the block; records the WAL lane applies
// mark the rebuild bitmap in the same step that applies them (the rules live
// in lib/protocol/rebuild_session.ts, the files in lib/engine/rebuild_files.ts).
//
// Rules:
//  - a chunk counts as done only once base.img is fdatasynced after its
//    writes; progress (rebuild.json) is persisted every REBUILD_PERSIST_CHUNKS
//    chunks or REBUILD_PERSIST_MS, so a restart re-copies at most that much;
//  - the bitmap is synced before each checkpoint (its bits must be durable
//    before the records that set them leave the WAL);
//  - completion (base done, applied >= target and >= every chunk's
//    checkpoint, digests matched) checkpoints, removes the rebuild files and
//    is reported once.
import { performance } from 'node:perf_hooks';

import type { Logger } from 'pino';

import type { RebuildSaved } from '../engine/rebuild_files';
import type { Volume } from '../engine/volume';
import type { DenseBitmap } from '../native/bitmap';
import { BlockwalError } from '../native/errors';
import { type RebuildProgress, RebuildSession } from '../protocol/rebuild_session';
import type { SessionFailure } from '../protocol/types';
import { durabilityOfCode } from '../statemachine/control';
import type { BaseChunkFrame, HelloRebuild, RebuildStartFrame, SessionAckFrame } from './frames';

const BLOCK_BYTES = 4096;

export interface ReplicaRebuildStatus {
  sessionId: number;
  phase: string;
  lsnBase: number;
  lsnTarget: number;
  lsnApplied: number;
  chunksDone: number;
  chunksTotal: number;
}
// Chunks written between two persists of the rebuild's progress (each
// persist is an fdatasync of base.img and an atomic rewrite of rebuild.json).
const REBUILD_PERSIST_CHUNKS = 32;
const REBUILD_PERSIST_MS = 1000;
// Base chunks received and not yet written: the link is not read past this.
const BASE_QUEUE_BYTES_MAX = 32 << 20;
// Written in one flusher exclusion at most.
const BASE_BATCH_BYTES_MAX = 16 << 20;

// The running session and its files; it outlives links (a link that drops
// mid-rebuild resumes it on the next one).
interface RebuildState {
  session: RebuildSession;
  bitmap: DenseBitmap;
  saved: RebuildSaved;
  tokens: number[]; // base writes done, not yet durable
  lastPersistMs: number;
  completing: boolean;
}

export class ReplicaRebuild {
  private state: RebuildState | undefined;
  // An unfinished rebuild this node cannot resume (no trustworthy bitmap):
  // reported with epoch 0 so that the primary starts a fresh one.
  private unresumable: HelloRebuild | undefined;
  private completeScheduled = false;
  onCompleted: ((ack: SessionAckFrame) => void) | undefined;
  // Progress and failures of the base writer, for the current primary link.
  onAck: ((ack: SessionAckFrame) => void) | undefined;
  // A base chunk's data is written (or refused) and no longer referenced.
  onDataDone: ((data: Uint8Array) => void) | undefined;
  private readonly queue: BaseChunkFrame[] = [];
  private queuedBytes = 0;
  private queueWaiters: (() => void)[] = [];
  private writing = false;
  private readonly zeros = new Map<number, Buffer>();
  private persisting: Promise<void> = Promise.resolve();

  constructor(
    private readonly volume: Volume,
    private readonly log: Logger,
  ) {}

  // At start: a rebuild that did not finish resumes (durable bits + the
  // records applied from here on mark again).
  restore(): void {
    const saved = this.volume.rebuildSaved;
    if (saved === undefined) return;
    const bitmap = saved.damaged === undefined ? this.volume.openRebuildBitmap() : undefined;
    if (bitmap !== undefined && saved.progress !== undefined && saved.progress !== null) {
      try {
        const session = RebuildSession.resume(saved.progress as RebuildProgress, bitmap, { lsnApplied: this.volume.lsnApplied });
        this.install({ session, bitmap, saved, tokens: [], lastPersistMs: performance.now(), completing: false });
        this.log.warn({ sessionId: saved.sessionId, chunksDone: session.chunkIndexNext, chunksTotal: session.chunksTotal }, 'resuming an unfinished rebuild');
        return;
      } catch (err) {
        this.log.warn({ err: (err as Error).message }, 'the unfinished rebuild cannot resume');
      }
    }
    bitmap?.close();
    this.unresumable = { sessionId: saved.sessionId, epoch: 0, baseLsn: saved.lsnBase, chunksDone: 0, chunksTotal: saved.chunksTotal };
    this.log.warn({ sessionId: saved.sessionId, damaged: saved.damaged }, 'an unfinished rebuild without a trustworthy bitmap: the primary must start afresh');
  }

  // What HELLO reports (undefined: the volume is whole).
  facts(): HelloRebuild | undefined {
    const s = this.state?.session;
    if (s !== undefined) return { sessionId: s.sessionId, epoch: s.epoch, baseLsn: s.lsnBase, chunksDone: s.chunkIndexNext, chunksTotal: s.chunksTotal };
    return this.unresumable;
  }

  status(): ReplicaRebuildStatus | undefined {
    const r = this.state;
    if (r === undefined) return undefined;
    const s = r.session;
    return { sessionId: s.sessionId, phase: s.phase, lsnBase: s.lsnBase, lsnTarget: s.lsnTarget, lsnApplied: s.lsnApplied, chunksDone: s.chunkIndexNext, chunksTotal: s.chunksTotal };
  }

  // REBUILD_START: resume the running session, or drop everything and start.
  async start(f: RebuildStartFrame): Promise<SessionAckFrame> {
    const r = this.state;
    if (r !== undefined && r.session.sessionId === f.sessionId && r.session.epoch === f.epoch && f.chunkFrom <= r.session.chunkIndexNext) {
      // The primary resumes with its head as the target: completing below it
      // (at the target this session started with) would be refused.
      if (f.lsnTarget > r.session.lsnTarget) {
        r.session.raiseTarget(f.lsnTarget);
        await this.persist();
      }
      this.log.info({ sessionId: f.sessionId, chunkFrom: f.chunkFrom, lsnTarget: r.session.lsnTarget }, 'rebuild resumed by the primary');
      return this.ack('accepted', undefined, '');
    }
    if (f.chunkFrom > 0) {
      return this.ackFor(f, 'failed', 'superseded', `cannot resume session ${f.sessionId} at chunk ${f.chunkFrom}: this replica does not hold its progress`);
    }
    const resync = f.resync === true;
    if (resync && this.volume.rebuildSaved !== undefined) {
      return this.ackFor(f, 'failed', 'superseded', `cannot resync session ${f.sessionId}: this replica's base image is partial (an unfinished rebuild)`);
    }
    this.drop();
    // A resync keeps the base image: everything applied goes into it first.
    // The primary's bitmap starts at this replica's reported checkpoint, so
    // it marks what was applied after that anyway; this keeps the base
    // current without relying on it.
    if (resync) await this.volume.checkpoint();
    const volumeBlocks = Math.ceil(f.sizeBytes / BLOCK_BYTES);
    const saved: RebuildSaved = {
      sessionId: f.sessionId,
      epoch: f.epoch,
      lsnBase: f.lsnBase,
      lsnTarget: f.lsnTarget,
      chunkBlocks: f.chunkBlocks,
      chunksTotal: Math.ceil(volumeBlocks / f.chunkBlocks),
      progress: null,
      updatedAtMs: Date.now(),
    };
    const durability = durabilityOfCode(f.durabilityCode);
    const bitmap = await this.volume.beginRebuild(saved, {
      applyChecksum: f.applyChecksumBase,
      state: { epoch: f.epoch, features: f.features, sizeBytes: f.sizeBytes, durability },
      epochStarts: f.epochStarts,
    });
    const session = new RebuildSession({ sessionId: f.sessionId, epoch: f.epoch, lsnBase: f.lsnBase, lsnTarget: f.lsnTarget, chunkBlocks: f.chunkBlocks, volumeBlocks, resync }, bitmap);
    if (resync) this.log.warn({ sessionId: f.sessionId, lsnBase: f.lsnBase }, 'bitmap resync: the base image is kept; chunks the primary marks are copied again');
    this.unresumable = undefined;
    this.install({ session, bitmap, saved, tokens: [], lastPersistMs: performance.now(), completing: false });
    await this.persist();
    return this.ack('accepted', undefined, '');
  }

  // BASE_CHUNK: queued for the base writer (the frame chain moves on to the
  // WAL lane); waits while BASE_QUEUE_BYTES_MAX of chunks wait to be written.
  async chunk(f: BaseChunkFrame): Promise<void> {
    const r = this.state;
    if (r === undefined || r.session.sessionId !== f.sessionId || r.session.epoch !== f.epoch) return; // stale
    if (r.session.isChunkDone(f.index)) return;
    while (this.queuedBytes >= BASE_QUEUE_BYTES_MAX) await new Promise<void>((resolve) => this.queueWaiters.push(resolve));
    this.queue.push(f);
    this.queuedBytes += queuedBytesOf(f);
    if (!this.writing) void this.runWriter();
  }

  // Writes queued chunks in batches: one flusher exclusion per batch (a
  // checkpoint under load can take a while; waiting for one per chunk would
  // make the base lane crawl), the compare-and-set of every chunk inside it.
  private async runWriter(): Promise<void> {
    this.writing = true;
    try {
      while (this.queue.length > 0) {
        const batch: BaseChunkFrame[] = [];
        let bytes = 0;
        while (this.queue.length > 0 && (batch.length === 0 || bytes + queuedBytesOf(this.queue[0]!) <= BASE_BATCH_BYTES_MAX)) {
          const f = this.queue.shift()!;
          batch.push(f);
          bytes += queuedBytesOf(f);
        }
        await this.writeBatch(batch).finally(() => {
          this.queuedBytes -= bytes;
          for (const wake of this.queueWaiters.splice(0)) wake();
        });
      }
    } catch (err) {
      this.log.error({ err: (err as Error).message }, 'rebuild: base write failed');
    } finally {
      this.writing = false;
    }
  }

  private async writeBatch(batch: readonly BaseChunkFrame[]): Promise<void> {
    const r = this.state;
    if (r === undefined) return;
    const planned: ReturnType<RebuildSession['planBaseWrite']>[] = [];
    await this.volume.writeBaseRuns(
      batch.map((f) => ({
        plan: () => {
          if (this.state !== r) return []; // superseded meanwhile
          const ref = { sessionId: f.sessionId, epoch: f.epoch };
          const chunk = { sessionId: f.sessionId, epoch: f.epoch, index: f.index, startBlock: f.startBlock, blocks: f.blocks, lsnCheckpoint: f.lsnCheckpoint, digest: f.digest };
          const out =
            f.unchanged === true
              ? r.session.planUnchanged(ref, chunk)
              : r.session.planBaseWrite(ref, chunk, f.zero ? this.zeroBuffer(f.blocks * BLOCK_BYTES) : f.data!);
          planned.push(out);
          return out.ok ? out.plan.runs : [];
        },
        chunkStartBlock: f.startBlock,
        data: f.zero || f.unchanged === true ? undefined : f.data,
      })),
    );
    // The chunks' data is in base.img now (or refused): no view of it is kept.
    for (const f of batch) if (f.data !== undefined) this.onDataDone?.(f.data);
    if (this.state !== r) return;
    for (const out of planned) {
      if (out.ok) r.tokens.push(out.plan.token);
      else if (out.error === 'digest_mismatch') {
        this.onAck?.(this.ack('failed', 'digest_mismatch', out.message));
        return;
      } else this.log.warn({ error: out.error, reason: out.message }, 'base chunk refused');
    }
    const last = batch.some((f) => f.index === r.session.chunksTotal - 1);
    if (!last && r.tokens.length < REBUILD_PERSIST_CHUNKS && performance.now() - r.lastPersistMs < REBUILD_PERSIST_MS) return;
    await this.persist();
    this.scheduleComplete();
    if (this.state === r) this.onAck?.(this.ack(r.session.baseDone ? 'base_done' : 'running', undefined, ''));
  }

  // The link went: base writes not yet durable are kept (their chunks count
  // once persisted); the session waits for the primary to resume it.
  async linkLost(): Promise<void> {
    if (this.state !== undefined && this.state.tokens.length > 0) await this.persist().catch(() => undefined);
  }

  // The volume checkpoints once more as it closes, after this: its hook must
  // not reach the closed bitmap (that checkpoint failed, and the volume with
  // it). Closing the bitmap syncs every mark made so far; a record applied
  // after that could not be marked, so no checkpoint may cover it (a resumed
  // session's base chunk would overwrite it).
  async close(): Promise<void> {
    await this.linkLost();
    const r = this.state;
    this.state = undefined;
    if (r === undefined) return;
    let unmarked: number | undefined;
    this.volume.setRebuildHooks({
      onApply: (record) => {
        unmarked ??= record.lsn;
      },
      beforeCheckpoint: () => {
        if (unmarked !== undefined) {
          throw new BlockwalError('ERR_REBUILD', `record ${unmarked} was applied after the rebuild session closed: its blocks are not marked in ${r.bitmap.path}`);
        }
      },
    });
    r.bitmap.close();
  }

  private install(r: RebuildState): void {
    this.state = r;
    const ref = { sessionId: r.session.sessionId, epoch: r.session.epoch };
    this.volume.setRebuildHooks({
      onApply: (record) => {
        const out = r.session.walApplied(ref, { lsn: record.lsn, kind: record.kind, lba: record.lba, lengthBlocks: record.lengthBlocks });
        if (!out.ok) this.log.error({ error: out.error, reason: out.message }, 'rebuild: a record could not be marked');
        this.scheduleComplete();
      },
      beforeCheckpoint: () => r.bitmap.sync(),
    });
  }

  private drop(): void {
    const r = this.state;
    if (r === undefined) return;
    r.session.fail('superseded', 'a new rebuild session started');
    this.volume.setRebuildHooks({ onApply: undefined, beforeCheckpoint: undefined });
    r.bitmap.close();
    this.state = undefined;
  }

  // Base writes durable, then their chunks count, then the progress record
  // (one persist at a time).
  private persist(): Promise<void> {
    const run = this.persisting.then(() => this.persistNow());
    this.persisting = run.catch(() => undefined);
    return run;
  }

  private async persistNow(): Promise<void> {
    const r = this.state;
    // Completing: finishRebuild removes the rebuild files, and a write now
    // could bring rebuild.json back without its bitmap (a fresh rebuild at
    // the next start).
    if (r === undefined || r.completing) return;
    const tokens = r.tokens.splice(0);
    const ref = { sessionId: r.session.sessionId, epoch: r.session.epoch };
    await this.volume.persistRebuild(() => {
      for (const t of tokens) r.session.baseWriteDone(ref, t);
      r.saved = { ...r.saved, progress: r.session.progress(), updatedAtMs: Date.now() };
      return r.saved;
    });
    r.lastPersistMs = performance.now();
  }

  private scheduleComplete(): void {
    if (this.completeScheduled) return;
    this.completeScheduled = true;
    setImmediate(() => {
      this.completeScheduled = false;
      void this.tryComplete();
    });
  }

  // Completion: base done AND applied >= target (and >= every chunk's
  // checkpoint) AND every digest matched; then the image is whole again.
  private async tryComplete(): Promise<void> {
    const r = this.state;
    if (r === undefined || r.completing) return;
    const ref = { sessionId: r.session.sessionId, epoch: r.session.epoch };
    const done = r.session.tryComplete(ref);
    if (!done.ok) return;
    r.completing = true;
    // No base write follows: records applied from now on need no mark.
    this.volume.setRebuildHooks({ onApply: undefined, beforeCheckpoint: () => r.bitmap.sync() });
    try {
      await this.volume.finishRebuild();
    } catch (err) {
      this.log.error({ err: (err as Error).message }, 'rebuild: finishing failed');
      r.completing = false;
      return;
    }
    this.volume.setRebuildHooks({ onApply: undefined, beforeCheckpoint: undefined });
    r.bitmap.close();
    this.state = undefined;
    this.log.info({ sessionId: ref.sessionId, lsnAchieved: done.lsnAchieved }, 'rebuild complete');
    this.onCompleted?.({
      type: 'session_ack',
      epoch: ref.epoch,
      sessionId: ref.sessionId,
      phase: 'completed',
      chunksDone: r.session.chunksTotal,
      lsnApplied: this.volume.lsnApplied,
      lsnAchieved: done.lsnAchieved,
      digestsMatch: true,
      failure: undefined,
      message: '',
    });
  }

  private ack(phase: SessionAckFrame['phase'], failure: SessionFailure | undefined, message: string): SessionAckFrame {
    const s = this.state!.session;
    return {
      type: 'session_ack',
      epoch: s.epoch,
      sessionId: s.sessionId,
      phase,
      chunksDone: s.chunkIndexNext,
      lsnApplied: this.volume.lsnApplied,
      lsnAchieved: 0,
      digestsMatch: failure !== 'digest_mismatch',
      failure,
      message,
    };
  }

  private ackFor(f: RebuildStartFrame, phase: SessionAckFrame['phase'], failure: SessionFailure, message: string): SessionAckFrame {
    return { type: 'session_ack', epoch: f.epoch, sessionId: f.sessionId, phase, chunksDone: 0, lsnApplied: this.volume.lsnApplied, lsnAchieved: 0, digestsMatch: true, failure, message };
  }

  private zeroBuffer(bytes: number): Buffer {
    let z = this.zeros.get(bytes);
    if (z === undefined) {
      z = Buffer.alloc(bytes);
      this.zeros.set(bytes, z);
    }
    return z;
  }
}

// What a queued chunk counts against BASE_QUEUE_BYTES_MAX: an unchanged one
// (a resync's) carries nothing and writes nothing.
function queuedBytesOf(f: BaseChunkFrame): number {
  return f.unchanged === true ? 0 : f.blocks * BLOCK_BYTES;
}
