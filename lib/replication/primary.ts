// The primary's side of WAL shipping: one ReplicaPeer per configured replica
// (a link, its lifecycle and what it has acknowledged), a shared in-memory
// backlog of recently written records, and the durability gate that holds
// client acknowledgements until the mode allows them.
//
// Rules (DESIGN.md §4):
//  - every record is shipped in LSN order, from the backlog, to every
//    streaming replica; a replica that reconnects resumes from its own
//    received LSN when the backlog still holds the gap, else it waits for
//    catch-up (the recovery-sessions work) and is reported as such;
//  - best_effort acknowledges after the local WAL; sync_all once every
//    replica in the ack set has the record (written to its WAL), FUA and
//    FLUSH once every one has it durable; sync_quorum once a majority of the
//    nodes, the primary included, has it (durable, for FUA and FLUSH);
//  - a replica in the ack set that has kept a waiting acknowledgement for
//    ackTimeoutMs is dropped from the set (sync_all only: a quorum never
//    shrinks below a majority), and the set is persisted before anything is
//    acknowledged without it; it rejoins once it is streaming and current;
//  - commit LSN = what the mode has made durable; replicas apply only up to
//    it, so a suffix the next primary may not have is never applied;
//  - a replica's HELLO or ERROR with a higher epoch fences this primary:
//    from then on every write is refused (ERR_FENCED), for good.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { performance } from 'node:perf_hooks';

import type { Logger } from 'pino';

import type { ShippedRecord, Volume } from '../engine/volume';
import { BlockwalError } from '../native/errors';
import { decodeRecord } from '../native/wal_format';
import type { AckGate } from '../node/volume_backend';
import { DURABILITY_MODES, type DurabilityMode, durabilityCode } from '../statemachine/control';
import { startsUpTo } from '../statemachine/epoch_history';
import { applyChecksumToHex, type ApplyChecksum } from './apply_checksum';
import { Backlog, type BacklogEntry } from './backlog';
import { checkEpoch } from './epoch';
import type { AckFrame, Frame, HelloFrame, SessionAckFrame, WalRecord } from './frames';
import { WAL_GROUP_BYTES_MAX } from './frames';
import { DirtyBitmap, type DirtyBitmapFacts } from './dirty_bitmap';
import { describeClose, type LinkCloseReason, ReplicationLink } from './link';
import { type Projection, ProtocolEngine } from '../protocol/engine';
import { xxh3Digest } from '../protocol/rebuild_session';
import { assertNever } from '../util/assert';
import { Linger } from '../util/linger';
import type { Decision, DecisionKind, PrimaryFacts, ProtocolCommand, ProtocolEvent, ReplicaFacts } from '../protocol/types';

export { DURABILITY_MODES, type DurabilityMode };

// syncing: fed from the in-memory backlog until current; catching_up: fed
// from the WAL on disk until the backlog covers the rest; rebuilding: a
// two-lane rebuild (base image chunks + the WAL from the base LSN);
// needs_rebuild: the last decision was a rebuild that is not running.
// Each connect is decided afresh.
export type PeerState = 'connecting' | 'syncing' | 'catching_up' | 'rebuilding' | 'streaming' | 'reconnecting' | 'needs_rebuild' | 'failed' | 'closed';

export interface ReplicaAddress {
  host: string;
  port: number;
}

// How a replica is named in status, logs and its dirty bitmap's file name.
export function replicaAddressText(to: ReplicaAddress): string {
  return `${to.host}:${to.port}`;
}

export interface PrimaryReplicationOptions {
  volume: Volume;
  nodeId: string;
  replicas: readonly ReplicaAddress[];
  durability: DurabilityMode;
  logger: Logger;
  // A replica holding back an acknowledgement this long leaves the ack set (sync_all).
  ackTimeoutMs?: number;
  // Bytes of recent records kept in memory for replicas that reconnect.
  backlogBytes?: number;
  reconnectMinMs?: number;
  reconnectMaxMs?: number;
  heartbeatIntervalMs?: number;
  idleTimeoutMs?: number;
  // How often the primary makes its WAL durable on its own so that the
  // commit LSN moves without client flushes.
  durableIntervalMs?: number;
  // A rebuild's base lane sends at most this many bytes per second (0 or
  // absent: as fast as the link and disks take it).
  rebuildBytesPerSecond?: number;
  // While a rebuild runs, foreground writes should be acknowledged within
  // this (mean, per tick): the base lane slows down (x0.7) when they are not
  // and speeds up again (x1.2, up to rebuildBytesPerSecond) when they are.
  // 0 or absent: no latency target.
  rebuildLatencyTargetMs?: number;
}

export interface ReplicaPeerStatus {
  address: string;
  nodeId: string | undefined;
  state: PeerState;
  reason: string | undefined;
  inAckSet: boolean;
  lsnSent: number;
  lsnReceived: number;
  lsnDurable: number;
  lsnApplied: number;
  applyChecksum: string | undefined;
  lagLsn: number; // primary head - replica received
  lagBytes: number; // bytes of those records still in the backlog (a lower bound when it is not)
  lagSeconds: number; // since the oldest record the replica has not acknowledged was written
  connects: number;
  // The primary's last decision for this replica (keep_up, catch_up, rebuild, ...).
  decision: { kind: DecisionKind; reason: string; costBytes: number; atMs: number } | undefined;
  // A running WAL catch-up.
  catchUp: { lsnFrom: number; lsnTarget: number; bytesDone: number; bytesTotal: number; bytesPerSecond: number; etaSeconds: number | undefined } | undefined;
  // Catch-ups and rebuilds completed since this primary started.
  completed: { catchUps: number; rebuilds: number };
  // A running rebuild: the base lane's progress (chunks sent, and done = durable on the replica).
  rebuild:
    | {
        sessionId: number;
        resumed: boolean;
        resync: boolean; // a bitmap resync (chunks the dirty bitmap leaves out go as unchanged)
        lsnBase: number;
        lsnTarget: number;
        chunksTotal: number;
        chunksSent: number;
        chunksUnchanged: number;
        chunksDone: number;
        bytesSent: number;
        bytesTotal: number;
        bytesPerSecond: number;
        etaSeconds: number | undefined;
      }
    | undefined;
  // While the replica is away: the blocks written since it left (lsnFrom, in epoch).
  dirtyBitmap: DirtyBitmapFacts | undefined;
  // While the replica lags: WAL held for it, and how much more (and about how
  // long at the current write rate) before it falls off the WAL.
  retention: { heldBytes: number; headroomBytes: number; headroomSeconds: number | undefined } | undefined;
}

export interface PrimaryReplicationStatus {
  role: 'primary';
  durability: DurabilityMode;
  mode: 'healthy' | 'degraded' | 'fenced';
  reason: string | undefined;
  epoch: number;
  lsnCommit: number;
  ackSet: string[];
  // slabsReused: record slabs carved again (instead of allocated) since
  // start; slabsAllocated: slabs allocated since start.
  backlog: { lsnFirst: number; lsnLast: number; bytes: number; bytesMax: number; slabsReused: number; slabsAllocated: number };
  // The protocol engine's projection: healthy, catching_up, rebuilding, needs_rebuild, degraded, ...
  recovery: Projection;
  wal: { lsnTail: number; retainedBytes: number; budgetBytes: number; writeBytesPerSecond: number };
  // The rebuild base lane's pace now (0: unthrottled), and the latency target steering it (0: none).
  rebuildPace: { bytesPerSecond: number; latencyTargetMs: number };
  // Acknowledgements the durability mode made wait for the replicas since
  // this primary started: writes (received there) and flushes and FUA
  // writes (durable there).
  ackWait: { writes: AckWaitCounts; flushes: AckWaitCounts };
  replicas: ReplicaPeerStatus[];
}

// total: acknowledgements asked for; held: those the replicas had not yet
// answered; heldSeconds: how long those waited in all. A write waits from
// when this node's WAL has it, a FLUSH from its start (the local flush runs
// meanwhile), so heldSeconds / held is what replication adds to a write.
export interface AckWaitCounts {
  total: number;
  held: number;
  heldSeconds: number;
}

const RECORDS_PER_FRAME_MAX = 4096;
// A commit LSN waits this long for a WAL_RECORDS frame to carry it before it
// goes in a COMMIT frame of its own. Only the replica's apply waits for it;
// no acknowledgement does.
const COMMIT_LINGER_MS = 1;
// One WAL read of a catch-up (a run of records back to back in a segment).
const CATCH_UP_READ_BYTES = 4 << 20;
// Steering the base lane against a latency target: where it starts without
// a cap, and the least it goes down to (a rebuild always moves).
const REBUILD_RATE_START_BYTES = 256 << 20;
const REBUILD_RATE_MIN_BYTES = 4 << 20;
const REBUILD_RATE_MAX_BYTES = 16 * 2 ** 30;
// Running catch-ups and rebuilds log their progress this often.
const PROGRESS_LOG_INTERVAL_MS = 5000;
// A rebuild's base chunk: 1 MiB (256 blocks), read this many ahead.
const REBUILD_READS_IN_FLIGHT = 4;
const REBUILD_CHUNK_BLOCKS = 256;
const BLOCK_BYTES = 4096;

