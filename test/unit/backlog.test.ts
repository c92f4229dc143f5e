// The primary's in-memory backlog (lib/replication/backlog.ts): a ring of
// typed arrays that holds the newest records within a byte budget. Checked
// against a plain array model under random pushes, and at its edges: growth
// past its first capacity, the budget keeping at least one record, a skipped
// LSN, and views that show the bytes pushed. Its record slabs: reused only
// once no held record and no socket write still refers to them, and touched
// whole when allocated (carving records from one takes no page faults).
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { test } from 'node:test';
import * as assert from 'node:assert/strict';

import fc from 'fast-check';

import { Backlog, type BacklogEntry, type OutputFence, type OutputMark } from '../../lib/replication/backlog';
import { hugePagesMissing } from '../support/huge_pages';

const KINDS = ['write', 'trim', 'zero', 'control'] as const;

function entry(lsn: number, bytes: Buffer, kind: BacklogEntry['kind'] = 'write'): BacklogEntry {
  return { lsn, bytes, applyChecksum: BigInt(lsn) * 0x9e3779b97f4a7c15n % 2n ** 64n, atMs: lsn * 0.5, kind, lba: lsn * 8, lengthBlocks: lsn % 7 };
}

// What a simple model holds: the newest entries whose bytes fit the budget, at least one.
function modelHeld(pushed: BacklogEntry[], bytesMax: number): BacklogEntry[] {
  const held: BacklogEntry[] = [];
  let bytes = 0;
  for (const e of pushed) {
    held.push(e);
    bytes += e.bytes.byteLength;
    while (bytes > bytesMax && held.length > 1) bytes -= held.shift()!.bytes.byteLength;
  }
  return held;
}

function assertSame(got: BacklogEntry | undefined, want: BacklogEntry): void {
  assert.ok(got !== undefined, `LSN ${want.lsn} is held`);
  assert.equal(got.lsn, want.lsn);
  assert.ok(got.bytes.equals(want.bytes), `LSN ${want.lsn}: the bytes pushed`);
  assert.equal(got.applyChecksum, want.applyChecksum);
  assert.equal(got.atMs, want.atMs);
  assert.equal(got.kind, want.kind);
  assert.equal(got.lba, want.lba);
  assert.equal(got.lengthBlocks, want.lengthBlocks);
}

test('backlog: matches a plain array model under random pushes, through growth and drops', () => {
  fc.assert(
    fc.property(
      fc.integer({ min: 1, max: 1000 }),
      fc.integer({ min: 1, max: 200_000 }),
      fc.array(fc.record({ size: fc.integer({ min: 1, max: 300 }), kind: fc.constantFrom(...KINDS) }), { minLength: 1, maxLength: 3000 }),
      (lsnStart, bytesMax, pushes) => {
        const backlog = new Backlog(bytesMax);
        // Records share slabs, as the WAL's copy-out buffers do.
        const slab = Buffer.alloc(1 << 20);
        let used = 0;
        const pushed: BacklogEntry[] = [];
        pushes.forEach((p, i) => {
          if (used + p.size > slab.byteLength) used = 0;
          const bytes = slab.subarray(used, used + p.size);
          used += p.size;
          bytes.fill((lsnStart + i) & 0xff);
          const e = entry(lsnStart + i, Buffer.from(bytes), p.kind);
          pushed.push(e);
          backlog.push(e);
        });
        const held = modelHeld(pushed, bytesMax);
        assert.equal(backlog.lsnFirst, held[0]!.lsn);
        assert.equal(backlog.lsnLast, held.at(-1)!.lsn);
        assert.equal(backlog.bytes, held.reduce((n, e) => n + e.bytes.byteLength, 0));
        for (const e of held) {
          assertSame(backlog.get(e.lsn), e);
          assert.ok(backlog.recordBytes(e.lsn)!.equals(e.bytes), `recordBytes(${e.lsn})`);
        }
        assert.equal(backlog.get(held[0]!.lsn - 1), undefined);
        assert.equal(backlog.get(held.at(-1)!.lsn + 1), undefined);
        assert.equal(backlog.recordBytes(held[0]!.lsn - 1), undefined);
        assert.equal(backlog.recordBytes(held.at(-1)!.lsn + 1), undefined);
        const from = held[0]!.lsn + Math.floor(held.length / 3);
        assert.equal(
          backlog.bytesBetween(from, backlog.lsnLast),
          held.filter((e) => e.lsn > from).reduce((n, e) => n + e.bytes.byteLength, 0),
        );
      },
    ),
    { numRuns: 60 },
  );
});

