// Arena slices with waiting: when the arena is exhausted, callers queue until
// a slice is freed instead of failing, so concurrent large reads and the
// flusher apply back-pressure rather than errors. A request larger than the
// whole JS region still fails at once (ERR_ARENA).
import { BlockwalError } from '../native/errors';
import type { ArenaSlice, Ring } from '../native/ring';

export class ArenaPool {
  private readonly waiting: { bytes: number; resolve: (s: ArenaSlice) => void; reject: (e: Error) => void }[] = [];

  constructor(private readonly ring: Ring) {}

  async alloc(bytes: number): Promise<ArenaSlice> {
    const now = this.tryAlloc(bytes);
    if (now !== undefined) return now;
    return new Promise<ArenaSlice>((resolve, reject) => this.waiting.push({ bytes, resolve, reject }));
  }

  free(slice: ArenaSlice): void {
    this.ring.free(slice);
    while (this.waiting.length > 0) {
      const next = this.waiting[0]!;
      const got = this.allocNow(next.bytes);
      if (got === undefined) return;
      this.waiting.shift();
      next.resolve(got);
    }
  }

  private tryAlloc(bytes: number): ArenaSlice | undefined {
    if (this.waiting.length > 0) return undefined; // keep FIFO order
    return this.allocNow(bytes);
  }

  private allocNow(bytes: number): ArenaSlice | undefined {
    try {
      return this.ring.alloc(bytes);
    } catch (err) {
      if (err instanceof BlockwalError && err.code === 'ERR_ARENA') {
        if (bytes > this.ring.arenaBytes - this.ring.info().reservedBytes) throw err;
        return undefined;
      }
      throw err;
    }
  }
}
