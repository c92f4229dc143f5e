// fio as a measuring instrument: typed job descriptions in, parsed figures out.
//
// Rules:
// - fio must be on PATH; fioVersion() returns null when it is not, and the
//   bench then skips with `skipped: missing fio`.
// - Every job runs alone, with --output-format=json written to a file (fio
//   prints warnings on stdout/stderr too, which would corrupt a JSON stream).
// - Anchors measure overwrites of allocated blocks: prewriteFile() writes the
//   whole scratch file first. Unwritten (fallocated) extents make each
//   fdatasync also commit an extent conversion, about doubling its cost
//   (reference/io.md §3.2), which would flatter anything compared against it.
// - CPU per op is fio's own usr+sys share of its runtime, the same measure
//   (getrusage of the whole process) that cpu.ts takes for our process.
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

import { assert } from './bench';

export type FioRw = 'read' | 'write' | 'randread' | 'randwrite';
export type FioEngine = 'io_uring' | 'psync' | 'libaio' | 'sync';

export interface FioJob {
  readonly name: string;
  readonly filename: string;
  readonly rw: FioRw;
  readonly bsBytes: number;
  readonly sizeBytes: number;
  readonly ioengine: FioEngine;
  readonly iodepth: number;
  /** O_DIRECT. Passed explicitly on every job; never left to fio's default. */
  readonly direct: boolean;
  /** fdatasync after every N writes (0 = never). */
  readonly fdatasyncEvery: number;
  /** Time-based run of this length; absent = one pass over sizeBytes. */
  readonly runtimeMs?: number;
  /** Unmeasured lead-in before the runtime window. */
  readonly rampMs?: number;
  /** fsync the file when the job ends (used by the pre-write). */
  readonly endFsync?: boolean;
}

export interface FioLatencyNs {
  readonly mean: number;
  readonly p50: number;
  readonly p99: number;
  readonly p999: number;
}

export interface FioMeasurement {
  readonly job: FioJob;
  readonly fioVersion: string;
  readonly ops: number;
  readonly runtimeMs: number;
  readonly iops: number;
  readonly bandwidthBytesPerSec: number;
  /** Submission to completion of each I/O. */
  readonly latNs: FioLatencyNs;
  /** Kernel completion latency as fio measures it. */
  readonly clatNs: FioLatencyNs;
  /** The fdatasync calls, when the job issues any. */
  readonly syncCount: number;
  readonly syncLatNs: FioLatencyNs | null;
  readonly usrCpuPct: number;
  readonly sysCpuPct: number;
  readonly cpuUsPerOp: number;
}

/** fio's version string, or null when fio is not on PATH. */
export function fioVersion(): string | null {
  const probe = spawnSync('fio', ['--version'], { encoding: 'utf8' });
  if (probe.error !== undefined || probe.status !== 0) return null;
  return probe.stdout.trim();
}

export function fioArgs(job: FioJob): string[] {
  assert(job.bsBytes > 0 && job.bsBytes % 512 === 0, `${job.name}: bs ${job.bsBytes} is not a multiple of 512`);
  assert(job.sizeBytes >= job.bsBytes, `${job.name}: size below bs`);
  assert(job.iodepth >= 1 && Number.isInteger(job.iodepth), `${job.name}: iodepth ${job.iodepth}`);
  assert(job.fdatasyncEvery >= 0 && Number.isInteger(job.fdatasyncEvery), `${job.name}: fdatasync`);
  return [
    `--name=${job.name}`,
    `--filename=${job.filename}`,
    `--rw=${job.rw}`,
    `--bs=${job.bsBytes}`,
    `--size=${job.sizeBytes}`,
    `--ioengine=${job.ioengine}`,
    `--iodepth=${job.iodepth}`,
    `--direct=${job.direct ? 1 : 0}`,
    `--fdatasync=${job.fdatasyncEvery}`,
    ...fioCommonArgs(job),
  ];
}

/** The arguments every job shares: end sync, latency percentiles, one job, timing. */
export function fioCommonArgs(job: { endFsync?: boolean; runtimeMs?: number; rampMs?: number }): string[] {
  const args = [
    `--end_fsync=${job.endFsync === true ? 1 : 0}`,
    '--lat_percentiles=1',
    '--percentile_list=50:99:99.9',
    '--numjobs=1',
    '--group_reporting=0',
  ];
  if (job.runtimeMs !== undefined) args.push('--time_based=1', `--runtime=${Math.round(job.runtimeMs)}ms`);
  if (job.rampMs !== undefined && job.rampMs > 0) args.push(`--ramp_time=${Math.round(job.rampMs)}ms`);
  return args;
}

