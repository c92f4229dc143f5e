// Two-lane rebuild between real `blockwal serve` processes on loopback. A
// replica is wiped (a fresh `blockwal create` in its place) after the
// primary's WAL has moved past the start: the primary decides a rebuild,
// copies its checkpointed base image chunk by chunk (throttled with
// --rebuild-rate so that it takes a while) while the WAL lane streams live
// fio writes. The rebuild is interrupted three times — the replica killed
// with SIGKILL twice, and the link cut once (the replica stopped with
// SIGSTOP past the link's idle timeout) — and each time resumes from the
// progress the replica persisted. It ends with the replica streaming, the
// same apply checksum at the same LSN and the same `blockwal checksum` as
// the primary, and fio's verify pass reading every block back.
// Waiting is by polling status with a generous deadline, never by time.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';

import { type ClusterNode, createVolume, MiB, until, withCluster } from '../support/cluster';
import { assertSameApplied, assertSameChecksums, checkFio, type FioWorkload, skipWithoutFioNbd, startFio } from '../support/cluster_fio';
import type { PrimaryReplicationStatus } from '../../lib/replication/primary';

const SIZE_BYTES = 192 * MiB;
const CREATE_EXTRA = ['--wal-segment-size', '4M'];

type Rebuild = NonNullable<PrimaryReplicationStatus['replicas'][number]['rebuild']>;

async function rebuildOf(primary: ClusterNode): Promise<Rebuild | undefined> {
  return (await primary.primaryStatus()).replicas[0]!.rebuild;
}

// Until the running rebuild has at least `fraction` of its chunks durable on the replica.
async function rebuiltAtLeast(primary: ClusterNode, fraction: number, what: string): Promise<Rebuild> {
  return until(what, async () => {
    const r = await rebuildOf(primary);
    return r !== undefined && r.chunksDone >= fraction * r.chunksTotal && r;
  });
}

test('a wiped replica is rebuilt under fio writes through three interruptions and ends identical', async (t) => {
  if (await skipWithoutFioNbd(t)) return;
  const before: FioWorkload = { jobs: 2, jobBytes: 48 * MiB, fsyncEvery: 64, iodepth: 8, blockBytes: 64 * 1024 };
  // Paced (two writes in flight, a FLUSH every 8) to outlast the rebuild's first 15 % on a
  // fast host, where the test checks that fio is still writing, without writing more WAL
  // than the rebuild's lane can keep.
  const during: FioWorkload = { jobs: 2, jobBytes: 24 * MiB, fsyncEvery: 8, iodepth: 2 };
  await withCluster(
    { sizeBytes: SIZE_BYTES, replicas: 1, durability: 'sync_all', ackTimeoutMs: 1000, createExtra: CREATE_EXTRA, primaryExtra: ['--rebuild-rate', '24M'] },
    async (cluster) => {
      const { primary } = cluster;
      const replica = cluster.replicas[0]!;
      await cluster.waitCurrent();
      checkFio(cluster, 'before', before, await startFio(cluster, 'before', before));
      await cluster.waitCurrent();
      // Wipe the replica; the primary's WAL no longer reaches LSN 1.
      await replica.kill('SIGKILL');
      fs.rmSync(replica.dir, { recursive: true, force: true });
      await createVolume(replica.dir, SIZE_BYTES, CREATE_EXTRA);
      const wal = (await primary.primaryStatus()).wal;
      assert.ok(wal.lsnTail > 1, `the primary's WAL moved on (tail ${wal.lsnTail}): a wiped replica cannot catch up`);

      let fioExited = false;
      const fio = startFio(cluster, 'during', during).finally(() => (fioExited = true));
      await replica.restart();
      const first = await rebuiltAtLeast(primary, 0.15, 'the rebuild copied 15% of the chunks');
      assert.equal((await primary.primaryStatus()).replicas[0]!.decision?.kind, 'rebuild');
      assert.ok(!fioExited, 'fio is still writing while the rebuild runs');
      t.diagnostic(`rebuild session ${first.sessionId}: ${first.chunksDone}/${first.chunksTotal} chunks, base LSN ${first.lsnBase}; fio running: ${!fioExited}`);

      // 1: the replica killed mid-rebuild.
      await replica.kill('SIGKILL');
      await replica.restart();
      const second = await rebuiltAtLeast(primary, 0.4, 'the rebuild resumed after the first SIGKILL and reached 40%');
      assert.equal(second.sessionId, first.sessionId, 'the same session resumed');
      assert.ok(second.resumed, 'resumed, not restarted');

      // 2: killed again.
      await replica.kill('SIGKILL');
      await replica.restart();
      const third = await rebuiltAtLeast(primary, 0.65, 'the rebuild resumed after the second SIGKILL and reached 65%');
      assert.equal(third.sessionId, first.sessionId);

      // 3: the link cut: the replica is silent past the idle timeout, the primary drops the link.
      const connects = (await primary.primaryStatus()).replicas[0]!.connects;
      replica.pause();
      await until('the primary dropped the silent link', async () => (await primary.primaryStatus()).replicas[0]!.state !== 'rebuilding');
      replica.resume();
      await until('reconnected', async () => (await primary.primaryStatus()).replicas[0]!.connects > connects);

      const status = await cluster.waitCurrent(primary, 'the rebuilt replica streaming, lag 0, in the ack set');
      assert.equal(status.replicas[0]!.completed.rebuilds, 1, 'the rebuild completed once');
      t.diagnostic(`after: ${JSON.stringify(status.replicas[0]!.decision)}; fio exited before completion: ${fioExited}`);
      checkFio(cluster, 'during', during, await fio);
      await cluster.waitCurrent();
      await assertSameApplied(cluster, 1);
      await cluster.stopAll();
      const sums = await assertSameChecksums(cluster);
      t.diagnostic(`checksums ${JSON.stringify(sums)}`);
    },
  );
});
