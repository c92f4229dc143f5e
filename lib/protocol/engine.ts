// The recovery protocol engine (DESIGN.md §4, sw-block's engine in
// reference/swblock.md §3): `step(state, event) → { state, commands }`, a
// pure function over immutable state. No I/O, no clock, no randomness: time
// enters only as `tick` events' nowMs. The shell executes the commands and
// turns I/O results into events. ProtocolEngine is a thin holder around it.
//
// Public API (stable):
//   initialState(options?: EngineOptions): EngineState
//   step(state: EngineState, event: ProtocolEvent): StepResult
//   project(state: EngineState): Projection        (the mode rules below)
//   sessionBudgetMs(costBytes: number): number      (a session's time budget)
//   class ProtocolEngine { constructor(options?); apply(event): ProtocolCommand[];
//                          state; projection; replica(name) }
//   types EngineState, ReplicaView, ReplicaState, SessionView, SessionPhase,
//         Projection, StepResult, EngineOptions; constants below.
//
// Rules:
//  - Assignment: a higher epoch clears every replica's facts, decision and
//    session (active sessions get cancel_session epoch_mismatch) and forgets
//    the barrier; a lower epoch is ignored; the same one again is a no-op; the
//    same epoch with another replica set keeps the replicas still named and
//    cancels the sessions of the others ('cancelled'); the same epoch with
//    another role is a coordinator bug (RangeError). Role replica: mode
//    'replica', nothing is decided.
//  - replica_report (primary only, for an assigned replica, primaryFacts of
//    this epoch; an older epoch's report is stale and ignored): with no
//    active session, decide() and log_decision; keep_up → start_keep_up
//    (only when the replica was not already kept up); catch_up,
//    bitmap_resync, rebuild → start_session with a fresh session id;
//    fence → fence. While a session is issued or running a report only
//    updates the facts, unless the replica's epoch is higher (→ fence).
//  - Session ids strictly increase, engine-wide and across epochs: each is
//    above every id issued before and every id a replica reports for its
//    unfinished rebuild. Events naming another id than the replica's active
//    session are stale and ignored; a new session supersedes the last one.
//  - session_progress → running. session_completed is accepted once, for the
//    active id, only if lsnAchieved ≥ lsnTarget and (rebuild, bitmap_resync)
//    baseDone and digestsMatch; then keep_up from lsnAchieved + 1. A refused
//    completion fails the session (digest_mismatch, else cancelled) and
//    nothing else starts.
//  - session_failed, replica_lost, a passed deadline: the session fails; no
//    escalation: nothing starts until the replica's next report is decided
//    afresh. Every session the engine itself ends (deadline, lost, refused
//    completion, epoch change, removal, fence) gets a cancel_session so the
//    shell stops its side; a session the replica ended (failed) does not.
//  - Deadline: deadlineMs = nowMs of the last tick + sessionBudgetMs(cost);
//    a tick with nowMs > deadlineMs fails the session (deadline_exceeded).
//  - Fence is sticky: once deposed, every event is ignored except a tick
//    (time) and an assignment whose epoch is at least the epoch that fenced
//    us (the coordinator has seen the newer epoch and appoints us anew).
//  - start_session replaces any keep-up feed to that replica and
//    start_keep_up replaces any session (the shell runs one feed per replica).
//  - Projection, first match wins: fenced; replica; allocated_only (no
//    replicas); rebuilding (a rebuild or bitmap_resync session issued or
//    running); needs_rebuild (last decision rebuild, its session failed or
//    the replica was lost before it completed); catching_up; degraded (failed or lost); bootstrap_pending
//    (no barrier of this epoch yet, or a replica that has not reported);
//    healthy. publish_mode is emitted only when (mode, reason) changes.
import { assert, assertNever } from '../util/assert';

import { checkPrimaryFacts, checkReplicaFacts, decide } from './decide';
import type {
  Decision,
  PrimaryFacts,
  ProtocolCommand,
  ProtocolEvent,
  ReplicaFacts,
  SessionFailure,
  SessionKind,
  VolumeMode,
} from './types';