interface RebuildRun {
  sessionId: number; // on the wire: the replica's session (a resumed one keeps its id)
  sessionIdEngine: number; // the protocol engine's session
  lsnBase: number;
  lsnTarget: number;
  chunkBlocks: number;
  volumeBlocks: number;
  chunksTotal: number;
  chunkFrom: number; // first chunk sent (a resumed session skips what the replica has)
  chunksSent: number;
  chunksDone: number; // durable on the replica (its SESSION_ACKs)
  bytesSent: number;
  baseSent: boolean;
  startedMs: number;
  resumed: boolean;
  // A bitmap resync: chunks the replica's dirty bitmap leaves out go as unchanged.
  resync: boolean;
  chunksUnchanged: number;
}

const zeroChunks = new Map<number, { zeros: Buffer; digest: bigint }>();

function zeroChunk(bytes: number): { zeros: Buffer; digest: bigint } {
  let z = zeroChunks.get(bytes);
  if (z === undefined) {
    const zeros = Buffer.alloc(bytes);
    z = { zeros, digest: xxh3Digest(zeros) };
    zeroChunks.set(bytes, z);
  }
  return z;
}

function ackWaitCounts(c: { total: number; held: number; heldMs: number }): AckWaitCounts {
  return { total: c.total, held: c.held, heldSeconds: c.heldMs / 1000 };
}

function roundOrUndefined(x: number | undefined): number | undefined {
  return x === undefined ? undefined : Math.round(x);
}

function isZeroChunk(data: Buffer): boolean {
  return data.equals(zeroChunk(data.byteLength).zeros);
}


interface Waiter {
  lsn: number;
  durable: boolean;
  sinceMs: number; // when it started to wait (the ack timeout counts from here)
  resolve: () => void;
  reject: (err: Error) => void;
}

export class PrimaryReplication implements AckGate {
  // Follows the volume's durability control records (setDurability).
  durability: DurabilityMode;
  private readonly volume: Volume;
  private readonly log: Logger;
  private readonly peers: ReplicaPeer[];
  private readonly backlog: Backlog;
  private waiters: Waiter[] = [];
  private readonly ackWait = { writes: { total: 0, held: 0, heldMs: 0 }, flushes: { total: 0, held: 0, heldMs: 0 } };
  private fenced: BlockwalError | undefined;
  private degradedReason: string | undefined;
  private lsnCommit = 0;
  private readonly timer: NodeJS.Timeout;
  private durableInFlight = false;
  private membershipWrite: Promise<void> = Promise.resolve();
  private closed = false;
  readonly ackTimeoutMs: number;
  private readonly membershipPath: string;
  // WAL bytes written (shipped) since start, and the write rate from it.
  private bytesWritten = 0;
  private rateSample = { atMs: performance.now(), bytes: 0 };
  private writeBytesPerSecond = 0;
  // Decides each replica's feed and sessions (pure; lib/protocol/engine.ts).
  private readonly engine = new ProtocolEngine({ sessionIdLast: Date.now(), nowMs: Math.floor(performance.now()) });
  private recovery: Projection = { mode: 'bootstrap_pending', reason: 'starting' };
  private rebuildTokens = 0;
  private rebuildTokensAtMs = performance.now();
  private readonly rebuildLatencyTargetMs: number;
  private progressLoggedMs = performance.now();
  private latencySumMs = 0;
  private latencyCount = 0;
  // The base lane's pace now: the cap, or less while foreground writes are slow.
  private rebuildRate: number;

  private constructor(readonly options: PrimaryReplicationOptions) {
    this.volume = options.volume;
    this.durability = options.durability;
    this.log = options.logger.child({ replication: 'primary' });
    this.ackTimeoutMs = options.ackTimeoutMs ?? 5000;
    this.rebuildLatencyTargetMs = options.rebuildLatencyTargetMs ?? 0;
    this.rebuildRate = options.rebuildBytesPerSecond ?? 0;
    this.backlog = new Backlog(options.backlogBytes ?? 256 << 20, ReplicationLink.outputFence);
    this.membershipPath = path.join(this.volume.dir, 'replication.json');
    this.lsnCommit = this.volume.lsnDurable;
    this.peers = options.replicas.map((a) => new ReplicaPeer(this, a, this.log));
    const tickMs = Math.max(10, Math.min(options.durableIntervalMs ?? 50, this.ackTimeoutMs / 4));
    this.timer = setInterval(() => this.tick(), tickMs);
    this.timer.unref();
  }

  // Seeds the backlog with the records the WAL still holds after the
  // checkpoint (a restarted primary can feed replicas that were behind),
  // then connects to the replicas. Call before any write.
  static async start(options: PrimaryReplicationOptions): Promise<PrimaryReplication> {
    const r = new PrimaryReplication(options);
    r.restoreMembership();
    const now = performance.now();
    for (const rec of await options.volume.replayedRecords()) {
      const { kind, lba, lengthBlocks } = decodeRecord(rec.bytes);
      r.backlog.push({ lsn: rec.lsn, bytes: rec.bytes, applyChecksum: rec.applyChecksum, atMs: now, kind, lba, lengthBlocks });
    }
    for (const p of r.peers) p.openDirty();
    if (r.backlog.lsnLast !== 0) r.log.info({ lsnFirst: r.backlog.lsnFirst, lsnLast: r.backlog.lsnLast, bytes: r.backlog.bytes }, 'backlog seeded from the WAL');
    options.volume.setWalPin(() => r.walPinLsn());
    options.volume.setRecordSpace((spanBytes) => r.backlog.take(spanBytes));
    r.protocol({ type: 'assignment', epoch: r.epoch, role: 'primary', replicas: r.peers.map((p) => p.address) });
    r.protocol({ type: 'barrier', epoch: r.epoch, lsn: options.volume.lsnDurable });
    for (const p of r.peers) p.connect();
    return r;
  }

  // Volume hook: each record as it gets its LSN (synchronously, in order).
  onRecord(record: ShippedRecord): void {
    this.backlog.push({
      lsn: record.lsn,
      bytes: record.bytes,
      applyChecksum: this.volume.applyChecksum,
      atMs: performance.now(),
      kind: record.kind,
      lba: record.lba,
      lengthBlocks: record.lengthBlocks,
    });
    this.bytesWritten += record.bytes.byteLength;
    // A FUA write waits for the replicas' durability: its SYNC goes out right
    // behind the records (one read on the replica, which then writes them
    // with RWF_DSYNC), not after this node's own write completes.
    const sync = record.fua && this.durability !== 'best_effort';
    for (const p of this.peers) {
      p.markDirty(record);
      p.schedulePump();
      if (sync) p.requestSync(record.lsn);
    }
  }

  // A durability control record was applied: acknowledgements follow the new
  // mode from now on (waiters are re-judged at once).
  setDurability(mode: DurabilityMode): void {
    if (mode === this.durability) return;
    this.log.info({ from: this.durability, to: mode }, 'durability mode changed');
    this.durability = mode;
    if (mode !== 'sync_all') this.degradedReason = undefined;
    this.settle();
  }

  // ---- the gate ----

  admit(): number {
    if (this.fenced !== undefined) throw this.fenced;
    return performance.now();
  }

  written(lsn: number, fua: boolean, admittedAtMs?: number): Promise<void> {
    const done = this.wait(lsn, fua);
    if (admittedAtMs === undefined || this.rebuildLatencyTargetMs <= 0) return done;
    return done.then(() => this.noteWriteLatency(performance.now() - admittedAtMs));
  }

  // Foreground write latency (admission to acknowledgement), averaged per
  // tick, steers the rebuild rate when a latency target is set.
  private noteWriteLatency(ms: number): void {
    this.latencySumMs += ms;
    this.latencyCount++;
  }

  flushed(lsn: number): Promise<void> {
    return this.wait(lsn, true);
  }

  private wait(lsn: number, durable: boolean): Promise<void> {
    if (this.fenced !== undefined) return Promise.reject(this.fenced);
    const counts = durable ? this.ackWait.flushes : this.ackWait.writes;
    counts.total++;
    if (this.satisfied(lsn, durable)) return Promise.resolve();
    counts.held++;
    if (durable) for (const p of this.peers) p.requestSync(lsn);
    return new Promise<void>((resolve, reject) => this.waiters.push({ lsn, durable, sinceMs: performance.now(), resolve, reject }));
  }

  // The LSN the mode acknowledges: received (or durable) on enough replicas.
  private ackedLsn(durable: boolean): number {
    if (this.durability === 'best_effort') return Number.MAX_SAFE_INTEGER;
    const of = (p: ReplicaPeer): number => (durable ? p.lsnDurable : p.lsnReceived);
    if (this.durability === 'sync_all') {
      let min = Number.MAX_SAFE_INTEGER;
      for (const p of this.peers) if (p.inAckSet) min = Math.min(min, of(p));
      return min;
    }
    // sync_quorum: a majority of primary + replicas, the primary counted.
    const needed = Math.floor((this.peers.length + 1) / 2);
    if (needed === 0) return Number.MAX_SAFE_INTEGER;
    const values = this.peers.map(of).sort((a, b) => b - a);
    return values[needed - 1] ?? 0;
  }

  private satisfied(lsn: number, durable: boolean): boolean {
    return this.ackedLsn(durable) >= lsn;
  }

