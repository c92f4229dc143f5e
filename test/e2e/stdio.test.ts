// Clients that start the server themselves. `blockwal serve DIR --nbd stdio`
// serves one connection on stdin/stdout: nbdfuse --command (libnbd's
// nbd_connect_command) drives it, and what is written through it is the
// volume's content once both have exited. The `[ CMD ]` form of nbdinfo,
// nbdcopy and nbdfuse is different: libnbd runs CMD with a listening socket
// on fd 3 (systemd socket activation, LISTEN_FDS/LISTEN_PID); `blockwal
// serve --help` promises `nbdinfo [ blockwal serve DIR --nbd stdio ]`.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';

import { CLI_JS } from '../support/nbd_server_process';
import { SERVER_NODE_OPTIONS } from '../../lib/cli/node_options';
import {
  MiB, createVolume, mustRun, mustRunCli, scopedTempDir, skipUnlessTools, startNbdfuse, testSeed, whyFuseIsImpossible, withScope, writeSeededFile,
  xxh3File,
} from './harness';

const VOLUME_BYTES = 8 * MiB;

function serveStdio(volumeDir: string): string[] {
  return [process.execPath, ...SERVER_NODE_OPTIONS, CLI_JS, 'serve', volumeDir, '--nbd', 'stdio'];
}

test('stdio mode: nbdfuse --command runs the server on its stdin/stdout; written data is the volume content', (t) =>
  withScope(async (scope) => {
    if (skipUnlessTools(t, 'nbdfuse', 'fusermount3')) return;
    const impossible = whyFuseIsImpossible();
    if (impossible !== undefined) {
      t.skip(impossible);
      return;
    }
    const dir = scopedTempDir(scope, 'e2e-stdio');
    const volumeDir = path.join(dir, 'vol');
    await createVolume(volumeDir, VOLUME_BYTES);
    const image = path.join(dir, 'image.raw');
    writeSeededFile(image, VOLUME_BYTES, testSeed(t));

    const mountDir = path.join(dir, 'fuse');
    fs.mkdirSync(mountDir);
    const unmount = await startNbdfuse(scope, mountDir, path.join(dir, 'nbdfuse.pid'), ['--command', ...serveStdio(volumeDir)]);
    const devFile = path.join(mountDir, 'nbd');
    assert.equal(fs.statSync(devFile).size, VOLUME_BYTES);
    const fd = fs.openSync(devFile, 'r+');
    try {
      fs.writeSync(fd, fs.readFileSync(image), 0, VOLUME_BYTES, 0);
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    assert.ok(fs.readFileSync(devFile).equals(fs.readFileSync(image)), 'reads through nbdfuse return what was written');
    // nbdfuse exits after the unmount, and libnbd reaps the server first: the volume is free.
    await unmount();
    const sum = await mustRunCli(['checksum', volumeDir]);
    assert.equal(sum.stdout.trim(), xxh3File(image));
  }));

test('`nbdinfo [ blockwal serve DIR --nbd stdio ]` and `nbdcopy -- [ ... ]` start the server (socket activation)', (t) =>
  withScope(async (scope) => {
    if (skipUnlessTools(t, 'nbdinfo', 'nbdcopy')) return;
    const dir = scopedTempDir(scope, 'e2e-activation');
    const volumeDir = path.join(dir, 'vol');
    await createVolume(volumeDir, VOLUME_BYTES);
    const subprocess = ['--', '[', ...serveStdio(volumeDir), ']'];
    const info = await mustRun('nbdinfo', ['--size', ...subprocess]);
    assert.equal(info.stdout.trim(), String(VOLUME_BYTES));

    const image = path.join(dir, 'image.raw');
    writeSeededFile(image, VOLUME_BYTES, testSeed(t));
    await mustRun('nbdcopy', ['--flush', image, ...subprocess]);
    const sum = await mustRunCli(['checksum', volumeDir]);
    assert.equal(sum.stdout.trim(), xxh3File(image));
  }));
