// The WAL writer on the real kernel: group commit acknowledges only what is
// durable (checked against a disk model over a trace of every submission and
// completion, with completions shuffled by a seeded PRNG), records read back
// after reopen, injected write/sync errors are fatal and final, and a full WAL
// applies back-pressure until segments are released.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as path from 'node:path';

import { OpKind, OpPurpose, Ring, type TraceEvent } from '../../lib/native/ring';
import { type AppendedRecord, Wal } from '../../lib/native/wal';
import { checkWalTrace } from '../support/durability_model';
import { tempDir, turnUntil } from '../support/tmp';
import { payloadFor, runWalModel } from '../support/wal_model_run';

const SEGMENT_BYTES = 1 << 20;
const EIO = 5;
const ENOSPC = 28;

async function openWal(ring: Ring, dir: string, extra: Partial<Parameters<typeof Wal.open>[1]> = {}) {
  return Wal.open(ring, { dir: path.join(dir, 'wal'), create: true, segmentBytes: SEGMENT_BYTES, groupBytes: 64 << 10, ...extra });
}


test('group commit reports written/durable only when the disk model agrees (seeded shuffles)', async () => {
  const seeds = [1, 2, 3, 4, 5, 6, 7, 8];
  let totalGroups = 0;
  let totalSyncs = 0;
  for (const seed of seeds) {
    const report = await runWalModel(seed, { operations: 600, fuaShare: 0.3 });
    assert.deepEqual(report.violations, [], `seed ${seed}`);
    assert.ok(report.durableEvents > 0 && report.writtenEvents > 0, `seed ${seed}: events traced`);
    totalGroups += report.groups;
    totalSyncs += report.syncs;
  }
  console.log(`durability model: seeds ${seeds.join(',')}: ${totalGroups} groups, ${totalSyncs} fdatasyncs, 0 violations`);
  assert.ok(totalSyncs > 0, 'the fdatasync path was exercised');
});

test('the durability model catches an acknowledgement that no sync covers', () => {
  const base = { fd: 9, slot: 0, timeNs: 0, flags: 0, result: 0, kind: OpKind.write, purpose: OpPurpose.walGroup, lengthBytes: 4096, offsetBytes: 0 };
  const trace: TraceEvent[] = [
    { ...base, seq: 1, type: 'submit', a: 1, b: 3 },
    { ...base, seq: 2, type: 'complete', result: 4096, a: 0, b: 0 },
    { ...base, seq: 3, type: 'event', kind: 1, a: 3, b: 0, purpose: OpPurpose.any },
    { ...base, seq: 4, type: 'event', kind: 2, a: 3, b: 0, purpose: OpPurpose.any },
  ];
  const report = checkWalTrace(trace);
  assert.equal(report.violations.length, 1);
  assert.match(report.violations[0]!, /durable 3 .* not durable/);
});

test('records read back after reopen, from memory and from disk, across segments', async () => {
  const { dir, cleanup } = tempDir('walread');
  const ring = Ring.open({ depth: 128, arenaBytes: 32 << 20 });
  try {
    let { wal } = await openWal(ring, dir);
    const appended: AppendedRecord[] = [];
    for (let i = 0; i < 400; i++) {
      const blocks = 1 + (i % 3);
      appended.push(await wal.appendLocated({ kind: 'write', epoch: 7, lba: i * 3, lengthBlocks: blocks, payload: payloadFor(i, blocks * 4096), fua: i % 50 === 0 }));
    }
    appended.push(await wal.appendLocated({ kind: 'trim', epoch: 7, lba: 5, lengthBlocks: 1 << 20 }));
    await wal.flush();
    const segments = new Set(appended.map((a) => a.segmentSeq));
    assert.ok(segments.size >= 3, `spans ${segments.size} segments`);
    const recent = appended[appended.length - 2]!;
    const fromMemory = await wal.readRecord(recent.segmentSeq, recent.offsetBytes, recent.spanBytes);
    assert.deepEqual(fromMemory.subarray(64), payloadFor(399, (1 + (399 % 3)) * 4096));
    await wal.close();

    const reopened = await openWal(ring, dir);
    wal = reopened.wal;
    assert.equal(reopened.scan.lsnNext, appended.length + 1);
    assert.equal(reopened.scan.records.count, appended.length);
    for (const i of [0, 1, 57, 200, 399]) {
      const a = appended[i]!;
      assert.equal(reopened.scan.records.lsn[i], a.lsn);
      const rec = await wal.readRecord(a.segmentSeq, a.offsetBytes, a.spanBytes);
      assert.deepEqual(rec.subarray(64), payloadFor(i, (1 + (i % 3)) * 4096), `record ${i}`);
    }
    // New appends continue the LSNs in a fresh segment.
    const next = await wal.appendLocated({ kind: 'write', epoch: 8, lba: 1, lengthBlocks: 1, payload: payloadFor(1), fua: true });
    assert.equal(next.lsn, appended.length + 1);
    assert.ok(next.segmentSeq > Math.max(...segments));
    await wal.close();
  } finally {
    await ring.close();
    cleanup();
  }
});

