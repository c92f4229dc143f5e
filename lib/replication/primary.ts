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
import type { AckGate } from '../node/volume_backend';
import { DURABILITY_MODES, type DurabilityMode } from '../statemachine/control';
import { applyChecksumToHex, type ApplyChecksum } from './apply_checksum';
import { checkEpoch } from './epoch';
import type { AckFrame, Frame, HelloFrame, WalRecord } from './frames';
import { WAL_GROUP_BYTES_MAX } from './frames';
import { describeClose, type LinkCloseReason, ReplicationLink } from './link';

export { DURABILITY_MODES, type DurabilityMode };

export type PeerState = 'connecting' | 'syncing' | 'streaming' | 'reconnecting' | 'needs_catchup' | 'failed' | 'closed';

export interface ReplicaAddress {
  host: string;
  port: number;
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
}

export interface PrimaryReplicationStatus {
  role: 'primary';
  durability: DurabilityMode;
  mode: 'healthy' | 'degraded' | 'fenced';
  reason: string | undefined;
  epoch: number;
  lsnCommit: number;
  ackSet: string[];
  backlog: { lsnFirst: number; lsnLast: number; bytes: number; bytesMax: number };
  replicas: ReplicaPeerStatus[];
}

const RECORDS_PER_FRAME_MAX = 4096;

interface BacklogEntry {
  lsn: number;
  bytes: Buffer;
  applyChecksum: ApplyChecksum; // the chain after this record
  atMs: number;
}

// Contiguous LSNs, oldest first; bounded by bytes.
class Backlog {
  private entries: BacklogEntry[] = [];
  private start = 0;
  bytes = 0;

  constructor(readonly bytesMax: number) {}

  get lsnFirst(): number {
    return this.start < this.entries.length ? this.entries[this.start]!.lsn : 0;
  }
  get lsnLast(): number {
    return this.entries.length > this.start ? this.entries[this.entries.length - 1]!.lsn : 0;
  }

  push(entry: BacklogEntry): void {
    this.entries.push(entry);
    this.bytes += entry.bytes.byteLength;
    while (this.bytes > this.bytesMax && this.entries.length - this.start > 1) {
      this.bytes -= this.entries[this.start]!.bytes.byteLength;
      this.entries[this.start] = undefined as unknown as BacklogEntry;
      this.start++;
    }
    if (this.start > 4096 && this.start * 2 > this.entries.length) {
      this.entries = this.entries.slice(this.start);
      this.start = 0;
    }
  }

  get(lsn: number): BacklogEntry | undefined {
    const first = this.lsnFirst;
    if (first === 0 || lsn < first) return undefined;
    return this.entries[this.start + (lsn - first)];
  }

  // Bytes of records in (fromLsn, toLsn] still held.
  bytesBetween(fromLsn: number, toLsn: number): number {
    let sum = 0;
    for (let lsn = Math.max(fromLsn + 1, this.lsnFirst); lsn <= toLsn; lsn++) sum += this.get(lsn)?.bytes.byteLength ?? 0;
    return sum;
  }
}

interface Waiter {
  lsn: number;
  durable: boolean;
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
  private fenced: BlockwalError | undefined;
  private degradedReason: string | undefined;
  private lsnCommit = 0;
  private readonly timer: NodeJS.Timeout;
  private durableInFlight = false;
  private membershipWrite: Promise<void> = Promise.resolve();
  private closed = false;
  readonly ackTimeoutMs: number;
  private readonly membershipPath: string;

