// The streaming frame decoder: frames come out whole however the bytes are
// chunked, record bytes are views unless a body spans chunks, every bad frame
// gets its error code (a too-large length before its body arrives), any
// single-bit flip is rejected, and a decoder that threw stays poisoned.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';

import fc from 'fast-check';

import { FrameDecoder } from '../../lib/replication/frame_decoder';
import {
  BASE_CHUNK_BLOCKS_MAX,
  BASE_CHUNK_BODY_BYTES_MAX,
  encodeFrame,
  FRAME_BODY_BYTES_FLOOR,
  FRAME_BODY_BYTES_MAX,
  FRAME_HEADER_BYTES,
  FrameError,
  WAL_RECORD_BYTES_MAX,
  WAL_RECORDS_PER_FRAME_MAX,
  type BaseChunkFrame,
  type FrameErrorCode,
  type WalRecordsFrame,
} from '../../lib/replication/frames';
import { BlockwalError } from '../../lib/native/errors';
import { anyFrameArb, craftFrame, decodeChunks, own, SAMPLES, type CraftFields } from './frame_samples';

const STREAM = Buffer.concat(SAMPLES.map(encodeFrame));
// Offset just past each sample frame in STREAM.
const FRAME_ENDS = SAMPLES.map(encodeFrame).reduce<number[]>((ends, f) => [...ends, (ends.at(-1) ?? 0) + f.length], []);
const WAL_SAMPLE = SAMPLES[1] as WalRecordsFrame;
// Sample indexes of the rebuild frames (frame_samples.ts).
const indexOf = (type: string, nth = 0): number => SAMPLES.map((f, i) => (f.type === type ? i : -1)).filter((i) => i >= 0)[nth]!;
const REBUILD_START = indexOf('rebuild_start');
const DATA_CHUNK = indexOf('base_chunk', 0);
const ZERO_CHUNK = indexOf('base_chunk', 1);
const FAILED_ACK = indexOf('session_ack', 0);
const COMPLETED_ACK = indexOf('session_ack', 1);
const REBUILD_HELLO = indexOf('hello', 1);
const EPOCH_HELLO = indexOf('hello', 2);
const REBUILD_EPOCH_HELLO = indexOf('hello', 3);
const HISTORY_START = indexOf('rebuild_start', 2);

function expectFrameError(decoder: FrameDecoder, code: FrameErrorCode, message?: RegExp, what = ''): FrameError {
  let caught: unknown;
  assert.throws(
    () => decoder.next(),
    (err: unknown) => {
      caught = err;
      return true;
    },
    what,
  );
  assert.ok(caught instanceof FrameError, `${what}: expected a FrameError, got ${String(caught)}`);
  assert.ok(caught instanceof BlockwalError);
  assert.equal(caught.code, code, `${what}: ${caught.message}`);
  if (message !== undefined) assert.match(caught.message, message, what);
  return caught;
}

// ---- Chunking ----

test('a stream of every frame type split at every byte boundary decodes each frame once it is whole', () => {
  for (let cut = 0; cut <= STREAM.length; cut++) {
    const decoder = new FrameDecoder();
    const early = decodeChunks([own(STREAM.subarray(0, cut))], decoder);
    assert.equal(early.length, FRAME_ENDS.filter((end) => end <= cut).length, `cut at ${cut}`);
    const late = decodeChunks([own(STREAM.subarray(cut))], decoder);
    assert.deepEqual([...early, ...late], SAMPLES, `cut at ${cut}`);
    assert.equal(decoder.bytesQueued, 0);
  }
});

test('a HELLO frame split at every pair of byte boundaries decodes', () => {
  const bytes = encodeFrame(SAMPLES[0]!);
  for (let i = 0; i <= bytes.length; i++) {
    for (let j = i; j <= bytes.length; j++) {
      const parts = [bytes.subarray(0, i), bytes.subarray(i, j), bytes.subarray(j)].map(own);
      assert.deepEqual(decodeChunks(parts), [SAMPLES[0]], `cuts at ${i}, ${j}`);
    }
  }
});

test('a stream fed one byte at a time decodes', () => {
  const bytes = Array.from(STREAM, (b) => Uint8Array.of(b));
  assert.deepEqual(decodeChunks(bytes), SAMPLES);
});

test('random frames in random chunkings decode to the frames sent', () => {
  fc.assert(
    fc.property(
      fc.array(anyFrameArb, { minLength: 1, maxLength: 6 }),
      fc.array(fc.double({ min: 0, max: 1, noNaN: true }), { maxLength: 12 }),
      (frames, cutFractions) => {
        const stream = Buffer.concat(frames.map(encodeFrame));
        const cuts = [...new Set(cutFractions.map((f) => Math.floor(f * stream.length)))].sort((a, b) => a - b);
        const chunks = [0, ...cuts].map((from, i) => own(stream.subarray(from, cuts[i] ?? stream.length)));
        const decoder = new FrameDecoder();
        assert.deepEqual(decodeChunks(chunks, decoder), frames);
        assert.equal(decoder.bytesQueued, 0);
      },
    ),
    { numRuns: 300 },
  );
});

// ---- Views, not copies ----

test('base chunk data is a view of the body chunk, or of the one copy when the body spans chunks', () => {
  const bytes = encodeFrame(SAMPLES[DATA_CHUNK]!);
  const body = own(bytes.subarray(FRAME_HEADER_BYTES));
  const [inPlace] = decodeChunks([own(bytes.subarray(0, FRAME_HEADER_BYTES)), body]) as BaseChunkFrame[];
  assert.equal(inPlace!.data!.buffer, body.buffer, 'a view of the body chunk');
  const parts = [own(bytes.subarray(0, 1000)), own(bytes.subarray(1000))];
  const [spanning] = decodeChunks(parts) as BaseChunkFrame[];
  assert.deepEqual(spanning, SAMPLES[DATA_CHUNK]);
  for (const part of parts) assert.notEqual(spanning!.data!.buffer, part.buffer);
});

