// A replica stopped (SIGTERM, or its node closing the volume) while a rebuild
// runs: the replication side closes first, then the volume, whose close
// checkpoints once more. That checkpoint must work (it used to reach the
// rebuild bitmap the session had just closed, and failed the volume), and
// the volume must come back with its unfinished session and every mark.
// In one process: a ReplicaReplication fed by a hand-driven link.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';

import { Volume } from '../../lib/engine/volume';
import { BLOCK_BYTES, type Frame, type RebuildStartFrame, type SessionAckFrame } from '../../lib/replication/frames';
import { durabilityCode } from '../../lib/statemachine/control';
import { connect, type Fixture, hello, until, withReplica } from '../support/replica_link';

const CHUNK_BLOCKS = 256;
const SESSION_ID = 7101;

function sessionAcks(frames: Frame[]): SessionAckFrame[] {
  return frames.filter((x): x is SessionAckFrame => x.type === 'session_ack');
}

// A session (no base chunk written yet) with records 1..4 received and 1..2
// committed: applied and marked (blocks 0 and 1).
async function runningSession(f: Fixture): Promise<void> {
  for (let i = 0; i < 4; i++) await f.source.write(i * BLOCK_BYTES, Buffer.alloc(BLOCK_BYTES, 1 + i));
  const records = f.shipped.map((r) => ({ lsn: r.lsn, bytes: r.bytes }));
  const epoch = f.source.epoch;
  const cp = f.source.checkpointState();
  assert.equal(cp.lsnCheckpoint, 0);
  const start: RebuildStartFrame = {
    type: 'rebuild_start',
    epoch,
    sessionId: SESSION_ID,
    lsnBase: 0,
    lsnTarget: 4,
    applyChecksumBase: cp.applyChecksum,
    sizeBytes: cp.state.sizeBytes,
    features: cp.state.features,
    durabilityCode: durabilityCode(cp.state.durability),
    chunkBlocks: CHUNK_BLOCKS,
    chunkFrom: 0,
  };
  const link = await connect(f.receiver);
  link.link.send(hello(f.source));
  await until(() => link.frames.some((x) => x.type === 'hello'));
  link.link.send(start);
  await until(() => sessionAcks(link.frames).some((a) => a.phase === 'accepted'));
  link.link.send({ type: 'wal_records', epoch, records, lsnCommit: 2 });
  await until(() => f.replica.lsnApplied === 2 && f.replica.lsnReceived === 4);
  assert.equal(f.receiver.status().rebuild?.phase, 'running');
}

test('a replica closed mid-rebuild checkpoints as its volume closes and reopens with the session and its marks', () =>
  withReplica(async (f) => {
    await runningSession(f);
    await f.receiver.close();
    await f.replica.checkpoint(); // reached the closed bitmap and failed before
    await f.replica.close();

    const v = await Volume.open(f.replica.dir, { role: 'replica', flushIdleMs: 0 });
    try {
      assert.equal(v.lsnCheckpoint, 2, 'the close checkpointed the applied records');
      assert.equal(v.rebuildSaved?.sessionId, SESSION_ID, 'the unfinished session is kept');
      const bitmap = v.openRebuildBitmap();
      assert.ok(bitmap !== undefined, 'its bitmap was closed clean');
      try {
        assert.deepEqual([0, 1, 2, 3].map((b) => bitmap.get(b)), [true, true, false, false], 'blocks of the applied records are marked, no others');
      } finally {
        bitmap.close();
      }
    } finally {
      await v.close();
    }
  }));

test('a record applied after the rebuild session closed cannot be checkpointed: its blocks are not marked', () =>
  withReplica(async (f) => {
    await runningSession(f);
    await f.receiver.close();
    f.replica.commit(4); // applies 3..4 with no session to mark them
    assert.equal(f.replica.lsnApplied, 4);
    await assert.rejects(f.replica.checkpoint(), /record 3 was applied after the rebuild session closed: its blocks are not marked/);
  }));
