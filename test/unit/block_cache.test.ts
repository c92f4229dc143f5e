// The block cache against a model of base.img: random stores (checkpoint
// writes: cached blocks take the new content), drops (punches), reads that
// hit or fill, and fills from reads that raced a change. After every step each cached block must equal the model's
// base.img, and the cache may hold no more than its capacity.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';

import fc from 'fast-check';

import { BlockCache } from '../../lib/engine/block_cache';

const BLOCK = 4096;
const BLOCKS = 64;

function blocks(seed: number, count: number): Buffer {
  const b = Buffer.alloc(count * BLOCK);
  for (let i = 0; i < count; i++) b.fill((seed + i * 7) & 0xff, i * BLOCK, (i + 1) * BLOCK);
  return b;
}

type Step =
  | { t: 'store' | 'drop' | 'read' | 'staleRead'; first: number; count: number; seed: number };

const stepArb: fc.Arbitrary<Step> = fc
  .record({
    t: fc.constantFrom('store' as const, 'drop' as const, 'read' as const, 'staleRead' as const),
    first: fc.integer({ min: 0, max: BLOCKS - 1 }),
    count: fc.integer({ min: 1, max: 8 }),
    seed: fc.integer({ min: 1, max: 250 }),
  })
  .map((s) => ({ ...s, count: Math.min(s.count, BLOCKS - s.first) }));

test('the block cache always holds what base.img holds (model)', () => {
  fc.assert(
    fc.property(fc.integer({ min: 1, max: 24 }), fc.array(stepArb, { minLength: 1, maxLength: 80 }), (capacity, steps) => {
      const cache = new BlockCache(capacity * BLOCK);
      const base = Buffer.alloc(BLOCKS * BLOCK); // the model's base.img
      for (const s of steps) {
        switch (s.t) {
          case 'store': {
            const data = blocks(s.seed, s.count);
            data.copy(base, s.first * BLOCK);
            cache.store(s.first, s.count, data, 0);
            break;
          }
          case 'drop':
            base.fill(0, s.first * BLOCK, (s.first + s.count) * BLOCK);
            cache.drop(s.first, s.count);
            break;
          case 'read': {
            // A read: from the cache when it holds every block, else from
            // base.img (the model), filling the cache.
            const want = base.subarray(s.first * BLOCK, (s.first + s.count) * BLOCK);
            const out = Buffer.alloc(s.count * BLOCK);
            const held = cache.holds(s.first, s.count);
            assert.equal(cache.copyOutIfHeld(s.first, 0, s.count * BLOCK, out, 0), held);
            if (held) {
              assert.ok(out.equals(want), `cached read ${s.first}+${s.count}`);
            } else {
              cache.fillFromRead(cache.generation, s.first, s.count, Buffer.from(want), 0);
            }
            break;
          }
          case 'staleRead': {
            // A read that took the generation, read base.img, and completed
            // after a store changed it: what it read is stale.
            const generation = cache.generation;
            const old = Buffer.from(base.subarray(s.first * BLOCK, (s.first + s.count) * BLOCK));
            if (s.seed % 2 === 0) {
              // A checkpoint wrote them, then they left the cache (as if
              // pushed out), so the stale ones would fit again.
              const data = blocks(s.seed, s.count);
              data.copy(base, s.first * BLOCK);
              cache.store(s.first, s.count, data, 0);
              cache.drop(s.first, s.count);
            } else {
              // A punch.
              base.fill(0, s.first * BLOCK, (s.first + s.count) * BLOCK);
              cache.drop(s.first, s.count);
            }
            cache.fillFromRead(generation, s.first, s.count, old, 0);
            break;
          }
        }
        assert.ok(cache.usedBlocks <= capacity, `holds ${cache.usedBlocks} blocks, capacity ${capacity}`);
        for (let b = 0; b < BLOCKS; b++) {
          const out = Buffer.alloc(BLOCK);
          if (!cache.copyOutIfHeld(b, 0, BLOCK, out, 0)) continue;
          assert.ok(out.equals(base.subarray(b * BLOCK, (b + 1) * BLOCK)), `block ${b} after ${s.t} ${s.first}+${s.count}`);
        }
      }
    }),
    { numRuns: 300 },
  );
});

