// The engine's replication hooks, in one process: a primary volume hands out
// each record encoded, in LSN order; a replica volume appends them (verified,
// next LSN only), applies them only up to a commit LSN, keeps unapplied ones
// unapplied across a restart, drops an uncommitted suffix on request, and
// both chain the same apply checksum. Client writes on a replica are refused.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';

import { type ShippedRecord, Volume } from '../../lib/engine/volume';
import { encodeRecord } from '../../lib/native/wal_format';
import { tempDir } from '../support/tmp';

const MiB = 1 << 20;
const SIZE = 8 * MiB;
const VOLUME = { sizeBytes: SIZE, walSegmentBytes: MiB, walSegmentsMax: 16, flushIdleMs: 0 } as const;

function block(fill: number, bytes = 4096): Buffer {
  return Buffer.alloc(bytes, fill);
}

async function pair(
  fn: (ctx: { primary: Volume; replicaDir: string; shipped: ShippedRecord[]; openReplica: () => Promise<Volume> }) => Promise<void>,
): Promise<void> {
  const { dir, cleanup } = tempDir('repl-vol');
  const shipped: ShippedRecord[] = [];
  const primary = await Volume.create(path.join(dir, 'p'), { ...VOLUME, onRecord: (r) => shipped.push(r) });
  const replicaDir = path.join(dir, 'r');
  await (await Volume.create(replicaDir, VOLUME)).close();
  const opened: Volume[] = [];
  const openReplica = async (): Promise<Volume> => {
    const v = await Volume.open(replicaDir, { role: 'replica', walSegmentsMax: 16, flushIdleMs: 0 });
    opened.push(v);
    return v;
  };
  try {
    await fn({ primary, replicaDir, shipped, openReplica });
  } finally {
    await primary.close();
    for (const v of opened) await v.close();
    cleanup();
  }
}

// A crash image of a replica (its files copied while it runs: WAL durable,
// no checkpoint since): fn gets its directory, removed afterwards.
async function withCrashImage(replicaDir: string, fn: (dir: string) => Promise<void>): Promise<void> {
  const { dir, cleanup } = tempDir('repl-crash');
  try {
    fs.cpSync(replicaDir, path.join(dir, 'r'), { recursive: true, filter: (src) => !src.endsWith('control.sock') });
    fs.rmSync(path.join(dir, 'r', 'lock'), { force: true });
    await fn(path.join(dir, 'r'));
  } finally {
    cleanup();
  }
}

test('records ship in LSN order and the replica applies them only up to the commit LSN', () =>
  pair(async ({ primary, shipped, openReplica }) => {
    const replica = await openReplica();
    await replica.adoptIdentity(primary.uuid);
    const lsnA = await primary.write(0, block(1));
    const lsnB = await primary.write(4096, block(2, 8192));
    await primary.trim(0, 4096);
    const lsnC = await primary.write(100, Buffer.from('hello'));
    assert.deepEqual(
      shipped.map((r) => r.lsn),
      [1, 2, 3, 4],
    );
    assert.deepEqual([lsnA, lsnB, lsnC], [1, 2, 4]);

    for (const r of shipped) await replica.appendReceived(r.bytes);
    assert.equal(replica.lsnReceived, 4);
    assert.equal(replica.lsnApplied, 0);
    // Nothing applied yet: the replica reads what it had (zeros).
    assert.deepEqual(await replica.read(4096, 4096), block(0));

    replica.commit(2);
    assert.equal(replica.lsnApplied, 2);
    assert.deepEqual(await replica.read(0, 4096), block(1));
    assert.deepEqual(await replica.read(4096, 8192), block(2, 8192));

    replica.commit(10); // beyond what was received: applies what there is
    assert.equal(replica.lsnApplied, 4);
    assert.deepEqual(await replica.read(0, 4096 * 3), await primary.read(0, 4096 * 3));
    assert.equal(replica.applyChecksum, primary.applyChecksum);
    assert.equal(replica.status().applyChecksum, primary.status().applyChecksum);
  }));

test('a replica refuses records that do not verify, skip an LSN or lie beyond its size, and keeps what it had', () =>
  pair(async ({ primary, shipped, openReplica }) => {
    const replica = await openReplica();
    await primary.write(0, block(7));
    await primary.write(4096, block(8));
    const [first, second] = shipped;
    await assert.rejects(replica.appendReceived(second!.bytes), { code: 'ERR_REPL_RECORD', message: /received LSN 2, expected 1/ });
    const flipped = Buffer.from(first!.bytes);
    flipped[100]! ^= 0x01;
    await assert.rejects(replica.appendReceived(flipped), { code: 'ERR_REPL_RECORD', message: /does not verify/ });
    assert.equal(replica.lsnReceived, 0);
    await replica.appendReceived(first!.bytes);
    assert.equal(replica.lsnReceived, 1);
    assert.equal(replica.status().failure, undefined);
  }));

