// blockwal replicated (primary + one replica, sync_all) against blockwal on
// one node, both driven by fio's nbd engine over a Unix socket, in one run on
// the same disk.
//
// Servers (separate processes, all up for the whole run, in the scratch dir):
//   single      `blockwal create DIR --size SIZE`, then
//               `blockwal serve DIR --nbd unix:SOCK --export bench`
//               (what bench/nbd.ts measures).
//   replica     `blockwal create RDIR --size SIZE`, then
//               `blockwal serve RDIR --role replica --repl-listen 127.0.0.1:0`;
//               ready when it prints `... listening for its primary on
//               127.0.0.1:PORT`, the port the kernel picked.
//   primary     `blockwal create PDIR --size SIZE`, then `blockwal serve PDIR
//               --nbd unix:SOCK --export bench --replica 127.0.0.1:PORT
//               --durability sync_all`; ready on `serving PDIR on unix:SOCK`,
//               then its status (`blockwal status PDIR --json`, read from the
//               control socket by lib/repl_servers.ts) is polled until the
//               replica is 'streaming'. Primary and replica talk over loopback TCP.
// BENCH_REPL_REPLICA_DIR puts the replica's volume in a directory of its own
// there instead (on a machine with a second disk: the replica's writes then
// do not compete with the primary's for one disk, as on two machines).
// Both sides get the same prefill first: one sequential pass of 1 MiB writes
// at qd 8 over the whole export (BENCH_REPL_GIB GiB, default 0.5).
//
// Workloads, each for BENCH_SECONDS after a warm-up, the two sides back to
// back (which goes first alternates), one fio at a time, every server idle
// before the next window: 4 KiB randwrite at qd 32, at qd 32 with an NBD
// FLUSH after every write (fio fsync=1), and at qd 1 (p50 latency).
// Each workload runs BENCH_REPL_ROUNDS rounds (default 3) of one window
// per side; the round with the median ratio is the one reported, and every
// round's ratio is in the notes. On a shared host the load of the moment
// moves one window's figures by as much as 2×: a round's two windows are
// seconds apart, so its ratio is the stable part. A round during which
// others loaded the host (either window's other load above 20 % of all CPUs,
// bench/lib/rounds.ts) does not count: more rounds run, up to
// BENCH_REPL_MAX_ROUNDS in all (default BENCH_REPL_ROUNDS + 4), until
// BENCH_REPL_ROUNDS were quiet, and the median is taken over the quiet ones
// (over all when none was quiet; the figures are then flagged).
// One loopback round trip is measured in the same run: a 64-byte TCP
// ping-pong between this process and a child Node process (an echo server),
// the median of RTT_ROUND_TRIPS; both ends wake an event loop, as blockwal's
// primary and replica do.
// In each round of the qd32 workloads, after the two windows, the single node
// and a twin (its own volume, prefilled alike) are written at once, each by its
// own fio with the same job: what this machine gives each of two nodes sharing
// its CPUs and disk with nothing passing between them (no target; the pair's
// ratio to it is what replication itself costs).
// Targets (replicated / single, same run): randwrite qd32 IOPS ≥ 0.7,
// randwrite fsync=1 qd32 IOPS ≥ 0.6, and at qd 1 a p50 latency at most
// 1.25 × (single p50 + loopback RTT p50).
//
// CPU per request is each server's utime+stime (/proc/PID/stat, all threads)
// over the fio run divided by the NBD requests that run carried (as in
// bench/nbd.ts); the replica is charged per client request too, so
// primary + replica is what one replicated write costs the cluster.
// After each replicated window the primary's status gives the replica's lag
// (head − received LSN, bytes, seconds, and how far apply trails the head).
//
// Sanity (a failure is a broken run, not a missed target): the replica stays
// streaming and in the ack set with the primary healthy through every
// window; at the end it catches up, every server exits 0 on SIGTERM, and
// `blockwal checksum` of PDIR and RDIR agree.
//
// BENCH_REPL_CPU_PROF=DIR runs the three servers under `node --cpu-prof`,
// writing single-*, primary-* and replica-*.cpuprofile into DIR when they
// exit; the figures of such a run carry the profiler's overhead, and a server
// counts as idle below IDLE_BUSY_PCT_PROFILED (the sampler's own CPU).
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';

import type { AckWaitCounts, PrimaryReplicationStatus } from '../lib/replication/primary';
import type { Bench, BenchContext } from './lib/bench';
import { BenchSkipped, assert } from './lib/bench';
import { probeNbdBenchTools, blockwalArgs, createVolume } from './lib/blockwal_cli';
import { type CpuWindow, cpuSince, cpuSnapshot, otherLoadPct } from './lib/cpu';
import { diskSince, diskSnapshot, diskText } from './lib/disk';
import { kernelThreadsSince, kernelThreadsSnapshot, kernelThreadsText } from './lib/kthreads';
import type { NbdFioJob, NbdFioMeasurement } from './lib/fio_nbd';
import { nbdUnixUri, runNbdFio } from './lib/fio_nbd';
import type { BenchResult, Figure, Ratio } from './lib/report';
import { fmt, meets, ratio } from './lib/report';
import type { VolumeServer } from './lib/repl_servers';
import * as servers from './lib/repl_servers';
import { LOOPBACK_HOST, sleep, socketPath, startPrimaryServer, startReplicaServer } from './lib/repl_servers';
import type { ServerCpuDelta } from './lib/server_process';
import { ServerProcess, cpuBetween, loadAverages } from './lib/server_process';
import { type RoundOutcome, NOISY_OTHER_LOAD_PCT, isNoisyRound, quietRounds, reportedRound, wantsAnotherRound } from './lib/rounds';
import { MIB } from './lib/seq_anchor';

const RANDWRITE_QD32_MIN = 0.7;
const FSYNC_QD32_MIN = 0.6;
/** qd 1 p50: replicated ≤ this × (single p50 + loopback RTT). */
const QD1_P50_OVER_BASE_MAX = 1.25;

const DEFAULT_REPL_GIB = 0.5;
const DEFAULT_ROUNDS = 3;
// Rounds run beyond BENCH_REPL_ROUNDS (by default) to replace noisy ones.
const DEFAULT_EXTRA_ROUNDS = 4;
const MIN_VOLUME_BYTES = 64 * MIB;
/** The engine's default WAL can grow to 64 × 64 MiB before it must checkpoint. */
const WAL_MAX_BYTES = 4096 * MIB;
const FREE_SPACE_MARGIN_BYTES = 512 * MIB;
/** single, twin, primary and replica each hold a base image and a WAL. */
const VOLUME_COUNT = 4;
const EXPORT_NAME = 'bench';
const PREFILL_BS_BYTES = MIB;
const PREFILL_IODEPTH = 8;
const BLOCK_BYTES = 4096;
const READY_TIMEOUT_MS = 60_000;
const STREAMING_TIMEOUT_MS = 30_000;
const CATCH_UP_TIMEOUT_MS = 60_000;
const STATUS_POLL_MS = 250;
/** A server counts as idle below this share of one CPU (2 s in a row). */
const IDLE_BUSY_PCT = 5;
/** The same under --cpu-prof, whose sampling thread alone keeps a server at about 6 %. */
const IDLE_BUSY_PCT_PROFILED = 15;
const RTT_MESSAGE_BYTES = 64;
const RTT_WARMUP_ROUND_TRIPS = 200;
const RTT_ROUND_TRIPS = 2000;
const ECHO_READY = /echo listening on (\d+)\n/;
// The echo end of the RTT ping-pong: echoes every byte, says its port on stderr.
const ECHO_SERVER_SCRIPT = `
const net = require('node:net');
const server = net.createServer((s) => { s.setNoDelay(true); s.on('data', (d) => s.write(d)); });
server.listen(0, '${LOOPBACK_HOST}', () => process.stderr.write('echo listening on ' + server.address().port + '\\n'));
`;

