// A storage node embedded the way a TypeScript storage process would: two
// volumes served over NBD on a Unix socket, real clients (nbdcopy, nbdinfo)
// against them, metrics and status over HTTP, a volume failure reported as an
// event and as NBD errors while the other export goes on; and the dirty
// bitmaps of replicas a volume no longer feeds dropped when it opens.
import { spawn, spawnSync } from 'node:child_process';
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';

import { StorageNode, Volume } from '../../lib/index';
import { OpKind, OpPurpose } from '../../lib/native/ring';
import { DirtyBitmap } from '../../lib/replication/dirty_bitmap';
import { tempDir } from '../support/tmp';

const MiB = 1 << 20;

function missingTool(): string | undefined {
  return ['nbdcopy', 'nbdinfo'].find((tool) => spawnSync(tool, ['--version']).error !== undefined);
}

// Asynchronous: the server runs in this process's event loop.
function run(tool: string, args: string[]): Promise<{ status: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(tool, args, { stdio: ['ignore', 'pipe', 'pipe'], timeout: 60_000 });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    child.on('close', (status) => resolve({ status, stdout, stderr }));
  });
}

test('an embedded storage node serves two volumes to real clients, with metrics, status and failure events', async (t) => {
  const missing = missingTool();
  if (missing !== undefined) return t.skip(`missing ${missing}`);
  const { dir, cleanup } = tempDir('node');
  const socket = path.join(dir, 'nbd.sock');
  for (const name of ['a', 'b']) await (await Volume.create(path.join(dir, name), { sizeBytes: 16 * MiB, walSegmentBytes: MiB })).close();
  const node = new StorageNode({ nodeId: 'test-node' });
  const events: string[] = [];
  node.on('volume-opened', (name: string) => events.push(`opened ${name}`));
  node.on('volume-failed', (name: string, reason: string) => events.push(`failed ${name}: ${reason}`));
  node.on('volume-closed', (name: string) => events.push(`closed ${name}`));
  try {
    await node.openVolume(path.join(dir, 'a'));
    await node.openVolume(path.join(dir, 'b'), { exportName: 'bee', description: 'the second volume' });
    await assert.rejects(node.openVolume(path.join(dir, 'a'), { exportName: 'again' }), { code: 'ERR_LOCKED' });
    await node.listenNbd({ path: socket });
    const metrics = await node.listenMetrics({ host: '127.0.0.1', port: 0 });

    const image = path.join(dir, 'image.raw');
    fs.writeFileSync(image, crypto.randomBytes(8 * MiB));
    const copy = await run('nbdcopy', ['--flush', image, `nbd+unix:///a?socket=${socket}`]);
    assert.equal(copy.status, 0, copy.stderr);
    assert.ok((await node.volume('a')!.read(0, 8 * MiB)).equals(fs.readFileSync(image)), 'the embedding process reads what the client wrote');

    const list = await run('nbdinfo', ['--list', '--json', `nbd+unix:///?socket=${socket}`]);
    assert.equal(list.status, 0, list.stderr);
    const exports = (JSON.parse(list.stdout) as { exports: { 'export-name': string; description?: string }[] }).exports;
    assert.deepEqual(exports.map((e) => e['export-name']).sort(), ['a', 'bee']);
    assert.equal(exports.find((e) => e['export-name'] === 'bee')!.description, 'the second volume');

    const text = await (await fetch(`http://127.0.0.1:${metrics.port}/metrics`)).text();
    const writes = /blockwal_nbd_requests_total\{command="write",result="ok"\} (\d+)/.exec(text);
    assert.ok(writes !== null && Number(writes[1]) > 0, 'write requests counted');
    assert.match(text, /blockwal_nbd_bytes_total\{direction="write"\} 8388608/);
    const observed = /blockwal_nbd_request_seconds_count\{command="write"\} (\d+)/.exec(text);
    assert.equal(observed?.[1], writes[1], 'every write request is in the latency histogram');
    const infBucket = /blockwal_nbd_request_seconds_bucket\{command="write",le="\+Inf"\} (\d+)/.exec(text);
    assert.equal(infBucket?.[1], writes[1]);
    assert.match(text, /blockwal_volume_lsn_head\{export="a"\} [1-9]/);
    assert.match(text, /blockwal_volume_lsn_head\{export="bee"\} 0/);
    const status = (await (await fetch(`http://127.0.0.1:${metrics.port}/status`)).json()) as { nodeId: string; volumes: { exportName: string }[] };
    assert.equal(status.nodeId, 'test-node');
    assert.deepEqual(status.volumes.map((v) => v.exportName), ['a', 'bee']);

    // An I/O error on a's WAL: the node says so, a's writes fail over NBD, b goes on.
    node.volume('a')!.ring.injectFault({ kind: OpKind.write, purpose: OpPurpose.walGroup, errno: 5 });
    const failed = await run('nbdcopy', ['--flush', image, `nbd+unix:///a?socket=${socket}`]);
    assert.notEqual(failed.status, 0, 'a write to the failed volume is refused');
    assert.ok(events.some((e) => /^failed a: /.test(e)), events.join('; '));
    assert.equal(node.status().volumes[0]!.failure !== undefined, true);
    const other = await run('nbdcopy', ['--flush', image, `nbd+unix:///bee?socket=${socket}`]);
    assert.equal(other.status, 0, other.stderr);
    const readA = await run('nbdcopy', [`nbd+unix:///a?socket=${socket}`, path.join(dir, 'a.raw')]);
    assert.equal(readA.status, 0, `reads of the failed volume go on: ${readA.stderr}`);
    assert.ok(fs.readFileSync(path.join(dir, 'a.raw')).subarray(0, 8 * MiB).equals(fs.readFileSync(image)));
  } finally {
    await node.close();
    cleanup();
  }
  assert.deepEqual(events.filter((e) => !e.startsWith('failed')), ['opened a', 'opened bee', 'closed a', 'closed bee']);
});

