// Replay speed of a full WAL on open, against fio reading the same files.
//
// For each record size (4 KiB and 256 KiB payloads): fill a fresh WAL with
// BENCH_REPLAY_MIB MiB of write records (default 1024) through the real Wal
// (non-FUA appends, many in flight, one flush at the end, close). When the
// Volume loads, the WAL is the `wal/` of a freshly created (empty, closed)
// volume, so the records are the volume's unapplied writes, as after a crash
// with the whole WAL dirty. Then, in this order, on the same files:
//   R   fio sequential read, 1 MiB, qd 8, O_DIRECT, over the WAL's chain
//       segment files (time-based; lib/seq_anchor.ts)
//   scan      scanWal() from LSN 1, repeated for one window (at least 3
//             times): the recovery scan alone, O_DIRECT preads off the JS
//             thread, every frame and record verified
//   Wal.open  once: the scan plus the writer's start (it changes the WAL
//             directory, so it comes after the scans)
//   Volume.open  once, when lib/engine/volume loads: superblock, scan from
//             checkpoint + 1, writer start, dirty-map rebuild from every
//             record. Its close() then checkpoints the whole replayed WAL
//             (payloads read back from the segments): reported as a subject
//             without a ratio (the flusher bench has the write anchor).
// MiB/s = bytesScanned (what the scan says it read: chain segments in full,
// the unwritten tail of the last one included, and the first 4 KiB of the
// others) / wall time. The scan reads with O_DIRECT, so the guest page cache
// plays no part; a host cache under the virtual disk would help fio equally.
//
// Targets: the scan reads ≥ 1 GiB/s (an absolute check, per DESIGN §8 kept
// apart from the ratios); scan / R is reported without a target. CPU per op
// is process CPU (all threads, the scan's worker included) per MiB scanned;
// for fio, its own CPU per 1 MiB read.
import { randomFillSync } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';

import { Ring } from '../lib/native/ring';
import { Wal } from '../lib/native/wal';
import { scanWal, segmentFileName } from '../lib/native/wal_format';
import type { ScanResult } from '../lib/native/wal_format';
import type { Volume as VolumeClass } from '../lib/engine/volume';
import type { Bench, BenchContext } from './lib/bench';
import { BenchSkipped, assert } from './lib/bench';
import { cpuSince, cpuSnapshot, otherLoadPct, processPctOfOneCpu } from './lib/cpu';
import { fioVersion } from './lib/fio';
import type { BenchResult, Check, Figure, Ratio } from './lib/report';
import { check, ratio } from './lib/report';
import { MIB, measureSeqAnchor } from './lib/seq_anchor';

const SCAN_MIB_PER_SEC_MIN = 1024;
const DEFAULT_REPLAY_MIB = 1024;
const SCANS_MIN = 3;
const SCANS_MAX = 20;

const BLOCK_BYTES = 4096;
const RING_DEPTH = 256;
const RING_ARENA_BYTES = 64 << 20;
const WAL_SEGMENT_BYTES = 64 << 20;
/** LBAs cycle over 1 GiB of volume (a replay into a volume would see overwrites). */
const LBA_SPAN_BLOCKS = (1 << 30) / BLOCK_BYTES;

interface Variant {
  readonly id: string;
  readonly recordBytes: number;
  /** Appends kept in flight while filling. */
  readonly inFlight: number;
}

const VARIANTS: readonly Variant[] = [
  { id: '4k', recordBytes: 4 << 10, inFlight: 256 },
  { id: '256k', recordBytes: 256 << 10, inFlight: 16 },
];

export const bench: Bench = {
  name: 'wal_replay',
  description: 'recovery scan of a full WAL (4 KiB and 256 KiB records) vs fio 1 MiB O_DIRECT sequential read of the same files',
  run,
};

