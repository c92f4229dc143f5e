// The transmission phase of one connection: requests in, backend calls,
// replies out.
//
// A request header is parsed only while the slot pool admits one (see
// slot.ts); otherwise step() reports no progress and the connection pauses
// its input. Every request is checked up front (checkRequest) before it
// reaches the backend; a refused WRITE's payload is skipped to keep the
// framing, one too large to skip drops the connection. A WRITE payload is
// a view of the input chunk that holds it, or read into one buffer of its
// length when it spans chunks. Backend results are validated (a READ must
// return its length, BLOCK_STATUS a sane extent list) and backend errors
// mapped to wire errors by errnoOf, so a faulty backend costs the client an
// EIO, never the framing.
//
// Per request the hot path allocates no closures and no objects of its own
// beyond a WRITE payload's view and the promise from then(): the slots with
// their callbacks and the header are preallocated, and replies go into a
// reused batch (reply_writer.ts).
import type { Writable } from 'node:stream';
import type { Logger } from 'pino';

import type { Extent, NbdBackend } from './backend';
import type { ConnectionHost } from './host';
import type { ChunkQueue } from '../util/chunk_queue';
import { assertNever } from '../util/assert';
import { ioBuffers } from '../util/buffer_pool';
import { checkRequest, Cmd, CmdFlag, commandName, decodeRequestHeader, Errno, errnoOf, EXTENTS_MAX, mergeExtents, newRequestHeader, Payload, payloadOf, REQUEST_HEADER_BYTES, type RequestContext } from './protocol';
import { ReplyWriter, type ReplyWriterOwner } from './reply_writer';
import { type Slot, type SlotOwner, SlotPool, SlotState } from './slot';

// What transmission needs from its connection.
export interface TransmissionOwner {
  readonly isClosed: boolean;
  violation(message: string, close: boolean): false;
  stopReading(reason: string): void;
  // A backend request settled: the connection may be able to end.
  maybeFinish(): void;
  // Slots were freed: parsing may go on.
  repliesWritten(): void;
}

// What the next input is.
enum RequestState {
  requestHeader,
  writePayload,
  discardPayload,
}

const EMPTY = new Uint8Array(0);

export class Transmission implements SlotOwner, ReplyWriterOwner {
  private state = RequestState.requestHeader;
  private readonly header = newRequestHeader();
  private readonly ctx: RequestContext;
  private readonly slots: SlotPool;
  private readonly replies: ReplyWriter;
  private payloadSlot: Slot | undefined;
  private discardBytes = 0;
  // Requests the backend is working on.
  private backendRequests = 0;

  constructor(
    private readonly owner: TransmissionOwner,
    private readonly host: ConnectionHost,
    private readonly log: Logger,
    private readonly queue: ChunkQueue<Buffer>,
    output: Writable,
    private readonly backend: NbdBackend,
    structuredReplies: boolean,
    blockStatus: boolean,
  ) {
    this.ctx = {
      sizeBytes: backend.sizeBytes,
      readOnly: backend.readOnly,
      structuredReplies,
      blockStatus,
      shuttingDown: host.shuttingDown,
    };
    this.slots = new SlotPool(host.counters, host.limits, this);
    this.replies = new ReplyWriter(output, structuredReplies, this);
  }

  get isClosed(): boolean {
    return this.owner.isClosed;
  }

  get backendInFlight(): number {
    return this.backendRequests;
  }

  get requestsInFlight(): number {
    return this.slots.requestsInFlight;
  }

  // EOF here ends the session cleanly.
  get atMessageBoundary(): boolean {
    return this.state === RequestState.requestHeader;
  }

  // The next header must wait for a slot (or for held bytes to drop).
  get waitingForSlot(): boolean {
    return this.state === RequestState.requestHeader && !this.slots.canAdmit();
  }

  // Shutting down and not inside a WRITE payload: input can stop here.
  get shutdownDue(): boolean {
    return this.ctx.shuttingDown && this.state !== RequestState.writePayload;
  }

