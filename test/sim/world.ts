// A seeded world: one primary (the real ProtocolEngine and decide() behind a
// shell, test/sim/primary.ts, with a dirty bitmap per away replica so decide
// can pick bitmap_resync), 1–2 replicas (the real RebuildSession,
// test/sim/replica.ts), a faulty network (test/sim/network.ts), replica
// crashes with torn base writes and lost unsynced WAL, primary restarts
// (clean, or crashes that lose the dirty bitmaps), and an auditor that
// holds the run to these invariants (names used in violation reports):
//
//   content          a replica whose base is whole (no unfinished rebuild,
//                    not blank) holds exactly the shadow model's content at
//                    its lsnApplied — checked every step, crashed or not.
//   apply_committed  a replica applies only records the primary committed,
//   apply_same       and each is the primary's record at that LSN.
//   completion_once  a session's completion is reported at most once.
//   completion_gate  a completion has lsnAchieved ≥ the session's target, and
//                    a rebuild's or bitmap resync's has every chunk done.
//   keep_up_whole    the engine never keeps up (or catches up) a replica
//                    whose base is partial or blank.
//   bitmap_from      a replica's dirty bitmap starts at or below the applied
//                    LSN it would come back with after a crash (lsnRecoverable),
//                    while its base is whole — the bitmap's trust rule: else
//                    a replica that crashes while away loses its resync, or
//                    keeps stale blocks if the resync was decided before the
//                    crash.
//   healthy_whole    while the engine publishes 'healthy', every replica's
//                    base is whole.
//   converge         after the faults end (FAULT_END_STEP) and the workload
//                    stops (WRITE_END_STEP), within LIVENESS_BOUND_STEPS every
//                    replica is up, whole, applied to the head, kept up by the
//                    engine, and the mode is 'healthy'.
// Plus whatever the session and the shells flag themselves (a refused WAL
// apply, an unexpected fence, a bitmap resync started without a bitmap).
//
// Phases: steps [0, FAULT_END_STEP) inject faults; then the network only
// delays; the workload runs until WRITE_END_STEP; the run ends at END_STEP.
// A violation stops the world and returns the seed, the step, and the last
// trace lines.
import { RebuildSession } from '../../lib/protocol/rebuild_session';
import type { SessionKind } from '../../lib/protocol/types';

import {
  type Counts,
  drawProfile,
  END_STEP,
  FAULT_END_STEP,
  type Rec,
  VOLUME_BLOCKS,
  WRITE_END_STEP,
} from './model';
import { Network, PRIMARY } from './network';
import { type Env, SimPrimary } from './primary';
import { Prng } from './prng';
import { type ReplicaAudit, SimReplica } from './replica';

const TRACE_LINES = 40;
const STAY_CONVERGED_STEPS = 20;

export interface Violation {
  seed: number;
  step: number;
  invariant: string;
  detail: string;
  trace: string[];
}

// The parts a canary may replace (test/sim/canaries.ts).
export interface Plants {
  sessionClass?: typeof RebuildSession;
  primaryClass?: typeof SimPrimary;
  replicaClass?: typeof SimReplica;
}

export interface WorldOptions extends Plants {
  seed: number;
  counts: Counts;
}

class StopWorld extends Error {}

export function runWorld(options: WorldOptions): Violation | undefined {
  const world = new World(options);
  try {
    world.run();
  } catch (error) {
    if (!(error instanceof StopWorld)) {
      world.record('exception', error instanceof Error ? (error.stack ?? error.message) : String(error));
    }
  }
  return world.violation;
}

class World implements ReplicaAudit {
  violation: Violation | undefined;
  readonly #seed: number;
  readonly #env: Env;
  readonly #primary: SimPrimary;
  readonly #replicas: SimReplica[] = [];
  readonly #trace: string[] = [];
  readonly #completed = new Set<string>();
  readonly #audited = new Map<SimReplica, number>();

