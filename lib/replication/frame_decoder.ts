// Reads frames out of a replication link's byte stream.
//
// push() queues received chunks as they are (util/chunk_queue.ts); next() returns
// the next whole frame, or undefined while more bytes are needed. A header is
// checked as soon as its 32 bytes are in (frames.ts: checkFrameHeader), so an
// oversized or garbage length is refused before any of its body is buffered.
// A body that lies in one chunk is decoded in place, and its WAL records are
// views of that chunk; a body spanning chunks is copied once into a buffer of
// its own length. Callers must not modify a chunk after pushing it.
//
// Rule (poisoned): after a FrameError the stream has no trustworthy frame
// boundary left, so every later next() throws that same error and queued
// bytes are dropped; the shell closes the link.
//
// bytesQueued lets the shell stop reading from the socket while too much
// input waits (back-pressure stays with the shell).
//
// Large BASE_CHUNK bodies (BODY_POOL_MIN_BYTES..BODY_POOL_BUFFER_BYTES) are
// copied into buffers the decoder lends out (other frames get a buffer of
// their own size: nothing hands a WAL_RECORDS body back). A
// caller done with every view of a frame's body hands it back with
// release() and the next large frame reuses it: a rebuild then moves its
// data through a few buffers instead of a fresh megabyte per chunk (each a
// new mapping to fault in and, off the V8 heap, a push towards a full GC). A
// body never released is an ordinary buffer the GC reclaims.
import { ChunkQueue } from '../util/chunk_queue';
import {
  checkFrameHeader,
  decodeFrameBody,
  FRAME_BODY_BYTES_FLOOR,
  FRAME_BODY_BYTES_MAX,
  FRAME_HEADER_BYTES,
  FrameError,
  type Frame,
  type FrameHeader,
} from './frames';

export interface FrameDecoderOptions {
  // A lower body limit than FRAME_BODY_BYTES_MAX, at least
  // FRAME_BODY_BYTES_FLOOR (one maximal WAL record must always fit).
  bodyBytesMax?: number;
}

// Bodies lent out: at least this large, at most the buffers' size.
export const BODY_POOL_MIN_BYTES = 256 << 10;
export const BODY_POOL_BUFFER_BYTES = (2 << 20) + 4096;
// Buffers kept for reuse (at most 64 MiB, while large frames keep coming:
// trimPool() lets them go once they stop).
const BODY_POOL_FREE_MAX = 32;

export class FrameDecoder {
  readonly bodyBytesMax: number;
  private readonly queue = new ChunkQueue();
  // Body buffers lent out (by their memory), and those handed back.
  private readonly lent = new WeakSet<ArrayBufferLike>();
  private readonly free: Buffer[] = [];
  private lentSinceTrim = false;
  // Where a header split across chunks is gathered; reused for every frame
  // (a frame's header is no longer needed once its body is decoded).
  private readonly headerScratch = new Uint8Array(FRAME_HEADER_BYTES);
  private header: FrameHeader | undefined;
  private poison: FrameError | undefined;

  constructor(options: FrameDecoderOptions = {}) {
    const bodyBytesMax = options.bodyBytesMax ?? FRAME_BODY_BYTES_MAX;
    if (!Number.isSafeInteger(bodyBytesMax) || bodyBytesMax < FRAME_BODY_BYTES_FLOOR || bodyBytesMax > FRAME_BODY_BYTES_MAX) {
      throw new RangeError(`bodyBytesMax must be in [${FRAME_BODY_BYTES_FLOOR}, ${FRAME_BODY_BYTES_MAX}], got ${bodyBytesMax}`);
    }
    this.bodyBytesMax = bodyBytesMax;
  }

  get bytesQueued(): number {
    return this.queue.bytesQueued;
  }

  // The error that poisoned the decoder, if any.
  get error(): FrameError | undefined {
    return this.poison;
  }

  push(chunk: Uint8Array): void {
    if (!(chunk instanceof Uint8Array)) throw new TypeError('chunk must be a Buffer or Uint8Array');
    if (this.poison !== undefined) return; // the link is closing; keep nothing
    this.queue.push(chunk);
  }

  next(): Frame | undefined {
    if (this.poison !== undefined) throw this.poison;
    try {
      return this.step();
    } catch (err) {
      if (err instanceof FrameError) {
        this.poison = err;
        this.header = undefined;
        this.queue.clear();
      }
      throw err;
    }
  }

  private step(): Frame | undefined {
    if (this.header === undefined) {
      if (this.queue.bytesQueued < FRAME_HEADER_BYTES) return undefined;
      this.header = checkFrameHeader(this.queue.take(FRAME_HEADER_BYTES, this.headerScratch), this.bodyBytesMax);
    }
    const header = this.header;
    if (this.queue.bytesQueued < header.bodyBytes) return undefined;
    this.header = undefined;
    const scratch = header.type === 'base_chunk' ? this.lend(header.bodyBytes) : undefined;
    const body = this.queue.take(header.bodyBytes, scratch);
    // In one chunk: decoded in place, the buffer not needed.
    if (scratch !== undefined && body.buffer !== scratch.buffer) this.release(scratch);
    return decodeFrameBody(header, body);
  }

  // A buffer for a large body (take() uses it only when the body spans
  // chunks); undefined for small ones.
  private lend(bodyBytes: number): Uint8Array | undefined {
    if (bodyBytes < BODY_POOL_MIN_BYTES || bodyBytes > BODY_POOL_BUFFER_BYTES) return undefined;
    const buffer = this.free.pop() ?? Buffer.allocUnsafeSlow(BODY_POOL_BUFFER_BYTES);
    this.lent.add(buffer.buffer);
    this.lentSinceTrim = true;
    return buffer;
  }

  // Called now and then (the link's heartbeat timer): drops the buffers
  // kept for reuse when no large frame came since the last call.
  trimPool(): void {
    if (!this.lentSinceTrim) this.free.length = 0;
    this.lentSinceTrim = false;
  }

  // Buffers kept for reuse now.
  get pooledBuffers(): number {
    return this.free.length;
  }

  // The caller holds no view of this frame body any more (any view of it
  // will do): its buffer may carry the next large frame. Anything else, or a
  // second release, is ignored.
  release(view: Uint8Array): void {
    const memory = view.buffer;
    if (!this.lent.delete(memory)) return;
    if (this.free.length < BODY_POOL_FREE_MAX) this.free.push(Buffer.from(memory, 0, BODY_POOL_BUFFER_BYTES));
  }
}
