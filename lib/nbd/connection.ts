// One NBD connection: the fixed newstyle handshake, then transmission.
//
// Input is parsed by a state machine over a queue of received chunks (never
// re-concatenated). A WRITE payload is taken as a view of the chunk that
// holds it, or read into one buffer of its length when it spans chunks.
//
// Limits (per connection): a request holds one of `maxRequestsInFlight`
// slots and its data bytes from the moment its header is parsed until its
// reply has been handed to the kernel (the write callback), so replies the
// client does not read count against the limit. A new header is parsed only
// while a slot is free and fewer than `maxBytesInFlight` bytes are held;
// otherwise the input is paused and the socket's receive window fills up.
// Held input is thus at most one Readable high-water mark plus the chunks
// already received; held output at most the in-flight bytes plus one request.
//
// Replies go out as requests finish (out of order). Those ready in one tick
// are batched: headers and small data are copied into a reused arena, large
// data follows by reference, one write callback frees the batch's slots.
// After DISC, EOF at a message boundary, or a server shutdown the connection
// reads no more requests, finishes the ones the backend is doing, flushes
// their replies and ends. A broken stream drops everything: late completions
// release their slot and write nothing.
import type { Readable, Writable } from 'node:stream';
import type { Logger } from 'pino';

import type { Extent, NbdBackend, NbdExport, ZeroOptions } from './backend';
import {
  ALLOCATION_CONTEXT_ID,
  assertNever,
  checkRequest,
  CLIENT_FLAG_NO_ZEROES,
  CLIENT_FLAGS_BYTES,
  CLIENT_FLAGS_KNOWN,
  CHUNK_HEADER_BYTES,
  Cmd,
  CmdFlag,
  type CommandName,
  commandName,
  decodeInfoRequest,
  decodeMetaContextRequest,
  decodeOptionHeader,
  decodeRequestHeader,
  encodeBlockStatusChunk,
  encodeDataChunkHeader,
  encodeErrorChunk,
  encodeExportNameReply,
  encodeGreeting,
  encodeHoleChunk,
  encodeInfoBlockSize,
  encodeInfoExport,
  encodeInfoString,
  encodeMetaContextReply,
  encodeNoneChunk,
  encodeOptionError,
  encodeOptionReply,
  encodeServerReply,
  encodeSimpleReply,
  Errno,
  errnoOf,
  EXTENTS_MAX,
  InfoType,
  mergeExtents,
  META_CONTEXT_ALLOCATION,
  newRequestHeader,
  Opt,
  OPTION_DATA_BYTES_MAX,
  OPTION_HEADER_BYTES,
  Payload,
  PAYLOAD_BYTES_MAX,
  payloadOf,
  queryMatchesAllocation,
  Rep,
  REQUEST_HEADER_BYTES,
  type RequestContext,
  type RequestHeader,
  SIMPLE_REPLY_BYTES,
  STRING_BYTES_MAX,
  DATA_CHUNK_HEADER_BYTES,
  HOLE_CHUNK_BYTES,
  transmissionFlagsFor,
} from './protocol';

export interface ConnectionLimits {
  maxRequestsInFlight: number;
  maxBytesInFlight: number;
  handshakeTimeoutMs: number;
  maxOptions: number;
}

// Counters shared by every connection of a server (mutated in place).
export interface Counters {
  connectionsAccepted: number;
  requests: Record<CommandName, number>;
  // Data bytes clients read (READ replies) and wrote (WRITE payloads), successful requests only.
  bytesRead: number;
  bytesWritten: number;
  // Requests answered with an error.
  errors: number;
  protocolViolations: number;
  // Gauges: requests and data bytes held by connections (parsed, not yet replied).
  requestsInFlight: number;
  bytesInFlight: number;
}

export type RequestObserver = (command: string, bytes: number, seconds: number, ok: boolean) => void;

// What a connection needs from its server.
export interface ConnectionHost {
  readonly counters: Counters;
  readonly limits: ConnectionLimits;
  readonly onRequest: RequestObserver | undefined;
  readonly shuttingDown: boolean;
  // '' names the default export.
  findExport(name: string): NbdExport | undefined;
  listExports(): readonly NbdExport[];
  connectionClosed(conn: Connection): void;
}

// A block-status reply's worst case, charged against the bytes in flight.
const BLOCK_STATUS_CHARGE_BYTES = 24 + 8 * EXTENTS_MAX;
// After we end a socket, how long the peer gets to close its side.
const LINGER_MS = 2000;
// Reads of all zeros go out as an OFFSET_HOLE chunk; compared against this.
const ZEROES = Buffer.alloc(64 * 1024);
// Reply batches: arena size, data copied rather than referenced, batches kept for reuse.
const ARENA_BYTES = 128 * 1024;
const COPY_BYTES_MAX = 16 * 1024;
const SPARE_BATCHES_MAX = 2;

enum Parse {
  clientFlags,
  optionHeader,
  optionData,
  requestHeader,
  writePayload,
  discardPayload,
  stopped, // no more input is accepted: it is dropped
}

