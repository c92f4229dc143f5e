// The simulator's shared vocabulary: WAL records with their block values,
// the messages on the simulated network, the volume's fixed geometry, the
// seeded fault profile of one world, and the counters a run reports.
//
// A replica's acks and reports carry lsnRecoverable: the applied LSN it
// would come back with after a crash (its checkpoint, as the runtime's
// replica, or its applied LSN in worlds whose replicas keep it durable). The
// primary starts a replica's dirty bitmap there (test/sim/primary.ts).
import type { AppliedRecord, BaseChunk } from '../../lib/protocol/rebuild_session';
import type { ReplicaFacts, SessionFailure, SessionKind } from '../../lib/protocol/types';

import type { Prng } from './prng';

// ---- geometry and phases (steps are the simulator's unit of time) ----

export const VOLUME_BLOCKS = 32;
export const CHUNK_BLOCKS = 4; // 8 chunks
export const BLOCK_BYTES = 8; // a block's value: u32 tag + u32 block number
export const RECORD_BLOCKS_MAX = 4;
export const EPOCH = 1;
export const MS_PER_STEP = 250; // so a long stall passes the engine's 60 s session floor
export const FAULT_END_STEP = 240; // faults stop here, the network heals
export const WRITE_END_STEP = 300; // the workload stops here
export const LIVENESS_BOUND_STEPS = 200; // every replica converges within this after WRITE_END_STEP
export const END_STEP = WRITE_END_STEP + LIVENESS_BOUND_STEPS;

// ---- records ----

// A WAL record with the values it leaves in its blocks (0 for trim/zero).
export interface Rec extends AppliedRecord {
  values: readonly number[];
}

// ---- messages ----

export type Ctrl =
  | { kind: 'start'; sessionId: number; sessionKind: SessionKind; lsnFrom: number; lsnTarget: number; lsnBase: number; resumesSessionId: number | undefined }
  | { kind: 'cancel'; sessionId: number }
  | { kind: 'keep_up'; lsnFrom: number }
  // A restarted primary's first word (a new link): reports sent before it are stale.
  | { kind: 'hello' };

export type ToReplica =
  | { t: 'wal'; epoch: number; rec: Rec; commitLsn: number }
  | { t: 'commit'; epoch: number; commitLsn: number }
  | { t: 'ctrl'; epoch: number; ctrlSeq: number; cmd: Ctrl }
  | { t: 'chunk'; epoch: number; chunk: BaseChunk; data: Uint8Array }
  // A bitmap resync's chunk the primary's dirty bitmap does not mark: no data.
  | { t: 'unchanged'; epoch: number; chunk: Omit<BaseChunk, 'digest'> };

export type ToPrimary =
  // statusSeq: the replica's own counter (durable), so the primary can drop
  // an ack or report that arrives after a newer one; ctrlSeqSeen: the newest
  // control message it has seen.
  | { t: 'ack'; lsnReceived: number; lsnApplied: number; lsnRecoverable: number; ctrlSeqSeen: number; statusSeq: number }
  // hello: the first report after a restart (the runtime's HELLO on a new link).
  | { t: 'report'; facts: ReplicaFacts; lsnRecoverable: number; hello: boolean; ctrlSeqSeen: number; statusSeq: number }
  // resync: the replica's session takes unchanged chunks (a resync it
  // started, not one it resumed after a crash: that is a plain rebuild).
  | { t: 'chunk_req'; sessionId: number; epoch: number; index: number; resync: boolean }
  | { t: 'progress'; sessionId: number; lsnApplied: number; bytesDone: number; baseDone: boolean }
  | { t: 'completed'; sessionId: number; lsnAchieved: number; baseDone: boolean; digestsMatch: boolean }
  | { t: 'failed'; sessionId: number; failure: SessionFailure; message: string };

// ---- a world's fault profile, drawn from its seed ----

export interface Profile {
  replicas: number; // 1 or 2
  preHistoryRecords: number; // written and checkpointed before step 0
  retainRecords: number; // WAL records kept behind the checkpoint
  pinMaxRecords: number; // how far a feed may pin the WAL
  writeChance: number; // per step
  // Most writes (HOT_CHANCE) fall in [hotFirstBlock, hotFirstBlock +
  // hotBlocks): a volume with cold chunks, so a replica away for a while
  // still holds chunks no record touched since (a resync's unchanged ones).
  hotFirstBlock: number;
  hotBlocks: number;
  dropChance: number;
  duplicateChance: number;
  delayStepsMax: number;
  corruptChunkChance: number;
  partitionChance: number; // per step, per replica
  crashChance: number; // per step, per replica
  syncChance: number; // replica WAL fsync per step
  flushChance: number; // replica flusher per step
  flushRecordsMax: number; // records it checkpoints at most per run
  primaryFlushChance: number; // the primary's checkpoint moves (1–2 records) per step
  baseWriteStepsMax: number; // a base write is in flight this long at most
  backlogRecords: number; // the primary's in-memory backlog holds this many records behind the head
  // The replica's applied LSN survives its crash; otherwise (as the runtime's
  // replica) it falls back to the checkpoint and the WAL records after it
  // are applied again once a commit is heard.
  replicaAppliedDurable: boolean;
  primaryRestartChance: number; // per step; half of them crashes (dirty bitmaps lost)
}

