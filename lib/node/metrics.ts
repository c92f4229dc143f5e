// Prometheus metrics of a storage node: NBD requests (count, bytes, latency)
// and, at scrape time, each volume's LSNs, dirty bytes and WAL fill.
import { Gauge, Registry } from 'prom-client';

import type { VolumeStatus } from '../engine/volume';
import type { AckWaitCounts, PrimaryReplicationStatus } from '../replication/primary';
import type { ReplicaReplicationStatus } from '../replication/replica';

export interface VolumeGaugeSource {
  exportName: string;
  status(): VolumeStatus;
  replication(): PrimaryReplicationStatus | ReplicaReplicationStatus | undefined;
}

// Latency buckets in seconds: 10 µs to 1 s.
const LATENCY_BUCKETS_S = [1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 0.1, 0.25, 1];

// One command's figures, kept as plain numbers: observe() runs once per NBD
// request, so it must cost a few additions, not prom-client's label lookups.
// They become Prometheus text at scrape time.
class CommandFigures {
  ok = 0;
  errors = 0;
  bytes = 0;
  secondsSum = 0;
  readonly buckets = new Float64Array(LATENCY_BUCKETS_S.length + 1); // last: +Inf

  observe(bytes: number, seconds: number, ok: boolean): void {
    if (ok) {
      this.ok++;
      this.bytes += bytes;
    } else {
      this.errors++;
    }
    this.secondsSum += seconds;
    let i = 0;
    while (i < LATENCY_BUCKETS_S.length && seconds > LATENCY_BUCKETS_S[i]!) i++;
    this.buckets[i]!++;
  }
}

export class NodeMetrics {
  readonly registry = new Registry();
  private readonly commands = new Map<string, CommandFigures>();

  constructor(volumes: () => VolumeGaugeSource[]) {
    this.volumeGauges(volumes, [this.registry]);
  }

  // NbdServer's onRequest hook.
  observe(command: string, bytes: number, seconds: number, ok: boolean): void {
    let figures = this.commands.get(command);
    if (figures === undefined) {
      figures = new CommandFigures();
      this.commands.set(command, figures);
    }
    figures.observe(bytes, seconds, ok);
  }

  async text(): Promise<string> {
    return (await this.registry.metrics()) + this.requestText();
  }

  private requestText(): string {
    const lines = [
      '# HELP blockwal_nbd_requests_total NBD requests answered',
      '# TYPE blockwal_nbd_requests_total counter',
    ];
    for (const [command, f] of this.commands) {
      lines.push(`blockwal_nbd_requests_total{command="${command}",result="ok"} ${f.ok}`);
      lines.push(`blockwal_nbd_requests_total{command="${command}",result="error"} ${f.errors}`);
    }
    const read = this.commands.get('read')?.bytes ?? 0;
    const written = this.commands.get('write')?.bytes ?? 0;
    lines.push('# HELP blockwal_nbd_bytes_total Payload bytes moved through NBD', '# TYPE blockwal_nbd_bytes_total counter');
    lines.push(`blockwal_nbd_bytes_total{direction="read"} ${read}`, `blockwal_nbd_bytes_total{direction="write"} ${written}`);
    lines.push('# HELP blockwal_nbd_request_seconds NBD request latency from receipt to reply', '# TYPE blockwal_nbd_request_seconds histogram');
    for (const [command, f] of this.commands) {
      let cumulative = 0;
      LATENCY_BUCKETS_S.forEach((le, i) => {
        cumulative += f.buckets[i]!;
        lines.push(`blockwal_nbd_request_seconds_bucket{command="${command}",le="${le}"} ${cumulative}`);
      });
      cumulative += f.buckets[LATENCY_BUCKETS_S.length]!;
      lines.push(`blockwal_nbd_request_seconds_bucket{command="${command}",le="+Inf"} ${cumulative}`);
      lines.push(`blockwal_nbd_request_seconds_sum{command="${command}"} ${f.secondsSum}`);
      lines.push(`blockwal_nbd_request_seconds_count{command="${command}"} ${cumulative}`);
    }
    return lines.join('\n') + '\n';
  }

