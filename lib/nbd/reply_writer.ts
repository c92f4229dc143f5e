// Transmission replies on the wire: simple replies or structured chunks,
// batched per tick.
//
// Replies go out as requests finish (out of order). Those ready in one tick
// form a batch: headers and small data are copied into a reused arena,
// large data follows by reference, and the batch is written with one
// callback (corked when it has several pieces). That callback frees every
// slot of the batch: a request counts against the limits until the kernel
// has taken its reply. A batch whose arena fills is written at once; the
// last one at the end of the tick. Once the connection is closed a batch is
// dropped rather than written, and its slots are freed all the same.
//
// With structured replies a READ of zeros (without DF) goes out as one
// OFFSET_HOLE chunk, a READ of 0 bytes as NONE, and every error as an ERROR
// chunk carrying the message.
import type { Writable } from 'node:stream';

import {
  ALLOCATION_CONTEXT_ID,
  CHUNK_HEADER_BYTES,
  CmdFlag,
  DATA_CHUNK_HEADER_BYTES,
  encodeBlockStatusChunk,
  encodeDataChunkHeader,
  encodeErrorChunk,
  encodeHoleChunk,
  encodeNoneChunk,
  encodeSimpleReply,
  Errno,
  HOLE_CHUNK_BYTES,
  SIMPLE_REPLY_BYTES,
  type StatusExtents,
} from './protocol';
import { type Slot, SlotState } from './slot';

// Reply batches: arena size, data copied rather than referenced, batches kept for reuse.
const ARENA_BYTES = 128 * 1024;
const COPY_BYTES_MAX = 16 * 1024;
const SPARE_BATCHES_MAX = 2;
// Reads of all zeros go out as an OFFSET_HOLE chunk; compared against this.
const ZEROES = Buffer.alloc(64 * 1024);

// What the writer needs from the transmission it serves.
export interface ReplyWriterOwner {
  // The connection is torn down: batches are dropped, not written.
  readonly isClosed: boolean;
  // A batch was written or dropped: its slots are free again.
  release(slot: Slot): void;
  // Called after each batch's slots were released.
  repliesWritten(): void;
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

  constructor(writer: ReplyWriter) {
    this.onWritten = () => writer.batchWritten(this);
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

export class ReplyWriter {
  private batch: ReplyBatch | undefined;
  private readonly spareBatches: ReplyBatch[] = [];
  private flushScheduled = false;

  constructor(
    private readonly output: Writable,
    private readonly structuredReplies: boolean,
    private readonly owner: ReplyWriterOwner,
  ) {}

  // A reply without data (success of anything but READ and BLOCK_STATUS,
  // or an error without structured replies).
  simple(slot: Slot, errno: Errno): void {
    const b = this.batchWithRoom(SIMPLE_REPLY_BYTES);
    b.used += encodeSimpleReply(b.arena, b.used, errno, slot.cookieHi, slot.cookieLo);
    b.add(slot);
  }

  // A successful READ; `data` holds slot.lengthBytes bytes and is not modified.
  read(slot: Slot, data: Uint8Array): void {
    if (!this.structuredReplies) return this.withData(slot, SIMPLE_REPLY_BYTES, data);
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
    this.withData(slot, DATA_CHUNK_HEADER_BYTES, data);
  }

  blockStatus(slot: Slot, extents: StatusExtents): void {
    this.encoded(slot, encodeBlockStatusChunk(slot.cookieHi, slot.cookieLo, ALLOCATION_CONTEXT_ID, extents));
  }

  // Structured replies carry the message in an ERROR chunk (READ must get one).
  error(slot: Slot, errno: Errno, message: string): void {
    if (this.structuredReplies) this.encoded(slot, encodeErrorChunk(errno, slot.cookieHi, slot.cookieLo, message));
    else this.simple(slot, errno);
  }

  // Writes this tick's batch now (the connection is ending).
  flush(): void {
    if (this.batch !== undefined) this.writeBatch(this.batch);
  }

  // The output has taken (or dropped) a batch: its slots are free again.
  batchWritten(b: ReplyBatch): void {
    for (const slot of b.slots) this.owner.release(slot);
    b.reset();
    if (this.spareBatches.length < SPARE_BATCHES_MAX) this.spareBatches.push(b);
    this.owner.repliesWritten();
  }

  // A simple reply or a data chunk header, then the data: copied when
  // small, else written by reference after the header.
  private withData(slot: Slot, headerBytes: number, data: Uint8Array): void {
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

  // A reply encoded on its own: copied when small, else by reference.
  private encoded(slot: Slot, reply: Buffer): void {
    if (reply.length > COPY_BYTES_MAX) {
      this.batchWithRoom(0).addReference(reply);
    } else {
      const b = this.batchWithRoom(reply.length);
      b.used += reply.copy(b.arena, b.used);
    }
    this.batch!.add(slot);
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
      process.nextTick(this.onTickEnd);
    }
    return b;
  }

  private readonly onTickEnd = (): void => {
    this.flushScheduled = false;
    this.flush();
  };

  private writeBatch(b: ReplyBatch): void {
    if (this.batch === b) this.batch = undefined;
    if (this.owner.isClosed) return this.batchWritten(b);
    const pieces = b.close();
    const last = pieces.length - 1;
    if (last > 0) this.output.cork();
    for (let i = 0; i < last; i++) this.output.write(pieces[i]);
    this.output.write(pieces[last], b.onWritten);
    if (last > 0) this.output.uncork();
  }
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
