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
// before. Once nothing has been taken for idleMs, the idle buffers go too: a
// burst of large I/O does not leave its buffers held for good. A buffer must
// be given back only once nothing else uses it: the pool hands it to the
// next taker at once.
export class BufferPool {
  private readonly idle = new Map<number, ArrayBuffer[]>(); // class bytes → idle buffers
  private readonly isIdle = new WeakSet<ArrayBuffer>();
  private readonly owned = new WeakSet<ArrayBuffer>();
  private idleBytes = 0;
  private takes = 0;
  private trimTimer: NodeJS.Timeout | undefined;

  constructor(
    readonly minBytes: number,
    readonly maxBytes: number,
    readonly idleBytesMax: number,
    readonly idleMs = 10_000,
  ) {
    if (!isPowerOfTwo(minBytes) || !isPowerOfTwo(maxBytes) || minBytes > maxBytes) {
      throw new RangeError(`minBytes and maxBytes must be powers of two, minBytes <= maxBytes (got ${minBytes}, ${maxBytes})`);
    }
    if (!(idleMs > 0)) throw new RangeError(`idleMs must be positive, got ${idleMs}`);
  }

  // Bytes held by idle buffers.
  get idleBytesHeld(): number {
    return this.idleBytes;
  }

  // A buffer of lengthBytes from the pool, or undefined when lengthBytes is
  // outside [minBytes, maxBytes] (the caller allocates as it would have).
  take(lengthBytes: number): Buffer | undefined {
    if (!(lengthBytes >= this.minBytes && lengthBytes <= this.maxBytes)) return undefined;
    this.takes++;
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
    this.armTrim();
    return true;
  }

  // Lets every idle buffer go (the collector frees it).
  trim(): void {
    for (const list of this.idle.values()) {
      for (const ab of list) {
        this.isIdle.delete(ab);
        this.owned.delete(ab);
      }
    }
    this.idle.clear();
    this.idleBytes = 0;
  }

  // Trims once a whole idleMs passes without a take(); the timer does not
  // keep the process alive.
  private armTrim(): void {
    if (this.trimTimer !== undefined) return;
    const takes = this.takes;
    this.trimTimer = setTimeout(() => {
      this.trimTimer = undefined;
      if (this.takes === takes) this.trim();
      else if (this.idleBytes > 0) this.armTrim();
    }, this.idleMs);
    this.trimTimer.unref();
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
// 32 MiB (NBD's largest request), at most 64 MiB idle, let go after 10 s
// without large I/O.
export const ioBuffers = new BufferPool(64 << 10, 32 << 20, 64 << 20);