// Replicas per assignment: bounds the work of every event and the length of
// a projection's reason.
export const REPLICAS_MAX = 32;
// A session's time budget: a floor for set-up and small gaps, plus its
// estimated bytes at a rate well below what a healthy link sustains.
export const SESSION_BUDGET_FLOOR_MS = 60_000;
export const SESSION_BUDGET_BYTES_PER_S = 50 * 1024 * 1024;

export type ReplicaState = 'idle' | 'keep_up' | 'session_issued' | 'session_running' | 'failed' | 'lost';
export type SessionPhase = 'issued' | 'running' | 'completed' | 'failed';

export interface SessionView {
  readonly sessionId: number;
  readonly kind: SessionKind;
  readonly lsnFrom: number;
  readonly lsnTarget: number;
  readonly lsnBase: number;
  readonly deadlineMs: number;
  readonly resumesSessionId: number | undefined;
  readonly phase: SessionPhase;
  // Progress as last reported.
  readonly lsnApplied: number;
  readonly bytesDone: number;
  readonly baseDone: boolean;
  // Set once the phase is failed.
  readonly failure: SessionFailure | undefined;
  readonly message: string | undefined;
}

export interface ReplicaView {
  readonly name: string;
  // idle: nothing reported in this epoch. keep_up: fed live. session_*: the
  // session is active. failed: its last session failed. lost: transport gone.
  readonly state: ReplicaState;
  readonly replicaFacts: ReplicaFacts | undefined; // last report
  readonly primaryFacts: PrimaryFacts | undefined; // the primary's, with it
  readonly decision: Decision | undefined; // last decision
  readonly session: SessionView | undefined; // the active or last session
  readonly lostReason: string | undefined; // set while lost
}

export interface EngineState {
  readonly role: 'unassigned' | 'primary' | 'replica';
  readonly epoch: number;
  readonly replicas: readonly ReplicaView[]; // in assignment order
  readonly barrierLsn: number | undefined; // this epoch's barrier is durable here
  readonly sessionIdLast: number;
  readonly nowMs: number; // the last tick's
  readonly fence: { readonly epochSeen: number; readonly reason: string } | undefined;
  readonly mode: VolumeMode;
  readonly modeReason: string;
}

export interface Projection {
  readonly mode: VolumeMode;
  readonly reason: string;
}

export interface StepResult {
  readonly state: EngineState;
  readonly commands: readonly ProtocolCommand[];
}

export interface EngineOptions {
  // The highest session id used before (e.g. persisted across a restart).
  sessionIdLast?: number;
  nowMs?: number;
}

export function initialState(options: EngineOptions = {}): EngineState {
  const sessionIdLast = options.sessionIdLast ?? 0;
  const nowMs = options.nowMs ?? 0;
  checkCount('sessionIdLast', sessionIdLast);
  checkCount('nowMs', nowMs);
  const base = { role: 'unassigned', epoch: 0, replicas: [], barrierLsn: undefined, sessionIdLast, nowMs, fence: undefined } as const;
  const projection = project({ ...base, mode: 'allocated_only', modeReason: '' });
  return { ...base, mode: projection.mode, modeReason: projection.reason };
}

export function sessionBudgetMs(costBytes: number): number {
  checkCount('costBytes', costBytes);
  return SESSION_BUDGET_FLOOR_MS + Math.ceil((costBytes * 1000) / SESSION_BUDGET_BYTES_PER_S);
}

export function step(state: EngineState, event: ProtocolEvent): StepResult {
  checkEvent(event);
  const out: ProtocolCommand[] = [];
  const next = dispatch(state, event, out);
  const projection = project(next);
  if (projection.mode === next.mode && projection.reason === next.modeReason) return { state: next, commands: out };
  out.push({ type: 'publish_mode', mode: projection.mode, reason: projection.reason });
  return { state: { ...next, mode: projection.mode, modeReason: projection.reason }, commands: out };
}

