// The flusher on a real volume: after a checkpoint base.img holds exactly the
// newest version of every block (large and small records, partly replaced
// records, writes around trims), whether the records come from the WAL's
// memory or are read back from disk; a WAL read or base.img write error in the
// middle of applying fails the checkpoint and the volume (every write in
// flight settles first) and recovery still has everything; an arena too small
// for the flusher's budget only slows it down.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';

import { Volume } from '../../lib/engine/volume';
import { OpKind, OpPurpose } from '../../lib/native/ring';
import { prng, tempDir } from '../support/tmp';

const BLOCK = 4096;
const MiB = 1 << 20;
const EIO = 5;
const SEED = Number(process.env.BLOCKWAL_FLUSHER_SEED ?? 20251129);

// A volume and a model of its bytes, written together.
class Model {
  readonly bytes: Buffer;
  constructor(readonly vol: Volume, sizeBytes: number) {
    this.bytes = Buffer.alloc(sizeBytes);
  }

  async write(offset: number, data: Buffer): Promise<void> {
    await this.vol.write(offset, data);
    data.copy(this.bytes, offset);
  }

  async trim(offset: number, length: number): Promise<void> {
    await this.vol.trim(offset, length);
    this.bytes.fill(0, offset, offset + length);
  }
}

function pattern(rand: () => number, bytes: number): Buffer {
  const b = Buffer.alloc(bytes);
  for (let i = 0; i < bytes; i += 4) b.writeUInt32LE((rand() * 2 ** 32) >>> 0, i);
  return b;
}

// Sequential 1 MiB records, random 4 KiB ones over them, multi-block writes
// that replace parts of earlier records, trims with writes after them.
async function mixedWorkload(m: Model, rand: () => number, sizeBytes: number): Promise<void> {
  const blocks = sizeBytes / BLOCK;
  for (let off = 0; off < sizeBytes / 2; off += MiB) await m.write(off, pattern(rand, MiB));
  await Promise.all(Array.from({ length: 200 }, () => m.write(Math.floor(rand() * blocks) * BLOCK, pattern(rand, BLOCK))));
  for (let i = 0; i < 20; i++) {
    const n = 1 + Math.floor(rand() * 64);
    await m.write(Math.floor(rand() * (blocks - n)) * BLOCK, pattern(rand, n * BLOCK));
  }
  await m.trim(3 * MiB, 2 * MiB);
  await m.write(3 * MiB + 5 * BLOCK, pattern(rand, 3 * BLOCK));
}

// walCacheBytes 0 and 16 group slots of 64 KiB: most records are read back
// from disk; the default WAL cache holds them all, so none is.
async function checkpointExact(label: string, walCacheBytes: number | undefined, fromDisk: boolean): Promise<void> {
  const { dir, cleanup } = tempDir('flushexact');
  const sizeBytes = 16 * MiB;
  const vol = await Volume.create(path.join(dir, 'v'), {
    sizeBytes,
    walSegmentBytes: 4 * MiB,
    walSegmentsMax: 16,
    walCacheBytes,
    flushIdleMs: 0,
    flushTriggerBytes: 2 ** 40,
  });
  try {
    const m = new Model(vol, sizeBytes);
    console.log(`flusher exact (${label}): seed ${SEED}`);
    const rand = prng(SEED);
    await mixedWorkload(m, rand, sizeBytes);
    const before = vol.status();
    await vol.checkpoint();
    const after = vol.status();
    assert.equal(after.dirtyBlocks, 0);
    assert.ok(fs.readFileSync(path.join(dir, 'v', 'base.img')).equals(m.bytes), `${label}: base.img matches the model (seed ${SEED})`);
    const disk = after.walReadDiskBytes - before.walReadDiskBytes;
    const memory = after.walReadMemoryBytes - before.walReadMemoryBytes;
    if (fromDisk) assert.ok(disk > 4 * MiB, `${label}: the checkpoint read the records from disk (${disk} bytes)`);
    else assert.ok(disk === 0 && memory > 8 * MiB, `${label}: the checkpoint took every record from memory (${memory} bytes, ${disk} from disk)`);
    // Again over the now written image.
    for (let i = 0; i < 50; i++) await m.write(Math.floor(rand() * (sizeBytes / BLOCK - 8)) * BLOCK, pattern(rand, 8 * BLOCK));
    await vol.checkpoint();
    assert.ok(fs.readFileSync(path.join(dir, 'v', 'base.img')).equals(m.bytes), `${label}: base.img matches after a second checkpoint (seed ${SEED})`);
  } finally {
    await vol.close();
    cleanup();
  }
}

