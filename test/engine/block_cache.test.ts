// The block cache in a volume: checkpointed data read once is read again
// from memory (no base.img read reaches the ring), a checkpoint's writes and
// punches keep it equal to base.img, and a read that raced a checkpoint
// leaves nothing stale behind. Also readInto (reads into the caller's
// memory, as the NBD backend does with pooled buffers) against read.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as path from 'node:path';

import { BaseImage } from '../../lib/native/base_image';
import { OpKind, Ring } from '../../lib/native/ring';
import { Volume } from '../../lib/engine/volume';
import { tempDir } from '../support/tmp';

const BLOCK = 4096;
const SIZE = 1 << 20;

function block(fill: number, blocks = 1): Buffer {
  return Buffer.alloc(blocks * BLOCK, fill);
}

// Reads of base.img the ring saw while fn ran (base.img is the only file read
// with O_DIRECT at 4 KiB multiples outside the WAL directory: count reads of
// its file descriptor).
async function baseReads(ring: Ring, fn: () => Promise<void>): Promise<number> {
  ring.setTrace(true);
  ring.takeTrace();
  await fn();
  const events = ring.takeTrace();
  ring.setTrace(false);
  return events.filter((e) => e.type === 'submit' && e.kind === OpKind.read).length;
}

test('blocks read once are read again from the block cache; writes, trims and zeroes keep it current', async () => {
  const { dir, cleanup } = tempDir('blockcache');
  const ring = Ring.open({ depth: 256, arenaBytes: 64 << 20 });
  const vol = await Volume.create(path.join(dir, 'v'), { sizeBytes: SIZE, walSegmentBytes: 1 << 20, flushIdleMs: 0, ring });
  try {
    await vol.write(0, block(1, 4));
    await vol.checkpoint();
    // The first read goes to base.img and fills the cache; the next ones do not.
    const first = await baseReads(ring, async () => assert.ok((await vol.read(0, 4 * BLOCK)).equals(block(1, 4))));
    assert.equal(first, 1);
    const again = await baseReads(ring, async () => {
      assert.ok((await vol.read(0, 4 * BLOCK)).equals(block(1, 4)));
      assert.ok((await vol.read(BLOCK + 100, 10)).equals(Buffer.alloc(10, 1)));
    });
    assert.equal(again, 0, 'no base.img read for cached blocks');
    assert.equal(vol.status().blockCacheHits, 5);
    assert.equal(vol.status().blockCacheMisses, 4);

    // Overwrite, trim and zero cached blocks, checkpoint, read them back:
    // the overwritten block comes from the cache, the punched ones from the disk.
    await vol.write(BLOCK, block(2));
    await vol.trim(2 * BLOCK, BLOCK);
    await vol.writeZeroes(3 * BLOCK, BLOCK);
    await vol.checkpoint();
    assert.equal(vol.status().dirtyBlocks, 0);
    const overwritten = await baseReads(ring, async () => assert.ok((await vol.read(0, 2 * BLOCK)).equals(Buffer.concat([block(1), block(2)]))));
    assert.equal(overwritten, 0, 'the checkpoint refreshed the cached block');
    assert.ok((await vol.read(2 * BLOCK, 2 * BLOCK)).equals(block(0, 2)), 'trimmed and zeroed blocks read as zeros');
    const s = vol.status();
    assert.equal(s.blockCacheBytes, 256 << 20);
    assert.equal(s.blockCacheUsedBytes, 4 * BLOCK);
  } finally {
    await vol.close();
    await ring.close();
    cleanup();
  }
});