type SideName = 'single' | 'twin' | 'replicated';

interface Workload {
  readonly id: string;
  readonly label: string;
  readonly iodepth: number;
  readonly fsyncEvery: number;
  /** Target for replicated / single IOPS (null = informational). */
  readonly minRatio: number | null;
  /** Whether the p50 latency has a target. */
  readonly latencyTarget: boolean;
  /** Whether each round also writes two single nodes at once (the host's bound for two nodes). */
  readonly sideBySide: boolean;
}

const WORKLOADS: readonly Workload[] = [
  { id: 'randwrite-4k-qd32', label: 'randwrite 4k qd32', iodepth: 32, fsyncEvery: 0, minRatio: RANDWRITE_QD32_MIN, latencyTarget: false, sideBySide: true },
  { id: 'randwrite-4k-qd32-fsync1', label: 'randwrite 4k qd32 fsync=1', iodepth: 32, fsyncEvery: 1, minRatio: FSYNC_QD32_MIN, latencyTarget: false, sideBySide: true },
  { id: 'randwrite-4k-qd1', label: 'randwrite 4k qd1', iodepth: 1, fsyncEvery: 0, minRatio: null, latencyTarget: true, sideBySide: false },
];

interface Side {
  readonly name: SideName;
  readonly uri: string;
  /** The NBD server: the single node, or the primary. */
  readonly front: VolumeServer;
  readonly replica: VolumeServer | null;
  /** Below this share of one CPU a server of this side counts as idle. */
  readonly idleBusyPct: number;
}

interface ReplicaLag {
  readonly lagLsn: number;
  readonly lagBytes: number;
  readonly lagSeconds: number;
  /** Primary head − the replica's applied LSN. */
  readonly appliedBehindLsn: number;
}

interface Measured {
  readonly figure: Figure;
  readonly raw: NbdFioMeasurement;
  readonly frontCpuUsPerRequest: number;
  readonly replicaCpuUsPerRequest: number | null;
  /** Each server's CPU over the fio run, in CPUs (1 = one CPU busy throughout). */
  readonly frontCpus: number;
  readonly replicaCpus: number | null;
  readonly lag: ReplicaLag | null;
  /** The whole machine over the fio run (/proc/stat); null without it. */
  readonly host: HostUse | null;
}

// What every CPU of this machine did over a window: busy (the servers, fio,
// the kernel's interrupt and softirq work, anything else) and stolen by the
// hypervisor, as shares of all CPUs, and the busy CPU time per client write.
interface HostUse {
  readonly cpus: number;
  readonly busyPct: number;
  readonly stealPct: number;
  readonly usPerWrite: number;
}

interface Pair {
  readonly w: Workload;
  readonly single: Measured;
  readonly replicated: Measured;
  /** The single node and its twin written at once, each by its own fio (workloads with sideBySide). */
  readonly sideBySide: SideBySide | null;
}

// Two single nodes written at once, each by its own fio job with the
// workload's queue depth: what this machine gives each of two nodes that
// share its CPUs and its disk, as a primary and its replica on one host do,
// with nothing shipped between them.
interface SideBySide {
  /** value = the two nodes' mean IOPS. */
  readonly figure: Figure;
  readonly iops: readonly [number, number];
}

/** The round reported for a workload, and every round's ratio (and whether it was noisy) in the order run. */
interface Chosen extends Pair {
  readonly rounds: readonly RoundOutcome[];
  /** Each round's windows, in the order run (for their other load and stolen share). */
  readonly roundPairs: readonly Pair[];
  /** Whether the median was taken over quiet rounds only (false: none was quiet). */
  readonly quiet: boolean;
  /** How many rounds the median was taken over. */
  readonly over: number;
}

interface RttFigures {
  readonly p50Us: number;
  readonly p99Us: number;
  readonly meanUs: number;
  readonly roundTrips: number;
}

export const bench: Bench = {
  name: 'replication',
  description:
    'fio nbd engine against a blockwal primary with one replica (sync_all, loopback) and a single blockwal node: 4k randwrite qd32, qd32 fsync=1, qd1 p50 vs loopback RTT; at qd32 also two single nodes written at once (what the machine gives each of two nodes); the median of BENCH_REPL_ROUNDS quiet rounds (default 3, at most BENCH_REPL_MAX_ROUNDS in all, default 7) (BENCH_REPL_GIB, default 0.5)',
  run,
};

