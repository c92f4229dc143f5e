// The retained WAL across a restart (lib/engine/wal_retention.ts):
//  - the floor a checkpoint records (pin, retention budget) is where the WAL
//    starts after a reopen: walTail reports it, readWalRecords serves the
//    records below the checkpoint as they were shipped, and replay applies
//    only what lies above the checkpoint (reads, dirty map, apply chain);
//  - what was kept is held after open until a reader pins the WAL, and the
//    retention budget still bounds it;
//  - a floor that names WAL which is gone or damaged never refuses the open:
//    the retained range starts later (walTail says where, honestly); damage
//    above the checkpoint still refuses it.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';

import pino from 'pino';

import { decodeSlot, encodeSlot, SLOT_BYTES } from '../../lib/engine/superblock';
import { Volume, type VolumeCreateOptions } from '../../lib/engine/volume';
import { WalIndex } from '../../lib/engine/wal_index';
import { WalRetention } from '../../lib/engine/wal_retention';
import { OpKind, OpPurpose } from '../../lib/native/ring';
import { scanWal, segmentFileName } from '../../lib/native/wal_format';
import { tempDir } from '../support/tmp';

const MiB = 1 << 20;
const KiB = 1024;
// 1 MiB segments, at most 8: the pin budget is 4 MiB.
const OPEN = { walSegmentsMax: 8, flushIdleMs: 0 };

interface Fixture {
  volDir: string;
  shipped: Map<number, Buffer>;
}

async function withDir(prefix: string, fn: (f: Fixture) => Promise<void>): Promise<void> {
  const { dir, cleanup } = tempDir(prefix);
  try {
    await fn({ volDir: path.join(dir, 'v'), shipped: new Map() });
  } finally {
    cleanup();
  }
}

function create(f: Fixture, extra: Partial<VolumeCreateOptions> = {}): Promise<Volume> {
  return Volume.create(f.volDir, { sizeBytes: 16 * MiB, walSegmentBytes: MiB, ...OPEN, onRecord: (r) => f.shipped.set(r.lsn, Buffer.from(r.bytes)), ...extra });
}

function fill(lengthBytes: number, byte: number): Buffer {
  return Buffer.alloc(lengthBytes, byte & 0xff);
}

// 64 KiB writes i = from..to-1 at block-aligned spots past the first MiB (blocks 0-255 stay for the A/B/C/D writes).
async function writeChunks(v: Volume, from: number, to: number, checkpointEvery: number): Promise<void> {
  for (let i = from; i < to; i++) {
    await v.write(MiB + (i % 64) * 64 * KiB, fill(64 * KiB, i));
    if (i % checkpointEvery === checkpointEvery - 1) await v.checkpoint();
  }
}

// Every record after walTail reads back as it was shipped; returns how many.
async function assertWalAsShipped(v: Volume, shipped: Map<number, Buffer>): Promise<number> {
  let n = 0;
  for (let lsn = v.walTail + 1; lsn <= v.lsnHead; ) {
    const records = await v.readWalRecords(lsn, 256 * KiB);
    assert.ok(records.length >= 1);
    for (const r of records) {
      assert.equal(r.lsn, lsn);
      assert.deepEqual(r.bytes, shipped.get(lsn), `LSN ${lsn} reads back as shipped`);
      lsn++;
      n++;
    }
  }
  return n;
}

// Sets the superblock's recorded floor in both slots (the volume must be closed).
function setSuperblockWalTail(volDir: string, walTailLsn: number): void {
  const file = path.join(volDir, 'superblock');
  const bytes = fs.readFileSync(file);
  for (const i of [0, 1]) {
    const slot = bytes.subarray(i * SLOT_BYTES, (i + 1) * SLOT_BYTES);
    const d = decodeSlot(slot);
    assert.ok(!('error' in d), `slot ${i} decodes`);
    encodeSlot({ ...d.fields, walTailLsn }, d.seq, slot);
  }
  fs.writeFileSync(file, bytes);
}