async function run(ctx: BenchContext): Promise<BenchResult> {
  const startedAt = new Date().toISOString();
  const fio = fioVersion();
  if (fio === null) throw new BenchSkipped('missing fio');
  const replayBytes = replayBytesFromEnv(process.env);

  const anchors: Figure[] = [];
  const subjects: Figure[] = [];
  const ratios: Ratio[] = [];
  const checks: Check[] = [];
  const notes: string[] = [];
  const volume = await loadVolume();
  if (typeof volume === 'string') notes.push(`Volume.open not measured: ${volume}`);
  for (const variant of VARIANTS) {
    const volDir = path.join(ctx.dir, `vol-${variant.id}`);
    try {
      const lsnFrom = typeof volume === 'string' ? 1 : await createEmptyVolume(volume, volDir, replayBytes);
      const dir = path.join(volDir, 'wal');
      const fill = await fillWal(ctx, dir, variant, replayBytes, lsnFrom);
      notes.push(fill.note);
      const chain = fill.chainFiles;
      const anchor = await measureSeqAnchor(ctx, {
        id: `R-${variant.id}`,
        label: `R fio read 1M qd8 (${variant.id}-record WAL files)`,
        rw: 'read',
        filename: chain.map((f) => path.join(dir, f)).join(':'),
        sizeBytes: chain.length * WAL_SEGMENT_BYTES,
      });
      const scan = await measureScans(ctx, dir, variant, fill);
      const open = await measureWalOpen(ctx, dir, variant, fill, replayBytes);
      anchors.push(anchor.figure);
      subjects.push(scan, open);
      ratios.push(
        ratio(`scan ${variant.id} / R`, scan, anchor.figure, '>=', null),
        ratio(`Wal.open ${variant.id} / R`, open, anchor.figure, '>=', null),
      );
      checks.push(check(`scan ${variant.id} MiB/s`, scan.name, scan.value, 'MiB/s', '>=', SCAN_MIB_PER_SEC_MIN));
      if (typeof volume !== 'string') {
        const vopen = await measureVolumeOpen(ctx, volume, volDir, variant, fill, replayBytes);
        subjects.push(vopen.figure, vopen.closeCheckpoint);
        ratios.push(ratio(`Volume.open ${variant.id} / R`, vopen.figure, anchor.figure, '>=', null));
        checks.push(check(`Volume.open ${variant.id} MiB/s`, vopen.figure.name, vopen.figure.value, 'MiB/s', '>=', SCAN_MIB_PER_SEC_MIN));
      }
    } finally {
      fs.rmSync(volDir, { recursive: true, force: true });
    }
  }
  return {
    bench: bench.name,
    description: bench.description,
    startedAt,
    env: { fio, replayMiB: replayBytes / MIB, walSegmentMiB: WAL_SEGMENT_BYTES / MIB },
    anchors,
    subjects,
    ratios,
    checks,
    notes: [
      'MiB/s of a scan = bytesScanned / wall time; cpu µs/op = process CPU (all threads) per MiB scanned (fio: per 1 MiB read)',
      'fio round-robins its 1 MiB reads over the chain segment files (one file list), each file read sequentially',
      ...notes,
    ],
  };
}

function replayBytesFromEnv(env: NodeJS.ProcessEnv): number {
  const raw = env.BENCH_REPLAY_MIB;
  if (raw === undefined || raw === '') return DEFAULT_REPLAY_MIB * MIB;
  const mib = Number(raw);
  if (!Number.isInteger(mib) || mib < 64) throw new RangeError(`BENCH_REPLAY_MIB must be an integer ≥ 64, got '${raw}'`);
  return mib * MIB;
}

/** Segments a fill of payloadBytes needs, with room for headers, padding and spares. */
function segmentsFor(payloadBytes: number): number {
  return Math.ceil((payloadBytes * 1.05) / WAL_SEGMENT_BYTES) + 4;
}

interface Fill {
  /** Records from lsnFrom on (the fill's, and any the volume wrote itself). */
  readonly records: number;
  readonly lsnFrom: number;
  readonly chainFiles: string[];
  readonly note: string;
}

async function fillWal(ctx: BenchContext, dir: string, variant: Variant, payloadTotal: number, lsnFrom: number): Promise<Fill> {
  const count = Math.ceil(payloadTotal / variant.recordBytes);
  const lengthBlocks = variant.recordBytes / BLOCK_BYTES;
  const payload = Buffer.alloc(variant.recordBytes);
  randomFillSync(payload);
  const ring = Ring.open({ depth: RING_DEPTH, arenaBytes: RING_ARENA_BYTES });
  const started = performance.now();
  try {
    const { wal } = await Wal.open(ring, {
      dir,
      create: true,
      segmentBytes: WAL_SEGMENT_BYTES,
      segmentsMax: segmentsFor(payloadTotal),
      lsnFrom,
    });
    const lsnStart = wal.lsnHead;
    try {
      let next = 0;
      const worker = async (): Promise<void> => {
        while (next < count) {
          const i = next++;
          const lba = (i * lengthBlocks) % LBA_SPAN_BLOCKS;
          await wal.append({ kind: 'write', epoch: 1, lba, lengthBlocks, payload });
        }
      };
      await Promise.all(Array.from({ length: variant.inFlight }, worker));
      await wal.flush();
      assert(wal.lsnDurable === lsnStart + count, `filled ${count} records from LSN ${lsnStart + 1}, durable LSN ${wal.lsnDurable}`);
    } finally {
      await wal.close();
    }
  } finally {
    await ring.close();
  }
  const seconds = (performance.now() - started) / 1000;
  // The chain files, in seq order; a spare the writer prepared holds no record.
  const scan = await scanWal({ dir, lsnFrom, segmentBytes: WAL_SEGMENT_BYTES });
  assert(scan.records.count >= count, `scan found ${scan.records.count} records, wrote ${count}`);
  const chainFiles = scan.segments.filter((s) => s.role === 'chain').map((s) => segmentFileName(s.seq));
  const note =
    `${variant.id}: filled ${count} records (${(payloadTotal / MIB).toFixed(0)} MiB payload, ` +
    `${chainFiles.length} × ${WAL_SEGMENT_BYTES / MIB} MiB chain segments, ${scan.segments.length} files) in ` +
    `${seconds.toFixed(1)} s = ${(payloadTotal / MIB / seconds).toFixed(0)} MiB/s of payload`;
  ctx.log(note);
  return { records: scan.records.count, lsnFrom, chainFiles, note };
}

