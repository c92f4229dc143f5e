// The NBD handshake and what it negotiates, from a raw socket: the greeting,
// INFO/GO replies (export, name, description, block sizes), LIST, EXPORT_NAME
// with and without NO_ZEROES, ABORT, meta contexts, the transmission flags
// for writable and read-only exports, and structured replies (data, hole,
// DF, error chunks with messages, backend errors mapped by code).
import { test } from 'node:test';
import * as assert from 'node:assert/strict';

import { MemoryBackend } from '../../lib/nbd/memory_backend';
import {
  CHUNK_FLAG_DONE,
  ChunkType,
  Cmd,
  CmdFlag,
  Errno,
  errnoOf,
  InfoType,
  Opt,
  Rep,
  TransmissionFlag as F,
} from '../../lib/nbd/protocol';
import { NbdServer } from '../../lib/nbd/server';
import { decodeBlockStatus, decodeErrorChunk, infoData, metaContextData, type OptionReply, RawClient, startServer } from './raw_client';

const MiB = 1 << 20;
const WRITABLE_FLAGS = F.hasFlags | F.sendFlush | F.sendFua | F.sendTrim | F.sendWriteZeroes | F.canMultiConn | F.sendCache | F.sendFastZero;

async function twoExports(): Promise<{ server: NbdServer; address: { host: string; port: number }; rw: MemoryBackend; ro: MemoryBackend }> {
  const rw = new MemoryBackend({ sizeBytes: 8 * MiB });
  const ro = new MemoryBackend({ sizeBytes: MiB + 512, readOnly: true });
  const server = new NbdServer({
    exports: () => [
      { name: 'rw', description: 'a writable disk', backend: rw },
      { name: 'ro', description: 'a read-only disk', backend: ro },
    ],
  });
  const address = (await server.listen({ host: '127.0.0.1', port: 0 })) as { host: string; port: number };
  return { server, address, rw, ro };
}

async function haggle(address: { host: string; port: number }, clientFlags = 3): Promise<RawClient> {
  const c = await RawClient.connect(address);
  assert.equal(await c.readGreeting(), 3, 'FIXED_NEWSTYLE | NO_ZEROES');
  c.sendClientFlags(clientFlags);
  return c;
}

function infos(replies: OptionReply[]): Map<number, Buffer> {
  const out = new Map<number, Buffer>();
  for (const r of replies.filter((x) => x.type === Rep.info)) {
    const type = r.data.readUInt16BE(0);
    assert.ok(!out.has(type), `info ${type} sent once`);
    out.set(type, r.data.subarray(2));
  }
  return out;
}

test('greeting: NBDMAGIC, IHAVEOPT, handshake flags FIXED_NEWSTYLE|NO_ZEROES, exactly 18 bytes', async () => {
  const t = await startServer();
  const c = await RawClient.connect(t.address);
  const greeting = await c.read(18);
  assert.equal(greeting.toString('hex'), '4e42444d41474943' + '49484156454f5054' + '0003');
  assert.equal(c.bufferedBytes, 0);
  c.destroy();
  await t.close();
});

test('INFO and GO: export, name, description and block sizes; INFO then GO agree', async () => {
  const { server, address } = await twoExports();
  const c = await haggle(address);
  await c.option(Opt.structuredReply);
  const info = await c.option(Opt.info, infoData('', [InfoType.name, InfoType.description, InfoType.blockSize, 999]));
  assert.equal(info.at(-1)!.type, Rep.ack);
  const got = infos(info);
  const exp = got.get(InfoType.export)!;
  assert.equal(exp.length, 10, 'INFO_EXPORT is 12 bytes with its type');
  assert.equal(Number(exp.readBigUInt64BE(0)), 8 * MiB);
  assert.equal(exp.readUInt16BE(8), WRITABLE_FLAGS | F.sendDf);
  assert.equal(got.get(InfoType.name)!.toString(), 'rw', 'the canonical name of the default export');
  assert.equal(got.get(InfoType.description)!.toString(), 'a writable disk');
  const sizes = got.get(InfoType.blockSize)!;
  assert.deepEqual([sizes.length, sizes.readUInt32BE(0), sizes.readUInt32BE(4), sizes.readUInt32BE(8)], [12, 1, 4096, 32 * MiB]);
  assert.ok(!got.has(999), 'unknown info requests are ignored');
  const go = await c.option(Opt.go, infoData('', [InfoType.name, InfoType.description, InfoType.blockSize]));
  assert.deepEqual(infos(go), got, 'GO returns what INFO did');
  c.sendRequest({ type: Cmd.read, cookie: 1n, offset: 0n, length: 512 });
  assert.equal((await c.readChunk()).cookie, 1n, 'in transmission straight after the ACK, no padding');
  c.disconnect();
  await c.expectClosed();
  await server.close();
});

