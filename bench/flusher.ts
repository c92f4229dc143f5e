// Flusher throughput: how fast a checkpoint applies the WAL to base.img,
// against fio writing the same disk, in one run.
//
// Anchors (fio, io_uring, O_DIRECT, no fdatasync, on the pre-written scratch
// file of lib/anchors.ts, time-based):
//   W     sequential write, 1 MiB, qd 8 (lib/seq_anchor.ts)
//   W4k   random write, 4 KiB, qd 32
// Subjects, on one volume (BENCH_FLUSH_MIB MiB, default 1024, 64 MiB WAL
// segments, background checkpoints off so the bench decides when one runs):
//   1. seq 1M, first fill: BENCH_FLUSH_MIB of sequential 1 MiB writes (8 in
//      flight), vol.flush(), then time vol.checkpoint(). base.img is sparse,
//      so these are allocating writes (extent conversion at fdatasync).
//   2. seq 1M, overwrite, default trigger: the same again over the now
//      allocated base.img (like for like with W, which overwrites a
//      pre-written file), in rounds of what a background checkpoint covers by
//      default (half the WAL cache, volume option walCacheBytes): fill a
//      round, time its checkpoint. What the flusher does in service, with the
//      records still in memory. The target applies here: ≥ 0.7× W.
//   2b. seq 1M, overwrite, all at once: BENCH_FLUSH_MIB in one checkpoint;
//      what the cache no longer holds is read back from the WAL on the same
//      disk, so reads and writes share it (anchor R, fio's sequential read,
//      bounds it). No target.
//   3. rand 4k: BENCH_FLUSH_MIB / 4 of random 4 KiB writes (64 in flight),
//      flush, checkpoint; compared with W4k and W, no target.
//   4. concurrent: the volume reopened with background checkpoints (triggered
//      at a quarter of a WAL of 8 segments), sequential 1 MiB writes at 8 in
//      flight for one window: foreground MiB/s, and the checkpoint LSN's
//      advance (records applied) over the window. Every write goes to the
//      disk twice (WAL, then base.img; the WAL cache spares the read back),
//      so expect about half of W at best.
// MiB/s of a checkpoint = dirty bytes before it (volume status) / its wall
// time (apply + fdatasync + superblock). CPU per op = process CPU (all
// threads) per MiB applied; fio's = its CPU per MiB written.
import { randomFillSync } from 'node:crypto';
import * as path from 'node:path';

import type { Volume as VolumeClass } from '../lib/engine/volume';
import type { Bench, BenchContext } from './lib/bench';
import { BenchSkipped, assert } from './lib/bench';
import { prepareAnchorFile } from './lib/anchors';
import { measureClosedLoop } from './lib/closed_loop';
import { cpuSince, cpuSnapshot, otherLoadPct, processPctOfOneCpu } from './lib/cpu';
import type { BenchResult, Figure } from './lib/report';
import { ratio } from './lib/report';
import { MIB, measureSeqAnchor } from './lib/seq_anchor';

const CHECKPOINT_VS_W_MIN = 0.7;
const DEFAULT_FLUSH_MIB = 1024;
const BLOCK_BYTES = 4096;
const WAL_SEGMENT_BYTES = 64 << 20;
const SEQ_IN_FLIGHT = 8;
const RAND_IN_FLIGHT = 64;
/** WAL of the concurrent phase: small enough that the flusher, not WAL space, sets the pace. */
const CONCURRENT_WAL_SEGMENTS = 8;

type VolumeCtor = typeof VolumeClass;
type Volume = VolumeClass;

export const bench: Bench = {
  name: 'flusher',
  description: 'checkpoint (WAL → base.img + fdatasync) of 1 MiB sequential and 4 KiB random writes vs fio O_DIRECT 1 MiB sequential write',
  run,
};