async function measureScans(ctx: BenchContext, dir: string, variant: Variant, fill: Fill): Promise<Figure> {
  const { records, lsnFrom } = fill;
  await ctx.settle();
  ctx.log(`measuring scanWal (${variant.id} records) for ${ctx.measureMs / 1000} s, at least ${SCANS_MIN} scans`);
  const cpuStart = cpuSnapshot();
  const perScanMs: number[] = [];
  let bytes = 0;
  let last: ScanResult | undefined;
  const windowStart = performance.now();
  while (
    perScanMs.length < SCANS_MIN ||
    (performance.now() - windowStart < ctx.measureMs && perScanMs.length < SCANS_MAX)
  ) {
    const t0 = performance.now();
    last = await scanWal({ dir, lsnFrom, segmentBytes: WAL_SEGMENT_BYTES, wantControlPayloads: true });
    perScanMs.push(performance.now() - t0);
    assert(last.records.count === records, `scan returned ${last.records.count} records, expected ${records}`);
    bytes += last.bytesScanned;
  }
  const cpu = cpuSince(cpuStart);
  const mib = bytes / MIB;
  const cpuUsPerMib = cpu.processUs / mib;
  const sorted = [...perScanMs].sort((a, b) => a - b);
  const bytesPerScan = last!.bytesScanned;
  return {
    name: `scan ${variant.id} records`,
    value: mib / (cpu.wallMs / 1000),
    unit: 'MiB/s',
    cpuUsPerOp: cpuUsPerMib,
    otherLoadPct: otherLoadPct(cpu, processPctOfOneCpu(cpu)),
    detail:
      `${perScanMs.length} scans of ${(bytesPerScan / MIB).toFixed(0)} MiB (${records} records), ` +
      `each ${sorted[0]!.toFixed(0)}–${sorted[sorted.length - 1]!.toFixed(0)} ms (median ${sorted[sorted.length >> 1]!.toFixed(0)}); ` +
      `cpu ${((cpuUsPerMib * 1024) / 1000).toFixed(1)} ms/GiB scanned ` +
      `(user ${(cpu.processUserUs / mib).toFixed(0)} sys ${(cpu.processSystemUs / mib).toFixed(0)} µs/MiB), ` +
      `${((cpu.processUs / records) * 1000).toFixed(0)} ns/record`,
  };
}

async function measureWalOpen(ctx: BenchContext, dir: string, variant: Variant, fill: Fill, payloadTotal: number): Promise<Figure> {
  const { records, lsnFrom } = fill;
  await ctx.settle();
  ctx.log(`measuring Wal.open (${variant.id} records), once`);
  const ring = Ring.open({ depth: RING_DEPTH, arenaBytes: RING_ARENA_BYTES });
  try {
    const cpuStart = cpuSnapshot();
    const { wal, scan } = await Wal.open(ring, {
      dir,
      segmentBytes: WAL_SEGMENT_BYTES,
      segmentsMax: segmentsFor(payloadTotal),
      lsnFrom,
    });
    const cpu = cpuSince(cpuStart);
    await wal.close();
    assert(scan.records.count === records, `Wal.open recovered ${scan.records.count} records, expected ${records}`);
    const mib = scan.bytesScanned / MIB;
    return {
      name: `Wal.open ${variant.id} records`,
      value: mib / (cpu.wallMs / 1000),
      unit: 'MiB/s',
      cpuUsPerOp: cpu.processUs / mib,
      otherLoadPct: otherLoadPct(cpu, processPctOfOneCpu(cpu)),
      detail:
        `one open: ${cpu.wallMs.toFixed(0)} ms for ${mib.toFixed(0)} MiB scanned (scan + writer start, control payloads kept); ` +
        `cpu ${((cpu.processUs / mib) * 1.024).toFixed(1)} ms/GiB`,
    };
  } finally {
    await ring.close();
  }
}

