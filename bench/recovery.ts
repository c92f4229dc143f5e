// Recovery sessions: how fast a primary brings a replica back (WAL catch-up,
// full rebuild) against fio's sequential O_DIRECT write bandwidth on the same
// disk, and what a rebuild leaves to foreground writes, in one run.
//
// Anchors (lib/seq_anchor.ts on lib/anchors.ts's pre-written scratch file):
//   W  fio sequential write, 1 MiB, qd 8, O_DIRECT, io_uring, time-based.
//   Shared-disk ceilings: primary and replica share this one disk, so a
//   session reads and writes it at once, and this disk serves a mix far
//   below either alone. fio --rw=rw (sequential 1 MiB, qd 8, O_DIRECT) on
//   the same file, reporting the rate of bytes read:
//   M1:2  --rwmixread=33: every byte read is written twice, as in a catch-up
//         (the primary reads its WAL; the replica writes its WAL and base).
//   M1:1  --rwmixread=50: read once, written once, as in the base lane
//         (the primary reads base.img; the replica writes its own).
//   They carry no target; the session / ceiling ratios say how much of what
//   this disk can mix a session gets.
// Servers: a primary and one replica, separate `blockwal serve` processes
// (lib/repl_servers.ts) on loopback TCP; the primary runs --durability
// best_effort (its writes never wait for the absent replica) and
// --repl-backlog 16M (so a catch-up really reads the WAL from disk), with
// NBD on a Unix socket for fio.
//
// 1. Catch-up of C = BENCH_RECOVERY_GIB GiB of WAL (default 1). Volumes of C
//    bytes with the default WAL (64 × 64 MiB; the retention budget, half of
//    it, pins up to 2 GiB for a replica). With the replica streaming: stop it
//    (SIGTERM), write C through the primary (fio, sequential 1 MiB, qd 8, one
//    pass, FLUSH at the end), wait for the primary to go idle (its
//    checkpoint), start the replica again on the same port and poll the
//    primary's status every POLL_MS until the replica is 'streaming' with lag
//    0. The primary decides catch_up on the replica's HELLO and streams the
//    pinned WAL from disk, then hands over to the backlog.
//      catch-up MiB/s = decision.costBytes (the WAL after the replica's LSN)
//                       / (current − decision)
// 2. Rebuild of a 2C-byte volume (default 2 GiB) under foreground writes.
//    Volumes with 4 MiB WAL segments (a 256 MiB WAL, a 128 MiB budget),
//    prefilled while the replica streams (fio, sequential 1 MiB, qd 8, the
//    whole export), so base.img holds data and the WAL tail has moved past
//    LSN 1. Foreground = fio 4 KiB randwrite, qd 32, over the export, its
//    IOPS logged every IOPS_INTERVAL_MS (lib/fio_nbd_timeline.ts). Unloaded
//    window: warm-up + BENCH_SECONDS. Then stop the replica, delete its
//    directory and create it again (pristine: it takes the primary's
//    identity); restart the primary with --rebuild-latency-target set from
//    the unloaded window (below); start the foreground, and after the
//    warm-up the replica; the
//    primary decides rebuild (base lane: base.img in 1 MiB chunks, all-zero
//    ones without data; WAL lane from the checkpoint) until the replica is
//    'streaming'; then the foreground stops.
//      rebuild MiB/s   = volume bytes / (streaming − decision)
//      foreground kept = mean IOPS of the intervals inside [decision,
//                        streaming] / the unloaded window's mean
// The latency target: the foreground must keep half its unloaded IOPS, so its
// latency may at most double (Little's law at a fixed queue depth); the
// primary steers the base lane so its writes' mean latency (admission to
// acknowledgement, without the client's part) stays under
// LATENCY_TARGET_OF_UNLOADED × qd / unloaded IOPS.
// Sessions are timed from the primary's decision (decision.atMs, wall clock,
// taken on the HELLO) to the first poll that sees the end: the primary's
// reconnect backoff (up to 5 s after a long absence) and the replica's own
// start-up are not the session. Times from the replica's spawn are in the
// details and in ratios without a target.
// Targets (same run): catch-up ≥ 0.5 × W, rebuild ≥ 0.5 × W, foreground
// during the rebuild ≥ 0.5 × unloaded.
//
// Sanity (a failure is a broken run, not a missed target): the decisions are
// catch_up and rebuild; each phase ends with the replica current and applied,
// both servers exiting 0 on SIGTERM and `blockwal checksum` of the two
// directories agreeing.
//
// Env: BENCH_RECOVERY_GIB (C, default 1; e.g. 0.25 for a quick run),
// BENCH_RECOVERY_REBUILD_RATE (passed as --rebuild-rate; default no cap),
// BENCH_RECOVERY_LATENCY_TARGET (milliseconds, or 'off' for an unsteered
// base lane; default from the unloaded window as above),
// BENCH_RECOVERY_CPU_PROF=DIR (servers under node --cpu-prof, profiles in DIR).
import * as fs from 'node:fs';
import * as path from 'node:path';

import type { ReplicaPeerStatus } from '../lib/replication/primary';
import type { Bench, BenchContext } from './lib/bench';
import { BenchSkipped, assert } from './lib/bench';
import type { CpuProfileSpec, CreateOptions } from './lib/blockwal_cli';
import { probeNbdBenchTools, createVolume } from './lib/blockwal_cli';
import { prepareAnchorFile } from './lib/anchors';
import type { NbdFioJob, NbdFioMeasurement } from './lib/fio_nbd';
import { nbdUnixUri, runNbdFio } from './lib/fio_nbd';
import type { IopsInterval, IopsOverWindow } from './lib/fio_nbd_timeline';
import { NbdFioTimeline, iopsWithin } from './lib/fio_nbd_timeline';
import type { BenchResult, Figure, Ratio } from './lib/report';
import { fmt, ratio } from './lib/report';
import type { VolumeServer } from './lib/repl_servers';
import { LOOPBACK_HOST, compareChecksums, primaryStatus, sleep, socketPath, startPrimaryServer, startReplicaServer, waitForStreaming } from './lib/repl_servers';
import { MIB, measureSeqAnchor } from './lib/seq_anchor';
import { fioCommonArgs, runFioReport } from './lib/fio';
import type { ServerCpuDelta, ServerCpuSample } from './lib/server_process';
import { cpuBetween, loadAverages } from './lib/server_process';

