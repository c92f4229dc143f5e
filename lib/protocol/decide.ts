// The primary's decision for one replica (DESIGN.md §4): a pure function of
// the primary's facts and the replica's reported facts. No I/O, no clock, no
// state: the same facts always give the same decision, and every decision
// carries a human reason with the numbers and an estimate of the bytes to move.
//
// Rules, first match wins ("position" = the replica's lsnReceived: everything
// up to it is this lineage's records, in its WAL):
//  1. fence          replica.epoch > primary.epoch: this primary is deposed.
//  2. rebuild        divergent: the replica holds LSNs beyond our head
//                    (applied or received), so it has records we never wrote;
//                    or its applied records left our history (the epoch of
//                    its newest applied barrier is not one we opened, or we
//                    opened a later one at or below its applied LSN): a
//                    deposed primary's own writes, say, already in its base
//                    image, which no truncation can take out.
//  3. rebuild        its chained apply checksum mismatches ours at lsnApplied.
//  4. rebuild        an unfinished rebuild (persisted progress): resumed when it
//                    is of this epoch, its base LSN is still ours
//                    (≤ lsnHead) and its WAL lane (position ≥ baseLsn) can go
//                    on from the WAL (position ≥ walTail); else a fresh one.
//                    Either way its base image is partial, so it can never
//                    be kept up or caught up.
//  5. keep_up        position ≥ lsnHead (current, costs 0), or position ≥
//                    backlogFloor > 0 (the in-memory backlog holds the gap).
//  6. catch_up       position ≥ walTail: the WAL on disk holds every record
//                    after walTail, so lsnFrom = position + 1 is there.
//  7. bitmap_resync  a dirty bitmap of this epoch that bounds the gap
//                    (bitmap.lsnFrom ≤ replica.lsnApplied: every block that
//                    differs was written after lsnApplied, so it is marked).
//                    Base lane: the marked blocks from the checkpointed image
//                    (lsnBase = lsnCheckpoint); WAL lane: lsnCheckpoint + 1 on.
//  8. rebuild        otherwise: the whole checkpointed image plus the WAL
//                    after the checkpoint.
//
// Cost estimates (costBytes):
//  - keep_up / catch_up: walBytesAfterReplica;
//  - bitmap_resync: dirtyBlocks × BITMAP_BLOCK_BYTES + WAL lane bytes;
//  - rebuild: volumeBytes + WAL lane bytes; a resumed one only the chunks not
//    done (volumeBytes × chunksLeft / chunksTotal, rounded up) + WAL after the
//    replica's position (walBytesAfterReplica);
//  - WAL lane bytes = primary.walBytesAfterCheckpoint when the shell gives it,
//    else walBytesAfterReplica (for a replica below the WAL tail the shell
//    counts the whole retained WAL, an upper bound since walTail ≤
//    lsnCheckpoint; for a replica above the checkpoint an underestimate);
//  - fence: 0 (lsnFrom = lsnTarget = 0: a fence moves nothing).
//
// Facts are checked at the edge (RangeError): LSNs, epochs and byte counts are
// non-negative safe integers, walTail ≤ lsnCheckpoint ≤ lsnHead (the volume
// replays its WAL from the checkpoint, so the WAL never drops a record the
// base image lacks; a shell reads walTail before lsnCheckpoint so two moving
// figures stay ordered) and backlogFloor ≤ lsnHead.
import { checkEpochStarts, divergenceFrom } from '../statemachine/epoch_history';
import type { Decision, PrimaryFacts, ReplicaFacts } from './types';

// A dirty bitmap marks whole blocks; equal to the base image's BLOCK_BYTES
// (lib/native/base_image.ts, not imported: this module loads no I/O code).
export const BITMAP_BLOCK_BYTES = 4096;

export function decide(primary: PrimaryFacts, replica: ReplicaFacts): Decision {
  checkPrimaryFacts(primary);
  checkReplicaFacts(replica);
  if (replica.epoch > primary.epoch) {
    const reason = `replica reports epoch ${replica.epoch}, newer than this primary's epoch ${primary.epoch}: this primary is deposed`;
    return { kind: 'fence', reason, lsnFrom: 0, lsnTarget: 0, costBytes: 0 };
  }
  const divergence = divergenceOf(primary, replica);
  if (divergence !== undefined) return rebuildFresh(primary, `divergent: ${divergence}`);
  if (replica.chainMatches === false) {
    return rebuildFresh(primary, `chain mismatch: the replica's apply checksum at LSN ${replica.lsnApplied} differs from the primary's`);
  }
  if (replica.rebuild !== undefined) return decideUnfinishedRebuild(primary, replica);
  return decideByPosition(primary, replica);
}