  // Re-evaluates waiters and the commit LSN after any acknowledgement or
  // membership change.
  settle(): void {
    if (this.waiters.length > 0) {
      const received = this.ackedLsn(false);
      const durable = this.ackedLsn(true);
      const keep: Waiter[] = [];
      let now = 0;
      for (const w of this.waiters) {
        if (w.lsn <= (w.durable ? durable : received)) {
          if (now === 0) now = performance.now();
          (w.durable ? this.ackWait.flushes : this.ackWait.writes).heldMs += now - w.sinceMs;
          w.resolve();
        } else keep.push(w);
      }
      this.waiters = keep;
    }
    const commit = Math.min(this.volume.lsnDurable, this.ackedLsn(true));
    if (commit > this.lsnCommit) {
      this.lsnCommit = commit;
      for (const p of this.peers) p.sendCommit(commit);
    }
  }

  get commitLsn(): number {
    return this.lsnCommit;
  }

  // ---- membership ----

  // A replica has held a waiting acknowledgement too long: leave the ack set
  // (persisted first), then acknowledge without it. Only a replica that has
  // answered this primary's HELLO since it started may leave: until then this
  // primary does not know that it is still the primary (a deposed one learns
  // of the newer epoch from the replicas), so it acknowledges nothing alone.
  private dropFromAckSet(peer: ReplicaPeer, reason: string): void {
    if (this.durability !== 'sync_all' || !peer.inAckSet || peer.leaving || !peer.greeted) return;
    // The peer counts until the new set is durable: nothing is acknowledged
    // without it before then.
    peer.leaving = true;
    this.log.warn({ replica: peer.address, reason }, 'replica dropped from the ack set: the volume is degraded');
    this.persistMembership().then(
      () => {
        peer.leaving = false;
        peer.inAckSet = false;
        this.degradedReason = `replica ${peer.address} left the ack set: ${reason}`;
        this.settle();
      },
      (err: Error) => this.fence(new BlockwalError('ERR_VOLUME_FAILED', `cannot persist the replica set: ${err.message}`)),
    );
  }

  // A replica in keep-up and current again rejoins the ack set.
  rejoin(peer: ReplicaPeer): void {
    if (peer.inAckSet || peer.leaving) return;
    if (peer.lsnReceived < this.volume.lsnHead) return;
    // Counting one more replica only makes acknowledgements stricter: no need
    // to wait for the record of it.
    peer.inAckSet = true;
    if (this.peers.every((p) => p.inAckSet)) this.degradedReason = undefined;
    this.log.info({ replica: peer.address }, 'replica rejoined the ack set');
    void this.persistMembership().catch(() => undefined);
  }

  // A replica this primary dropped in an earlier run, in this same epoch,
  // stays out of the ack set until it is current again.
  private restoreMembership(): void {
    let saved: { epoch?: unknown; dropped?: unknown };
    try {
      saved = JSON.parse(fs.readFileSync(this.membershipPath, 'utf8')) as typeof saved;
    } catch {
      return; // none yet, or unreadable: every replica counts (the strict choice)
    }
    if (saved.epoch !== this.volume.epoch || !Array.isArray(saved.dropped) || this.durability !== 'sync_all') return;
    for (const p of this.peers) {
      if (saved.dropped.includes(p.address)) {
        p.inAckSet = false;
        this.degradedReason = `replica ${p.address} was out of the ack set when this primary stopped`;
      }
    }
    if (this.degradedReason !== undefined) this.log.warn({ dropped: saved.dropped }, this.degradedReason);
  }

  private persistMembership(): Promise<void> {
    const body = JSON.stringify(
      {
        epoch: this.volume.epoch,
        durability: this.durability,
        ackSet: this.peers.filter((p) => p.inAckSet && !p.leaving).map((p) => p.address),
        dropped: this.peers.filter((p) => !p.inAckSet || p.leaving).map((p) => p.address),
        updatedAtMs: Date.now(),
      },
      null,
      2,
    );
    const run = async (): Promise<void> => {
      const tmp = `${this.membershipPath}.tmp`;
      await fs.promises.writeFile(tmp, `${body}\n`);
      const fh = await fs.promises.open(tmp, 'r');
      await fh.sync().finally(() => fh.close());
      await fs.promises.rename(tmp, this.membershipPath);
      const dir = await fs.promises.open(path.dirname(this.membershipPath), 'r');
      await dir.sync().finally(() => dir.close());
    };
    this.membershipWrite = this.membershipWrite.then(run, run);
    return this.membershipWrite;
  }

  // ---- fencing ----

  fence(reason: BlockwalError): void {
    if (this.fenced !== undefined) return;
    this.fenced = reason;
    this.log.error({ reason: reason.message }, 'writes stopped');
    for (const w of this.waiters.splice(0)) w.reject(reason);
    for (const p of this.peers) p.close('stepping_down', reason.message);
  }

  stepDown(epochSeen: number, from: string): void {
    this.fence(
      new BlockwalError('ERR_FENCED', `replica ${from} is at epoch ${epochSeen}, above this primary's ${this.volume.epoch}: another primary was appointed; this one accepts no writes`),
    );
  }

  // ---- periodic work ----

  private tick(): void {
    if (this.closed) return;
    const now = performance.now();
    this.sampleWriteRate(now);
    this.steerRebuildRate();
    this.protocol({ type: 'tick', nowMs: Math.floor(now) });
    if (now - this.progressLoggedMs >= PROGRESS_LOG_INTERVAL_MS) {
      this.progressLoggedMs = now;
      for (const p of this.peers) p.logProgress();
    }
    // Durability on its own, here and on the replicas, so that commit moves
    // without client flushes.
    for (const p of this.peers) p.requestSync(this.volume.lsnHead);
    if (!this.durableInFlight && this.volume.lsnDurable < this.volume.lsnHead && this.fenced === undefined) {
      this.durableInFlight = true;
      this.volume.flush().then(
        () => {
          this.durableInFlight = false;
          this.settle();
        },
        () => {
          this.durableInFlight = false;
        },
      );
    }
    if (this.waiters.length > 0 && this.durability === 'sync_all') {
      // Timed by the waiters themselves: a record may have left the
      // in-memory backlog while its write still waits.
      let oldest = Number.MAX_SAFE_INTEGER;
      let sinceMs = now;
      for (const w of this.waiters) {
        oldest = Math.min(oldest, w.lsn);
        sinceMs = Math.min(sinceMs, w.sinceMs);
      }
      const waitedMs = Math.round(now - sinceMs);
      if (waitedMs >= this.ackTimeoutMs) {
        for (const p of this.peers) {
          if (!p.inAckSet) continue;
          const needsDurable = this.waiters.some((w) => w.durable && w.lsn > p.lsnDurable);
          if (p.lsnReceived < oldest || needsDurable) {
            this.dropFromAckSet(p, `no acknowledgement of LSN ${oldest} for ${waitedMs} ms (state ${p.state})`);
          }
        }
      }
    }
    this.settle();
  }

  // ---- the protocol engine (its session ids start from the clock, so they
  // grow across restarts) ----

  // Feeds one event to the engine and carries out its commands.
  protocol(event: ProtocolEvent): void {
    let commands: ProtocolCommand[];
    try {
      commands = this.engine.apply(event);
    } catch (err) {
      this.log.error({ event: event.type, err: (err as Error).message }, 'the protocol engine refused an event');
      return;
    }
    for (const cmd of commands) this.execute(cmd);
  }

  // A replica's facts, with ours as of its position.
  report(peer: ReplicaPeer, replicaFacts: ReplicaFacts, lsnReplica: number): void {
    const primaryFacts = this.facts(lsnReplica);
    const bitmap = peer.dirtyFacts();
    this.protocol({ type: 'replica_report', replica: peer.address, replicaFacts, primaryFacts: bitmap === undefined ? primaryFacts : { ...primaryFacts, bitmap } });
  }

  private execute(cmd: ProtocolCommand): void {
    const peer = (address: string): ReplicaPeer | undefined => this.peers.find((p) => p.address === address);
    switch (cmd.type) {
      case 'start_keep_up':
        peer(cmd.replica)?.startKeepUp(cmd.lsnFrom);
        return;
      case 'start_session':
        peer(cmd.replica)?.startSession(cmd);
        return;
      case 'cancel_session':
        peer(cmd.replica)?.cancelSession(cmd);
        return;
      case 'log_decision':
        peer(cmd.replica)?.noteDecision(cmd.decision);
        return;
      case 'fence':
        this.fence(new BlockwalError('ERR_FENCED', `${cmd.reason}; this primary accepts no writes`));
        return;
      case 'publish_mode':
        this.recovery = { mode: cmd.mode, reason: cmd.reason };
        this.log.info({ mode: cmd.mode, reason: cmd.reason }, 'replication mode');
        return;
      default:
        assertNever(cmd);
    }
  }

  // Paces base-lane bytes to rebuildBytesPerSecond (a token bucket shared by
  // every replica being rebuilt, with at most a second of burst).
  async rebuildThrottle(bytes: number): Promise<void> {
    const rate = this.rebuildRate;
    if (rate <= 0) return;
    const now = performance.now();
    this.rebuildTokens = Math.min(rate, this.rebuildTokens + ((now - this.rebuildTokensAtMs) * rate) / 1000);
    this.rebuildTokensAtMs = now;
    this.rebuildTokens -= bytes;
    if (this.rebuildTokens < 0) await new Promise((resolve) => setTimeout(resolve, (-this.rebuildTokens * 1000) / rate));
  }

