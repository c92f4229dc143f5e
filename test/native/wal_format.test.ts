// The WAL record and frame format (native/wal/format.h): round trips, every
// single-bit flip rejected, shapes a kind may not carry rejected. The checksum
// is cross-checked against xxhash-addon (the TS side's XXH3) so both sides
// agree on the bytes it covers.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';

import fc from 'fast-check';
import { XXHash3 } from 'xxhash-addon';

import {
  RecordDecodeError,
  checkFrame,
  decodeRecord,
  encodeFrame,
  encodeRecord,
  recordKindCode,
  segmentFileName,
  walFormatLimits,
  type FrameRecord,
  type RecordFields,
  type RecordKind,
} from '../../lib/native/wal_format';
import { addon } from '../../lib/native/addon';

const kBlockBytes = 4096;
const kRecordHeaderBytes = 64;
const kFrameHeaderBytes = 64;
const kChecksumOffset = 56; // RecordHeader.checksum

// A payload whose bytes depend on seed and are never zero (so overwriting
// with zeros always changes something).
function pattern(bytes: number, seed: number): Buffer {
  const out = Buffer.alloc(bytes);
  let x = (seed * 2654435761 + 1) >>> 0;
  for (let i = 0; i < bytes; i++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    out[i] = ((x >>> 16) % 255) + 1;
  }
  return out;
}

function align8(n: number): number {
  return Math.ceil(n / 8) * 8;
}

// XXH3-64 of the header with a zero checksum field followed by the payload.
function jsChecksum(encoded: Buffer, payloadBytes: number): bigint {
  const covered = Buffer.from(encoded.subarray(0, kRecordHeaderBytes + payloadBytes));
  covered.fill(0, kChecksumOffset, kChecksumOffset + 8);
  return XXHash3.hash(covered).readBigUInt64BE();
}

function flipBit(buf: Buffer, bit: number): Buffer {
  const copy = Buffer.from(buf);
  copy[bit >> 3] ^= 1 << (bit & 7);
  return copy;
}

function decodeError(buf: Uint8Array): string {
  try {
    decodeRecord(buf);
  } catch (err) {
    assert.ok(err instanceof RecordDecodeError, `expected RecordDecodeError, got ${String(err)}`);
    assert.equal(err.code, 'ERR_RECORD');
    return err.reason;
  }
  return 'ok';
}

interface RecordCase {
  fields: RecordFields;
  payload: Buffer | null;
}

const lbaLimit = 2 ** 41;

const recordCase: fc.Arbitrary<RecordCase> = fc
  .record({
    kind: fc.constantFrom<RecordKind>('write', 'trim', 'zero', 'control'),
    epoch: fc.oneof(fc.constant(0), fc.integer({ min: 1, max: 1000 }), fc.constant(Number.MAX_SAFE_INTEGER)),
    lsn: fc.oneof(fc.integer({ min: 1, max: 1_000_000 }), fc.constant(Number.MAX_SAFE_INTEGER)),
    lba: fc.oneof(fc.integer({ min: 0, max: 1 << 20 }), fc.constant(lbaLimit - 256)),
    blocks: fc.integer({ min: 1, max: 4 }),
    trimBlocks: fc.oneof(fc.integer({ min: 1, max: 1 << 30 }), fc.constant(256)),
    controlBytes: fc.oneof(fc.integer({ min: 0, max: 600 }), fc.constant(64 << 10)),
    seed: fc.integer({ min: 0, max: 1 << 30 }),
  })
  .map((r): RecordCase => {
    switch (r.kind) {
      case 'write':
        return {
          fields: { kind: r.kind, epoch: r.epoch, lsn: r.lsn, lba: r.lba, lengthBlocks: r.blocks },
          payload: pattern(r.blocks * kBlockBytes, r.seed),
        };
      case 'trim':
      case 'zero': {
        const lengthBlocks = Math.min(r.trimBlocks, lbaLimit - r.lba);
        return { fields: { kind: r.kind, epoch: r.epoch, lsn: r.lsn, lba: r.lba, lengthBlocks }, payload: null };
      }
      case 'control':
        return {
          fields: { kind: r.kind, epoch: r.epoch, lsn: r.lsn, lba: 0, lengthBlocks: 0 },
          payload: pattern(r.controlBytes, r.seed),
        };
    }
  });

