// blockwal's NBD server against nbdkit's file plugin, both driven by fio's
// nbd engine over a Unix socket, in one run on the same disk.
//
// Servers (separate processes, both up for the whole run, in the scratch dir):
//   nbdkit    `nbdkit -f -U SOCK -P PIDFILE --exit-with-parent file FILE`,
//             FILE a sparse file of the volume's size. Plain pread/pwrite
//             through the page cache; FLUSH = fdatasync. What a user would
//             pick instead (DESIGN §8).
//   blockwal  `blockwal create DIR --size SIZE`, then
//             `blockwal serve DIR --nbd unix:SOCK --export bench
//             --block-cache SIZE`; ready when
//             it prints `blockwal: serving ... on unix:SOCK`; SIGTERM stops it.
// Both get the same prefill first: one sequential pass of 1 MiB writes at
// qd 8 over the whole export (BENCH_NBD_GIB GiB, default 1), so reads hit
// written data, not holes, then one sequential pass of 128 KiB reads.
// blockwal runs with a block cache as large as the export (--block-cache),
// as nbdkit has the page cache.
//
// Workloads, each for BENCH_SECONDS after a warm-up, the two servers back to
// back (which goes first alternates) so drift between them stays small; one
// fio at a time, each server idle before the other's window:
//   4 KiB randread and randwrite at qd 1 and qd 32; 1 MiB sequential read and
//   write at qd 8; 4 KiB randwrite at qd 32 with an NBD FLUSH after every
//   write (fio fsync=1; each figure counts writes, the flushes ride along).
// Targets (blockwal / nbdkit, same run): randread qd32 ≥ 1, randwrite qd32
// ≥ 1, randwrite fsync=1 qd32 ≥ 5 (group commit must amortise flushes), and
// at qd 1 a p50 latency at most 1.5× nbdkit's.
//
// Bounds from the same run, printed next to the two targets that this
// machine puts out of reach or at its edge (informational ratios, no target):
//   qd1 write p50 floor = (blockwal's randread qd1 p50, a round trip through
//   the same client and server with no disk, + the disk's own 4 KiB O_DIRECT
//   write p50 at qd 1, fio io_uring on a file in the scratch dir after the
//   servers stopped) / nbdkit's randwrite qd1 p50: a write may be answered
//   only once its WAL write is done (DESIGN §3), so no server overhead at all
//   would still leave blockwal here;
//   fsync=1 ceiling = blockwal's randwrite qd32 without flushes / nbdkit's
//   fsync=1 figure: a FLUSH after each write adds requests and makes every
//   WAL group a durable one, so the flushed workload cannot beat the same
//   writes unflushed.
//
// CPU per request answers "where does the server's CPU go": the server's
// utime+stime from /proc/PID/stat (all threads, io_uring workers included)
// over the fio run, divided by the NBD requests (data requests + FLUSHes) that
// run carried, estimated as fio's request rate × the run's wall time (start-up
// and warm-up included, so both servers are charged alike). Split into user
// and system time and by thread name. Work a server leaves for later (a
// checkpoint after the writes stop) is measured while waiting for it to go
// idle after the window and reported apart, per request of that run.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

import type { Bench, BenchContext } from './lib/bench';
import { BenchSkipped, assert } from './lib/bench';
import { cpuSince, cpuSnapshot, otherLoadPct } from './lib/cpu';
import { type DiskWindow, diskSince, diskSnapshot, diskText } from './lib/disk';
import { measureFioJob } from './lib/anchors';
import { fioVersion, prewriteFile } from './lib/fio';
import type { NbdFioJob, NbdFioMeasurement } from './lib/fio_nbd';
import { fioHasNbdEngine, nbdUnixUri, runNbdFio } from './lib/fio_nbd';
import type { BenchResult, Figure, Ratio, TargetOp } from './lib/report';
import { fmt, meets, ratio } from './lib/report';
import type { ServerCpuDelta } from './lib/server_process';
import { type VolumeServer, servedStatus, sleep } from './lib/repl_servers';
import { ServerProcess, cpuBetween, loadAverages } from './lib/server_process';
import { MIB } from './lib/seq_anchor';
import { SERVER_NODE_OPTIONS } from '../lib/cli/node_options';

const RANDREAD_QD32_MIN = 1.0;
const RANDWRITE_QD32_MIN = 1.0;
const FSYNC_QD32_MIN = 5.0;
const QD1_P50_RATIO_MAX = 1.5;

