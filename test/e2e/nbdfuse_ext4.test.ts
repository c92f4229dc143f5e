// A filesystem on the volume: nbdfuse presents the export as a file (four
// connections, 1 KiB writes that are not block-aligned, a large TRIM from
// mkfs), mkfs.ext4 formats it, a loop device mounts it, a tree of generated
// files is copied in and synced, `fsck.ext4 -n -f` finds it clean, a remount
// reads every file back byte for byte, and once the server has stopped, the
// volume exported offline is still a clean filesystem.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';

import { describeRun, runProgram } from '../support/nbd_server_process';
import {
  KiB, MiB, type Scope, assertFilesEqual, mustRun, mustRunCli, servedVolume, skipUnlessTools, startNbdfuse, stopCleanly, testSeed,
  whyFuseIsImpossible, whyLoopIsImpossible, withScope, writeSeededFile,
} from './harness';

const VOLUME_BYTES = 64 * MiB;

// File sizes around block and page edges, and a few larger ones (about 4.5 MiB in all).
const FILES: [string, number][] = [
  ['empty', 0],
  ['one-byte', 1],
  ['a/thousand', 1000],
  ['a/page-minus-one', 4095],
  ['a/page', 4096],
  ['a/b/page-plus-one', 4097],
  ['a/b/odd-64k', 64 * KiB + 7],
  ['a/b/c/three-hundred-k', 300_000],
  ['a/b/c/d/one-mib', MiB],
  ['e/two-and-a-half-mib', 2.5 * MiB],
  ['e/f/small', 513],
];

function makeTree(root: string, seed: number): void {
  FILES.forEach(([name, sizeBytes], i) => {
    const file = path.join(root, name);
    fs.mkdirSync(path.dirname(file), { recursive: true });
    writeSeededFile(file, sizeBytes, seed * 100 + i);
  });
}

function listTree(root: string): string[] {
  const out: string[] = [];
  const walk = (rel: string): void => {
    for (const entry of fs.readdirSync(path.join(root, rel), { withFileTypes: true })) {
      const child = path.join(rel, entry.name);
      if (entry.isDirectory()) walk(child);
      else out.push(child);
    }
  };
  walk('');
  return out.sort();
}

async function attachLoop(scope: Scope, file: string): Promise<{ device: string; detach: () => Promise<void> }> {
  const device = (await mustRun('losetup', ['--find', '--show', file])).stdout.trim();
  assert.match(device, /^\/dev\/loop\d+$/);
  let attached = true;
  const detach = async (): Promise<void> => {
    if (!attached) return;
    attached = false;
    await mustRun('losetup', ['-d', device]);
  };
  scope.defer(`detach ${device}`, detach);
  return { device, detach };
}

async function mountScoped(scope: Scope, device: string, dir: string): Promise<() => Promise<void>> {
  await mustRun('mount', ['-t', 'ext4', device, dir]);
  let mounted = true;
  const umount = async (): Promise<void> => {
    if (!mounted) return;
    mounted = false;
    const r = await runProgram('umount', [dir]);
    if (r.code !== 0) {
      await runProgram('umount', ['-l', dir]);
      assert.fail(describeRun(`umount ${dir}`, r));
    }
  };
  scope.defer(`umount ${dir}`, umount);
  return umount;
}

test('nbdfuse + mkfs.ext4 + loop mount: files copied in read back equal, fsck clean, the offline export is clean too', (t) =>
  withScope(async (scope) => {
    if (skipUnlessTools(t, 'nbdfuse', 'fusermount3', 'mkfs.ext4', 'fsck.ext4', 'losetup', 'mount', 'umount', 'sync')) return;
    const impossible = whyFuseIsImpossible() ?? whyLoopIsImpossible();
    if (impossible !== undefined) {
      t.skip(impossible);
      return;
    }
    const v = await servedVolume(scope, { sizeBytes: VOLUME_BYTES });
    const fuseDir = path.join(v.dir, 'fuse');
    const mnt = path.join(v.dir, 'mnt');
    const src = path.join(v.dir, 'src');
    fs.mkdirSync(fuseDir);
    fs.mkdirSync(mnt);
    makeTree(src, testSeed(t));

    const unmountFuse = await startNbdfuse(scope, fuseDir, path.join(v.dir, 'nbdfuse.pid'), [v.server.uri]);
    const devFile = path.join(fuseDir, 'nbd');
    assert.equal(fs.statSync(devFile).size, VOLUME_BYTES);
    await mustRun('mkfs.ext4', ['-F', '-q', devFile]);
    const loop = await attachLoop(scope, devFile);

    let umount = await mountScoped(scope, loop.device, mnt);
    fs.cpSync(src, path.join(mnt, 'data'), { recursive: true });
    await mustRun('sync', []);
    await umount();

    const fsck = await runProgram('fsck.ext4', ['-n', '-f', loop.device]);
    assert.equal(fsck.code, 0, describeRun('fsck.ext4 -n -f after copy', fsck));

    umount = await mountScoped(scope, loop.device, mnt);
    const copied = path.join(mnt, 'data');
    assert.deepEqual(listTree(copied), listTree(src));
    for (const name of listTree(src)) assertFilesEqual(path.join(copied, name), path.join(src, name), name);
    await umount();
    await loop.detach();
    await unmountFuse();

    await stopCleanly(v.server);
    const image = path.join(v.dir, 'export.raw');
    await mustRunCli(['export', v.volumeDir, image]);
    const fsckImage = await runProgram('fsck.ext4', ['-n', '-f', image]);
    assert.equal(fsckImage.code, 0, describeRun('fsck.ext4 -n -f of the exported image', fsckImage));
  }));
