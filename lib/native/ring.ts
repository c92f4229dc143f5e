// Ring: one io_uring with its aligned arena and files, driven from JS.
//
// Operations are queued in JS and handed to the addon in one batch per event
// loop iteration (a kick in its check phase); completions come back in one
// call per drain with tags and results in a shared Int32Array. A WAL
// attached to the ring is notified after each drain. JS buffers are never
// handed to the kernel: O_DIRECT needs the arena's 4 KiB alignment, so
// callers allocate slices of the arena (alloc/free) and copy in and out of
// them.
import { addon } from './addon';
import { BlockwalError, nativeCall, toBlockwalError } from './errors';

export enum OpKind {
  read = 1,
  write = 2,
  fsync = 3,
  fdatasync = 4,
  punchHole = 5,
  nop = 6,
}

// What an operation is for (fault injection targets one purpose).
export enum OpPurpose {
  js = 0,
  walGroup = 1,
  walSync = 2,
  walPrepare = 3,
  walRead = 4,
  any = 255,
}

export interface RingOptions {
  depth?: number; // submission queue entries (completion queue: twice that)
  arenaBytes?: number; // aligned buffer space, multiple of 4096
  registerBuffers?: boolean; // register the arena with io_uring (default true; falls back when refused)
}

export interface FileOptions {
  write?: boolean;
  create?: boolean;
  exclusive?: boolean;
  direct?: boolean;
}

export interface ArenaSlice {
  readonly offsetBytes: number;
  readonly lengthBytes: number;
  readonly bytes: Uint8Array; // view of the arena
}

export interface TraceEvent {
  seq: number;
  type: 'submit' | 'complete' | 'event';
  kind: number;
  fd: number;
  offsetBytes: number;
  lengthBytes: number;
  flags: number;
  result: number;
  a: number;
  b: number;
  purpose: OpPurpose;
  slot: number; // pairs a completion with its submission
  timeNs: number; // CLOCK_MONOTONIC
}

// Recording (test hook): every operation with its file identity, a copy of
// each write's bytes, file paths at first sight and directory listings at
// each directory fsync; test/support/crash_images.ts builds crash images from it.
export type RecordingEventType = 'submit' | 'complete' | 'mark' | 'file' | 'dir';

export const RECORD_BIT_FORCED = 1; // fault injection: the op never reached the disk
export const RECORD_BIT_CHANGED = 2; // a write's buffer changed while it was in flight
export const RECORD_BIT_DIRECTORY = 4; // the fd is a directory
export const RWF_DSYNC = 2;

export interface RecordingEvent {
  seq: number;
  type: RecordingEventType;
  kind: number; // OpKind (submit/complete), the caller's (mark)
  purpose: OpPurpose;
  bits: number;
  fd: number;
  result: number;
  flags: number; // a write's rw_flags (RWF_DSYNC = 2)
  slot: number; // pairs a completion with its submission
  lengthBytes: number;
  offsetBytes: number;
  dev: number; // file identity: (dev, ino)
  ino: number;
  a: number;
  b: number;
  data: Uint8Array | undefined; // submit of a write: its bytes; file: path; dir: listing
  timeNs: number;
}

export interface DirEntry {
  name: string;
  ino: number;
  sizeBytes: number;
  mode: number;
}

export interface RingInfo {
  open: boolean;
  depth: number;
  inFlight: number;
  slotsFree: number;
  arenaBytes: number;
  reservedBytes: number;
  buffersRegistered: boolean;
  // Completions wait for the JS thread's next system call instead of
  // interrupting it (IORING_SETUP_COOP_TASKRUN, Linux 5.19 and later).
  coopTaskrun: boolean;
  recording: boolean;
  recordingBytes: number;
}

interface RawRing {
  arena: ArrayBuffer;
  completions: Int32Array;
  submit(descriptors: Float64Array, count: number): number;
  kick(): number; // microseconds the attached WAL still holds its open group
  openFile(path: string, flags: number): number;
  closeFile(fileId: number): void;
  adoptFd(fd: number): number;
  fileSize(fileId: number): number;
  injectFault(kind: number, purpose: number, skip: number, errno: number, shortWrite: boolean): void;
  clearFaults(): void;
  setShuffle(seed: number | null): void;
  setTrace(on: boolean): void;
  takeTrace(): Float64Array;
  setRecording(on: boolean, capBytes: number, withData: boolean): void;
  recordMark(kind: number, a: number, b: number): number;
  takeRecording(): { events: Float64Array; data: Buffer };
  info(): RingInfo;
  claimJsRegion(): number;
  close(): void;
}