const DEFAULT_NBD_GIB = 1;
const MIN_VOLUME_BYTES = 64 * MIB;
/** The engine's default WAL can grow to 64 × 64 MiB before it must checkpoint. */
const WAL_MAX_BYTES = 4096 * MIB;
const FREE_SPACE_MARGIN_BYTES = 512 * MIB;
/** The file the disk's own write latency is measured on (after the servers stop). */
const DISK_FLOOR_FILE_BYTES = 256 * MIB;
const EXPORT_NAME = 'bench';
const PREFILL_BS_BYTES = MIB;
const PREFILL_IODEPTH = 8;
const READPASS_BS_BYTES = 128 * 1024;
const CHECKPOINT_WAIT_MS = 120_000;
const STATUS_POLL_MS = 200;
const BLOCK_BYTES = 4096;
const READY_TIMEOUT_MS = 60_000;
/** A server counts as idle below this share of one CPU (2 s in a row). */
const IDLE_BUSY_PCT = 5;
/** sun_path holds 108 bytes with its NUL. */
const SOCKET_PATH_MAX = 100;
const BLOCKWAL_MAIN = path.resolve(__dirname, '..', 'lib', 'cli', 'main.js');

type SideName = 'nbdkit' | 'blockwal';

interface Workload {
  readonly id: string;
  readonly label: string;
  readonly rw: NbdFioJob['rw'];
  readonly bsBytes: number;
  readonly iodepth: number;
  readonly fsyncEvery: number;
  readonly unit: 'IOPS' | 'MiB/s';
  /** Target for blockwal / nbdkit of the figure (null = informational). */
  readonly minRatio: number | null;
  /** Whether the p50 latency ratio has a target. */
  readonly latencyTarget: boolean;
}

const WORKLOADS: readonly Workload[] = [
  workload('randread-4k-qd1', 'randread 4k qd1', 'randread', BLOCK_BYTES, 1, 0, null, true),
  workload('randread-4k-qd32', 'randread 4k qd32', 'randread', BLOCK_BYTES, 32, 0, RANDREAD_QD32_MIN, false),
  workload('randwrite-4k-qd1', 'randwrite 4k qd1', 'randwrite', BLOCK_BYTES, 1, 0, null, true),
  workload('randwrite-4k-qd32', 'randwrite 4k qd32', 'randwrite', BLOCK_BYTES, 32, 0, RANDWRITE_QD32_MIN, false),
  workload('read-1m-qd8', 'read 1M qd8', 'read', MIB, 8, 0, null, false),
  workload('write-1m-qd8', 'write 1M qd8', 'write', MIB, 8, 0, null, false),
  workload('randwrite-4k-qd32-fsync1', 'randwrite 4k qd32 fsync=1', 'randwrite', BLOCK_BYTES, 32, 1, FSYNC_QD32_MIN, false),
];

interface Side {
  readonly name: SideName;
  readonly server: ServerProcess;
  readonly uri: string;
  /** blockwal: the volume directory (its status comes from the control socket). */
  readonly dir?: string;
}

interface Measured {
  readonly figure: Figure;
  readonly raw: NbdFioMeasurement;
  /** Server CPU µs per request: user, system, and by thread name. */
  readonly cpuPerRequestUs: { readonly user: number; readonly system: number; readonly byThread: Readonly<Record<string, number>> };
}

export const bench: Bench = {
  name: 'nbd',
  description:
    'fio nbd engine against blockwal serve and nbdkit file on the same disk: 4k rand qd1/qd32, 1M seq qd8, 4k randwrite fsync=1 qd32 (BENCH_NBD_GIB, default 1)',
  run,
};

