// WAL retention: how much WAL below the checkpoint a volume keeps (for
// replicas that catch up from it), and keeping it across a restart.
//
// The floor, `walTailLsn`: every record after it is kept in the WAL. Each
// checkpoint decides it (WalRetention.decide: the retention budget's marks,
// a reader's pin within the pin budget, a hold), records it in the
// superblock in the same write as the checkpoint LSN, and only then releases
// the WAL up to it. On open, the WAL is scanned from the floor instead of the
// checkpoint (openWalRetained), so the segments holding retained records stay
// in the chain and the index covers them; replay applies only what lies
// above the checkpoint.
//
// Rules:
//  - the floor never goes down while the WAL lives (what was released may be
//    recycled), never above the checkpoint, and is persisted before the
//    release it allows: it never claims more WAL than there is;
//  - it is a hint: the scan decides what is there. A retained range that is
//    gone or damaged (a gap, a bad record, a chain that stops below the
//    checkpoint) never refuses the open: the retained range starts later (a
//    segment boundary the scan from the checkpoint names, else the
//    checkpoint), with a warning. Above the checkpoint nothing changes: a
//    torn tail ends the log, corruption refuses the open;
//  - a start below the checkpoint is verified by a scan that builds no writer
//    first (a writer recycles segments its scan calls free, and a broken
//    retained chain would call needed segments free); the writer then starts
//    from the scan that verified, so the log is read once when it is whole;
//  - what was kept at shutdown is held after open (a hold) until a reader
//    pins the WAL, within the pin budget; a withdrawn pin leaves a hold at
//    what it kept (a primary stopping replication before its volume closes).
//    With a retention budget, the records kept from before the restart go
//    as the budget's bytes move past them (by the index's byte counts);
//  - when the WAL is full (appends wait for a segment), neither a pin nor a
//    hold nor the retention budget keeps it: writes never wait on a lagging
//    reader. The flusher decides the floor again when the WAL fills with
//    nothing new to apply (everything placed is checkpointed already).
import type { Logger } from 'pino';

import type { Ring } from '../native/ring';
import { Wal, type WalOptions } from '../native/wal';
import { type ScanResult, scanWal, WalCorruptError } from '../native/wal_format';
import { assert } from '../util/assert';
import type { WalIndex } from './wal_index';

// Scans tried for a start below the checkpoint, at most, before settling for
// the checkpoint itself (each reads the whole chain).
const RETAINED_SCANS_MAX = 4;

// ---- open --------------------------------------------------------------------

// Opens the WAL keeping the records after sb.walTailLsn (when they are
// there). Resolves like Wal.open; scan.records start at lsnFrom (≤
// checkpointLsn + 1) and hold every record above the checkpoint.
export async function openWalRetained(
  ring: Ring,
  options: Omit<WalOptions, 'lsnFrom'>,
  sb: { checkpointLsn: number; walTailLsn?: number },
  log: Logger,
): Promise<{ wal: Wal; scan: ScanResult }> {
  const chosen = await chooseLsnFrom(options, sb.checkpointLsn, sb.walTailLsn, log);
  // A verified start below the checkpoint comes with its scan: the writer
  // starts from it rather than reading the log again.
  return Wal.open(ring, { ...options, lsnFrom: chosen.lsnFrom }, chosen.scan);
}

type Attempt = { ok: true; scan: ScanResult } | { ok: false; why: string; segmentSeq: number | undefined; lsnEnd: number | undefined };

async function scanFrom(options: Omit<WalOptions, 'lsnFrom'>, lsnFrom: number): Promise<ScanResult> {
  return scanWal({ dir: options.dir, lsnFrom, segmentBytes: options.segmentBytes ?? 64 << 20, wantControlPayloads: true });
}