test('opening a volume drops the dirty bitmaps of replicas it no longer feeds, and only those', async () => {
  const { dir, cleanup } = tempDir('node-dirty');
  const vol = path.join(dir, 'v');
  await (await Volume.create(vol, { sizeBytes: 16 * MiB, walSegmentBytes: MiB })).close();
  const kept = 'replica-127.0.0.1_1.dirty';
  const stale = ['replica-127.0.0.1_2.dirty', 'replica-10.0.0.9_7000.dirty'];
  const unrelated = ['replica-notes.txt', 'dirty'];
  for (const name of [kept, ...stale, ...unrelated]) fs.writeFileSync(path.join(vol, name), 'x');
  const node = new StorageNode({ nodeId: 'dirty-node' });
  try {
    // A primary that feeds 127.0.0.1:1 (nothing listens there: it keeps
    // reconnecting, which does not matter here).
    await node.openVolume(vol, { replication: { role: 'primary', replicas: [{ host: '127.0.0.1', port: 1 }] } });
    const left = fs.readdirSync(vol);
    for (const name of stale) assert.ok(!left.includes(name), `${name} is gone`);
    for (const name of unrelated) assert.ok(left.includes(name), `${name} is not a dirty bitmap and stays`);
    // The configured replica's file is left to the primary, which drops a
    // bitmap it cannot trust (this one is not a bitmap at all) itself.
    await node.close();
    const node2 = new StorageNode({ nodeId: 'dirty-node-2' });
    try {
      await node2.openVolume(vol);
      assert.ok(!fs.readdirSync(vol).includes(kept), 'a primary with no replicas keeps no dirty bitmap');
    } finally {
      await node2.close();
    }
  } finally {
    await node.close().catch(() => undefined);
    cleanup();
  }
});

test('DirtyBitmap.dropStale keeps the files of the replicas named and deletes the other bitmaps', () => {
  const { dir, cleanup } = tempDir('dirty-stale');
  try {
    const names = ['replica-127.0.0.1_1.dirty', 'replica-127.0.0.1_2.dirty', 'replica-host.example_3.dirty', 'other.dirty'];
    for (const name of names) fs.writeFileSync(path.join(dir, name), 'x');
    const dropped = DirtyBitmap.dropStale(dir, ['127.0.0.1:1', 'host.example:3']);
    assert.deepEqual(dropped, ['replica-127.0.0.1_2.dirty']);
    assert.deepEqual(fs.readdirSync(dir).sort(), ['other.dirty', 'replica-127.0.0.1_1.dirty', 'replica-host.example_3.dirty']);
  } finally {
    cleanup();
  }
});