async function run(ctx: BenchContext): Promise<BenchResult> {
  const startedAt = new Date().toISOString();
  const fio = await probeNbdBenchTools();
  const volumeBytes = volumeBytesFromEnv(process.env);
  const rounds = roundsFromEnv(process.env);
  const maxRounds = maxRoundsFromEnv(process.env, rounds);
  const profileDir = profileDirFromEnv(process.env);
  const replicaRoot = replicaRootFromEnv(process.env);
  // Under BENCH_REPL_REPLICA_DIR the replica and the twin live there.
  checkFreeSpace(ctx.dir, volumeBytes, replicaRoot === null ? VOLUME_COUNT : VOLUME_COUNT - 2);
  if (replicaRoot !== null) checkFreeSpace(replicaRoot, volumeBytes, 2);
  const loadavgStart = loadAverages();
  ctx.log(`loadavg at start: ${loadavgStart}; export ${volumeBytes / MIB} MiB${profileDir === null ? '' : `; cpu profiles to ${profileDir}`}`);

  const sides: Side[] = [];
  const pairs: Chosen[] = [];
  let rtt: RttFigures;
  let checksum: string;
  // The replica's volume: beside the others, or in a directory of its own
  // (removed at the end) under BENCH_REPL_REPLICA_DIR; the twin's goes with
  // it, so the two single nodes side by side sit on the pair's disks.
  const replicaDir = replicaRoot === null ? path.join(ctx.dir, 'replica') : fs.mkdtempSync(path.join(replicaRoot, 'blockwal-bench-replica-'));
  const twinDir = replicaRoot === null ? path.join(ctx.dir, 'twin') : path.join(replicaDir, 'twin');
  try {
    sides.push(await startSingle(ctx, 'single', path.join(ctx.dir, 'single'), volumeBytes, profileDir, startedAt));
    sides.push(await startReplicated(ctx, volumeBytes, profileDir, startedAt, replicaDir));
    if (WORKLOADS.some((w) => w.sideBySide)) sides.push(await startSingle(ctx, 'twin', twinDir, volumeBytes, profileDir, startedAt));
    for (const side of sides) await prefill(ctx, side, volumeBytes);
    await ctx.settle();
    rtt = await measureLoopbackRtt();
    ctx.log(`loopback rtt ${RTT_MESSAGE_BYTES} B: p50 ${fmt(rtt.p50Us)} µs, p99 ${fmt(rtt.p99Us)} µs over ${rtt.roundTrips} round trips`);
    const [single, replicated, twin] = sides as [Side, Side, Side | undefined];
    for (const [i, w] of WORKLOADS.entries()) {
      const tried: Pair[] = [];
      const outcomes: RoundOutcome[] = [];
      for (let round = 0; wantsAnotherRound(outcomes, rounds, maxRounds); round++) {
        // Alternate which side goes first, so neither always gets the fresher host.
        const first = (i + round) % 2 === 0 ? single : replicated;
        const second = first === single ? replicated : single;
        const a = await measure(ctx, first, w, volumeBytes);
        const b = await measure(ctx, second, w, volumeBytes);
        // After the round's two windows: it is not part of the ratio the target judges.
        const sideBySide = w.sideBySide ? await measureSideBySide(ctx, [single, twin!], w, volumeBytes) : null;
        const pair = first === single ? { w, single: a, replicated: b, sideBySide } : { w, single: b, replicated: a, sideBySide };
        const outcome = roundOutcome(pair, rtt);
        tried.push(pair);
        outcomes.push(outcome);
        const noisyText = outcome.noisy ? ` (noisy: other load above ${NOISY_OTHER_LOAD_PCT} %, ${quietRounds(outcomes)} of ${rounds} quiet rounds so far)` : '';
        ctx.log(`round ${round + 1} ${summaryLine(pair, rtt)}; ${windowLoadText(pair)}${noisyText}${sideBySideText(pair)}`);
      }
      const picked = reportedRound(outcomes, !w.latencyTarget);
      const chosen: Chosen = { ...tried[picked.index]!, rounds: outcomes, roundPairs: tried, quiet: picked.quiet, over: picked.over };
      ctx.log(`${w.label}: reporting ${roundsText(chosen)}`);
      pairs.push(chosen);
    }
    await waitForCatchUp(ctx, replicated);
    for (const ended of await stopServers(sides)) {
      assert(/exited with code 0$/.test(ended), `a server did not close cleanly: ${ended}`);
    }
    checksum = await compareChecksums(ctx, replicated);
  } finally {
    // After a clean run this only reports the exits; after a failure it stops what still runs.
    for (const ended of await stopServers(sides)) ctx.log(`stopped: ${ended}`);
    if (replicaRoot !== null) fs.rmSync(replicaDir, { recursive: true, force: true });
  }
  const loadavgEnd = loadAverages();
  ctx.log(`loadavg at end: ${loadavgEnd}`);
  return report({ startedAt, fio, volumeBytes, loadavgStart, loadavgEnd, pairs, rtt, rounds, maxRounds, checksum, profileDir, replicaRoot, replicaApart: replicaRoot !== null && fs.statSync(replicaRoot).dev !== fs.statSync(ctx.dir).dev });
}

interface ReportInput {
  readonly startedAt: string;
  readonly fio: string;
  readonly volumeBytes: number;
  readonly loadavgStart: string;
  readonly loadavgEnd: string;
  readonly pairs: readonly Chosen[];
  readonly rtt: RttFigures;
  readonly rounds: number;
  readonly maxRounds: number;
  readonly checksum: string;
  readonly profileDir: string | null;
  readonly replicaRoot: string | null;
  readonly replicaApart: boolean; // replicaRoot is on another device than the scratch dir
}

function report(r: ReportInput): BenchResult {
  const rttFigure: Figure = {
    name: `loopback tcp rtt ${RTT_MESSAGE_BYTES} B`,
    value: r.rtt.p50Us,
    unit: 'µs',
    latencyUs: { mean: r.rtt.meanUs, p50: r.rtt.p50Us, p99: r.rtt.p99Us },
    detail: `${r.rtt.roundTrips} sequential round trips, Node client ↔ Node echo server over ${LOOPBACK_HOST}, TCP_NODELAY`,
  };
  return {
    bench: bench.name,
    description: bench.description,
    startedAt: r.startedAt,
    env: {
      fio: r.fio,
      exportMiB: r.volumeBytes / MIB,
      rounds: r.rounds,
      maxRounds: r.maxRounds,
      durability: 'sync_all',
      loadavgStart: r.loadavgStart,
      loadavgEnd: r.loadavgEnd,
      ...(r.profileDir === null ? {} : { cpuProfiles: r.profileDir }),
      ...(r.replicaRoot === null ? {} : { replicaDir: r.replicaRoot }),
    },
    anchors: [...r.pairs.map((p) => p.single.figure), ...r.pairs.flatMap((p) => (p.sideBySide === null ? [] : [p.sideBySide.figure])), rttFigure],
    subjects: r.pairs.map((p) => p.replicated.figure),
    ratios: [
      ...r.pairs.map((p) => ratio(`${p.w.label}: replicated/single`, p.replicated.figure, p.single.figure, '>=', p.w.minRatio)),
      ...r.pairs.filter((p) => p.w.latencyTarget).map((p) => latencyRatio(p, r.rtt)),
      ...r.pairs.flatMap((p) =>
        p.sideBySide === null
          ? []
          : [
              ratio(`${p.w.label}: two single nodes side by side, per node/single`, p.sideBySide.figure, p.single.figure, '>=', null),
              ratio(`${p.w.label}: replicated/two single nodes side by side, per node`, p.replicated.figure, p.sideBySide.figure, '>=', null),
            ],
      ),
      ...r.pairs.map((p) => cpuRatio(`${p.w.label} primary cpu/request: replicated/single`, p, false)),
      ...r.pairs.map((p) => cpuRatio(`${p.w.label} primary+replica cpu/request: replicated/single`, p, true)),
      ...r.pairs.filter((p) => p.w.minRatio !== null).map((p) => cpuCeiling(p)),
      ...r.pairs.filter((p) => p.w.minRatio !== null && p.replicated.host !== null).map((p) => hostCeiling(p)),
    ],
    checks: [],
    notes: [
      'anchors = blockwal serve on one node; subjects = blockwal primary --durability sync_all with one replica over loopback TCP; fio nbd engine over a Unix socket, one connection',
      `each workload ran rounds of one window per side, alternating which side went first, until ${r.rounds} were quiet (no window's other load above ${NOISY_OTHER_LOAD_PCT} %) or ${r.maxRounds} had run; figures and ratios are the round with the median ratio among the quiet ones (all of them if none was quiet): ${r.pairs.map((p) => `${p.w.label} ${roundsText(p)}`).join('; ')}`,
      `qd1 p50 target: replicated p50 / (single p50 + loopback rtt p50 ${fmt(r.rtt.p50Us)} µs) ≤ ${QD1_P50_OVER_BASE_MAX}`,
      'cpu µs/op of a figure = that NBD server\'s utime+stime (all threads) per NBD request (data requests + FLUSHes), over the whole fio run; for replicated figures that is the primary, the replica is in the detail line and the primary+replica ratios',
      'lag = the primary\'s view of its replica right after the window: head − received LSN (and bytes, seconds), and head − applied LSN',
      'for the fsync=1 workload the figure is write IOPS; fio issued about one FLUSH per write, so requests ≈ 2 × writes',
      `sanity: replica streaming and in the ack set through every window, caught up at the end, all servers exited 0, checksum of primary and replica both ${r.checksum}`,
      `cpu ceiling (no target): the replicated IOPS this machine's ${os.availableParallelism()} CPUs could carry at the CPU one write took (primary + replica + fio, each per write: a server's µs per request × requests per write), over the single node's IOPS; below a target, that target needs less CPU per write, not only shorter waits`,
      'host ceiling (no target): the same with the machine-wide CPU per write from /proc/stat (busy time of all CPUs, steal excluded, so the kernel\'s interrupt and softirq work counts too) and only the CPU the hypervisor did not steal; each window\'s detail gives its host line',
      cpuNote(r.pairs),
      'two single nodes side by side (no target): in each round of a workload marked so, after its two windows, the single node and a second one (twin, its own volume on the same disk, prefilled alike) were written at once, each by its own fio with the workload\'s job; the figure is their mean IOPS. A replicated write is a write on each of two nodes that share this machine\'s CPUs and disk; this is what the machine gives each of two nodes when nothing passes between them, and the pair\'s ratio to it is what replication itself costs',
      ...(r.profileDir === null ? [] : [`servers ran under node --cpu-prof (profiles in ${r.profileDir}): figures carry the profiler's overhead`]),
      ...(r.replicaRoot === null
        ? ['the replica\'s volume shares the disk of the single node and the primary']
        : [
            r.replicaApart
              ? `the replica's and the twin's volumes lived under ${r.replicaRoot} (BENCH_REPL_REPLICA_DIR), on another file system than the single node and the primary; each window's disk line counts only theirs`
              : `the replica's and the twin's volumes lived under ${r.replicaRoot} (BENCH_REPL_REPLICA_DIR), on the same file system as the single node and the primary`,
          ]),
    ],
  };
}

