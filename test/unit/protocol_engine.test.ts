// The recovery protocol engine (lib/protocol/engine.ts), driven by events
// alone: assignments (idempotent, stale, epoch change), decisions on reports,
// session ids, the session lifecycle (progress, the completion gate,
// completion once, failure without escalation, deadline, loss), the mode
// projection's order and publish-on-change, and the sticky fence. Last, a
// property over random event sequences: the engine's invariants hold after
// every step.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';

import fc from 'fast-check';

import {
  type EngineState,
  initialState,
  ProtocolEngine,
  REPLICAS_MAX,
  sessionBudgetMs,
  step,
} from '../../lib/protocol/engine';
import type { PrimaryFacts, ProtocolCommand, ProtocolEvent, ReplicaFacts, SessionKind, VolumeMode } from '../../lib/protocol/types';

const MiB = 2 ** 20;

// Head 200, checkpoint 150, WAL after 120, backlog after 180.
function primaryFacts(epoch: number, more: Partial<PrimaryFacts> = {}): PrimaryFacts {
  return { epoch, lsnHead: 200, lsnCheckpoint: 150, backlogFloor: 180, walTail: 120, walBytesAfterReplica: 10 * MiB, volumeBytes: 1024 * MiB, ...more };
}

function replicaFacts(epoch: number, position: number, more: Partial<ReplicaFacts> = {}): ReplicaFacts {
  return { epoch, lsnReceived: position, lsnDurable: position, lsnApplied: position, chainMatches: true, ...more };
}

// A report from `replica` at `position` in epoch 3 (both sides), unless overridden.
function report(replica: string, position: number, more: Partial<ReplicaFacts> = {}, primary: Partial<PrimaryFacts> = {}): ProtocolEvent {
  return { type: 'replica_report', replica, replicaFacts: replicaFacts(3, position, more), primaryFacts: primaryFacts(3, primary) };
}

const ASSIGN: ProtocolEvent = { type: 'assignment', epoch: 3, role: 'primary', replicas: ['r1', 'r2'] };
const BARRIER: ProtocolEvent = { type: 'barrier', epoch: 3, lsn: 1 };
const AT_HEAD = 200;
const IN_WAL = 150; // catch-up
const BELOW_TAIL = 100; // rebuild (no bitmap)

// An engine assigned primary of r1, r2 in epoch 3 with the barrier durable and
// the clock at 1000 ms, after `events`.
function engineAfter(...events: ProtocolEvent[]): ProtocolEngine {
  const engine = new ProtocolEngine();
  for (const event of [ASSIGN, BARRIER, { type: 'tick', nowMs: 1_000 } as const, ...events]) engine.apply(event);
  return engine;
}

function types(commands: readonly ProtocolCommand[]): string[] {
  return commands.map((c) => c.type);
}

function only<T extends ProtocolCommand['type']>(commands: readonly ProtocolCommand[], type: T): Extract<ProtocolCommand, { type: T }> {
  const found = commands.filter((c): c is Extract<ProtocolCommand, { type: T }> => c.type === type);
  assert.equal(found.length, 1, `one ${type} in ${JSON.stringify(commands)}`);
  return found[0]!;
}

function sessionIdOf(engine: ProtocolEngine, replica: string): number {
  const session = engine.replica(replica)?.session;
  assert.ok(session !== undefined, `${replica} has a session`);
  return session.sessionId;
}

// ---- assignment ----

test('a new engine is allocated_only with no assignment, and publishes nothing until something changes', () => {
  const engine = new ProtocolEngine();
  assert.deepEqual(engine.projection, { mode: 'allocated_only', reason: 'no assignment yet' });
  assert.deepEqual(engine.apply({ type: 'tick', nowMs: 5 }), []);
});

test('an assignment as primary publishes bootstrap_pending; the same assignment again is a no-op', () => {
  const engine = new ProtocolEngine();
  const commands = engine.apply(ASSIGN);
  assert.deepEqual(commands, [{ type: 'publish_mode', mode: 'bootstrap_pending', reason: 'waiting for the epoch 3 barrier to be durable' }]);
  const before = engine.state;
  assert.deepEqual(engine.apply(ASSIGN), []);
  assert.deepEqual(engine.apply({ ...ASSIGN, replicas: ['r2', 'r1'] } as ProtocolEvent), [], 'the same set in another order');
  assert.equal(engine.state, before);
});

test('the same assignment again keeps an active session untouched', () => {
  const engine = engineAfter(report('r1', BELOW_TAIL));
  const before = engine.state;
  assert.deepEqual(engine.apply(ASSIGN), []);
  assert.equal(engine.state, before);
  assert.equal(engine.replica('r1')!.state, 'session_issued');
});

test('an assignment of a lower epoch is ignored', () => {
  const engine = engineAfter(report('r1', BELOW_TAIL));
  const before = engine.state;
  assert.deepEqual(engine.apply({ type: 'assignment', epoch: 2, role: 'replica', replicas: [] }), []);
  assert.equal(engine.state, before);
});