enum SlotState {
  free,
  backend, // the backend is working on it
  replying, // its reply is queued on the output
}

// A request in flight. Preallocated, with its callbacks bound once, so the
// hot path allocates no closures.
class Slot {
  state = SlotState.free;
  type = 0;
  flags = 0;
  cookieHi = 0;
  cookieLo = 0;
  offsetHi = 0;
  offsetLo = 0;
  offsetBytes = 0;
  lengthBytes = 0;
  chargedBytes = 0;
  startedMs = 0;
  payload: Buffer | undefined = undefined;
  payloadFilledBytes = 0;
  readonly zeroOptions: ZeroOptions = { fua: false, noHole: false, fastZero: false };
  readonly onValue: (value: unknown) => void;
  readonly onError: (err: unknown) => void;

  constructor(conn: Connection) {
    this.onValue = (value) => conn.completed(this, value);
    this.onError = (err) => conn.failed(this, err);
  }

  assign(h: RequestHeader): void {
    this.type = h.type;
    this.flags = h.flags;
    this.cookieHi = h.cookieHi;
    this.cookieLo = h.cookieLo;
    this.offsetHi = h.offsetHi;
    this.offsetLo = h.offsetLo;
    this.offsetBytes = h.offsetBytes;
    this.lengthBytes = h.lengthBytes;
  }
}

// Replies that became ready in one tick: headers and small data copied into
// an arena, large data by reference; written together with one callback,
// which frees every slot of the batch. The arena is reused after that
// callback (the kernel has taken its bytes).
class ReplyBatch {
  readonly arena = Buffer.allocUnsafe(ARENA_BYTES);
  used = 0;
  readonly slots: Slot[] = [];
  readonly onWritten: () => void;
  private segmentStart = 0;
  private readonly pieces: Uint8Array[] = [];

  constructor(conn: Connection) {
    this.onWritten = () => conn.batchWritten(this);
  }

  room(): number {
    return ARENA_BYTES - this.used;
  }

  add(slot: Slot): void {
    slot.state = SlotState.replying;
    slot.payload = undefined;
    this.slots.push(slot);
  }

  addReference(data: Uint8Array): void {
    this.endSegment();
    this.pieces.push(data);
  }

  // What to write, in order (at least one piece).
  close(): Uint8Array[] {
    this.endSegment();
    return this.pieces;
  }

  reset(): void {
    this.used = 0;
    this.segmentStart = 0;
    this.pieces.length = 0;
    this.slots.length = 0;
  }

  private endSegment(): void {
    if (this.used === this.segmentStart) return;
    this.pieces.push(this.arena.subarray(this.segmentStart, this.used));
    this.segmentStart = this.used;
  }
}

// Received chunks in order; `peekAt` is where peek() put the bytes it returns.
class InputQueue {
  bytes = 0;
  peekAt = 0;
  private chunks: Buffer[] = [];
  private first = 0;
  private offset = 0;

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.bytes += chunk.length;
  }

  // `n` contiguous bytes at peekAt of the result (the head chunk, or a copy in scratch).
  peek(n: number, scratch: Buffer): Buffer {
    const head = this.chunks[this.first]!;
    if (head.length - this.offset >= n) {
      this.peekAt = this.offset;
      return head;
    }
    this.copyOut(scratch, 0, n);
    this.peekAt = 0;
    return scratch;
  }

  // The next n bytes as a view when one chunk holds them (no copy).
  view(n: number): Buffer | undefined {
    const head = this.chunks[this.first];
    if (head === undefined || head.length - this.offset < n) return undefined;
    const v = head.subarray(this.offset, this.offset + n);
    this.consume(n);
    return v;
  }

  // Moves up to target.length - at bytes into target; returns how many.
  take(target: Buffer, at: number): number {
    const n = Math.min(this.bytes, target.length - at);
    this.copyOut(target, at, n);
    this.consume(n);
    return n;
  }

  skip(n: number): number {
    const skipped = Math.min(n, this.bytes);
    this.consume(skipped);
    return skipped;
  }

  consume(n: number): void {
    this.bytes -= n;
    while (n > 0) {
      const head = this.chunks[this.first]!;
      const step = Math.min(n, head.length - this.offset);
      this.offset += step;
      n -= step;
      if (this.offset === head.length) this.dropHead();
    }
  }

  clear(): void {
    this.chunks = [];
    this.first = 0;
    this.offset = 0;
    this.bytes = 0;
  }

  private copyOut(target: Buffer, at: number, n: number): void {
    let index = this.first;
    let offset = this.offset;
    while (n > 0) {
      const chunk = this.chunks[index]!;
      const copied = chunk.copy(target, at, offset, offset + Math.min(n, chunk.length - offset));
      at += copied;
      n -= copied;
      index++;
      offset = 0;
    }
  }

  private dropHead(): void {
    this.first++;
    this.offset = 0;
    if (this.first === this.chunks.length) {
      this.chunks.length = 0;
      this.first = 0;
    } else if (this.first >= 64) {
      this.chunks.splice(0, this.first);
      this.first = 0;
    }
  }
}

