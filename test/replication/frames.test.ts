// The replication frame codec: the byte layout matches the table in
// frames.ts, every frame type survives encode → decode unchanged, the encoder
// refuses fields it cannot put on the wire, and the limits keep their
// relationships (and agree with the native WAL format).
import { test } from 'node:test';
import * as assert from 'node:assert/strict';

import fc from 'fast-check';

import { FrameDecoder } from '../../lib/replication/frame_decoder';
import {
  BASE_CHUNK_BLOCKS_MAX,
  BASE_CHUNK_BODY_BYTES_MAX,
  BASE_CHUNK_FIXED_BYTES,
  BLOCK_BYTES,
  encodeFrame,
  encodeFrameChunks,
  FRAME_BODY_BYTES_FLOOR,
  FRAME_BODY_BYTES_MAX,
  FRAME_HEADER_BYTES,
  FRAME_TYPE_CODES,
  SESSION_FAILURE_CODES,
  WAL_RECORD_ALONE_BODY_BYTES,
  WAL_RECORD_BYTES_MAX,
  WAL_RECORD_ENTRY_BYTES,
  WAL_RECORD_HEADER_BYTES,
  WAL_RECORDS_PER_FRAME_MAX,
  WAL_RECORDS_PREFIX_BYTES,
  type BaseChunkFrame,
  type Frame,
  type HelloFrame,
  type RebuildStartFrame,
  type SessionAckFrame,
  type WalRecordsFrame,
} from '../../lib/replication/frames';
import type { SessionFailure } from '../../lib/protocol/types';
import { durabilityCode } from '../../lib/statemachine/control';
import { bytesOf, craftFrame, decodeChunks, FRAME_ARBITRARIES, own, SAMPLES, UUID } from './frame_samples';

const sampleOf = <T extends Frame['type']>(type: T, nth = 0): Extract<Frame, { type: T }> =>
  SAMPLES.filter((f) => f.type === type)[nth] as Extract<Frame, { type: T }>;

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

test('layout: a HELLO with rebuild info sets flag bit 0 and carries 40 bytes after the node id', () => {
  const hello = sampleOf('hello', 1);
  const rebuild = hello.rebuild!;
  const r = 64 + hello.nodeId.length;
  const body = Buffer.alloc(r + 40);
  body[0] = 2; // replica
  body[1] = hello.nodeId.length;
  body[2] = 1; // rebuild info present
  body.write(UUID, 8, 'hex');
  body.writeBigUInt64LE(BigInt(hello.lsnDurable), 24);
  body.writeBigUInt64LE(BigInt(hello.lsnApplied), 32);
  body.writeBigUInt64LE(BigInt(hello.lsnTail), 40);
  body.writeBigUInt64LE(BigInt(hello.lsnHead), 48);
  body.writeBigUInt64LE(hello.applyChecksum, 56);
  body.write(hello.nodeId, 64, 'utf8');
  body.writeBigUInt64LE(BigInt(rebuild.sessionId), r);
  body.writeBigUInt64LE(BigInt(rebuild.epoch), r + 8);
  body.writeBigUInt64LE(BigInt(rebuild.baseLsn), r + 16);
  body.writeUInt32LE(rebuild.chunksDone, r + 24);
  body.writeUInt32LE(rebuild.chunksTotal, r + 28);
  assert.deepEqual(encodeFrame(hello), craftFrame({ typeCode: 1, epoch: 7n, body }));
});

test('a HELLO without rebuild info encodes as before: bytes 2..7 zero, with the key absent or undefined', () => {
  const hello = SAMPLES[0] as HelloFrame;
  const bytes = encodeFrame(hello);
  assert.deepEqual(bytes.subarray(FRAME_HEADER_BYTES + 2, FRAME_HEADER_BYTES + 8), Buffer.alloc(6));
  assert.equal(bytes.length, FRAME_HEADER_BYTES + 64 + hello.nodeId.length);
  assert.deepEqual(encodeFrame({ ...hello, rebuild: undefined }), bytes);
  assert.ok(!('rebuild' in decodeOne(bytes)), 'no rebuild key when the flag is clear');
});

