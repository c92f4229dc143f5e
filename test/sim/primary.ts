// The simulated primary: a WAL of records (write/trim/zero of 1–4 blocks,
// and control records), a commit LSN that trails the head, a flusher that
// advances the checkpoint (its base image may hold records not yet
// committed), and WAL retention (records below walTail are recycled; a feed
// pins the WAL while it is at most pinMaxRecords behind the checkpoint).
//
// The shell around the REAL ProtocolEngine (lib/protocol/engine.ts, which
// calls decide()): it turns replica messages into engine events, executes the
// engine's commands, and runs one feed per replica:
//   - keep-up / catch-up / a rebuild's WAL lane: records in LSN order from
//     lsnNext, at most WINDOW ahead of the replica's ack, go-back-N after
//     RESEND_STEPS without progress; a needed record already recycled ends
//     the feed (keep-up: replica_lost; session: session_failed pin_lost);
//   - a rebuild's base lane: chunk requests answered from the base image as
//     it is at send time (lsnCheckpoint may be past lsnBase: BASE_NEWER).
// Control messages (session start/cancel, keep-up handover) carry a sequence
// number and are resent until the replica echoes it; an ack or report that
// echoes an older number was sent before the replica saw the last control
// message and is dropped (the engine would otherwise decide on facts older
// than its last session, and a feed would rewind to a position from before a
// rebuild's reset). Acks and reports also carry the replica's own sequence,
// so one overtaken by a newer one on the network is dropped too.
//
// Dirty bitmaps, as the runtime's (lib/replication/primary.ts startDirty,
// lib/replication/dirty_bitmap.ts): when a replica goes away from a whole
// base image — its keep-up or catch-up feed ends (silent, or a record it
// needs was recycled), it says hello after a restart, or a clean restart of
// this primary closes its link — a bitmap starts at the lsnRecoverable it
// last reported (the applied LSN it can come back with), only if it reported
// since this primary started, lsnFrom > 0 and the backlog still holds every
// record after lsnFrom (those are marked at once). Every later record marks
// its blocks. The bitmap goes into the replica's facts (decide's
// bitmap_resync), is dropped once the replica is current again (a keep-up
// feed acked up to the head), survives a clean primary restart and is
// dropped by a primary crash.
// A bitmap resync runs as a rebuild whose base lane answers a chunk no
// marked block touches with 'unchanged' (no data) — unless the replica's
// session is a plain rebuild (it resumed the resync after its own crash).
//
// A primary restart is a new process: a new engine (session ids go on above
// the old ones), no feeds, no reports heard, a backlog seeded with the WAL
// after the checkpoint. The WAL, the checkpoint and the commit LSN survive.
// A 'hello' control message stands for the new links: reports sent before a
// replica saw it are stale, and it answers with a fresh report.
import { ProtocolEngine } from '../../lib/protocol/engine';
import { xxh3Digest } from '../../lib/protocol/rebuild_session';
import type { PrimaryFacts, ProtocolCommand, ProtocolEvent, SessionKind, VolumeMode } from '../../lib/protocol/types';
import { assertNever } from '../../lib/util/assert';

import {
  CHUNK_BLOCKS,
  type Counts,
  type Ctrl,
  encodeChunk,
  EPOCH,
  HOT_CHANCE,
  MS_PER_STEP,
  type Profile,
  RECORD_BLOCKS_MAX,
  type Rec,
  type ToPrimary,
  VOLUME_BLOCKS,
} from './model';
import { type Network, PRIMARY } from './network';
import type { Prng } from './prng';

const WINDOW_RECORDS = 16;
const SEND_RECORDS_PER_STEP = 4;
const RESEND_STEPS = 6;
const CTRL_RESEND_STEPS = 8;
const LOST_STEPS = 20;
const TICK_EVERY_STEPS = 4; // the engine's clock: deadlines are seconds, a step is 250 ms