function dispatch(state: EngineState, event: ProtocolEvent, out: ProtocolCommand[]): EngineState {
  if (event.type === 'tick') return onTick(state, event.nowMs, out);
  if (event.type === 'assignment') return onAssignment(state, event, out);
  if (state.fence !== undefined || state.role !== 'primary') return state;
  switch (event.type) {
    case 'replica_report':
      return onReport(state, event, out);
    case 'replica_lost':
      return onLost(state, event.replica, event.reason, out);
    case 'session_progress':
      return onProgress(state, event);
    case 'session_completed':
      return onCompleted(state, event, out);
    case 'session_failed':
      return withActiveSession(state, event.replica, event.sessionId, (view) => failSession(view, event.failure, event.message));
    case 'barrier':
      return event.epoch === state.epoch ? { ...state, barrierLsn: event.lsn } : state;
    default:
      return assertNever(event);
  }
}

// ---- assignment ----

type AssignmentEvent = Extract<ProtocolEvent, { type: 'assignment' }>;

function onAssignment(state: EngineState, event: AssignmentEvent, out: ProtocolCommand[]): EngineState {
  const names = event.role === 'primary' ? [...event.replicas] : [];
  if (state.fence !== undefined) {
    if (event.epoch < state.fence.epochSeen) return state;
    return newEpoch({ ...state, fence: undefined, replicas: [] }, event.epoch, event.role, names, out);
  }
  if (state.role === 'unassigned' || event.epoch > state.epoch) return newEpoch(state, event.epoch, event.role, names, out);
  if (event.epoch < state.epoch) return state;
  if (event.role !== state.role) {
    throw new RangeError(`conflicting assignment in epoch ${event.epoch}: role ${event.role}, already ${state.role}`);
  }
  const current = state.replicas.map((view) => view.name);
  if (sameNames(current, names)) return state;
  // The replica set changed within the epoch: keep the views still named.
  const replicas = names.map((name) => state.replicas.find((view) => view.name === name) ?? idleView(name));
  for (const view of state.replicas) {
    if (!names.includes(view.name)) cancelIfActive(view, 'cancelled', out);
  }
  return { ...state, replicas };
}

function newEpoch(state: EngineState, epoch: number, role: 'primary' | 'replica', names: string[], out: ProtocolCommand[]): EngineState {
  for (const view of state.replicas) cancelIfActive(view, 'epoch_mismatch', out);
  return { ...state, role, epoch, replicas: names.map(idleView), barrierLsn: undefined };
}

function idleView(name: string): ReplicaView {
  return { name, state: 'idle', replicaFacts: undefined, primaryFacts: undefined, decision: undefined, session: undefined, lostReason: undefined };
}

function sameNames(a: readonly string[], b: readonly string[]): boolean {
  return a.length === b.length && a.every((name) => b.includes(name));
}

// ---- reports and decisions ----

type ReportEvent = Extract<ProtocolEvent, { type: 'replica_report' }>;

function onReport(state: EngineState, event: ReportEvent, out: ProtocolCommand[]): EngineState {
  const view = findView(state, event.replica);
  if (view === undefined) return state;
  if (event.primaryFacts.epoch < state.epoch) return state; // gathered before the epoch changed
  assert(event.primaryFacts.epoch === state.epoch, `primary facts of epoch ${event.primaryFacts.epoch} while the engine is in epoch ${state.epoch}`);
  const facts = { ...view, replicaFacts: event.replicaFacts, primaryFacts: event.primaryFacts, lostReason: undefined };
  if (isActive(view) && event.replicaFacts.epoch <= state.epoch) return replaceView(state, facts);
  const decision = decide(event.primaryFacts, event.replicaFacts);
  out.push({ type: 'log_decision', replica: view.name, decision });
  const decided: ReplicaView = { ...facts, decision, state: view.state === 'lost' ? 'idle' : view.state };
  return applyDecision(state, decided, decision, event.replicaFacts, out);
}

function applyDecision(state: EngineState, view: ReplicaView, decision: Decision, replicaFacts: ReplicaFacts, out: ProtocolCommand[]): EngineState {
  switch (decision.kind) {
    case 'fence':
      return fenceEngine(replaceView(state, view), replicaFacts.epoch, decision.reason, out);
    case 'keep_up':
      if (view.state !== 'keep_up') out.push({ type: 'start_keep_up', replica: view.name, lsnFrom: decision.lsnFrom });
      return replaceView(state, { ...view, state: 'keep_up' });
    case 'catch_up':
    case 'bitmap_resync':
    case 'rebuild':
      return startSession(state, view, decision.kind, decision, replicaFacts, out);
    default:
      return assertNever(decision.kind);
  }
}