test('layout: a HELLO with the applied epoch sets flag bit 1 and carries it last, after any rebuild info', () => {
  for (const nth of [2, 3]) {
    const hello = sampleOf('hello', nth);
    const r = 64 + hello.nodeId.length;
    const plain = encodeFrame({ ...hello, epochApplied: undefined });
    const bytes = encodeFrame(hello);
    assert.equal(bytes.length, plain.length + 8);
    assert.equal(bytes[FRAME_HEADER_BYTES + 2], (hello.rebuild === undefined ? 0 : 1) | 2);
    const at = FRAME_HEADER_BYTES + r + (hello.rebuild === undefined ? 0 : 40);
    assert.equal(Number(bytes.readBigUInt64LE(at)), hello.epochApplied);
    // Everything before it is the HELLO without it (flags aside).
    assert.deepEqual(bytes.subarray(FRAME_HEADER_BYTES + 3, at), plain.subarray(FRAME_HEADER_BYTES + 3, at));
    assert.ok(!('epochApplied' in decodeOne(plain)), 'no epochApplied key when the flag is clear');
    assert.deepEqual(decodeOne(bytes), hello);
  }
});

test('layout: a REBUILD_START with the epoch history sets start flag bit 1 and appends count, reserved and the starts', () => {
  const start = sampleOf('rebuild_start', 2);
  const starts = start.epochStarts!;
  const plain = encodeFrame({ ...start, epochStarts: undefined });
  const bytes = encodeFrame(start);
  const body = bytes.subarray(FRAME_HEADER_BYTES);
  assert.equal(body.length, 72 + 16 * starts.length);
  assert.equal(body[57], 1 | 2); // a resync, with its history
  assert.deepEqual(body.subarray(0, 57), plain.subarray(FRAME_HEADER_BYTES, FRAME_HEADER_BYTES + 57));
  assert.equal(body.readUInt32LE(64), starts.length);
  assert.equal(body.readUInt32LE(68), 0);
  starts.forEach((s, i) => {
    assert.equal(Number(body.readBigUInt64LE(72 + 16 * i)), s.epoch);
    assert.equal(Number(body.readBigUInt64LE(80 + 16 * i)), s.lsn);
  });
  assert.deepEqual(decodeOne(bytes), start);
  assert.throws(() => encodeFrame({ ...start, epochStarts: [{ epoch: 3, lsn: 9 }, { epoch: 3, lsn: 10 }] }), /epochStarts: epoch start 1 \(epoch 3, LSN 10\) does not follow epoch 3 at LSN 9/);
});

test('layout: a REBUILD_START frame is byte for byte the documented body', () => {
  const start = sampleOf('rebuild_start');
  const body = Buffer.alloc(64);
  body.writeBigUInt64LE(BigInt(start.sessionId), 0);
  body.writeBigUInt64LE(BigInt(start.lsnBase), 8);
  body.writeBigUInt64LE(BigInt(start.lsnTarget), 16);
  body.writeBigUInt64LE(start.applyChecksumBase, 24);
  body.writeBigUInt64LE(BigInt(start.sizeBytes), 32);
  body.writeBigUInt64LE(BigInt(start.features), 40);
  body.writeUInt32LE(start.chunkBlocks, 48);
  body.writeUInt32LE(start.chunkFrom, 52);
  body.writeUInt8(start.durabilityCode, 56);
  assert.equal(start.durabilityCode, durabilityCode('sync_all'), 'the codes of statemachine/control.ts');
  assert.deepEqual(encodeFrame(start), craftFrame({ typeCode: 9, epoch: 7n, body }));
});

test('layout: a BASE_CHUNK frame is the fixed part then the data; a zero chunk has no data', () => {
  for (const chunk of [sampleOf('base_chunk', 0), sampleOf('base_chunk', 1)]) {
    const fixed = Buffer.alloc(48);
    fixed.writeBigUInt64LE(BigInt(chunk.sessionId), 0);
    fixed.writeUInt32LE(chunk.index, 8);
    fixed.writeUInt32LE(chunk.blocks, 12);
    fixed.writeBigUInt64LE(BigInt(chunk.startBlock), 16);
    fixed.writeBigUInt64LE(BigInt(chunk.lsnCheckpoint), 24);
    fixed.writeBigUInt64LE(chunk.digest, 32);
    fixed.writeUInt32LE(chunk.zero ? 1 : 0, 40);
    const body = chunk.zero ? fixed : Buffer.concat([fixed, chunk.data!]);
    assert.deepEqual(encodeFrame(chunk), craftFrame({ typeCode: 10, epoch: 7n, body }), `zero ${chunk.zero}`);
  }
});