type RawRingCtor = new (
  depth: number,
  arenaBytes: number,
  onDrain: (count: number) => void,
  registerBuffers: boolean,
) => RawRing;

// The ring's completion sink for records read by the WAL (tag-addressed).
export type CompletionHandler = (result: number) => void;

interface PendingOp {
  kind: OpKind;
  fileId: number;
  offsetBytes: number; // arena
  lengthBytes: number;
  fileOffsetBytes: number;
  dsync: boolean;
  tag: number;
}

const DESCRIPTOR_FIELDS = 7;
const TRACE_FIELDS = 13;
const RECORD_FIELDS = 18;
const RECORD_TYPES: RecordingEventType[] = ['submit', 'complete', 'mark', 'file', 'dir'];
const RECORDING_CAP_DEFAULT = 1 << 30;
const BLOCK_BYTES = 4096;
const DEPTH_DEFAULT = 256;
const ARENA_BYTES_DEFAULT = 64 << 20;

export class Ring {
  readonly depth: number;
  readonly arenaBytes: number;
  readonly raw: RawRing;
  private readonly arena: Uint8Array;
  private readonly completions: Int32Array;
  private readonly descriptors: Float64Array;
  private readonly handlers: (CompletionHandler | undefined)[] = [];
  private readonly freeTags: number[] = [];
  private readonly queued: PendingOp[] = [];
  private kickScheduled = false;
  // Kicks again when the attached WAL's hold on its open group runs out.
  private holdTimer: NodeJS.Timeout | undefined;
  private drainListeners: (() => void)[] = [];
  private allocator: ArenaAllocator | undefined;
  private jsBaseBytes = 0;
  // allocWait's callers, oldest first, retried on every free().
  private readonly allocWaiters: { length: number; resolve: (s: ArenaSlice) => void; reject: (e: Error) => void }[] = [];
  private closed = false;

  private constructor(depth: number, arenaBytes: number, registerBuffers: boolean) {
    const Ctor = addon().Ring as RawRingCtor;
    this.depth = depth;
    this.arenaBytes = arenaBytes;
    this.raw = nativeCall(() => new Ctor(depth, arenaBytes, (count) => this.onDrain(count), registerBuffers));
    this.arena = new Uint8Array(this.raw.arena);
    this.completions = this.raw.completions;
    this.descriptors = new Float64Array(depth * DESCRIPTOR_FIELDS);
  }

  static open(options: RingOptions = {}): Ring {
    const depth = options.depth ?? DEPTH_DEFAULT;
    const arenaBytes = options.arenaBytes ?? ARENA_BYTES_DEFAULT;
    if (!Number.isInteger(depth) || depth < 24 || depth > 4096) throw new RangeError('depth must be from 24 to 4096');
    if (!Number.isInteger(arenaBytes) || arenaBytes <= 0 || arenaBytes % BLOCK_BYTES !== 0) {
      throw new RangeError('arenaBytes must be a positive multiple of 4096');
    }
    return new Ring(depth, arenaBytes, options.registerBuffers ?? true);
  }

  info(): RingInfo {
    return this.raw.info();
  }

  // ---- arena -------------------------------------------------------------

  // Allocates a 4 KiB-aligned slice of the arena outside what the WAL reserved.
  // The first allocation fixes the JS region: a WAL opened later must fit in
  // space an earlier WAL released.
  alloc(lengthBytes: number): ArenaSlice {
    const allocator = this.jsAllocator();
    const length = roundUp(Math.max(lengthBytes, 1), BLOCK_BYTES);
    const offset = allocator.alloc(length);
    if (offset < 0) {
      throw new BlockwalError('ERR_ARENA', `arena exhausted: no ${length} free bytes (arena ${this.arenaBytes} bytes)`);
    }
    return { offsetBytes: offset, lengthBytes: length, bytes: this.arena.subarray(offset, offset + length) };
  }

  // Like alloc, but waits for space when the arena is exhausted instead of
  // failing: the caller is retried (first come, first served) whenever any
  // slice is freed, by whichever path. Fails at once (ERR_ARENA) only when
  // lengthBytes exceeds the whole JS part of the arena.
  allocWait(lengthBytes: number): Promise<ArenaSlice> {
    if (this.closed) return Promise.reject(new BlockwalError('ERR_RING_CLOSED', 'the ring is closed'));
    const length = roundUp(Math.max(lengthBytes, 1), BLOCK_BYTES);
    if (length > this.jsRegionBytes) {
      return Promise.reject(new BlockwalError('ERR_ARENA', `no ${length} bytes can ever be free (the arena's JS part holds ${this.jsRegionBytes})`));
    }
    if (this.allocWaiters.length === 0) {
      const slice = this.tryAlloc(lengthBytes);
      if (slice !== undefined) return Promise.resolve(slice);
    }
    return new Promise<ArenaSlice>((resolve, reject) => this.allocWaiters.push({ length: lengthBytes, resolve, reject }));
  }

