// The retained WAL a primary feeds lagging replicas from:
//  - WalIndex (lib/engine/wal_index.ts): contiguous LSNs, byte sums, runs of
//    records back to back in one segment, dropping recycled ones;
//  - Volume.readWalRecords: the encoded records read back from disk equal
//    what was shipped when they were written (onRecord), verified;
//  - the WAL pin: checkpoints keep the WAL a reader still needs, up to the
//    retention budget, and release it once the pin is over budget.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as path from 'node:path';

import { WalIndex } from '../../lib/engine/wal_index';
import { Volume } from '../../lib/engine/volume';
import { tempDir } from '../support/tmp';

const MiB = 1 << 20;

test('WalIndex: contiguous LSNs, bytes after an LSN, runs within one segment, dropping recycled records', () => {
  const ix = new WalIndex();
  assert.equal(ix.lsnFirst, 0);
  assert.equal(ix.bytesAfter(0), 0);
  // 3000 records (past the initial capacity): 10 per segment, 4168 bytes each at 4096-byte strides plus a frame header.
  for (let lsn = 5; lsn < 3005; lsn++) {
    const i = lsn - 5;
    ix.add(lsn, Math.floor(i / 10), 4096 + (i % 10) * 4168, 4168);
  }
  assert.equal(ix.lsnFirst, 5);
  assert.equal(ix.lsnLast, 3004);
  assert.equal(ix.count, 3000);
  assert.deepEqual(ix.get(17), { lsn: 17, segmentSeq: 1, offsetBytes: 4096 + 2 * 4168, spanBytes: 4168 });
  assert.equal(ix.get(4), undefined);
  assert.equal(ix.get(3005), undefined);
  assert.equal(ix.bytesAfter(3004), 0);
  assert.equal(ix.bytesAfter(3003), 4168);
  assert.equal(ix.bytesAfter(0), 3000 * 4168, 'below the first: everything');
  assert.throws(() => ix.add(3006, 0, 0, 64), /LSN 3006 added after 3004/);
  // A run stops at the segment's end, and at the byte limit (at least one record).
  const run = ix.run(13, 1 << 20)!;
  assert.deepEqual(
    run.records.map((r) => r.lsn),
    [13, 14],
  );
  assert.equal(run.segmentSeq, 0);
  assert.equal(ix.run(15, 3 * 4168)!.records.length, 3);
  assert.equal(ix.run(15, 1)!.records.length, 1);
  // Recycled segments: forget below the WAL's tail; empty restarts anywhere.
  ix.dropBelow(2000);
  assert.equal(ix.lsnFirst, 2000);
  assert.equal(ix.bytesAfter(10), 1005 * 4168);
  assert.equal(ix.get(1999), undefined);
  ix.dropBelow(1 << 30);
  assert.equal(ix.count, 0);
  ix.add(9000, 7, 0, 64);
  assert.equal(ix.lsnFirst, 9000);
  ix.clear();
  assert.equal(ix.lsnLast, 0);
});

async function withVolume(fn: (v: Volume, shipped: Map<number, Buffer>) => Promise<void>): Promise<void> {
  const { dir, cleanup } = tempDir('wal-retention');
  const shipped = new Map<number, Buffer>();
  // 1 MiB segments, at most 8: the retention budget is half of that, 4 MiB.
  const v = await Volume.create(path.join(dir, 'v'), {
    sizeBytes: 16 * MiB,
    walSegmentBytes: MiB,
    walSegmentsMax: 8,
    flushIdleMs: 0,
    onRecord: (r) => shipped.set(r.lsn, Buffer.from(r.bytes)),
  });
  try {
    await fn(v, shipped);
  } finally {
    await v.close();
    cleanup();
  }
}

function block(i: number): Buffer {
  return Buffer.alloc(64 * 1024, i & 0xff);
}

test('readWalRecords returns the records as shipped, verified, in LSN order; a pin keeps them across checkpoints', async () => {
  await withVolume(async (v, shipped) => {
    let pin = 1;
    v.setWalPin(() => pin);
    // ~2.6 MiB of records over three segments, with checkpoints between.
    for (let i = 0; i < 40; i++) {
      await v.write((i % 16) * 64 * 1024, block(i));
      if (i % 10 === 9) await v.checkpoint();
    }
    assert.equal(v.walTail, 0, 'the pin at LSN 1 kept every record');
    const got: number[] = [];
    for (let lsn = 1; lsn <= v.lsnHead; ) {
      const records = await v.readWalRecords(lsn, 256 * 1024);
      assert.ok(records.length >= 1);
      for (const r of records) {
        assert.equal(r.lsn, lsn);
        assert.deepEqual(r.bytes, shipped.get(lsn), `LSN ${lsn} reads back as shipped`);
        got.push(lsn++);
      }
    }
    assert.equal(got.length, 40);
    assert.ok(v.walBytesAfter(0) >= 40 * 64 * 1024);
    await assert.rejects(v.readWalRecords(v.lsnHead + 1, MiB), { code: 'ERR_WAL_GONE' });
    // The pin lifted: the next checkpoints release the WAL, which moves on.
    pin = Number.MAX_SAFE_INTEGER;
    for (let i = 0; i < 80; i++) {
      await v.write((i % 16) * 64 * 1024, block(i));
      if (i % 10 === 9) await v.checkpoint();
    }
    assert.ok(v.walTail > 1, `the WAL released what nobody needs: tail ${v.walTail}`);
    await assert.rejects(v.readWalRecords(1, MiB), { code: 'ERR_WAL_GONE' });
  });
});

test('a pin holding more than the retention budget is dropped: writes never wait on a lagging reader', async () => {
  await withVolume(async (v) => {
    v.setWalPin(() => 1);
    assert.equal(v.walPinBudgetBytes, 4 * MiB);
    // 12 MiB through an 8 MiB WAL: only possible if the pin gives way.
    for (let i = 0; i < 192; i++) {
      await v.write((i % 16) * 64 * 1024, block(i));
      if (i % 8 === 7) await v.checkpoint();
    }
    assert.ok(v.walTail > 1, `the over-budget pin was released: tail ${v.walTail}`);
    assert.ok(v.walBytesAfter(v.walTail) <= 8 * MiB);
  });
});
