// `blockwal demo`, the tour a newcomer runs after setup, through the compiled
// command: a primary and two replicas as real processes, one replica killed
// and caught up from the WAL, one wiped and rebuilt, three equal checksums.
// It must exit 0 within two minutes, say what happened (the primary's
// decisions, progress lines, the replicas streaming again) and leave no
// temporary directory behind.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';

import { describeRun, runCli } from '../support/nbd_server_process';

const DEMO_TIMEOUT_MS = 120_000;

test('blockwal demo: a catch-up, a rebuild with progress, and three equal checksums; exit 0', async (t) => {
  const r = await runCli(['demo'], { timeoutMs: DEMO_TIMEOUT_MS });
  const seed = /seed (\d+)/.exec(r.stdout)?.[1];
  t.diagnostic(`workload seed ${seed} (replay with blockwal demo --seed ${seed})`);
  const what = describeRun('blockwal demo', r);
  assert.ok(r.code === 0 && !r.timedOut, what);

  // r1 was killed and caught up from the WAL.
  assert.match(r.stdout, /^ {3}decision: catch_up \(~[\d.]+ MiB\): /m, what);
  assert.match(r.stdout, /^ {3}r1 streaming again .*: caught up from the WAL/m, what);
  // r2 was wiped and rebuilt, with progress lines (bytes, rate, ETA) on the way.
  assert.match(r.stdout, /^ {3}decision: rebuild \(~[\d.]+ MiB\): /m, what);
  assert.match(r.stdout, /^ {3}rebuild {2}\[[#.]{20}\] +\d+% {2}[\d.]+ \S+ of 256\.0 MiB, [\d.]+ \S+\/s, ETA \d+ s/m, what);
  assert.match(r.stdout, /^ {3}r2 streaming .*: the checkpointed base image copied/m, what);
  // The final status names each replica's last decision with its reason.
  assert.match(r.stdout, /^ {7}last decision catch_up \(~.*\): replica at LSN \d+/m, what);
  assert.match(r.stdout, /^ {7}last decision rebuild \(~.*\): replica at LSN 0/m, what);

  const sums = [...r.stdout.matchAll(/^ {3}(p|r1|r2) +([0-9a-f]{16})$/gm)].map((m) => ({ node: m[1]!, sum: m[2]! }));
  assert.deepEqual(
    sums.map((s) => s.node),
    ['p', 'r1', 'r2'],
    `one checksum line per node\n${what}`,
  );
  assert.equal(new Set(sums.map((s) => s.sum)).size, 1, `the three checksums are equal: ${JSON.stringify(sums)}`);
  const model = /what it wrote: ([0-9a-f]{16})$/m.exec(r.stdout)?.[1];
  assert.equal(model, sums[0]!.sum, 'the checksums equal what the workload wrote');

  const dir = /on loopback, in (\S+)$/m.exec(r.stdout)?.[1];
  assert.ok(dir !== undefined && !fs.existsSync(dir), `the temporary directory ${dir} is removed`);
});
