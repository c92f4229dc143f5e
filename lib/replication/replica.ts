// The replica's side of WAL shipping: it listens for its primary, appends the
// records it is sent to its own WAL, acknowledges at once (received = taken
// into the WAL, in LSN order), makes them durable when the primary asks
// (SYNC: a FLUSH or FUA there, or the commit LSN moving on) and acknowledges
// again (durable, applied + the chained checksum), and applies them only up
// to the primary's commit LSN.
//
// Rules (DESIGN.md §4):
//  - one primary link at a time; a newer link from the same or a higher
//    epoch replaces the old one;
//  - every frame's epoch is checked: a lower epoch is refused (ERROR
//    stale_epoch, nothing appended); a higher one is persisted to the
//    superblock before the frame is acted on;
//  - a pristine volume takes the primary's volume UUID; otherwise a HELLO
//    for another volume is refused (wrong_volume);
//  - a record that does not verify or does not carry the next LSN closes the
//    link; the volume is left as it was (it never got the record).
import { epochOpenedBy } from '../statemachine/epoch_history';
import * as net from 'node:net';

import type { Logger } from 'pino';

import type { Volume } from '../engine/volume';
import { applyChecksumToHex } from './apply_checksum';
import { checkEpoch } from './epoch';
import type { CloseCode, Frame, HelloFrame, WalRecordsFrame } from './frames';
import { describeClose, ReplicationLink } from './link';
import { ReplicaRebuild, type ReplicaRebuildStatus } from './replica_rebuild';
import { Linger } from '../util/linger';

// Received record bytes not yet written to the WAL: the socket is not read
// above the high mark until they drop below the low one.
const OUTSTANDING_BYTES_HIGH = 64 << 20;
const OUTSTANDING_BYTES_LOW = 16 << 20;
// An ACK that only reports progress nobody waits for (applied, durable
// without a SYNC) waits this long for the next ACK to carry it.
const ACK_LINGER_MS = 1;
// How long the replica's WAL keeps its open group open for more records
// (Volume.setWalGroupHold): its acknowledgements wait for no WAL write, a SYNC
// or a FUA record ends the hold at once, and each group write costs a
// submission whatever its size (README: the replica's WAL group hold).
export const WAL_GROUP_HOLD_US_DEFAULT = 2000;

export interface ReplicaReplicationOptions {
  volume: Volume;
  nodeId: string;
  listen: { host: string; port: number };
  logger: Logger;
  heartbeatIntervalMs?: number;
  idleTimeoutMs?: number;
  // WAL_GROUP_HOLD_US_DEFAULT unless set; 0 writes each group at once.
  walGroupHoldUs?: number;
}

export type ReplicaLinkState = 'waiting' | 'streaming';

export interface ReplicaReplicationStatus {
  role: 'replica';
  state: ReplicaLinkState;
  listen: string;
  primary: { address: string; nodeId: string } | undefined;
  epoch: number;
  lsnReceived: number;
  lsnDurable: number;
  lsnApplied: number;
  lsnCommit: number;
  applyChecksum: string;
  lastClose: string | undefined;
  framesRefused: number;
  rebuild: ReplicaRebuildStatus | undefined;
}

export class ReplicaReplication {
  private readonly volume: Volume;
  private readonly log: Logger;
  private readonly server: net.Server;
  private current: PrimaryLink | undefined;
  private readonly links = new Set<ReplicationLink>();
  private lsnCommit = 0;
  lastClose: string | undefined;
  framesRefused = 0;
  private closed = false;
  private boundPort = 0;
  readonly rebuild: ReplicaRebuild;

  private constructor(readonly options: ReplicaReplicationOptions) {
    this.volume = options.volume;
    this.log = options.logger.child({ replication: 'replica' });
    this.server = net.createServer((socket) => this.accept(socket));
    this.rebuild = new ReplicaRebuild(this.volume, this.log);
    this.rebuild.onAck = (ack) => this.current?.link.send(ack);
    // A chunk from an earlier link is not that link's decoder's: ignored.
    this.rebuild.onDataDone = (data) => this.current?.link.releaseBody(data);
    this.rebuild.onCompleted = (ack) => {
      if (this.current !== undefined) this.current.link.send(ack);
      else this.log.warn('rebuild completed with no primary connected: the next one learns it from the HELLO');
    };
  }

