// Large I/O buffers kept for reuse: NBD WRITE payloads that span input
// chunks and the results of large reads. A fresh Buffer per request of a
// megabyte is a fresh mmap, faulted in page by page, and at hundreds per
// second its external memory has V8 run a mark-compact every few hundred
// milliseconds: profiled, 1 MiB reads spent about half their CPU in the
// collector and the page faults.
//
// Buffers come in power-of-two classes from minBytes to maxBytes; take()
// hands out a view of exactly the length asked for, give() takes back a
// view take() returned. Idle buffers are kept up to idleBytesMax; beyond
// that, and for anything never given back, the collector frees them as
// before. A buffer must be given back only once nothing else uses it: the
// pool hands it to the next taker at once.
export class BufferPool {
  private readonly idle = new Map<number, ArrayBuffer[]>(); // class bytes → idle buffers
  private readonly isIdle = new WeakSet<ArrayBuffer>();
  private readonly owned = new WeakSet<ArrayBuffer>();
  private idleBytes = 0;

  constructor(
    readonly minBytes: number,
    readonly maxBytes: number,
    readonly idleBytesMax: number,
  ) {
    if (!isPowerOfTwo(minBytes) || !isPowerOfTwo(maxBytes) || minBytes > maxBytes) {
      throw new RangeError(`minBytes and maxBytes must be powers of two, minBytes <= maxBytes (got ${minBytes}, ${maxBytes})`);
    }
  }

  // Bytes held by idle buffers.
  get idleBytesHeld(): number {
    return this.idleBytes;
  }

  // A buffer of lengthBytes from the pool, or undefined when lengthBytes is
  // outside [minBytes, maxBytes] (the caller allocates as it would have).
  take(lengthBytes: number): Buffer | undefined {
    if (!(lengthBytes >= this.minBytes && lengthBytes <= this.maxBytes)) return undefined;
    const classBytes = classOf(lengthBytes);
    const ab = this.idle.get(classBytes)?.pop();
    if (ab !== undefined) {
      this.isIdle.delete(ab);
      this.idleBytes -= classBytes;
      return Buffer.from(ab, 0, lengthBytes);
    }
    const fresh = Buffer.allocUnsafeSlow(classBytes);
    this.owned.add(fresh.buffer);
    return fresh.subarray(0, lengthBytes);
  }

  // Takes back a view take() returned; anything else (and a buffer already
  // idle) is left to the collector. False when it was not kept.
  give(view: Uint8Array): boolean {
    const ab = view.buffer;
    if (!(ab instanceof ArrayBuffer) || view.byteOffset !== 0 || !this.owned.has(ab) || this.isIdle.has(ab)) return false;
    const classBytes = ab.byteLength;
    if (this.idleBytes + classBytes > this.idleBytesMax) return false;
    let list = this.idle.get(classBytes);
    if (list === undefined) {
      list = [];
      this.idle.set(classBytes, list);
    }
    list.push(ab);
    this.isIdle.add(ab);
    this.idleBytes += classBytes;
    return true;
  }
}

function isPowerOfTwo(n: number): boolean {
  return Number.isInteger(n) && n > 0 && 2 ** Math.round(Math.log2(n)) === n;
}

// The smallest power of two >= n.
function classOf(n: number): number {
  return 2 ** Math.ceil(Math.log2(n));
}

// The process's pool for NBD payloads and large read results: 64 KiB to
// 32 MiB (NBD's largest request), at most 64 MiB idle.
export const ioBuffers = new BufferPool(64 << 10, 32 << 20, 64 << 20);
