// A rebuild the primary resumes on a replica that kept its session (the link
// was cut, the replica process lived on): the primary resumes it with its
// head as the new target. The replica must not report the session complete
// at the target the session started with: the primary refuses that, cancels
// the session and marks the replica "needs rebuild"; a full WAL may then
// release what it kept for the replica. In one process: a ReplicaReplication fed by a hand-driven link.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';

import { type RebuildProgress, xxh3Digest } from '../../lib/protocol/rebuild_session';
import { BLOCK_BYTES, type Frame, type RebuildStartFrame, type SessionAckFrame } from '../../lib/replication/frames';
import { durabilityCode } from '../../lib/statemachine/control';
import { connect, hello, until, VOLUME, withReplica } from '../support/replica_link';

const CHUNK_BLOCKS = 256;
const SESSION_ID = 7001;

function sessionAcks(frames: Frame[]): SessionAckFrame[] {
  return frames.filter((x): x is SessionAckFrame => x.type === 'session_ack');
}

test('a resumed rebuild completes at the target the primary resumed it with, not at the one it started with', () =>
  withReplica(async (f) => {
    for (let i = 0; i < 6; i++) await f.source.write(i * BLOCK_BYTES, Buffer.alloc(BLOCK_BYTES, 1 + i));
    const records = f.shipped.map((r) => ({ lsn: r.lsn, bytes: r.bytes }));
    assert.equal(records.length, 6);
    const epoch = f.source.epoch;
    // The source's checkpoint is LSN 0 (a fresh volume): its base image is zeros.
    const cp = f.source.checkpointState();
    assert.equal(cp.lsnCheckpoint, 0);
    const chunksTotal = VOLUME.sizeBytes / BLOCK_BYTES / CHUNK_BLOCKS;
    const start = (lsnTarget: number, chunkFrom: number): RebuildStartFrame => ({
      type: 'rebuild_start',
      epoch,
      sessionId: SESSION_ID,
      lsnBase: 0,
      lsnTarget,
      applyChecksumBase: cp.applyChecksum,
      sizeBytes: cp.state.sizeBytes,
      features: cp.state.features,
      durabilityCode: durabilityCode(cp.state.durability),
      chunkBlocks: CHUNK_BLOCKS,
      chunkFrom,
    });
    const zeroDigest = xxh3Digest(Buffer.alloc(CHUNK_BLOCKS * BLOCK_BYTES));

    // First link: the session starts with target 2 and its whole base lane is written.
    const first = await connect(f.receiver);
    first.link.send(hello(f.source, { lsnHead: 2 }));
    await until(() => first.frames.some((x) => x.type === 'hello'));
    first.link.send(start(2, 0));
    await until(() => sessionAcks(first.frames).some((a) => a.phase === 'accepted'));
    for (let index = 0; index < chunksTotal; index++) {
      first.link.send({ type: 'base_chunk', epoch, sessionId: SESSION_ID, index, startBlock: index * CHUNK_BLOCKS, blocks: CHUNK_BLOCKS, lsnCheckpoint: 0, digest: zeroDigest, zero: true, data: undefined });
    }
    await until(() => f.receiver.status().rebuild?.chunksDone === chunksTotal);
    first.link.close('shutdown', 'the link is cut');
    await first.closed;

    // Second link: the primary resumes the same session, its head (6) the target now.
    const second = await connect(f.receiver);
    second.link.send(hello(f.source));
    await until(() => second.frames.some((x) => x.type === 'hello'));
    second.link.send(start(6, chunksTotal));
    await until(() => sessionAcks(second.frames).some((a) => a.phase === 'accepted'));
    assert.equal(f.receiver.status().rebuild?.lsnTarget, 6, 'the session took the target it was resumed with');
    assert.equal((f.replica.rebuildSaved?.progress as RebuildProgress | null | undefined)?.lsnTarget, 6, 'and persisted it (a restart resumes with it)');

    // Records 1..3 committed: past the first target, short of the second.
    second.link.send({ type: 'wal_records', epoch, records: records.slice(0, 3), lsnCommit: 3 });
    await until(() => f.replica.lsnApplied === 3);
    // The completion check runs on the turn after an apply (setImmediate);
    // a SYNC's answer (after a flush) comes later.
    second.link.send({ type: 'sync', epoch, lsnSync: 3 });
    await until(() => second.frames.some((x) => x.type === 'ack' && x.lsnDurable >= 3));
    const running = f.receiver.status().rebuild;
    assert.ok(running !== undefined && running.phase !== 'completed', `the session still runs below the resumed target: ${JSON.stringify(running)}`);
    assert.ok(!sessionAcks(second.frames).some((a) => a.phase === 'completed'), `no completion below the resumed target: ${JSON.stringify(sessionAcks(second.frames))}`);

    second.link.send({ type: 'wal_records', epoch, records: records.slice(3), lsnCommit: 6 });
    await until(() => sessionAcks(second.frames).some((a) => a.phase === 'completed'));
    const completed = sessionAcks(second.frames).find((a) => a.phase === 'completed')!;
    assert.equal(completed.lsnAchieved, 6);
    assert.equal(completed.digestsMatch, true);
    assert.equal(f.replica.applyChecksum, f.source.applyChecksum);
    assert.deepEqual(await f.replica.read(0, 6 * BLOCK_BYTES), await f.source.read(0, 6 * BLOCK_BYTES));
    second.link.close('shutdown', 'done');
  }));