export interface Env {
  readonly prng: Prng;
  readonly net: Network;
  readonly counts: Counts;
  readonly profile: Profile;
  step: number;
  trace(line: string): void;
  violation(invariant: string, detail: string): void;
}

interface Feed {
  kind: 'keep_up' | SessionKind;
  sessionId: number | undefined;
  lsnNext: number;
  lsnAcked: number;
  ackStep: number; // when lsnAcked last moved
}

export type StartCommand = Extract<ProtocolCommand, { type: 'start_session' }>;

// What a replica last reported (newest by its status sequence).
export interface Reported {
  statusSeq: number;
  lsnReceived: number;
  lsnApplied: number;
  lsnRecoverable: number;
}

// A replica's dirty bitmap: every block a write/trim/zero record after
// lsnFrom touches is marked.
export class SimDirtyBitmap {
  readonly bits = new Uint8Array(VOLUME_BLOCKS);
  constructor(readonly lsnFrom: number) {}
  mark(rec: Rec): void {
    if (rec.kind !== 'control') this.bits.fill(1, rec.lba, rec.lba + rec.lengthBlocks);
  }
  anyIn(startBlock: number, blocks: number): boolean {
    for (let block = startBlock; block < startBlock + blocks; block++) if (this.bits[block] === 1) return true;
    return false;
  }
  facts(): NonNullable<PrimaryFacts['bitmap']> {
    return { epoch: EPOCH, lsnFrom: this.lsnFrom, dirtyBlocks: this.bits.reduce((n, bit) => n + bit, 0) };
  }
}

export interface PrimaryHooks {
  // The engine started keep-up for a replica (the auditor checks its content is whole).
  keepUpStarted(replica: string): void;
}

export class SimPrimary {
  engine = new ProtocolEngine();
  readonly records: (Rec | undefined)[] = [undefined]; // by LSN; the shadow keeps all
  readonly shadow: Int32Array[] = [new Int32Array(VOLUME_BLOCKS)]; // content at each LSN
  readonly base = new Int32Array(VOLUME_BLOCKS); // content at lsnCheckpoint
  readonly sessionsIssued = new Map<number, StartCommand>();
  lsnHead = 0;
  commitLsn = 0;
  lsnCheckpoint = 0;
  walTail = 0;
  mode: VolumeMode = 'allocated_only';
  readonly dirty = new Map<string, SimDirtyBitmap>();
  readonly #reported = new Map<string, Reported>();
  #backlogFloorMin = 0; // a restart seeds the backlog with the WAL after the checkpoint only
  readonly #feeds = new Map<string, Feed>();
  readonly #heardStep = new Map<string, number>();
  readonly #lost = new Set<string>();
  readonly #ctrlSent = new Map<string, { seq: number; cmd: Ctrl; sentStep: number }>();
  readonly #ctrlEcho = new Map<string, number>();
  readonly #statusSeq = new Map<string, { ack: number; report: number }>();
  #ctrlSeqNext = 1;

  constructor(
    private readonly env: Env,
    readonly replicas: readonly string[],
    private readonly hooks: PrimaryHooks,
  ) {}

  // ---- the workload ----

  append(kind: Rec['kind'], lba: number, lengthBlocks: number): Rec {
    const lsn = this.lsnHead + 1;
    const values: number[] = [];
    for (let i = 0; i < lengthBlocks; i++) values.push(kind === 'write' ? lsn * 8 + i + 1 : 0);
    const rec: Rec = { lsn, kind, lba, lengthBlocks, values };
    this.records.push(rec);
    const content = new Int32Array(this.shadow[lsn - 1]!);
    applyRecord(content, rec);
    this.shadow.push(content);
    this.lsnHead = lsn;
    for (const bitmap of this.dirty.values()) bitmap.mark(rec);
    return rec;
  }