test('the format limits the addon reports match what the tests assume', () => {
  const limits = walFormatLimits();
  assert.equal(limits.blockBytes, kBlockBytes);
  assert.equal(limits.recordHeaderBytes, kRecordHeaderBytes);
  assert.equal(limits.frameHeaderBytes, kFrameHeaderBytes);
  assert.equal(limits.lbaLimit, lbaLimit);
  assert.equal(limits.lsnMax, Number.MAX_SAFE_INTEGER);
});

test('encode/decode round trip for every kind, with the checksum XXH3-64 over header and payload', () => {
  fc.assert(
    fc.property(recordCase, ({ fields, payload }) => {
      const encoded = encodeRecord(fields, payload);
      const payloadBytes = payload?.length ?? 0;
      assert.equal(encoded.length, align8(kRecordHeaderBytes + payloadBytes));
      const decoded = decodeRecord(encoded);
      assert.deepEqual(
        { kind: decoded.kind, epoch: decoded.epoch, lsn: decoded.lsn, lba: decoded.lba, lengthBlocks: decoded.lengthBlocks },
        fields,
      );
      assert.equal(decoded.payloadBytes, payloadBytes);
      assert.equal(decoded.spanBytes, encoded.length);
      assert.equal(decoded.checksum, encoded.readBigUInt64LE(kChecksumOffset));
      assert.equal(decoded.checksum, jsChecksum(encoded, payloadBytes));
      if (payload !== null) assert.ok(encoded.subarray(kRecordHeaderBytes, kRecordHeaderBytes + payloadBytes).equals(payload));
      assert.ok(encoded.subarray(kRecordHeaderBytes + payloadBytes).every((b) => b === 0), 'padding is zero');
    }),
    { numRuns: 300 },
  );
});

test('decodeRecord reads a record at an offset inside a larger buffer', () => {
  const first = encodeRecord({ kind: 'control', epoch: 3, lsn: 9, lba: 0, lengthBlocks: 0 }, pattern(13, 1));
  const second = encodeRecord({ kind: 'trim', epoch: 3, lsn: 10, lba: 100, lengthBlocks: 8 });
  const both = Buffer.concat([first, second]);
  assert.equal(decodeRecord(both, first.length).lsn, 10);
  assert.equal(decodeRecord(both, 0).spanBytes, first.length);
});

test('every single-bit flip of a one-block write record (header and payload) is rejected', () => {
  const encoded = encodeRecord({ kind: 'write', epoch: 7, lsn: 1234, lba: 42, lengthBlocks: 1 }, pattern(kBlockBytes, 7));
  assert.equal(decodeError(encoded), 'ok');
  const bits = encoded.length * 8;
  for (let bit = 0; bit < bits; bit++) {
    const reason = decodeError(flipBit(encoded, bit));
    if (reason === 'ok') assert.fail(`bit ${bit} flipped and the record still decodes`);
  }
});

test('every single-bit flip of control, trim and zero records (header and payload) is rejected', () => {
  const cases: RecordCase[] = [
    { fields: { kind: 'control', epoch: 2, lsn: 77, lba: 0, lengthBlocks: 0 }, payload: pattern(301, 3) },
    { fields: { kind: 'trim', epoch: 2, lsn: 78, lba: 4096, lengthBlocks: 1 << 20 }, payload: null },
    { fields: { kind: 'zero', epoch: 2, lsn: 79, lba: 5, lengthBlocks: 3 }, payload: null },
  ];
  for (const { fields, payload } of cases) {
    const encoded = encodeRecord(fields, payload);
    const coveredBits = (kRecordHeaderBytes + (payload?.length ?? 0)) * 8;
    for (let bit = 0; bit < coveredBits; bit++) {
      if (decodeError(flipBit(encoded, bit)) === 'ok') assert.fail(`${fields.kind}: bit ${bit} flipped and still decodes`);
    }
  }
});

