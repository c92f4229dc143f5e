// The flusher's plan (pure, checkpoint_plan.ts): every dirty block is written
// exactly once, from the block of the record the dirty map names, at its own
// LBA; extents follow WAL order and respect the read limits; runs are maximal
// and bounded; none of it depends on how the snapshot numbers its records.
// Seeded by fast-check; the seed is printed on failure.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import fc from 'fast-check';

import { type CheckpointBlocks, type Plan, planCheckpoint, planRuns } from '../../lib/engine/checkpoint_plan';

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

// The dirty map's view (DirtyMap.collect): each block's newest record, in
// LBA order; records numbered in the order given by `shuffle` (the plan must
// not depend on it).
function newestBlocks(recs: Rec[], shuffle = 0): CheckpointBlocks {
  const newest = new Map<number, { rec: Rec; index: number }>();
  for (const r of recs) for (let i = 0; i < r.lengthBlocks; i++) newest.set(r.lba + i, { rec: r, index: i });
  const lbas = [...newest.keys()].sort((a, b) => a - b);
  const used = [...new Set(lbas.map((l) => newest.get(l)!.rec))];
  // A deterministic permutation of the records.
  const order = used.map((r, i) => ({ r, key: (i * 7919 + shuffle * 104729) % (used.length * 13 + 1) })).sort((a, b) => a.key - b.key || a.r.lsn - b.r.lsn).map((x) => x.r);
  const number = new Map(order.map((r, i) => [r, i]));
  return {
    count: lbas.length,
    lba: Float64Array.from(lbas),
    rec: Uint32Array.from(lbas.map((l) => number.get(newest.get(l)!.rec)!)),
    index: Uint32Array.from(lbas.map((l) => newest.get(l)!.index)),
    records: order.length,
    recLsn: Float64Array.from(order.map((r) => r.lsn)),
    recSegmentSeq: Float64Array.from(order.map((r) => r.segmentSeq)),
    recOffsetBytes: Float64Array.from(order.map((r) => r.offsetBytes)),
    recSpanBytes: Float64Array.from(order.map((r) => r.spanBytes)),
  };
}

// A record of the plan as the tests look at it, with its pieces.
interface PlannedRecord {
  lsn: number;
  segmentSeq: number;
  offsetBytes: number;
  spanBytes: number;
  pieces: { piece: number; lba: number; lengthBlocks: number; indexInRecord: number }[];
}