  appendRandom(): void {
    const prng = this.env.prng;
    const roll = prng.next();
    const kind: Rec['kind'] = roll < 0.65 ? 'write' : roll < 0.8 ? 'trim' : roll < 0.95 ? 'zero' : 'control';
    if (kind === 'control') {
      this.append('control', 0, 0);
      return;
    }
    const lengthBlocks = prng.int(1, RECORD_BLOCKS_MAX);
    const { hotFirstBlock, hotBlocks } = this.env.profile;
    const hot = hotBlocks < VOLUME_BLOCKS && prng.chance(HOT_CHANCE);
    const lba = hot ? hotFirstBlock + prng.int(0, hotBlocks - lengthBlocks) : prng.int(0, VOLUME_BLOCKS - lengthBlocks);
    this.append(kind, lba, lengthBlocks);
  }

  // Records written, committed and checkpointed before step 0; some recycled.
  preHistory(records: number): void {
    for (let i = 0; i < records; i++) this.appendRandom();
    this.commitLsn = this.lsnHead;
    this.advanceCheckpoint(this.lsnHead);
    this.walTail = Math.max(0, this.lsnCheckpoint - this.env.profile.retainRecords);
  }

  start(): void {
    this.feed({ type: 'assignment', epoch: EPOCH, role: 'primary', replicas: this.replicas });
    const barrier = this.append('control', 0, 0);
    this.feed({ type: 'barrier', epoch: EPOCH, lsn: barrier.lsn });
    for (const name of this.replicas) this.#heardStep.set(name, 0);
  }

  // ---- one step ----

  step(writing: boolean): void {
    const { prng, step } = this.env;
    if (writing && prng.chance(this.env.profile.writeChance)) this.appendRandom();
    this.commitLsn = Math.min(this.lsnHead, this.commitLsn + prng.int(0, 2));
    if (prng.chance(this.env.profile.primaryFlushChance)) this.advanceCheckpoint(Math.min(this.lsnHead, this.lsnCheckpoint + prng.int(1, 2)));
    this.retain();
    for (const name of this.replicas) {
      const feed = this.#feeds.get(name);
      if (feed !== undefined) this.pump(name, feed);
      this.resendCtrl(name);
      const heard = this.#heardStep.get(name) ?? 0;
      if (!this.#lost.has(name) && step - heard > LOST_STEPS) {
        this.#lost.add(name);
        this.goneAway(name, 'silent');
        this.#feeds.delete(name);
        this.env.trace(`p: replica ${name} lost (silent ${step - heard} steps)`);
        this.feed({ type: 'replica_lost', replica: name, reason: `silent for ${step - heard} steps` });
      }
    }
    if (step % TICK_EVERY_STEPS === 0) this.feed({ type: 'tick', nowMs: step * MS_PER_STEP });
  }

  private advanceCheckpoint(lsnTo: number): void {
    while (this.lsnCheckpoint < lsnTo) {
      this.lsnCheckpoint++;
      applyRecord(this.base, this.records[this.lsnCheckpoint]!);
    }
  }

  private retain(): void {
    let floor = this.lsnCheckpoint - this.env.profile.retainRecords;
    for (const feed of this.#feeds.values()) {
      if (this.lsnCheckpoint - feed.lsnAcked <= this.env.profile.pinMaxRecords) floor = Math.min(floor, feed.lsnAcked);
    }
    this.walTail = Math.max(this.walTail, Math.min(floor, this.lsnCheckpoint));
  }

  private pump(name: string, feed: Feed): void {
    const { step } = this.env;
    if (step - feed.ackStep >= RESEND_STEPS && feed.lsnNext > feed.lsnAcked + 1) {
      feed.lsnNext = feed.lsnAcked + 1;
      feed.ackStep = step;
    }
    let sent = 0;
    while (sent < SEND_RECORDS_PER_STEP && feed.lsnNext <= this.lsnHead && feed.lsnNext <= feed.lsnAcked + WINDOW_RECORDS) {
      if (feed.lsnNext <= this.walTail) {
        this.recycledUnder(name, feed);
        return;
      }
      const rec = this.records[feed.lsnNext]!;
      this.env.net.send(step, PRIMARY, name, { t: 'wal', epoch: EPOCH, rec, commitLsn: this.commitLsn });
      feed.lsnNext++;
      sent++;
    }
    if (sent === 0 && step % 2 === 0) this.env.net.send(step, PRIMARY, name, { t: 'commit', epoch: EPOCH, commitLsn: this.commitLsn });
  }