test('record bytes are views of the pushed chunk when the body lies in one chunk', () => {
  const bytes = encodeFrame(WAL_SAMPLE);
  const whole = own(bytes);
  const [frame] = decodeChunks([whole]) as WalRecordsFrame[];
  for (const record of frame!.records) assert.equal(record.bytes.buffer, whole.buffer, 'a view of the one chunk');

  // The header split across chunks, the body whole in the last one.
  const head = [own(bytes.subarray(0, 10)), own(bytes.subarray(10, FRAME_HEADER_BYTES))];
  const body = own(bytes.subarray(FRAME_HEADER_BYTES));
  const [split] = decodeChunks([...head, body]) as WalRecordsFrame[];
  for (const record of split!.records) assert.equal(record.bytes.buffer, body.buffer, 'a view of the body chunk');
});

test('a body spanning chunks is copied once and decodes equal', () => {
  const bytes = encodeFrame(WAL_SAMPLE);
  const chunks = [own(bytes.subarray(0, 100)), own(bytes.subarray(100))];
  const [frame] = decodeChunks(chunks) as WalRecordsFrame[];
  assert.deepEqual(frame, WAL_SAMPLE);
  const copy = frame!.records[0]!.bytes.buffer;
  for (const record of frame!.records) {
    assert.equal(record.bytes.buffer, copy, 'all records share the one copy of the body');
    for (const chunk of chunks) assert.notEqual(record.bytes.buffer, chunk.buffer);
  }
});

test('bytesQueued counts what waits to be decoded', () => {
  const decoder = new FrameDecoder();
  const bytes = encodeFrame(WAL_SAMPLE);
  decoder.push(own(bytes.subarray(0, 50)));
  assert.equal(decoder.next(), undefined);
  assert.equal(decoder.bytesQueued, 50 - FRAME_HEADER_BYTES, 'the header was taken, the body waits');
  decoder.push(own(bytes.subarray(50)));
  assert.deepEqual(decoder.next(), WAL_SAMPLE);
  assert.equal(decoder.bytesQueued, 0);
  assert.equal(decoder.next(), undefined);
});

// ---- Errors ----

function bodyOf(frameIndex: number): Buffer {
  return Buffer.from(encodeFrame(SAMPLES[frameIndex]!).subarray(FRAME_HEADER_BYTES));
}

// A sample's body, changed by `edit`, re-framed with a good checksum.
function edited(frameIndex: number, typeCode: number, edit: (body: Buffer) => Buffer | void, header: Partial<CraftFields> = {}): Buffer {
  const body = bodyOf(frameIndex);
  return craftFrame({ typeCode, body: edit(body) ?? body, ...header });
}

interface BadFrameCase {
  name: string;
  bytes: Buffer;
  code: FrameErrorCode;
  message: RegExp;
  // The header alone must be enough to refuse the frame.
  headerOnly?: boolean;
}

const OVER_U53 = 0x0020_0000; // high u32 of 2^53
const u32At = (offset: number, value: number) => (b: Buffer) => void b.writeUInt32LE(value, offset);
const hello = (edit: (b: Buffer) => Buffer | void, header?: Partial<CraftFields>): Buffer => edited(0, 1, edit, header);
const walRecords = (edit: (b: Buffer) => Buffer | void): Buffer => edited(1, 2, edit);
const close = (edit: (b: Buffer) => Buffer | void): Buffer => edited(5, 6, edit);
const rebuildHello = (edit: (b: Buffer) => Buffer | void): Buffer => edited(REBUILD_HELLO, 1, edit);
const rebuildStart = (edit: (b: Buffer) => Buffer | void): Buffer => edited(REBUILD_START, 9, edit);
const historyStart = (edit: (b: Buffer) => Buffer | void): Buffer => edited(HISTORY_START, 9, edit);
const dataChunk = (edit: (b: Buffer) => Buffer | void): Buffer => edited(DATA_CHUNK, 10, edit);
const zeroChunk = (edit: (b: Buffer) => Buffer | void): Buffer => edited(ZERO_CHUNK, 10, edit);
const failedAck = (edit: (b: Buffer) => Buffer | void): Buffer => edited(FAILED_ACK, 11, edit);
const completedAck = (edit: (b: Buffer) => Buffer | void): Buffer => edited(COMPLETED_ACK, 11, edit);

