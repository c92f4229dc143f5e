// Received bytes as a queue of chunks, in arrival order, never re-concatenated.
//
// take(n) hands out the next n bytes as a view of the head chunk when that
// chunk holds all of them (no copy), and copies only when they span chunks.
// Views alias the pushed chunks: a caller must not modify a chunk after
// pushing it. Consumed chunks are dropped from the front; the array is
// compacted every PACK_CHUNKS drops so a long-lived link does not grow it.
import { assert } from './assert';

// Dropped chunks left at the front of the array before it is compacted.
const PACK_CHUNKS = 64;

export class ChunkQueue {
  private chunks: Uint8Array[] = [];
  private first = 0; // index of the head chunk
  private offsetBytes = 0; // bytes already taken from the head chunk
  private queuedBytes = 0;

  get bytesQueued(): number {
    return this.queuedBytes;
  }

  push(chunk: Uint8Array): void {
    if (chunk.byteLength === 0) return;
    this.chunks.push(chunk);
    this.queuedBytes += chunk.byteLength;
  }

  // The next lengthBytes bytes, consumed: a view when one chunk holds them,
  // else a copy into `into` (when given; it must be long enough) or into a
  // new buffer of exactly lengthBytes.
  take(lengthBytes: number, into?: Uint8Array): Uint8Array {
    assert(lengthBytes <= this.queuedBytes, `take ${lengthBytes} of ${this.queuedBytes} queued bytes`);
    const head = this.chunks[this.first];
    if (head !== undefined && head.byteLength - this.offsetBytes >= lengthBytes) {
      const view = head.subarray(this.offsetBytes, this.offsetBytes + lengthBytes);
      this.consume(lengthBytes);
      return view;
    }
    const target = into === undefined ? Buffer.allocUnsafe(lengthBytes) : into.subarray(0, lengthBytes);
    assert(target.byteLength === lengthBytes, `scratch of ${into?.byteLength} bytes for ${lengthBytes}`);
    this.copyOut(target);
    this.consume(lengthBytes);
    return target;
  }

  clear(): void {
    this.chunks = [];
    this.first = 0;
    this.offsetBytes = 0;
    this.queuedBytes = 0;
  }

  private copyOut(target: Uint8Array): void {
    let index = this.first;
    let offsetBytes = this.offsetBytes;
    let copiedBytes = 0;
    while (copiedBytes < target.byteLength) {
      const chunk = this.chunks[index]!;
      const stepBytes = Math.min(target.byteLength - copiedBytes, chunk.byteLength - offsetBytes);
      target.set(chunk.subarray(offsetBytes, offsetBytes + stepBytes), copiedBytes);
      copiedBytes += stepBytes;
      index++;
      offsetBytes = 0;
    }
  }

  private consume(lengthBytes: number): void {
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