// Selected meta contexts: base:allocation for one export, or nothing.
interface MetaSelection {
  exportName: string;
}

export class Connection {
  // Resolves once the connection is torn down.
  readonly done: Promise<void>;
  private readonly log: Logger;
  // One stream both ways (a socket), rather than a pair (stdin/stdout).
  private readonly duplex: boolean;
  private readonly queue = new InputQueue();
  private readonly scratch = Buffer.allocUnsafe(REQUEST_HEADER_BYTES);
  private readonly header = newRequestHeader();
  private state = Parse.clientFlags;
  private pumping = false;
  private pumpAgain = false;
  private inputPaused = false;
  private inputEnded = false;
  private batch: ReplyBatch | undefined;
  private spareBatches: ReplyBatch[] = [];
  private flushScheduled = false;
  private ending = false;
  private closed = false;
  private resolveDone!: () => void;
  private handshakeTimer: NodeJS.Timeout | undefined;
  private lingerTimer: NodeJS.Timeout | undefined;

  // Handshake state.
  private noZeroes = false;
  private structuredReplies = false;
  private meta: MetaSelection | undefined;
  private optionsSeen = 0;
  private option = 0;
  private optionBytes = 0;

  // Transmission state.
  private backend: NbdBackend | undefined;
  private ctx: RequestContext | undefined;
  private freeSlots: Slot[] = [];
  private requestsInFlight = 0;
  private bytesInFlight = 0;
  private backendInFlight = 0;
  private payloadSlot: Slot | undefined;
  private discardBytes = 0;
  private stopReason = '';

  constructor(
    private readonly host: ConnectionHost,
    logger: Logger,
    private readonly input: Readable,
    private readonly output: Writable,
  ) {
    this.log = logger;
    this.duplex = (input as unknown) === output;
    this.done = new Promise<void>((resolve) => (this.resolveDone = resolve));
  }

  get isClosed(): boolean {
    return this.closed;
  }

  // Input received but not yet parsed: ours plus the stream's buffer.
  get queuedBytes(): number {
    return this.queue.bytes + this.input.readableLength;
  }

  start(): void {
    this.input.on('data', this.onData);
    this.input.on('end', this.onEnd);
    this.input.on('error', this.onStreamError);
    this.input.on('close', this.onStreamClose);
    if (!this.duplex) {
      this.output.on('error', this.onStreamError);
      this.output.on('close', this.onStreamClose);
    }
    this.handshakeTimer = setTimeout(this.onHandshakeTimeout, this.host.limits.handshakeTimeoutMs);
    this.handshakeTimer.unref();
    this.sendHandshake(encodeGreeting());
    this.log.info('connection open');
  }

  // The server is stopping: new options get ERR_SHUTDOWN, new requests
  // ESHUTDOWN; the connection ends once the backend has finished its requests.
  shutdown(): void {
    if (this.closed || this.ending) return;
    if (this.ctx === undefined) {
      this.stopReading('server shutdown');
      return;
    }
    this.ctx.shuttingDown = true;
    this.maybeFinish();
  }

  // Drops the connection at once.
  abort(reason: string): void {
    if (this.closed) return;
    this.log.info({ reason }, 'connection aborted');
    this.input.destroy();
    if (!this.duplex) this.output.destroy();
    this.teardown(reason);
  }

  // ---- Input ----

  private readonly onData = (chunk: Buffer): void => {
    if (this.closed) return;
    this.queue.push(chunk);
    this.pump();
  };

  // EOF is judged once the requests already received have been parsed.
  private readonly onEnd = (): void => {
    if (this.closed) return;
    this.inputEnded = true;
    this.pump();
  };

  private afterEnd(): void {
    if (this.state === Parse.stopped) return;
    const waiting = this.state === Parse.requestHeader && this.queue.bytes >= REQUEST_HEADER_BYTES && !this.canAdmit();
    if (waiting) return; // a release pumps again
    const atBoundary = this.queue.bytes === 0 && (this.state === Parse.clientFlags || this.state === Parse.optionHeader || this.state === Parse.requestHeader);
    if (atBoundary) {
      this.stopReading('end of input');
      return;
    }
    this.violation(`end of input in the middle of a message (state ${Parse[this.state]}, ${this.queue.bytes} bytes pending)`, true);
  }

  private readonly onStreamError = (err: Error): void => {
    if (this.closed) return;
    this.log.info({ err: err.message }, 'stream error');
    this.abort(`stream error: ${err.message}`);
  };

  private readonly onStreamClose = (): void => {
    if (this.closed) return;
    if (this.ending) {
      this.input.destroy();
      if (!this.duplex) this.output.destroy();
      this.teardown(this.stopReason);
      return;
    }
    this.abort('stream closed');
  };

  private readonly onHandshakeTimeout = (): void => {
    this.handshakeTimer = undefined;
    if (this.ctx === undefined && !this.closed) this.violation('handshake timeout', true);
  };

