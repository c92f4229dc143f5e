// The recovery simulator (test/sim/world.ts) over the real ProtocolEngine,
// decide() and RebuildSession: SEEDS seeded worlds with drops, delays,
// reordering, duplicates, partitions, corrupt base chunks, replica crashes
// (torn base writes, lost unsynced WAL), primary restarts (a crash loses the
// dirty bitmaps); every invariant of world.ts must hold in every one, and the
// seeds must run every kind of session (catch-up, rebuild, bitmap resync) to
// completion. A violation prints its seed and trace; re-run one seed with
// SIM_SEED=<seed>.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';

import { emptyCounts } from './model';
import { describeCounts, describeViolation, runSeeds } from './world';

const SEED_FIRST = Number(process.env.SIM_SEED ?? 1);
const SEEDS = process.env.SIM_SEED === undefined ? Number(process.env.SIM_SEEDS ?? 2000) : 1;

test(`recovery simulator: ${SEEDS} seeds from ${SEED_FIRST}, no invariant violated`, () => {
  const summary = runSeeds({ seedFirst: SEED_FIRST, seeds: SEEDS }, emptyCounts());
  console.log(describeCounts(summary));
  for (const violation of summary.violations.slice(0, 3)) console.log(describeViolation(violation));
  assert.equal(summary.violations.length, 0, `violations at seeds ${summary.violations.map((v) => v.seed).join(', ')}`);
  if (SEEDS < 100) return; // one seed need not run every kind
  for (const kind of ['rebuild', 'catch_up', 'bitmap_resync'] as const) {
    assert.ok(summary.counts.completionsByKind[kind] > 0, `the seeds complete no ${kind} session`);
  }
  assert.ok(summary.counts.bitmaps.unchangedChunks > 0, 'no bitmap resync sent a chunk as unchanged');
});