test('client writes on a replica are refused', () =>
  pair(async ({ openReplica }) => {
    const replica = await openReplica();
    await assert.rejects(replica.write(0, block(1)), { code: 'ERR_READ_ONLY' });
    await assert.rejects(replica.trim(0, 4096), { code: 'ERR_READ_ONLY' });
    await assert.rejects(replica.writeZeroes(0, 4096), { code: 'ERR_READ_ONLY' });
  }));

test('a restarted replica keeps received records unapplied until a commit covers them; checkpoints stop at the applied LSN', () =>
  pair(async ({ primary, shipped, openReplica }) => {
    let replica = await openReplica();
    for (let i = 0; i < 6; i++) await primary.write(i * 4096, block(10 + i));
    for (const r of shipped) await replica.appendReceived(r.bytes);
    replica.commit(3);
    await replica.flush();
    await replica.checkpoint();
    assert.equal(replica.status().checkpointLsn, 3);
    const chainAt3 = replica.applyChecksum;
    await replica.close();

    replica = await openReplica();
    assert.equal(replica.lsnReceived, 6);
    assert.equal(replica.lsnApplied, 3);
    assert.equal(replica.applyChecksum, chainAt3);
    assert.deepEqual(await replica.read(3 * 4096, 4096), block(0), 'LSN 4 is not applied after the restart');
    replica.commit(6);
    assert.deepEqual(await replica.read(0, 6 * 4096), await primary.read(0, 6 * 4096));
    assert.equal(replica.applyChecksum, primary.applyChecksum);
  }));

test('truncateUnapplied drops the uncommitted suffix, durably, and the next record is lsnApplied + 1', () =>
  pair(async ({ primary, shipped, openReplica }) => {
    let replica = await openReplica();
    for (let i = 0; i < 5; i++) await primary.write(i * 4096, block(20 + i));
    for (const r of shipped) await replica.appendReceived(r.bytes);
    replica.commit(2);
    assert.equal(replica.pendingEpoch, 1);
    assert.equal(await replica.truncateUnapplied(), 3);
    assert.equal(replica.lsnReceived, 2);
    assert.equal(replica.pendingEpoch, undefined);
    await assert.rejects(replica.appendReceived(shipped[4]!.bytes), { message: /received LSN 5, expected 3/ });
    await replica.close();

    // The drop survives a restart: the WAL holds nothing beyond LSN 2.
    replica = await openReplica();
    assert.equal(replica.lsnReceived, 2);
    assert.equal(replica.lsnApplied, 2);
    assert.deepEqual(await replica.read(2 * 4096, 4096), block(0));
    // Another history from LSN 3 on (what a new primary would send).
    const { dir, cleanup } = tempDir('repl-other');
    try {
      const other: ShippedRecord[] = [];
      const p2 = await Volume.create(path.join(dir, 'p2'), { ...VOLUME, onRecord: (r) => other.push(r) });
      for (let i = 0; i < 2; i++) await p2.write(i * 4096, block(20 + i));
      await p2.write(2 * 4096, block(99));
      for (const r of other.slice(2)) await replica.appendReceived(r.bytes);
      replica.commit(3);
      assert.deepEqual(await replica.read(0, 3 * 4096), await p2.read(0, 3 * 4096));
      assert.equal(replica.applyChecksum, p2.applyChecksum);
      await p2.close();
    } finally {
      cleanup();
    }
  }));

test('epochs only go up and are persisted; a pristine replica takes the primary identity, one holding data does not', () =>
  pair(async ({ primary, shipped, openReplica }) => {
    let replica = await openReplica();
    await replica.setEpoch(3);
    await assert.rejects(replica.setEpoch(2), RangeError);
    assert.ok(replica.pristine);
    await replica.adoptIdentity(primary.uuid);
    await primary.write(0, block(1));
    await replica.appendReceived(shipped[0]!.bytes);
    assert.equal(replica.pristine, false);
    await assert.rejects(replica.adoptIdentity('0'.repeat(32)), { code: 'ERR_WRONG_VOLUME' });
    await replica.close();
    replica = await openReplica();
    assert.equal(replica.epoch, 3);
    assert.equal(replica.uuid, primary.uuid);
  }));