test('the block cache copies partial blocks at any byte offset', () => {
  const cache = new BlockCache(8 * BLOCK);
  const data = Buffer.alloc(3 * BLOCK);
  for (let i = 0; i < data.length; i++) data[i] = (i * 31) & 0xff;
  cache.fillFromRead(cache.generation, 10, 3, data, 0);
  // The same blocks filled one by one in reverse order: not in consecutive slots.
  for (let i = 2; i >= 0; i--) cache.fillFromRead(cache.generation, 20 + i, 1, data, i * BLOCK);
  for (const first of [10, 20]) {
    for (const [from, length] of [[0, 1], [4095, 2], [100, 3 * BLOCK - 100], [5000, 7000], [0, 3 * BLOCK]] as const) {
      const out = Buffer.alloc(length + 5);
      assert.ok(cache.copyOutIfHeld(first, from, length, out, 5));
      assert.ok(out.subarray(5).equals(data.subarray(from, from + length)), `blocks from ${first}: ${from}+${length}`);
    }
  }
});

test('a block read from the cache outlives blocks only filled (CLOCK second chance)', () => {
  const cache = new BlockCache(4 * BLOCK);
  for (let b = 0; b < 4; b++) cache.fillFromRead(cache.generation, b, 1, blocks(b + 1, 1), 0);
  assert.ok(cache.copyOutIfHeld(2, 0, BLOCK, Buffer.alloc(BLOCK), 0)); // block 2 is read: referenced
  cache.fillFromRead(cache.generation, 10, 3, blocks(50, 3), 0); // three new blocks push three out
  assert.equal(cache.usedBlocks, 4);
  assert.ok(cache.holds(2, 1), 'the referenced block stays');
  assert.ok(cache.holds(10, 3));
  for (const b of [0, 1, 3]) assert.ok(!cache.holds(b, 1), `block ${b} was evicted`);
  assert.equal(cache.hits, 1);
});

test('transfers of more than 32 blocks go around the cache: no fill, a store drops what it covers', () => {
  const cache = new BlockCache(256 * BLOCK);
  cache.fillFromRead(cache.generation, 0, 33, blocks(1, 33), 0);
  assert.equal(cache.usedBlocks, 0, 'a large read fills nothing');
  cache.fillFromRead(cache.generation, 0, 32, blocks(1, 32), 0);
  assert.equal(cache.usedBlocks, 32);
  assert.ok(cache.holds(0, 32));
  cache.fillFromRead(cache.generation, 100, 1, blocks(9, 1), 0);
  assert.ok(!cache.holds(0, 33), 'a large read is not served from the cache');
  cache.store(16, 64, blocks(5, 64), 0);
  assert.equal(cache.usedBlocks, 17, 'the large store dropped blocks 16-31 and stored none');
  assert.ok(cache.holds(0, 16));
  assert.ok(!cache.holds(16, 1));
});

test('a store refreshes the blocks the cache holds and brings none in', () => {
  const cache = new BlockCache(16 * BLOCK);
  cache.fillFromRead(cache.generation, 0, 2, blocks(1, 2), 0);
  cache.store(1, 3, blocks(40, 3), 0);
  assert.equal(cache.usedBlocks, 2);
  const out = Buffer.alloc(2 * BLOCK);
  assert.ok(cache.copyOutIfHeld(0, 0, 2 * BLOCK, out, 0));
  assert.ok(!cache.copyOutIfHeld(1, 0, 2 * BLOCK, out, 0), 'block 2 is not cached');
  assert.ok(out.equals(Buffer.concat([blocks(1, 1), blocks(40, 1)])));
});

test('a cache of size 0 holds nothing; a negative size is refused', () => {
  const cache = new BlockCache(0);
  cache.store(0, 2, blocks(1, 2), 0);
  cache.fillFromRead(cache.generation, 5, 1, blocks(2, 1), 0);
  assert.equal(cache.usedBlocks, 0);
  assert.ok(!cache.holds(0, 1));
  assert.throws(() => new BlockCache(-1), /block cache size/);
});