async function fatalCase(name: string, rule: Parameters<Ring['injectFault']>[0], fua: boolean, expectErrno: number) {
  const { dir, cleanup } = tempDir('walfault');
  const ring = Ring.open({ depth: 128, arenaBytes: 32 << 20 });
  try {
    const { wal } = await openWal(ring, dir);
    for (let i = 0; i < 20; i++) await wal.append({ kind: 'write', epoch: 1, lba: i, lengthBlocks: 1, payload: payloadFor(i), fua: true });
    const durableBefore = wal.lsnDurable;
    assert.equal(durableBefore, 20);
    ring.injectFault(rule);
    const victim = wal.append({ kind: 'write', epoch: 1, lba: 99, lengthBlocks: 1, payload: payloadFor(99), fua });
    const flushed = wal.flush();
    const results = await Promise.allSettled([victim, flushed]);
    const rejected = results.filter((r) => r.status === 'rejected') as PromiseRejectedResult[];
    assert.ok(rejected.length >= 1, `${name}: something was refused`);
    for (const r of rejected) {
      assert.equal(r.reason.code, 'ERR_WAL_FATAL', `${name}: ${r.reason.message}`);
      assert.equal(r.reason.errno, expectErrno);
    }
    assert.equal(wal.lsnDurable, durableBefore, `${name}: durable LSN did not move past the failure`);
    assert.equal(wal.status().failed, true);
    // Nothing later is accepted, let alone acknowledged.
    await assert.rejects(wal.append({ kind: 'write', epoch: 1, lba: 100, lengthBlocks: 1, payload: payloadFor(100), fua: true }), { code: 'ERR_WAL_FATAL' });
    await assert.rejects(wal.flush(), { code: 'ERR_WAL_FATAL' });
    await wal.close();
    ring.clearFaults();
    const reopened = await openWal(ring, dir);
    assert.ok(reopened.scan.lsnNext - 1 >= durableBefore, `${name}: every durable record survives`);
    await reopened.wal.close();
  } finally {
    await ring.close();
    cleanup();
  }
}

