// fio's nbd engine as a background load whose IOPS are read afterwards over
// any stretch of wall time: for a foreground workload measured while
// something else runs for a length not known in advance (a rebuild).
//
// fio logs its IOPS averaged over every intervalMs (--write_iops_log with
// --log_avg_msec) and stamps each line with Unix epoch milliseconds
// (--log_unix_epoch=1), the clock of Date.now() here and of the servers'
// own wall-clock stamps. A line `END_MS, IOPS, DIR, BS, OFFSET` is taken as
// the interval (END_MS − intervalMs, END_MS].
//
// Rules: the job is time-based (its runtime is a cap); stop() ends it early
// with SIGINT to the fio process this module started (fio then finishes its
// I/O and writes its logs); an fio that exits on its own with an error, or
// leaves no log, fails the run. A stopped fio is not left behind when the
// bench process exits.
import type { ChildProcess } from 'node:child_process';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

import { assert } from './bench';
import type { NbdFioJob } from './fio_nbd';
import { nbdFioArgs } from './fio_nbd';

export interface IopsInterval {
  /** Unix epoch ms at the interval's end. */
  readonly endMs: number;
  readonly iops: number;
}

export interface IopsOverWindow {
  readonly iops: number;
  readonly intervals: number;
  /** Lowest and highest interval inside the window. */
  readonly minIops: number;
  readonly maxIops: number;
}

const STDERR_TAIL_BYTES = 8 << 10;
const STOP_TIMEOUT_MS = 60_000;

export class NbdFioTimeline {
  private stderrTail = '';
  private exit: { code: number | null; signal: NodeJS.Signals | null } | null = null;
  private stopRequested = false;
  private readonly exited: Promise<void>;

  private constructor(
    readonly job: NbdFioJob,
    readonly intervalMs: number,
    /** Unix epoch ms when fio was spawned. */
    readonly spawnedMs: number,
    private readonly child: ChildProcess,
    private readonly logPrefix: string,
    private readonly outputFile: string,
  ) {
    this.exited = new Promise((resolve) => {
      child.once('exit', (code, signal) => {
        this.exit = { code, signal };
        process.removeListener('exit', this.killOnExit);
        resolve();
      });
    });
    child.stderr!.setEncoding('utf8');
    child.stderr!.on('data', (chunk: string) => {
      this.stderrTail = (this.stderrTail + chunk).slice(-STDERR_TAIL_BYTES);
    });
    process.on('exit', this.killOnExit);
  }

  /** Spawns fio on job (which must be time-based: its runtime is the cap). */
  static start(job: NbdFioJob, outputDir: string, intervalMs: number): NbdFioTimeline {
    assert(job.runtimeMs !== undefined && job.runtimeMs > 0, `${job.name}: a timeline job needs a runtime cap`);
    assert(Number.isInteger(intervalMs) && intervalMs >= 10, `${job.name}: log interval ${intervalMs} ms`);
    const logPrefix = path.join(outputDir, `fio-timeline-${job.name}`);
    const outputFile = `${logPrefix}.json`;
    const args = [
      '--output-format=json',
      `--output=${outputFile}`,
      ...nbdFioArgs(job),
      `--write_iops_log=${logPrefix}`,
      `--log_avg_msec=${intervalMs}`,
      '--log_unix_epoch=1',
    ];
    const spawnedMs = Date.now();
    const child = spawn('fio', args, { stdio: ['ignore', 'ignore', 'pipe'] });
    return new NbdFioTimeline(job, intervalMs, spawnedMs, child, logPrefix, outputFile);
  }

  /** Throws when fio has already ended with an error (call while the load should be running). */
  assertRunning(): void {
    if (this.exit !== null) throw new Error(`fio ${this.job.name} ended early: ${this.describeExit()}\n${this.stderrTail.trim()}`);
  }

  /** Ends fio (SIGINT) if it still runs, then returns its IOPS log. */
  async stop(): Promise<IopsInterval[]> {
    if (this.exit === null) {
      this.stopRequested = true;
      this.child.kill('SIGINT');
      const timer = setTimeout(() => this.child.kill('SIGKILL'), STOP_TIMEOUT_MS);
      await this.exited;
      clearTimeout(timer);
    }
    return this.collect();
  }

  /** Waits for fio to reach its runtime, then returns its IOPS log. */
  async done(): Promise<IopsInterval[]> {
    await this.exited;
    return this.collect();
  }

  private collect(): IopsInterval[] {
    const e = this.exit!;
    // Stopped by us, fio exits non-zero by design; on its own it must exit 0.
    if (!this.stopRequested && e.code !== 0) {
      throw new Error(`fio ${this.job.name} failed: ${this.describeExit()}\n${this.stderrTail.trim()}`);
    }
    const logFile = `${this.logPrefix}_iops.1.log`;
    assert(fs.existsSync(logFile), `fio ${this.job.name} left no IOPS log (${this.describeExit()})\n${this.stderrTail.trim()}`);
    const intervals = parseIopsLog(fs.readFileSync(logFile, 'utf8'), this.job.name);
    fs.rmSync(logFile, { force: true });
    fs.rmSync(this.outputFile, { force: true });
    assert(intervals.length > 0, `fio ${this.job.name}: empty IOPS log`);
    return intervals;
  }

  private describeExit(): string {
    const e = this.exit;
    if (e === null) return 'running';
    return e.signal !== null ? `signal ${e.signal}` : `exit code ${e.code}`;
  }

  private readonly killOnExit = (): void => {
    if (this.exit === null) this.child.kill('SIGKILL');
  };
}

/** The mean IOPS over the intervals that lie wholly within [fromMs, toMs] (Unix epoch ms). */
export function iopsWithin(intervals: readonly IopsInterval[], intervalMs: number, fromMs: number, toMs: number): IopsOverWindow | null {
  const inside = intervals.filter((i) => i.endMs - intervalMs >= fromMs && i.endMs <= toMs);
  if (inside.length === 0) return null;
  const values = inside.map((i) => i.iops);
  return {
    iops: values.reduce((sum, v) => sum + v, 0) / values.length,
    intervals: values.length,
    minIops: Math.min(...values),
    maxIops: Math.max(...values),
  };
}

// One line per interval: `END_MS, VALUE, DIRECTION, BS, OFFSET[, PRIO]`; direction 1 = write.
function parseIopsLog(text: string, name: string): IopsInterval[] {
  const intervals: IopsInterval[] = [];
  for (const line of text.split('\n')) {
    if (line.trim() === '') continue;
    const fields = line.split(',').map((f) => Number(f.trim()));
    const [endMs, iops, direction] = fields;
    assert(fields.length >= 3 && Number.isFinite(endMs) && Number.isFinite(iops), `fio ${name}: bad IOPS log line '${line}'`);
    if (direction !== 1) continue;
    intervals.push({ endMs: endMs!, iops: iops! });
  }
  for (let i = 1; i < intervals.length; i++) {
    assert(intervals[i]!.endMs >= intervals[i - 1]!.endMs, `fio ${name}: IOPS log goes back in time at line ${i + 1}`);
  }
  return intervals;
}
