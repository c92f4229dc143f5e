// The epoch history (lib/statemachine/epoch_history.ts): barriers noted in
// order, capped, cut at an LSN; and the divergence rule over modelled
// histories: a node at any point of the primary's own history is never
// called divergent, and a node that applied anything past a fork from it
// always is.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';

import fc from 'fast-check';

import {
  checkEpochStarts,
  divergenceFrom,
  EPOCH_STARTS_MAX,
  type EpochStart,
  epochOpenedBy,
  noteBarrier,
  startsUpTo,
} from '../../lib/statemachine/epoch_history';

test('noteBarrier appends a newer epoch, ignores the same or an older one, and keeps the newest EPOCH_STARTS_MAX', () => {
  let h: readonly EpochStart[] = [];
  h = noteBarrier(h, 2, 10);
  h = noteBarrier(h, 2, 15); // a primary restarted in its epoch writes another barrier
  h = noteBarrier(h, 1, 20);
  h = noteBarrier(h, 5, 30);
  assert.deepEqual(h, [{ epoch: 2, lsn: 10 }, { epoch: 5, lsn: 30 }]);
  assert.equal(epochOpenedBy(h), 5);
  assert.equal(epochOpenedBy([]), 0);
  for (let e = 6; e < 6 + EPOCH_STARTS_MAX; e++) h = noteBarrier(h, e, e * 100);
  assert.equal(h.length, EPOCH_STARTS_MAX);
  assert.equal(h[0]!.epoch, 6, 'the two oldest starts went');
  assert.equal(checkEpochStarts(h), undefined);
});

test('startsUpTo cuts the history at an LSN, barrier included', () => {
  const h = [{ epoch: 2, lsn: 10 }, { epoch: 3, lsn: 20 }];
  assert.deepEqual(startsUpTo(h, 9), []);
  assert.deepEqual(startsUpTo(h, 10), [{ epoch: 2, lsn: 10 }]);
  assert.deepEqual(startsUpTo(h, 19), [{ epoch: 2, lsn: 10 }]);
  assert.equal(startsUpTo(h, 20), h);
});

test('divergenceFrom: the fork LSN, an unknown epoch, and an epoch older than a capped history', () => {
  const h = [{ epoch: 2, lsn: 10 }, { epoch: 4, lsn: 20 }];
  assert.equal(divergenceFrom(h, 0, 9), undefined);
  assert.match(divergenceFrom(h, 0, 10)!, /epoch 0 up to LSN 10, but here epoch 2 opened at LSN 10/);
  assert.equal(divergenceFrom(h, 2, 19), undefined);
  assert.match(divergenceFrom(h, 2, 20)!, /epoch 2 up to LSN 20, but here epoch 4 opened at LSN 20/);
  assert.equal(divergenceFrom(h, 4, 1_000), undefined);
  assert.match(divergenceFrom(h, 3, 15)!, /epoch 3, an epoch this history never opened/);
  assert.match(divergenceFrom(h, 5, 25)!, /epoch 5, an epoch this history never opened/);
  const capped = Array.from({ length: EPOCH_STARTS_MAX }, (_, i) => ({ epoch: 10 + i, lsn: 100 + i }));
  assert.match(divergenceFrom(capped, 3, 50)!, /epoch 3, older than the oldest epoch this history still knows \(10\)/);
});

test('checkEpochStarts refuses what is not strictly increasing positive integers', () => {
  assert.match(checkEpochStarts([{ epoch: 2, lsn: 10 }, { epoch: 2, lsn: 11 }])!, /does not follow/);
  assert.match(checkEpochStarts([{ epoch: 2, lsn: 10 }, { epoch: 3, lsn: 10 }])!, /does not follow/);
  assert.match(checkEpochStarts([{ epoch: 0, lsn: 10 }])!, /not two positive integers/);
  assert.match(checkEpochStarts([{ epoch: 1, lsn: 1.5 }])!, /not two positive integers/);
  assert.match(checkEpochStarts(Array.from({ length: EPOCH_STARTS_MAX + 1 }, (_, i) => ({ epoch: i + 1, lsn: i + 1 })))!, /more than 128/);
});

