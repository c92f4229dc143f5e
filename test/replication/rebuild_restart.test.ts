// A rebuild resumes after its primary is killed, between real `blockwal
// serve` processes on loopback. A wiped replica is being rebuilt (the base
// lane throttled with --rebuild-rate); it is stopped (SIGSTOP) while writes
// go on and the primary checkpoints past the replica's WAL lane; the primary
// is killed (SIGKILL) and restarted. The WAL it kept for the lane is still
// there after the restart, so when the replica comes back the primary
// resumes the same session from the persisted progress (not a fresh
// rebuild), and every node ends with the same apply checksum and `blockwal
// checksum`. Waiting is by polling status with a generous deadline, never by time.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';

import { type ClusterNode, createVolume, MiB, until, withCluster } from '../support/cluster';
import { assertSameApplied, assertSameChecksums } from '../support/cluster_fio';
import { checkpointedPast, writeThrough } from '../support/wal_workload';

const SIZE_BYTES = 64 * MiB;
const CREATE_EXTRA = ['--wal-segment-size', '1M'];

async function replicaView(primary: ClusterNode): Promise<{ lsnReceived: number; rebuild: { sessionId: number; chunksDone: number; chunksTotal: number } | undefined }> {
  return (await primary.primaryStatus()).replicas[0]!;
}

test('a rebuild whose WAL lane lags the checkpoint resumes after the primary is killed and restarted', { timeout: 120_000 }, async (t) => {
  await withCluster(
    // A 1 MiB backlog: when the replica goes, what it lacks is no longer all
    // in memory, so no dirty bitmap is kept for it and it is rebuilt in full.
    { sizeBytes: SIZE_BYTES, replicas: 1, durability: 'sync_all', ackTimeoutMs: 500, createExtra: CREATE_EXTRA, primaryExtra: ['--rebuild-rate', '6M', '--repl-backlog', '1M'] },
    async (cluster) => {
      const { primary } = cluster;
      const replica = cluster.replicas[0]!;
      await cluster.waitCurrent();
      await writeThrough(primary, 0, 4 * MiB, 1);
      await until('the primary released the start of its WAL', async () => (await primary.primaryStatus()).wal.lsnTail > 1);

      // Wiped: the WAL no longer reaches LSN 1, so a rebuild.
      await replica.kill('SIGKILL');
      fs.rmSync(replica.dir, { recursive: true, force: true });
      await createVolume(replica.dir, SIZE_BYTES, CREATE_EXTRA);
      await replica.restart();
      const running = await until('the rebuild copied 15% of the chunks', async () => {
        const r = (await replicaView(primary)).rebuild;
        return r !== undefined && r.chunksDone >= 0.15 * r.chunksTotal && r;
      });
      await writeThrough(primary, 4 * MiB, 2 * MiB, 2); // the WAL lane takes these

      // The replica stops; writes go on and the primary checkpoints past its lane.
      const headAtPause = (await primary.volumeStatus()).lsnHead;
      replica.pause();
      await writeThrough(primary, 6 * MiB, 2 * MiB, 3);
      const before = await checkpointedPast(primary, headAtPause, 'the primary checkpointed past the stopped replica');
      const lane = (await replicaView(primary)).lsnReceived;
      t.diagnostic(`session ${running.sessionId} at ${running.chunksDone}/${running.chunksTotal} chunks; WAL lane at LSN ${lane}; checkpoint ${before.checkpointLsn}, WAL tail ${before.walTail}`);
      assert.ok(lane < before.checkpointLsn, `the WAL lane (LSN ${lane}) lags the checkpoint ${before.checkpointLsn}`);

      assert.equal((await primary.kill('SIGKILL')).signal, 'SIGKILL');
      await primary.restart();
      const walTail = (await primary.primaryStatus()).wal.lsnTail;
      t.diagnostic(`after SIGKILL and restart: WAL tail ${walTail}, checkpoint ${(await primary.volumeStatus()).checkpointLsn}`);
      assert.ok(walTail <= lane, `the WAL kept for the lane survived the restart: tail ${walTail}, lane at ${lane}`);

      replica.resume();
      const p = await cluster.waitCurrent(primary, 'the rebuilt replica streaming, lag 0, in the ack set');
      const decision = p.replicas[0]!.decision;
      t.diagnostic(`decision: ${JSON.stringify(decision)}`);
      assert.equal(decision?.kind, 'rebuild', decision?.reason);
      assert.match(decision.reason, new RegExp(`^resume the unfinished rebuild \\(session ${running.sessionId},`), 'the same session resumed, not a fresh one');
      assert.equal(p.replicas[0]!.completed.rebuilds, 1, 'the resumed rebuild completed once');
      await assertSameApplied(cluster, before.checkpointLsn);
      await cluster.stopAll();
      const sums = await assertSameChecksums(cluster);
      t.diagnostic(`checksums ${JSON.stringify(sums)}`);
    },
  );
});
