// Which round a bench reports on a shared host (bench/lib/rounds.ts): noisy
// rounds are replaced by more rounds up to a cap, the median is taken over the
// quiet ones, and of two middle rounds the worse one is reported.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';

import { NOISY_OTHER_LOAD_PCT, isNoisyRound, reportedRound, wantsAnotherRound } from '../../bench/lib/rounds';

const q = (ratio: number) => ({ ratio, noisy: false });
const n = (ratio: number) => ({ ratio, noisy: true });

test('bench rounds: a round is noisy when either window ran above the other-load limit', () => {
  assert.equal(isNoisyRound([5, 12]), false);
  assert.equal(isNoisyRound([NOISY_OTHER_LOAD_PCT, 3]), false, 'at the limit is not above it');
  assert.equal(isNoisyRound([3, NOISY_OTHER_LOAD_PCT + 0.5]), true);
  assert.equal(isNoisyRound([31, 2]), true);
  assert.equal(isNoisyRound([null, undefined]), false, 'unknown load (no /proc/stat) does not make a round noisy');
});

test('bench rounds: more rounds run until enough were quiet or the cap is reached', () => {
  assert.equal(wantsAnotherRound([], 3, 7), true);
  assert.equal(wantsAnotherRound([q(1), q(1)], 3, 7), true);
  assert.equal(wantsAnotherRound([q(1), q(1), q(1)], 3, 7), false, 'three quiet rounds are enough');
  assert.equal(wantsAnotherRound([q(1), n(1), q(1)], 3, 7), true, 'a noisy round does not count');
  assert.equal(wantsAnotherRound([q(1), n(1), q(1), q(1)], 3, 7), false);
  assert.equal(wantsAnotherRound([n(1), n(1), n(1), n(1), n(1), n(1)], 3, 7), true);
  assert.equal(wantsAnotherRound([n(1), n(1), n(1), n(1), n(1), n(1), n(1)], 3, 7), false, 'the cap ends it');
  assert.equal(wantsAnotherRound([n(1)], 1, 1), false, 'a cap equal to the rounds asked runs no extra round');
});

test('bench rounds: the median is taken over the quiet rounds only', () => {
  // Noisy rounds at both extremes would move an all-rounds median.
  const outcomes = [n(1.3), q(0.6), q(0.72), n(0.2), q(0.65), n(1.2)];
  const r = reportedRound(outcomes, true);
  assert.deepEqual(r, { index: 4, quiet: true, over: 3 });
  // Without the noise filter the median of all six (lower middle) would be 0.65 too; make it differ.
  const skewed = [n(1.3), q(0.6), q(0.62), n(1.25), q(0.64), n(1.2), n(1.1)];
  assert.equal(skewed[reportedRound(skewed, true).index]!.ratio, 0.62);
});

test('bench rounds: with no quiet round the median of all is reported and says so', () => {
  const outcomes = [n(0.9), n(0.5), n(0.7)];
  assert.deepEqual(reportedRound(outcomes, true), { index: 2, quiet: false, over: 3 });
});

test('bench rounds: of two middle rounds the worse one is reported', () => {
  // IOPS ratio: higher is better, so the lower middle.
  const iops = [q(0.8), n(2), q(0.6), q(0.9), q(0.7)];
  assert.equal(iops[reportedRound(iops, true).index]!.ratio, 0.7);
  // Latency ratio: lower is better, so the higher middle.
  const latency = [q(1.1), q(1.3), n(0.5), q(1.0), q(1.2)];
  assert.equal(latency[reportedRound(latency, false).index]!.ratio, 1.2);
  // Odd counts have one median whichever way is better.
  const odd = [q(3), q(1), q(2)];
  assert.equal(reportedRound(odd, true).index, 2);
  assert.equal(reportedRound(odd, false).index, 2);
});

test('bench rounds: reporting from no rounds is refused', () => {
  assert.throws(() => reportedRound([], true), RangeError);
});
