// The replica side of a two-lane rebuild (DESIGN.md §4, reference/swblock.md
// §3.4–3.5), as pure logic: no I/O, no clock. The caller does the writes and
// tells the session what happened; the session says what may be written and
// when the rebuild is complete. The runtime backs the bitmap with a native
// mmap'd DenseBitmap; the simulator (test/sim) with a Uint8Array. Both use
// this one class, so the simulator tests the rules the runtime runs.
//
// Two lanes fill the replica's volume:
//   - the WAL lane applies live records from lsnBase + 1 in LSN order;
//   - the base lane copies the primary's checkpointed image chunk by chunk
//     (chunk i covers blocks [i * chunkBlocks, (i + 1) * chunkBlocks), the
//     last one shorter), each chunk with an XXH3-64 digest of its data.
// A bitmap with one bit per block says "a WAL record newer than lsnBase was
// applied here": the base lane never writes such a block (WAL wins).
//
// Rules (the names are what the unit tests and the simulator refer to):
//   MARK_ON_APPLY   A record marks its blocks when it is APPLIED locally
//                   (appended to the local WAL, replayable after a restart,
//                   visible to reads through the dirty map) — never on
//                   receipt or while it is queued. Every block of the record
//                   is marked: writes, trims and zero records alike; control
//                   records mark none. lsnApplied advances one by one
//                   (record.lsn === lsnApplied + 1, else an error value).
//   WAL_WINS        The base lane writes only blocks that are not marked.
//   DIGEST          A base chunk whose data does not match its digest is
//                   never written; the session fails 'digest_mismatch'.
//   BASE_NEWER      The primary reads a chunk at send time, so it may hold
//                   data newer than lsnBase (up to the chunk's
//                   lsnCheckpoint). That is safe because the WAL lane
//                   redelivers those LSNs — but only once they are applied
//                   does the replica hold a state of the volume at one LSN.
//                   So completion also waits for lsnApplied ≥ the newest
//                   chunk's lsnCheckpoint, and lsnAchieved says which LSN the
//                   replica now holds.
//   COMPLETE        tryComplete() succeeds once: base lane done (every chunk
//                   written, every digest verified, no base write in flight)
//                   AND lsnApplied ≥ lsnTarget (AND BASE_NEWER). A base-only
//                   session (lsnBase === lsnTarget) completes on its base
//                   lane alone. A second call says it already completed.
//   STALE           Every call names its session (sessionId, epoch); a call
//                   for another session or epoch is refused and changes
//                   nothing. RebuildSlot holds the replica's one active
//                   session: a newer session id (or a higher epoch)
//                   supersedes it (the old one fails 'superseded'); an older
//                   one is refused.
//
// Atomicity of check-and-write against WAL apply (the lock discipline).
// sw-block's first version checked the bit, released its lock, then wrote;
// a WAL apply and a flush could land in between and an older base write
// then overwrote newer data (swblock.md §6 bug 3). Here:
//   1. WAL apply: append the record to the local WAL; when the append has
//      completed, in ONE synchronous step, put it in the dirty map (reads see
//      it) and call walApplied() (sets the bits). Nothing — not the flusher,
//      not a base plan — can run between those two.
//   2. Base apply: planBaseWrite() is the compare-and-set. In one synchronous
//      step it verifies the digest, picks the unmarked blocks and CLAIMS them
//      (they stay claimed until baseWriteDone()). The caller issues the
//      writes of plan.runs after that and must not re-check the bitmap.
//   3. A WAL apply may land on a claimed block while the base write is in
//      flight: allowed. The record is in the WAL and the dirty map, so reads
//      already see it. The flusher must not write a block while a base write
//      for it is in flight (basePendingIn(); the runtime holds the blocks'
//      range locks from plan to completion, the flusher takes the same
//      locks), so the newer data reaches base.img after the older base data.
//      walApplied() reports the overlap (basePendingOverlap).
//   4. Claims are not bits. A claim lives in memory only: after a crash the
//      in-flight base write may be lost or torn, and since its chunk is not
//      done, the chunk is copied again. Had the claim set a durable bit, the
//      re-copy would skip the block and keep the torn data.
//   5. Bits must be durable before the records that set them leave the local
//      WAL: the flusher syncs the bitmap before it advances the replica's
//      checkpoint. After a crash the runtime restores the bitmap from its
//      durable bits plus re-marking (markReplayed) every WAL record after the
//      checkpoint that is newer than lsnBase.
//   6. A chunk counts as done (baseWriteDone) only when its writes are
//      durable; progress() is then persisted by the caller. resume() restarts
//      the base lane at the first chunk not done. The engine resumes an
//      unfinished rebuild under a NEW session id (start_session's
//      resumesSessionId): resume({ ...saved, sessionId, lsnTarget }) with the
//      same bitmap; a resume of progress the replica does not hold (another
//      session, another lsnBase) must fail closed, never start fresh, since
//      its WAL lane starts past lsnBase + 1.
//   7. Between sessions (progress saved, no session running: after a
//      failure, cancel or supersede) the replica applies no WAL record — not
//      even ones already received. Applied outside a session they would not
//      be marked, and a resumed base lane would overwrite them.
//   8. fail() does not cancel base writes in flight: a failed or superseded
//      session's writes must drain (complete) before the next session plans
//      any, or an old chunk could land over the new session's data.
import { XXHash3 } from 'xxhash-addon';

