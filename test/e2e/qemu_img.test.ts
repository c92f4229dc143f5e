// qemu-img convert writes a raw image (random data, sparse holes and
// allocated zeros) over a volume pre-filled with a pattern, so its zero
// regions must really be zeroed (WRITE_ZEROES / TRIM), then `qemu-img compare`
// finds the image and the export identical in both directions, and a convert
// back out is byte-equal.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';

import { describeRun, runProgram } from '../support/nbd_server_process';
import { MiB, assertFilesEqual, mustRun, qemuIo, servedVolume, skipUnlessTools, stopCleanly, testSeed, withScope, writeSeededFile } from './harness';

const IMAGE_BYTES = 32 * MiB;
const CHUNK_BYTES = MiB;

// Per MiB: i % 4 == 1 a hole, i % 4 == 3 allocated zeros, else random data.
function writeMixedImage(file: string, seed: number): void {
  const random = `${file}.random`;
  writeSeededFile(random, IMAGE_BYTES, seed);
  const src = fs.openSync(random, 'r');
  const dst = fs.openSync(file, 'w');
  try {
    fs.ftruncateSync(dst, IMAGE_BYTES);
    const buf = Buffer.alloc(CHUNK_BYTES);
    for (let i = 0; i < IMAGE_BYTES / CHUNK_BYTES; i++) {
      if (i % 4 === 1) continue;
      if (i % 4 === 3) buf.fill(0);
      else fs.readSync(src, buf, 0, CHUNK_BYTES, i * CHUNK_BYTES);
      fs.writeSync(dst, buf, 0, CHUNK_BYTES, i * CHUNK_BYTES);
    }
  } finally {
    fs.closeSync(src);
    fs.closeSync(dst);
    fs.rmSync(random);
  }
}

async function compare(a: string, b: string): Promise<void> {
  const r = await runProgram('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', a, b]);
  assert.equal(r.code, 0, describeRun(`qemu-img compare ${a} ${b} (0: identical)`, r));
  assert.match(r.stdout, /Images are identical/, r.stdout);
}

test('qemu-img convert into the export and out again; qemu-img compare both ways', (t) =>
  withScope(async (scope) => {
    if (skipUnlessTools(t, 'qemu-img', 'qemu-io')) return;
    const v = await servedVolume(scope, { sizeBytes: IMAGE_BYTES });
    const image = path.join(v.dir, 'image.raw');
    writeMixedImage(image, testSeed(t));
    const fill: string[] = [];
    for (let at = 0; at < IMAGE_BYTES; at += 8 * MiB) fill.push(`write -P 0x55 ${at} ${8 * MiB}`);
    await qemuIo(v.server.uri, fill);

    await mustRun('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', image, v.server.uri]);
    await compare(image, v.server.uri);
    await compare(v.server.uri, image);

    const out = path.join(v.dir, 'out.raw');
    await mustRun('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', v.server.uri, out]);
    assertFilesEqual(out, image, 'qemu-img convert out');
    await stopCleanly(v.server);
  }));
