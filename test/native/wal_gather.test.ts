// The flusher's native path on the real kernel: Wal.readSpan reads a range of
// a segment into the arena (from the group slots while they hold it, else
// with one O_DIRECT read), and Wal.gatherBlocks verifies the records in it and
// copies block ranges out of them; Wal.gatherFromMemory does both at once for
// records still in memory, or nothing. Bad arguments are TypeError/RangeError,
// records that fail verification ERR_RECORD with a reason, I/O errors ERR_IO.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as path from 'node:path';

import { BlockwalError } from '../../lib/native/errors';
import { type ArenaSlice, OpKind, OpPurpose, Ring } from '../../lib/native/ring';
import { type AppendedRecord, GATHER, GATHER_FIELDS, READ_SPAN_BYTES_MAX, Wal } from '../../lib/native/wal';
import { tempDir } from '../support/tmp';

const BLOCK = 4096;
const SEGMENT_BYTES = 4 << 20;
const EIO = 5;
const ENOENT = 2;

interface Fixture {
  ring: Ring;
  wal: Wal;
  close: () => Promise<void>;
}

async function open(depth = 128): Promise<Fixture> {
  const { dir, cleanup } = tempDir('walgather');
  const ring = Ring.open({ depth, arenaBytes: 32 << 20 });
  const { wal } = await Wal.open(ring, { dir: path.join(dir, 'wal'), create: true, segmentBytes: SEGMENT_BYTES, groupBytes: 64 << 10 });
  return {
    ring,
    wal,
    close: async () => {
      await wal.close();
      await ring.close();
      cleanup();
    },
  };
}

// Block i of the record appended as number n: every byte tells which.
function blockOf(n: number, i: number): Buffer {
  const b = Buffer.alloc(BLOCK);
  for (let k = 0; k < BLOCK; k += 4) b.writeUInt32LE(((n * 1000 + i) * 2654435761 + k) >>> 0, k);
  return b;
}

async function appendWrite(wal: Wal, n: number, blocks: number): Promise<AppendedRecord> {
  const payload = Buffer.concat(Array.from({ length: blocks }, (_, i) => blockOf(n, i)));
  return wal.appendLocated({ kind: 'write', epoch: 1, lba: n * 16, lengthBlocks: blocks, payload, fua: true });
}

// The 4 KiB-aligned range of one segment that holds every record given.
function spanOf(records: AppendedRecord[]): { seq: number; start: number; length: number } {
  const seq = records[0]!.segmentSeq;
  assert.ok(records.every((r) => r.segmentSeq === seq), 'one segment');
  const start = Math.floor(Math.min(...records.map((r) => r.offsetBytes)) / BLOCK) * BLOCK;
  const end = Math.ceil(Math.max(...records.map((r) => r.offsetBytes + r.spanBytes)) / BLOCK) * BLOCK;
  return { seq, start, length: end - start };
}

function descriptor(read: ArenaSlice, start: number, rec: AppendedRecord, firstIndex: number, lengthBlocks: number, dst: number): number[] {
  const d = new Array<number>(GATHER_FIELDS).fill(0);
  d[GATHER.src] = read.offsetBytes + rec.offsetBytes - start;
  d[GATHER.spanBytes] = rec.spanBytes;
  d[GATHER.lsn] = rec.lsn;
  d[GATHER.firstIndex] = firstIndex;
  d[GATHER.lengthBlocks] = lengthBlocks;
  d[GATHER.dst] = dst;
  return d;
}

// The same descriptor for gatherFromMemory: the source is the record's place in its segment.
function memoryDescriptor(rec: AppendedRecord, firstIndex: number, lengthBlocks: number, dst: number): number[] {
  const d = descriptor({ offsetBytes: 0, lengthBytes: 0, bytes: new Uint8Array(0) }, 0, rec, firstIndex, lengthBlocks, dst);
  d[GATHER.src] = rec.offsetBytes;
  return d;
}

function walReads(ring: Ring): number {
  return ring.takeTrace().filter((e) => e.type === 'submit' && e.kind === OpKind.read && e.purpose === OpPurpose.walRead).length;
}