// ---- modelled histories ----

// A history as the epoch of the record at each LSN (index 0 = LSN 1) and
// where barriers are; one primary writes each epoch, so two histories hold
// the same record at an LSN exactly when they hold it in the same epoch
// there and the same barrier-or-not (writes of one epoch are one primary's
// sequence).
interface History {
  epochAt: number[];
  barrierAt: boolean[];
}

function startsOf(h: History): EpochStart[] {
  let starts: readonly EpochStart[] = [];
  h.epochAt.forEach((e, i) => {
    if (h.barrierAt[i]) starts = noteBarrier(starts, e, i + 1);
  });
  return [...starts];
}

// Segments: [epoch gap, records after the barrier]; the first segment may
// lack a barrier (the first epoch writes none).
function grow(h: History, segments: [number, number][], epochFrom: number, firstHasBarrier: boolean): History {
  const out = { epochAt: [...h.epochAt], barrierAt: [...h.barrierAt] };
  let epoch = epochFrom;
  segments.forEach(([gap, length], k) => {
    epoch += gap;
    const barrier = k > 0 || firstHasBarrier;
    for (let i = 0; i < length + (barrier ? 1 : 0); i++) {
      out.epochAt.push(epoch);
      out.barrierAt.push(barrier && i === 0);
    }
  });
  return out;
}

const segmentsArb = fc.array(fc.tuple(fc.integer({ min: 1, max: 3 }), fc.integer({ min: 0, max: 6 })), { minLength: 1, maxLength: 6 });

test('a node at any point of the primary history shares it; a node past a fork from it is divergent', () => {
  fc.assert(
    fc.property(segmentsArb, segmentsArb, segmentsArb, fc.boolean(), fc.nat(), fc.nat(), (common, ours, theirs, theirsOpensEpoch, pickOurs, pickTheirs) => {
      const base = grow({ epochAt: [], barrierAt: [] }, common, 0, false);
      const lastEpoch = base.epochAt.at(-1) ?? 0;
      // Our history goes on with a new epoch (a barrier at the fork LSN);
      // theirs with records of the epoch still open, or with an epoch of its
      // own that we never open (odd epochs ours, even theirs, above the base).
      const oddAbove = lastEpoch + (lastEpoch % 2 === 0 ? 1 : 2);
      const primary = grow(base, ours.map(([g, l]) => [2 * g, l]), oddAbove - 2, true);
      const node = theirsOpensEpoch
        ? grow(base, theirs.map(([g, l]) => [2 * g, l]), oddAbove - 1, true)
        : grow(base, [[0, 1 + (theirs[0]![1] % 5)]], lastEpoch, false);
      const starts = startsOf(primary);
      // Any point of our own history: never divergent.
      const a = pickOurs % (primary.epochAt.length + 1);
      assert.equal(divergenceFrom(starts, epochOpenedBy(startsOf({ epochAt: primary.epochAt.slice(0, a), barrierAt: primary.barrierAt.slice(0, a) })), a), undefined);
      // Any point of theirs past the fork (LSN base + 1 on): divergent.
      const fork = base.epochAt.length + 1;
      const b = fork + (pickTheirs % (node.epochAt.length - fork + 1));
      const theirStarts = startsOf({ epochAt: node.epochAt.slice(0, b), barrierAt: node.barrierAt.slice(0, b) });
      assert.notEqual(divergenceFrom(starts, epochOpenedBy(theirStarts), b), undefined, `node at LSN ${b} (fork ${fork}) of ${JSON.stringify(node)} against ${JSON.stringify(starts)}`);
      // Up to the fork's LSN - 1, theirs is ours too.
      const c = pickTheirs % fork;
      const shared = startsOf({ epochAt: node.epochAt.slice(0, c), barrierAt: node.barrierAt.slice(0, c) });
      assert.equal(divergenceFrom(starts, epochOpenedBy(shared), c), undefined);
    }),
    { numRuns: 2_000 },
  );
});
