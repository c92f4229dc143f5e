// Received bytes as a queue of chunks, in arrival order.
//
// Rule: never re-concatenate the whole input. Bytes are handed out as a view
// of the head chunk when that chunk holds all of them (no copy), and copied
// only when they span chunks, into a buffer the caller names (takeInto, take
// with `into`), into the peek scratch the queue owns (peek), or, for take
// without `into`, into a new buffer of exactly the bytes asked for.
//
// Views alias the pushed chunks: a caller must not modify a chunk after
// pushing it. Consumed chunks are dropped from the front; the array is
// compacted every PACK_CHUNKS drops so a long-lived connection or link does
// not grow it. `Chunk` is Buffer for NBD (views keep Buffer's readers) and
// Uint8Array for replication; subarray() keeps the chunk's type.
import { assert } from './assert';

// Dropped chunks left at the front of the array before it is compacted.
const PACK_CHUNKS = 64;

export class ChunkQueue<Chunk extends Uint8Array = Uint8Array> {
  // Where peek() put the bytes it returns, in the buffer it returned.
  peekOffsetBytes = 0;
  private chunks: Chunk[] = [];
  private first = 0; // index of the head chunk
  private offsetBytes = 0; // bytes already consumed from the head chunk
  private queuedBytes = 0;

  // `peekScratch`: where peek() gathers a header split across chunks; its
  // length is the largest peek allowed. Without it, peek() of split bytes fails.
  constructor(private readonly peekScratch?: Chunk) {}

  get bytesQueued(): number {
    return this.queuedBytes;
  }

  push(chunk: Chunk): void {
    if (chunk.byteLength === 0) return;
    this.chunks.push(chunk);
    this.queuedBytes += chunk.byteLength;
  }

  // lengthBytes contiguous bytes at peekOffsetBytes of the result (the head
  // chunk, or a copy in the peek scratch), not consumed.
  peek(lengthBytes: number): Chunk {
    assert(lengthBytes <= this.queuedBytes, `peek ${lengthBytes} of ${this.queuedBytes} queued bytes`);
    const head = this.chunks[this.first]!;
    if (head.byteLength - this.offsetBytes >= lengthBytes) {
      this.peekOffsetBytes = this.offsetBytes;
      return head;
    }
    const scratch = this.peekScratch;
    assert(scratch !== undefined && lengthBytes <= scratch.byteLength, `peek of ${lengthBytes} bytes, scratch holds ${scratch?.byteLength ?? 0}`);
    this.copyOut(scratch, 0, lengthBytes);
    this.peekOffsetBytes = 0;
    return scratch;
  }

  // The next lengthBytes bytes, consumed, as a view when one chunk holds
  // them; else undefined and nothing is consumed.
  view(lengthBytes: number): Chunk | undefined {
    const head = this.chunks[this.first];
    if (head === undefined || head.byteLength - this.offsetBytes < lengthBytes) return undefined;
    const view = head.subarray(this.offsetBytes, this.offsetBytes + lengthBytes) as Chunk;
    this.consume(lengthBytes);
    return view;
  }

  // The next lengthBytes bytes, consumed: a view when one chunk holds them,
  // else a copy into `into` (when given; it must be long enough) or into a
  // new buffer of exactly lengthBytes.
  take(lengthBytes: number, into?: Uint8Array): Uint8Array {
    assert(lengthBytes <= this.queuedBytes, `take ${lengthBytes} of ${this.queuedBytes} queued bytes`);
    const view = this.view(lengthBytes);
    if (view !== undefined) return view;
    const target = into === undefined ? Buffer.allocUnsafe(lengthBytes) : into.subarray(0, lengthBytes);
    assert(target.byteLength === lengthBytes, `scratch of ${into?.byteLength} bytes for ${lengthBytes}`);
    this.copyOut(target, 0, lengthBytes);
    this.consume(lengthBytes);
    return target;
  }

  // Moves up to target.byteLength - atBytes queued bytes into target at
  // atBytes, consumed; returns how many (fewer while input is still coming).
  takeInto(target: Uint8Array, atBytes: number): number {
    const lengthBytes = Math.min(this.queuedBytes, target.byteLength - atBytes);
    this.copyOut(target, atBytes, lengthBytes);
    this.consume(lengthBytes);
    return lengthBytes;
  }

  // Drops up to lengthBytes queued bytes; returns how many.
  skip(lengthBytes: number): number {
    const skippedBytes = Math.min(lengthBytes, this.queuedBytes);
    this.consume(skippedBytes);
    return skippedBytes;
  }

  consume(lengthBytes: number): void {
    assert(lengthBytes <= this.queuedBytes, `consume ${lengthBytes} of ${this.queuedBytes} queued bytes`);
    this.queuedBytes -= lengthBytes;
    let leftBytes = lengthBytes;
    while (leftBytes > 0) {
      const head = this.chunks[this.first]!;
      const stepBytes = Math.min(leftBytes, head.byteLength - this.offsetBytes);
      this.offsetBytes += stepBytes;
      leftBytes -= stepBytes;
      if (this.offsetBytes === head.byteLength) this.dropHead();
    }
  }

  clear(): void {
    this.chunks = [];
    this.first = 0;
    this.offsetBytes = 0;
    this.queuedBytes = 0;
  }

  private copyOut(target: Uint8Array, atBytes: number, lengthBytes: number): void {
    let index = this.first;
    let offsetBytes = this.offsetBytes;
    let copiedBytes = 0;
    while (copiedBytes < lengthBytes) {
      const chunk = this.chunks[index]!;
      const stepBytes = Math.min(lengthBytes - copiedBytes, chunk.byteLength - offsetBytes);
      target.set(chunk.subarray(offsetBytes, offsetBytes + stepBytes), atBytes + copiedBytes);
      copiedBytes += stepBytes;
      index++;
      offsetBytes = 0;
    }
  }

  private dropHead(): void {
    this.first++;
    this.offsetBytes = 0;
    if (this.first === this.chunks.length) {
      this.chunks.length = 0;
      this.first = 0;
    } else if (this.first >= PACK_CHUNKS) {
      this.chunks.splice(0, this.first);
      this.first = 0;
    }
  }
}
