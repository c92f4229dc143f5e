// The simulated replica, over the real RebuildSession.
//
// Disk (survives a crash): base image (one value per block), WAL records
// after lsnCheckpoint up to lsnDurable, lsnApplied (only in worlds whose
// profile says replicaAppliedDurable; otherwise, as the runtime's replica,
// a crash leaves lsnApplied at lsnCheckpoint and the WAL records after it are
// applied again once a commit is heard), the rebuild progress and its kind,
// the durable half of the rebuild bitmap, the newest session id and control
// sequence seen, a catch-up in progress and the last session outcome. Memory (lost in a crash): WAL records appended but not yet
// synced, out-of-order arrivals, the commit LSN heard, the live bitmap bits
// not yet synced, the session object (rebuilt from the progress on restart),
// base writes in flight.
//
// Records: received → appended to the WAL (in order; early arrivals wait) →
// synced (syncChance per step) → applied once committed and synced (the
// session's walApplied marks its blocks in the same step) → flushed to the
// base image (the flusher syncs the bitmap first, and waits while a base
// write covers the record's blocks). Reads (content()) are the base image
// with the applied WAL records over it.
//
// A rebuild: a fresh one resets the WAL to lsnBase and clears the bitmap; a
// resumed one (the engine's resumesSessionId names our saved progress) keeps
// both. The base lane asks for the chunks the session wants, plans each
// arriving chunk (planBaseWrite), and lands the planned writes 1..N steps
// later (baseWriteDone, then the progress is persisted). A crash tears the
// base writes in flight (each block lands or not), loses the unsynced WAL
// tail and some unsynced bits; on restart the session resumes from its
// progress and re-marks the replayed WAL records. Completion checkpoints
// everything applied (as the runtime's finishRebuild), so the base image is
// whole at lsnCheckpoint from then on. A replica with an
// unfinished rebuild and no session ("parked") neither takes nor applies WAL
// records (its base is partial, and records applied unmarked would let a
// resumed base lane overwrite them).
// A superseded, cancelled or failed session's base writes drain before
// anything else runs.
//
// A bitmap resync (lib/replication/replica_rebuild.ts start()) is a fresh
// rebuild session with resync: true that keeps the base image: first every
// applied record goes into it (makeBaseCurrent), so a chunk the primary's
// bitmap leaves out holds its content as of lsnApplied; then the WAL and the
// unapplied records are dropped as a rebuild does. An 'unchanged' chunk is
// planned with planUnchanged (nothing written) and counts as done once its
// empty write lands. After a crash the session resumes as a plain rebuild
// (RebuildProgress does not say resync), so its chunk requests ask for data.
// A replica with a partial base refuses a resync, as the runtime does.
//
// Acks and reports carry lsnRecoverable (what a crash now would leave as
// lsnApplied); the first report after a restart says hello.
import {
  type BlockBitmap,
  type BlockRun,
  type RebuildProgress,
  RebuildSession,
  RebuildSlot,
  type SessionRef,
} from '../../lib/protocol/rebuild_session';
import type { ReplicaFacts, SessionFailure, SessionKind } from '../../lib/protocol/types';
import { assertNever } from '../../lib/util/assert';

import { BLOCK_BYTES, CHUNK_BLOCKS, type Ctrl, decodeBlockValue, EPOCH, type Rec, type ToPrimary, type ToReplica, VOLUME_BLOCKS } from './model';
import { PRIMARY } from './network';
import type { Env } from './primary';
import { applyRecord } from './primary';
import { readSetRuns } from '../support/bit_runs';

const REPORT_EVERY_STEPS = 10;
const PROGRESS_EVERY_STEPS = 5;
const ACK_IDLE_STEPS = 4;
const CHUNK_ASK_AGAIN_STEPS = 10;
const CHUNKS_IN_FLIGHT = 3;
const INBOX_RECORDS_MAX = 64;
const OUTCOME_RESEND_STEPS = 6;

class ArrayBitmap implements BlockBitmap {
  constructor(readonly bits: Uint8Array) {}
  get(block: number): boolean {
    return this.bits[block] === 1;
  }
  setRange(startBlock: number, lengthBlocks: number): void {
    this.bits.fill(1, startBlock, startBlock + lengthBlocks);
  }
  // As DenseBitmap's: maximal set runs in [fromBlock, endBlock), a page at a time.
  readRuns(fromBlock: number, endBlock: number, out: Float64Array): number {
    return readSetRuns(this.bits, fromBlock, endBlock, out);
  }
}