test('a flipped bit in a record is reported with the check that caught it', () => {
  const encoded = encodeRecord({ kind: 'write', epoch: 1, lsn: 5, lba: 0, lengthBlocks: 1 }, pattern(kBlockBytes, 1));
  assert.equal(decodeError(flipBit(encoded, 0)), 'bad_magic');
  assert.equal(decodeError(flipBit(encoded, 4 * 8)), 'bad_version');
  assert.equal(decodeError(flipBit(encoded, 5 * 8 + 7)), 'bad_kind');
  assert.equal(decodeError(flipBit(encoded, 6 * 8)), 'bad_shape'); // flags
  assert.equal(decodeError(flipBit(encoded, 8 * 8 + 13)), 'bad_shape'); // payload_bytes no longer 1 block
  const control = encodeRecord({ kind: 'control', epoch: 1, lsn: 5, lba: 0, lengthBlocks: 0 }, pattern(37, 1));
  assert.equal(decodeError(flipBit(control, 8 * 8 + 6)), 'truncated'); // payload_bytes grows past the buffer
  assert.equal(decodeError(flipBit(encoded, 16 * 8)), 'bad_checksum'); // epoch
  assert.equal(decodeError(flipBit(encoded, 100 * 8)), 'bad_checksum'); // payload
});

test('truncated and empty buffers are rejected', () => {
  const encoded = encodeRecord({ kind: 'write', epoch: 1, lsn: 5, lba: 0, lengthBlocks: 1 }, pattern(kBlockBytes, 1));
  assert.equal(decodeError(encoded.subarray(0, 63)), 'truncated');
  assert.equal(decodeError(encoded.subarray(0, kRecordHeaderBytes + kBlockBytes - 1)), 'truncated');
  assert.equal(decodeError(Buffer.alloc(0)), 'truncated');
  assert.equal(decodeError(Buffer.alloc(kBlockBytes)), 'bad_magic');
});

test('encodeRecord refuses shapes a kind may not carry', () => {
  const bad: { name: string; fields: RecordFields; payload: Buffer | null }[] = [
    { name: 'write, payload shorter than lengthBlocks', fields: { kind: 'write', epoch: 1, lsn: 1, lba: 0, lengthBlocks: 2 }, payload: pattern(kBlockBytes, 1) },
    { name: 'write, payload not whole blocks', fields: { kind: 'write', epoch: 1, lsn: 1, lba: 0, lengthBlocks: 1 }, payload: pattern(kBlockBytes + 1, 1) },
    { name: 'write without payload', fields: { kind: 'write', epoch: 1, lsn: 1, lba: 0, lengthBlocks: 1 }, payload: null },
    { name: 'write of zero blocks', fields: { kind: 'write', epoch: 1, lsn: 1, lba: 0, lengthBlocks: 0 }, payload: null },
    { name: 'write above the record payload limit', fields: { kind: 'write', epoch: 1, lsn: 1, lba: 0, lengthBlocks: 257 }, payload: Buffer.alloc(257 * kBlockBytes, 1) },
    { name: 'trim with payload', fields: { kind: 'trim', epoch: 1, lsn: 1, lba: 0, lengthBlocks: 1 }, payload: pattern(8, 1) },
    { name: 'trim of zero blocks', fields: { kind: 'trim', epoch: 1, lsn: 1, lba: 0, lengthBlocks: 0 }, payload: null },
    { name: 'zero with payload', fields: { kind: 'zero', epoch: 1, lsn: 1, lba: 0, lengthBlocks: 1 }, payload: pattern(kBlockBytes, 1) },
    { name: 'control with lba', fields: { kind: 'control', epoch: 1, lsn: 1, lba: 1, lengthBlocks: 0 }, payload: pattern(8, 1) },
    { name: 'control with lengthBlocks', fields: { kind: 'control', epoch: 1, lsn: 1, lba: 0, lengthBlocks: 1 }, payload: pattern(8, 1) },
    { name: 'control above its payload limit', fields: { kind: 'control', epoch: 1, lsn: 1, lba: 0, lengthBlocks: 0 }, payload: pattern((64 << 10) + 1, 1) },
    { name: 'lsn 0', fields: { kind: 'trim', epoch: 1, lsn: 0, lba: 0, lengthBlocks: 1 }, payload: null },
    { name: 'block range past the LBA limit', fields: { kind: 'trim', epoch: 1, lsn: 1, lba: lbaLimit - 1, lengthBlocks: 2 }, payload: null },
  ];
  for (const { name, fields, payload } of bad) {
    assert.throws(
      () => encodeRecord(fields, payload),
      (err: unknown) => err instanceof RecordDecodeError && err.code === 'ERR_RECORD' && err.reason === 'bad_shape',
      name,
    );
  }
});