  // AIMD on the base lane's rate against the latency target (see the option).
  private steerRebuildRate(): void {
    if (this.rebuildLatencyTargetMs <= 0 || this.latencyCount === 0) return;
    const meanMs = this.latencySumMs / this.latencyCount;
    this.latencySumMs = 0;
    this.latencyCount = 0;
    const capBytes = this.options.rebuildBytesPerSecond ?? 0;
    const current = this.rebuildRate > 0 ? this.rebuildRate : capBytes > 0 ? capBytes : REBUILD_RATE_START_BYTES;
    const next = meanMs > this.rebuildLatencyTargetMs ? current * 0.7 : current * 1.2;
    this.rebuildRate = Math.max(REBUILD_RATE_MIN_BYTES, Math.min(capBytes > 0 ? capBytes : REBUILD_RATE_MAX_BYTES, next));
  }

  // Write rate over the last second or so (smoothed), for retention headroom.
  private sampleWriteRate(nowMs: number): void {
    const elapsedMs = nowMs - this.rateSample.atMs;
    if (elapsedMs < 1000) return;
    const rate = ((this.bytesWritten - this.rateSample.bytes) * 1000) / elapsedMs;
    this.writeBytesPerSecond = this.writeBytesPerSecond === 0 ? rate : 0.7 * this.writeBytesPerSecond + 0.3 * rate;
    this.rateSample = { atMs: nowMs, bytes: this.bytesWritten };
  }

  // The lowest LSN a replica that may still be fed from the WAL needs, even
  // after a crash of its own (ReplicaPeer.lsnKept): the flusher keeps the WAL
  // from there (within the retention budget).
  private walPinLsn(): number {
    let pin = Number.MAX_SAFE_INTEGER;
    for (const p of this.peers) {
      if (p.state === 'failed' || p.state === 'closed') continue;
      pin = Math.min(pin, p.lsnKept + 1);
    }
    return pin;
  }

  // What this primary knows of itself, for a decision about a replica at lsnReplica.
  facts(lsnReplica: number): PrimaryFacts {
    const v = this.volume;
    const head = v.lsnHead;
    const first = this.backlog.lsnFirst;
    // The WAL is released only up to a checkpoint (read first: both move).
    const walTail = v.walTail;
    const lsnCheckpoint = Math.max(walTail, v.lsnCheckpoint);
    return {
      epoch: v.epoch,
      lsnHead: head,
      lsnCheckpoint,
      backlogFloor: first === 0 ? head : first - 1,
      walTail,
      walBytesAfterReplica: v.walBytesAfter(lsnReplica),
      walBytesAfterCheckpoint: v.walBytesAfter(lsnCheckpoint),
      volumeBytes: v.sizeBytes,
      ...(v.epochStarts === undefined ? {} : { epochStarts: v.epochStarts }),
    };
  }

  get volumeRef(): Volume {
    return this.volume;
  }

  // ---- for peers ----

  get head(): number {
    return this.volume.lsnHead;
  }
  get epoch(): number {
    return this.volume.epoch;
  }
  get volumeUuid(): string {
    return this.volume.uuid;
  }
  get logger(): Logger {
    return this.log;
  }
  backlogEntry(lsn: number): BacklogEntry | undefined {
    return this.backlog.get(lsn);
  }
  backlogRecord(lsn: number): Buffer | undefined {
    return this.backlog.recordBytes(lsn);
  }
  get backlogFirst(): number {
    return this.backlog.lsnFirst;
  }

  hello(): HelloFrame {
    const v = this.volume;
    const s = v.status();
    return {
      type: 'hello',
      epoch: v.epoch,
      role: 'primary',
      volumeUuid: v.uuid,
      nodeId: this.options.nodeId,
      lsnDurable: v.lsnDurable,
      lsnApplied: v.lsnApplied,
      lsnTail: s.lsnTail,
      lsnHead: v.lsnHead,
      applyChecksum: v.applyChecksum,
    };
  }

  // Our chain at lsn, when we still know it.
  applyChecksumAt(lsn: number): ApplyChecksum | undefined {
    if (lsn === this.volume.lsnApplied) return this.volume.applyChecksum;
    return this.backlog.get(lsn)?.applyChecksum;
  }

  status(): PrimaryReplicationStatus {
    const head = this.volume.lsnHead;
    const now = performance.now();
    const walTail = this.volume.walTail;
    const budgetBytes = this.volume.walPinBudgetBytes;
    return {
      role: 'primary',
      durability: this.durability,
      mode: this.fenced !== undefined ? 'fenced' : this.degradedReason !== undefined ? 'degraded' : 'healthy',
      reason: this.fenced?.message ?? this.degradedReason,
      epoch: this.volume.epoch,
      lsnCommit: this.lsnCommit,
      ackSet: this.peers.filter((p) => p.inAckSet).map((p) => p.address),
      backlog: { lsnFirst: this.backlog.lsnFirst, lsnLast: this.backlog.lsnLast, bytes: this.backlog.bytes, bytesMax: this.backlog.bytesMax, slabsReused: this.backlog.slabsReused, slabsAllocated: this.backlog.slabsAllocated },
      wal: { lsnTail: walTail, retainedBytes: this.volume.walBytesAfter(walTail), budgetBytes, writeBytesPerSecond: Math.round(this.writeBytesPerSecond) },
      recovery: this.recovery,
      rebuildPace: { bytesPerSecond: Math.round(this.rebuildRate), latencyTargetMs: this.rebuildLatencyTargetMs },
      ackWait: { writes: ackWaitCounts(this.ackWait.writes), flushes: ackWaitCounts(this.ackWait.flushes) },
      replicas: this.peers.map((p) => {
        const oldest = this.backlog.get(p.lsnReceived + 1);
        const lagging = p.lsnReceived < head && p.state !== 'failed';
        const heldBytes = lagging ? this.volume.walBytesAfter(p.lsnKept) : 0;
        const headroomBytes = Math.max(0, budgetBytes - heldBytes);
        return {
          ...p.status(),
          lagLsn: Math.max(0, head - p.lsnReceived),
          lagBytes: Math.max(this.backlog.bytesBetween(p.lsnReceived, head), this.volume.walBytesAfter(p.lsnReceived)),
          lagSeconds: p.lsnReceived >= head || oldest === undefined ? 0 : (now - oldest.atMs) / 1000,
          retention: lagging
            ? { heldBytes, headroomBytes, headroomSeconds: this.writeBytesPerSecond > 0 ? headroomBytes / this.writeBytesPerSecond : undefined }
            : undefined,
        };
      }),
    };
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.timer);
    this.volume.setWalPin(undefined);
    this.volume.setRecordSpace(undefined);
    // What is written locally is acknowledged by then or refused.
    const err = new BlockwalError('ERR_CLOSED', 'replication closed');
    for (const w of this.waiters.splice(0)) w.reject(err);
    await Promise.all(this.peers.map((p) => p.shutdown()));
    await this.membershipWrite.catch(() => undefined);
    for (const p of this.peers) p.closeDirty();
  }
}

// One replica as the primary sees it.
class ReplicaPeer {
  readonly address: string;
  state: PeerState = 'connecting';
  reason: string | undefined;
  inAckSet = true;
  leaving = false; // dropped from the ack set once that is persisted
  nodeId: string | undefined;
  greeted = false; // a HELLO exchange completed since this primary started
  lsnSent = 0;
  lsnReceived = 0;
  lsnDurable = 0;
  lsnApplied = 0;
  // The LSN before the current feed's first record: where the replica's WAL
  // stood when it started (a fresh rebuild's base LSN).
  private lsnFeedFrom = 0;
  applyChecksum: ApplyChecksum | undefined;
  connects = 0;
  private link: ReplicationLink | undefined;
  private pumpScheduled = false;
  private lsnCommitSent = 0;
  private readonly commitLinger = new Linger(COMMIT_LINGER_MS, () => this.sendCommitNow());
  // Durability asked of the replica (SYNC): the most wanted, the most sent.
  private lsnSyncWanted = 0;
  private lsnSyncSent = 0;
  private backoffMs: number;
  private retryTimer: NodeJS.Timeout | undefined;
  private stopped = false;
  private readonly log: Logger;
  decision: ReplicaPeerStatus['decision'];
  private catchUp: { sessionId: number; lsnFrom: number; lsnTarget: number; bytesDone: number; bytesTotal: number; startedMs: number; reported?: boolean } | undefined;
  // The HELLO of the current link, and whether the engine gave it a feed.
  private hello: HelloFrame | undefined;
  private fed = false;
  private diskFeedRunning = false;
  private rebuild: RebuildRun | undefined;
  // Sessions this primary saw complete for the replica.
  catchUpsCompleted = 0;
  rebuildsCompleted = 0;
  // Records come from the WAL on disk (feedFromDisk), not the backlog (pump).
  private fromDisk = false;
  // While the replica is away: every block written since it left.
  private dirty: DirtyBitmap | undefined;
  private dirtyClosed = false;
  // The replica's checkpoint as it last reported it: a crash there rolls its
  // applied LSN back no further (its WAL records after it wait for a commit).
  private lsnCheckpointReplica = 0;
  private drainWaiters: (() => void)[] = [];

  constructor(
    private readonly primary: PrimaryReplication,
    readonly to: ReplicaAddress,
    log: Logger,
  ) {
    this.address = replicaAddressText(to);
    this.log = log.child({ replica: this.address });
    this.backoffMs = primary.options.reconnectMinMs ?? 100;
  }

  // ---- the dirty bitmap (dirty_bitmap.ts) ----