  get stateName(): string {
    return RequestState[this.state];
  }

  // New requests get ESHUTDOWN from now on.
  shutdown(): void {
    this.ctx.shuttingDown = true;
  }

  // Handles one unit of input; false when it is incomplete, no slot is
  // free, or input must stop.
  step(): boolean {
    switch (this.state) {
      case RequestState.requestHeader:
        return this.slots.canAdmit() && this.parseRequestHeader();
      case RequestState.writePayload:
        return this.fillPayload();
      case RequestState.discardPayload:
        return this.discardPayload();
      default:
        return assertNever(this.state);
    }
  }

  // Writes the replies queued this tick now (the connection is ending).
  flushReplies(): void {
    this.replies.flush();
  }

  // The connection is torn down: a partial WRITE is never applied.
  abandonPayload(): void {
    const pending = this.payloadSlot;
    this.payloadSlot = undefined;
    if (pending === undefined) return;
    this.returnPayload(pending);
    this.slots.release(pending);
  }

  // ---- Requests ----

  private parseRequestHeader(): boolean {
    if (this.queue.bytesQueued < REQUEST_HEADER_BYTES) return false;
    const h = this.header;
    decodeRequestHeader(this.queue.peek(REQUEST_HEADER_BYTES), this.queue.peekOffsetBytes, h);
    this.queue.consume(REQUEST_HEADER_BYTES);
    if (!h.magicOk) return this.owner.violation('bad request magic', true);
    this.host.counters.requests[commandName(h.type)]++;
    if (h.type === Cmd.disc) {
      this.owner.stopReading('disconnect request');
      return false;
    }
    const payload = payloadOf(h.type, h.lengthBytes);
    if (payload === Payload.disconnect) return this.owner.violation(`write of ${h.lengthBytes} bytes is too large to skip`, true);
    const slot = this.slots.take(h);
    if (this.host.onRequest !== undefined) slot.startedMs = performance.now();
    const verdict = checkRequest(h, this.ctx);
    if (verdict.errno !== Errno.ok) {
      if (verdict.violation) this.owner.violation(verdict.message, false);
      this.replyError(slot, verdict.errno, verdict.message);
      if (payload !== Payload.none) this.startDiscard(h.lengthBytes);
      return true;
    }
    if (payload === Payload.discard) throw new Error('a write above the maximum payload passed checkRequest');
    if (h.type === Cmd.write && h.lengthBytes > 0) return this.startPayload(slot);
    this.dispatch(slot);
    return true;
  }

  private startPayload(slot: Slot): boolean {
    const view = this.queue.view(slot.lengthBytes);
    if (view !== undefined) {
      slot.payload = view;
      this.dispatch(slot);
      return true;
    }
    const pooled = ioBuffers.take(slot.lengthBytes);
    slot.payload = pooled ?? Buffer.allocUnsafe(slot.lengthBytes);
    slot.payloadPooled = pooled !== undefined;
    slot.payloadFilledBytes = 0;
    this.payloadSlot = slot;
    this.state = RequestState.writePayload;
    return true;
  }

  private fillPayload(): boolean {
    const slot = this.payloadSlot!;
    slot.payloadFilledBytes += this.queue.takeInto(slot.payload!, slot.payloadFilledBytes);
    if (slot.payloadFilledBytes < slot.lengthBytes) return false;
    this.payloadSlot = undefined;
    this.state = RequestState.requestHeader;
    this.dispatch(slot);
    return true;
  }

  private startDiscard(lengthBytes: number): void {
    this.discardBytes = lengthBytes;
    this.state = RequestState.discardPayload;
  }

  private discardPayload(): boolean {
    this.discardBytes -= this.queue.skip(this.discardBytes);
    if (this.discardBytes > 0) return false;
    this.state = RequestState.requestHeader;
    return true;
  }

  // ---- Backend ----

