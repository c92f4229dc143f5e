// Wal: the write-ahead log of one volume, on one Ring.
//
// open() runs the recovery scan (off the JS thread), then hands the writer
// the log's end: appends continue at the next LSN in a fresh segment.
// append() copies the record into the open commit group in the arena and
// resolves once the group is written (or durable, for fua); flush() resolves
// once everything appended before it is durable. Acknowledgements follow the
// addon's written/durable LSNs, which are contiguous prefixes, so they come in
// LSN order. When the addon reports busy (no group slot, no spare segment, WAL
// full) appends wait in a FIFO queue and are retried after each drain; order
// is kept. Any write or sync failure is fatal: every waiter beyond the last
// acknowledged LSN is rejected with ERR_WAL_FATAL and no later append is taken.
import * as fs from 'node:fs';

import { addon } from './addon';
import { BlockwalError, nativeCall } from './errors';
import type { ArenaSlice, Ring } from './ring';
import { type RecordKind, scanWal, type ScanResult as WalScanResult } from './wal_format';

export type { RecordKind };

export interface AppendRecord {
  kind: RecordKind;
  epoch: number;
  lba: number; // 4 KiB blocks
  lengthBlocks: number;
  payload?: Uint8Array | null;
  fua?: boolean;
  // Called synchronously when the record gets its LSN (it may wait for WAL
  // space first); from then on it is in the log's order and readable.
  onAssigned?: (record: AppendedRecord) => void;
  // Hand the encoded record (what a replica appends) to onAssigned as `bytes`.
  copyOut?: CopyOut;
}

// Whether an append hands back the encoded record, and where it goes: true
// for memory the WAL carves from its own slabs, or a function that returns
// room for spanBytes (called once per placement attempt, synchronously
// before the record gets its LSN).
export type CopyOut = boolean | ((spanBytes: number) => Buffer);

export interface AppendedRecord {
  lsn: number;
  segmentSeq: number;
  offsetBytes: number; // of the record header in its segment
  spanBytes: number; // header + payload + padding
  checksum: bigint; // the record's XXH3-64 (its header's checksum field)
  bytes?: Buffer; // the encoded record, when the append asked for copyOut
}

export interface WalOptions {
  dir: string;
  create?: boolean; // make the directory if missing
  segmentBytes?: number;
  groupBytes?: number;
  groupsInFlight?: number;
  groupSlots?: number;
  segmentsMax?: number;
  // Recently sealed frames kept in memory for readSpan/readRecord once their
  // group slot is reused (0: only the slots serve reads).
  cacheBytes?: number;
  lsnFrom?: number; // first LSN the caller still needs (records below are not returned by the scan)
}

export interface WalStatus {
  lsnHead: number; // last LSN assigned
  lsnTail: number; // lowest LSN still held in a segment (0: none)
  lsnWritten: number;
  lsnDurable: number;
  failed: boolean;
  busyReason: 'none' | 'slots' | 'segment' | 'wal_full';
  activeSegmentSeq: number;
  activeOffsetBytes: number;
  segmentCount: number;
  groupsSubmitted: number;
  dsyncGroupsSubmitted: number;
  syncsSubmitted: number;
  bytesWritten: number;
  appendsWaiting: number;
  readMemoryBytes: number; // readSpan/readRecord/gatherFromMemory bytes served from memory (slots, cache)
  readDiskBytes: number; // and read from the segment files
}

const KIND_CODE: Record<RecordKind, number> = { write: 1, trim: 2, zero: 3, control: 4 };
const EBUSY = 16;
// The longest setGroupHold may hold a group (kGroupHoldUsMax in the addon).
export const GROUP_HOLD_US_MAX = 60_000_000;
// The largest readSpan (native/wal/writer.h kReadSpanBytesMax).
export const READ_SPAN_BYTES_MAX = 64 << 20;
// A gatherBlocks descriptor: six numbers (native/binding/wal_binding.cc).
export const GATHER_FIELDS = 6;
export const GATHER = { src: 0, spanBytes: 1, lsn: 2, firstIndex: 3, lengthBlocks: 4, dst: 5 } as const;
// Descriptors per gatherBlocks call, at most.
export const GATHER_OPS_MAX = 1 << 16;
const RECORD_HEADER_BYTES = 64;
const COPY_SLAB_BYTES = 1 << 20;
const BUSY_REASONS = ['none', 'slots', 'segment', 'wal_full'] as const;
// Appends waiting for space, at most; past that append() rejects (ERR_WAL_FULL)
// rather than queue without bound.
const APPENDS_WAITING_MAX = 65536;

