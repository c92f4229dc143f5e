// NBD connections under load and at their edges: 2000 pipelined requests
// answered out of order, the bytes-in-flight limit against a client that
// does not read its replies, DISC behind writes in flight, clients that
// vanish with hundreds of large reads pending, a server close() with
// requests in flight, connection churn, and the stream-pair and Unix socket
// entry points. No timing assertions: tests wait for server state.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as net from 'node:net';
import * as path from 'node:path';
import { PassThrough } from 'node:stream';

import { MemoryBackend, type MemoryOp } from '../../lib/nbd/memory_backend';
import { ChunkType, Cmd, Errno } from '../../lib/nbd/protocol';
import { NbdServer } from '../../lib/nbd/server';
import { prng, tempDir } from '../support/tmp';
import { type Chunk, decodeErrorChunk, RawClient, type Request, startServer, until, withBystander } from './raw_client';

const MiB = 1 << 20;
const BLOCK = 4096;

// Holds operations of the chosen kinds until opened.
function gate(ops: MemoryOp[]): { beforeOp: (op: MemoryOp) => Promise<void> | undefined; open: () => void } {
  let open!: () => void;
  const opened = new Promise<void>((resolve) => (open = resolve));
  return { beforeOp: (op) => (ops.includes(op) ? opened : undefined), open };
}

function pattern(seed: number, bytes: number): Buffer {
  const b = Buffer.alloc(bytes);
  for (let i = 0; i < bytes; i += 4) b.writeUInt32LE((seed * 2654435761 + i) >>> 0, i);
  return b;
}

async function sleep(ms: number): Promise<void> {
  await new Promise((resolve) => setTimeout(resolve, ms));
}

// Waits until f() stops changing (the server has gone quiet); returns its value.
async function settled(f: () => number): Promise<number> {
  let last = f();
  for (let quiet = 0; quiet < 5; ) {
    await sleep(20);
    const now = f();
    quiet = now === last ? quiet + 1 : 0;
    last = now;
  }
  return last;
}

test('2000 pipelined mixed requests: every cookie answered once, replies out of order, data intact', async () => {
  const seed = Date.now() % 100000;
  console.log(`seed ${seed}`);
  const random = prng(seed);
  const turns = async (n: number): Promise<void> => {
    for (let i = 0; i < n; i++) await new Promise<void>((resolve) => setImmediate(resolve));
  };
  const t = await startServer({ backend: { beforeOp: () => turns(Math.floor(random() * 4)) } });
  const readBlocks = 256;
  for (let i = 0; i < readBlocks; i++) await t.backend.write(i * BLOCK, pattern(i, BLOCK), false);
  const c = await RawClient.open(t.address, { meta: true });
  const requests: Request[] = [];
  const written = new Map<number, number>();
  for (let cookie = 1; cookie <= 2000; cookie++) {
    const kind = random();
    if (kind < 0.45) {
      const block = Math.floor(random() * readBlocks);
      requests.push({ type: Cmd.read, cookie: BigInt(cookie), offset: BigInt(block * BLOCK), length: BLOCK });
    } else if (kind < 0.9) {
      const block = 1000 + cookie; // each write its own block
      written.set(block, cookie);
      requests.push({ type: Cmd.write, cookie: BigInt(cookie), offset: BigInt(block * BLOCK), payload: pattern(cookie, BLOCK) });
    } else if (kind < 0.95) {
      requests.push({ type: Cmd.flush, cookie: BigInt(cookie) });
    } else {
      requests.push({ type: Cmd.blockStatus, cookie: BigInt(cookie), offset: 0n, length: 64 * BLOCK });
    }
  }
  const replies = new Map<bigint, Chunk | { kind: 'simple' }>();
  let reordered = 0;
  let highest = 0n;
  const reading = (async () => {
    while (replies.size < requests.length) {
      const r = await c.readReply();
      assert.ok(!replies.has(r.cookie), `cookie ${r.cookie} answered twice`);
      if (r.cookie < highest) reordered++;
      highest = r.cookie > highest ? r.cookie : highest;
      replies.set(r.cookie, r);
      if (r.kind === 'simple') assert.equal(r.error, 0, `cookie ${r.cookie}`);
    }
  })();
  for (let i = 0; i < requests.length; i += 100) {
    for (const r of requests.slice(i, i + 100)) c.sendRequest(r);
    await turns(1);
  }
  await reading;
  for (const r of requests) {
    const reply = replies.get(r.cookie)!;
    if (r.type === Cmd.read) {
      const chunk = reply as Chunk;
      assert.equal(chunk.type, ChunkType.offsetData, `read ${r.cookie}`);
      assert.deepEqual(chunk.data.subarray(8), pattern(Number(r.offset!) / BLOCK, BLOCK), `read ${r.cookie}`);
    }
    if (r.type === Cmd.blockStatus) assert.equal((reply as Chunk).type, ChunkType.blockStatus);
  }
  assert.ok(reordered > 0, 'some replies came out of order');
  for (const [block, cookie] of written) assert.deepEqual(await t.backend.read(block * BLOCK, BLOCK), pattern(cookie, BLOCK), `block ${block}`);
  c.disconnect();
  await c.expectClosed();
  await t.close();
});