test('an assignment of a higher epoch cancels active sessions and clears every replica and the barrier', () => {
  const engine = engineAfter(report('r1', BELOW_TAIL), report('r2', AT_HEAD));
  const sessionId = sessionIdOf(engine, 'r1');
  const commands = engine.apply({ type: 'assignment', epoch: 4, role: 'primary', replicas: ['r1', 'r2'] });
  assert.deepEqual(commands, [
    { type: 'cancel_session', replica: 'r1', sessionId, failure: 'epoch_mismatch' },
    { type: 'publish_mode', mode: 'bootstrap_pending', reason: 'waiting for the epoch 4 barrier to be durable' },
  ]);
  for (const name of ['r1', 'r2']) {
    const view = engine.replica(name)!;
    assert.equal(view.state, 'idle');
    assert.equal(view.decision, undefined);
    assert.equal(view.session, undefined);
    assert.equal(view.replicaFacts, undefined);
  }
  assert.equal(engine.state.barrierLsn, undefined);
  assert.deepEqual(engine.apply(report('r1', AT_HEAD)), [], 'a report gathered in epoch 3 is stale now');
});

test('a role replica projects mode replica and decides nothing', () => {
  const engine = new ProtocolEngine();
  assert.deepEqual(engine.apply({ type: 'assignment', epoch: 5, role: 'replica', replicas: ['r1'] }), [
    { type: 'publish_mode', mode: 'replica', reason: 'this node is a replica in epoch 5' },
  ]);
  assert.deepEqual(engine.apply({ type: 'replica_report', replica: 'r1', replicaFacts: replicaFacts(5, 0), primaryFacts: primaryFacts(5) }), []);
  assert.deepEqual(engine.apply({ type: 'barrier', epoch: 5, lsn: 3 }), []);
  assert.deepEqual(engine.state.replicas, []);
});

test('a primary with no replicas is allocated_only', () => {
  const engine = new ProtocolEngine();
  assert.deepEqual(engine.apply({ type: 'assignment', epoch: 1, role: 'primary', replicas: [] }), [
    { type: 'publish_mode', mode: 'allocated_only', reason: 'primary in epoch 1 with no replicas assigned' },
  ]);
});

test('the replica set changing within an epoch keeps the replicas still named and cancels the removed one', () => {
  const engine = engineAfter(report('r1', BELOW_TAIL), report('r2', AT_HEAD));
  const sessionId = sessionIdOf(engine, 'r1');
  const r2 = engine.replica('r2');
  const commands = engine.apply({ type: 'assignment', epoch: 3, role: 'primary', replicas: ['r2', 'r3'] });
  assert.deepEqual(commands[0], { type: 'cancel_session', replica: 'r1', sessionId, failure: 'cancelled' });
  assert.equal(engine.replica('r1'), undefined);
  assert.equal(engine.replica('r2'), r2);
  assert.equal(engine.replica('r3')!.state, 'idle');
  assert.equal(engine.projection.mode, 'bootstrap_pending');
});

test('the same epoch with another role is refused as a coordinator bug', () => {
  const engine = engineAfter();
  assert.throws(() => engine.apply({ type: 'assignment', epoch: 3, role: 'replica', replicas: [] }), /conflicting assignment in epoch 3/);
});

test('malformed events are refused at the edge', () => {
  const engine = engineAfter();
  const cases: [ProtocolEvent, RegExp][] = [
    [{ type: 'assignment', epoch: -1, role: 'primary', replicas: [] }, /epoch must be/],
    [{ type: 'assignment', epoch: 4, role: 'primary', replicas: ['a', 'a'] }, /distinct/],
    [{ type: 'assignment', epoch: 4, role: 'primary', replicas: Array.from({ length: REPLICAS_MAX + 1 }, (_, i) => `r${i}`) }, /at most 32/],
    [{ type: 'assignment', epoch: 4, role: 'primary', replicas: [''] }, /non-empty string/],
    [{ type: 'session_progress', replica: 'r1', sessionId: 1.5, lsnApplied: 0, bytesDone: 0, baseDone: false }, /sessionId/],
    [{ type: 'tick', nowMs: Number.NaN }, /nowMs/],
    [report('r1', 10, {}, { walTail: 160 }), /walTail ≤ lsnCheckpoint/],
  ];
  for (const [event, message] of cases) assert.throws(() => engine.apply(event), message);
});

// ---- decisions on reports ----

interface ReportRow {
  name: string;
  event: ProtocolEvent;
  commands: string[];
  kind?: SessionKind;
  lsnFrom: number;
  lsnBase?: number;
}

