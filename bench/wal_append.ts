// Durable 4 KiB WAL appends against fio on the same disk, in one run.
//
// Anchors (fio, io_uring, O_DIRECT, a pre-written file in the scratch dir):
//   A1 randwrite qd1 fdatasync=1, A2 write qd32 fdatasync=64 (lib/anchors.ts).
// Subject: blockwal appends with fua (each resolves once durable), 1 and 32 in
// flight, each for the same window as the anchors, on a fresh WAL in the same
// scratch dir. Order A1, wal qd1, A2, wal qd32: each subject runs right after
// the anchor it is mostly compared with, so drift between them stays small.
//
// Targets: wal qd32 ≥ 5× A1 (group commit must amortise flushes), wal qd32 ≥
// 0.8× A2 (close to what the disk does with durability amortised), and at most
// 3 µs of process CPU per append at qd32 (all threads, harness included).
import { randomFillSync } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';

import { Ring } from '../lib/native/ring';
import { Wal } from '../lib/native/wal';
import type { Bench, BenchContext } from './lib/bench';
import { A1_QD1_SYNC_EACH, A2_QD32_SYNC_64, BLOCK_BYTES, measureAnchor, prepareAnchorFile } from './lib/anchors';
import { measureClosedLoop } from './lib/closed_loop';
import { otherLoadPct, processPctOfOneCpu } from './lib/cpu';
import type { BenchResult, Figure } from './lib/report';
import { check, ratio } from './lib/report';

const QD32_VS_A1_MIN = 5;
const QD32_VS_A2_MIN = 0.8;
const CPU_US_PER_APPEND_MAX = 3;
/** LBAs cycle over 1 GiB of volume; the WAL does not care, a reader might. */
const LBA_SPAN_BLOCKS = (1 << 30) / BLOCK_BYTES;

export const bench: Bench = {
  name: 'wal_append',
  description: 'durable (fua) 4 KiB WAL appends at 1 and 32 in flight vs fio O_DIRECT+fdatasync anchors',
  run,
};

async function run(ctx: BenchContext): Promise<BenchResult> {
  const startedAt = new Date().toISOString();
  const { fio, file } = await prepareAnchorFile(ctx);
  const payload = Buffer.alloc(BLOCK_BYTES);
  randomFillSync(payload);

  const a1 = await measureAnchor(ctx, A1_QD1_SYNC_EACH, file);
  const qd1 = await measureWal(ctx, 1, payload);
  const a2 = await measureAnchor(ctx, A2_QD32_SYNC_64, file);
  const qd32 = await measureWal(ctx, 32, payload);

  return {
    bench: bench.name,
    description: bench.description,
    startedAt,
    env: { fio },
    anchors: [a1.figure, a2.figure],
    subjects: [qd1, qd32],
    ratios: [
      ratio('wal qd32 / A1', qd32, a1.figure, '>=', QD32_VS_A1_MIN),
      ratio('wal qd32 / A2', qd32, a2.figure, '>=', QD32_VS_A2_MIN),
      ratio('wal qd1 / A1', qd1, a1.figure, '>=', null),
    ],
    checks: [check('wal qd32 CPU per append', qd32.name, qd32.cpuUsPerOp!, 'µs', '<=', CPU_US_PER_APPEND_MAX)],
    notes: [
      'CPU per append = process.cpuUsage() (all threads, harness and latency timing included) / appends in the window',
      'wal latency is per append as the caller sees it (queueing in the group included); fio lat is per write, syncs apart',
    ],
  };
}