  static async start(options: ReplicaReplicationOptions): Promise<ReplicaReplication> {
    const r = new ReplicaReplication(options);
    options.volume.setWalGroupHold(options.walGroupHoldUs ?? WAL_GROUP_HOLD_US_DEFAULT);
    r.rebuild.restore();
    await new Promise<void>((resolve, reject) => {
      r.server.once('error', reject);
      r.server.listen(options.listen.port, options.listen.host, () => {
        r.server.off('error', reject);
        resolve();
      });
    });
    r.boundPort = (r.server.address() as net.AddressInfo).port;
    r.server.on('error', (err) => r.log.error({ err }, 'replication listener error'));
    r.log.info({ listen: `${options.listen.host}:${r.boundPort}` }, 'replica listening for its primary');
    return r;
  }

  get port(): number {
    return this.boundPort;
  }

  private accept(socket: net.Socket): void {
    if (this.closed) {
      socket.destroy();
      return;
    }
    const link = new ReplicationLink(socket, {
      logger: this.log,
      epoch: () => this.volume.epoch,
      heartbeatIntervalMs: this.options.heartbeatIntervalMs,
      idleTimeoutMs: this.options.idleTimeoutMs,
    });
    const pl = new PrimaryLink(this, link, this.volume, this.log);
    this.links.add(link);
    link.onFrame = (frame) => pl.enqueue(frame);
    link.onClose = (reason) => {
      this.links.delete(link);
      const why = describeClose(reason);
      if (this.current === pl) {
        this.current = undefined;
        this.lastClose = why;
        this.log.info({ primary: link.peer, reason: why }, 'primary link closed');
        void this.rebuild.linkLost();
      }
    };
  }

  // A link that passed its HELLO becomes the current one.
  adopt(pl: PrimaryLink): void {
    const old = this.current;
    this.current = pl;
    if (old !== undefined && old !== pl) old.link.close('reassigned', 'a newer primary link replaced this one');
  }

  isCurrent(pl: PrimaryLink): boolean {
    return this.current === pl;
  }

  resetCommit(lsn: number): void {
    this.lsnCommit = lsn;
  }

  noteCommit(lsn: number): void {
    this.lsnCommit = Math.max(this.lsnCommit, lsn);
  }

  get commitLsn(): number {
    return this.lsnCommit;
  }

  status(): ReplicaReplicationStatus {
    const v = this.volume;
    return {
      role: 'replica',
      state: this.current?.helloDone === true ? 'streaming' : 'waiting',
      listen: `${this.options.listen.host}:${this.boundPort}`,
      primary: this.current?.primaryHello === undefined ? undefined : { address: this.current.link.peer, nodeId: this.current.primaryHello.nodeId },
      epoch: v.epoch,
      lsnReceived: v.lsnReceived,
      lsnDurable: v.lsnDurable,
      lsnApplied: v.lsnApplied,
      lsnCommit: this.lsnCommit,
      applyChecksum: applyChecksumToHex(v.applyChecksum),
      lastClose: this.lastClose,
      framesRefused: this.framesRefused,
      rebuild: this.rebuild.status(),
    };
  }

  // Stops listening, lets the current link finish the frame it is on, then
  // says goodbye on every link (the server's close waits for them to end).
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const closing = new Promise<void>((resolve) => this.server.close(() => resolve()));
    await this.current?.idle();
    for (const link of this.links) link.close('shutdown', 'replica stopping', 'goodbye');
    await closing;
    await this.rebuild.close();
    this.options.volume.setWalGroupHold(0);
  }
}

// One link from a primary. Frames are handled one at a time, in order: a
// HELLO may have to persist an epoch or an identity before the next frame.
class PrimaryLink {
  helloDone = false;
  primaryHello: HelloFrame | undefined;
  private chain: Promise<void> = Promise.resolve();
  private ackScheduled = false;
  private readonly ackLinger = new Linger(ACK_LINGER_MS, () => this.sendAck());
  private flushing = false;
  private flushAgain = false;
  private readonly log: Logger;
  private outstandingBytes = 0;
  private inputPaused = false;
  private lastAppend: Promise<number> | undefined;
  // The highest LSN a SYNC frame asks for, noted as the frame arrives.
  private lsnSyncAhead = 0;

  constructor(
    private readonly owner: ReplicaReplication,
    readonly link: ReplicationLink,
    private readonly volume: Volume,
    log: Logger,
  ) {
    this.log = log.child({ primary: link.peer });
  }