/** Runs fio with args to completion and returns its JSON report's text. */
export async function runFioReport(name: string, args: string[], outputDir: string): Promise<string> {
  const outputFile = path.join(outputDir, `fio-${name}.json`);
  const { code, stderr } = await spawnCollect('fio', ['--output-format=json', `--output=${outputFile}`, ...args]);
  if (code !== 0) throw new Error(`fio ${name} exited with ${code}: ${stderr.trim()}`);
  const text = fs.readFileSync(outputFile, 'utf8');
  fs.rmSync(outputFile, { force: true });
  return text;
}

/** Runs one job to completion and parses its JSON report. */
export async function runFio(job: FioJob, outputDir: string): Promise<FioMeasurement> {
  return parseFioJson(job, await runFioReport(job.name, fioArgs(job), outputDir));
}

/**
 * Writes the whole file once with large direct writes and fsyncs it, so later
 * jobs overwrite allocated, written blocks.
 */
export async function prewriteFile(filename: string, sizeBytes: number, outputDir: string): Promise<FioMeasurement> {
  return runFio(
    {
      name: 'prewrite',
      filename,
      rw: 'write',
      bsBytes: 1 << 20,
      sizeBytes,
      ioengine: 'io_uring',
      iodepth: 8,
      direct: true,
      fdatasyncEvery: 0,
      endFsync: true,
    },
    outputDir,
  );
}

export function parseFioJson(job: FioJob, text: string): FioMeasurement {
  return { job, ...parseFioFigures(job.name, job.rw, text) };
}

/** What a fio report says about one job, whatever built the job (FioJob or another engine's job type). */
export type FioFigures = Omit<FioMeasurement, 'job'>;

/** Parses the JSON report of a one-job fio run; rw picks the direction whose figures count. */
export function parseFioFigures(name: string, rw: FioRw, text: string): FioFigures {
  // fio can print notices before the JSON even with --output; start at the object.
  const start = text.indexOf('{');
  assert(start >= 0, `fio ${name}: no JSON in output`);
  const report = JSON.parse(text.slice(start)) as FioReport;
  assert(report.jobs.length === 1, `fio ${name}: expected 1 job, got ${report.jobs.length}`);
  const j = report.jobs[0]!;
  if (j.error !== 0) throw new Error(`fio ${name}: job error ${j.error}`);
  const dir = rw === 'read' || rw === 'randread' ? j.read : j.write;
  const runtimeMs = dir.runtime;
  assert(dir.total_ios > 0 && runtimeMs > 0, `fio ${name}: no I/O measured`);
  const cpuUs = ((j.usr_cpu + j.sys_cpu) / 100) * j.job_runtime * 1000;
  return {
    fioVersion: report['fio version'],
    ops: dir.total_ios,
    runtimeMs,
    iops: dir.iops,
    bandwidthBytesPerSec: dir.bw_bytes,
    latNs: latency(dir.lat_ns),
    clatNs: latency(dir.clat_ns),
    syncCount: j.sync.lat_ns.N ?? 0,
    syncLatNs: (j.sync.lat_ns.N ?? 0) > 0 ? latency(j.sync.lat_ns) : null,
    usrCpuPct: j.usr_cpu,
    sysCpuPct: j.sys_cpu,
    cpuUsPerOp: cpuUs / dir.total_ios,
  };
}

function latency(stat: FioLatStat): FioLatencyNs {
  const pct = stat.percentile ?? {};
  return {
    mean: stat.mean,
    p50: pct['50.000000'] ?? NaN,
    p99: pct['99.000000'] ?? NaN,
    p999: pct['99.900000'] ?? NaN,
  };
}

/** Runs a command to its end with stdin and stdout ignored; resolves with its exit code and stderr. */
export function spawnCollect(cmd: string, args: string[]): Promise<{ code: number; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (chunk: string) => {
      stderr += chunk;
    });
    child.on('error', reject);
    child.on('close', (code, signal) => resolve({ code: code ?? (signal !== null ? 128 : 1), stderr }));
  });
}

// The slice of fio's JSON report (fio 3.x) this module reads.
interface FioLatStat {
  readonly mean: number;
  readonly N?: number;
  readonly percentile?: Record<string, number>;
}

interface FioDirection {
  readonly total_ios: number;
  readonly runtime: number;
  readonly iops: number;
  readonly bw_bytes: number;
  readonly lat_ns: FioLatStat;
  readonly clat_ns: FioLatStat;
}

interface FioReport {
  readonly 'fio version': string;
  readonly jobs: ReadonlyArray<{
    readonly error: number;
    readonly job_runtime: number;
    readonly usr_cpu: number;
    readonly sys_cpu: number;
    readonly read: FioDirection;
    readonly write: FioDirection;
    readonly sync: { readonly lat_ns: FioLatStat };
  }>;
}
