// Canaries for the recovery simulator: each planted bug (test/sim/canaries.ts)
// must make some seed violate an invariant within CANARY_SEEDS_MAX seeds. A
// canary that survives means the simulator cannot see that class of bug.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';

import { CANARIES } from './canaries';
import { emptyCounts } from './model';
import { describeViolation, runSeeds } from './world';

const CANARY_SEEDS_MAX = 1000;
const SEED_FIRST = 1;

for (const canary of CANARIES) {
  test(`canary caught: ${canary.name}`, () => {
    const { sessionClass, primaryClass, replicaClass } = canary;
    const plants = { sessionClass, primaryClass, replicaClass };
    const summary = runSeeds({ seedFirst: SEED_FIRST, seeds: CANARY_SEEDS_MAX, ...plants, stopAtFirstViolation: true }, emptyCounts());
    const violation = summary.violations[0];
    assert.ok(violation !== undefined, `no violation in seeds ${SEED_FIRST}..${SEED_FIRST + CANARY_SEEDS_MAX - 1}`);
    console.log(
      `canary "${canary.name}": caught at seed ${violation.seed} (${summary.seedsRun} seeds, ${summary.elapsedMs.toFixed(0)} ms) by ${violation.invariant}: ${violation.detail}`,
    );
    assert.notEqual(violation.invariant, 'exception', describeViolation(violation));
  });
}
