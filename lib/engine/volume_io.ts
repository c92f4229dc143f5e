// The volume's data path: reads through the dirty map, writes and zeroes as
// WAL records (read-modify-write for partial blocks), flush, and the one
// failure that stops writes. Lifecycle and argument checks live in volume.ts,
// applying the WAL to base.img in flusher.ts.
import type { Logger } from 'pino';

import { BaseImage, BLOCK_BYTES } from '../native/base_image';
import { BlockwalError } from '../native/errors';
import type { Ring } from '../native/ring';
import type { AppendedRecord, CopyOut, Wal } from '../native/wal';
import { decodeRecord, type DecodedRecord, type RecordKind } from '../native/wal_format';
import { type ApplyChecksum, extendApplyChecksum, extendApplyChecksumRun } from '../replication/apply_checksum';
import {
  type Applied,
  apply as applyControl,
  type ControlEntry,
  decodeControl,
  durabilityOfCode,
  encodeControl,
  type ReplicatedState,
} from '../statemachine/control';
import { type EpochStart, noteBarrier } from '../statemachine/epoch_history';
import type { BlockCache } from './block_cache';
import type { BlockEntry, DirtyMap } from './dirty_map';
import type { RangeLocks } from './range_locks';
import type { Superblock } from './superblock';
import { WalIndex } from './wal_index';
import { assert } from '../util/assert';

// Blocks per write record at most (1 MiB payload); smaller WAL segments may
// lower it (wal.recordPayloadMaxBytes).
export const RECORD_BLOCKS_MAX = 256;
// Blocks per base.img read.
const BASE_RUN_BLOCKS_MAX = 256;
const RECORD_HEADER_BYTES = 64;
const RECORD_LSN_OFFSET = 24;
const LOOKUP_RETRIES_MAX = 4;
// Small read results are carved from a shared slab (as Node's own Buffer pool
// does, which a 4 KiB buffer just misses): one ArrayBuffer per 16 reads of
// 4 KiB instead of one each. A result pins its slab while it is alive.
const READ_SLAB_BYTES = 64 * 1024;
const READ_SLAB_TAKE_BYTES_MAX = 8 * 1024;
const READ_SLAB_ALIGN_BYTES = 8;

// A record as a primary ships it: the encoded bytes a replica appends.
export interface ShippedRecord {
  lsn: number;
  bytes: Buffer;
  checksum: bigint;
  // What it touches (control records: none).
  kind: 'write' | 'trim' | 'zero' | 'control';
  lba: number;
  lengthBlocks: number;
  // Written with FUA: durable here when acknowledged, so the replicas a
  // durability mode waits for are asked to make it durable as it ships.
  fua: boolean;
}

// What a replica's WAL holds beyond what it has applied (the dirty map only
// gets a record once the primary says it is committed).
export interface PendingRecord {
  lsn: number;
  epoch: number;
  control?: ControlEntry; // kind 'control': the decoded entry
  kind: RecordKind;
  lba: number;
  lengthBlocks: number;
  segmentSeq: number;
  offsetBytes: number;
  spanBytes: number;
  checksum: bigint;
}

export type VolumeRole = 'primary' | 'replica';

export class VolumeIo {
  failure: BlockwalError | undefined;
  // base.img blocks in memory (block_cache.ts); undefined: every base read goes to the disk.
  cache: BlockCache | undefined;
  // Told once, when the volume fails.
  onFailure: ((failure: BlockwalError) => void) | undefined;
  // Called when appends wait because the WAL is full: only a checkpoint frees it.
  onPressure: () => void = () => undefined;
  private inflight = 0;
  private idleWaiters: (() => void)[] = [];
  private readSlab = Buffer.allocUnsafeSlow(READ_SLAB_BYTES);
  private readSlabUsedBytes = 0;
  // Every record up to lsnApplied is in the dirty map (or base.img), and
  // applyChecksum is the chain over them. A primary applies a record when it
  // gets its LSN; a replica when the primary's commit LSN covers it.
  lsnApplied: number;
  applyChecksum: ApplyChecksum;
  // Primary: told each record, in LSN order, when it gets its LSN.
  onRecord: ((record: ShippedRecord) => void) | undefined;
  // Where the encoded records handed to onRecord go (the WAL's own slabs
  // when unset).
  recordSpace: ((spanBytes: number) => Buffer) | undefined;
  // What control records have made of the volume, up to lsnApplied.
  state: ReplicatedState;
  // The epochs opened up to lsnApplied (undefined: not recorded, a volume
  // made before the superblock held them).
  epochStarts: readonly EpochStart[] | undefined;
  // Told each control record as it is applied, with the outcome.
  onControl: ((entry: ControlEntry, applied: Applied) => void) | undefined;
  // Replica: received records not yet applied, in LSN order, and the LSN the
  // next received record must carry.
  private readonly pending: PendingRecord[] = [];
  // The largest size a received (maybe unapplied) resize asks for.
  private receivedSizeBytes = 0;
  private replayedTailMaker: (() => { record: PendingRecord; applyChecksum: ApplyChecksum }[]) | undefined;
  private lsnReceiveNext: number;
  // Where the records the WAL holds live (catch-up reads them back).
  readonly walIndex = new WalIndex();
  // Replica rebuilding: told each record as it is applied (the rebuild
  // bitmap marks its blocks), in the same synchronous step that puts it in
  // the dirty map.
  onApply: ((record: PendingRecord) => void) | undefined;
  // Called by the flusher right before a checkpoint is recorded (the rebuild
  // bitmap is synced there: its bits must be durable before the records
  // that set them leave the WAL).
  beforeCheckpoint: (() => void) | undefined;

