// The I/O buffer pool: power-of-two classes, exact-length views, reuse of
// what was given back, the idle cap, refusal of anything it did not hand out
// or already holds, and letting idle buffers go once nothing is taken.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';

import { BufferPool } from '../../lib/util/buffer_pool';

const KiB = 1024;

test('take hands out exact-length views of power-of-two buffers; outside the range it declines', () => {
  const pool = new BufferPool(64 * KiB, 1024 * KiB, 4096 * KiB);
  const a = pool.take(100 * KiB)!;
  assert.equal(a.byteLength, 100 * KiB);
  assert.equal(a.byteOffset, 0);
  assert.equal(a.buffer.byteLength, 128 * KiB, 'the 128 KiB class');
  assert.equal(pool.take(64 * KiB)!.buffer.byteLength, 64 * KiB);
  assert.equal(pool.take(1024 * KiB)!.buffer.byteLength, 1024 * KiB);
  assert.equal(pool.take(64 * KiB - 1), undefined, 'below the smallest class');
  assert.equal(pool.take(1024 * KiB + 1), undefined, 'above the largest class');
  assert.equal(pool.take(0), undefined);
  assert.equal(pool.take(Number.NaN), undefined);
});

test('a buffer given back is the next one taken from its class, once', () => {
  const pool = new BufferPool(64 * KiB, 1024 * KiB, 4096 * KiB);
  const a = pool.take(100 * KiB)!;
  a.fill(7);
  assert.equal(pool.give(a), true);
  assert.equal(pool.idleBytesHeld, 128 * KiB);
  assert.equal(pool.give(a), false, 'a buffer already idle is not kept twice');
  assert.equal(pool.idleBytesHeld, 128 * KiB);
  const b = pool.take(120 * KiB)!;
  assert.equal(b.buffer, a.buffer, 'same class: the idle buffer comes back');
  assert.equal(b.byteLength, 120 * KiB);
  assert.equal(pool.idleBytesHeld, 0);
  const c = pool.take(100 * KiB)!;
  assert.notEqual(c.buffer, a.buffer, 'nothing idle: a fresh one');
  const d = pool.take(256 * KiB)!;
  assert.equal(pool.give(d), true);
  assert.notEqual(pool.take(100 * KiB)!.buffer, d.buffer, 'another class does not serve it');
});

test('give refuses what the pool did not hand out, views not at its start, and anything over the idle cap', () => {
  const pool = new BufferPool(64 * KiB, 1024 * KiB, 256 * KiB);
  assert.equal(pool.give(Buffer.allocUnsafeSlow(128 * KiB)), false, 'not from the pool');
  assert.equal(pool.give(new Uint8Array(128 * KiB)), false);
  const a = pool.take(128 * KiB)!;
  assert.equal(pool.give(a.subarray(4096)), false, 'a view that does not start the buffer');
  const b = pool.take(128 * KiB)!;
  const c = pool.take(128 * KiB)!;
  assert.equal(pool.give(a), true);
  assert.equal(pool.give(b), true);
  assert.equal(pool.give(c), false, 'a third would pass the 256 KiB idle cap');
  assert.equal(pool.idleBytesHeld, 256 * KiB);
});

test('the classes must be powers of two', () => {
  assert.throws(() => new BufferPool(60 * KiB, 1024 * KiB, 0), RangeError);
  assert.throws(() => new BufferPool(64 * KiB, 1000 * KiB, 0), RangeError);
  assert.throws(() => new BufferPool(128 * KiB, 64 * KiB, 0), RangeError);
});

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

test('idle buffers are let go once nothing has been taken for idleMs, and kept while takes go on', async () => {
  const pool = new BufferPool(64 * KiB, 1024 * KiB, 4096 * KiB, 300);
  const a = pool.take(128 * KiB)!;
  const b = pool.take(256 * KiB)!;
  pool.give(a);
  pool.give(b);
  assert.equal(pool.idleBytesHeld, 384 * KiB);
  // In use: a take and a give every 20 ms for three idle periods.
  for (let i = 0; i < 45; i++) {
    await sleep(20);
    const c = pool.take(128 * KiB)!;
    assert.equal(c.buffer, a.buffer, 'the idle buffer is still there to take');
    pool.give(c);
  }
  assert.equal(pool.idleBytesHeld, 384 * KiB, 'nothing let go while buffers are taken');
  // Quiet: within two idle periods everything idle goes.
  await sleep(800);
  assert.equal(pool.idleBytesHeld, 0, 'all idle buffers let go');
  const d = pool.take(128 * KiB)!;
  assert.notEqual(d.buffer, a.buffer, 'a fresh buffer after the trim');
  assert.equal(pool.give(a), false, 'a buffer let go is not the pool\'s any more');
  assert.equal(pool.give(d), true);
  pool.trim();
  assert.equal(pool.idleBytesHeld, 0);
  assert.throws(() => new BufferPool(64 * KiB, 1024 * KiB, 0, 0), RangeError);
});