  constructor(options: WorldOptions) {
    this.#seed = options.seed;
    const prng = new Prng(options.seed);
    const profile = drawProfile(prng);
    const counts = options.counts;
    const net = new Network(prng, profile, counts.faults);
    this.#env = {
      prng,
      net,
      counts,
      profile,
      step: 0,
      trace: (line) => {
        this.#trace.push(`[${this.#env.step}] ${line}`);
        if (this.#trace.length > TRACE_LINES) this.#trace.shift();
      },
      violation: (invariant, detail) => this.fail(invariant, detail),
    };
    const names = Array.from({ length: profile.replicas }, (_, i) => `r${i + 1}`);
    const primaryClass = options.primaryClass ?? SimPrimary;
    const replicaClass = options.replicaClass ?? SimReplica;
    this.#primary = new primaryClass(this.#env, names, { keepUpStarted: (name) => this.keepUpStarted(name) });
    this.#primary.preHistory(profile.preHistoryRecords);
    const sessionClass = options.sessionClass ?? RebuildSession;
    names.forEach((name, i) => {
      const replica = new replicaClass(name, this.#env, this, sessionClass, i * 3);
      // A replica starts somewhere in the history it holds, or blank when the
      // WAL no longer reaches back to 0 (so it will be rebuilt).
      const blank = this.#primary.walTail > 0 && prng.chance(0.3);
      const lsn = blank ? 0 : prng.int(0, this.#primary.lsnHead);
      replica.initialise(lsn, blank ? undefined : this.#primary.shadow[lsn]);
      this.#replicas.push(replica);
    });
    this.#env.trace(
      `seed ${options.seed}: ${names.length} replicas, head ${this.#primary.lsnHead}, walTail ${this.#primary.walTail}, ` +
        `replicas at ${this.#replicas.map((r) => (r.blank ? 'blank' : r.lsnApplied)).join(', ')}; ${JSON.stringify(profile)}`,
    );
  }

  run(): void {
    const env = this.#env;
    const resyncsBefore = env.counts.sessions.bitmap_resync;
    try {
      this.runSteps();
    } finally {
      if (env.counts.sessions.bitmap_resync > resyncsBefore) env.counts.bitmaps.seedsWithResync++;
    }
  }

  private runSteps(): void {
    const env = this.#env;
    this.#primary.start();
    let convergedSince: number | undefined;
    for (env.step = 1; env.step <= END_STEP; env.step++) {
      if (env.step < FAULT_END_STEP) this.injectFaults();
      for (const envelope of env.net.due(env.step)) {
        if (envelope.to === PRIMARY) this.#primary.onMessage(envelope.from, envelope.msg as never);
        else this.replica(envelope.to).onMessage(envelope.msg as never);
      }
      this.#primary.step(env.step < WRITE_END_STEP);
      for (const replica of this.#replicas) replica.step();
      this.audit();
      if (env.step < WRITE_END_STEP) continue;
      // Converged worlds run a while longer (it must hold), then stop. A
      // report overtaken by records in flight may still send a current
      // replica to a rebuild (safe, wasteful); it must converge again.
      if (this.converged() !== undefined) convergedSince = undefined;
      else convergedSince ??= env.step;
      if (convergedSince !== undefined && env.step - convergedSince >= STAY_CONVERGED_STEPS) {
        env.counts.stepsToConverge.push(convergedSince - WRITE_END_STEP);
        return;
      }
    }
    this.fail('converge', `not converged ${END_STEP - WRITE_END_STEP} steps after the workload stopped: ${this.converged() ?? '?'}`);
  }

  private injectFaults(): void {
    const { prng, profile, step } = this.#env;
    if (prng.chance(profile.primaryRestartChance)) this.#primary.restart(prng.chance(0.5));
    for (const replica of this.#replicas) {
      if (replica.up && prng.chance(profile.crashChance)) replica.crash(prng.int(1, 40));
      if (prng.chance(profile.partitionChance)) {
        const direction = prng.pick(['both', 'to_replica', 'to_primary'] as const);
        const lengthSteps = prng.int(3, 60);
        this.#env.counts.faults.partitions++;
        this.#env.net.partition(replica.name, step, lengthSteps, direction);
        this.#env.trace(`net: partition ${replica.name} ${direction} for ${lengthSteps} steps`);
      }
    }
  }

  private replica(name: string): SimReplica {
    const replica = this.#replicas.find((r) => r.name === name);
    if (replica === undefined) throw new Error(`no replica ${name}`);
    return replica;
  }

  // ---- invariants ----

  private audit(): void {
    for (const replica of this.#replicas) {
      const bitmap = this.#primary.dirty.get(replica.name);
      if (bitmap !== undefined && replica.contentValid && bitmap.lsnFrom > replica.lsnRecoverable) {
        this.fail('bitmap_from', `${replica.name}'s dirty bitmap starts at ${bitmap.lsnFrom}, but a crash now would leave it at ${replica.lsnRecoverable}`);
      }
    }
    for (const replica of this.#replicas) {
      if (!replica.contentValid || this.#audited.get(replica) === replica.changes) continue;
      this.#audited.set(replica, replica.changes);
      const expected = this.#primary.shadow[replica.lsnApplied]!;
      const actual = replica.content();
      for (let block = 0; block < VOLUME_BLOCKS; block++) {
        if (actual[block] !== expected[block]) {
          this.fail('content', `${replica.name} at LSN ${replica.lsnApplied}: block ${block} holds ${actual[block]}, the primary's content there is ${expected[block]}${this.lastWriter(block, replica.lsnApplied)}`);
        }
      }
    }
    if (this.#primary.mode === 'healthy') {
      for (const replica of this.#replicas) {
        if (!replica.contentValid) this.fail('healthy_whole', `mode healthy while ${replica.name} ${replica.blank ? 'is blank' : 'has an unfinished rebuild'}`);
      }
    }
  }

  private lastWriter(block: number, lsnAt: number): string {
    for (let lsn = lsnAt; lsn > 0; lsn--) {
      const rec = this.#primary.records[lsn]!;
      if (rec.lba <= block && block < rec.lba + rec.lengthBlocks) return ` (last written by LSN ${lsn}, a ${rec.kind} of ${rec.lba}+${rec.lengthBlocks})`;
    }
    return ' (never written)';
  }

  applied(name: string, rec: Rec): void {
    const primary = this.#primary;
    if (rec.lsn > primary.commitLsn) this.fail('apply_committed', `${name} applied LSN ${rec.lsn}, the primary committed up to ${primary.commitLsn}`);
    const own = primary.records[rec.lsn];
    if (own === undefined || own.kind !== rec.kind || own.lba !== rec.lba || own.values.join() !== rec.values.join()) {
      this.fail('apply_same', `${name} applied LSN ${rec.lsn} that differs from the primary's`);
    }
  }

  completing(name: string, sessionId: number, kind: SessionKind, lsnAchieved: number, session: RebuildSession | undefined): void {
    this.#env.counts.completions++;
    this.#env.counts.completionsByKind[kind]++;
    const key = `${name}/${sessionId}`;
    if (this.#completed.has(key)) this.fail('completion_once', `${name} reports session ${sessionId} completed again`);
    this.#completed.add(key);
    const issued = this.#primary.sessionsIssued.get(sessionId);
    if (issued === undefined || issued.replica !== name || issued.kind !== kind) {
      this.fail('completion_gate', `${name} completes ${kind} session ${sessionId} the primary never issued to it`);
    }
    if (lsnAchieved < issued.lsnTarget) {
      this.fail('completion_gate', `${name} completes ${kind} session ${sessionId} at LSN ${lsnAchieved}, below its target ${issued.lsnTarget}`);
    }
    if (session !== undefined && (!session.baseDone || session.chunksDone !== session.chunksTotal)) {
      this.fail('completion_gate', `${name} completes ${kind} ${sessionId} with ${session.chunksDone}/${session.chunksTotal} chunks`);
    }
  }

  startedOnInvalid(name: string, what: string): void {
    this.fail('keep_up_whole', `${name} got a ${what} while its base is partial or blank`);
  }

  private keepUpStarted(name: string): void {
    const replica = this.replica(name);
    if (!replica.contentValid) this.fail('keep_up_whole', `engine keeps up ${name} while its base is ${replica.blank ? 'blank' : 'partial'}`);
  }

  // Why the world has not converged, or undefined when it has.
  private converged(): string | undefined {
    const primary = this.#primary;
    if (primary.mode !== 'healthy') return `mode is ${primary.mode}`;
    for (const replica of this.#replicas) {
      if (!replica.up) return `${replica.name} is down`;
      if (!replica.contentValid) return `${replica.name} is not whole`;
      if (replica.lsnApplied !== primary.lsnHead) return `${replica.name} applied ${replica.lsnApplied} of ${primary.lsnHead}`;
      const view = primary.engine.replica(replica.name);
      if (view?.state !== 'keep_up') return `engine holds ${replica.name} as ${view?.state ?? 'unknown'}`;
    }
    return undefined;
  }

  fail(invariant: string, detail: string): never {
    this.record(invariant, detail);
    throw new StopWorld(invariant);
  }

  record(invariant: string, detail: string): void {
    this.violation ??= { seed: this.#seed, step: this.#env.step, invariant, detail, trace: [...this.#trace] };
  }
}

// ---- many seeds ----

export interface RunSummary {
  seedFirst: number;
  seedsRun: number;
  violations: Violation[];
  counts: Counts;
  elapsedMs: number;
}

export function describeCounts(summary: RunSummary): string {
  const c = summary.counts;
  const f = c.faults;
  const steps = [...c.stepsToConverge].sort((a, b) => a - b);
  const p = (q: number): number => steps[Math.min(steps.length - 1, Math.floor(q * steps.length))] ?? 0;
  const failures = Object.entries(c.sessionFailures)
    .map(([k, v]) => `${k} ${v}`)
    .join(', ');
  const b = c.bitmaps;
  const done = c.completionsByKind;
  return [
    `seeds ${summary.seedFirst}..${summary.seedFirst + summary.seedsRun - 1} (${summary.seedsRun} run) in ${summary.elapsedMs.toFixed(0)} ms`,
    `sessions started: rebuild ${c.sessions.rebuild} (resumed ${c.resumedRebuilds}), catch_up ${c.sessions.catch_up}, bitmap_resync ${c.sessions.bitmap_resync}; keep-ups started ${c.keepUps}`,
    `sessions completed: rebuild ${done.rebuild}, catch_up ${done.catch_up}, bitmap_resync ${done.bitmap_resync} (${c.completions} in all)`,
    `dirty bitmaps: started ${b.started} (not started, backlog too short: ${b.noBacklog}), dropped when current ${b.droppedCurrent}, lost in primary crashes ${b.droppedCrash}; ` +
      `resync chunks sent unchanged ${b.unchangedChunks}; seeds with a bitmap_resync ${b.seedsWithResync} of ${summary.seedsRun}`,
    `session failures: ${failures || 'none'}`,
    `faults: drops ${f.drops}, duplicates ${f.duplicates}, corrupt chunks ${f.corruptChunks}, partitions ${f.partitions}, crashes ${f.crashes}, torn base blocks ${f.tornBaseWrites}, unsynced WAL records lost ${f.lostWalRecords}, ` +
      `primary restarts ${f.primaryRestarts} (crashes ${f.primaryCrashes})`,
    `steps to converge after the workload stops: median ${p(0.5)}, p99 ${p(0.99)}, max ${steps[steps.length - 1] ?? 0} (bound ${END_STEP - WRITE_END_STEP})`,
    `violations ${summary.violations.length}`,
  ].join('\n');
}

export function describeViolation(v: Violation): string {
  return [`VIOLATION seed ${v.seed} step ${v.step}: ${v.invariant}: ${v.detail}`, ...v.trace.map((line) => `  ${line}`)].join('\n');
}

export interface RunOptions extends Plants {
  seedFirst: number;
  seeds: number;
  stopAtFirstViolation?: boolean;
}

export function runSeeds(options: RunOptions, counts: Counts): RunSummary {
  const started = performance.now();
  const violations: Violation[] = [];
  let seedsRun = 0;
  for (let seed = options.seedFirst; seed < options.seedFirst + options.seeds; seed++) {
    seedsRun++;
    const { sessionClass, primaryClass, replicaClass } = options;
    const violation = runWorld({ seed, counts, sessionClass, primaryClass, replicaClass });
    if (violation === undefined) continue;
    violations.push(violation);
    if (options.stopAtFirstViolation === true) break;
  }
  return { seedFirst: options.seedFirst, seedsRun, violations, counts, elapsedMs: performance.now() - started };
}
