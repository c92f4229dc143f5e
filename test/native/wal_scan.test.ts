// The recovery scan (native/wal/scan.cc, rules at its top) over WAL
// directories built from JS: frames from encodeFrame written into zero-filled
// segment files at 4 KiB-aligned offsets, as the writer lays them out. Each
// test damages the log the way a crash or a bad disk would and checks what the
// scan recovers, or that it refuses with the segment and offset.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { BlockwalError } from '../../lib/native/errors';
import {
  WalCorruptError,
  decodeRecord,
  encodeFrame,
  recordKindOf,
  scanWal,
  segmentFileName,
  splitControlPayloads,
  type FrameRecord,
  type RecordKind,
  type ScanResult,
  type SegmentRole,
} from '../../lib/native/wal_format';
import { writeAt } from '../support/tmp';

const kSegmentBytes = 1 << 20;
const kBlockBytes = 4096;
const kSectorBytes = 512;

// Deterministic bytes, never zero.
function pattern(bytes: number, seed: number): Buffer {
  const out = Buffer.alloc(bytes);
  let x = (seed * 2654435761 + 7) >>> 0;
  for (let i = 0; i < bytes; i++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    out[i] = ((x >>> 16) % 255) + 1;
  }
  return out;
}

class WalDir {
  readonly dir = fs.mkdtempSync(path.join(os.tmpdir(), 'blockwal-scan-'));

