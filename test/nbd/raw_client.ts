// A raw-socket NBD client for tests: it sends whatever bytes a test wants
// (including what real clients refuse to send) and decodes what comes back.
// Also the small harness the NBD tests share: a server with memory
// backends on 127.0.0.1 port 0, and a "bystander" client that must keep
// working while another client misbehaves.
import * as assert from 'node:assert/strict';
import * as net from 'node:net';

import { MemoryBackend, type MemoryBackendOptions } from '../../lib/nbd/memory_backend';
import { Cmd, IHAVEOPT, NBDMAGIC, Opt, OPTION_REPLY_MAGIC, REQUEST_MAGIC, Rep, SIMPLE_REPLY_MAGIC, STRUCTURED_REPLY_MAGIC } from '../../lib/nbd/protocol';
import { NbdServer, type NbdServerOptions } from '../../lib/nbd/server';

export type Address = { host: string; port: number } | { path: string };

export interface OptionReply {
  option: number;
  type: number;
  data: Buffer;
}

export interface SimpleReply {
  kind: 'simple';
  error: number;
  cookie: bigint;
  data: Buffer;
}

export interface Chunk {
  kind: 'chunk';
  flags: number;
  type: number;
  cookie: bigint;
  data: Buffer;
}

export interface Request {
  type: number;
  flags?: number;
  cookie: bigint;
  offset?: bigint;
  length?: number;
  payload?: Buffer;
}

export class RawClient {
  private chunks: Buffer[] = [];
  private bytes = 0;
  private ended = false;
  private wake: (() => void) | undefined;
  readonly closed: Promise<void>;

  private constructor(readonly socket: net.Socket) {
    socket.on('data', (chunk: Buffer) => {
      this.chunks.push(chunk);
      this.bytes += chunk.length;
      this.notify();
    });
    socket.on('error', () => undefined);
    this.closed = new Promise((resolve) =>
      socket.on('close', () => {
        this.ended = true;
        this.notify();
        resolve();
      }),
    );
    socket.on('end', () => {
      this.ended = true;
      this.notify();
    });
  }

  static connect(address: Address): Promise<RawClient> {
    return new Promise((resolve, reject) => {
      const socket = 'path' in address ? net.connect(address.path) : net.connect(address.port, address.host);
      socket.setNoDelay(true);
      socket.once('error', reject);
      socket.once('connect', () => {
        socket.off('error', reject);
        resolve(new RawClient(socket));
      });
    });
  }

  // Greeting, client flags, then the options a normal libnbd client sends, then GO.
  static async open(address: Address, o: { exportName?: string; structured?: boolean; meta?: boolean } = {}): Promise<OpenClient> {
    const c = await RawClient.connect(address);
    await c.readGreeting();
    c.sendClientFlags(3);
    if (o.structured !== false) assert.equal((await c.option(Opt.structuredReply)).at(-1)!.type, Rep.ack);
    if (o.meta === true) {
      const replies = await c.option(Opt.setMetaContext, metaContextData(o.exportName ?? '', ['base:allocation']));
      assert.equal(replies.at(-1)!.type, Rep.ack);
    }
    const replies = await c.option(Opt.go, infoData(o.exportName ?? '', []));
    assert.equal(replies.at(-1)!.type, Rep.ack, `GO failed: ${replies.at(-1)!.data.toString()}`);
    const exportInfo = replies.find((r) => r.type === Rep.info && r.data.readUInt16BE(0) === 0)!;
    return Object.assign(c, { sizeBytes: Number(exportInfo.data.readBigUInt64BE(2)), transmissionFlags: exportInfo.data.readUInt16BE(10) });
  }

  get isEnded(): boolean {
    return this.ended;
  }

  get bufferedBytes(): number {
    return this.bytes;
  }