  constructor(
    readonly ring: Ring,
    private readonly ownsRing: boolean,
    public wal: Wal,
    readonly base: BaseImage,
    readonly sb: Superblock,
    readonly dirty: DirtyMap,
    readonly locks: RangeLocks,
    readonly superblockFallback: string | undefined,
    readonly log: Logger,
    readonly role: VolumeRole,
  ) {
    this.lsnApplied = sb.fields.checkpointLsn;
    this.applyChecksum = sb.fields.applyChecksum;
    const f = sb.fields;
    this.state = { epoch: f.epoch, features: f.features, sizeBytes: f.sizeBytes, durability: durabilityOfCode(f.durabilityCode) };
    this.epochStarts = f.epochStarts;
    this.lsnReceiveNext = wal.lsnHead + 1;
  }

  // Open, a replica: the records after the checkpoint, in LSN order, held
  // until a commit covers them (a primary applies them: replaysInRuns).
  replayed(record: PendingRecord): void {
    assert(this.role === 'replica', 'a primary replays in runs');
    this.pending.push(record);
    if (record.control?.type === 'resize') this.receivedSizeBytes = Math.max(this.receivedSizeBytes, record.control.sizeBytes);
  }

  // Open, a primary's records in runs (Volume's replay): a write, trim or
  // zero record goes straight to the dirty map (no record object), the apply
  // chain is folded once per run (replayedRun), a control record is applied
  // alone (replayedControl), and the replayed tail is made only when a
  // replication backlog asks for it (setReplayedTail).
  get replaysInRuns(): boolean {
    return this.role === 'primary';
  }

  replayedBlocks(kind: 'write' | 'trim' | 'zero', lba: number, lengthBlocks: number, lsn: number, segmentSeq: number, offsetBytes: number, spanBytes: number): void {
    if (kind === 'write') this.dirty.setWrite(lba, lengthBlocks, lsn, segmentSeq, offsetBytes, spanBytes);
    else this.dirty.setZero(lba, lengthBlocks, lsn, kind);
  }

  // The run of records just given to replayedBlocks ended at lsnLast; their
  // checksums, in LSN order, extend the apply chain.
  replayedRun(checksums: BigUint64Array, lsnLast: number): void {
    this.applyChecksum = extendApplyChecksumRun(this.applyChecksum, checksums);
    this.lsnApplied = lsnLast;
  }

  replayedControl(record: PendingRecord): void {
    this.applyRecord(record);
  }

  // The replayed tail, built on demand (takeReplayedTail).
  setReplayedTail(make: () => { record: PendingRecord; applyChecksum: ApplyChecksum }[]): void {
    this.replayedTailMaker = make;
  }

  // Primary: the newest records replayed at open (the newest 256 MiB: see
  // Volume's replay), each with the chain after it, for a replication
  // backlog; handed out once.
  takeReplayedTail(): { record: PendingRecord; applyChecksum: ApplyChecksum }[] {
    const make = this.replayedTailMaker;
    this.replayedTailMaker = undefined;
    return make === undefined ? [] : make();
  }

  // Every record after this LSN is still in the WAL (and indexed): a replica
  // at or above it can be fed from the WAL on disk.
  get walTail(): number {
    const held = this.wal.status().lsnTail;
    if (held > 0) this.walIndex.dropBelow(held);
    const first = this.walIndex.lsnFirst;
    return first === 0 ? this.wal.lsnHead : first - 1;
  }

  // Records from lsnFrom on, encoded (as shipped to a replica), read back from
  // the WAL: one run of records back to back in one segment, at most about
  // bytesMax, each verified (checksum and LSN). Only what the WAL has written.
  // Throws ERR_WAL_GONE when lsnFrom is no longer held.
  async readWalRecords(lsnFrom: number, bytesMax: number): Promise<{ lsn: number; bytes: Buffer }[]> {
    if (lsnFrom <= this.walTail || lsnFrom > this.wal.lsnHead) {
      throw new BlockwalError('ERR_WAL_GONE', `LSN ${lsnFrom} is not in the WAL (it holds ${this.walTail + 1}..${this.wal.lsnHead})`);
    }
    await this.wal.waitWritten(lsnFrom);
    const run = this.walIndex.run(lsnFrom, Math.max(bytesMax, BLOCK_BYTES));
    if (run === undefined) throw new BlockwalError('ERR_WAL_GONE', `LSN ${lsnFrom} is no longer in the WAL`);
    const written = this.wal.lsnWritten;
    const records = run.records.filter((r) => r.lsn <= written);
    const endBytes = records[records.length - 1]!.offsetBytes + records[records.length - 1]!.spanBytes;
    const startAligned = Math.floor(run.startBytes / BLOCK_BYTES) * BLOCK_BYTES;
    const lengthBytes = Math.ceil(endBytes / BLOCK_BYTES) * BLOCK_BYTES - startAligned;
    const slice = this.ring.allocNow(lengthBytes) ?? (await this.ring.allocWait(lengthBytes));
    try {
      await this.wal.readSpan(run.segmentSeq, startAligned, lengthBytes, slice);
      const out: { lsn: number; bytes: Buffer }[] = [];
      for (const r of records) {
        const at = r.offsetBytes - startAligned;
        let lsn: number;
        try {
          lsn = decodeRecord(slice.bytes, at).lsn;
        } catch (err) {
          throw new BlockwalError('ERR_WAL_GONE', `LSN ${r.lsn} no longer reads back from segment ${run.segmentSeq}: ${(err as Error).message}`, { cause: err });
        }
        if (lsn !== r.lsn) throw new BlockwalError('ERR_WAL_GONE', `segment ${run.segmentSeq} at ${r.offsetBytes} holds LSN ${lsn}, not ${r.lsn} (recycled)`);
        out.push({ lsn, bytes: Buffer.from(slice.bytes.subarray(at, at + r.spanBytes)) });
      }
      return out;
    } finally {
      this.ring.free(slice);
    }
  }

