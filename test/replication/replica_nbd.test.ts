// A replica serves its volume read-only over NBD (`--nbd` with `--role
// replica`, real processes on loopback): reads return what the primary
// committed, writes are refused with EPERM, and keep-up goes on meanwhile.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';

import { MiB, NbdSession, settled, until, withCluster } from '../support/cluster';

const BLOCK_BYTES = 4096;
const EPERM = 1;

test('a replica serves NBD read-only: committed data reads back, writes get EPERM', async () => {
  await withCluster({ sizeBytes: 64 * MiB, replicas: 1, durability: 'sync_all' }, async (cluster) => {
    const [p, r1] = [cluster.primary, cluster.replicas[0]!];
    await cluster.waitCurrent();
    await r1.stop();
    await r1.restart(r1.replicaFlags(['--nbd', `unix:${r1.nbdSocket}`, '--export', 'vol']));
    await cluster.waitCurrent();

    const data = Buffer.alloc(16 * BLOCK_BYTES);
    for (let i = 0; i < data.length; i += 8) data.writeUInt32LE(i * 2654435761 >>> 0, i);
    const ps = await NbdSession.open(p.nbd);
    try {
      assert.equal((await settled('write', ps.write(8 * BLOCK_BYTES, data))).error, 0);
      assert.equal((await settled('flush', ps.flush())).error, 0);
    } finally {
      ps.close();
    }
    await cluster.waitApplied();

    let rs: NbdSession | undefined;
    await until('the replica answers NBD', async () => {
      rs = await NbdSession.open(r1.nbd).catch(() => undefined);
      return rs !== undefined;
    });
    try {
      const read = await settled('read', rs!.read(8 * BLOCK_BYTES, data.length));
      assert.equal(read.error, 0);
      assert.ok(read.data !== undefined && Buffer.from(read.data).equals(data), 'the replica reads what the primary wrote');
      const write = await settled('write on the replica', rs!.write(0, Buffer.alloc(BLOCK_BYTES, 1)));
      assert.equal(write.error, EPERM, 'a write to a replica is refused with EPERM');
    } finally {
      rs!.close();
    }
    await cluster.stopAll();
    const sums = await cluster.checksums();
    assert.equal(sums.p, sums.r1);
  });
});