const CATCH_UP_VS_W_MIN = 0.5;
const REBUILD_VS_W_MIN = 0.5;
const FOREGROUND_KEPT_MIN = 0.5;
/** The foreground's latency may grow to 2× (half its IOPS); the target leaves 30 % for what the primary does not see (the client, the socket) and for the steering's overshoot. */
const LATENCY_TARGET_OF_UNLOADED = 1.4;

const DEFAULT_RECOVERY_GIB = 1;
const MIN_CATCH_UP_BYTES = 128 * MIB;
/** The default WAL's retention budget is 2 GiB; leave room for record headers and the backlog. */
const MAX_CATCH_UP_BYTES = 1536 * MIB;
const REBUILD_VOLUME_PER_CATCH_UP = 2;
/** The engine's default WAL: 64 segments of 64 MiB. */
const DEFAULT_WAL_MAX_BYTES = 64 * 64 * MIB;
const REBUILD_WAL_SEGMENT_BYTES = 4 * MIB;
const REBUILD_WAL_MAX_BYTES = 64 * REBUILD_WAL_SEGMENT_BYTES;
const FREE_SPACE_MARGIN_BYTES = 512 * MIB;
const REPL_BACKLOG = '16M';

const EXPORT_NAME = 'bench';
const SEQ_BS_BYTES = MIB;
const SEQ_IODEPTH = 8;
const FOREGROUND_BS_BYTES = 4096;
const FOREGROUND_IODEPTH = 32;
const IOPS_INTERVAL_MS = 250;
/** Fewer loaded intervals than this say too little; the run fails (raise BENCH_RECOVERY_GIB). */
const LOADED_INTERVALS_MIN = 4;
/** The loaded foreground's runtime cap; it is stopped when the rebuild ends. */
const FOREGROUND_CAP_MS = 600_000;

const READY_TIMEOUT_MS = 60_000;
const STREAMING_TIMEOUT_MS = 30_000;
const STOPPED_TIMEOUT_MS = 30_000;
const SESSION_TIMEOUT_MS = 300_000;
const CURRENT_TIMEOUT_MS = 120_000;
const POLL_MS = 50;
const PROGRESS_LOG_MS = 2000;
const STATUS_POLL_MS = 250;
/** A server counts as idle below this share of one CPU (2 s in a row). */
const IDLE_BUSY_PCT = 5;
/** The same under --cpu-prof, whose sampling thread alone keeps a server at about 6 %. */
const IDLE_BUSY_PCT_PROFILED = 15;

type PhaseName = 'catchup' | 'rebuild';
type SessionKind = 'catch_up' | 'rebuild';

interface Sizes {
  readonly catchUpBytes: number;
  readonly rebuildVolumeBytes: number;
}

/** A primary and its replica; the replica is stopped and started again by the phases. */
interface Cluster {
  readonly phase: PhaseName;
  readonly volumeBytes: number;
  readonly uri: string;
  readonly socket: string;
  primary: VolumeServer;
  readonly replicaDir: string;
  readonly replicaPort: number;
  readonly profile: CpuProfileSpec;
  readonly idleBusyPct: number;
  replica: VolumeServer | null;
  replicaStarts: number;
}

interface Session {
  readonly kind: SessionKind;
  readonly reason: string;
  readonly costBytes: number;
  /** Unix epoch ms: replica spawned, replica listening, primary decided, end seen. */
  readonly spawnedMs: number;
  readonly readyMs: number;
  readonly decidedMs: number;
  readonly doneMs: number;
  /** Every decision kind seen during the session, in order. */
  readonly decisions: readonly string[];
  /** The replica's states seen by the polls, with when each was first seen (from the decision). */
  readonly states: readonly string[];
  readonly lastCatchUp: ReplicaPeerStatus['catchUp'];
  readonly lastRebuild: ReplicaPeerStatus['rebuild'];
  readonly primaryCpu: ServerCpuDelta;
  readonly replicaCpu: ServerCpuDelta;
  /** The primary's own log line at the end of the session (ms, bytes), when found. */
  readonly engineLog: string;
}

interface CatchUpResult {
  readonly bytesWritten: number;
  readonly write: NbdFioMeasurement;
  readonly walHeldBytes: number;
  readonly session: Session;
  readonly checksum: string;
}

interface RebuildResult {
  readonly volumeBytes: number;
  readonly prefill: NbdFioMeasurement;
  readonly lsnTail: number;
  readonly unloaded: IopsOverWindow;
  readonly loaded: IopsOverWindow;
  readonly session: Session;
  readonly checksum: string;
  readonly latencyTargetMs: number | null;
}

export const bench: Bench = {
  name: 'recovery',
  description:
    'replica recovery sessions vs fio O_DIRECT 1 MiB sequential write: WAL catch-up (BENCH_RECOVERY_GIB, default 1) and full rebuild of a 2× volume under 4k randwrite qd32',
  run,
};

async function run(ctx: BenchContext): Promise<BenchResult> {
  const startedAt = new Date().toISOString();
  const fio = await probeNbdBenchTools();
  const sizes = sizesFromEnv(process.env);
  const rebuildRate = rebuildRateFromEnv(process.env);
  const latencyTarget = latencyTargetFromEnv(process.env);
  const profileDir = profileDirFromEnv(process.env);
  const profile: CpuProfileSpec = { dir: profileDir, startedAt };
  checkFreeSpace(ctx, sizes);
  const loadavgStart = loadAverages();
  ctx.log(
    `loadavg at start: ${loadavgStart}; catch-up ${sizes.catchUpBytes / MIB} MiB, rebuild volume ${sizes.rebuildVolumeBytes / MIB} MiB` +
      `${rebuildRate === null ? '' : `, --rebuild-rate ${rebuildRate}`}${profileDir === null ? '' : `; cpu profiles to ${profileDir}`}`,
  );
  const { w, mixed } = await measureDiskAnchors(ctx);
  const catchUp = await runCatchUpPhase(ctx, sizes.catchUpBytes, profile);
  const rebuild = await runRebuildPhase(ctx, sizes.rebuildVolumeBytes, profile, rebuildRate, latencyTarget);
  const loadavgEnd = loadAverages();
  ctx.log(`loadavg at end: ${loadavgEnd}`);
  return report({ startedAt, fio, measureMs: ctx.measureMs, warmupMs: ctx.warmupMs, sizes, rebuildRate, profileDir, loadavgStart, loadavgEnd, w, mixed, catchUp, rebuild });
}