// Fields of the shared state array (native/binding/wal_binding.cc).
const S = {
  lsnNext: 0,
  lsnWritten: 1,
  lsnDurable: 2,
  failedErrno: 3,
  busyReason: 4,
  spareReady: 5,
  activeSeq: 6,
  activeOffset: 7,
  opsInFlight: 8,
  groupsSubmitted: 9,
  dsyncGroups: 10,
  syncsSubmitted: 11,
  bytesWritten: 12,
  segmentCount: 13,
  appendSeq: 14,
  appendOffset: 15,
  lsnTail: 16,
  readMemoryBytes: 17,
  readDiskBytes: 18,
} as const;

interface RawWal {
  state: Float64Array;
  appendArgs: Float64Array; // kind, epoch, lba, lengthBlocks, fua: read by append()
  appendChecksum: BigUint64Array; // the last appended record's checksum
  append(payload: Uint8Array | null, copyOut?: Uint8Array): number;
  requestDurable(lsn: number): void;
  setGroupHold(us: number): void;
  release(lsn: number): void;
  readRecord(seq: number, offsetBytes: number, spanBytes: number, destOffset: number, destBytes: number, tag: number): number;
  readSpan(seq: number, offsetBytes: number, lengthBytes: number, destOffset: number, tag: number): number;
  gatherBlocks(descriptors: Float64Array, count: number): void;
  gatherFromMemory(segmentSeq: number, descriptors: Float64Array, count: number): number;
  failureMessage(): string;
  close(): void;
}

type RawWalCtor = new (ring: unknown, options: Record<string, unknown>) => RawWal;

interface Waiter {
  lsn: number;
  resolve: (value: never) => void;
  value: unknown; // what resolve is called with
  reject: (err: Error) => void;
}

interface QueuedAppend {
  record: AppendRecord;
  located: boolean; // resolve with an AppendedRecord, else with the LSN
  resolve: (r: AppendedRecord | number) => void;
  reject: (err: Error) => void;
}

// The largest payload a record may carry in segments of segmentBytes: at most
// 1 MiB, and one frame (64-byte frame and record headers) must fit a segment.
export function recordPayloadMaxBytes(segmentBytes: number): number {
  return Math.min(1 << 20, Math.floor((segmentBytes - 128) / 4096) * 4096);
}

export class Wal {
  readonly recordPayloadMaxBytes: number;
  private readonly raw: RawWal;
  private readonly state: Float64Array;
  private readonly appendArgs: Float64Array;
  private readonly appendRaw: (payload: Uint8Array | null, copyOut?: Uint8Array) => number;
  private readonly writtenWaiters: Waiter[] = [];
  private readonly durableWaiters: Waiter[] = [];
  private readonly appendQueue: QueuedAppend[] = [];
  private readonly idleWaiters: (() => void)[] = [];
  private readonly detachDrain: () => void;
  private fatal: BlockwalError | undefined;
  private closed = false;
  private copySlab = Buffer.allocUnsafeSlow(0);
  private copySlabUsed = COPY_SLAB_BYTES; // full: the first record allocates one