test('bytes in flight: a client that does not read its replies gets no more requests admitted than the limit allows', async () => {
  const maxBytesInFlight = 4 * MiB;
  const t = await startServer({ server: { maxBytesInFlight } });
  await t.backend.write(0, pattern(1, MiB), false);
  await withBystander(t.address, async () => {
    const c = await RawClient.open(t.address, { structured: false });
    c.socket.pause(); // read nothing
    const count = 200;
    for (let i = 1; i <= count; i++) c.sendRequest({ type: Cmd.read, cookie: BigInt(i), offset: 0n, length: MiB });
    await until(() => t.server.stats().bytesInFlight >= maxBytesInFlight, 'the limit to be reached');
    const reads = await settled(() => t.backend.calls.read);
    // What the kernel's socket buffers took is released; everything else waits.
    assert.ok(reads < count / 2, `the server read ${reads} of ${count} requests`);
    assert.ok(t.server.stats().bytesInFlight <= maxBytesInFlight + MiB, 'at most one request over the limit');
    c.socket.resume();
    const seen = new Set<bigint>();
    for (let i = 0; i < count; i++) {
      const r = await c.readSimple(MiB);
      assert.equal(r.error, 0);
      seen.add(r.cookie);
    }
    assert.equal(seen.size, count);
    assert.equal(t.backend.calls.read, count);
    c.disconnect();
    await c.expectClosed();
  });
  assert.equal(t.server.stats().bytesInFlight, 0);
  await t.close();
});

test('bytes in flight: behind a slow backend, pipelined writes stay in the client (the server stops reading its socket)', async () => {
  const maxBytesInFlight = 4 * MiB;
  const writes = gate(['write']);
  const t = await startServer({ server: { maxBytesInFlight }, backend: { beforeOp: writes.beforeOp } });
  await withBystander(t.address, async () => {
    const c = await RawClient.open(t.address, { structured: false });
    const count = 200;
    const payload = pattern(5, MiB);
    for (let i = 1; i <= count; i++) c.sendRequest({ type: Cmd.write, cookie: BigInt(i), offset: BigInt(i * MiB) % BigInt(60 * MiB), payload });
    await until(() => t.server.stats().bytesInFlight >= maxBytesInFlight, 'the limit to be reached');
    const queued = await settled(() => t.server.stats().bytesQueued);
    // The server holds about 4 MiB of payloads plus what it read before pausing; the rest
    // waits in the kernel's socket buffers and the client.
    assert.ok(queued < 4 * MiB, `the server holds ${queued} bytes of unparsed input`);
    assert.ok(t.backend.calls.write <= 5, `${t.backend.calls.write} writes were admitted`);
    writes.open();
    for (let i = 0; i < count; i++) assert.equal((await c.readSimple()).error, 0);
    assert.equal(t.backend.calls.write, count);
    c.disconnect();
    await c.expectClosed();
  });
  await t.close();
});

test('DISC behind 50 writes in flight: all 50 complete and are answered, then the server closes', async () => {
  const writes = gate(['write']);
  const t = await startServer({ backend: { beforeOp: writes.beforeOp } });
  await withBystander(t.address, async () => {
    const c = await RawClient.open(t.address, { structured: false });
    for (let i = 1; i <= 50; i++) c.sendRequest({ type: Cmd.write, cookie: BigInt(i), offset: BigInt(i * BLOCK), payload: pattern(i, BLOCK) });
    c.disconnect();
    await until(() => t.backend.calls.write === 50, 'the writes to reach the backend');
    assert.equal(c.bufferedBytes, 0, 'no reply before the writes finish');
    assert.ok(!c.isEnded, 'the connection waits for its writes');
    writes.open();
    const cookies = new Set<bigint>();
    for (let i = 0; i < 50; i++) {
      const r = await c.readSimple();
      assert.equal(r.error, 0);
      cookies.add(r.cookie);
    }
    assert.equal(cookies.size, 50);
    await c.expectClosed();
    for (let i = 1; i <= 50; i++) assert.deepEqual(await t.backend.read(i * BLOCK, BLOCK), pattern(i, BLOCK));
  });
  await t.close();
});