test('GO without asking for block sizes still works; a non-fixed-newstyle client may use EXPORT_NAME', async () => {
  const { server, address } = await twoExports();
  const c = await haggle(address);
  assert.equal((await c.option(Opt.go, infoData('ro', []))).at(-1)!.type, Rep.ack);
  c.disconnect();
  await c.expectClosed();
  const old = await haggle(address, 0);
  old.sendOption(Opt.exportName, Buffer.from('rw'));
  const reply = await old.read(10 + 124);
  assert.equal(Number(reply.readBigUInt64BE(0)), 8 * MiB);
  assert.equal(reply.readUInt16BE(8), WRITABLE_FLAGS, 'no DF without structured replies');
  assert.ok(reply.subarray(10).every((b) => b === 0), '124 zero bytes without NO_ZEROES');
  old.disconnect();
  await old.expectClosed();
  await server.close();
});

test('EXPORT_NAME with NO_ZEROES: exactly 10 bytes, then transmission', async () => {
  const { server, address, ro } = await twoExports();
  const c = await haggle(address);
  c.sendOption(Opt.exportName, Buffer.from('ro'));
  const reply = await c.read(10);
  assert.equal(Number(reply.readBigUInt64BE(0)), ro.sizeBytes);
  assert.equal(reply.readUInt16BE(8), F.hasFlags | F.readOnly | F.sendFlush | F.canMultiConn | F.sendCache);
  c.sendRequest({ type: Cmd.read, cookie: 4n, offset: 0n, length: 8 });
  const r = await c.readSimple(8);
  assert.deepEqual([r.cookie, r.error, r.data.length], [4n, 0, 8], 'the first bytes after the 10 are a reply');
  c.disconnect();
  await c.expectClosed();
  await server.close();
});

test('LIST: every export with its description, then ACK', async () => {
  const { server, address } = await twoExports();
  const c = await haggle(address);
  const replies = await c.option(Opt.list);
  assert.deepEqual(replies.map((r) => r.type), [Rep.server, Rep.server, Rep.ack]);
  const listed = replies.slice(0, 2).map((r) => {
    const n = r.data.readUInt32BE(0);
    return [r.data.toString('utf8', 4, 4 + n), r.data.toString('utf8', 4 + n)];
  });
  assert.deepEqual(listed, [
    ['rw', 'a writable disk'],
    ['ro', 'a read-only disk'],
  ]);
  c.destroy();
  await server.close();
});

test('ABORT: ACK, then the server closes', async () => {
  const t = await startServer();
  const c = await haggle(t.address);
  c.sendOption(Opt.abort, Buffer.from('ignored data'));
  const r = await c.readOptionReply();
  assert.deepEqual([r.option, r.type, r.data.length], [Opt.abort, Rep.ack, 0]);
  await c.expectClosed();
  await t.close();
});