  private constructor(
    private readonly ring: Ring,
    options: WalOptions,
    scan: WalScanResult,
  ) {
    const Ctor = addon().Wal as RawWalCtor;
    const existing = scan.segments.map((s) => ({
      seq: s.seq,
      lsnFirst: s.lsnFirst,
      lsnLast: s.lsnLast,
      inChain: s.role === 'chain',
    }));
    this.raw = nativeCall(
      () =>
        new Ctor(ring.raw, {
          dir: options.dir,
          segmentBytes: options.segmentBytes,
          groupBytes: options.groupBytes,
          groupsInFlight: options.groupsInFlight,
          groupSlots: options.groupSlots,
          segmentsMax: options.segmentsMax,
          cacheBytes: options.cacheBytes,
          lsnNext: scan.lsnNext,
          seqNext: scan.seqMax + 1,
          existing,
        }),
    );
    this.recordPayloadMaxBytes = recordPayloadMaxBytes(options.segmentBytes ?? 64 << 20);
    this.state = this.raw.state;
    this.appendArgs = this.raw.appendArgs;
    this.appendRaw = this.raw.append;
    this.detachDrain = ring.onAfterDrain(() => this.onDrain());
  }

  // Scans the WAL in options.dir and opens it for appending. Resolves once a
  // segment is ready to take the first group.
  // scanned: a scan of options.dir from options.lsnFrom with control payloads
  // that the caller took while holding the volume's lock (nothing changed
  // the directory since), so the log is not read twice.
  static async open(ring: Ring, options: WalOptions, scanned?: WalScanResult): Promise<{ wal: Wal; scan: WalScanResult }> {
    if (options.create === true) fs.mkdirSync(options.dir, { recursive: true });
    const scan =
      scanned ??
      (await scanWal({
        dir: options.dir,
        lsnFrom: options.lsnFrom ?? 1,
        segmentBytes: options.segmentBytes ?? 64 << 20,
        wantControlPayloads: true,
      }));
    const wal = new Wal(ring, options, scan);
    await wal.ready();
    return { wal, scan };
  }

  get lsnHead(): number {
    return this.state[S.lsnNext]! - 1;
  }
  get lsnWritten(): number {
    return this.state[S.lsnWritten]!;
  }
  get lsnDurable(): number {
    return this.state[S.lsnDurable]!;
  }
  get failure(): BlockwalError | undefined {
    return this.fatal;
  }
  // Appends waiting for WAL space, and true when they wait because every
  // segment holds unreleased records (only a release frees space then).
  get appendsWaiting(): number {
    return this.appendQueue.length;
  }
  get full(): boolean {
    return this.appendQueue.length > 0 && BUSY_REASONS[this.state[S.busyReason]!] === 'wal_full';
  }

  status(): WalStatus {
    const s = this.state;
    return {
      lsnHead: s[S.lsnNext]! - 1,
      lsnTail: s[S.lsnTail]!,
      lsnWritten: s[S.lsnWritten]!,
      lsnDurable: s[S.lsnDurable]!,
      failed: s[S.failedErrno]! !== 0,
      busyReason: BUSY_REASONS[s[S.busyReason]!] ?? 'none',
      activeSegmentSeq: s[S.activeSeq]!,
      activeOffsetBytes: s[S.activeOffset]!,
      segmentCount: s[S.segmentCount]!,
      groupsSubmitted: s[S.groupsSubmitted]!,
      dsyncGroupsSubmitted: s[S.dsyncGroups]!,
      syncsSubmitted: s[S.syncsSubmitted]!,
      bytesWritten: s[S.bytesWritten]!,
      appendsWaiting: this.appendQueue.length,
      readMemoryBytes: s[S.readMemoryBytes]!,
      readDiskBytes: s[S.readDiskBytes]!,
    };
  }

  // Appends a record; resolves with its LSN once written (durable with fua).
  append(record: AppendRecord): Promise<number> {
    return this.enqueue(record, false) as Promise<number>;
  }

  // Like append, and tells where the record lies (for reading it back).
  appendLocated(record: AppendRecord): Promise<AppendedRecord> {
    return this.enqueue(record, true) as Promise<AppendedRecord>;
  }