async function run(ctx: BenchContext): Promise<BenchResult> {
  const startedAt = new Date().toISOString();
  const tools = await probeTools();
  const volumeBytes = volumeBytesFromEnv(process.env);
  checkFreeSpace(ctx.dir, volumeBytes);
  const loadavgStart = loadAverages();
  ctx.log(`loadavg at start: ${loadavgStart}; export ${volumeBytes / MIB} MiB`);

  const sides: Side[] = [];
  const pairs: { w: Workload; nbdkit: Measured; blockwal: Measured }[] = [];
  try {
    sides.push(await startNbdkit(ctx, volumeBytes));
    sides.push(await startBlockwal(ctx, volumeBytes));
    for (const side of sides) await prefill(ctx, side, volumeBytes);
    const [nbdkit, blockwal] = sides as [Side, Side];
    for (const [i, w] of WORKLOADS.entries()) {
      // Alternate which server goes first, so neither always gets the fresher host.
      const first = i % 2 === 0 ? nbdkit : blockwal;
      const second = first === nbdkit ? blockwal : nbdkit;
      const a = await measure(ctx, first, w, volumeBytes);
      const b = await measure(ctx, second, w, volumeBytes);
      const pair = first === nbdkit ? { w, nbdkit: a, blockwal: b } : { w, nbdkit: b, blockwal: a };
      ctx.log(summaryLine(pair.w, pair.nbdkit, pair.blockwal));
      pairs.push(pair);
    }
  } finally {
    for (const side of [...sides].reverse()) ctx.log(`stopped: ${await side.server.stop()}`);
  }
  const disk = await measureDiskWrite(ctx);
  const loadavgEnd = loadAverages();
  ctx.log(`loadavg at end: ${loadavgEnd}`);

  return {
    bench: bench.name,
    description: bench.description,
    startedAt,
    env: { fio: tools.fio, nbdkit: tools.nbdkit, exportMiB: volumeBytes / MIB, loadavgStart, loadavgEnd },
    anchors: [...pairs.map((p) => p.nbdkit.figure), disk],
    subjects: pairs.map((p) => p.blockwal.figure),
    ratios: [
      ...pairs.map((p) => ratio(`${p.w.label}: blockwal/nbdkit`, p.blockwal.figure, p.nbdkit.figure, '>=', p.w.minRatio)),
      ...pairs
        .filter((p) => p.w.iodepth === 1)
        .map((p) =>
          valueRatio(`${p.w.label} p50 latency: blockwal/nbdkit`, p, p50Us, '<=', p.w.latencyTarget ? QD1_P50_RATIO_MAX : null),
        ),
      ...pairs.map((p) => valueRatio(`${p.w.label} server cpu/request: blockwal/nbdkit`, p, (m) => m.figure.cpuUsPerOp!, '<=', null)),
      ...bounds(pairs, disk),
    ],
    checks: [],
    notes: [
      'anchors = nbdkit file plugin (page cache, FLUSH = fdatasync); subjects = blockwal serve; fio nbd engine over a Unix socket, one connection',
      'cpu µs/op = the server process\'s utime+stime (/proc/PID/stat, all threads) per NBD request (data requests + FLUSHes), over the whole fio run; fio\'s own CPU is in each detail line',
      'cpu by thread: main = the server\'s main thread (blockwal: the JS thread); node = Node\'s other threads (V8 GC and compiler, libuv pool, addon threads); iou-wrk = io_uring async workers; exited threads = threads that ended before the window\'s end sample (nbdkit\'s per-connection threads)',
      '"deferred" = server CPU after the window until it went idle (e.g. a checkpoint), per request of that run; not included in cpu µs/op',
      'for the fsync=1 workload the figure is write IOPS; fio issued about one FLUSH per write, so requests ≈ 2 × writes',
      'nbdkit keeps written data in the page cache and leaves write-back to the kernel; that CPU (kworker) is not in its figures',
      'nbdkit\'s reads come from the page cache (the prefilled export fits in RAM); blockwal\'s from its block cache (as large as the export) for reads of up to 128 KiB, and with O_DIRECT from base.img/WAL for larger ones',
      'bounds (same run, no target): qd1 write p50 floor = (blockwal randread qd1 p50 + disk write qd1 p50) / nbdkit randwrite qd1 p50, what blockwal would reach with no write overhead at all, since a write is answered only after its WAL write; fsync=1 ceiling = blockwal randwrite qd32 without flushes / nbdkit fsync=1',
      cpuNote(pairs),
    ],
  };
}