function sizesFromEnv(env: NodeJS.ProcessEnv): Sizes {
  const raw = env.BENCH_RECOVERY_GIB;
  const gib = raw === undefined || raw === '' ? DEFAULT_RECOVERY_GIB : Number(raw);
  if (!Number.isFinite(gib) || gib <= 0) throw new RangeError(`BENCH_RECOVERY_GIB must be a positive number, got '${raw}'`);
  const catchUpBytes = Math.round(gib * 1024) * MIB;
  if (catchUpBytes < MIN_CATCH_UP_BYTES || catchUpBytes > MAX_CATCH_UP_BYTES) {
    throw new RangeError(`BENCH_RECOVERY_GIB=${raw} is outside ${MIN_CATCH_UP_BYTES / MIB}..${MAX_CATCH_UP_BYTES / MIB} MiB (the default WAL's retention budget bounds a catch-up)`);
  }
  return { catchUpBytes, rebuildVolumeBytes: REBUILD_VOLUME_PER_CATCH_UP * catchUpBytes };
}

/** 'auto': from the unloaded window; 'off': none; else milliseconds. */
function latencyTargetFromEnv(env: NodeJS.ProcessEnv): number | 'auto' | 'off' {
  const raw = env.BENCH_RECOVERY_LATENCY_TARGET;
  if (raw === undefined || raw === '' || raw === 'auto') return 'auto';
  if (raw === 'off') return 'off';
  const ms = Number(raw);
  if (!Number.isFinite(ms) || ms <= 0) throw new RangeError(`BENCH_RECOVERY_LATENCY_TARGET must be milliseconds, 'auto' or 'off', got '${raw}'`);
  return ms;
}

function rebuildRateFromEnv(env: NodeJS.ProcessEnv): string | null {
  const raw = env.BENCH_RECOVERY_REBUILD_RATE;
  if (raw === undefined || raw === '') return null;
  if (!/^\d+[KMG]?$/i.test(raw)) throw new RangeError(`BENCH_RECOVERY_REBUILD_RATE must be a size such as 200M, got '${raw}'`);
  return raw;
}

function profileDirFromEnv(env: NodeJS.ProcessEnv): string | null {
  const raw = env.BENCH_RECOVERY_CPU_PROF;
  if (raw === undefined || raw === '') return null;
  const dir = path.resolve(raw);
  fs.mkdirSync(dir, { recursive: true });
  return dir;
}

// The phases run one after the other and each deletes its volumes; the anchor
// file goes before the first. Each phase holds two volumes with their WALs.
function checkFreeSpace(ctx: BenchContext, sizes: Sizes): void {
  const st = fs.statfsSync(ctx.dir);
  const freeBytes = st.bavail * st.bsize;
  const catchUpPhaseBytes = 2 * (sizes.catchUpBytes + DEFAULT_WAL_MAX_BYTES);
  const rebuildPhaseBytes = 2 * (sizes.rebuildVolumeBytes + REBUILD_WAL_MAX_BYTES);
  const neededBytes = Math.max(ctx.fileBytes, catchUpPhaseBytes, rebuildPhaseBytes) + FREE_SPACE_MARGIN_BYTES;
  if (freeBytes < neededBytes) {
    throw new BenchSkipped(`not enough space in ${ctx.dir}: ${fmt(freeBytes / MIB)} MiB free, ${fmt(neededBytes / MIB)} MiB needed`);
  }
}

interface MixedAnchors {
  readonly oneToTwo: Figure;
  readonly oneToOne: Figure;
}

/** W and the shared-disk ceilings on one pre-written file, which is deleted afterwards. */
async function measureDiskAnchors(ctx: BenchContext): Promise<{ w: Figure; mixed: MixedAnchors }> {
  const { file } = await prepareAnchorFile(ctx);
  try {
    const { figure: w } = await measureSeqAnchor(ctx, { id: 'W', label: 'W fio write 1M qd8', rw: 'write', filename: file, sizeBytes: ctx.fileBytes });
    ctx.log(`W: ${fmt(w.value)} MiB/s`);
    await ctx.settle();
    const oneToTwo = await measureMixedAnchor(ctx, file, 33, 'M1:2 fio read 1 : write 2, 1M qd8');
    await ctx.settle();
    const oneToOne = await measureMixedAnchor(ctx, file, 50, 'M1:1 fio read 1 : write 1, 1M qd8');
    return { w, mixed: { oneToTwo, oneToOne } };
  } finally {
    fs.rmSync(file, { force: true });
  }
}

/** fio sequential reads and writes mixed on one file: the rate of bytes read is the figure. */
async function measureMixedAnchor(ctx: BenchContext, file: string, readPct: number, label: string): Promise<Figure> {
  const name = `mixed-${readPct}`;
  const args = [
    `--name=${name}`,
    `--filename=${file}`,
    '--rw=rw',
    `--rwmixread=${readPct}`,
    `--bs=${SEQ_BS_BYTES}`,
    `--size=${ctx.fileBytes}`,
    '--ioengine=io_uring',
    `--iodepth=${SEQ_IODEPTH}`,
    '--direct=1',
    ...fioCommonArgs({ runtimeMs: ctx.measureMs, rampMs: ctx.warmupMs }),
  ];
  const text = await runFioReport(name, args, ctx.dir);
  const job = (JSON.parse(text.slice(text.indexOf('{'))) as { jobs: { read: { bw_bytes: number }; write: { bw_bytes: number } }[] }).jobs[0];
  assert(job !== undefined && job.read.bw_bytes > 0 && job.write.bw_bytes > 0, `fio ${name}: no reads or no writes measured`);
  const readMib = job.read.bw_bytes / MIB;
  const writeMib = job.write.bw_bytes / MIB;
  ctx.log(`${label}: read ${fmt(readMib)} + write ${fmt(writeMib)} MiB/s`);
  return {
    name: label,
    value: readMib,
    unit: 'MiB/s',
    detail: `fio --rw=rw --rwmixread=${readPct} on one ${fmt(ctx.fileBytes / MIB)} MiB file, O_DIRECT, io_uring: read ${fmt(readMib)} MiB/s while writing ${fmt(writeMib)} MiB/s (${fmt(readMib + writeMib)} MiB/s in all)`,
  };
}