  enqueue(frame: Frame): void {
    // Frames are handled in order on one chain. Received bytes not yet
    // written to the WAL are bounded: past the mark the socket is not read.
    const bytes =
      frame.type === 'wal_records'
        ? frame.records.reduce((sum, r) => sum + r.bytes.byteLength, 0)
        : frame.type === 'base_chunk'
          ? (frame.data?.byteLength ?? 0)
          : 0;
    this.outstandingBytes += bytes;
    // A FUA write on the primary (or a FLUSH parsed with its write): its SYNC
    // comes right behind the records, in the same read. Noted before they
    // are handled, the records it covers go to the WAL with RWF_DSYNC (one
    // write) instead of a write and then an fdatasync.
    if (frame.type === 'sync') this.lsnSyncAhead = Math.max(this.lsnSyncAhead, frame.lsnSync);
    if (this.outstandingBytes > OUTSTANDING_BYTES_HIGH && !this.inputPaused) {
      this.inputPaused = true;
      this.link.pauseInput();
    }
    this.chain = this.chain
      .then(() => this.handle(frame))
      .catch((err: unknown) => this.refuse('bad_frame', (err as Error).message))
      .finally(() => {
        if (bytes === 0) return;
        // WAL records: done once written (or refused).
        this.written(bytes);
      });
  }

  private written(bytes: number): void {
    const settle = (): void => {
      this.outstandingBytes -= bytes;
      if (this.inputPaused && this.outstandingBytes < OUTSTANDING_BYTES_LOW) {
        this.inputPaused = false;
        this.link.resumeInput();
      }
    };
    const last = this.lastAppend;
    if (last === undefined) settle();
    else last.then(settle, settle);
  }

  idle(): Promise<void> {
    return this.chain;
  }

  private async handle(frame: Frame): Promise<void> {
    if (this.link.closed) return;
    const decision = checkEpoch(this.volume.epoch, frame.epoch, 'replica');
    if (decision.outcome === 'refuse') {
      this.owner.framesRefused++;
      this.refuse('stale_epoch', decision.message);
      return;
    }
    if (decision.outcome === 'adopt') {
      // Persisted before acting on this frame or any later one.
      await this.volume.setEpoch(decision.epochNew);
    }
    if (frame.type === 'hello') {
      await this.onHello(frame);
      return;
    }
    if (!this.helloDone) {
      this.refuse('bad_frame', `${frame.type} before HELLO`);
      return;
    }
    if (!this.owner.isCurrent(this)) {
      this.link.close('reassigned', 'a newer primary link replaced this one');
      return;
    }
    switch (frame.type) {
      case 'wal_records':
        // Its commit LSN first, as a COMMIT frame before the records.
        if (frame.lsnCommit !== undefined) this.onCommit(frame.lsnCommit);
        this.onRecords(frame);
        return;
      case 'commit':
        this.onCommit(frame.lsnCommit);
        this.lazyAck();
        return;
      case 'sync':
        // At once for what is appended: it ends the WAL's group hold, so a
        // FLUSH on the primary never waits for it.
        this.volume.requestDurable(frame.lsnSync);
        this.makeDurable();
        return;
      case 'rebuild_start':
        // What an earlier primary committed says nothing about the rebuilt lineage.
        this.owner.resetCommit(frame.lsnBase);
        this.link.send(await this.owner.rebuild.start(frame));
        this.scheduleAck();
        return;
      case 'base_chunk':
        await this.owner.rebuild.chunk(frame);
        return;
      default:
        this.refuse('bad_frame', `unexpected ${frame.type} frame from a primary`);
    }
  }