function recordsOf(plan: Plan, first: number, end: number): PlannedRecord[] {
  const out: PlannedRecord[] = [];
  for (let p = first; p < end; p++) {
    const r = plan.recOrder[p]!;
    const pieces = [];
    for (let j = plan.pieceStart[p]!; j < plan.pieceStart[p + 1]!; j++) {
      const k = plan.piecesOf[j]!;
      pieces.push({ piece: k, lba: plan.pieceLba[k]!, lengthBlocks: plan.pieceLength[k]!, indexInRecord: plan.pieceIndex[k]! });
    }
    const b = plan.blocks;
    out.push({ lsn: b.recLsn[r]!, segmentSeq: b.recSegmentSeq[r]!, offsetBytes: b.recOffsetBytes[r]!, spanBytes: b.recSpanBytes[r]!, pieces });
  }
  return out;
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

function checkPlan(blocks: CheckpointBlocks, plan: Plan, limits: { readBytesMax: number; gapBytesMax: number; runBlocksMax: number }): void {
  const written = new Map<number, { lsn: number; index: number }>();
  let lastLsn = 0;
  let nextFirst = 0;
  for (const ext of plan.extents) {
    assert.equal(ext.first, nextFirst, 'extents take the records in turn');
    nextFirst = ext.end;
    assert.equal(ext.startBytes % BLOCK, 0);
    assert.equal(ext.endBytes % BLOCK, 0);
    const records = recordsOf(plan, ext.first, ext.end);
    const readBytes = ext.endBytes - ext.startBytes;
    assert.ok(readBytes <= limits.readBytesMax || records.length === 1, `extent of ${readBytes} bytes with ${records.length} records`);
    let blocksInExtent = 0;
    let prevEnd = -1;
    for (const rec of records) {
      assert.ok(rec.lsn > lastLsn, 'records in LSN (WAL) order');
      lastLsn = rec.lsn;
      assert.equal(rec.segmentSeq, ext.segmentSeq);
      assert.ok(rec.offsetBytes >= ext.startBytes && rec.offsetBytes + rec.spanBytes <= ext.endBytes, 'record inside its extent');
      if (prevEnd >= 0) assert.ok(rec.offsetBytes - prevEnd <= limits.gapBytesMax, 'gap within the limit');
      prevEnd = rec.offsetBytes + rec.spanBytes;
      assert.ok(rec.pieces.length >= 1, 'a record in the plan gives a piece');
      for (const [i, p] of rec.pieces.entries()) {
        blocksInExtent += p.lengthBlocks;
        if (i > 0) assert.ok(p.lba > rec.pieces[i - 1]!.lba, "a record's pieces in LBA order");
      }
    }
    assert.equal(ext.blocks, blocksInExtent);

    const runs = planRuns(plan, ext, limits.runBlocksMax);
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
    for (const rec of records) {
      for (const p of rec.pieces) {
        const dst = plan.pieceDstBytes[p.piece]!;
        for (let k = 0; k < p.lengthBlocks; k++) {
          const lba = areaLba.get(dst / BLOCK + k);
          assert.equal(lba, p.lba + k, 'a piece lands where its run writes its LBA');
          assert.ok(!written.has(p.lba + k), `block ${p.lba + k} written twice`);
          written.set(p.lba + k, { lsn: rec.lsn, index: p.indexInRecord + k });
        }
      }
    }
  }
  assert.equal(nextFirst, blocks.records, 'every record of the snapshot is in an extent');
  assert.equal(written.size, blocks.count, 'every dirty block is written');
  for (let i = 0; i < blocks.count; i++) {
    const want = { lsn: blocks.recLsn[blocks.rec[i]!]!, index: blocks.index[i]! };
    assert.deepEqual(written.get(blocks.lba[i]!), want, `block ${blocks.lba[i]} from its newest record`);
  }
}

test('the plan writes every dirty block once, from its newest record, within the limits', () => {
  fc.assert(
    fc.property(arbWrites, arbLimits, fc.nat(1000), (writes, limits, shuffle) => {
      const blocks = newestBlocks(layOut(writes, limits.segmentBytes), shuffle);
      checkPlan(blocks, planCheckpoint(blocks, limits), limits);
    }),
    { numRuns: 400 },
  );
});

test('records whose LSNs lie far apart are still planned in LSN order', () => {
  fc.assert(
    fc.property(arbWrites, arbLimits, fc.integer({ min: 2, max: 100000 }), (writes, limits, stride) => {
      const recs = layOut(writes, limits.segmentBytes).map((r) => ({ ...r, lsn: r.lsn * stride + 7 }));
      const blocks = newestBlocks(recs, stride);
      checkPlan(blocks, planCheckpoint(blocks, limits), limits);
    }),
    { numRuns: 100 },
  );
});

test('sequential 1 MiB records become few large reads and writes', () => {
  const recs = layOut(Array.from({ length: 64 }, (_, i) => ({ lba: i * 256, lengthBlocks: 256, newFrame: true })), 64 << 20);
  const plan = planCheckpoint(newestBlocks(recs), { readBytesMax: 4 << 20, gapBytesMax: 64 << 10 });
  // 1 MiB + 4 KiB per frame: three records per 4 MiB read.
  assert.equal(plan.extents.length, Math.ceil(64 / 3));
  for (const ext of plan.extents) {
    const runs = planRuns(plan, ext, 1024);
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
  const plan = planCheckpoint(newestBlocks(recs), { readBytesMax: 1 << 20, gapBytesMax: 0 });
  const records = plan.extents.flatMap((e) => recordsOf(plan, e.first, e.end));
  assert.deepEqual(records.map((r) => r.lsn), [3, 4, 5]);
  const rec4 = records.find((r) => r.lsn === 4)!;
  assert.deepEqual(rec4.pieces.map((p) => [p.lba, p.lengthBlocks, p.indexInRecord]), [[100, 1, 0], [103, 1, 3]]);
});