const REPORT_ROWS: ReportRow[] = [
  // publish_mode: the reason names the replicas still to report (r2 now only).
  { name: 'a replica at the head is kept up', event: report('r1', AT_HEAD), commands: ['log_decision', 'start_keep_up', 'publish_mode'], lsnFrom: 201 },
  { name: 'a replica within the backlog is kept up', event: report('r1', 185), commands: ['log_decision', 'start_keep_up', 'publish_mode'], lsnFrom: 186 },
  { name: 'a replica within the WAL gets a catch-up session', event: report('r1', IN_WAL), commands: ['log_decision', 'start_session', 'publish_mode'], kind: 'catch_up', lsnFrom: 151, lsnBase: 150 },
  {
    name: 'a replica below the tail with a bitmap gets a bitmap resync session',
    event: report('r1', BELOW_TAIL, {}, { bitmap: { epoch: 3, lsnFrom: 90, dirtyBlocks: 10 } }),
    commands: ['log_decision', 'start_session', 'publish_mode'],
    kind: 'bitmap_resync',
    lsnFrom: 151,
    lsnBase: 150,
  },
  { name: 'a replica below the tail gets a rebuild session', event: report('r1', BELOW_TAIL), commands: ['log_decision', 'start_session', 'publish_mode'], kind: 'rebuild', lsnFrom: 151, lsnBase: 150 },
];

for (const row of REPORT_ROWS) {
  test(`report: ${row.name}`, () => {
    const engine = engineAfter();
    const commands = engine.apply(row.event);
    assert.deepEqual(types(commands), row.commands);
    const logged = only(commands, 'log_decision');
    assert.equal(logged.replica, 'r1');
    assert.deepEqual(engine.replica('r1')!.decision, logged.decision);
    if (row.kind === undefined) {
      assert.deepEqual(only(commands, 'start_keep_up'), { type: 'start_keep_up', replica: 'r1', lsnFrom: row.lsnFrom });
      assert.equal(engine.replica('r1')!.state, 'keep_up');
      return;
    }
    const start = only(commands, 'start_session');
    const deadlineMs = 1_000 + sessionBudgetMs(logged.decision.costBytes);
    assert.deepEqual(start, { type: 'start_session', replica: 'r1', sessionId: 1, kind: row.kind, lsnFrom: row.lsnFrom, lsnTarget: 200, lsnBase: row.lsnBase, deadlineMs });
    assert.equal(engine.replica('r1')!.state, 'session_issued');
  });
}

test('a session budget is 60 s plus its bytes at 50 MiB/s', () => {
  assert.equal(sessionBudgetMs(0), 60_000);
  assert.equal(sessionBudgetMs(50 * MiB), 61_000);
  assert.equal(sessionBudgetMs(1024 * MiB), 60_000 + 20_480);
  assert.equal(sessionBudgetMs(1), 60_001);
});

test('a report of a replica already kept up logs the decision but does not restart its feed', () => {
  const engine = engineAfter(report('r1', AT_HEAD));
  assert.deepEqual(types(engine.apply(report('r1', AT_HEAD))), ['log_decision']);
  assert.deepEqual(types(engine.apply(report('r1', 190))), ['log_decision']);
});

test('a kept-up replica that fell out of the backlog gets a catch-up session', () => {
  const engine = engineAfter(report('r1', AT_HEAD));
  const commands = engine.apply(report('r1', 170, {}, { lsnHead: 300, backlogFloor: 250 }));
  assert.equal(only(commands, 'start_session').kind, 'catch_up');
});

test('reports for an unassigned replica, or with primary facts of an older epoch, are ignored', () => {
  const engine = engineAfter();
  const before = engine.state;
  assert.deepEqual(engine.apply(report('r9', AT_HEAD)), []);
  assert.deepEqual(engine.apply({ type: 'replica_report', replica: 'r1', replicaFacts: replicaFacts(3, 0), primaryFacts: primaryFacts(2) }), []);
  assert.equal(engine.state, before);
});

test('session ids strictly increase across replicas, failures and epochs', () => {
  const engine = engineAfter();
  const ids: number[] = [];
  const started = (commands: ProtocolCommand[]): void => {
    for (const c of commands) if (c.type === 'start_session') ids.push(c.sessionId);
  };
  started(engine.apply(report('r1', BELOW_TAIL)));
  started(engine.apply(report('r2', IN_WAL)));
  engine.apply({ type: 'session_failed', replica: 'r1', sessionId: ids[0]!, failure: 'transport_lost', message: 'reset' });
  started(engine.apply(report('r1', BELOW_TAIL)));
  engine.apply({ type: 'assignment', epoch: 4, role: 'primary', replicas: ['r1'] });
  started(engine.apply({ type: 'replica_report', replica: 'r1', replicaFacts: replicaFacts(4, BELOW_TAIL), primaryFacts: primaryFacts(4) }));
  assert.deepEqual(ids, [1, 2, 3, 4]);
});

test('a new session id is above the id of the replica\'s unfinished rebuild, and a resume names it', () => {
  const engine = engineAfter();
  const unfinished = { sessionId: 41, epoch: 3, baseLsn: 130, chunksDone: 1, chunksTotal: 2 };
  const start = only(engine.apply(report('r1', IN_WAL, { rebuild: unfinished })), 'start_session');
  assert.equal(start.sessionId, 42);
  assert.equal(start.kind, 'rebuild');
  assert.equal(start.resumesSessionId, 41);
  assert.equal(start.lsnBase, 130);
  assert.equal(start.lsnFrom, 151);
  assert.equal(only(engine.apply(report('r2', IN_WAL)), 'start_session').sessionId, 43);
});

