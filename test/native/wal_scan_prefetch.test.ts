// The recovery scan's read-ahead (native/wal/scan.cc, SegmentReader, rule
// kPrefetchSettled): walking a segment, the scan reads it in 8 MiB chunks and
// the next chunk is read into a second buffer while the current one is
// verified. These tests place frames and damage around the chunk boundaries
// (8 MiB, 16 MiB, ... into each segment), in segments whose size is not a
// multiple of the chunk, and check that the scan returns exactly what the log
// holds: every record with its LSN, place and checksum, the control payloads
// (bytes from both sides of a boundary), roles, the torn tail, the corruption
// it refuses, and bytesScanned (each byte of a walked segment counted once).
// The chunk is fixed in scan.cc, so the segments here are 8 to 24 MiB. The
// same results are expected without read-ahead (io_uring refused): these
// tests also pin down that the read-ahead changed nothing the scan returns.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { mulberry32 } from '../../lib/util/prng';
import {
  WalCorruptError,
  decodeRecord,
  encodeFrame,
  recordKindCode,
  scanWal,
  segmentFileName,
  walFormatLimits,
  type FrameRecord,
  type ScanResult,
  type SegmentRole,
} from '../../lib/native/wal_format';
import { writeAt } from '../support/tmp';

const kMiB = 1 << 20;
const kChunkBytes = 8 * kMiB; // kScanChunkBytes in scan.cc
const kBlockBytes = 4096;
const kSectorBytes = 512;
const kFrameBlocksMax = walFormatLimits().frameBytesLimit / kBlockBytes;
const kSmallRecordsMax = 30; // records in a filler frame

// Deterministic bytes: views into one seeded pool.
const pool = (() => {
  const next = mulberry32(0x5ca4);
  const out = Buffer.alloc(2 * kMiB);
  for (let i = 0; i < out.length; i += 4) out.writeUInt32LE(Math.floor(next() * 2 ** 32), i);
  return out;
})();
function bytesFor(length: number, seed: number): Buffer {
  const start = ((seed * 40503) % (pool.length - length + 1)) & ~7;
  return pool.subarray(start, start + length);
}

interface ExpectedRecord {
  lsn: number;
  kind: number;
  segmentSeq: number;
  offsetBytes: number;
  payloadBytes: number;
  checksum: bigint;
  control: Buffer | null;
}

interface Placed {
  seq: number;
  offsetBytes: number;
  lsnFirst: number;
  frame: Buffer;
  records: ExpectedRecord[];
}

class WalDir {
  readonly dir = fs.mkdtempSync(path.join(os.tmpdir(), 'blockwal-scan-prefetch-'));
  constructor(readonly segmentBytes: number) {}