  // Reads a record back by its location; undefined when it is no longer there.
  async readRecordAt(r: PendingRecord): Promise<Buffer | undefined> {
    try {
      return await this.readRecordChecked({ lsn: r.lsn, segmentSeq: r.segmentSeq, recordOffsetBytes: r.offsetBytes, recordSpanBytes: r.spanBytes });
    } catch {
      return undefined;
    }
  }

  private applyRecord(r: PendingRecord): void {
    if (r.kind === 'write') this.dirty.setWrite(r.lba, r.lengthBlocks, r.lsn, r.segmentSeq, r.offsetBytes, r.spanBytes);
    else if (r.kind === 'trim' || r.kind === 'zero') this.dirty.setZero(r.lba, r.lengthBlocks, r.lsn, r.kind);
    else if (r.control !== undefined) this.applyControlEntry(r.control, r.lsn);
    this.lsnApplied = r.lsn;
    this.applyChecksum = extendApplyChecksum(this.applyChecksum, r.checksum);
    this.onApply?.(r);
  }

  // One control entry through the state machine; its effects happen here.
  private applyControlEntry(entry: ControlEntry, lsn: number): void {
    const applied = applyControl(this.state, entry);
    this.state = applied.state;
    // Whatever the state's verdict (its epoch may be one this node adopted
    // before applying the barrier), the history notes the barrier.
    if (entry.type === 'epoch_barrier' && this.epochStarts !== undefined) this.epochStarts = noteBarrier(this.epochStarts, entry.epoch, lsn);
    for (const effect of applied.effects) {
      if (effect.kind === 'grow') this.base.grow(effect.sizeBytes / BLOCK_BYTES);
    }
    if (applied.noop === undefined) this.log.info({ entry }, 'control record applied');
    else this.log.info({ entry, noop: applied.noop }, 'control record changed nothing');
    this.onControl?.(entry, applied);
  }

  // Primary: appends a control record (checked by the caller); it is applied
  // when it gets its LSN. Resolves with the LSN once written.
  async appendControl(entry: ControlEntry): Promise<number> {
    this.checkClientWritable();
    this.inflight++;
    try {
      const appending = this.append({ kind: 'control', lba: 0, lengthBlocks: 0, payload: encodeControl(entry), fua: false }, (rec) => this.applyControlEntry(entry, rec.lsn));
      return await this.settle([appending], () => undefined);
    } finally {
      this.done();
    }
  }

  // ---- replica ------------------------------------------------------------

  // The largest size received records may address: the volume's size once
  // every received resize is applied.
  private sizeBlocksLimit(): number {
    return Math.max(this.state.sizeBytes, this.receivedSizeBytes) / BLOCK_BYTES;
  }

  // The LSN of the last received record (appended to the WAL, maybe not yet written).
  get lsnReceived(): number {
    return this.lsnReceiveNext - 1;
  }

  // Appends a record the primary encoded; resolves with its LSN once written.
  // It must verify and carry the next LSN (ERR_REPL_RECORD otherwise).
  appendReceived(bytes: Uint8Array): Promise<number> {
    const r = this.checkReceived(bytes);
    this.lsnReceiveNext++;
    const written = this.wal.appendLocated({
      kind: r.rec.kind,
      epoch: r.rec.epoch,
      lba: r.rec.lba,
      lengthBlocks: r.rec.lengthBlocks,
      payload: r.payload,
      onAssigned: (a) => this.receivedAssigned(r.rec, r.control, a),
    });
    if (this.wal.full) this.onPressure();
    return written.then(
      (a) => a.lsn,
      (err) => {
        throw this.walFailed(err);
      },
    );
  }