// A scan from lsnFrom (≤ checkpointLsn) that reaches past the checkpoint,
// and (when known) ends where the scan from the checkpoint ends.
async function attempt(options: Omit<WalOptions, 'lsnFrom'>, lsnFrom: number, checkpointLsn: number, lsnNextWanted: number | undefined): Promise<Attempt> {
  let scan: ScanResult;
  try {
    scan = await scanFrom(options, lsnFrom);
  } catch (err) {
    const segmentSeq = err instanceof WalCorruptError ? err.segmentSeq : undefined;
    return { ok: false, why: (err as Error).message, segmentSeq, lsnEnd: undefined };
  }
  if (scan.lsnNext <= checkpointLsn) {
    return { ok: false, why: `the log from LSN ${lsnFrom} stops at LSN ${scan.lsnNext - 1}, below the checkpoint ${checkpointLsn}`, segmentSeq: undefined, lsnEnd: scan.lsnNext };
  }
  if (lsnNextWanted !== undefined && scan.lsnNext !== lsnNextWanted) {
    return { ok: false, why: `the log from LSN ${lsnFrom} ends at LSN ${scan.lsnNext - 1}, the log from the checkpoint at ${lsnNextWanted - 1}`, segmentSeq: undefined, lsnEnd: scan.lsnNext };
  }
  return { ok: true, scan };
}

// Where the scan starts: checkpointLsn + 1 when nothing below it is kept;
// else walTailLsn + 1 when that verifies, else the lowest segment start in
// between that does (lsnNext: where a verified start's log ends).
async function chooseLsnFrom(
  options: Omit<WalOptions, 'lsnFrom'>,
  checkpointLsn: number,
  walTailLsn: number | undefined,
  log: Logger,
): Promise<{ lsnFrom: number; scan: ScanResult | undefined }> {
  if (walTailLsn === undefined || walTailLsn >= checkpointLsn) return { lsnFrom: checkpointLsn + 1, scan: undefined };
  const lsnFloor = walTailLsn + 1;
  const first = await attempt(options, lsnFloor, checkpointLsn, undefined);
  if (first.ok) return { lsnFrom: lsnFloor, scan: first.scan };
  const failures = [`from LSN ${lsnFloor}: ${first.why}`];
  // The log from the checkpoint is what open always needs (its errors are
  // the volume's, as before); its segments say where later starts lie.
  const base = await scanFrom(options, checkpointLsn + 1);
  let last: Attempt = first;
  let lsnTried = lsnFloor;
  for (let n = 1; n < RETAINED_SCANS_MAX; n++) {
    const failed = last.ok ? undefined : last;
    const next = base.segments
      .filter((s) => s.lsnFirst > Math.max(lsnTried, failed?.lsnEnd ?? 0) && s.lsnFirst <= checkpointLsn)
      .filter((s) => failed?.segmentSeq === undefined || s.seq >= failed.segmentSeq)
      .sort((a, b) => a.lsnFirst - b.lsnFirst)[0];
    if (next === undefined) break;
    lsnTried = next.lsnFirst;
    last = await attempt(options, lsnTried, checkpointLsn, base.lsnNext);
    if (last.ok) {
      log.warn({ walTailLsn, lsnKeptFrom: lsnTried, checkpointLsn, failures }, 'WAL kept below the checkpoint is partly gone or damaged: the retained range starts later');
      return { lsnFrom: lsnTried, scan: last.scan };
    }
    failures.push(`from LSN ${lsnTried}: ${last.why}`);
  }
  log.warn({ walTailLsn, checkpointLsn, failures }, 'WAL kept below the checkpoint is gone or damaged: nothing below the checkpoint is retained');
  return { lsnFrom: checkpointLsn + 1, scan: base };
}

// ---- the floor ---------------------------------------------------------------

export interface RetentionLimits {
  // WAL bytes kept below the checkpoint for replicas that need catch-up (0: none).
  retentionBytes: number;
  // At most this many record bytes are held for a pin or a hold.
  pinBudgetBytes: number;
}

// What a checkpoint knows when it decides the floor.
export interface RetentionFacts {
  to: number; // the checkpoint being recorded
  walBytes: number; // WAL bytes written since the WAL was opened
  pin: number | undefined; // the lowest LSN a reader still needs (undefined: no reader)
  walFull: boolean; // appends wait because every segment holds unreleased records
}

export class WalRetention {
  // (checkpoint LSN, WAL bytes written when it was taken), oldest first: maps
  // the retention budget in bytes to an LSN below which the WAL may go.
  private readonly marks: { lsn: number; walBytes: number }[] = [];
  // Keep the WAL after this LSN (what was kept before a restart, or what a
  // withdrawn pin kept) until a reader pins it, within the pin budget.
  private lsnHold: number | undefined;
  // The checkpoint at open while records from before it, kept by the last
  // run, are still here (the retention budget lets them go by bytes).
  private lsnInherited: number | undefined;