// The disk's own 4 KiB O_DIRECT write latency at qd 1 (no fdatasync), on a
// file in the scratch dir, with both servers stopped.
async function measureDiskWrite(ctx: BenchContext): Promise<Figure> {
  const file = path.join(ctx.dir, 'disk-floor.dat');
  try {
    await prewriteFile(file, DISK_FLOOR_FILE_BYTES, ctx.dir);
    const { raw: m } = await measureFioJob(
      ctx,
      {
        name: 'disk-write-qd1',
        filename: file,
        rw: 'randwrite',
        bsBytes: BLOCK_BYTES,
        sizeBytes: DISK_FLOOR_FILE_BYTES,
        ioengine: 'io_uring',
        iodepth: 1,
        direct: true,
        fdatasyncEvery: 0,
        runtimeMs: ctx.measureMs,
        rampMs: ctx.warmupMs,
      },
      'the disk: fio io_uring randwrite 4k qd1 O_DIRECT',
    );
    const figure: Figure = {
      name: 'disk randwrite 4k qd1 (fio io_uring, O_DIRECT)',
      value: m.iops,
      unit: 'IOPS',
      cpuUsPerOp: m.cpuUsPerOp,
      latencyUs: { mean: m.latNs.mean / 1000, p50: m.latNs.p50 / 1000, p99: m.latNs.p99 / 1000 },
      detail: `the disk alone, no server: p50 ${fmt(m.latNs.p50 / 1000)} µs`,
    };
    ctx.log(`disk randwrite 4k qd1: p50 ${fmt(figure.latencyUs!.p50)} µs, ${fmt(m.iops)} IOPS`);
    return figure;
  } finally {
    fs.rmSync(file, { force: true });
  }
}

// The two bounds the header describes, as informational ratios.
function bounds(pairs: readonly { w: Workload; nbdkit: Measured; blockwal: Measured }[], disk: Figure): Ratio[] {
  const byId = (id: string) => pairs.find((p) => p.w.id === id);
  const out: Ratio[] = [];
  const readQd1 = byId('randread-4k-qd1');
  const writeQd1 = byId('randwrite-4k-qd1');
  if (readQd1 !== undefined && writeQd1 !== undefined) {
    out.push({
      name: 'randwrite 4k qd1 p50 floor: (blockwal randread qd1 + disk write) / nbdkit',
      subject: `${readQd1.blockwal.figure.name} + ${disk.name}`,
      anchor: writeQd1.nbdkit.figure.name,
      value: (p50Us(readQd1.blockwal) + disk.latencyUs!.p50) / p50Us(writeQd1.nbdkit),
      op: '<=',
      target: null,
      pass: null,
    });
  }
  const writeQd32 = byId('randwrite-4k-qd32');
  const fsync = byId('randwrite-4k-qd32-fsync1');
  if (writeQd32 !== undefined && fsync !== undefined) {
    out.push({
      name: 'randwrite 4k qd32 fsync=1 ceiling: blockwal without flushes / nbdkit fsync=1',
      subject: writeQd32.blockwal.figure.name,
      anchor: fsync.nbdkit.figure.name,
      value: writeQd32.blockwal.figure.value / fsync.nbdkit.figure.value,
      op: '>=',
      target: null,
      pass: null,
    });
  }
  return out;
}

function workload(
  id: string,
  label: string,
  rw: NbdFioJob['rw'],
  bsBytes: number,
  iodepth: number,
  fsyncEvery: number,
  minRatio: number | null,
  latencyTarget: boolean,
): Workload {
  return { id, label, rw, bsBytes, iodepth, fsyncEvery, unit: bsBytes >= MIB ? 'MiB/s' : 'IOPS', minRatio, latencyTarget };
}

async function probeTools(): Promise<{ fio: string; nbdkit: string }> {
  const fio = fioVersion();
  if (fio === null) throw new BenchSkipped('missing fio');
  if (!(await fioHasNbdEngine())) throw new BenchSkipped('missing fio nbd engine (fio built without libnbd)');
  const version = spawnSync('nbdkit', ['--version'], { encoding: 'utf8' });
  if (version.error !== undefined || version.status !== 0) throw new BenchSkipped('missing nbdkit');
  const plugin = spawnSync('nbdkit', ['file', '--dump-plugin'], { encoding: 'utf8' });
  if (plugin.status !== 0) throw new BenchSkipped('missing nbdkit file plugin');
  if (!fs.existsSync(BLOCKWAL_MAIN)) throw new Error(`${BLOCKWAL_MAIN} is missing; run npx tsc -p . first`);
  return { fio, nbdkit: version.stdout.trim() };
}

