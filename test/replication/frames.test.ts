// The replication frame codec: the byte layout matches the table in
// frames.ts, every frame type survives encode → decode unchanged, the encoder
// refuses fields it cannot put on the wire, and the limits keep their
// relationships (and agree with the native WAL format).
import { test } from 'node:test';
import * as assert from 'node:assert/strict';

import fc from 'fast-check';

import { FrameDecoder } from '../../lib/replication/frame_decoder';
import {
  encodeFrame,
  encodeFrameChunks,
  FRAME_BODY_BYTES_FLOOR,
  FRAME_BODY_BYTES_MAX,
  FRAME_HEADER_BYTES,
  FRAME_TYPE_CODES,
  WAL_RECORD_BYTES_MAX,
  WAL_RECORD_ENTRY_BYTES,
  WAL_RECORD_HEADER_BYTES,
  WAL_RECORDS_PER_FRAME_MAX,
  WAL_RECORDS_PREFIX_BYTES,
  type Frame,
  type HelloFrame,
  type WalRecordsFrame,
} from '../../lib/replication/frames';
import { bytesOf, craftFrame, decodeChunks, FRAME_ARBITRARIES, own, SAMPLES, UUID } from './frame_samples';

function decodeOne(bytes: Uint8Array): Frame {
  const frames = decodeChunks([bytes]);
  assert.equal(frames.length, 1);
  return frames[0]!;
}

test('layout: a COMMIT frame is byte for byte the documented header and body', () => {
  const body = Buffer.alloc(8);
  body.writeBigUInt64LE(0x0012_3456_789a_bcden);
  const expected = craftFrame({ typeCode: 4, epoch: 9n, body });
  assert.deepEqual(expected.subarray(0, 4), Buffer.from('BLWP'), 'magic reads "BLWP"');
  const encoded = encodeFrame({ type: 'commit', epoch: 9, lsnCommit: 0x0012_3456_789a_bcde });
  assert.deepEqual(encoded, expected);
});

test('layout: a HELLO frame is byte for byte the documented body', () => {
  const hello = SAMPLES[0] as HelloFrame;
  const body = Buffer.alloc(64 + hello.nodeId.length);
  body[0] = 1; // primary
  body[1] = hello.nodeId.length;
  body.write(UUID, 8, 'hex');
  body.writeBigUInt64LE(BigInt(hello.lsnDurable), 24);
  body.writeBigUInt64LE(BigInt(hello.lsnApplied), 32);
  body.writeBigUInt64LE(BigInt(hello.lsnTail), 40);
  body.writeBigUInt64LE(BigInt(hello.lsnHead), 48);
  body.writeBigUInt64LE(hello.applyChecksum, 56);
  body.write(hello.nodeId, 64, 'utf8');
  assert.deepEqual(encodeFrame(hello), craftFrame({ typeCode: 1, epoch: 7n, body }));
});

test('layout: a WAL_RECORDS frame is prefix, index, then the records back to back', () => {
  const records = [
    { lsn: 5, bytes: bytesOf(3, 1) },
    { lsn: 2 ** 33, bytes: bytesOf(70, 2) },
  ];
  const index = Buffer.alloc(8 + 2 * 12);
  index.writeUInt32LE(2, 0);
  index.writeBigUInt64LE(5n, 8);
  index.writeUInt32LE(3, 16);
  index.writeBigUInt64LE(2n ** 33n, 20);
  index.writeUInt32LE(70, 28);
  const body = Buffer.concat([index, records[0]!.bytes, records[1]!.bytes]);
  assert.deepEqual(encodeFrame({ type: 'wal_records', epoch: 1, records }), craftFrame({ typeCode: 2, epoch: 1n, body }));
});