// ---- The Volume, loaded on demand: this bench still runs while it is in flux. ----

type VolumeCtor = typeof VolumeClass;

async function loadVolume(): Promise<VolumeCtor | string> {
  try {
    return (await import('../lib/engine/volume')).Volume;
  } catch (err) {
    return `lib/engine/volume does not load (${err instanceof Error ? err.message.split('\n')[0] : String(err)})`;
  }
}

/** No checkpoint by size or time while the bench owns the volume: the WAL must stay full. */
const NO_BACKGROUND_CHECKPOINT = { flushTriggerBytes: Number.MAX_SAFE_INTEGER, flushIdleMs: 0 } as const;

/** Creates and closes an empty volume over the LBAs the fill writes; returns the first LSN a replay needs. */
async function createEmptyVolume(Volume: VolumeCtor, volDir: string, payloadTotal: number): Promise<number> {
  const vol = await Volume.create(volDir, {
    sizeBytes: LBA_SPAN_BLOCKS * BLOCK_BYTES,
    walSegmentBytes: WAL_SEGMENT_BYTES,
    walSegmentsMax: segmentsFor(payloadTotal),
    ...NO_BACKGROUND_CHECKPOINT,
  });
  await vol.close();
  const reopened = await Volume.open(volDir, { walSegmentsMax: segmentsFor(payloadTotal), ...NO_BACKGROUND_CHECKPOINT });
  const { checkpointLsn, lsnHead } = reopened.status();
  await reopened.close();
  assert(lsnHead === checkpointLsn, `an empty volume has WAL records past its checkpoint (${lsnHead} > ${checkpointLsn})`);
  return checkpointLsn + 1;
}

async function measureVolumeOpen(
  ctx: BenchContext,
  Volume: VolumeCtor,
  volDir: string,
  variant: Variant,
  fill: Fill,
  payloadTotal: number,
): Promise<{ figure: Figure; closeCheckpoint: Figure }> {
  // What this open will scan: the same bytes as a bare scan from the checkpoint.
  const expect = await scanWal({ dir: path.join(volDir, 'wal'), lsnFrom: fill.lsnFrom, segmentBytes: WAL_SEGMENT_BYTES });
  await ctx.settle();
  ctx.log(`measuring Volume.open (${variant.id} records), once`);
  const cpuStart = cpuSnapshot();
  const vol = await Volume.open(volDir, { walSegmentsMax: segmentsFor(payloadTotal), ...NO_BACKGROUND_CHECKPOINT });
  const cpu = cpuSince(cpuStart);
  const status = vol.status();
  const closeCpuStart = cpuSnapshot();
  await vol.close();
  const closeCpu = cpuSince(closeCpuStart);
  assert(status.lsnHead - status.checkpointLsn >= fill.records, `Volume.open recovered ${status.lsnHead - status.checkpointLsn} records, expected ${fill.records}`);
  const mib = expect.bytesScanned / MIB;
  const dirtyMib = status.dirtyBytes / MIB;
  ctx.log(`Volume.close() after the replay checkpointed ${dirtyMib.toFixed(0)} MiB in ${(closeCpu.wallMs / 1000).toFixed(2)} s`);
  return {
    closeCheckpoint: {
      name: `close checkpoint after replay ${variant.id}`,
      value: dirtyMib / (closeCpu.wallMs / 1000),
      unit: 'MiB/s',
      cpuUsPerOp: closeCpu.processUs / dirtyMib,
      otherLoadPct: otherLoadPct(closeCpu, processPctOfOneCpu(closeCpu)),
      detail:
        `Volume.close() right after the open: checkpoint of ${dirtyMib.toFixed(0)} MiB (${status.dirtyBlocks} blocks, ` +
        `${fill.records} records; every payload read back from the WAL segments) into a sparse base.img, ` +
        `${closeCpu.wallMs.toFixed(0)} ms; cpu per op per MiB applied; no anchor here (see the flusher bench)`,
    },
    figure: {
      name: `Volume.open ${variant.id} records`,
      value: mib / (cpu.wallMs / 1000),
      unit: 'MiB/s',
      cpuUsPerOp: cpu.processUs / mib,
      otherLoadPct: otherLoadPct(cpu, processPctOfOneCpu(cpu)),
      detail:
        `one open: ${cpu.wallMs.toFixed(0)} ms for ${mib.toFixed(0)} MiB scanned, ${fill.records} records replayed into ` +
        `${status.dirtyBlocks} dirty blocks; cpu ${((cpu.processUs / mib) * 1.024).toFixed(1)} ms/GiB, ` +
        `${((cpu.processUs / fill.records) * 1000).toFixed(0)} ns/record`,
    },
  };
}