  // Starts the backend on a valid request; zero-length requests succeed at once.
  private dispatch(slot: Slot): void {
    if (slot.lengthBytes === 0 && slot.type !== Cmd.flush) {
      this.replySuccess(slot, undefined);
      return;
    }
    this.backendRequests++;
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
    const b = this.backend;
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

  // Only the first settlement counts (a backend's thenable might call back twice).
  completed(slot: Slot, value: unknown): void {
    if (slot.state !== SlotState.backend) return;
    this.backendRequests--;
    this.returnPayload(slot);
    this.replySuccess(slot, value);
    this.owner.maybeFinish();
  }

  failed(slot: Slot, err: unknown): void {
    if (slot.state !== SlotState.backend) return;
    this.backendRequests--;
    this.returnPayload(slot);
    const errno = errnoOf(err);
    const message = err instanceof Error ? err.message : String(err);
    if (errno === Errno.eio) this.log.warn({ err: message, command: commandName(slot.type) }, 'backend error');
    this.replyError(slot, errno, message);
    this.owner.maybeFinish();
  }

  // ---- Replies ----

  private replySuccess(slot: Slot, value: unknown): void {
    if (slot.type === Cmd.read) return this.replyRead(slot, value);
    if (slot.type === Cmd.blockStatus) return this.replyBlockStatus(slot, value);
    if (slot.type === Cmd.write) this.host.counters.bytesWritten += slot.lengthBytes;
    this.observe(slot, true);
    this.replies.simple(slot, Errno.ok);
  }

  private replyRead(slot: Slot, value: unknown): void {
    const data = slot.lengthBytes === 0 ? EMPTY : value;
    if (!(data instanceof Uint8Array) || data.byteLength !== slot.lengthBytes) {
      return this.replyError(slot, Errno.eio, `the backend returned ${describe(data)} for a read of ${slot.lengthBytes} bytes`);
    }
    this.host.counters.bytesRead += slot.lengthBytes;
    this.observe(slot, true);
    if (this.backend.readDone !== undefined && data.byteLength > 0) slot.readData = data;
    this.replies.read(slot, data);
  }

  private replyBlockStatus(slot: Slot, value: unknown): void {
    const extentsMax = (slot.flags & CmdFlag.reqOne) !== 0 ? 1 : EXTENTS_MAX;
    const merged = Array.isArray(value) ? mergeExtents(value as Extent[], slot.lengthBytes, extentsMax) : 'the backend returned no extent list';
    if (typeof merged === 'string') {
      this.log.warn({ err: merged }, 'backend error');
      return this.replyError(slot, Errno.eio, merged);
    }
    this.observe(slot, true);
    this.replies.blockStatus(slot, merged);
  }

  private replyError(slot: Slot, errno: Errno, message: string): void {
    this.host.counters.errors++;
    this.observe(slot, false);
    this.replies.error(slot, errno, message);
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

  // ---- Reply writer callbacks ----

  // The reply is written (or dropped with the connection): a READ's result
  // goes back to the backend, which may reuse its memory from now on.
  release(slot: Slot): void {
    const data = slot.readData;
    this.slots.release(slot);
    if (data === undefined) return;
    try {
      this.backend.readDone!(data);
    } catch (err) {
      this.log.error({ err: err instanceof Error ? err.message : String(err) }, 'backend readDone threw');
    }
  }

  // A pooled WRITE payload goes back once the backend has settled (the
  // backend contract: it does not keep the payload beyond that). Only then:
  // a payload never dispatched (the connection went away mid-payload) is
  // returned by abandonPayload.
  private returnPayload(slot: Slot): void {
    if (!slot.payloadPooled) return;
    slot.payloadPooled = false;
    const payload = slot.payload!;
    slot.payload = undefined;
    ioBuffers.give(payload);
  }

  repliesWritten(): void {
    this.owner.repliesWritten();
  }
}

function describe(value: unknown): string {
  if (value instanceof Uint8Array) return `${value.byteLength} bytes`;
  return value === null ? 'null' : typeof value;
}