  // lsnTail: the floor (every record after it is kept); at open, where the
  // retained range the scan found starts.
  constructor(
    private readonly limits: RetentionLimits,
    private readonly index: WalIndex,
    private readonly log: Logger,
    private lsnTail: number,
    lsnCheckpoint: number,
  ) {
    if (lsnTail < lsnCheckpoint) {
      this.lsnHold = lsnTail;
      if (limits.retentionBytes > 0) this.lsnInherited = lsnCheckpoint;
      log.info({ lsnKeptFrom: lsnTail + 1, checkpointLsn: lsnCheckpoint, bytes: index.bytesAfter(lsnTail) - index.bytesAfter(lsnCheckpoint) }, 'WAL kept below the checkpoint from before the restart');
    }
  }

  // The floor for the checkpoint at f.to: the WAL up to it may be released
  // once it is recorded. Never below the floor now, never above f.to.
  decide(f: RetentionFacts): number {
    assert(this.lsnTail <= f.to, `WAL floor ${this.lsnTail} above the checkpoint ${f.to}`);
    let releasable = f.to;
    if (this.limits.retentionBytes > 0) {
      this.marks.push({ lsn: f.to, walBytes: f.walBytes });
      releasable = 0;
      while (this.marks.length > 0 && f.walBytes - this.marks[0]!.walBytes >= this.limits.retentionBytes) {
        releasable = this.marks.shift()!.lsn;
      }
      // Records from before the restart have no marks: keep the budget's bytes of them.
      if (this.lsnInherited !== undefined) releasable = Math.max(releasable, Math.min(this.lsnInherited, this.index.lsnKeeping(this.limits.retentionBytes)));
      // Writes never wait for the budget either: a full WAL lets go of it.
      if (f.walFull && releasable < f.to) {
        this.log.warn({ lsnKept: releasable, checkpointLsn: f.to, retentionBytes: this.limits.retentionBytes }, 'WAL full: releasing WAL the retention budget keeps');
        releasable = f.to;
      }
    }
    if (f.pin !== undefined && f.pin - 1 < releasable) {
      const heldBytes = this.index.bytesAfter(f.pin - 1);
      if (heldBytes <= this.limits.pinBudgetBytes && !f.walFull) releasable = f.pin - 1;
      else {
        const why = f.walFull ? 'WAL full' : 'WAL retention budget exceeded';
        this.log.warn({ lsnPin: f.pin, heldBytes, budgetBytes: this.limits.pinBudgetBytes }, `${why}: releasing WAL a lagging replica still needs`);
      }
    }
    if (this.lsnHold !== undefined && this.lsnHold < releasable) {
      const heldBytes = this.index.bytesAfter(this.lsnHold);
      if (heldBytes <= this.limits.pinBudgetBytes && !f.walFull) releasable = this.lsnHold;
      else {
        this.log.info({ lsnHold: this.lsnHold, heldBytes, budgetBytes: this.limits.pinBudgetBytes, walFull: f.walFull }, 'WAL held until a replica reports: released (over the budget, or the WAL is full)');
        this.lsnHold = undefined;
      }
    }
    this.lsnTail = Math.max(this.lsnTail, Math.min(f.to, releasable));
    if (this.lsnInherited !== undefined && this.lsnTail >= this.lsnInherited) this.lsnInherited = undefined;
    return this.lsnTail;
  }

  // Every record after it is kept (the floor the last decide() returned).
  get floor(): number {
    return this.lsnTail;
  }

  // A reader pins the WAL from now on: it decides what is kept.
  pinned(): void {
    this.lsnHold = undefined;
  }

  // The reader's pin was withdrawn; lsnPinLast is what it last asked for
  // (undefined or MAX_SAFE_INTEGER: nothing). Keep what it kept.
  unpinned(lsnPinLast: number | undefined): void {
    if (lsnPinLast === undefined || lsnPinLast >= Number.MAX_SAFE_INTEGER) return;
    this.lsnHold = Math.max(this.lsnTail, lsnPinLast - 1);
  }

  // The WAL was replaced by one that starts after lsn (a rebuild, dropped
  // unapplied records): nothing below is kept.
  replaced(lsn: number): void {
    this.lsnTail = lsn;
    this.marks.length = 0;
    this.lsnHold = undefined;
    this.lsnInherited = undefined;
  }
}
