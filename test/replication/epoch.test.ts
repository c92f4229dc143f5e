// The fencing rule: every (role, frame epoch vs local epoch) pair and its
// outcome, the edges of the epoch range, and refused inputs.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';

import fc from 'fast-check';

import { checkEpoch, EPOCH_MAX, ROLES, type EpochDecision, type Role } from '../../lib/replication/epoch';

const LOCAL = 5;

// Written out by hand from DESIGN.md §4, not derived from the module's table.
const CASES: [Role, number, EpochDecision][] = [
  ['primary', LOCAL - 1, { outcome: 'refuse', reason: 'stale_epoch', message: 'stale epoch: frame epoch 4 < local epoch 5' }],
  ['primary', LOCAL, { outcome: 'accept' }],
  ['primary', LOCAL + 1, { outcome: 'step_down', epochSeen: 6 }],
  ['replica', LOCAL - 1, { outcome: 'refuse', reason: 'stale_epoch', message: 'stale epoch: frame epoch 4 < local epoch 5' }],
  ['replica', LOCAL, { outcome: 'accept' }],
  ['replica', LOCAL + 1, { outcome: 'adopt', epochNew: 6 }],
];

test('every role and epoch order gives its outcome', () => {
  for (const [role, frameEpoch, expected] of CASES) {
    assert.deepEqual(checkEpoch(LOCAL, frameEpoch, role), expected, `${role}, frame epoch ${frameEpoch}`);
  }
  const outcomes = new Set(CASES.map(([, , d]) => d.outcome));
  assert.deepEqual(outcomes, new Set(['accept', 'refuse', 'step_down', 'adopt']), 'every outcome is covered');
  assert.deepEqual(new Set(CASES.map(([role]) => role)), new Set(ROLES), 'every role is covered');
});

test('the epoch range edges: 0 and EPOCH_MAX', () => {
  assert.deepEqual(checkEpoch(0, 0, 'replica'), { outcome: 'accept' });
  assert.deepEqual(checkEpoch(0, EPOCH_MAX, 'replica'), { outcome: 'adopt', epochNew: EPOCH_MAX });
  assert.deepEqual(checkEpoch(0, EPOCH_MAX, 'primary'), { outcome: 'step_down', epochSeen: EPOCH_MAX });
  assert.equal(checkEpoch(EPOCH_MAX, 0, 'primary').outcome, 'refuse');
  assert.deepEqual(checkEpoch(EPOCH_MAX, EPOCH_MAX, 'primary'), { outcome: 'accept' });
});

test('a lower epoch is refused and a higher one never accepted as is, for any epochs', () => {
  fc.assert(
    fc.property(fc.maxSafeNat(), fc.maxSafeNat(), fc.constantFrom(...ROLES), (localEpoch, frameEpoch, role) => {
      const { outcome } = checkEpoch(localEpoch, frameEpoch, role);
      if (frameEpoch < localEpoch) assert.equal(outcome, 'refuse');
      else if (frameEpoch === localEpoch) assert.equal(outcome, 'accept');
      else assert.equal(outcome, role === 'primary' ? 'step_down' : 'adopt');
    }),
  );
});

test('epochs outside [0, EPOCH_MAX] and unknown roles are refused', () => {
  for (const bad of [-1, 1.5, EPOCH_MAX + 1, Number.NaN, Infinity]) {
    assert.throws(() => checkEpoch(bad, 1, 'primary'), RangeError, `local ${bad}`);
    assert.throws(() => checkEpoch(1, bad, 'replica'), RangeError, `frame ${bad}`);
  }
  assert.throws(() => checkEpoch(1, 1, 'leader' as Role), RangeError);
});