test('requests, DISC and EOF sent together are all answered even while they wait behind the limits', async () => {
  const t = await startServer({ server: { maxRequestsInFlight: 4 } });
  await t.backend.write(0, pattern(2, 64 * 1024), false);
  await withBystander(t.address, async () => {
    const c = await RawClient.open(t.address, { structured: false });
    for (let i = 1; i <= 100; i++) c.sendRequest({ type: Cmd.read, cookie: BigInt(i), offset: 0n, length: 64 * 1024 });
    c.disconnect();
    c.socket.end(); // EOF right behind DISC
    const seen = new Set<bigint>();
    for (let i = 0; i < 100; i++) {
      const r = await c.readSimple(64 * 1024);
      assert.equal(r.error, 0);
      assert.deepEqual(r.data, pattern(2, 64 * 1024));
      seen.add(r.cookie);
    }
    assert.equal(seen.size, 100);
    await c.expectClosed();
    assert.equal(t.server.stats().protocolViolations, 0);
  });
  await t.close();
});

test('a client vanishing with 300 x 1 MiB reads pending: nothing crashes, every buffer is released', async () => {
  const t = await startServer();
  const at = 8 * MiB; // away from the bystander's block
  await t.backend.write(at, pattern(7, MiB), false);
  await withBystander(t.address, async () => {
    for (const [round, structured] of [[1, true], [2, false], [3, true], [4, false]] as const) {
      const c = await RawClient.open(t.address, { structured });
      const before = t.backend.calls.read;
      for (let i = 1; i <= 300; i++) c.sendRequest({ type: Cmd.read, cookie: BigInt(i), offset: BigInt(at), length: MiB });
      if (round > 2) await until(() => c.bufferedBytes > 0, 'replies to start arriving');
      else await until(() => t.backend.calls.read > before, 'reads to start');
      c.destroy();
      await until(() => t.server.connections === 1, 'the connection to go');
      await until(() => t.server.stats().requestsInFlight === 0, `round ${round}: requests to be released`);
      assert.equal(t.server.stats().bytesInFlight, 0, `round ${round}: bytes released`);
    }
  });
  const fresh = await RawClient.open(t.address);
  fresh.sendRequest({ type: Cmd.read, cookie: 1n, offset: BigInt(at), length: MiB });
  const r = await fresh.readChunk();
  assert.deepEqual(r.data.subarray(8), pattern(7, MiB), 'a later client is served');
  fresh.disconnect();
  await fresh.expectClosed();
  await t.close();
});

test('close() with requests in flight: they finish, new requests get ESHUTDOWN, connections end', async () => {
  const reads = gate(['read']);
  const t = await startServer({ backend: { beforeOp: reads.beforeOp } });
  await t.backend.write(0, pattern(3, BLOCK), false);
  const c = await RawClient.open(t.address);
  const haggler = await RawClient.connect(t.address);
  await haggler.readGreeting();
  for (let i = 1; i <= 3; i++) c.sendRequest({ type: Cmd.read, cookie: BigInt(i), offset: 0n, length: BLOCK });
  await until(() => t.backend.calls.read === 3, 'the reads to reach the backend');
  const closing = t.server.close();
  await haggler.expectClosed();
  await assert.rejects(RawClient.connect(t.address), 'no new connections are accepted');
  c.sendRequest({ type: Cmd.write, cookie: 4n, offset: 0n, payload: Buffer.alloc(BLOCK, 1) });
  c.sendRequest({ type: Cmd.read, cookie: 5n, offset: 0n, length: BLOCK });
  for (const cookie of [4n, 5n]) {
    const r = await c.readChunk();
    assert.equal(r.cookie, cookie);
    assert.equal(decodeErrorChunk(r.data).error, Errno.eshutdown);
  }
  reads.open();
  const done = new Set<bigint>();
  for (let i = 0; i < 3; i++) {
    const r = await c.readChunk();
    assert.equal(r.type, ChunkType.offsetData, 'requests already at the backend finish');
    done.add(r.cookie);
  }
  assert.deepEqual([...done].sort(), [1n, 2n, 3n]);
  await c.expectClosed();
  await closing;
  assert.equal(t.server.connections, 0);
  assert.equal(t.backend.calls.write, 1, 'the write sent during shutdown never reached the backend (only the setup write did)');
});

