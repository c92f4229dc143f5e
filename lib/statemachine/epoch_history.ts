// The epochs a volume's history opened: for each epoch barrier applied, the
// epoch and the LSN of its barrier, in LSN order. Part of the replicated
// state (the superblock holds it as of the checkpoint; the WAL's barriers
// after it are applied again at open), and how a primary tells whether a
// replica's applied records are its own history's.
//
// Why it decides that: one primary writes each epoch, so two nodes whose
// records at an LSN are both of epoch e hold the same record there. A node
// whose newest applied barrier is of epoch e, up to LSN a, shares this
// history up to a when e is one of its epochs and the next epoch here opened
// after a. Otherwise it applied records this history never had: a deposed
// primary writes (and checkpoints) records that never reached the replica
// promoted after it, and a replica fed by that primary may have applied
// them too. Those records are in its base image, where no truncation can
// take them out: only a full rebuild makes it whole again.
//
// Pure: no I/O.

export interface EpochStart {
  readonly epoch: number;
  readonly lsn: number; // the barrier's LSN
}

// The history kept (the superblock holds this many; older starts are
// dropped, and a node whose epoch lies before the oldest kept is judged
// divergent: a rebuild too many, never one too few).
export const EPOCH_STARTS_MAX = 128;

// The history after a barrier of epoch at lsn was applied (a barrier of the
// newest epoch again, as a primary restarted in its epoch may write, opens
// nothing new).
export function noteBarrier(starts: readonly EpochStart[], epoch: number, lsn: number): readonly EpochStart[] {
  const last = starts[starts.length - 1];
  if (last !== undefined && last.epoch >= epoch) return starts;
  const next = [...starts, { epoch, lsn }];
  return next.length > EPOCH_STARTS_MAX ? next.slice(next.length - EPOCH_STARTS_MAX) : next;
}

// The epoch of the newest barrier applied (0: none).
export function epochOpenedBy(starts: readonly EpochStart[]): number {
  return starts[starts.length - 1]?.epoch ?? 0;
}

// The history up to lsn (a checkpoint's, a rebuild's base).
export function startsUpTo(starts: readonly EpochStart[], lsn: number): readonly EpochStart[] {
  let n = starts.length;
  while (n > 0 && starts[n - 1]!.lsn > lsn) n--;
  return n === starts.length ? starts : starts.slice(0, n);
}

// Why a node whose newest applied barrier is of epochApplied, applied up to
// lsnApplied, holds records this history (starts, complete up to its own
// head) never had; undefined when its applied records are all this
// history's.
export function divergenceFrom(starts: readonly EpochStart[], epochApplied: number, lsnApplied: number): string | undefined {
  const oldest = starts[0];
  if (epochApplied > 0 && !starts.some((s) => s.epoch === epochApplied)) {
    if (oldest !== undefined && starts.length >= EPOCH_STARTS_MAX && epochApplied < oldest.epoch) {
      return `it applied records of epoch ${epochApplied}, older than the oldest epoch this history still knows (${oldest.epoch})`;
    }
    return `it applied records of epoch ${epochApplied}, an epoch this history never opened`;
  }
  const next = starts.find((s) => s.epoch > epochApplied);
  if (next !== undefined && lsnApplied >= next.lsn) {
    return `it applied records of epoch ${epochApplied} up to LSN ${lsnApplied}, but here epoch ${next.epoch} opened at LSN ${next.lsn}`;
  }
  return undefined;
}

// Checked at the edges (superblock, frames): epochs strictly increase, LSNs
// strictly increase, all safe non-negative integers, at most EPOCH_STARTS_MAX.
export function checkEpochStarts(starts: readonly EpochStart[]): string | undefined {
  if (starts.length > EPOCH_STARTS_MAX) return `${starts.length} epoch starts, more than ${EPOCH_STARTS_MAX}`;
  for (let i = 0; i < starts.length; i++) {
    const s = starts[i]!;
    if (!Number.isSafeInteger(s.epoch) || s.epoch < 1 || !Number.isSafeInteger(s.lsn) || s.lsn < 1) return `epoch start ${i} (epoch ${s.epoch}, LSN ${s.lsn}) is not two positive integers`;
    const prev = starts[i - 1];
    if (prev !== undefined && (s.epoch <= prev.epoch || s.lsn <= prev.lsn)) return `epoch start ${i} (epoch ${s.epoch}, LSN ${s.lsn}) does not follow epoch ${prev.epoch} at LSN ${prev.lsn}`;
  }
  return undefined;
}
