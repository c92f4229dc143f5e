// The vocabulary of the recovery protocol (DESIGN.md §4): what the primary
// knows about itself and about each replica, what it decides for a replica,
// and the events and commands of the pure protocol engine. Pure data: no
// I/O, no clock. Time enters as `tick` events carrying `nowMs`.
import type { EpochStart } from '../statemachine/epoch_history';

// ---- facts ----

// What the primary knows about itself when it decides for a replica.
export interface PrimaryFacts {
  epoch: number;
  lsnHead: number; // newest LSN written
  lsnCheckpoint: number; // base.img holds everything up to here (the base lane's starting point)
  // The in-memory backlog holds every record after backlogFloor (so a
  // replica at or above it is fed from memory: keep-up). 0 when empty.
  backlogFloor: number;
  // The WAL on disk holds every record after walTail (= lowest retained LSN - 1;
  // = lsnHead when it holds none).
  walTail: number;
  // WAL bytes of the records after each LSN, for cost estimates; the shell
  // gives the figure for the replica's position.
  walBytesAfterReplica: number;
  // WAL bytes of the records after lsnCheckpoint (the WAL lane of a rebuild
  // or bitmap resync). Optional: decide() falls back to walBytesAfterReplica.
  walBytesAfterCheckpoint?: number;
  volumeBytes: number; // a full rebuild moves this much
  // A durable dirty bitmap kept for this replica: every block written after
  // lsnFrom (in this epoch) is marked. Absent when none is kept.
  bitmap?: { epoch: number; lsnFrom: number; dirtyBlocks: number };
  // The epochs this primary's history opened, each with its barrier's LSN
  // (statemachine/epoch_history.ts). Absent when not recorded.
  epochStarts?: readonly EpochStart[];
}

// What a replica reports (facts only, never a recommendation).
export interface ReplicaFacts {
  epoch: number;
  // Highest LSN in the replica's WAL after it dropped any uncommitted suffix
  // of an older epoch: everything up to here is this lineage's records.
  lsnReceived: number;
  lsnDurable: number;
  lsnApplied: number;
  // Its chained apply checksum compared with the primary's at lsnApplied:
  // undefined when the primary no longer knows its own chain there.
  chainMatches: boolean | undefined;
  // The replica's rebuild that did not finish (persisted progress), if any.
  rebuild?: { sessionId: number; epoch: number; baseLsn: number; chunksDone: number; chunksTotal: number };
  // The epoch of the newest barrier it applied (0: none); absent when it does
  // not know its history. Its applied records are of that epoch's lineage.
  epochApplied?: number;
}

// ---- the decision ----

export type DecisionKind = 'keep_up' | 'catch_up' | 'bitmap_resync' | 'rebuild' | 'fence';

export interface Decision {
  kind: DecisionKind;
  reason: string;
  // First LSN to send (keep_up, catch_up, bitmap_resync's WAL lane, rebuild's WAL lane).
  lsnFrom: number;
  // The replica is current once it holds this LSN (the primary's head when decided).
  lsnTarget: number;
  costBytes: number; // estimated bytes to move
  // The replica's starting point for the session: the checkpoint the base
  // lane copies from (rebuild, bitmap_resync; an unfinished rebuild's own
  // baseLsn when resumed), else the replica's position (lsnFrom - 1).
  // Optional for compatibility; decide() always sets it.
  lsnBase?: number;
  // Set when the decision resumes the replica's unfinished rebuild with this
  // session id (its persisted progress stays valid).
  resumesSessionId?: number;
}

// ---- engine events and commands ----

export type SessionKind = 'catch_up' | 'bitmap_resync' | 'rebuild';

export type SessionFailure =
  | 'epoch_mismatch'
  | 'transport_lost'
  | 'progress_stalled'
  | 'deadline_exceeded'
  | 'pin_lost'
  | 'digest_mismatch'
  | 'local_wal_corrupt'
  | 'local_base_corrupt'
  | 'superseded'
  | 'cancelled';

export type ProtocolEvent =
  // The coordinator (or the command line) assigns this node's role for the volume.
  | { type: 'assignment'; epoch: number; role: 'primary' | 'replica'; replicas: readonly string[] }
  // A replica's facts, with the primary's own facts at that moment.
  | { type: 'replica_report'; replica: string; replicaFacts: ReplicaFacts; primaryFacts: PrimaryFacts }
  | { type: 'replica_lost'; replica: string; reason: string }
  | { type: 'session_progress'; replica: string; sessionId: number; lsnApplied: number; bytesDone: number; baseDone: boolean }
  | { type: 'session_completed'; replica: string; sessionId: number; lsnAchieved: number; baseDone: boolean; digestsMatch: boolean }
  | { type: 'session_failed'; replica: string; sessionId: number; failure: SessionFailure; message: string }
  // The epoch-opening barrier is durable at lsn.
  | { type: 'barrier'; epoch: number; lsn: number }
  | { type: 'tick'; nowMs: number };

export type ProtocolCommand =
  | { type: 'start_keep_up'; replica: string; lsnFrom: number }
  | { type: 'start_session'; replica: string; sessionId: number; kind: SessionKind; lsnFrom: number; lsnTarget: number; lsnBase: number; deadlineMs: number; resumesSessionId?: number }
  | { type: 'cancel_session'; replica: string; sessionId: number; failure: SessionFailure }
  | { type: 'fence'; reason: string }
  | { type: 'log_decision'; replica: string; decision: Decision }
  | { type: 'publish_mode'; mode: VolumeMode; reason: string };

export type VolumeMode =
  | 'allocated_only' // no replicas assigned
  | 'bootstrap_pending' // waiting for the barrier or the first reports
  | 'healthy'
  | 'degraded' // a replica is lost or its session failed
  | 'catching_up'
  | 'needs_rebuild'
  | 'rebuilding'
  | 'fenced'
  | 'replica';
