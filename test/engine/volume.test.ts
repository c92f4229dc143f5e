// Volume lifecycle and failure behaviour: argument errors, locking, superblock
// fallback and corruption, mid-log corruption, I/O failures stopping writes
// while reads go on, and back-pressure when the WAL is full.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';

import { decodeSlot, encodeSlot, SLOT_BYTES } from '../../lib/engine/superblock';
import { EPOCH_STARTS_MAX } from '../../lib/statemachine/epoch_history';
import { Volume } from '../../lib/engine/volume';
import { OpKind, OpPurpose } from '../../lib/native/ring';
import { tempDir } from '../support/tmp';

const MiB = 1 << 20;

async function withVolume(fn: (vol: Volume, volDir: string) => Promise<void>, sizeBytes = 8 * MiB): Promise<void> {
  const { dir, cleanup } = tempDir('vol');
  const volDir = path.join(dir, 'v');
  const vol = await Volume.create(volDir, { sizeBytes, walSegmentBytes: MiB, walSegmentsMax: 8, flushIdleMs: 0 });
  try {
    await fn(vol, volDir);
  } finally {
    await vol.close();
    cleanup();
  }
}

test('bad requests get typed errors and change nothing', () =>
  withVolume(async (vol) => {
    await vol.write(0, Buffer.alloc(4096, 1));
    const cases: [() => Promise<unknown>, string][] = [
      [() => vol.write(-1, Buffer.alloc(1)), 'ERR_BAD_OFFSET'],
      [() => vol.write(0, Buffer.alloc(0)), 'ERR_BAD_LENGTH'],
      [() => vol.write(8 * MiB - 1, Buffer.alloc(2)), 'ERR_OUT_OF_RANGE'],
      [() => vol.write(0, Buffer.alloc(33 * MiB)), 'ERR_TOO_LARGE'],
      [() => vol.read(1.5, 10), 'ERR_BAD_OFFSET'],
      [() => vol.read(0, 33 * MiB), 'ERR_TOO_LARGE'],
      [() => vol.trim(0, 8 * MiB + 1), 'ERR_OUT_OF_RANGE'],
      [() => vol.writeZeroes(4, 0), 'ERR_BAD_LENGTH'],
    ];
    for (const [call, code] of cases) {
      await assert.rejects(async () => call(), (err: Error & { code: string }) => {
        assert.ok(err instanceof RangeError, err.message);
        assert.equal(err.code, code, err.message);
        return true;
      });
    }
    assert.ok((await vol.read(0, 4096)).every((b) => b === 1));
    assert.equal(vol.status().lsnHead, 1, 'no record was appended');
  }));

test('a volume directory opens once; create refuses a non-empty directory', () =>
  withVolume(async (_vol, volDir) => {
    await assert.rejects(Volume.open(volDir), { code: 'ERR_LOCKED' });
    await assert.rejects(Volume.create(volDir, { sizeBytes: MiB }), { code: 'ERR_EXISTS' });
    await assert.rejects(Volume.open(path.dirname(volDir)), { code: 'ERR_NOT_A_VOLUME' });
  }));

test('superblock slots: encode/decode round trip, every bit flip rejected', () => {
  const fields = {
    uuid: '0123456789abcdef0123456789abcdef',
    sizeBytes: 16 * 2 ** 40,
    blockBytes: 4096,
    epoch: 7,
    checkpointLsn: 2 ** 40 + 3,
    walSegmentBytes: 64 * MiB,
    walRetentionBytes: 1 << 30,
    features: 5,
    createdAtMs: 1700000000000,
    applyChecksum: 0x0123456789abcdefn,
    durabilityCode: 2,
  };
  const slot = Buffer.alloc(SLOT_BYTES);
  encodeSlot(fields, 42, slot);
  assert.deepEqual(decodeSlot(slot), { fields, seq: 42 });
  for (let bit = 0; bit < 128 * 8; bit++) {
    const copy = Buffer.from(slot);
    copy[bit >> 3]! ^= 1 << (bit & 7);
    assert.ok('error' in decodeSlot(copy), `bit ${bit}`);
  }
  const tail = Buffer.from(slot);
  tail[SLOT_BYTES - 1]! ^= 0x80;
  assert.ok('error' in decodeSlot(tail));
});