async function measureWal(ctx: BenchContext, inFlight: number, payload: Uint8Array): Promise<Figure> {
  const dir = path.join(ctx.dir, `wal-qd${inFlight}`);
  fs.mkdirSync(dir);
  const openedAt = performance.now();
  const appender = await openWalAppender(dir, payload);
  let result;
  try {
    ctx.log(`opened WAL in ${(performance.now() - openedAt).toFixed(0)} ms`);
    await ctx.settle();
    ctx.log(`measuring wal append, ${inFlight} in flight, for ${ctx.measureMs / 1000} s`);
    result = await measureClosedLoop({
      inFlight,
      warmupMs: ctx.warmupMs,
      measureMs: ctx.measureMs,
      op: (seq) => appender.append(seq % LBA_SPAN_BLOCKS),
      counters: () => appender.counters(),
    });
  } finally {
    await appender.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
  ctx.log(`wal qd${inFlight} counters over the window: ${JSON.stringify(result.counterDeltas)}`);
  const { latencyUs: lat, cpu } = result;
  return {
    name: `wal append qd${inFlight} (fua)`,
    value: result.opsPerSec,
    unit: 'appends/s',
    cpuUsPerOp: result.cpuUsPerOp,
    latencyUs: { mean: lat.mean, p50: lat.p50, p99: lat.p99 },
    otherLoadPct: otherLoadPct(cpu, processPctOfOneCpu(cpu)),
    detail:
      `${result.ops} appends in ${(cpu.wallMs / 1000).toFixed(2)} s; latency mean ${lat.mean.toFixed(1)} µs ` +
      `p99.9 ${lat.p999.toFixed(1)} µs max ${lat.max.toFixed(0)} µs; ` +
      `cpu user ${(cpu.processUserUs / result.ops).toFixed(2)} sys ${(cpu.processSystemUs / result.ops).toFixed(2)} µs/append; ` +
      groupingText(result.counterDeltas as Partial<WalCounters>),
  };
}

function groupingText(c: Partial<WalCounters>): string {
  const { appends = NaN, groups = NaN, dsyncGroups = NaN, syncs = NaN, bytesWritten = NaN } = c;
  return (
    `WAL: ${appends} appends in ${groups} groups (${(appends / groups).toFixed(1)}/group), ` +
    `${dsyncGroups} dsync groups, ${syncs} syncs, ${(bytesWritten / appends).toFixed(0)} bytes written/append`
  );
}

// ---- The adapter: the only code here that knows the WAL API. ----

interface DurableAppender {
  /** Appends one 4 KiB write record with fua; resolves once it is durable. */
  append(lba: number): Promise<unknown>;
  /** Counters to tell how appends were grouped; read before close. */
  counters(): WalCounters;
  close(): Promise<void>;
}

interface WalCounters {
  readonly [name: string]: number;
  readonly appends: number;
  readonly groups: number;
  readonly dsyncGroups: number;
  readonly syncs: number;
  readonly bytesWritten: number;
  readonly segments: number;
}

const RING_DEPTH = 256;
const RING_ARENA_BYTES = 64 << 20;
const WAL_SEGMENT_BYTES = 64 << 20;
/**
 * Release the log up to the durable LSN this often, as a checkpoint would, so
 * segments are recycled (steady state) instead of zero-filled anew, and a long
 * BENCH_SECONDS cannot fill the WAL. A timer, so appends carry no extra work.
 */
const RELEASE_INTERVAL_MS = 100;

async function openWalAppender(dir: string, payload: Uint8Array): Promise<DurableAppender> {
  const ring = Ring.open({ depth: RING_DEPTH, arenaBytes: RING_ARENA_BYTES });
  let wal: Wal;
  try {
    ({ wal } = await Wal.open(ring, { dir, segmentBytes: WAL_SEGMENT_BYTES, create: true }));
  } catch (err) {
    await ring.close();
    throw err;
  }
  const releaser = setInterval(() => wal.release(wal.lsnDurable), RELEASE_INTERVAL_MS);
  return {
    append: (lba) => wal.append({ kind: 'write', epoch: 1, lba, lengthBlocks: 1, payload, fua: true }),
    counters: () => {
      const s = wal.status();
      return {
        appends: s.lsnHead,
        groups: s.groupsSubmitted,
        dsyncGroups: s.dsyncGroupsSubmitted,
        syncs: s.syncsSubmitted,
        bytesWritten: s.bytesWritten,
        segments: s.segmentCount,
      };
    },
    close: async () => {
      clearInterval(releaser);
      try {
        await wal.close();
      } finally {
        await ring.close();
      }
    },
  };
}
