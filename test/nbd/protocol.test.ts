// The NBD server against bad and edge-case input, one test per row of
// reference/nbd.md §1.15 (handshake rows first, then transmission rows),
// driven from a raw socket. Each test checks the reply, whether the
// connection lives on or is closed as the row says, and that a bystander
// client connected at the same time still works afterwards.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';

import { CHUNK_FLAG_DONE, ChunkType, Cmd, CmdFlag, Errno, InfoType, Opt, Rep } from '../../lib/nbd/protocol';
import {
  type Address,
  decodeBlockStatus,
  decodeErrorChunk,
  infoData,
  metaContextData,
  type OpenClient,
  RawClient,
  type SimpleReply,
  startServer,
  type TestServer,
  until,
  withBystander,
} from './raw_client';

const MiB = 1 << 20;
const SIZE = 64 * MiB;
const U64_MAX = 2n ** 64n - 1n;

// Runs one scenario on a fresh server with a bystander client alongside.
async function scenario(fn: (t: TestServer) => Promise<void>, o: Parameters<typeof startServer>[0] = {}): Promise<void> {
  const t = await startServer(o);
  try {
    await withBystander(t.address, () => fn(t));
  } finally {
    await t.close();
  }
}

// A client past the greeting and client flags, in option haggling.
async function haggling(address: Address): Promise<RawClient> {
  const c = await RawClient.connect(address);
  await c.readGreeting();
  c.sendClientFlags(3);
  return c;
}

async function expectOptionError(c: RawClient, option: number, data: Buffer | undefined, type: Rep): Promise<string> {
  const replies = await c.option(option, data);
  assert.equal(replies.length, 1, 'no other reply before the error');
  assert.equal(replies[0]!.type, type);
  return replies[0]!.data.toString();
}

// The connection still haggles: LIST works.
async function expectListWorks(c: RawClient): Promise<void> {
  const replies = await c.option(Opt.list);
  assert.deepEqual(replies.map((r) => r.type), [Rep.server, Rep.ack]);
}

async function expectSimple(c: RawClient, request: Parameters<RawClient['sendRequest']>[0], error: Errno, dataBytes = 0): Promise<SimpleReply> {
  c.sendRequest(request);
  const r = await c.readSimple(dataBytes);
  assert.equal(r.cookie, request.cookie);
  assert.equal(r.error, error, `error for cookie ${request.cookie}`);
  return r;
}

// The connection still serves a read.
async function expectAlive(c: OpenClient): Promise<void> {
  c.sendRequest({ type: Cmd.read, cookie: 777n, offset: 0n, length: 512 });
  const r = await c.readReply(() => 512);
  assert.equal(r.cookie, 777n);
  if (r.kind === 'simple') assert.equal(r.error, 0);
  else assert.ok(r.type === ChunkType.offsetData || r.type === ChunkType.offsetHole);
}

// ---- Handshake rows ----

test('unknown client flag bit: the server closes', () =>
  scenario(async (t) => {
    const c = await RawClient.connect(t.address);
    await c.readGreeting();
    c.sendClientFlags(1 << 5);
    await c.expectClosed();
    assert.equal(t.server.stats().protocolViolations, 1);
  }));

test('bad option magic: the server closes', () =>
  scenario(async (t) => {
    const c = await haggling(t.address);
    c.sendOption(Opt.list, Buffer.alloc(0), 0, 0x1122334455667788n);
    await c.expectClosed();
  }));

test('unknown option with data: ERR_UNSUP with a message, and parsing goes on', () =>
  scenario(async (t) => {
    const c = await haggling(t.address);
    const message = await expectOptionError(c, 99, Buffer.from('some data the server must skip'), Rep.errUnsup);
    assert.match(message, /99/);
    await expectOptionError(c, 4, Buffer.from('PEEK_EXPORT'), Rep.errUnsup);
    await expectListWorks(c);
    c.destroy();
  }));

test('LIST and STRUCTURED_REPLY with data: ERR_INVALID, connection alive', () =>
  scenario(async (t) => {
    const c = await haggling(t.address);
    await expectOptionError(c, Opt.list, Buffer.from('x'), Rep.errInvalid);
    await expectOptionError(c, Opt.structuredReply, Buffer.from('xy'), Rep.errInvalid);
    await expectListWorks(c);
    c.destroy();
  }));