  private volumeGauges(volumes: () => VolumeGaugeSource[], registers: Registry[]): void {
    const fields: [string, string, (s: VolumeStatus) => number][] = [
      ['blockwal_volume_lsn_head', 'Highest LSN assigned', (s) => s.lsnHead],
      ['blockwal_volume_lsn_durable', 'Highest LSN durable in the WAL', (s) => s.lsnDurable],
      ['blockwal_volume_lsn_checkpoint', 'LSN applied to base.img and recorded in the superblock', (s) => s.checkpointLsn],
      ['blockwal_volume_lsn_tail', 'Lowest LSN the WAL still holds', (s) => s.lsnTail],
      ['blockwal_volume_dirty_bytes', 'Bytes written but not yet applied to base.img', (s) => s.dirtyBytes],
      ['blockwal_volume_wal_segments', 'WAL segments in use', (s) => s.walSegments],
      ['blockwal_volume_wal_fill_ratio', 'WAL segments in use over the most it may hold', (s) => s.walSegments / s.walSegmentsMax],
      ['blockwal_volume_wal_read_memory_bytes', 'WAL bytes checkpoints and catch-ups read from memory (group buffers, WAL cache) since open', (s) => s.walReadMemoryBytes],
      ['blockwal_volume_wal_read_disk_bytes', 'WAL bytes checkpoints and catch-ups read back from the disk since open', (s) => s.walReadDiskBytes],
      ['blockwal_volume_wal_group_writes', 'WAL group writes submitted since open', (s) => s.walGroupWrites],
      ['blockwal_volume_wal_dsync_group_writes', 'WAL group writes submitted with RWF_DSYNC (durable when written) since open', (s) => s.walDsyncGroupWrites],
      ['blockwal_volume_wal_syncs', 'fdatasyncs of WAL segments submitted since open', (s) => s.walSyncs],
      ['blockwal_volume_block_cache_used_bytes', 'base.img bytes the block cache holds', (s) => s.blockCacheUsedBytes],
      ['blockwal_volume_block_cache_hit_blocks', 'Blocks of reads answered from the block cache since open', (s) => s.blockCacheHits],
      ['blockwal_volume_block_cache_miss_blocks', 'Blocks of reads that went to base.img on the disk since open', (s) => s.blockCacheMisses],
      ['blockwal_volume_size_bytes', 'Volume size', (s) => s.sizeBytes],
      ['blockwal_volume_failed', '1 when the volume refuses writes after an I/O failure', (s) => (s.failure === undefined ? 0 : 1)],
      ['blockwal_volume_epoch', 'Epoch the volume acts in', (s) => s.epoch],
      ['blockwal_volume_lsn_applied', 'Highest LSN applied (a replica: up to its primary commit LSN)', (s) => s.lsnApplied],
      ['blockwal_volume_lsn_received', 'Highest LSN received from the primary (a primary: assigned)', (s) => s.lsnReceived],
    ];
    for (const [name, help, pick] of fields) {
      new Gauge({
        name,
        help,
        labelNames: ['export'],
        registers,
        collect() {
          for (const v of volumes()) this.set({ export: v.exportName }, pick(v.status()));
        },
      });
    }
    const primaries = (): { exportName: string; r: PrimaryReplicationStatus }[] =>
      volumes().flatMap((v) => {
        const r = v.replication();
        return r?.role === 'primary' ? [{ exportName: v.exportName, r }] : [];
      });
    new Gauge({
      name: 'blockwal_replication_degraded',
      help: 'Primary: 1 when a replica left the ack set (degraded), 2 when fenced by a newer epoch, 0 when healthy',
      labelNames: ['export', 'durability'],
      registers,
      collect() {
        for (const { exportName, r } of primaries()) {
          this.set({ export: exportName, durability: r.durability }, r.mode === 'healthy' ? 0 : r.mode === 'degraded' ? 1 : 2);
        }
      },
    });
    new Gauge({
      name: 'blockwal_replication_lsn_commit',
      help: 'Primary: highest LSN durable where the durability mode requires (replicas apply up to it)',
      labelNames: ['export'],
      registers,
      collect() {
        for (const { exportName, r } of primaries()) this.set({ export: exportName }, r.lsnCommit);
      },
    });
    const ackWaitFields: [string, string, (c: AckWaitCounts) => number][] = [
      ['blockwal_replication_acks', 'Primary: acknowledgements asked of the durability mode since start (kind write: received on the replicas; flush: durable there)', (c) => c.total],
      ['blockwal_replication_acks_held', 'Primary: acknowledgements that waited for the replicas since start', (c) => c.held],
      ['blockwal_replication_acks_held_seconds', 'Primary: seconds those acknowledgements waited in all (a write from when the local WAL had it, a flush from its start)', (c) => c.heldSeconds],
    ];
    for (const [name, help, pick] of ackWaitFields) {
      new Gauge({
        name,
        help,
        labelNames: ['export', 'kind'],
        registers,
        collect() {
          for (const { exportName, r } of primaries()) {
            this.set({ export: exportName, kind: 'write' }, pick(r.ackWait.writes));
            this.set({ export: exportName, kind: 'flush' }, pick(r.ackWait.flushes));
          }
        },
      });
    }
    const replicaFields: [string, string, (p: PrimaryReplicationStatus['replicas'][number]) => number][] = [
      ['blockwal_replica_lag_lsn', 'Records the replica has not acknowledged', (p) => p.lagLsn],
      ['blockwal_replica_lag_bytes', 'Bytes of records the replica has not acknowledged', (p) => p.lagBytes],
      ['blockwal_replica_lag_seconds', 'Age of the oldest record the replica has not acknowledged', (p) => p.lagSeconds],
      ['blockwal_replica_lsn_durable', 'Highest LSN durable on the replica', (p) => p.lsnDurable],
      ['blockwal_replica_in_ack_set', '1 while the replica counts for acknowledgements', (p) => (p.inAckSet ? 1 : 0)],
      ['blockwal_replica_streaming', '1 while the replica is in keep-up', (p) => (p.state === 'streaming' ? 1 : 0)],
      ['blockwal_replica_catching_up', '1 while the replica is fed from the WAL on disk', (p) => (p.state === 'catching_up' ? 1 : 0)],
      ['blockwal_replica_needs_rebuild', '1 while the last decision was a rebuild that is not running', (p) => (p.state === 'needs_rebuild' ? 1 : 0)],
      ['blockwal_replica_rebuilding', '1 while a rebuild of the replica runs', (p) => (p.state === 'rebuilding' ? 1 : 0)],
      ['blockwal_replica_rebuild_chunks_done', 'Base chunks of the running rebuild durable on the replica', (p) => p.rebuild?.chunksDone ?? 0],
      ['blockwal_replica_rebuild_chunks_total', 'Base chunks of the running rebuild', (p) => p.rebuild?.chunksTotal ?? 0],
      ['blockwal_replica_rebuild_bytes_sent', 'Base image bytes the running rebuild has sent', (p) => p.rebuild?.bytesSent ?? 0],
      ['blockwal_replica_resync_chunks_unchanged', 'Base chunks the running bitmap resync sent as unchanged (without data)', (p) => p.rebuild?.chunksUnchanged ?? 0],
      ['blockwal_replica_dirty_blocks', 'Blocks written since the away replica left, marked in its dirty bitmap (0: none kept)', (p) => p.dirtyBitmap?.dirtyBlocks ?? 0],
      ['blockwal_replica_decision_cost_bytes', 'Estimated bytes to move by the last decision for the replica', (p) => p.decision?.costBytes ?? 0],
      ['blockwal_replica_catch_up_bytes_done', 'Bytes sent by the running WAL catch-up', (p) => p.catchUp?.bytesDone ?? 0],
      ['blockwal_replica_catch_up_bytes_total', 'Bytes the running WAL catch-up is to send (estimate)', (p) => p.catchUp?.bytesTotal ?? 0],
      ['blockwal_replica_wal_held_bytes', 'WAL bytes held for the lagging replica', (p) => p.retention?.heldBytes ?? 0],
      ['blockwal_replica_wal_headroom_bytes', 'WAL bytes the lagging replica may still fall behind before it needs a rebuild', (p) => p.retention?.headroomBytes ?? 0],
      ['blockwal_replica_wal_headroom_seconds', 'Estimated seconds at the current write rate before the lagging replica falls off the WAL (-1: no writes)', (p) => (p.retention === undefined ? 0 : p.retention.headroomSeconds ?? -1)],
    ];
    new Gauge({
      name: 'blockwal_replica_decision',
      help: "1 for the kind of the primary's last decision for the replica (keep_up, catch_up, bitmap_resync, rebuild, fence)",
      labelNames: ['export', 'replica', 'kind'],
      registers,
      collect() {
        this.reset();
        for (const { exportName, r } of primaries()) {
          for (const p of r.replicas) if (p.decision !== undefined) this.set({ export: exportName, replica: p.address, kind: p.decision.kind }, 1);
        }
      },
    });
    for (const [name, help, pick] of replicaFields) {
      new Gauge({
        name,
        help,
        labelNames: ['export', 'replica'],
        registers,
        collect() {
          for (const { exportName, r } of primaries()) for (const p of r.replicas) this.set({ export: exportName, replica: p.address }, pick(p));
        },
      });
    }
  }
}