test('100 connects and disconnects of every kind leave nothing behind', async () => {
  const t = await startServer();
  for (let i = 0; i < 100; i++) {
    const c = await RawClient.connect(t.address);
    if (i % 4 === 0) {
      c.destroy();
      continue;
    }
    await c.readGreeting();
    c.sendClientFlags(3);
    if (i % 4 === 1) {
      c.sendOption(2); // ABORT
      await c.readOptionReply();
    } else {
      const go = Buffer.alloc(6);
      c.sendOption(7, go);
      while ((await c.readOptionReply()).type !== 1);
      c.sendRequest({ type: Cmd.write, cookie: 1n, offset: 0n, payload: Buffer.alloc(MiB, i) });
      if (i % 4 === 2) c.disconnect();
      else c.destroy();
    }
    await c.closed;
  }
  await until(() => t.server.connections === 0, 'every connection to close');
  const stats = t.server.stats();
  assert.deepEqual([stats.connectionsAccepted, stats.requestsInFlight, stats.bytesInFlight], [100, 0, 0]);
  await t.close();
});

test('serveConnection over a pair of streams resolves when the connection ends', async () => {
  const backend = new MemoryBackend({ sizeBytes: MiB });
  const server = new NbdServer({ exports: [{ name: 'm', description: '', backend }] });
  let served: Promise<void> | undefined;
  // A plain socket carries the bytes; the NBD server only sees two streams.
  const relay = net.createServer((socket) => {
    const input = new PassThrough();
    const output = new PassThrough();
    socket.pipe(input);
    output.pipe(socket);
    served = server.serveConnection(input, output);
  });
  await new Promise<void>((resolve) => relay.listen(0, '127.0.0.1', resolve));
  const port = (relay.address() as net.AddressInfo).port;
  const c = await RawClient.open({ host: '127.0.0.1', port });
  c.sendRequest({ type: Cmd.write, cookie: 1n, offset: 10n, payload: Buffer.from('hello') });
  assert.equal((await c.readSimple()).error, 0);
  assert.equal(server.connections, 1);
  c.disconnect();
  await c.expectClosed();
  await served;
  assert.equal(server.connections, 0);
  assert.equal((await backend.read(10, 5)).toString(), 'hello');
  await server.close();
  await new Promise((resolve) => relay.close(resolve));
});

test('stdin/stdout mode: a child process serves one connection on its real pipes and exits when it ends', async () => {
  const script = `
    const { NbdServer } = require(${JSON.stringify(path.join(__dirname, '..', '..', 'lib', 'nbd', 'server.js'))});
    const { MemoryBackend } = require(${JSON.stringify(path.join(__dirname, '..', '..', 'lib', 'nbd', 'memory_backend.js'))});
    const server = new NbdServer({ exports: [{ name: 'stdio', description: '', backend: new MemoryBackend({ sizeBytes: 1048576 }) }] });
    server.serveConnection(process.stdin, process.stdout).then(() => process.exit(0));`;
  const child = spawn(process.execPath, ['-e', script], { stdio: ['pipe', 'pipe', 'inherit'] });
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  const relay = net.createServer((socket) => {
    socket.pipe(child.stdin);
    child.stdout.pipe(socket);
  });
  await new Promise<void>((resolve) => relay.listen(0, '127.0.0.1', resolve));
  const c = await RawClient.open({ host: '127.0.0.1', port: (relay.address() as net.AddressInfo).port });
  assert.equal(c.sizeBytes, MiB);
  c.sendRequest({ type: Cmd.write, cookie: 1n, offset: 100n, payload: Buffer.from('stdio') });
  assert.equal((await c.readSimple()).error, 0);
  c.sendRequest({ type: Cmd.read, cookie: 2n, offset: 100n, length: 5 });
  assert.equal((await c.readChunk()).data.toString('utf8', 8), 'stdio');
  c.disconnect();
  await c.expectClosed();
  assert.equal(await exited, 0, 'serveConnection resolved and the child exited');
  await new Promise((resolve) => relay.close(resolve));
});

test('listen on a Unix socket', async () => {
  const { dir, cleanup } = tempDir('nbd');
  const backend = new MemoryBackend({ sizeBytes: MiB });
  const server = new NbdServer({ exports: [{ name: 'u', description: '', backend }] });
  const socketPath = path.join(dir, 'nbd.sock');
  assert.deepEqual(await server.listen({ path: socketPath }), { path: socketPath });
  const c = await RawClient.open({ path: socketPath }, { structured: false });
  assert.equal(c.sizeBytes, MiB);
  c.disconnect();
  await c.expectClosed();
  await server.close();
  cleanup();
});
