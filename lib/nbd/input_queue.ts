// Received input as a queue of chunks, in order, never re-concatenated.
//
// Fixed-size headers are read with peek(): a view of the head chunk when it
// holds them, else a copy into a small scratch buffer the queue owns (a
// header split across chunks is rare). Payloads are taken as a view of one
// chunk when it holds them (view) or copied into the caller's buffer as they
// arrive (take). Consumed chunks are dropped from the front; the array is
// compacted every PACK_CHUNKS so a long-lived connection does not grow it.

// Consumed chunks kept at the front of the array before it is compacted.
const PACK_CHUNKS = 64;

export class InputQueue {
  // Bytes received and not yet consumed.
  bytes = 0;
  // Where peek() put the bytes it returns, in the buffer it returned.
  peekAt = 0;
  private chunks: Buffer[] = [];
  private first = 0;
  private offset = 0;
  private readonly scratch: Buffer;

  // `peekBytesMax`: the largest header peek() is asked for.
  constructor(peekBytesMax: number) {
    this.scratch = Buffer.allocUnsafe(peekBytesMax);
  }

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.bytes += chunk.length;
  }

  // `n` contiguous bytes at peekAt of the result (the head chunk, or a copy
  // in scratch), without consuming them. The caller has checked `bytes >= n`.
  peek(n: number): Buffer {
    const head = this.chunks[this.first]!;
    if (head.length - this.offset >= n) {
      this.peekAt = this.offset;
      return head;
    }
    if (n > this.scratch.length) throw new Error(`peek of ${n} bytes, scratch holds ${this.scratch.length}`);
    this.copyOut(this.scratch, 0, n);
    this.peekAt = 0;
    return this.scratch;
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
    } else if (this.first >= PACK_CHUNKS) {
      this.chunks.splice(0, this.first);
      this.first = 0;
    }
  }
}