function volumeBytesFromEnv(env: NodeJS.ProcessEnv): number {
  const raw = env.BENCH_REPL_GIB;
  const gib = raw === undefined || raw === '' ? DEFAULT_REPL_GIB : Number(raw);
  if (!Number.isFinite(gib) || gib <= 0) throw new RangeError(`BENCH_REPL_GIB must be a positive number, got '${raw}'`);
  const bytes = Math.round(gib * 1024) * MIB;
  if (bytes < MIN_VOLUME_BYTES) throw new RangeError(`BENCH_REPL_GIB=${raw} is below ${MIN_VOLUME_BYTES / MIB} MiB`);
  return bytes;
}

// BENCH_REPL_REPLICA_DIR: an existing directory (on a second disk, say) for
// the replica's volume; null when unset.
function replicaRootFromEnv(env: NodeJS.ProcessEnv): string | null {
  const raw = env.BENCH_REPL_REPLICA_DIR;
  if (raw === undefined || raw === '') return null;
  if (!fs.statSync(raw, { throwIfNoEntry: false })?.isDirectory()) throw new RangeError(`BENCH_REPL_REPLICA_DIR must name an existing directory, got '${raw}'`);
  return path.resolve(raw);
}

function roundsFromEnv(env: NodeJS.ProcessEnv): number {
  const raw = env.BENCH_REPL_ROUNDS;
  const rounds = raw === undefined || raw === '' ? DEFAULT_ROUNDS : Number(raw);
  // Any count: of two middle rounds the worse one is reported (bench/lib/rounds.ts).
  if (!Number.isInteger(rounds) || rounds < 1) throw new RangeError(`BENCH_REPL_ROUNDS must be a positive integer, got '${raw}'`);
  return rounds;
}

function maxRoundsFromEnv(env: NodeJS.ProcessEnv, rounds: number): number {
  const raw = env.BENCH_REPL_MAX_ROUNDS;
  const max = raw === undefined || raw === '' ? rounds + DEFAULT_EXTRA_ROUNDS : Number(raw);
  if (!Number.isInteger(max) || max < rounds) {
    throw new RangeError(`BENCH_REPL_MAX_ROUNDS must be an integer of at least BENCH_REPL_ROUNDS (${rounds}), got '${raw}'`);
  }
  return max;
}

/** The ratio a round is judged by (p50 over (single p50 + RTT) where latency has the target, else IOPS), and whether it was noisy. */
function roundOutcome(p: Pair, rtt: RttFigures): RoundOutcome {
  const ratio = p.w.latencyTarget
    ? p.replicated.figure.latencyUs!.p50 / (p.single.figure.latencyUs!.p50 + rtt.p50Us)
    : p.replicated.figure.value / p.single.figure.value;
  return { ratio, noisy: isNoisyRound([p.single.figure.otherLoadPct, p.replicated.figure.otherLoadPct]) };
}

// A round's two windows side by side: a ratio moves with the difference in
// what else ran (or was stolen) between them, not only with each one's level.
function windowLoadText(p: Pair): string {
  const pct = (v: number | null | undefined): string => (v === null || v === undefined ? '?' : fmt(v));
  const load = `other load ${pct(p.single.figure.otherLoadPct)} / ${pct(p.replicated.figure.otherLoadPct)} %`;
  const stolen = `stolen ${pct(p.single.host?.stealPct)} / ${pct(p.replicated.host?.stealPct)} %`;
  return `single / replicated ${load}, ${stolen}`;
}

function roundsText(p: Chosen): string {
  const what = p.w.latencyTarget ? 'p50 ratio' : 'IOPS ratio';
  const sideBySide = (q: Pair): string =>
    q.sideBySide === null ? '' : `; side by side ${fmt(q.sideBySide.figure.value / q.single.figure.value)}× single, replicated ${fmt(q.replicated.figure.value / q.sideBySide.figure.value)}× of it`;
  const byRound = p.rounds.map((o, i) => `${fmt(o.ratio)}× (${o.noisy ? 'noisy; ' : ''}${windowLoadText(p.roundPairs[i]!)}${sideBySide(p.roundPairs[i]!)})`).join(', ');
  const from = p.quiet ? `the median of ${p.over} quiet round(s)` : `no quiet round: the median of all ${p.over}`;
  return `${what} by round ${byRound}; reported: ${from}`;
}

function profileDirFromEnv(env: NodeJS.ProcessEnv): string | null {
  const raw = env.BENCH_REPL_CPU_PROF;
  if (raw === undefined || raw === '') return null;
  const dir = path.resolve(raw);
  fs.mkdirSync(dir, { recursive: true });
  return dir;
}