import { assertNever } from '../util/assert';
import type { ReplicaFacts, SessionFailure } from './types';

// ---- interfaces ----

// One bit per block. DenseBitmap (lib/native/bitmap.ts) satisfies it.
export interface BlockBitmap {
  get(block: number): boolean;
  setRange(startBlock: number, lengthBlocks: number): void;
  countSet?(): number;
  // Maximal set runs inside [fromBlock, endBlock) as (startBlock,
  // lengthBlocks) pairs in out; returns how many, fewer than out.length / 2
  // only when no more follow (DenseBitmap does, for up to 65,536 runs a
  // call). Without it the base lane asks block by block.
  readRuns?(fromBlock: number, endBlock: number, out: Float64Array): number;
}

export interface BlockRun {
  startBlock: number;
  lengthBlocks: number;
}

// XXH3-64 of a chunk's data, as an unsigned 64-bit bigint.
export type DigestFn = (data: Uint8Array) => bigint;

export function xxh3Digest(data: Uint8Array): bigint {
  const bytes = Buffer.isBuffer(data) ? data : Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  return XXHash3.hash(bytes).readBigUInt64BE(0);
}

export interface SessionRef {
  sessionId: number;
  epoch: number;
}

export interface RebuildSessionParams extends SessionRef {
  lsnBase: number; // the primary's checkpoint when the session was decided; the WAL lane starts after it
  lsnTarget: number; // the replica is current once it holds this LSN
  chunkBlocks: number;
  volumeBlocks: number;
  blockBytes?: number; // bytes of data per block in a chunk; 4096 when absent
  // A bitmap resync: the replica's base image is current to its applied LSN,
  // and chunks the primary's dirty bitmap does not mark come as unchanged
  // (planUnchanged). A resumed session is a plain rebuild (every chunk left
  // comes with its data).
  resync?: boolean;
}

export type RecordKind = 'write' | 'trim' | 'zero' | 'control';

export interface AppliedRecord {
  lsn: number;
  kind: RecordKind;
  lba: number; // first block
  lengthBlocks: number;
}

export interface BaseChunk {
  sessionId: number;
  epoch: number;
  index: number;
  startBlock: number;
  blocks: number;
  // The primary's checkpoint LSN when it read the chunk (≥ lsnBase).
  lsnCheckpoint: number;
  digest: bigint;
}

export interface BaseWritePlan {
  token: number;
  chunkIndex: number;
  runs: BlockRun[]; // the blocks to write, in order; may be empty (all marked)
}

// What the runtime persists (JSON-safe) and resume() reads back.
export interface RebuildProgress {
  version: 1;
  sessionId: number;
  epoch: number;
  lsnBase: number;
  lsnTarget: number;
  chunkBlocks: number;
  volumeBlocks: number;
  blockBytes: number;
  chunkIndexNext: number; // every chunk below is done
  chunksDoneAbove: number[]; // done chunks above chunkIndexNext, ascending
  lsnCheckpointMax: number; // newest lsnCheckpoint of a done chunk
}

