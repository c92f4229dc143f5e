// Planted bugs for the simulator's canary tests: each is a RebuildSession
// subclass that overrides one small protected hook, the way sw-block's first
// version got it wrong (reference/swblock.md §6). The simulator must find a
// violation with each of them.
import { type AppliedRecord, type BlockRun, type CompletionBlocker, RebuildSession } from '../../lib/protocol/rebuild_session';

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

export const CANARIES: readonly { name: string; sessionClass: typeof RebuildSession }[] = [
  { name: 'bitmap set on receipt instead of apply', sessionClass: MarksOnReceipt },
  { name: 'base lane overwrites a marked block', sessionClass: BaseOverwritesMarked },
  { name: 'digest check skipped', sessionClass: SkipsDigest },
  { name: 'trims do not mark', sessionClass: TrimsDoNotMark },
  { name: 'multi-block records mark only their first block', sessionClass: MarksFirstBlockOnly },
  { name: 'completion without lsnApplied ≥ target', sessionClass: CompletesEarly },
];
