// A storage node: the volumes one process serves, its NBD server, metrics and
// control sockets. The `blockwal serve` command is a thin shell around it; a
// TypeScript process embeds it the same way:
//
//   const node = new StorageNode({ logger });
//   await node.openVolume('/data/vol1', { exportName: 'vol1' });
//   await node.listenNbd({ host: '127.0.0.1', port: 10809 });
//   await node.listenMetrics({ host: '127.0.0.1', port: 9100 });
//   ...
//   await node.close(); // finishes requests in flight, checkpoints, releases locks
import { EventEmitter } from 'node:events';
import * as http from 'node:http';
import * as fs from 'node:fs';
import * as net from 'node:net';
import type { AddressInfo } from 'node:net';
import type { Readable, Writable } from 'node:stream';

import pino, { type Logger } from 'pino';

import { Volume, type VolumeOptions, type VolumeStatus } from '../engine/volume';
import { type NbdAddress, NbdServer } from '../nbd/server';
import {
  type DurabilityMode,
  PrimaryReplication,
  type PrimaryReplicationStatus,
  type ReplicaAddress,
  replicaAddressText,
} from '../replication/primary';
import { DirtyBitmap } from '../replication/dirty_bitmap';
import { ReplicaReplication, type ReplicaReplicationStatus } from '../replication/replica';

export type { NbdAddress };
import { ControlServer } from './control';
import { NodeMetrics } from './metrics';
import { VolumeBackend } from './volume_backend';

export interface StorageNodeOptions {
  nodeId?: string;
  logger?: Logger;
}

export interface OpenVolumeOptions extends VolumeOptions {
  // The NBD export name (default: the directory's base name).
  exportName?: string;
  description?: string;
  readOnly?: boolean;
  // Persisted before serving; it may not be below the volume's epoch.
  epoch?: number;
  // WAL shipping: a primary feeding replicas, or a replica fed by one.
  replication?: ReplicationOptions;
}

export type ReplicationOptions =
  | {
      role: 'primary';
      replicas: ReplicaAddress[];
      durability?: DurabilityMode; // default best_effort
      ackTimeoutMs?: number;
      backlogBytes?: number;
      // A rebuild's base lane sends at most this many bytes per second (default: unthrottled).
      rebuildBytesPerSecond?: number;
      // While a rebuild runs, keep foreground write latency near this (the base lane slows down).
      rebuildLatencyTargetMs?: number;
      idleTimeoutMs?: number;
      heartbeatIntervalMs?: number;
    }
  | { role: 'replica'; listen: { host: string; port: number }; idleTimeoutMs?: number; heartbeatIntervalMs?: number; walGroupHoldUs?: number };


export interface ServedVolumeStatus extends VolumeStatus {
  exportName: string;
  readOnly: boolean;
  replication: PrimaryReplicationStatus | ReplicaReplicationStatus | undefined;
}

export interface NodeStatus {
  nodeId: string;
  pid: number;
  uptimeSeconds: number;
  nbd: { address: NbdAddress | undefined; connections: number; stats: unknown };
  metrics: { host: string; port: number } | undefined;
  volumes: ServedVolumeStatus[];
}

interface Served {
  volume: Volume;
  exportName: string;
  description: string;
  backend: VolumeBackend;
  control: ControlServer | undefined;
  primary: PrimaryReplication | undefined;
  replica: ReplicaReplication | undefined;
  options: OpenVolumeOptions; // as opened (a promotion reopens with them)
}

export interface PromoteOptions {
  // The new epoch: above the replica's (persisted before anything else).
  epoch: number;
  replicas?: ReplicaAddress[];
  durability?: DurabilityMode;
}

// Events: 'volume-opened' (exportName, dir), 'volume-closed' (exportName),
// 'volume-failed' (exportName, reason: string), 'volume-promoted'
// (exportName, epoch), 'closed'.
export class StorageNode extends EventEmitter {
  readonly nodeId: string;
  readonly log: Logger;
  readonly metrics: NodeMetrics;
  private readonly served = new Map<string, Served>();
  private readonly nbd: NbdServer;
  private nbdAddress: NbdAddress | undefined;
  private metricsServer: http.Server | undefined;
  private metricsAddress: { host: string; port: number } | undefined;
  private readonly startedMs = Date.now();
  private closing: Promise<void> | undefined;
  private readonly activated: net.Server[] = [];