test('readSpan + gatherBlocks copy blocks of records, read from the group slots and then from disk', async () => {
  const f = await open();
  try {
    const records = [await appendWrite(f.wal, 1, 3), await appendWrite(f.wal, 2, 1), await appendWrite(f.wal, 3, 4)];
    const { seq, start, length } = spanOf(records);
    const read = f.ring.alloc(length);
    const out = f.ring.alloc(4 * BLOCK);
    // Block 1 of record 1, block 0 of record 2, blocks 2-3 of record 3.
    const gather = (): void => {
      const desc = new Float64Array([
        ...descriptor(read, start, records[0]!, 1, 1, out.offsetBytes),
        ...descriptor(read, start, records[1]!, 0, 1, out.offsetBytes + BLOCK),
        ...descriptor(read, start, records[2]!, 2, 2, out.offsetBytes + 2 * BLOCK),
      ]);
      out.bytes.fill(0);
      f.wal.gatherBlocks(desc, 3);
      const want = Buffer.concat([blockOf(1, 1), blockOf(2, 0), blockOf(3, 2), blockOf(3, 3)]);
      assert.ok(Buffer.from(out.bytes).equals(want), 'gathered blocks match what was appended');
    };

    f.ring.setTrace(true);
    await f.wal.readSpan(seq, start, length, read);
    assert.equal(walReads(f.ring), 0, 'served from the group slots: no disk read');
    gather();

    // 40 more FUA groups: every group slot (16) is reused, the first frames
    // are on disk only.
    for (let n = 10; n < 50; n++) await appendWrite(f.wal, n, 1);
    read.bytes.fill(0xee);
    await f.wal.readSpan(seq, start, length, read);
    assert.equal(walReads(f.ring), 1, 'one O_DIRECT read of the whole span');
    gather();
  } finally {
    await f.close();
  }
});

test('gatherBlocks refuses records that fail verification with ERR_RECORD and a reason', async () => {
  const f = await open();
  try {
    const write = await appendWrite(f.wal, 1, 2);
    const trim = await f.wal.appendLocated({ kind: 'trim', epoch: 1, lba: 0, lengthBlocks: 8, fua: true });
    const { seq, start, length } = spanOf([write, trim]);
    const read = f.ring.alloc(length);
    const out = f.ring.alloc(2 * BLOCK);
    await f.wal.readSpan(seq, start, length, read);
    const expect = (desc: number[][], index: number, reason: string): void => {
      assert.throws(
        () => f.wal.gatherBlocks(new Float64Array(desc.flat()), desc.length),
        (err: unknown) => err instanceof BlockwalError && err.code === 'ERR_RECORD' && err.details.index === index && err.details.reason === reason,
        reason,
      );
    };
    const good = descriptor(read, start, write, 0, 1, out.offsetBytes);
    const second = (d: number[]): number[][] => [good, d];

    const wrongLsn = descriptor(read, start, write, 1, 1, out.offsetBytes + BLOCK);
    wrongLsn[GATHER.lsn] = write.lsn + 1;
    out.bytes.fill(0);
    expect(second(wrongLsn), 1, 'wrong_lsn');
    assert.ok(Buffer.from(out.bytes.subarray(0, BLOCK)).equals(blockOf(1, 0)), 'descriptors before the failing one were copied');
    expect(second(descriptor(read, start, write, 1, 2, out.offsetBytes + BLOCK)), 1, 'out_of_record');
    const trimDesc = descriptor(read, start, trim, 0, 1, out.offsetBytes + BLOCK);
    trimDesc[GATHER.spanBytes] = 64;
    expect(second(trimDesc), 1, 'wrong_kind');
    const notRecord = descriptor(read, start, write, 0, 1, out.offsetBytes + BLOCK);
    notRecord[GATHER.src] += 8;
    expect(second(notRecord), 1, 'bad_record');

    read.bytes[write.offsetBytes - start + 64 + 100]! ^= 0x01; // one payload bit
    expect([good], 0, 'bad_record');
  } finally {
    await f.close();
  }
});