// Rewrites header fields of an encoded record and recomputes a valid checksum,
// so decode must reject the shape itself, not the checksum.
function reseal(encoded: Buffer, payloadBytes: number, edit: (header: Buffer) => void): Buffer {
  const copy = Buffer.from(encoded);
  edit(copy);
  copy.writeBigUInt64LE(jsChecksum(copy, payloadBytes), kChecksumOffset);
  return copy;
}

test('decodeRecord rejects bad shapes even when the checksum matches', () => {
  const trim = encodeRecord({ kind: 'trim', epoch: 1, lsn: 3, lba: 10, lengthBlocks: 2 });
  const control = encodeRecord({ kind: 'control', epoch: 1, lsn: 3, lba: 0, lengthBlocks: 0 }, pattern(16, 2));
  const write = encodeRecord({ kind: 'write', epoch: 1, lsn: 3, lba: 0, lengthBlocks: 1 }, pattern(kBlockBytes, 2));
  assert.equal(decodeError(reseal(trim, 0, () => undefined)), 'ok', 'reseal alone keeps a record valid');
  assert.equal(decodeError(reseal(control, 16, (h) => h.writeBigUInt64LE(5n, 32))), 'bad_shape', 'control with lba');
  assert.equal(decodeError(reseal(trim, 0, (h) => h.writeBigUInt64LE(0n, 40))), 'bad_shape', 'trim of 0 blocks');
  assert.equal(decodeError(reseal(write, kBlockBytes, (h) => h.writeBigUInt64LE(2n, 40))), 'bad_shape', 'write length');
  assert.equal(decodeError(reseal(trim, 0, (h) => h.writeUInt16LE(1, 6))), 'bad_shape', 'flags');
  assert.equal(decodeError(reseal(trim, 0, (h) => h.writeUInt32LE(1, 12))), 'bad_shape', 'reserved0');
  assert.equal(decodeError(reseal(trim, 0, (h) => h.writeBigUInt64LE(1n, 48))), 'bad_shape', 'reserved1');
  assert.equal(decodeError(reseal(trim, 0, (h) => h.writeBigUInt64LE(0n, 24))), 'bad_shape', 'lsn 0');
  assert.equal(decodeError(reseal(trim, 0, (h) => h.writeUInt8(9, 5))), 'bad_kind', 'kind 9');
});

function frameRecords(seed: number): FrameRecord[] {
  return [
    { kind: 'write', epoch: 4, lba: 10, lengthBlocks: 2, payload: pattern(2 * kBlockBytes, seed) },
    { kind: 'trim', epoch: 4, lba: 100, lengthBlocks: 50 },
    { kind: 'control', epoch: 4, lba: 0, lengthBlocks: 0, payload: pattern(37, seed + 1) },
    { kind: 'zero', epoch: 4, lba: 7, lengthBlocks: 1 },
  ];
}

