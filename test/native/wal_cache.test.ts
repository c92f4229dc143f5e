// The WAL cache (WalOptions.cacheBytes): sealed frames stay in memory after
// their group slot is reused, so readSpan and readRecord of recent records are
// served without a disk read. Every byte it serves must equal the segment
// file's, through evictions and wrap-arounds of its ring, and what it no
// longer holds must come from the disk.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';

import { Ring } from '../../lib/native/ring';
import { type AppendedRecord, Wal } from '../../lib/native/wal';
import { segmentFileName } from '../../lib/native/wal_format';
import { mulberry32 } from '../../lib/util/prng';
import { hugePageAdvisedBytes, hugePagesMissing } from '../support/huge_pages';
import { tempDir } from '../support/tmp';

const BLOCK = 4096;
const SEGMENT_BYTES = 4 << 20;
const GROUP_BYTES = 64 << 10;
// Larger than one group slot (a slot holds the largest frame, about 1 MiB),
// small enough that the appends below wrap it several times.
const CACHE_BYTES = 3 << 20;

interface Fixture {
  ring: Ring;
  wal: Wal;
  walDir: string;
  close: () => Promise<void>;
}

async function open(cacheBytes: number): Promise<Fixture> {
  const { dir, cleanup } = tempDir('walcache');
  const walDir = path.join(dir, 'wal');
  const ring = Ring.open({ depth: 128, arenaBytes: 48 << 20 });
  const { wal } = await Wal.open(ring, { dir: walDir, create: true, segmentBytes: SEGMENT_BYTES, groupBytes: GROUP_BYTES, cacheBytes });
  return {
    ring,
    wal,
    walDir,
    close: async () => {
      await wal.close();
      await ring.close();
      cleanup();
    },
  };
}

// Appends count write records of 1–12 blocks (seeded); a few at a time, some
// FUA, so groups of many sizes are sealed. Returns them in LSN order.
async function appendMany(wal: Wal, count: number, seed: number): Promise<AppendedRecord[]> {
  const rand = mulberry32(seed);
  const out: AppendedRecord[] = [];
  for (let n = 0; n < count; ) {
    const batch = 1 + Math.floor(rand() * 6);
    const pending: Promise<AppendedRecord>[] = [];
    for (let k = 0; k < batch && n < count; k++, n++) {
      const blocks = 1 + Math.floor(rand() * 12);
      const payload = Buffer.alloc(blocks * BLOCK);
      for (let i = 0; i < payload.length; i += 4) payload.writeUInt32LE((Math.imul(n + 1, 2654435761) + i) >>> 0, i);
      pending.push(wal.appendLocated({ kind: 'write', epoch: 1, lba: n, lengthBlocks: blocks, payload, fua: rand() < 0.3 }));
    }
    out.push(...(await Promise.all(pending)));
  }
  await wal.flush();
  return out;
}

function fileBytes(walDir: string, seq: number, start: number, length: number): Buffer {
  const fd = fs.openSync(path.join(walDir, segmentFileName(seq)), 'r');
  try {
    const buf = Buffer.alloc(length);
    assert.equal(fs.readSync(fd, buf, 0, length, start), length);
    return buf;
  } finally {
    fs.closeSync(fd);
  }
}

// The aligned span holding records[from..to] (one segment).
function spanOf(records: AppendedRecord[]): { seq: number; start: number; length: number } {
  const start = Math.floor(records[0]!.offsetBytes / BLOCK) * BLOCK;
  const last = records[records.length - 1]!;
  const end = Math.ceil((last.offsetBytes + last.spanBytes) / BLOCK) * BLOCK;
  return { seq: records[0]!.segmentSeq, start, length: end - start };
}

async function readSpanBytes(f: Fixture, seq: number, start: number, length: number): Promise<Buffer> {
  const slice = f.ring.alloc(length);
  try {
    await f.wal.readSpan(seq, start, length, slice);
    return Buffer.from(slice.bytes);
  } finally {
    f.ring.free(slice);
  }
}

// Runs of 1–8 consecutive records of one segment, from the newest backwards,
// until about bytesBack bytes of records lie behind the newest.
function runsFromNewest(records: AppendedRecord[], bytesBack: number, rand: () => number): AppendedRecord[][] {
  const runs: AppendedRecord[][] = [];
  let walked = 0;
  for (let i = records.length - 1; i >= 0 && walked < bytesBack; ) {
    const len = Math.min(i + 1, 1 + Math.floor(rand() * 8));
    const taken = records.slice(i - len + 1, i + 1);
    runs.push(taken.filter((r) => r.segmentSeq === taken[taken.length - 1]!.segmentSeq));
    walked += taken.reduce((n, r) => n + r.spanBytes, 0);
    i -= len;
  }
  return runs;
}