test('layout: a SESSION_ACK frame is byte for byte the documented body', () => {
  for (const ack of [sampleOf('session_ack', 0), sampleOf('session_ack', 1)]) {
    const message = Buffer.from(ack.message, 'utf8');
    const body = Buffer.alloc(36 + message.length);
    body.writeBigUInt64LE(BigInt(ack.sessionId), 0);
    body.writeBigUInt64LE(BigInt(ack.lsnApplied), 8);
    body.writeBigUInt64LE(BigInt(ack.lsnAchieved), 16);
    body.writeUInt32LE(ack.chunksDone, 24);
    body[28] = { accepted: 1, running: 2, base_done: 3, completed: 4, failed: 5 }[ack.phase];
    body[29] = ack.failure === undefined ? 0 : SESSION_FAILURE_CODES[ack.failure];
    body[30] = ack.digestsMatch ? 1 : 0;
    body.writeUInt16LE(message.length, 32);
    message.copy(body, 36);
    assert.deepEqual(encodeFrame(ack), craftFrame({ typeCode: 11, epoch: 7n, body }), ack.phase);
  }
  assert.equal(SESSION_FAILURE_CODES.digest_mismatch, 6);
});

test('every SessionFailure has a distinct non-zero wire code', () => {
  const failures: readonly SessionFailure[] = [
    'epoch_mismatch',
    'transport_lost',
    'progress_stalled',
    'deadline_exceeded',
    'pin_lost',
    'digest_mismatch',
    'local_wal_corrupt',
    'local_base_corrupt',
    'superseded',
    'cancelled',
  ];
  assert.deepEqual(Object.keys(SESSION_FAILURE_CODES).sort(), [...failures].sort());
  const codes = Object.values(SESSION_FAILURE_CODES);
  assert.equal(new Set(codes).size, codes.length);
  assert.ok(codes.every((code) => code >= 1 && code <= 0xff));
});

