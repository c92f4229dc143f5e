// Disk activity over a measurement window, from /proc/diskstats for the block
// device holding a directory: how many I/Os a workload costs the disk, how
// long they waited and how busy the device was. A replicated pair on one
// machine puts both nodes' WAL and base image writes on the same disk; these
// figures say whether a window was bound by the disk or by something else.
import * as fs from 'node:fs';

interface DiskCounters {
  readonly reads: number;
  readonly writes: number;
  readonly sectorsWritten: number;
  readonly writeMs: number;
  readonly busyMs: number;
  readonly queueMs: number;
}

export interface DiskSnapshot {
  readonly device: string;
  readonly atMs: number;
  readonly counters: DiskCounters;
}

export interface DiskWindow {
  readonly device: string;
  readonly readsPerSec: number;
  readonly writesPerSec: number;
  readonly writeBytesPerSec: number;
  /** Mean time a write spent queued and in service. */
  readonly writeAwaitMs: number;
  /** Share of the window with at least one I/O in flight. */
  readonly busyPct: number;
  /** I/Os in flight on average. */
  readonly avgQueue: number;
}

// The snapshot of the device holding dir, or null where there is none to
// read (no /proc/diskstats, a filesystem without a block device).
export function diskSnapshot(dir: string): DiskSnapshot | null {
  let dev: number;
  try {
    dev = fs.statSync(dir).dev;
  } catch {
    return null;
  }
  // Linux's encoding of dev_t (new_encode_dev).
  const major = (dev >> 8) & 0xfff;
  const minor = (dev & 0xff) | ((dev >> 12) & 0xfff00);
  const row = readRow(major, minor);
  return row === null ? null : { device: row.name, atMs: performance.now(), counters: row.counters };
}

export function diskSince(start: DiskSnapshot | null): DiskWindow | null {
  if (start === null) return null;
  const end = readRowByName(start.device);
  const seconds = (performance.now() - start.atMs) / 1000;
  if (end === null || seconds <= 0) return null;
  const a = start.counters;
  const writes = end.writes - a.writes;
  return {
    device: start.device,
    readsPerSec: (end.reads - a.reads) / seconds,
    writesPerSec: writes / seconds,
    writeBytesPerSec: ((end.sectorsWritten - a.sectorsWritten) * 512) / seconds,
    writeAwaitMs: writes > 0 ? (end.writeMs - a.writeMs) / writes : 0,
    busyPct: (end.busyMs - a.busyMs) / (seconds * 10),
    avgQueue: (end.queueMs - a.queueMs) / (seconds * 1000),
  };
}

// "disk vda: 37,903 writes/s, 0 reads/s (1.90 per client write), 313 MiB/s
// written, write await 0.38 ms, busy 49 %, 14.4 in flight". The window is
// fio's whole run (warm-up included) and clientOpsPerSec its measured rate
// of `op`s: the ratio (disk reads and writes per client op) is close, not
// exact.
export function diskText(d: DiskWindow, clientOpsPerSec: number, op: string): string {
  const per = clientOpsPerSec > 0 ? ` (${((d.writesPerSec + d.readsPerSec) / clientOpsPerSec).toFixed(2)} per client ${op})` : '';
  return (
    `disk ${d.device}: ${Math.round(d.writesPerSec).toLocaleString('en-US')} writes/s, ${Math.round(d.readsPerSec).toLocaleString('en-US')} reads/s${per}, ` +
    `${Math.round(d.writeBytesPerSec / (1 << 20))} MiB/s written, write await ${d.writeAwaitMs.toFixed(2)} ms, ` +
    `busy ${Math.round(d.busyPct)} %, ${d.avgQueue.toFixed(1)} in flight`
  );
}

function readRow(major: number, minor: number): { name: string; counters: DiskCounters } | null {
  for (const f of rows()) if (Number(f[0]) === major && Number(f[1]) === minor) return { name: f[2]!, counters: countersOf(f) };
  return null;
}

function readRowByName(name: string): DiskCounters | null {
  for (const f of rows()) if (f[2] === name) return countersOf(f);
  return null;
}

function rows(): string[][] {
  let text: string;
  try {
    text = fs.readFileSync('/proc/diskstats', 'utf8');
  } catch {
    return [];
  }
  return text
    .split('\n')
    .map((l) => l.trim().split(/\s+/))
    .filter((f) => f.length >= 14);
}

// Fields after major, minor and name (Documentation/admin-guide/iostats.rst):
// reads, reads merged, sectors read, ms reading, writes, writes merged,
// sectors written, ms writing, I/Os in progress, ms doing I/O, weighted ms.
function countersOf(f: string[]): DiskCounters {
  const n = (i: number): number => Number(f[i]);
  return { reads: n(3), writes: n(7), sectorsWritten: n(9), writeMs: n(10), busyMs: n(12), queueMs: n(13) };
}
