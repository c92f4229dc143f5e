// WAL catch-up across primary restarts, between real `blockwal serve`
// processes on loopback: a replica is killed (SIGKILL); writes go on and the
// primary checkpoints past the replica's position; the primary is stopped
// with SIGTERM and restarted, takes more writes and checkpoints, and is
// killed with SIGKILL and restarted. Each time the WAL it kept for the replica
// is still there after the restart (walTail at or below the replica's
// position, the checkpoint beyond it). The replica comes back: the primary
// decides catch_up (not rebuild), streams the gap from the WAL on disk, and
// every node ends with the same apply checksum and `blockwal checksum`.
// Waiting is by polling status with a generous deadline, never by time.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';

import { MiB, withCluster } from '../support/cluster';
import { assertSameApplied, assertSameChecksums } from '../support/cluster_fio';
import { checkpointedPast, writeThrough } from '../support/wal_workload';

const SIZE_BYTES = 64 * MiB;

test('a replica behind the checkpoint of a restarted primary (SIGTERM, then SIGKILL) is caught up from the WAL, not rebuilt', { timeout: 120_000 }, async (t) => {
  await withCluster(
    {
      sizeBytes: SIZE_BYTES,
      replicas: 1,
      durability: 'sync_all',
      ackTimeoutMs: 500,
      createExtra: ['--wal-segment-size', '1M'],
    },
    async (cluster) => {
      const { primary } = cluster;
      const replica = cluster.replicas[0]!;
      await cluster.waitCurrent();
      await writeThrough(primary, 0, 2 * MiB, 1);
      const current = await cluster.waitCurrent();
      const position = current.replicas[0]!.lsnReceived;
      assert.equal((await replica.kill('SIGKILL')).signal, 'SIGKILL');

      // Writes go on (sync_all drops the silent replica from the ack set); the
      // primary checkpoints past the replica while keeping its WAL.
      await writeThrough(primary, 2 * MiB, 8 * MiB, 2);
      const before = await checkpointedPast(primary, position, 'the primary checkpointed past the down replica');
      t.diagnostic(`replica down at LSN ${position}; primary checkpoint ${before.checkpointLsn}, WAL tail ${before.walTail}`);
      assert.ok(before.walTail <= position, `the pin kept the WAL for the replica: tail ${before.walTail}, replica at ${position}`);

      // 1: SIGTERM (the close checkpoints) and restart.
      await primary.stop();
      await primary.restart();
      const afterTerm = await checkpointedPast(primary, position, 'the restarted primary (SIGTERM)');
      t.diagnostic(`after SIGTERM and restart: checkpoint ${afterTerm.checkpointLsn}, WAL tail ${afterTerm.walTail}`);
      assert.ok(afterTerm.walTail <= position, `the WAL kept for the replica survived SIGTERM: tail ${afterTerm.walTail}, replica at ${position}`);

      // 2: more writes and a checkpoint, then SIGKILL and restart.
      await writeThrough(primary, 10 * MiB, 4 * MiB, 3);
      const beforeKill = await checkpointedPast(primary, afterTerm.checkpointLsn, 'the restarted primary checkpointed its new writes');
      await writeThrough(primary, 14 * MiB, 1 * MiB, 4); // left above the checkpoint by the kill
      assert.equal((await primary.kill('SIGKILL')).signal, 'SIGKILL');
      await primary.restart();
      const afterKill = await primary.primaryStatus();
      const volume = await primary.volumeStatus();
      t.diagnostic(`after SIGKILL and restart: checkpoint ${volume.checkpointLsn} (before the kill ${beforeKill.checkpointLsn}), head ${volume.lsnHead}, WAL tail ${afterKill.wal.lsnTail}`);
      assert.ok(volume.checkpointLsn > position, `the checkpoint is past the replica: ${volume.checkpointLsn} > ${position}`);
      assert.ok(afterKill.wal.lsnTail <= position, `the WAL kept for the replica survived SIGKILL: tail ${afterKill.wal.lsnTail}, replica at ${position}`);

      // The replica comes back: caught up from the WAL on disk.
      await replica.restart();
      const p = await cluster.waitCurrent(primary, 'the restarted replica caught up: streaming, lag 0, in the ack set');
      const decision = p.replicas[0]!.decision;
      t.diagnostic(`decision: ${JSON.stringify(decision)}`);
      assert.equal(decision?.kind, 'catch_up', decision?.reason);
      assert.equal(p.replicas[0]!.completed.rebuilds, 0, 'no rebuild');
      assert.ok(p.replicas[0]!.completed.catchUps >= 1, `catch-ups completed: ${p.replicas[0]!.completed.catchUps}`);
      await assertSameApplied(cluster, volume.lsnHead);
      await cluster.stopAll();
      const sums = await assertSameChecksums(cluster);
      t.diagnostic(`checksums ${JSON.stringify(sums)}`);
    },
  );
});