test('GO to an unknown export: ERR_UNKNOWN with no INFO before it, connection alive', () =>
  scenario(async (t) => {
    const c = await haggling(t.address);
    const message = await expectOptionError(c, Opt.go, infoData('nope', [InfoType.blockSize]), Rep.errUnknown);
    assert.match(message, /nope/);
    const replies = await c.option(Opt.go, infoData('disk', []));
    assert.equal(replies.at(-1)!.type, Rep.ack);
    c.disconnect();
    await c.expectClosed();
  }));

test('EXPORT_NAME of an unknown export: the server closes', () =>
  scenario(async (t) => {
    const c = await haggling(t.address);
    c.sendOption(Opt.exportName, Buffer.from('nope'));
    await c.expectClosed();
  }));

test('INFO whose name length overruns the option: ERR_INVALID, the rest of the option skipped', () =>
  scenario(async (t) => {
    const c = await haggling(t.address);
    const data = Buffer.alloc(10);
    data.writeUInt32BE(100, 0); // a 100-byte name in a 10-byte option
    await expectOptionError(c, Opt.info, data, Rep.errInvalid);
    const long = infoData('x'.repeat(5000), []);
    await expectOptionError(c, Opt.info, long, Rep.errInvalid);
    await expectListWorks(c);
    c.destroy();
  }));

test('SET_META_CONTEXT before STRUCTURED_REPLY: ERR_INVALID', () =>
  scenario(async (t) => {
    const c = await haggling(t.address);
    await expectOptionError(c, Opt.setMetaContext, metaContextData('', ['base:allocation']), Rep.errInvalid);
    await expectListWorks(c);
    c.destroy();
  }));

test('SET_META_CONTEXT with unknown namespaces or leaves: ACK with no context', () =>
  scenario(async (t) => {
    const c = await haggling(t.address);
    await c.option(Opt.structuredReply);
    const replies = await c.option(Opt.setMetaContext, metaContextData('', ['x-foo:bar', 'base:nothing', 'base:', 'qemu:dirty-bitmap:a']));
    assert.deepEqual(replies.map((r) => r.type), [Rep.ack]);
    assert.equal((await c.option(Opt.go, infoData('', []))).at(-1)!.type, Rep.ack);
    c.sendRequest({ type: Cmd.blockStatus, cookie: 5n, offset: 0n, length: 4096 });
    const r = await c.readChunk();
    assert.equal(r.type, ChunkType.error);
    assert.equal(decodeErrorChunk(r.data).error, Errno.einval, 'no context was selected');
    c.disconnect();
    await c.expectClosed();
  }));

test('option length 0xffffffff: the server closes', () =>
  scenario(async (t) => {
    const c = await haggling(t.address);
    c.sendOption(99, Buffer.alloc(100), 0xffffffff);
    await c.expectClosed();
  }));

test('options without GO: the server closes after the cap', () =>
  scenario(
    async (t) => {
      const c = await haggling(t.address);
      for (let i = 0; i < 10; i++) await expectListWorks(c);
      c.sendOption(Opt.list);
      await c.expectClosed();
    },
    { server: { maxOptions: 10 } },
  ));

test('an idle handshake hits the handshake timeout', () =>
  scenario(
    async (t) => {
      const idle = await RawClient.connect(t.address);
      await idle.readGreeting();
      const haggler = await haggling(t.address);
      await expectListWorks(haggler);
      await idle.expectClosed();
      await haggler.expectClosed();
      assert.equal(t.server.stats().protocolViolations, 2);
    },
    { server: { handshakeTimeoutMs: 50 } },
  ));

test('STARTTLS without TLS: ERR_POLICY, connection alive', () =>
  scenario(async (t) => {
    const c = await haggling(t.address);
    await expectOptionError(c, Opt.startTls, undefined, Rep.errPolicy);
    await expectListWorks(c);
    c.destroy();
  }));

test('EXTENDED_HEADERS: ERR_UNSUP, connection alive', () =>
  scenario(async (t) => {
    const c = await haggling(t.address);
    await expectOptionError(c, Opt.extendedHeaders, undefined, Rep.errUnsup);
    await expectListWorks(c);
    c.destroy();
  }));

// ---- Transmission rows ----

