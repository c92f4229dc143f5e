// A deposed primary rejoining as a replica (separate processes, loopback):
// the primary of epoch 1 writes records its paused replica never receives
// (never acknowledged, never committed) and checkpoints them into its base
// image; it is SIGKILLed. The replica becomes the primary of epoch 2, writes
// past the old primary's head and is killed (its WAL keeps those records);
// it comes back feeding the old primary, with a backlog too small to hold
// its chain at the old primary's applied LSN, so the apply checksum cannot
// tell. The old primary's base image holds blocks this history never had:
// by the epoch history alone the new primary must rebuild it (neither keep
// it up nor catch it up on top of them), and it must end byte-identical,
// with no alarm: a failover is not corruption.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';

import { blockPattern, MiB, NbdSession, settled, until, withCluster } from '../support/cluster';

const BLOCK_BYTES = 4096;

test('an old primary whose base image holds records the new primary never had rejoins as its replica and ends byte-identical to it', async () => {
  await withCluster({ sizeBytes: 64 * MiB, replicas: 1, durability: 'sync_all', ackTimeoutMs: 600_000, primaryExtra: ['--wal-cache', '1M'] }, async (cluster) => {
    const [p, r] = [cluster.primary, cluster.replicas[0]!];
    await cluster.waitCurrent();

    const session = await NbdSession.open(p.nbd);
    const first = await settled('32 writes', Promise.all(Array.from({ length: 32 }, (_, i) => session.write(i * BLOCK_BYTES, blockPattern(1, i)))));
    assert.ok(first.every((x) => x.error === 0));
    assert.equal((await settled('FLUSH', session.flush())).error, 0);
    const committed = await cluster.waitApplied();

    // The replica stops answering; the primary writes 16 records only it has.
    r.pause();
    const head0 = (await p.volumeStatus()).lsnHead;
    const big = (tag: number, first: number): Buffer => Buffer.concat(Array.from({ length: 32 }, (_, k) => blockPattern(tag, first + k)));
    const pending = Array.from({ length: 16 }, (_, i) => session.write((100 + 32 * i) * BLOCK_BYTES, big(2, 100 + 32 * i)).catch((err: Error) => err));
    await until('the primary checkpointed the suffix', async () => (await p.volumeStatus()).checkpointLsn >= head0 + 1);
    const pBefore = await p.volumeStatus();
    assert.ok(pBefore.checkpointLsn > committed.lsnApplied, `the old primary checkpointed past the committed LSN ${committed.lsnApplied}: ${pBefore.checkpointLsn}`);
    await p.kill('SIGKILL');
    session.close();
    await Promise.all(pending);
    await r.kill('SIGKILL');

    // The replica becomes the primary of epoch 2 and writes past the old
    // head; then it is killed, so that its WAL still holds those records
    // (no checkpoint at close) and its replication backlog is gone.
    await r.restart(r.primaryFlags({ replicas: [], epoch: 2 }));
    const s2 = await NbdSession.open(r.nbd);
    const second = await settled('64 writes', Promise.all(Array.from({ length: 64 }, (_, i) => s2.write((100 + i) * BLOCK_BYTES, blockPattern(3, 100 + i)))));
    assert.ok(second.every((x) => x.error === 0));
    assert.equal((await settled('FLUSH', s2.flush())).error, 0);
    s2.close();
    await r.kill('SIGKILL');

    // The old primary comes back as the new primary's replica.
    await p.restart(p.replicaFlags());
    await r.restart(r.primaryFlags({ replicas: [p], durability: 'sync_all', epoch: 2, extra: ['--repl-backlog', '64K'] }));
    const current = await cluster.waitCurrent(r);
    const decision = current.replicas[0]!.decision;
    assert.equal(decision?.kind, 'rebuild', `the old primary is rebuilt: ${JSON.stringify(decision)}`);
    assert.match(decision!.reason, /not all this primary's history: it applied records of epoch 0 up to LSN \d+, but here epoch 2 opened at LSN \d+/);
    await cluster.waitApplied(r, [p]);
    await cluster.stopAll();
    const sums = await cluster.checksums([p, r]);
    assert.equal(sums.p, sums.r1, `the old primary is byte-identical to the new one: ${JSON.stringify(sums)}`);
    // Told apart from corruption: no apply checksum alarm, no error at all.
    assert.deepEqual([...p.errorLines, ...r.errorLines], [], 'no node logged an error');
    console.log(`old primary rejoin: checkpointed LSN ${pBefore.checkpointLsn} past the committed ${committed.lsnApplied}; ${decision!.reason}`);
  });
});