  // Appends the records of one frame, in order; resolves with the last one's
  // LSN once written (so once all are), undefined for no records. Records
  // go into the WAL at once while it has room, without a promise each.
  // Throws on the first record that does not verify (those before it stay).
  appendReceivedAll(records: readonly { bytes: Uint8Array }[]): Promise<number> | undefined {
    let lsnLast = 0;
    let queued: Promise<number> | undefined;
    for (const { bytes } of records) {
      if (queued === undefined) {
        const r = this.checkReceived(bytes);
        let a: AppendedRecord | undefined;
        try {
          a = this.wal.appendNow(r.rec.kind, r.rec.epoch, r.rec.lba, r.rec.lengthBlocks, r.payload, false, false);
        } catch (err) {
          throw this.walFailed(err);
        }
        if (a !== undefined) {
          this.wal.scheduleKick();
          this.lsnReceiveNext++;
          this.receivedAssigned(r.rec, r.control, a);
          lsnLast = a.lsn;
          continue;
        }
      }
      // Waiting for WAL space: this record and the rest queue, in order;
      // the last one reports a failure for all.
      queued?.catch(() => undefined);
      queued = this.appendReceived(bytes);
    }
    if (queued !== undefined) return queued;
    if (lsnLast === 0) return undefined;
    return this.wal.whenWritten(lsnLast, false).catch((err: unknown) => {
      throw this.walFailed(err);
    });
  }

  // A received record, verified and in order, or ERR_REPL_RECORD.
  private checkReceived(bytes: Uint8Array): { rec: DecodedRecord; payload: Uint8Array | null; control: ControlEntry | undefined } {
    this.checkWritable();
    let rec;
    try {
      rec = decodeRecord(bytes);
    } catch (err) {
      throw new BlockwalError('ERR_REPL_RECORD', `a received record does not verify: ${(err as Error).message}`, { cause: err });
    }
    if (rec.lsn !== this.lsnReceiveNext) {
      throw new BlockwalError('ERR_REPL_RECORD', `received LSN ${rec.lsn}, expected ${this.lsnReceiveNext}`);
    }
    // A record beyond the current size may follow a resize still unapplied
    // here; it may not lie beyond the largest size the volume may grow to.
    if (rec.lba + rec.lengthBlocks > this.sizeBlocksLimit()) {
      throw new BlockwalError('ERR_REPL_RECORD', `LSN ${rec.lsn}: blocks ${rec.lba}+${rec.lengthBlocks} lie beyond this volume's ${this.sizeBlocksLimit()} blocks`);
    }
    const payload = rec.payloadBytes > 0 ? bytes.subarray(RECORD_HEADER_BYTES, RECORD_HEADER_BYTES + rec.payloadBytes) : null;
    let control: ControlEntry | undefined;
    if (rec.kind === 'control') {
      try {
        control = decodeControl(payload ?? new Uint8Array(0));
      } catch (err) {
        throw new BlockwalError('ERR_REPL_RECORD', `LSN ${rec.lsn}: ${(err as Error).message}`, { cause: err });
      }
      if (control.type === 'resize') this.receivedSizeBytes = Math.max(this.receivedSizeBytes, control.sizeBytes);
    }
    return { rec, payload, control };
  }

  // A received record has its place in the local WAL: it waits there for the
  // primary's commit.
  private receivedAssigned(rec: DecodedRecord, control: ControlEntry | undefined, a: AppendedRecord): void {
    if (a.lsn !== rec.lsn || a.checksum !== rec.checksum) {
      // The WAL was not where the link said (a bug, not input): stop.
      this.fail(new BlockwalError('ERR_REPL_DIVERGED', `local WAL gave LSN ${a.lsn} to received LSN ${rec.lsn}`));
      return;
    }
    const { segmentSeq, offsetBytes, spanBytes } = a;
    this.walIndex.add(a.lsn, segmentSeq, offsetBytes, spanBytes);
    this.pending.push({ lsn: a.lsn, epoch: rec.epoch, control, kind: rec.kind, lba: rec.lba, lengthBlocks: rec.lengthBlocks, segmentSeq, offsetBytes, spanBytes, checksum: a.checksum });
  }

  // The epoch of the newest received record not applied yet (undefined: none).
  get pendingEpoch(): number | undefined {
    return this.pending.at(-1)?.epoch;
  }

  // Forgets every received record not applied yet; the next one received
  // must carry lsnApplied + 1. The caller has made the WAL hold nothing
  // beyond lsnApplied (truncateUnapplied in volume.ts).
  resetReceived(wal: Wal): void {
    this.pending.length = 0;
    this.receivedSizeBytes = 0;
    this.wal = wal;
    this.walIndex.clear();
    this.lsnReceiveNext = this.lsnApplied + 1;
  }

  // Replica starting a rebuild: everything local is dropped; the volume is
  // at lsnBase with the primary's chain and state there, and a fresh WAL.
  resetForRebuild(wal: Wal, lsnBase: number, applyChecksum: ApplyChecksum, state: ReplicatedState, epochStarts: readonly EpochStart[] | undefined): void {
    this.pending.length = 0;
    this.receivedSizeBytes = 0;
    this.wal = wal;
    this.walIndex.clear();
    this.dirty.dropUpTo(Number.MAX_SAFE_INTEGER);
    this.lsnApplied = lsnBase;
    this.applyChecksum = applyChecksum;
    this.state = state;
    this.epochStarts = epochStarts;
    this.lsnReceiveNext = lsnBase + 1;
  }

  // Applies received records up to lsnCommit (those received so far), in order.
  commit(lsnCommit: number): number {
    let applied = 0;
    while (this.pending.length > 0 && this.pending[0]!.lsn <= lsnCommit) {
      this.applyRecord(this.pending.shift()!);
      applied++;
    }
    return applied;
  }

