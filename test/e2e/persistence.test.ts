// What a client was told is durable survives the server: data written
// through NBD and flushed (or written with FUA) reads back after a SIGTERM
// stop (exit 0) and restart, and after a SIGKILL and restart (recovery from
// the WAL). Unflushed data may be lost after SIGKILL; it is not checked.
// A 64 MiB copy after SIGKILL also checks what recovery rebuilds in memory
// (more dirty blocks than one block-status answer holds): the offline
// checksum reads it before any checkpoint.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as path from 'node:path';

import {
  KiB, MiB, assertFilesEqual, mustRun, mustRunCli, qemuIo, servedVolume, skipUnlessTools, startServer, stopCleanly, testSeed, withScope,
  writeSeededFile, xxh3File,
} from './harness';

const VOLUME_BYTES = 16 * MiB;

// Whole blocks, a multi-block run, and sub-block writes at odd offsets
// (read-modify-write inside the engine).
const WRITES = [
  `write -P 0x5a 0 ${2 * MiB}`,
  `write -P 0xa5 ${3 * MiB} ${MiB}`,
  'write -P 0x11 5000 1000',
  `write -P 0x22 ${8 * MiB + 100} ${64 * KiB}`,
];
const READS = [
  'read -P 0x5a 0 5000',
  'read -P 0x11 5000 1000',
  `read -P 0x5a 6000 ${2 * MiB - 6000}`,
  `read -P 0 ${2 * MiB} ${MiB}`,
  `read -P 0xa5 ${3 * MiB} ${MiB}`,
  `read -P 0 ${4 * MiB} ${4 * MiB + 100}`,
  `read -P 0x22 ${8 * MiB + 100} ${64 * KiB}`,
  `read -P 0 ${8 * MiB + 100 + 64 * KiB} ${8 * MiB - 100 - 64 * KiB}`,
];
const FUA_WRITE = `write -f -P 0x77 ${12 * MiB} ${256 * KiB}`;
const READS_WITH_FUA = [
  ...READS.slice(0, -1),
  `read -P 0 ${8 * MiB + 100 + 64 * KiB} ${4 * MiB - 100 - 64 * KiB}`,
  `read -P 0x77 ${12 * MiB} ${256 * KiB}`,
  `read -P 0 ${12 * MiB + 256 * KiB} ${4 * MiB - 256 * KiB}`,
];

test('flushed writes survive SIGTERM (exit 0) and a restart', (t) =>
  withScope(async (scope) => {
    if (skipUnlessTools(t, 'qemu-io')) return;
    const v = await servedVolume(scope, { sizeBytes: VOLUME_BYTES });
    await qemuIo(v.server.uri, [...WRITES, 'flush']);
    await stopCleanly(v.server);
    const restarted = await startServer(scope, v);
    await qemuIo(restarted.uri, READS);
    await stopCleanly(restarted);
  }));

test('flushed and FUA writes survive SIGKILL and a restart', (t) =>
  withScope(async (scope) => {
    if (skipUnlessTools(t, 'qemu-io')) return;
    const v = await servedVolume(scope, { sizeBytes: VOLUME_BYTES });
    await qemuIo(v.server.uri, [...WRITES, 'flush', FUA_WRITE]);
    const killed = await v.server.kill('SIGKILL');
    assert.equal(killed.signal, 'SIGKILL');

    // A new socket path each time: a killed server leaves its socket file
    // behind (reusing the path is cli.test.ts's concern, not durability's).
    const restarted = await startServer(scope, { ...v, socketPath: path.join(v.dir, 'nbd-2.sock') });
    await qemuIo(restarted.uri, READS_WITH_FUA);
    // Killed again right after recovery: recovery must leave a volume that recovers.
    await restarted.kill('SIGKILL');
    const again = await startServer(scope, { ...v, socketPath: path.join(v.dir, 'nbd-3.sock') });
    await qemuIo(again.uri, READS_WITH_FUA);
    await stopCleanly(again);
  }));

test('a flushed 64 MiB nbdcopy survives SIGKILL: offline checksum, then a restarted server, return the image', (t) =>
  withScope(async (scope) => {
    if (skipUnlessTools(t, 'nbdcopy')) return;
    const imageBytes = 64 * MiB;
    const v = await servedVolume(scope, { sizeBytes: imageBytes });
    const image = path.join(v.dir, 'image.raw');
    writeSeededFile(image, imageBytes, testSeed(t));
    await mustRun('nbdcopy', ['--flush', image, v.server.uri]);
    await v.server.kill('SIGKILL');

    // Offline, before any checkpoint: the content comes from WAL replay.
    const sum = await mustRunCli(['checksum', v.volumeDir]);
    assert.equal(sum.stdout.trim(), xxh3File(image), '`blockwal checksum` after SIGKILL should be the XXH3-64 of the image');
    const restarted = await startServer(scope, { ...v, socketPath: path.join(v.dir, 'nbd-2.sock') });
    const out = path.join(v.dir, 'out.raw');
    await mustRun('nbdcopy', [restarted.uri, out]);
    assertFilesEqual(out, image, 'nbdcopy out after SIGKILL and restart');
    await stopCleanly(restarted);
  }));