test('bad arguments to readSpan and gatherBlocks are TypeError/RangeError, never a crash', async () => {
  const f = await open();
  try {
    const rec = await appendWrite(f.wal, 1, 1);
    const { seq, start, length } = spanOf([rec]);
    const read = f.ring.alloc(length + BLOCK);
    const walArea: ArenaSlice = { offsetBytes: 0, lengthBytes: BLOCK, bytes: f.ring.arenaView(0, BLOCK) };
    await assert.rejects(f.wal.readSpan(seq, start + 512, BLOCK, read), RangeError, 'unaligned offset');
    await assert.rejects(f.wal.readSpan(seq, start, 512, read), RangeError, 'unaligned length');
    await assert.rejects(f.wal.readSpan(seq, start, 0, read), RangeError, 'empty');
    await assert.rejects(f.wal.readSpan(seq, start, BLOCK, walArea), RangeError, 'destination in the WAL part of the arena');
    await assert.rejects(f.wal.readSpan(seq, SEGMENT_BYTES, BLOCK, read), { code: 'ERR_IO', errno: 22 }, 'past the segment end');
    await assert.rejects(f.wal.readSpan(NaN, start, BLOCK, read), RangeError, 'NaN seq');
    await assert.rejects(f.wal.readSpan(seq, start, 2 * length + 2 * BLOCK, read), RangeError, 'longer than the slice');
    const bigSlice: ArenaSlice = { offsetBytes: read.offsetBytes, lengthBytes: READ_SPAN_BYTES_MAX + BLOCK, bytes: read.bytes };
    await assert.rejects(f.wal.readSpan(seq, 0, READ_SPAN_BYTES_MAX + BLOCK, bigSlice), RangeError, 'above the span maximum');
    await assert.rejects(f.wal.readSpan(seq + 100, 0, BLOCK, read), { code: 'ERR_IO', errno: ENOENT }, 'no such segment');

    await f.wal.readSpan(seq, start, length, read);
    const out = f.ring.alloc(2 * BLOCK);
    const good = descriptor(read, start, rec, 0, 1, out.offsetBytes);
    const withField = (field: number, value: number): Float64Array => {
      const d = [...good];
      d[field] = value;
      return new Float64Array(d);
    };
    const raw = f.wal as unknown as { gatherBlocks(d: unknown, count: unknown): void };
    assert.throws(() => raw.gatherBlocks(new Uint8Array(48), 1), TypeError, 'not a Float64Array');
    assert.throws(() => raw.gatherBlocks(new Float64Array(good), '1'), TypeError, 'count not a number');
    assert.throws(() => f.wal.gatherBlocks(new Float64Array(good), 2), RangeError, 'count beyond the descriptors');
    assert.throws(() => f.wal.gatherBlocks(withField(GATHER.dst, out.offsetBytes + 512), 1), RangeError, 'unaligned destination');
    assert.throws(() => f.wal.gatherBlocks(withField(GATHER.dst, 0), 1), RangeError, 'destination in the WAL part of the arena');
    assert.throws(() => f.wal.gatherBlocks(withField(GATHER.dst, f.ring.arenaBytes), 1), RangeError, 'destination past the arena');
    assert.throws(() => f.wal.gatherBlocks(withField(GATHER.src, f.ring.arenaBytes - 32), 1), RangeError, 'source past the arena');
    assert.throws(() => f.wal.gatherBlocks(withField(GATHER.dst, read.offsetBytes), 1), RangeError, 'destination overlaps the source');
    assert.throws(() => f.wal.gatherBlocks(withField(GATHER.lengthBlocks, 0), 1), RangeError, 'no blocks');
    assert.throws(() => f.wal.gatherBlocks(withField(GATHER.lengthBlocks, 257), 1), RangeError, 'more blocks than a record holds');
    assert.throws(() => f.wal.gatherBlocks(withField(GATHER.spanBytes, 2 << 20), 1), RangeError, 'span above a record maximum');
    assert.throws(() => f.wal.gatherBlocks(withField(GATHER.lsn, 0), 1), RangeError, 'LSN 0');
    assert.throws(() => f.wal.gatherBlocks(withField(GATHER.src, NaN), 1), RangeError, 'NaN');
    assert.throws(() => f.wal.gatherBlocks(withField(GATHER.firstIndex, -1), 1), RangeError, 'negative');
    assert.throws(() => f.wal.gatherBlocks(withField(GATHER.src, 1.5), 1), RangeError, 'fraction');
    f.wal.gatherBlocks(new Float64Array(0), 0); // nothing to do
    f.wal.gatherBlocks(new Float64Array(good), 1);
    assert.ok(Buffer.from(out.bytes.subarray(0, BLOCK)).equals(blockOf(1, 0)), 'the good descriptor still works');
  } finally {
    await f.close();
  }
});