test('layout: a WAL_RECORDS frame is prefix, index, then the records back to back', () => {
  const records = [
    { lsn: 5, bytes: bytesOf(3, 1) },
    { lsn: 2 ** 33, bytes: bytesOf(70, 2) },
  ];
  const index = Buffer.alloc(16 + 2 * 12);
  index.writeUInt32LE(2, 0);
  index.writeBigUInt64LE(4n, 8); // lsnCommit
  index.writeBigUInt64LE(5n, 16);
  index.writeUInt32LE(3, 24);
  index.writeBigUInt64LE(2n ** 33n, 28);
  index.writeUInt32LE(70, 36);
  const body = Buffer.concat([index, records[0]!.bytes, records[1]!.bytes]);
  assert.deepEqual(encodeFrame({ type: 'wal_records', epoch: 1, lsnCommit: 4, records }), craftFrame({ typeCode: 2, epoch: 1n, body }));
  // No commit LSN: zero on the wire, and none decoded.
  index.writeBigUInt64LE(0n, 8);
  const bare = Buffer.concat([index, records[0]!.bytes, records[1]!.bytes]);
  assert.deepEqual(encodeFrame({ type: 'wal_records', epoch: 1, records }), craftFrame({ typeCode: 2, epoch: 1n, body: bare }));
  assert.equal('lsnCommit' in decodeOne(craftFrame({ typeCode: 2, epoch: 1n, body: bare })), false);
  // A commit LSN over 2^53 - 1 is malformed.
  index.writeBigUInt64LE(2n ** 53n, 8);
  assert.throws(() => decodeOne(craftFrame({ typeCode: 2, epoch: 1n, body: Buffer.concat([index, records[0]!.bytes, records[1]!.bytes]) })), /lsnCommit is over/);
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

test('encodeFrameChunks passes base chunk data through without copying it', () => {
  const chunk = sampleOf('base_chunk', 0);
  const chunks = encodeFrameChunks(chunk);
  assert.equal(chunks.length, 3, 'header, fixed part, data');
  assert.equal(chunks[1]!.byteLength, BASE_CHUNK_FIXED_BYTES);
  assert.equal(chunks[2], chunk.data);
  assert.equal(encodeFrameChunks(sampleOf('base_chunk', 1)).length, 2, 'a zero chunk: header and fixed part');
});

test('decoded base chunk data is a plain Uint8Array view of the pushed chunk', () => {
  const whole = own(encodeFrame(sampleOf('base_chunk', 0)));
  const frame = decodeOne(whole) as BaseChunkFrame;
  assert.equal(frame.data!.buffer, whole.buffer, 'a view, not a copy');
  assert.equal(frame.data!.byteOffset, FRAME_HEADER_BYTES + BASE_CHUNK_FIXED_BYTES);
  assert.equal(Object.getPrototypeOf(frame.data), Uint8Array.prototype);
});

test('a maximal base chunk fits one frame under the lowest decoder limit and the default one', () => {
  const data = bytesOf(BASE_CHUNK_BLOCKS_MAX * BLOCK_BYTES, 5);
  const chunk: BaseChunkFrame = {
    type: 'base_chunk',
    epoch: 1,
    sessionId: 1,
    index: 0,
    startBlock: 0,
    blocks: BASE_CHUNK_BLOCKS_MAX,
    lsnCheckpoint: 1,
    digest: 5n,
    zero: false,
    data,
  };
  const bytes = encodeFrame(chunk);
  assert.equal(bytes.length, FRAME_HEADER_BYTES + BASE_CHUNK_BODY_BYTES_MAX);
  for (const decoder of [new FrameDecoder({ bodyBytesMax: FRAME_BODY_BYTES_FLOOR }), new FrameDecoder()]) {
    const [decoded] = decodeChunks([bytes], decoder) as BaseChunkFrame[];
    assert.equal(decoded!.blocks, BASE_CHUNK_BLOCKS_MAX);
    assert.ok(Buffer.from(decoded!.data!).equals(data));
  }
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
  assert.equal(WAL_RECORD_ALONE_BODY_BYTES, WAL_RECORDS_PREFIX_BYTES + WAL_RECORD_ENTRY_BYTES + WAL_RECORD_BYTES_MAX);
  assert.equal(BASE_CHUNK_BODY_BYTES_MAX, BASE_CHUNK_FIXED_BYTES + BASE_CHUNK_BLOCKS_MAX * BLOCK_BYTES);
  assert.equal(FRAME_BODY_BYTES_FLOOR, Math.max(WAL_RECORD_ALONE_BODY_BYTES, BASE_CHUNK_BODY_BYTES_MAX));
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
    ['type from the prototype', { type: 'constructor', epoch: 1 }, RangeError],
    ['close code from the prototype', { type: 'error', epoch: 1, code: 'toString', message: '' }, RangeError],
    ...rebuildEncoderCases(),
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

// Bad fields of the rebuild frames and of HELLO's rebuild info.
function rebuildEncoderCases(): [string, unknown, typeof RangeError | typeof TypeError][] {
  const hello = sampleOf('hello', 1);
  const rebuild = hello.rebuild!;
  const start: RebuildStartFrame = sampleOf('rebuild_start');
  const chunk: BaseChunkFrame = sampleOf('base_chunk', 0);
  const zero: BaseChunkFrame = sampleOf('base_chunk', 1);
  const ack: SessionAckFrame = sampleOf('session_ack', 1);
  return [
    ['rebuild chunksTotal 0', { ...hello, rebuild: { ...rebuild, chunksDone: 0, chunksTotal: 0 } }, RangeError],
    ['rebuild chunksDone > chunksTotal', { ...hello, rebuild: { ...rebuild, chunksDone: 3, chunksTotal: 2 } }, RangeError],
    ['rebuild chunksTotal over u32', { ...hello, rebuild: { ...rebuild, chunksTotal: 2 ** 32 } }, RangeError],
    ['rebuild baseLsn over 2^53', { ...hello, rebuild: { ...rebuild, baseLsn: 2 ** 53 } }, RangeError],
    ['rebuild sessionId negative', { ...hello, rebuild: { ...rebuild, sessionId: -1 } }, RangeError],
    ['rebuild not an object', { ...hello, rebuild: 5 }, TypeError],
    ['lsnBase above lsnTarget', { ...start, lsnBase: start.lsnTarget + 1 }, RangeError],
    ['sizeBytes not a block multiple', { ...start, sizeBytes: start.sizeBytes + 512 }, RangeError],
    ['sizeBytes 0', { ...start, sizeBytes: 0, chunkFrom: 0 }, RangeError],
    ['chunkBlocks 0', { ...start, chunkBlocks: 0 }, RangeError],
    ['chunkBlocks over the max', { ...start, chunkBlocks: BASE_CHUNK_BLOCKS_MAX + 1 }, RangeError],
    ['chunkFrom past the chunks', { ...start, sizeBytes: 3 * BLOCK_BYTES, chunkBlocks: 2, chunkFrom: 3 }, RangeError],
    ['chunkFrom negative', { ...start, chunkFrom: -1 }, RangeError],
    ['durability code 4', { ...start, durabilityCode: 4 }, RangeError],
    ['durability code fractional', { ...start, durabilityCode: 1.5 }, RangeError],
    ['features over 2^53', { ...start, features: 2 ** 53 }, RangeError],
    ['applyChecksumBase negative', { ...start, applyChecksumBase: -1n }, RangeError],
    ['sessionId fractional', { ...start, sessionId: 0.5 }, RangeError],
    ['blocks 0', { ...chunk, blocks: 0, data: new Uint8Array(0) }, RangeError],
    ['blocks over the max', { ...zero, blocks: BASE_CHUNK_BLOCKS_MAX + 1 }, RangeError],
    ['index over u32', { ...chunk, index: 2 ** 32 }, RangeError],
    ['chunk bytes end beyond 2^53', { ...zero, startBlock: Math.floor(Number.MAX_SAFE_INTEGER / BLOCK_BYTES) }, RangeError],
    ['zero chunk with data', { ...zero, blocks: 1, data: new Uint8Array(BLOCK_BYTES) }, RangeError],
    ['data chunk without data', { ...chunk, data: undefined }, RangeError],
    ['data one byte short', { ...chunk, data: new Uint8Array(BLOCK_BYTES - 1) }, RangeError],
    ['data a block too long', { ...chunk, data: new Uint8Array(2 * BLOCK_BYTES) }, RangeError],
    ['data not bytes', { ...chunk, data: 'x'.repeat(BLOCK_BYTES) }, TypeError],
    ['zero not a boolean', { ...zero, zero: 1 }, TypeError],
    ['digest as number', { ...chunk, digest: 1 }, RangeError],
    ['lsnCheckpoint negative', { ...chunk, lsnCheckpoint: -1 }, RangeError],
    ['unknown phase', { ...ack, phase: 'done' }, RangeError],
    ['failure without phase failed', { ...ack, phase: 'running', lsnAchieved: 0, failure: 'cancelled' }, RangeError],
    ['phase failed without failure', { ...ack, phase: 'failed', lsnAchieved: 0, failure: undefined }, RangeError],
    ['unknown failure', { ...ack, phase: 'failed', lsnAchieved: 0, failure: 'oops' }, RangeError],
    ['failure from the prototype', { ...ack, phase: 'failed', lsnAchieved: 0, failure: 'constructor' }, RangeError],
    ['lsnAchieved before completed', { ...ack, phase: 'base_done', lsnAchieved: 5 }, RangeError],
    ['chunksDone over u32', { ...ack, chunksDone: 2 ** 32 }, RangeError],
    ['digestsMatch not a boolean', { ...ack, digestsMatch: 1 }, TypeError],
    ['ack message too long', { ...ack, message: 'x'.repeat(1025) }, RangeError],
  ];
}

test('a base chunk may end at the last whole block below 2^53 bytes, not past it', () => {
  const blocksMax = Math.floor(Number.MAX_SAFE_INTEGER / BLOCK_BYTES);
  const chunk: BaseChunkFrame = { ...sampleOf('base_chunk', 1), blocks: 8, startBlock: blocksMax - 8 };
  assert.deepEqual(decodeOne(encodeFrame(chunk)), chunk);
  assert.throws(() => encodeFrame({ ...chunk, startBlock: blocksMax - 7 }), /beyond 2\^53 - 1 bytes/);
});