// Rules 5–8: the replica's data is whole up to its position; feed the gap.
function decideByPosition(primary: PrimaryFacts, replica: ReplicaFacts): Decision {
  const position = replica.lsnReceived;
  const lsnHead = primary.lsnHead;
  if (position >= lsnHead) {
    const reason = `replica at LSN ${position} is current with the head ${lsnHead}: keep up from LSN ${position + 1}`;
    return { kind: 'keep_up', reason, lsnFrom: position + 1, lsnTarget: lsnHead, costBytes: 0, lsnBase: position };
  }
  const costBytes = primary.walBytesAfterReplica;
  const behind = `replica at LSN ${position} is ${lsnHead - position} behind the head ${lsnHead}`;
  if (primary.backlogFloor > 0 && position >= primary.backlogFloor) {
    const reason = `${behind}, within the in-memory backlog (after LSN ${primary.backlogFloor}): keep up from LSN ${position + 1}, about ${costBytes} bytes`;
    return { kind: 'keep_up', reason, lsnFrom: position + 1, lsnTarget: lsnHead, costBytes, lsnBase: position };
  }
  if (position >= primary.walTail) {
    const reason = `${behind}, within the WAL (after LSN ${primary.walTail}): catch up LSN ${position + 1}..${lsnHead} from the WAL, about ${costBytes} bytes`;
    return { kind: 'catch_up', reason, lsnFrom: position + 1, lsnTarget: lsnHead, costBytes, lsnBase: position };
  }
  const below = `replica at LSN ${position} is behind the WAL tail ${primary.walTail}`;
  const bitmap = primary.bitmap;
  if (bitmap !== undefined && bitmap.epoch === primary.epoch && bitmap.lsnFrom <= replica.lsnApplied) {
    const walLaneBytes = walLaneBytesOf(primary);
    const costBytes = bitmap.dirtyBlocks * BITMAP_BLOCK_BYTES + walLaneBytes;
    const reason =
      `${below}, but the dirty bitmap of epoch ${bitmap.epoch} marks every block written after LSN ${bitmap.lsnFrom} ≤ its applied LSN ${replica.lsnApplied}: ` +
      `resync ${bitmap.dirtyBlocks} blocks from the checkpoint at LSN ${primary.lsnCheckpoint} and the WAL LSN ${primary.lsnCheckpoint + 1}..${lsnHead}, about ${costBytes} bytes`;
    return { kind: 'bitmap_resync', reason, lsnFrom: primary.lsnCheckpoint + 1, lsnTarget: lsnHead, costBytes, lsnBase: primary.lsnCheckpoint };
  }
  return rebuildFresh(primary, `${below} and ${bitmapUnusable(primary, replica)}`);
}

// Rule 4: the replica's base image is partial; resume when every lane can go on.
function decideUnfinishedRebuild(primary: PrimaryFacts, replica: ReplicaFacts): Decision {
  const rebuild = replica.rebuild!;
  const position = replica.lsnReceived;
  const what = `unfinished rebuild (session ${rebuild.sessionId}, epoch ${rebuild.epoch}, base LSN ${rebuild.baseLsn}, ${rebuild.chunksDone}/${rebuild.chunksTotal} chunks)`;
  let obstacle: string | undefined;
  if (rebuild.epoch !== primary.epoch) obstacle = `it is of epoch ${rebuild.epoch}, not ${primary.epoch}`;
  else if (rebuild.baseLsn > primary.lsnHead) obstacle = `its base LSN ${rebuild.baseLsn} is beyond the head ${primary.lsnHead}`;
  else if (position < rebuild.baseLsn) obstacle = `its WAL lane at LSN ${position} is below its base LSN ${rebuild.baseLsn}`;
  else if (position < primary.walTail) obstacle = `its WAL lane at LSN ${position} is behind the WAL tail ${primary.walTail}`;
  if (obstacle !== undefined) return rebuildFresh(primary, `${what} cannot resume: ${obstacle}`);
  const chunksLeft = rebuild.chunksTotal - rebuild.chunksDone;
  const baseBytes = Math.ceil((primary.volumeBytes * chunksLeft) / rebuild.chunksTotal);
  const costBytes = baseBytes + primary.walBytesAfterReplica;
  const reason =
    `resume the ${what}: ${chunksLeft} chunks left, WAL lane from LSN ${position + 1} to the head ${primary.lsnHead}, about ${costBytes} bytes`;
  return {
    kind: 'rebuild',
    reason,
    lsnFrom: position + 1,
    lsnTarget: primary.lsnHead,
    costBytes,
    lsnBase: rebuild.baseLsn,
    resumesSessionId: rebuild.sessionId,
  };
}

function rebuildFresh(primary: PrimaryFacts, why: string): Decision {
  const costBytes = primary.volumeBytes + walLaneBytesOf(primary);
  const reason =
    `${why}: rebuild from the checkpoint at LSN ${primary.lsnCheckpoint} (${primary.volumeBytes} bytes) and the WAL LSN ${primary.lsnCheckpoint + 1}..${primary.lsnHead}, about ${costBytes} bytes`;
  return { kind: 'rebuild', reason, lsnFrom: primary.lsnCheckpoint + 1, lsnTarget: primary.lsnHead, costBytes, lsnBase: primary.lsnCheckpoint };
}