function startSession(
  state: EngineState,
  view: ReplicaView,
  kind: SessionKind,
  decision: Decision,
  replicaFacts: ReplicaFacts,
  out: ProtocolCommand[],
): EngineState {
  const sessionId = Math.max(state.sessionIdLast, replicaFacts.rebuild?.sessionId ?? 0) + 1;
  const deadlineMs = state.nowMs + sessionBudgetMs(decision.costBytes);
  const lsnBase = decision.lsnBase ?? decision.lsnFrom - 1;
  const session: SessionView = {
    sessionId,
    kind,
    lsnFrom: decision.lsnFrom,
    lsnTarget: decision.lsnTarget,
    lsnBase,
    deadlineMs,
    resumesSessionId: decision.resumesSessionId,
    phase: 'issued',
    lsnApplied: 0,
    bytesDone: 0,
    baseDone: false,
    failure: undefined,
    message: undefined,
  };
  const { lsnFrom, lsnTarget } = decision;
  const command: ProtocolCommand = { type: 'start_session', replica: view.name, sessionId, kind, lsnFrom, lsnTarget, lsnBase, deadlineMs };
  out.push(decision.resumesSessionId === undefined ? command : { ...command, resumesSessionId: decision.resumesSessionId });
  return replaceView({ ...state, sessionIdLast: sessionId }, { ...view, state: 'session_issued', session });
}

function fenceEngine(state: EngineState, epochSeen: number, reason: string, out: ProtocolCommand[]): EngineState {
  const replicas = state.replicas.map((view) => {
    if (!isActive(view)) return view;
    cancelIfActive(view, 'epoch_mismatch', out);
    return failSession(view, 'epoch_mismatch', `this primary is fenced: ${reason}`);
  });
  out.push({ type: 'fence', reason });
  return { ...state, replicas, fence: { epochSeen, reason } };
}

// ---- session events ----

type CompletedEvent = Extract<ProtocolEvent, { type: 'session_completed' }>;
type ProgressEvent = Extract<ProtocolEvent, { type: 'session_progress' }>;

function onProgress(state: EngineState, event: ProgressEvent): EngineState {
  return withActiveSession(state, event.replica, event.sessionId, (view, session) => ({
    ...view,
    state: 'session_running',
    session: { ...session, phase: 'running', lsnApplied: event.lsnApplied, bytesDone: event.bytesDone, baseDone: event.baseDone },
  }));
}

function onCompleted(state: EngineState, event: CompletedEvent, out: ProtocolCommand[]): EngineState {
  return withActiveSession(state, event.replica, event.sessionId, (view, session) => {
    const refusals = completionRefusals(session, event);
    if (refusals.length > 0) {
      const failure: SessionFailure = event.digestsMatch || session.kind === 'catch_up' ? 'cancelled' : 'digest_mismatch';
      out.push({ type: 'cancel_session', replica: view.name, sessionId: session.sessionId, failure });
      return failSession(view, failure, `completion refused: ${refusals.join('; ')}`);
    }
    out.push({ type: 'start_keep_up', replica: view.name, lsnFrom: event.lsnAchieved + 1 });
    const completed: SessionView = { ...session, phase: 'completed', lsnApplied: event.lsnAchieved, baseDone: event.baseDone || session.baseDone };
    return { ...view, state: 'keep_up', session: completed };
  });
}

// The completion gate: every condition that does not hold, as a phrase.
function completionRefusals(session: SessionView, event: CompletedEvent): string[] {
  const refusals: string[] = [];
  if (event.lsnAchieved < session.lsnTarget) refusals.push(`achieved LSN ${event.lsnAchieved} is below the target ${session.lsnTarget}`);
  if (session.kind !== 'catch_up') {
    if (!event.baseDone) refusals.push('the base lane is not done');
    if (!event.digestsMatch) refusals.push('the digests of the copied ranges do not match');
  }
  return refusals;
}

function onLost(state: EngineState, name: string, reason: string, out: ProtocolCommand[]): EngineState {
  const view = findView(state, name);
  if (view === undefined) return state;
  cancelIfActive(view, 'transport_lost', out);
  const failed = isActive(view) ? failSession(view, 'transport_lost', reason) : view;
  return replaceView(state, { ...failed, state: 'lost', lostReason: reason });
}