  private pump(): void {
    if (this.pumping) {
      this.pumpAgain = true;
      return;
    }
    this.pumping = true;
    do {
      this.pumpAgain = false;
      this.parse();
    } while (this.pumpAgain && !this.closed);
    this.pumping = false;
    if (this.inputEnded && !this.closed) this.afterEnd();
    this.updateInputFlow();
  }

  // Handles whole units of input until one is incomplete or no slot is free.
  private parse(): void {
    for (;;) {
      if (this.closed) return;
      switch (this.state) {
        case Parse.clientFlags:
          if (!this.parseClientFlags()) return;
          break;
        case Parse.optionHeader:
          if (!this.parseOptionHeader()) return;
          break;
        case Parse.optionData:
          if (!this.parseOptionData()) return;
          break;
        case Parse.requestHeader:
          if (!this.canAdmit() || !this.parseRequestHeader()) return;
          break;
        case Parse.writePayload:
          if (!this.fillPayload()) return;
          break;
        case Parse.discardPayload:
          if (!this.discardPayload()) return;
          break;
        case Parse.stopped:
          this.queue.clear();
          return;
        default:
          assertNever(this.state);
      }
    }
  }

  private canAdmit(): boolean {
    return this.freeSlots.length > 0 && this.bytesInFlight < this.host.limits.maxBytesInFlight;
  }

  // Pauses the input while requests cannot be admitted, so the client's
  // sends back up into its own socket rather than into our memory.
  private updateInputFlow(): void {
    if (this.closed) return;
    const blocked = this.state === Parse.requestHeader && !this.canAdmit();
    if (blocked && !this.inputPaused) {
      this.inputPaused = true;
      this.input.pause();
    } else if (!blocked && this.inputPaused) {
      this.inputPaused = false;
      this.input.resume();
    }
  }

  private stopReading(reason: string): void {
    if (this.state !== Parse.stopped) this.stopReason = reason;
    this.state = Parse.stopped;
    this.queue.clear();
    this.maybeFinish();
  }

  // ---- Handshake ----

  private parseClientFlags(): boolean {
    if (this.queue.bytes < CLIENT_FLAGS_BYTES) return false;
    const b = this.queue.peek(CLIENT_FLAGS_BYTES, this.scratch);
    const flags = b.readUInt32BE(this.queue.peekAt);
    this.queue.consume(CLIENT_FLAGS_BYTES);
    if ((flags & ~CLIENT_FLAGS_KNOWN) !== 0) {
      this.violation(`unknown client flags 0x${flags.toString(16)}`, true);
      return false;
    }
    this.noZeroes = (flags & CLIENT_FLAG_NO_ZEROES) !== 0;
    this.state = Parse.optionHeader;
    return true;
  }

  private parseOptionHeader(): boolean {
    if (this.queue.bytes < OPTION_HEADER_BYTES) return false;
    const b = this.queue.peek(OPTION_HEADER_BYTES, this.scratch);
    const h = decodeOptionHeader(b, this.queue.peekAt);
    this.queue.consume(OPTION_HEADER_BYTES);
    if (!h.magicOk) return this.violation('bad option magic', true);
    if (h.lengthBytes > OPTION_DATA_BYTES_MAX) {
      return this.violation(`option ${h.option} carries ${h.lengthBytes} bytes (at most ${OPTION_DATA_BYTES_MAX})`, true);
    }
    if (++this.optionsSeen > this.host.limits.maxOptions) {
      return this.violation(`more than ${this.host.limits.maxOptions} options`, true);
    }
    this.option = h.option;
    this.optionBytes = h.lengthBytes;
    this.state = Parse.optionData;
    return true;
  }

  private parseOptionData(): boolean {
    if (this.queue.bytes < this.optionBytes) return false;
    const data = Buffer.allocUnsafe(this.optionBytes);
    this.queue.take(data, 0);
    this.state = Parse.optionHeader;
    this.handleOption(this.option, data);
    return true;
  }

  private handleOption(option: number, data: Buffer): void {
    if (this.host.shuttingDown && option !== Opt.abort) {
      this.optionError(option, Rep.errShutdown, 'the server is shutting down');
      return;
    }
    switch (option) {
      case Opt.exportName:
        return this.optExportName(data);
      case Opt.abort:
        this.sendHandshake(encodeOptionReply(option, Rep.ack));
        return this.stopReading('abort');
      case Opt.list:
        return this.optList(data);
      case Opt.startTls:
        return this.optionError(option, Rep.errPolicy, 'TLS is not available on this server');
      case Opt.info:
      case Opt.go:
        return this.optInfo(option, data);
      case Opt.structuredReply:
        return this.optStructuredReply(data);
      case Opt.listMetaContext:
      case Opt.setMetaContext:
        return this.optMetaContext(option, data);
      case Opt.extendedHeaders:
        return this.optionError(option, Rep.errUnsup, 'extended headers are not supported');
      default:
        return this.optionError(option, Rep.errUnsup, `option ${option} is not supported`);
    }
  }

  private optionError(option: number, type: Rep, message: string): void {
    this.log.debug({ option, type, message }, 'option refused');
    this.sendHandshake(encodeOptionError(option, type, message));
  }

