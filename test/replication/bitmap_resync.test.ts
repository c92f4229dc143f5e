// Bitmap resync between real `blockwal serve` processes on loopback. A
// replica is killed (SIGKILL); the primary starts a dirty bitmap for it and
// marks every block written after the replica's applied LSN. Writes then
// overwrite one small region until the WAL the primary may keep for the
// replica (a 2 MiB retention budget, a 64 MiB WAL written past) and its
// in-memory backlog (32 MiB) no
// longer hold the gap, so a catch-up is impossible. When the replica comes
// back the primary decides bitmap_resync: only the chunks the bitmap marks
// are copied (the others go as unchanged, without data), and every node
// ends with the same apply checksum and `blockwal checksum`.
// A clean primary restart (SIGTERM) keeps the bitmap; a SIGKILL drops it
// (it may miss marks), and the replica is then rebuilt in full.
// Waiting is by polling status with a generous deadline, never by time.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';

import { type Cluster, type ClusterNode, MiB, until, withCluster } from '../support/cluster';
import { assertSameApplied, assertSameChecksums } from '../support/cluster_fio';
import { checkpointedPast, writeThrough } from '../support/wal_workload';

const SIZE_BYTES = 64 * MiB;
const OPTIONS = {
  sizeBytes: SIZE_BYTES,
  replicas: 1,
  durability: 'sync_all' as const,
  ackTimeoutMs: 500,
  createExtra: ['--wal-segment-size', '1M', '--wal-retention', '2M'],
  primaryExtra: ['--repl-backlog', '32M'],
};
// The region overwritten while the replica is away: 2 MiB from 40 MiB, i.e.
// 512 blocks, in 2 of the volume's 64 chunks of 1 MiB.
const REGION_OFFSET = 40 * MiB;
const REGION_BYTES = 2 * MiB;
const REGION_BLOCKS = REGION_BYTES / 4096;
const CHUNKS_TOTAL = SIZE_BYTES / MiB;
// One 128 KiB write at offset 0 after the replica's checkpoint (chunk 0).
const TAIL_BLOCKS = 32;
// Chunks with marks: 0 and the region's two.
const MARKED_CHUNKS = 1 + REGION_BYTES / MiB;

// Fills the volume; once the replica has checkpointed all of it, one more
// write (its ACK tells the primary where that checkpoint is); kills the
// replica and overwrites the region until the WAL tail passes the replica.
// Returns the replica's position.
async function replicaAwayPastTheWal(t: { diagnostic(s: string): void }, cluster: Cluster): Promise<number> {
  const { primary } = cluster;
  const replica = cluster.replicas[0]!;
  await cluster.waitCurrent();
  await writeThrough(primary, 0, 48 * MiB, 1);
  await cluster.waitApplied();
  const head = (await primary.volumeStatus()).lsnHead;
  await until('the replica checkpointed everything', async () => (await replica.volumeStatus()).checkpointLsn >= head);
  await writeThrough(primary, 0, TAIL_BLOCKS * 4096, 2);
  const current = await cluster.waitCurrent();
  const position = current.replicas[0]!.lsnReceived;
  await cluster.waitApplied();
  assert.equal((await replica.kill('SIGKILL')).signal, 'SIGKILL');
  await until('the primary sees its replica gone', async () => (await primary.primaryStatus()).replicas[0]!.state !== 'streaming');
  // More than the whole WAL (64 segments of 1 MiB), so its old segments are reused.
  for (let pass = 0; pass < 40; pass++) await writeThrough(primary, REGION_OFFSET, REGION_BYTES, 10 + pass);
  const after = await checkpointedPast(primary, position, 'the primary checkpointed past the away replica');
  t.diagnostic(`replica away at LSN ${position}; checkpoint ${after.checkpointLsn}, WAL tail ${after.walTail}`);
  assert.ok(after.walTail > position, `the WAL no longer holds the gap: tail ${after.walTail}, replica at ${position}`);
  return position;
}

async function dirtyOf(primary: ClusterNode): Promise<{ lsnFrom: number; dirtyBlocks: number } | undefined> {
  return (await primary.primaryStatus()).replicas[0]!.dirtyBitmap;
}