  private enqueue(record: AppendRecord, located: boolean): Promise<AppendedRecord | number> {
    if (this.closed) return Promise.reject(new BlockwalError('ERR_WAL_CLOSED', 'the WAL is closed'));
    if (this.fatal !== undefined) return Promise.reject(this.fatal);
    if (this.appendQueue.length >= APPENDS_WAITING_MAX) {
      return Promise.reject(new BlockwalError('ERR_WAL_FULL', `more than ${APPENDS_WAITING_MAX} appends waiting for WAL space`));
    }
    return new Promise<AppendedRecord | number>((resolve, reject) => {
      const queued: QueuedAppend = { record, located, resolve, reject };
      if (this.appendQueue.length > 0 || !this.tryAppend(queued)) this.appendQueue.push(queued);
    });
  }

  // How long (µs) an idle pipeline keeps the open group open for more
  // records, unless it carries a FUA record or a durability request reaches
  // it: fewer, larger group writes where no acknowledgement waits for them
  // (a replica). 0 turns it off.
  setGroupHold(us: number): void {
    if (!Number.isInteger(us) || us < 0 || us > GROUP_HOLD_US_MAX) throw new RangeError(`a WAL group hold must be an integer from 0 to ${GROUP_HOLD_US_MAX} µs`);
    nativeCall(() => this.raw.setGroupHold(us));
    this.ring.scheduleKick();
  }

  // Asks for the records up to lsn that are appended to become durable,
  // without waiting: those not yet written go out with RWF_DSYNC (one write
  // each, no fdatasync after). LSNs not appended yet are not covered.
  requestDurable(lsn: number): void {
    if (lsn <= this.lsnDurable || this.fatal !== undefined) return;
    nativeCall(() => this.raw.requestDurable(Math.min(lsn, this.lsnHead)));
    this.ring.scheduleKick();
  }

  // Resolves once every record appended before the call is durable.
  flush(): Promise<void> {
    if (this.fatal !== undefined) return Promise.reject(this.fatal);
    const target = this.lsnHead + this.appendQueue.length;
    return this.waitDurable(target);
  }

  waitDurable(lsn: number): Promise<void> {
    if (lsn <= this.lsnDurable) return Promise.resolve();
    if (this.fatal !== undefined) return Promise.reject(this.fatal);
    this.requestDurable(lsn);
    return new Promise<void>((resolve, reject) => insertSorted(this.durableWaiters, { lsn, resolve, value: undefined, reject }));
  }

  waitWritten(lsn: number): Promise<void> {
    if (lsn <= this.lsnWritten) return Promise.resolve();
    if (this.fatal !== undefined) return Promise.reject(this.fatal);
    return new Promise<void>((resolve, reject) => insertSorted(this.writtenWaiters, { lsn, resolve, value: undefined, reject }));
  }

  // Segments whose records are all <= lsn may be recycled.
  release(lsn: number): void {
    nativeCall(() => this.raw.release(lsn));
    this.ring.scheduleKick();
  }

  // Reads one record (header + payload) back, from memory when its group is
  // still there, else from its segment; verified against its checksum.
  // Waits for arena space rather than failing while the arena is busy.
  async readRecord(segmentSeq: number, offsetBytes: number, spanBytes: number): Promise<Buffer> {
    const slice = await this.ring.allocWait(spanBytes + 8192);
    try {
      // No read slot free in the addon (many readers at once): wait for a drain.
      let lead: number | undefined;
      while ((lead = await this.tryReadRecord(segmentSeq, offsetBytes, spanBytes, slice)) === undefined) {
        if (this.closed) throw new BlockwalError('ERR_WAL_CLOSED', 'the WAL is closed');
        await new Promise<void>((resolve) => {
          const off = this.ring.onAfterDrain(() => {
            off();
            resolve();
          });
        });
      }
      return Buffer.from(slice.bytes.subarray(lead, lead + spanBytes));
    } finally {
      this.ring.free(slice);
    }
  }