  // EXPORT_NAME has no error reply: an unknown name ends the session.
  private optExportName(data: Buffer): void {
    const exp = data.length <= STRING_BYTES_MAX ? this.host.findExport(data.toString('utf8')) : undefined;
    if (exp === undefined) {
      this.log.info({ exportName: data.toString('utf8', 0, Math.min(data.length, 256)) }, 'EXPORT_NAME of an unknown export');
      this.abort('unknown export');
      return;
    }
    const flags = transmissionFlagsFor(exp.backend.readOnly, this.structuredReplies);
    this.sendHandshake(encodeExportNameReply(exp.backend.sizeBytes, flags, this.noZeroes));
    this.startTransmission(exp);
  }

  private optList(data: Buffer): void {
    if (data.length !== 0) return this.optionError(Opt.list, Rep.errInvalid, 'LIST takes no data');
    for (const exp of this.host.listExports()) this.sendHandshake(encodeServerReply(Opt.list, exp.name, exp.description));
    this.sendHandshake(encodeOptionReply(Opt.list, Rep.ack));
  }

  private optInfo(option: Opt.info | Opt.go, data: Buffer): void {
    const request = decodeInfoRequest(data);
    if (typeof request === 'string') return this.optionError(option, Rep.errInvalid, request);
    const exp = this.host.findExport(request.name);
    if (exp === undefined) return this.optionError(option, Rep.errUnknown, `no export named "${request.name}"`);
    const flags = transmissionFlagsFor(exp.backend.readOnly, this.structuredReplies);
    this.sendHandshake(encodeInfoExport(option, exp.backend.sizeBytes, flags));
    if (request.infoTypes.includes(InfoType.name)) this.sendHandshake(encodeInfoString(option, InfoType.name, exp.name));
    if (request.infoTypes.includes(InfoType.description)) {
      this.sendHandshake(encodeInfoString(option, InfoType.description, exp.description));
    }
    this.sendHandshake(encodeInfoBlockSize(option));
    this.sendHandshake(encodeOptionReply(option, Rep.ack));
    if (option === Opt.go) this.startTransmission(exp);
  }

  private optStructuredReply(data: Buffer): void {
    if (data.length !== 0) return this.optionError(Opt.structuredReply, Rep.errInvalid, 'STRUCTURED_REPLY takes no data');
    this.structuredReplies = true;
    this.sendHandshake(encodeOptionReply(Opt.structuredReply, Rep.ack));
  }

  // SET replaces the selection even when it fails; LIST changes nothing.
  private optMetaContext(option: Opt.listMetaContext | Opt.setMetaContext, data: Buffer): void {
    const list = option === Opt.listMetaContext;
    if (!list) this.meta = undefined;
    if (!list && !this.structuredReplies) {
      return this.optionError(option, Rep.errInvalid, 'SET_META_CONTEXT needs structured replies first');
    }
    const request = decodeMetaContextRequest(data);
    if (typeof request === 'string') return this.optionError(option, Rep.errInvalid, request);
    const exp = this.host.findExport(request.exportName);
    if (exp === undefined) return this.optionError(option, Rep.errUnknown, `no export named "${request.exportName}"`);
    const selected = list && request.queries.length === 0 ? true : request.queries.some((q) => queryMatchesAllocation(q, list));
    if (selected) {
      this.sendHandshake(encodeMetaContextReply(option, list ? 0 : ALLOCATION_CONTEXT_ID, META_CONTEXT_ALLOCATION));
      if (!list) this.meta = { exportName: exp.name };
    }
    this.sendHandshake(encodeOptionReply(option, Rep.ack));
  }

  private startTransmission(exp: NbdExport): void {
    clearTimeout(this.handshakeTimer);
    this.handshakeTimer = undefined;
    this.backend = exp.backend;
    this.ctx = {
      sizeBytes: exp.backend.sizeBytes,
      readOnly: exp.backend.readOnly,
      structuredReplies: this.structuredReplies,
      blockStatus: this.structuredReplies && this.meta?.exportName === exp.name,
      shuttingDown: this.host.shuttingDown,
    };
    for (let i = 0; i < this.host.limits.maxRequestsInFlight; i++) this.freeSlots.push(new Slot(this));
    this.state = Parse.requestHeader;
    this.log.info({ export: exp.name, structuredReplies: this.structuredReplies, blockStatus: this.ctx.blockStatus }, 'transmission');
  }

  // ---- Transmission: requests ----