test('every sample frame round-trips, alone and as a stream', () => {
  for (const frame of SAMPLES) assert.deepEqual(decodeOne(encodeFrame(frame)), frame, frame.type);
  assert.deepEqual(decodeChunks([Buffer.concat(SAMPLES.map(encodeFrame))]), SAMPLES);
  assert.deepEqual(new Set(SAMPLES.map((f) => f.type)), new Set(Object.keys(FRAME_TYPE_CODES)), 'a sample of every type');
});

for (const [name, arbitrary] of Object.entries(FRAME_ARBITRARIES)) {
  test(`round trip of random ${name} frames (encodeFrame and encodeFrameChunks)`, () => {
    fc.assert(
      fc.property(arbitrary, (frame) => {
        assert.deepEqual(decodeOne(encodeFrame(frame)), frame);
        assert.deepEqual(decodeChunks(encodeFrameChunks(frame).map(own)), [frame]);
      }),
      { numRuns: 200 },
    );
  });
}

test('encodeFrameChunks passes WAL record bytes through without copying them', () => {
  const records = [
    { lsn: 1, bytes: bytesOf(10, 1) },
    { lsn: 2, bytes: bytesOf(20, 2) },
  ];
  const chunks = encodeFrameChunks({ type: 'wal_records', epoch: 1, records });
  assert.equal(chunks.length, 4, 'header, prefix+index, two records');
  assert.equal(chunks[0]!.byteLength, FRAME_HEADER_BYTES);
  assert.equal(chunks[2], records[0]!.bytes);
  assert.equal(chunks[3], records[1]!.bytes);
});

test('a maximal WAL record and a full group of the smallest records each fit one frame', () => {
  const big = bytesOf(WAL_RECORD_BYTES_MAX, 1);
  const frame: Frame = { type: 'wal_records', epoch: 1, records: [{ lsn: 1, bytes: big }] };
  const decoded = decodeChunks([encodeFrame(frame)], new FrameDecoder({ bodyBytesMax: FRAME_BODY_BYTES_FLOOR }));
  assert.deepEqual(decoded, [frame]);
  const small = bytesOf(WAL_RECORD_HEADER_BYTES, 2);
  const records = Array.from({ length: WAL_RECORDS_PER_FRAME_MAX }, (_, i) => ({ lsn: i + 1, bytes: small }));
  const many = decodeChunks([encodeFrame({ type: 'wal_records', epoch: 1, records })]);
  assert.equal(many.length, 1);
  assert.equal((many[0] as WalRecordsFrame).records.length, WAL_RECORDS_PER_FRAME_MAX);
});

test('limits keep their relationships', () => {
  assert.ok(FRAME_HEADER_BYTES + FRAME_BODY_BYTES_MAX <= 0xffff_ffff);
  assert.equal(FRAME_BODY_BYTES_FLOOR, WAL_RECORDS_PREFIX_BYTES + WAL_RECORD_ENTRY_BYTES + WAL_RECORD_BYTES_MAX);
  assert.ok(FRAME_BODY_BYTES_FLOOR <= FRAME_BODY_BYTES_MAX);
  assert.ok(WAL_RECORDS_PREFIX_BYTES + WAL_RECORDS_PER_FRAME_MAX * (WAL_RECORD_ENTRY_BYTES + WAL_RECORD_HEADER_BYTES) <= FRAME_BODY_BYTES_MAX);
});

test('WAL limits mirror the native WAL format', async (t) => {
  let limits: { recordHeaderBytes: number; recordPayloadMax: number; recordAlignBytes: number; frameHeaderBytes: number; frameBytesLimit: number };
  try {
    const walFormat = await import('../../lib/native/wal_format');
    limits = walFormat.walFormatLimits();
  } catch (err) {
    t.skip(`skipped: missing the native addon (${(err as Error).message.split('\n')[0]})`);
    return;
  }
  assert.equal(WAL_RECORD_HEADER_BYTES, limits.recordHeaderBytes);
  const recordSpanMax = Math.ceil((limits.recordHeaderBytes + limits.recordPayloadMax) / limits.recordAlignBytes) * limits.recordAlignBytes;
  assert.equal(WAL_RECORD_BYTES_MAX, recordSpanMax, 'a shipped record is one record span');
  const recordsPerWalFrameMax = Math.floor((limits.frameBytesLimit - limits.frameHeaderBytes) / limits.recordHeaderBytes);
  assert.ok(recordsPerWalFrameMax <= WAL_RECORDS_PER_FRAME_MAX, 'a whole commit group fits one replication frame');
});