test('meta contexts: LIST with no query or base: lists base:allocation; SET selects it for one export only', async () => {
  const { server, address } = await twoExports();
  const c = await haggle(address);
  for (const queries of [[], ['base:'], ['base:allocation', 'x-other:thing']]) {
    const replies = await c.option(Opt.listMetaContext, metaContextData('rw', queries));
    assert.deepEqual(replies.map((r) => r.type), [Rep.metaContext, Rep.ack], `LIST ${JSON.stringify(queries)}`);
    assert.equal(replies[0]!.data.readUInt32BE(0), 0, 'LIST replies carry context id 0');
    assert.equal(replies[0]!.data.toString('utf8', 4), 'base:allocation');
  }
  const bad = Buffer.alloc(12);
  bad.writeUInt32BE(2, 0);
  bad.writeUInt32BE(1, 8); // one query, missing
  assert.equal((await c.option(Opt.listMetaContext, bad)).at(-1)!.type, Rep.errInvalid);
  await c.option(Opt.structuredReply);
  const set = await c.option(Opt.setMetaContext, metaContextData('rw', ['base:allocation']));
  assert.deepEqual(set.map((r) => r.type), [Rep.metaContext, Rep.ack]);
  assert.equal(set[0]!.data.readUInt32BE(0), 1);
  await c.option(Opt.go, infoData('ro', []));
  c.sendRequest({ type: Cmd.blockStatus, cookie: 1n, offset: 0n, length: 512 });
  assert.equal(decodeErrorChunk((await c.readChunk()).data).error, Errno.einval, 'contexts were set for rw, not ro');
  c.disconnect();
  await c.expectClosed();
  await server.close();
});

test('meta contexts: a SET with no queries replaces an earlier selection', async () => {
  const t = await startServer();
  const c = await haggle(t.address);
  await c.option(Opt.structuredReply);
  assert.equal((await c.option(Opt.setMetaContext, metaContextData('', ['base:allocation']))).length, 2);
  assert.deepEqual((await c.option(Opt.setMetaContext, metaContextData('', []))).map((r) => r.type), [Rep.ack]);
  await c.option(Opt.go, infoData('', []));
  c.sendRequest({ type: Cmd.blockStatus, cookie: 1n, offset: 0n, length: 512 });
  assert.equal(decodeErrorChunk((await c.readChunk()).data).error, Errno.einval);
  c.disconnect();
  await c.expectClosed();
  await t.close();
});

test('read-only export: READ_ONLY advertised; writes, trims and zeroes get EPERM, the connection lives on', async () => {
  const { server, address, ro } = await twoExports();
  const c = await RawClient.open(address, { exportName: 'ro', structured: false });
  assert.equal(c.transmissionFlags, F.hasFlags | F.readOnly | F.sendFlush | F.canMultiConn | F.sendCache);
  const requests = [
    { type: Cmd.write, cookie: 1n, offset: 0n, payload: Buffer.alloc(4096, 1) },
    { type: Cmd.trim, cookie: 2n, offset: 0n, length: 4096 },
    { type: Cmd.writeZeroes, cookie: 3n, offset: 0n, length: 4096 },
    { type: Cmd.write, cookie: 4n, offset: BigInt(2 * MiB), payload: Buffer.alloc(512, 1) }, // also past the end
  ];
  for (const r of requests) {
    c.sendRequest(r);
    const reply = await c.readSimple();
    assert.deepEqual([reply.cookie, reply.error], [r.cookie, Errno.eperm]);
  }
  assert.equal(ro.calls.write + ro.calls.trim + ro.calls.writeZeroes, 0);
  c.sendRequest({ type: Cmd.read, cookie: 5n, offset: 0n, length: 512 });
  assert.equal((await c.readSimple(512)).error, 0);
  c.disconnect();
  await c.expectClosed();
  await server.close();
});

test('structured READ: data as OFFSET_DATA at its offset, zeroes as OFFSET_HOLE, DF forces data', async () => {
  const t = await startServer();
  await t.backend.write(MiB + 4096, Buffer.alloc(4096, 0x42), false);
  const c = await RawClient.open(t.address);
  c.sendRequest({ type: Cmd.read, cookie: 1n, offset: BigInt(MiB + 4096), length: 4096 });
  const data = await c.readChunk();
  assert.deepEqual([data.type, data.flags, data.data.length], [ChunkType.offsetData, CHUNK_FLAG_DONE, 8 + 4096]);
  assert.equal(Number(data.data.readBigUInt64BE(0)), MiB + 4096);
  assert.ok(data.data.subarray(8).every((b) => b === 0x42));
  c.sendRequest({ type: Cmd.read, cookie: 2n, offset: 8192n, length: 65536 });
  const hole = await c.readChunk();
  assert.deepEqual([hole.type, hole.flags, Number(hole.data.readBigUInt64BE(0)), hole.data.readUInt32BE(8)], [ChunkType.offsetHole, CHUNK_FLAG_DONE, 8192, 65536]);
  c.sendRequest({ type: Cmd.read, flags: CmdFlag.df, cookie: 3n, offset: 8192n, length: 65536 });
  const df = await c.readChunk();
  assert.deepEqual([df.type, df.data.length], [ChunkType.offsetData, 8 + 65536], 'DF: one data chunk');
  assert.ok(df.data.subarray(8).every((b) => b === 0));
  c.disconnect();
  await c.expectClosed();
  await t.close();
});