// ---- phase 1: catch-up ----

async function runCatchUpPhase(ctx: BenchContext, bytes: number, profile: CpuProfileSpec): Promise<CatchUpResult> {
  const cluster = await startCluster(ctx, 'catchup', bytes, {}, [], profile);
  try {
    await stopReplica(ctx, cluster);
    const write = await writeSequential(ctx, cluster, 'write-while-down', bytes);
    await waitIdle(ctx, cluster.primary, cluster.idleBusyPct);
    const { repl } = await primaryStatus(cluster.primary);
    const peer = repl.replicas[0]!;
    assert(repl.wal.lsnTail <= peer.lsnReceived + 1, `the WAL tail ${repl.wal.lsnTail} moved past the absent replica's LSN ${peer.lsnReceived}: no catch-up possible`);
    const walHeldBytes = peer.retention?.heldBytes ?? 0;
    ctx.log(`WAL held for the replica: ${fmt(walHeldBytes / MIB)} MiB (budget ${fmt(repl.wal.budgetBytes / MIB)} MiB, tail LSN ${repl.wal.lsnTail})`);
    await ctx.settle();
    const session = await restartAndTrack(ctx, cluster, 'catch_up', (p) => p.state === 'streaming' && p.lagLsn === 0, () => undefined);
    ctx.log(sessionLine(session, session.costBytes));
    const checksum = await finishPhase(ctx, cluster);
    return { bytesWritten: bytes, write, walHeldBytes, session, checksum };
  } finally {
    await stopCluster(ctx, cluster);
  }
}

// ---- phase 2: rebuild under foreground writes ----

async function runRebuildPhase(
  ctx: BenchContext,
  volumeBytes: number,
  profile: CpuProfileSpec,
  rebuildRate: string | null,
  latencyTarget: number | 'auto' | 'off',
): Promise<RebuildResult> {
  const create: CreateOptions = { walSegmentBytes: REBUILD_WAL_SEGMENT_BYTES };
  const rateOptions = rebuildRate === null ? [] : ['--rebuild-rate', rebuildRate];
  const cluster = await startCluster(ctx, 'rebuild', volumeBytes, create, rateOptions, profile);
  let foreground: NbdFioTimeline | null = null;
  try {
    const prefill = await writeSequential(ctx, cluster, 'prefill', volumeBytes);
    await waitIdle(ctx, cluster.replica!, cluster.idleBusyPct);
    await waitIdle(ctx, cluster.primary, cluster.idleBusyPct);
    const lsnTail = (await primaryStatus(cluster.primary)).repl.wal.lsnTail;
    assert(lsnTail > 1, `the primary's WAL tail is still LSN ${lsnTail} after the prefill: a pristine replica would be caught up, not rebuilt`);
    const unloaded = await measureUnloaded(ctx, cluster);
    await waitCurrent(ctx, cluster);
    await stopReplica(ctx, cluster);
    fs.rmSync(cluster.replicaDir, { recursive: true, force: true });
    await createVolume(cluster.replicaDir, volumeBytes, create);
    ctx.log(`replica ${cluster.replicaDir} deleted and created again (pristine)`);
    const latencyTargetMs =
      latencyTarget === 'off' ? null : latencyTarget === 'auto' ? (LATENCY_TARGET_OF_UNLOADED * 1000 * FOREGROUND_IODEPTH) / unloaded.iops : latencyTarget;
    if (latencyTargetMs !== null) await restartPrimary(ctx, cluster, [...rateOptions, '--rebuild-latency-target', latencyTargetMs.toFixed(2)]);
    await ctx.settle();
    const fg = NbdFioTimeline.start(foregroundJob(cluster, 'randwrite-during-rebuild', FOREGROUND_CAP_MS), ctx.dir, IOPS_INTERVAL_MS);
    foreground = fg;
    await sleep(ctx.warmupMs);
    fg.assertRunning();
    const session = await restartAndTrack(ctx, cluster, 'rebuild', (p) => p.state === 'streaming', () => fg.assertRunning());
    foreground = null;
    const loaded = loadedIops(await fg.stop(), session);
    ctx.log(`${sessionLine(session, volumeBytes)}; foreground ${fmt(loaded.iops)} IOPS over ${loaded.intervals} intervals vs ${fmt(unloaded.iops)} unloaded`);
    const checksum = await finishPhase(ctx, cluster);
    return { volumeBytes, prefill, lsnTail, unloaded, loaded, session, checksum, latencyTargetMs };
  } finally {
    if (foreground !== null) await foreground.stop().catch(() => undefined);
    await stopCluster(ctx, cluster);
  }
}

function foregroundJob(cluster: Cluster, name: string, runtimeMs: number): NbdFioJob {
  return {
    name: `${cluster.phase}-${name}`,
    uri: cluster.uri,
    rw: 'randwrite',
    bsBytes: FOREGROUND_BS_BYTES,
    sizeBytes: cluster.volumeBytes,
    iodepth: FOREGROUND_IODEPTH,
    fsyncEvery: 0,
    runtimeMs,
  };
}

/** The unloaded foreground: warm-up + BENCH_SECONDS of the same randwrite, replica streaming. */
async function measureUnloaded(ctx: BenchContext, cluster: Cluster): Promise<IopsOverWindow> {
  await ctx.settle();
  ctx.log(`measuring unloaded randwrite 4k qd${FOREGROUND_IODEPTH} for ${ctx.measureMs / 1000} s (loadavg ${loadAverages()})`);
  const fg = NbdFioTimeline.start(foregroundJob(cluster, 'randwrite-unloaded', ctx.warmupMs + ctx.measureMs), ctx.dir, IOPS_INTERVAL_MS);
  const intervals = await fg.done();
  const window = iopsWithin(intervals, IOPS_INTERVAL_MS, fg.spawnedMs + ctx.warmupMs, Number.MAX_SAFE_INTEGER);
  assert(window !== null && window.intervals >= LOADED_INTERVALS_MIN, `unloaded randwrite: ${window?.intervals ?? 0} intervals logged after the warm-up`);
  const { repl } = await primaryStatus(cluster.primary);
  assert(repl.replicas[0]!.state === 'streaming', `replica ${repl.replicas[0]!.state} after the unloaded window`);
  ctx.log(`unloaded randwrite: ${fmt(window.iops)} IOPS (${window.intervals} intervals, ${fmt(window.minIops)}..${fmt(window.maxIops)})`);
  return window;
}