  private parseRequestHeader(): boolean {
    if (this.queue.bytes < REQUEST_HEADER_BYTES) return false;
    const h = this.header;
    decodeRequestHeader(this.queue.peek(REQUEST_HEADER_BYTES, this.scratch), this.queue.peekAt, h);
    this.queue.consume(REQUEST_HEADER_BYTES);
    if (!h.magicOk) return this.violation('bad request magic', true);
    this.host.counters.requests[commandName(h.type)]++;
    if (h.type === Cmd.disc) {
      this.stopReading('disconnect request');
      return false;
    }
    const payload = payloadOf(h.type, h.lengthBytes);
    if (payload === Payload.disconnect) return this.violation(`write of ${h.lengthBytes} bytes is too large to skip`, true);
    const slot = this.takeSlot(h);
    const verdict = checkRequest(h, this.ctx!);
    if (verdict.errno !== Errno.ok) {
      if (verdict.violation) this.violation(verdict.message, false);
      this.replyError(slot, verdict.errno, verdict.message);
      if (payload !== Payload.none) this.startDiscard(h.lengthBytes);
      return true;
    }
    if (payload === Payload.discard) throw new Error('a write above the maximum payload passed checkRequest');
    if (h.type === Cmd.write && h.lengthBytes > 0) return this.startPayload(slot);
    this.dispatch(slot);
    return true;
  }

  private takeSlot(h: RequestHeader): Slot {
    const slot = this.freeSlots.pop()!;
    if (slot.state !== SlotState.free) throw new Error('a slot in use was on the free list');
    slot.assign(h);
    slot.state = SlotState.backend;
    slot.chargedBytes = chargeOf(h);
    if (this.host.onRequest !== undefined) slot.startedMs = performance.now();
    this.requestsInFlight++;
    this.bytesInFlight += slot.chargedBytes;
    this.host.counters.requestsInFlight++;
    this.host.counters.bytesInFlight += slot.chargedBytes;
    return slot;
  }

  private startPayload(slot: Slot): boolean {
    const view = this.queue.view(slot.lengthBytes);
    if (view !== undefined) {
      slot.payload = view;
      this.dispatch(slot);
      return true;
    }
    slot.payload = Buffer.allocUnsafe(slot.lengthBytes);
    slot.payloadFilledBytes = 0;
    this.payloadSlot = slot;
    this.state = Parse.writePayload;
    return true;
  }

  private fillPayload(): boolean {
    const slot = this.payloadSlot!;
    slot.payloadFilledBytes += this.queue.take(slot.payload!, slot.payloadFilledBytes);
    if (slot.payloadFilledBytes < slot.lengthBytes) return false;
    this.payloadSlot = undefined;
    this.state = Parse.requestHeader;
    this.dispatch(slot);
    return true;
  }

  private startDiscard(lengthBytes: number): void {
    this.discardBytes = lengthBytes;
    this.state = Parse.discardPayload;
  }

  private discardPayload(): boolean {
    this.discardBytes -= this.queue.skip(this.discardBytes);
    if (this.discardBytes > 0) return false;
    this.state = Parse.requestHeader;
    return true;
  }

  // Starts the backend on a valid request; zero-length requests succeed at once.
  private dispatch(slot: Slot): void {
    if (slot.lengthBytes === 0 && slot.type !== Cmd.flush) {
      this.replySuccess(slot, undefined);
      return;
    }
    this.backendInFlight++;
    let pending: Promise<unknown>;
    try {
      pending = this.callBackend(slot);
    } catch (err) {
      this.failed(slot, err);
      return;
    }
    pending.then(slot.onValue, slot.onError);
  }

  private callBackend(slot: Slot): Promise<unknown> {
    const b = this.backend!;
    const fua = (slot.flags & CmdFlag.fua) !== 0;
    switch (slot.type as Cmd) {
      case Cmd.read:
        return b.read(slot.offsetBytes, slot.lengthBytes);
      case Cmd.write:
        return b.write(slot.offsetBytes, slot.payload!, fua);
      case Cmd.flush:
        return b.flush();
      case Cmd.trim:
        return b.trim(slot.offsetBytes, slot.lengthBytes, fua);
      case Cmd.cache:
        return b.cache(slot.offsetBytes, slot.lengthBytes);
      case Cmd.writeZeroes:
        slot.zeroOptions.fua = fua;
        slot.zeroOptions.noHole = (slot.flags & CmdFlag.noHole) !== 0;
        slot.zeroOptions.fastZero = (slot.flags & CmdFlag.fastZero) !== 0;
        return b.writeZeroes(slot.offsetBytes, slot.lengthBytes, slot.zeroOptions);
      case Cmd.blockStatus:
        return b.blockStatus(slot.offsetBytes, slot.lengthBytes);
      case Cmd.disc:
        throw new Error('DISC never reaches the backend');
      default:
        return assertNever(slot.type as never);
    }
  }

  // ---- Transmission: completions and replies ----

  completed(slot: Slot, value: unknown): void {
    if (slot.state !== SlotState.backend) return;
    this.backendInFlight--;
    this.replySuccess(slot, value);
    this.maybeFinish();
  }

  failed(slot: Slot, err: unknown): void {
    if (slot.state !== SlotState.backend) return;
    this.backendInFlight--;
    const errno = errnoOf(err);
    const message = err instanceof Error ? err.message : String(err);
    if (errno === Errno.eio) this.log.warn({ err: message, command: commandName(slot.type) }, 'backend error');
    this.replyError(slot, errno, message);
    this.maybeFinish();
  }