test('engine options seed the session ids and the clock', () => {
  const engine = new ProtocolEngine({ sessionIdLast: 99, nowMs: 5_000 });
  engine.apply(ASSIGN);
  const start = only(engine.apply(report('r1', IN_WAL)), 'start_session');
  assert.equal(start.sessionId, 100);
  assert.equal(start.deadlineMs, 5_000 + sessionBudgetMs(10 * MiB));
});

test('while a session is active a report updates the facts only', () => {
  const engine = engineAfter(report('r1', BELOW_TAIL));
  const decision = engine.replica('r1')!.decision;
  assert.deepEqual(engine.apply(report('r1', AT_HEAD)), []);
  const view = engine.replica('r1')!;
  assert.equal(view.replicaFacts!.lsnReceived, AT_HEAD);
  assert.equal(view.decision, decision);
  assert.equal(view.state, 'session_issued');
});

// ---- the session lifecycle ----

test('progress of the active session marks it running; progress of another id is ignored', () => {
  const engine = engineAfter(report('r1', BELOW_TAIL));
  const sessionId = sessionIdOf(engine, 'r1');
  const before = engine.state;
  assert.deepEqual(engine.apply({ type: 'session_progress', replica: 'r1', sessionId: sessionId + 1, lsnApplied: 160, bytesDone: 5, baseDone: false }), []);
  assert.equal(engine.state, before);
  assert.deepEqual(engine.apply({ type: 'session_progress', replica: 'r1', sessionId, lsnApplied: 160, bytesDone: 4096, baseDone: false }), []);
  const view = engine.replica('r1')!;
  assert.equal(view.state, 'session_running');
  assert.deepEqual([view.session!.phase, view.session!.lsnApplied, view.session!.bytesDone], ['running', 160, 4096]);
});

test('a failed session does not escalate: nothing starts until the next report, which is decided afresh', () => {
  const engine = engineAfter(report('r2', AT_HEAD), report('r1', IN_WAL));
  const sessionId = sessionIdOf(engine, 'r1');
  const commands = engine.apply({ type: 'session_failed', replica: 'r1', sessionId, failure: 'progress_stalled', message: 'no progress for 30 s' });
  assert.deepEqual(commands, [
    { type: 'publish_mode', mode: 'degraded', reason: `replica r1 failed: catch_up session ${sessionId} failed (progress_stalled: no progress for 30 s)` },
  ]);
  assert.equal(engine.replica('r1')!.state, 'failed');
  assert.deepEqual(engine.apply({ type: 'tick', nowMs: 10_000_000 }), [], 'time alone starts nothing');
  // The replica fell further behind meanwhile: the fresh decision is a rebuild, not a retry.
  const next = engine.apply(report('r1', BELOW_TAIL));
  assert.equal(only(next, 'log_decision').decision.kind, 'rebuild');
  assert.equal(only(next, 'start_session').sessionId, sessionId + 1);
});

test('a new session supersedes the last: events naming the old id are ignored', () => {
  const engine = engineAfter(report('r1', IN_WAL));
  const old = sessionIdOf(engine, 'r1');
  engine.apply({ type: 'session_failed', replica: 'r1', sessionId: old, failure: 'transport_lost', message: 'reset' });
  engine.apply(report('r1', IN_WAL));
  const current = sessionIdOf(engine, 'r1');
  assert.ok(current > old);
  const before = engine.state;
  const stale: ProtocolEvent[] = [
    { type: 'session_progress', replica: 'r1', sessionId: old, lsnApplied: 200, bytesDone: 1, baseDone: true },
    { type: 'session_completed', replica: 'r1', sessionId: old, lsnAchieved: 200, baseDone: true, digestsMatch: true },
    { type: 'session_failed', replica: 'r1', sessionId: old, failure: 'cancelled', message: 'late' },
  ];
  for (const event of stale) assert.deepEqual(engine.apply(event), [], event.type);
  assert.equal(engine.state, before);
});

interface GateRow {
  name: string;
  kind: SessionKind;
  lsnAchieved: number;
  baseDone: boolean;
  digestsMatch: boolean;
  accepted: boolean;
  failure?: 'cancelled' | 'digest_mismatch';
  refusal?: RegExp;
  mode: VolumeMode;
}