function loadedIops(intervals: readonly IopsInterval[], session: Session): IopsOverWindow {
  const window = iopsWithin(intervals, IOPS_INTERVAL_MS, session.decidedMs, session.doneMs);
  const seconds = (session.doneMs - session.decidedMs) / 1000;
  assert(
    window !== null && window.intervals >= LOADED_INTERVALS_MIN,
    `the rebuild took ${seconds.toFixed(2)} s: ${window?.intervals ?? 0} foreground intervals of ${IOPS_INTERVAL_MS} ms inside it, ` +
      `need ${LOADED_INTERVALS_MIN}; raise BENCH_RECOVERY_GIB`,
  );
  return window;
}

// ---- the cluster ----

async function startCluster(
  ctx: BenchContext,
  phase: PhaseName,
  volumeBytes: number,
  create: CreateOptions,
  primaryOptions: readonly string[],
  profile: CpuProfileSpec,
): Promise<Cluster> {
  const replicaDir = path.join(ctx.dir, `${phase}-replica`);
  const primaryDir = path.join(ctx.dir, `${phase}-primary`);
  await createVolume(replicaDir, volumeBytes, create);
  await createVolume(primaryDir, volumeBytes, create);
  const { server: replica, port } = await startReplicaServer({ name: `${phase}-replica-1`, dir: replicaDir, port: 0, profile, readyTimeoutMs: READY_TIMEOUT_MS });
  const socket = socketPath(ctx.dir, `${phase}.sock`);
  const options = ['--durability', 'best_effort', '--repl-backlog', REPL_BACKLOG, ...primaryOptions];
  const primary = await startPrimaryServer({
    name: `${phase}-primary`,
    dir: primaryDir,
    socket,
    exportName: EXPORT_NAME,
    replicaPort: port,
    options,
    profile,
    readyTimeoutMs: READY_TIMEOUT_MS,
  });
  ctx.log(`${phase}: primary pid ${primary.pid} (${options.join(' ')}), replica pid ${replica.pid} on ${LOOPBACK_HOST}:${port}, ${volumeBytes / MIB} MiB volumes`);
  const cluster: Cluster = {
    phase,
    volumeBytes,
    uri: nbdUnixUri(socket, EXPORT_NAME),
    socket,
    primary: { dir: primaryDir, server: primary },
    replicaDir,
    replicaPort: port,
    profile,
    idleBusyPct: profile.dir === null ? IDLE_BUSY_PCT : IDLE_BUSY_PCT_PROFILED,
    replica: { dir: replicaDir, server: replica },
    replicaStarts: 1,
  };
  await waitForStreaming(cluster.primary, STREAMING_TIMEOUT_MS, STATUS_POLL_MS);
  return cluster;
}

/** SIGTERM to the replica (it must exit 0), then waits until the primary has seen it go. */
/** Stops the primary (SIGTERM, exit 0) and starts it again on the same directory and socket with these options. */
async function restartPrimary(ctx: BenchContext, cluster: Cluster, primaryOptions: readonly string[]): Promise<void> {
  const ended = await cluster.primary.server.stop();
  assert(/exited with code 0$/.test(ended), `the primary did not close cleanly: ${ended}`);
  const options = ['--durability', 'best_effort', '--repl-backlog', REPL_BACKLOG, ...primaryOptions];
  const server = await startPrimaryServer({
    name: `${cluster.phase}-primary-2`,
    dir: cluster.primary.dir,
    socket: cluster.socket,
    exportName: EXPORT_NAME,
    replicaPort: cluster.replicaPort,
    options,
    profile: cluster.profile,
    readyTimeoutMs: READY_TIMEOUT_MS,
  });
  cluster.primary = { dir: cluster.primary.dir, server };
  ctx.log(`${cluster.phase}: primary restarted as pid ${server.pid} (${options.join(' ')})`);
}

async function stopReplica(ctx: BenchContext, cluster: Cluster): Promise<void> {
  const replica = cluster.replica;
  assert(replica !== null, 'the replica is not running');
  const ended = await replica.server.stop();
  assert(/exited with code 0$/.test(ended), `the replica did not close cleanly: ${ended}`);
  cluster.replica = null;
  const startMs = performance.now();
  for (;;) {
    const peer = (await primaryStatus(cluster.primary)).repl.replicas[0]!;
    if (peer.state !== 'streaming' && peer.state !== 'syncing') break;
    assert(performance.now() - startMs < STOPPED_TIMEOUT_MS, `the primary still sees its replica ${peer.state} ${STOPPED_TIMEOUT_MS} ms after it stopped`);
    await sleep(STATUS_POLL_MS);
  }
  ctx.log(`${cluster.phase}: replica stopped (${ended})`);
}

/** One pass of sequential 1 MiB writes over bytes at qd 8 through the primary, FLUSH at the end. */
async function writeSequential(ctx: BenchContext, cluster: Cluster, name: string, bytes: number): Promise<NbdFioMeasurement> {
  const job: NbdFioJob = {
    name: `${cluster.phase}-${name}`,
    uri: cluster.uri,
    rw: 'write',
    bsBytes: SEQ_BS_BYTES,
    sizeBytes: bytes,
    iodepth: SEQ_IODEPTH,
    fsyncEvery: 0,
    endFsync: true,
  };
  const raw = await runNbdFio(job, ctx.dir).catch((err: unknown) => {
    cluster.primary.server.assertAlive(); // a dead server explains fio's failure better
    throw err;
  });
  assert(raw.ops * SEQ_BS_BYTES === bytes, `${job.name} wrote ${raw.ops} MiB of ${bytes / MIB}`);
  ctx.log(`${job.name}: ${bytes / MIB} MiB at ${fmt(raw.bandwidthBytesPerSec / MIB)} MiB/s${cluster.replica === null ? ' (replica down)' : ' (replica streaming)'}`);
  return raw;
}

