// CPU accounting over a measurement window.
//
// Process CPU comes from process.cpuUsage(), which is getrusage(RUSAGE_SELF):
// every thread of this process, including libuv and V8 helper threads and the
// io_uring io-wq workers the kernel runs on our behalf. Dividing it by the
// operations completed in the window gives the honest CPU cost per operation,
// harness overhead included.
//
// Host CPU comes from /proc/stat. On a shared 2-vCPU machine, host busy time
// minus our own (or fio's) CPU is the load someone else put on the box during
// the window, and steal is time the hypervisor took away: both say how far to
// trust a figure.
import * as fs from 'node:fs';
import * as os from 'node:os';

export interface CpuSnapshot {
  readonly atMs: number;
  readonly process: NodeJS.CpuUsage;
  readonly host: HostJiffies | null;
}

interface HostJiffies {
  readonly busy: number;
  readonly steal: number;
  readonly total: number;
}

export interface CpuWindow {
  readonly wallMs: number;
  readonly processUserUs: number;
  readonly processSystemUs: number;
  readonly processUs: number;
  /** Host-wide busy share over the window, 0..100 % of all CPUs; null without /proc/stat. */
  readonly hostBusyPct: number | null;
  readonly hostStealPct: number | null;
  readonly cpuCount: number;
}

export function cpuSnapshot(): CpuSnapshot {
  return { atMs: performance.now(), process: process.cpuUsage(), host: readHostJiffies() };
}

export function cpuSince(start: CpuSnapshot): CpuWindow {
  const end = cpuSnapshot();
  const used = process.cpuUsage(start.process);
  let hostBusyPct: number | null = null;
  let hostStealPct: number | null = null;
  if (start.host !== null && end.host !== null && end.host.total > start.host.total) {
    const total = end.host.total - start.host.total;
    hostBusyPct = (100 * (end.host.busy - start.host.busy)) / total;
    hostStealPct = (100 * (end.host.steal - start.host.steal)) / total;
  }
  return {
    wallMs: end.atMs - start.atMs,
    processUserUs: used.user,
    processSystemUs: used.system,
    processUs: used.user + used.system,
    hostBusyPct,
    hostStealPct,
    cpuCount: os.cpus().length,
  };
}

/**
 * Share of the whole host (all CPUs) that was busy with something other than
 * the measured work, given the measured work's CPU use as a share of one CPU
 * (100 = one CPU fully busy) over the same window. Approximate: interrupt work
 * done for our I/O on another CPU counts as other load.
 */
export function otherLoadPct(window: CpuWindow, measuredPctOfOneCpu: number): number | null {
  if (window.hostBusyPct === null || window.wallMs <= 0) return null;
  return Math.max(0, window.hostBusyPct - measuredPctOfOneCpu / window.cpuCount);
}

/** This process's CPU over the window as a share of one CPU (100 = one CPU busy). */
export function processPctOfOneCpu(window: CpuWindow): number {
  return window.wallMs <= 0 ? 0 : (100 * window.processUs) / (window.wallMs * 1000);
}

function readHostJiffies(): HostJiffies | null {
  let text: string;
  try {
    text = fs.readFileSync('/proc/stat', 'utf8');
  } catch {
    return null;
  }
  const line = text.slice(0, text.indexOf('\n'));
  // cpu user nice system idle iowait irq softirq steal guest guest_nice
  const fields = line.trim().split(/\s+/).slice(1, 9).map(Number);
  if (fields.length < 8 || fields.some((f) => !Number.isFinite(f))) return null;
  const [user, nice, system, idle, iowait, irq, softirq, steal] = fields as [
    number, number, number, number, number, number, number, number,
  ];
  const busy = user + nice + system + irq + softirq + steal;
  return { busy, steal, total: busy + idle + iowait };
}

export interface QuietWait {
  readonly waitedMs: number;
  readonly quiet: boolean;
  readonly lastBusyPct: number | null;
}

/**
 * Waits until the host has been below busyLimitPct (of all CPUs) for one
 * sample period, or maxWaitMs has passed. Other people's builds and test runs
 * on a shared 2-vCPU machine would otherwise land inside a window.
 */
export async function waitForQuietHost(busyLimitPct: number, maxWaitMs: number, sampleMs = 500): Promise<QuietWait> {
  const startMs = performance.now();
  let busy: number | null = null;
  for (;;) {
    const before = cpuSnapshot();
    await new Promise((resolve) => setTimeout(resolve, sampleMs));
    busy = cpuSince(before).hostBusyPct;
    const waitedMs = performance.now() - startMs;
    if (busy === null || busy < busyLimitPct) return { waitedMs, quiet: true, lastBusyPct: busy };
    if (waitedMs >= maxWaitMs) return { waitedMs, quiet: false, lastBusyPct: busy };
  }
}