  // allocWait's common case without a promise: a slice when nobody waits and
  // there is room now, else undefined (the caller then uses allocWait, which
  // keeps the waiters' order and reports the errors).
  allocNow(lengthBytes: number): ArenaSlice | undefined {
    if (this.closed || this.allocWaiters.length > 0) return undefined;
    const length = roundUp(Math.max(lengthBytes, 1), BLOCK_BYTES);
    const offset = this.jsAllocator().alloc(length);
    if (offset < 0) return undefined;
    return { offsetBytes: offset, lengthBytes: length, bytes: this.arena.subarray(offset, offset + length) };
  }

  free(slice: ArenaSlice): void {
    this.allocator?.release(slice.offsetBytes, slice.lengthBytes);
    while (this.allocWaiters.length > 0) {
      const w = this.allocWaiters[0]!;
      let slice: ArenaSlice | undefined;
      try {
        slice = this.tryAlloc(w.length);
      } catch (err) {
        this.allocWaiters.shift();
        w.reject(err as Error);
        continue;
      }
      if (slice === undefined) return;
      this.allocWaiters.shift();
      w.resolve(slice);
    }
  }

  // A slice, or undefined while the arena is too full for it; ERR_ARENA when
  // it could never fit.
  private tryAlloc(lengthBytes: number): ArenaSlice | undefined {
    try {
      return this.alloc(lengthBytes);
    } catch (err) {
      if (!(err instanceof BlockwalError) || err.code !== 'ERR_ARENA') throw err;
      if (roundUp(Math.max(lengthBytes, 1), BLOCK_BYTES) > this.jsRegionBytes) throw err;
      return undefined;
    }
  }

  // Bytes of the arena JS allocates from (what the WAL did not reserve first).
  get jsRegionBytes(): number {
    this.jsAllocator();
    return this.arenaBytes - this.jsBaseBytes;
  }

  // The first allocation fixes the JS region.
  private jsAllocator(): ArenaAllocator {
    if (this.allocator === undefined) {
      this.jsBaseBytes = this.raw.claimJsRegion();
      this.allocator = new ArenaAllocator(this.jsBaseBytes, this.arenaBytes - this.jsBaseBytes);
    }
    return this.allocator;
  }

  arenaView(offsetBytes: number, lengthBytes: number): Uint8Array {
    return this.arena.subarray(offsetBytes, offsetBytes + lengthBytes);
  }

  // ---- files and operations ----------------------------------------------

  openFile(path: string, options: FileOptions = {}): number {
    const flags =
      (options.write ? 1 : 0) | (options.create ? 2 : 0) | (options.exclusive ? 4 : 0) | (options.direct ? 8 : 0);
    return nativeCall(() => this.raw.openFile(path, flags));
  }

  closeFile(fileId: number): void {
    nativeCall(() => this.raw.closeFile(fileId));
  }

  // A file id for a descriptor the ring must not close (e.g. a mapped bitmap).
  adoptFd(fd: number): number {
    return nativeCall(() => this.raw.adoptFd(fd));
  }

  fileSize(fileId: number): number {
    return nativeCall(() => this.raw.fileSize(fileId));
  }

  read(fileId: number, slice: ArenaSlice, fileOffsetBytes: number, lengthBytes = slice.lengthBytes): Promise<number> {
    return this.io(OpKind.read, fileId, slice, fileOffsetBytes, lengthBytes, false);
  }

  // Resolves with bytes written; a short write rejects (ERR_IO).
  async write(
    fileId: number,
    slice: ArenaSlice,
    fileOffsetBytes: number,
    lengthBytes = slice.lengthBytes,
    options: { dsync?: boolean } = {},
  ): Promise<number> {
    const n = await this.io(OpKind.write, fileId, slice, fileOffsetBytes, lengthBytes, options.dsync === true);
    if (n !== lengthBytes) throw new BlockwalError('ERR_IO', `short write: ${n} of ${lengthBytes} bytes`);
    return n;
  }