  // ---- reads --------------------------------------------------------------

  // What the dirty map says now decides where each block comes from; the
  // common cases (every block from base.img in one run, or one block from
  // one record) skip the general path's per-block bookkeeping.
  // Into `into` when given (lengthBytes of it; the result is that view).
  read(offsetBytes: number, lengthBytes: number, into?: Buffer): Promise<Buffer> {
    const first = Math.floor(offsetBytes / BLOCK_BYTES);
    const end = Math.ceil((offsetBytes + lengthBytes) / BLOCK_BYTES);
    const out = into ?? this.resultBuffer(lengthBytes);
    if (end > first && end - first <= BASE_RUN_BLOCKS_MAX && this.allFromBase(first, end)) {
      return this.readBaseOnly(first, end - first, offsetBytes, out);
    }
    if (end - first === 1) {
      const look = this.dirty.lookup(first);
      if (look?.kind === 'write') return this.readRecordOnly(first, look.entry, offsetBytes, out);
    }
    return this.readMixed(first, end, offsetBytes, out);
  }

  private allFromBase(first: number, end: number): boolean {
    for (let b = first; b < end; b++) if (this.dirty.has(b)) return false;
    return true;
  }

  // Blocks [first, first + lengthBlocks), none in the dirty map: one base.img
  // read, one copy out of the arena.
  // From the block cache when it holds every block (no disk read), else one
  // base.img read into the same result buffer.
  private readBaseOnly(first: number, lengthBlocks: number, offsetBytes: number, out: Buffer): Promise<Buffer> {
    if (this.cache?.copyOutIfHeld(first, offsetBytes - first * BLOCK_BYTES, out.byteLength, out, 0) === true) return Promise.resolve(out);
    return this.readBaseOnlyFromDisk(first, lengthBlocks, offsetBytes, out);
  }

  private async readBaseOnlyFromDisk(first: number, lengthBlocks: number, offsetBytes: number, out: Buffer): Promise<Buffer> {
    const runBytes = lengthBlocks * BLOCK_BYTES;
    const slice = this.ring.allocNow(runBytes) ?? (await this.ring.allocWait(runBytes));
    try {
      const generation = this.cache?.generation ?? 0;
      await this.base.readBlocks(first, lengthBlocks, slice);
      this.cache?.fillFromRead(generation, first, lengthBlocks, slice.bytes, 0);
      const from = offsetBytes - first * BLOCK_BYTES;
      out.set(slice.bytes.subarray(from, from + out.byteLength));
      return out;
    } finally {
      this.ring.free(slice);
    }
  }

  // One block, written by the record `entry` points to.
  private async readRecordOnly(lba: number, entry: BlockEntry, offsetBytes: number, out: Buffer): Promise<Buffer> {
    const block = await this.readBlock(lba, entry, undefined);
    const from = offsetBytes - lba * BLOCK_BYTES;
    out.set(block.subarray(from, from + out.byteLength));
    return out;
  }

  private async readMixed(first: number, end: number, offsetBytes: number, out: Buffer): Promise<Buffer> {
    const view = new RequestView(out, offsetBytes);
    const records = new Map<string, Promise<Buffer>>();
    const tasks: Promise<void>[] = [];
    let runStart = -1;
    const endRun = (b: number): void => {
      if (runStart >= 0) tasks.push(this.readBase(runStart, b - runStart, view));
      runStart = -1;
    };
    for (let b = first; b < end; b++) {
      const look = this.dirty.lookup(b);
      if (look === undefined) {
        if (runStart >= 0 && b - runStart >= BASE_RUN_BLOCKS_MAX) endRun(b);
        if (runStart < 0) runStart = b;
        continue;
      }
      endRun(b);
      if (look.kind === 'zero') view.fillZero(b);
      else tasks.push(this.readBlock(b, look.entry, records).then((block) => view.copyBlock(b, block)));
    }
    endRun(end);
    await Promise.all(tasks);
    return out;
  }

  // An uninitialised buffer for a read's result (every byte gets written).
  private resultBuffer(lengthBytes: number): Buffer {
    if (lengthBytes > READ_SLAB_TAKE_BYTES_MAX) return Buffer.allocUnsafe(lengthBytes);
    if (this.readSlabUsedBytes + lengthBytes > READ_SLAB_BYTES) {
      this.readSlab = Buffer.allocUnsafeSlow(READ_SLAB_BYTES);
      this.readSlabUsedBytes = 0;
    }
    const out = this.readSlab.subarray(this.readSlabUsedBytes, this.readSlabUsedBytes + lengthBytes);
    this.readSlabUsedBytes += Math.ceil(lengthBytes / READ_SLAB_ALIGN_BYTES) * READ_SLAB_ALIGN_BYTES;
    return out;
  }

