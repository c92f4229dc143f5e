// A divergent suffix, with real `blockwal serve` processes on loopback
// (test/support/cluster.ts): under sync_all with two replicas, R2 is paused
// while the primary keeps writing, so R1 receives records that are never
// committed (R2 never has them). The primary and R2 die; R2 is restarted as
// the primary of epoch 2 feeding R1. R1 holds records the new primary never
// had: it drops them (they were never applied), takes the new primary's
// history, and ends byte-identical to it, with the same apply checksum.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';

import { blockPattern, MiB, NbdSession, settled, until, withCluster } from '../support/cluster';

const BLOCK_BYTES = 4096;

test('a replica holding records the new primary never had drops them and ends byte-identical to it', async () => {
  await withCluster({ sizeBytes: 64 * MiB, replicas: 2, durability: 'sync_all', ackTimeoutMs: 600_000 }, async (cluster) => {
    const [p, r1, r2] = [cluster.primary, cluster.replicas[0]!, cluster.replicas[1]!];
    await cluster.waitCurrent();

    // A committed history every node has.
    const session = await NbdSession.open(p.nbd);
    const first = await settled('32 writes', Promise.all(Array.from({ length: 32 }, (_, i) => session.write(i * BLOCK_BYTES, blockPattern(1, i)))));
    assert.ok(first.every((r) => r.error === 0));
    assert.equal((await settled('FLUSH', session.flush())).error, 0);
    const committed = await cluster.waitApplied();

    // R2 stops; the primary ships 16 more writes that only R1 receives. They
    // are never acknowledged (sync_all waits for R2) and never committed.
    r2.pause();
    const head0 = (await p.volumeStatus()).lsnHead;
    const pending = Array.from({ length: 16 }, (_, i) => session.write((100 + i) * BLOCK_BYTES, blockPattern(2, 100 + i)).catch((err: Error) => err));
    await until('R1 received the suffix', async () => (await r1.volumeStatus()).lsnReceived >= head0 + 16);
    const r1Before = await r1.volumeStatus();
    assert.equal(r1Before.lsnApplied, committed.lsnApplied, 'R1 applied nothing of the uncommitted suffix');
    assert.equal(session.repliesReceived, 33, 'none of the suffix writes was acknowledged');

    // The primary and R2 die; R2 becomes the primary of epoch 2, feeding R1.
    await p.kill('SIGKILL');
    await r2.kill('SIGKILL');
    session.close();
    await Promise.all(pending);
    await r2.restart(r2.primaryFlags({ replicas: [r1], durability: 'sync_all', epoch: 2 }));
    const v2 = await r2.volumeStatus();
    assert.ok(v2.lsnHead < r1Before.lsnReceived, `the new primary (head ${v2.lsnHead}) lacks R1's suffix (received ${r1Before.lsnReceived})`);
    await cluster.waitCurrent(r2);
    const r1After = await r1.volumeStatus();
    assert.equal(r1After.epoch, 2);
    assert.match(r1.stderr, /dropped an uncommitted suffix/);

    // New writes in epoch 2 land on both, over the blocks of the dropped suffix too.
    const s2 = await NbdSession.open(r2.nbd);
    try {
      const second = await settled('8 writes', Promise.all(Array.from({ length: 8 }, (_, i) => s2.write((104 + i) * BLOCK_BYTES, blockPattern(3, 104 + i)))));
      assert.ok(second.every((r) => r.error === 0));
      assert.equal((await settled('FLUSH', s2.flush())).error, 0);
    } finally {
      s2.close();
    }
    await cluster.waitApplied(r2, [r1]);
    // The new primary opened epoch 2 with a barrier record, applied on R1 too;
    // the durability mode the first primary recorded is known to both.
    for (const n of [r1, r2]) {
      const v = await n.volumeStatus();
      assert.equal(v.epochOpened, 2, `${n.name} applied the epoch 2 barrier`);
      assert.equal(v.durability, 'sync_all', `${n.name} knows the durability mode`);
    }
    await cluster.stopAll();
    const sums = await cluster.checksums([r1, r2]);
    assert.equal(sums.r1, sums.r2, `R1 and the new primary are byte-identical: ${JSON.stringify(sums)}`);
    console.log(`divergence: R1 dropped ${r1Before.lsnReceived - r1Before.lsnApplied} uncommitted records; checksums ${JSON.stringify(sums)}`);
  });
});