test('backlog: empty, then one record larger than the budget is still held', () => {
  const backlog = new Backlog(100);
  assert.equal(backlog.lsnFirst, 0);
  assert.equal(backlog.lsnLast, 0);
  assert.equal(backlog.get(1), undefined);
  const big = entry(5, Buffer.alloc(500, 1));
  backlog.push(big);
  assertSame(backlog.get(5), big);
  const next = entry(6, Buffer.alloc(10, 2));
  backlog.push(next);
  assert.equal(backlog.lsnFirst, 6, 'the large one goes once another fits');
  assert.equal(backlog.bytes, 10);
});

test('backlog: a skipped LSN starts it again from that record', () => {
  const backlog = new Backlog(1 << 20);
  for (let lsn = 1; lsn <= 10; lsn++) backlog.push(entry(lsn, Buffer.alloc(8, lsn)));
  const after = entry(20, Buffer.alloc(8, 20));
  backlog.push(after);
  assert.equal(backlog.lsnFirst, 20);
  assert.equal(backlog.lsnLast, 20);
  assert.equal(backlog.bytes, 8);
  assert.equal(backlog.get(10), undefined);
  assertSame(backlog.get(20), after);
});

test('backlog: views show the bytes where they were pushed (no copy is kept)', () => {
  const backlog = new Backlog(1 << 20);
  const slab = Buffer.alloc(64, 0);
  backlog.push(entry(1, slab.subarray(8, 24)));
  slab.fill(7, 8, 24);
  const got = backlog.get(1)!;
  assert.equal(got.bytes.byteLength, 16);
  assert.ok(got.bytes.equals(Buffer.alloc(16, 7)));
});

test('backlog: grows while its oldest record is not at the start of the ring', () => {
  // 100-byte records fill the budget below the first capacity, so drops move
  // the oldest along; smaller records then push the count past it.
  const backlog = new Backlog(100_000);
  const pushed: BacklogEntry[] = [];
  for (let lsn = 1; lsn <= 4000; lsn++) {
    const e = entry(lsn, Buffer.alloc(lsn <= 1500 ? 100 : 10, lsn & 0xff));
    pushed.push(e);
    backlog.push(e);
  }
  const held = modelHeld(pushed, 100_000);
  assert.ok(held.length > 1024, 'more records than the first capacity are held');
  assert.equal(backlog.lsnFirst, held[0]!.lsn);
  for (const e of held) assertSame(backlog.get(e.lsn), e);
});

// ---- Slabs: where records are encoded (take), reused once nothing refers to them ----

const SLAB = 4 << 20; // SLAB_BYTES in backlog.ts

// Takes room for a record of spanBytes, fills it with a pattern of its LSN
// (as the WAL encodes a record there) and pushes it.
function takeAndPush(b: Backlog, lsn: number, spanBytes: number): Buffer {
  const room = b.take(spanBytes);
  assert.equal(room.byteLength, spanBytes);
  room.fill(lsn & 0xff);
  room.writeUInt32LE(lsn, 0);
  b.push(entry(lsn, room));
  return room;
}

function assertIntact(b: Backlog, lsn: number, spanBytes: number): void {
  const bytes = b.get(lsn)?.bytes;
  assert.ok(bytes !== undefined, `LSN ${lsn} is held`);
  assertRecord(bytes, lsn, spanBytes, 'held');
}