  // At start: the bitmap a clean shutdown left for this replica, if trusted.
  openDirty(): void {
    const v = this.primary.volumeRef;
    const { bitmap, why } = DirtyBitmap.openTrusted(DirtyBitmap.pathFor(v.dir, this.address), v.epoch, Math.ceil(v.sizeBytes / BLOCK_BYTES));
    this.dirty = bitmap;
    if (bitmap !== undefined) this.log.info({ ...bitmap.facts() }, 'dirty bitmap kept for the replica since before the restart');
    else if (why !== undefined) this.log.warn({ reason: why }, 'dirty bitmap of the replica dropped');
  }

  // The replica went away from a whole base image: from now on every block
  // written after its checkpoint is marked (it may come back with only that
  // applied: a replica's applied LSN after a crash is its checkpoint's). The
  // records after it must all be in the backlog, or no bitmap is made.
  private startDirty(wasState: PeerState): void {
    if (this.dirty !== undefined || this.dirtyClosed || !this.greeted) return;
    if (wasState !== 'streaming' && wasState !== 'syncing' && wasState !== 'catching_up') return;
    const v = this.primary.volumeRef;
    const lsnFrom = this.lsnCheckpointReplica;
    // Nothing checkpointed there yet: a bitmap from LSN 0 would stand for
    // every block ever written; such a replica is caught up or rebuilt.
    if (lsnFrom === 0) return;
    const head = this.primary.head;
    const first = this.primary.backlogFirst;
    if (lsnFrom < head && (first === 0 || first > lsnFrom + 1)) {
      this.log.info({ lsnFrom, backlogFirst: first }, 'no dirty bitmap for the replica: the backlog no longer holds what it lacks');
      return;
    }
    const bitmap = DirtyBitmap.create(DirtyBitmap.pathFor(v.dir, this.address), Math.ceil(v.sizeBytes / BLOCK_BYTES), v.epoch, lsnFrom);
    for (let lsn = lsnFrom + 1; lsn <= head; lsn++) {
      const e = this.primary.backlogEntry(lsn)!;
      if (e.kind !== 'control' && !bitmap.mark(e.lba, e.lengthBlocks)) {
        bitmap.remove();
        return;
      }
    }
    this.dirty = bitmap;
    this.log.info({ lsnFrom, head }, 'dirty bitmap started for the replica');
  }

  markDirty(record: ShippedRecord): void {
    const bitmap = this.dirty;
    if (bitmap === undefined || record.kind === 'control') return;
    if (this.dirtyClosed) {
      // Closed as trusted, and written after: it no longer covers everything.
      this.dropDirty('a record was written after it was closed');
      return;
    }
    if (!bitmap.mark(record.lba, record.lengthBlocks)) this.dropDirty(`LSN ${record.lsn} touches blocks beyond it (the volume grew)`);
  }

  private dropDirty(why: string | undefined): void {
    const bitmap = this.dirty;
    if (bitmap === undefined) return;
    this.dirty = undefined;
    bitmap.remove();
    if (why !== undefined) this.log.warn({ reason: why }, 'dirty bitmap of the replica dropped');
  }

  dirtyFacts(): DirtyBitmapFacts | undefined {
    return this.dirty?.facts();
  }

  // Shutdown: the bitmap stays, trusted by the next start.
  closeDirty(): void {
    if (this.dirtyClosed) return;
    this.dirtyClosed = true;
    this.dirty?.close();
  }

  connect(): void {
    if (this.stopped) return;
    this.setState('connecting', undefined);
    const o = this.primary.options;
    ReplicationLink.connect(this.to.host, this.to.port, {
      logger: this.log,
      epoch: () => this.primary.epoch,
      heartbeatIntervalMs: o.heartbeatIntervalMs,
      idleTimeoutMs: o.idleTimeoutMs,
      connectTimeoutMs: 2000,
    }).then(
      (link) => this.attach(link),
      (err: Error) => this.retry(`connect failed: ${err.message}`),
    );
  }

  private attach(link: ReplicationLink): void {
    if (this.stopped) {
      link.close('shutdown', 'primary stopping', 'goodbye');
      return;
    }
    this.link = link;
    this.connects++;
    this.lsnCommitSent = 0;
    this.lsnSyncSent = 0;
    link.onFrame = (frame) => this.onFrame(frame);
    link.onClose = (reason) => this.onLinkClose(link, reason);
    link.onDrain = () => {
      for (const waiter of this.drainWaiters.splice(0)) waiter();
      this.schedulePump();
    };
    link.send(this.primary.hello());
  }

  private onFrame(frame: Frame): void {
    const decision = checkEpoch(this.primary.epoch, frame.epoch, 'primary');
    if (decision.outcome === 'step_down') {
      this.primary.stepDown(decision.epochSeen, this.address);
      return;
    }
    if (decision.outcome === 'refuse') {
      this.link?.close('stale_epoch', decision.message);
      return;
    }
    switch (frame.type) {
      case 'hello':
        this.onHello(frame);
        return;
      case 'ack':
        this.onAck(frame);
        return;
      case 'session_ack':
        this.onSessionAck(frame);
        return;
      default:
        this.link?.close('bad_frame', `unexpected ${frame.type} frame from a replica`);
    }
  }

  private onHello(hello: HelloFrame): void {
    if (hello.role !== 'replica') {
      this.fail('role_conflict', `the node at ${this.address} is a ${hello.role}, not a replica`);
      return;
    }
    if (hello.volumeUuid !== this.primary.volumeUuid) {
      this.fail('wrong_volume', `the replica holds volume ${hello.volumeUuid}, not ${this.primary.volumeUuid}`);
      return;
    }
    this.nodeId = hello.nodeId;
    this.greeted = true;
    this.lsnFeedFrom = 0;
    this.lsnReceived = hello.lsnHead;
    this.lsnDurable = hello.lsnDurable;
    this.lsnApplied = hello.lsnApplied;
    // Its WAL starts after its checkpoint: at least that far is in its base image.
    this.lsnCheckpointReplica = Math.min(hello.lsnTail, hello.lsnApplied);
    this.applyChecksum = hello.applyChecksum;
    const replicaFacts: ReplicaFacts = {
      epoch: hello.epoch,
      lsnReceived: hello.lsnHead,
      lsnDurable: hello.lsnDurable,
      lsnApplied: hello.lsnApplied,
      chainMatches: this.chainMatches(hello.lsnApplied, hello.applyChecksum),
      rebuild: hello.rebuild,
      ...(hello.epochApplied === undefined ? {} : { epochApplied: hello.epochApplied }),
    };
    if (replicaFacts.chainMatches === false) this.alarmChain(hello.lsnApplied, hello.applyChecksum);
    this.hello = hello;
    this.fed = false;
    // The protocol engine decides (lib/protocol); its commands come back
    // through execute().
    this.primary.report(this, replicaFacts, hello.lsnHead);
    if (!this.fed && this.link !== undefined && !this.link.closed && this.state === 'connecting') {
      this.fail(undefined, 'the protocol engine gave no feed for this replica');
    }
  }

  // ---- the protocol engine's commands for this replica ----

  noteDecision(decision: Decision): void {
    this.decision = { kind: decision.kind, reason: decision.reason, costBytes: decision.costBytes, atMs: Date.now() };
    const log = decision.kind === 'keep_up' ? this.log.debug.bind(this.log) : this.log.info.bind(this.log);
    log({ decision: decision.kind, reason: decision.reason, costBytes: decision.costBytes, head: this.primary.head }, 'replica decision');
  }

  startKeepUp(lsnFrom: number): void {
    this.fed = true;
    const hello = this.hello;
    if (this.catchUp !== undefined || this.rebuild !== undefined) {
      // A session completed on this link: the feed goes on from memory.
      if (this.rebuild !== undefined) this.rebuildsCompleted++;
      if (this.catchUp !== undefined) this.catchUpsCompleted++;
      this.catchUp = undefined;
      this.rebuild = undefined;
      this.setState(this.lsnReceived >= this.primary.head ? 'streaming' : 'syncing', undefined);
      if (this.state === 'streaming') this.primary.rejoin(this);
      this.schedulePump();
      return;
    }
    if (hello === undefined || this.link === undefined) return;
    this.startFeed(hello, lsnFrom - 1 < this.primary.head ? 'syncing' : 'streaming', lsnFrom);
    this.schedulePump();
  }

  startSession(cmd: Extract<ProtocolCommand, { type: 'start_session' }>): void {
    this.fed = true;
    const hello = this.hello;
    if (hello === undefined || this.link === undefined) return;
    switch (cmd.kind) {
      case 'catch_up':
        this.rebuild = undefined;
        if (this.state !== 'catching_up') this.startFeed(hello, 'catching_up', cmd.lsnFrom);
        this.catchUp = {
          sessionId: cmd.sessionId,
          lsnFrom: cmd.lsnFrom,
          lsnTarget: cmd.lsnTarget,
          bytesDone: 0,
          bytesTotal: this.decision?.costBytes ?? 0,
          startedMs: performance.now(),
        };
        if (!this.fromDisk || !this.diskFeedRunning) void this.feedFromDisk();
        return;
      case 'rebuild':
        this.catchUp = undefined;
        this.startRebuild(cmd, hello);
        return;
      case 'bitmap_resync': {
        if (this.dirty === undefined) {
          // Dropped since the decision (the volume grew): decided afresh on the next connect.
          const why = 'a bitmap resync was decided, but the dirty bitmap is gone';
          this.setState('needs_rebuild', why);
          this.primary.protocol({ type: 'session_failed', replica: this.address, sessionId: cmd.sessionId, failure: 'cancelled', message: why });
          this.link.close('reassigned', why);
          return;
        }
        this.catchUp = undefined;
        this.startRebuild(cmd, hello, true);
        return;
      }
      default:
        assertNever(cmd.kind);
    }
  }