  send(bytes: Buffer | number[]): void {
    this.socket.write(Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes));
  }

  // Exactly n bytes; rejects if the connection ends first.
  async read(n: number): Promise<Buffer> {
    while (this.bytes < n) {
      if (this.ended) throw new Error(`connection ended with ${this.bytes} of ${n} bytes`);
      await new Promise<void>((resolve) => (this.wake = resolve));
    }
    const out = Buffer.allocUnsafe(n);
    let at = 0;
    while (at < n) {
      const head = this.chunks[0]!;
      const step = Math.min(n - at, head.length);
      head.copy(out, at, 0, step);
      at += step;
      if (step === head.length) this.chunks.shift();
      else this.chunks[0] = head.subarray(step);
    }
    this.bytes -= n;
    return out;
  }

  // Resolves when the server has closed the connection, after checking it sent nothing more.
  async expectClosed(): Promise<void> {
    await this.closed;
    assert.equal(this.bytes, 0, `the server sent ${this.bytes} unexpected bytes before closing`);
  }

  async readGreeting(): Promise<number> {
    const b = await this.read(18);
    assert.equal(b.readBigUInt64BE(0), NBDMAGIC);
    assert.equal(b.readBigUInt64BE(8), IHAVEOPT);
    return b.readUInt16BE(16);
  }

  sendClientFlags(flags: number): void {
    const b = Buffer.alloc(4);
    b.writeUInt32BE(flags >>> 0);
    this.send(b);
  }

  sendOption(option: number, data: Buffer = Buffer.alloc(0), lengthBytes = data.length, magic = IHAVEOPT): void {
    const b = Buffer.alloc(16);
    b.writeBigUInt64BE(magic, 0);
    b.writeUInt32BE(option >>> 0, 8);
    b.writeUInt32BE(lengthBytes >>> 0, 12);
    this.send(Buffer.concat([b, data]));
  }

  async readOptionReply(): Promise<OptionReply> {
    const h = await this.read(20);
    assert.equal(h.readBigUInt64BE(0), OPTION_REPLY_MAGIC);
    const length = h.readUInt32BE(16);
    return { option: h.readUInt32BE(8), type: h.readUInt32BE(12), data: await this.read(length) };
  }

  // Sends an option and reads replies up to the final one (ACK or an error).
  async option(option: number, data?: Buffer): Promise<OptionReply[]> {
    this.sendOption(option, data);
    const replies: OptionReply[] = [];
    for (;;) {
      const r = await this.readOptionReply();
      assert.equal(r.option, option, 'the reply echoes the option');
      replies.push(r);
      if (r.type === Rep.ack || r.type >= 2 ** 31) return replies;
    }
  }

  sendRequest(r: Request): void {
    const b = Buffer.alloc(28);
    b.writeUInt32BE(REQUEST_MAGIC, 0);
    b.writeUInt16BE(r.flags ?? 0, 4);
    b.writeUInt16BE(r.type, 6);
    b.writeBigUInt64BE(r.cookie, 8);
    b.writeBigUInt64BE(r.offset ?? 0n, 16);
    b.writeUInt32BE(r.length ?? r.payload?.length ?? 0, 24);
    this.send(r.payload === undefined ? b : Buffer.concat([b, r.payload]));
  }

  // A simple reply, or one structured chunk; `dataBytes` says how much data
  // follows a successful simple reply to the given cookie.
  async readReply(dataBytes: (cookie: bigint) => number = () => 0): Promise<SimpleReply | Chunk> {
    const magic = (await this.read(4)).readUInt32BE(0);
    if (magic === SIMPLE_REPLY_MAGIC) {
      const b = await this.read(12);
      const error = b.readUInt32BE(0);
      const cookie = b.readBigUInt64BE(4);
      return { kind: 'simple', error, cookie, data: error === 0 ? await this.read(dataBytes(cookie)) : Buffer.alloc(0) };
    }
    assert.equal(magic, STRUCTURED_REPLY_MAGIC, `reply magic 0x${magic.toString(16)}`);
    const b = await this.read(16);
    const length = b.readUInt32BE(12);
    return { kind: 'chunk', flags: b.readUInt16BE(0), type: b.readUInt16BE(2), cookie: b.readBigUInt64BE(4), data: await this.read(length) };
  }

  async readSimple(dataBytes = 0): Promise<SimpleReply> {
    const r = await this.readReply(() => dataBytes);
    assert.equal(r.kind, 'simple');
    return r as SimpleReply;
  }

  async readChunk(): Promise<Chunk> {
    const r = await this.readReply();
    assert.equal(r.kind, 'chunk');
    return r as Chunk;
  }

  // A simple request/reply round trip (no data in the reply unless it is a simple READ).
  async request(r: Request): Promise<SimpleReply | Chunk> {
    this.sendRequest(r);
    return this.readReply(() => (r.type === Cmd.read ? (r.length ?? 0) : 0));
  }

  disconnect(): void {
    this.sendRequest({ type: Cmd.disc, cookie: 0n });
  }

  destroy(): void {
    this.socket.destroy();
  }

  private notify(): void {
    const wake = this.wake;
    this.wake = undefined;
    wake?.();
  }
}