test('frame round trip: header fields, records with consecutive LSNs, zero padding to 4 KiB', () => {
  const records = frameRecords(1);
  const frame = encodeFrame({ segmentSeq: 9, lsnFirst: 500, lsnDurableHint: 480, dsync: true }, records);
  assert.equal(frame.length % kBlockBytes, 0);
  const checked = checkFrame(frame, 9);
  assert.ok(checked.ok, `frame does not check: ${JSON.stringify(checked)}`);
  assert.equal(checked.segmentSeq, 9);
  assert.equal(checked.lsnFirst, 500);
  assert.equal(checked.lsnDurableHint, 480);
  assert.equal(checked.recordCount, records.length);
  assert.equal(checked.frameBytes, frame.length);
  assert.equal(checked.dsync, true);
  let offset = kFrameHeaderBytes;
  records.forEach((r, i) => {
    const d = decodeRecord(frame, offset);
    assert.deepEqual([d.kind, d.lsn, d.epoch, d.lba, d.lengthBlocks], [r.kind, 500 + i, r.epoch, r.lba, r.lengthBlocks]);
    const payload = r.payload ?? Buffer.alloc(0);
    assert.ok(frame.subarray(offset + kRecordHeaderBytes, offset + kRecordHeaderBytes + d.payloadBytes).equals(payload));
    offset += d.spanBytes;
  });
  assert.equal(offset, kFrameHeaderBytes + checked.bodyBytes);
  assert.ok(frame.subarray(offset).every((b) => b === 0));
  assert.equal(frame.length, Math.ceil(offset / kBlockBytes) * kBlockBytes);
  const plain = checkFrame(encodeFrame({ segmentSeq: 9, lsnFirst: 1, lsnDurableHint: 0 }, records), 9);
  assert.ok(plain.ok && !plain.dsync);
});

test('a frame of another segment is wrong_segment; zeros are not_a_frame', () => {
  const frame = encodeFrame({ segmentSeq: 3, lsnFirst: 1, lsnDurableHint: 0 }, frameRecords(2));
  assert.deepEqual(checkFrame(frame, 4), { ok: false, error: 'wrong_segment' });
  assert.deepEqual(checkFrame(Buffer.alloc(kBlockBytes), 3), { ok: false, error: 'not_a_frame' });
  assert.deepEqual(checkFrame(frame.subarray(0, frame.length - kBlockBytes), 3), { ok: false, error: 'bad_shape' });
});

test('every single-bit flip of a frame (header, records, padding) is rejected', () => {
  const frame = encodeFrame({ segmentSeq: 2, lsnFirst: 40, lsnDurableHint: 39 }, [
    { kind: 'control', epoch: 1, lba: 0, lengthBlocks: 0, payload: pattern(301, 5) },
    { kind: 'trim', epoch: 1, lba: 8, lengthBlocks: 8 },
    { kind: 'write', epoch: 1, lba: 1, lengthBlocks: 1, payload: pattern(kBlockBytes, 6) },
  ]);
  assert.ok(checkFrame(frame, 2).ok);
  const seen = new Set<string>();
  for (let bit = 0; bit < frame.length * 8; bit++) {
    const checked = checkFrame(flipBit(frame, bit), 2);
    if (checked.ok) assert.fail(`bit ${bit} flipped and the frame still checks`);
    seen.add(checked.error);
  }
  assert.deepEqual([...seen].sort(), ['bad_record', 'bad_shape', 'not_a_frame']);
});

test('encodeFrame refuses frames the format forbids', () => {
  const one: FrameRecord[] = [{ kind: 'trim', epoch: 1, lba: 0, lengthBlocks: 1 }];
  assert.throws(() => encodeFrame({ segmentSeq: 1, lsnFirst: 5, lsnDurableHint: 5 }, one), RangeError);
  assert.throws(() => encodeFrame({ segmentSeq: 1, lsnFirst: 0, lsnDurableHint: 0 }, one), RangeError);
  assert.throws(() => encodeFrame({ segmentSeq: 1, lsnFirst: 5, lsnDurableHint: 0 }, []), RangeError);
  assert.throws(
    () => encodeFrame({ segmentSeq: 1, lsnFirst: 5, lsnDurableHint: 0 }, [{ kind: 'trim', epoch: 1, lba: 0, lengthBlocks: 1, payload: pattern(8, 1) }]),
    (err: unknown) => err instanceof RecordDecodeError && err.reason === 'bad_shape',
  );
});

