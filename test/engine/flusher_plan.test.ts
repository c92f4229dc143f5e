// The flusher's plan (pure): every dirty block is written exactly once, from
// the block of the record the dirty map names, at its own LBA; extents follow
// WAL order and respect the read limits; runs are maximal and bounded.
// Seeded by fast-check; the seed is printed on failure.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import fc from 'fast-check';

import type { BlockEntry } from '../../lib/engine/dirty_map';
import { type Extent, planExtents, planRuns } from '../../lib/engine/flusher';

const BLOCK = 4096;
const FRAME_HEADER = 64;
const RECORD_HEADER = 64;

interface Rec {
  lsn: number;
  segmentSeq: number;
  offsetBytes: number;
  spanBytes: number;
  lba: number;
  lengthBlocks: number;
}

// A WAL as the writer lays it out: records in LSN order, one per frame or
// several, frames 4 KiB aligned, segments of segmentBytes.
function layOut(writes: { lba: number; lengthBlocks: number; newFrame: boolean }[], segmentBytes: number): Rec[] {
  const out: Rec[] = [];
  let seq = 1;
  let at = 0; // next free byte in the segment
  for (const [i, w] of writes.entries()) {
    const span = Math.ceil((RECORD_HEADER + w.lengthBlocks * BLOCK) / 8) * 8;
    let offset = at;
    if (w.newFrame || i === 0) offset = Math.ceil(at / BLOCK) * BLOCK + FRAME_HEADER;
    if (offset + span > segmentBytes) {
      seq++;
      offset = FRAME_HEADER;
    }
    out.push({ lsn: i + 1, segmentSeq: seq, offsetBytes: offset, spanBytes: span, lba: w.lba, lengthBlocks: w.lengthBlocks });
    at = offset + span;
  }
  return out;
}

// The dirty map's view: each block's newest record, sorted by LBA.
function newestBlocks(recs: Rec[]): [number, BlockEntry][] {
  const map = new Map<number, BlockEntry>();
  for (const r of recs) {
    for (let i = 0; i < r.lengthBlocks; i++) {
      map.set(r.lba + i, { lsn: r.lsn, segmentSeq: r.segmentSeq, recordOffsetBytes: r.offsetBytes, recordSpanBytes: r.spanBytes, indexInRecord: i });
    }
  }
  return [...map.entries()].sort((a, b) => a[0] - b[0]);
}

const arbWrites = fc.array(
  fc.record({
    lba: fc.integer({ min: 0, max: 2000 }),
    lengthBlocks: fc.oneof(fc.constant(1), fc.integer({ min: 1, max: 256 })),
    newFrame: fc.boolean(),
  }),
  { minLength: 1, maxLength: 120 },
);
const arbLimits = fc.record({
  readBytesMax: fc.integer({ min: 1, max: 2048 }).map((k) => k * BLOCK),
  gapBytesMax: fc.integer({ min: 0, max: 64 }).map((k) => k * 1024),
  runBlocksMax: fc.integer({ min: 1, max: 1024 }),
  segmentBytes: fc.constantFrom(1 << 20, 4 << 20, 64 << 20),
});