const POSITION_OF: Record<SessionKind, number> = { catch_up: IN_WAL, bitmap_resync: BELOW_TAIL, rebuild: BELOW_TAIL };
const GATE_ROWS: GateRow[] = [
  { name: 'a rebuild with everything done completes', kind: 'rebuild', lsnAchieved: 200, baseDone: true, digestsMatch: true, accepted: true, mode: 'healthy' },
  { name: 'a rebuild past its target completes', kind: 'rebuild', lsnAchieved: 230, baseDone: true, digestsMatch: true, accepted: true, mode: 'healthy' },
  { name: 'a rebuild short of its target is refused', kind: 'rebuild', lsnAchieved: 199, baseDone: true, digestsMatch: true, accepted: false, failure: 'cancelled', refusal: /achieved LSN 199 is below the target 200/, mode: 'needs_rebuild' },
  { name: 'a rebuild with its base lane not done is refused', kind: 'rebuild', lsnAchieved: 200, baseDone: false, digestsMatch: true, accepted: false, failure: 'cancelled', refusal: /base lane is not done/, mode: 'needs_rebuild' },
  { name: 'a rebuild with mismatched digests is refused', kind: 'rebuild', lsnAchieved: 200, baseDone: true, digestsMatch: false, accepted: false, failure: 'digest_mismatch', refusal: /digests of the copied ranges do not match/, mode: 'needs_rebuild' },
  { name: 'a bitmap resync with its base lane not done is refused', kind: 'bitmap_resync', lsnAchieved: 200, baseDone: false, digestsMatch: true, accepted: false, failure: 'cancelled', refusal: /base lane/, mode: 'degraded' },
  { name: 'a bitmap resync with mismatched digests is refused', kind: 'bitmap_resync', lsnAchieved: 200, baseDone: true, digestsMatch: false, accepted: false, failure: 'digest_mismatch', refusal: /digests/, mode: 'degraded' },
  { name: 'a bitmap resync with everything done completes', kind: 'bitmap_resync', lsnAchieved: 200, baseDone: true, digestsMatch: true, accepted: true, mode: 'healthy' },
  { name: 'a catch-up at its target completes (no base lane)', kind: 'catch_up', lsnAchieved: 200, baseDone: false, digestsMatch: false, accepted: true, mode: 'healthy' },
  { name: 'a catch-up short of its target is refused', kind: 'catch_up', lsnAchieved: 180, baseDone: true, digestsMatch: true, accepted: false, failure: 'cancelled', refusal: /achieved LSN 180/, mode: 'degraded' },
];

for (const row of GATE_ROWS) {
  test(`completion gate: ${row.name}`, () => {
    const bitmap = row.kind === 'bitmap_resync' ? { bitmap: { epoch: 3, lsnFrom: 50, dirtyBlocks: 8 } } : {};
    const engine = engineAfter(report('r2', AT_HEAD), report('r1', POSITION_OF[row.kind], {}, bitmap));
    const sessionId = sessionIdOf(engine, 'r1');
    assert.equal(engine.replica('r1')!.session!.kind, row.kind);
    const commands = engine.apply({ type: 'session_completed', replica: 'r1', sessionId, lsnAchieved: row.lsnAchieved, baseDone: row.baseDone, digestsMatch: row.digestsMatch });
    const view = engine.replica('r1')!;
    if (row.accepted) {
      assert.deepEqual(commands[0], { type: 'start_keep_up', replica: 'r1', lsnFrom: row.lsnAchieved + 1 });
      assert.equal(view.state, 'keep_up');
      assert.equal(view.session!.phase, 'completed');
    } else {
      assert.deepEqual(commands[0], { type: 'cancel_session', replica: 'r1', sessionId, failure: row.failure });
      assert.ok(!types(commands).includes('start_keep_up') && !types(commands).includes('start_session'), 'no escalation');
      assert.equal(view.state, 'failed');
      assert.match(view.session!.message!, row.refusal!);
    }
    assert.equal(engine.projection.mode, row.mode);
  });
}

test('a completion is accepted once: a second one is ignored', () => {
  const engine = engineAfter(report('r2', AT_HEAD), report('r1', BELOW_TAIL));
  const sessionId = sessionIdOf(engine, 'r1');
  const done: ProtocolEvent = { type: 'session_completed', replica: 'r1', sessionId, lsnAchieved: 200, baseDone: true, digestsMatch: true };
  assert.deepEqual(types(engine.apply(done)), ['start_keep_up', 'publish_mode']);
  const before = engine.state;
  assert.deepEqual(engine.apply(done), []);
  assert.deepEqual(engine.apply({ type: 'session_failed', replica: 'r1', sessionId, failure: 'cancelled', message: 'late' }), []);
  assert.equal(engine.state, before);
});

test('a session past its deadline is cancelled on the next tick, not at the deadline itself', () => {
  const engine = engineAfter(report('r2', AT_HEAD), report('r1', IN_WAL));
  const { sessionId, deadlineMs } = engine.replica('r1')!.session!;
  assert.equal(deadlineMs, 1_000 + sessionBudgetMs(10 * MiB));
  assert.deepEqual(engine.apply({ type: 'tick', nowMs: deadlineMs }), []);
  const commands = engine.apply({ type: 'tick', nowMs: deadlineMs + 1 });
  assert.deepEqual(commands[0], { type: 'cancel_session', replica: 'r1', sessionId, failure: 'deadline_exceeded' });
  assert.equal(engine.replica('r1')!.state, 'failed');
  assert.equal(engine.replica('r1')!.session!.failure, 'deadline_exceeded');
  assert.equal(engine.projection.mode, 'degraded');
});