test('segment file names are 16 lower-case hex digits and .wal', () => {
  assert.equal(segmentFileName(0), '0000000000000000.wal');
  assert.equal(segmentFileName(0xabc), '0000000000000abc.wal');
  assert.equal(segmentFileName(Number.MAX_SAFE_INTEGER), '001fffffffffffff.wal');
  assert.throws(() => segmentFileName(-1), RangeError);
});

test('record kinds map to their on-disk codes', () => {
  assert.deepEqual(
    (['write', 'trim', 'zero', 'control'] as const).map(recordKindCode),
    [1, 2, 3, 4],
  );
});

test('decodeRecord gives the same fields through the array path for a record in a Uint8Array view at an offset', () => {
  const record = encodeRecord({ kind: 'write', epoch: 7, lsn: 2 ** 40, lba: 2 ** 30, lengthBlocks: 1 }, pattern(kBlockBytes, 9));
  const backing = new Uint8Array(record.length + 24);
  backing.set(record, 16);
  const view = backing.subarray(8); // not a Buffer, not at offset 0 of its memory
  const decoded = decodeRecord(view, 8);
  assert.deepEqual(decoded, {
    kind: 'write',
    epoch: 7,
    lsn: 2 ** 40,
    lba: 2 ** 30,
    lengthBlocks: 1,
    payloadBytes: kBlockBytes,
    checksum: record.readBigUInt64LE(kChecksumOffset),
    spanBytes: record.length,
  });
  // One byte short of the record: the array path declines and the reason comes from the full decode.
  assert.throws(() => decodeRecord(view.subarray(0, 8 + record.length - 1), 8), (err: unknown) => err instanceof RecordDecodeError && err.reason === 'truncated');
  assert.throws(() => decodeRecord(view, view.length + 1), RangeError);
});

test('xxh3Parts hashes its parts as if joined, for any split, and checks its arguments', () => {
  const { xxh3Parts, decodeRecordInto } = addon();
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 9000 }), fc.array(fc.nat(), { maxLength: 40 }), (bytes, cuts) => {
      const points = [...new Set(cuts.map((c) => c % (bytes.length + 1)))].sort((a, b) => a - b);
      const parts: Uint8Array[] = [];
      let from = 0;
      for (const p of [...points, bytes.length]) {
        parts.push(bytes.subarray(from, p)); // empty parts included
        from = p;
      }
      const out = Buffer.alloc(12, 0xee);
      xxh3Parts(out, 2, ...parts);
      assert.ok(out.subarray(2, 10).equals(XXHash3.hash(Buffer.from(bytes))), `${parts.length} parts`);
      assert.ok(out.subarray(0, 2).every((b) => b === 0xee) && out.subarray(10).every((b) => b === 0xee), 'only 8 bytes written');
    }),
    { numRuns: 200 },
  );
  const out = Buffer.alloc(8);
  assert.throws(() => xxh3Parts(out, 1, Buffer.alloc(1)), RangeError);
  assert.throws(() => xxh3Parts(out, 0, 'text' as unknown as Uint8Array), TypeError);
  assert.throws(() => xxh3Parts(new Uint16Array(8) as unknown as Uint8Array, 0), TypeError);
  const fields = new Float64Array(7);
  const checksum = new BigUint64Array(1);
  assert.throws(() => decodeRecordInto(Buffer.alloc(64), 0, new Float64Array(6), checksum), RangeError);
  assert.throws(() => decodeRecordInto(Buffer.alloc(64), 65, fields, checksum), RangeError);
  assert.throws(() => decodeRecordInto(Buffer.alloc(64), 0, fields, new BigInt64Array(1) as unknown as BigUint64Array), TypeError);
  assert.equal(decodeRecordInto(Buffer.alloc(64), 0, fields, checksum), -1);
});