// Flips a payload byte of the record at lsn in its segment file (the volume must be closed).
async function damageRecord(volDir: string, lsn: number): Promise<number> {
  const walDir = path.join(volDir, 'wal');
  const scan = await scanWal({ dir: walDir, lsnFrom: 1, segmentBytes: MiB });
  const i = Array.from(scan.records.lsn).indexOf(lsn);
  assert.ok(i >= 0, `LSN ${lsn} is in the WAL`);
  const seq = scan.records.segmentSeq[i]!;
  const file = path.join(walDir, segmentFileName(seq));
  const fd = fs.openSync(file, 'r+');
  try {
    const at = scan.records.offsetBytes[i]! + 64 + 100;
    const b = Buffer.alloc(1);
    fs.readSync(fd, b, 0, 1, at);
    b[0]! ^= 0x01;
    fs.writeSync(fd, b, 0, 1, at);
  } finally {
    fs.closeSync(fd);
  }
  return seq;
}

// Closes the volume as a crash would leave it: the close's checkpoint fails,
// so what lies above the last checkpoint stays in the WAL only.
async function closeWithoutCheckpoint(v: Volume): Promise<void> {
  await v.flush();
  v.ring.injectFault({ kind: OpKind.fdatasync, purpose: OpPurpose.js, errno: 5 });
  await v.close();
}

test('WalIndex.lsnKeeping: the highest LSN that still keeps the given bytes after it', () => {
  const ix = new WalIndex();
  assert.equal(ix.lsnKeeping(100), 0, 'empty');
  for (let lsn = 11; lsn <= 20; lsn++) ix.add(lsn, 0, (lsn - 11) * 100, 100);
  assert.equal(ix.lsnKeeping(0), 20);
  assert.equal(ix.lsnKeeping(1), 19);
  assert.equal(ix.lsnKeeping(100), 19);
  assert.equal(ix.lsnKeeping(101), 18);
  assert.equal(ix.lsnKeeping(1000), 10, 'exactly everything: release nothing');
  assert.equal(ix.lsnKeeping(1001), 10, 'more than there is: release nothing');
  for (let keep = 1; keep <= 1000; keep += 37) {
    const l = ix.lsnKeeping(keep);
    assert.ok(ix.bytesAfter(l) >= keep && (l === 20 || ix.bytesAfter(l + 1) < keep), `keep ${keep}: ${l}`);
  }
  ix.dropBelow(15);
  assert.equal(ix.lsnKeeping(600), 14);
});

// An index of LSNs 11..110, 100 bytes each, and a retention over it whose
// floor is lsnTail and checkpoint lsnCheckpoint at open.
function retentionOver(limits: { retentionBytes: number; pinBudgetBytes: number }, lsnTail: number, lsnCheckpoint: number): WalRetention {
  const ix = new WalIndex();
  for (let lsn = 11; lsn <= 110; lsn++) ix.add(lsn, 0, (lsn - 11) * 100, 100);
  return new WalRetention(limits, ix, pino({ level: 'silent' }), lsnTail, lsnCheckpoint);
}

test('WalRetention: the floor a checkpoint records, for each rule', () => {
  const budget = { retentionBytes: 0, pinBudgetBytes: 20_000 };
  const at = (to: number, pin?: number, walFull = false): { to: number; walBytes: number; pin: number | undefined; walFull: boolean } => ({ to, walBytes: 0, pin, walFull });
  // Nothing kept at open, no reader: everything up to the checkpoint goes.
  assert.equal(retentionOver(budget, 60, 60).decide(at(80)), 80);
  // A reader's pin within the budget keeps the WAL from it; the floor never goes down.
  const pinned = retentionOver(budget, 60, 60);
  assert.equal(pinned.decide(at(80, 71)), 70);
  assert.equal(pinned.decide(at(90, 65)), 70, 'a lower pin cannot bring released WAL back');
  assert.equal(pinned.decide(at(95, 71, true)), 95, 'a full WAL is released whatever the pin');
  // Kept at open (floor 10 below the checkpoint 60): held with no reader while it fits the budget.
  const held = retentionOver(budget, 10, 60);
  assert.equal(held.decide(at(70)), 10);
  assert.equal(retentionOver({ retentionBytes: 0, pinBudgetBytes: 9000 }, 10, 60).decide(at(70)), 70, 'over the budget (10000 bytes after LSN 10): released');
  // A reader that reports takes over from the hold.
  held.pinned();
  assert.equal(held.decide(at(80, 41)), 40);
  // A withdrawn pin leaves a hold on what it kept.
  held.unpinned(41);
  assert.equal(held.decide(at(90)), 40);
  // A withdrawn pin that kept nothing leaves no hold.
  held.pinned();
  held.unpinned(Number.MAX_SAFE_INTEGER);
  assert.equal(held.decide(at(100)), 100);
  // The WAL replaced (a rebuild): the floor restarts there.
  held.replaced(100);
  assert.equal(held.decide(at(105)), 105);
  // With a retention budget, records kept from before the restart go by bytes: 3000 bytes
  // after LSN 80, but never past the checkpoint at open (60); 6000 bytes after LSN 50.
  assert.equal(retentionOver({ retentionBytes: 3000, pinBudgetBytes: 2000 }, 10, 60).decide(at(110)), 60);
  const inherited = retentionOver({ retentionBytes: 6000, pinBudgetBytes: 2000 }, 10, 60);
  assert.equal(inherited.decide(at(110)), 50);
  assert.throws(() => inherited.decide(at(40)), /floor 50 above the checkpoint 40/);
});