// The sockets' output as the backlog's fence sees it: frames handed to a
// socket refer to their record bytes until the write completes, in order.
// complete() checks, as the kernel's copy would, that each record's bytes
// are still its own when its write completes.
class FakeOutput implements OutputFence {
  private handed = 0;
  private completed = 0;
  private readonly queued: { bytes: Buffer; lsn: number; span: number }[] = [];
  checked = 0;

  mark(): OutputMark {
    return this.handed;
  }
  passed(mark: OutputMark): boolean {
    return this.completed >= (mark as number);
  }
  write(b: Backlog, lsn: number, span: number): void {
    const bytes = b.recordBytes(lsn);
    assert.ok(bytes !== undefined, `LSN ${lsn} is held when written`);
    this.queued.push({ bytes, lsn, span });
    this.handed++;
  }
  complete(n = this.queued.length): void {
    for (const w of this.queued.splice(0, n)) {
      assertRecord(w.bytes, w.lsn, w.span, 'in a socket write');
      this.completed++;
      this.checked++;
    }
  }
  get pending(): number {
    return this.queued.length;
  }
}

function assertRecord(bytes: Buffer, lsn: number, spanBytes: number, where: string): void {
  assert.equal(bytes.byteLength, spanBytes);
  assert.equal(bytes.readUInt32LE(0), lsn, `LSN ${lsn} ${where}: its own bytes, not a later record's`);
  for (let i = 4; i < spanBytes; i += 509) assert.equal(bytes[i], lsn & 0xff, `LSN ${lsn} ${where}: byte ${i}`);
}

test('backlog slabs: reused slabs never overwrite a record still held, nor one a socket write still refers to', () => {
  fc.assert(
    fc.property(
      fc.integer({ min: 1, max: 24 }).map((mib) => mib << 20),
      fc.array(
        fc.record({
          span: fc.oneof(fc.constant(4160), fc.constant(8256), fc.integer({ min: 1, max: 70_000 }).map((n) => Math.ceil(n / 8) * 8), fc.constant(SLAB / 2 + 8)),
          // Shipped at once, and how many queued writes complete when the socket next moves.
          shipped: fc.boolean(),
          complete: fc.integer({ min: 1, max: 3000 }),
        }),
        { minLength: 1, maxLength: 3000, size: 'max' },
      ),
      // The socket moves every so many records: stalls from none to the whole run.
      fc.integer({ min: 1, max: 3000 }),
      (bytesMax, steps, stallSteps) => {
        const out = new FakeOutput();
        const b = new Backlog(bytesMax, out);
        const pushed: { lsn: number; span: number }[] = [];
        steps.forEach(({ span, shipped, complete }, i) => {
          takeAndPush(b, i + 1, span);
          pushed.push({ lsn: i + 1, span });
          if (shipped) out.write(b, i + 1, span);
          if (i % stallSteps === stallSteps - 1) out.complete(Math.min(complete, out.pending));
        });
        for (const { lsn, span } of pushed) if (lsn >= b.lsnFirst) assertIntact(b, lsn, span);
        out.complete();
      },
    ),
    { numRuns: 30, endOnFailure: true },
  );
});

