// CommitPipeline: the WAL's group-commit bookkeeping (native/commit/pipeline.h)
// on its own, driven step by step (native/binding/pipeline_binding.cc). A test
// hook: the WAL writer owns the real one; a test replays here the orders of
// submissions, completions and syncs that a disk produces only by chance.
// Calls out of order (a completion for a group not in flight, a gap in LSNs)
// throw ERR_PIPELINE.
import { addon } from './addon';
import { nativeCall } from './errors';

interface RawCommitPipeline {
  readonly lsnSubmitted: number;
  readonly lsnWritten: number;
  readonly lsnDurable: number;
  readonly lsnDurableTarget: number;
  readonly groupsInFlight: number;
  readonly syncsInFlight: number;
  readonly pendingEntries: number;
  readonly failed: boolean;
  groupSubmitted(lsnFirst: number, lsnLast: number, file: number, dsync: boolean): void;
  groupCompleted(lsnFirst: number, result: number, expectedBytes: number): void;
  requestDurable(lsn: number): void;
  syncWanted(): number;
  syncSubmitted(file: number): number;
  syncCompleted(id: number, result: number): void;
}

export class CommitPipeline {
  readonly #raw: RawCommitPipeline;

  constructor(lsnNext = 1) {
    const Ctor = (addon() as unknown as { CommitPipeline: new (lsnNext: number) => RawCommitPipeline }).CommitPipeline;
    this.#raw = nativeCall(() => new Ctor(lsnNext));
  }

  get lsnSubmitted(): number {
    return this.#raw.lsnSubmitted;
  }
  get lsnWritten(): number {
    return this.#raw.lsnWritten;
  }
  get lsnDurable(): number {
    return this.#raw.lsnDurable;
  }
  get lsnDurableTarget(): number {
    return this.#raw.lsnDurableTarget;
  }
  get groupsInFlight(): number {
    return this.#raw.groupsInFlight;
  }
  get syncsInFlight(): number {
    return this.#raw.syncsInFlight;
  }
  // Entries the pipeline tracks: in-flight groups and written ranges not yet durable.
  get pendingEntries(): number {
    return this.#raw.pendingEntries;
  }
  get failed(): boolean {
    return this.#raw.failed;
  }

  // A group [lsnFirst, lsnLast] went to `file` (with RWF_DSYNC when dsync).
  groupSubmitted(lsnFirst: number, lsnLast: number, file: number, dsync = false): void {
    nativeCall(() => this.#raw.groupSubmitted(lsnFirst, lsnLast, file, dsync));
  }
  // Its write completed: result is the bytes written (expectedBytes when whole) or -errno.
  groupCompleted(lsnFirst: number, result = 4096, expectedBytes = 4096): void {
    nativeCall(() => this.#raw.groupCompleted(lsnFirst, result, expectedBytes));
  }
  requestDurable(lsn: number): void {
    nativeCall(() => this.#raw.requestDurable(lsn));
  }
  // The file that needs an fdatasync now, or null.
  syncWanted(): number | null {
    const file = this.#raw.syncWanted();
    return file < 0 ? null : file;
  }
  syncSubmitted(file: number): number {
    return nativeCall(() => this.#raw.syncSubmitted(file));
  }
  syncCompleted(id: number, result = 0): void {
    nativeCall(() => this.#raw.syncCompleted(id, result));
  }
}