test('time never goes back: an older tick is ignored', () => {
  const engine = engineAfter();
  const before = engine.state;
  assert.deepEqual(engine.apply({ type: 'tick', nowMs: 999 }), []);
  assert.equal(engine.state, before);
});

test('a lost replica fails its session with transport_lost; its next report is decided afresh', () => {
  const engine = engineAfter(report('r2', AT_HEAD), report('r1', BELOW_TAIL));
  const sessionId = sessionIdOf(engine, 'r1');
  const commands = engine.apply({ type: 'replica_lost', replica: 'r1', reason: 'connection reset' });
  assert.deepEqual(commands[0], { type: 'cancel_session', replica: 'r1', sessionId, failure: 'transport_lost' });
  const view = engine.replica('r1')!;
  assert.deepEqual([view.state, view.session!.failure, view.lostReason], ['lost', 'transport_lost', 'connection reset']);
  assert.deepEqual(engine.projection, { mode: 'needs_rebuild', reason: 'replica r1 needs a rebuild: connection reset' });
  assert.deepEqual(types(engine.apply(report('r1', AT_HEAD))), ['log_decision', 'start_keep_up', 'publish_mode']);
  assert.equal(engine.projection.mode, 'healthy');
});

test('a lost replica without a session makes the volume degraded', () => {
  const engine = engineAfter(report('r1', AT_HEAD), report('r2', AT_HEAD));
  assert.deepEqual(engine.apply({ type: 'replica_lost', replica: 'r2', reason: 'heartbeat timeout' }), [
    { type: 'publish_mode', mode: 'degraded', reason: 'replica r2 is lost: heartbeat timeout' },
  ]);
});

test('a replica lost after its rebuild completed makes the volume degraded, not needs_rebuild', () => {
  const engine = engineAfter(report('r2', AT_HEAD), report('r1', BELOW_TAIL));
  engine.apply({ type: 'session_completed', replica: 'r1', sessionId: sessionIdOf(engine, 'r1'), lsnAchieved: 200, baseDone: true, digestsMatch: true });
  engine.apply({ type: 'replica_lost', replica: 'r1', reason: 'reset' });
  assert.deepEqual(engine.projection, { mode: 'degraded', reason: 'replica r1 is lost: reset' });
});

// ---- projection ----

interface ModeRow {
  name: string;
  events: ProtocolEvent[];
  mode: VolumeMode;
  reason: RegExp;
}

const failFirst = (replica: string): ProtocolEvent => ({ type: 'session_failed', replica, sessionId: 1, failure: 'transport_lost', message: 'reset' });

const MODE_ROWS: ModeRow[] = [
  { name: 'a rebuild beats a catch-up', events: [report('r2', IN_WAL), report('r1', BELOW_TAIL)], mode: 'rebuilding', reason: /^replica r1 is rebuilding \(session 2: LSN 151\.\.200 over LSN 150\)$/ },
  { name: 'a bitmap resync counts as rebuilding', events: [report('r1', BELOW_TAIL, {}, { bitmap: { epoch: 3, lsnFrom: 1, dirtyBlocks: 1 } })], mode: 'rebuilding', reason: /r1 is resyncing from its dirty bitmap/ },
  { name: 'every rebuilding replica is named', events: [report('r1', BELOW_TAIL), report('r2', BELOW_TAIL)], mode: 'rebuilding', reason: /replica r1 is rebuilding .*; replica r2 is rebuilding/ },
  { name: 'a failed rebuild beats a catch-up', events: [report('r1', BELOW_TAIL), failFirst('r1'), report('r2', IN_WAL)], mode: 'needs_rebuild', reason: /^replica r1 needs a rebuild: rebuild session 1 failed \(transport_lost: reset\)$/ },
  { name: 'a catch-up beats a lost replica', events: [report('r1', IN_WAL), { type: 'replica_lost', replica: 'r2', reason: 'gone' }], mode: 'catching_up', reason: /^replica r1 is catching up \(session 1: LSN 151\.\.200 over LSN 150\)$/ },
  { name: 'a failed catch-up is degraded', events: [report('r1', IN_WAL), failFirst('r1'), report('r2', AT_HEAD)], mode: 'degraded', reason: /replica r1 failed: catch_up session 1 failed/ },
  { name: 'degraded beats a replica that has not reported', events: [{ type: 'replica_lost', replica: 'r1', reason: 'gone' }], mode: 'degraded', reason: /r1 is lost: gone/ },
  { name: 'a replica that has not reported is bootstrap_pending', events: [report('r1', AT_HEAD)], mode: 'bootstrap_pending', reason: /^waiting for the first report of replica r2$/ },
  { name: 'every replica kept up with the barrier durable is healthy', events: [report('r1', AT_HEAD), report('r2', 190)], mode: 'healthy', reason: /^replica r1, r2 kept up in epoch 3$/ },
];