test('backlog slabs: a slab comes back once sealed, empty of held records and past the output written before it was released', () => {
  const out = new FakeOutput();
  const b = new Backlog(SLAB, out); // one slab's worth of records held at most
  const span = 64 * 1024;
  const perSlab = SLAB / span;
  const first = takeAndPush(b, 1, span);
  out.write(b, 1, span); // still queued when its slab is released
  for (let lsn = 2; lsn <= perSlab; lsn++) takeAndPush(b, lsn, span);
  // The first slab is full; the next record seals it, and pushes out its first records.
  const second = takeAndPush(b, perSlab + 1, span);
  assert.notEqual(second.buffer, first.buffer, 'a new slab once the first is full');
  // Fill the second slab: the first one's records all leave the budget.
  for (let lsn = perSlab + 2; lsn <= 2 * perSlab; lsn++) takeAndPush(b, lsn, span);
  assert.ok(b.lsnFirst > perSlab, `nothing of the first slab is held (first LSN ${b.lsnFirst})`);
  // A write of LSN 1 is still queued: the first slab may still be in a socket's hands.
  const third = takeAndPush(b, 2 * perSlab + 1, span);
  assert.notEqual(third.buffer, first.buffer, 'not reused while a write from it is queued');
  assert.equal(b.slabsReused, 0);
  // Later output (from the third slab) stays queued; it cannot refer to the first slab.
  out.write(b, 2 * perSlab + 1, span);
  for (let lsn = 2 * perSlab + 2; lsn <= 3 * perSlab; lsn++) takeAndPush(b, lsn, span);
  out.complete(1); // the write of LSN 1 completes
  assert.equal(out.pending, 1);
  const fourth = takeAndPush(b, 3 * perSlab + 1, span);
  assert.equal(fourth.buffer, first.buffer, 'the first slab is reused once the write from it completed, though later output is queued');
  assert.equal(b.slabsReused, 1);
  for (let lsn = b.lsnFirst; lsn <= 3 * perSlab + 1; lsn++) assertIntact(b, lsn, span);
  out.complete();
  assert.equal(out.checked, 2);
});

test('backlog slabs: after 1 MiB records filled the budget (three to a slab), 4 KiB records reuse every slab they release', () => {
  const out = new FakeOutput();
  const bytesMax = 64 << 20;
  const b = new Backlog(bytesMax, out);
  const big = 1048640; // a 1 MiB write's record
  let lsn = 0;
  // Slabs carved: each time a record lands in another slab than the one before.
  let carvedAll = 0;
  let last: ArrayBufferLike | undefined;
  const push = (span: number): void => {
    const room = takeAndPush(b, ++lsn, span);
    if (room.buffer !== last) carvedAll++;
    last = room.buffer;
  };
  for (let n = 0; n < (2 * bytesMax) / big; n++) push(big);
  const slabsBefore = b.slabsKept;
  assert.ok(slabsBefore > bytesMax / SLAB + 4, `the large records fill more slabs than the budget's bytes (${slabsBefore})`);
  // Small records until the large ones are all gone, and as much again.
  const small = 4160;
  for (let n = 0; n < (2 * bytesMax) / small; n++) push(small);
  const carved = Math.ceil((2 * bytesMax) / small / Math.floor(SLAB / small));
  // Only the first slabs, while the large records were still held in more
  // slabs than the budget's bytes, could not come from released ones.
  assert.ok(b.slabsReused >= carved - 4, `slabs reused: ${b.slabsReused} of ${carved} carved`);
  // Every slab carved was either allocated or reused.
  assert.equal(b.slabsAllocated + b.slabsReused, carvedAll);
  assert.ok(b.slabsKept <= Math.ceil(bytesMax / SLAB) + 1 + 4 + 4, `slabs kept: ${b.slabsKept}`);
  for (let l = b.lsnFirst; l <= lsn; l++) assertIntact(b, l, small);
});

test('backlog slabs: a record too large to share a slab gets memory of its own', () => {
  const b = new Backlog(64 << 20, new FakeOutput());
  const big = takeAndPush(b, 1, SLAB / 2 + 8);
  const small = takeAndPush(b, 2, 4160);
  assert.notEqual(big.buffer, small.buffer);
  assert.equal(big.buffer.byteLength, SLAB / 2 + 8);
  assertIntact(b, 1, SLAB / 2 + 8);
  assertIntact(b, 2, 4160);
});