test('superblock slots: the epoch history round-trips at its size limit; an older slot (zeros there) has none recorded', () => {
  const base = {
    uuid: '0123456789abcdef0123456789abcdef',
    sizeBytes: 2 ** 30,
    blockBytes: 4096,
    epoch: 200,
    checkpointLsn: 2 ** 40,
    walSegmentBytes: 64 * MiB,
    walRetentionBytes: 0,
    features: 0,
    createdAtMs: 1700000000000,
    applyChecksum: 1n,
    durabilityCode: 0,
  };
  const slot = Buffer.alloc(SLOT_BYTES);
  for (const epochStarts of [[], [{ epoch: 2, lsn: 10 }], Array.from({ length: EPOCH_STARTS_MAX }, (_, i) => ({ epoch: i + 2, lsn: 2 ** 40 - 1000 + i }))]) {
    encodeSlot({ ...base, epochStarts }, 9, slot);
    assert.deepEqual(decodeSlot(slot), { fields: { ...base, epochStarts }, seq: 9 });
  }
  encodeSlot(base, 9, slot);
  const older = decodeSlot(slot);
  assert.ok(!('error' in older) && !('epochStarts' in older.fields), 'not recorded: no key');
  assert.throws(() => encodeSlot({ ...base, epochStarts: [{ epoch: 3, lsn: 5 }, { epoch: 2, lsn: 6 }] }, 9, slot), /superblock: epoch start 1/);
});

test('one corrupt superblock slot falls back to the other; both corrupt refuse to open', async () => {
  const { dir, cleanup } = tempDir('volsb');
  const volDir = path.join(dir, 'v');
  try {
    let vol = await Volume.create(volDir, { sizeBytes: MiB, walSegmentBytes: MiB, flushIdleMs: 0 });
    await vol.write(0, Buffer.alloc(4096, 9));
    await vol.close(); // checkpoints: the newest slot holds the new checkpoint
    const file = path.join(volDir, 'superblock');
    const bytes = fs.readFileSync(file);
    const newest = [0, 1].map((i) => decodeSlot(bytes.subarray(i * SLOT_BYTES, (i + 1) * SLOT_BYTES)))
      .map((d, i) => ({ i, seq: 'seq' in d ? d.seq : -1 }))
      .sort((a, b) => b.seq - a.seq)[0]!.i;
    bytes[newest * SLOT_BYTES + 100]! ^= 0xff;
    fs.writeFileSync(file, bytes);
    vol = await Volume.open(volDir);
    assert.match(vol.status().superblockFallback ?? '', /bad checksum/);
    assert.ok((await vol.read(0, 4096)).every((b) => b === 9), 'data intact (the WAL replays past the older checkpoint)');
    await vol.close();
    const again = fs.readFileSync(file);
    again[100]! ^= 0xff;
    again[SLOT_BYTES + 100]! ^= 0xff;
    fs.writeFileSync(file, again);
    await assert.rejects(Volume.open(volDir), { code: 'ERR_SUPERBLOCK_CORRUPT', message: /both superblock slots are invalid/ });
  } finally {
    cleanup();
  }
});

test('a corrupt record in the middle of the log refuses to open and names where', async () => {
  const { dir, cleanup } = tempDir('volcorrupt');
  const volDir = path.join(dir, 'v');
  try {
    const vol = await Volume.create(volDir, { sizeBytes: 4 * MiB, walSegmentBytes: MiB, flushIdleMs: 0, flushTriggerBytes: 1 << 30 });
    // 40 durable writes, one frame each; a failed base.img fdatasync keeps the
    // close from checkpointing, so recovery must scan all of them.
    for (let i = 0; i < 40; i++) await vol.write(i * 4096, Buffer.alloc(4096, 0x80 + i), { fua: true });
    vol.ring.injectFault({ kind: OpKind.fdatasync, purpose: OpPurpose.js, errno: 5 });
    await vol.close();
    const walDir = path.join(volDir, 'wal');
    const segs = fs.readdirSync(walDir).filter((n) => n.endsWith('.wal')).sort();
    // Damage the payload of the 5th record: 35 valid frames follow it.
    let corrupted = '';
    for (const name of segs.reverse()) {
      const f = path.join(walDir, name);
      const b = fs.readFileSync(f);
      const at = b.indexOf(Buffer.alloc(64, 0x84));
      if (at > 0) {
        b[at + 10]! ^= 0x01;
        fs.writeFileSync(f, b);
        corrupted = name;
        break;
      }
    }
    assert.ok(corrupted !== '', 'found the record to damage');
    await assert.rejects(Volume.open(volDir), (err: Error & { code: string }) => {
      assert.equal(err.code, 'ERR_WAL_CORRUPT');
      assert.ok(err.message.includes(corrupted), err.message);
      return true;
    });
  } finally {
    cleanup();
  }
});