async function run(ctx: BenchContext): Promise<BenchResult> {
  const startedAt = new Date().toISOString();
  const Volume = await loadVolume();
  const volumeBytes = flushBytesFromEnv(process.env);
  const { fio, file } = await prepareAnchorFile(ctx);

  const w = await measureSeqAnchor(ctx, {
    id: 'W',
    label: 'W fio write 1M qd8',
    rw: 'write',
    filename: file,
    sizeBytes: ctx.fileBytes,
  });
  const r = await measureSeqAnchor(ctx, {
    id: 'R',
    label: 'R fio read 1M qd8',
    rw: 'read',
    filename: file,
    sizeBytes: ctx.fileBytes,
  });
  const w4k = await measureSeqAnchor(ctx, {
    id: 'W4k',
    label: 'W4k fio randwrite 4k qd32',
    rw: 'randwrite',
    bsBytes: BLOCK_BYTES,
    iodepth: 32,
    filename: file,
    sizeBytes: ctx.fileBytes,
  });

  const dir = path.join(ctx.dir, 'vol');
  const seqBuf = Buffer.alloc(MIB);
  randomFillSync(seqBuf);
  const blockBuf = Buffer.alloc(BLOCK_BYTES);
  randomFillSync(blockBuf);
  const seqWrites = volumeBytes / MIB;
  const randWrites = volumeBytes / 4 / BLOCK_BYTES;
  const notes: string[] = [];

  let vol = await Volume.create(dir, {
    sizeBytes: volumeBytes,
    walSegmentBytes: WAL_SEGMENT_BYTES,
    walSegmentsMax: segmentsFor(volumeBytes),
    ...NO_BACKGROUND_CHECKPOINT,
  });
  let first: Figure;
  let overwrite: Figure;
  let overwriteAtOnce: Figure;
  let rand: Figure;
  notes.push(mutePressureCheckpoints(vol));
  try {
    const seqOffset = (i: number): number => i * MIB;
    first = await measureCheckpoint(ctx, vol, 'seq 1M, first fill', notes, [() => writeMany(vol, seqWrites, SEQ_IN_FLIGHT, seqOffset, seqBuf)]);
    // The default trigger (lib/engine/volume.ts): half the WAL cache.
    const roundWrites = Math.max(1, Math.floor(vol.status().walCacheBytes / 2 / MIB));
    const rounds = Math.ceil(seqWrites / roundWrites);
    overwrite = await measureCheckpoint(
      ctx,
      vol,
      'seq 1M, overwrite, default trigger',
      notes,
      Array.from({ length: rounds }, (_, k) => () => {
        const from = k * roundWrites;
        return writeMany(vol, Math.min(roundWrites, seqWrites - from), SEQ_IN_FLIGHT, (i) => seqOffset(from + i), seqBuf);
      }),
    );
    overwriteAtOnce = await measureCheckpoint(ctx, vol, 'seq 1M, overwrite, all at once', notes, [
      () => writeMany(vol, seqWrites, SEQ_IN_FLIGHT, seqOffset, seqBuf),
    ]);
    const blocks = volumeBytes / BLOCK_BYTES;
    rand = await measureCheckpoint(ctx, vol, 'rand 4k', notes, [
      () => writeMany(vol, randWrites, RAND_IN_FLIGHT, () => Math.floor(Math.random() * blocks) * BLOCK_BYTES, blockBuf),
    ]);
  } finally {
    await vol.close();
  }

  vol = await Volume.open(dir, {
    walSegmentsMax: CONCURRENT_WAL_SEGMENTS,
    flushTriggerBytes: (CONCURRENT_WAL_SEGMENTS * WAL_SEGMENT_BYTES) / 4,
  });
  let concurrent: { foreground: Figure; applied: Figure };
  try {
    concurrent = await measureConcurrent(ctx, vol, seqBuf, volumeBytes);
  } finally {
    await vol.close();
  }

  return {
    bench: bench.name,
    description: bench.description,
    startedAt,
    env: { fio, volumeMiB: volumeBytes / MIB, walSegmentMiB: WAL_SEGMENT_BYTES / MIB },
    anchors: [w.figure, r.figure, w4k.figure],
    subjects: [first, overwrite, overwriteAtOnce, rand, concurrent.foreground, concurrent.applied],
    ratios: [
      ratio('checkpoint seq 1M overwrite, default trigger / W', overwrite, w.figure, '>=', CHECKPOINT_VS_W_MIN),
      ratio('checkpoint seq 1M overwrite, all at once / W', overwriteAtOnce, w.figure, '>=', null),
      ratio('checkpoint seq 1M first fill / W', first, w.figure, '>=', null),
      ratio('checkpoint rand 4k / W4k', rand, w4k.figure, '>=', null),
      ratio('checkpoint rand 4k / W', rand, w.figure, '>=', null),
      ratio('concurrent foreground / W', concurrent.foreground, w.figure, '>=', null),
      ratio('concurrent applied / W', concurrent.applied, w.figure, '>=', null),
    ],
    checks: [],
    notes: [
      'checkpoint MiB/s = dirty bytes before vol.checkpoint() / its wall time (apply, fdatasync, superblock), summed over rounds; cpu µs/op = process CPU per MiB applied',
      `all at once: the WAL bytes the cache no longer holds are read back from the disk the checkpoint writes to; with fio's R and W alone, reading and writing d of every byte applied bounds it near 1 / (d / R + 1 / W) (R ${r.figure.value.toFixed(0)}, W ${w.figure.value.toFixed(0)} MiB/s)`,
      'concurrent: every byte is written twice (WAL, then base.img; the WAL cache spares reading it back), so about 0.5× W is what to expect at best for foreground and applied alike',
      ...notes,
    ],
  };
}

