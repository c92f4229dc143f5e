// A server under test as a child process: start it, know when it listens,
// read its CPU time from /proc, wait for it to go idle, stop it.
//
// CPU comes from /proc/PID/stat (utime + stime of the whole thread group,
// threads that have exited included) and, for the breakdown, from
// /proc/PID/task/TID/stat per live thread, grouped by thread name with digits
// dropped (iou-wrk-1234 → iou-wrk); the thread whose tid is the pid is
// 'main'. A thread that exits between two samples is counted only in the
// total; the difference between the total and the sum over live threads is
// reported as '(exited threads)' (nbdkit's per-connection threads end with
// fio's connection). The resolution is one clock tick (getconf CLK_TCK,
// usually 10 ms).
//
// Rules: the bench stops only the processes it started, by pid (SIGTERM, then
// SIGKILL after a bound); a child still alive when the bench process exits is
// killed by an exit hook, so a failed run leaves no server behind.
import type { ChildProcess } from 'node:child_process';
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';

import { assert } from './bench';
import { parseProcStat } from './proc_stat';

export interface ServerStartOptions {
  /** Name in logs and errors. */
  readonly name: string;
  readonly command: string;
  readonly args: readonly string[];
  readonly env?: NodeJS.ProcessEnv;
  /** Resolves true once the server accepts connections (called every POLL_MS). */
  readonly ready: (stderrText: string) => boolean;
  readonly readyTimeoutMs: number;
}

export interface CpuTicks {
  readonly userUs: number;
  readonly systemUs: number;
}

export interface ServerCpuSample {
  readonly atMs: number;
  readonly total: CpuTicks;
  /** Live threads by tid: name and CPU so far. */
  readonly threads: ReadonlyMap<number, { readonly name: string; readonly cpu: CpuTicks }>;
}

export interface ServerCpuDelta {
  readonly wallMs: number;
  readonly userUs: number;
  readonly systemUs: number;
  readonly totalUs: number;
  /** CPU µs by thread name (digits dropped); '(exited threads)' = threads gone before the end sample. */
  readonly byThreadUs: Readonly<Record<string, number>>;
}

const POLL_MS = 50;
const STDERR_TAIL_BYTES = 16 << 10;
const STOP_TIMEOUT_MS = 120_000;
const CLOCK_TICKS_PER_SEC = clockTicksPerSec();

export class ServerProcess {
  private stderrTail = '';
  private exited: { code: number | null; signal: NodeJS.Signals | null } | null = null;
  private readonly exitedPromise: Promise<void>;

  private constructor(
    readonly name: string,
    private readonly child: ChildProcess,
    readonly pid: number,
  ) {
    this.exitedPromise = new Promise((resolve) => {
      child.once('exit', (code, signal) => {
        this.exited = { code, signal };
        process.removeListener('exit', this.killOnExit);
        resolve();
      });
    });
    child.stderr!.setEncoding('utf8');
    child.stderr!.on('data', (chunk: string) => {
      // Always drained: a server blocked on a full stderr pipe would measure as slow.
      this.stderrTail = (this.stderrTail + chunk).slice(-STDERR_TAIL_BYTES);
    });
    process.on('exit', this.killOnExit);
  }

  static async start(options: ServerStartOptions): Promise<ServerProcess> {
    const child = spawn(options.command, [...options.args], {
      stdio: ['ignore', 'ignore', 'pipe'],
      env: options.env ?? process.env,
    });
    const pid = await new Promise<number>((resolve, reject) => {
      child.once('spawn', () => resolve(child.pid!));
      child.once('error', reject);
    });
    const server = new ServerProcess(options.name, child, pid);
    const startedMs = performance.now();
    while (!options.ready(server.stderrTail)) {
      if (server.exited !== null) throw new Error(`${server.describeExit()} before it was ready\n${server.stderrTail}`);
      if (performance.now() - startedMs > options.readyTimeoutMs) {
        await server.stop();
        throw new Error(`${options.name} not ready after ${options.readyTimeoutMs} ms\n${server.stderrTail}`);
      }
      await sleep(POLL_MS);
    }
    return server;
  }

  /** The last STDERR_TAIL_BYTES of the server's stderr. */
  get stderr(): string {
    return this.stderrTail;
  }

  /** Throws when the server has died (call before and after each measurement). */
  assertAlive(): void {
    if (this.exited !== null) throw new Error(`${this.describeExit()}\n${this.stderrTail}`);
  }

  cpuSample(): ServerCpuSample {
    this.assertAlive();
    const total = readStatTicks(`/proc/${this.pid}/stat`);
    assert(total !== null, `${this.name}: cannot read /proc/${this.pid}/stat`);
    const threads = new Map<number, { name: string; cpu: CpuTicks }>();
    let tids: string[] = [];
    try {
      tids = fs.readdirSync(`/proc/${this.pid}/task`);
    } catch {
      // The breakdown is optional; the total above is not.
    }
    for (const tid of tids) {
      const stat = readStat(`/proc/${this.pid}/task/${tid}/stat`);
      if (stat !== null) threads.set(Number(tid), { name: threadLabel(this.pid, Number(tid), stat.name), cpu: stat.cpu });
    }
    return { atMs: performance.now(), total: total.cpu, threads };
  }