  constructor(options: StorageNodeOptions = {}) {
    super();
    this.nodeId = options.nodeId ?? `node-${process.pid}`;
    this.log = (options.logger ?? pino({ level: 'silent' })).child({ node: this.nodeId });
    this.metrics = new NodeMetrics(() => [...this.served.values()].map((s) => ({
        exportName: s.exportName,
        status: () => s.volume.status(),
        replication: () => s.primary?.status() ?? s.replica?.status(),
      })),
    );
    this.nbd = new NbdServer({
      exports: () => [...this.served.values()].map((s) => ({ name: s.exportName, description: s.description, backend: s.backend })),
      logger: this.log.child({ component: 'nbd' }),
      onRequest: (command, bytes, seconds, ok) => this.metrics.observe(command, bytes, seconds, ok),
    });
  }

  // Opens (with recovery) the volume in dir and exports it over NBD.
  async openVolume(dir: string, options: OpenVolumeOptions = {}): Promise<Volume> {
    this.checkOpen();
    const exportName = options.exportName ?? defaultExportName(dir);
    if (this.served.has(exportName)) throw new Error(`export name '${exportName}' is already served by this node`);
    const repl = options.replication;
    let primary: PrimaryReplication | undefined;
    const volume = await Volume.open(dir, {
      ...options,
      logger: options.logger ?? this.log,
      role: repl?.role ?? 'primary',
      onRecord: repl?.role === 'primary' && repl.replicas.length > 0 ? (record) => primary?.onRecord(record) : undefined,
      onControl: (entry, applied) => {
        const effect = applied.effects.find((e) => e.kind === 'durability');
        if (effect?.kind === 'durability') primary?.setDurability(effect.mode);
        options.onControl?.(entry, applied);
      },
      onFailure: (failure) => {
        this.log.error({ exportName, reason: failure.message }, 'volume failed: writes are refused, reads go on; restart the server to recover');
        this.emit('volume-failed', exportName, failure.message);
        options.onFailure?.(failure);
      },
    });
    let replica: ReplicaReplication | undefined;
    try {
      if (options.epoch !== undefined) {
        if (options.epoch < volume.epoch) {
          throw new Error(`epoch ${options.epoch} is below the volume's epoch ${volume.epoch}: a primary may only move to a newer epoch`);
        }
        await volume.setEpoch(options.epoch);
      }
      // Dirty bitmaps only serve the replicas this primary feeds now.
      const keep = repl?.role === 'replica' ? [] : (repl?.replicas ?? []).map(replicaAddressText);
      const dropped = DirtyBitmap.dropStale(dir, keep);
      if (dropped.length > 0) this.log.info({ exportName, dropped }, 'dropped the dirty bitmaps of replicas this volume no longer feeds');
      if (repl?.role === 'primary' && repl.replicas.length > 0) {
        primary = await PrimaryReplication.start({
          volume,
          nodeId: this.nodeId,
          replicas: repl.replicas,
          // The mode the volume's last durability record set, unless given.
          durability: repl.durability ?? volume.replicatedState.durability ?? 'best_effort',
          logger: this.log.child({ exportName }),
          ackTimeoutMs: repl.ackTimeoutMs,
          backlogBytes: repl.backlogBytes,
          rebuildBytesPerSecond: repl.rebuildBytesPerSecond,
          rebuildLatencyTargetMs: repl.rebuildLatencyTargetMs,
          idleTimeoutMs: repl.idleTimeoutMs,
          heartbeatIntervalMs: repl.heartbeatIntervalMs,
        });
      } else if (repl?.role === 'replica') {
        replica = await ReplicaReplication.start({
          volume,
          nodeId: this.nodeId,
          listen: repl.listen,
          logger: this.log.child({ exportName }),
          idleTimeoutMs: repl.idleTimeoutMs,
          heartbeatIntervalMs: repl.heartbeatIntervalMs,
          walGroupHoldUs: repl.walGroupHoldUs,
        });
      }
      // A primary opens its epoch with a barrier record and records a new
      // durability mode, after replication started so that replicas get both.
      if (repl?.role !== 'replica' && (options.epoch !== undefined || repl !== undefined)) {
        if (volume.replicatedState.epoch < volume.epoch) {
          await volume.appendControl({ type: 'epoch_barrier', epoch: volume.epoch });
        }
        if (repl?.role === 'primary' && repl.durability !== undefined && repl.durability !== volume.replicatedState.durability) {
          await volume.appendControl({ type: 'durability', mode: repl.durability });
        }
      }
    } catch (err) {
      await primary?.close();
      await volume.close();
      throw err;
    }
    const served: Served = {
      volume,
      exportName,
      description: options.description ?? `blockwal volume ${volume.status().uuid}`,
      backend: new VolumeBackend(volume, options.readOnly === true || repl?.role === 'replica', primary),
      control: undefined,
      primary,
      replica,
      options,
    };
    this.served.set(exportName, served);
    served.control = await ControlServer.start(dir, () => this.status());
    if (served.control === undefined) this.log.warn({ dir }, 'directory path too long for a control socket: `blockwal status DIR` will not reach this server');
    this.log.info({ dir, exportName, sizeBytes: volume.sizeBytes }, 'volume served');
    this.emit('volume-opened', exportName, dir);
    return volume;
  }