test('backlog slabs: with output never completing, the slabs it keeps stay bounded (the rest go to the collector)', () => {
  const bytesMax = 8 << 20;
  const out = new FakeOutput();
  const b = new Backlog(bytesMax, out);
  const span = 64 * 1024;
  for (let lsn = 1; lsn <= (200 << 20) / span; lsn++) {
    takeAndPush(b, lsn, span);
    out.write(b, lsn, span);
  }
  assert.equal(b.slabsReused, 0, 'nothing reused while the writes from it are queued');
  // The slabs holding records, the one being carved, and a few released.
  assert.ok(b.slabsKept <= bytesMax / SLAB + 2 + 4, `slabs kept: ${b.slabsKept}`);
  for (let lsn = b.lsnFirst; lsn <= b.lsnLast; lsn++) assertIntact(b, lsn, span);
});

// In a fresh process: memory earlier tests freed may be reused already
// touched, which would hide a slab left untouched.
test('backlog slabs: a new slab is touched whole when allocated, so carving records from it takes no page faults', () => {
  const script = `
    const { Backlog } = require(${JSON.stringify(path.join(__dirname, '../../lib/replication/backlog'))});
    const backlog = new Backlog(64 << 20);
    const span = 4160; // a 4 KiB write's record
    const entry = (lsn, bytes) => ({ lsn, bytes, applyChecksum: 0n, atMs: 0, kind: 'write', lba: lsn, lengthBlocks: 1 });
    const first = backlog.take(span);
    first.fill(1);
    backlog.push(entry(1, first));
    // The rest of the slab, written as records are carved.
    const before = process.resourceUsage().minorPageFault;
    let lsn = 2;
    for (let carved = span; carved + span <= ${SLAB}; carved += span, lsn++) {
      const room = backlog.take(span);
      room.fill(lsn & 0xff);
      backlog.push(entry(lsn, room));
    }
    const faults = process.resourceUsage().minorPageFault - before;
    process.stdout.write(JSON.stringify({ faults, records: lsn - 2, slabs: backlog.slabsAllocated }));
  `;
  const run = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8' });
  assert.equal(run.status, 0, run.stderr);
  const { faults, records, slabs } = JSON.parse(run.stdout) as { faults: number; records: number; slabs: number };
  assert.equal(slabs, 1, 'every record came from the first slab');
  assert.ok(records > 1000, `${records} records carved`);
  // Left untouched until carved, each of its ~1,000 pages would fault here.
  assert.ok(faults < 64, `carving ${records} records faulted ${faults} pages`);
});

// Every shipped record is copied into a slab and read back by the socket: on
// 4 KiB pages each lands on a page the TLB has not seen. In a fresh process:
// here, slabs of earlier tests collected meanwhile would unmap advised bytes.
test('backlog slabs: on memory advised for huge pages', (t) => {
  const missing = hugePagesMissing();
  if (missing !== undefined) return t.skip(`skipped: missing ${missing}`);
  const script = `
    const { Backlog } = require(${JSON.stringify(path.join(__dirname, '../../lib/replication/backlog'))});
    const { hugePageAdvisedBytes } = require(${JSON.stringify(path.join(__dirname, '../support/huge_pages'))});
    const before = hugePageAdvisedBytes();
    const backlog = new Backlog(64 << 20);
    const entry = (lsn, bytes) => ({ lsn, bytes, applyChecksum: 0n, atMs: 0, kind: 'write', lba: lsn, lengthBlocks: 256 });
    for (let lsn = 1; lsn <= 9; lsn++) backlog.push(entry(lsn, backlog.take(1 << 20).fill(lsn)));
    process.stdout.write(JSON.stringify({ advised: hugePageAdvisedBytes() - before, slabs: backlog.slabsAllocated }));
  `;
  const run = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8' });
  assert.equal(run.status, 0, run.stderr);
  const { advised, slabs } = JSON.parse(run.stdout) as { advised: number; slabs: number };
  assert.equal(slabs, 3, 'three 1 MiB records to a slab');
  assert.ok(advised >= 3 * SLAB, `3 slabs added ${advised} advised bytes`);
});