export interface ReplicaAudit {
  applied(replica: string, rec: Rec): void;
  completing(replica: string, sessionId: number, kind: SessionKind, lsnAchieved: number, session: RebuildSession | undefined): void;
  startedOnInvalid(replica: string, what: string): void;
}

interface PendingBaseWrite {
  token: number;
  runs: BlockRun[];
  startBlock: number;
  data: Uint8Array;
  landStep: number;
}

export class SimReplica {
  // ---- disk ----
  readonly image = new Int32Array(VOLUME_BLOCKS);
  wal: Rec[] = []; // wal[i].lsn === lsnCheckpoint + 1 + i
  lsnCheckpoint = 0;
  lsnDurable = 0;
  lsnApplied = 0;
  progress: RebuildProgress | undefined;
  progressKind: 'rebuild' | 'bitmap_resync' = 'rebuild'; // what the primary started the session as
  blank = false; // never filled: content unknown until a rebuild completes
  readonly bitmapDurable = new Uint8Array(VOLUME_BLOCKS);
  newestSessionId = 0;
  ctrlSeqSeen = 0;
  statusSeq = 0;
  // ---- memory ----
  up = true;
  changes = 0; // bumped whenever content() or contentValid may change (the auditor skips unchanged replicas)
  #downUntilStep = 0;
  readonly #inbox = new Map<number, Rec>();
  #commitKnown = 0;
  readonly bitmapLive = new Uint8Array(VOLUME_BLOCKS);
  #slot = new RebuildSlot();
  #catchUp: { sessionId: number; lsnTarget: number } | undefined;
  #pending: PendingBaseWrite[] = [];
  readonly #chunkAskedStep = new Map<number, number>();
  #lsnAcked = -1;
  #ackStep = 0;
  // The last session outcome (completed/failed), resent until the primary's
  // next control message shows it was taken (engine: keep-up handover,
  // cancel, or a new session). Durable, like the catch-up in progress: a
  // restart must not leave the engine waiting for its deadline.
  #outcome: { msg: ToPrimary; ctrlSeqAt: number; sentStep: number } | undefined;

  constructor(
    readonly name: string,
    private readonly env: Env,
    private readonly audit: ReplicaAudit,
    private readonly sessionClass: typeof RebuildSession,
    private readonly indexOffset: number,
  ) {}

  get lsnReceived(): number {
    return this.lsnCheckpoint + this.wal.length;
  }

  // The applied LSN this replica would come back with after a crash.
  get lsnRecoverable(): number {
    return this.env.profile.replicaAppliedDurable ? this.lsnApplied : this.lsnCheckpoint;
  }

  get contentValid(): boolean {
    return !this.blank && this.progress === undefined;
  }

  get session(): RebuildSession | undefined {
    const s = this.#slot.active;
    return s !== undefined && (s.phase === 'running' || s.phase === 'base_complete') ? s : undefined;
  }

  // Starts at `lsn` holding `content` (the shadow's), or blank.
  initialise(lsn: number, content: Int32Array | undefined): void {
    this.lsnCheckpoint = this.lsnDurable = this.lsnApplied = lsn;
    if (content === undefined) {
      this.blank = true;
      for (let b = 0; b < VOLUME_BLOCKS; b++) this.image[b] = this.env.prng.int(1, 1_000_000) | 0x40000000;
    } else this.image.set(content);
  }

  // The volume as reads see it: base image, applied WAL records over it.
  content(): Int32Array {
    const out = new Int32Array(this.image);
    for (const rec of this.wal) {
      if (rec.lsn > this.lsnApplied) break;
      applyRecord(out, rec);
    }
    return out;
  }

  // ---- messages ----

  onMessage(msg: ToReplica): void {
    if (!this.up || msg.epoch !== EPOCH) return;
    switch (msg.t) {
      case 'wal':
        this.#commitKnown = Math.max(this.#commitKnown, msg.commitLsn);
        if (this.progress !== undefined && this.session === undefined) return; // parked partial base
        this.receive(msg.rec);
        return;
      case 'commit':
        this.#commitKnown = Math.max(this.#commitKnown, msg.commitLsn);
        return;
      case 'ctrl':
        this.ctrlSeqSeen = Math.max(this.ctrlSeqSeen, msg.ctrlSeq);
        this.onCtrl(msg.cmd);
        return;
      case 'chunk':
        this.onChunk(msg);
        return;
      case 'unchanged':
        this.onUnchanged(msg);
        return;
      default:
        assertNever(msg);
    }
  }

