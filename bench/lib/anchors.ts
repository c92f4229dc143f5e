// The fio anchors for durable 4 KiB writes, shared by every bench that
// compares against them (reference/io.md §1 measured the same jobs).
//
// A1  4 KiB randwrite, O_DIRECT, fdatasync after every write, iodepth 1:
//     one durable write at a time, the latency floor of a durable commit.
// A2  4 KiB sequential write, O_DIRECT, fdatasync every 64 writes, iodepth 32:
//     near the disk's write IOPS limit with durability amortised.
// Both on io_uring, overwriting a file that prepareAnchorFile() wrote in full.
import * as path from 'node:path';

import type { BenchContext } from './bench';
import { BenchSkipped } from './bench';
import { otherLoadPct, cpuSince, cpuSnapshot } from './cpu';
import type { FioJob, FioMeasurement } from './fio';
import { fioVersion, prewriteFile, runFio } from './fio';
import type { Figure } from './report';

export const BLOCK_BYTES = 4096;

export interface AnchorSpec {
  readonly id: string;
  readonly label: string;
  readonly rw: FioJob['rw'];
  readonly iodepth: number;
  readonly fdatasyncEvery: number;
}

export const A1_QD1_SYNC_EACH: AnchorSpec = {
  id: 'A1',
  label: 'A1 fio randwrite 4k qd1 fdatasync=1',
  rw: 'randwrite',
  iodepth: 1,
  fdatasyncEvery: 1,
};

export const A2_QD32_SYNC_64: AnchorSpec = {
  id: 'A2',
  label: 'A2 fio write 4k qd32 fdatasync=64',
  rw: 'write',
  iodepth: 32,
  fdatasyncEvery: 64,
};

/** Checks for fio and writes the shared scratch file; returns fio's version and the file. */
export async function prepareAnchorFile(ctx: BenchContext): Promise<{ fio: string; file: string }> {
  const fio = fioVersion();
  if (fio === null) throw new BenchSkipped('missing fio');
  const file = path.join(ctx.dir, 'fio-anchor.dat');
  const started = performance.now();
  const pre = await prewriteFile(file, ctx.fileBytes, ctx.dir);
  ctx.log(
    `pre-wrote ${ctx.fileBytes >> 20} MiB in ${((performance.now() - started) / 1000).toFixed(1)} s ` +
      `(${(pre.bandwidthBytesPerSec / (1 << 20)).toFixed(0)} MiB/s)`,
  );
  return { fio, file };
}

// Runs one fio job as a measurement: waits for a quiet host, then samples
// process and host CPU around it.
export async function measureFioJob(
  ctx: BenchContext,
  job: FioJob,
  label: string,
): Promise<{ raw: FioMeasurement; window: ReturnType<typeof cpuSince> }> {
  await ctx.settle();
  ctx.log(`measuring ${label} for ${ctx.measureMs / 1000} s`);
  const cpuStart = cpuSnapshot();
  const raw = await runFio(job, ctx.dir);
  return { raw, window: cpuSince(cpuStart) };
}

export async function measureAnchor(
  ctx: BenchContext,
  spec: AnchorSpec,
  file: string,
): Promise<{ figure: Figure; raw: FioMeasurement }> {
  const job: FioJob = {
    name: spec.id,
    filename: file,
    rw: spec.rw,
    bsBytes: BLOCK_BYTES,
    sizeBytes: ctx.fileBytes,
    ioengine: 'io_uring',
    iodepth: spec.iodepth,
    direct: true,
    fdatasyncEvery: spec.fdatasyncEvery,
    runtimeMs: ctx.measureMs,
    rampMs: ctx.warmupMs,
  };
  const { raw, window } = await measureFioJob(ctx, job, spec.label);
  // fio's usr/sys shares cover its measured runtime; apply the same rate to
  // the whole window (start-up and ramp included) to estimate others' load.
  return { figure: anchorFigure(spec, raw, otherLoadPct(window, raw.usrCpuPct + raw.sysCpuPct)), raw };
}

function anchorFigure(spec: AnchorSpec, m: FioMeasurement, otherLoad: number | null): Figure {
  const sync = m.syncLatNs;
  // At fdatasync=1 and qd1 a durable write is the write then its fdatasync;
  // fio times them apart, so the durable latency is their sum (means only).
  const durableText =
    spec.fdatasyncEvery === 1 && sync !== null
      ? `; write+sync mean ${((m.latNs.mean + sync.mean) / 1000).toFixed(1)} µs`
      : '';
  const syncText =
    sync === null
      ? 'no syncs'
      : `${m.syncCount} fdatasyncs, sync mean ${(sync.mean / 1000).toFixed(1)} µs p99 ${(sync.p99 / 1000).toFixed(1)} µs`;
  return {
    name: spec.label,
    value: m.iops,
    unit: 'IOPS',
    cpuUsPerOp: m.cpuUsPerOp,
    latencyUs: { mean: m.latNs.mean / 1000, p50: m.latNs.p50 / 1000, p99: m.latNs.p99 / 1000 },
    otherLoadPct: otherLoad,
    detail:
      `write lat mean ${(m.latNs.mean / 1000).toFixed(1)} µs; ${syncText}${durableText}; ` +
      `fio usr ${m.usrCpuPct.toFixed(1)} % sys ${m.sysCpuPct.toFixed(1)} %`,
  };
}