export function drawProfile(prng: Prng): Profile {
  return {
    replicas: prng.chance(0.6) ? 2 : 1,
    preHistoryRecords: prng.int(0, 40),
    retainRecords: prng.int(2, 24),
    pinMaxRecords: prng.int(8, 60),
    writeChance: 0.3 + prng.next() * 0.6,
    ...drawHotRegion(prng),
    dropChance: prng.next() * 0.12,
    duplicateChance: prng.next() * 0.04,
    delayStepsMax: prng.int(1, 6),
    corruptChunkChance: prng.chance(0.5) ? prng.next() * 0.15 : 0,
    partitionChance: prng.next() * 0.02,
    crashChance: prng.next() * 0.012,
    syncChance: 0.3 + prng.next() * 0.7,
    flushChance: prng.next() * 0.8,
    flushRecordsMax: prng.chance(0.5) ? 1 : prng.int(2, 8),
    primaryFlushChance: 0.1 + prng.next() * 0.9,
    baseWriteStepsMax: prng.int(1, 6),
    backlogRecords: prng.int(4, 60),
    replicaAppliedDurable: prng.chance(0.5),
    primaryRestartChance: prng.chance(0.5) ? prng.next() * 0.006 : 0,
  };
}

function drawHotRegion(prng: Prng): { hotFirstBlock: number; hotBlocks: number } {
  if (prng.chance(0.6)) return { hotFirstBlock: 0, hotBlocks: VOLUME_BLOCKS };
  const hotBlocks = prng.int(RECORD_BLOCKS_MAX, VOLUME_BLOCKS / 2);
  return { hotFirstBlock: prng.int(0, VOLUME_BLOCKS - hotBlocks), hotBlocks };
}

export const HOT_CHANCE = 0.8;

// ---- counters ----

export interface Faults {
  drops: number;
  duplicates: number;
  corruptChunks: number;
  partitions: number;
  crashes: number;
  tornBaseWrites: number;
  lostWalRecords: number;
  primaryRestarts: number;
  primaryCrashes: number;
}

// The primary's dirty bitmaps and the resyncs they allow.
export interface BitmapCounts {
  started: number;
  noBacklog: number; // the replica went away, but the backlog no longer held its gap
  droppedCurrent: number; // the replica was current again
  droppedCrash: number; // a primary crash
  unchangedChunks: number; // base chunks a resync sent without data
  seedsWithResync: number;
}

export interface Counts {
  sessions: Record<SessionKind, number>;
  resumedRebuilds: number;
  keepUps: number;
  completions: number;
  completionsByKind: Record<SessionKind, number>;
  bitmaps: BitmapCounts;
  sessionFailures: Partial<Record<SessionFailure, number>>;
  faults: Faults;
  stepsToConverge: number[]; // after WRITE_END_STEP, per seed
}

export function emptyCounts(): Counts {
  return {
    sessions: { catch_up: 0, bitmap_resync: 0, rebuild: 0 },
    resumedRebuilds: 0,
    keepUps: 0,
    completions: 0,
    completionsByKind: { catch_up: 0, bitmap_resync: 0, rebuild: 0 },
    bitmaps: { started: 0, noBacklog: 0, droppedCurrent: 0, droppedCrash: 0, unchangedChunks: 0, seedsWithResync: 0 },
    sessionFailures: {},
    faults: { drops: 0, duplicates: 0, corruptChunks: 0, partitions: 0, crashes: 0, tornBaseWrites: 0, lostWalRecords: 0, primaryRestarts: 0, primaryCrashes: 0 },
    stepsToConverge: [],
  };
}

// ---- chunk data: one 8-byte tag per block ----

export function encodeChunk(values: ArrayLike<number>, startBlock: number, blocks: number): Uint8Array {
  const data = new Uint8Array(blocks * BLOCK_BYTES);
  const view = new DataView(data.buffer);
  for (let i = 0; i < blocks; i++) {
    view.setUint32(i * BLOCK_BYTES, values[startBlock + i]! >>> 0);
    view.setUint32(i * BLOCK_BYTES + 4, startBlock + i);
  }
  return data;
}

export function decodeBlockValue(data: Uint8Array, offsetBlocks: number): number {
  return new DataView(data.buffer, data.byteOffset, data.byteLength).getUint32(offsetBlocks * BLOCK_BYTES) | 0;
}