// Why a replica holds records this primary does not, or undefined.
function divergenceOf(primary: PrimaryFacts, replica: ReplicaFacts): string | undefined {
  if (replica.lsnApplied > primary.lsnHead) {
    return `the replica applied up to LSN ${replica.lsnApplied}, beyond this primary's head ${primary.lsnHead}`;
  }
  if (replica.lsnReceived > primary.lsnHead) {
    return `the replica received up to LSN ${replica.lsnReceived}, beyond this primary's head ${primary.lsnHead}`;
  }
  if (primary.epochStarts !== undefined && replica.epochApplied !== undefined) {
    const why = divergenceFrom(primary.epochStarts, replica.epochApplied, replica.lsnApplied);
    if (why !== undefined) return `the replica's applied records are not all this primary's history: ${why}`;
  }
  return undefined;
}

function bitmapUnusable(primary: PrimaryFacts, replica: ReplicaFacts): string {
  const bitmap = primary.bitmap;
  if (bitmap === undefined) return 'no dirty bitmap is kept for it';
  if (bitmap.epoch !== primary.epoch) return `its dirty bitmap is of epoch ${bitmap.epoch}, not ${primary.epoch}`;
  return `its dirty bitmap starts at LSN ${bitmap.lsnFrom}, after its applied LSN ${replica.lsnApplied}`;
}

function walLaneBytesOf(primary: PrimaryFacts): number {
  return primary.walBytesAfterCheckpoint ?? primary.walBytesAfterReplica;
}

// ---- edge checks ----

export function checkPrimaryFacts(primary: PrimaryFacts): void {
  for (const name of ['epoch', 'lsnHead', 'lsnCheckpoint', 'backlogFloor', 'walTail', 'walBytesAfterReplica', 'volumeBytes'] as const) {
    checkCount(`primary.${name}`, primary[name]);
  }
  if (primary.walBytesAfterCheckpoint !== undefined) checkCount('primary.walBytesAfterCheckpoint', primary.walBytesAfterCheckpoint);
  if (!(primary.walTail <= primary.lsnCheckpoint && primary.lsnCheckpoint <= primary.lsnHead)) {
    throw new RangeError(
      `primary facts must have walTail ≤ lsnCheckpoint ≤ lsnHead, got ${primary.walTail}, ${primary.lsnCheckpoint}, ${primary.lsnHead}`,
    );
  }
  if (primary.backlogFloor > primary.lsnHead) {
    throw new RangeError(`primary.backlogFloor ${primary.backlogFloor} is beyond lsnHead ${primary.lsnHead}`);
  }
  const bitmap = primary.bitmap;
  if (bitmap !== undefined) {
    checkCount('primary.bitmap.epoch', bitmap.epoch);
    checkCount('primary.bitmap.lsnFrom', bitmap.lsnFrom);
    checkCount('primary.bitmap.dirtyBlocks', bitmap.dirtyBlocks);
  }
  if (primary.epochStarts !== undefined) {
    const bad = Array.isArray(primary.epochStarts) ? checkEpochStarts(primary.epochStarts) : 'not an array';
    if (bad !== undefined) throw new RangeError(`primary.epochStarts: ${bad}`);
  }
}

export function checkReplicaFacts(replica: ReplicaFacts): void {
  for (const name of ['epoch', 'lsnReceived', 'lsnDurable', 'lsnApplied'] as const) {
    checkCount(`replica.${name}`, replica[name]);
  }
  if (replica.chainMatches !== undefined && typeof replica.chainMatches !== 'boolean') {
    throw new TypeError(`replica.chainMatches must be a boolean or undefined, got ${String(replica.chainMatches)}`);
  }
  if (replica.epochApplied !== undefined) checkCount('replica.epochApplied', replica.epochApplied);
  const rebuild = replica.rebuild;
  if (rebuild !== undefined) {
    for (const name of ['sessionId', 'epoch', 'baseLsn', 'chunksDone', 'chunksTotal'] as const) {
      checkCount(`replica.rebuild.${name}`, rebuild[name]);
    }
    if (rebuild.chunksTotal === 0 || rebuild.chunksDone > rebuild.chunksTotal) {
      throw new RangeError(`replica.rebuild must have 0 ≤ chunksDone ≤ chunksTotal, chunksTotal > 0, got ${rebuild.chunksDone}/${rebuild.chunksTotal}`);
    }
  }
}

function checkCount(name: string, value: number): void {
  if (!Number.isSafeInteger(value) || value < 0) {
    throw new RangeError(`${name} must be a non-negative safe integer, got ${String(value)}`);
  }
}