export type RebuildError =
  | 'stale_session'
  | 'stale_epoch'
  | 'not_running'
  | 'lsn_gap'
  | 'record_out_of_range'
  | 'chunk_mismatch'
  | 'chunk_done'
  | 'chunk_in_flight'
  | 'data_length'
  | 'digest_mismatch'
  | 'unknown_token';

export interface Refusal {
  ok: false;
  error: RebuildError;
  message: string;
}

export type Outcome<T> = ({ ok: true } & T) | Refusal;

export type CompletionBlocker =
  | 'stale_session'
  | 'stale_epoch'
  | 'already_completed'
  | 'failed'
  | 'base_incomplete'
  | 'base_in_flight'
  | 'wal_behind_target'
  | 'wal_behind_base';

export type Completion =
  | { ok: true; lsnAchieved: number }
  | { ok: false; blocker: CompletionBlocker; why: string };

export type RebuildPhase = 'running' | 'base_complete' | 'completed' | 'failed';

export interface RebuildSessionOptions {
  digest?: DigestFn;
  // The replica's applied LSN when the session (re)starts: lsnBase for a
  // fresh session; after a restart, what the local WAL replay reached.
  lsnApplied?: number;
}

// ---- the session ----

export class RebuildSession {
  readonly sessionId: number;
  readonly epoch: number;
  readonly lsnBase: number;
  #lsnTarget: number;
  readonly chunkBlocks: number;
  readonly volumeBlocks: number;
  readonly blockBytes: number;
  readonly chunksTotal: number;
  readonly resync: boolean;

  protected readonly bitmap: BlockBitmap;
  readonly #digest: DigestFn;
  #lsnApplied: number;
  #lsnReceived: number;
  #chunkIndexNext = 0;
  readonly #chunksDoneAbove = new Set<number>();
  #lsnCheckpointMax: number;
  readonly #pending = new Map<number, { chunkIndex: number; runs: BlockRun[]; lsnCheckpoint: number }>();
  #tokenNext = 1;
  // readRuns' page in writableRuns: 128 runs, all a 256-block chunk can hold.
  readonly #marksScratch = new Float64Array(256);
  #state: 'running' | 'completed' | 'failed' = 'running';
  #failure: { failure: SessionFailure; message: string } | undefined;
  #lsnAchieved: number | undefined;

  constructor(params: RebuildSessionParams, bitmap: BlockBitmap, options: RebuildSessionOptions = {}) {
    checkParams(params);
    this.sessionId = params.sessionId;
    this.epoch = params.epoch;
    this.lsnBase = params.lsnBase;
    this.#lsnTarget = params.lsnTarget;
    this.chunkBlocks = params.chunkBlocks;
    this.volumeBlocks = params.volumeBlocks;
    this.blockBytes = params.blockBytes ?? 4096;
    this.chunksTotal = Math.ceil(params.volumeBlocks / params.chunkBlocks);
    this.resync = params.resync === true;
    this.bitmap = bitmap;
    this.#digest = options.digest ?? xxh3Digest;
    const lsnApplied = options.lsnApplied ?? params.lsnBase;
    if (!Number.isSafeInteger(lsnApplied) || lsnApplied < params.lsnBase) {
      throw new RangeError(`lsnApplied must be an integer ≥ lsnBase ${params.lsnBase}, got ${lsnApplied}`);
    }
    this.#lsnApplied = lsnApplied;
    this.#lsnReceived = lsnApplied;
    this.#lsnCheckpointMax = params.lsnBase;
  }

  // The replica is current once it holds this LSN.
  get lsnTarget(): number {
    return this.#lsnTarget;
  }