  // Makes a served replica the primary of a new epoch (what a coordinator
  // does when the primary died): stops taking records, persists the epoch,
  // reopens the volume as a primary (every record it holds is its history),
  // opens the epoch with a barrier and feeds the given replicas. Delivering
  // the same assignment again is a no-op; a lower or equal epoch than the
  // replica's is refused. NBD clients of the replica's read-only export
  // reconnect to the primary's.
  async promote(exportName: string, o: PromoteOptions): Promise<Volume> {
    this.checkOpen();
    const s = this.served.get(exportName);
    if (s === undefined) throw new Error(`no export '${exportName}' on this node`);
    if (s.replica === undefined) {
      if (s.volume.epoch === o.epoch) return s.volume; // this assignment was delivered already
      throw new Error(`export '${exportName}' is already a primary, at epoch ${s.volume.epoch}`);
    }
    if (!Number.isSafeInteger(o.epoch) || o.epoch <= s.volume.epoch) {
      throw new Error(`promotion needs an epoch above the replica's epoch ${s.volume.epoch}, got ${o.epoch}`);
    }
    const dir = s.volume.dir;
    this.served.delete(exportName);
    await s.control?.close();
    await s.replica.close();
    await s.volume.close();
    this.log.warn({ exportName, epoch: o.epoch }, 'promoting this replica to primary');
    const volume = await this.openVolume(dir, {
      ...s.options,
      exportName,
      description: s.description,
      epoch: o.epoch,
      replication: { role: 'primary', replicas: o.replicas ?? [], durability: o.durability },
    });
    this.emit('volume-promoted', exportName, o.epoch);
    return volume;
  }

  volume(exportName: string): Volume | undefined {
    return this.served.get(exportName)?.volume;
  }

  async listenNbd(address: NbdAddress): Promise<NbdAddress> {
    this.checkOpen();
    if ('path' in address) await removeStaleSocket(address.path);
    this.nbdAddress = await this.nbd.listen(address);
    this.log.info({ address: this.nbdAddress }, 'NBD listening');
    return this.nbdAddress;
  }

  // Serves NBD on a listening socket inherited as a file descriptor: systemd
  // socket activation, which is how \`nbdinfo -- [ CMD ]\`, nbdcopy and
  // nbdfuse start a server (LISTEN_FDS, the socket on fd 3).
  async listenNbdOnFd(fd: number): Promise<void> {
    this.checkOpen();
    const listener = net.createServer({ allowHalfOpen: true }, (socket) => this.nbd.handleSocket(socket));
    await new Promise<void>((resolve, reject) => {
      listener.once('error', reject);
      listener.listen({ fd }, () => resolve());
    });
    this.activated.push(listener);
    this.log.info({ fd }, 'NBD listening on an inherited socket');
  }

