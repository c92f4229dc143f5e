// Ring.allocWait: an allocation that waits for arena space instead of failing.
// Waiters are served first come, first served on every free (whoever frees),
// a request larger than the whole JS region fails at once, and close rejects
// whoever still waits.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';

import { type ArenaSlice, Ring } from '../../lib/native/ring';

const BLOCK = 4096;

test('allocWait resolves at once when there is room, else in order as slices are freed', async () => {
  const ring = Ring.open({ depth: 32, arenaBytes: 16 * BLOCK });
  try {
    assert.equal(ring.jsRegionBytes, 16 * BLOCK);
    const a = await ring.allocWait(10 * BLOCK);
    const b = ring.alloc(6 * BLOCK);
    assert.throws(() => ring.alloc(BLOCK), { code: 'ERR_ARENA' });
    const order: string[] = [];
    const big = ring.allocWait(8 * BLOCK).then((s) => (order.push('big'), s));
    const small = ring.allocWait(BLOCK).then((s) => (order.push('small'), s));
    await new Promise((resolve) => setImmediate(resolve));
    assert.deepEqual(order, [], 'both wait');
    ring.free(b); // 6 blocks free: not enough for the first waiter, and the second waits behind it
    await new Promise((resolve) => setImmediate(resolve));
    assert.deepEqual(order, [], 'first come, first served');
    ring.free(a);
    const got: ArenaSlice[] = await Promise.all([big, small]);
    assert.deepEqual(order, ['big', 'small']);
    assert.deepEqual(got.map((s) => s.lengthBytes), [8 * BLOCK, BLOCK]);
    for (const s of got) ring.free(s);
  } finally {
    await ring.close();
  }
});

test('allocWait fails at once beyond the JS region, and close rejects the waiters', async () => {
  const ring = Ring.open({ depth: 32, arenaBytes: 8 * BLOCK });
  const held = ring.alloc(8 * BLOCK);
  await assert.rejects(ring.allocWait(9 * BLOCK), { code: 'ERR_ARENA' });
  const waiting = ring.allocWait(BLOCK);
  await ring.close();
  await assert.rejects(waiting, { code: 'ERR_RING_CLOSED' });
  await assert.rejects(ring.allocWait(BLOCK), { code: 'ERR_RING_CLOSED' });
  assert.equal(held.lengthBytes, 8 * BLOCK);
});