test('control records: an online grow and a durability mode go through the same apply path on primary and replica, and survive a restart and a crash', () =>
  pair(async ({ primary, shipped, openReplica, replicaDir }) => {
    const replica = await openReplica();
    await replica.adoptIdentity(primary.uuid);
    await assert.rejects(primary.write(SIZE, block(5)), { code: 'ERR_OUT_OF_RANGE' });
    await assert.rejects(primary.appendControl({ type: 'resize', sizeBytes: SIZE / 2 }), { code: 'ERR_CONTROL_REFUSED', message: /only grow/ });
    await primary.appendControl({ type: 'resize', sizeBytes: 2 * SIZE });
    assert.equal(primary.sizeBytes, 2 * SIZE);
    await primary.write(SIZE + 4096, block(6));
    await primary.appendControl({ type: 'durability', mode: 'sync_quorum' });
    await primary.appendControl({ type: 'feature_enable', feature: 3 });
    assert.deepEqual(
      shipped.map((r) => r.lsn),
      [1, 2, 3, 4],
    );

    // The replica receives the write beyond its current size after the resize,
    // and grows only when the resize is committed.
    for (const r of shipped) await replica.appendReceived(r.bytes);
    assert.equal(replica.sizeBytes, SIZE);
    replica.commit(4);
    assert.equal(replica.sizeBytes, 2 * SIZE);
    assert.deepEqual(replica.replicatedState, primary.replicatedState);
    assert.deepEqual(replica.replicatedState, { epoch: 1, features: 8, sizeBytes: 2 * SIZE, durability: 'sync_quorum' });
    assert.deepEqual(await replica.read(SIZE + 4096, 4096), block(6));
    assert.equal(replica.applyChecksum, primary.applyChecksum);

    // A crash image of the replica (its files copied while it runs, WAL durable,
    // no checkpoint yet): replay re-applies the records.
    await replica.flush();
    await withCrashImage(replicaDir, async (dir) => {
      const crashed = await Volume.open(dir, { role: 'primary', flushIdleMs: 0 });
      try {
        assert.deepEqual(crashed.replicatedState, primary.replicatedState, 'replay as a promoted primary applies every control record');
        assert.deepEqual(await crashed.read(SIZE + 4096, 4096), block(6));
      } finally {
        await crashed.close();
      }
    });

    // A clean restart: the checkpoint carries the state in the superblock.
    await replica.close();
    const again = await openReplica();
    assert.equal(again.status().checkpointLsn, 4);
    assert.deepEqual(again.replicatedState, primary.replicatedState);
    assert.equal(again.status().durability, 'sync_quorum');
  }));

test('epoch history: barriers are noted with their LSNs when applied, on primary and replica alike, and survive a crash and a clean restart', () =>
  pair(async ({ primary, shipped, openReplica, replicaDir }) => {
    const replica = await openReplica();
    await replica.adoptIdentity(primary.uuid);
    assert.deepEqual(primary.epochStarts, [], 'a new volume knows its history: no epoch opened yet');
    await primary.write(0, block(1));
    await primary.setEpoch(2);
    await primary.appendControl({ type: 'epoch_barrier', epoch: 2 });
    await primary.write(4096, block(2));
    await primary.setEpoch(4);
    await primary.appendControl({ type: 'epoch_barrier', epoch: 4 });
    await primary.appendControl({ type: 'epoch_barrier', epoch: 4 }); // the same epoch again opens nothing
    const history = [{ epoch: 2, lsn: 2 }, { epoch: 4, lsn: 4 }];
    assert.deepEqual(primary.epochStarts, history);

    // Received is not applied: the replica notes a barrier when it applies it.
    for (const r of shipped) await replica.appendReceived(r.bytes);
    assert.deepEqual(replica.epochStarts, []);
    replica.commit(3);
    assert.deepEqual(replica.epochStarts, [{ epoch: 2, lsn: 2 }]);
    replica.commit(5);
    assert.deepEqual(replica.epochStarts, history);

    // A crash image (no checkpoint since the barriers): replay notes them again.
    await replica.flush();
    await withCrashImage(replicaDir, async (dir) => {
      const crashed = await Volume.open(dir, { role: 'primary', flushIdleMs: 0 });
      try {
        assert.equal(crashed.status().checkpointLsn, 0);
        assert.deepEqual(crashed.epochStarts, history, 'replay as a promoted primary');
      } finally {
        await crashed.close();
      }
      const reopened = await Volume.open(dir, { role: 'replica', flushIdleMs: 0 });
      try {
        assert.equal(reopened.status().checkpointLsn, 5);
        assert.deepEqual(reopened.epochStarts, history, 'the superblock holds them at the checkpoint');
      } finally {
        await reopened.close();
      }
    });
    await replica.close();
    const again = await openReplica();
    assert.deepEqual(again.epochStarts, history);
  }));

test('a received control record that does not decode is refused like any bad record', () =>
  pair(async ({ openReplica }) => {
    const replica = await openReplica();
    const bad = encodeRecord({ kind: 'control', epoch: 1, lsn: 1, lba: 0, lengthBlocks: 0 }, Buffer.alloc(16, 0xee));
    await assert.rejects(replica.appendReceived(bad), { code: 'ERR_REPL_RECORD', message: /LSN 1: control record: unknown version/ });
    assert.equal(replica.lsnReceived, 0);
  }));