function idleBusyPct(profileDir: string | null): number {
  return profileDir === null ? IDLE_BUSY_PCT : IDLE_BUSY_PCT_PROFILED;
}

function checkFreeSpace(dir: string, volumeBytes: number, volumes: number): void {
  const st = fs.statfsSync(dir);
  const freeBytes = st.bavail * st.bsize;
  const neededBytes = volumes * (volumeBytes + WAL_MAX_BYTES) + FREE_SPACE_MARGIN_BYTES;
  if (freeBytes < neededBytes) {
    throw new BenchSkipped(`not enough space in ${dir}: ${fmt(freeBytes / MIB)} MiB free, ${fmt(neededBytes / MIB)} MiB needed`);
  }
}

async function startSingle(ctx: BenchContext, name: 'single' | 'twin', dir: string, volumeBytes: number, profileDir: string | null, startedAt: string): Promise<Side> {
  await createVolume(dir, volumeBytes);
  const socket = socketPath(ctx.dir, `${name}.sock`);
  const server = await ServerProcess.start({
    name,
    command: process.execPath,
    args: blockwalArgs(name, profileDir, startedAt, ['serve', dir, '--nbd', `unix:${socket}`, '--export', EXPORT_NAME]),
    ready: (stderr) => stderr.includes(`on unix:${socket}\n`),
    readyTimeoutMs: READY_TIMEOUT_MS,
  });
  ctx.log(`${name} pid ${server.pid} serving ${dir} on ${socket}`);
  return { name, uri: nbdUnixUri(socket, EXPORT_NAME), front: { dir, server }, replica: null, idleBusyPct: idleBusyPct(profileDir) };
}

async function startReplicated(ctx: BenchContext, volumeBytes: number, profileDir: string | null, startedAt: string, replicaDir: string): Promise<Side> {
  const primaryDir = path.join(ctx.dir, 'primary');
  await createVolume(replicaDir, volumeBytes);
  await createVolume(primaryDir, volumeBytes);
  const profile = { dir: profileDir, startedAt };
  const { server: replica, port } = await startReplicaServer({ name: 'replica', dir: replicaDir, port: 0, profile, readyTimeoutMs: READY_TIMEOUT_MS });
  ctx.log(`replica pid ${replica.pid} of ${replicaDir} listening on ${LOOPBACK_HOST}:${port}`);
  const socket = socketPath(ctx.dir, 'primary.sock');
  const primary = await startPrimaryServer({
    name: 'primary',
    dir: primaryDir,
    socket,
    exportName: EXPORT_NAME,
    replicaPort: port,
    options: ['--durability', 'sync_all'],
    profile,
    readyTimeoutMs: READY_TIMEOUT_MS,
  });
  ctx.log(`primary pid ${primary.pid} serving ${primaryDir} on ${socket}, feeding ${LOOPBACK_HOST}:${port} (sync_all)`);
  const side: Side = {
    name: 'replicated',
    uri: nbdUnixUri(socket, EXPORT_NAME),
    front: { dir: primaryDir, server: primary },
    replica: { dir: replicaDir, server: replica },
    idleBusyPct: idleBusyPct(profileDir),
  };
  const waitedMs = await servers.waitForStreaming(side.front, STREAMING_TIMEOUT_MS, STATUS_POLL_MS);
  ctx.log(`replica streaming after ${waitedMs.toFixed(0)} ms`);
  return side;
}

/** The primary's replication status, from its control socket (as `blockwal status PDIR --json`). */
function primaryStatus(side: Side): Promise<{ head: number; repl: PrimaryReplicationStatus }> {
  return servers.primaryStatus(side.front);
}

/** Replicated figures mean something only while sync_all holds with the replica in it. */
function assertReplicating(repl: PrimaryReplicationStatus, when: string): void {
  const peer = repl.replicas[0]!;
  assert(repl.mode === 'healthy', `${when}: primary is ${repl.mode} (${repl.reason ?? 'no reason'})`);
  assert(peer.state === 'streaming', `${when}: replica is ${peer.state} (${peer.reason ?? 'no reason'})`);
  assert(peer.inAckSet, `${when}: replica left the ack set`);
}

function lagOf(head: number, repl: PrimaryReplicationStatus): ReplicaLag {
  const peer = repl.replicas[0]!;
  return { lagLsn: peer.lagLsn, lagBytes: peer.lagBytes, lagSeconds: peer.lagSeconds, appliedBehindLsn: head - peer.lsnApplied };
}

/** Polls until the replica has received and applied everything the primary has. */
async function waitForCatchUp(ctx: BenchContext, side: Side): Promise<void> {
  const startMs = performance.now();
  for (;;) {
    const { head, repl } = await primaryStatus(side);
    assertReplicating(repl, 'before stopping');
    const lag = lagOf(head, repl);
    if (lag.lagLsn === 0 && lag.appliedBehindLsn === 0) {
      ctx.log(`replica caught up at LSN ${head} after ${(performance.now() - startMs).toFixed(0)} ms`);
      return;
    }
    assert(performance.now() - startMs < CATCH_UP_TIMEOUT_MS, `replica still ${lagText(lag)} after ${CATCH_UP_TIMEOUT_MS} ms`);
    await sleep(STATUS_POLL_MS);
  }
}

/** Both nodes of a side, the NBD server first. */
function nodesOf(side: Side): VolumeServer[] {
  return side.replica === null ? [side.front] : [side.front, side.replica];
}

async function waitForIdle(ctx: BenchContext, side: Side): Promise<ServerCpuDelta[]> {
  const deltas: ServerCpuDelta[] = [];
  for (const node of nodesOf(side)) {
    const idle = await node.server.waitForIdle(side.idleBusyPct);
    if (!idle.idle) ctx.log(`${node.server.name} still busy ${(idle.waitedMs / 1000).toFixed(0)} s after its writes stopped`);
    deltas.push(idle.cpu);
  }
  return deltas;
}

/** One sequential pass of 1 MiB writes and a FLUSH, then waits for the servers' background work. */
async function prefill(ctx: BenchContext, side: Side, volumeBytes: number): Promise<void> {
  const job: NbdFioJob = {
    name: `${side.name}-prefill`,
    uri: side.uri,
    rw: 'write',
    bsBytes: PREFILL_BS_BYTES,
    sizeBytes: volumeBytes,
    iodepth: PREFILL_IODEPTH,
    fsyncEvery: 0,
    endFsync: true,
  };
  const raw = await runNbdFio(job, ctx.dir).catch((err: unknown) => {
    for (const node of nodesOf(side)) node.server.assertAlive();
    throw err;
  });
  assert(raw.ops * PREFILL_BS_BYTES === volumeBytes, `${side.name} prefill wrote ${raw.ops} MiB of ${volumeBytes / MIB}`);
  const idleStartMs = performance.now();
  const cpu = await waitForIdle(ctx, side);
  if (side.replica !== null) assertReplicating((await primaryStatus(side)).repl, 'after the prefill');
  const cpuMs = cpu.reduce((sum, d) => sum + d.totalUs, 0) / 1000;
  ctx.log(
    `${side.name}: prefilled ${volumeBytes / MIB} MiB at ${fmt(raw.bandwidthBytesPerSec / MIB)} MiB/s; ` +
      `idle after ${((performance.now() - idleStartMs) / 1000).toFixed(1)} s (${cpuMs.toFixed(0)} ms CPU meanwhile)`,
  );
}