  private constructor(readonly options: PrimaryReplicationOptions) {
    this.volume = options.volume;
    this.durability = options.durability;
    this.log = options.logger.child({ replication: 'primary' });
    this.ackTimeoutMs = options.ackTimeoutMs ?? 5000;
    this.backlog = new Backlog(options.backlogBytes ?? 256 << 20);
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
      r.backlog.push({ lsn: rec.lsn, bytes: rec.bytes, applyChecksum: rec.applyChecksum, atMs: now });
    }
    if (r.backlog.lsnLast !== 0) r.log.info({ lsnFirst: r.backlog.lsnFirst, lsnLast: r.backlog.lsnLast, bytes: r.backlog.bytes }, 'backlog seeded from the WAL');
    for (const p of r.peers) p.connect();
    return r;
  }

  // Volume hook: each record as it gets its LSN (synchronously, in order).
  onRecord(record: ShippedRecord): void {
    this.backlog.push({ lsn: record.lsn, bytes: record.bytes, applyChecksum: this.volume.applyChecksum, atMs: performance.now() });
    for (const p of this.peers) p.schedulePump();
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

  admit(): void {
    if (this.fenced !== undefined) throw this.fenced;
  }

  written(lsn: number, fua: boolean): Promise<void> {
    return this.wait(lsn, fua);
  }

  flushed(lsn: number): Promise<void> {
    return this.wait(lsn, true);
  }

  private wait(lsn: number, durable: boolean): Promise<void> {
    if (this.fenced !== undefined) return Promise.reject(this.fenced);
    if (this.satisfied(lsn, durable)) return Promise.resolve();
    if (durable) for (const p of this.peers) p.requestSync(lsn);
    return new Promise<void>((resolve, reject) => this.waiters.push({ lsn, durable, resolve, reject }));
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
      for (const w of this.waiters) {
        if (w.lsn <= (w.durable ? durable : received)) w.resolve();
        else keep.push(w);
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
      const oldest = Math.min(...this.waiters.map((w) => w.lsn));
      const entry = this.backlog.get(oldest);
      const waitedMs = entry === undefined ? 0 : now - entry.atMs;
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
    return {
      role: 'primary',
      durability: this.durability,
      mode: this.fenced !== undefined ? 'fenced' : this.degradedReason !== undefined ? 'degraded' : 'healthy',
      reason: this.fenced?.message ?? this.degradedReason,
      epoch: this.volume.epoch,
      lsnCommit: this.lsnCommit,
      ackSet: this.peers.filter((p) => p.inAckSet).map((p) => p.address),
      backlog: { lsnFirst: this.backlog.lsnFirst, lsnLast: this.backlog.lsnLast, bytes: this.backlog.bytes, bytesMax: this.backlog.bytesMax },
      replicas: this.peers.map((p) => {
        const oldest = this.backlog.get(p.lsnReceived + 1);
        return {
          ...p.status(),
          lagLsn: Math.max(0, head - p.lsnReceived),
          lagBytes: this.backlog.bytesBetween(p.lsnReceived, head),
          lagSeconds: p.lsnReceived >= head || oldest === undefined ? 0 : (now - oldest.atMs) / 1000,
        };
      }),
    };
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.timer);
    // What is written locally is acknowledged by then or refused.
    const err = new BlockwalError('ERR_CLOSED', 'replication closed');
    for (const w of this.waiters.splice(0)) w.reject(err);
    await Promise.all(this.peers.map((p) => p.shutdown()));
    await this.membershipWrite.catch(() => undefined);
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
  applyChecksum: ApplyChecksum | undefined;
  connects = 0;
  private link: ReplicationLink | undefined;
  private pumpScheduled = false;
  private lsnCommitSent = 0;
  // Durability asked of the replica (SYNC): the most wanted, the most sent.
  private lsnSyncWanted = 0;
  private lsnSyncSent = 0;
  private backoffMs: number;
  private retryTimer: NodeJS.Timeout | undefined;
  private stopped = false;
  private readonly log: Logger;

  constructor(
    private readonly primary: PrimaryReplication,
    readonly to: ReplicaAddress,
    log: Logger,
  ) {
    this.address = `${to.host}:${to.port}`;
    this.log = log.child({ replica: this.address });
    this.backoffMs = primary.options.reconnectMinMs ?? 100;
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
    link.onDrain = () => this.schedulePump();
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
    this.lsnReceived = hello.lsnHead;
    this.lsnDurable = hello.lsnDurable;
    this.lsnApplied = hello.lsnApplied;
    this.applyChecksum = hello.applyChecksum;
    const head = this.primary.head;
    if (hello.lsnHead > head) {
      this.fail(undefined, `divergent: the replica holds LSNs up to ${hello.lsnHead}, beyond this primary's head ${head}; it needs a rebuild`);
      return;
    }
    if (!this.checkChain(hello.lsnApplied, hello.applyChecksum)) return;
    if (hello.lsnHead < head && this.primary.backlogEntry(hello.lsnHead + 1) === undefined) {
      this.setState('needs_catchup', `the replica is at LSN ${hello.lsnHead}; the in-memory backlog starts at ${this.primary.backlogFirst}: it needs a WAL catch-up or rebuild`);
      this.log.warn({ lsnReplica: hello.lsnHead, head }, this.reason);
      this.link?.close('reassigned', this.reason!);
      return;
    }
    this.lsnSent = hello.lsnHead;
    this.backoffMs = this.primary.options.reconnectMinMs ?? 100;
    this.setState(hello.lsnHead < head ? 'syncing' : 'streaming', undefined);
    this.log.info({ lsnReplica: hello.lsnHead, head, nodeId: hello.nodeId }, 'replica connected');
    this.sendCommit(this.primary.commitLsn);
    this.schedulePump();
  }

  private onAck(ack: AckFrame): void {
    if (this.state !== 'streaming' && this.state !== 'syncing') return;
    if (ack.lsnReceived > this.lsnSent || ack.lsnDurable > ack.lsnReceived || ack.lsnApplied > ack.lsnReceived) {
      this.link?.close('bad_frame', `ACK ${ack.lsnReceived}/${ack.lsnDurable}/${ack.lsnApplied} beyond what was sent (${this.lsnSent})`);
      return;
    }
    this.lsnReceived = Math.max(this.lsnReceived, ack.lsnReceived);
    this.lsnDurable = Math.max(this.lsnDurable, ack.lsnDurable);
    if (ack.lsnApplied >= this.lsnApplied) {
      this.lsnApplied = ack.lsnApplied;
      this.applyChecksum = ack.applyChecksum;
      if (!this.checkChain(ack.lsnApplied, ack.applyChecksum)) return;
    }
    if (this.state === 'syncing' && this.lsnReceived >= this.primary.head) this.setState('streaming', undefined);
    if (this.state === 'streaming') this.primary.rejoin(this);
    this.primary.settle();
  }

  // Divergence: the replica's chain must equal ours at the same LSN.
  private checkChain(lsn: number, theirs: ApplyChecksum): boolean {
    const ours = this.primary.applyChecksumAt(lsn);
    if (ours === undefined || ours === theirs) return true;
    this.log.error(
      { lsn, ours: applyChecksumToHex(ours), theirs: applyChecksumToHex(theirs) },
      'ALARM: apply checksum mismatch: the replica diverged and needs a rebuild',
    );
    this.fail(undefined, `apply checksum mismatch at LSN ${lsn}: ours ${applyChecksumToHex(ours)}, replica ${applyChecksumToHex(theirs)}; needs a rebuild`);
    return false;
  }

  // A microtask: the records appended in this turn go out in one frame, and
  // before the local WAL's own submission (queued after this by the append),
  // so the replica works while this node's disk does.
  schedulePump(): void {
    if (this.pumpScheduled || (this.state !== 'streaming' && this.state !== 'syncing')) return;
    this.pumpScheduled = true;
    queueMicrotask(() => {
      this.pumpScheduled = false;
      this.pump();
    });
  }

  // Sends records after lsnSent while the link takes them.
  private pump(): void {
    const link = this.link;
    if (link === undefined || link.closed || (this.state !== 'streaming' && this.state !== 'syncing')) return;
    const head = this.primary.head;
    while (this.lsnSent < head) {
      const records: WalRecord[] = [];
      let bytes = 0;
      for (let lsn = this.lsnSent + 1; lsn <= head && records.length < RECORDS_PER_FRAME_MAX; lsn++) {
        const e = this.primary.backlogEntry(lsn);
        if (e === undefined) {
          this.setState('needs_catchup', `the replica fell behind the in-memory backlog at LSN ${lsn}: it needs a WAL catch-up or rebuild`);
          this.log.warn(this.reason!);
          link.close('reassigned', this.reason!);
          return;
        }
        if (records.length > 0 && bytes + e.bytes.byteLength > WAL_GROUP_BYTES_MAX) break;
        records.push({ lsn, bytes: e.bytes });
        bytes += e.bytes.byteLength;
      }
      this.lsnSent = records[records.length - 1]!.lsn;
      const more = link.send({ type: 'wal_records', epoch: this.primary.epoch, records });
      if (!more) return; // onDrain pumps again
    }
    this.sendSync();
  }

  // The replica is to be durable up to lsn: a SYNC once the records are sent.
  requestSync(lsn: number): void {
    if (lsn <= this.lsnDurable || lsn <= this.lsnSyncWanted) return;
    this.lsnSyncWanted = lsn;
    if (this.lsnSent >= lsn) this.sendSync();
    else this.schedulePump();
  }

  private sendSync(): void {
    const lsn = Math.min(this.lsnSyncWanted, this.lsnSent);
    if (lsn <= this.lsnSyncSent || lsn <= this.lsnDurable || this.link === undefined || this.link.closed) return;
    if (this.state !== 'streaming' && this.state !== 'syncing') return;
    this.lsnSyncSent = lsn;
    this.link.send({ type: 'sync', epoch: this.primary.epoch, lsnSync: lsn });
  }

  sendCommit(lsn: number): void {
    if (this.link === undefined || this.link.closed || lsn <= this.lsnCommitSent) return;
    if (this.state !== 'streaming' && this.state !== 'syncing') return;
    this.lsnCommitSent = lsn;
    this.link.send({ type: 'commit', epoch: this.primary.epoch, lsnCommit: lsn });
  }

  private onLinkClose(link: ReplicationLink, reason: LinkCloseReason): void {
    if (this.link !== link) return;
    this.link = undefined;
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
    if (this.state === 'failed' || this.state === 'needs_catchup') {
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
  }

  close(code: 'stepping_down' | 'shutdown', message: string): void {
    this.link?.close(code, message, 'goodbye');
  }

  async shutdown(): Promise<void> {
    this.stopped = true;
    if (this.retryTimer !== undefined) clearTimeout(this.retryTimer);
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

  status(): Omit<ReplicaPeerStatus, 'lagLsn' | 'lagBytes' | 'lagSeconds'> {
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
    };
  }
}