test('a WAL write error stops writes with the reason; reads go on', () =>
  withVolume(async (vol) => {
    await vol.write(0, Buffer.alloc(8192, 3), { fua: true });
    vol.ring.injectFault({ kind: OpKind.write, purpose: OpPurpose.walGroup, errno: 5 });
    await assert.rejects(vol.write(8192, Buffer.alloc(4096, 4), { fua: true }), { code: 'ERR_WAL_FATAL' });
    await assert.rejects(vol.write(0, Buffer.alloc(10)), (err: Error & { code: string }) => {
      assert.equal(err.code, 'ERR_VOLUME_FAILED');
      assert.match(err.message, /write to WAL segment .* failed/);
      return true;
    });
    await assert.rejects(vol.flush(), { code: 'ERR_VOLUME_FAILED' });
    assert.ok((await vol.read(0, 8192)).every((b) => b === 3), 'acknowledged data still reads');
    assert.match(vol.status().failure ?? '', /WAL/);
  }));

test('a failed base.img fdatasync during a checkpoint stops writes; data stays readable from the WAL', () =>
  withVolume(async (vol) => {
    await vol.write(4096, Buffer.alloc(4096, 5), { fua: true });
    vol.ring.injectFault({ kind: OpKind.fdatasync, purpose: OpPurpose.js, errno: 5 });
    await assert.rejects(vol.checkpoint(), { errno: 5 });
    await assert.rejects(vol.write(0, Buffer.alloc(4096)), { code: 'ERR_VOLUME_FAILED' });
    assert.equal(vol.status().checkpointLsn, 0, 'the checkpoint did not advance');
    assert.ok((await vol.read(4096, 4096)).every((b) => b === 5));
  }));

test('a full WAL makes writes wait for a checkpoint instead of failing', async () => {
  const { dir, cleanup } = tempDir('volfull');
  const volDir = path.join(dir, 'v');
  // 3 segments of 1 MiB and a checkpoint trigger far above: only WAL pressure starts the flusher.
  const vol = await Volume.create(volDir, { sizeBytes: 16 * MiB, walSegmentBytes: MiB, walSegmentsMax: 3, flushIdleMs: 0, flushTriggerBytes: 1 << 30 });
  try {
    const chunk = Buffer.alloc(256 * 1024, 0x5a);
    for (let i = 0; i < 48; i++) await vol.write((i * chunk.byteLength) % (16 * MiB), chunk);
    assert.ok(vol.status().checkpoints > 0, 'checkpoints ran under WAL pressure');
    assert.ok(vol.status().walSegments <= 3);
    assert.ok((await vol.read(0, 16 * MiB - 4 * MiB)).every((b) => b === 0x5a));
  } finally {
    await vol.close();
    cleanup();
  }
});

test('the retention budget keeps checkpointed WAL; without it the WAL is released', async () => {
  const tails: Record<string, { head: number; tail: number; checkpoint: number }> = {};
  for (const retention of [0, 3 * MiB]) {
    const { dir, cleanup } = tempDir('volret');
    const vol = await Volume.create(path.join(dir, 'v'), {
      sizeBytes: 16 * MiB,
      walSegmentBytes: MiB,
      walSegmentsMax: 12,
      walRetentionBytes: retention,
      flushIdleMs: 0,
      flushTriggerBytes: 1 << 30,
    });
    try {
      for (let i = 0; i < 32; i++) {
        await vol.write(i * 256 * 1024, Buffer.alloc(256 * 1024, i), { fua: true });
        if (i % 4 === 3) await vol.checkpoint();
      }
      const s = vol.status();
      assert.equal(s.walRetentionBytes, retention);
      tails[String(retention)] = { head: s.lsnHead, tail: s.lsnTail, checkpoint: s.checkpointLsn };
    } finally {
      await vol.close();
      cleanup();
    }
  }
  const none = tails['0']!;
  const kept = tails[String(3 * MiB)]!;
  // 256 KiB per record: 3 MiB of retention holds at least ~10 checkpointed records.
  assert.ok(kept.checkpoint - kept.tail >= 10, `retained ${JSON.stringify(kept)}`);
  assert.ok(none.checkpoint - none.tail < kept.checkpoint - kept.tail, `released ${JSON.stringify(none)}`);
});