test('a read that raced a checkpoint does not leave its older blocks in the cache', async () => {
  const { dir, cleanup } = tempDir('blockcache-race');
  const vol = await Volume.create(path.join(dir, 'v'), { sizeBytes: SIZE, walSegmentBytes: 1 << 20, flushIdleMs: 0 });
  const readBlocks = BaseImage.prototype.readBlocks;
  try {
    await vol.write(0, block(0xaa));
    await vol.checkpoint();
    // Hold base.img reads after their disk read until released.
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    let held = 0;
    BaseImage.prototype.readBlocks = async function (this: BaseImage, ...args: Parameters<BaseImage['readBlocks']>) {
      await readBlocks.apply(this, args);
      held++;
      await gate;
    };
    const racing = vol.read(0, BLOCK); // misses: reads 0xaa from the disk
    while (held === 0) await new Promise((r) => setImmediate(r));
    BaseImage.prototype.readBlocks = readBlocks;
    await vol.write(0, block(0xbb));
    await vol.checkpoint(); // base.img gets 0xbb for block 0 (not cached)
    release();
    assert.ok((await racing).equals(block(0xaa)), 'the racing read returns what it read');
    assert.ok((await vol.read(0, BLOCK)).equals(block(0xbb)), 'the next read sees the checkpointed block');
  } finally {
    BaseImage.prototype.readBlocks = readBlocks;
    await vol.close();
    cleanup();
  }
});

test('a volume opened with blockCacheBytes 0 reads base.img every time', async () => {
  const { dir, cleanup } = tempDir('blockcache-off');
  const ring = Ring.open({ depth: 256, arenaBytes: 64 << 20 });
  const vol = await Volume.create(path.join(dir, 'v'), { sizeBytes: SIZE, walSegmentBytes: 1 << 20, flushIdleMs: 0, ring, blockCacheBytes: 0 });
  try {
    await vol.write(0, block(3));
    await vol.checkpoint();
    const reads = await baseReads(ring, async () => {
      for (let i = 0; i < 3; i++) assert.ok((await vol.read(0, BLOCK)).equals(block(3)));
    });
    assert.equal(reads, 3);
    const s = vol.status();
    assert.equal(s.blockCacheBytes, 0);
    assert.equal(s.blockCacheHits, 0);
  } finally {
    await vol.close();
    await ring.close();
    cleanup();
  }
});

test('readInto fills the caller memory exactly as read returns, from every source: base.img, cache, WAL, zeros', async () => {
  const { dir, cleanup } = tempDir('readinto');
  const vol = await Volume.create(path.join(dir, 'v'), { sizeBytes: SIZE, walSegmentBytes: 1 << 20, flushIdleMs: 0 });
  try {
    for (let b = 0; b < 64; b++) await vol.write(b * BLOCK, block(b + 1));
    await vol.checkpoint(); // blocks 0..63 in base.img
    await vol.read(0, 8 * BLOCK); // 0..7 cached
    await vol.write(10 * BLOCK + 100, Buffer.alloc(5000, 0xab)); // dirty, across blocks 10 and 11
    await vol.trim(20 * BLOCK, 4 * BLOCK);
    const ranges: [number, number][] = [
      [0, 8 * BLOCK], // cached
      [30 * BLOCK, 16 * BLOCK], // base.img only
      [9 * BLOCK + 17, 4 * BLOCK], // base + WAL, unaligned
      [19 * BLOCK, 6 * BLOCK], // base + trimmed
      [10 * BLOCK + 100, 1], // one byte of a WAL record
      [0, 64 * BLOCK], // everything
    ];
    for (const [offset, length] of ranges) {
      const expected = await vol.read(offset, length);
      const into = Buffer.alloc(length + 64, 0x5a);
      const view = into.subarray(32, 32 + length);
      const got = await vol.readInto(offset, view);
      assert.ok(got.equals(expected), `readInto(${offset}, ${length}) equals read`);
      assert.equal(got.buffer, into.buffer, 'the result is the caller memory');
      assert.equal(got.byteOffset, 32);
      assert.ok(into.subarray(0, 32).equals(Buffer.alloc(32, 0x5a)) && into.subarray(32 + length).equals(Buffer.alloc(32, 0x5a)), 'nothing outside the view is touched');
    }
    // A plain Uint8Array works too.
    const u8 = new Uint8Array(BLOCK);
    await vol.readInto(5 * BLOCK, u8);
    assert.ok(Buffer.from(u8).equals(block(6)));
    await assert.rejects(vol.readInto(SIZE - BLOCK, new Uint8Array(2 * BLOCK)), { code: 'ERR_OUT_OF_RANGE' });
    await assert.rejects(vol.readInto(0, 'nope' as unknown as Uint8Array), TypeError);
  } finally {
    await vol.close();
    cleanup();
  }
});