/** A measured window's fio job against one side: the workload over the whole export. */
function windowJob(ctx: BenchContext, name: string, side: Side, w: Workload, volumeBytes: number): NbdFioJob {
  return {
    name,
    uri: side.uri,
    rw: 'randwrite',
    bsBytes: BLOCK_BYTES,
    sizeBytes: volumeBytes,
    iodepth: w.iodepth,
    fsyncEvery: w.fsyncEvery,
    runtimeMs: ctx.measureMs,
    rampMs: ctx.warmupMs,
  };
}

async function measure(ctx: BenchContext, side: Side, w: Workload, volumeBytes: number): Promise<Measured> {
  const job = windowJob(ctx, `${side.name}-${w.id}`, side, w, volumeBytes);
  await ctx.settle();
  const loadavg = loadAverages();
  ctx.log(`measuring ${side.name} ${w.label} for ${ctx.measureMs / 1000} s (loadavg ${loadavg})`);
  const hostStart = cpuSnapshot();
  const diskStart = diskSnapshot(ctx.dir);
  const kthreadsStart = kernelThreadsSnapshot();
  const frontStart = side.front.server.cpuSample();
  const replicaStart = side.replica?.server.cpuSample() ?? null;
  const acksStart = side.replica === null ? null : (await primaryStatus(side)).repl.ackWait;
  const flushesStart = await walFlushCounts(side);
  const raw = await runNbdFio(job, ctx.dir).catch((err: unknown) => {
    for (const node of nodesOf(side)) node.server.assertAlive(); // a dead server explains fio's failure better
    throw err;
  });
  const front = cpuBetween(frontStart, side.front.server.cpuSample());
  const replica = replicaStart === null ? null : cpuBetween(replicaStart, side.replica!.server.cpuSample());
  const host = cpuSince(hostStart);
  const disk = diskSince(diskStart);
  const kthreads = kernelThreadsSince(kthreadsStart);
  let lag: ReplicaLag | null = null;
  let acks = '';
  if (side.replica !== null) {
    const { head, repl } = await primaryStatus(side);
    assertReplicating(repl, `after ${side.name} ${w.label}`);
    lag = lagOf(head, repl);
    acks = acksHeldText(acksStart!, repl.ackWait);
  }
  const flushes = walFlushText(side, flushesStart, await walFlushCounts(side), front.wallMs / 1000);
  const deferred = await waitForIdle(ctx, side);
  const hostUse = hostUseOf(host, raw.iops);

  // Requests the whole run carried (start-up and warm-up too), at the window's rate.
  const requestsInRun = (raw.requests / raw.runtimeMs) * front.wallMs;
  const frontCpus = front.totalUs / (front.wallMs * 1000);
  const replicaCpus = replica === null ? null : replica.totalUs / (replica.wallMs * 1000);
  const frontCpuUsPerRequest = front.totalUs / requestsInRun;
  const replicaCpuUsPerRequest = replica === null ? null : replica.totalUs / requestsInRun;
  const detail = [
    windowText(side, w, raw, loadavg),
    cpuText(side.front.server.name, front, deferred[0]!, requestsInRun),
    ...(replica === null ? [] : [cpuText('replica', replica, deferred[1]!, requestsInRun)]),
    ...(disk === null ? [] : [diskText(disk, (raw.ops * 1000) / raw.runtimeMs, 'write')]),
    flushes,
    ...(hostUse === null ? [] : [hostText(hostUse)]),
    ...(kthreads === null || !(raw.iops > 0) ? [] : [kernelThreadsText(kthreads, raw.iops, 'write')]),
    ...(lag === null ? [] : [`replica ${lagText(lag)} after the window`, acks]),
  ].join('; ');
  return {
    raw,
    frontCpuUsPerRequest,
    replicaCpuUsPerRequest,
    frontCpus,
    replicaCpus,
    lag,
    host: hostUse,
    figure: {
      name: `${side.name} ${w.label}`,
      value: raw.iops,
      unit: 'IOPS',
      cpuUsPerOp: frontCpuUsPerRequest,
      latencyUs: { mean: raw.latNs.mean / 1000, p50: raw.latNs.p50 / 1000, p99: raw.latNs.p99 / 1000 },
      otherLoadPct: otherLoadPct(host, raw.usrCpuPct + raw.sysCpuPct + 100 * (frontCpus + (replicaCpus ?? 0))),
      detail,
    },
  };
}

// The single node and its twin written at once, each by its own fio with the
// workload's job: two fio processes started together, the warm-up covering
// the gap between their starts.
async function measureSideBySide(ctx: BenchContext, nodes: readonly [Side, Side], w: Workload, volumeBytes: number): Promise<SideBySide> {
  const jobs = nodes.map((side) => windowJob(ctx, `${side.name}-${w.id}-side-by-side`, side, w, volumeBytes));
  await ctx.settle();
  const loadavg = loadAverages();
  ctx.log(`measuring ${nodes.map((n) => n.name).join(' and ')} side by side, ${w.label} on each, for ${ctx.measureMs / 1000} s (loadavg ${loadavg})`);
  const hostStart = cpuSnapshot();
  const diskStart = diskSnapshot(ctx.dir);
  const starts = nodes.map((side) => side.front.server.cpuSample());
  const raws = await Promise.all(
    jobs.map((job, i) =>
      runNbdFio(job, ctx.dir).catch((err: unknown) => {
        nodes[i]!.front.server.assertAlive();
        throw err;
      }),
    ),
  );
  const cpus = nodes.map((side, i) => cpuBetween(starts[i]!, side.front.server.cpuSample()));
  const host = cpuSince(hostStart);
  const disk = diskSince(diskStart);
  for (const side of nodes) await waitForIdle(ctx, side);
  const iops = [raws[0]!.iops, raws[1]!.iops] as const;
  const totalIops = iops[0] + iops[1];
  const hostUse = hostUseOf(host, totalIops);
  const serverPct = cpus.reduce((sum, c) => sum + (100 * c.totalUs) / (c.wallMs * 1000), 0);
  const fioPct = raws.reduce((sum, r) => sum + r.usrCpuPct + r.sysCpuPct, 0);
  // Requests each whole run carried (start-up and warm-up too), at its window's rate, as in measure().
  const requestsInRun = raws.map((r, i) => (r.requests / r.runtimeMs) * cpus[i]!.wallMs);
  const perNode = nodes.map((side, i) => {
    const r = raws[i]!;
    return `${side.name} ${fmt(r.iops)} IOPS, p50 ${fmt(r.latNs.p50 / 1000)} µs, p99 ${fmt(r.latNs.p99 / 1000)} µs, cpu ${fmt(cpus[i]!.totalUs / requestsInRun[i]!)} µs/req`;
  });
  const detail = [
    `${nodes.length} fio jobs at qd ${w.iodepth} each, one per node; loadavg ${loadavg}`,
    ...perNode,
    ...(disk === null ? [] : [diskText(disk, totalIops, 'write')]),
    ...(hostUse === null ? [] : [hostText(hostUse)]),
  ].join('; ');
  return {
    iops,
    figure: {
      name: `two single nodes side by side ${w.label}, per node`,
      value: totalIops / 2,
      unit: 'IOPS',
      cpuUsPerOp: cpus.reduce((sum, c) => sum + c.totalUs, 0) / requestsInRun.reduce((sum, n) => sum + n, 0),
      otherLoadPct: otherLoadPct(host, fioPct + serverPct),
      detail,
    },
  };
}