  // Writes many pieces of the arena at once, with one promise for all:
  // resolves once every write has completed, rejects (after every one has
  // completed, so the buffers stay untouched until the kernel is done) with
  // the first failure; a short write fails with ERR_IO.
  // writes: [arenaOffsetBytes, lengthBytes, fileOffsetBytes] each.
  writeMany(fileId: number, writes: readonly (readonly [number, number, number])[]): Promise<void> {
    if (this.closed) return Promise.reject(new BlockwalError('ERR_RING_CLOSED', 'the ring is closed'));
    if (writes.length === 0) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      let left = writes.length;
      let failure: Error | undefined;
      for (const [offsetBytes, lengthBytes, fileOffsetBytes] of writes) {
        const tag = this.takeTag((result) => {
          if (failure === undefined) {
            if (result < 0) failure = ioError('write', -result);
            else if (result !== lengthBytes) failure = new BlockwalError('ERR_IO', `short write: ${result} of ${lengthBytes} bytes`);
          }
          if (--left > 0) return;
          if (failure !== undefined) reject(failure);
          else resolve();
        });
        this.queued.push({ kind: OpKind.write, fileId, offsetBytes, lengthBytes, fileOffsetBytes, dsync: false, tag });
      }
      this.scheduleKick();
    });
  }

  async fdatasync(fileId: number): Promise<void> {
    await this.op(OpKind.fdatasync, fileId, 0, 0, 0, false);
  }

  async fsync(fileId: number): Promise<void> {
    await this.op(OpKind.fsync, fileId, 0, 0, 0, false);
  }

  async punchHole(fileId: number, fileOffsetBytes: number, lengthBytes: number): Promise<void> {
    await this.op(OpKind.punchHole, fileId, 0, lengthBytes, fileOffsetBytes, false);
  }

  private io(
    kind: OpKind,
    fileId: number,
    slice: ArenaSlice,
    fileOffsetBytes: number,
    lengthBytes: number,
    dsync: boolean,
  ): Promise<number> {
    if (lengthBytes > slice.lengthBytes) throw new RangeError('lengthBytes exceeds the slice');
    return this.op(kind, fileId, slice.offsetBytes, lengthBytes, fileOffsetBytes, dsync);
  }

  // offsetBytes: the arena slice's (0 when the op has no buffer).
  private op(
    kind: OpKind,
    fileId: number,
    offsetBytes: number,
    lengthBytes: number,
    fileOffsetBytes: number,
    dsync: boolean,
  ): Promise<number> {
    if (this.closed) return Promise.reject(new BlockwalError('ERR_RING_CLOSED', 'the ring is closed'));
    return new Promise<number>((resolve, reject) => {
      const tag = this.takeTag((result) => {
        if (result < 0) reject(ioError(OpKind[kind], -result));
        else resolve(result);
      });
      this.queued.push({ kind, fileId, offsetBytes, lengthBytes, fileOffsetBytes, dsync, tag });
      this.scheduleKick();
    });
  }

  // ---- completion plumbing (used by the WAL wrapper too) -------------------

  takeTag(handler: CompletionHandler): number {
    const tag = this.freeTags.pop() ?? this.handlers.length;
    this.handlers[tag] = handler;
    return tag;
  }

  releaseTag(tag: number): void {
    this.handlers[tag] = undefined;
    this.freeTags.push(tag);
  }

  onAfterDrain(listener: () => void): () => void {
    this.drainListeners.push(listener);
    return () => {
      this.drainListeners = this.drainListeners.filter((l) => l !== listener);
    };
  }

  // Submits queued operations and lets the attached WAL submit its groups.
  // Runs once per event-loop iteration, in its check phase (setImmediate),
  // after every callback of its poll phase: the requests read from all
  // sockets and the completions just drained cross into the addon as one
  // batch, so each iteration enters the kernel once for the disk. A disk
  // submission is costly on a virtual machine (each one that reaches the
  // device is a trap to the hypervisor), and with a FLUSH per write one
  // batch lets more records share each durable group write (README:
  // submission once per loop iteration).
  scheduleKick(): void {
    if (this.kickScheduled || this.closed) return;
    this.kickScheduled = true;
    setImmediate(this.kickNow);
  }

  private readonly kickNow = (): void => {
    this.kickScheduled = false;
    if (this.closed) return;
    this.submitQueued();
    let heldUs: number;
    try {
      heldUs = this.raw.kick();
    } catch (err) {
      throw toBlockwalError(err);
    }
    if (heldUs > 0 && this.holdTimer === undefined) {
      this.holdTimer = setTimeout(this.onHoldTimer, Math.max(1, Math.ceil(heldUs / 1000)));
    }
  };

  private readonly onHoldTimer = (): void => {
    this.holdTimer = undefined;
    this.scheduleKick();
  };

  private submitQueued(): void {
    while (this.queued.length > 0) {
      const n = Math.min(this.queued.length, this.depth);
      for (let i = 0; i < n; i++) {
        const op = this.queued[i]!;
        const d = i * DESCRIPTOR_FIELDS;
        this.descriptors[d] = op.kind;
        this.descriptors[d + 1] = op.fileId;
        this.descriptors[d + 2] = op.offsetBytes;
        this.descriptors[d + 3] = op.lengthBytes;
        this.descriptors[d + 4] = op.fileOffsetBytes;
        this.descriptors[d + 5] = op.dsync ? 1 : 0;
        this.descriptors[d + 6] = op.tag;
      }
      let accepted = this.raw.submit(this.descriptors, n);
      if (accepted < 0) {
        // Descriptor #k is malformed (the caller's bug): it fails alone with
        // EINVAL; those before it were queued, those after it go next round.
        accepted = -accepted - 1;
        const bad = this.queued.splice(accepted, 1)[0]!;
        const handler = this.handlers[bad.tag];
        this.releaseTag(bad.tag);
        handler?.(-22);
        this.queued.splice(0, accepted);
        continue;
      }
      this.queued.splice(0, accepted);
      if (accepted < n) return; // the ring is full: the rest goes after the next drain
    }
  }

  private onDrain(count: number): void {
    for (let i = 0; i < count; i++) {
      const tag = this.completions[i * 2]!;
      const result = this.completions[i * 2 + 1]!;
      const handler = this.handlers[tag];
      this.releaseTag(tag);
      handler?.(result);
    }
    for (const listener of this.drainListeners) listener();
    // The attached WAL's next groups (their completions freed the room) go
    // with this iteration's kick, whether or not JS queued anything.
    this.scheduleKick();
  }

  // ---- test hooks ---------------------------------------------------------

  // Runs this iteration's kick at once instead of in its check phase, so a
  // test can submit twice within one turn (no completion is drained between).
  submitNow(): void {
    this.kickNow();
  }

  // The (skip+1)-th op of this kind and purpose reports -errno (or a short
  // write) without reaching the disk.
  injectFault(rule: { kind: OpKind; purpose?: OpPurpose; skip?: number; errno?: number; shortWrite?: boolean }): void {
    nativeCall(() =>
      this.raw.injectFault(rule.kind, rule.purpose ?? OpPurpose.any, rule.skip ?? 0, rule.errno ?? 5, rule.shortWrite ?? false),
    );
  }

  clearFaults(): void {
    this.raw.clearFaults();
  }

  // Shuffles each drained batch of completions with a seeded PRNG (null: off).
  setShuffle(seed: number | null): void {
    this.raw.setShuffle(seed);
  }

  setTrace(on: boolean): void {
    this.raw.setTrace(on);
  }

  takeTrace(): TraceEvent[] {
    const raw = this.raw.takeTrace();
    const out: TraceEvent[] = [];
    for (let i = 0; i < raw.length; i += TRACE_FIELDS) {
      out.push({
        seq: raw[i]!,
        type: raw[i + 1] === 1 ? 'submit' : raw[i + 1] === 2 ? 'complete' : 'event',
        kind: raw[i + 2]!,
        fd: raw[i + 3]!,
        offsetBytes: raw[i + 4]!,
        lengthBytes: raw[i + 5]!,
        flags: raw[i + 6]!,
        result: raw[i + 7]!,
        a: raw[i + 8]!,
        b: raw[i + 9]!,
        purpose: raw[i + 10]! as OpPurpose,
        slot: raw[i + 11]!,
        timeNs: raw[i + 12]!,
      });
    }
    return out;
  }

  // Starts a fresh recording (capBytes bounds events plus data; past it the
  // recording stops and takeRecording throws ERR_RECORDING_FULL), or stops.
  // withData: false records writes without a copy of their bytes.
  setRecording(on: boolean, options: { capBytes?: number; withData?: boolean } = {}): void {
    const cap = options.capBytes ?? RECORDING_CAP_DEFAULT;
    if (on && (!Number.isSafeInteger(cap) || cap <= 0)) throw new RangeError('capBytes must be a positive integer');
    nativeCall(() => this.raw.setRecording(on, on ? cap : 0, options.withData ?? true));
  }

  // Adds a caller's event to the recording (e.g. "this write was
  // acknowledged"); returns its seq, 0 when not recording.
  recordMark(kind: number, a = 0, b = 0): number {
    return nativeCall(() => this.raw.recordMark(kind, a, b));
  }

  // Hands over everything recorded so far (recording continues if on).
  takeRecording(): RecordingEvent[] {
    const { events, data } = nativeCall(() => this.raw.takeRecording());
    const out: RecordingEvent[] = [];
    for (let i = 0; i < events.length; i += RECORD_FIELDS) {
      const dataOffset = events[i + 15]!;
      const dataBytes = events[i + 16]!;
      out.push({
        seq: events[i]!,
        type: RECORD_TYPES[events[i + 1]! - 1]!,
        kind: events[i + 2]!,
        purpose: events[i + 3]! as OpPurpose,
        bits: events[i + 4]!,
        fd: events[i + 5]!,
        result: events[i + 6]!,
        flags: events[i + 7]!,
        slot: events[i + 8]!,
        lengthBytes: events[i + 9]!,
        offsetBytes: events[i + 10]!,
        dev: events[i + 11]!,
        ino: events[i + 12]!,
        a: events[i + 13]!,
        b: events[i + 14]!,
        data: dataOffset < 0 ? undefined : data.subarray(dataOffset, dataOffset + dataBytes),
        timeNs: events[i + 17]!,
      });
    }
    return out;
  }

  // Waits for every operation to complete, then releases the ring.
  async close(): Promise<void> {
    if (this.closed) return;
    await this.settle();
    this.closed = true;
    if (this.holdTimer !== undefined) clearTimeout(this.holdTimer);
    for (const w of this.allocWaiters.splice(0)) w.reject(new BlockwalError('ERR_RING_CLOSED', 'the ring was closed'));
    nativeCall(() => this.raw.close());
  }

  // Waits until no operation is queued or in flight; the ring stays open.
  async settle(): Promise<void> {
    while (!this.closed && (this.queued.length > 0 || this.raw.info().inFlight > 0)) {
      await new Promise<void>((resolve) => {
        const off = this.onAfterDrain(() => {
          off();
          resolve();
        });
        this.scheduleKick();
      });
    }
  }
}