function flushBytesFromEnv(env: NodeJS.ProcessEnv): number {
  const raw = env.BENCH_FLUSH_MIB;
  if (raw === undefined || raw === '') return DEFAULT_FLUSH_MIB * MIB;
  const mib = Number(raw);
  if (!Number.isInteger(mib) || mib < 64) throw new RangeError(`BENCH_FLUSH_MIB must be an integer ≥ 64, got '${raw}'`);
  return mib * MIB;
}

/** Segments a fill of payloadBytes needs, with room for headers, padding and spares. */
function segmentsFor(payloadBytes: number): number {
  return Math.ceil((payloadBytes * 1.05) / WAL_SEGMENT_BYTES) + 4;
}

/** No checkpoint by size or time: the bench decides when one runs. */
const NO_BACKGROUND_CHECKPOINT = { flushTriggerBytes: Number.MAX_SAFE_INTEGER, flushIdleMs: 0 } as const;

async function loadVolume(): Promise<VolumeCtor> {
  try {
    return (await import('../lib/engine/volume')).Volume;
  } catch (err) {
    throw new BenchSkipped(`lib/engine/volume does not load (${err instanceof Error ? err.message.split('\n')[0] : String(err)})`);
  }
}

/**
 * The volume starts a checkpoint whenever an append has to wait (VolumeIo.onPressure,
 * fired for any WAL busy reason: group slots, a spare segment not ready yet, WAL
 * full), so a burst of writes starts checkpoints even with background checkpoints
 * off. The measured phases need the whole fill in one checkpoint; the WAL is
 * sized to hold it, so muting the hook cannot deadlock. Reaches into a private
 * field: the Volume has no option for this (yet).
 */
function mutePressureCheckpoints(vol: Volume): string {
  const io = (vol as unknown as { io?: { onPressure?: () => void } }).io;
  if (io === undefined || typeof io.onPressure !== 'function') {
    return 'could not mute pressure checkpoints (no io.onPressure): a background checkpoint during a fill fails the bench';
  }
  io.onPressure = () => undefined;
  return 'pressure checkpoints (VolumeIo.onPressure) muted for the measured checkpoints: the WAL holds each whole fill';
}

/** count writes of data at offsetOf(i), inFlight at a time, then one flush. */
async function writeMany(
  vol: Volume,
  count: number,
  inFlight: number,
  offsetOf: (i: number) => number,
  data: Uint8Array,
): Promise<void> {
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < count) await vol.write(offsetOf(next++), data);
  };
  await Promise.all(Array.from({ length: inFlight }, worker));
  await vol.flush();
}