  file(seq: number): string {
    return path.join(this.dir, segmentFileName(seq));
  }
  create(seq: number, content: Buffer = Buffer.alloc(kSegmentBytes)): void {
    assert.equal(content.length, kSegmentBytes);
    fs.writeFileSync(this.file(seq), content);
  }
  write(seq: number, offsetBytes: number, bytes: Buffer): void {
    writeAt(this.file(seq), offsetBytes, bytes);
  }
  read(seq: number): Buffer {
    return fs.readFileSync(this.file(seq));
  }
  scan(lsnFrom = 1): Promise<ScanResult> {
    return scanWal({ dir: this.dir, lsnFrom, segmentBytes: kSegmentBytes, wantControlPayloads: true });
  }
  remove(): void {
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

async function withWal(fn: (wal: WalDir) => Promise<void>): Promise<void> {
  const wal = new WalDir();
  try {
    await fn(wal);
  } finally {
    wal.remove();
  }
}

interface ExpectedRecord {
  lsn: number;
  kind: RecordKind;
  epoch: number;
  lba: number;
  lengthBlocks: number;
  payload: Buffer | null;
  segmentSeq: number;
  offsetBytes: number;
}

interface WrittenFrame {
  seq: number;
  offsetBytes: number;
  lsnFirst: number;
  frame: Buffer;
  records: ExpectedRecord[];
}

function frameRecords(count: number, seed: number): FrameRecord[] {
  const out: FrameRecord[] = [];
  for (let i = 0; i < count; i++) {
    const s = seed * 31 + i;
    switch (s % 4) {
      case 0:
        out.push({ kind: 'write', epoch: 1, lba: s % 1000, lengthBlocks: 1 + (s % 3), payload: pattern((1 + (s % 3)) * kBlockBytes, s) });
        break;
      case 1:
        out.push({ kind: 'trim', epoch: 1, lba: s % 5000, lengthBlocks: 1 + (s % 100) });
        break;
      case 2:
        out.push({ kind: 'zero', epoch: 2, lba: s % 7000, lengthBlocks: 1 + (s % 9) });
        break;
      default:
        out.push({ kind: 'control', epoch: 2, lba: 0, lengthBlocks: 0, payload: pattern(1 + (s % 300), s) });
    }
  }
  return out;
}

// A record set that fills a frame exactly to a 4 KiB boundary (12 KiB), so
// every sector of the frame holds record bytes.
function packedRecords(seed: number): FrameRecord[] {
  return [
    { kind: 'write', epoch: 3, lba: 9, lengthBlocks: 2, payload: pattern(2 * kBlockBytes, seed) },
    { kind: 'control', epoch: 3, lba: 0, lengthBlocks: 0, payload: pattern(3904, seed + 1) },
  ];
}

// Lays frames out as the writer does: back to back from offset 0, a new
// segment (next seq, zero-filled) when the next frame does not fit.
class LogWriter {
  readonly frames: WrittenFrame[] = [];
  seq: number;
  cursor = 0;
  lsnNext: number;

  constructor(
    private readonly wal: WalDir,
    seq: number,
    lsnNext = 1,
    createSegment = true,
  ) {
    this.seq = seq;
    this.lsnNext = lsnNext;
    if (createSegment) wal.create(seq);
  }

  get records(): ExpectedRecord[] {
    return this.frames.flatMap((f) => f.records);
  }

  // Starts the next frame in a fresh segment (a switch, or after a recovery).
  switchTo(seq: number): void {
    this.seq = seq;
    this.cursor = 0;
    if (!fs.existsSync(this.wal.file(seq))) this.wal.create(seq);
  }

  // Builds the next frame without writing it; hint defaults to "everything
  // before this frame is durable".
  build(records: FrameRecord[], hint?: number): WrittenFrame {
    const lsnFirst = this.lsnNext;
    let frame = encodeFrame({ segmentSeq: this.seq, lsnFirst, lsnDurableHint: hint ?? lsnFirst - 1 }, records);
    if (this.cursor + frame.length > kSegmentBytes) {
      this.switchTo(this.seq + 1);
      frame = encodeFrame({ segmentSeq: this.seq, lsnFirst, lsnDurableHint: hint ?? lsnFirst - 1 }, records);
    }
    const expected: ExpectedRecord[] = [];
    let offset = 64;
    records.forEach((r, i) => {
      const d = decodeRecord(frame, offset);
      expected.push({
        lsn: lsnFirst + i,
        kind: r.kind,
        epoch: r.epoch,
        lba: r.lba,
        lengthBlocks: r.lengthBlocks,
        payload: r.payload === undefined || r.payload === null ? null : Buffer.from(r.payload),
        segmentSeq: this.seq,
        offsetBytes: this.cursor + offset,
      });
      offset += d.spanBytes;
    });
    const written = { seq: this.seq, offsetBytes: this.cursor, lsnFirst, frame, records: expected };
    this.frames.push(written);
    this.cursor += frame.length;
    this.lsnNext += records.length;
    return written;
  }

  append(records: FrameRecord[], hint?: number): WrittenFrame {
    const written = this.build(records, hint);
    this.wal.write(written.seq, written.offsetBytes, written.frame);
    return written;
  }
}

function assertRecords(result: ScanResult, expected: ExpectedRecord[], wal?: WalDir): void {
  const r = result.records;
  assert.equal(r.count, expected.length, 'record count');
  assert.deepEqual(Array.from(r.lsn), expected.map((e) => e.lsn), 'LSNs in order');
  for (let i = 0; i < expected.length; i++) {
    const e = expected[i]!;
    const got = {
      kind: recordKindOf(r.kind[i]!),
      epoch: r.epoch[i],
      lba: r.lba[i],
      lengthBlocks: r.lengthBlocks[i],
      payloadBytes: r.payloadBytes[i],
      segmentSeq: r.segmentSeq[i],
      offsetBytes: r.offsetBytes[i],
    };
    assert.deepEqual(got, {
      kind: e.kind,
      epoch: e.epoch,
      lba: e.lba,
      lengthBlocks: e.lengthBlocks,
      payloadBytes: e.payload?.length ?? 0,
      segmentSeq: e.segmentSeq,
      offsetBytes: e.offsetBytes,
    }, `record lsn ${e.lsn}`);
  }
  const controls = expected.filter((e) => e.kind === 'control').map((e) => e.payload!);
  assert.ok(result.controlPayloads.equals(Buffer.concat(controls)), 'control payloads in record order');
  assert.deepEqual(splitControlPayloads(result).map((b) => Buffer.from(b)), controls);
  if (wal !== undefined && expected.length > 0) {
    // Spot-check that (segmentSeq, offsetBytes) locates the record on disk.
    for (const i of [0, Math.floor(expected.length / 2), expected.length - 1]) {
      const d = decodeRecord(wal.read(r.segmentSeq[i]!), r.offsetBytes[i]!);
      assert.equal(d.lsn, r.lsn[i]);
      assert.equal(d.checksum, r.checksum[i]);
    }
  }
}

function roles(result: ScanResult): [number, SegmentRole][] {
  return result.segments.map((s) => [s.seq, s.role]);
}

async function assertCorrupt(promise: Promise<unknown>, seq: number, offsetBytes: number, what: RegExp): Promise<void> {
  await assert.rejects(promise, (err: unknown) => {
    assert.ok(err instanceof WalCorruptError, `expected WalCorruptError, got ${String(err)}`);
    assert.equal(err.code, 'ERR_WAL_CORRUPT');
    assert.equal(err.segmentSeq, seq);
    assert.equal(err.segmentFile, segmentFileName(seq));
    assert.equal(err.offsetBytes, offsetBytes);
    assert.ok(err.message.includes(segmentFileName(seq)), `message names the segment: ${err.message}`);
    assert.ok(err.message.includes(String(offsetBytes)), `message names the offset: ${err.message}`);
    assert.match(err.message, what);
    return true;
  });
}

// A multi-segment log: frames of 1..12 records until it spans four segments.
function writeLongLog(wal: WalDir): LogWriter {
  const log = new LogWriter(wal, 1);
  for (let i = 0; log.seq < 4 || log.cursor < kSegmentBytes / 2; i++) log.append(frameRecords(1 + (i % 12), i));
  return log;
}

test('an empty directory is an empty log that starts at lsnFrom', async () => {
  await withWal(async (wal) => {
    for (const lsnFrom of [1, 77]) {
      const result = await wal.scan(lsnFrom);
      assert.equal(result.records.count, 0);
      assert.equal(result.lsnNext, lsnFrom);
      assert.equal(result.lsnFirstRetained, 0);
      assert.equal(result.seqMax, 0);
      assert.deepEqual(result.segments, []);
      assert.equal(result.tornTailBytes, 0);
    }
  });
});

test('segments without a valid frame are free; other file names are ignored', async () => {
  await withWal(async (wal) => {
    wal.create(3);
    wal.create(4, pattern(kSegmentBytes, 4));
    fs.writeFileSync(path.join(wal.dir, 'notes.txt'), 'x');
    fs.writeFileSync(path.join(wal.dir, '0000000000000009.wal.tmp'), 'x');
    fs.writeFileSync(path.join(wal.dir, '000000000000000A.wal'), 'x');
    fs.writeFileSync(path.join(wal.dir, '00000000000000b.wal'), 'x');
    const result = await wal.scan(5);
    assert.equal(result.records.count, 0);
    assert.equal(result.lsnNext, 5);
    assert.equal(result.seqMax, 4);
    assert.deepEqual(roles(result), [[3, 'free'], [4, 'free']]);
  });
});

test('a multi-segment log is recovered whole, in LSN order', async () => {
  await withWal(async (wal) => {
    const log = writeLongLog(wal);
    wal.create(log.seq + 1); // a spare prepared ahead
    const result = await wal.scan(1);
    assertRecords(result, log.records, wal);
    assert.equal(result.lsnNext, log.lsnNext);
    assert.equal(result.lsnFirstRetained, 1);
    assert.equal(result.seqMax, 5);
    assert.equal(result.tornTailBytes, 0);
    assert.deepEqual(roles(result), [[1, 'chain'], [2, 'chain'], [3, 'chain'], [4, 'chain'], [5, 'spare']]);
    const firsts = [1, 2, 3, 4].map((seq) => log.frames.find((f) => f.seq === seq)!.lsnFirst);
    assert.deepEqual(result.segments.slice(0, 4).map((s) => s.lsnFirst), firsts);
    assert.deepEqual(result.segments.slice(0, 4).map((s) => s.lsnLast), [...firsts.slice(1).map((l) => l - 1), log.lsnNext - 1]);
    assert.ok(result.bytesScanned >= 4 * kSegmentBytes, `bytesScanned ${result.bytesScanned}`);
  });
});

test('lsnFrom in the middle returns exactly the records from lsnFrom and frees earlier segments', async () => {
  await withWal(async (wal) => {
    const log = writeLongLog(wal);
    const all = log.records;
    const first = (seq: number): number => log.frames.find((f) => f.seq === seq)!.lsnFirst;
    const last = log.lsnNext - 1;
    const cases: { lsnFrom: number; retained: number; roles: SegmentRole[] }[] = [
      { lsnFrom: 2, retained: 1, roles: ['chain', 'chain', 'chain', 'chain'] },
      { lsnFrom: first(2), retained: first(2), roles: ['free', 'chain', 'chain', 'chain'] },
      { lsnFrom: first(2) + 1, retained: first(2), roles: ['free', 'chain', 'chain', 'chain'] },
      { lsnFrom: first(4) - 1, retained: first(3), roles: ['free', 'free', 'chain', 'chain'] },
      { lsnFrom: last, retained: first(4), roles: ['free', 'free', 'free', 'chain'] },
      { lsnFrom: last + 1, retained: 0, roles: ['free', 'free', 'free', 'free'] },
      { lsnFrom: last + 100, retained: 0, roles: ['free', 'free', 'free', 'free'] },
    ];
    for (const c of cases) {
      const result = await wal.scan(c.lsnFrom);
      assertRecords(result, all.filter((e) => e.lsn >= c.lsnFrom), wal);
      assert.equal(result.lsnNext, Math.max(log.lsnNext, c.lsnFrom), `lsnNext for lsnFrom ${c.lsnFrom}`);
      assert.equal(result.lsnFirstRetained, c.retained, `lsnFirstRetained for lsnFrom ${c.lsnFrom}`);
      assert.deepEqual(result.segments.map((s) => s.role), c.roles, `roles for lsnFrom ${c.lsnFrom}`);
    }
  });
});

// Segment 5 recycled from segment 1: it still holds seq 1's frames beyond
// what its new life has written. Returns the log with frames F1..F3 and the
// packed last frame T written over the stale content.
function recycledTail(wal: WalDir): { log: LogWriter; torn: WrittenFrame; stale: Buffer } {
  const old = new LogWriter(wal, 1);
  // Small frames (< 64 KiB) so the old life never spills into a segment 2.
  while (old.cursor < kSegmentBytes - 128 * 1024) old.append(frameRecords(3, old.frames.length));
  assert.equal(old.seq, 1);
  fs.renameSync(wal.file(1), wal.file(5));
  const stale = wal.read(5);
  const log = new LogWriter(wal, 5, old.lsnNext, false);
  for (let i = 0; i < 3; i++) log.append(frameRecords(5, 100 + i));
  const torn = log.append(packedRecords(9));
  assert.equal(torn.frame.length, 3 * kBlockBytes);
  return { log, torn, stale };
}

test('a torn last frame at every 512-byte offset (zeros, garbage, stale bytes) ends the log before it', async () => {
  await withWal(async (wal) => {
    const { log, torn, stale } = recycledTail(wal);
    const lsnBase = log.frames[0]!.lsnFirst; // the old life's LSNs were checkpointed
    const intact = wal.read(5);
    const kept = log.records.filter((e) => e.lsn < torn.lsnFirst);
    const end = torn.offsetBytes + torn.frame.length;
    const garbage = pattern(torn.frame.length, 99);
    for (let at = torn.offsetBytes; at < end; at += kSectorBytes) {
      const variants: [string, Buffer][] = [
        ['zeros', Buffer.alloc(end - at)],
        ['garbage', garbage.subarray(at - torn.offsetBytes)],
        ['stale', stale.subarray(at, end)],
      ];
      for (const [name, bytes] of variants) {
        const damaged = Buffer.from(intact);
        bytes.copy(damaged, at);
        wal.create(5, damaged);
        const result = await wal.scan(lsnBase);
        const label = `${name} from offset ${at - torn.offsetBytes} of the frame`;
        assertRecords(result, kept);
        assert.equal(result.lsnNext, torn.lsnFirst, label);
        // The header survives in the frame's first sector: its length is known.
        assert.equal(result.tornTailBytes, at === torn.offsetBytes ? 0 : torn.frame.length, label);
        assert.deepEqual(roles(result), [[5, 'chain']], label);
      }
    }
    wal.create(5, intact);
    const whole = await wal.scan(lsnBase);
    assertRecords(whole, log.records);
    assert.equal(whole.lsnNext, log.lsnNext);
  });
});

test('two frames in flight: the earlier torn, the later intact with hint < E: both are dropped', async () => {
  await withWal(async (wal) => {
    const log = new LogWriter(wal, 2);
    for (let i = 0; i < 4; i++) log.append(frameRecords(6, i));
    const e = log.lsnNext;
    const a = log.build(packedRecords(1), e - 1);
    const b = log.append(frameRecords(3, 50), e - 1); // submitted while A was in flight
    for (const [name, at] of [['body', a.offsetBytes + kBlockBytes], ['header', a.offsetBytes]] as const) {
      const damaged = Buffer.from(a.frame);
      pattern(kSectorBytes, 3).copy(damaged, at - a.offsetBytes);
      wal.write(2, a.offsetBytes, damaged);
      const result = await wal.scan(1);
      assertRecords(result, log.records.filter((r) => r.lsn < e));
      assert.equal(result.lsnNext, e, name);
      assert.equal(result.tornTailBytes, b.offsetBytes + b.frame.length - a.offsetBytes, name);
    }
  });
});

test('a bad frame followed by a valid frame whose hint covers it is corruption, named by segment and offset', async () => {
  await withWal(async (wal) => {
    const log = new LogWriter(wal, 2);
    for (let i = 0; i < 4; i++) log.append(frameRecords(6, i));
    const e = log.lsnNext;
    const a = log.build(packedRecords(1), e - 1);
    log.append(frameRecords(3, 50), e); // A was durable when this one was submitted
    const damaged = Buffer.from(a.frame);
    damaged[kBlockBytes + 17] ^= 0x10;
    wal.write(2, a.offsetBytes, damaged);
    await assertCorrupt(wal.scan(1), 2, a.offsetBytes, /durable/);
    // The same log read from a later lsnFrom fails the same way.
    await assertCorrupt(wal.scan(e), 2, a.offsetBytes, /durable/);
  });
});

test('one flipped bit in the middle of a long log is corruption, not a torn tail', async () => {
  await withWal(async (wal) => {
    const log = writeLongLog(wal);
    const victim = log.frames.find((f) => f.seq === 2 && f.offsetBytes > 0)!;
    const byteOffset = victim.offsetBytes + victim.frame.length - 100;
    const block = wal.read(2).subarray(byteOffset, byteOffset + 1);
    wal.write(2, byteOffset, Buffer.from([block[0]! ^ 0x01]));
    await assertCorrupt(wal.scan(1), 2, victim.offsetBytes, /no valid frame/);
  });
});

test('a torn last frame of a segment with the next segment proving it durable is corruption', async () => {
  await withWal(async (wal) => {
    const log = new LogWriter(wal, 6);
    for (let i = 0; i < 3; i++) log.append(frameRecords(4, i));
    const e = log.lsnNext;
    const a = log.append(packedRecords(2));
    log.switchTo(7);
    log.append(frameRecords(2, 9), e); // hint says A was durable
    wal.write(6, a.offsetBytes + kSectorBytes, Buffer.alloc(kSectorBytes));
    await assertCorrupt(wal.scan(1), 6, a.offsetBytes, /0000000000000007\.wal/);
  });
});

test('frames of a segment earlier life (another seq) are ignored, even with continuing LSNs or high hints', async () => {
  await withWal(async (wal) => {
    const log = new LogWriter(wal, 8);
    for (let i = 0; i < 3; i++) log.append(frameRecords(4, i));
    const e = log.lsnNext;
    const at = log.cursor;
    const continuing = encodeFrame({ segmentSeq: 3, lsnFirst: e, lsnDurableHint: e - 1 }, frameRecords(2, 1));
    wal.write(8, at, continuing);
    const highHint = encodeFrame({ segmentSeq: 4, lsnFirst: e + 50, lsnDurableHint: e + 40 }, frameRecords(2, 2));
    wal.write(8, at + continuing.length, highHint);
    const result = await wal.scan(1);
    assertRecords(result, log.records, wal);
    assert.equal(result.lsnNext, e);
    assert.equal(result.tornTailBytes, 0);
  });
});

test('a valid frame of this segment with an unexpected LSN is not part of the log', async () => {
  await withWal(async (wal) => {
    const log = new LogWriter(wal, 5);
    for (let i = 0; i < 3; i++) log.append(frameRecords(4, i));
    const e = log.lsnNext;
    const kept = log.records;
    for (const [lsnFirst, hint] of [[e + 5, e - 1], [e - 3, e - 4]]) {
      const frame = encodeFrame({ segmentSeq: 5, lsnFirst: lsnFirst!, lsnDurableHint: hint! }, frameRecords(2, 8));
      wal.write(5, log.cursor, Buffer.concat([frame, Buffer.alloc(kBlockBytes)]));
      const result = await wal.scan(1);
      assertRecords(result, kept, wal);
      assert.equal(result.lsnNext, e, `frame at LSN ${lsnFirst}`);
      assert.equal(result.tornTailBytes, frame.length, `frame at LSN ${lsnFirst}`);
    }
    // The same misplaced frame claiming LSN e was durable is corruption.
    const claims = encodeFrame({ segmentSeq: 5, lsnFirst: e + 5, lsnDurableHint: e + 1 }, frameRecords(2, 8));
    wal.write(5, log.cursor, claims);
    await assertCorrupt(wal.scan(1), 5, log.cursor, /starts at LSN/);
  });
});

test('a torn tail then a fresh segment after recovery, past a stale segment, continues the log', async () => {
  await withWal(async (wal) => {
    const log = new LogWriter(wal, 1);
    for (let i = 0; i < 3; i++) log.append(frameRecords(5, i));
    const e = log.lsnNext;
    const torn = log.build(packedRecords(4));
    const damaged = Buffer.from(torn.frame);
    damaged.fill(0, kBlockBytes);
    wal.write(1, torn.offsetBytes, damaged);
    // Segment 2: recycled, holding an earlier life's frames; segment 3: the
    // fresh segment the writer started after recovering to e.
    const old = new LogWriter(wal, 7, 1);
    old.append(frameRecords(3, 40));
    fs.renameSync(wal.file(7), wal.file(2));
    const after = new LogWriter(wal, 3, e);
    for (let i = 0; i < 3; i++) after.append(frameRecords(4, 60 + i));
    wal.create(4);
    const kept = [...log.records.filter((r) => r.lsn < e), ...after.records];
    const result = await wal.scan(1);
    assertRecords(result, kept, wal);
    assert.equal(result.lsnNext, after.lsnNext);
    assert.equal(result.tornTailBytes, torn.frame.length);
    assert.deepEqual(roles(result), [[1, 'chain'], [2, 'free'], [3, 'chain'], [4, 'spare']]);
    assert.deepEqual(
      result.segments.map((s) => [s.lsnFirst, s.lsnLast]),
      [[1, e - 1], [0, 0], [e, after.lsnNext - 1], [0, 0]],
    );
  });
});

test('a segment switched away from with room left continues in the next segment', async () => {
  await withWal(async (wal) => {
    const log = new LogWriter(wal, 1);
    for (let i = 0; i < 3; i++) log.append(frameRecords(5, i));
    log.switchTo(2);
    for (let i = 0; i < 3; i++) log.append(frameRecords(5, 10 + i));
    const result = await wal.scan(1);
    assertRecords(result, log.records, wal);
    assert.equal(result.lsnNext, log.lsnNext);
    assert.equal(result.tornTailBytes, 0);
    assert.deepEqual(roles(result), [[1, 'chain'], [2, 'chain']]);
  });
});

test('in flight across a segment switch: a torn frame and a next segment with hint < E end the log', async () => {
  await withWal(async (wal) => {
    const log = new LogWriter(wal, 1);
    for (let i = 0; i < 3; i++) log.append(frameRecords(5, i));
    const e = log.lsnNext;
    const a = log.append(packedRecords(1));
    log.switchTo(2);
    log.append(frameRecords(2, 5), e - 1);
    wal.write(1, a.offsetBytes + 2 * kBlockBytes, Buffer.alloc(kBlockBytes));
    const result = await wal.scan(1);
    assertRecords(result, log.records.filter((r) => r.lsn < e));
    assert.equal(result.lsnNext, e);
    assert.deepEqual(roles(result), [[1, 'chain'], [2, 'spare']]);

    // After that recovery the writer starts a fresh segment 3 at e; the next
    // scan skips segment 2 (stale) and follows 1 -> 3.
    const after = new LogWriter(wal, 3, e);
    for (let i = 0; i < 3; i++) after.append(frameRecords(3, 7 + i));
    const again = await wal.scan(1);
    assertRecords(again, [...log.records.filter((r) => r.lsn < e), ...after.records], wal);
    assert.deepEqual(roles(again), [[1, 'chain'], [2, 'free'], [3, 'chain']]);

    // Once the checkpoint passes segment 2's stale first LSN and segment 1 is
    // recycled (renamed to a new seq), the chain must start at segment 3, the
    // last by seq whose first LSN is <= lsnFrom, not at stale segment 2.
    fs.renameSync(wal.file(1), wal.file(10));
    const lsnFrom = e + 4;
    assert.ok(log.frames.find((f) => f.seq === 2)!.lsnFirst <= lsnFrom);
    const late = await wal.scan(lsnFrom);
    assertRecords(late, after.records.filter((r) => r.lsn >= lsnFrom), wal);
    assert.equal(late.lsnNext, after.lsnNext);
    assert.equal(late.lsnFirstRetained, e);
    assert.deepEqual(roles(late), [[2, 'free'], [3, 'chain'], [10, 'spare']]);
  });
});

test('user data that looks like a frame header inside a torn frame is not taken as evidence', async () => {
  await withWal(async (wal) => {
    const log = new LogWriter(wal, 4);
    log.append(frameRecords(3, 1));
    const e = log.lsnNext;
    // A one-record frame at P: its payload starts at P + 128, so the 4 KiB
    // boundary P + 4096 falls at payload offset 3968. Put there the header of
    // a frame valid for this segment that claims LSN e + 50 was durable.
    const fake = encodeFrame({ segmentSeq: 4, lsnFirst: e + 100, lsnDurableHint: e + 50 }, frameRecords(1, 3));
    const payload = pattern(3 * kBlockBytes, 5);
    fake.copy(payload, kBlockBytes - 128, 0, 64);
    const a = log.append([{ kind: 'write', epoch: 1, lba: 0, lengthBlocks: 3, payload }]);
    wal.write(4, a.offsetBytes + 2 * kBlockBytes, Buffer.alloc(kSectorBytes)); // tear the payload after the fake
    const result = await wal.scan(1);
    assertRecords(result, log.records.filter((r) => r.lsn < e));
    assert.equal(result.lsnNext, e);
    assert.equal(result.tornTailBytes, a.frame.length);
  });
});

test('a WAL gap below the first segment is an error naming the segment', async () => {
  await withWal(async (wal) => {
    const log = new LogWriter(wal, 3, 50);
    log.append(frameRecords(4, 1));
    await assertCorrupt(wal.scan(10), 3, 0, /gap/);
    const from50 = await wal.scan(50);
    assertRecords(from50, log.records, wal);
  });
});

test('a later segment that skips LSNs the hint says were durable is corruption', async () => {
  await withWal(async (wal) => {
    const log = new LogWriter(wal, 1);
    log.append(frameRecords(4, 1));
    const e = log.lsnNext;
    const end = log.cursor;
    const later = new LogWriter(wal, 2, e + 10);
    later.append(frameRecords(2, 2), e + 5);
    await assertCorrupt(wal.scan(1), 1, end, /0000000000000002\.wal/);
  });
});

test('a segment file of the wrong size, or not a file, is an error', async () => {
  await withWal(async (wal) => {
    const log = new LogWriter(wal, 1);
    log.append(frameRecords(2, 1));
    fs.writeFileSync(wal.file(2), Buffer.alloc(kSegmentBytes / 2));
    await assertCorrupt(wal.scan(1), 2, 0, /bytes/);
    fs.rmSync(wal.file(2));
    fs.mkdirSync(wal.file(2));
    await assertCorrupt(wal.scan(1), 2, 0, /not a file/);
  });
});

test('I/O errors reject with ERR_IO and the errno; bad options are TypeError/RangeError', async () => {
  const missing = path.join(os.tmpdir(), `blockwal-scan-missing-${process.pid}`);
  await assert.rejects(
    scanWal({ dir: missing, lsnFrom: 1, segmentBytes: kSegmentBytes }),
    (err: unknown) => err instanceof BlockwalError && err.code === 'ERR_IO' && err.errnoName === 'ENOENT',
  );
  await assert.rejects(scanWal({ dir: missing, lsnFrom: 0, segmentBytes: kSegmentBytes }), RangeError);
  await assert.rejects(scanWal({ dir: missing, lsnFrom: 1, segmentBytes: kSegmentBytes + 512 }), RangeError);
  await assert.rejects(scanWal({ dir: missing, lsnFrom: 1, segmentBytes: 4096 }), RangeError);
  await assert.rejects(scanWal({ dir: '', lsnFrom: 1, segmentBytes: kSegmentBytes }), TypeError);
});