// Decodes the listing of a 'dir' recording event.
export function decodeDirListing(listing: Uint8Array): DirEntry[] {
  const out: DirEntry[] = [];
  const buf = Buffer.from(listing.buffer, listing.byteOffset, listing.byteLength);
  let at = 0;
  while (at + 24 <= buf.length) {
    const ino = Number(buf.readBigUInt64LE(at));
    const sizeBytes = Number(buf.readBigUInt64LE(at + 8));
    const mode = buf.readUInt32LE(at + 16);
    const nameBytes = buf.readUInt32LE(at + 20);
    out.push({ name: buf.toString('utf8', at + 24, at + 24 + nameBytes), ino, sizeBytes, mode });
    at += 24 + nameBytes;
  }
  return out;
}

function ioError(op: string, errno: number): BlockwalError {
  return new BlockwalError('ERR_IO', `${op} failed: errno ${errno}`, { errno, syscall: op });
}

function roundUp(value: number, multiple: number): number {
  return Math.ceil(value / multiple) * multiple;
}

// First-fit allocator over a byte range in 4 KiB units; frees coalesce.
class ArenaAllocator {
  private readonly spans: { offset: number; length: number }[];

  constructor(base: number, length: number) {
    this.spans = length > 0 ? [{ offset: base, length }] : [];
  }

  alloc(length: number): number {
    for (let i = 0; i < this.spans.length; i++) {
      const f = this.spans[i]!;
      if (f.length < length) continue;
      const offset = f.offset;
      f.offset += length;
      f.length -= length;
      if (f.length === 0) this.spans.splice(i, 1);
      return offset;
    }
    return -1;
  }

  release(offset: number, length: number): void {
    let i = 0;
    while (i < this.spans.length && this.spans[i]!.offset < offset) i++;
    this.spans.splice(i, 0, { offset, length });
    const next = this.spans[i + 1];
    if (next !== undefined && offset + length === next.offset) {
      this.spans[i]!.length += next.length;
      this.spans.splice(i + 1, 1);
    }
    const prev = this.spans[i - 1];
    if (prev !== undefined && prev.offset + prev.length === offset) {
      prev.length += this.spans[i]!.length;
      this.spans.splice(i, 1);
    }
  }
}
