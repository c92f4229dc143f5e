// Block status of a volume: written blocks are data, trimmed and
// never-written ranges are holes that read as zeros, write-zeroes ranges read
// as zeros and stay allocated until a checkpoint punches them.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as path from 'node:path';

import type { AllocationExtent } from '../../lib/engine/allocation';
import { Volume } from '../../lib/engine/volume';
import { prng, tempDir } from '../support/tmp';

const KiB = 1024;
const MiB = 1 << 20;

// The map as [start, end, 'data' | 'hole'] triples, checking the extents tile the range.
function describe(vol: Volume, offset: number, length: number): [number, number, string][] {
  const out: [number, number, string][] = [];
  let pos = offset;
  while (pos < offset + length) {
    const extents: AllocationExtent[] = vol.blockStatus(pos, offset + length - pos);
    assert.ok(extents.length > 0);
    for (const e of extents) {
      assert.ok(e.lengthBytes > 0);
      assert.ok(!e.hole || e.zero, 'a hole reads as zeros');
      const state = e.hole ? 'hole' : e.zero ? 'zero' : 'data';
      const last = out[out.length - 1];
      if (last !== undefined && last[2] === state) last[1] += e.lengthBytes;
      else out.push([pos, pos + e.lengthBytes, state]);
      pos += e.lengthBytes;
    }
  }
  assert.equal(pos, offset + length, 'extents never run past the range');
  return out;
}

test('written ranges are data; trimmed and never-written ranges are holes; zeroed ranges are zeros, holes after a checkpoint', async () => {
  const { dir, cleanup } = tempDir('alloc');
  const vol = await Volume.create(path.join(dir, 'v'), { sizeBytes: 16 * MiB, walSegmentBytes: MiB, walSegmentsMax: 16, flushIdleMs: 0 });
  try {
    await vol.write(0, Buffer.alloc(64 * KiB, 1));
    await vol.write(1 * MiB, Buffer.alloc(8 * KiB, 2));
    await vol.trim(16 * KiB, 16 * KiB);
    await vol.writeZeroes(1 * MiB + 4 * KiB, 4 * KiB);
    await vol.write(20 * KiB, Buffer.alloc(4 * KiB, 3)); // newer than the trim around it
    const expected: [number, number, string][] = [
      [0, 16 * KiB, 'data'],
      [16 * KiB, 20 * KiB, 'hole'],
      [20 * KiB, 24 * KiB, 'data'],
      [24 * KiB, 32 * KiB, 'hole'],
      [32 * KiB, 64 * KiB, 'data'],
      [64 * KiB, 1 * MiB, 'hole'],
      [1 * MiB, 1 * MiB + 4 * KiB, 'data'],
      [1 * MiB + 4 * KiB, 1 * MiB + 8 * KiB, 'zero'],
      [1 * MiB + 8 * KiB, 16 * MiB, 'hole'],
    ];
    assert.deepEqual(describe(vol, 0, 16 * MiB), expected, 'from the dirty map');
    await vol.checkpoint();
    assert.equal(vol.status().dirtyBlocks, 0);
    expected.splice(6, 3, [1 * MiB, 1 * MiB + 4 * KiB, 'data'], [1 * MiB + 4 * KiB, 16 * MiB, 'hole']);
    assert.deepEqual(describe(vol, 0, 16 * MiB), expected, 'from base.img');
    // Unaligned ranges are clipped to the bytes asked for.
    assert.deepEqual(describe(vol, 15 * KiB + 7, 6 * KiB), [
      [15 * KiB + 7, 16 * KiB, 'data'],
      [16 * KiB, 20 * KiB, 'hole'],
      [20 * KiB, 21 * KiB + 7, 'data'],
    ]);
    assert.throws(() => vol.blockStatus(16 * MiB - 1, 2), { code: 'ERR_OUT_OF_RANGE' });
  } finally {
    await vol.close();
    cleanup();
  }
});

test('every hole reads as zeros and every block written with non-zero bytes is data (random operations)', async () => {
  const { dir, cleanup } = tempDir('alloc');
  const sizeBytes = 4 * MiB;
  const vol = await Volume.create(path.join(dir, 'v'), { sizeBytes, walSegmentBytes: MiB, walSegmentsMax: 16, flushIdleMs: 0 });
  const rand = prng(7);
  const written = new Set<number>(); // blocks whose newest version is non-zero data
  try {
    for (let step = 0; step < 300; step++) {
      const block = Math.floor(rand() * (sizeBytes / 4096 - 16));
      const blocks = 1 + Math.floor(rand() * 16);
      const op = rand();
      if (op < 0.6) {
        await vol.write(block * 4096, Buffer.alloc(blocks * 4096, 1 + (step % 250)));
        for (let b = block; b < block + blocks; b++) written.add(b);
      } else {
        await (op < 0.8 ? vol.trim(block * 4096, blocks * 4096) : vol.writeZeroes(block * 4096, blocks * 4096));
        for (let b = block; b < block + blocks; b++) written.delete(b);
      }
      if (step % 97 === 0) await vol.checkpoint();
    }
    for (const [start, end, state] of describe(vol, 0, sizeBytes)) {
      if (state === 'data') continue; // holes and zeros
      for (let pos = start; pos < end; pos += 1 * MiB) {
        const bytes = await vol.read(pos, Math.min(1 * MiB, end - pos));
        assert.ok(bytes.every((b) => b === 0), `${state} at ${pos} reads as zeros`);
      }
      for (let b = start / 4096; b < end / 4096; b++) assert.ok(!written.has(b), `block ${b} holds data but is reported as a hole`);
    }
  } finally {
    await vol.close();
    cleanup();
  }
});

test('thousands of dirty blocks and runs are all reported (answers may stop short, never wrong)', async () => {
  const { dir, cleanup } = tempDir('alloc');
  const vol = await Volume.create(path.join(dir, 'v'), { sizeBytes: 96 * MiB, walSegmentBytes: 4 * MiB, walSegmentsMax: 64, flushIdleMs: 0, flushTriggerBytes: 2 ** 40 });
  try {
    // 32 MiB contiguous (8192 dirty blocks), then 5000 separate one-block runs.
    for (let at = 0; at < 32 * MiB; at += MiB) await vol.write(at, Buffer.alloc(MiB, 9));
    for (let i = 0; i < 5000; i++) await vol.write(32 * MiB + i * 8 * KiB, Buffer.alloc(4 * KiB, 7));
    assert.ok(vol.status().dirtyBlocks >= 8192 + 5000, 'still in the dirty map, not yet checkpointed');
    // The first small run touches the 32 MiB one: they merge.
    const expected: [number, number, string][] = [[0, 32 * MiB + 4 * KiB, 'data']];
    for (let i = 0; i < 5000; i++) {
      const at = 32 * MiB + i * 8 * KiB;
      if (i > 0) expected.push([at, at + 4 * KiB, 'data']);
      expected.push([at + 4 * KiB, i === 4999 ? 96 * MiB : at + 8 * KiB, 'hole']);
    }
    assert.deepEqual(describe(vol, 0, 96 * MiB), expected);
  } finally {
    await vol.close();
    cleanup();
  }
});