export type OpenClient = RawClient & { sizeBytes: number; transmissionFlags: number };

// INFO/GO data: u32 name length, name, u16 count, info types.
export function infoData(name: string, infoTypes: number[]): Buffer {
  const n = Buffer.from(name);
  const b = Buffer.alloc(4 + n.length + 2 + 2 * infoTypes.length);
  b.writeUInt32BE(n.length, 0);
  n.copy(b, 4);
  b.writeUInt16BE(infoTypes.length, 4 + n.length);
  infoTypes.forEach((t, i) => b.writeUInt16BE(t, 6 + n.length + 2 * i));
  return b;
}

// LIST/SET_META_CONTEXT data: u32 name length, name, u32 count, (u32 length, query)...
export function metaContextData(exportName: string, queries: string[]): Buffer {
  const parts: Buffer[] = [];
  const n = Buffer.from(exportName);
  const head = Buffer.alloc(4);
  head.writeUInt32BE(n.length);
  parts.push(head, n);
  const count = Buffer.alloc(4);
  count.writeUInt32BE(queries.length);
  parts.push(count);
  for (const q of queries) {
    const qb = Buffer.from(q);
    const len = Buffer.alloc(4);
    len.writeUInt32BE(qb.length);
    parts.push(len, qb);
  }
  return Buffer.concat(parts);
}

// Decodes a BLOCK_STATUS chunk: context id, then (length, flags) pairs.
export function decodeBlockStatus(data: Buffer): { contextId: number; extents: [number, number][] } {
  const extents: [number, number][] = [];
  for (let at = 4; at < data.length; at += 8) extents.push([data.readUInt32BE(at), data.readUInt32BE(at + 4)]);
  return { contextId: data.readUInt32BE(0), extents };
}

export function decodeErrorChunk(data: Buffer): { error: number; message: string } {
  const length = data.readUInt16BE(4);
  return { error: data.readUInt32BE(0), message: data.toString('utf8', 6, 6 + length) };
}

export interface TestServer {
  server: NbdServer;
  backend: MemoryBackend;
  address: { host: string; port: number };
  close(): Promise<void>;
}

// A server on 127.0.0.1 port 0 with one memory export (the default, named 'disk').
export async function startServer(
  o: { backend?: Partial<MemoryBackendOptions>; server?: Partial<NbdServerOptions> } = {},
): Promise<TestServer> {
  const backend = new MemoryBackend({ sizeBytes: 64 << 20, ...o.backend });
  const server = new NbdServer({ exports: [{ name: 'disk', description: 'a memory disk', backend }], ...o.server });
  const address = (await server.listen({ host: '127.0.0.1', port: 0 })) as { host: string; port: number };
  return { server, backend, address, close: () => server.close() };
}

// Runs fn while another client is connected and in transmission, then checks
// that this bystander can still write and read back (it never saw fn's traffic).
export async function withBystander(address: Address, fn: () => Promise<void>, exportName = ''): Promise<void> {
  const bystander = await RawClient.open(address, { exportName });
  await fn();
  const payload = Buffer.alloc(512, 0x5a);
  const w = await bystander.request({ type: Cmd.write, cookie: 1n, offset: 4096n, payload });
  assert.equal(w.kind === 'simple' && w.error, 0, 'the bystander can still write');
  const r = await bystander.request({ type: Cmd.read, cookie: 2n, offset: 4096n, length: 512 });
  assert.equal(r.kind, 'chunk');
  assert.deepEqual((r as Chunk).data.subarray(8), payload, 'the bystander reads its data back');
  bystander.disconnect();
  await bystander.expectClosed();
}

// Lets the event loop run until pred() holds (tests poll server state, never time).
export async function until(pred: () => boolean, what: string, turns = 100000): Promise<void> {
  for (let i = 0; i < turns; i++) {
    if (pred()) return;
    await new Promise<void>((resolve) => setImmediate(resolve));
  }
  assert.fail(`gave up waiting for ${what}`);
}