  // One block's newest content as the dirty map says now; re-looked-up when
  // its record moved (recycled segment, or replaced by a checkpoint) meanwhile.
  // `records` shares record reads among the blocks of one request (undefined: one block).
  private async readBlock(lba: number, entry: BlockEntry, records: Map<string, Promise<Buffer>> | undefined): Promise<Buffer> {
    for (let attempt = 0; ; attempt++) {
      try {
        const record = await this.readRecordCached(entry, records);
        return record.subarray(RECORD_HEADER_BYTES + entry.indexInRecord * BLOCK_BYTES, RECORD_HEADER_BYTES + (entry.indexInRecord + 1) * BLOCK_BYTES);
      } catch (err) {
        const again = this.dirty.lookup(lba);
        if (attempt >= LOOKUP_RETRIES_MAX || (again?.kind === 'write' && again.entry.lsn === entry.lsn)) throw err;
        if (again === undefined) return this.readBaseBlock(lba);
        if (again.kind === 'zero') return Buffer.alloc(BLOCK_BYTES);
        entry = again.entry;
      }
    }
  }

  readRecordCached(entry: BlockEntry, records: Map<string, Promise<Buffer>> | undefined): Promise<Buffer> {
    if (records === undefined) return this.readRecordChecked(entry);
    const key = `${entry.segmentSeq}:${entry.recordOffsetBytes}`;
    let p = records.get(key);
    if (p === undefined) {
      p = this.readRecordChecked(entry);
      records.set(key, p);
    }
    return p;
  }

  // The record entry points to, refused (ERR_RECORD_MOVED) unless it still holds entry's LSN.
  private async readRecordChecked(entry: Pick<BlockEntry, 'lsn' | 'segmentSeq' | 'recordOffsetBytes' | 'recordSpanBytes'>): Promise<Buffer> {
    const rec = await this.wal.readRecord(entry.segmentSeq, entry.recordOffsetBytes, entry.recordSpanBytes);
    const lsn = Number(rec.readBigUInt64LE(RECORD_LSN_OFFSET));
    if (lsn !== entry.lsn) {
      throw new BlockwalError('ERR_RECORD_MOVED', `record at segment ${entry.segmentSeq} offset ${entry.recordOffsetBytes} holds LSN ${lsn}, expected ${entry.lsn}`);
    }
    return rec;
  }

  private async readBase(startBlock: number, lengthBlocks: number, view: RequestView): Promise<void> {
    const cache = this.cache;
    if (cache !== undefined && view.copyFromCache(startBlock, lengthBlocks, cache)) return;
    const slice = this.ring.allocNow(lengthBlocks * BLOCK_BYTES) ?? (await this.ring.allocWait(lengthBlocks * BLOCK_BYTES));
    try {
      const generation = cache?.generation ?? 0;
      await this.base.readBlocks(startBlock, lengthBlocks, slice);
      cache?.fillFromRead(generation, startBlock, lengthBlocks, slice.bytes, 0);
      for (let i = 0; i < lengthBlocks; i++) view.copyBlock(startBlock + i, slice.bytes.subarray(i * BLOCK_BYTES, (i + 1) * BLOCK_BYTES));
    } finally {
      this.ring.free(slice);
    }
  }

  private async readBaseBlock(lba: number): Promise<Buffer> {
    const out = Buffer.alloc(BLOCK_BYTES);
    await this.readBase(lba, 1, new RequestView(out, lba * BLOCK_BYTES));
    return out;
  }

  // ---- writes -------------------------------------------------------------

  // Resolves with the LSN of the write's last record.
  write(offsetBytes: number, data: Uint8Array, fua: boolean): Promise<number> {
    const first = Math.floor(offsetBytes / BLOCK_BYTES);
    const end = Math.ceil((offsetBytes + data.byteLength) / BLOCK_BYTES);
    const aligned = offsetBytes % BLOCK_BYTES === 0 && data.byteLength % BLOCK_BYTES === 0;
    // The common case, without a lock or a promise per step: whole blocks
    // that fit one record, nothing earlier to wait for, room in the WAL now.
    // The record gets its LSN before this returns, which is all the lock
    // would have ordered.
    if (aligned && end - first <= this.wal.recordPayloadMaxBytes / BLOCK_BYTES && !this.locks.conflicts(first, end, false)) {
      let rec: AppendedRecord | undefined;
      try {
        this.checkClientWritable();
        rec = this.wal.appendNow('write', this.sb.fields.epoch, first, end - first, data, fua, this.copyOut());
      } catch (err) {
        return Promise.reject(this.walFailed(err));
      }
      if (rec !== undefined) {
        this.walIndex.add(rec.lsn, rec.segmentSeq, rec.offsetBytes, rec.spanBytes);
        this.dirty.setWrite(first, end - first, rec.lsn, rec.segmentSeq, rec.offsetBytes, rec.spanBytes);
        // A primary schedules shipping the record here, before the local
        // submission: the replica's round trip then overlaps this node's
        // io_uring_enter rather than following it.
        try {
          this.applied(rec, 'write', first, end - first, fua);
        } finally {
          this.wal.scheduleKick();
        }
        this.inflight++;
        return this.wal.whenWritten(rec.lsn, fua).then(this.writeDone, this.writeFailed);
      }
    }
    return this.writeQueued(offsetBytes, data, fua, first, end, aligned);
  }

  private readonly writeDone = (lsn: number): number => {
    this.done();
    return lsn;
  };

  private readonly writeFailed = (err: unknown): never => {
    this.done();
    throw this.walFailed(err);
  };

