// nbdcopy moves a 64 MiB random image into a served volume and back out over
// several connections (multi-conn): the copy out is byte-equal, and after a
// clean stop the offline `blockwal checksum` and `blockwal export` agree
// with the image too.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as path from 'node:path';

import { MiB, assertFilesEqual, firstDifference, mustRun, mustRunCli, servedVolume, sha256File, skipUnlessTools, stopCleanly, testSeed, withScope, writeSeededFile, xxh3File } from './harness';

const IMAGE_BYTES = 64 * MiB;
const CONNECTIONS = 4;

test('nbdcopy: a 64 MiB image in and out is byte-equal; offline checksum and export agree', (t) =>
  withScope(async (scope) => {
    if (skipUnlessTools(t, 'nbdcopy')) return;
    const v = await servedVolume(scope, { sizeBytes: IMAGE_BYTES });
    const image = path.join(v.dir, 'image.raw');
    writeSeededFile(image, IMAGE_BYTES, testSeed(t));
    const copyArgs = [`--connections=${CONNECTIONS}`, `--threads=${CONNECTIONS}`];

    await mustRun('nbdcopy', [...copyArgs, '--flush', image, v.server.uri]);
    const copyOut = path.join(v.dir, 'out.raw');
    await mustRun('nbdcopy', [...copyArgs, v.server.uri, copyOut]);
    const equal = sha256File(copyOut) === sha256File(image);
    assert.ok(equal, `nbdcopy out should equal the image; first difference at byte ${firstDifference(copyOut, image)}`);

    await stopCleanly(v.server);
    const sum = await mustRunCli(['checksum', v.volumeDir]);
    assert.equal(sum.stdout.trim(), xxh3File(image), '`blockwal checksum` should be the XXH3-64 of the image');
    const exported = path.join(v.dir, 'export.raw');
    await mustRunCli(['export', v.volumeDir, exported]);
    assertFilesEqual(exported, image, '`blockwal export`');
  }));
