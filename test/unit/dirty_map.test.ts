// The dirty map (lib/engine/dirty_map.ts) against a per-block model: random
// write, trim and zero records in LSN order, checkpoints (collect then
// dropUpTo at a random LSN, as the flusher does), and after each step every
// block's lookup, has(), blocksIn() and collect() agree with the model.
// Record slots are reused as records stop being referenced, so long runs
// also check that a reused slot never shows an older record's place.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';

import fc from 'fast-check';

import { DirtyMap } from '../../lib/engine/dirty_map';

const BLOCKS = 96;

type ModelBlock = { kind: 'write'; lsn: number; seq: number; offset: number; span: number; index: number } | { kind: 'trim' | 'zero'; lsn: number };

type Step =
  | { op: 'write'; lba: number; length: number }
  | { op: 'trim' | 'zero'; lba: number; length: number }
  | { op: 'checkpoint'; back: number };

const stepArb: fc.Arbitrary<Step> = fc.oneof(
  { weight: 6, arbitrary: fc.record({ op: fc.constant('write' as const), lba: fc.integer({ min: 0, max: BLOCKS - 1 }), length: fc.integer({ min: 1, max: 12 }) }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constantFrom('trim' as const, 'zero' as const), lba: fc.integer({ min: 0, max: BLOCKS - 1 }), length: fc.integer({ min: 1, max: 40 }) }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('checkpoint' as const), back: fc.integer({ min: 0, max: 5 }) }) },
);

function check(map: DirtyMap, model: (ModelBlock | undefined)[]): void {
  let dirty = 0;
  for (let lba = 0; lba < BLOCKS; lba++) {
    const want = model[lba];
    const got = map.lookup(lba);
    assert.equal(map.has(lba), want !== undefined, `has(${lba})`);
    if (want === undefined) {
      assert.equal(got, undefined, `block ${lba} is clean`);
      continue;
    }
    if (want.kind === 'write') {
      dirty++;
      assert.equal(got?.kind, 'write', `block ${lba} comes from a write record`);
      if (got?.kind !== 'write') return;
      assert.deepEqual(
        { ...got.entry },
        { lsn: want.lsn, segmentSeq: want.seq, recordOffsetBytes: want.offset, recordSpanBytes: want.span, indexInRecord: want.index },
        `block ${lba}`,
      );
    } else {
      assert.equal(got?.kind, 'zero', `block ${lba} is in a zero range`);
      if (got?.kind !== 'zero') return;
      assert.equal(got.range.lsn, want.lsn);
      assert.equal(got.range.kind, want.kind);
    }
  }
  assert.equal(map.dirtyBlocks, dirty);
  const writes = model.flatMap((b, lba) => (b?.kind === 'write' ? [lba] : []));
  assert.deepEqual(map.blocksIn(0, BLOCKS), writes);
  assert.deepEqual(map.blocksIn(10, 50), writes.filter((lba) => lba >= 10 && lba < 50));
}

test('dirty map: matches a per-block model through writes, zero ranges and checkpoints', () => {
  fc.assert(
    fc.property(fc.array(stepArb, { minLength: 1, maxLength: 400 }), (steps) => {
      const map = new DirtyMap();
      const model: (ModelBlock | undefined)[] = new Array(BLOCKS).fill(undefined);
      let lsn = 0;
      for (const s of steps) {
        if (s.op === 'checkpoint') {
          const to = Math.max(0, lsn - s.back);
          const { blocks } = map.collect(to);
          const want = model.flatMap((b, lba) => (b?.kind === 'write' && b.lsn <= to ? [lba] : []));
          assert.deepEqual([...blocks.lba], want, 'collect() takes the writes up to the checkpoint, in LBA order');
          assert.equal(blocks.count, want.length);
          for (let i = 0; i < blocks.count; i++) {
            const m = model[blocks.lba[i]!] as Extract<ModelBlock, { kind: 'write' }>;
            const r = blocks.rec[i]!;
            assert.deepEqual(
              { lsn: blocks.recLsn[r], seq: blocks.recSegmentSeq[r], offset: blocks.recOffsetBytes[r], span: blocks.recSpanBytes[r], index: blocks.index[i] },
              { lsn: m.lsn, seq: m.seq, offset: m.offset, span: m.span, index: m.index },
              `block ${blocks.lba[i]}: its record and its index in it`,
            );
          }
          assert.equal(new Set(blocks.recLsn).size, blocks.records, 'each record once');
          map.dropUpTo(to);
          for (let lba = 0; lba < BLOCKS; lba++) if (model[lba] !== undefined && model[lba]!.lsn <= to) model[lba] = undefined;
        } else {
          lsn++;
          const length = Math.min(s.length, BLOCKS - s.lba);
          if (s.op === 'write') {
            // Distinct places per record, so a mix-up between records shows.
            const seq = 1 + (lsn % 3);
            const offset = lsn * 8192;
            const span = 64 + length * 4096;
            map.setWrite(s.lba, length, lsn, seq, offset, span);
            for (let i = 0; i < length; i++) model[s.lba + i] = { kind: 'write', lsn, seq, offset, span, index: i };
          } else {
            map.setZero(s.lba, length, lsn, s.op);
            for (let i = 0; i < length; i++) model[s.lba + i] = { kind: s.op, lsn };
          }
        }
        check(map, model);
      }
    }),
    { numRuns: 150 },
  );
});

test('dirty map: record slots are reused once no block points to them, and grow past their first capacity', () => {
  const map = new DirtyMap();
  // 5,000 one-block records over 3,000 blocks: some records lose all their
  // blocks to later ones (their slots come back), many stay live at once.
  for (let lsn = 1; lsn <= 5000; lsn++) map.setWrite((lsn * 7) % 3000, 1, lsn, 1, lsn * 4096, 4160);
  for (let lba = 0; lba < 3000; lba++) {
    const got = map.lookup(lba);
    assert.equal(got?.kind, 'write');
    if (got?.kind !== 'write') return;
    // The newest LSN that wrote this block.
    let want = 0;
    for (let lsn = 1; lsn <= 5000; lsn++) if ((lsn * 7) % 3000 === lba) want = lsn;
    assert.equal(got.entry.lsn, want);
    assert.equal(got.entry.recordOffsetBytes, want * 4096);
  }
  map.dropUpTo(5000);
  assert.equal(map.dirtyBlocks, 0);
  // Every slot is free again: new records reuse them and read back right.
  map.setWrite(10, 4, 6000, 2, 123 * 4096, 4 * 4096 + 64);
  const got = map.lookup(12);
  assert.ok(got?.kind === 'write' && got.entry.lsn === 6000 && got.entry.indexInRecord === 2 && got.entry.segmentSeq === 2);
});