test('an injected read error rejects readSpan with ERR_IO and the errno', async () => {
  const f = await open();
  try {
    const first = await appendWrite(f.wal, 1, 1);
    for (let n = 10; n < 40; n++) await appendWrite(f.wal, n, 1); // first's group slot is reused
    const { seq, start, length } = spanOf([first]);
    const read = f.ring.alloc(length);
    f.ring.injectFault({ kind: OpKind.read, purpose: OpPurpose.walRead, errno: EIO });
    await assert.rejects(f.wal.readSpan(seq, start, length, read), { code: 'ERR_IO', errno: EIO });
    await f.wal.readSpan(seq, start, length, read); // the rule fired once
  } finally {
    await f.close();
  }
});

test('more span reads than ring slots all complete (a busy addon is retried after a drain)', async () => {
  const f = await open(32);
  try {
    const records: AppendedRecord[] = [];
    for (let n = 0; n < 40; n++) records.push(await appendWrite(f.wal, n, 2));
    const spans = records.slice(0, 20).map((r) => spanOf([r]));
    const reads = Array.from({ length: 200 }, (_, i) => {
      const s = spans[i % spans.length]!;
      const slice = f.ring.alloc(s.length);
      return f.wal.readSpan(s.seq, s.start, s.length, slice).then(() => ({ slice, s, rec: records[i % spans.length]! }));
    });
    const done = await Promise.all(reads);
    for (const { slice, s, rec } of done) {
      const out = f.ring.alloc(BLOCK);
      f.wal.gatherBlocks(new Float64Array(descriptor(slice, s.start, rec, 1, 1, out.offsetBytes)), 1);
      f.ring.free(out);
      f.ring.free(slice);
    }
  } finally {
    await f.close();
  }
});

test('gatherFromMemory copies blocks of records still in memory with no read, and nothing once one is gone', async () => {
  const f = await open();
  try {
    const records = [await appendWrite(f.wal, 1, 3), await appendWrite(f.wal, 2, 1), await appendWrite(f.wal, 3, 4)];
    const seq = records[0]!.segmentSeq;
    const out = f.ring.alloc(4 * BLOCK);
    const want = Buffer.concat([blockOf(1, 1), blockOf(2, 0), blockOf(3, 2), blockOf(3, 3)]);
    const desc = (): Float64Array =>
      new Float64Array([
        ...memoryDescriptor(records[0]!, 1, 1, out.offsetBytes),
        ...memoryDescriptor(records[1]!, 0, 1, out.offsetBytes + BLOCK),
        ...memoryDescriptor(records[2]!, 2, 2, out.offsetBytes + 2 * BLOCK),
      ]);
    f.ring.setTrace(true);
    const before = f.wal.status().readMemoryBytes;
    out.bytes.fill(0);
    assert.equal(f.wal.gatherFromMemory(seq, desc(), 3), true, 'all three are in the group slots');
    assert.ok(Buffer.from(out.bytes).equals(want), 'gathered blocks match what was appended');
    assert.equal(walReads(f.ring), 0, 'no disk read');
    const counted = f.wal.status().readMemoryBytes - before;
    assert.equal(counted, records.reduce((n, r) => n + r.spanBytes, 0), 'counted as read from memory, each record once');

    // Every group slot reused (and no WAL cache): the first records are on disk only.
    for (let n = 10; n < 50; n++) await appendWrite(f.wal, n, 1);
    out.bytes.fill(0xee);
    assert.equal(f.wal.gatherFromMemory(seq, desc(), 3), false, 'not in memory any more');
    assert.ok(out.bytes.every((b) => b === 0xee), 'nothing copied, not even for the records still held');
    assert.equal(walReads(f.ring), 0, 'and nothing read');
    const recent = await appendWrite(f.wal, 60, 2);
    const mixed = new Float64Array([...memoryDescriptor(recent, 0, 1, out.offsetBytes), ...memoryDescriptor(records[0]!, 0, 1, out.offsetBytes + BLOCK)]);
    assert.equal(f.wal.gatherFromMemory(seq, mixed, 2), false, 'one record gone: nothing');
    assert.ok(out.bytes.every((b) => b === 0xee), 'nothing copied');
  } finally {
    await f.close();
  }
});