  private async writeQueued(offsetBytes: number, data: Uint8Array, fua: boolean, first: number, end: number, aligned: boolean): Promise<number> {
    this.checkClientWritable();
    const lock = this.locks.acquire(first, end, !aligned);
    this.inflight++;
    try {
      if (lock.wait !== undefined) await lock.wait;
      const payload = aligned ? data : await this.patched(first, end, offsetBytes, data);
      const appends: Appending[] = [];
      const perRecord = this.wal.recordPayloadMaxBytes / BLOCK_BYTES;
      for (let lba = first; lba < end; lba += perRecord) {
        const blocks = Math.min(perRecord, end - lba);
        const part = payload.subarray((lba - first) * BLOCK_BYTES, (lba - first + blocks) * BLOCK_BYTES);
        appends.push(this.appendWrite(lba, blocks, part, fua));
      }
      return await this.settle(appends, lock.release);
    } finally {
      lock.release();
      this.done();
    }
  }

  // Trim or write-zeroes: whole blocks become one zero record; partial edge
  // blocks are read-modify-written with zeros.
  async zero(offsetBytes: number, lengthBytes: number, kind: 'trim' | 'zero'): Promise<number> {
    this.checkClientWritable();
    const endBytes = offsetBytes + lengthBytes;
    const first = Math.floor(offsetBytes / BLOCK_BYTES);
    const end = Math.ceil(endBytes / BLOCK_BYTES);
    const innerFirst = Math.ceil(offsetBytes / BLOCK_BYTES);
    const innerEnd = Math.floor(endBytes / BLOCK_BYTES);
    const partial = offsetBytes % BLOCK_BYTES !== 0 || endBytes % BLOCK_BYTES !== 0;
    const lock = this.locks.acquire(first, end, partial);
    this.inflight++;
    try {
      if (lock.wait !== undefined) await lock.wait;
      const edges: { lba: number; block: Buffer }[] = [];
      for (const lba of new Set([first, end - 1])) {
        if (lba >= innerFirst && lba < innerEnd) continue; // a whole block
        const block = await this.read(lba * BLOCK_BYTES, BLOCK_BYTES);
        const from = Math.max(offsetBytes, lba * BLOCK_BYTES) - lba * BLOCK_BYTES;
        const to = Math.min(endBytes, (lba + 1) * BLOCK_BYTES) - lba * BLOCK_BYTES;
        block.fill(0, from, to);
        edges.push({ lba, block });
      }
      const appends: Appending[] = edges.map((e) => this.appendWrite(e.lba, 1, e.block, false));
      if (innerFirst < innerEnd) appends.push(this.appendZero(innerFirst, innerEnd - innerFirst, kind));
      return await this.settle(appends, lock.release);
    } finally {
      lock.release();
      this.done();
    }
  }

  // The records up to lsn appended so far become durable as they are written,
  // without waiting (Wal.requestDurable).
  requestDurable(lsn: number): void {
    this.wal.requestDurable(lsn);
  }

  async flush(): Promise<void> {
    this.checkWritable();
    try {
      await this.wal.flush();
    } catch (err) {
      throw this.walFailed(err);
    }
  }

  // The block range [first, end) with the partial edge blocks' current content
  // around the new bytes.
  private async patched(first: number, end: number, offsetBytes: number, data: Uint8Array): Promise<Buffer> {
    const payload = Buffer.alloc((end - first) * BLOCK_BYTES);
    const headPartial = offsetBytes % BLOCK_BYTES !== 0;
    const tailPartial = (offsetBytes + data.byteLength) % BLOCK_BYTES !== 0;
    if (headPartial) payload.set(await this.read(first * BLOCK_BYTES, BLOCK_BYTES), 0);
    if (tailPartial && (end - 1 !== first || !headPartial)) {
      payload.set(await this.read((end - 1) * BLOCK_BYTES, BLOCK_BYTES), (end - 1 - first) * BLOCK_BYTES);
    }
    payload.set(data, offsetBytes - first * BLOCK_BYTES);
    return payload;
  }

  private appendWrite(lba: number, lengthBlocks: number, payload: Uint8Array, fua: boolean): Appending {
    return this.append({ kind: 'write', lba, lengthBlocks, payload, fua }, (rec) =>
      this.dirty.setWrite(lba, lengthBlocks, rec.lsn, rec.segmentSeq, rec.offsetBytes, rec.spanBytes),
    );
  }

  private appendZero(lba: number, lengthBlocks: number, kind: 'trim' | 'zero'): Appending {
    return this.append({ kind, lba, lengthBlocks, payload: null, fua: false }, (rec) => this.dirty.setZero(lba, lengthBlocks, rec.lsn, kind));
  }