async function waitIdle(ctx: BenchContext, node: VolumeServer, busyPct: number): Promise<void> {
  const idle = await node.server.waitForIdle(busyPct);
  const what = `${node.server.name} ${idle.idle ? 'idle' : 'still busy'} after ${(idle.waitedMs / 1000).toFixed(1)} s`;
  ctx.log(`${what} (${fmt(idle.cpu.totalUs / 1000)} ms CPU meanwhile)`);
}

/** Polls until the replica has received and applied everything the primary has. */
async function waitCurrent(ctx: BenchContext, cluster: Cluster): Promise<void> {
  const startMs = performance.now();
  for (;;) {
    const { head, repl } = await primaryStatus(cluster.primary);
    const peer = repl.replicas[0]!;
    if (peer.state === 'streaming' && peer.lagLsn === 0 && peer.lsnApplied === head) {
      ctx.log(`${cluster.phase}: replica current and applied at LSN ${head}`);
      return;
    }
    assert(
      performance.now() - startMs < CURRENT_TIMEOUT_MS,
      `replica ${peer.state}, ${peer.lagLsn} LSN behind, applied ${head - peer.lsnApplied} behind after ${CURRENT_TIMEOUT_MS} ms`,
    );
    await sleep(STATUS_POLL_MS);
  }
}

/** The end of a phase: replica current, primary then replica stopped (exit 0), checksums equal. */
async function finishPhase(ctx: BenchContext, cluster: Cluster): Promise<string> {
  await waitCurrent(ctx, cluster);
  for (const ended of await stopServers(cluster)) {
    assert(/exited with code 0$/.test(ended), `a server did not close cleanly: ${ended}`);
  }
  const checksum = await compareChecksums(cluster.primary.dir, cluster.replicaDir);
  ctx.log(`${cluster.phase}: checksum of primary and replica ${checksum}`);
  return checksum;
}

/** The primary first (it says goodbye to its replica), then the replica. */
async function stopServers(cluster: Cluster): Promise<string[]> {
  const ended = [await cluster.primary.server.stop()];
  if (cluster.replica !== null) ended.push(await cluster.replica.server.stop());
  return ended;
}

/** Stops what still runs (after a failure) and deletes the phase's volumes. */
async function stopCluster(ctx: BenchContext, cluster: Cluster): Promise<void> {
  for (const ended of await stopServers(cluster)) ctx.log(`stopped: ${ended}`);
  fs.rmSync(cluster.primary.dir, { recursive: true, force: true });
  fs.rmSync(cluster.replicaDir, { recursive: true, force: true });
}

// ---- a session ----

/**
 * Starts the replica again on its port and polls the primary every POLL_MS:
 * the first decision taken after the spawn starts the session (it must be
 * `expected`), the first poll where done(peer) holds ends it.
 */
async function restartAndTrack(
  ctx: BenchContext,
  cluster: Cluster,
  expected: SessionKind,
  done: (peer: ReplicaPeerStatus) => boolean,
  whilePolling: () => void,
): Promise<Session> {
  const before = (await primaryStatus(cluster.primary)).repl.replicas[0]!.decision?.atMs ?? 0;
  const spawnedMs = Date.now();
  const name = `${cluster.phase}-replica-${++cluster.replicaStarts}`;
  const { server } = await startReplicaServer({ name, dir: cluster.replicaDir, port: cluster.replicaPort, profile: cluster.profile, readyTimeoutMs: READY_TIMEOUT_MS });
  const readyMs = Date.now();
  cluster.replica = { dir: cluster.replicaDir, server };
  ctx.log(`${cluster.phase}: replica pid ${server.pid} started again; waiting for the primary's ${expected}`);
  const track = new SessionTracker(ctx, expected, before);
  for (;;) {
    server.assertAlive();
    whilePolling();
    const peer = (await primaryStatus(cluster.primary)).repl.replicas[0]!;
    if (track.observe(peer, cluster)) {
      const doneMs = Date.now();
      if (done(peer)) return track.finish(cluster, { spawnedMs, readyMs, doneMs });
    }
    assert(Date.now() - spawnedMs < SESSION_TIMEOUT_MS, `no end of the ${expected} after ${SESSION_TIMEOUT_MS} ms: replica ${peer.state} (${peer.reason ?? 'no reason'})`);
    await sleep(POLL_MS);
  }
}

/** What the polls of one session saw: its decision, the progress last reported, CPU from the decision on. */
class SessionTracker {
  private decision: NonNullable<ReplicaPeerStatus['decision']> | undefined;
  private readonly decisions: string[] = [];
  private lastAtMs: number;
  private lastCatchUp: ReplicaPeerStatus['catchUp'];
  private lastRebuild: ReplicaPeerStatus['rebuild'];
  private cpuStart: { primary: ServerCpuSample; replica: ServerCpuSample } | undefined;
  /** The replica's states as the polls saw them, each with when it was first seen (Unix epoch ms). */
  private readonly states: { state: string; atMs: number }[] = [];
  private progressLoggedMs = 0;

  constructor(
    private readonly ctx: BenchContext,
    private readonly expected: SessionKind,
    decisionAtMsBefore: number,
  ) {
    this.lastAtMs = decisionAtMsBefore;
  }

  /** Takes one poll; true once the session's decision has been seen. */
  observe(peer: ReplicaPeerStatus, cluster: Cluster): boolean {
    if (peer.state === 'failed' || peer.state === 'needs_rebuild') {
      throw new Error(`the replica is ${peer.state}: ${peer.reason ?? 'no reason'}`);
    }
    const d = peer.decision;
    if (d !== undefined && d.atMs > this.lastAtMs) {
      this.lastAtMs = d.atMs;
      this.decisions.push(d.kind);
      if (this.decision === undefined) {
        assert(d.kind === this.expected, `the primary decided ${d.kind}, not ${this.expected}: ${d.reason}`);
        this.decision = d;
        this.cpuStart = { primary: cluster.primary.server.cpuSample(), replica: cluster.replica!.server.cpuSample() };
      }
    }
    if (peer.catchUp !== undefined) this.lastCatchUp = peer.catchUp;
    if (peer.rebuild !== undefined) this.lastRebuild = peer.rebuild;
    if (this.decision === undefined) return false;
    const nowMs = Date.now();
    if (this.states.length === 0 || this.states[this.states.length - 1]!.state !== peer.state) this.states.push({ state: peer.state, atMs: nowMs });
    if (nowMs - this.progressLoggedMs >= PROGRESS_LOG_MS) {
      this.progressLoggedMs = nowMs;
      this.ctx.log(`  ${((nowMs - this.decision.atMs) / 1000).toFixed(1)} s: ${progressText(peer)}`);
    }
    return true;
  }

