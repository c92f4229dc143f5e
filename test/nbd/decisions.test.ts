// The pure parts of the NBD protocol core, one test per outcome: request
// validation (checkRequest, payloadOf), u64 offsets, extent merging, option
// data decoding, transmission flags and string limits.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';

import {
  checkRequest,
  Cmd,
  CmdFlag,
  decodeInfoRequest,
  decodeMetaContextRequest,
  decodeRequestHeader,
  Errno,
  mergeExtents,
  newRequestHeader,
  OFFSET_BEYOND,
  Payload,
  payloadOf,
  type RequestContext,
  type RequestHeader,
  REQUEST_MAGIC,
  STRING_BYTES_MAX,
  TransmissionFlag as F,
  transmissionFlagsFor,
  truncateUtf8,
} from '../../lib/nbd/protocol';
import { infoData, metaContextData } from './raw_client';

const MiB = 1 << 20;
const SIZE = 64 * MiB;
const ctx: RequestContext = { sizeBytes: SIZE, readOnly: false, structuredReplies: true, blockStatus: true, shuttingDown: false };

function header(type: number, offset: bigint, lengthBytes: number, flags = 0): RequestHeader {
  const b = Buffer.alloc(28);
  b.writeUInt32BE(REQUEST_MAGIC, 0);
  b.writeUInt16BE(flags, 4);
  b.writeUInt16BE(type, 6);
  b.writeBigUInt64BE(0x0102030405060708n, 8);
  b.writeBigUInt64BE(offset, 16);
  b.writeUInt32BE(lengthBytes, 24);
  const h = newRequestHeader();
  decodeRequestHeader(b, 0, h);
  return h;
}

test('request header: cookie halves, exact offsets below 2^53, OFFSET_BEYOND above', () => {
  const h = header(Cmd.read, 2n ** 53n - 1n, 512, CmdFlag.fua);
  assert.deepEqual([h.magicOk, h.type, h.flags, h.cookieHi, h.cookieLo, h.offsetBytes, h.lengthBytes], [true, Cmd.read, 1, 0x01020304, 0x05060708, 2 ** 53 - 1, 512]);
  assert.equal(header(Cmd.read, 2n ** 53n, 0).offsetBytes, OFFSET_BEYOND);
  assert.equal(header(Cmd.read, 2n ** 64n - 1n, 0).offsetBytes, OFFSET_BEYOND);
});

test('checkRequest: each outcome', () => {
  const cases: [string, RequestHeader, Partial<RequestContext>, Errno, boolean][] = [
    ['a valid read', header(Cmd.read, 0n, 4096), {}, Errno.ok, false],
    ['read up to the last byte', header(Cmd.read, BigInt(SIZE - 1), 1), {}, Errno.ok, false],
    ['shutting down', header(Cmd.read, 0n, 4096), { shuttingDown: true }, Errno.eshutdown, false],
    ['unknown command', header(42, 0n, 0), {}, Errno.einval, true],
    ['unknown flag', header(Cmd.read, 0n, 1, 0x8000), {}, Errno.einval, true],
    ['NO_HOLE on write', header(Cmd.write, 0n, 1, CmdFlag.noHole), {}, Errno.einval, true],
    ['REQ_ONE on read', header(Cmd.read, 0n, 1, CmdFlag.reqOne), {}, Errno.einval, true],
    ['FAST_ZERO on trim', header(Cmd.trim, 0n, 1, CmdFlag.fastZero), {}, Errno.einval, true],
    ['DF without structured replies', header(Cmd.read, 0n, 1, CmdFlag.df), { structuredReplies: false }, Errno.einval, true],
    ['FUA on every command', header(Cmd.cache, 0n, 1, CmdFlag.fua), {}, Errno.ok, false],
    ['block status without a context', header(Cmd.blockStatus, 0n, 1), { blockStatus: false }, Errno.einval, true],
    ['block status of 0 bytes', header(Cmd.blockStatus, 0n, 0), {}, Errno.einval, true],
    ['write on read-only', header(Cmd.write, 0n, 1), { readOnly: true }, Errno.eperm, false],
    ['trim on read-only', header(Cmd.trim, 0n, 1), { readOnly: true }, Errno.eperm, false],
    ['read on read-only', header(Cmd.read, 0n, 1), { readOnly: true }, Errno.ok, false],
    ['read over the maximum payload', header(Cmd.read, 0n, 32 * MiB + 1), {}, Errno.einval, true],
    ['zeroing far over the maximum payload', header(Cmd.writeZeroes, 0n, SIZE), {}, Errno.ok, false],
    ['read past the end', header(Cmd.read, BigInt(SIZE - 1), 2), {}, Errno.einval, true],
    ['read wrapping around 2^64', header(Cmd.read, 2n ** 64n - 1n, 2), {}, Errno.einval, true],
    ['write past the end', header(Cmd.write, BigInt(SIZE), 1), {}, Errno.enospc, true],
    ['zeroing past the end', header(Cmd.writeZeroes, BigInt(SIZE), 1), {}, Errno.enospc, true],
    ['trim past the end', header(Cmd.trim, BigInt(SIZE), 1), {}, Errno.einval, true],
    ['flush with an offset and length', header(Cmd.flush, 2n ** 64n - 1n, 99), {}, Errno.ok, false],
    ['read of 0 bytes at the end', header(Cmd.read, BigInt(SIZE), 0), {}, Errno.ok, false],
  ];
  for (const [name, h, c, errno, violation] of cases) {
    const v = checkRequest(h, { ...ctx, ...c });
    assert.equal(v.errno, errno, name);
    assert.equal(v.violation, violation, name);
    assert.equal(v.message === '', errno === Errno.ok, `${name}: a message exactly when refused`);
  }
});