  cancelSession(cmd: Extract<ProtocolCommand, { type: 'cancel_session' }>): void {
    const active = this.catchUp?.sessionId ?? this.rebuild?.sessionIdEngine;
    if (active !== cmd.sessionId) return;
    const why = `session ${cmd.sessionId} cancelled: ${cmd.failure}`;
    this.log.warn({ reason: why }, 'the protocol engine ended the session');
    this.catchUp = undefined;
    this.rebuild = undefined;
    this.setState('needs_rebuild', why);
    this.link?.close('reassigned', why);
  }

  private startFeed(hello: HelloFrame, state: 'syncing' | 'streaming' | 'catching_up' | 'rebuilding', lsnFrom = hello.lsnHead + 1): void {
    this.lsnSent = lsnFrom - 1;
    this.lsnFeedFrom = lsnFrom - 1;
    this.fromDisk = state === 'catching_up';
    this.backoffMs = this.primary.options.reconnectMinMs ?? 100;
    this.setState(state, undefined);
    this.log.info({ lsnReplica: hello.lsnHead, head: this.primary.head, nodeId: hello.nodeId, state }, 'replica connected');
    this.sendCommitNow();
  }

  // Streams retained WAL from disk until the in-memory backlog covers the
  // rest, then hands over to the backlog pump: one cursor (lsnSent), so no
  // gap and no duplicate. A read that fails (the WAL went) ends the link; the
  // next HELLO is decided afresh. Feeds a catch-up and a rebuild's WAL lane.
  private async feedFromDisk(): Promise<void> {
    const link = this.link;
    if (link === undefined) return;
    this.fromDisk = true;
    this.diskFeedRunning = true;
    try {
      await this.feedFromDiskOn(link);
    } finally {
      this.diskFeedRunning = false;
    }
  }

  private async feedFromDiskOn(link: ReplicationLink): Promise<void> {
    const volume = this.primary.volumeRef;
    const startedMs = performance.now();
    const lsnFrom = this.lsnSent + 1;
    let bytesSent = 0;
    let next: Promise<{ lsn: number; bytes: Buffer }[]> | undefined;
    const read = (lsn: number): Promise<{ lsn: number; bytes: Buffer }[]> => {
      const p = volume.readWalRecords(lsn, CATCH_UP_READ_BYTES);
      p.catch(() => undefined);
      return p;
    };
    const current = (): boolean => this.link === link && !link.closed && this.fromDisk;
    try {
      for (;;) {
        if (!current()) return;
        const floor = this.primary.backlogFirst;
        if ((floor > 0 && this.lsnSent + 1 >= floor) || this.lsnSent >= this.primary.head) break;
        const records = await (next ?? read(this.lsnSent + 1));
        next = undefined;
        if (!current()) return;
        const lsnLast = records[records.length - 1]!.lsn;
        // Read ahead while these go out.
        if (lsnLast < this.primary.head && !(floor > 0 && lsnLast + 1 >= floor)) next = read(lsnLast + 1);
        let more = true;
        for (let i = 0; i < records.length; ) {
          const group: WalRecord[] = [];
          let bytes = 0;
          while (i < records.length && group.length < RECORDS_PER_FRAME_MAX && (group.length === 0 || bytes + records[i]!.bytes.byteLength <= WAL_GROUP_BYTES_MAX)) {
            bytes += records[i]!.bytes.byteLength;
            group.push(records[i++]!);
          }
          this.lsnSent = group[group.length - 1]!.lsn;
          bytesSent += bytes;
          if (this.catchUp !== undefined) this.catchUp.bytesDone += bytes;
          more = link.send({ type: 'wal_records', epoch: this.primary.epoch, lsnCommit: this.takeCommit(), records: group });
        }
        this.sendSync();
        if (!more) await this.drained();
      }
    } catch (err) {
      if (!current()) return;
      const why = `WAL feed from disk stopped at LSN ${this.lsnSent}: ${(err as Error).message}`;
      this.log.warn({ reason: why }, 'feeding the replica from the WAL failed; the next connect decides afresh');
      link.close('reassigned', why);
      return;
    }
    this.log.info({ lsnFrom, lsnSent: this.lsnSent, bytes: bytesSent, ms: Math.round(performance.now() - startedMs), state: this.state }, 'fed from the WAL on disk; now from memory');
    this.fromDisk = false;
    // A catch-up stays a session until the replica has the target (onAck).
    if (this.state === 'catching_up') this.setState('syncing', undefined);
    this.schedulePump();
  }

  // Resolves once the link takes more (or closes).
  private drained(): Promise<void> {
    return new Promise<void>((resolve) => this.drainWaiters.push(resolve));
  }

  // ---- rebuild (the primary's side of a two-lane rebuild) ----

  // Starts (or resumes) a rebuild: REBUILD_START, then the WAL lane from the
  // base LSN (from disk while the backlog does not hold it) and the base lane
  // (this node's base.img, chunk by chunk with XXH3 digests) side by side.
  // A rebuild, or with resync a bitmap resync: the same two lanes, but the
  // base lane sends only the chunks the dirty bitmap marks (the others as
  // unchanged) and the replica keeps its base image.
  private startRebuild(cmd: Extract<ProtocolCommand, { type: 'start_session' }>, hello: HelloFrame, resync = false): void {
    const link = this.link;
    if (link === undefined) return;
    const v = this.primary.volumeRef;
    const cp = v.checkpointState();
    const saved = hello.rebuild;
    const resume = cmd.resumesSessionId !== undefined && saved !== undefined && saved.sessionId === cmd.resumesSessionId;
    const volumeBlocks = Math.ceil(v.sizeBytes / BLOCK_BYTES);
    const chunkBlocks = resume ? Math.ceil(volumeBlocks / Math.max(1, saved.chunksTotal)) : REBUILD_CHUNK_BLOCKS;
    const r: RebuildRun = {
      sessionId: resume ? saved.sessionId : cmd.sessionId,
      sessionIdEngine: cmd.sessionId,
      lsnBase: resume ? saved.baseLsn : cp.lsnCheckpoint,
      lsnTarget: v.lsnHead,
      chunkBlocks,
      volumeBlocks,
      chunksTotal: Math.ceil(volumeBlocks / chunkBlocks),
      chunkFrom: resume ? saved.chunksDone : 0,
      chunksSent: 0,
      chunksDone: resume ? saved.chunksDone : 0,
      bytesSent: 0,
      baseSent: false,
      startedMs: performance.now(),
      resumed: resume,
      resync: resync && !resume,
      chunksUnchanged: 0,
    };
    this.rebuild = r;
    link.send({
      type: 'rebuild_start',
      epoch: this.primary.epoch,
      sessionId: r.sessionId,
      lsnBase: r.lsnBase,
      lsnTarget: r.lsnTarget,
      applyChecksumBase: cp.applyChecksum,
      sizeBytes: cp.state.sizeBytes,
      features: cp.state.features,
      durabilityCode: durabilityCode(cp.state.durability),
      // The history up to the base (a resumed session's may lie below this checkpoint).
      ...(cp.epochStarts === undefined ? {} : { epochStarts: startsUpTo(cp.epochStarts, r.lsnBase) }),
      chunkBlocks: r.chunkBlocks,
      chunkFrom: r.chunkFrom,
      ...(r.resync ? { resync: true } : {}),
    });
    this.log.warn(
      { sessionId: r.sessionId, resumed: resume, lsnBase: r.lsnBase, lsnTarget: r.lsnTarget, chunkFrom: r.chunkFrom, chunksTotal: r.chunksTotal, reason: this.decision?.reason },
      r.resync ? 'bitmap resync started' : 'rebuild started',
    );
    // The WAL lane: a fresh session from the base LSN; a resumed one from what the replica holds.
    this.startFeed(hello, 'rebuilding', resume ? hello.lsnHead + 1 : r.lsnBase + 1);
    this.lsnReceived = this.lsnSent; // the WAL pin holds from here
    const floor = this.primary.backlogFirst;
    if (this.lsnSent < this.primary.head && (floor === 0 || this.lsnSent + 1 < floor)) void this.feedFromDisk();
    else this.schedulePump();
    void this.runBaseLane(link, r);
  }