test('WalRetention: a full WAL keeps nothing for the retention budget; the floor it gives is the checkpoint', () => {
  const r = retentionOver({ retentionBytes: 5000, pinBudgetBytes: 2000 }, 60, 60);
  // Marks at each checkpoint; the floor follows the newest one 5000 WAL bytes behind.
  assert.equal(r.decide({ to: 70, walBytes: 1000, pin: undefined, walFull: false }), 60);
  assert.equal(r.decide({ to: 80, walBytes: 3000, pin: undefined, walFull: false }), 60, 'no mark 5000 bytes behind yet');
  assert.equal(r.floor, 60);
  // Full: the budget gives way, whether or not records arrived since the last checkpoint.
  assert.equal(r.decide({ to: 80, walBytes: 3000, pin: undefined, walFull: true }), 80);
  assert.equal(r.floor, 80);
  assert.equal(r.decide({ to: 90, walBytes: 4000, pin: 61, walFull: true }), 90, 'nor does a pin keep a full WAL');
  // Afterwards the budget keeps WAL again, from marks after the full one.
  assert.equal(r.decide({ to: 100, walBytes: 5000, pin: undefined, walFull: false }), 90);
  assert.equal(r.decide({ to: 110, walBytes: 10_000, pin: undefined, walFull: false }), 100);
});

test('a pinned WAL survives close and reopen: walTail is the floor, records below the checkpoint read back as shipped, nothing is re-applied', { timeout: 60_000 }, () =>
  withDir('wal-restart-clean', async (f) => {
    const v = await create(f);
    let pin = 1;
    v.setWalPin(() => pin);
    await v.write(0, fill(4096, 0xa1)); // block 0: A (LSN 1), B later
    await writeChunks(v, 0, 20, 5);
    await v.write(0, fill(4096, 0xb2));
    pin = 6; // the reader needs LSN 6 on: the floor is 5
    await writeChunks(v, 20, 40, 5);
    const head = v.lsnHead;
    const applyChecksum = v.applyChecksum;
    assert.equal(v.lsnCheckpoint, head);
    await v.close();

    const r = await Volume.open(f.volDir, OPEN);
    try {
      assert.equal(r.walTail, 5, 'the WAL after reopen starts at the floor');
      assert.equal(r.lsnCheckpoint, head);
      assert.equal(r.lsnHead, head);
      assert.equal(r.lsnApplied, head);
      assert.equal(r.applyChecksum, applyChecksum, 'the apply chain is the checkpoint\'s');
      assert.equal(r.status().dirtyBlocks, 0, 'records at or below the checkpoint were not re-applied');
      assert.equal(await assertWalAsShipped(r, f.shipped), head - 5);
      await assert.rejects(r.readWalRecords(5, MiB), { code: 'ERR_WAL_GONE' });
      assert.ok((await r.read(0, 4096)).every((b) => b === 0xb2), 'block 0 reads B, the newer write');
      for (let i = 24; i < 40; i++) assert.ok((await r.read(MiB + (i % 64) * 64 * KiB, 64 * KiB)).every((b) => b === i), `chunk ${i}`);

      // Until a reader pins the WAL, what was kept is held.
      await writeChunks(r, 40, 45, 5);
      assert.equal(r.walTail, 5, 'held across a checkpoint with no reader');
      // A reader that needs nothing: the next checkpoint releases it all.
      r.setWalPin(() => Number.MAX_SAFE_INTEGER);
      await writeChunks(r, 45, 50, 5);
      assert.ok(r.walTail >= head, `released: tail ${r.walTail}, old head ${head}`);
    } finally {
      await r.close();
    }
    const again = await Volume.open(f.volDir, OPEN);
    try {
      assert.equal(again.walTail, again.lsnCheckpoint, 'nothing below the checkpoint was kept, so nothing is claimed');
    } finally {
      await again.close();
    }
  }));

