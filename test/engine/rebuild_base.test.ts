// A replica's rebuild at the volume level (lib/engine/volume.ts with
// lib/replication/replica_rebuild.ts's discipline):
//  - beginRebuild drops local data, sets the volume to the base LSN, and
//    refuses reads until finishRebuild;
//  - writeBaseRuns: a record applied to a block between the plan and the
//    write still wins, because no checkpoint takes its snapshot between a
//    plan and the end of its writes (the checkpoint that writes the record
//    comes after the base data), even with a checkpoint queued alongside;
//  - the rebuild files survive a reopen and are gone after finishRebuild.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';

import { Volume } from '../../lib/engine/volume';
import { encodeRecord } from '../../lib/native/wal_format';
import { tempDir } from '../support/tmp';

const MiB = 1 << 20;
const BLOCK = 4096;

function writeRecord(lsn: number, lba: number, fill: number): Buffer {
  return encodeRecord({ kind: 'write', epoch: 3, lsn, lba, lengthBlocks: 1 }, Buffer.alloc(BLOCK, fill));
}

test('a record applied between a base plan and its write still wins; reads are refused until the rebuild finishes', async () => {
  const { dir, cleanup } = tempDir('rebuild-base');
  const volumeDir = path.join(dir, 'r');
  try {
    let v = await Volume.create(volumeDir, { sizeBytes: 4 * MiB, role: 'replica', flushIdleMs: 0 });
    const lsnBase = 10;
    const saved = { sessionId: 7, epoch: 3, lsnBase, lsnTarget: 12, chunkBlocks: 256, chunksTotal: 4, progress: null, updatedAtMs: 0 };
    const bitmap = await v.beginRebuild(saved, { applyChecksum: 0n, state: { epoch: 3, features: 0, sizeBytes: 4 * MiB, durability: undefined } });
    const marked: number[] = [];
    v.setRebuildHooks({ onApply: (r) => marked.push(r.lba), beforeCheckpoint: () => bitmap.sync() });
    assert.equal(v.lsnApplied, lsnBase);
    assert.equal(v.lsnCheckpoint, lsnBase);
    await assert.rejects(v.read(0, BLOCK), { code: 'ERR_REBUILDING' });

    // Record 11 writes block 5 and is applied; a checkpoint of it is queued.
    await v.appendReceived(writeRecord(lsnBase + 1, 5, 0x11));
    v.commit(lsnBase + 1);
    const checkpointed = v.checkpoint();
    // Record 12 (block 6) arrives; it is applied while the base write is planned.
    await v.appendReceived(writeRecord(lsnBase + 2, 6, 0x12));
    const baseData = Buffer.alloc(16 * BLOCK, 0xba); // blocks 0..15, stale base content
    await v.writeBaseRuns([
      {
        plan: () => {
          v.commit(lsnBase + 2); // block 6 marked now, after the plan
          return [
            { startBlock: 0, lengthBlocks: 5 },
            { startBlock: 6, lengthBlocks: 10 },
          ];
        },
        chunkStartBlock: 0,
        data: baseData,
      },
    ]);
    await checkpointed;
    assert.deepEqual(marked, [5, 6]);
    await v.checkpoint();
    await v.persistRebuild(() => ({ ...saved, progress: { note: 'test' }, updatedAtMs: 1 }));
    bitmap.close();
    await v.close();

    // Reopened: still rebuilding (reads refused), the files are there.
    v = await Volume.open(volumeDir, { role: 'replica' });
    assert.equal(v.rebuildSaved?.sessionId, 7);
    assert.deepEqual(v.rebuildSaved?.progress, { note: 'test' });
    await assert.rejects(v.read(0, BLOCK), { code: 'ERR_REBUILDING' });
    const reopened = v.openRebuildBitmap();
    assert.ok(reopened !== undefined, 'the bitmap reopens');
    reopened.close();
    await v.finishRebuild();
    assert.equal(fs.existsSync(path.join(volumeDir, 'rebuild.json')), false);
    assert.equal(fs.existsSync(path.join(volumeDir, 'rebuild.bitmap')), false);
    assert.deepEqual(await v.read(0, BLOCK), Buffer.alloc(BLOCK, 0xba), 'block 0: the base chunk');
    assert.deepEqual(await v.read(5 * BLOCK, BLOCK), Buffer.alloc(BLOCK, 0x11), 'block 5: record 11, never planned for the base');
    assert.deepEqual(await v.read(6 * BLOCK, BLOCK), Buffer.alloc(BLOCK, 0x12), 'block 6: record 12 wins over the base write planned before it');
    await v.close();
  } finally {
    cleanup();
  }
});

test('no checkpoint takes its snapshot while a base write is in flight; one waiting for it holds new base writes back', async () => {
  const { dir, cleanup } = tempDir('rebuild-base-order');
  try {
    const v = await Volume.create(path.join(dir, 'r'), { sizeBytes: 4 * MiB, role: 'replica', flushIdleMs: 0 });
    const saved = { sessionId: 1, epoch: 3, lsnBase: 0, lsnTarget: 2, chunkBlocks: 256, chunksTotal: 4, progress: null, updatedAtMs: 0 };
    const bitmap = await v.beginRebuild(saved, { applyChecksum: 0n, state: { epoch: 3, features: 0, sizeBytes: 4 * MiB, durability: undefined } });
    await v.appendReceived(writeRecord(1, 5, 0x11));
    let release!: () => void;
    const held = new Promise<void>((resolve) => (release = resolve));
    const first = v.baseWrite(
      () => v.commit(1), // a record applied right after the plan
      () => held,
    );
    const checkpointed = v.checkpoint();
    for (let i = 0; i < 20; i++) await new Promise((r) => setImmediate(r));
    assert.equal(v.lsnCheckpoint, 0, 'the checkpoint waits for the base write in flight');
    let secondPlanned = false;
    const second = v.baseWrite(
      () => (secondPlanned = true),
      async () => undefined,
    );
    for (let i = 0; i < 20; i++) await new Promise((r) => setImmediate(r));
    assert.equal(secondPlanned, false, 'a new base write waits for the waiting checkpoint');
    release();
    await first;
    await checkpointed;
    assert.equal(v.lsnCheckpoint, 1, 'then it covers the record applied after the plan');
    await second;
    assert.equal(secondPlanned, true);
    bitmap.close();
    await v.close();
  } finally {
    cleanup();
  }
});
