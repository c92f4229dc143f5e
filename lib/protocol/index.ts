// The recovery protocol's pure core (DESIGN.md §4): its vocabulary, the
// decision function and the engine. Nothing here does I/O or reads a clock.
export * from './types';
export { BITMAP_BLOCK_BYTES, checkPrimaryFacts, checkReplicaFacts, decide } from './decide';
export {
  type EngineOptions,
  type EngineState,
  initialState,
  project,
  type Projection,
  ProtocolEngine,
  REPLICAS_MAX,
  type ReplicaState,
  type ReplicaView,
  SESSION_BUDGET_BYTES_PER_S,
  SESSION_BUDGET_FLOOR_MS,
  sessionBudgetMs,
  type SessionPhase,
  type SessionView,
  step,
  type StepResult,
} from './engine';