test('readSpan of recent records is served from the cache, byte-equal to the segment file, through many wrap-arounds', async () => {
  const f = await open(CACHE_BYTES);
  try {
    const records = await appendMany(f.wal, 3000, 11); // about 20 MiB: the 3 MiB cache wraps about 7 times
    const rand = mulberry32(5);
    let fromMemory = 0;
    let fromDisk = 0;
    for (const run of runsFromNewest(records, 14 << 20, rand)) {
      const { seq, start, length } = spanOf(run);
      const before = f.wal.status();
      const got = await readSpanBytes(f, seq, start, length);
      const after = f.wal.status();
      assert.deepEqual(got, fileBytes(f.walDir, seq, start, length), `segment ${seq} [${start}, +${length})`);
      const memory = after.readMemoryBytes - before.readMemoryBytes;
      const disk = after.readDiskBytes - before.readDiskBytes;
      assert.ok((memory === length && disk === 0) || (memory === 0 && disk === length), `one source per span: memory ${memory} disk ${disk}`);
      if (memory > 0) fromMemory++;
      else fromDisk++;
    }
    // The newest ~2 MiB (cache less the frame being evicted) never needs the
    // disk; spans from 14 MiB back must.
    const recent = runsFromNewest(records, 2 << 20, mulberry32(9));
    for (const run of recent) {
      const { seq, start, length } = spanOf(run);
      const disk = f.wal.status().readDiskBytes;
      await readSpanBytes(f, seq, start, length);
      assert.equal(f.wal.status().readDiskBytes, disk, `recent span segment ${seq} [${start}, +${length}) went to the disk`);
    }
    const old = spanOf(records.slice(0, 5));
    const disk = f.wal.status().readDiskBytes;
    await readSpanBytes(f, old.seq, old.start, old.length);
    assert.equal(f.wal.status().readDiskBytes - disk, old.length, 'the oldest records are no longer cached');
    assert.ok(fromMemory > 20 && fromDisk > 20, `spans from memory ${fromMemory}, from disk ${fromDisk}`);
  } finally {
    await f.close();
  }
});

test('readRecord of a record whose group slot was reused comes from the cache, verified', async () => {
  const f = await open(CACHE_BYTES);
  try {
    const records = await appendMany(f.wal, 600, 3);
    // Far enough back that its slot (16 slots of 64 KiB groups) was reused,
    // recent enough to be cached: about 1.5–2 MiB behind the newest.
    let behind = 0;
    let target: AppendedRecord | undefined;
    for (let i = records.length - 1; i >= 0 && target === undefined; i--) {
      behind += records[i]!.spanBytes;
      if (behind > 1.5 * 16 * GROUP_BYTES) target = records[i];
    }
    assert.ok(target !== undefined && behind < 2 << 20, 'a record behind the slots');
    const disk = f.wal.status().readDiskBytes;
    const got = await f.wal.readRecord(target.segmentSeq, target.offsetBytes, target.spanBytes);
    assert.equal(f.wal.status().readDiskBytes, disk, 'served from memory');
    assert.deepEqual(got, fileBytes(f.walDir, target.segmentSeq, target.offsetBytes, target.spanBytes));
  } finally {
    await f.close();
  }
});

test('without a cache, records behind the group slots are read from the disk', async () => {
  const f = await open(0);
  try {
    const records = await appendMany(f.wal, 600, 3);
    const run = records.slice(0, 4).filter((r) => r.segmentSeq === records[0]!.segmentSeq);
    const { seq, start, length } = spanOf(run);
    const before = f.wal.status();
    assert.deepEqual(await readSpanBytes(f, seq, start, length), fileBytes(f.walDir, seq, start, length));
    assert.equal(f.wal.status().readDiskBytes - before.readDiskBytes, length);
    assert.equal(f.wal.status().readMemoryBytes, before.readMemoryBytes);
  } finally {
    await f.close();
  }
});

// Each sealed frame is copied to the next bytes of the ring: on 4 KiB pages
// nearly every copy lands on a page the TLB has not seen.
test('the cache is advised for huge pages, and unmapped when the WAL closes', async (t) => {
  const missing = hugePagesMissing();
  if (missing !== undefined) return t.skip(`skipped: missing ${missing}`);
  const { dir, cleanup } = tempDir('walcache');
  const ring = Ring.open({ depth: 128, arenaBytes: 48 << 20 });
  try {
    const before = hugePageAdvisedBytes();
    const { wal } = await Wal.open(ring, { dir: path.join(dir, 'wal'), create: true, segmentBytes: SEGMENT_BYTES, groupBytes: GROUP_BYTES, cacheBytes: 16 << 20 });
    const open = hugePageAdvisedBytes() - before;
    await wal.close();
    assert.ok(open >= 16 << 20, `a 16 MiB cache added ${open} advised bytes`);
    assert.equal(hugePageAdvisedBytes(), before, 'closing the WAL unmaps its cache');
  } finally {
    await ring.close();
    cleanup();
  }
});

test('cacheBytes out of range is a RangeError', async () => {
  const { dir, cleanup } = tempDir('walcache');
  const ring = Ring.open({ depth: 32, arenaBytes: 32 << 20 });
  try {
    for (const cacheBytes of [-1, Number.NaN, 2 ** 40]) {
      await assert.rejects(Wal.open(ring, { dir: path.join(dir, 'wal'), create: true, segmentBytes: SEGMENT_BYTES, cacheBytes }), RangeError);
    }
  } finally {
    await ring.close();
    cleanup();
  }
});