test('backend errors map by code; structured errors carry the message', async () => {
  const failures: Record<string, string> = {};
  const t = await startServer({
    backend: {
      beforeOp: (op) => {
        const code = failures[op];
        if (code !== undefined) throw Object.assign(new Error(`injected ${code}`), { code });
      },
    },
  });
  const c = await RawClient.open(t.address, { meta: true });
  const cases: [string, string, { type: number; flags?: number; length: number }, Errno][] = [
    ['read', 'ERR_SOMETHING', { type: Cmd.read, length: 512 }, Errno.eio],
    ['write', 'ERR_NO_SPACE', { type: Cmd.write, length: 512 }, Errno.enospc],
    ['writeZeroes', 'ERR_NOT_FAST', { type: Cmd.writeZeroes, flags: CmdFlag.fastZero, length: 4096 }, Errno.enotsup],
    ['trim', 'ERR_READ_ONLY', { type: Cmd.trim, length: 4096 }, Errno.eperm],
    ['flush', 'ERR_CLOSED', { type: Cmd.flush, length: 0 }, Errno.eshutdown],
    ['cache', 'ERR_OUT_OF_RANGE', { type: Cmd.cache, length: 4096 }, Errno.einval],
    ['blockStatus', 'ERR_SHUTDOWN', { type: Cmd.blockStatus, length: 4096 }, Errno.eshutdown],
  ];
  let cookie = 1n;
  for (const [op, code, r, errno] of cases) {
    failures[op] = code;
    const payload = r.type === Cmd.write ? Buffer.alloc(r.length, 1) : undefined;
    c.sendRequest({ type: r.type, flags: r.flags ?? 0, cookie, offset: 0n, length: r.length, payload });
    const reply = await c.readChunk();
    assert.deepEqual([reply.cookie, reply.type, reply.flags], [cookie++, ChunkType.error, CHUNK_FLAG_DONE], op);
    assert.deepEqual(decodeErrorChunk(reply.data), { error: errno, message: `injected ${code}` }, op);
    delete failures[op];
  }
  c.sendRequest({ type: Cmd.blockStatus, cookie, offset: 0n, length: 4096 });
  assert.deepEqual(decodeBlockStatus((await c.readChunk()).data).extents, [[4096, 3]], 'alive after the errors');
  assert.equal(t.server.stats().errors, cases.length);
  c.disconnect();
  await c.expectClosed();
  await t.close();
});

test('errnoOf: the one table from backend codes to wire errors', () => {
  const table: [unknown, Errno][] = [
    [{ code: 'ERR_OUT_OF_RANGE' }, Errno.einval],
    [{ code: 'ERR_BAD_OFFSET' }, Errno.einval],
    [{ code: 'ERR_BAD_LENGTH' }, Errno.einval],
    [{ code: 'ERR_TOO_LARGE' }, Errno.einval],
    [{ code: 'ERR_READ_ONLY' }, Errno.eperm],
    [{ code: 'ERR_NO_SPACE' }, Errno.enospc],
    [{ code: 'ERR_NOT_FAST' }, Errno.enotsup],
    [{ code: 'ERR_SHUTDOWN' }, Errno.eshutdown],
    [{ code: 'ERR_CLOSED' }, Errno.eshutdown],
    [{ code: 'ERR_IO' }, Errno.eio],
    [{ code: 5 }, Errno.eio],
    [new Error('plain'), Errno.eio],
    [null, Errno.eio],
    ['a string', Errno.eio],
  ];
  for (const [err, errno] of table) assert.equal(errnoOf(err), errno, JSON.stringify(err));
});