test('read crossing the end, offsets near 2^64: EINVAL, connection alive', () =>
  scenario(async (t) => {
    const c = await RawClient.open(t.address, { structured: false });
    const cases: [bigint, number][] = [
      [BigInt(SIZE - 512), 1024],
      [BigInt(SIZE), 1],
      [2n ** 53n, 512],
      [2n ** 53n + 1n, 0],
      [U64_MAX - 511n, 1024], // offset + length wraps around 2^64
      [U64_MAX, 1],
      [U64_MAX, 0],
    ];
    let cookie = 10n;
    for (const [offset, length] of cases) await expectSimple(c, { type: Cmd.read, cookie: cookie++, offset, length }, Errno.einval);
    await expectSimple(c, { type: Cmd.read, cookie: cookie++, offset: BigInt(SIZE - 512), length: 512 }, Errno.ok, 512);
    await expectSimple(c, { type: Cmd.trim, cookie: cookie++, offset: U64_MAX - 4095n, length: 8192 }, Errno.einval);
    await expectAlive(c);
    c.disconnect();
    await c.expectClosed();
  }));

test('write crossing the end: ENOSPC, the payload consumed, nothing written, connection alive', () =>
  scenario(async (t) => {
    const c = await RawClient.open(t.address, { structured: false });
    const payload = Buffer.alloc(1024, 0xee);
    await expectSimple(c, { type: Cmd.write, cookie: 1n, offset: BigInt(SIZE - 512), payload }, Errno.enospc);
    await expectSimple(c, { type: Cmd.write, cookie: 2n, offset: U64_MAX - 511n, payload }, Errno.enospc);
    await expectSimple(c, { type: Cmd.writeZeroes, cookie: 3n, offset: BigInt(SIZE - 512), length: 1024 }, Errno.enospc);
    assert.equal(t.backend.calls.write, 0);
    assert.equal(t.backend.allocatedPages, 0);
    await expectAlive(c);
    c.disconnect();
    await c.expectClosed();
  }));

test('read and write of length 0: OK, connection alive', () =>
  scenario(async (t) => {
    const c = await RawClient.open(t.address, { structured: false });
    await expectSimple(c, { type: Cmd.read, cookie: 1n, offset: 4096n, length: 0 }, Errno.ok, 0);
    await expectSimple(c, { type: Cmd.write, cookie: 2n, offset: 4096n, length: 0 }, Errno.ok);
    await expectSimple(c, { type: Cmd.trim, cookie: 3n, offset: BigInt(SIZE), length: 0 }, Errno.ok);
    await expectAlive(c);
    c.disconnect();
    await c.expectClosed();
  }));

test('unknown command 99: EINVAL, connection alive', () =>
  scenario(async (t) => {
    const c = await RawClient.open(t.address, { structured: false });
    await expectSimple(c, { type: 99, cookie: 1n, offset: 0n, length: 4096 }, Errno.einval);
    await expectSimple(c, { type: 8, cookie: 2n, offset: 4096n, length: 0 }, Errno.einval); // RESIZE is not implemented
    await expectAlive(c);
    assert.equal(t.server.stats().requests.unknown, 2);
    c.disconnect();
    await c.expectClosed();
  }));

test('unknown flag 0x8000, NO_HOLE on WRITE, DF without structured replies: EINVAL', () =>
  scenario(async (t) => {
    const c = await RawClient.open(t.address, { structured: false });
    await expectSimple(c, { type: Cmd.read, flags: 0x8000, cookie: 1n, offset: 0n, length: 512 }, Errno.einval);
    await expectSimple(c, { type: Cmd.write, flags: CmdFlag.noHole, cookie: 2n, offset: 0n, payload: Buffer.alloc(512, 1) }, Errno.einval);
    await expectSimple(c, { type: Cmd.read, flags: CmdFlag.df, cookie: 3n, offset: 0n, length: 512 }, Errno.einval);
    await expectSimple(c, { type: Cmd.cache, flags: CmdFlag.reqOne, cookie: 4n, offset: 0n, length: 512 }, Errno.einval);
    assert.equal(t.backend.calls.write, 0);
    await expectAlive(c);
    c.disconnect();
    await c.expectClosed();
  }));

test('FUA on READ: accepted', () =>
  scenario(async (t) => {
    await t.backend.write(0, Buffer.alloc(512, 9), false);
    const c = await RawClient.open(t.address, { structured: false });
    const r = await expectSimple(c, { type: Cmd.read, flags: CmdFlag.fua, cookie: 1n, offset: 0n, length: 512 }, Errno.ok, 512);
    assert.deepEqual(r.data, Buffer.alloc(512, 9));
    c.disconnect();
    await c.expectClosed();
  }));

test('FLUSH with a non-zero offset and length: accepted (lenient)', () =>
  scenario(async (t) => {
    const c = await RawClient.open(t.address, { structured: false });
    await expectSimple(c, { type: Cmd.flush, cookie: 1n, offset: 12345n, length: 99 }, Errno.ok);
    assert.equal(t.backend.calls.flush, 1);
    await expectAlive(c);
    c.disconnect();
    await c.expectClosed();
  }));

