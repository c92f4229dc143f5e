// A checkpoint applies recent writes from the WAL cache (walCacheBytes), not
// by reading the WAL back from the disk; base.img ends the same either way,
// and without the cache the same checkpoint reads the disk.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as path from 'node:path';

import { Volume } from '../../lib/engine/volume';
import { mulberry32 } from '../../lib/util/prng';
import { tempDir } from '../support/tmp';

const MiB = 1 << 20;
const BLOCK = 4096;
const SIZE = 32 * MiB;

// Writes 4 KiB blocks at random and 1 MiB runs, 16 in flight; returns the
// expected image.
async function fill(vol: Volume, seed: number): Promise<Buffer> {
  const rand = mulberry32(seed);
  const model = Buffer.alloc(SIZE);
  const ops: { offset: number; data: Buffer }[] = [];
  for (let i = 0; i < 1200; i++) {
    const big = rand() < 0.01;
    const bytes = big ? MiB : BLOCK;
    const offset = Math.floor(rand() * ((SIZE - bytes) / BLOCK)) * BLOCK;
    const data = Buffer.alloc(bytes);
    for (let k = 0; k < bytes; k += 4) data.writeUInt32LE((Math.imul(i + 1, 2246822519) ^ k) >>> 0, k);
    ops.push({ offset, data });
  }
  for (let i = 0; i < ops.length; i += 16) {
    const batch = ops.slice(i, i + 16);
    // Overlapping writes in one batch: the model takes them in LSN order,
    // which is submission order for writes started together.
    await Promise.all(batch.map((op) => vol.write(op.offset, op.data)));
    for (const op of batch) op.data.copy(model, op.offset);
  }
  return model;
}

async function checkpointReads(walCacheBytes: number): Promise<{ memory: number; disk: number }> {
  const { dir, cleanup } = tempDir('walcache-vol');
  try {
    const volDir = path.join(dir, 'vol');
    let vol = await Volume.create(volDir, {
      sizeBytes: SIZE,
      walSegmentBytes: 4 * MiB,
      walSegmentsMax: 16,
      walCacheBytes,
      flushTriggerBytes: Number.MAX_SAFE_INTEGER,
      flushIdleMs: 0,
    });
    let model: Buffer;
    let reads: { memory: number; disk: number };
    try {
      assert.equal(vol.status().walCacheBytes, walCacheBytes);
      model = await fill(vol, 7);
      const before = vol.status();
      await vol.checkpoint();
      const after = vol.status();
      assert.ok(after.checkpointLsn >= before.lsnHead, 'the checkpoint covers every write');
      reads = { memory: after.walReadMemoryBytes - before.walReadMemoryBytes, disk: after.walReadDiskBytes - before.walReadDiskBytes };
    } finally {
      await vol.close();
    }
    // Reopened, every block comes from base.img (nothing left to replay).
    vol = await Volume.open(volDir);
    try {
      assert.equal(vol.status().dirtyBlocks, 0);
      const got = await vol.read(0, SIZE);
      assert.ok(Buffer.compare(got, model) === 0, 'base.img holds the newest version of every block');
    } finally {
      await vol.close();
    }
    return reads;
  } finally {
    cleanup();
  }
}

test('a checkpoint of writes the WAL cache still holds reads nothing from the disk', async () => {
  const reads = await checkpointReads(32 * MiB);
  assert.ok(reads.memory > 4 * MiB, `read from memory: ${reads.memory}`);
  assert.equal(reads.disk, 0, 'no WAL byte read from the disk');
});

test('without the WAL cache the same checkpoint reads the WAL from the disk', async () => {
  const reads = await checkpointReads(0);
  assert.ok(reads.disk > 4 * MiB, `read from the disk: ${reads.disk}`);
});
