// CPU time of the kernel's own threads (kthreadd's children) over a window,
// by kind: kworker, ksoftirqd, jbd2, ... None of it is in a server's own CPU
// figures, only in the machine-wide busy time. The largest part on ext4 is
// direct-I/O write completion: io_uring does not let the file system finish
// a write in the submitter's context (it does not set IOCB_DIO_CALLER_COMP),
// so each completed write is handed to a kworker (the `dio/<device>`
// workqueue), which then queues the CQE back to the submitting thread.
//
// Times come from /proc/<pid>/schedstat (nanoseconds on a CPU). A thread that
// exits during the window takes its time with it; one that starts is counted
// from zero.
import * as fs from 'node:fs';

import { parseProcStat } from './proc_stat';

export interface KernelThreadsSnapshot {
  readonly atMs: number;
  /** Nanoseconds on a CPU so far, by pid, with the thread's kind. */
  readonly threads: ReadonlyMap<number, { readonly kind: string; readonly ns: number }>;
}

export interface KernelThreadsWindow {
  readonly wallMs: number;
  /** Microseconds on a CPU over the window, by kind, largest first. */
  readonly byKind: readonly { readonly kind: string; readonly us: number }[];
  readonly totalUs: number;
}

const KTHREADD_PID = 2;

// Null where /proc has no kernel threads to read (not Linux, or hidden).
export function kernelThreadsSnapshot(procDir = '/proc'): KernelThreadsSnapshot | null {
  let entries: string[];
  try {
    entries = fs.readdirSync(procDir);
  } catch {
    return null;
  }
  const threads = new Map<number, { kind: string; ns: number }>();
  for (const name of entries) {
    if (!/^\d+$/.test(name)) continue;
    const pid = Number(name);
    let stat: string;
    let schedstat: string;
    try {
      stat = fs.readFileSync(`${procDir}/${name}/stat`, 'utf8');
      schedstat = fs.readFileSync(`${procDir}/${name}/schedstat`, 'utf8');
    } catch {
      continue; // gone meanwhile, or not readable
    }
    const parsed = parseStat(stat);
    if (parsed === null || (parsed.ppid !== KTHREADD_PID && pid !== KTHREADD_PID)) continue;
    const ns = Number(schedstat.trim().split(/\s+/)[0]);
    if (!Number.isFinite(ns)) continue;
    threads.set(pid, { kind: kernelThreadKind(parsed.comm), ns });
  }
  if (threads.size === 0) return null;
  return { atMs: performance.now(), threads };
}

export function kernelThreadsSince(start: KernelThreadsSnapshot | null, procDir = '/proc'): KernelThreadsWindow | null {
  if (start === null) return null;
  const end = kernelThreadsSnapshot(procDir);
  if (end === null) return null;
  const byKind = new Map<string, number>();
  for (const [pid, t] of end.threads) {
    const before = start.threads.get(pid);
    // A pid reused by another kind of thread is a new thread.
    const fromNs = before !== undefined && before.kind === t.kind && before.ns <= t.ns ? before.ns : 0;
    byKind.set(t.kind, (byKind.get(t.kind) ?? 0) + (t.ns - fromNs) / 1000);
  }
  const kinds = [...byKind].map(([kind, us]) => ({ kind, us })).sort((a, b) => b.us - a.us);
  return { wallMs: end.atMs - start.atMs, byKind: kinds, totalUs: kinds.reduce((sum, k) => sum + k.us, 0) };
}

// "kernel threads 3.9 µs per write (kworker 3.6, ksoftirqd 0.2)": kinds
// below 0.05 µs per op are left out of the list (not the total).
export function kernelThreadsText(w: KernelThreadsWindow, opsPerSec: number, op: string): string {
  const perOp = (us: number): number => us / ((w.wallMs / 1000) * opsPerSec);
  const shown = w.byKind.filter((k) => perOp(k.us) >= 0.05).map((k) => `${k.kind} ${perOp(k.us).toFixed(2)}`);
  return `kernel threads ${perOp(w.totalUs).toFixed(2)} µs per ${op}${shown.length > 0 ? ` (${shown.join(', ')})` : ''}`;
}

// comm and ppid from /proc/<pid>/stat.
export function parseStat(text: string): { comm: string; ppid: number } | null {
  const stat = parseProcStat(text);
  if (stat === null) return null;
  const ppid = Number(stat.fields[1]);
  if (!Number.isInteger(ppid)) return null;
  return { comm: stat.comm, ppid };
}

// "kworker/1:11-dio/vda" → kworker, "ksoftirqd/0" → ksoftirqd,
// "jbd2/vda1-8" → jbd2, "kdamond.0" → kdamond, "rcu_preempt" as it is.
export function kernelThreadKind(comm: string): string {
  const kind = comm.split(/[/.:]/)[0]!;
  return kind === '' ? comm : kind;
}