function checkPlan(blocks: [number, BlockEntry][], extents: Extent[], limits: { readBytesMax: number; gapBytesMax: number; runBlocksMax: number }): void {
  const written = new Map<number, { lsn: number; index: number }>();
  let lastLsn = 0;
  for (const ext of extents) {
    assert.equal(ext.startBytes % BLOCK, 0);
    assert.equal(ext.endBytes % BLOCK, 0);
    const readBytes = ext.endBytes - ext.startBytes;
    assert.ok(readBytes <= limits.readBytesMax || ext.records.length === 1, `extent of ${readBytes} bytes with ${ext.records.length} records`);
    let blocksInExtent = 0;
    let prevEnd = -1;
    for (const rec of ext.records) {
      assert.ok(rec.lsn > lastLsn, 'records in LSN (WAL) order');
      lastLsn = rec.lsn;
      assert.equal(rec.segmentSeq, ext.segmentSeq);
      assert.ok(rec.offsetBytes >= ext.startBytes && rec.offsetBytes + rec.spanBytes <= ext.endBytes, 'record inside its extent');
      if (prevEnd >= 0) assert.ok(rec.offsetBytes - prevEnd <= limits.gapBytesMax, 'gap within the limit');
      prevEnd = rec.offsetBytes + rec.spanBytes;
      for (const p of rec.pieces) blocksInExtent += p.lengthBlocks;
    }
    assert.equal(ext.blocks, blocksInExtent);

    const runs = planRuns(ext, limits.runBlocksMax);
    // The write area, as the runs will write it: dst block -> LBA.
    const areaLba = new Map<number, number>();
    let runBlocks = 0;
    for (const [i, run] of runs.entries()) {
      assert.ok(run.lengthBlocks >= 1 && run.lengthBlocks <= limits.runBlocksMax, 'run length bounded');
      for (let k = 0; k < run.lengthBlocks; k++) areaLba.set(run.dstBytes / BLOCK + k, run.lba + k);
      runBlocks += run.lengthBlocks;
      const prev = runs[i - 1];
      if (prev !== undefined && prev.lba + prev.lengthBlocks === run.lba) {
        assert.equal(prev.lengthBlocks, limits.runBlocksMax, 'adjacent runs are split only at the maximum');
      }
    }
    assert.equal(runBlocks, ext.blocks, 'runs cover the write area exactly');
    assert.equal(areaLba.size, ext.blocks);
    for (const rec of ext.records) {
      for (const p of rec.pieces) {
        for (let k = 0; k < p.lengthBlocks; k++) {
          const lba = areaLba.get(p.dstBytes / BLOCK + k);
          assert.equal(lba, p.lba + k, 'a piece lands where its run writes its LBA');
          assert.ok(!written.has(p.lba + k), `block ${p.lba + k} written twice`);
          written.set(p.lba + k, { lsn: rec.lsn, index: p.indexInRecord + k });
        }
      }
    }
  }
  assert.equal(written.size, blocks.length, 'every dirty block is written');
  for (const [lba, entry] of blocks) {
    assert.deepEqual(written.get(lba), { lsn: entry.lsn, index: entry.indexInRecord }, `block ${lba} from its newest record`);
  }
}

test('the plan writes every dirty block once, from its newest record, within the limits', () => {
  fc.assert(
    fc.property(arbWrites, arbLimits, (writes, limits) => {
      const blocks = newestBlocks(layOut(writes, limits.segmentBytes));
      const extents = planExtents(blocks, limits);
      checkPlan(blocks, extents, limits);
    }),
    { numRuns: 400 },
  );
});

test('sequential 1 MiB records become few large reads and writes', () => {
  const recs = layOut(Array.from({ length: 64 }, (_, i) => ({ lba: i * 256, lengthBlocks: 256, newFrame: true })), 64 << 20);
  const blocks = newestBlocks(recs);
  const extents = planExtents(blocks, { readBytesMax: 4 << 20, gapBytesMax: 64 << 10 });
  // 1 MiB + 4 KiB per frame: three records per 4 MiB read.
  assert.equal(extents.length, Math.ceil(64 / 3));
  for (const ext of extents) {
    const runs = planRuns(ext, 1024);
    assert.equal(runs.length, 1, 'one write per extent');
    assert.equal(runs[0]!.lengthBlocks, ext.blocks);
  }
});

test('an overwritten record is not read; a partly overwritten one gives only its newest blocks', () => {
  const recs = layOut(
    [
      { lba: 0, lengthBlocks: 8, newFrame: true }, // LSN 1: blocks 2-5 replaced by LSN 2, 0-7 by 3
      { lba: 2, lengthBlocks: 4, newFrame: true }, // LSN 2: replaced by LSN 3
      { lba: 0, lengthBlocks: 8, newFrame: false }, // LSN 3
      { lba: 100, lengthBlocks: 4, newFrame: true }, // LSN 4
      { lba: 101, lengthBlocks: 2, newFrame: false }, // LSN 5
    ],
    1 << 20,
  );
  const extents = planExtents(newestBlocks(recs), { readBytesMax: 1 << 20, gapBytesMax: 0 });
  const lsns = extents.flatMap((e) => e.records.map((r) => r.lsn));
  assert.deepEqual(lsns, [3, 4, 5]);
  const rec4 = extents.flatMap((e) => e.records).find((r) => r.lsn === 4)!;
  assert.deepEqual(rec4.pieces.map((p) => [p.lba, p.lengthBlocks, p.indexInRecord]), [[100, 1, 0], [103, 1, 3]]);
});
