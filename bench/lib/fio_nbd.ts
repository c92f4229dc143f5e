// fio's nbd engine (libnbd) as a client of an NBD server: typed jobs in,
// parsed figures out, the same JSON parsing as lib/fio.ts.
//
// Rules:
// - The server is named by an NBD URI (`nbd+unix:///EXPORT?socket=PATH`);
//   there is no filename. fio takes the export's size from the server; the
//   job's sizeBytes bounds the range it touches and must not exceed it.
// - Durability is asked for with fsync=N: the engine turns DDIR_SYNC into an
//   NBD FLUSH. It answers fdatasync (DDIR_DATASYNC) with EINVAL, so this job
//   type has no fdatasync field.
// - O_DIRECT means nothing to a network client; the server decides how it
//   does I/O. No direct= is passed.

import { assert } from './bench';
import type { FioFigures, FioRw } from './fio';
import { fioCommonArgs, parseFioFigures, runFioReport, spawnCollect } from './fio';

export interface NbdFioJob {
  readonly name: string;
  readonly uri: string;
  readonly rw: FioRw;
  readonly bsBytes: number;
  readonly sizeBytes: number;
  readonly iodepth: number;
  /** An NBD FLUSH after every N writes (0 = never). */
  readonly fsyncEvery: number;
  /** Time-based run of this length; absent = one pass over sizeBytes. */
  readonly runtimeMs?: number;
  /** Unmeasured lead-in before the runtime window. */
  readonly rampMs?: number;
  /** One FLUSH when the job ends (used by the prefill). */
  readonly endFsync?: boolean;
}

export interface NbdFioMeasurement extends FioFigures {
  readonly job: NbdFioJob;
  /** NBD requests in the window: data requests plus FLUSHes. */
  readonly requests: number;
}

/** The URI of an export on a Unix socket, as libnbd parses it. */
export function nbdUnixUri(socketPath: string, exportName: string): string {
  assert(/^[A-Za-z0-9._-]*$/.test(exportName), `export name '${exportName}' would need URI escaping`);
  assert(!/[?&#%\s]/.test(socketPath), `socket path '${socketPath}' would need URI escaping`);
  return `nbd+unix:///${exportName}?socket=${socketPath}`;
}

/** true when this fio was built with the nbd engine. */
export function fioHasNbdEngine(): Promise<boolean> {
  return spawnCollect('fio', ['--enghelp=nbd']).then(
    ({ code }) => code === 0,
    () => false,
  );
}

export function nbdFioArgs(job: NbdFioJob): string[] {
  assert(job.bsBytes > 0 && job.bsBytes % 512 === 0, `${job.name}: bs ${job.bsBytes} is not a multiple of 512`);
  assert(job.sizeBytes >= job.bsBytes, `${job.name}: size below bs`);
  assert(job.iodepth >= 1 && Number.isInteger(job.iodepth), `${job.name}: iodepth ${job.iodepth}`);
  assert(job.fsyncEvery >= 0 && Number.isInteger(job.fsyncEvery), `${job.name}: fsync ${job.fsyncEvery}`);
  return [
    `--name=${job.name}`,
    '--ioengine=nbd',
    `--uri=${job.uri}`,
    `--rw=${job.rw}`,
    `--bs=${job.bsBytes}`,
    `--size=${job.sizeBytes}`,
    `--iodepth=${job.iodepth}`,
    `--fsync=${job.fsyncEvery}`,
    ...fioCommonArgs(job),
  ];
}

/** Runs one job against the server to completion and parses its JSON report. */
export async function runNbdFio(job: NbdFioJob, outputDir: string): Promise<NbdFioMeasurement> {
  const text = await runFioReport(`nbd-${job.name}`, nbdFioArgs(job), outputDir);
  const figures = parseFioFigures(job.name, job.rw, text);
  if (job.fsyncEvery > 0) assert(figures.syncCount > 0, `fio ${job.name}: fsync=${job.fsyncEvery} but no FLUSH measured`);
  return { job, ...figures, requests: figures.ops + figures.syncCount };
}