function volumeBytesFromEnv(env: NodeJS.ProcessEnv): number {
  const raw = env.BENCH_NBD_GIB;
  const gib = raw === undefined || raw === '' ? DEFAULT_NBD_GIB : Number(raw);
  if (!Number.isFinite(gib) || gib <= 0) throw new RangeError(`BENCH_NBD_GIB must be a positive number, got '${raw}'`);
  const bytes = Math.round(gib * 1024) * MIB;
  if (bytes < MIN_VOLUME_BYTES) throw new RangeError(`BENCH_NBD_GIB=${raw} is below ${MIN_VOLUME_BYTES / MIB} MiB`);
  return bytes;
}

/** The nbdkit file, base.img, and a WAL that may fill before a checkpoint. */
function checkFreeSpace(dir: string, volumeBytes: number): void {
  const st = fs.statfsSync(dir);
  const freeBytes = st.bavail * st.bsize;
  const neededBytes = 2 * volumeBytes + WAL_MAX_BYTES + DISK_FLOOR_FILE_BYTES + FREE_SPACE_MARGIN_BYTES;
  if (freeBytes < neededBytes) {
    throw new BenchSkipped(`not enough space in ${dir}: ${fmt(freeBytes / MIB)} MiB free, ${fmt(neededBytes / MIB)} MiB needed`);
  }
}

async function startNbdkit(ctx: BenchContext, volumeBytes: number): Promise<Side> {
  const file = path.join(ctx.dir, 'nbdkit.img');
  fs.writeFileSync(file, '');
  fs.truncateSync(file, volumeBytes);
  const socket = socketPath(ctx.dir, 'nbdkit.sock');
  const pidFile = path.join(ctx.dir, 'nbdkit.pid');
  // nbdkit writes the pid file once it listens (nbdkit(1), -P).
  const server = await ServerProcess.start({
    name: 'nbdkit',
    command: 'nbdkit',
    args: ['-f', '-U', socket, '-P', pidFile, '--exit-with-parent', 'file', file],
    ready: () => fs.existsSync(pidFile) && fs.statSync(pidFile).size > 0,
    readyTimeoutMs: READY_TIMEOUT_MS,
  });
  ctx.log(`nbdkit pid ${server.pid} serving ${file} on ${socket}`);
  return { name: 'nbdkit', server, uri: nbdUnixUri(socket, EXPORT_NAME) };
}

async function startBlockwal(ctx: BenchContext, volumeBytes: number): Promise<Side> {
  const dir = path.join(ctx.dir, 'blockwal-vol');
  const created = spawnSync(process.execPath, [BLOCKWAL_MAIN, 'create', dir, '--size', String(volumeBytes)], { encoding: 'utf8' });
  if (created.status !== 0) {
    throw new Error(`blockwal create exited with ${created.status ?? created.signal}: ${created.stderr.trim()}`);
  }
  const socket = socketPath(ctx.dir, 'blockwal.sock');
  const server = await ServerProcess.start({
    name: 'blockwal',
    command: process.execPath,
    // A block cache as large as the export: nbdkit's file plugin has the
    // page cache, which holds all of it on this machine.
    args: [...SERVER_NODE_OPTIONS, BLOCKWAL_MAIN, 'serve', dir, '--nbd', `unix:${socket}`, '--export', EXPORT_NAME, '--block-cache', String(volumeBytes)],
    ready: (stderr) => stderr.includes(`on unix:${socket}\n`),
    readyTimeoutMs: READY_TIMEOUT_MS,
  });
  ctx.log(`blockwal pid ${server.pid} serving ${dir} on ${socket}`);
  return { name: 'blockwal', server, uri: nbdUnixUri(socket, EXPORT_NAME), dir };
}

function socketPath(dir: string, name: string): string {
  const p = path.join(dir, name);
  assert(Buffer.byteLength(p) <= SOCKET_PATH_MAX, `socket path ${p} is too long for sun_path; use a shorter BENCH_DIR`);
  return p;
}

