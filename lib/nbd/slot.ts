// Requests in flight: one preallocated Slot per request a connection may
// hold, and the pool that admits requests against the connection's limits.
//
// A request holds its slot and its charge (data bytes) from the moment its
// header is parsed until its reply has been handed to the kernel, so replies
// the client does not read count against the limits. A new request is
// admitted while a slot is free and fewer than maxBytesInFlight bytes are
// held: one request of any size always fits, so held output is at most
// maxBytesInFlight plus one request.
//
// A slot goes free -> backend (take) -> replying (ReplyBatch.add) -> free
// (release). A slot whose request was refused goes free -> backend ->
// replying without reaching the backend.
import type { ZeroOptions } from './backend';
import type { ConnectionLimits, Counters } from './host';
import { Cmd, EXTENTS_MAX, PAYLOAD_BYTES_MAX, type RequestHeader } from './protocol';

// A block-status reply's worst case, charged against the bytes in flight.
const BLOCK_STATUS_CHARGE_BYTES = 24 + 8 * EXTENTS_MAX;

export enum SlotState {
  free,
  backend, // the backend is working on it (or it is being parsed or refused)
  replying, // its reply is queued on the output
}

// Where a slot's backend promise settles.
export interface SlotOwner {
  completed(slot: Slot, value: unknown): void;
  failed(slot: Slot, err: unknown): void;
}

// A request in flight. Preallocated, with its callbacks bound once, so the
// hot path allocates no closures.
export class Slot {
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
  // The payload came from the I/O buffer pool: back to it once the backend settles.
  payloadPooled = false;
  // A READ's result, handed back to the backend (readDone) once its reply is written.
  readData: Uint8Array | undefined = undefined;
  readonly zeroOptions: ZeroOptions = { fua: false, noHole: false, fastZero: false };
  readonly onValue: (value: unknown) => void;
  readonly onError: (err: unknown) => void;

  constructor(owner: SlotOwner) {
    this.onValue = (value) => owner.completed(this, value);
    this.onError = (err) => owner.failed(this, err);
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

// The slots of one connection and what they hold; mirrored in the server's
// gauges (Counters.requestsInFlight, bytesInFlight).
export class SlotPool {
  private readonly free: Slot[] = [];
  private requests = 0;
  private bytes = 0;

  constructor(
    private readonly counters: Counters,
    private readonly limits: ConnectionLimits,
    owner: SlotOwner,
  ) {
    for (let i = 0; i < limits.maxRequestsInFlight; i++) this.free.push(new Slot(owner));
  }

  get requestsInFlight(): number {
    return this.requests;
  }

  canAdmit(): boolean {
    return this.free.length > 0 && this.bytes < this.limits.maxBytesInFlight;
  }

  // A slot for a parsed header, charged; the caller has checked canAdmit().
  take(h: RequestHeader): Slot {
    const slot = this.free.pop()!;
    if (slot.state !== SlotState.free) throw new Error('a slot in use was on the free list');
    slot.assign(h);
    slot.state = SlotState.backend;
    slot.chargedBytes = chargeOf(h);
    this.requests++;
    this.bytes += slot.chargedBytes;
    this.counters.requestsInFlight++;
    this.counters.bytesInFlight += slot.chargedBytes;
    return slot;
  }

  // Frees a slot (its reply was written or dropped, or its payload never completed).
  release(slot: Slot): void {
    if (slot.state === SlotState.free) return;
    slot.state = SlotState.free;
    slot.payload = undefined;
    slot.payloadPooled = false;
    slot.readData = undefined;
    this.requests--;
    this.bytes -= slot.chargedBytes;
    this.counters.requestsInFlight--;
    this.counters.bytesInFlight -= slot.chargedBytes;
    slot.chargedBytes = 0;
    this.free.push(slot);
  }
}

// Oversized reads and writes are refused without a buffer: they cost nothing.
function chargeOf(h: RequestHeader): number {
  if (h.type === Cmd.read || h.type === Cmd.write) return h.lengthBytes <= PAYLOAD_BYTES_MAX ? h.lengthBytes : 0;
  return h.type === Cmd.blockStatus ? BLOCK_STATUS_CHARGE_BYTES : 0;
}