  // A resumed session completes at the primary's head when it resumed (rule
  // 6): the target only rises. The caller persists progress() after it.
  raiseTarget(lsnTarget: number): void {
    if (!Number.isSafeInteger(lsnTarget)) throw new RangeError(`lsnTarget must be an integer, got ${lsnTarget}`);
    if (lsnTarget > this.#lsnTarget) this.#lsnTarget = lsnTarget;
  }

  // Restores a session from persisted progress. The caller has already
  // restored the bitmap (durable bits) and passes the LSN its WAL replay
  // reached; it then calls markReplayed() for each replayed record newer
  // than lsnBase.
  static resume(saved: RebuildProgress, bitmap: BlockBitmap, options: RebuildSessionOptions = {}): RebuildSession {
    const session = new this(saved, bitmap, options);
    session.restoreProgress(saved);
    return session;
  }

  protected restoreProgress(saved: RebuildProgress): void {
    if (saved.version !== 1) throw new RangeError(`rebuild progress version ${String(saved.version)} is not 1`);
    const { chunkIndexNext, chunksDoneAbove, lsnCheckpointMax } = saved;
    if (!Number.isSafeInteger(chunkIndexNext) || chunkIndexNext < 0 || chunkIndexNext > this.chunksTotal) {
      throw new RangeError(`chunkIndexNext ${chunkIndexNext} outside [0, ${this.chunksTotal}]`);
    }
    if (!Number.isSafeInteger(lsnCheckpointMax) || lsnCheckpointMax < this.lsnBase) {
      throw new RangeError(`lsnCheckpointMax ${lsnCheckpointMax} below lsnBase ${this.lsnBase}`);
    }
    this.#chunkIndexNext = chunkIndexNext;
    for (const index of chunksDoneAbove) {
      if (!Number.isSafeInteger(index) || index <= chunkIndexNext || index >= this.chunksTotal) {
        throw new RangeError(`done chunk ${index} outside (${chunkIndexNext}, ${this.chunksTotal})`);
      }
      this.#chunksDoneAbove.add(index);
    }
    this.#lsnCheckpointMax = lsnCheckpointMax;
  }

  // ---- state ----

  get lsnApplied(): number {
    return this.#lsnApplied;
  }

  get lsnReceived(): number {
    return this.#lsnReceived;
  }

  get chunksDone(): number {
    return this.#chunkIndexNext + this.#chunksDoneAbove.size;
  }

  get chunkIndexNext(): number {
    return this.#chunkIndexNext;
  }

  get baseDone(): boolean {
    return this.chunksDone === this.chunksTotal && this.#pending.size === 0;
  }

  get lsnCheckpointMax(): number {
    return this.#lsnCheckpointMax;
  }

  get phase(): RebuildPhase {
    switch (this.#state) {
      case 'running':
        return this.baseDone ? 'base_complete' : 'running';
      case 'completed':
        return 'completed';
      case 'failed':
        return 'failed';
      default:
        return assertNever(this.#state);
    }
  }

  get failure(): { failure: SessionFailure; message: string } | undefined {
    return this.#failure;
  }

  get lsnAchieved(): number | undefined {
    return this.#lsnAchieved;
  }

  isChunkDone(index: number): boolean {
    return index < this.#chunkIndexNext || this.#chunksDoneAbove.has(index);
  }

  isChunkInFlight(index: number): boolean {
    for (const plan of this.#pending.values()) if (plan.chunkIndex === index) return true;
    return false;
  }

  // Up to `limit` chunk indexes, ascending from chunkIndexNext, that are
  // neither done nor being written: what the base lane asks for next.
  chunksWanted(limit: number): number[] {
    const wanted: number[] = [];
    for (let index = this.#chunkIndexNext; index < this.chunksTotal && wanted.length < limit; index++) {
      if (!this.isChunkDone(index) && !this.isChunkInFlight(index)) wanted.push(index);
    }
    return wanted;
  }

  // Whether a base write is in flight for any block of the range: the
  // flusher must not write these blocks until it completes (rule 3).
  basePendingIn(startBlock: number, lengthBlocks: number): boolean {
    const endBlock = startBlock + lengthBlocks;
    for (const plan of this.#pending.values()) {
      for (const run of plan.runs) {
        if (run.startBlock < endBlock && startBlock < run.startBlock + run.lengthBlocks) return true;
      }
    }
    return false;
  }

  // The rebuild field of this replica's facts.
  facts(): NonNullable<ReplicaFacts['rebuild']> {
    return {
      sessionId: this.sessionId,
      epoch: this.epoch,
      baseLsn: this.lsnBase,
      chunksDone: this.chunksDone,
      chunksTotal: this.chunksTotal,
    };
  }

  progress(): RebuildProgress {
    return {
      version: 1,
      sessionId: this.sessionId,
      epoch: this.epoch,
      lsnBase: this.lsnBase,
      lsnTarget: this.lsnTarget,
      chunkBlocks: this.chunkBlocks,
      volumeBlocks: this.volumeBlocks,
      blockBytes: this.blockBytes,
      chunkIndexNext: this.#chunkIndexNext,
      chunksDoneAbove: [...this.#chunksDoneAbove].sort((a, b) => a - b),
      lsnCheckpointMax: this.#lsnCheckpointMax,
    };
  }

  // ---- the WAL lane ----

  // A record arrived (not applied). Marks nothing (MARK_ON_APPLY).
  walReceived(ref: SessionRef, record: AppliedRecord): Outcome<object> {
    const refused = this.refuse(ref) ?? this.refuseRecord(record);
    if (refused !== undefined) return refused;
    this.#lsnReceived = Math.max(this.#lsnReceived, record.lsn);
    const run = this.runToMarkOnReceipt(record);
    if (run !== null) this.bitmap.setRange(run.startBlock, run.lengthBlocks);
    return { ok: true };
  }

  // The record is applied locally (see rule 1 of the header).
  walApplied(ref: SessionRef, record: AppliedRecord): Outcome<{ basePendingOverlap: boolean }> {
    const refused = this.refuse(ref) ?? this.refuseRecord(record);
    if (refused !== undefined) return refused;
    if (record.lsn !== this.#lsnApplied + 1) {
      return refusal('lsn_gap', `record ${record.lsn} applied after ${this.#lsnApplied} (must be ${this.#lsnApplied + 1})`);
    }
    this.#lsnApplied = record.lsn;
    this.#lsnReceived = Math.max(this.#lsnReceived, record.lsn);
    const run = this.runToMarkOnApply(record);
    if (run === null) return { ok: true, basePendingOverlap: false };
    this.bitmap.setRange(run.startBlock, run.lengthBlocks);
    return { ok: true, basePendingOverlap: this.basePendingIn(run.startBlock, run.lengthBlocks) };
  }

  // After a restart: a record the local WAL replay re-applied, at or below
  // the lsnApplied given to resume(). Marks its blocks when newer than
  // lsnBase; lsnApplied does not move.
  markReplayed(ref: SessionRef, record: AppliedRecord): Outcome<object> {
    const refused = this.refuse(ref) ?? this.refuseRecord(record);
    if (refused !== undefined) return refused;
    if (record.lsn > this.#lsnApplied) {
      return refusal('lsn_gap', `replayed record ${record.lsn} is beyond lsnApplied ${this.#lsnApplied}`);
    }
    if (record.lsn <= this.lsnBase) return { ok: true };
    const run = this.runToMarkOnApply(record);
    if (run !== null) this.bitmap.setRange(run.startBlock, run.lengthBlocks);
    return { ok: true };
  }

  // ---- the base lane ----

  // The compare-and-set (rule 2): verifies the chunk, claims its unmarked
  // blocks, and returns them as runs for the caller to write.
  planBaseWrite(ref: SessionRef, chunk: BaseChunk, data: Uint8Array): Outcome<{ plan: BaseWritePlan }> {
    const refused =
      this.refuse(ref) ?? this.refuse({ sessionId: chunk.sessionId, epoch: chunk.epoch }) ?? this.refuseChunk(chunk, data);
    if (refused !== undefined) return refused;
    if (!this.verifyDigest(data, chunk.digest)) {
      const message = `chunk ${chunk.index} (blocks ${chunk.startBlock}+${chunk.blocks}) does not match its digest`;
      this.fail('digest_mismatch', message);
      return refusal('digest_mismatch', message);
    }
    const runs = this.writableRuns(chunk.startBlock, chunk.blocks);
    const token = this.#tokenNext++;
    this.#pending.set(token, { chunkIndex: chunk.index, runs, lsnCheckpoint: chunk.lsnCheckpoint });
    return { ok: true, plan: { token, chunkIndex: chunk.index, runs: runs.map((r) => ({ ...r })) } };
  }

  // A resync's chunk the primary's dirty bitmap does not mark: the replica
  // holds its content already, so nothing is written; the chunk is done once
  // baseWriteDone() says the batch it came in is durable. Only in a resync.
  planUnchanged(ref: SessionRef, chunk: Omit<BaseChunk, 'digest'>): Outcome<{ plan: BaseWritePlan }> {
    const refused =
      this.refuse(ref) ??
      this.refuse({ sessionId: chunk.sessionId, epoch: chunk.epoch }) ??
      (this.resync ? undefined : refusal('chunk_mismatch', `chunk ${chunk.index} came as unchanged outside a resync`)) ??
      this.refuseChunk(chunk, undefined);
    if (refused !== undefined) return refused;
    const token = this.#tokenNext++;
    this.#pending.set(token, { chunkIndex: chunk.index, runs: [], lsnCheckpoint: chunk.lsnCheckpoint });
    return { ok: true, plan: { token, chunkIndex: chunk.index, runs: [] } };
  }

  // The plan's writes are durable: its chunk is done.
  baseWriteDone(ref: SessionRef, token: number): Outcome<{ baseDone: boolean }> {
    const refused = this.refuse(ref);
    if (refused !== undefined) return refused;
    const plan = this.#pending.get(token);
    if (plan === undefined) return refusal('unknown_token', `no base write in flight with token ${token}`);
    this.#pending.delete(token);
    this.#lsnCheckpointMax = Math.max(this.#lsnCheckpointMax, plan.lsnCheckpoint);
    if (plan.chunkIndex > this.#chunkIndexNext) this.#chunksDoneAbove.add(plan.chunkIndex);
    else if (plan.chunkIndex === this.#chunkIndexNext) {
      this.#chunkIndexNext++;
      while (this.#chunksDoneAbove.delete(this.#chunkIndexNext)) this.#chunkIndexNext++;
    }
    return { ok: true, baseDone: this.baseDone };
  }

  // ---- completion and failure ----

  tryComplete(ref: SessionRef): Completion {
    if (ref.epoch !== this.epoch) return { ok: false, blocker: 'stale_epoch', why: `epoch ${ref.epoch} is not ${this.epoch}` };
    if (ref.sessionId !== this.sessionId) {
      return { ok: false, blocker: 'stale_session', why: `session ${ref.sessionId} is not ${this.sessionId}` };
    }
    const blocked = this.completionBlocker();
    if (blocked !== null) return { ok: false, ...blocked };
    this.#state = 'completed';
    this.#lsnAchieved = this.#lsnApplied;
    return { ok: true, lsnAchieved: this.#lsnApplied };
  }

  // Ends a running session (cancel, transport loss, supersede, local
  // errors). A finished session stays as it is.
  fail(failure: SessionFailure, message: string): void {
    if (this.#state !== 'running') return;
    this.#state = 'failed';
    this.#failure = { failure, message };
  }

  // ---- hooks (small, overridable by test subclasses) ----

  // The blocks a record marks when applied: all of them, for every kind
  // that changes blocks; none for control records.
  protected runToMarkOnApply(record: AppliedRecord): BlockRun | null {
    switch (record.kind) {
      case 'write':
      case 'trim':
      case 'zero':
        return record.lengthBlocks === 0 ? null : { startBlock: record.lba, lengthBlocks: record.lengthBlocks };
      case 'control':
        return null;
      default:
        return assertNever(record.kind);
    }
  }

  // The blocks a record marks on receipt: none (MARK_ON_APPLY).
  protected runToMarkOnReceipt(_record: AppliedRecord): BlockRun | null {
    return null;
  }

  protected verifyDigest(data: Uint8Array, digest: bigint): boolean {
    return this.#digest(data) === digest;
  }

  // WAL_WINS: the blocks of [startBlock, startBlock + blocks) that are
  // neither marked nor claimed by a base write in flight, as runs. With
  // readRuns, the chunk's marks come in one call (the range is not claimed:
  // chunks do not overlap, and a claimed one goes block by block).
  protected writableRuns(startBlock: number, blocks: number): BlockRun[] {
    const endBlock = startBlock + blocks;
    const runs: BlockRun[] = [];
    if (this.bitmap.readRuns === undefined || this.basePendingIn(startBlock, blocks)) {
      for (let block = startBlock; block < endBlock; block++) {
        if (!this.blockWritable(block)) continue;
        const last = runs[runs.length - 1];
        if (last !== undefined && last.startBlock + last.lengthBlocks === block) last.lengthBlocks++;
        else runs.push({ startBlock: block, lengthBlocks: 1 });
      }
      return runs;
    }
    const out = this.#marksScratch;
    let at = startBlock;
    for (;;) {
      const count = this.bitmap.readRuns(at, endBlock, out);
      for (let i = 0; i < count; i++) {
        const markStart = out[2 * i]!;
        if (markStart > at) runs.push({ startBlock: at, lengthBlocks: markStart - at });
        at = markStart + out[2 * i + 1]!;
      }
      if (count < out.length / 2) break;
    }
    if (at < endBlock) runs.push({ startBlock: at, lengthBlocks: endBlock - at });
    return runs;
  }

  // Block by block: a marked block, or one a base write already claims, is
  // not written again.
  protected blockWritable(block: number): boolean {
    return !this.bitmap.get(block) && !this.basePendingIn(block, 1);
  }

  protected completionBlocker(): { blocker: CompletionBlocker; why: string } | null {
    switch (this.#state) {
      case 'completed':
        return { blocker: 'already_completed', why: `already completed at ${String(this.#lsnAchieved)}` };
      case 'failed':
        return { blocker: 'failed', why: `failed: ${this.#failure?.failure ?? '?'}: ${this.#failure?.message ?? ''}` };
      case 'running':
        break;
      default:
        return assertNever(this.#state);
    }
    if (this.chunksDone < this.chunksTotal) {
      return { blocker: 'base_incomplete', why: `base lane: ${this.chunksDone} of ${this.chunksTotal} chunks done` };
    }
    if (this.#pending.size > 0) return { blocker: 'base_in_flight', why: `${this.#pending.size} base writes in flight` };
    if (this.#lsnApplied < this.#lsnTarget) {
      return { blocker: 'wal_behind_target', why: `lsnApplied ${this.#lsnApplied} < lsnTarget ${this.#lsnTarget}` };
    }
    if (this.#lsnApplied < this.#lsnCheckpointMax) {
      return {
        blocker: 'wal_behind_base',
        why: `lsnApplied ${this.#lsnApplied} < base chunks' lsnCheckpoint ${this.#lsnCheckpointMax}`,
      };
    }
    return null;
  }

  // ---- validation ----

  protected refuse(ref: SessionRef): Refusal | undefined {
    if (ref.epoch !== this.epoch) return refusal('stale_epoch', `epoch ${ref.epoch} is not the session's ${this.epoch}`);
    if (ref.sessionId !== this.sessionId) {
      return refusal('stale_session', `session ${ref.sessionId} is not ${this.sessionId}`);
    }
    if (this.#state !== 'running') return refusal('not_running', `session ${this.sessionId} is ${this.#state}`);
    return undefined;
  }

  private refuseRecord(record: AppliedRecord): Refusal | undefined {
    const { lba, lengthBlocks, lsn } = record;
    if (!Number.isSafeInteger(lsn) || lsn <= 0) return refusal('lsn_gap', `record LSN ${lsn} is not a positive integer`);
    if (record.kind === 'control') return undefined;
    if (!Number.isSafeInteger(lba) || !Number.isSafeInteger(lengthBlocks) || lba < 0 || lengthBlocks < 0) {
      return refusal('record_out_of_range', `record ${lsn}: blocks ${lba}+${lengthBlocks} are not counts`);
    }
    if (lba + lengthBlocks > this.volumeBlocks) {
      return refusal('record_out_of_range', `record ${lsn}: blocks ${lba}+${lengthBlocks} beyond ${this.volumeBlocks}`);
    }
    return undefined;
  }

  private refuseChunk(chunk: Omit<BaseChunk, 'digest'>, data: Uint8Array | undefined): Refusal | undefined {
    const { index } = chunk;
    if (!Number.isSafeInteger(index) || index < 0 || index >= this.chunksTotal) {
      return refusal('chunk_mismatch', `chunk ${index} outside [0, ${this.chunksTotal})`);
    }
    const startBlock = index * this.chunkBlocks;
    const blocks = Math.min(this.chunkBlocks, this.volumeBlocks - startBlock);
    if (chunk.startBlock !== startBlock || chunk.blocks !== blocks) {
      return refusal('chunk_mismatch', `chunk ${index} is blocks ${startBlock}+${blocks}, got ${chunk.startBlock}+${chunk.blocks}`);
    }
    if (!Number.isSafeInteger(chunk.lsnCheckpoint) || chunk.lsnCheckpoint < this.lsnBase) {
      return refusal('chunk_mismatch', `chunk ${index} read at ${chunk.lsnCheckpoint}, before lsnBase ${this.lsnBase}`);
    }
    if (this.isChunkDone(index)) return refusal('chunk_done', `chunk ${index} is already done`);
    if (this.isChunkInFlight(index)) return refusal('chunk_in_flight', `chunk ${index} is being written`);
    if (data !== undefined && data.byteLength !== blocks * this.blockBytes) {
      return refusal('data_length', `chunk ${index} carries ${data.byteLength} bytes, expected ${blocks * this.blockBytes}`);
    }
    return undefined;
  }
}

// ---- the replica's one active session ----

// Holds the replica's active rebuild and the newest (epoch, sessionId) it
// has seen, so a late start for an older session is refused even after the
// newer one ended (STALE).
export class RebuildSlot {
  #active: RebuildSession | undefined;
  #newest: SessionRef | undefined;

  get active(): RebuildSession | undefined {
    return this.#active;
  }

  // Installs `session`. A newer one supersedes the active session (which
  // fails 'superseded' and is returned); an older or equal one is refused.
  start(session: RebuildSession): Outcome<{ superseded: RebuildSession | undefined }> {
    const newest = this.#newest;
    if (newest !== undefined) {
      if (session.epoch < newest.epoch) {
        return refusal('stale_epoch', `session epoch ${session.epoch} is below ${newest.epoch}`);
      }
      if (session.epoch === newest.epoch && session.sessionId <= newest.sessionId) {
        return refusal('stale_session', `session ${session.sessionId} is not newer than ${newest.sessionId}`);
      }
    }
    const superseded = this.#active;
    superseded?.fail('superseded', `superseded by session ${session.sessionId} (epoch ${session.epoch})`);
    this.#active = session;
    this.#newest = { sessionId: session.sessionId, epoch: session.epoch };
    return { ok: true, superseded };
  }

  // The active session when `ref` names it; undefined otherwise.
  get(ref: SessionRef): RebuildSession | undefined {
    const active = this.#active;
    if (active === undefined || active.sessionId !== ref.sessionId || active.epoch !== ref.epoch) return undefined;
    return active;
  }

  // Forgets the active session (after completion or failure was reported);
  // the newest id stays remembered.
  clear(): void {
    this.#active = undefined;
  }
}

// ---- helpers ----

function refusal(error: RebuildError, message: string): Refusal {
  return { ok: false, error, message };
}

function checkParams(params: RebuildSessionParams): void {
  const counts: [string, number][] = [
    ['sessionId', params.sessionId],
    ['epoch', params.epoch],
    ['lsnBase', params.lsnBase],
    ['lsnTarget', params.lsnTarget],
    ['chunkBlocks', params.chunkBlocks],
    ['volumeBlocks', params.volumeBlocks],
    ['blockBytes', params.blockBytes ?? 4096],
  ];
  for (const [name, value] of counts) {
    if (!Number.isSafeInteger(value) || value < 0) throw new RangeError(`${name} must be a count, got ${value}`);
  }
  if (params.chunkBlocks === 0) throw new RangeError('chunkBlocks must be at least 1');
  if (params.lsnTarget < params.lsnBase) {
    throw new RangeError(`lsnTarget ${params.lsnTarget} is below lsnBase ${params.lsnBase}`);
  }
  if (params.blockBytes === 0) throw new RangeError('blockBytes must be at least 1');
}