  private receive(rec: Rec): void {
    if (rec.lsn <= this.lsnReceived) return;
    if (rec.lsn > this.lsnReceived + 1) {
      if (this.#inbox.size < INBOX_RECORDS_MAX) this.#inbox.set(rec.lsn, rec);
      return;
    }
    this.appendRecord(rec);
    for (let next = this.#inbox.get(this.lsnReceived + 1); next !== undefined; next = this.#inbox.get(this.lsnReceived + 1)) {
      this.#inbox.delete(next.lsn);
      this.appendRecord(next);
    }
    for (const lsn of this.#inbox.keys()) if (lsn <= this.lsnReceived) this.#inbox.delete(lsn);
  }

  private appendRecord(rec: Rec): void {
    this.wal.push(rec);
    const s = this.session;
    if (s !== undefined) s.walReceived(refOf(s), rec);
  }

  private onCtrl(cmd: Ctrl): void {
    if (cmd.kind === 'keep_up') return; // the handover: only echoed
    if (cmd.kind === 'hello') {
      this.report(); // the restarted primary decides on what this replica holds now
      return;
    }
    if (cmd.kind === 'cancel') {
      if (this.#catchUp?.sessionId === cmd.sessionId) this.#catchUp = undefined;
      const s = this.#slot.active;
      if (s !== undefined && s.sessionId === cmd.sessionId) this.endSession('cancelled', 'cancelled by the primary');
      return;
    }
    if (cmd.sessionId <= this.newestSessionId) return; // a resend, or stale
    this.newestSessionId = cmd.sessionId;
    this.#catchUp = undefined;
    if (this.#slot.active !== undefined) this.endSession('superseded', `superseded by session ${cmd.sessionId}`);
    switch (cmd.sessionKind) {
      case 'catch_up':
        if (!this.contentValid) this.audit.startedOnInvalid(this.name, `catch-up session ${cmd.sessionId}`);
        this.#catchUp = { sessionId: cmd.sessionId, lsnTarget: cmd.lsnTarget };
        this.env.trace(`${this.name}: catch-up ${cmd.sessionId} to ${cmd.lsnTarget} (at ${this.lsnApplied})`);
        return;
      case 'bitmap_resync':
      case 'rebuild':
        this.startRebuild(cmd);
        return;
      default:
        assertNever(cmd.sessionKind);
    }
  }

  private startRebuild(cmd: Extract<Ctrl, { kind: 'start' }>): void {
    const saved = this.progress;
    const resync = cmd.sessionKind === 'bitmap_resync';
    if (resync && (saved !== undefined || this.blank)) {
      if (this.blank) this.audit.startedOnInvalid(this.name, `bitmap resync ${cmd.sessionId}`);
      const message = `cannot resync session ${cmd.sessionId}: this replica's base image is partial (an unfinished rebuild)`;
      this.env.trace(`${this.name}: refuses resync: ${message}`);
      this.sendOutcome({ t: 'failed', sessionId: cmd.sessionId, failure: 'superseded', message });
      return;
    }
    let session: RebuildSession;
    const resumable = saved?.sessionId === cmd.resumesSessionId && saved?.lsnBase === cmd.lsnBase;
    if (cmd.resumesSessionId !== undefined && !resumable) {
      // Fail closed: the WAL lane starts at lsnFrom, past what a fresh base would need.
      const message = `session ${cmd.sessionId} resumes ${cmd.resumesSessionId}, but the saved progress is ${saved === undefined ? 'none' : `session ${saved.sessionId} over ${saved.lsnBase}`}`;
      this.env.trace(`${this.name}: refuses rebuild: ${message}`);
      this.sendOutcome({ t: 'failed', sessionId: cmd.sessionId, failure: 'cancelled', message });
      return;
    }
    if (saved !== undefined && resumable) {
      session = this.sessionClass.resume({ ...saved, sessionId: cmd.sessionId, lsnTarget: cmd.lsnTarget }, new ArrayBitmap(this.bitmapLive), {
        lsnApplied: this.lsnApplied,
      });
      this.env.trace(`${this.name}: rebuild ${cmd.sessionId} resumes ${saved.sessionId} (${session.chunksDone}/${session.chunksTotal} chunks, applied ${this.lsnApplied})`);
    } else {
      const applied = this.lsnApplied;
      if (resync) this.makeBaseCurrent();
      this.wal = [];
      this.#inbox.clear();
      this.lsnCheckpoint = this.lsnDurable = this.lsnApplied = cmd.lsnBase;
      this.bitmapLive.fill(0);
      this.bitmapDurable.fill(0);
      const params = { sessionId: cmd.sessionId, epoch: EPOCH, lsnBase: cmd.lsnBase, lsnTarget: cmd.lsnTarget, chunkBlocks: CHUNK_BLOCKS, volumeBlocks: VOLUME_BLOCKS, blockBytes: BLOCK_BYTES, resync };
      session = new this.sessionClass(params, new ArrayBitmap(this.bitmapLive));
      this.env.trace(`${this.name}: ${resync ? `resync ${cmd.sessionId} keeps its base (applied ${applied})` : `rebuild ${cmd.sessionId} fresh`} over ${cmd.lsnBase} to ${cmd.lsnTarget}`);
    }
    this.progressKind = resync ? 'bitmap_resync' : 'rebuild';
    const started = this.#slot.start(session);
    if (!started.ok) this.env.violation('slot', `${this.name}: ${started.message}`);
    this.progress = session.progress();
    this.blank = false; // the progress now says the base is partial
    this.changes++;
    this.#chunkAskedStep.clear();
  }

  // A resync keeps the base image: everything applied goes into it first.
  protected makeBaseCurrent(): void {
    this.checkpoint();
  }

  // Every applied record into the base image (no base write is in flight).
  private checkpoint(): void {
    this.bitmapDurable.set(this.bitmapLive);
    while (this.lsnCheckpoint < this.lsnApplied) {
      applyRecord(this.image, this.wal.shift()!);
      this.lsnCheckpoint++;
    }
    this.changes++;
  }

  private endSession(failure: SessionFailure, message: string): void {
    this.#slot.active?.fail(failure, message);
    this.drainBaseWrites();
    this.#slot.clear();
    this.#chunkAskedStep.clear();
  }

  private onChunk(msg: Extract<ToReplica, { t: 'chunk' }>): void {
    const s = this.session;
    if (s === undefined || msg.chunk.sessionId !== s.sessionId) return;
    const planned = s.planBaseWrite(refOf(s), msg.chunk, msg.data);
    if (planned.ok) {
      const landStep = this.env.step + this.env.prng.int(1, this.env.profile.baseWriteStepsMax);
      this.#pending.push({ token: planned.plan.token, runs: planned.plan.runs, startBlock: msg.chunk.startBlock, data: msg.data, landStep });
      this.#chunkAskedStep.delete(msg.chunk.index);
      return;
    }
    if (planned.error !== 'digest_mismatch') return; // a duplicate or late copy
    this.env.trace(`${this.name}: session ${s.sessionId}: ${planned.message}`);
    this.sendOutcome({ t: 'failed', sessionId: s.sessionId, failure: 'digest_mismatch', message: planned.message });
    this.endSession('digest_mismatch', planned.message);
  }

  // A resync's chunk the primary's bitmap leaves out: nothing to write; done
  // once its (empty) write lands, like any other.
  private onUnchanged(msg: Extract<ToReplica, { t: 'unchanged' }>): void {
    const s = this.session;
    if (s === undefined || msg.chunk.sessionId !== s.sessionId) return;
    const planned = s.planUnchanged(refOf(s), msg.chunk);
    if (!planned.ok) return; // a duplicate, or sent before this session resumed as a plain rebuild
    const landStep = this.env.step + this.env.prng.int(1, this.env.profile.baseWriteStepsMax);
    this.#pending.push({ token: planned.plan.token, runs: [], startBlock: msg.chunk.startBlock, data: new Uint8Array(0), landStep });
    this.#chunkAskedStep.delete(msg.chunk.index);
  }

  // ---- one step ----

  step(): void {
    const { env } = this;
    if (!this.up) {
      if (env.step >= this.#downUntilStep) this.restart();
      return;
    }
    if (env.prng.chance(env.profile.syncChance)) this.lsnDurable = this.lsnReceived;
    this.applyCommitted();
    if (env.prng.chance(env.profile.flushChance)) this.flush(env.prng.int(1, env.profile.flushRecordsMax));
    this.baseLane();
    this.tryComplete();
    this.sendStatus();
  }

  private applyCommitted(): void {
    // Parked (an unfinished rebuild, no session): apply nothing, or a resumed
    // base lane would overwrite records it never saw marked.
    const parked = this.progress !== undefined && this.session === undefined;
    const lsnUpTo = parked ? this.lsnApplied : Math.min(this.#commitKnown, this.lsnDurable);
    while (this.lsnApplied < lsnUpTo) {
      const rec = this.wal[this.lsnApplied - this.lsnCheckpoint]!;
      this.audit.applied(this.name, rec);
      this.lsnApplied = rec.lsn;
      this.changes++;
      const s = this.session;
      if (s === undefined) continue;
      const applied = s.walApplied(refOf(s), rec);
      if (!applied.ok) this.env.violation('wal_apply_refused', `${this.name}: ${applied.message}`);
    }
    const catchUp = this.#catchUp;
    if (catchUp !== undefined && this.lsnApplied >= catchUp.lsnTarget) {
      this.#catchUp = undefined;
      this.audit.completing(this.name, catchUp.sessionId, 'catch_up', this.lsnApplied, undefined);
      this.sendOutcome({ t: 'completed', sessionId: catchUp.sessionId, lsnAchieved: this.lsnApplied, baseDone: false, digestsMatch: true });
    }
  }

  // Up to `records` applied records into the base image, in LSN order.
  private flush(records: number): void {
    for (let i = 0; i < records && this.lsnCheckpoint < this.lsnApplied; i++) {
      const rec = this.wal[0]!;
      if (this.session?.basePendingIn(rec.lba, rec.lengthBlocks) === true) return; // rule 3: wait for the base write
      this.bitmapDurable.set(this.bitmapLive); // rule 5: bits durable before their records leave the WAL
      applyRecord(this.image, rec);
      this.wal.shift();
      this.lsnCheckpoint++;
      this.changes++;
    }
  }

  private baseLane(): void {
    const s = this.session;
    if (s === undefined) return;
    const landing = this.#pending.filter((p) => p.landStep <= this.env.step);
    this.#pending = this.#pending.filter((p) => p.landStep > this.env.step);
    for (const write of landing) {
      this.land(write, 1);
      const done = s.baseWriteDone(refOf(s), write.token);
      if (!done.ok) this.env.violation('base_write_refused', `${this.name}: ${done.message}`);
    }
    if (landing.length > 0) this.progress = s.progress();
    for (const index of s.chunksWanted(CHUNKS_IN_FLIGHT)) {
      const asked = this.#chunkAskedStep.get(index);
      if (asked !== undefined && this.env.step - asked < CHUNK_ASK_AGAIN_STEPS) continue;
      this.#chunkAskedStep.set(index, this.env.step);
      this.send({ t: 'chunk_req', sessionId: s.sessionId, epoch: EPOCH, index, resync: s.resync });
    }
  }

  // Writes a planned base write's runs; each block lands with `chance`.
  private land(write: PendingBaseWrite, chance: number): void {
    this.changes++;
    for (const run of write.runs) {
      for (let block = run.startBlock; block < run.startBlock + run.lengthBlocks; block++) {
        if (chance < 1 && !this.env.prng.chance(chance)) {
          this.env.counts.faults.tornBaseWrites++;
          continue;
        }
        this.image[block] = decodeBlockValue(write.data, block - write.startBlock);
      }
    }
  }

  private drainBaseWrites(): void {
    for (const write of this.#pending) this.land(write, 1);
    this.#pending = [];
  }

  private tryComplete(): void {
    const s = this.session;
    if (s === undefined) return;
    const completion = s.tryComplete(refOf(s));
    if (!completion.ok) return;
    this.audit.completing(this.name, s.sessionId, this.progressKind, completion.lsnAchieved, s);
    this.env.trace(`${this.name}: ${this.progressKind} ${s.sessionId} completed at ${completion.lsnAchieved}`);
    // As the runtime's finishRebuild: the base image holds chunks newer than
    // lsnCheckpoint (BASE_NEWER) until everything applied is checkpointed.
    this.checkpoint();
    this.progress = undefined;
    this.changes++;
    this.#slot.clear();
    this.sendOutcome({ t: 'completed', sessionId: s.sessionId, lsnAchieved: completion.lsnAchieved, baseDone: true, digestsMatch: true });
  }

  private sendOutcome(msg: ToPrimary): void {
    this.#outcome = { msg, ctrlSeqAt: this.ctrlSeqSeen, sentStep: this.env.step };
    this.send(msg);
  }

  private sendStatus(): void {
    const { step } = this.env;
    const outcome = this.#outcome;
    if (outcome !== undefined && this.ctrlSeqSeen > outcome.ctrlSeqAt) this.#outcome = undefined;
    else if (outcome !== undefined && step - outcome.sentStep >= OUTCOME_RESEND_STEPS) {
      outcome.sentStep = step;
      this.send(outcome.msg);
    }
    if (this.lsnReceived !== this.#lsnAcked || step - this.#ackStep >= ACK_IDLE_STEPS) {
      this.#lsnAcked = this.lsnReceived;
      this.#ackStep = step;
      this.send({ t: 'ack', lsnReceived: this.lsnReceived, lsnApplied: this.lsnApplied, lsnRecoverable: this.lsnRecoverable, ctrlSeqSeen: this.ctrlSeqSeen, statusSeq: ++this.statusSeq });
    }
    if ((step + this.indexOffset) % REPORT_EVERY_STEPS === 0) this.report();
    if ((step + this.indexOffset) % PROGRESS_EVERY_STEPS === 0) {
      const s = this.session;
      if (s !== undefined) {
        this.send({ t: 'progress', sessionId: s.sessionId, lsnApplied: s.lsnApplied, bytesDone: s.chunksDone * CHUNK_BLOCKS * 4096, baseDone: s.baseDone });
      } else if (this.#catchUp !== undefined) {
        this.send({ t: 'progress', sessionId: this.#catchUp.sessionId, lsnApplied: this.lsnApplied, bytesDone: 0, baseDone: false });
      }
    }
  }

  report(hello = false): void {
    const facts: ReplicaFacts = {
      epoch: EPOCH,
      lsnReceived: this.lsnReceived,
      lsnDurable: this.lsnDurable,
      lsnApplied: this.lsnApplied,
      chainMatches: undefined,
    };
    const saved = this.progress;
    if (saved !== undefined) {
      const chunksTotal = Math.ceil(saved.volumeBlocks / saved.chunkBlocks);
      facts.rebuild = { sessionId: saved.sessionId, epoch: saved.epoch, baseLsn: saved.lsnBase, chunksDone: saved.chunkIndexNext + saved.chunksDoneAbove.length, chunksTotal };
    }
    this.send({ t: 'report', facts, lsnRecoverable: this.lsnRecoverable, hello, ctrlSeqSeen: this.ctrlSeqSeen, statusSeq: ++this.statusSeq });
  }

  private send(msg: ToPrimary): void {
    this.env.net.send(this.env.step, this.name, PRIMARY, msg);
  }

  // ---- crash and restart ----

  crash(downSteps: number): void {
    const { counts, prng } = this.env;
    counts.faults.crashes++;
    for (const write of this.#pending) this.land(write, 0.5); // torn: each block lands or not
    this.#pending = [];
    counts.faults.lostWalRecords += this.lsnReceived - this.lsnDurable;
    this.wal.length = this.lsnDurable - this.lsnCheckpoint;
    if (!this.env.profile.replicaAppliedDurable) this.lsnApplied = this.lsnCheckpoint;
    this.changes++;
    for (let b = 0; b < VOLUME_BLOCKS; b++) {
      if (this.bitmapLive[b] === 1 && this.bitmapDurable[b] === 0 && prng.chance(0.5)) continue; // this page made it
      this.bitmapLive[b] = this.bitmapDurable[b]!;
    }
    this.#inbox.clear();
    this.#commitKnown = 0;
    this.#slot = new RebuildSlot();
    this.#chunkAskedStep.clear();
    this.up = false;
    this.#downUntilStep = this.env.step + downSteps;
    this.env.trace(`${this.name}: crash (down ${downSteps} steps; durable ${this.lsnDurable}, applied ${this.lsnApplied})`);
  }

  private restart(): void {
    this.up = true;
    this.#commitKnown = this.lsnApplied;
    this.#lsnAcked = -1;
    const saved = this.progress;
    if (saved !== undefined) {
      const s = this.sessionClass.resume(saved, new ArrayBitmap(this.bitmapLive), { lsnApplied: this.lsnApplied });
      for (const rec of this.wal) {
        if (rec.lsn > this.lsnApplied) break;
        const marked = s.markReplayed(refOf(s), rec);
        if (!marked.ok) this.env.violation('replay_refused', `${this.name}: ${marked.message}`);
      }
      this.#slot.start(s);
    }
    this.env.trace(`${this.name}: restart (applied ${this.lsnApplied}, received ${this.lsnReceived}${saved ? `, resumes session ${saved.sessionId}` : ''})`);
    this.report(true);
  }
}

function refOf(s: RebuildSession): SessionRef {
  return { sessionId: s.sessionId, epoch: s.epoch };
}
