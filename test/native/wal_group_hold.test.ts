// The WAL's group hold (Wal.setGroupHold, used by replicas): records of later
// turns join the held group and go out as one write; a durability request or
// a FUA record ends the hold at once; the hold runs out by itself when no
// more records come; and acknowledgements still agree with the disk model
// over seeded completion orders.
import { type TestContext, test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as path from 'node:path';

import { Ring } from '../../lib/native/ring';
import { GROUP_HOLD_US_MAX, Wal } from '../../lib/native/wal';
import { tempDir } from '../support/tmp';
import { runWalModel } from '../support/wal_model_run';

const SEGMENT_BYTES = 1 << 20;

// A fresh WAL on its own ring, closed (and its directory removed) after fn.
async function withWal(t: TestContext, options: { groupsInFlight?: number }, fn: (wal: Wal, ring: Ring) => Promise<void>): Promise<void> {
  const { dir, cleanup } = tempDir('walhold');
  t.after(cleanup);
  const ring = Ring.open({ depth: 64, arenaBytes: 32 << 20 });
  const { wal } = await Wal.open(ring, { dir: path.join(dir, 'wal'), create: true, segmentBytes: SEGMENT_BYTES, groupBytes: 64 << 10, ...options });
  try {
    await fn(wal, ring);
  } finally {
    await wal.close();
    await ring.close();
  }
}

function record(lba: number, fua = false) {
  return { kind: 'write' as const, epoch: 1, lba, lengthBlocks: 1, payload: Buffer.alloc(4096, lba & 0xff), fua };
}

const nextTurn = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

// A hang past the timeout means the flush or the FUA record waited for the hold.
test('group hold: records of five turns go as one group write, and a flush ends the hold', { timeout: 30_000 }, async (t) => {
  await withWal(t, {}, async (wal) => {
    // A minute, longer than the test may take: only the flush can end it.
    wal.setGroupHold(GROUP_HOLD_US_MAX);
    const before = wal.status().groupsSubmitted;
    const appended: Promise<number>[] = [];
    for (let i = 0; i < 5; i++) {
      appended.push(wal.append(record(i)));
      await nextTurn(); // each turn ends with a kick
    }
    assert.equal(wal.status().groupsSubmitted, before, 'held: nothing submitted after five turns');
    await wal.flush();
    assert.equal(wal.status().groupsSubmitted, before + 1, 'the five records went as one group');
    assert.deepEqual(await Promise.all(appended), [1, 2, 3, 4, 5]);
    assert.equal(wal.lsnDurable, 5);

    // A FUA record ends the hold too.
    const fua = wal.append(record(9, true));
    await nextTurn();
    assert.equal(await fua, 6);
    assert.equal(wal.status().groupsSubmitted, before + 2);
    assert.equal(wal.lsnDurable, 6);
  });
});

test('group hold: a held group is written once the hold runs out, with no further record or request', { timeout: 30_000 }, async (t) => {
  await withWal(t, {}, async (wal) => {
    wal.setGroupHold(5000);
    const before = wal.status().groupsSubmitted;
    // Resolves only when written: without the ring's timer kick it would hang.
    assert.equal(await wal.append(record(1)), 1);
    assert.equal(wal.status().groupsSubmitted, before + 1);
    assert.throws(() => wal.setGroupHold(GROUP_HOLD_US_MAX + 1), /group hold/);
    assert.throws(() => wal.setGroupHold(-1), /group hold/);
  });
});

// A group opened while the pipeline has no room for it (one group in flight
// at a time here) is held too; the kick that finds no room must still report
// the hold, or no timer comes for it and, with no later record or request,
// the group is never written (the test's timeout fails it). Completions are
// drained only between callbacks, so with both kicks run within one turn
// the first group is in flight for certain when the second record's kick runs.
test('group hold: a group held while the pipeline is full is written once the hold runs out', { timeout: 30_000 }, async (t) => {
  await withWal(t, { groupsInFlight: 1 }, async (wal, ring) => {
    for (let i = 0; i < 3; i++) {
      wal.setGroupHold(0);
      const before = wal.status().groupsSubmitted;
      const first = wal.append(record(2 * i));
      ring.submitNow(); // the group goes at once and fills the pipeline
      assert.equal(wal.status().groupsSubmitted, before + 1, 'the first group was submitted in this turn');
      wal.setGroupHold(2000);
      const second = wal.append(record(2 * i + 1));
      ring.submitNow(); // no room: the group is held, and the hold reported
      assert.equal(wal.status().groupsSubmitted, before + 1, 'the second group waits');
      assert.equal(await first, 2 * i + 1);
      assert.equal(await second, 2 * i + 2, 'the held group was written');
      assert.equal(wal.status().groupsSubmitted, before + 2);
    }
  });
});

// Groups held while the pipeline is full must still go out: a stuck one hangs
// a worker, and the timeout fails the test.
test('group hold: written/durable acknowledgements agree with the disk model (seeded shuffles)', { timeout: 120_000 }, async () => {
  for (const seed of [11, 12, 13, 14]) {
    const report = await runWalModel(seed, { operations: 400, fuaShare: 0.15, groupHoldUs: 300 });
    assert.deepEqual(report.violations, [], `seed ${seed}`);
    assert.ok(report.durableEvents > 0 && report.writtenEvents > 0, `seed ${seed}: events traced`);
  }
});