// With a retention budget, a checkpoint keeps the WAL back to the newest
// earlier checkpoint at least that many bytes behind. Filled with no
// checkpoint before, the first one (under pressure) finds no such mark, and
// the next has nothing to apply: only the rule that a full WAL keeps nothing
// for the budget lets the writes go on.
test('a full WAL with a retention budget and nothing left to apply still takes writes', { timeout: 30_000 }, async () => {
  const { dir, cleanup } = tempDir('volfullret');
  const vol = await Volume.create(path.join(dir, 'v'), {
    sizeBytes: 16 * MiB,
    walSegmentBytes: MiB,
    walSegmentsMax: 4,
    walRetentionBytes: MiB,
    flushIdleMs: 0,
    flushTriggerBytes: 1 << 30,
  });
  try {
    const chunk = 256 * 1024;
    // 40 chunks of 256 KiB: 10 MiB, more than the WAL's 4 segments, within the volume.
    for (let i = 0; i < 40; i++) await vol.write(i * chunk, Buffer.alloc(chunk, i + 1));
    const s = vol.status();
    assert.ok(s.checkpoints >= 2, `checkpoints ran under WAL pressure (${s.checkpoints})`);
    assert.ok(s.walSegments <= 4);
    for (let i = 0; i < 40; i++) assert.ok((await vol.read(i * chunk, chunk)).every((b) => b === i + 1), `chunk ${i}`);
  } finally {
    await vol.close();
    cleanup();
  }
});

test('a volume stopped while every WAL segment held live records reopens and takes writes', { timeout: 60000 }, async () => {
  const { dir, cleanup } = tempDir('volfullreopen');
  const volDir = path.join(dir, 'v');
  const opts = { walSegmentsMax: 3, flushIdleMs: 0, flushTriggerBytes: 1 << 30 };
  try {
    const vol = await Volume.create(volDir, { sizeBytes: 16 * MiB, walSegmentBytes: MiB, ...opts });
    for (let i = 0; i < 8; i++) await vol.write(i * 256 * 1024, Buffer.alloc(256 * 1024, i + 1), { fua: true });
    assert.equal(vol.status().walSegments, 3);
    assert.equal(vol.status().checkpointLsn, 0);
    // The close's checkpoint fails: the WAL stays full, as after a crash.
    vol.ring.injectFault({ kind: OpKind.fdatasync, purpose: OpPurpose.js, errno: 5 });
    await vol.close();
    const reopened = await Volume.open(volDir, opts);
    await reopened.write(15 * MiB, Buffer.alloc(4096, 0xee), { fua: true });
    for (let i = 0; i < 8; i++) {
      assert.ok((await reopened.read(i * 256 * 1024, 256 * 1024)).every((b) => b === i + 1), `chunk ${i}`);
    }
    assert.ok(reopened.status().checkpoints >= 1, 'a checkpoint freed the WAL');
    await reopened.close();
  } finally {
    cleanup();
  }
});

test('a checkpoint never skips a durable version whose newer replacement is not yet written', async () => {
  const { dir, cleanup } = tempDir('volckpt');
  const volDir = path.join(dir, 'v');
  const copy = path.join(dir, 'copy');
  try {
    const vol = await Volume.create(volDir, { sizeBytes: MiB, walSegmentBytes: MiB, flushIdleMs: 0, flushTriggerBytes: 1 << 30 });
    const x = Buffer.alloc(4096, 0x58);
    await vol.write(0, x);
    await vol.flush(); // X is durable
    // Y's group never reaches the disk; the checkpoint races it.
    vol.ring.injectFault({ kind: OpKind.write, purpose: OpPurpose.walGroup, errno: 5 });
    const y = vol.write(0, Buffer.alloc(4096, 0x59)).catch((e: { code: string }) => e.code);
    await vol.checkpoint().catch(() => undefined);
    assert.equal(await y, 'ERR_WAL_FATAL');
    fs.cpSync(volDir, copy, { recursive: true });
    fs.rmSync(path.join(copy, 'lock'));
    const reopened = await Volume.open(copy);
    const block = await reopened.read(0, 4096);
    await reopened.close();
    await vol.close();
    assert.ok(block.equals(x), `block 0 after recovery holds 0x${block[0]!.toString(16)}, expected X (0x58)`);
  } finally {
    cleanup();
  }
});

test('a whole-block write called after a trim that waits behind a sub-block write lands after the trim', async () => {
  // Found by the volume model: the write got its LSN at once and the trim,
  // waiting for the sub-block write to block 1, zeroed it afterwards.
  for (let i = 0; i < 20; i++) {
    await withVolume(async (vol, volDir) => {
      const block = Buffer.alloc(4096, 7);
      await Promise.all([
        vol.write(4096, Buffer.from([1])),
        vol.trim(0, 8192),
        vol.write(0, block),
        vol.write(0, Buffer.from([9])),
      ]);
      const want = Buffer.concat([Buffer.from([9]), block.subarray(1), Buffer.alloc(4096)]);
      assert.ok((await vol.read(0, 8192)).equals(want), 'before a reopen');
      await vol.close();
      const reopened = await Volume.open(volDir, { flushIdleMs: 0 });
      try {
        assert.ok((await reopened.read(0, 8192)).equals(want), 'after a reopen');
      } finally {
        await reopened.close();
      }
    });
  }
});