/** One sequential pass of 1 MiB writes and a FLUSH, then one of 128 KiB reads, each followed by the server's background work. */
async function prefill(ctx: BenchContext, side: Side, volumeBytes: number): Promise<void> {
  const raw = await runNbdFio(
    {
      name: `${side.name}-prefill`,
      uri: side.uri,
      rw: 'write',
      bsBytes: PREFILL_BS_BYTES,
      sizeBytes: volumeBytes,
      iodepth: PREFILL_IODEPTH,
      fsyncEvery: 0,
      endFsync: true,
    },
    ctx.dir,
  );
  assert(raw.ops * PREFILL_BS_BYTES === volumeBytes, `${side.name} prefill wrote ${raw.ops} MiB of ${volumeBytes / MIB}`);
  const written = await side.server.waitForIdle(IDLE_BUSY_PCT);
  if (side.dir !== undefined) await waitCheckpointed({ dir: side.dir, server: side.server });
  // One read pass in transfers a cache keeps (blockwal's block cache takes
  // reads of up to 128 KiB; the page cache already holds what nbdkit wrote),
  // once the writes are checkpointed.
  const read = await runNbdFio(
    { name: `${side.name}-readpass`, uri: side.uri, rw: 'read', bsBytes: READPASS_BS_BYTES, sizeBytes: volumeBytes, iodepth: PREFILL_IODEPTH, fsyncEvery: 0 },
    ctx.dir,
  );
  const idle = await side.server.waitForIdle(IDLE_BUSY_PCT);
  ctx.log(
    `${side.name}: prefilled ${volumeBytes / MIB} MiB at ${fmt(raw.bandwidthBytesPerSec / MIB)} MiB/s, ` +
      `${written.idle ? 'idle' : 'still busy'} after ${(written.waitedMs / 1000).toFixed(1)} s ` +
      `(${(written.cpu.totalUs / 1000).toFixed(0)} ms CPU meanwhile); ` +
      `read it back at ${fmt(read.bandwidthBytesPerSec / MIB)} MiB/s, ` +
      `then ${idle.idle ? 'idle' : 'still busy'} after ${(idle.waitedMs / 1000).toFixed(1)} s`,
  );
}

/** Polls blockwal's status until nothing written waits for a checkpoint (its reads then come from base.img). */
async function waitCheckpointed(node: VolumeServer): Promise<void> {
  const startMs = performance.now();
  for (;;) {
    const volume = (await servedStatus(node)).volumes[0];
    assert(volume !== undefined, `blockwal status ${node.dir}: no volume`);
    if (volume.dirtyBytes === 0) return;
    assert(performance.now() - startMs < CHECKPOINT_WAIT_MS, `${volume.dirtyBytes} bytes still dirty after ${CHECKPOINT_WAIT_MS} ms`);
    await sleep(STATUS_POLL_MS);
  }
}

async function measure(ctx: BenchContext, side: Side, w: Workload, volumeBytes: number): Promise<Measured> {
  const job: NbdFioJob = {
    name: `${side.name}-${w.id}`,
    uri: side.uri,
    rw: w.rw,
    bsBytes: w.bsBytes,
    sizeBytes: volumeBytes,
    iodepth: w.iodepth,
    fsyncEvery: w.fsyncEvery,
    runtimeMs: ctx.measureMs,
    rampMs: ctx.warmupMs,
  };
  await ctx.settle();
  const loadavg = loadAverages();
  ctx.log(`measuring ${side.name} ${w.label} for ${ctx.measureMs / 1000} s (loadavg ${loadavg})`);
  const hostStart = cpuSnapshot();
  const diskStart = diskSnapshot(ctx.dir);
  const serverStart = side.server.cpuSample();
  const raw = await runNbdFio(job, ctx.dir).catch((err: unknown) => {
    side.server.assertAlive(); // a dead server explains fio's failure better, with its stderr
    throw err;
  });
  const server = cpuBetween(serverStart, side.server.cpuSample());
  const host = cpuSince(hostStart);
  const disk = diskSince(diskStart);
  const deferred = await side.server.waitForIdle(IDLE_BUSY_PCT);
  if (!deferred.idle) ctx.log(`${side.name} still busy ${(deferred.waitedMs / 1000).toFixed(0)} s after ${w.label}`);

  // Requests the whole run carried (start-up and warm-up too), at the window's rate.
  const requestsInRun = (raw.requests / raw.runtimeMs) * server.wallMs;
  const serverPctOfOneCpu = (100 * server.totalUs) / (server.wallMs * 1000);
  const value = w.unit === 'IOPS' ? raw.iops : raw.bandwidthBytesPerSec / MIB;
  const perRequest = (us: number): number => us / requestsInRun;
  return {
    raw,
    cpuPerRequestUs: {
      user: perRequest(server.userUs),
      system: perRequest(server.systemUs),
      byThread: Object.fromEntries(Object.entries(server.byThreadUs).map(([name, us]) => [name, perRequest(us)])),
    },
    figure: {
      name: `${side.name} ${w.label}`,
      value,
      unit: w.unit,
      cpuUsPerOp: server.totalUs / requestsInRun,
      latencyUs: { mean: raw.latNs.mean / 1000, p50: raw.latNs.p50 / 1000, p99: raw.latNs.p99 / 1000 },
      otherLoadPct: otherLoadPct(host, raw.usrCpuPct + raw.sysCpuPct + serverPctOfOneCpu),
      detail: detailText(w, raw, server, deferred.cpu, requestsInRun, loadavg, disk),
    },
  };
}