  finish(cluster: Cluster, times: { spawnedMs: number; readyMs: number; doneMs: number }): Session {
    const d = this.decision!;
    const start = this.cpuStart!;
    return {
      kind: this.expected,
      reason: d.reason,
      costBytes: d.costBytes,
      decidedMs: d.atMs,
      ...times,
      decisions: this.decisions,
      states: this.states.map((st) => `${st.state} +${((st.atMs - d.atMs) / 1000).toFixed(2)} s`),
      lastCatchUp: this.lastCatchUp,
      lastRebuild: this.lastRebuild,
      primaryCpu: cpuBetween(start.primary, cluster.primary.server.cpuSample()),
      replicaCpu: cpuBetween(start.replica, cluster.replica!.server.cpuSample()),
      engineLog: engineLogLine(cluster.primary.server.stderr, this.expected),
    };
  }
}

// The primary logs the end of each session with its own duration (pino JSON lines).
const SESSION_END_MESSAGES: Readonly<Record<SessionKind, readonly string[]>> = {
  catch_up: ['fed from the WAL on disk; now from memory'],
  rebuild: ['rebuild: base lane sent', 'rebuild complete: the replica is whole'],
};

function engineLogLine(stderr: string, kind: SessionKind): string {
  const parts: string[] = [];
  for (const msg of SESSION_END_MESSAGES[kind]) {
    const line = stderr
      .split('\n')
      .reverse()
      .find((l) => l.includes(`"msg":"${msg}"`));
    if (line === undefined) continue;
    const entry = JSON.parse(line) as { ms?: number; bytes?: number };
    parts.push(`'${msg}' ms ${entry.ms ?? '?'}${entry.bytes === undefined ? '' : `, ${fmt(entry.bytes / MIB)} MiB`}`);
  }
  return parts.length === 0 ? 'no end-of-session log line found' : parts.join('; ');
}

// ---- figures ----

function progressText(peer: ReplicaPeerStatus): string {
  const parts = [`${peer.state}, lag ${peer.lagLsn} LSN`];
  const c = peer.catchUp;
  if (c !== undefined) parts.push(`catch-up ${fmt(c.bytesDone / MIB)}/${fmt(c.bytesTotal / MIB)} MiB at ${fmt(c.bytesPerSecond / MIB)} MiB/s`);
  const r = peer.rebuild;
  if (r !== undefined) parts.push(`rebuild ${r.chunksSent} sent, ${r.chunksDone}/${r.chunksTotal} chunks done, ${fmt(r.bytesPerSecond / MIB)} MiB/s`);
  return parts.join('; ');
}

function sessionSeconds(s: Session): number {
  return (s.doneMs - s.decidedMs) / 1000;
}

function sessionLine(s: Session, bytes: number): string {
  const seconds = sessionSeconds(s);
  return (
    `${s.kind}: ${fmt(bytes / MIB)} MiB in ${seconds.toFixed(2)} s from the decision (${fmt(bytes / MIB / seconds)} MiB/s); ` +
    `replica spawned ${((s.decidedMs - s.spawnedMs) / 1000).toFixed(2)} s before it; decisions ${s.decisions.join(' → ')}; ` +
    `states ${s.states.join(' → ')}; ${cpusText(s)}; engine log: ${s.engineLog}`
  );
}

function cpusText(s: Session): string {
  const cpus = (d: ServerCpuDelta): string => (d.totalUs / (d.wallMs * 1000)).toFixed(2);
  const top = (d: ServerCpuDelta): string =>
    Object.entries(d.byThreadUs)
      .filter(([, us]) => us > 0)
      .sort((a, b) => b[1] - a[1])
      .slice(0, 3)
      .map(([thread, us]) => `${thread} ${(us / (d.wallMs * 1000)).toFixed(2)}`)
      .join(', ');
  return `primary ${cpus(s.primaryCpu)} CPUs (${top(s.primaryCpu)}), replica ${cpus(s.replicaCpu)} CPUs (${top(s.replicaCpu)})`;
}

function sessionFigure(name: string, s: Session, bytes: number, extra: string): Figure {
  const seconds = sessionSeconds(s);
  return {
    name,
    value: bytes / MIB / seconds,
    unit: 'MiB/s',
    detail:
      `${fmt(bytes / MIB)} MiB in ${seconds.toFixed(2)} s from the decision; replica spawned ${((s.decidedMs - s.spawnedMs) / 1000).toFixed(2)} s ` +
      `and listening ${((s.decidedMs - s.readyMs) / 1000).toFixed(2)} s before it (${fmt(bytes / MIB / ((s.doneMs - s.spawnedMs) / 1000))} MiB/s from the spawn); ` +
      `${extra}; states ${s.states.join(' → ')}; ${cpusText(s)} over the session; engine log: ${s.engineLog}; decision: ${s.reason}`,
  };
}

function catchUpFigure(c: CatchUpResult): Figure {
  const p = c.session.lastCatchUp;
  const progress = p === undefined ? 'no catch-up progress seen' : `last seen ${fmt(p.bytesDone / MIB)}/${fmt(p.bytesTotal / MIB)} MiB at ${fmt(p.bytesPerSecond / MIB)} MiB/s (engine)`;
  const extra = `fio wrote ${fmt(c.bytesWritten / MIB)} MiB while it was down at ${fmt(c.write.bandwidthBytesPerSec / MIB)} MiB/s, WAL held ${fmt(c.walHeldBytes / MIB)} MiB; ${progress}`;
  return sessionFigure('catch-up from the WAL', c.session, c.session.costBytes, extra);
}

function rebuildFigure(r: RebuildResult): Figure {
  const p = r.session.lastRebuild;
  const progress =
    p === undefined
      ? 'no rebuild progress seen'
      : `last seen ${p.chunksDone}/${p.chunksTotal} chunks done, ${fmt(p.bytesSent / MIB)} MiB sent at ${fmt(p.bytesPerSecond / MIB)} MiB/s (engine), base LSN ${p.lsnBase}`;
  const extra = `prefilled at ${fmt(r.prefill.bandwidthBytesPerSec / MIB)} MiB/s, WAL tail LSN ${r.lsnTail}; decision cost ${fmt(r.session.costBytes / MIB)} MiB; ${progress}`;
  return sessionFigure('rebuild under randwrite 4k qd32', r.session, r.volumeBytes, extra);
}