for (const row of MODE_ROWS) {
  test(`projection: ${row.name}`, () => {
    const engine = engineAfter(...row.events);
    assert.equal(engine.projection.mode, row.mode);
    assert.match(engine.projection.reason, row.reason);
  });
}

test('projection: without the barrier of this epoch the volume is bootstrap_pending, however current its replicas', () => {
  const engine = new ProtocolEngine();
  for (const event of [ASSIGN, report('r1', AT_HEAD), report('r2', AT_HEAD), { type: 'barrier', epoch: 2, lsn: 9 } as const]) engine.apply(event);
  assert.deepEqual(engine.projection, { mode: 'bootstrap_pending', reason: 'waiting for the epoch 3 barrier to be durable' });
  assert.deepEqual(engine.apply(BARRIER), [{ type: 'publish_mode', mode: 'healthy', reason: 'replica r1, r2 kept up in epoch 3' }]);
});

test('publish_mode is emitted only when the mode or its reason changes', () => {
  const engine = new ProtocolEngine();
  const published: string[] = [];
  const events: ProtocolEvent[] = [
    ASSIGN, ASSIGN, BARRIER, BARRIER, report('r1', AT_HEAD), report('r1', AT_HEAD), report('r2', IN_WAL),
    { type: 'session_progress', replica: 'r2', sessionId: 1, lsnApplied: 160, bytesDone: 1, baseDone: false },
    { type: 'session_progress', replica: 'r2', sessionId: 1, lsnApplied: 170, bytesDone: 2, baseDone: false },
    { type: 'tick', nowMs: 10 },
    { type: 'session_completed', replica: 'r2', sessionId: 1, lsnAchieved: 200, baseDone: false, digestsMatch: false },
    report('r2', AT_HEAD),
  ];
  for (const event of events) {
    for (const c of engine.apply(event)) if (c.type === 'publish_mode') published.push(`${c.mode}: ${c.reason}`);
  }
  assert.deepEqual(published, [
    'bootstrap_pending: waiting for the epoch 3 barrier to be durable',
    'bootstrap_pending: waiting for the first report of replica r1, r2',
    'bootstrap_pending: waiting for the first report of replica r2',
    'catching_up: replica r2 is catching up (session 1: LSN 151..200 over LSN 150)',
    'healthy: replica r1, r2 kept up in epoch 3',
  ]);
  assert.equal(engine.state.mode, 'healthy');
});

// ---- fencing ----

