// Prometheus metrics of a storage node: NBD requests (count, bytes, latency)
// and, at scrape time, each volume's LSNs, dirty bytes and WAL fill.
import { Counter, Gauge, Histogram, Registry } from 'prom-client';

import type { VolumeStatus } from '../engine/volume';

export interface VolumeGaugeSource {
  exportName: string;
  status(): VolumeStatus;
}

// Latency buckets in seconds: 10 µs to 1 s.
const LATENCY_BUCKETS_S = [1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 0.1, 0.25, 1];

export class NodeMetrics {
  readonly registry = new Registry();
  private readonly requests: Counter<'command' | 'result'>;
  private readonly bytes: Counter<'direction'>;
  private readonly latency: Histogram<'command'>;
  // Label children cached per command: observe() runs once per request.
  private readonly latencyByCommand = new Map<string, ReturnType<Histogram<'command'>['labels']>>();

  constructor(volumes: () => VolumeGaugeSource[]) {
    const registers = [this.registry];
    this.requests = new Counter({ name: 'blockwal_nbd_requests_total', help: 'NBD requests answered', labelNames: ['command', 'result'], registers });
    this.bytes = new Counter({ name: 'blockwal_nbd_bytes_total', help: 'Payload bytes moved through NBD', labelNames: ['direction'], registers });
    this.latency = new Histogram({
      name: 'blockwal_nbd_request_seconds',
      help: 'NBD request latency from receipt to reply',
      labelNames: ['command'],
      buckets: LATENCY_BUCKETS_S,
      registers,
    });
    this.volumeGauges(volumes, registers);
  }

  // NbdServer's onRequest hook.
  observe(command: string, bytes: number, seconds: number, ok: boolean): void {
    this.requests.inc({ command, result: ok ? 'ok' : 'error' });
    if (bytes > 0 && ok) this.bytes.inc({ direction: command === 'read' ? 'read' : 'write' }, bytes);
    let child = this.latencyByCommand.get(command);
    if (child === undefined) {
      child = this.latency.labels({ command });
      this.latencyByCommand.set(command, child);
    }
    child.observe(seconds);
  }

  text(): Promise<string> {
    return this.registry.metrics();
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
      ['blockwal_volume_size_bytes', 'Volume size', (s) => s.sizeBytes],
      ['blockwal_volume_failed', '1 when the volume refuses writes after an I/O failure', (s) => (s.failure === undefined ? 0 : 1)],
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
  }
}
