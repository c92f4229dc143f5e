// Sequential 1 MiB O_DIRECT fio anchors, the bandwidth limits that WAL replay
// and the flusher are compared with (reference/io.md §1 measured the same
// shape: 1 MiB sequential writes, io_uring, qd 4-8).
//
//   R  sequential read,  bs 1 MiB, qd 8, O_DIRECT: what a recovery scan can read
//   W  sequential write, bs 1 MiB, qd 8, O_DIRECT: what a flusher can write
// (and, by bsBytes/iodepth/rw, other shapes such as 4 KiB random writes).
//
// All time-based (BENCH_SECONDS, looping over the files) on io_uring, no
// fdatasync. Figures are MiB/s; CPU per op is fio's CPU per MiB moved (not
// per I/O), the same unit the subjects of wal_replay and flusher report.
import type { BenchContext } from './bench';
import { measureFioJob } from './anchors';
import { otherLoadPct } from './cpu';
import type { FioJob, FioMeasurement } from './fio';
import type { Figure } from './report';

export const MIB = 1 << 20;
export const SEQ_BS_BYTES = MIB;
export const SEQ_IODEPTH = 8;

export interface SeqAnchorSpec {
  readonly id: string;
  readonly label: string;
  readonly rw: 'read' | 'write' | 'randwrite' | 'randread';
  /** Default 1 MiB. */
  readonly bsBytes?: number;
  /** Default 8. */
  readonly iodepth?: number;
  /** One file, or several joined with ':' (fio then round-robins its I/Os between them). */
  readonly filename: string;
  /** Bytes the job covers (all files together); must exist and be written already. */
  readonly sizeBytes: number;
}

export async function measureSeqAnchor(
  ctx: BenchContext,
  spec: SeqAnchorSpec,
): Promise<{ figure: Figure; raw: FioMeasurement }> {
  const job: FioJob = {
    name: spec.id,
    filename: spec.filename,
    rw: spec.rw,
    bsBytes: spec.bsBytes ?? SEQ_BS_BYTES,
    sizeBytes: spec.sizeBytes,
    ioengine: 'io_uring',
    iodepth: spec.iodepth ?? SEQ_IODEPTH,
    direct: true,
    fdatasyncEvery: 0,
    runtimeMs: ctx.measureMs,
    rampMs: ctx.warmupMs,
  };
  const { raw, window } = await measureFioJob(ctx, job, spec.label);
  const mibPerSec = raw.bandwidthBytesPerSec / MIB;
  const cpuUsPerMib = (raw.cpuUsPerOp * MIB) / job.bsBytes;
  return {
    raw,
    figure: {
      name: spec.label,
      value: mibPerSec,
      unit: 'MiB/s',
      cpuUsPerOp: cpuUsPerMib,
      latencyUs: { mean: raw.latNs.mean / 1000, p50: raw.latNs.p50 / 1000, p99: raw.latNs.p99 / 1000 },
      otherLoadPct: otherLoadPct(window, raw.usrCpuPct + raw.sysCpuPct),
      detail:
        `${raw.ops} × ${job.bsBytes >> 10} KiB in ${(raw.runtimeMs / 1000).toFixed(2)} s over ${(spec.sizeBytes / MIB).toFixed(0)} MiB ` +
        `(${Math.round(raw.iops)} IOPS); cpu ${((cpuUsPerMib * 1024) / 1000).toFixed(1)} ms/GiB; ` +
        `fio usr ${raw.usrCpuPct.toFixed(1)} % sys ${raw.sysCpuPct.toFixed(1)} %`,
    },
  };
}
