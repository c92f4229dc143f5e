// The primary's in-memory backlog (lib/replication/backlog.ts): a ring of
// typed arrays that holds the newest records within a byte budget. Checked
// against a plain array model under random pushes, and at its edges: growth
// past its first capacity, the budget keeping at least one record, a skipped
// LSN, and views that show the bytes pushed.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';

import fc from 'fast-check';

import { Backlog, type BacklogEntry } from '../../lib/replication/backlog';

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
  assert.equal(bytes.byteLength, spanBytes);
  assert.equal(bytes.readUInt32LE(0), lsn, `LSN ${lsn}: its own bytes, not a later record's`);
  for (let i = 4; i < spanBytes; i += 509) assert.equal(bytes[i], lsn & 0xff, `LSN ${lsn} byte ${i}`);
}

test('backlog slabs: records taken from reused slabs never overwrite a record still held', () => {
  fc.assert(
    fc.property(
      fc.integer({ min: 1, max: 24 }).map((mib) => mib << 20),
      fc.array(fc.oneof(fc.constant(4160), fc.constant(8256), fc.integer({ min: 1, max: 70_000 }).map((n) => Math.ceil(n / 8) * 8), fc.constant(SLAB / 2 + 8)), { minLength: 1, maxLength: 3000 }),
      fc.array(fc.boolean(), { minLength: 1, maxLength: 50 }),
      (bytesMax, spans, idleBits) => {
        let calls = 0;
        const b = new Backlog(bytesMax, () => idleBits[calls++ % idleBits.length]!);
        const pushed: { lsn: number; span: number }[] = [];
        spans.forEach((span, i) => {
          takeAndPush(b, i + 1, span);
          pushed.push({ lsn: i + 1, span });
        });
        for (const { lsn, span } of pushed) if (lsn >= b.lsnFirst) assertIntact(b, lsn, span);
      },
    ),
    { numRuns: 40 },
  );
});

test('backlog slabs: a slab comes back only once sealed, empty of held records and with no socket output queued', () => {
  let idle = false;
  const b = new Backlog(SLAB, () => idle); // one slab's worth of records held at most
  const span = 64 * 1024;
  const perSlab = SLAB / span;
  const first = takeAndPush(b, 1, span);
  for (let lsn = 2; lsn <= perSlab; lsn++) takeAndPush(b, lsn, span);
  // The first slab is full; the next record seals it, and pushes out its first records.
  const second = takeAndPush(b, perSlab + 1, span);
  assert.notEqual(second.buffer, first.buffer, 'a new slab once the first is full');
  // Fill the second slab: the first one's records all leave the budget.
  for (let lsn = perSlab + 2; lsn <= 2 * perSlab; lsn++) takeAndPush(b, lsn, span);
  assert.ok(b.lsnFirst > perSlab, `nothing of the first slab is held (first LSN ${b.lsnFirst})`);
  // Output is queued on a link: the first slab may still be in a socket's hands.
  const third = takeAndPush(b, 2 * perSlab + 1, span);
  assert.notEqual(third.buffer, first.buffer, 'not reused while output is queued');
  assert.equal(b.slabsReused, 0);
  for (let lsn = 2 * perSlab + 2; lsn <= 3 * perSlab; lsn++) takeAndPush(b, lsn, span);
  // Output drained: the first slab (and the second, empty too) come back.
  idle = true;
  const fourth = takeAndPush(b, 3 * perSlab + 1, span);
  assert.ok(fourth.buffer === first.buffer || fourth.buffer === second.buffer, 'an empty, sealed slab is reused');
  assert.equal(b.slabsReused, 1);
  for (let lsn = b.lsnFirst; lsn <= 3 * perSlab + 1; lsn++) assertIntact(b, lsn, span);
});

test('backlog slabs: a record too large to share a slab gets memory of its own', () => {
  const b = new Backlog(64 << 20, () => true);
  const big = takeAndPush(b, 1, SLAB / 2 + 8);
  const small = takeAndPush(b, 2, 4160);
  assert.notEqual(big.buffer, small.buffer);
  assert.equal(big.buffer.byteLength, SLAB / 2 + 8);
  assertIntact(b, 1, SLAB / 2 + 8);
  assertIntact(b, 2, 4160);
});

test('backlog slabs: with output never idle, the slabs it keeps stay bounded (the rest go to the collector)', () => {
  const bytesMax = 8 << 20;
  const b = new Backlog(bytesMax, () => false);
  const span = 64 * 1024;
  for (let lsn = 1; lsn <= (200 << 20) / span; lsn++) takeAndPush(b, lsn, span);
  assert.equal(b.slabsReused, 0, 'nothing reused while output is queued');
  // The slabs holding records, the one being carved, and a few released.
  assert.ok(b.slabsKept <= bytesMax / SLAB + 2 + 4, `slabs kept: ${b.slabsKept}`);
  for (let lsn = b.lsnFirst; lsn <= b.lsnLast; lsn++) assertIntact(b, lsn, span);
});
