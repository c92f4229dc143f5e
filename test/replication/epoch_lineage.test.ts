// The epoch history on the wire, in one process (a ReplicaReplication fed by
// a hand-driven link): a replica's HELLO names the epoch of the newest
// barrier it applied (what a primary checks its records against,
// lib/protocol/decide.ts), and a REBUILD_START hands the replica the
// primary's history up to the rebuild's base, kept across a restart.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';

import { Volume } from '../../lib/engine/volume';
import { BLOCK_BYTES, type HelloFrame, type SessionAckFrame } from '../../lib/replication/frames';
import { durabilityCode } from '../../lib/statemachine/control';
import { connect, hello, until, withReplica } from '../support/replica_link';

test("a replica's HELLO names the epoch of the newest barrier it applied, not one it only received", () =>
  withReplica(async (f) => {
    await f.source.write(0, Buffer.alloc(BLOCK_BYTES, 1));
    await f.source.setEpoch(3);
    await f.source.appendControl({ type: 'epoch_barrier', epoch: 3 });
    const records = f.shipped.map((r) => ({ lsn: r.lsn, bytes: r.bytes }));
    const epoch = f.source.epoch;

    const first = await connect(f.receiver);
    first.link.send(hello(f.source, { lsnHead: 0 }));
    await until(() => first.frames.some((x) => x.type === 'hello'));
    assert.equal((first.frames.find((x) => x.type === 'hello') as HelloFrame).epochApplied, 0, 'a fresh replica applied no barrier');
    first.link.send({ type: 'wal_records', epoch, records, lsnCommit: 1 });
    await until(() => f.replica.lsnReceived === 2 && f.replica.lsnApplied === 1);
    first.link.close('shutdown', 'next');
    await first.closed;

    const second = await connect(f.receiver);
    second.link.send(hello(f.source));
    await until(() => second.frames.some((x) => x.type === 'hello'));
    assert.equal((second.frames.find((x) => x.type === 'hello') as HelloFrame).epochApplied, 0, 'the barrier is received, not applied');
    second.link.send({ type: 'commit', epoch, lsnCommit: 2 });
    await until(() => f.replica.lsnApplied === 2);
    assert.deepEqual(f.replica.epochStarts, [{ epoch: 3, lsn: 2 }]);
    second.link.close('shutdown', 'next');
    await second.closed;

    const third = await connect(f.receiver);
    third.link.send(hello(f.source));
    await until(() => third.frames.some((x) => x.type === 'hello'));
    assert.equal((third.frames.find((x) => x.type === 'hello') as HelloFrame).epochApplied, 3);
    third.link.close('shutdown', 'done');
  }));

test("a rebuild hands the replica the primary's epoch history at its base, and the replica keeps it across a restart", () =>
  withReplica(async (f) => {
    const epoch = f.source.epoch;
    const cp = f.source.checkpointState();
    const history = [{ epoch: 2, lsn: 40 }, { epoch: 5, lsn: 90 }];
    const link = await connect(f.receiver);
    link.link.send(hello(f.source, { lsnHead: 100 }));
    await until(() => link.frames.some((x) => x.type === 'hello'));
    link.link.send({
      type: 'rebuild_start',
      epoch,
      sessionId: 9001,
      lsnBase: 100,
      lsnTarget: 100,
      applyChecksumBase: cp.applyChecksum,
      sizeBytes: cp.state.sizeBytes,
      features: cp.state.features,
      durabilityCode: durabilityCode(cp.state.durability),
      chunkBlocks: 256,
      chunkFrom: 0,
      epochStarts: history,
    });
    await until(() => link.frames.some((x) => x.type === 'session_ack'));
    assert.equal((link.frames.find((x) => x.type === 'session_ack') as SessionAckFrame).phase, 'accepted');
    assert.deepEqual(f.replica.epochStarts, history);
    assert.deepEqual(f.replica.status().epochStarts, history);
    link.link.close('shutdown', 'done');
    await link.closed;
    // The superblock took it with the rebuild's base.
    const dir = f.replica.dir;
    await f.receiver.close();
    await f.replica.close();
    const again = await Volume.open(dir, { role: 'replica', flushIdleMs: 0 });
    try {
      assert.deepEqual(again.epochStarts, history);
    } finally {
      await again.close();
    }
  }));