  private async onHello(hello: HelloFrame): Promise<void> {
    if (this.helloDone) {
      this.refuse('bad_frame', 'a second HELLO on one link');
      return;
    }
    if (hello.role !== 'primary') {
      this.refuse('role_conflict', `a ${hello.role} greeted this replica; only a primary feeds it`);
      return;
    }
    if (hello.volumeUuid !== this.volume.uuid) {
      if (!this.volume.pristine) {
        this.refuse('wrong_volume', `this replica holds volume ${this.volume.uuid}, the primary serves ${hello.volumeUuid}`);
        return;
      }
      await this.volume.adoptIdentity(hello.volumeUuid);
    }
    this.primaryHello = hello;
    this.helloDone = true;
    this.owner.adopt(this);
    const v = this.volume;
    // Records received but not applied are not committed: when they come
    // from an older epoch, or the primary does not have them all, they may
    // not be this primary's. Drop them; the primary sends its own.
    // What the last primary committed stays, whatever comes next.
    v.commit(Math.min(this.owner.commitLsn, v.lsnReceived));
    const pendingEpoch = v.pendingEpoch;
    if (pendingEpoch !== undefined && (hello.epoch > pendingEpoch || hello.lsnHead < v.lsnReceived)) {
      const dropped = await v.truncateUnapplied();
      this.log.warn({ dropped, pendingEpoch, primaryEpoch: hello.epoch, lsnPrimaryHead: hello.lsnHead, lsnApplied: v.lsnApplied }, 'dropped an uncommitted suffix');
    }
    this.log.info({ epoch: v.epoch, lsnReceived: v.lsnReceived, lsnPrimaryHead: hello.lsnHead, primaryNode: hello.nodeId }, 'primary connected');
    this.link.send({
      type: 'hello',
      epoch: v.epoch,
      role: 'replica',
      volumeUuid: v.uuid,
      nodeId: this.owner.options.nodeId,
      lsnDurable: Math.min(v.lsnDurable, v.lsnReceived),
      lsnApplied: v.lsnApplied,
      lsnTail: v.status().lsnTail,
      lsnHead: v.lsnReceived,
      applyChecksum: v.applyChecksum,
      rebuild: this.owner.rebuild.facts(),
      // Whose history its applied records are: a primary tells from it
      // whether they are all its own (lib/protocol/decide.ts).
      ...(v.epochStarts === undefined ? {} : { epochApplied: epochOpenedBy(v.epochStarts) }),
    });
  }

  private onCommit(lsnCommit: number): void {
    this.owner.noteCommit(lsnCommit);
    this.volume.commit(Math.min(lsnCommit, this.volume.lsnReceived));
  }

  private onRecords(frame: WalRecordsFrame): void {
    // Throws (closing the link) on a record that does not verify or skips an LSN.
    const last = this.volume.appendReceivedAll(frame.records);
    if (last === undefined) return;
    if (this.lsnSyncAhead >= frame.records[0]!.lsn) this.volume.requestDurable(this.lsnSyncAhead);
    this.lastAppend = last;
    // Received: in the WAL's order; the primary may count it now (before
    // this node's WAL submission, which waits for the loop iteration's end).
    this.sendAck();
    last
      .then(() => {
        // Closing (the link, then the volume): nothing more to apply here;
        // what is committed is applied at the next open or commit.
        if (this.link.closed) return;
        // A commit may have covered records that were still waiting for WAL
        // space: apply them, and tell the primary.
        const applied = this.volume.lsnApplied;
        this.volume.commit(Math.min(this.owner.commitLsn, this.volume.lsnReceived));
        if (this.volume.lsnApplied > applied) this.lazyAck();
      })
      .catch((err: Error) => this.refuse('bad_frame', `appending or applying received records failed: ${err.message}`));
  }

  // One flush at a time; records arriving meanwhile get the next one.
  private makeDurable(): void {
    if (this.flushing) {
      this.flushAgain = true;
      return;
    }
    this.flushing = true;
    // A SYNC covers every record received before it: those still waiting for
    // WAL space (a burst) are written first, then made durable.
    const received = (this.lastAppend ?? Promise.resolve(0)).catch(() => 0);
    received.then(() => this.volume.flush()).then(
      () => {
        this.flushing = false;
        // The primary's FLUSH waits on this: tell it now, not a turn later.
        this.sendAck();
        if (this.flushAgain) {
          this.flushAgain = false;
          this.makeDurable();
        }
      },
      (err: Error) => {
        this.flushing = false;
        this.refuse('shutdown', `the replica's WAL failed: ${err.message}`);
      },
    );
  }

  private scheduleAck(): void {
    if (this.ackScheduled) return;
    this.ackScheduled = true;
    setImmediate(() => {
      this.ackScheduled = false;
      this.sendAck();
    });
  }

  // Progress the primary learns from the next ACK, or from one of its own
  // once ACK_LINGER_MS passes without one.
  private lazyAck(): void {
    if (!this.link.closed) this.ackLinger.arm();
  }

  private sendAck(): void {
    this.ackLinger.cancel();
    if (this.link.closed) return;
    const v = this.volume;
    const received = v.lsnReceived;
    this.link.send({
      type: 'ack',
      epoch: v.epoch,
      lsnReceived: received,
      lsnDurable: Math.min(v.lsnDurable, received),
      lsnApplied: v.lsnApplied,
      applyChecksum: v.applyChecksum,
      lsnCheckpoint: Math.min(v.lsnCheckpoint, v.lsnApplied),
    });
  }

  private refuse(code: CloseCode, message: string): void {
    if (this.link.closed) return;
    this.log.warn({ code, reason: message }, 'closing the primary link');
    this.link.close(code, message);
  }
}
