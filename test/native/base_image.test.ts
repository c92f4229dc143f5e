// The base image through the ring: block round trips with and without
// registered buffers, holes read as zeros and free space, bounds refused,
// content survives reopen.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';

import { BaseImage, BLOCK_BYTES } from '../../lib/native/base_image';
import { Ring } from '../../lib/native/ring';
import { tempDir } from '../support/tmp';

for (const registerBuffers of [true, false]) {
  test(`blocks round-trip through O_DIRECT (registered buffers: ${registerBuffers})`, async () => {
    const { dir, cleanup } = tempDir('base');
    const ring = Ring.open({ depth: 64, arenaBytes: 4 << 20, registerBuffers });
    try {
      assert.equal(ring.info().buffersRegistered, registerBuffers);
      const file = path.join(dir, 'base.img');
      const image = await BaseImage.create(ring, file, 64 << 20);
      assert.equal(image.sizeBlocks, (64 << 20) / BLOCK_BYTES);
      assert.ok(fs.statSync(file).blocks * 512 < 1 << 20, 'a new image is sparse');
      const out = ring.alloc(16 * BLOCK_BYTES);
      const back = ring.alloc(16 * BLOCK_BYTES);
      const written = new Map<number, Buffer>();
      for (const lba of [0, 16, 100, 4095, 16384 - 16]) {
        const data = crypto.randomBytes(16 * BLOCK_BYTES);
        out.bytes.set(data);
        await image.writeBlocks(lba, 16, out);
        written.set(lba, data);
      }
      await image.fdatasync();
      for (const [lba, data] of written) {
        await image.readBlocks(lba, 16, back);
        assert.deepEqual(Buffer.from(back.bytes), data, `lba ${lba}`);
      }
      await image.readBlocks(8000, 4, back);
      assert.ok(back.bytes.subarray(0, 4 * BLOCK_BYTES).every((b) => b === 0), 'never written reads zeros');
      image.close();
      ring.free(out);
      ring.free(back);
    } finally {
      await ring.close();
      cleanup();
    }
  });
}

test('punched blocks read as zeros and release space; content survives reopen', async () => {
  const { dir, cleanup } = tempDir('basepunch');
  const ring = Ring.open({ depth: 64, arenaBytes: 8 << 20 });
  try {
    const file = path.join(dir, 'base.img');
    let image = await BaseImage.create(ring, file, 16 << 20);
    const slice = ring.alloc(256 * BLOCK_BYTES);
    slice.bytes.fill(0xab);
    for (let lba = 0; lba < 4096; lba += 256) await image.writeBlocks(lba, 256, slice);
    await image.fdatasync();
    const allocatedFull = fs.statSync(file).blocks * 512;
    assert.ok(allocatedFull >= 16 << 20);
    await image.punchHole(1024, 2048);
    await image.fdatasync();
    assert.ok(fs.statSync(file).blocks * 512 <= allocatedFull - (8 << 20), 'space released');
    await image.readBlocks(1024, 256, slice);
    assert.ok(slice.bytes.every((b) => b === 0));
    image.close();
    image = BaseImage.open(ring, file);
    await image.readBlocks(0, 256, slice);
    assert.ok(slice.bytes.every((b) => b === 0xab));
    await image.readBlocks(3072, 256, slice);
    assert.ok(slice.bytes.every((b) => b === 0xab));
    image.close();
    ring.free(slice);
  } finally {
    await ring.close();
    cleanup();
  }
});

test('out-of-range and malformed block requests are refused before any I/O', async () => {
  const { dir, cleanup } = tempDir('baserange');
  const ring = Ring.open({ depth: 64, arenaBytes: 1 << 20 });
  try {
    const image = await BaseImage.create(ring, path.join(dir, 'base.img'), 1 << 20);
    const slice = ring.alloc(2 * BLOCK_BYTES);
    await assert.rejects(image.readBlocks(255, 2, slice), RangeError);
    await assert.rejects(image.writeBlocks(-1, 1, slice), RangeError);
    await assert.rejects(image.writeBlocks(0, 0, slice), RangeError);
    await assert.rejects(image.writeBlocks(0, 3, slice), RangeError);
    await assert.rejects(image.punchHole(0, 257), RangeError);
    await assert.rejects(image.readBlocks(1.5, 1, slice), RangeError);
    image.close();
    await assert.rejects(image.fdatasync(), { code: 'ERR_CLOSED' });
    await assert.rejects(BaseImage.create(ring, path.join(dir, 'x.img'), 1000), RangeError);
  } finally {
    await ring.close();
    cleanup();
  }
});