test('gatherFromMemory checks each record against its descriptor (ERR_RECORD) and refuses bad descriptors', async () => {
  const f = await open();
  try {
    const write = await appendWrite(f.wal, 1, 2);
    const trim = await f.wal.appendLocated({ kind: 'trim', epoch: 1, lba: 0, lengthBlocks: 8, fua: true });
    const seq = write.segmentSeq;
    const out = f.ring.alloc(2 * BLOCK);
    const good = memoryDescriptor(write, 0, 1, out.offsetBytes);
    const expect = (second: number[], reason: string): void => {
      out.bytes.fill(0);
      assert.throws(
        () => f.wal.gatherFromMemory(seq, new Float64Array([...good, ...second]), 2),
        (err: unknown) => err instanceof BlockwalError && err.code === 'ERR_RECORD' && err.details.index === 1 && err.details.reason === reason,
        reason,
      );
      assert.ok(Buffer.from(out.bytes.subarray(0, BLOCK)).equals(blockOf(1, 0)), `${reason}: the descriptor before it was copied`);
    };
    const wrongLsn = memoryDescriptor(write, 1, 1, out.offsetBytes + BLOCK);
    wrongLsn[GATHER.lsn] = write.lsn + 1;
    expect(wrongLsn, 'wrong_lsn');
    expect(memoryDescriptor(write, 1, 2, out.offsetBytes + BLOCK), 'out_of_record');
    const trimDesc = memoryDescriptor(trim, 0, 1, out.offsetBytes + BLOCK);
    trimDesc[GATHER.spanBytes] = 64;
    expect(trimDesc, 'wrong_kind');
    const notRecord = memoryDescriptor(write, 0, 1, out.offsetBytes + BLOCK);
    notRecord[GATHER.src] += 8;
    notRecord[GATHER.spanBytes] -= 8;
    expect(notRecord, 'bad_record');

    const withField = (field: number, value: number): Float64Array => {
      const d = [...good];
      d[field] = value;
      return new Float64Array(d);
    };
    const raw = f.wal as unknown as { gatherFromMemory(seq: unknown, d: unknown, count: unknown): boolean };
    assert.throws(() => raw.gatherFromMemory(seq, new Uint8Array(48), 1), TypeError, 'not a Float64Array');
    assert.throws(() => raw.gatherFromMemory('1', new Float64Array(good), 1), TypeError, 'seq not a number');
    assert.throws(() => f.wal.gatherFromMemory(seq, new Float64Array(good), 2), RangeError, 'count beyond the descriptors');
    assert.throws(() => f.wal.gatherFromMemory(seq, withField(GATHER.dst, out.offsetBytes + 512), 1), RangeError, 'unaligned destination');
    assert.throws(() => f.wal.gatherFromMemory(seq, withField(GATHER.dst, 0), 1), RangeError, 'destination in the WAL part of the arena');
    assert.throws(() => f.wal.gatherFromMemory(seq, withField(GATHER.dst, f.ring.arenaBytes), 1), RangeError, 'destination past the arena');
    assert.throws(() => f.wal.gatherFromMemory(seq, withField(GATHER.src, SEGMENT_BYTES - 32), 1), RangeError, 'record past the segment end');
    assert.throws(() => f.wal.gatherFromMemory(seq, withField(GATHER.lengthBlocks, 0), 1), RangeError, 'no blocks');
    assert.throws(() => f.wal.gatherFromMemory(seq, withField(GATHER.spanBytes, 2 << 20), 1), RangeError, 'span above a record maximum');
    assert.throws(() => f.wal.gatherFromMemory(seq, withField(GATHER.lsn, 0), 1), RangeError, 'LSN 0');
    assert.throws(() => f.wal.gatherFromMemory(seq, withField(GATHER.src, NaN), 1), RangeError, 'NaN');
    assert.throws(() => f.wal.gatherFromMemory(seq + 100, new Float64Array(good), 1), { code: 'ERR_IO', errno: ENOENT }, 'no such segment');
    assert.equal(f.wal.gatherFromMemory(seq, withField(GATHER.src, SEGMENT_BYTES - 4 * BLOCK), 1), false, 'a place never written: not in memory');
    out.bytes.fill(0);
    assert.equal(f.wal.gatherFromMemory(seq, new Float64Array(good), 1), true, 'the good descriptor still works');
    assert.ok(Buffer.from(out.bytes.subarray(0, BLOCK)).equals(blockOf(1, 0)));
  } finally {
    await f.close();
  }
});