test('BLOCK_STATUS without a selected context: EINVAL', () =>
  scenario(async (t) => {
    const simple = await RawClient.open(t.address, { structured: false });
    await expectSimple(simple, { type: Cmd.blockStatus, cookie: 1n, offset: 0n, length: 4096 }, Errno.einval);
    await expectAlive(simple);
    const structured = await RawClient.open(t.address);
    structured.sendRequest({ type: Cmd.blockStatus, cookie: 2n, offset: 0n, length: 4096 });
    const r = await structured.readChunk();
    assert.equal(r.type, ChunkType.error);
    assert.equal(decodeErrorChunk(r.data).error, Errno.einval);
    assert.equal(t.backend.calls.blockStatus, 0);
    for (const c of [simple, structured]) {
      c.disconnect();
      await c.expectClosed();
    }
  }));

test('READ of 32 MiB (the advertised maximum): OK; 33 MiB and 65 MiB: EINVAL', () =>
  scenario(async (t) => {
    await t.backend.write(32 * MiB - 1, Buffer.from([7]), false);
    const c = await RawClient.open(t.address, { structured: false });
    const r = await expectSimple(c, { type: Cmd.read, cookie: 1n, offset: 0n, length: 32 * MiB }, Errno.ok, 32 * MiB);
    assert.equal(r.data[32 * MiB - 1], 7);
    await expectSimple(c, { type: Cmd.read, cookie: 2n, offset: 0n, length: 33 * MiB }, Errno.einval);
    await expectSimple(c, { type: Cmd.read, cookie: 3n, offset: 0n, length: 65 * MiB }, Errno.einval);
    await expectAlive(c);
    c.disconnect();
    await c.expectClosed();
  }));

test('WRITE of 33 MiB: the payload consumed, EINVAL, nothing written, connection alive', () =>
  scenario(async (t) => {
    const c = await RawClient.open(t.address, { structured: false });
    await expectSimple(c, { type: Cmd.write, cookie: 1n, offset: 0n, payload: Buffer.alloc(33 * MiB, 3) }, Errno.einval);
    assert.equal(t.backend.calls.write, 0);
    assert.equal(t.backend.allocatedPages, 0);
    await expectAlive(c);
    c.disconnect();
    await c.expectClosed();
  }));

test('WRITE of 65 MiB: the server closes', () =>
  scenario(async (t) => {
    const c = await RawClient.open(t.address, { structured: false });
    c.sendRequest({ type: Cmd.write, cookie: 1n, offset: 0n, length: 65 * MiB });
    c.send(Buffer.alloc(MiB, 1)); // the start of the payload
    await c.expectClosed();
    assert.equal(t.backend.calls.write, 0);
  }));

test('WRITE_ZEROES and TRIM of the whole export in one request: OK', () =>
  scenario(async (t) => {
    await t.backend.write(0, Buffer.alloc(8192, 1), false);
    await t.backend.write(SIZE - 4096, Buffer.alloc(4096, 1), false);
    const c = await RawClient.open(t.address, { structured: false });
    await expectSimple(c, { type: Cmd.writeZeroes, cookie: 1n, offset: 0n, length: SIZE }, Errno.ok);
    assert.equal(t.backend.allocatedPages, 0);
    await t.backend.write(4096, Buffer.alloc(4096, 1), false);
    await expectSimple(c, { type: Cmd.trim, cookie: 2n, offset: 0n, length: SIZE }, Errno.ok);
    await expectSimple(c, { type: Cmd.writeZeroes, flags: CmdFlag.noHole, cookie: 3n, offset: 0n, length: SIZE }, Errno.ok);
    const r = await expectSimple(c, { type: Cmd.read, cookie: 4n, offset: 0n, length: 8192 }, Errno.ok, 8192);
    assert.deepEqual(r.data, Buffer.alloc(8192));
    c.disconnect();
    await c.expectClosed();
  }));

test('unaligned 3-byte write at offset 1: OK, read back correct', () =>
  scenario(async (t) => {
    const c = await RawClient.open(t.address, { structured: false });
    await expectSimple(c, { type: Cmd.write, cookie: 1n, offset: 1n, payload: Buffer.from([1, 2, 3]) }, Errno.ok);
    const r = await expectSimple(c, { type: Cmd.read, cookie: 2n, offset: 0n, length: 6 }, Errno.ok, 6);
    assert.deepEqual([...r.data], [0, 1, 2, 3, 0, 0]);
    c.disconnect();
    await c.expectClosed();
  }));