test('after a crash, replay applies only the records above the checkpoint; the ones below are served from the WAL', { timeout: 60_000 }, () =>
  withDir('wal-restart-crash', async (f) => {
    const v = await create(f);
    v.setWalPin(() => 1);
    await v.write(0, fill(4096, 0xa1)); // A
    await writeChunks(v, 0, 20, 10);
    await v.write(0, fill(4096, 0xb2)); // B
    await v.checkpoint();
    const checkpoint = v.lsnCheckpoint;
    await v.write(4096, fill(4096, 0xc3)); // C, above the checkpoint
    await v.write(0, fill(4096, 0xd4)); // D, above the checkpoint
    const head = v.lsnHead;
    const applyChecksum = v.applyChecksum;
    await closeWithoutCheckpoint(v);

    const r = await Volume.open(f.volDir, OPEN);
    try {
      assert.equal(r.lsnCheckpoint, checkpoint, 'the crash left the checkpoint where it was');
      assert.equal(r.walTail, 0, 'every record is still in the WAL');
      assert.equal(r.lsnApplied, head);
      assert.equal(r.applyChecksum, applyChecksum, 'the chain over the replayed records continues the checkpoint\'s');
      assert.equal(r.status().dirtyBlocks, 2, 'only C and D were replayed into the dirty map');
      assert.ok((await r.read(0, 4096)).every((b) => b === 0xd4), 'block 0 reads D');
      assert.ok((await r.read(4096, 4096)).every((b) => b === 0xc3), 'block 1 reads C');
      assert.equal(await assertWalAsShipped(r, f.shipped), head);
      const replayed = await r.replayedRecords();
      assert.deepEqual(
        replayed.map((x) => x.lsn),
        [head - 1, head],
        'the replication backlog is seeded with the records above the checkpoint only',
      );
    } finally {
      await r.close();
    }
  }));

test('the retention budget keeps WAL across a reopen and still bounds it afterwards', { timeout: 60_000 }, () =>
  withDir('wal-restart-budget', async (f) => {
    const retentionBytes = 2 * MiB;
    const v = await create(f, { walRetentionBytes: retentionBytes });
    await writeChunks(v, 0, 48, 8); // 3 MiB
    const checkpoint = v.lsnCheckpoint;
    const tailBefore = v.walTail;
    assert.ok(tailBefore > 0 && tailBefore < checkpoint, `retained before close: tail ${tailBefore}, checkpoint ${checkpoint}`);
    await v.close();

    const r = await Volume.open(f.volDir, OPEN);
    try {
      const tail = r.walTail;
      assert.ok(tail >= tailBefore && tail < checkpoint, `retained after reopen: tail ${tail} (before ${tailBefore}), checkpoint ${checkpoint}`);
      assert.ok(r.walBytesAfter(tail) >= 1.5 * MiB, `about the budget is kept: ${r.walBytesAfter(tail)} bytes`);
      await assertWalAsShipped(r, f.shipped);
      // 6 MiB more through an 8 MiB WAL: the old records must go, by the budget.
      await writeChunks(r, 48, 144, 8);
      assert.ok(r.walTail > checkpoint, `the records kept from before the restart were released: tail ${r.walTail}`);
      assert.ok(r.walBytesAfter(r.walTail) <= retentionBytes + 2 * MiB, `held ${r.walBytesAfter(r.walTail)} bytes for a ${retentionBytes}-byte budget`);
      for (let i = 80; i < 144; i++) assert.ok((await r.read(MiB + (i % 64) * 64 * KiB, 64 * KiB)).every((b) => b === (i & 0xff)), `chunk ${i}`);
    } finally {
      await r.close();
    }
  }));