  // One NBD connection over a pair of streams (stdin/stdout), for clients that
  // start the server themselves (`nbdinfo [ CMD ]`). Resolves when it ends.
  serveNbdStreams(input: Readable, output: Writable): Promise<void> {
    this.checkOpen();
    return this.nbd.serveConnection(input, output);
  }

  // HTTP: /metrics (Prometheus text) and /status (JSON).
  async listenMetrics(address: { host: string; port: number }): Promise<{ host: string; port: number }> {
    this.checkOpen();
    const server = http.createServer((req, res) => void this.answerHttp(req, res));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(address.port, address.host, () => resolve());
    });
    this.metricsServer = server;
    const bound = server.address() as AddressInfo;
    this.metricsAddress = { host: bound.address, port: bound.port };
    this.log.info({ address: this.metricsAddress }, 'metrics listening');
    return this.metricsAddress;
  }

  status(): NodeStatus {
    return {
      nodeId: this.nodeId,
      pid: process.pid,
      uptimeSeconds: Math.round((Date.now() - this.startedMs) / 1000),
      nbd: { address: this.nbdAddress, connections: this.nbd.connections, stats: this.nbd.stats() },
      metrics: this.metricsAddress,
      volumes: [...this.served.values()].map((s) => ({
        ...s.volume.status(),
        exportName: s.exportName,
        readOnly: s.backend.readOnly,
        replication: s.primary?.status() ?? s.replica?.status(),
      })),
    };
  }

  // Stops accepting, lets requests in flight finish, then closes every volume
  // (WAL durable, checkpoint) and releases its lock. Safe to call twice.
  close(): Promise<void> {
    this.closing ??= this.closeAll();
    return this.closing;
  }

  private async closeAll(): Promise<void> {
    for (const listener of this.activated) listener.close();
    await this.nbd.close();
    if (this.metricsServer !== undefined) {
      this.metricsServer.closeAllConnections();
      await new Promise<void>((resolve) => this.metricsServer!.close(() => resolve()));
    }
    for (const [exportName, s] of this.served) {
      await s.control?.close();
      await s.primary?.close();
      await s.replica?.close();
      await s.volume.close();
      this.log.info({ exportName }, 'volume closed');
      this.emit('volume-closed', exportName);
    }
    this.served.clear();
    this.emit('closed');
  }

  private async answerHttp(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    try {
      if (req.url === '/metrics') {
        res.writeHead(200, { 'content-type': this.metrics.registry.contentType });
        res.end(await this.metrics.text());
      } else if (req.url === '/status') {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify(this.status()));
      } else {
        res.writeHead(404, { 'content-type': 'text/plain' });
        res.end('not found: try /metrics or /status\n');
      }
    } catch (err) {
      res.writeHead(500, { 'content-type': 'text/plain' });
      res.end(`${(err as Error).message}\n`);
    }
  }

  private checkOpen(): void {
    if (this.closing !== undefined) throw new Error('storage node is closed');
  }
}

// A socket file nobody answers on is left from a killed server: remove it.
// One that answers belongs to a live server: refuse to take its place.
async function removeStaleSocket(socketPath: string): Promise<void> {
  if (!fs.existsSync(socketPath)) return;
  const live = await new Promise<boolean>((resolve) => {
    const probe = net.connect(socketPath);
    probe.once('connect', () => {
      probe.destroy();
      resolve(true);
    });
    probe.once('error', () => resolve(false));
  });
  if (live) throw new Error(`${socketPath} is in use by another server; stop it or choose another --nbd path`);
  fs.rmSync(socketPath, { force: true });
}

function defaultExportName(dir: string): string {
  const parts = dir.split('/').filter((p) => p.length > 0);
  return parts[parts.length - 1] ?? 'volume';
}
