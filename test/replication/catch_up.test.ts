// WAL catch-up between real `blockwal serve` processes on loopback: a
// replica that was down (SIGKILL) while 256 MiB was written comes back; the
// primary's in-memory backlog (--repl-backlog 16M) holds only the newest
// records, so the primary decides catch_up and streams the rest from the WAL
// it kept for the replica (the pin), then hands over to keep-up, while fio
// keeps writing. The replica ends streaming, in the ack set, with the same apply checksum at the same
// LSN and the same `blockwal checksum` as the primary; fio's verify pass reads
// every block back through the primary.
// Waiting is by polling status with a generous deadline, never by time.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';

import { MiB, withCluster } from '../support/cluster';
import { assertSameApplied, assertSameChecksums, checkFio, type FioWorkload, skipWithoutFioNbd, startFio } from '../support/cluster_fio';

test('a replica down while 256 MiB was written catches up from the WAL on disk and ends identical', async (t) => {
  if (await skipWithoutFioNbd(t)) return;
  const workload: FioWorkload = { jobs: 2, jobBytes: 128 * MiB, fsyncEvery: 64, iodepth: 8, blockBytes: 128 * 1024 };
  await withCluster(
    { sizeBytes: 512 * MiB, replicas: 1, durability: 'sync_all', ackTimeoutMs: 500, primaryExtra: ['--repl-backlog', '16M'] },
    async (cluster) => {
      const replica = cluster.replicas[0]!;
      await cluster.waitCurrent();
      const head0 = (await cluster.primary.volumeStatus()).lsnHead;
      assert.equal((await replica.kill('SIGKILL')).signal, 'SIGKILL');
      // sync_all drops the silent replica from the ack set; fio goes on.
      checkFio(cluster, 'while-down', workload, await startFio(cluster, 'while-down', workload));
      const before = await cluster.primary.primaryStatus();
      const held = before.replicas[0]!.retention;
      t.diagnostic(`while down: head ${(await cluster.primary.volumeStatus()).lsnHead} (from ${head0}), WAL held for the replica ${JSON.stringify(held)}, backlog from LSN ${before.backlog.lsnFirst}`);
      assert.ok(held !== undefined && held.heldBytes >= 256 * MiB, `the primary kept at least 256 MiB of WAL for the replica: ${JSON.stringify(held)}`);
      assert.ok(before.backlog.lsnFirst > head0 + 1, 'the in-memory backlog no longer holds what the replica lacks');

      // Writes go on while it catches up.
      const during: FioWorkload = { jobs: 1, jobBytes: 16 * MiB, fsyncEvery: 32, iodepth: 4 };
      const fio = startFio(cluster, 'during', during);
      await replica.restart();
      const p = await cluster.waitCurrent(cluster.primary, 'the restarted replica caught up: streaming, lag 0, in the ack set');
      const decision = p.replicas[0]!.decision;
      t.diagnostic(`decision: ${JSON.stringify(decision)}`);
      assert.equal(decision?.kind, 'catch_up', decision?.reason);
      // With writes going on, a replica past the 16 MiB backlog may be caught up again.
      assert.ok(p.replicas[0]!.completed.catchUps >= 1, `catch-up sessions completed: ${p.replicas[0]!.completed.catchUps}`);
      assert.ok(decision.costBytes >= 256 * MiB, `the catch-up moved the 256 MiB written meanwhile (~${decision.costBytes} bytes)`);
      checkFio(cluster, 'during', during, await fio);
      await cluster.waitCurrent();
      await assertSameApplied(cluster, head0 + (2 * workload.jobBytes) / workload.blockBytes!);
      await cluster.stopAll();
      const sums = await assertSameChecksums(cluster);
      t.diagnostic(`checksums ${JSON.stringify(sums)}`);
    },
  );
});
