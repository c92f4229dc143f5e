// A TCP relay on 127.0.0.1 between a primary and one replica, for link
// faults under load: the primary dials the relay's address, the relay dials
// the replica's. It can cut every connection through it (both ends reset),
// flip one byte of the next chunk going one way, or stall: forward nothing
// for a while with both connections left open, as a link that stops
// delivering without closing does.
import * as assert from 'node:assert/strict';
import * as net from 'node:net';

import { parseHostPort } from '../../lib/cli/args';

export type LinkDirection = 'to_replica' | 'to_primary';

interface Pair {
  readonly primary: net.Socket; // the end the primary dialled
  readonly replica: net.Socket; // the relay's own connection to the replica
  readonly closed: Promise<void>;
}

interface Corruption {
  readonly direction: LinkDirection;
  readonly at: number; // in [0, 1): which byte of the chunk, as a fraction of its length
  readonly hit: (pair: Pair) => void;
}

export class LinkProxy {
  private readonly pairs = new Set<Pair>();
  private stalled = false;
  private corruption: Corruption | undefined;

  private constructor(
    private readonly server: net.Server,
    // Where the replica listens now (a replica keeps its port across restarts).
    private readonly target: () => string,
  ) {}

  static async start(target: () => string): Promise<LinkProxy> {
    const server = net.createServer();
    const proxy = new LinkProxy(server, target);
    server.on('connection', (socket) => proxy.accept(socket));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, '127.0.0.1', () => resolve());
    });
    return proxy;
  }

  // What the primary's --replica names.
  get address(): string {
    const a = this.server.address() as net.AddressInfo;
    return `${a.address}:${a.port}`;
  }

  // Resets every connection through the relay.
  cut(): void {
    for (const pair of this.pairs) {
      pair.primary.resetAndDestroy();
      pair.replica.resetAndDestroy();
    }
  }

  // Flips one byte (at that fraction) of the next chunk relayed that way
  // and waits up to deadlineMs for that connection to close (the receiver
  // refusing what it got): 'closed', 'lived_on' when it did not, 'not_sent'
  // when nothing went that way meanwhile.
  async corrupt(direction: LinkDirection, at: number, deadlineMs: number): Promise<'closed' | 'lived_on' | 'not_sent'> {
    assert.equal(this.corruption, undefined, 'one corruption at a time');
    let hitPair: Pair | undefined;
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<'timeout'>((resolve) => (timer = setTimeout(() => resolve('timeout'), deadlineMs)));
    const hit = new Promise<Pair>((resolve) => {
      this.corruption = { direction, at, hit: (pair) => resolve((hitPair = pair)) };
    });
    try {
      const outcome = await Promise.race([hit.then((pair) => pair.closed.then(() => 'closed' as const)), deadline]);
      if (outcome === 'closed') return 'closed';
      return hitPair === undefined ? 'not_sent' : 'lived_on';
    } finally {
      clearTimeout(timer);
      this.corruption = undefined;
      // A flip the receiver did not refuse in time: nothing more may run on
      // that connection.
      if (hitPair !== undefined && this.pairs.has(hitPair)) {
        hitPair.primary.destroy();
        hitPair.replica.destroy();
      }
    }
  }

  // Forwards nothing for ms; the connections stay open and buffer.
  async stall(ms: number): Promise<void> {
    this.stalled = true;
    for (const pair of this.pairs) {
      pair.primary.pause();
      pair.replica.pause();
    }
    await new Promise((resolve) => setTimeout(resolve, ms));
    this.stalled = false;
    for (const pair of this.pairs) {
      pair.primary.resume();
      pair.replica.resume();
    }
  }

  async close(): Promise<void> {
    this.cut();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private accept(primary: net.Socket): void {
    const replica = net.connect(parseHostPort(this.target(), 'relay target'));
    let closedCount = 0;
    let markClosed!: () => void;
    const pair: Pair = { primary, replica, closed: new Promise<void>((resolve) => (markClosed = resolve)) };
    this.pairs.add(pair);
    const onClose = (): void => {
      // Either end gone: the other follows, as one connection would.
      primary.destroy();
      replica.destroy();
      if (++closedCount === 2) {
        this.pairs.delete(pair);
        markClosed();
      }
    };
    for (const s of [primary, replica]) {
      s.setNoDelay(true);
      s.on('error', () => undefined); // a reset is what cut() does; close follows
      s.once('close', onClose);
    }
    this.relay(pair, primary, replica, 'to_replica');
    this.relay(pair, replica, primary, 'to_primary');
    if (this.stalled) {
      primary.pause();
      replica.pause();
    }
  }

  private relay(pair: Pair, from: net.Socket, to: net.Socket, direction: LinkDirection): void {
    from.on('data', (chunk: Buffer) => {
      const c = this.corruption;
      if (c !== undefined && c.direction === direction && chunk.length > 0) {
        this.corruption = undefined;
        const at = Math.floor(c.at * chunk.length);
        chunk[at] = chunk[at]! ^ 0x5a;
        c.hit(pair);
      }
      if (!to.write(chunk)) {
        from.pause();
        to.once('drain', () => {
          if (!this.stalled) from.resume();
        });
      }
    });
  }
}