  file(seq: number): string {
    return path.join(this.dir, segmentFileName(seq));
  }
  create(seq: number): void {
    const fd = fs.openSync(this.file(seq), 'w');
    try {
      fs.ftruncateSync(fd, this.segmentBytes); // zeros, as a fresh segment
    } finally {
      fs.closeSync(fd);
    }
  }
  write(seq: number, offsetBytes: number, bytes: Buffer): void {
    writeAt(this.file(seq), offsetBytes, bytes);
  }
  scan(lsnFrom = 1): Promise<ScanResult> {
    return scanWal({ dir: this.dir, lsnFrom, segmentBytes: this.segmentBytes, wantControlPayloads: true });
  }
  remove(): void {
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

async function withWal(segmentBytes: number, fn: (wal: WalDir) => Promise<void>): Promise<void> {
  const wal = new WalDir(segmentBytes);
  try {
    await fn(wal);
  } finally {
    wal.remove();
  }
}

// Records that encode to a frame of exactly `blocks` blocks: a control record
// first (its payload crosses the frame's first 4 KiB boundary, so a frame
// whose header sits just before a chunk boundary returns bytes from both
// sides), then writes of up to 256 blocks. The control absorbs the per-record
// overhead: 64 (frame) + 64 + c + m * 64 + W * 4096 <= blocks * 4096.
function exactRecords(blocks: number, seed: number): FrameRecord[] {
  assert.ok(blocks >= 1 && blocks <= kFrameBlocksMax, `frame of ${blocks} blocks`);
  if (blocks === 1) return [{ kind: 'control', epoch: 1, lba: 0, lengthBlocks: 0, payload: bytesFor(3960, seed) }];
  const writes: FrameRecord[] = [];
  for (let left = blocks - 2; left > 0; left -= Math.min(left, 256)) {
    const n = Math.min(left, 256);
    writes.push({ kind: 'write', epoch: 1, lba: (seed * 7) % 100000, lengthBlocks: n, payload: bytesFor(n * kBlockBytes, seed + left) });
  }
  const control: FrameRecord = { kind: 'control', epoch: 1, lba: 0, lengthBlocks: 0, payload: bytesFor(8000 - 64 * writes.length, seed) };
  return [control, ...writes];
}

// A filler frame as a busy 4 KiB workload writes it: 1..kSmallRecordsMax
// one-block writes, now and then a trim or a small control.
function smallRecords(count: number, seed: number): FrameRecord[] {
  const out: FrameRecord[] = [];
  for (let i = 0; i < count; i++) {
    const s = seed * 31 + i;
    if (s % 11 === 0) out.push({ kind: 'trim', epoch: 1, lba: s % 5000, lengthBlocks: 1 + (s % 50) });
    else if (s % 13 === 0) out.push({ kind: 'control', epoch: 1, lba: 0, lengthBlocks: 0, payload: bytesFor(1 + (s % 300), s) });
    else out.push({ kind: 'write', epoch: 1, lba: s % 262144, lengthBlocks: 1, payload: bytesFor(kBlockBytes, s) });
  }
  return out;
}

// Lays frames out as the writer does, at positions the test chooses: back to
// back from offset 0 of a segment, the hint saying everything before the
// frame is durable unless told otherwise.
class Log {
  readonly frames: Placed[] = [];
  seq: number;
  cursor = 0;
  lsnNext: number;
  private readonly next: () => number;

  constructor(
    private readonly wal: WalDir,
    seq: number,
    seed = 1,
  ) {
    this.seq = seq;
    this.lsnNext = 1;
    this.next = mulberry32(seed);
    wal.create(seq);
  }

  get records(): ExpectedRecord[] {
    return this.frames.flatMap((f) => f.records);
  }

  switchTo(seq: number): void {
    this.seq = seq;
    this.cursor = 0;
    this.wal.create(seq);
  }

  append(records: FrameRecord[], hint?: number): Placed {
    const lsnFirst = this.lsnNext;
    const frame = encodeFrame({ segmentSeq: this.seq, lsnFirst, lsnDurableHint: hint ?? lsnFirst - 1 }, records);
    assert.ok(this.cursor + frame.length <= this.wal.segmentBytes, 'the test places frames inside the segment');
    const expected: ExpectedRecord[] = [];
    let at = 64;
    for (let i = 0; i < records.length; i++) {
      const d = decodeRecord(frame, at);
      assert.equal(d.lsn, lsnFirst + i);
      expected.push({
        lsn: d.lsn,
        kind: recordKindCode(d.kind),
        segmentSeq: this.seq,
        offsetBytes: this.cursor + at,
        payloadBytes: d.payloadBytes,
        checksum: d.checksum,
        control: d.kind === 'control' ? Buffer.from(frame.subarray(at + 64, at + 64 + d.payloadBytes)) : null,
      });
      at += d.spanBytes;
    }
    const placed = { seq: this.seq, offsetBytes: this.cursor, lsnFirst, frame, records: expected };
    this.wal.write(this.seq, this.cursor, frame);
    this.frames.push(placed);
    this.cursor += frame.length;
    this.lsnNext += records.length;
    return placed;
  }

  // A frame of exactly `blocks` blocks at the cursor.
  put(blocks: number, hint?: number): Placed {
    const placed = this.append(exactRecords(blocks, this.frames.length + 1), hint);
    assert.equal(placed.frame.length, blocks * kBlockBytes);
    return placed;
  }

  // Small frames from the cursor up to exactly offsetBytes.
  fillTo(offsetBytes: number, hint?: (lsnFirst: number) => number): void {
    assert.ok(offsetBytes >= this.cursor && offsetBytes % kBlockBytes === 0);
    while (this.cursor < offsetBytes) {
      const leftBlocks = (offsetBytes - this.cursor) / kBlockBytes;
      const count = 1 + Math.floor(this.next() * kSmallRecordsMax);
      const records = smallRecords(count, this.frames.length + 1);
      const blocks = Math.ceil(encodedBytes(records) / kBlockBytes);
      const h = hint?.(this.lsnNext);
      if (blocks <= leftBlocks) this.append(records, h);
      else this.put(Math.min(leftBlocks, kFrameBlocksMax), h);
    }
    assert.equal(this.cursor, offsetBytes);
  }
}

function encodedBytes(records: FrameRecord[]): number {
  return 64 + records.reduce((sum, r) => sum + 64 + Math.ceil((r.payload?.length ?? 0) / 8) * 8, 0);
}

// Compares the scan's records column by column with what the log holds.
function assertRecords(result: ScanResult, expected: ExpectedRecord[]): void {
  const r = result.records;
  assert.equal(r.count, expected.length, 'record count');
  assert.deepEqual(Array.from(r.lsn), expected.map((e) => e.lsn), 'LSNs');
  assert.deepEqual(Array.from(r.segmentSeq), expected.map((e) => e.segmentSeq), 'segments');
  assert.deepEqual(Array.from(r.offsetBytes), expected.map((e) => e.offsetBytes), 'offsets');
  assert.deepEqual(Array.from(r.kind), expected.map((e) => e.kind), 'kinds');
  assert.deepEqual(Array.from(r.payloadBytes), expected.map((e) => e.payloadBytes), 'payload sizes');
  assert.deepEqual(Array.from(r.checksum), expected.map((e) => e.checksum), 'checksums');
  const controls = Buffer.concat(expected.flatMap((e) => (e.control === null ? [] : [e.control])));
  assert.ok(result.controlPayloads.equals(controls), 'control payloads, byte for byte');
}

function roles(result: ScanResult): [number, SegmentRole][] {
  return result.segments.map((s) => [s.seq, s.role]);
}

// Probes read each segment's first frame (one block when there is none);
// walks read each walked segment once, to its end.
function expectedBytesScanned(wal: WalDir, log: Log, walked: number[], unwalkedEmpty: number): number {
  const firsts = walked.map((seq) => log.frames.find((f) => f.seq === seq && f.offsetBytes === 0)!.frame.length);
  return firsts.reduce((a, b) => a + b, 0) + unwalkedEmpty * kBlockBytes + walked.length * wal.segmentBytes;
}

// A log of segments 1..3, all of it scanned and kept: every record, no torn tail.
function assertWholeLog(result: ScanResult, wal: WalDir, log: Log): void {
  assertRecords(result, log.records);
  assert.equal(result.lsnNext, log.lsnNext);
  assert.equal(result.tornTailBytes, 0);
  assert.deepEqual(roles(result), [[1, 'chain'], [2, 'chain'], [3, 'chain']]);
  assert.equal(result.bytesScanned, expectedBytesScanned(wal, log, [1, 2, 3], 0));
}

async function assertCorrupt(promise: Promise<unknown>, seq: number, offsetBytes: number, what: RegExp): Promise<void> {
  await assert.rejects(promise, (err: unknown) => {
    assert.ok(err instanceof WalCorruptError, `expected WalCorruptError, got ${String(err)}`);
    assert.equal(err.segmentSeq, seq);
    assert.equal(err.offsetBytes, offsetBytes);
    assert.match(err.message, what);
    return true;
  });
}

function flipBit(wal: WalDir, placed: Placed, frameOffsetBytes: number): void {
  const byte = placed.frame[frameOffsetBytes]! ^ 0x04;
  wal.write(placed.seq, placed.offsetBytes + frameOffsetBytes, Buffer.from([byte]));
}

test('frames straddling every chunk boundary are read whole, in segments of 2.5 chunks', async () => {
  await withWal(20 * kMiB, async (wal) => {
    const log = new Log(wal, 1);
    // Segment 1: the largest frame with only its header before the boundary
    // (a kept tail of one block), then a frame starting exactly at 16 MiB.
    log.fillTo(kChunkBytes - kBlockBytes);
    log.put(kFrameBlocksMax);
    log.fillTo(2 * kChunkBytes);
    log.put(3);
    log.fillTo(19 * kMiB);
    // Segment 2: the largest frame with all but one block before the
    // boundary (the longest kept tail), then frames ending exactly at 16 MiB.
    log.switchTo(2);
    log.fillTo(kChunkBytes - (kFrameBlocksMax - 1) * kBlockBytes);
    log.put(kFrameBlocksMax);
    log.fillTo(2 * kChunkBytes - 2 * kBlockBytes);
    log.put(2);
    log.put(1);
    log.fillTo(20 * kMiB - 64 * 1024);
    // Segment 3: a 1 MiB frame from 64 KiB before the boundary, a frame
    // crossing 16 MiB with its header 5 blocks before, and the last block of
    // the segment holding the log's last frame.
    log.switchTo(3);
    log.fillTo(kChunkBytes - 64 * 1024);
    log.put(257);
    log.fillTo(2 * kChunkBytes - 5 * kBlockBytes);
    log.put(700);
    log.fillTo(20 * kMiB - kBlockBytes);
    const last = log.put(1);
    assert.equal(last.offsetBytes + kBlockBytes, wal.segmentBytes);
    wal.create(4); // a spare

    const result = await wal.scan(1);
    assertRecords(result, log.records);
    assert.equal(result.lsnNext, log.lsnNext);
    assert.equal(result.tornTailBytes, 0);
    assert.deepEqual(roles(result), [[1, 'chain'], [2, 'chain'], [3, 'chain'], [4, 'spare']]);
    assert.equal(result.bytesScanned, expectedBytesScanned(wal, log, [1, 2, 3], 1));

    // Scans running side by side (each with its own buffers and thread) agree.
    const again = await Promise.all([wal.scan(1), wal.scan(1), wal.scan(1)]);
    for (const other of again) assert.deepEqual(other, result);
    // From an LSN inside segment 2 the same frames are walked from there.
    const lsnFrom = log.frames.find((f) => f.seq === 2 && f.frame.length === kFrameBlocksMax * kBlockBytes)!.lsnFirst + 1;
    const late = await wal.scan(lsnFrom);
    assertRecords(late, log.records.filter((e) => e.lsn >= lsnFrom));
    assert.deepEqual(roles(late), [[1, 'free'], [2, 'chain'], [3, 'chain'], [4, 'spare']]);
  });
});

test('a segment one block longer than a chunk: frames in and across its last block', async () => {
  await withWal(kChunkBytes + kBlockBytes, async (wal) => {
    const log = new Log(wal, 1, 2);
    log.fillTo(kChunkBytes - kBlockBytes);
    log.put(2); // ends exactly at the segment end
    log.switchTo(2);
    log.fillTo(kChunkBytes);
    log.put(1); // alone in the one-block last chunk
    log.switchTo(3);
    log.fillTo(kChunkBytes); // the log ends at the boundary; the last block is zeros
    assertWholeLog(await wal.scan(1), wal, log);
  });
});

// One segment of 20 MiB: frames up to `at`, then the frame T the test tears
// (tBlocks blocks), then whatever `after` writes; a zero spare segment 2.
async function withTornLog(
  at: number,
  tBlocks: number,
  after: (log: Log, e: number) => void,
  fn: (wal: WalDir, log: Log, t: Placed) => Promise<void>,
): Promise<void> {
  await withWal(20 * kMiB, async (wal) => {
    const log = new Log(wal, 1, at);
    log.fillTo(at);
    const t = log.put(tBlocks);
    after(log, t.lsnFirst);
    wal.create(2);
    await fn(wal, log, t);
  });
}

test('a torn frame right at or across a chunk boundary ends the log there', async () => {
  const cases: { name: string; at: number; blocks: number; tearAt: number; tornWhole: boolean }[] = [
    { name: 'header at the boundary, zeroed', at: kChunkBytes, blocks: 3, tearAt: 0, tornWhole: false },
    { name: 'at the boundary, a sector of its second block zeroed', at: kChunkBytes, blocks: 3, tearAt: kBlockBytes, tornWhole: true },
    { name: 'across the boundary, a sector after it zeroed', at: kChunkBytes - kBlockBytes, blocks: 3, tearAt: kBlockBytes, tornWhole: true },
    { name: 'across 16 MiB, its last sector zeroed', at: 2 * kChunkBytes - 2 * kBlockBytes, blocks: 4, tearAt: 4 * kBlockBytes - kSectorBytes, tornWhole: true },
  ];
  for (const c of cases) {
    await withTornLog(c.at, c.blocks, () => {}, async (wal, log, t) => {
      wal.write(1, t.offsetBytes + c.tearAt, Buffer.alloc(c.tearAt === 0 ? kBlockBytes : kSectorBytes));
      const result = await wal.scan(1);
      assertRecords(result, log.records.filter((e) => e.lsn < t.lsnFirst));
      assert.equal(result.lsnNext, t.lsnFirst, c.name);
      assert.equal(result.tornTailBytes, c.tornWhole ? t.frame.length : 0, c.name);
      assert.deepEqual(roles(result), [[1, 'chain'], [2, 'spare']], c.name);
      assert.equal(result.bytesScanned, expectedBytesScanned(wal, log, [1], 1), c.name);
    });
  }
});

test('a torn frame after a chunk boundary with frames in flight into the next chunks drops them all', async () => {
  // The frames after T were submitted before T completed (hint < T's LSN): the
  // search for evidence walks over them through the next chunk boundary, once
  // between two frames and once skipping a frame that straddles it.
  for (const straddle of [false, true]) {
    await withTornLog(
      kChunkBytes,
      3,
      (log, e) => {
        log.fillTo(2 * kChunkBytes - (straddle ? 2 * kBlockBytes : 0), () => e - 1);
        if (straddle) log.put(16, e - 1);
        log.fillTo(2 * kChunkBytes + 64 * 1024, () => e - 1);
      },
      async (wal, log, t) => {
        wal.write(1, t.offsetBytes + kBlockBytes, Buffer.alloc(kSectorBytes));
        const result = await wal.scan(1);
        const label = straddle ? 'a skipped frame straddles 16 MiB' : 'frames end at 16 MiB';
        assertRecords(result, log.records.filter((e) => e.lsn < t.lsnFirst));
        assert.equal(result.lsnNext, t.lsnFirst, label);
        assert.equal(result.tornTailBytes, log.cursor - t.offsetBytes, label);
        // Skipping a frame's extent may jump over bytes past a boundary that
        // were never read (no read-ahead when io_uring is refused): at most
        // every byte once, never a byte twice or a discarded read.
        const bytesScanned = expectedBytesScanned(wal, log, [1], 1);
        if (straddle) assert.ok(result.bytesScanned <= bytesScanned && result.bytesScanned >= bytesScanned - 16 * kBlockBytes, label);
        else assert.equal(result.bytesScanned, bytesScanned, label);
      },
    );
  }
});

test('mid-log corruption just after a chunk boundary is refused with its segment and offset', async () => {
  // One bit flipped in the part of a frame after the boundary; later frames say it was durable.
  await withTornLog(kChunkBytes - 2 * kBlockBytes, 4, (log) => log.fillTo(kChunkBytes + kMiB), async (wal, _log, t) => {
    flipBit(wal, t, 2 * kBlockBytes + 100);
    await assertCorrupt(wal.scan(1), 1, t.offsetBytes, /no valid frame/);
  });
  // The header of the first frame of the third chunk.
  await withTornLog(2 * kChunkBytes, 2, (log) => log.fillTo(2 * kChunkBytes + kMiB), async (wal, _log, t) => {
    flipBit(wal, t, 40);
    await assertCorrupt(wal.scan(1), 1, 2 * kChunkBytes, /no valid frame/);
  });
  // The evidence is only found two chunks later, past frames that were in flight.
  let evidence = 0;
  await withTornLog(
    kChunkBytes - kBlockBytes,
    3,
    (log, e) => {
      log.fillTo(2 * kChunkBytes + 8 * kBlockBytes, () => e - 1);
      evidence = log.put(5).offsetBytes; // submitted once T was durable
    },
    async (wal, _log, t) => {
      flipBit(wal, t, kBlockBytes + 7);
      await assertCorrupt(wal.scan(1), 1, t.offsetBytes, new RegExp(`frame at offset ${evidence} says LSN \\d+ was durable`));
    },
  );
});

test('a long log of random frame sizes in segments of an odd size is recovered whole (seeded)', async (t) => {
  const seed = process.env.SCAN_PREFETCH_SEED !== undefined ? Number(process.env.SCAN_PREFETCH_SEED) : Date.now() % 2 ** 31;
  t.diagnostic(`seed ${seed} (SCAN_PREFETCH_SEED=${seed} replays it)`);
  const segmentBytes = 24 * kMiB + 3 * kBlockBytes;
  await withWal(segmentBytes, async (wal) => {
    const next = mulberry32(seed);
    const log = new Log(wal, 1, seed);
    for (let seq = 1; seq <= 3; seq++) {
      if (seq > 1) log.switchTo(seq);
      // Random frames, now and then a large one, until near the end.
      for (;;) {
        const blocks = next() < 0.05 ? 1 + Math.floor(next() * kFrameBlocksMax) : 0;
        const leftBlocks = (segmentBytes - log.cursor) / kBlockBytes;
        if (leftBlocks < kFrameBlocksMax + 64) break;
        if (blocks > 0) log.put(blocks);
        else log.fillTo(log.cursor + (1 + Math.floor(next() * 64)) * kBlockBytes);
      }
      log.fillTo(segmentBytes - Math.floor(next() * 16) * kBlockBytes);
    }
    assertWholeLog(await wal.scan(1), wal, log);
  });
});