  // Reads REBUILD_READS_IN_FLIGHT chunks ahead of the one being sent.
  private async runBaseLane(link: ReplicationLink, r: RebuildRun): Promise<void> {
    const v = this.primary.volumeRef;
    const current = (): boolean => this.link === link && !link.closed && this.rebuild === r;
    // data undefined: unchanged (a resync's chunk the dirty bitmap leaves out).
    const reads = new Map<number, Promise<{ lsnCheckpoint: number; data: Buffer | undefined }>>();
    let indexRead = r.chunkFrom;
    const readAhead = async (upTo: number): Promise<void> => {
      for (; indexRead < Math.min(upTo, r.chunksTotal); indexRead++) {
        const startBlock = indexRead * r.chunkBlocks;
        const blocks = Math.min(r.chunkBlocks, r.volumeBlocks - startBlock);
        // Every record up to now has marked its blocks: a chunk unmarked now
        // is unchanged up to lsnBase, and later records reach the replica
        // through the WAL lane. A bitmap gone meanwhile leaves none unchanged.
        if (r.resync && this.dirty !== undefined && !this.dirty.anyIn(startBlock, blocks)) {
          reads.set(indexRead, Promise.resolve({ lsnCheckpoint: v.lsnCheckpoint, data: undefined }));
          continue;
        }
        await this.primary.rebuildThrottle(blocks * BLOCK_BYTES);
        // Noted before the read: the chunk holds at least this checkpoint.
        const lsnCheckpoint = v.lsnCheckpoint;
        const read = v.readBaseBlocks(startBlock, blocks).then((data) => ({ lsnCheckpoint, data }));
        read.catch(() => undefined);
        reads.set(indexRead, read);
      }
    };
    try {
      for (let index = r.chunkFrom; index < r.chunksTotal; index++) {
        await readAhead(index + REBUILD_READS_IN_FLIGHT);
        if (!current()) return;
        const { lsnCheckpoint, data } = await reads.get(index)!;
        reads.delete(index);
        if (!current()) return;
        if (data === undefined) {
          const startBlock = index * r.chunkBlocks;
          const more = link.send({
            type: 'base_chunk',
            epoch: this.primary.epoch,
            sessionId: r.sessionId,
            index,
            startBlock,
            blocks: Math.min(r.chunkBlocks, r.volumeBlocks - startBlock),
            lsnCheckpoint,
            digest: 0n,
            zero: false,
            data: undefined,
            unchanged: true,
          });
          r.chunksSent++;
          r.chunksUnchanged++;
          if (!more) await this.drained();
          continue;
        }
        const zero = isZeroChunk(data);
        const more = link.send({
          type: 'base_chunk',
          epoch: this.primary.epoch,
          sessionId: r.sessionId,
          index,
          startBlock: index * r.chunkBlocks,
          blocks: data.byteLength / BLOCK_BYTES,
          lsnCheckpoint,
          digest: zero ? zeroChunk(data.byteLength).digest : xxh3Digest(data),
          zero,
          data: zero ? undefined : data,
        });
        r.chunksSent++;
        r.bytesSent += data.byteLength;
        if (!more) await this.drained();
      }
      r.baseSent = true;
      this.log.info({ sessionId: r.sessionId, resync: r.resync, chunks: r.chunksSent, unchanged: r.chunksUnchanged, bytes: r.bytesSent, ms: Math.round(performance.now() - r.startedMs) }, 'rebuild: base lane sent');
    } catch (err) {
      if (!current()) return;
      const why = `rebuild base lane stopped at chunk ${r.chunkFrom + r.chunksSent}: ${(err as Error).message}`;
      this.log.warn({ reason: why }, 'rebuild interrupted; the next connect decides afresh');
      link.close('reassigned', why);
    }
  }

  private onSessionAck(ack: SessionAckFrame): void {
    const r = this.rebuild;
    if (r === undefined || ack.sessionId !== r.sessionId) return; // stale: an older session's
    r.chunksDone = Math.max(r.chunksDone, ack.chunksDone);
    const replica = this.address;
    switch (ack.phase) {
      case 'accepted':
      case 'running':
      case 'base_done':
        this.primary.protocol({ type: 'session_progress', replica, sessionId: r.sessionIdEngine, lsnApplied: ack.lsnApplied, bytesDone: r.bytesSent, baseDone: r.baseSent && ack.chunksDone >= r.chunksTotal });
        return;
      case 'failed': {
        const why = `rebuild session ${r.sessionId} failed on the replica (${ack.failure ?? 'unknown'}): ${ack.message}`;
        this.log.warn({ reason: why }, 'rebuild failed; the next connect decides afresh');
        this.rebuild = undefined;
        this.setState('needs_rebuild', why);
        this.primary.protocol({ type: 'session_failed', replica, sessionId: r.sessionIdEngine, failure: ack.failure ?? 'cancelled', message: ack.message });
        this.link?.close('reassigned', why);
        return;
      }
      case 'completed':
        // The engine's completion gate: every chunk sent and durable there
        // with matching digests, and the replica at or past the target.
        this.log.info({ sessionId: r.sessionId, lsnAchieved: ack.lsnAchieved, bytes: r.bytesSent, ms: Math.round(performance.now() - r.startedMs) }, 'rebuild reported complete');
        this.primary.protocol({
          type: 'session_completed',
          replica,
          sessionId: r.sessionIdEngine,
          lsnAchieved: ack.lsnAchieved,
          baseDone: r.baseSent && ack.chunksDone >= r.chunksTotal,
          digestsMatch: ack.digestsMatch,
        });
        return;
      default:
        assertNever(ack.phase);
    }
  }

  private onAck(ack: AckFrame): void {
    if (!this.feeding) return;
    if (ack.lsnReceived > this.lsnSent || ack.lsnDurable > ack.lsnReceived || ack.lsnApplied > ack.lsnReceived) {
      this.link?.close('bad_frame', `ACK ${ack.lsnReceived}/${ack.lsnDurable}/${ack.lsnApplied} beyond what was sent (${this.lsnSent})`);
      return;
    }
    this.lsnReceived = Math.max(this.lsnReceived, ack.lsnReceived);
    this.lsnDurable = Math.max(this.lsnDurable, ack.lsnDurable);
    // As reported, not the highest seen: a rebuild moves a replica's
    // checkpoint back to its base LSN (ACKs on a link come in order).
    this.lsnCheckpointReplica = Math.min(ack.lsnCheckpoint, ack.lsnApplied);
    if (ack.lsnApplied >= this.lsnApplied) {
      this.lsnApplied = ack.lsnApplied;
      this.applyChecksum = ack.applyChecksum;
      if (!this.checkChain(ack.lsnApplied, ack.applyChecksum)) return;
    }
    if (this.state === 'syncing' && this.lsnReceived >= this.primary.head) this.setState('streaming', undefined);
    const c = this.catchUp;
    if (c !== undefined && !c.reported && this.lsnReceived >= c.lsnTarget) {
      c.reported = true;
      this.primary.protocol({ type: 'session_completed', replica: this.address, sessionId: c.sessionId, lsnAchieved: this.lsnReceived, baseDone: true, digestsMatch: true });
    }
    if (this.state === 'streaming') this.primary.rejoin(this);
    this.primary.settle();
  }

  // Divergence: the replica's chain must equal ours at the same LSN
  // (undefined: we no longer know ours there).
  private chainMatches(lsn: number, theirs: ApplyChecksum): boolean | undefined {
    const ours = this.primary.applyChecksumAt(lsn);
    return ours === undefined ? undefined : ours === theirs;
  }

  private alarmChain(lsn: number, theirs: ApplyChecksum): void {
    const ours = this.primary.applyChecksumAt(lsn) ?? 0n;
    this.log.error(
      { lsn, ours: applyChecksumToHex(ours), theirs: applyChecksumToHex(theirs) },
      'ALARM: apply checksum mismatch: the replica diverged and needs a rebuild',
    );
  }

  private checkChain(lsn: number, theirs: ApplyChecksum): boolean {
    if (this.chainMatches(lsn, theirs) !== false) return true;
    this.alarmChain(lsn, theirs);
    const ours = this.primary.applyChecksumAt(lsn) ?? 0n;
    this.fail(undefined, `apply checksum mismatch at LSN ${lsn}: ours ${applyChecksumToHex(ours)}, replica ${applyChecksumToHex(theirs)}; needs a rebuild`);
    return false;
  }

  // A microtask: the records appended in this turn go out in one frame, and
  // before the local WAL's own submission (queued after this by the append),
  // so the replica works while this node's disk does.
  schedulePump(): void {
    if (this.pumpScheduled || !this.feeding || this.fromDisk) return;
    this.pumpScheduled = true;
    queueMicrotask(() => {
      this.pumpScheduled = false;
      this.pump();
    });
  }

  // Sends records after lsnSent while the link takes them, and a SYNC behind
  // them when one is wanted, in one socket write.
  private pump(): void {
    const link = this.link;
    if (link === undefined || link.closed || !this.feeding || this.fromDisk) return;
    link.batch(() => this.pumpOn(link));
  }

  private pumpOn(link: ReplicationLink): void {
    const head = this.primary.head;
    while (this.lsnSent < head) {
      const records: WalRecord[] = [];
      let bytes = 0;
      for (let lsn = this.lsnSent + 1; lsn <= head && records.length < RECORDS_PER_FRAME_MAX; lsn++) {
        const record = this.primary.backlogRecord(lsn);
        if (record === undefined) {
          this.fellBehind(link);
          return;
        }
        if (records.length > 0 && bytes + record.byteLength > WAL_GROUP_BYTES_MAX) break;
        records.push({ lsn, bytes: record });
        bytes += record.byteLength;
      }
      this.lsnSent = records[records.length - 1]!.lsn;
      const more = link.send({ type: 'wal_records', epoch: this.primary.epoch, lsnCommit: this.takeCommit(), records });
      if (!more) return; // onDrain pumps again
    }
    this.sendSync();
  }