function foregroundFigure(name: string, w: IopsOverWindow, detail: string): Figure {
  return {
    name,
    value: w.iops,
    unit: 'IOPS',
    detail: `mean of ${w.intervals} fio intervals of ${IOPS_INTERVAL_MS} ms (${fmt(w.minIops)}..${fmt(w.maxIops)} IOPS); ${detail}`,
  };
}

/** subject MiB/s counted from the replica's spawn / W: what an operator waits, backoff included. */
function fromSpawnRatio(name: string, s: Session, bytes: number, w: Figure): Ratio {
  const value = bytes / MIB / ((s.doneMs - s.spawnedMs) / 1000) / w.value;
  return { name, subject: `${name} (from the replica's spawn)`, anchor: w.name, value, op: '>=', target: null, pass: null };
}

interface ReportInput {
  readonly startedAt: string;
  readonly fio: string;
  readonly measureMs: number;
  readonly warmupMs: number;
  readonly sizes: Sizes;
  readonly rebuildRate: string | null;
  readonly profileDir: string | null;
  readonly loadavgStart: string;
  readonly loadavgEnd: string;
  readonly w: Figure;
  readonly mixed: MixedAnchors;
  readonly catchUp: CatchUpResult;
  readonly rebuild: RebuildResult;
}

function report(r: ReportInput): BenchResult {
  const catchUp = catchUpFigure(r.catchUp);
  const rebuild = rebuildFigure(r.rebuild);
  const fgShape = `fio randwrite 4k qd${FOREGROUND_IODEPTH} through the primary (best_effort, replica fed)`;
  const unloaded = foregroundFigure(`randwrite 4k qd${FOREGROUND_IODEPTH} unloaded`, r.rebuild.unloaded, `${fgShape}, replica streaming; ${r.measureMs / 1000} s after a ${r.warmupMs / 1000} s warm-up`);
  const steer = r.rebuild.latencyTargetMs === null ? 'the base lane unsteered' : `the primary steering the base lane to a ${r.rebuild.latencyTargetMs.toFixed(2)} ms write latency target`;
  const loaded = foregroundFigure(`randwrite 4k qd${FOREGROUND_IODEPTH} during the rebuild`, r.rebuild.loaded, `${fgShape}, intervals wholly inside the rebuild session, ${steer}`);
  return {
    bench: bench.name,
    description: bench.description,
    startedAt: r.startedAt,
    env: {
      fio: r.fio,
      catchUpMiB: r.sizes.catchUpBytes / MIB,
      rebuildVolumeMiB: r.sizes.rebuildVolumeBytes / MIB,
      durability: 'best_effort',
      replBacklog: REPL_BACKLOG,
      rebuildRate: r.rebuildRate ?? 'no cap',
      rebuildLatencyTargetMs: r.rebuild.latencyTargetMs === null ? 'off' : Number(r.rebuild.latencyTargetMs.toFixed(2)),
      loadavgStart: r.loadavgStart,
      loadavgEnd: r.loadavgEnd,
      ...(r.profileDir === null ? {} : { cpuProfiles: r.profileDir }),
    },
    anchors: [r.w, r.mixed.oneToTwo, r.mixed.oneToOne, unloaded],
    subjects: [catchUp, rebuild, loaded],
    ratios: [
      ratio('catch-up / W', catchUp, r.w, '>=', CATCH_UP_VS_W_MIN),
      ratio('rebuild / W', rebuild, r.w, '>=', REBUILD_VS_W_MIN),
      ratio('foreground randwrite during rebuild / unloaded', loaded, unloaded, '>=', FOREGROUND_KEPT_MIN),
      ratio('catch-up / M1:2 (this shared disk\'s ceiling)', catchUp, r.mixed.oneToTwo, '>=', null),
      ratio('rebuild / M1:1 (this shared disk\'s ceiling)', rebuild, r.mixed.oneToOne, '>=', null),
      fromSpawnRatio('catch-up from the replica spawn / W', r.catchUp.session, r.catchUp.session.costBytes, r.w),
      fromSpawnRatio('rebuild from the replica spawn / W', r.rebuild.session, r.rebuild.volumeBytes, r.w),
    ],
    checks: [],
    notes: [
      'sessions are timed from the primary\'s decision on the replica\'s HELLO (decision.atMs) to the first status poll (every 50 ms) that sees the end: catch-up = streaming with lag 0, rebuild = streaming; the "from the replica spawn" ratios add the replica\'s start-up and the primary\'s reconnect backoff',
      'catch-up bytes = the decision\'s costBytes (WAL bytes after the replica\'s LSN, record headers included); rebuild bytes = the volume size (the WAL lane\'s bytes come on top)',
      `catch-up volumes: ${r.sizes.catchUpBytes / MIB} MiB with the default WAL; rebuild volumes: ${r.sizes.rebuildVolumeBytes / MIB} MiB with ${REBUILD_WAL_SEGMENT_BYTES / MIB} MiB WAL segments; primary --durability best_effort --repl-backlog ${REPL_BACKLOG}`,
      `primary and replica share one disk here: M1:2 and M1:1 are what it serves when read and written at once (${fmt(r.mixed.oneToTwo.value)} and ${fmt(r.mixed.oneToOne.value)} MiB/s read, ${(r.mixed.oneToTwo.value / r.w.value).toFixed(2)}× and ${(r.mixed.oneToOne.value / r.w.value).toFixed(2)}× W), so the 0.5× W targets lie above what this disk can do for a session; on separate disks a session reads one and writes the other`,
      `sanity: decisions catch_up and rebuild, replica current and applied at the end of each phase, all servers exited 0, checksums of primary and replica equal (catch-up ${r.catchUp.checksum}, rebuild ${r.rebuild.checksum})`,
      ...(r.profileDir === null ? [] : [`servers ran under node --cpu-prof (profiles in ${r.profileDir}): figures carry the profiler's overhead`]),
    ],
  };
}