  /**
   * Waits until the server has used under maxBusyPct of one CPU in each of
   * quietSamples consecutive sampleMs periods, or maxWaitMs has passed.
   * Returns the CPU it used while waiting (background work: checkpoints).
   */
  async waitForIdle(
    maxBusyPct: number,
    options: { sampleMs?: number; quietSamples?: number; maxWaitMs?: number } = {},
  ): Promise<{ idle: boolean; waitedMs: number; cpu: ServerCpuDelta }> {
    const { sampleMs = 500, quietSamples = 4, maxWaitMs = 120_000 } = options;
    const start = this.cpuSample();
    let quiet = 0;
    let previous = start;
    for (;;) {
      await sleep(sampleMs);
      const now = this.cpuSample();
      const busyPct = (100 * cpuTotalUs(now.total, previous.total)) / ((now.atMs - previous.atMs) * 1000);
      previous = now;
      quiet = busyPct < maxBusyPct ? quiet + 1 : 0;
      const waitedMs = now.atMs - start.atMs;
      if (quiet >= quietSamples || waitedMs >= maxWaitMs) {
        return { idle: quiet >= quietSamples, waitedMs, cpu: cpuBetween(start, now) };
      }
    }
  }

  /** SIGTERM, wait for the exit (SIGKILL after STOP_TIMEOUT_MS); returns how it ended. */
  async stop(): Promise<string> {
    if (this.exited === null) {
      this.child.kill('SIGTERM');
      const timer = setTimeout(() => this.child.kill('SIGKILL'), STOP_TIMEOUT_MS);
      await this.exitedPromise;
      clearTimeout(timer);
    }
    return this.describeExit();
  }

  private describeExit(): string {
    const e = this.exited;
    if (e === null) return `${this.name} (pid ${this.pid}) running`;
    return `${this.name} (pid ${this.pid}) exited with ${e.signal !== null ? `signal ${e.signal}` : `code ${e.code}`}`;
  }

  private readonly killOnExit = (): void => {
    if (this.exited === null) this.child.kill('SIGKILL');
  };
}

/** CPU between two samples of one server: totals and the per-thread-name breakdown. */
export function cpuBetween(start: ServerCpuSample, end: ServerCpuSample): ServerCpuDelta {
  const userUs = end.total.userUs - start.total.userUs;
  const systemUs = end.total.systemUs - start.total.systemUs;
  const byThreadUs: Record<string, number> = {};
  let liveUs = 0;
  for (const [tid, thread] of end.threads) {
    const before = start.threads.get(tid);
    // A thread born inside the window spent all its CPU inside it.
    const usedUs = cpuTotalUs(thread.cpu, before?.name === thread.name ? before.cpu : ZERO_TICKS);
    liveUs += usedUs;
    byThreadUs[thread.name] = (byThreadUs[thread.name] ?? 0) + usedUs;
  }
  const exitedUs = userUs + systemUs - liveUs;
  if (exitedUs > 0) byThreadUs['(exited threads)'] = exitedUs;
  return { wallMs: end.atMs - start.atMs, userUs, systemUs, totalUs: userUs + systemUs, byThreadUs };
}

/** The contents of /proc/loadavg's first three fields, e.g. '0.52 0.61 0.70'. */
export function loadAverages(): string {
  try {
    return fs.readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');
  } catch {
    return 'unknown';
  }
}

const ZERO_TICKS: CpuTicks = { userUs: 0, systemUs: 0 };

/** 'main' for the thread whose tid is the pid (a Node server's JS thread), else the name without digits. */
function threadLabel(pid: number, tid: number, comm: string): string {
  if (tid === pid) return 'main';
  return comm.replace(/[0-9]+/g, '').replace(/[-_ ]+$/, '') || 'unnamed';
}

function cpuTotalUs(end: CpuTicks, start: CpuTicks): number {
  return end.userUs - start.userUs + end.systemUs - start.systemUs;
}

function readStatTicks(file: string): { cpu: CpuTicks } | null {
  const stat = readStat(file);
  return stat === null ? null : { cpu: stat.cpu };
}

// A thread's name and CPU from its stat file (utime and stime: proc(5) fields 14, 15).
function readStat(file: string): { name: string; cpu: CpuTicks } | null {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch {
    return null;
  }
  const stat = parseProcStat(text);
  if (stat === null) return null;
  const utime = Number(stat.fields[11]);
  const stime = Number(stat.fields[12]);
  if (!Number.isFinite(utime) || !Number.isFinite(stime)) return null;
  const usPerTick = 1e6 / CLOCK_TICKS_PER_SEC;
  return { name: stat.comm, cpu: { userUs: utime * usPerTick, systemUs: stime * usPerTick } };
}

function clockTicksPerSec(): number {
  const probe = spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' });
  const value = Number(probe.stdout?.trim());
  return probe.status === 0 && Number.isInteger(value) && value > 0 ? value : 100;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