  // The backlog moved past what this replica was sent: report it again, as
  // of the records in flight (the WAL on disk may still hold the gap).
  private fellBehind(link: ReplicationLink): void {
    const facts: ReplicaFacts = { epoch: this.primary.epoch, lsnReceived: this.lsnSent, lsnDurable: this.lsnDurable, lsnApplied: this.lsnApplied, chainMatches: undefined };
    this.log.warn({ lsnSent: this.lsnSent, backlogFirst: this.primary.backlogFirst }, 'replica fell behind the in-memory backlog');
    this.fed = false;
    this.primary.protocol({ type: 'replica_lost', replica: this.address, reason: 'fell behind the in-memory backlog' });
    this.primary.report(this, facts, this.lsnSent);
    if (!this.fed && !link.closed) {
      this.setState('needs_rebuild', 'fell behind the in-memory backlog and no feed was decided');
      link.close('reassigned', this.reason!);
    }
  }

  // What this replica still holds should it crash now: the records it made
  // durable, or at least those its WAL held when this feed started; never
  // more than it received. Records it received but had not made durable are
  // gone after a SIGKILL, and it asks for them again (or resumes its rebuild)
  // from here, so the WAL is kept from here, not from what it received.
  get lsnKept(): number {
    return Math.min(this.lsnReceived, Math.max(this.lsnDurable, this.lsnFeedFrom));
  }

  // The replica is to be durable up to lsn: a SYNC once the records are sent.
  requestSync(lsn: number): void {
    if (lsn <= this.lsnDurable || lsn <= this.lsnSyncWanted) return;
    this.lsnSyncWanted = lsn;
    if (this.lsnSent >= lsn) this.sendSync();
    else this.schedulePump();
  }

  // Records go out on the link (from memory or, catching up, from disk).
  private get feeding(): boolean {
    return this.state === 'streaming' || this.state === 'syncing' || this.state === 'catching_up' || this.state === 'rebuilding';
  }

  private sendSync(): void {
    const lsn = Math.min(this.lsnSyncWanted, this.lsnSent);
    if (lsn <= this.lsnSyncSent || lsn <= this.lsnDurable || this.link === undefined || this.link.closed) return;
    if (!this.feeding) return;
    this.lsnSyncSent = lsn;
    this.link.send({ type: 'sync', epoch: this.primary.epoch, lsnSync: lsn });
  }

  // The commit LSN moved on: the next WAL_RECORDS frame carries it, or a
  // COMMIT frame once COMMIT_LINGER_MS passes without one.
  sendCommit(lsn: number): void {
    if (this.link === undefined || this.link.closed || lsn <= this.lsnCommitSent || !this.feeding) return;
    this.commitLinger.arm();
  }

  private sendCommitNow(): void {
    const lsn = this.takeCommit();
    if (lsn === 0 || this.link === undefined || this.link.closed || !this.feeding) return;
    this.link.send({ type: 'commit', epoch: this.primary.epoch, lsnCommit: lsn });
  }

  // The commit LSN not yet sent on this link (0: nothing new), counted as sent.
  private takeCommit(): number {
    const lsn = this.primary.commitLsn;
    if (lsn <= this.lsnCommitSent) return 0;
    this.lsnCommitSent = lsn;
    return lsn;
  }

  private onLinkClose(link: ReplicationLink, reason: LinkCloseReason): void {
    if (this.link !== link) return;
    this.link = undefined;
    if (!this.stopped) this.startDirty(this.state);
    this.commitLinger.cancel();
    this.primary.protocol({ type: 'replica_lost', replica: this.address, reason: describeClose(reason) });
    this.catchUp = undefined;
    this.fromDisk = false;
    // A rebuild cut short resumes on the next connect (the replica persisted
    // its progress); the WAL pin keeps its lane meanwhile.
    this.rebuild = undefined;
    for (const waiter of this.drainWaiters.splice(0)) waiter();
    if (this.stopped) {
      this.setState('closed', undefined);
      return;
    }
    if (reason.kind === 'peer_closed' && reason.code === 'stale_epoch') {
      // The replica has seen a newer epoch than ours: we are deposed.
      this.primary.stepDown(this.primary.epoch + 1, this.address);
      return;
    }
    const why = describeClose(reason);
    if (this.state === 'failed' || this.state === 'needs_rebuild') {
      this.scheduleRetry(this.primary.options.reconnectMaxMs ?? 5000);
      return;
    }
    this.retry(why);
  }

  private retry(why: string): void {
    if (this.stopped) return;
    this.setState('reconnecting', why);
    this.log.info({ reason: why, retryInMs: this.backoffMs }, 'replica link down; reconnecting');
    this.scheduleRetry(this.backoffMs);
    this.backoffMs = Math.min(this.backoffMs * 2, this.primary.options.reconnectMaxMs ?? 5000);
  }

  private scheduleRetry(ms: number): void {
    if (this.stopped) return;
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      this.connect();
    }, ms);
    this.retryTimer.unref();
  }

  private fail(code: 'role_conflict' | 'wrong_volume' | undefined, why: string): void {
    this.setState('failed', why);
    this.log.error({ reason: why }, 'replica cannot be fed');
    this.link?.close(code ?? 'reassigned', why);
  }

  private setState(state: PeerState, reason: string | undefined): void {
    this.state = state;
    this.reason = reason;
    // Current again: should it go away once more, a new bitmap starts from there.
    if (state === 'streaming' && this.dirty !== undefined && !this.dirtyClosed) this.dropDirty(undefined);
  }

  close(code: 'stepping_down' | 'shutdown', message: string): void {
    this.link?.close(code, message, 'goodbye');
  }

  async shutdown(): Promise<void> {
    this.stopped = true;
    if (this.retryTimer !== undefined) clearTimeout(this.retryTimer);
    this.commitLinger.cancel();
    const link = this.link;
    if (link === undefined || link.closed) {
      this.setState('closed', undefined);
      return;
    }
    await new Promise<void>((resolve) => {
      const prev = link.onClose;
      link.onClose = (reason) => {
        prev(reason);
        resolve();
      };
      link.close('shutdown', 'primary stopping', 'goodbye');
    });
  }

  status(): Omit<ReplicaPeerStatus, 'lagLsn' | 'lagBytes' | 'lagSeconds' | 'retention'> {
    return {
      address: this.address,
      nodeId: this.nodeId,
      state: this.state,
      reason: this.reason,
      inAckSet: this.inAckSet,
      lsnSent: this.lsnSent,
      lsnReceived: this.lsnReceived,
      lsnDurable: this.lsnDurable,
      lsnApplied: this.lsnApplied,
      applyChecksum: this.applyChecksum === undefined ? undefined : applyChecksumToHex(this.applyChecksum),
      connects: this.connects,
      decision: this.decision,
      catchUp: this.catchUpStatus(),
      rebuild: this.rebuildStatus(),
      dirtyBitmap: this.dirty?.facts(),
      completed: { catchUps: this.catchUpsCompleted, rebuilds: this.rebuildsCompleted },
    };
  }

  // A progress line for a running session (bytes, rate, ETA), for the logs.
  logProgress(): void {
    const c = this.catchUpStatus();
    if (c !== undefined) {
      this.log.info({ bytesDone: c.bytesDone, bytesTotal: c.bytesTotal, bytesPerSecond: c.bytesPerSecond, etaSeconds: roundOrUndefined(c.etaSeconds) }, 'catch-up progress');
    }
    const r = this.rebuildStatus();
    if (r !== undefined) {
      this.log.info(
        { sessionId: r.sessionId, bytesSent: r.bytesSent, bytesTotal: r.bytesTotal, chunksDone: r.chunksDone, chunksTotal: r.chunksTotal, bytesPerSecond: r.bytesPerSecond, etaSeconds: roundOrUndefined(r.etaSeconds) },
        'rebuild progress',
      );
    }
  }

  private rebuildStatus(): ReplicaPeerStatus['rebuild'] {
    const r = this.rebuild;
    if (r === undefined) return undefined;
    const seconds = (performance.now() - r.startedMs) / 1000;
    const bytesPerSecond = seconds > 0 ? Math.round(r.bytesSent / seconds) : 0;
    // A resync moves about what the decision estimated.
    const bytesTotal = r.resync ? Math.max(r.bytesSent, this.decision?.costBytes ?? 0) : Math.max(0, r.volumeBlocks - r.chunkFrom * r.chunkBlocks) * BLOCK_BYTES;
    return {
      sessionId: r.sessionId,
      resumed: r.resumed,
      resync: r.resync,
      lsnBase: r.lsnBase,
      lsnTarget: r.lsnTarget,
      chunksTotal: r.chunksTotal,
      chunksSent: r.chunkFrom + r.chunksSent,
      chunksUnchanged: r.chunksUnchanged,
      chunksDone: r.chunksDone,
      bytesSent: r.bytesSent,
      bytesTotal,
      bytesPerSecond,
      etaSeconds: bytesPerSecond > 0 ? Math.max(0, bytesTotal - r.bytesSent) / bytesPerSecond : undefined,
    };
  }

  private catchUpStatus(): ReplicaPeerStatus['catchUp'] {
    const c = this.catchUp;
    if (c === undefined) return undefined;
    const seconds = (performance.now() - c.startedMs) / 1000;
    const bytesPerSecond = seconds > 0 ? Math.round(c.bytesDone / seconds) : 0;
    const left = Math.max(0, c.bytesTotal - c.bytesDone);
    return {
      lsnFrom: c.lsnFrom,
      lsnTarget: c.lsnTarget,
      bytesDone: c.bytesDone,
      bytesTotal: c.bytesTotal,
      bytesPerSecond,
      etaSeconds: bytesPerSecond > 0 ? left / bytesPerSecond : undefined,
    };
  }
}