function onTick(state: EngineState, nowMs: number, out: ProtocolCommand[]): EngineState {
  if (nowMs <= state.nowMs) return state; // time never goes back
  const replicas = state.replicas.map((view) => {
    const session = view.session;
    if (!isActive(view) || session === undefined || nowMs <= session.deadlineMs) return view;
    out.push({ type: 'cancel_session', replica: view.name, sessionId: session.sessionId, failure: 'deadline_exceeded' });
    return failSession(view, 'deadline_exceeded', `deadline ${session.deadlineMs} ms passed at ${nowMs} ms`);
  });
  return { ...state, nowMs, replicas };
}

// ---- helpers ----

function withActiveSession(
  state: EngineState,
  name: string,
  sessionId: number,
  f: (view: ReplicaView, session: SessionView) => ReplicaView,
): EngineState {
  const view = findView(state, name);
  if (view === undefined || !isActive(view) || view.session === undefined || view.session.sessionId !== sessionId) return state;
  return replaceView(state, f(view, view.session));
}

function failSession(view: ReplicaView, failure: SessionFailure, message: string): ReplicaView {
  assert(view.session !== undefined, `replica ${view.name} has no session to fail`);
  return { ...view, state: 'failed', session: { ...view.session, phase: 'failed', failure, message } };
}

function cancelIfActive(view: ReplicaView, failure: SessionFailure, out: ProtocolCommand[]): void {
  if (isActive(view) && view.session !== undefined) {
    out.push({ type: 'cancel_session', replica: view.name, sessionId: view.session.sessionId, failure });
  }
}

function isActive(view: ReplicaView): boolean {
  return view.state === 'session_issued' || view.state === 'session_running';
}

function findView(state: EngineState, name: string): ReplicaView | undefined {
  return state.replicas.find((view) => view.name === name);
}

function replaceView(state: EngineState, view: ReplicaView): EngineState {
  return { ...state, replicas: state.replicas.map((v) => (v.name === view.name ? view : v)) };
}

// ---- projection ----

export function project(state: EngineState): Projection {
  if (state.fence !== undefined) return { mode: 'fenced', reason: `fenced: ${state.fence.reason}` };
  if (state.role === 'replica') return { mode: 'replica', reason: `this node is a replica in epoch ${state.epoch}` };
  if (state.role === 'unassigned') return { mode: 'allocated_only', reason: 'no assignment yet' };
  if (state.replicas.length === 0) return { mode: 'allocated_only', reason: `primary in epoch ${state.epoch} with no replicas assigned` };
  const rebuilding = describe(state, (v) => isActive(v) && v.session?.kind !== 'catch_up', describeSession);
  if (rebuilding !== undefined) return { mode: 'rebuilding', reason: rebuilding };
  const needsRebuild = describe(state, rebuildUnfinished, describeNeedsRebuild);
  if (needsRebuild !== undefined) return { mode: 'needs_rebuild', reason: needsRebuild };
  const catchingUp = describe(state, (v) => isActive(v) && v.session?.kind === 'catch_up', describeSession);
  if (catchingUp !== undefined) return { mode: 'catching_up', reason: catchingUp };
  const degraded = describe(state, (v) => v.state === 'failed' || v.state === 'lost', describeTrouble);
  if (degraded !== undefined) return { mode: 'degraded', reason: degraded };
  if (state.barrierLsn === undefined) return { mode: 'bootstrap_pending', reason: `waiting for the epoch ${state.epoch} barrier to be durable` };
  const silent = state.replicas.filter((v) => v.state === 'idle').map((v) => v.name);
  if (silent.length > 0) return { mode: 'bootstrap_pending', reason: `waiting for the first report of replica ${silent.join(', ')}` };
  return { mode: 'healthy', reason: `replica ${state.replicas.map((v) => v.name).join(', ')} kept up in epoch ${state.epoch}` };
}

// The last decision was a rebuild and its session did not complete (a
// replica lost after its rebuild completed is merely degraded).
function rebuildUnfinished(view: ReplicaView): boolean {
  const troubled = view.state === 'failed' || view.state === 'lost';
  return troubled && view.decision?.kind === 'rebuild' && view.session?.phase !== 'completed';
}

