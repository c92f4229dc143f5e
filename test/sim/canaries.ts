// Planted bugs for the simulator's canary tests: each is a subclass that
// overrides one small protected hook — of RebuildSession, the way sw-block's
// first version got it wrong (reference/swblock.md §6), or of the simulated
// primary or replica, the ways a bitmap resync can go wrong. The simulator
// must find a violation with each of them.
import { type AppliedRecord, type BlockRun, type CompletionBlocker, RebuildSession } from '../../lib/protocol/rebuild_session';

import { type Reported, type SimDirtyBitmap, SimPrimary } from './primary';
import { SimReplica } from './replica';
import type { Plants } from './world';

// (1) Marks a record's blocks when it arrives instead of when it is applied.
export class MarksOnReceipt extends RebuildSession {
  protected override runToMarkOnReceipt(record: AppliedRecord): BlockRun | null {
    return super.runToMarkOnApply(record);
  }
  protected override runToMarkOnApply(_record: AppliedRecord): BlockRun | null {
    return null;
  }
}

// (2) Lets the base lane write blocks the WAL lane already marked.
export class BaseOverwritesMarked extends RebuildSession {
  protected override writableRuns(startBlock: number, blocks: number): BlockRun[] {
    return this.basePendingIn(startBlock, blocks) ? [] : [{ startBlock, lengthBlocks: blocks }];
  }
}

// (3) Writes base chunks without checking their digest.
export class SkipsDigest extends RebuildSession {
  protected override verifyDigest(_data: Uint8Array, _digest: bigint): boolean {
    return true;
  }
}

// (4) Trims do not mark the bitmap.
export class TrimsDoNotMark extends RebuildSession {
  protected override runToMarkOnApply(record: AppliedRecord): BlockRun | null {
    return record.kind === 'trim' ? null : super.runToMarkOnApply(record);
  }
}

// (5) Multi-block records mark only their first block.
export class MarksFirstBlockOnly extends RebuildSession {
  protected override runToMarkOnApply(record: AppliedRecord): BlockRun | null {
    const run = super.runToMarkOnApply(record);
    return run === null ? null : { startBlock: run.startBlock, lengthBlocks: 1 };
  }
}

// (6) Completes once the base lane is done, without waiting for the WAL lane
// to reach the target (or the base chunks' checkpoint).
export class CompletesEarly extends RebuildSession {
  protected override completionBlocker(): { blocker: CompletionBlocker; why: string } | null {
    const blocked = super.completionBlocker();
    if (blocked?.blocker === 'wal_behind_target' || blocked?.blocker === 'wal_behind_base') return null;
    return blocked;
  }
}

// (7) The resync's base lane reads the bitmap one block short: a chunk
// whose only marked block is its last goes as unchanged.
export class UnchangedSkipsLastBlock extends SimPrimary {
  protected override chunkUnchanged(bitmap: SimDirtyBitmap, startBlock: number, blocks: number): boolean {
    return !bitmap.anyIn(startBlock, blocks - 1);
  }
}

// (8) The resync's base lane reads the bitmap for the previous chunk's blocks.
export class UnchangedReadsPreviousChunk extends SimPrimary {
  protected override chunkUnchanged(bitmap: SimDirtyBitmap, startBlock: number, blocks: number): boolean {
    return startBlock > 0 && !bitmap.anyIn(startBlock - blocks, blocks);
  }
}

// (9) The dirty bitmap starts at the replica's received LSN, not at the
// applied LSN it can come back with (a crash rolls that back to its
// checkpoint, or it never applied what it received).
export class BitmapFromReceived extends SimPrimary {
  protected override bitmapLsnFrom(reported: Reported): number {
    return reported.lsnReceived;
  }
}

// (10) The dirty bitmap starts at the replica's applied LSN, not at its
// checkpoint: right where its applied state survives a crash, too late
// where (as in the runtime) a crash rolls it back to the checkpoint.
export class BitmapFromApplied extends SimPrimary {
  protected override bitmapLsnFrom(reported: Reported): number {
    return reported.lsnApplied;
  }
}

// (11) The resync replica keeps its base image as it is on disk: the
// records applied but not yet checkpointed are dropped with the WAL.
export class ResyncKeepsStaleBase extends SimReplica {
  protected override makeBaseCurrent(): void {}
}

export const CANARIES: readonly ({ name: string } & Plants)[] = [
  { name: 'bitmap set on receipt instead of apply', sessionClass: MarksOnReceipt },
  { name: 'base lane overwrites a marked block', sessionClass: BaseOverwritesMarked },
  { name: 'digest check skipped', sessionClass: SkipsDigest },
  { name: 'trims do not mark', sessionClass: TrimsDoNotMark },
  { name: 'multi-block records mark only their first block', sessionClass: MarksFirstBlockOnly },
  { name: 'completion without lsnApplied ≥ target', sessionClass: CompletesEarly },
  { name: 'resync sends a chunk as unchanged when only its last block is marked', primaryClass: UnchangedSkipsLastBlock },
  { name: 'resync consults the bitmap for the previous chunk', primaryClass: UnchangedReadsPreviousChunk },
  { name: 'dirty bitmap starts at the received LSN', primaryClass: BitmapFromReceived },
  { name: 'dirty bitmap starts at the applied LSN, not the checkpoint', primaryClass: BitmapFromApplied },
  { name: 'resync replica does not make its base current first', replicaClass: ResyncKeepsStaleBase },
];
