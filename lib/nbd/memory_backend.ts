// An in-memory NbdBackend for tests and demos. Sparse: storage is a map of
// 4 KiB pages, and a page is in one of three states, which block status
// reports:
//   absent       a hole: reads as zeros, nothing allocated (HOLE|ZERO)
//   ZERO_PAGE    allocated and known to be zeros, after NO_HOLE zeroing (ZERO)
//   a Buffer     data (0)
// Trim and zeroing punch whole pages and zero the partial edges. A read
// within one page returns a view of it without copying (callers must not
// modify what read() returns); such a page is then never modified in place:
// the next write to it stores a new page. Every operation is checked as a real backend would (codes
// as in backend.ts), and an optional hook runs before each one so tests can
// delay, gate or fail it.
import type { Extent, NbdBackend, ZeroOptions } from './backend';

export type MemoryOp = 'read' | 'write' | 'flush' | 'trim' | 'writeZeroes' | 'cache' | 'blockStatus';

export interface MemoryBackendOptions {
  sizeBytes: number;
  readOnly?: boolean;
  // Runs before each operation: return a promise to delay it, throw or reject to fail it.
  beforeOp?: (op: MemoryOp, offsetBytes: number, lengthBytes: number) => void | Promise<void>;
}

export const MEMORY_PAGE_BYTES = 4096;
// Block status stops short after this many extents (the server asks again).
const EXTENTS_MAX = 1 << 16;
const ZERO_PAGE = null;
type Page = Buffer | typeof ZERO_PAGE;
// What a read of a page that holds no data returns a view of.
const ZEROES = Buffer.alloc(MEMORY_PAGE_BYTES);

export class MemoryBackend implements NbdBackend {
  readonly sizeBytes: number;
  readonly readOnly: boolean;
  // Operations started, per kind (for tests).
  readonly calls: Record<MemoryOp, number> = { read: 0, write: 0, flush: 0, trim: 0, writeZeroes: 0, cache: 0, blockStatus: 0 };
  private readonly pages = new Map<number, Page>();
  // Pages a read has returned a view of: copied before they change.
  private readonly lent = new Set<number>();
  private readonly beforeOp: MemoryBackendOptions['beforeOp'];

  constructor(options: MemoryBackendOptions) {
    if (!Number.isSafeInteger(options.sizeBytes) || options.sizeBytes < 0) {
      throw new RangeError(`sizeBytes ${options.sizeBytes} must be a non-negative safe integer`);
    }
    this.sizeBytes = options.sizeBytes;
    this.readOnly = options.readOnly === true;
    this.beforeOp = options.beforeOp;
  }

  // Pages holding data or allocated zeros (for tests).
  get allocatedPages(): number {
    return this.pages.size;
  }

  read(offsetBytes: number, lengthBytes: number): Promise<Uint8Array> {
    return this.run('read', offsetBytes, lengthBytes, false, () => this.readNow(offsetBytes, lengthBytes));
  }

  write(offsetBytes: number, data: Uint8Array, _fua: boolean): Promise<void> {
    return this.run('write', offsetBytes, data.byteLength, true, () => this.writeNow(offsetBytes, data));
  }

  flush(): Promise<void> {
    return this.run('flush', 0, 0, false, () => undefined);
  }

  trim(offsetBytes: number, lengthBytes: number, _fua: boolean): Promise<void> {
    return this.run('trim', offsetBytes, lengthBytes, true, () => this.zeroRange(offsetBytes, lengthBytes, false));
  }

  writeZeroes(offsetBytes: number, lengthBytes: number, options: ZeroOptions): Promise<void> {
    const noHole = options.noHole;
    return this.run('writeZeroes', offsetBytes, lengthBytes, true, () => this.zeroRange(offsetBytes, lengthBytes, noHole));
  }

  cache(offsetBytes: number, lengthBytes: number): Promise<void> {
    return this.run('cache', offsetBytes, lengthBytes, false, () => undefined);
  }

  blockStatus(offsetBytes: number, lengthBytes: number): Promise<Extent[]> {
    return this.run('blockStatus', offsetBytes, lengthBytes, false, () => this.extentsNow(offsetBytes, lengthBytes));
  }

  private readNow(offsetBytes: number, lengthBytes: number): Buffer {
    const index = Math.floor(offsetBytes / MEMORY_PAGE_BYTES);
    const pageAt = offsetBytes - index * MEMORY_PAGE_BYTES;
    if (pageAt + lengthBytes <= MEMORY_PAGE_BYTES) {
      const page = this.pages.get(index);
      if (!page) return ZEROES.subarray(pageAt, pageAt + lengthBytes);
      this.lent.add(index);
      return page.subarray(pageAt, pageAt + lengthBytes);
    }
    const out = Buffer.allocUnsafe(lengthBytes);
    this.forEachPage(offsetBytes, lengthBytes, (i, at, outAt, n) => {
      const page = this.pages.get(i);
      if (page) out.set(n === MEMORY_PAGE_BYTES ? page : page.subarray(at, at + n), outAt);
      else out.fill(0, outAt, outAt + n);
    });
    return out;
  }