test('a replica of a higher epoch fences the primary: sessions cancelled, one fence, mode fenced', () => {
  const engine = engineAfter(report('r1', BELOW_TAIL));
  const sessionId = sessionIdOf(engine, 'r1');
  const commands = engine.apply({ type: 'replica_report', replica: 'r2', replicaFacts: replicaFacts(7, AT_HEAD), primaryFacts: primaryFacts(3) });
  assert.deepEqual(types(commands), ['log_decision', 'cancel_session', 'fence', 'publish_mode']);
  assert.deepEqual(commands[1], { type: 'cancel_session', replica: 'r1', sessionId, failure: 'epoch_mismatch' });
  assert.match(only(commands, 'fence').reason, /epoch 7, newer than this primary's epoch 3/);
  assert.equal(engine.projection.mode, 'fenced');
  assert.equal(engine.replica('r1')!.state, 'failed');
});

test('a higher epoch fences even while that replica has an active session', () => {
  const engine = engineAfter(report('r1', BELOW_TAIL));
  const commands = engine.apply(report('r1', BELOW_TAIL, { epoch: 4 }));
  assert.deepEqual(types(commands), ['log_decision', 'cancel_session', 'fence', 'publish_mode']);
});

test('the fence is sticky: nothing but an assignment at or above the fencing epoch clears it', () => {
  const engine = engineAfter(report('r1', AT_HEAD, { epoch: 7 }));
  const fenced = engine.state;
  assert.equal(fenced.mode, 'fenced');
  const ignored: ProtocolEvent[] = [
    report('r1', AT_HEAD),
    report('r2', BELOW_TAIL),
    report('r2', AT_HEAD, { epoch: 9 }),
    BARRIER,
    { type: 'replica_lost', replica: 'r1', reason: 'gone' },
    { type: 'session_completed', replica: 'r1', sessionId: 1, lsnAchieved: 200, baseDone: true, digestsMatch: true },
    ASSIGN,
    { type: 'assignment', epoch: 6, role: 'primary', replicas: ['r1'] },
  ];
  for (const event of ignored) assert.deepEqual(engine.apply(event), [], event.type);
  assert.equal(engine.projection.mode, 'fenced');
  assert.deepEqual(engine.apply({ type: 'tick', nowMs: 2_000 }), []);
  assert.equal(engine.projection.mode, 'fenced');
  const commands = engine.apply({ type: 'assignment', epoch: 7, role: 'replica', replicas: [] });
  assert.deepEqual(commands, [{ type: 'publish_mode', mode: 'replica', reason: 'this node is a replica in epoch 7' }]);
  assert.equal(engine.state.fence, undefined);
});

// ---- purity and invariants ----

test('step is pure: it never changes the state it is given', () => {
  const engine = engineAfter(report('r1', BELOW_TAIL));
  const state = engine.state;
  const copy = structuredClone(state);
  step(state, { type: 'session_completed', replica: 'r1', sessionId: 1, lsnAchieved: 200, baseDone: true, digestsMatch: true });
  step(state, { type: 'tick', nowMs: 10_000_000 });
  step(state, { type: 'assignment', epoch: 9, role: 'primary', replicas: [] });
  assert.deepEqual(state, copy);
  assert.deepEqual(initialState(), new ProtocolEngine().state);
});

const NAMES = ['r1', 'r2', 'r3'];
const FAILURES = ['transport_lost', 'progress_stalled', 'cancelled'] as const;

function eventArb(): fc.Arbitrary<ProtocolEvent> {
  const name = fc.constantFrom(...NAMES);
  const epoch = fc.integer({ min: 1, max: 4 });
  const sessionId = fc.integer({ min: 1, max: 12 });
  const lsn = fc.integer({ min: 0, max: 220 });
  return fc.oneof(
    fc.record({ type: fc.constant('assignment' as const), epoch, role: fc.constantFrom('primary' as const, 'replica' as const), replicas: fc.subarray(NAMES) }),
    fc.record({ type: fc.constant('replica_report' as const), replica: name, epoch, position: lsn, chain: fc.boolean(), rebuild: fc.boolean() }).map(
      ({ replica, epoch: e, position, chain, rebuild }): ProtocolEvent => ({
        type: 'replica_report',
        replica,
        primaryFacts: primaryFacts(Math.min(e, 3)),
        replicaFacts: replicaFacts(e, position, { chainMatches: chain, ...(rebuild ? { rebuild: { sessionId: 5, epoch: e, baseLsn: 130, chunksDone: 1, chunksTotal: 3 } } : {}) }),
      }),
    ),
    fc.record({ type: fc.constant('replica_lost' as const), replica: name, reason: fc.constant('gone') }),
    fc.record({ type: fc.constant('session_progress' as const), replica: name, sessionId, lsnApplied: lsn, bytesDone: fc.nat(), baseDone: fc.boolean() }),
    fc.record({ type: fc.constant('session_completed' as const), replica: name, sessionId, lsnAchieved: lsn, baseDone: fc.boolean(), digestsMatch: fc.boolean() }),
    fc.record({ type: fc.constant('session_failed' as const), replica: name, sessionId, failure: fc.constantFrom(...FAILURES), message: fc.constant('x') }),
    fc.record({ type: fc.constant('barrier' as const), epoch, lsn }),
    fc.integer({ min: 0, max: 400_000 }).map((nowMs): ProtocolEvent => ({ type: 'tick', nowMs })),
  );
}

test('over random event sequences: ids increase, one feed per replica, no repeated publish, nothing after a fence', () => {
  fc.assert(
    fc.property(fc.array(eventArb(), { maxLength: 60 }), (events) => {
      let state: EngineState = initialState();
      let sessionIdLast = 0;
      let published = `${state.mode}|${state.modeReason}`;
      for (const generated of events) {
        // The shell gathers primary facts in the engine's epoch, or (stale) an older one.
        const event: ProtocolEvent =
          generated.type === 'replica_report'
            ? { ...generated, primaryFacts: { ...generated.primaryFacts, epoch: Math.min(generated.primaryFacts.epoch, state.epoch) } }
            : generated;
        const wasFenced = state.fence !== undefined;
        let result;
        try {
          result = step(state, event);
        } catch (err) {
          // The one refusal the generator can provoke: the same epoch with another role.
          assert.match((err as Error).message, /conflicting assignment/);
          continue;
        }
        assert.deepEqual(step(state, event), result, 'deterministic');
        for (const c of result.commands) {
          if (c.type === 'start_session') {
            assert.ok(c.sessionId > sessionIdLast, `session id ${c.sessionId} after ${sessionIdLast}`);
            sessionIdLast = c.sessionId;
          }
          if (c.type === 'publish_mode') {
            const now = `${c.mode}|${c.reason}`;
            assert.notEqual(now, published, 'publish_mode only on change');
            published = now;
          }
          if (wasFenced && event.type !== 'assignment') assert.fail(`${c.type} while fenced`);
        }
        state = result.state;
        assert.equal(`${state.mode}|${state.modeReason}`, published, 'the state carries the last published projection');
        for (const view of state.replicas) {
          const active = view.state === 'session_issued' || view.state === 'session_running';
          if (active) assert.ok(view.session !== undefined && (view.session.phase === 'issued' || view.session.phase === 'running'));
          if (view.session !== undefined) assert.ok(view.session.sessionId <= state.sessionIdLast);
        }
      }
    }),
    { numRuns: 300 },
  );
});