function sideBySideText(p: Pair): string {
  if (p.sideBySide === null) return '';
  const b = p.sideBySide;
  return (
    `; side by side ${fmt(b.iops[0])} + ${fmt(b.iops[1])} IOPS (${fmt(b.figure.value / p.single.figure.value)}× single per node, ` +
    `replicated ${fmt(p.replicated.figure.value / b.figure.value)}× of that; other load ${b.figure.otherLoadPct === null || b.figure.otherLoadPct === undefined ? '?' : fmt(b.figure.otherLoadPct)} %)`
  );
}

// Busy excludes steal: time the hypervisor ran something else is not ours.
function hostUseOf(host: CpuWindow, iops: number): HostUse | null {
  if (host.hostBusyPct === null || host.hostStealPct === null || !(iops > 0)) return null;
  const busyPct = host.hostBusyPct - host.hostStealPct;
  if (busyPct <= 0) return null;
  // The busy CPUs over the writes per second (the window's rate).
  const usPerWrite = ((busyPct / 100) * host.cpuCount * 1e6) / iops;
  return { cpus: host.cpuCount, busyPct, stealPct: host.hostStealPct, usPerWrite };
}

function hostText(h: HostUse): string {
  return `host: ${fmt(h.busyPct)} % of ${h.cpus} CPUs busy, ${fmt(h.stealPct)} % stolen, ${fmt(h.usPerWrite)} µs of CPU per write machine-wide`;
}

function windowText(side: Side, w: Workload, raw: NbdFioMeasurement, loadavg: string): string {
  const flushes = raw.syncCount > 0 ? ` + ${raw.syncCount} flushes (mean ${fmt(raw.syncLatNs!.mean / 1000)} µs)` : '';
  const who = side.replica === null ? '' : ' through primary→replica';
  return (
    `${raw.ops} writes${flushes} at qd ${w.iodepth}${who} in ${(raw.runtimeMs / 1000).toFixed(2)} s ` +
    `(${fmt(raw.bandwidthBytesPerSec / MIB)} MiB/s); fio client ${fmt(raw.cpuUsPerOp)} µs/op; loadavg ${loadavg}`
  );
}

function cpuText(name: string, cpu: ServerCpuDelta, deferred: ServerCpuDelta, requestsInRun: number): string {
  const perReq = (us: number): string => (us / requestsInRun).toFixed(2);
  const threads = Object.entries(cpu.byThreadUs)
    .filter(([, us]) => us > 0)
    .sort((a, b) => b[1] - a[1])
    .map(([thread, us]) => `${thread} ${perReq(us)}`)
    .join(', ');
  return (
    `${name} cpu µs/req ${perReq(cpu.totalUs)} (user ${perReq(cpu.userUs)} sys ${perReq(cpu.systemUs)}; ${threads || 'no threads'}; ` +
    `deferred ${perReq(deferred.totalUs)})`
  );
}

interface WalFlushCounts {
  syncs: number;
  dsyncGroups: number;
}

/** Each node's WAL fdatasyncs and RWF_DSYNC group writes so far, NBD server first. */
async function walFlushCounts(side: Side): Promise<WalFlushCounts[]> {
  const out: WalFlushCounts[] = [];
  for (const node of nodesOf(side)) {
    const volume = (await servers.servedStatus(node)).volumes[0];
    assert(volume !== undefined, `blockwal status ${node.dir}: no volume`);
    out.push({ syncs: volume.walSyncs, dsyncGroups: volume.walDsyncGroupWrites });
  }
  return out;
}

// Over the run (warm-up too), and per second of it: on a disk without FUA each
// fdatasync and each RWF_DSYNC write is a cache flush, which stalls the
// device's queue; the checkpoint's fdatasyncs of base.img are not counted.
function walFlushText(side: Side, before: WalFlushCounts[], after: WalFlushCounts[], seconds: number): string {
  const names = side.replica === null ? [side.front.server.name] : [side.front.server.name, 'replica'];
  const parts = names.map((name, i) => {
    const syncs = after[i]!.syncs - before[i]!.syncs;
    const dsync = after[i]!.dsyncGroups - before[i]!.dsyncGroups;
    return `${name} ${syncs} fdatasyncs + ${dsync} RWF_DSYNC groups (${fmt((syncs + dsync) / seconds)}/s)`;
  });
  return `WAL flushes: ${parts.join(', ')}`;
}

// What the replica added to acknowledgements over the run (warm-up too):
// the share that waited for it after the primary's own WAL write (a FLUSH:
// after its start), and the mean wait of those.
function acksHeldText(before: PrimaryReplicationStatus['ackWait'], after: PrimaryReplicationStatus['ackWait']): string {
  const part = (what: string, b: AckWaitCounts, a: AckWaitCounts): string => {
    const total = a.total - b.total;
    const held = a.held - b.held;
    if (total === 0) return `${what} none`;
    return `${what} ${fmt((100 * held) / total)} % held${held === 0 ? '' : ` ${fmt((1e6 * (a.heldSeconds - b.heldSeconds)) / held)} µs each`}`;
  };
  return `acks waiting for the replica: ${part('writes', before.writes, after.writes)}, ${part('flushes', before.flushes, after.flushes)}`;
}

function lagText(lag: ReplicaLag): string {
  return (
    `lag ${lag.lagLsn} LSN / ${fmt(lag.lagBytes / 1024)} KiB / ${lag.lagSeconds.toFixed(3)} s, ` +
    `applied ${lag.appliedBehindLsn} LSN behind the head`
  );
}

/** Median and tail of RTT_ROUND_TRIPS ping-pongs with a child Node process echoing over loopback TCP. */
async function measureLoopbackRtt(): Promise<RttFigures> {
  const echo = await ServerProcess.start({
    name: 'echo',
    command: process.execPath,
    args: ['-e', ECHO_SERVER_SCRIPT],
    ready: (stderr) => ECHO_READY.test(stderr),
    readyTimeoutMs: READY_TIMEOUT_MS,
  });
  try {
    const port = Number(ECHO_READY.exec(echo.stderr)![1]);
    assert(Number.isInteger(port) && port > 0 && port < 65536, `echo server announced port ${port}`);
    return await pingPong(port);
  } finally {
    await echo.stop();
  }
}

