// Ordering for operations that read before they write.
//
// Appends reach the WAL in call order, so two plain writes to one block need
// no lock: the later call gets the later LSN. A read-modify-write (a sub-block
// write, or the partial edges of a trim) is different: it reads the block,
// then appends, and anything appended to that block in between would be lost
// under its stale read. So an operation waits for every earlier overlapping
// operation when either of them is a read-modify-write. And an operation that
// waits does not get its LSN at call time: a later overlapping one, plain or
// not, waits for it too (a whole-block write must not overtake a trim that
// waits behind a sub-block write). A registration is made synchronously at
// call time (that fixes the order) and released once the operation's records
// have their LSNs.

interface Held {
  readonly startBlock: number;
  readonly endBlock: number; // exclusive
  readonly rmw: boolean;
  readonly waits: boolean; // it waits for an earlier one: no LSN at call time
  readonly done: Promise<void>;
}

export interface Lock {
  // Undefined when nothing earlier conflicts: the caller may go on at once.
  readonly wait: Promise<void> | undefined;
  release(): void;
}

export class RangeLocks {
  private held: Held[] = [];

  get size(): number {
    return this.held.length;
  }

  // Whether an operation on [startBlock, endBlock) would have to wait.
  conflicts(startBlock: number, endBlock: number, rmw: boolean): boolean {
    for (const h of this.held) if (mustWait(h, startBlock, endBlock, rmw)) return true;
    return false;
  }

  acquire(startBlock: number, endBlock: number, rmw: boolean): Lock {
    const waits: Promise<void>[] = [];
    for (const h of this.held) if (mustWait(h, startBlock, endBlock, rmw)) waits.push(h.done);
    let resolve!: () => void;
    const done = new Promise<void>((r) => (resolve = r));
    const me: Held = { startBlock, endBlock, rmw, waits: waits.length > 0, done };
    this.held.push(me);
    let released = false;
    return {
      wait: waits.length === 0 ? undefined : Promise.all(waits).then(() => undefined),
      release: () => {
        if (released) return;
        released = true;
        this.held = this.held.filter((h) => h !== me);
        resolve();
      },
    };
  }
}

// Whether an operation on [startBlock, endBlock) called after h must wait for it.
function mustWait(h: Held, startBlock: number, endBlock: number, rmw: boolean): boolean {
  return h.startBlock < endBlock && startBlock < h.endBlock && (rmw || h.rmw || h.waits);
}