function detailText(
  w: Workload,
  raw: NbdFioMeasurement,
  server: ServerCpuDelta,
  deferred: ServerCpuDelta,
  requestsInRun: number,
  loadavg: string,
  disk: DiskWindow | null,
): string {
  const perReq = (us: number): string => (us / requestsInRun).toFixed(2);
  const threads = Object.entries(server.byThreadUs)
    .filter(([, us]) => us > 0)
    .sort((a, b) => b[1] - a[1])
    .map(([name, us]) => `${name} ${perReq(us)}`)
    .join(', ');
  const flushes = raw.syncCount > 0 ? ` + ${raw.syncCount} flushes (mean ${fmt(raw.syncLatNs!.mean / 1000)} µs)` : '';
  const rate = w.unit === 'IOPS' ? `${fmt(raw.bandwidthBytesPerSec / MIB)} MiB/s` : `${fmt(raw.iops)} IOPS`;
  return (
    `${raw.ops} ${w.rw}s${flushes} in ${(raw.runtimeMs / 1000).toFixed(2)} s (${rate}); ` +
    `server cpu µs/req: user ${perReq(server.userUs)} sys ${perReq(server.systemUs)}; by thread: ${threads || 'none'}; ` +
    `deferred ${perReq(deferred.totalUs)} µs/req; fio client ${fmt(raw.cpuUsPerOp)} µs/op; loadavg ${loadavg}` +
    (disk === null ? '' : `; ${diskText(disk, (raw.ops * 1000) / raw.runtimeMs, w.rw.replace(/^rand/, ''))}`)
  );
}

/** Where blockwal's CPU goes, one workload after another, next to nbdkit's total. */
function cpuNote(pairs: readonly { w: Workload; nbdkit: Measured; blockwal: Measured }[]): string {
  const parts = pairs.map(({ w, nbdkit, blockwal }) => {
    const c = blockwal.cpuPerRequestUs;
    const total = c.user + c.system;
    const main = c.byThread['main'] ?? 0;
    return (
      `${w.label} ${fmt(total)} (user ${fmt(c.user)} sys ${fmt(c.system)}; main thread ${fmt((100 * main) / total)} %) ` +
      `vs nbdkit ${fmt(nbdkit.figure.cpuUsPerOp!)}`
    );
  });
  return `where blockwal's CPU goes, µs per request: ${parts.join('; ')}`;
}

function p50Us(m: Measured): number {
  return m.figure.latencyUs!.p50;
}

/** blockwal / nbdkit of any figure of one workload, for ratios whose lower value is better. */
function valueRatio(
  name: string,
  p: { blockwal: Measured; nbdkit: Measured },
  pick: (m: Measured) => number,
  op: TargetOp,
  target: number | null,
): Ratio {
  const value = pick(p.blockwal) / pick(p.nbdkit);
  return {
    name,
    subject: p.blockwal.figure.name,
    anchor: p.nbdkit.figure.name,
    value,
    op,
    target,
    pass: target === null ? null : meets(value, op, target),
  };
}

function summaryLine(w: Workload, nbdkit: Measured, blockwal: Measured): string {
  const lat =
    w.iodepth === 1
      ? `; p50 ${fmt(p50Us(blockwal))} vs ${fmt(p50Us(nbdkit))} µs (${fmt(p50Us(blockwal) / p50Us(nbdkit))}×)`
      : '';
  return (
    `${w.label}: blockwal ${fmt(blockwal.figure.value)} vs nbdkit ${fmt(nbdkit.figure.value)} ${w.unit} ` +
    `(${fmt(blockwal.figure.value / nbdkit.figure.value)}×)${lat}; ` +
    `server cpu ${fmt(blockwal.figure.cpuUsPerOp!)} vs ${fmt(nbdkit.figure.cpuUsPerOp!)} µs/req`
  );
}