test('a recorded floor beyond the checkpoint claims nothing below it', { timeout: 60_000 }, () =>
  withDir('wal-restart-beyond', async (f) => {
    const v = await create(f);
    await writeChunks(v, 0, 10, 5);
    await v.close();
    setSuperblockWalTail(f.volDir, 1e12);
    const r = await Volume.open(f.volDir, OPEN);
    try {
      assert.equal(r.walTail, r.lsnCheckpoint);
      assert.ok((await r.read(MiB + 9 * 64 * KiB, 64 * KiB)).every((b) => b === 9));
    } finally {
      await r.close();
    }
  }));

test('a floor naming recycled WAL opens; walTail falls back to what is really there', { timeout: 60_000 }, () =>
  withDir('wal-restart-recycled', async (f) => {
    const v = await create(f);
    await writeChunks(v, 0, 200, 8); // 12.5 MiB through an 8 MiB WAL: LSN 1 is long recycled
    const head = v.lsnHead;
    await v.close();
    setSuperblockWalTail(f.volDir, 0);
    const r = await Volume.open(f.volDir, OPEN);
    try {
      const tail = r.walTail;
      assert.ok(tail > 0 && tail <= r.lsnCheckpoint, `tail ${tail}, checkpoint ${r.lsnCheckpoint}`);
      const n = await assertWalAsShipped(r, f.shipped);
      assert.equal(n, head - tail, 'every record walTail claims reads back');
      for (let i = 136; i < 200; i++) assert.ok((await r.read(MiB + (i % 64) * 64 * KiB, 64 * KiB)).every((b) => b === (i & 0xff)), `chunk ${i}`);
    } finally {
      await r.close();
    }
  }));

test('a damaged record below the checkpoint does not refuse the open: the retained range starts after it', { timeout: 60_000 }, () =>
  withDir('wal-restart-damaged', async (f) => {
    const v = await create(f);
    v.setWalPin(() => 1);
    await writeChunks(v, 0, 48, 8); // 3 MiB over 4 segments, all kept
    const head = v.lsnHead;
    await v.close();
    await damageRecord(f.volDir, 3);
    const r = await Volume.open(f.volDir, OPEN);
    try {
      const tail = r.walTail;
      assert.ok(tail >= 3, `the damaged LSN 3 is not claimed: tail ${tail}`);
      assert.ok(tail < r.lsnCheckpoint, `the undamaged segments after it are still retained: tail ${tail}, checkpoint ${r.lsnCheckpoint}`);
      assert.equal(await assertWalAsShipped(r, f.shipped), head - tail);
      for (let i = 0; i < 48; i++) assert.ok((await r.read(MiB + (i % 64) * 64 * KiB, 64 * KiB)).every((b) => b === i), `chunk ${i}`);
    } finally {
      await r.close();
    }
  }));

test('a damaged record above the checkpoint still refuses the open, with a floor below it', { timeout: 60_000 }, () =>
  withDir('wal-restart-corrupt', async (f) => {
    const v = await create(f);
    v.setWalPin(() => 1);
    await writeChunks(v, 0, 10, 10);
    const checkpoint = v.lsnCheckpoint;
    // Durable one by one: every later frame proves the damaged one had been durable.
    for (let i = 10; i < 20; i++) await v.write(MiB + i * 64 * KiB, fill(64 * KiB, i), { fua: true });
    await closeWithoutCheckpoint(v);
    await damageRecord(f.volDir, checkpoint + 3);
    await assert.rejects(Volume.open(f.volDir, OPEN), (err: Error & { code: string }) => {
      assert.equal(err.code, 'ERR_WAL_CORRUPT', err.message);
      return true;
    });
  }));