  private recycledUnder(name: string, feed: Feed): void {
    this.goneAway(name, 'fed past the WAL tail');
    this.#feeds.delete(name);
    const message = `LSN ${feed.lsnNext} needed, WAL recycled up to ${this.walTail}`;
    this.env.trace(`p: ${name} ${feed.kind} feed: ${message}`);
    if (feed.sessionId === undefined) {
      this.feed({ type: 'replica_lost', replica: name, reason: message });
      return;
    }
    this.countFailure('pin_lost');
    this.feed({ type: 'session_failed', replica: name, sessionId: feed.sessionId, failure: 'pin_lost', message });
    this.sendCtrl(name, { kind: 'cancel', sessionId: feed.sessionId });
  }

  // ---- messages from replicas ----

  onMessage(name: string, msg: ToPrimary): void {
    this.#heardStep.set(name, this.env.step);
    this.#lost.delete(name);
    switch (msg.t) {
      case 'ack': {
        this.echo(name, msg.ctrlSeqSeen);
        if (this.stale(name, 'ack', msg.statusSeq, msg.ctrlSeqSeen)) return;
        const { statusSeq, lsnReceived, lsnApplied, lsnRecoverable } = msg;
        this.noteReported(name, { statusSeq, lsnReceived, lsnApplied, lsnRecoverable });
        const feed = this.#feeds.get(name);
        if (feed === undefined) return;
        if (msg.lsnReceived < feed.lsnAcked) {
          feed.lsnAcked = msg.lsnReceived;
          feed.lsnNext = Math.min(feed.lsnNext, msg.lsnReceived + 1);
        } else if (msg.lsnReceived > feed.lsnAcked) {
          feed.lsnAcked = msg.lsnReceived;
          feed.lsnNext = Math.max(feed.lsnNext, msg.lsnReceived + 1);
          feed.ackStep = this.env.step;
        }
        if (feed.kind === 'keep_up' && feed.lsnAcked >= this.lsnHead) this.dropDirty(name, 'current');
        return;
      }
      case 'report': {
        this.echo(name, msg.ctrlSeqSeen);
        if (msg.hello) this.goneAway(name, 'restarted'); // its link went down with it
        if (this.stale(name, 'report', msg.statusSeq, msg.ctrlSeqSeen)) return;
        const { lsnReceived, lsnApplied } = msg.facts;
        this.noteReported(name, { statusSeq: msg.statusSeq, lsnReceived, lsnApplied, lsnRecoverable: msg.lsnRecoverable });
        const primaryFacts = this.facts(name, msg.facts.lsnReceived);
        this.feed({ type: 'replica_report', replica: name, replicaFacts: msg.facts, primaryFacts });
        return;
      }
      case 'chunk_req': {
        const feed = this.#feeds.get(name);
        if ((feed?.kind !== 'rebuild' && feed?.kind !== 'bitmap_resync') || feed.sessionId !== msg.sessionId) return;
        this.sendChunk(name, msg.sessionId, msg.index, feed.kind === 'bitmap_resync' && msg.resync);
        return;
      }
      case 'progress':
        this.feed({ type: 'session_progress', replica: name, sessionId: msg.sessionId, lsnApplied: msg.lsnApplied, bytesDone: msg.bytesDone, baseDone: msg.baseDone });
        return;
      case 'completed':
        this.env.trace(`p: ${name} reports session ${msg.sessionId} completed at ${msg.lsnAchieved}`);
        this.feed({ type: 'session_completed', replica: name, sessionId: msg.sessionId, lsnAchieved: msg.lsnAchieved, baseDone: msg.baseDone, digestsMatch: msg.digestsMatch });
        return;
      case 'failed':
        this.env.trace(`p: ${name} reports session ${msg.sessionId} failed: ${msg.failure}`);
        if (this.engine.replica(name)?.session?.sessionId === msg.sessionId) this.countFailure(msg.failure);
        this.feed({ type: 'session_failed', replica: name, sessionId: msg.sessionId, failure: msg.failure, message: msg.message });
        return;
      default:
        assertNever(msg);
    }
  }