  private writeNow(offsetBytes: number, data: Uint8Array): void {
    this.forEachPage(offsetBytes, data.byteLength, (index, pageAt, dataAt, n) => {
      this.writablePage(index, n).set(data.subarray(dataAt, dataAt + n), pageAt);
    });
  }

  // Page `index`, ready to take `n` bytes in place: a new page if it had none
  // or lent it out (with the old bytes, unless all of them are overwritten).
  private writablePage(index: number, n: number): Buffer {
    const old = this.pages.get(index);
    if (old && !this.lent.has(index)) return old;
    const page = Buffer.allocUnsafeSlow(MEMORY_PAGE_BYTES);
    if (n !== MEMORY_PAGE_BYTES) {
      if (old) page.set(old);
      else page.fill(0);
    }
    this.lent.delete(index);
    this.pages.set(index, page);
    return page;
  }

  private extentsNow(offsetBytes: number, lengthBytes: number): Extent[] {
    const extents: Extent[] = [];
    this.forEachPage(offsetBytes, lengthBytes, (index, _pageAt, _at, n) => {
      if (extents.length === EXTENTS_MAX) return false;
      const page = this.pages.get(index);
      const hole = page === undefined;
      const zero = page === undefined || page === ZERO_PAGE;
      const last = extents[extents.length - 1];
      if (last !== undefined && last.hole === hole && last.zero === zero) last.lengthBytes += n;
      else extents.push({ lengthBytes: n, hole, zero });
      return true;
    });
    return extents;
  }

  // Whole pages become holes (or allocated zeros with noHole); edges are zeroed.
  private zeroRange(offsetBytes: number, lengthBytes: number, noHole: boolean): void {
    this.forEachPage(offsetBytes, lengthBytes, (index, pageAt, _at, n) => {
      const page = this.pages.get(index);
      if (n === MEMORY_PAGE_BYTES) {
        if (noHole) this.pages.set(index, ZERO_PAGE);
        else this.pages.delete(index);
        this.lent.delete(index);
      } else if (page) {
        this.writablePage(index, n).fill(0, pageAt, pageAt + n);
      } else if (page === undefined && noHole) {
        this.pages.set(index, ZERO_PAGE);
      }
    });
  }

  // Calls fn for each page piece of [offset, offset+length): page index,
  // offset in the page, offset in the range, bytes. fn returns false to stop.
  private forEachPage(offsetBytes: number, lengthBytes: number, fn: (index: number, pageAt: number, at: number, n: number) => boolean | void): void {
    let at = 0;
    while (at < lengthBytes) {
      const position = offsetBytes + at;
      const index = Math.floor(position / MEMORY_PAGE_BYTES);
      const pageAt = position - index * MEMORY_PAGE_BYTES;
      const n = Math.min(MEMORY_PAGE_BYTES - pageAt, lengthBytes - at);
      if (fn(index, pageAt, at, n) === false) return;
      at += n;
    }
  }

  // Checks and runs an operation; without a hook it completes synchronously
  // and the promise is already settled.
  private run<T>(op: MemoryOp, offsetBytes: number, lengthBytes: number, writes: boolean, fn: () => T): Promise<T> {
    this.calls[op]++;
    const hook = this.beforeOp;
    if (hook === undefined) {
      try {
        this.check(op, offsetBytes, lengthBytes, writes);
        return Promise.resolve(fn());
      } catch (err) {
        return Promise.reject(err);
      }
    }
    return (async () => {
      await hook(op, offsetBytes, lengthBytes);
      this.check(op, offsetBytes, lengthBytes, writes);
      return fn();
    })();
  }

  private check(op: MemoryOp, offsetBytes: number, lengthBytes: number, writes: boolean): void {
    if (writes && this.readOnly) throw codeError('ERR_READ_ONLY', `${op} on a read-only backend`);
    if (!Number.isSafeInteger(offsetBytes) || offsetBytes < 0) throw codeError('ERR_BAD_OFFSET', `offset ${offsetBytes}`);
    if (!Number.isSafeInteger(lengthBytes) || lengthBytes < 0) throw codeError('ERR_BAD_LENGTH', `length ${lengthBytes}`);
    if (offsetBytes + lengthBytes > this.sizeBytes) {
      throw codeError('ERR_OUT_OF_RANGE', `bytes ${offsetBytes}+${lengthBytes} lie beyond the end (${this.sizeBytes} bytes)`);
    }
  }
}

function codeError(code: string, message: string): Error {
  return Object.assign(new Error(message), { code });
}
