// A primary and its replicas as real `blockwal serve` processes on loopback
// (test/support/cluster.ts), driven with fio's nbd engine and a raw NBD
// client:
//  - sync_all with one replica and sync_quorum with two: fio randwrite with
//    crc32c verify and periodic FLUSHes over two connections; then every node
//    reports the same apply checksum at the same applied LSN, and after a
//    SIGTERM (exit 0) `blockwal checksum` agrees on every node;
//  - sync_all never acknowledges a WRITE the (SIGSTOPped) replica has not
//    received, nor a FLUSH before the replica has made it durable;
//  - a replica silent for --ack-timeout leaves the ack set (degraded, the set
//    persisted in replication.json) and rejoins once it is back;
//  - a replica killed with SIGKILL under fio and restarted with the same
//    flags catches up from the primary's backlog and ends identical.
// Waiting is by polling status with a generous deadline, never by time.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';

import { Cluster, MiB, NbdSession, readMembership, settled, until, withCluster } from '../support/cluster';
import { assertSameApplied, assertSameChecksums, checkFio, type FioWorkload, runFio, skipWithoutFioNbd, startFio } from '../support/cluster_fio';
import { runCli } from '../support/nbd_server_process';

const BLOCK_BYTES = 4096;

// A 4 KiB block whose bytes name it: (tag, i) repeated.
function blockPayload(tag: number, i: number): Buffer {
  const b = Buffer.alloc(BLOCK_BYTES);
  for (let at = 0; at < BLOCK_BYTES; at += 8) {
    b.writeUInt32LE(tag >>> 0, at);
    b.writeUInt32LE(i >>> 0, at + 4);
  }
  return b;
}

const FIO_SMALL: FioWorkload = { jobs: 2, jobBytes: 8 * MiB, fsyncEvery: 32, iodepth: 16 };

// ---- tests ----

test('sync_all, one replica: fio verify over 2 connections; same apply checksum at the same LSN; same volume checksum after SIGTERM', async (t) => {
  if (await skipWithoutFioNbd(t)) return;
  await withCluster({ sizeBytes: 64 * MiB, replicas: 1, durability: 'sync_all' }, async (cluster) => {
    await cluster.waitCurrent();
    await runFio(cluster, 'sync-all', FIO_SMALL);
    const p = await cluster.waitCurrent();
    assert.equal(p.mode, 'healthy', `mode after the run: ${p.reason}`);
    assert.equal(p.durability, 'sync_all');
    // What the replica held up: every acknowledgement fio asked for is counted.
    const { writes, flushes } = p.ackWait;
    assert.ok(writes.total > 0 && flushes.total > 0, `acknowledgements counted: ${JSON.stringify(p.ackWait)}`);
    for (const c of [writes, flushes]) assert.ok(c.held <= c.total && (c.held === 0 ? c.heldSeconds === 0 : c.heldSeconds > 0), JSON.stringify(c));
    const text = await runCli(['status', cluster.primary.dir]);
    assert.match(text.stdout, /acks held {2}for the replicas: writes \d+ % of \d+.*; flushes \d+ % of \d+/, text.stdout);
    // The primary's last decision for the replica, dated: it was made when the replica connected.
    assert.match(text.stdout, /^ {13}last decision [\d.]+ (s|min|h) ago: (keep_up|catch_up) \(~[\d.]+ [KMG]?i?B\): /m, text.stdout);
    await assertSameApplied(cluster, (FIO_SMALL.jobs * FIO_SMALL.jobBytes) / BLOCK_BYTES);
    await cluster.stopAll();
    const sums = await assertSameChecksums(cluster);
    t.diagnostic(`checksums ${JSON.stringify(sums)}`);
  });
});

test('sync_quorum, two replicas: fio verify over 2 connections; all three nodes end identical', async (t) => {
  if (await skipWithoutFioNbd(t)) return;
  await withCluster({ sizeBytes: 64 * MiB, replicas: 2, durability: 'sync_quorum' }, async (cluster) => {
    await cluster.waitCurrent();
    await runFio(cluster, 'sync-quorum', FIO_SMALL);
    const p = await cluster.waitCurrent();
    assert.equal(p.durability, 'sync_quorum');
    assert.equal(p.mode, 'healthy', `mode after the run: ${p.reason}`);
    await assertSameApplied(cluster, (FIO_SMALL.jobs * FIO_SMALL.jobBytes) / BLOCK_BYTES);
    await cluster.stopAll();
    const sums = await assertSameChecksums(cluster);
    t.diagnostic(`checksums ${JSON.stringify(sums)}`);
  });
});