test('bad request magic: the server closes', () =>
  scenario(async (t) => {
    const c = await RawClient.open(t.address, { structured: false });
    const bad = Buffer.alloc(28);
    bad.writeUInt32BE(0x25609514, 0);
    c.send(bad);
    await c.expectClosed();
  }));

test('EOF in the middle of a WRITE payload: the server closes, nothing is written', () =>
  scenario(async (t) => {
    const c = await RawClient.open(t.address, { structured: false });
    c.sendRequest({ type: Cmd.write, cookie: 1n, offset: 0n, length: 64 * 1024 });
    c.send(Buffer.alloc(1000, 0xab));
    c.socket.end();
    await c.expectClosed();
    assert.equal(t.backend.calls.write, 0);
    assert.equal(t.backend.allocatedPages, 0);
    await until(() => t.server.connections === 1, 'the connection to go');
    assert.equal(t.server.stats().requestsInFlight, 0, 'the partial write released its slot');
  }));

test('structured replies: a read crossing the end gets an ERROR chunk with a message', () =>
  scenario(async (t) => {
    const c = await RawClient.open(t.address);
    c.sendRequest({ type: Cmd.read, cookie: 9n, offset: BigInt(SIZE - 512), length: 1024 });
    const r = await c.readChunk();
    assert.equal(r.cookie, 9n);
    assert.equal(r.type, ChunkType.error);
    assert.equal(r.flags, CHUNK_FLAG_DONE);
    const e = decodeErrorChunk(r.data);
    assert.equal(e.error, Errno.einval);
    assert.match(e.message, /beyond the end/);
    await expectAlive(c);
    c.disconnect();
    await c.expectClosed();
  }));

test('structured replies: a read of length 0 gets NONE with DONE', () =>
  scenario(async (t) => {
    const c = await RawClient.open(t.address);
    c.sendRequest({ type: Cmd.read, cookie: 3n, offset: 4096n, length: 0 });
    const r = await c.readChunk();
    assert.deepEqual([r.cookie, r.type, r.flags, r.data.length], [3n, ChunkType.none, CHUNK_FLAG_DONE, 0]);
    c.disconnect();
    await c.expectClosed();
  }));

test('structured replies: BLOCK_STATUS merges equal neighbours; REQ_ONE gives one extent', () =>
  scenario(async (t) => {
    const b = t.backend;
    await b.write(4096, Buffer.alloc(4096, 1), false);
    await b.write(8192, Buffer.alloc(4096, 2), false); // adjacent data pages: one extent
    await b.writeZeroes(65536, 65536, { fua: false, noHole: true, fastZero: false });
    const c = await RawClient.open(t.address, { meta: true });
    c.sendRequest({ type: Cmd.blockStatus, cookie: 1n, offset: 0n, length: MiB });
    const plain = await c.readChunk();
    assert.deepEqual([plain.type, plain.flags], [ChunkType.blockStatus, CHUNK_FLAG_DONE]);
    const status = decodeBlockStatus(plain.data);
    assert.equal(status.contextId, 1);
    assert.deepEqual(status.extents, [
      [4096, 3],
      [8192, 0],
      [65536 - 12288, 3],
      [65536, 2],
      [MiB - 131072, 3],
    ]);
    c.sendRequest({ type: Cmd.blockStatus, flags: CmdFlag.reqOne, cookie: 2n, offset: 4096n, length: MiB });
    assert.deepEqual(decodeBlockStatus((await c.readChunk()).data).extents, [[8192, 0]]);
    c.sendRequest({ type: Cmd.blockStatus, flags: CmdFlag.reqOne, cookie: 3n, offset: 4097n, length: 100 });
    assert.deepEqual(decodeBlockStatus((await c.readChunk()).data).extents, [[100, 0]], 'no longer than the request');
    c.sendRequest({ type: Cmd.blockStatus, cookie: 4n, offset: BigInt(SIZE - 1), length: 1 });
    assert.deepEqual(decodeBlockStatus((await c.readChunk()).data).extents, [[1, 3]], 'the last byte of the export');
    c.sendRequest({ type: Cmd.blockStatus, cookie: 5n, offset: BigInt(SIZE - 1), length: 2 });
    assert.equal(decodeErrorChunk((await c.readChunk()).data).error, Errno.einval, 'past the end');
    c.disconnect();
    await c.expectClosed();
  }));