  private replySuccess(slot: Slot, value: unknown): void {
    if (slot.type === Cmd.read) return this.replyRead(slot, value);
    if (slot.type === Cmd.blockStatus) return this.replyBlockStatus(slot, value);
    if (slot.type === Cmd.write) this.host.counters.bytesWritten += slot.lengthBytes;
    this.observe(slot, true);
    this.replySimple(slot, Errno.ok);
  }

  private replyRead(slot: Slot, value: unknown): void {
    const data = slot.lengthBytes === 0 ? EMPTY : value;
    if (!(data instanceof Uint8Array) || data.byteLength !== slot.lengthBytes) {
      return this.replyError(slot, Errno.eio, `the backend returned ${describe(data)} for a read of ${slot.lengthBytes} bytes`);
    }
    this.host.counters.bytesRead += slot.lengthBytes;
    this.observe(slot, true);
    if (!this.ctx!.structuredReplies) return this.replyWithData(slot, SIMPLE_REPLY_BYTES, data);
    if (slot.lengthBytes === 0) {
      const b = this.batchWithRoom(CHUNK_HEADER_BYTES);
      b.used += encodeNoneChunk(b.arena, b.used, slot.cookieHi, slot.cookieLo);
      return b.add(slot);
    }
    if ((slot.flags & CmdFlag.df) === 0 && isAllZero(data)) {
      const b = this.batchWithRoom(HOLE_CHUNK_BYTES);
      b.used += encodeHoleChunk(b.arena, b.used, slot.cookieHi, slot.cookieLo, slot.offsetHi, slot.offsetLo, slot.lengthBytes);
      return b.add(slot);
    }
    this.replyWithData(slot, DATA_CHUNK_HEADER_BYTES, data);
  }

  // A simple reply or a data chunk header, then the data: copied when
  // small, else written by reference after the header.
  private replyWithData(slot: Slot, headerBytes: number, data: Uint8Array): void {
    const copy = data.byteLength <= COPY_BYTES_MAX;
    const b = this.batchWithRoom(headerBytes + (copy ? data.byteLength : 0));
    if (headerBytes === SIMPLE_REPLY_BYTES) {
      b.used += encodeSimpleReply(b.arena, b.used, Errno.ok, slot.cookieHi, slot.cookieLo);
    } else {
      b.used += encodeDataChunkHeader(b.arena, b.used, slot.cookieHi, slot.cookieLo, slot.offsetHi, slot.offsetLo, data.byteLength);
    }
    if (copy) {
      b.arena.set(data, b.used);
      b.used += data.byteLength;
    } else if (data.byteLength > 0) {
      b.addReference(data);
    }
    b.add(slot);
  }

  private replyBlockStatus(slot: Slot, value: unknown): void {
    const extentsMax = (slot.flags & CmdFlag.reqOne) !== 0 ? 1 : EXTENTS_MAX;
    const merged = Array.isArray(value) ? mergeExtents(value as Extent[], slot.lengthBytes, extentsMax) : 'the backend returned no extent list';
    if (typeof merged === 'string') {
      this.log.warn({ err: merged }, 'backend error');
      return this.replyError(slot, Errno.eio, merged);
    }
    this.observe(slot, true);
    this.replyBuffer(slot, encodeBlockStatusChunk(slot.cookieHi, slot.cookieLo, ALLOCATION_CONTEXT_ID, merged));
  }

  // Structured replies carry the message in an ERROR chunk (READ must get one).
  private replyError(slot: Slot, errno: Errno, message: string): void {
    this.host.counters.errors++;
    this.observe(slot, false);
    if (this.ctx!.structuredReplies) this.replyBuffer(slot, encodeErrorChunk(errno, slot.cookieHi, slot.cookieLo, message));
    else this.replySimple(slot, errno);
  }

  private replySimple(slot: Slot, errno: Errno): void {
    const b = this.batchWithRoom(SIMPLE_REPLY_BYTES);
    b.used += encodeSimpleReply(b.arena, b.used, errno, slot.cookieHi, slot.cookieLo);
    b.add(slot);
  }

  private replyBuffer(slot: Slot, reply: Buffer): void {
    if (reply.length > COPY_BYTES_MAX) {
      this.batchWithRoom(0).addReference(reply);
    } else {
      const b = this.batchWithRoom(reply.length);
      b.used += reply.copy(b.arena, b.used);
    }
    this.batch!.add(slot);
  }

  // A throwing observer must not cost the client its reply.
  private observe(slot: Slot, ok: boolean): void {
    const onRequest = this.host.onRequest;
    if (onRequest === undefined) return;
    try {
      onRequest(commandName(slot.type), slot.lengthBytes, (performance.now() - slot.startedMs) / 1000, ok);
    } catch (err) {
      this.log.error({ err: err instanceof Error ? err.message : String(err) }, 'onRequest threw');
    }
  }

  private sendHandshake(reply: Buffer): void {
    if (!this.closed && !this.ending) this.output.write(reply);
  }