  // The in-memory backlog holds every record after this (0: empty).
  backlogFloor(): number {
    return this.lsnHead === 0 ? 0 : Math.max(this.walTail, this.#backlogFloorMin, this.lsnHead - this.env.profile.backlogRecords);
  }

  facts(name: string, position: number): PrimaryFacts {
    const bitmap = this.dirty.get(name);
    return {
      epoch: EPOCH,
      lsnHead: this.lsnHead,
      lsnCheckpoint: this.lsnCheckpoint,
      backlogFloor: this.backlogFloor(),
      walTail: this.walTail,
      walBytesAfterReplica: Math.max(0, this.lsnHead - position) * 4160,
      walBytesAfterCheckpoint: (this.lsnHead - this.lsnCheckpoint) * 4160,
      volumeBytes: VOLUME_BLOCKS * 4096,
      ...(bitmap === undefined ? {} : { bitmap: bitmap.facts() }),
    };
  }

  feedKind(name: string): Feed['kind'] | undefined {
    return this.#feeds.get(name)?.kind;
  }

  // A base chunk from the image as it is now; in a resync, a chunk no
  // marked block touches goes as unchanged (every record so far marked its
  // blocks, so the replica holds it as of lsnBase; later records reach it
  // through the WAL lane). A bitmap gone meanwhile leaves none unchanged.
  private sendChunk(name: string, sessionId: number, index: number, resync: boolean): void {
    const startBlock = index * CHUNK_BLOCKS;
    const blocks = Math.min(CHUNK_BLOCKS, VOLUME_BLOCKS - startBlock);
    if (index < 0 || blocks <= 0) return;
    const bitmap = this.dirty.get(name);
    if (resync && bitmap !== undefined && this.chunkUnchanged(bitmap, startBlock, blocks)) {
      this.env.counts.bitmaps.unchangedChunks++;
      const chunk = { sessionId, epoch: EPOCH, index, startBlock, blocks, lsnCheckpoint: this.lsnCheckpoint };
      this.env.net.send(this.env.step, PRIMARY, name, { t: 'unchanged', epoch: EPOCH, chunk });
      return;
    }
    const data = encodeChunk(this.base, startBlock, blocks);
    const chunk = { sessionId, epoch: EPOCH, index, startBlock, blocks, lsnCheckpoint: this.lsnCheckpoint, digest: xxh3Digest(data) };
    this.env.net.send(this.env.step, PRIMARY, name, { t: 'chunk', epoch: EPOCH, chunk, data });
  }

  // ---- dirty bitmaps ----

  // What the replica last reported; acks and reports arrive out of order.
  private noteReported(name: string, reported: Reported): void {
    const last = this.#reported.get(name);
    if (last === undefined || reported.statusSeq > last.statusSeq) this.#reported.set(name, reported);
  }

  // The replica went away: a bitmap starts if it was fed from a whole base
  // image (see the header for the other conditions).
  private goneAway(name: string, why: string): void {
    const kind = this.#feeds.get(name)?.kind;
    const reported = this.#reported.get(name);
    if (this.dirty.has(name) || (kind !== 'keep_up' && kind !== 'catch_up') || reported === undefined) return;
    const lsnFrom = this.bitmapLsnFrom(reported);
    if (lsnFrom === 0) return;
    if (lsnFrom < this.lsnHead && lsnFrom < this.backlogFloor()) {
      this.env.counts.bitmaps.noBacklog++;
      return;
    }
    const bitmap = new SimDirtyBitmap(lsnFrom);
    for (let lsn = lsnFrom + 1; lsn <= this.lsnHead; lsn++) bitmap.mark(this.records[lsn]!);
    this.dirty.set(name, bitmap);
    this.env.counts.bitmaps.started++;
    this.env.trace(`p: dirty bitmap for ${name} from ${lsnFrom} (${why}, head ${this.lsnHead})`);
  }

  // Where a bitmap starts: at most what the replica can come back with.
  protected bitmapLsnFrom(reported: Reported): number {
    return reported.lsnRecoverable;
  }

  // Whether a resync may send the chunk as unchanged.
  protected chunkUnchanged(bitmap: SimDirtyBitmap, startBlock: number, blocks: number): boolean {
    return !bitmap.anyIn(startBlock, blocks);
  }

  private dropDirty(name: string, why: 'current' | 'crash'): void {
    if (!this.dirty.delete(name)) return;
    if (why === 'current') this.env.counts.bitmaps.droppedCurrent++;
    else this.env.counts.bitmaps.droppedCrash++;
    this.env.trace(`p: dirty bitmap for ${name} dropped (${why})`);
  }

  // ---- restart ----

  // A clean restart closes every link first (replicas fed whole get a
  // bitmap) and keeps the bitmaps; a crash loses them.
  restart(clean: boolean): void {
    const { counts, step } = this.env;
    counts.faults.primaryRestarts++;
    if (clean) for (const name of this.replicas) this.goneAway(name, 'primary shutdown');
    else {
      counts.faults.primaryCrashes++;
      for (const name of this.replicas) this.dropDirty(name, 'crash');
    }
    this.env.trace(`p: ${clean ? 'clean restart' : 'crash and restart'} (head ${this.lsnHead}, checkpoint ${this.lsnCheckpoint}, walTail ${this.walTail})`);
    this.#feeds.clear();
    this.#reported.clear();
    this.#lost.clear();
    for (const name of this.replicas) {
      this.#heardStep.set(name, step);
      this.sendCtrl(name, { kind: 'hello' });
    }
    this.#backlogFloorMin = this.lsnCheckpoint;
    this.engine = new ProtocolEngine({ sessionIdLast: this.engine.state.sessionIdLast, nowMs: step * MS_PER_STEP });
    this.feed({ type: 'assignment', epoch: EPOCH, role: 'primary', replicas: this.replicas });
    this.feed({ type: 'barrier', epoch: EPOCH, lsn: this.lsnHead });
  }

  // ---- control messages ----

  private sendCtrl(name: string, cmd: Ctrl): void {
    const seq = this.#ctrlSeqNext++;
    this.#ctrlSent.set(name, { seq, cmd, sentStep: this.env.step });
    this.env.net.send(this.env.step, PRIMARY, name, { t: 'ctrl', epoch: EPOCH, ctrlSeq: seq, cmd });
  }

  private resendCtrl(name: string): void {
    const sent = this.#ctrlSent.get(name);
    if (sent === undefined || (this.#ctrlEcho.get(name) ?? 0) >= sent.seq) return;
    if (this.env.step - sent.sentStep < CTRL_RESEND_STEPS) return;
    sent.sentStep = this.env.step;
    this.env.net.send(this.env.step, PRIMARY, name, { t: 'ctrl', epoch: EPOCH, ctrlSeq: sent.seq, cmd: sent.cmd });
  }

  // Whether an ack or report is older than one already taken, or was sent
  // before the replica saw our last control message.
  private stale(name: string, type: 'ack' | 'report', statusSeq: number, ctrlSeqSeen: number): boolean {
    const sent = this.#ctrlSent.get(name);
    if (sent !== undefined && ctrlSeqSeen < sent.seq) return true;
    const seen = this.#statusSeq.get(name) ?? { ack: 0, report: 0 };
    if (statusSeq <= seen[type]) return true;
    seen[type] = statusSeq;
    this.#statusSeq.set(name, seen);
    return false;
  }

  private echo(name: string, ctrlSeqSeen: number): void {
    this.#ctrlEcho.set(name, Math.max(this.#ctrlEcho.get(name) ?? 0, ctrlSeqSeen));
  }

  // ---- the engine ----

  private feed(event: ProtocolEvent): void {
    for (const cmd of this.engine.apply(event)) this.execute(cmd);
  }

  private execute(cmd: ProtocolCommand): void {
    const { step } = this.env;
    switch (cmd.type) {
      case 'start_keep_up':
        this.env.counts.keepUps++;
        this.env.trace(`p: start_keep_up ${cmd.replica} from ${cmd.lsnFrom}`);
        this.#feeds.set(cmd.replica, { kind: 'keep_up', sessionId: undefined, lsnNext: cmd.lsnFrom, lsnAcked: cmd.lsnFrom - 1, ackStep: step });
        this.sendCtrl(cmd.replica, { kind: 'keep_up', lsnFrom: cmd.lsnFrom });
        if (cmd.lsnFrom > this.lsnHead) this.dropDirty(cmd.replica, 'current');
        this.hooks.keepUpStarted(cmd.replica);
        return;
      case 'start_session':
        this.env.counts.sessions[cmd.kind]++;
        if (cmd.kind === 'bitmap_resync' && !this.dirty.has(cmd.replica)) {
          this.env.violation('resync_without_bitmap', `the engine started a bitmap resync of ${cmd.replica}, which has no dirty bitmap`);
        }
        if (cmd.resumesSessionId !== undefined) this.env.counts.resumedRebuilds++;
        this.sessionsIssued.set(cmd.sessionId, cmd);
        this.env.trace(
          `p: start ${cmd.kind} ${cmd.replica} session ${cmd.sessionId} base ${cmd.lsnBase} from ${cmd.lsnFrom} target ${cmd.lsnTarget}` +
            (cmd.resumesSessionId === undefined ? '' : ` resumes ${cmd.resumesSessionId}`),
        );
        this.#feeds.set(cmd.replica, { kind: cmd.kind, sessionId: cmd.sessionId, lsnNext: cmd.lsnFrom, lsnAcked: cmd.lsnFrom - 1, ackStep: step });
        this.sendCtrl(cmd.replica, {
          kind: 'start',
          sessionId: cmd.sessionId,
          sessionKind: cmd.kind,
          lsnFrom: cmd.lsnFrom,
          lsnTarget: cmd.lsnTarget,
          lsnBase: cmd.lsnBase,
          resumesSessionId: cmd.resumesSessionId,
        });
        return;
      case 'cancel_session':
        this.countFailure(cmd.failure);
        this.env.trace(`p: cancel ${cmd.replica} session ${cmd.sessionId} (${cmd.failure})`);
        if (this.#feeds.get(cmd.replica)?.sessionId === cmd.sessionId) this.#feeds.delete(cmd.replica);
        this.sendCtrl(cmd.replica, { kind: 'cancel', sessionId: cmd.sessionId });
        return;
      case 'fence':
        this.env.violation('no_fence', `the engine fenced a primary no one deposed: ${cmd.reason}`);
        return;
      case 'log_decision':
        return;
      case 'publish_mode':
        this.mode = cmd.mode;
        this.env.trace(`p: mode ${cmd.mode}: ${cmd.reason}`);
        return;
      default:
        assertNever(cmd);
    }
  }

  private countFailure(failure: keyof Counts['sessionFailures']): void {
    const failures = this.env.counts.sessionFailures;
    failures[failure] = (failures[failure] ?? 0) + 1;
  }
}

export function applyRecord(content: Int32Array, rec: Rec): void {
  for (let i = 0; i < rec.values.length; i++) content[rec.lba + i] = rec.values[i]!;
}