  // The record's offset in slice once read; undefined when the addon had no read slot free.
  private tryReadRecord(segmentSeq: number, offsetBytes: number, spanBytes: number, slice: ArenaSlice): Promise<number | undefined> {
    return new Promise<number | undefined>((resolve, reject) => {
      const tag = this.ring.takeTag((result) => {
        if (result >= 0) resolve(result);
        else reject(new BlockwalError(result === -74 ? 'ERR_RECORD' : 'ERR_IO', `WAL record read failed (errno ${-result})`, { errno: -result }));
      });
      const rc = this.raw.readRecord(segmentSeq, offsetBytes, spanBytes, slice.offsetBytes, slice.lengthBytes, tag);
      if (rc === 1) {
        this.ring.releaseTag(tag);
        resolve(0);
      } else if (rc === -EBUSY) {
        this.ring.releaseTag(tag);
        resolve(undefined);
      } else if (rc < 0) {
        this.ring.releaseTag(tag);
        reject(new BlockwalError('ERR_IO', `WAL record read refused (errno ${-rc})`, { errno: -rc }));
      } else {
        this.ring.scheduleKick();
      }
    });
  }

  // Reads lengthBytes of segment segmentSeq at offsetBytes (4 KiB multiples)
  // into the start of slice, unverified (gatherBlocks verifies the records
  // used): from the group slots when they still hold all of it, else with one
  // O_DIRECT read. When the addon has no read slot free it waits for a drain
  // and tries again.
  async readSpan(segmentSeq: number, offsetBytes: number, lengthBytes: number, slice: ArenaSlice): Promise<void> {
    if (lengthBytes > slice.lengthBytes) throw new RangeError('lengthBytes exceeds the slice');
    for (;;) {
      if (this.closed) throw new BlockwalError('ERR_WAL_CLOSED', 'the WAL is closed');
      const rc = await new Promise<number>((resolve, reject) => {
        const tag = this.ring.takeTag((result) => {
          if (result >= 0) resolve(0);
          else reject(new BlockwalError('ERR_IO', `WAL read of segment ${segmentSeq} at ${offsetBytes} failed (errno ${-result})`, { errno: -result }));
        });
        let now: number;
        try {
          now = nativeCall(() => this.raw.readSpan(segmentSeq, offsetBytes, lengthBytes, slice.offsetBytes, tag));
        } catch (err) {
          this.ring.releaseTag(tag);
          reject(err as Error);
          return;
        }
        if (now !== 0) {
          this.ring.releaseTag(tag);
          resolve(now);
        } else {
          this.ring.scheduleKick();
        }
      });
      if (rc >= 0) return;
      if (rc !== -EBUSY) {
        throw new BlockwalError('ERR_IO', `WAL read of segment ${segmentSeq} at ${offsetBytes} refused (errno ${-rc})`, { errno: -rc });
      }
      await new Promise<void>((resolve) => {
        const off = this.ring.onAfterDrain(() => {
          off();
          resolve();
        });
      });
    }
  }

  // Verifies records read into the arena and copies block ranges of them into
  // 4 KiB-aligned places of the arena: count descriptors of GATHER_FIELDS
  // numbers each (see GATHER), one record's descriptors next to each other.
  // A record that fails verification throws ERR_RECORD (details.index,
  // details.reason); malformed descriptors throw RangeError.
  gatherBlocks(descriptors: Float64Array, count: number): void {
    nativeCall(() => this.raw.gatherBlocks(descriptors, count));
  }

  // readSpan + gatherBlocks in one step, for records still in memory (the
  // group slots or the WAL cache): descriptors as for gatherBlocks, except
  // that a record's src is its byte offset in segment segmentSeq. Copies
  // straight from there (no read, no second hash of the payload: these are
  // the bytes this WAL encoded; the header is still checked) and returns
  // true, or returns false with nothing copied when any record is no longer
  // in memory. ERR_RECORD and RangeError as gatherBlocks.
  gatherFromMemory(segmentSeq: number, descriptors: Float64Array, count: number): boolean {
    if (this.closed) throw new BlockwalError('ERR_WAL_CLOSED', 'the WAL is closed');
    const rc = nativeCall(() => this.raw.gatherFromMemory(segmentSeq, descriptors, count));
    if (rc < 0) throw new BlockwalError('ERR_IO', `WAL gather from segment ${segmentSeq} refused (errno ${-rc})`, { errno: -rc });
    return rc === 1;
  }