  // The batch of this tick, with `bytes` free in its arena. A full batch
  // is written at once; the last one at the end of the tick.
  private batchWithRoom(bytes: number): ReplyBatch {
    let b = this.batch;
    if (b !== undefined && b.room() >= bytes) return b;
    if (b !== undefined) this.writeBatch(b);
    b = this.spareBatches.pop() ?? new ReplyBatch(this);
    this.batch = b;
    if (!this.flushScheduled) {
      this.flushScheduled = true;
      process.nextTick(this.flushBatch);
    }
    return b;
  }

  private readonly flushBatch = (): void => {
    this.flushScheduled = false;
    if (this.batch !== undefined) this.writeBatch(this.batch);
  };

  private writeBatch(b: ReplyBatch): void {
    if (this.batch === b) this.batch = undefined;
    if (this.closed) return this.batchWritten(b);
    const pieces = b.close();
    const last = pieces.length - 1;
    if (last > 0) this.output.cork();
    for (let i = 0; i < last; i++) this.output.write(pieces[i]);
    this.output.write(pieces[last], b.onWritten);
    if (last > 0) this.output.uncork();
  }

  // The output has taken (or dropped) a batch: its slots are free again.
  batchWritten(b: ReplyBatch): void {
    for (const slot of b.slots) this.release(slot);
    b.reset();
    if (this.spareBatches.length < SPARE_BATCHES_MAX) this.spareBatches.push(b);
    if (this.inputPaused || this.queue.bytes > 0) this.pump();
  }

  // Frees a slot (its reply was written or dropped, or its payload never completed).
  private release(slot: Slot): void {
    if (slot.state === SlotState.free) return;
    slot.state = SlotState.free;
    slot.payload = undefined;
    this.requestsInFlight--;
    this.bytesInFlight -= slot.chargedBytes;
    this.host.counters.requestsInFlight--;
    this.host.counters.bytesInFlight -= slot.chargedBytes;
    slot.chargedBytes = 0;
    this.freeSlots.push(slot);
  }

  // ---- Ending ----

  // Ends the connection once input has stopped (DISC, EOF, shutdown) and
  // the backend holds no request: their replies are queued by then.
  private maybeFinish(): void {
    if (this.closed || this.ending || this.backendInFlight > 0) return;
    const shuttingDown = this.ctx?.shuttingDown === true && this.state !== Parse.writePayload;
    if (this.state !== Parse.stopped && !shuttingDown) return;
    if (this.state !== Parse.stopped) this.stopReason = 'server shutdown';
    this.state = Parse.stopped;
    this.endGracefully();
  }

  private endGracefully(): void {
    if (this.batch !== undefined) this.writeBatch(this.batch);
    this.ending = true;
    clearTimeout(this.handshakeTimer);
    if (this.inputPaused) {
      this.inputPaused = false;
      this.input.resume();
    }
    if (this.duplex) {
      // Wait for the peer to close its side (onStreamClose), but not forever.
      this.lingerTimer = setTimeout(() => this.abort('peer did not close'), LINGER_MS);
      this.lingerTimer.unref();
      this.output.end();
      return;
    }
    this.output.end(() => {
      this.input.destroy();
      this.teardown(this.stopReason);
    });
  }

  private violation(message: string, close: boolean): false {
    this.host.counters.protocolViolations++;
    this.log.warn({ violation: message }, 'protocol violation');
    if (close) this.abort(message);
    return false;
  }

  private teardown(reason: string): void {
    if (this.closed) return;
    this.closed = true;
    this.state = Parse.stopped;
    clearTimeout(this.handshakeTimer);
    clearTimeout(this.lingerTimer);
    this.queue.clear();
    const pending = this.payloadSlot;
    this.payloadSlot = undefined;
    if (pending !== undefined) this.release(pending); // a partial WRITE is never applied
    this.log.info({ reason, requestsInFlight: this.requestsInFlight }, 'connection closed');
    this.host.connectionClosed(this);
    this.resolveDone();
  }
}

const EMPTY = new Uint8Array(0);

// Oversized reads and writes are refused without a buffer: they cost nothing.
function chargeOf(h: RequestHeader): number {
  if (h.type === Cmd.read || h.type === Cmd.write) return h.lengthBytes <= PAYLOAD_BYTES_MAX ? h.lengthBytes : 0;
  return h.type === Cmd.blockStatus ? BLOCK_STATUS_CHARGE_BYTES : 0;
}

// Cheap for data (the first and last bytes usually differ from zero), a
// memcmp per 64 KiB for zeroes: worth it to send 32 bytes instead of the data.
function isAllZero(data: Uint8Array): boolean {
  if (data[0] !== 0 || data[data.byteLength - 1] !== 0) return false;
  const b = Buffer.isBuffer(data) ? data : Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  for (let at = 0; at < b.length; at += ZEROES.length) {
    const n = Math.min(ZEROES.length, b.length - at);
    if (b.compare(ZEROES, 0, n, at, at + n) !== 0) return false;
  }
  return true;
}

function describe(value: unknown): string {
  if (value instanceof Uint8Array) return `${value.byteLength} bytes`;
  return value === null ? 'null' : typeof value;
}