test('payloadOf: read a write payload, discard one up to twice the maximum, disconnect beyond', () => {
  assert.equal(payloadOf(Cmd.read, 32 * MiB), Payload.none);
  assert.equal(payloadOf(Cmd.write, 0), Payload.read);
  assert.equal(payloadOf(Cmd.write, 32 * MiB), Payload.read);
  assert.equal(payloadOf(Cmd.write, 32 * MiB + 1), Payload.discard);
  assert.equal(payloadOf(Cmd.write, 64 * MiB), Payload.discard);
  assert.equal(payloadOf(Cmd.write, 64 * MiB + 1), Payload.disconnect);
});

test('mergeExtents: merges equal neighbours, clips to the request, caps the count, rejects bad extents', () => {
  const e = (lengthBytes: number, hole: boolean, zero: boolean): { lengthBytes: number; hole: boolean; zero: boolean } => ({ lengthBytes, hole, zero });
  const pairs = (r: ReturnType<typeof mergeExtents>): [number, number][] => {
    assert.ok(typeof r !== 'string', String(r));
    return Array.from({ length: r.count }, (_, i) => [r.lengths[i]!, r.flags[i]!]);
  };
  const extents = [e(4096, true, true), e(4096, true, true), e(4096, false, false), e(8192, false, true), e(4096, false, true)];
  assert.deepEqual(pairs(mergeExtents(extents, 1 << 20, 100)), [[8192, 3], [4096, 0], [12288, 2]]);
  assert.deepEqual(pairs(mergeExtents(extents, 10000, 100)), [[8192, 3], [1808, 0]], 'clipped to the request');
  assert.deepEqual(pairs(mergeExtents(extents, 1 << 20, 1)), [[8192, 3]], 'REQ_ONE');
  assert.deepEqual(pairs(mergeExtents(extents, 1 << 20, 2)), [[8192, 3], [4096, 0]], 'capped');
  assert.deepEqual(pairs(mergeExtents([e(4096, true, false)], 100, 5)), [[100, 1]], 'hole without zero');
  assert.equal(typeof mergeExtents([], 4096, 10), 'string');
  assert.equal(typeof mergeExtents([e(0, false, false)], 4096, 10), 'string');
  assert.equal(typeof mergeExtents([e(1.5, false, false)], 4096, 10), 'string');
});

test('decodeInfoRequest and decodeMetaContextRequest: well-formed data and every overrun', () => {
  assert.deepEqual(decodeInfoRequest(infoData('disk', [1, 3])), { name: 'disk', infoTypes: [1, 3] });
  const overrun = Buffer.alloc(10);
  overrun.writeUInt32BE(5, 0);
  for (const bad of [Buffer.alloc(5), overrun, Buffer.concat([infoData('a', [1]), Buffer.alloc(1)]), infoData('x'.repeat(STRING_BYTES_MAX + 1), [])]) {
    assert.equal(typeof decodeInfoRequest(bad), 'string');
  }
  assert.deepEqual(decodeMetaContextRequest(metaContextData('d', ['base:allocation', 'x:y'])), { exportName: 'd', queries: ['base:allocation', 'x:y'] });
  const good = metaContextData('d', ['base:allocation']);
  for (const bad of [good.subarray(0, 7), good.subarray(0, good.length - 1), Buffer.concat([good, Buffer.alloc(2)]), metaContextData('', ['q'.repeat(STRING_BYTES_MAX + 1)])]) {
    assert.equal(typeof decodeMetaContextRequest(bad), 'string');
  }
});

test('transmission flags: writable, read-only, DF only with structured replies', () => {
  const base = F.hasFlags | F.sendFlush | F.sendCache | F.canMultiConn;
  assert.equal(transmissionFlagsFor(false, false), base | F.sendFua | F.sendTrim | F.sendWriteZeroes | F.sendFastZero);
  assert.equal(transmissionFlagsFor(false, false), 0xd6d, 'what nbdkit and qemu advertise for a writable export');
  assert.equal(transmissionFlagsFor(false, true), 0xded);
  assert.equal(transmissionFlagsFor(true, false), base | F.readOnly);
  assert.equal(transmissionFlagsFor(true, true), base | F.readOnly | F.sendDf);
});

test('truncateUtf8: at most 4096 bytes, never a split character', () => {
  assert.equal(truncateUtf8('short'), 'short');
  const long = 'é'.repeat(3000); // 6000 bytes
  const cut = truncateUtf8(long);
  assert.ok(Buffer.byteLength(cut) <= STRING_BYTES_MAX);
  assert.equal(cut, 'é'.repeat(2048));
});