  // Makes everything durable, waits for every operation, and closes.
  async close(): Promise<void> {
    if (this.closed) return;
    if (this.fatal === undefined) await this.flush().catch(() => undefined);
    this.closed = true;
    while (this.state[S.opsInFlight]! > 0) await new Promise<void>((resolve) => this.idleWaiters.push(resolve));
    for (const q of this.appendQueue.splice(0)) q.reject(new BlockwalError('ERR_WAL_CLOSED', 'the WAL was closed'));
    this.detachDrain();
    nativeCall(() => this.raw.close());
  }

  // ---- internals ----------------------------------------------------------

  // Resolves once a segment can take the first group, or at once when none is
  // being prepared: every segment then holds unreleased records (a WAL that
  // was full when the process stopped), and appends wait until release()
  // frees one. Never waits for something that nothing will bring.
  private ready(): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const check = (): void => {
        this.checkFatal();
        if (this.fatal !== undefined) reject(this.fatal);
        else if (this.state[S.spareReady] === 1 || this.state[S.activeSeq] !== 0 || this.state[S.opsInFlight] === 0) resolve();
        else this.idleWaiters.push(check);
      };
      check();
    });
  }

  // The common case of an append without a promise: when nothing waits for
  // WAL space and the open group has room, the record gets its LSN now and
  // its placement is returned; the caller then waits with whenWritten().
  // Undefined when it would have to wait (nothing was appended: use
  // appendLocated). Throws when the WAL refuses it (closed, failed, a bad
  // record). The caller calls scheduleKick() once it has done what should
  // go first (a primary ships the record before this node submits it).
  appendNow(kind: RecordKind, epoch: number, lba: number, lengthBlocks: number, payload: Uint8Array | null, fua: boolean, copyOut: CopyOut): AppendedRecord | undefined {
    if (this.appendQueue.length > 0) return undefined;
    if (this.closed) throw new BlockwalError('ERR_WAL_CLOSED', 'the WAL is closed');
    if (this.fatal !== undefined) throw this.fatal;
    return this.place(kind, epoch, lba, lengthBlocks, payload, fua, copyOut);
  }

  // Submits what was appended at the end of this event-loop iteration
  // (Ring.scheduleKick).
  scheduleKick(): void {
    this.ring.scheduleKick();
  }

  // Resolves with lsn once the record at lsn is written (durable with fua).
  whenWritten(lsn: number, fua: boolean): Promise<number> {
    if (lsn <= (fua ? this.lsnDurable : this.lsnWritten)) return Promise.resolve(lsn);
    if (this.fatal !== undefined) return Promise.reject(this.fatal);
    return new Promise<number>((resolve, reject) => this.addWaiter(fua, { lsn, resolve: resolve as (v: never) => void, value: lsn, reject }));
  }

  private tryAppend(q: QueuedAppend): boolean {
    const r = q.record;
    let placed: AppendedRecord | undefined;
    try {
      placed = this.place(r.kind, r.epoch, r.lba, r.lengthBlocks, r.payload ?? null, r.fua === true, r.copyOut ?? false);
    } catch (err) {
      q.reject(err as Error);
      return true;
    }
    if (placed === undefined) return false;
    if (r.onAssigned !== undefined) r.onAssigned(placed);
    const value: AppendedRecord | number = q.located ? placed : placed.lsn;
    this.addWaiter(r.fua === true, { lsn: placed.lsn, resolve: q.resolve as (v: never) => void, value, reject: q.reject });
    this.ring.scheduleKick();
    return true;
  }

  // Hands one record to the addon: its placement, or undefined when the WAL
  // has no room for it now.
  private place(
    kindName: RecordKind,
    epoch: number,
    lba: number,
    lengthBlocks: number,
    payload: Uint8Array | null,
    fua: boolean,
    copyOut: CopyOut,
  ): AppendedRecord | undefined {
    const kind = KIND_CODE[kindName];
    if (kind === undefined) throw new TypeError(`unknown record kind '${String(kindName)}'`);
    const payloadBytes = payload === null ? 0 : payload.byteLength;
    const spanBytes = Math.ceil((RECORD_HEADER_BYTES + payloadBytes) / 8) * 8;
    const bytes = copyOut === false ? undefined : copyOut === true ? this.copyOutBuffer(spanBytes) : copyOut(spanBytes);
    const args = this.appendArgs;
    args[0] = kind;
    args[1] = epoch;
    args[2] = lba;
    args[3] = lengthBlocks;
    args[4] = fua ? 1 : 0;
    const lsn = bytes === undefined ? this.appendRaw(payload) : this.appendRaw(payload, bytes);
    if (lsn === 0) return undefined;
    if (lsn < 0) {
      this.checkFatal();
      throw this.fatal ?? new BlockwalError('ERR_WAL_CLOSED', 'the WAL is closed');
    }
    return {
      lsn,
      segmentSeq: this.state[S.appendSeq]!,
      offsetBytes: this.state[S.appendOffset]!,
      spanBytes,
      checksum: this.raw.appendChecksum[0]!,
      bytes,
    };
  }

  private addWaiter(fua: boolean, waiter: Waiter): void {
    const waiters = fua ? this.durableWaiters : this.writtenWaiters;
    // Appends come in LSN order, but a flush or waitWritten may already wait
    // for a later LSN (records still queued): keep the list sorted, or settle()
    // would stop at that waiter and hold back every earlier one.
    const last = waiters.length === 0 ? 0 : waiters[waiters.length - 1]!.lsn;
    if (last <= waiter.lsn) waiters.push(waiter);
    else insertSorted(waiters, waiter);
  }

  // Room for one encoded record, carved from a shared slab: one allocation
  // per COPY_SLAB_BYTES of records instead of one each (a record keeps its
  // slab alive while it is referenced).
  private copyOutBuffer(spanBytes: number): Buffer {
    if (spanBytes > COPY_SLAB_BYTES / 4) return Buffer.allocUnsafeSlow(spanBytes);
    if (this.copySlabUsed + spanBytes > COPY_SLAB_BYTES) {
      this.copySlab = Buffer.allocUnsafeSlow(COPY_SLAB_BYTES);
      this.copySlabUsed = 0;
    }
    const out = this.copySlab.subarray(this.copySlabUsed, this.copySlabUsed + spanBytes);
    this.copySlabUsed += spanBytes; // spans are multiples of 8
    return out;
  }

  private onDrain(): void {
    this.checkFatal();
    let appended = false;
    while (this.appendQueue.length > 0 && this.fatal === undefined) {
      if (!this.tryAppend(this.appendQueue[0]!)) break;
      this.appendQueue.shift();
      appended = true;
    }
    // A flush asked for records that were still queued (waitDurable could
    // only ask the addon up to the head then): ask again now they have LSNs.
    if (appended) this.requestDurable(this.durableWaiters.at(-1)?.lsn ?? 0);
    settle(this.writtenWaiters, this.lsnWritten, this.fatal);
    settle(this.durableWaiters, this.lsnDurable, this.fatal);
    if (this.fatal !== undefined) {
      for (const q of this.appendQueue.splice(0)) q.reject(this.fatal);
    }
    const idle = this.idleWaiters.splice(0);
    for (const w of idle) w();
  }

  private checkFatal(): void {
    const errno = this.state[S.failedErrno]!;
    if (errno === 0 || this.fatal !== undefined) return;
    this.fatal = new BlockwalError(
      'ERR_WAL_FATAL',
      `${this.raw.failureMessage()} (errno ${errno}); the WAL accepts no more writes`,
      { errno },
    );
  }
}

function insertSorted(list: Waiter[], w: Waiter): void {
  let i = list.length;
  while (i > 0 && list[i - 1]!.lsn > w.lsn) i--;
  list.splice(i, 0, w);
}

// Resolves waiters up to lsn; with a fatal error, rejects the rest.
function settle(list: Waiter[], lsn: number, fatal: BlockwalError | undefined): void {
  let n = 0;
  while (n < list.length && list[n]!.lsn <= lsn) n++;
  for (const w of list.splice(0, n)) w.resolve(w.value as never);
  if (fatal !== undefined) for (const w of list.splice(0)) w.reject(fatal);
}