  // Appends one record; `assigned` settles when it has its LSN (the dirty map
  // is updated then, synchronously), `written` when the WAL acknowledges it.
  private append(
    r: { kind: 'write' | 'trim' | 'zero' | 'control'; lba: number; lengthBlocks: number; payload: Uint8Array | null; fua: boolean },
    onAssigned: (rec: AppendedRecord) => void,
  ): Appending {
    let assign!: () => void;
    let refuse!: (err: unknown) => void;
    const assigned = new Promise<void>((resolve, reject) => {
      assign = resolve;
      refuse = reject;
    });
    const appending: Appending = { assigned, written: Promise.resolve(), lsn: 0 };
    appending.written = this.wal.appendLocated({
      ...r,
      epoch: this.sb.fields.epoch,
      copyOut: this.copyOut(),
      onAssigned: (rec) => {
        appending.lsn = rec.lsn;
        this.walIndex.add(rec.lsn, rec.segmentSeq, rec.offsetBytes, rec.spanBytes);
        onAssigned(rec);
        this.applied(rec, r.kind, r.lba, r.lengthBlocks, r.fua);
        assign();
      },
    });
    appending.written.catch(refuse);
    assigned.catch(() => undefined);
    if (this.wal.full) this.onPressure();
    return appending;
  }

  private copyOut(): CopyOut {
    return this.onRecord === undefined ? false : (this.recordSpace ?? true);
  }

  // A primary's record has its LSN and is in the dirty map (or applied, a
  // control record): it counts as applied and is shipped, in the same
  // synchronous step.
  private applied(rec: AppendedRecord, kind: ShippedRecord['kind'], lba: number, lengthBlocks: number, fua: boolean): void {
    this.lsnApplied = rec.lsn;
    this.applyChecksum = extendApplyChecksum(this.applyChecksum, rec.checksum);
    this.onRecord?.({ lsn: rec.lsn, bytes: rec.bytes!, checksum: rec.checksum, kind, lba, lengthBlocks, fua });
  }

  // Releases the lock once every record has its LSN, then waits for the WAL.
  private async settle(appends: Appending[], release: () => void): Promise<number> {
    try {
      await Promise.all(appends.map((a) => a.assigned));
      release();
      await Promise.all(appends.map((a) => a.written));
      return appends.reduce((max, a) => Math.max(max, a.lsn), 0);
    } catch (err) {
      await Promise.allSettled(appends.map((a) => a.written));
      throw this.walFailed(err);
    }
  }

  // ---- failure and lifecycle ----------------------------------------------

  fail(err: unknown): BlockwalError {
    if (this.failure === undefined) {
      const cause = err instanceof Error ? err : new Error(String(err));
      this.failure =
        err instanceof BlockwalError && err.code === 'ERR_WAL_FATAL'
          ? err
          : new BlockwalError('ERR_VOLUME_FAILED', cause.message, { cause, errno: (cause as BlockwalError).errno });
      this.log.error({ err: this.failure }, 'volume failed: writes are refused from now on; reads go on');
      this.onFailure?.(this.failure);
    }
    return this.failure;
  }

  private walFailed(err: unknown): unknown {
    if (err instanceof BlockwalError && err.code === 'ERR_WAL_FATAL') return this.fail(err);
    return err;
  }

  // Client writes: refused on a replica (only its primary writes there).
  private checkClientWritable(): void {
    if (this.role === 'replica') {
      throw new BlockwalError('ERR_READ_ONLY', 'this volume is a replica: only its primary writes to it');
    }
    this.checkWritable();
  }

  checkWritable(): void {
    if (this.failure !== undefined) {
      throw new BlockwalError('ERR_VOLUME_FAILED', `the volume refuses writes after a failure: ${this.failure.message}`, {
        cause: this.failure,
        errno: this.failure.errno,
      });
    }
  }

  private done(): void {
    this.inflight--;
    if (this.inflight === 0) for (const w of this.idleWaiters.splice(0)) w();
  }

  async drain(): Promise<void> {
    while (this.inflight > 0) await new Promise<void>((resolve) => this.idleWaiters.push(resolve));
  }

  async close(): Promise<void> {
    await this.wal.close();
    this.base.close();
    this.sb.close();
    if (this.ownsRing) await this.ring.close();
    else await this.ring.settle();
  }
}

interface Appending {
  assigned: Promise<void>;
  written: Promise<unknown>;
  lsn: number; // once assigned
}

// Copies whole blocks into the part of a request buffer they overlap.
class RequestView {
  private readonly endBytes: number;

  constructor(
    private readonly out: Buffer,
    private readonly offsetBytes: number,
  ) {
    this.endBytes = offsetBytes + out.byteLength;
  }

  copyBlock(lba: number, block: Uint8Array): void {
    const blockStart = lba * BLOCK_BYTES;
    const from = Math.max(this.offsetBytes, blockStart);
    const to = Math.min(this.endBytes, blockStart + BLOCK_BYTES);
    this.out.set(block.subarray(from - blockStart, to - blockStart), from - this.offsetBytes);
  }

  // Blocks [first, first + count) from the cache; false when not all are there.
  copyFromCache(first: number, count: number, cache: BlockCache): boolean {
    const runStart = first * BLOCK_BYTES;
    const from = Math.max(this.offsetBytes, runStart);
    const to = Math.min(this.endBytes, runStart + count * BLOCK_BYTES);
    return cache.copyOutIfHeld(first, from - runStart, to - from, this.out, from - this.offsetBytes);
  }

  fillZero(lba: number): void {
    const blockStart = lba * BLOCK_BYTES;
    const from = Math.max(this.offsetBytes, blockStart);
    const to = Math.min(this.endBytes, blockStart + BLOCK_BYTES);
    this.out.fill(0, from - this.offsetBytes, to - this.offsetBytes);
  }
}