test('the encoder refuses fields it cannot put on the wire', () => {
  const hello = SAMPLES[0] as HelloFrame;
  const rec = (lsn: number, length = 1): { lsn: number; bytes: Uint8Array } => ({ lsn, bytes: new Uint8Array(length) });
  const cases: [string, unknown, typeof RangeError | typeof TypeError][] = [
    ['epoch < 0', { ...hello, epoch: -1 }, RangeError],
    ['epoch > 2^53-1', { ...hello, epoch: 2 ** 53 }, RangeError],
    ['fractional LSN', { ...hello, lsnDurable: 1.5 }, RangeError],
    ['bad role', { ...hello, role: 'leader' }, RangeError],
    ['upper-case uuid', { ...hello, volumeUuid: UUID.toUpperCase() }, RangeError],
    ['short uuid', { ...hello, volumeUuid: UUID.slice(2) }, RangeError],
    ['empty node id', { ...hello, nodeId: '' }, RangeError],
    ['node id of 256 bytes', { ...hello, nodeId: 'é'.repeat(128) }, RangeError],
    ['lone surrogate', { ...hello, nodeId: 'a\ud800' }, RangeError],
    ['checksum >= 2^64', { ...hello, applyChecksum: 1n << 64n }, RangeError],
    ['checksum as number', { ...hello, applyChecksum: 1 }, RangeError],
    ['no records', { type: 'wal_records', epoch: 1, records: [] }, RangeError],
    ['lsn 0', { type: 'wal_records', epoch: 1, records: [rec(0)] }, RangeError],
    ['equal LSNs', { type: 'wal_records', epoch: 1, records: [rec(3), rec(3)] }, RangeError],
    ['decreasing LSNs', { type: 'wal_records', epoch: 1, records: [rec(4), rec(3)] }, RangeError],
    ['empty record', { type: 'wal_records', epoch: 1, records: [rec(1, 0)] }, RangeError],
    ['record too large', { type: 'wal_records', epoch: 1, records: [rec(1, WAL_RECORD_BYTES_MAX + 1)] }, RangeError],
    ['record bytes not bytes', { type: 'wal_records', epoch: 1, records: [{ lsn: 1, bytes: 'abc' }] }, TypeError],
    ['too many records', { type: 'wal_records', epoch: 1, records: Array.from({ length: WAL_RECORDS_PER_FRAME_MAX + 1 }, (_, i) => rec(i + 1)) }, RangeError],
    ['unknown close code', { type: 'error', epoch: 1, code: 'oops', message: '' }, RangeError],
    ['message too long', { type: 'goodbye', epoch: 1, code: 'shutdown', message: 'x'.repeat(1025) }, RangeError],
    ['unknown type', { type: 'ping', epoch: 1 }, RangeError],
  ];
  for (const [name, frame, errorClass] of cases) {
    assert.throws(() => encodeFrame(frame as Frame), errorClass, name);
  }
});

test('the encoder refuses a body over FRAME_BODY_BYTES_MAX and asks for a split', () => {
  const big = new Uint8Array(WAL_RECORD_BYTES_MAX);
  const count = Math.ceil(FRAME_BODY_BYTES_MAX / WAL_RECORD_BYTES_MAX) + 1;
  const records = Array.from({ length: count }, (_, i) => ({ lsn: i + 1, bytes: big }));
  assert.throws(() => encodeFrameChunks({ type: 'wal_records', epoch: 1, records }), /over FRAME_BODY_BYTES_MAX.*split/);
});
