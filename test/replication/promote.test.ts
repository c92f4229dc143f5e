// Promotion through the library, the way an embedding storage node process
// (or a coordinator) does it: two StorageNodes in this process, a primary
// feeding a replica over loopback under sync_all; the primary goes away and
// the replica is promoted to epoch 2. It keeps everything that was
// acknowledged, opens its epoch with a barrier, takes writes, and the same
// assignment delivered twice is a no-op while a stale one is refused.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as path from 'node:path';

import pino from 'pino';

import { Volume } from '../../lib/engine/volume';
import { StorageNode } from '../../lib/node/storage_node';
import type { ReplicaReplicationStatus } from '../../lib/replication/replica';
import { NbdSession } from '../support/cluster';
import { tempDir } from '../support/tmp';

const MiB = 1 << 20;
const silent = pino({ level: 'silent' });

function block(tag: number): Buffer {
  return Buffer.alloc(4096, tag);
}

test('a replica promoted to epoch 2 keeps every acknowledged write, opens its epoch and takes writes; promotion is idempotent', async () => {
  const { dir, cleanup } = tempDir('promote');
  const pDir = path.join(dir, 'p');
  const rDir = path.join(dir, 'r');
  await (await Volume.create(pDir, { sizeBytes: 16 * MiB })).close();
  await (await Volume.create(rDir, { sizeBytes: 16 * MiB })).close();
  const a = new StorageNode({ nodeId: 'a', logger: silent });
  const b = new StorageNode({ nodeId: 'b', logger: silent });
  const promoted: [string, number][] = [];
  b.on('volume-promoted', (name: string, epoch: number) => promoted.push([name, epoch]));
  try {
    await b.openVolume(rDir, { exportName: 'vol', replication: { role: 'replica', listen: { host: '127.0.0.1', port: 0 } } });
    const listen = (b.status().volumes[0]!.replication as ReplicaReplicationStatus).listen;
    const port = Number(listen.split(':')[1]);
    await a.openVolume(pDir, { exportName: 'vol', replication: { role: 'primary', replicas: [{ host: '127.0.0.1', port }], durability: 'sync_all' } });
    await a.listenNbd({ path: path.join(dir, 'a.sock') });
    const session = await NbdSession.open({ path: path.join(dir, 'a.sock') });
    const replies = await Promise.all(Array.from({ length: 32 }, (_, i) => session.write(i * 4096, block(i + 1))));
    assert.ok(replies.every((r) => r.error === 0));
    assert.equal((await session.flush()).error, 0);
    session.close();
    // Acknowledged under sync_all: the replica has all of it.
    assert.ok(b.volume('vol')!.lsnReceived >= a.volume('vol')!.lsnHead);
    await a.close();

    await assert.rejects(b.promote('vol', { epoch: 1 }), /above the replica's epoch 1/);
    const v = await b.promote('vol', { epoch: 2, durability: 'best_effort' });
    assert.deepEqual(promoted, [['vol', 2]]);
    const st = v.status();
    assert.equal(st.role, 'primary');
    assert.equal(st.epoch, 2);
    assert.equal(st.epochOpened, 2, 'the barrier of epoch 2 is applied');
    assert.equal(st.durability, 'best_effort');
    for (let i = 0; i < 32; i++) assert.deepEqual(await v.read(i * 4096, 4096), block(i + 1), `block ${i}`);

    assert.equal(await b.promote('vol', { epoch: 2 }), v, 'the same assignment again changes nothing');
    await assert.rejects(b.promote('vol', { epoch: 3 }), /already a primary, at epoch 2/);

    await b.listenNbd({ path: path.join(dir, 'b.sock') });
    const s2 = await NbdSession.open({ path: path.join(dir, 'b.sock') });
    assert.equal((await s2.write(40 * 4096, block(77))).error, 0);
    s2.close();
    assert.deepEqual(await v.read(40 * 4096, 4096), block(77));
  } finally {
    await a.close();
    await b.close();
    cleanup();
  }
});
