// RangeLocks: who waits for whom. Plain operations on one block need no lock
// (call order is LSN order) unless an earlier one is itself waiting: then it
// gets its LSN later, and a plain write called after it must not overtake it.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';

import { RangeLocks } from '../../lib/engine/range_locks';

test('plain operations pass each other; a read-modify-write waits and is waited for', () => {
  const locks = new RangeLocks();
  const a = locks.acquire(0, 4, false);
  assert.equal(a.wait, undefined);
  assert.equal(locks.conflicts(2, 3, false), false, 'two plain writes: call order is enough');
  assert.equal(locks.conflicts(2, 3, true), true, 'a sub-block write waits for the plain write before it');
  const rmw = locks.acquire(5, 6, true);
  assert.equal(rmw.wait, undefined);
  assert.equal(locks.conflicts(5, 6, false), true, 'a plain write waits for the sub-block write before it');
  assert.equal(locks.conflicts(6, 8, false), false, 'no overlap, no wait');
  a.release();
  rmw.release();
  assert.equal(locks.size, 0);
});

test('an operation that waits is waited for by later overlapping ones, plain or not', async () => {
  const locks = new RangeLocks();
  const rmw = locks.acquire(1, 2, true); // a sub-block write to block 1
  const trim = locks.acquire(0, 2, false); // a whole-block trim of 0-1: waits behind it
  assert.notEqual(trim.wait, undefined);
  assert.equal(locks.conflicts(0, 1, false), true, 'a whole-block write to block 0 waits for the trim');
  const write = locks.acquire(0, 1, false);
  assert.notEqual(write.wait, undefined);
  const order: string[] = [];
  const t = trim.wait!.then(() => {
    order.push('trim');
    trim.release();
  });
  const w = write.wait!.then(() => {
    order.push('write');
    write.release();
  });
  rmw.release();
  await Promise.all([t, w]);
  assert.deepEqual(order, ['trim', 'write']);
  assert.equal(locks.conflicts(0, 2, false), false);
});