// The matching replicas' descriptions, in assignment order, or undefined.
function describe(state: EngineState, match: (view: ReplicaView) => boolean, say: (view: ReplicaView) => string): string | undefined {
  const parts = state.replicas.filter(match).map(say);
  return parts.length === 0 ? undefined : parts.join('; ');
}

function describeSession(view: ReplicaView): string {
  const s = view.session!;
  const doing = s.kind === 'rebuild' ? 'is rebuilding' : s.kind === 'bitmap_resync' ? 'is resyncing from its dirty bitmap' : 'is catching up';
  return `replica ${view.name} ${doing} (session ${s.sessionId}: LSN ${s.lsnFrom}..${s.lsnTarget} over LSN ${s.lsnBase})`;
}

function describeNeedsRebuild(view: ReplicaView): string {
  return `replica ${view.name} needs a rebuild: ${describeTroubleDetail(view)}`;
}

function describeTrouble(view: ReplicaView): string {
  return `replica ${view.name} ${view.state === 'lost' ? 'is lost' : 'failed'}: ${describeTroubleDetail(view)}`;
}

function describeTroubleDetail(view: ReplicaView): string {
  if (view.state === 'lost') return view.lostReason ?? 'transport lost';
  const s = view.session!;
  return `${s.kind} session ${s.sessionId} failed (${s.failure}: ${s.message})`;
}

// ---- edge checks ----

function checkEvent(event: ProtocolEvent): void {
  switch (event.type) {
    case 'assignment':
      checkCount('epoch', event.epoch);
      if (event.role !== 'primary' && event.role !== 'replica') throw new RangeError(`role must be primary or replica, got ${String(event.role)}`);
      checkNames(event.replicas);
      return;
    case 'replica_report':
      checkName(event.replica);
      checkPrimaryFacts(event.primaryFacts);
      checkReplicaFacts(event.replicaFacts);
      return;
    case 'replica_lost':
      checkName(event.replica);
      return;
    case 'session_progress':
      checkName(event.replica);
      checkCount('sessionId', event.sessionId);
      checkCount('lsnApplied', event.lsnApplied);
      checkCount('bytesDone', event.bytesDone);
      return;
    case 'session_completed':
      checkName(event.replica);
      checkCount('sessionId', event.sessionId);
      checkCount('lsnAchieved', event.lsnAchieved);
      return;
    case 'session_failed':
      checkName(event.replica);
      checkCount('sessionId', event.sessionId);
      return;
    case 'barrier':
      checkCount('epoch', event.epoch);
      checkCount('lsn', event.lsn);
      return;
    case 'tick':
      checkCount('nowMs', event.nowMs);
      return;
    default:
      assertNever(event);
  }
}

function checkNames(names: readonly string[]): void {
  if (!Array.isArray(names) || names.length > REPLICAS_MAX) throw new RangeError(`replicas must be an array of at most ${REPLICAS_MAX} names`);
  for (const name of names) checkName(name);
  if (new Set(names).size !== names.length) throw new RangeError(`replica names must be distinct, got ${names.join(', ')}`);
}

function checkName(name: string): void {
  if (typeof name !== 'string' || name.length === 0) throw new TypeError(`a replica name must be a non-empty string, got ${String(name)}`);
}

function checkCount(name: string, value: number): void {
  if (!Number.isSafeInteger(value) || value < 0) throw new RangeError(`${name} must be a non-negative safe integer, got ${String(value)}`);
}

// A holder for the shell: the state, the last projection, one method.
export class ProtocolEngine {
  #state: EngineState;

  constructor(options: EngineOptions = {}) {
    this.#state = initialState(options);
  }

  get state(): EngineState {
    return this.#state;
  }

  get projection(): Projection {
    return { mode: this.#state.mode, reason: this.#state.modeReason };
  }

  replica(name: string): ReplicaView | undefined {
    return findView(this.#state, name);
  }

  apply(event: ProtocolEvent): ProtocolCommand[] {
    const result = step(this.#state, event);
    this.#state = result.state;
    return [...result.commands];
  }
}