test('after a checkpoint base.img holds exactly the newest version of every block (records from memory)', () =>
  checkpointExact('from memory', undefined, false));

test('after a checkpoint base.img holds exactly the newest version of every block (records from disk)', () =>
  checkpointExact('from disk', 0, true));

async function failMidApply(fault: { kind: OpKind; purpose: OpPurpose; skip: number }, label: string): Promise<void> {
  const { dir, cleanup } = tempDir('flushfail');
  const volDir = path.join(dir, 'v');
  const sizeBytes = 48 * MiB;
  // 40 MiB of records: more than the WAL's group slots hold and no WAL
  // cache, so most are read from disk.
  let vol = await Volume.create(volDir, { sizeBytes, walSegmentBytes: 8 * MiB, walSegmentsMax: 16, walCacheBytes: 0, flushIdleMs: 0, flushTriggerBytes: 2 ** 40 });
  try {
    const m = new Model(vol, sizeBytes);
    const rand = prng(SEED + 1);
    for (let off = 0; off < 40 * MiB; off += MiB) await m.write(off, pattern(rand, MiB));
    await vol.flush();
    vol.ring.injectFault({ kind: fault.kind, purpose: fault.purpose, skip: fault.skip, errno: EIO });
    await assert.rejects(vol.checkpoint(), { errno: EIO }, label);
    const s = vol.status();
    assert.ok(s.failure !== undefined, `${label}: the volume refuses writes`);
    assert.equal(s.checkpointLsn, 0, `${label}: the checkpoint did not advance`);
    await assert.rejects(vol.write(0, Buffer.alloc(BLOCK)), { code: 'ERR_VOLUME_FAILED' });
    assert.ok((await vol.read(7 * MiB, 2 * MiB)).equals(m.bytes.subarray(7 * MiB, 9 * MiB)), `${label}: reads go on`);
    await vol.close();
    vol = await Volume.open(volDir, { flushIdleMs: 0 });
    for (let off = 0; off < 40 * MiB; off += 8 * MiB) {
      assert.ok((await vol.read(off, 8 * MiB)).equals(m.bytes.subarray(off, off + 8 * MiB)), `${label}: recovery has every write`);
    }
    await vol.checkpoint();
    assert.ok(fs.readFileSync(path.join(volDir, 'base.img')).equals(m.bytes), `${label}: the next checkpoint applies everything`);
  } finally {
    await vol.close();
    cleanup();
  }
}

test('a WAL read error in the middle of applying fails the checkpoint and the volume; recovery has everything', () =>
  failMidApply({ kind: OpKind.read, purpose: OpPurpose.walRead, skip: 3 }, 'WAL read error'));

test('a base.img write error in the middle of applying fails the checkpoint and the volume; recovery has everything', () =>
  failMidApply({ kind: OpKind.write, purpose: OpPurpose.js, skip: 5 }, 'base.img write error'));

test('an arena smaller than the flusher budget slows a checkpoint down without failing it, foreground reads included', async () => {
  const { dir, cleanup } = tempDir('flushsmall');
  const sizeBytes = 24 * MiB;
  // The WAL reserves ~17 MiB of the 20 (16 group slots of 1 MiB and a zero
  // buffer): ~3 MiB for JS, less than one extent of 1 MiB records plus writes.
  const vol = await Volume.create(path.join(dir, 'v'), {
    sizeBytes,
    walSegmentBytes: 4 * MiB,
    walSegmentsMax: 16,
    arenaBytes: 20 * MiB,
    flushIdleMs: 0,
    flushTriggerBytes: 2 ** 40,
  });
  try {
    const m = new Model(vol, sizeBytes);
    const rand = prng(SEED + 2);
    for (let off = 0; off < sizeBytes; off += MiB) await m.write(off, pattern(rand, MiB));
    const checkpoint = vol.checkpoint();
    const reads = Array.from({ length: 24 }, (_, i) =>
      vol.read(i * MiB, 64 * 1024).then((got) => assert.ok(got.equals(m.bytes.subarray(i * MiB, i * MiB + 64 * 1024)), `read ${i}`)),
    );
    await Promise.all([checkpoint, ...reads]);
    assert.equal(vol.status().dirtyBlocks, 0);
    assert.ok(fs.readFileSync(path.join(dir, 'v', 'base.img')).equals(m.bytes));
  } finally {
    await vol.close();
    cleanup();
  }
});