test('EIO on a DSYNC group write is fatal', () => fatalCase('eio-dsync', { kind: OpKind.write, purpose: OpPurpose.walGroup, errno: EIO }, true, EIO));
test('ENOSPC on a group write is fatal', () => fatalCase('enospc', { kind: OpKind.write, purpose: OpPurpose.walGroup, errno: ENOSPC }, false, ENOSPC));
test('EIO on fdatasync is fatal and never retried', async () => {
  const { dir, cleanup } = tempDir('walsync');
  const ring = Ring.open({ depth: 128, arenaBytes: 32 << 20 });
  try {
    ring.setTrace(true);
    const { wal } = await openWal(ring, dir);
    for (let i = 0; i < 10; i++) await wal.append({ kind: 'write', epoch: 1, lba: i, lengthBlocks: 1, payload: payloadFor(i), fua: false });
    assert.equal(wal.lsnWritten, 10);
    const durableBefore = wal.lsnDurable;
    assert.ok(durableBefore < 10);
    ring.injectFault({ kind: OpKind.fdatasync, purpose: OpPurpose.walSync, errno: EIO });
    await assert.rejects(wal.flush(), (err: NodeJS.ErrnoException & { code: string }) => {
      assert.equal(err.code, 'ERR_WAL_FATAL');
      assert.match(err.message, /fdatasync of WAL segment/);
      return true;
    });
    assert.equal(wal.lsnDurable, durableBefore);
    await assert.rejects(wal.append({ kind: 'write', epoch: 1, lba: 1, lengthBlocks: 1, payload: payloadFor(1), fua: true }), { code: 'ERR_WAL_FATAL' });
    const syncs = ring.takeTrace().filter((e) => e.type === 'submit' && e.purpose === OpPurpose.walSync);
    assert.equal(syncs.length, 1, 'the failed sync was not retried');
    await wal.close();
  } finally {
    await ring.close();
    cleanup();
  }
});
test('a short group write is fatal', () => fatalCase('short', { kind: OpKind.write, purpose: OpPurpose.walGroup, shortWrite: true }, true, EIO));

test('a failed segment preparation refuses the WAL with the reason', async () => {
  const { dir, cleanup } = tempDir('walprep');
  const ring = Ring.open({ depth: 128, arenaBytes: 32 << 20 });
  try {
    ring.injectFault({ kind: OpKind.write, purpose: OpPurpose.walPrepare, errno: ENOSPC });
    await assert.rejects(openWal(ring, dir), (err: Error & { code: string; errno: number }) => {
      assert.equal(err.code, 'ERR_WAL_FATAL');
      assert.equal(err.errno, ENOSPC);
      assert.match(err.message, /segment preparation failed/);
      return true;
    });
  } finally {
    await turnUntil(() => ring.info().inFlight === 0);
    cleanup();
  }
});

test('a full WAL makes appends wait, released segments are recycled, and a flush covers the appends that waited', async () => {
  const { dir, cleanup } = tempDir('walfull');
  const ring = Ring.open({ depth: 128, arenaBytes: 32 << 20 });
  try {
    const { wal } = await openWal(ring, dir, { segmentsMax: 3 });
    const pending: Promise<number>[] = [];
    let i = 0;
    const stalled = await turnUntil(() => {
      if (wal.status().appendsWaiting === 0 && pending.length < 5000) {
        for (let k = 0; k < 16; k++, i++) pending.push(wal.append({ kind: 'write', epoch: 1, lba: i, lengthBlocks: 1, payload: payloadFor(i), fua: true }));
      }
      const s = wal.status();
      return s.busyReason === 'wal_full' && s.appendsWaiting > 0 && ring.info().inFlight === 0;
    });
    assert.ok(stalled, 'appends stop when every segment holds unreleased records');
    assert.ok(wal.status().segmentCount <= 3);
    // The last appends in the queue ask for no durability of their own.
    for (let k = 0; k < 8; k++, i++) pending.push(wal.append({ kind: 'write', epoch: 1, lba: i, lengthBlocks: 1, payload: payloadFor(i), fua: false }));
    const waiting = wal.status().appendsWaiting;
    // A flush now covers the queued appends too: it resolves once they have
    // gone out and are durable, with nothing else asking for durability.
    const lsnQueuedLast = wal.lsnHead + waiting;
    let flushed = false;
    const flush = wal.flush().then(() => (flushed = true));
    wal.release(wal.lsnDurable);
    const lsns = await Promise.all(pending);
    assert.ok(await turnUntil(() => flushed), 'the flush resolved');
    await flush;
    assert.ok(wal.lsnDurable >= lsnQueuedLast, `durable ${wal.lsnDurable} covers the queued appends (${lsnQueuedLast})`);
    assert.equal(lsns.length, i);
    assert.deepEqual(lsns, lsns.slice().sort((a, b) => a - b), 'acknowledged in order');
    assert.ok(waiting > 0 && wal.status().appendsWaiting === 0);
    assert.ok(wal.status().segmentCount <= 3, 'segments were recycled, not added');
    await wal.close();
  } finally {
    await ring.close();
    cleanup();
  }
});