/** One message in flight at a time; a round trip ends when all its bytes are back. */
async function pingPong(port: number): Promise<RttFigures> {
  const socket = net.connect(port, LOOPBACK_HOST);
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', reject);
  });
  socket.setNoDelay(true);
  const message = Buffer.alloc(RTT_MESSAGE_BYTES, 0x5a);
  const samplesMs = new Float64Array(RTT_ROUND_TRIPS);
  let pendingBytes = 0;
  let done: (() => void) | null = null;
  socket.on('data', (chunk: Buffer) => {
    pendingBytes -= chunk.length;
    assert(pendingBytes >= 0, `echo returned ${-pendingBytes} bytes more than sent`);
    if (pendingBytes === 0) done!();
  });
  try {
    for (let i = 0; i < RTT_WARMUP_ROUND_TRIPS + RTT_ROUND_TRIPS; i++) {
      const startMs = performance.now();
      await new Promise<void>((resolve) => {
        done = resolve;
        pendingBytes = RTT_MESSAGE_BYTES;
        socket.write(message);
      });
      if (i >= RTT_WARMUP_ROUND_TRIPS) samplesMs[i - RTT_WARMUP_ROUND_TRIPS] = performance.now() - startMs;
    }
  } finally {
    socket.destroy();
  }
  samplesMs.sort();
  const atUs = (q: number): number => samplesMs[Math.min(RTT_ROUND_TRIPS - 1, Math.floor(q * RTT_ROUND_TRIPS))]! * 1000;
  const meanUs = (samplesMs.reduce((sum, ms) => sum + ms, 0) / RTT_ROUND_TRIPS) * 1000;
  return { p50Us: atUs(0.5), p99Us: atUs(0.99), meanUs, roundTrips: RTT_ROUND_TRIPS };
}

/** SIGTERM in reverse start order: the twin, the primary (it says goodbye to its replica), the replica, the single node. */
async function stopServers(sides: readonly Side[]): Promise<string[]> {
  const ended: string[] = [];
  for (const side of [...sides].reverse()) {
    for (const node of nodesOf(side)) ended.push(await node.server.stop());
  }
  return ended;
}

async function compareChecksums(ctx: BenchContext, side: Side): Promise<string> {
  assert(side.replica !== null, 'checksums need a replica');
  const sum = await servers.compareChecksums(side.front.dir, side.replica.dir);
  ctx.log(`checksum of primary and replica: ${sum}`);
  return sum;
}

/** replicated p50 / (single p50 + loopback RTT): what one round trip may add, with a margin. */
function latencyRatio(p: Pair, rtt: RttFigures): Ratio {
  const baseUs = p.single.figure.latencyUs!.p50 + rtt.p50Us;
  const value = p.replicated.figure.latencyUs!.p50 / baseUs;
  return {
    name: `${p.w.label} p50 latency: replicated/(single + loopback rtt)`,
    subject: p.replicated.figure.name,
    anchor: `${p.single.figure.name} + loopback rtt`,
    value,
    op: '<=',
    target: QD1_P50_OVER_BASE_MAX,
    pass: meets(value, '<=', QD1_P50_OVER_BASE_MAX),
  };
}

function cpuRatio(name: string, p: Pair, withReplica: boolean): Ratio {
  const replicated = p.replicated.frontCpuUsPerRequest + (withReplica ? p.replicated.replicaCpuUsPerRequest! : 0);
  return {
    name,
    subject: p.replicated.figure.name,
    anchor: p.single.figure.name,
    value: replicated / p.single.frontCpuUsPerRequest,
    op: '<=',
    target: null,
    pass: null,
  };
}

// The replicated IOPS that all CPUs could carry at the CPU one replicated
// write took (both servers and fio), over the single node's IOPS.
function cpuCeiling(p: Pair): Ratio {
  const r = p.replicated;
  const requestsPerWrite = 1 + (p.w.fsyncEvery > 0 ? 1 / p.w.fsyncEvery : 0);
  const usPerWrite = (r.frontCpuUsPerRequest + r.replicaCpuUsPerRequest!) * requestsPerWrite + r.raw.cpuUsPerOp;
  const ceilingIops = (os.availableParallelism() * 1e6) / usPerWrite;
  return {
    name: `${p.w.label} cpu ceiling: (cpus / cpu per replicated write) / single`,
    subject: r.figure.name,
    anchor: p.single.figure.name,
    value: ceilingIops / p.single.figure.value,
    op: '>=',
    target: null,
    pass: null,
  };
}

// The replicated IOPS this machine would carry with every CPU the
// hypervisor left it busy, at the machine-wide CPU one replicated write took
// (servers, fio and the kernel's work for them), over the single node's IOPS:
// the window's IOPS scaled from its busy share to the share not stolen.
function hostCeiling(p: Pair): Ratio {
  const h = p.replicated.host!;
  const ceilingIops = (p.replicated.figure.value * (100 - h.stealPct)) / h.busyPct;
  return {
    name: `${p.w.label} host ceiling: (cpus not stolen / machine cpu per replicated write) / single`,
    subject: p.replicated.figure.name,
    anchor: p.single.figure.name,
    value: ceilingIops / p.single.figure.value,
    op: '>=',
    target: null,
    pass: null,
  };
}

// A server whose CPUs-during-the-window is near 1 is bound by its JS thread;
// primary + replica near 1 means their work takes turns rather than overlapping.
function cpuNote(pairs: readonly Pair[]): string {
  const parts = pairs.map(({ w, single, replicated }) => {
    const r = replicated;
    return (
      `${w.label} single ${fmt(single.frontCpuUsPerRequest)} (${single.frontCpus.toFixed(2)} CPUs), ` +
      `primary ${fmt(r.frontCpuUsPerRequest)} (${r.frontCpus.toFixed(2)} CPUs) + replica ${fmt(r.replicaCpuUsPerRequest!)} (${r.replicaCpus!.toFixed(2)} CPUs)`
    );
  });
  return `server CPU µs per request (and CPUs busy during the window): ${parts.join('; ')}`;
}

function summaryLine(p: Pair, rtt: RttFigures): string {
  const r = p.replicated.figure;
  const s = p.single.figure;
  const addedUs = r.latencyUs!.p50 - s.latencyUs!.p50;
  return (
    `${p.w.label}: replicated ${fmt(r.value)} vs single ${fmt(s.value)} IOPS (${fmt(r.value / s.value)}×); ` +
    `p50 ${fmt(r.latencyUs!.p50)} vs ${fmt(s.latencyUs!.p50)} µs (+${fmt(addedUs)} µs, rtt ${fmt(rtt.p50Us)} µs); ` +
    `cpu µs/req single ${fmt(p.single.frontCpuUsPerRequest)}, primary ${fmt(p.replicated.frontCpuUsPerRequest)} + replica ${fmt(p.replicated.replicaCpuUsPerRequest!)}; ` +
    `replica ${lagText(p.replicated.lag!)}`
  );
}