const BAD_FRAMES: BadFrameCase[] = [
  { name: 'zero magic', bytes: craftFrame({ magic: 0, typeCode: 4, body: Buffer.alloc(8) }), code: 'ERR_FRAME_MAGIC', message: /magic/, headerOnly: true },
  { name: 'an HTTP request', bytes: Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n......'), code: 'ERR_FRAME_MAGIC', message: /magic/, headerOnly: true },
  { name: 'version 1', bytes: craftFrame({ version: 1, typeCode: 4, body: Buffer.alloc(8) }), code: 'ERR_FRAME_VERSION', message: /version 1/, headerOnly: true },
  { name: 'version 3', bytes: craftFrame({ version: 3, typeCode: 4, body: Buffer.alloc(8) }), code: 'ERR_FRAME_VERSION', message: /version 3/, headerOnly: true },
  { name: 'version 0', bytes: craftFrame({ version: 0, typeCode: 4, body: Buffer.alloc(8) }), code: 'ERR_FRAME_VERSION', message: /version 0/, headerOnly: true },
  { name: 'a body over FRAME_BODY_BYTES_MAX', bytes: craftFrame({ typeCode: 2, bodyBytes: FRAME_BODY_BYTES_MAX + 1, body: new Uint8Array(0) }), code: 'ERR_FRAME_TOO_LARGE', message: /over the limit/, headerOnly: true },
  { name: 'type 0', bytes: craftFrame({ typeCode: 0, body: Buffer.alloc(8) }), code: 'ERR_FRAME_TYPE', message: /type 0/, headerOnly: true },
  { name: 'type 12', bytes: craftFrame({ typeCode: 12, body: Buffer.alloc(8) }), code: 'ERR_FRAME_TYPE', message: /type 12/, headerOnly: true },
  { name: 'type 255', bytes: craftFrame({ typeCode: 255, body: Buffer.alloc(8) }), code: 'ERR_FRAME_TYPE', message: /type 255/, headerOnly: true },
  { name: 'bad checksum', bytes: craftFrame({ typeCode: 4, body: Buffer.alloc(8), badChecksum: true }), code: 'ERR_FRAME_CHECKSUM', message: /checksum/ },
  { name: 'a body byte changed', bytes: (() => { const b = encodeFrame(SAMPLES[2]!); b[40]! ^= 0x80; return b; })(), code: 'ERR_FRAME_CHECKSUM', message: /ack frame checksum/ },
  // Body length outside the type's bounds: refused from the header.
  { name: 'ack of 31 bytes', bytes: craftFrame({ typeCode: 3, body: Buffer.alloc(31) }), code: 'ERR_FRAME_MALFORMED', message: /ack body of 31 bytes/, headerOnly: true },
  { name: 'commit of 9 bytes', bytes: craftFrame({ typeCode: 4, body: Buffer.alloc(9) }), code: 'ERR_FRAME_MALFORMED', message: /commit body of 9 bytes/, headerOnly: true },
  { name: 'heartbeat of 7 bytes', bytes: craftFrame({ typeCode: 5, body: Buffer.alloc(7) }), code: 'ERR_FRAME_MALFORMED', message: /heartbeat body of 7/, headerOnly: true },
  { name: 'hello without node id', bytes: craftFrame({ typeCode: 1, body: Buffer.alloc(64) }), code: 'ERR_FRAME_MALFORMED', message: /hello body of 64/, headerOnly: true },
  { name: 'hello of 368 bytes', bytes: craftFrame({ typeCode: 1, body: Buffer.alloc(368) }), code: 'ERR_FRAME_MALFORMED', message: /hello body of 368/, headerOnly: true },
  { name: 'rebuild_start of 63 bytes', bytes: craftFrame({ typeCode: 9, body: Buffer.alloc(63) }), code: 'ERR_FRAME_MALFORMED', message: /rebuild_start body of 63/, headerOnly: true },
  { name: 'rebuild_start of 2121 bytes', bytes: craftFrame({ typeCode: 9, body: Buffer.alloc(2121) }), code: 'ERR_FRAME_MALFORMED', message: /rebuild_start body of 2121/, headerOnly: true },
  { name: 'base_chunk of 47 bytes', bytes: craftFrame({ typeCode: 10, body: Buffer.alloc(47) }), code: 'ERR_FRAME_MALFORMED', message: /base_chunk body of 47/, headerOnly: true },
  { name: 'base_chunk over a maximal chunk', bytes: craftFrame({ typeCode: 10, bodyBytes: BASE_CHUNK_BODY_BYTES_MAX + 1, body: new Uint8Array(0) }), code: 'ERR_FRAME_MALFORMED', message: /base_chunk body of \d+ bytes, outside 48\.\./, headerOnly: true },
  { name: 'session_ack of 35 bytes', bytes: craftFrame({ typeCode: 11, body: Buffer.alloc(35) }), code: 'ERR_FRAME_MALFORMED', message: /session_ack body of 35/, headerOnly: true },
  { name: 'session_ack of 1061 bytes', bytes: craftFrame({ typeCode: 11, body: Buffer.alloc(1061) }), code: 'ERR_FRAME_MALFORMED', message: /session_ack body of 1061/, headerOnly: true },
  { name: 'wal_records of 28 bytes', bytes: craftFrame({ typeCode: 2, body: Buffer.alloc(28) }), code: 'ERR_FRAME_MALFORMED', message: /wal_records body of 28/, headerOnly: true },
  { name: 'error of 3 bytes', bytes: craftFrame({ typeCode: 6, body: Buffer.alloc(3) }), code: 'ERR_FRAME_MALFORMED', message: /error body of 3/, headerOnly: true },
  { name: 'goodbye of 1029 bytes', bytes: craftFrame({ typeCode: 7, body: Buffer.alloc(1029) }), code: 'ERR_FRAME_MALFORMED', message: /goodbye body of 1029/, headerOnly: true },
  // Header fields checked once the checksum holds.
  { name: 'a flag set', bytes: craftFrame({ typeCode: 4, flags: 1, body: Buffer.alloc(8) }), code: 'ERR_FRAME_MALFORMED', message: /unknown frame flags 0x1/ },
  { name: 'reserved header bytes', bytes: craftFrame({ typeCode: 4, reserved: 1, body: Buffer.alloc(8) }), code: 'ERR_FRAME_MALFORMED', message: /reserved header/ },
  { name: 'epoch 2^53', bytes: craftFrame({ typeCode: 4, epoch: 1n << 53n, body: Buffer.alloc(8) }), code: 'ERR_FRAME_MALFORMED', message: /epoch is over/ },
  // HELLO bodies.
  { name: 'hello role 0', bytes: hello((b) => void (b[0] = 0)), code: 'ERR_FRAME_MALFORMED', message: /bad role 0/ },
  { name: 'hello role 3', bytes: hello((b) => void (b[0] = 3)), code: 'ERR_FRAME_MALFORMED', message: /bad role 3/ },
  { name: 'hello node id length 0', bytes: hello((b) => void (b[1] = 0)), code: 'ERR_FRAME_MALFORMED', message: /empty node id/ },
  { name: 'hello trailing byte', bytes: hello((b) => void (b[1] = b[1]! - 1)), code: 'ERR_FRAME_MALFORMED', message: /for a node id of 5 bytes/ },
  { name: 'hello node id past the end', bytes: hello((b) => void (b[1] = b[1]! + 1)), code: 'ERR_FRAME_MALFORMED', message: /for a node id of 7 bytes/ },
  { name: 'hello reserved byte', bytes: hello((b) => void (b[5] = 1)), code: 'ERR_FRAME_MALFORMED', message: /reserved bytes/ },
  { name: 'hello node id not UTF-8', bytes: hello((b) => void (b[64] = 0xff)), code: 'ERR_FRAME_MALFORMED', message: /node id is not valid UTF-8/ },
  { name: 'hello lsnHead over 2^53', bytes: hello(u32At(52, OVER_U53)), code: 'ERR_FRAME_MALFORMED', message: /lsnHead is over/ },
  { name: 'hello unknown flag bit 2', bytes: hello((b) => void (b[2] = 4)), code: 'ERR_FRAME_MALFORMED', message: /hello: unknown flags 0x4/ },
  { name: 'hello epoch flag without its 8 bytes', bytes: hello((b) => void (b[2] = 2)), code: 'ERR_FRAME_MALFORMED', message: /hello: \d+ bytes for a node id of 6 bytes and 8 bytes of applied epoch/ },
  { name: 'hello epochApplied over 2^53', bytes: edited(EPOCH_HELLO, 1, (b) => void b.writeUInt32LE(OVER_U53, b.length - 4)), code: 'ERR_FRAME_MALFORMED', message: /hello: epochApplied is over/ },
  { name: 'hello with rebuild info and epoch, one byte short', bytes: edited(REBUILD_EPOCH_HELLO, 1, (b) => b.subarray(0, b.length - 1)), code: 'ERR_FRAME_MALFORMED', message: /and 40 bytes of rebuild info and 8 bytes of applied epoch/ },
  { name: 'hello unknown flag bit 7', bytes: rebuildHello((b) => void (b[2] = 0x81)), code: 'ERR_FRAME_MALFORMED', message: /hello: unknown flags 0x81/ },
  { name: 'hello rebuild flag without rebuild info', bytes: hello((b) => void (b[2] = 1)), code: 'ERR_FRAME_MALFORMED', message: /for a node id of 6 bytes and 40 bytes of rebuild info/ },
  { name: 'hello rebuild info without the flag', bytes: rebuildHello((b) => void (b[2] = 0)), code: 'ERR_FRAME_MALFORMED', message: /110 bytes for a node id of 6 bytes$/ },
  { name: 'hello rebuild info one byte short', bytes: rebuildHello((b) => b.subarray(0, b.length - 1)), code: 'ERR_FRAME_MALFORMED', message: /and 40 bytes of rebuild info/ },
  { name: 'hello rebuild reserved byte', bytes: rebuildHello((b) => void (b[b.length - 1] = 1)), code: 'ERR_FRAME_MALFORMED', message: /rebuild reserved bytes/ },
  { name: 'hello rebuild chunksTotal 0', bytes: rebuildHello((b) => void b.fill(0, 70 + 24, 70 + 32)), code: 'ERR_FRAME_MALFORMED', message: /rebuild chunks 0\/0/ },
  { name: 'hello rebuild chunksDone > chunksTotal', bytes: rebuildHello(u32At(70 + 28, 3)), code: 'ERR_FRAME_MALFORMED', message: /rebuild chunks 4294967294\/3/ },
  { name: 'hello rebuild baseLsn over 2^53', bytes: rebuildHello(u32At(70 + 20, OVER_U53)), code: 'ERR_FRAME_MALFORMED', message: /rebuild\.baseLsn is over/ },
  // WAL_RECORDS bodies (sample: LSNs 100, 101, 103 of 64, 200 and 1 bytes).
  { name: 'zero records', bytes: walRecords(u32At(0, 0)), code: 'ERR_FRAME_MALFORMED', message: /0 records/ },
  { name: 'too many records', bytes: walRecords(u32At(0, WAL_RECORDS_PER_FRAME_MAX + 1)), code: 'ERR_FRAME_MALFORMED', message: /records, outside/ },
  { name: 'index past the end', bytes: walRecords(u32At(0, 30)), code: 'ERR_FRAME_MALFORMED', message: /index of 30 entries runs past the end/ },
  { name: 'records reserved bytes', bytes: walRecords(u32At(4, 1)), code: 'ERR_FRAME_MALFORMED', message: /reserved bytes/ },
  { name: 'records lsnCommit over 2^53', bytes: walRecords(u32At(12, OVER_U53)), code: 'ERR_FRAME_MALFORMED', message: /wal_records: lsnCommit is over/ },
  { name: 'lsn 0', bytes: walRecords(u32At(16, 0)), code: 'ERR_FRAME_MALFORMED', message: /records\[0\]\.lsn is 0/ },
  { name: 'lsn over 2^53', bytes: walRecords(u32At(20, OVER_U53)), code: 'ERR_FRAME_MALFORMED', message: /records\[0\]\.lsn is over/ },
  { name: 'equal LSNs', bytes: walRecords(u32At(28, 100)), code: 'ERR_FRAME_MALFORMED', message: /records\[1\]\.lsn 100 does not follow 100/ },
  { name: 'decreasing LSNs', bytes: walRecords(u32At(40, 50)), code: 'ERR_FRAME_MALFORMED', message: /records\[2\]\.lsn 50 does not follow 101/ },
  { name: 'an empty record', bytes: walRecords(u32At(36, 0)), code: 'ERR_FRAME_MALFORMED', message: /records\[1\] is 0 bytes/ },
  { name: 'a record over the limit', bytes: walRecords(u32At(48, WAL_RECORD_BYTES_MAX + 1)), code: 'ERR_FRAME_MALFORMED', message: /records\[2\] is \d+ bytes, outside/ },
  { name: 'a record past the end', bytes: walRecords(u32At(48, 2)), code: 'ERR_FRAME_MALFORMED', message: /records\[2\] runs past the end/ },
  { name: 'trailing bytes', bytes: walRecords((b) => Buffer.concat([b, Buffer.alloc(3)])), code: 'ERR_FRAME_MALFORMED', message: /3 trailing bytes/ },
  // Fixed-size bodies.
  { name: 'ack lsnApplied over 2^53', bytes: edited(2, 3, u32At(20, OVER_U53)), code: 'ERR_FRAME_MALFORMED', message: /lsnApplied is over/ },
  { name: 'commit lsn over 2^53', bytes: craftFrame({ typeCode: 4, body: Buffer.alloc(8, 0xff) }), code: 'ERR_FRAME_MALFORMED', message: /lsnCommit is over/ },
  { name: 'heartbeat sequence over 2^53', bytes: craftFrame({ typeCode: 5, body: Buffer.alloc(8, 0xff) }), code: 'ERR_FRAME_MALFORMED', message: /sequence is over/ },
  // ERROR/GOODBYE bodies.
  { name: 'close code 0', bytes: close((b) => void b.writeUInt16LE(0, 0)), code: 'ERR_FRAME_MALFORMED', message: /unknown close code 0/ },
  { name: 'close code 99', bytes: close((b) => void b.writeUInt16LE(99, 0)), code: 'ERR_FRAME_MALFORMED', message: /unknown close code 99/ },
  { name: 'message length past the end', bytes: close((b) => void b.writeUInt16LE(b.readUInt16LE(2) + 1, 2)), code: 'ERR_FRAME_MALFORMED', message: /for a message of/ },
  { name: 'message length over the limit', bytes: craftFrame({ typeCode: 6, body: Buffer.concat([Buffer.from([1, 0, 0x01, 0x04]), Buffer.alloc(1024)]) }), code: 'ERR_FRAME_MALFORMED', message: /1025 bytes is too long/ },
  { name: 'message not UTF-8', bytes: close((b) => void (b[4] = 0xc3)), code: 'ERR_FRAME_MALFORMED', message: /message is not valid UTF-8/ },
  // REBUILD_START bodies (sample: 2^40 bytes in chunks of 8192 blocks, chunkFrom 3).
  { name: 'rebuild_start lsnBase above lsnTarget', bytes: rebuildStart(u32At(20, 0)), code: 'ERR_FRAME_MALFORMED', message: /lsnBase \d+ is above lsnTarget/ },
  { name: 'rebuild_start lsnTarget over 2^53', bytes: rebuildStart(u32At(20, OVER_U53)), code: 'ERR_FRAME_MALFORMED', message: /lsnTarget is over/ },
  { name: 'rebuild_start sizeBytes 0', bytes: rebuildStart((b) => void b.fill(0, 32, 40)), code: 'ERR_FRAME_MALFORMED', message: /sizeBytes 0 is not a positive multiple/ },
  { name: 'rebuild_start sizeBytes not a block multiple', bytes: rebuildStart(u32At(32, 512)), code: 'ERR_FRAME_MALFORMED', message: /sizeBytes \d+ is not a positive multiple of 4096/ },
  { name: 'rebuild_start features over 2^53', bytes: rebuildStart(u32At(44, OVER_U53)), code: 'ERR_FRAME_MALFORMED', message: /features is over/ },
  { name: 'rebuild_start chunkBlocks 0', bytes: rebuildStart(u32At(48, 0)), code: 'ERR_FRAME_MALFORMED', message: /chunkBlocks 0, outside 1\.\.8192/ },
  { name: 'rebuild_start chunkBlocks 8193', bytes: rebuildStart(u32At(48, BASE_CHUNK_BLOCKS_MAX + 1)), code: 'ERR_FRAME_MALFORMED', message: /chunkBlocks 8193, outside/ },
  { name: 'rebuild_start chunkFrom past the chunks', bytes: rebuildStart(u32At(52, 2 ** 15 + 1)), code: 'ERR_FRAME_MALFORMED', message: /chunkFrom 32769 is past the 32768 chunks/ },
  { name: 'rebuild_start durability code 4', bytes: rebuildStart((b) => void (b[56] = 4)), code: 'ERR_FRAME_MALFORMED', message: /unknown durability code 4/ },
  { name: 'rebuild_start reserved byte', bytes: rebuildStart((b) => void (b[63] = 1)), code: 'ERR_FRAME_MALFORMED', message: /rebuild_start: reserved bytes/ },
  // BASE_CHUNK bodies (samples: one data block at 2^33; a zero chunk of 8192 blocks).
  { name: 'rebuild_start unknown flag', bytes: rebuildStart((b) => void (b[57] = 4)), code: 'ERR_FRAME_MALFORMED', message: /rebuild_start: unknown flags 0x4/ },
  // REBUILD_START with its epoch history (sample: epoch 2 at LSN 50, epoch 2^40 at LSN 2^41).
  { name: 'rebuild_start with bytes after it but no history flag', bytes: rebuildStart((b) => Buffer.concat([b, Buffer.alloc(8)])), code: 'ERR_FRAME_MALFORMED', message: /rebuild_start: 72 bytes without an epoch history/ },
  { name: 'rebuild_start history flag, no history', bytes: rebuildStart((b) => void (b[57] = 2)), code: 'ERR_FRAME_MALFORMED', message: /rebuild_start: 64 bytes, too short for an epoch history/ },
  { name: 'rebuild_start history count past the end', bytes: historyStart(u32At(64, 3)), code: 'ERR_FRAME_MALFORMED', message: /rebuild_start: 104 bytes for 3 epoch starts/ },
  { name: 'rebuild_start history of 129 starts', bytes: historyStart(u32At(64, 129)), code: 'ERR_FRAME_MALFORMED', message: /rebuild_start: 129 epoch starts, more than 128/ },
  { name: 'rebuild_start history reserved bytes', bytes: historyStart(u32At(68, 1)), code: 'ERR_FRAME_MALFORMED', message: /rebuild_start: reserved bytes/ },
  { name: 'rebuild_start history epochs not increasing', bytes: historyStart((b) => void b.writeBigUInt64LE(2n, 88)), code: 'ERR_FRAME_MALFORMED', message: /rebuild_start: epoch start 1 \(epoch 2, LSN \d+\) does not follow epoch 2 at LSN 50/ },
  { name: 'rebuild_start history LSN 0', bytes: historyStart(u32At(80, 0)), code: 'ERR_FRAME_MALFORMED', message: /rebuild_start: epoch start 0 \(epoch 2, LSN 0\) is not two positive integers/ },
  { name: 'rebuild_start history epoch over 2^53', bytes: historyStart(u32At(76, OVER_U53)), code: 'ERR_FRAME_MALFORMED', message: /rebuild_start: epoch is over/ },
  { name: 'base_chunk zero and unchanged', bytes: zeroChunk(u32At(40, 3)), code: 'ERR_FRAME_MALFORMED', message: /base_chunk: both zero and unchanged/ },
  { name: 'base_chunk unchanged with a digest', bytes: zeroChunk(u32At(40, 2)), code: 'ERR_FRAME_MALFORMED', message: /an unchanged chunk with a digest/ },
  { name: 'base_chunk unchanged with data', bytes: dataChunk((b) => void (b.writeUInt32LE(2, 40), b.fill(0, 32, 40))), code: 'ERR_FRAME_MALFORMED', message: /4144 bytes for an unchanged chunk/ },
  { name: 'base_chunk unknown flag', bytes: dataChunk(u32At(40, 4)), code: 'ERR_FRAME_MALFORMED', message: /base_chunk: unknown flags 0x4/ },
  { name: 'ack lsnCheckpoint above lsnApplied', bytes: edited(2, 3, u32At(32, 0x7fff_ffff)), code: 'ERR_FRAME_MALFORMED', message: /lsnCheckpoint \d+ is above lsnApplied 100/ },
  { name: 'base_chunk blocks 0', bytes: dataChunk(u32At(12, 0)), code: 'ERR_FRAME_MALFORMED', message: /base_chunk: 0 blocks, outside 1\.\.8192/ },
  { name: 'base_chunk blocks 8193', bytes: zeroChunk(u32At(12, BASE_CHUNK_BLOCKS_MAX + 1)), code: 'ERR_FRAME_MALFORMED', message: /base_chunk: 8193 blocks, outside/ },
  { name: 'base_chunk data length mismatch (2 blocks said, 1 sent)', bytes: dataChunk(u32At(12, 2)), code: 'ERR_FRAME_MALFORMED', message: /4144 bytes for 2 blocks of data/ },
  { name: 'base_chunk data one byte short', bytes: dataChunk((b) => b.subarray(0, b.length - 1)), code: 'ERR_FRAME_MALFORMED', message: /4143 bytes for 1 blocks of data/ },
  { name: 'base_chunk zero flag with data', bytes: dataChunk(u32At(40, 1)), code: 'ERR_FRAME_MALFORMED', message: /4144 bytes for a zero chunk \(no data\)/ },
  { name: 'base_chunk data without the data', bytes: zeroChunk(u32At(40, 0)), code: 'ERR_FRAME_MALFORMED', message: /48 bytes for 8192 blocks of data/ },
  { name: 'base_chunk unknown flag bit 3', bytes: zeroChunk(u32At(40, 9)), code: 'ERR_FRAME_MALFORMED', message: /base_chunk: unknown flags 0x9/ },
  { name: 'base_chunk reserved bytes', bytes: zeroChunk(u32At(44, 1)), code: 'ERR_FRAME_MALFORMED', message: /base_chunk: reserved bytes/ },
  { name: 'base_chunk startBlock over 2^53', bytes: zeroChunk(u32At(20, OVER_U53)), code: 'ERR_FRAME_MALFORMED', message: /startBlock is over/ },
  { name: 'base_chunk bytes end beyond 2^53', bytes: zeroChunk(u32At(20, 0x200)), code: 'ERR_FRAME_MALFORMED', message: /end beyond 2\^53 - 1 bytes/ },
  { name: 'base_chunk lsnCheckpoint over 2^53', bytes: zeroChunk(u32At(28, OVER_U53)), code: 'ERR_FRAME_MALFORMED', message: /lsnCheckpoint is over/ },
  // SESSION_ACK bodies (samples: failed digest_mismatch with a message; completed).
  { name: 'session_ack phase 0', bytes: failedAck((b) => void (b[28] = 0)), code: 'ERR_FRAME_MALFORMED', message: /unknown phase 0/ },
  { name: 'session_ack phase 6', bytes: failedAck((b) => void (b[28] = 6)), code: 'ERR_FRAME_MALFORMED', message: /unknown phase 6/ },
  { name: 'session_ack failure 11', bytes: failedAck((b) => void (b[29] = 11)), code: 'ERR_FRAME_MALFORMED', message: /unknown failure 11/ },
  { name: 'session_ack failed without failure', bytes: failedAck((b) => void (b[29] = 0)), code: 'ERR_FRAME_MALFORMED', message: /phase failed with failure none/ },
  { name: 'session_ack failure while running', bytes: failedAck((b) => void (b[28] = 2)), code: 'ERR_FRAME_MALFORMED', message: /phase running with failure digest_mismatch/ },
  { name: 'session_ack lsnAchieved before completed', bytes: completedAck((b) => void (b[28] = 3)), code: 'ERR_FRAME_MALFORMED', message: /lsnAchieved \d+ in phase base_done/ },
  { name: 'session_ack lsnAchieved over 2^53', bytes: completedAck(u32At(20, OVER_U53)), code: 'ERR_FRAME_MALFORMED', message: /lsnAchieved is over/ },
  { name: 'session_ack unknown flag', bytes: completedAck((b) => void (b[30] = 3)), code: 'ERR_FRAME_MALFORMED', message: /session_ack: unknown flags 0x3/ },
  { name: 'session_ack reserved byte 31', bytes: completedAck((b) => void (b[31] = 1)), code: 'ERR_FRAME_MALFORMED', message: /session_ack: reserved bytes/ },
  { name: 'session_ack reserved bytes 34..35', bytes: completedAck((b) => void (b[35] = 1)), code: 'ERR_FRAME_MALFORMED', message: /session_ack: reserved bytes/ },
  { name: 'session_ack message past the end', bytes: failedAck((b) => void b.writeUInt16LE(b.readUInt16LE(32) + 1, 32)), code: 'ERR_FRAME_MALFORMED', message: /for a message of/ },
  { name: 'session_ack trailing byte', bytes: completedAck((b) => Buffer.concat([b, Buffer.alloc(1)])), code: 'ERR_FRAME_MALFORMED', message: /37 bytes for a message of 0 bytes/ },
  { name: 'session_ack message over the limit', bytes: craftFrame({ typeCode: 11, body: (() => { const b = Buffer.alloc(36 + 1024); b[28] = 2; b.writeUInt16LE(1025, 32); return b; })() }), code: 'ERR_FRAME_MALFORMED', message: /1025 bytes is too long/ },
  { name: 'session_ack message not UTF-8', bytes: failedAck((b) => void (b[36] = 0xff)), code: 'ERR_FRAME_MALFORMED', message: /session_ack: message is not valid UTF-8/ },
];

test('every bad frame gets its error code', () => {
  for (const { name, bytes, code, message, headerOnly } of BAD_FRAMES) {
    const decoder = new FrameDecoder();
    decoder.push(own(headerOnly === true ? bytes.subarray(0, FRAME_HEADER_BYTES) : bytes));
    const err = expectFrameError(decoder, code, message, name);
    assert.ok(err.message.length > 0, name);
  }
  const codes = new Set(BAD_FRAMES.map((c) => c.code));
  assert.equal(codes.size, 6, 'every FrameErrorCode is exercised');
});

test('a too-large length is refused from the header, before its body arrives', () => {
  for (const bodyBytes of [FRAME_BODY_BYTES_MAX + 1, 0xffff_ffff]) {
    const decoder = new FrameDecoder();
    decoder.push(own(craftFrame({ typeCode: 2, bodyBytes, body: new Uint8Array(0) })));
    const err = expectFrameError(decoder, 'ERR_FRAME_TOO_LARGE', new RegExp(`${bodyBytes} bytes`));
    assert.equal(err.details.bodyBytes, bodyBytes);
    assert.equal(err.details.bodyBytesMax, FRAME_BODY_BYTES_MAX);
  }
  // A decoder with a lower limit refuses one byte over it; at the limit it waits for the body.
  const limited = new FrameDecoder({ bodyBytesMax: FRAME_BODY_BYTES_FLOOR });
  limited.push(own(craftFrame({ typeCode: 2, bodyBytes: FRAME_BODY_BYTES_FLOOR + 1, body: new Uint8Array(0) })));
  expectFrameError(limited, 'ERR_FRAME_TOO_LARGE');
  const waiting = new FrameDecoder({ bodyBytesMax: FRAME_BODY_BYTES_FLOOR });
  waiting.push(own(craftFrame({ typeCode: 2, bodyBytes: FRAME_BODY_BYTES_FLOOR, body: new Uint8Array(0) })));
  assert.equal(waiting.next(), undefined);
});

test('the version error says which version the peer speaks', () => {
  const decoder = new FrameDecoder();
  decoder.push(own(craftFrame({ version: 9, typeCode: 1, body: bodyOf(0) })));
  assert.equal(expectFrameError(decoder, 'ERR_FRAME_VERSION').details.version, 9);
});

test('a decoder limit outside [FRAME_BODY_BYTES_FLOOR, FRAME_BODY_BYTES_MAX] is refused', () => {
  for (const bodyBytesMax of [FRAME_BODY_BYTES_FLOOR - 1, FRAME_BODY_BYTES_MAX + 1, 1.5, Number.NaN]) {
    assert.throws(() => new FrameDecoder({ bodyBytesMax }), RangeError, String(bodyBytesMax));
  }
  assert.throws(() => new FrameDecoder().push('abc' as unknown as Uint8Array), TypeError);
});

// ---- Bit flips ----

// Which codes a flip at a header offset may give; body flips: checksum only.
function codesForFlipAt(offset: number): FrameErrorCode[] {
  if (offset < 4) return ['ERR_FRAME_MAGIC'];
  if (offset === 4) return ['ERR_FRAME_VERSION'];
  if (offset === 5) return ['ERR_FRAME_TYPE', 'ERR_FRAME_MALFORMED', 'ERR_FRAME_CHECKSUM'];
  if (offset >= 16 && offset < 20) return ['ERR_FRAME_TOO_LARGE', 'ERR_FRAME_MALFORMED', 'ERR_FRAME_CHECKSUM'];
  return ['ERR_FRAME_CHECKSUM'];
}

// Decodes a damaged frame; when its length now claims more bytes, the link
// delivers them (zeros), as a live link would go on delivering data.
function decodeDamaged(bytes: Buffer): unknown {
  const decoder = new FrameDecoder({ bodyBytesMax: FRAME_BODY_BYTES_FLOOR });
  decoder.push(own(bytes));
  try {
    if (decoder.next() !== undefined) return 'decoded';
    const claimedBytes = FRAME_HEADER_BYTES + bytes.readUInt32LE(16);
    assert.ok(claimedBytes > bytes.length, 'waits only for a longer body');
    decoder.push(new Uint8Array(claimedBytes - bytes.length));
    return decoder.next() ?? 'waiting';
  } catch (err) {
    return err;
  }
}

test('a single-bit flip anywhere in a frame of any type is rejected', () => {
  for (const frame of SAMPLES) {
    const bytes = encodeFrame(frame);
    for (let bit = 0; bit < bytes.length * 8; bit++) {
      const damaged = Buffer.from(bytes);
      damaged[bit >> 3]! ^= 1 << (bit & 7);
      const outcome = decodeDamaged(damaged);
      const where = `${frame.type}: bit ${bit} (byte ${bit >> 3})`;
      assert.ok(outcome instanceof FrameError, `${where} gave ${String(outcome)}`);
      assert.ok(codesForFlipAt(bit >> 3).includes(outcome.code), `${where} gave ${outcome.code}`);
    }
  }
});

// ---- Poisoned ----

test('after an error the decoder is poisoned: every later next() throws the same error', () => {
  const decoder = new FrameDecoder();
  const bad = craftFrame({ typeCode: 4, body: Buffer.alloc(8), badChecksum: true });
  decoder.push(own(Buffer.concat([encodeFrame(SAMPLES[4]!), bad, encodeFrame(SAMPLES[3]!)])));
  assert.deepEqual(decoder.next(), SAMPLES[4], 'the good frame before the bad one is delivered');
  const first = expectFrameError(decoder, 'ERR_FRAME_CHECKSUM');
  assert.equal(decoder.error, first);
  assert.equal(decoder.bytesQueued, 0, 'queued input is dropped');
  decoder.push(own(encodeFrame(SAMPLES[3]!)));
  assert.equal(decoder.bytesQueued, 0, 'later input is not kept');
  for (let i = 0; i < 3; i++) assert.throws(() => decoder.next(), (err: unknown) => err === first);
});

test('a decoder is not poisoned by waiting for bytes', () => {
  const decoder = new FrameDecoder();
  assert.equal(decoder.next(), undefined);
  assert.equal(decoder.error, undefined);
  assert.deepEqual(decodeChunks([own(STREAM)], decoder), SAMPLES);
});

// A base chunk of `blocks` blocks whose bytes all equal fill.
function bigChunk(fill: number, blocks = 256): BaseChunkFrame {
  const data = new Uint8Array(blocks * 4096).fill(fill);
  return { type: 'base_chunk', epoch: 3, sessionId: 9, index: fill, startBlock: fill * blocks, blocks, lsnCheckpoint: 5, digest: 7n, zero: false, data };
}

// The frame's bytes in 64 KiB pieces, each in memory of its own, as a socket delivers them.
function pieces(frame: BaseChunkFrame): Uint8Array[] {
  const bytes = encodeFrame(frame);
  const out: Uint8Array[] = [];
  for (let at = 0; at < bytes.length; at += 65536) out.push(own(bytes.subarray(at, at + 65536)));
  return out;
}

test('a released large body carries the next large frame; one never released stays intact', () => {
  const decoder = new FrameDecoder();
  const next = (frame: BaseChunkFrame): BaseChunkFrame => {
    for (const piece of pieces(frame)) decoder.push(piece);
    const got = decoder.next() as BaseChunkFrame;
    assert.deepEqual({ ...got, data: undefined }, { ...frame, data: undefined });
    assert.ok(Buffer.from(got.data!.buffer, got.data!.byteOffset, got.data!.byteLength).equals(frame.data!), `chunk ${frame.index}'s data`);
    return got;
  };
  const first = next(bigChunk(1));
  const kept = next(bigChunk(2));
  assert.notEqual(first.data!.buffer, kept.data!.buffer, 'two bodies lent at once have their own buffers');
  decoder.release(first.data!);
  decoder.release(first.data!); // a second release changes nothing
  const third = next(bigChunk(3));
  assert.equal(third.data!.buffer, first.data!.buffer, 'the released buffer carries the next large body');
  const fourth = next(bigChunk(4));
  assert.notEqual(fourth.data!.buffer, third.data!.buffer, 'a buffer is lent to one body at a time');
  assert.ok(kept.data!.every((b) => b === 2), 'the body never released still holds its own bytes');

  // A foreign view, or a small frame's, is not taken in.
  decoder.release(Buffer.alloc(4096));
  const small = bigChunk(5, 1);
  decoder.push(own(encodeFrame(small)));
  const smallGot = decoder.next() as BaseChunkFrame;
  decoder.release(smallGot.data!);
  decoder.release(fourth.data!);
  const fifth = next(bigChunk(6));
  assert.equal(fifth.data!.buffer, fourth.data!.buffer);
});

test('a large body that arrives in one chunk is decoded in place and lends nothing', () => {
  const decoder = new FrameDecoder();
  const frame = bigChunk(7);
  const whole = own(encodeFrame(frame));
  decoder.push(whole);
  const got = decoder.next() as BaseChunkFrame;
  assert.equal(got.data!.buffer, whole.buffer);
  decoder.release(got.data!); // not lent: ignored
  for (const piece of pieces(bigChunk(8))) decoder.push(piece);
  const spanning = decoder.next() as BaseChunkFrame;
  assert.notEqual(spanning.data!.buffer, whole.buffer);
  assert.ok(whole.subarray(whole.length - 4096).every((b) => b === 7), 'the chunk pushed by the caller is never written');
});

test('buffers kept for reuse go at the first trim after large frames stop, and stay while they come', () => {
  const decoder = new FrameDecoder();
  const take = (fill: number): BaseChunkFrame => {
    for (const piece of pieces(bigChunk(fill))) decoder.push(piece);
    return decoder.next() as BaseChunkFrame;
  };
  const a = take(1);
  const b = take(2);
  decoder.release(a.data!);
  decoder.release(b.data!);
  assert.equal(decoder.pooledBuffers, 2);
  decoder.trimPool(); // large frames came since the last trim: kept
  assert.equal(decoder.pooledBuffers, 2);
  decoder.release(take(3).data!);
  decoder.trimPool();
  assert.equal(decoder.pooledBuffers, 2);
  decoder.trimPool(); // none since: dropped
  assert.equal(decoder.pooledBuffers, 0);
  assert.ok(take(4).data!.every((x) => x === 4), 'a fresh buffer after the trim');
});

test('a large WAL_RECORDS body is not lent: its copy is its own size (nothing hands it back)', () => {
  const decoder = new FrameDecoder();
  const record = new Uint8Array(512 * 1024).fill(5);
  const bytes = encodeFrame({ type: 'wal_records', epoch: 1, records: [{ lsn: 1, bytes: record }] });
  for (let at = 0; at < bytes.length; at += 65536) decoder.push(own(bytes.subarray(at, at + 65536)));
  const frame = decoder.next() as WalRecordsFrame;
  assert.equal(frame.records[0]!.bytes.buffer.byteLength, bytes.length - FRAME_HEADER_BYTES);
  assert.equal(decoder.pooledBuffers, 0);
});