// While the replica is stopped, checks a few times that the primary has the
// request's LSN in its WAL, the replica has not reported it, and the client
// has no reply.
async function assertHeldBack(cluster: Cluster, session: NbdSession, lsn: number, field: 'lsnReceived' | 'lsnDurable', repliesBefore: number): Promise<void> {
  for (let i = 0; i < 5; i++) {
    await new Promise((resolve) => setTimeout(resolve, 150));
    const v = await cluster.primary.volumeStatus();
    const p = v.replication;
    assert.ok(p?.role === 'primary');
    assert.ok(v.lsnHead >= lsn, `the primary's WAL holds LSN ${lsn} (head ${v.lsnHead})`);
    const r = p.replicas[0]!;
    assert.ok(r[field] < lsn, `the stopped replica's ${field} ${r[field]} is below ${lsn}`);
    assert.ok(r.inAckSet, 'the replica stays in the ack set (--ack-timeout is long)');
    assert.equal(session.repliesReceived, repliesBefore, `no reply while the replica has not got LSN ${lsn} (poll ${i})`);
  }
}

test('sync_all: no WRITE reply before the replica received it, no FLUSH reply before the replica made it durable', async () => {
  await withCluster({ sizeBytes: 64 * MiB, replicas: 1, durability: 'sync_all', ackTimeoutMs: 600_000 }, async (cluster) => {
    const replica = cluster.replicas[0]!;
    await cluster.waitCurrent();
    const session = await NbdSession.open(cluster.primary.nbd);
    try {
      // WRITE: held back while the replica is stopped.
      const head0 = (await cluster.primary.volumeStatus()).lsnHead;
      const repliesBefore0 = session.repliesReceived;
      replica.pause();
      const write = session.write(0, blockPayload(0xc0ffee, 1));
      const lsnWrite = await until('the WRITE has its LSN on the primary', async () => {
        const v = await cluster.primary.volumeStatus();
        return v.lsnHead > head0 && v.lsnHead;
      });
      await assertHeldBack(cluster, session, lsnWrite, 'lsnReceived', repliesBefore0);
      replica.resume();
      assert.equal((await settled('the WRITE reply', write)).error, 0, 'the WRITE succeeds once the replica is back');
      const received = (await replica.volumeStatus()).lsnReceived;
      assert.ok(received >= lsnWrite, `the replica received LSN ${lsnWrite} (its lsnReceived ${received})`);

      // FLUSH: a write then a flush while the replica is stopped; the flush
      // reply must find the replica durable up to the head at the time it was sent.
      await cluster.waitCurrent();
      const repliesBefore = session.repliesReceived;
      replica.pause();
      const head1 = (await cluster.primary.volumeStatus()).lsnHead;
      const write2 = session.write(BLOCK_BYTES, blockPayload(0xc0ffee, 2));
      const lsnFlush = await until('the second WRITE has its LSN on the primary', async () => {
        const v = await cluster.primary.volumeStatus();
        return v.lsnHead > head1 && v.lsnHead;
      });
      const flush = session.flush();
      await assertHeldBack(cluster, session, lsnFlush, 'lsnDurable', repliesBefore);
      replica.resume();
      assert.equal((await settled('the second WRITE reply', write2)).error, 0);
      const flushReply = await settled('the FLUSH reply', flush);
      // Freeze the replica the moment the reply is here: what it reports now
      // was reported before the reply, give or take an ACK in flight.
      replica.pause();
      assert.equal(flushReply.error, 0, 'the FLUSH succeeds once the replica is back');
      const seenByPrimary = (await cluster.primary.primaryStatus()).replicas[0]!;
      assert.ok(seenByPrimary.lsnDurable >= lsnFlush, `at the FLUSH reply the primary knew the replica durable to ${seenByPrimary.lsnDurable} >= ${lsnFlush}`);
      replica.resume();
      const r = await replica.volumeStatus();
      assert.ok(r.lsnDurable >= lsnFlush, `the replica's own lsnDurable ${r.lsnDurable} >= ${lsnFlush}, the head when the FLUSH was sent`);
    } finally {
      session.close();
    }
    await cluster.stopAll();
    await assertSameChecksums(cluster);
  });
});