test('a replica the WAL no longer covers is resynced from the dirty bitmap: only the marked chunks are copied', { timeout: 120_000 }, async (t) => {
  await withCluster(OPTIONS, async (cluster) => {
    const { primary } = cluster;
    const replica = cluster.replicas[0]!;
    const position = await replicaAwayPastTheWal(t, cluster);
    const dirty = await dirtyOf(primary);
    t.diagnostic(`dirty bitmap ${JSON.stringify(dirty)}`);
    assert.ok(dirty !== undefined, 'a dirty bitmap is kept for the away replica');
    assert.equal(dirty.dirtyBlocks, TAIL_BLOCKS + REGION_BLOCKS, 'exactly the blocks written after the replica\'s checkpoint are marked');
    assert.ok(dirty.lsnFrom <= position, `the bitmap starts at or before the replica's position (${dirty.lsnFrom} ≤ ${position})`);

    await replica.restart();
    const p = await cluster.waitCurrent(primary, 'the resynced replica streaming, lag 0, in the ack set');
    const peer = p.replicas[0]!;
    t.diagnostic(`decision: ${JSON.stringify(peer.decision)}`);
    assert.equal(peer.decision?.kind, 'bitmap_resync', peer.decision?.reason);
    assert.ok(peer.decision.costBytes < 8 * MiB, `the resync moves about the marked blocks, not the volume (${peer.decision.costBytes} bytes)`);
    assert.equal(peer.dirtyBitmap, undefined, 'the bitmap goes once the replica is current');
    const log = primary.stderr;
    const sent = /"resync":true,"chunks":(\d+),"unchanged":(\d+),"bytes":(\d+)[^\n]*rebuild: base lane sent/.exec(log);
    assert.ok(sent !== null, 'the primary logged the resync base lane');
    const [chunks, unchanged, bytes] = [Number(sent[1]), Number(sent[2]), Number(sent[3])];
    t.diagnostic(`base lane: ${chunks} chunks, ${unchanged} unchanged, ${bytes} bytes`);
    assert.equal(chunks, CHUNKS_TOTAL);
    assert.equal(chunks - unchanged, MARKED_CHUNKS, 'only the chunks with marked blocks carried data');
    assert.equal(bytes, MARKED_CHUNKS * MiB);

    await assertSameApplied(cluster, position);
    await cluster.stopAll();
    const sums = await assertSameChecksums(cluster);
    t.diagnostic(`checksums ${JSON.stringify(sums)}`);
  });
});

test('the dirty bitmap survives a clean primary restart; after a SIGKILL it is dropped and the replica is rebuilt', { timeout: 180_000 }, async (t) => {
  await withCluster(OPTIONS, async (cluster) => {
    const { primary } = cluster;
    const replica = cluster.replicas[0]!;
    await replicaAwayPastTheWal(t, cluster);

    await primary.stop();
    await primary.restart();
    const kept = await dirtyOf(primary);
    t.diagnostic(`after SIGTERM and restart: ${JSON.stringify(kept)}`);
    assert.equal(kept?.dirtyBlocks, TAIL_BLOCKS + REGION_BLOCKS, 'the clean restart kept the bitmap');
    await writeThrough(primary, REGION_OFFSET + REGION_BYTES, MiB, 20); // marked after the restart too
    assert.equal((await dirtyOf(primary))?.dirtyBlocks, TAIL_BLOCKS + REGION_BLOCKS + 256);

    await replica.restart();
    let p = await cluster.waitCurrent(primary, 'the replica resynced after the primary restart');
    assert.equal(p.replicas[0]!.decision?.kind, 'bitmap_resync', p.replicas[0]!.decision?.reason);
    await cluster.waitApplied();

    // Away again; this time the primary is killed: its bitmap may lack marks.
    assert.equal((await replica.kill('SIGKILL')).signal, 'SIGKILL');
    await until('the primary sees its replica gone', async () => (await primary.primaryStatus()).replicas[0]!.state !== 'streaming');
    for (let pass = 0; pass < 40; pass++) await writeThrough(primary, 0, REGION_BYTES, 100 + pass);
    assert.ok((await dirtyOf(primary)) !== undefined, 'a new bitmap while the replica is away');
    assert.equal((await primary.kill('SIGKILL')).signal, 'SIGKILL');
    await primary.restart();
    assert.equal(await dirtyOf(primary), undefined, 'a bitmap not closed cleanly is not trusted');
    await replica.restart();
    p = await cluster.waitCurrent(primary, 'the replica rebuilt after the primary was killed');
    assert.equal(p.replicas[0]!.decision?.kind, 'rebuild', p.replicas[0]!.decision?.reason);
    await assertSameApplied(cluster, 1);
    await cluster.stopAll();
    const sums = await assertSameChecksums(cluster);
    t.diagnostic(`checksums ${JSON.stringify(sums)}`);
  });
});