// Fills, then times one checkpoint, per round (fills[k] writes round k).
async function measureCheckpoint(
  ctx: BenchContext,
  vol: Volume,
  label: string,
  notes: string[],
  fills: (() => Promise<void>)[],
): Promise<Figure> {
  let dirtyMib = 0;
  let dirtyBlocks = 0;
  let records = 0;
  let fillSeconds = 0;
  let wallMs = 0;
  let processUs = 0;
  let userUs = 0;
  let systemUs = 0;
  let otherPct = 0;
  let readMemory = 0;
  let readDisk = 0;
  for (const fill of fills) {
    const before = vol.status();
    const fillStart = performance.now();
    await fill();
    fillSeconds += (performance.now() - fillStart) / 1000;
    const dirty = vol.status();
    assert(dirty.checkpoints === before.checkpoints, `a background checkpoint ran during the ${label} fill`);
    await ctx.settle();
    const cpuStart = cpuSnapshot();
    await vol.checkpoint();
    const cpu = cpuSince(cpuStart);
    const after = vol.status();
    assert(after.dirtyBlocks === 0, `${after.dirtyBlocks} blocks still dirty after the checkpoint`);
    assert(after.checkpointLsn === dirty.lsnHead, `checkpoint LSN ${after.checkpointLsn}, head was ${dirty.lsnHead}`);
    dirtyMib += dirty.dirtyBytes / MIB;
    dirtyBlocks += dirty.dirtyBlocks;
    records += dirty.lsnHead - dirty.checkpointLsn;
    wallMs += cpu.wallMs;
    processUs += cpu.processUs;
    userUs += cpu.processUserUs;
    systemUs += cpu.processSystemUs;
    otherPct = Math.max(otherPct, otherLoadPct(cpu, processPctOfOneCpu(cpu)) ?? 0);
    readMemory += (after.walReadMemoryBytes - dirty.walReadMemoryBytes) / MIB;
    readDisk += (after.walReadDiskBytes - dirty.walReadDiskBytes) / MIB;
  }
  const rounds = fills.length === 1 ? 'one checkpoint' : `${fills.length} checkpoints of ${(dirtyMib / fills.length).toFixed(0)} MiB`;
  const note = `${label}: wrote ${records} records into the WAL in ${fillSeconds.toFixed(1)} s; ${dirtyMib.toFixed(0)} MiB dirty, applied in ${rounds}`;
  ctx.log(note);
  notes.push(note);
  return {
    name: `checkpoint ${label}`,
    value: dirtyMib / (wallMs / 1000),
    unit: 'MiB/s',
    cpuUsPerOp: processUs / dirtyMib,
    otherLoadPct: otherPct,
    detail:
      `${dirtyMib.toFixed(0)} MiB (${dirtyBlocks} blocks, ${records} records) applied in ${wallMs.toFixed(0)} ms (${rounds}); ` +
      `WAL read back ${readMemory.toFixed(0)} MiB from memory, ${readDisk.toFixed(0)} MiB from the disk; ` +
      `cpu ${((processUs / dirtyMib) * 1.024).toFixed(1)} ms/GiB ` +
      `(user ${(userUs / dirtyMib).toFixed(0)} sys ${(systemUs / dirtyMib).toFixed(0)} µs/MiB), ` +
      `${((processUs / dirtyBlocks) * 1000).toFixed(0)} ns/block`,
  };
}

async function measureConcurrent(
  ctx: BenchContext,
  vol: Volume,
  data: Uint8Array,
  volumeBytes: number,
): Promise<{ foreground: Figure; applied: Figure }> {
  const slots = volumeBytes / MIB;
  await ctx.settle();
  ctx.log(`measuring sequential 1 MiB writes with background checkpoints, ${SEQ_IN_FLIGHT} in flight, for ${ctx.measureMs / 1000} s`);
  const result = await measureClosedLoop({
    inFlight: SEQ_IN_FLIGHT,
    warmupMs: ctx.warmupMs,
    measureMs: ctx.measureMs,
    op: (seq) => vol.write((seq % slots) * MIB, data),
    counters: () => {
      const s = vol.status();
      return { lsnHead: s.lsnHead, checkpointLsn: s.checkpointLsn, checkpoints: s.checkpoints, dirtyBytes: s.dirtyBytes };
    },
  });
  const d = result.counterDeltas;
  const seconds = result.cpu.wallMs / 1000;
  const recordsPerWrite = d.lsnHead! / result.ops;
  // A 1 MiB aligned write is one record of 256 blocks (RECORD_BLOCKS_MAX), so the
  // checkpoint LSN's advance counts MiB applied (recordsPerWrite is ~1, window edges aside).
  const appliedMib = d.checkpointLsn!;
  const other = otherLoadPct(result.cpu, processPctOfOneCpu(result.cpu));
  const lat = result.latencyUs;
  const common =
    `${result.ops} writes in ${seconds.toFixed(2)} s (${recordsPerWrite.toFixed(2)} records/write), ` +
    `${d.checkpoints} checkpoints, checkpoint LSN +${d.checkpointLsn}, dirty ${d.dirtyBytes! >= 0 ? '+' : ''}${(d.dirtyBytes! / MIB).toFixed(0)} MiB over the window`;
  return {
    foreground: {
      name: 'concurrent foreground seq 1M writes',
      value: result.ops / seconds,
      unit: 'MiB/s',
      cpuUsPerOp: result.cpuUsPerOp,
      latencyUs: { mean: lat.mean, p50: lat.p50, p99: lat.p99 },
      otherLoadPct: other,
      detail: `${common}; cpu per MiB written includes the flusher's work`,
    },
    applied: {
      name: 'concurrent checkpoint progress',
      value: appliedMib / seconds,
      unit: 'MiB/s',
      otherLoadPct: other,
      detail: `checkpoint LSN advance over the window, in MiB of 1 MiB writes: ${appliedMib.toFixed(0)} MiB`,
    },
  };
}