test('sync_all: a replica silent for --ack-timeout leaves the ack set (degraded, persisted) and rejoins when back', async () => {
  await withCluster({ sizeBytes: 64 * MiB, replicas: 1, durability: 'sync_all', ackTimeoutMs: 500 }, async (cluster) => {
    const replica = cluster.replicas[0]!;
    const address = replica.replAddress;
    await cluster.waitCurrent();
    const session = await NbdSession.open(cluster.primary.nbd);
    try {
      replica.pause();
      const WRITES = 32;
      // What replication.json says the moment each reply arrives: the new
      // set is persisted before anything is acknowledged without the replica.
      const membershipAtReply: (string[] | undefined)[] = [];
      const writes = Array.from({ length: WRITES }, (_, i) =>
        session.write(i * BLOCK_BYTES, blockPayload(0xdead, i)).then((r) => {
          membershipAtReply.push(readMembership(cluster.primary.dir)?.ackSet);
          return r;
        }),
      );
      const replies = await settled('the replies without the stopped replica', Promise.all([...writes, session.flush()]));
      assert.deepEqual(
        replies.map((r) => r.error),
        new Array(WRITES + 1).fill(0),
        'writes and the FLUSH complete without the stopped replica',
      );
      assert.deepEqual(membershipAtReply, new Array(WRITES).fill([]), 'replication.json listed the reduced ack set before each WRITE reply');
      const p = await cluster.primary.primaryStatus();
      assert.equal(p.mode, 'degraded', `mode while the replica is stopped (reason: ${p.reason})`);
      assert.ok(!p.ackSet.includes(address), `the ack set ${JSON.stringify(p.ackSet)} no longer holds ${address}`);
      assert.equal(p.replicas[0]!.inAckSet, false);
      assert.match(p.reason ?? '', /ack set/);
      const persisted = readMembership(cluster.primary.dir);
      assert.ok(persisted !== undefined, 'replication.json written before acknowledging without the replica');
      assert.deepEqual(persisted.ackSet, [], `replication.json: ${JSON.stringify(persisted)}`);
      assert.deepEqual(persisted.dropped, [address]);

      replica.resume();
      const healthy = await until(
        'the replica back in the ack set, mode healthy',
        async () => {
          const s = await cluster.primary.primaryStatus();
          return s.mode === 'healthy' && s.ackSet.includes(address) && s;
        },
        { explain: () => cluster.describe() },
      );
      assert.equal(healthy.reason, undefined);
      await until('replication.json lists the replica in the ack set again', async () => readMembership(cluster.primary.dir)?.ackSet.includes(address));
      // Acknowledged with the replica again: one more write and flush.
      assert.equal((await settled('a WRITE after the rejoin', session.write(WRITES * BLOCK_BYTES, blockPayload(0xdead, WRITES)))).error, 0);
      assert.equal((await settled('a FLUSH after the rejoin', session.flush())).error, 0);
      await cluster.waitCurrent();
      await assertSameApplied(cluster, WRITES + 1);
    } finally {
      session.close();
    }
    await cluster.stopAll();
    await assertSameChecksums(cluster);
  });
});

test('SIGKILL of the replica under fio, restarted with the same flags: back to streaming with lag 0, identical checksums', async (t) => {
  if (await skipWithoutFioNbd(t)) return;
  const workload: FioWorkload = { jobs: 2, jobBytes: 16 * MiB, fsyncEvery: 32, iodepth: 16 };
  const totalWrites = (workload.jobs * workload.jobBytes) / BLOCK_BYTES;
  await withCluster({ sizeBytes: 64 * MiB, replicas: 1, durability: 'sync_all', ackTimeoutMs: 1000 }, async (cluster) => {
    const replica = cluster.replicas[0]!;
    await cluster.waitCurrent();
    const head0 = (await cluster.primary.volumeStatus()).lsnHead;
    let fioExited = false;
    const fio = startFio(cluster, 'kill-replica', workload).finally(() => (fioExited = true));
    const lsnAtKill = await until('fio has written a tenth of its blocks', async () => {
      const v = await cluster.primary.volumeStatus();
      return v.lsnHead - head0 >= totalWrites / 10 && v.lsnHead;
    });
    const status = await replica.kill('SIGKILL');
    assert.equal(status.signal, 'SIGKILL');
    assert.ok(!fioExited, 'fio was still writing when the replica was killed');
    await replica.restart();
    t.diagnostic(`replica killed at primary LSN ~${lsnAtKill}, restarted on ${replica.replAddress}; fio ${fioExited ? 'had finished' : 'still running'} at the restart`);
    checkFio(cluster, 'kill-replica', workload, await fio);
    const p = await cluster.waitCurrent(cluster.primary, 'the restarted replica streaming with lag 0, in the ack set');
    assert.ok(p.replicas[0]!.connects >= 2, `the primary connected to the replica again (${p.replicas[0]!.connects} connects)`);
    await assertSameApplied(cluster, totalWrites);
    await cluster.stopAll();
    const sums = await assertSameChecksums(cluster);
    t.diagnostic(`checksums ${JSON.stringify(sums)}`);
  });
});
