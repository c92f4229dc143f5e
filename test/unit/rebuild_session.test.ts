// The replica's rebuild session (lib/protocol/rebuild_session.ts): each rule
// of its header as a table or a short scenario — MARK_ON_APPLY (every block
// of writes, trims and zeros; none for control; contiguous LSNs), WAL_WINS
// and the claim discipline, DIGEST, BASE_NEWER, COMPLETE (once, base-only),
// STALE and supersede, progress and resume.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';

import fc from 'fast-check';

import {
  type AppliedRecord,
  type BaseChunk,
  type BlockBitmap,
  RebuildSession,
  type RebuildSessionParams,
  RebuildSlot,
  xxh3Digest,
} from '../../lib/protocol/rebuild_session';
import { readSetRuns } from '../support/bit_runs';

const BLOCK_BYTES = 8;

class ArrayBitmap implements BlockBitmap {
  readonly bits: Uint8Array;
  constructor(blocks: number) {
    this.bits = new Uint8Array(blocks);
  }
  get(block: number): boolean {
    return this.bits[block] === 1;
  }
  setRange(startBlock: number, lengthBlocks: number): void {
    this.bits.fill(1, startBlock, startBlock + lengthBlocks);
  }
  countSet(): number {
    return this.bits.reduce((n, b) => n + b, 0);
  }
}

const PARAMS: RebuildSessionParams = {
  sessionId: 7,
  epoch: 3,
  lsnBase: 10,
  lsnTarget: 14,
  chunkBlocks: 4,
  volumeBlocks: 10, // chunks: 0..3, 4..7, 8..9
  blockBytes: BLOCK_BYTES,
};
const REF = { sessionId: 7, epoch: 3 };

function make(params: Partial<RebuildSessionParams> = {}): { session: RebuildSession; bitmap: ArrayBitmap } {
  const p = { ...PARAMS, ...params };
  const bitmap = new ArrayBitmap(p.volumeBlocks);
  return { session: new RebuildSession(p, bitmap), bitmap };
}

function chunkOf(session: RebuildSession, index: number, fill = index + 1, lsnCheckpoint = session.lsnBase): [BaseChunk, Uint8Array] {
  const startBlock = index * session.chunkBlocks;
  const blocks = Math.min(session.chunkBlocks, session.volumeBlocks - startBlock);
  const data = new Uint8Array(blocks * BLOCK_BYTES).fill(fill);
  const chunk = { sessionId: session.sessionId, epoch: session.epoch, index, startBlock, blocks, lsnCheckpoint, digest: xxh3Digest(data) };
  return [chunk, data];
}

function rec(lsn: number, kind: AppliedRecord['kind'], lba: number, lengthBlocks: number): AppliedRecord {
  return { lsn, kind, lba, lengthBlocks };
}

// Copies every chunk (writing nothing) and returns the plans' runs.
function copyBase(session: RebuildSession, lsnCheckpoint = session.lsnBase): number[][] {
  const written: number[][] = [];
  for (let index = 0; index < session.chunksTotal; index++) {
    const [chunk, data] = chunkOf(session, index, index + 1, lsnCheckpoint);
    const planned = session.planBaseWrite(REF, chunk, data);
    assert.ok(planned.ok, !planned.ok ? planned.message : '');
    written.push(planned.plan.runs.flatMap((r) => Array.from({ length: r.lengthBlocks }, (_, i) => r.startBlock + i)));
    assert.ok(session.baseWriteDone(REF, planned.plan.token).ok);
  }
  return written;
}

test('MARK_ON_APPLY: every block of writes, trims and zeros is marked; control records mark none', () => {
  const cases: [AppliedRecord['kind'], number, number, number[]][] = [
    ['write', 2, 3, [2, 3, 4]],
    ['trim', 5, 4, [5, 6, 7, 8]],
    ['zero', 0, 1, [0]],
    ['write', 9, 1, [9]],
    ['control', 0, 0, []],
    ['control', 3, 2, []],
  ];
  for (const [kind, lba, lengthBlocks, marked] of cases) {
    const { session, bitmap } = make();
    const applied = session.walApplied(REF, rec(11, kind, lba, lengthBlocks));
    assert.ok(applied.ok, `${kind} ${lba}+${lengthBlocks}`);
    assert.deepEqual([...bitmap.bits.keys()].filter((b) => bitmap.get(b)), marked, `${kind} ${lba}+${lengthBlocks}`);
    assert.equal(session.lsnApplied, 11);
  }
});

test('MARK_ON_APPLY: receipt marks nothing, only records lsnReceived', () => {
  const { session, bitmap } = make();
  assert.ok(session.walReceived(REF, rec(12, 'write', 0, 4)).ok);
  assert.equal(bitmap.countSet(), 0);
  assert.equal(session.lsnReceived, 12);
  assert.equal(session.lsnApplied, 10);
});

test('MARK_ON_APPLY: lsnApplied advances one by one, else lsn_gap and nothing changes', () => {
  const { session, bitmap } = make();
  for (const lsn of [10, 12, 9]) {
    const applied = session.walApplied(REF, rec(lsn, 'write', 0, 1));
    assert.equal(applied.ok, false);
    assert.equal(!applied.ok && applied.error, 'lsn_gap', `lsn ${lsn}`);
  }
  assert.equal(bitmap.countSet(), 0);
  assert.ok(session.walApplied(REF, rec(11, 'write', 0, 1)).ok);
  assert.ok(session.walApplied(REF, rec(12, 'control', 0, 0)).ok);
  assert.equal(session.lsnApplied, 12);
});

test('records beyond the volume are refused', () => {
  const { session } = make();
  const applied = session.walApplied(REF, rec(11, 'write', 8, 3));
  assert.equal(!applied.ok && applied.error, 'record_out_of_range');
  assert.equal(session.lsnApplied, 10);
});

test('WAL_WINS: the base lane plans only unmarked blocks, as runs', () => {
  const { session } = make();
  assert.ok(session.walApplied(REF, rec(11, 'write', 1, 1)).ok);
  assert.ok(session.walApplied(REF, rec(12, 'trim', 6, 2)).ok);
  const [chunk0, data0] = chunkOf(session, 0);
  const plan0 = session.planBaseWrite(REF, chunk0, data0);
  assert.ok(plan0.ok);
  assert.deepEqual(plan0.plan.runs, [
    { startBlock: 0, lengthBlocks: 1 },
    { startBlock: 2, lengthBlocks: 2 },
  ]);
  const [chunk1, data1] = chunkOf(session, 1);
  const plan1 = session.planBaseWrite(REF, chunk1, data1);
  assert.ok(plan1.ok);
  assert.deepEqual(plan1.plan.runs, [{ startBlock: 4, lengthBlocks: 2 }]);
});

test('claim discipline: a WAL apply during a base write is reported, the flusher sees the pending range', () => {
  const { session } = make();
  const [chunk, data] = chunkOf(session, 1);
  const planned = session.planBaseWrite(REF, chunk, data);
  assert.ok(planned.ok);
  assert.equal(session.basePendingIn(5, 1), true);
  assert.equal(session.basePendingIn(0, 4), false);
  assert.equal(session.isChunkInFlight(1), true);
  const overlapping = session.walApplied(REF, rec(11, 'write', 5, 1));
  assert.ok(overlapping.ok && overlapping.basePendingOverlap);
  const apart = session.walApplied(REF, rec(12, 'write', 0, 1));
  assert.ok(apart.ok && !apart.basePendingOverlap);
  // A second copy of the chunk while it is being written is refused.
  const again = session.planBaseWrite(REF, chunk, data);
  assert.equal(!again.ok && again.error, 'chunk_in_flight');
  assert.ok(session.baseWriteDone(REF, planned.plan.token).ok);
  assert.equal(session.basePendingIn(5, 1), false);
  const done = session.planBaseWrite(REF, chunk, data);
  assert.equal(!done.ok && done.error, 'chunk_done');
  assert.equal(!session.baseWriteDone(REF, planned.plan.token).ok, true, 'a token completes once');
});

test('DIGEST: a chunk whose data does not match fails the session and plans nothing', () => {
  const { session } = make();
  const [chunk, data] = chunkOf(session, 0);
  data[3] ^= 0x40;
  const planned = session.planBaseWrite(REF, chunk, data);
  assert.equal(!planned.ok && planned.error, 'digest_mismatch');
  assert.equal(session.phase, 'failed');
  assert.equal(session.failure?.failure, 'digest_mismatch');
  assert.equal(session.chunksDone, 0);
});

test('malformed chunks are refused without failing the session', () => {
  const { session } = make();
  const [chunk, data] = chunkOf(session, 2);
  const cases: [BaseChunk, Uint8Array, string][] = [
    [{ ...chunk, index: 3 }, data, 'chunk_mismatch'],
    [{ ...chunk, startBlock: 7 }, data, 'chunk_mismatch'],
    [{ ...chunk, blocks: 4 }, data, 'chunk_mismatch'],
    [{ ...chunk, lsnCheckpoint: 9 }, data, 'chunk_mismatch'],
    [chunk, data.subarray(1), 'data_length'],
    [{ ...chunk, sessionId: 6 }, data, 'stale_session'],
    [{ ...chunk, epoch: 2 }, data, 'stale_epoch'],
  ];
  for (const [c, d, error] of cases) {
    const planned = session.planBaseWrite(REF, c, d);
    assert.equal(!planned.ok && planned.error, error, JSON.stringify({ ...c, digest: String(c.digest) }));
  }
  assert.equal(session.phase, 'running');
});

test('STALE: every call for another session or epoch is refused and changes nothing', () => {
  const { session, bitmap } = make();
  const [chunk, data] = chunkOf(session, 0);
  for (const [ref, error] of [
    [{ sessionId: 6, epoch: 3 }, 'stale_session'],
    [{ sessionId: 8, epoch: 3 }, 'stale_session'],
    [{ sessionId: 7, epoch: 2 }, 'stale_epoch'],
    [{ sessionId: 7, epoch: 4 }, 'stale_epoch'],
  ] as const) {
    const calls = [
      session.walReceived(ref, rec(11, 'write', 0, 1)),
      session.walApplied(ref, rec(11, 'write', 0, 1)),
      session.markReplayed(ref, rec(11, 'write', 0, 1)),
      session.planBaseWrite(ref, chunk, data),
      session.baseWriteDone(ref, 1),
    ];
    for (const outcome of calls) assert.equal(!outcome.ok && outcome.error, error);
    const completion = session.tryComplete(ref);
    assert.equal(!completion.ok && completion.blocker, error);
  }
  assert.equal(bitmap.countSet(), 0);
  assert.equal(session.lsnApplied, 10);
  assert.equal(session.chunksDone, 0);
});

test('COMPLETE: needs the base lane done AND lsnApplied ≥ lsnTarget, and is reported once', () => {
  const { session } = make();
  assert.equal(session.tryComplete(REF).ok, false);
  for (let lsn = 11; lsn <= 14; lsn++) assert.ok(session.walApplied(REF, rec(lsn, 'write', lsn - 11, 1)).ok);
  const early = session.tryComplete(REF);
  assert.equal(!early.ok && early.blocker, 'base_incomplete', 'WAL alone does not complete');
  const [chunk0, data0] = chunkOf(session, 0);
  const planned = session.planBaseWrite(REF, chunk0, data0);
  assert.ok(planned.ok);
  assert.deepEqual(planned.plan.runs, [], 'blocks 0..3 are all marked');
  copyRest(session, planned.plan.token);
  assert.equal(session.phase, 'base_complete');
  const done = session.tryComplete(REF);
  assert.deepEqual(done, { ok: true, lsnAchieved: 14 });
  assert.equal(session.phase, 'completed');
  const again = session.tryComplete(REF);
  assert.equal(!again.ok && again.blocker, 'already_completed');
  assert.equal(session.walApplied(REF, rec(15, 'write', 0, 1)).ok, false, 'a completed session takes no more records');
});

function copyRest(session: RebuildSession, token0: number): void {
  const chunk1 = chunkOf(session, 1);
  const chunk2 = chunkOf(session, 2);
  // Out of order: chunk 2 finishes before chunk 0.
  const p2 = session.planBaseWrite(REF, ...chunk2);
  const p1 = session.planBaseWrite(REF, ...chunk1);
  assert.ok(p1.ok && p2.ok);
  assert.ok(session.baseWriteDone(REF, p2.plan.token).ok);
  assert.equal(session.chunkIndexNext, 0);
  assert.ok(session.baseWriteDone(REF, token0).ok);
  assert.equal(session.chunkIndexNext, 1);
  const last = session.tryComplete(REF);
  assert.equal(!last.ok && last.blocker, 'base_incomplete');
  assert.ok(session.baseWriteDone(REF, p1.plan.token).ok);
  assert.equal(session.chunkIndexNext, 3);
}

test('COMPLETE: base done with the WAL behind the target waits for it', () => {
  const { session } = make();
  copyBase(session);
  assert.equal(session.phase, 'base_complete');
  const behind = session.tryComplete(REF);
  assert.equal(!behind.ok && behind.blocker, 'wal_behind_target');
  for (let lsn = 11; lsn <= 14; lsn++) assert.ok(session.walApplied(REF, rec(lsn, 'control', 0, 0)).ok);
  assert.deepEqual(session.tryComplete(REF), { ok: true, lsnAchieved: 14 });
});

test('COMPLETE: a base-only session (lsnBase === lsnTarget) completes on its base lane', () => {
  const { session } = make({ lsnBase: 20, lsnTarget: 20 });
  copyBase(session);
  assert.deepEqual(session.tryComplete(REF), { ok: true, lsnAchieved: 20 });
});

test('COMPLETE: an empty volume completes at once', () => {
  const { session } = make({ volumeBlocks: 0, lsnBase: 5, lsnTarget: 5 });
  assert.equal(session.chunksTotal, 0);
  assert.deepEqual(session.tryComplete(REF), { ok: true, lsnAchieved: 5 });
});

test('BASE_NEWER: chunks read at a newer checkpoint hold completion until the WAL lane reaches it', () => {
  const { session } = make({ lsnBase: 10, lsnTarget: 10 });
  copyBase(session, 13);
  assert.equal(session.lsnCheckpointMax, 13);
  const behind = session.tryComplete(REF);
  assert.equal(!behind.ok && behind.blocker, 'wal_behind_base');
  for (let lsn = 11; lsn <= 13; lsn++) assert.ok(session.walApplied(REF, rec(lsn, 'write', 0, 1)).ok);
  assert.deepEqual(session.tryComplete(REF), { ok: true, lsnAchieved: 13 });
});

test('COMPLETE: a base write in flight holds completion; a failed session never completes', () => {
  const { session } = make({ volumeBlocks: 4, lsnTarget: 10 });
  const planned = session.planBaseWrite(REF, ...chunkOf(session, 0));
  assert.ok(planned.ok);
  const inFlight = session.tryComplete(REF);
  assert.equal(!inFlight.ok && inFlight.blocker, 'base_incomplete');
  session.fail('transport_lost', 'link down');
  session.fail('cancelled', 'ignored: already failed');
  assert.equal(session.failure?.failure, 'transport_lost');
  const failed = session.tryComplete(REF);
  assert.equal(!failed.ok && failed.blocker, 'failed');
  assert.equal(session.baseWriteDone(REF, planned.plan.token).ok, false);
});

test('progress and resume: the base lane restarts at the first chunk not done; replayed records re-mark', () => {
  const volumeBlocks = 40; // 10 chunks of 4
  const bitmap = new ArrayBitmap(volumeBlocks);
  const session = new RebuildSession({ ...PARAMS, volumeBlocks, lsnTarget: 12 }, bitmap);
  const tokens = new Map<number, number>();
  for (const index of [0, 1, 2, 4, 5, 7]) {
    const planned = session.planBaseWrite(REF, ...chunkOf(session, index, 1, 11));
    assert.ok(planned.ok);
    tokens.set(index, planned.plan.token);
  }
  for (const index of [0, 1, 4, 7]) assert.ok(session.baseWriteDone(REF, tokens.get(index)!).ok);
  assert.ok(session.walApplied(REF, rec(11, 'write', 9, 2)).ok);
  assert.ok(session.walApplied(REF, rec(12, 'trim', 20, 3)).ok);
  const saved = JSON.parse(JSON.stringify(session.progress()));
  assert.deepEqual(saved.chunksDoneAbove, [4, 7]);
  assert.equal(saved.chunkIndexNext, 2);
  assert.deepEqual(session.facts(), { sessionId: 7, epoch: 3, baseLsn: 10, chunksDone: 4, chunksTotal: 10 });

  // The crash loses the bits not yet synced; the WAL replay re-marks them.
  const restored = new ArrayBitmap(volumeBlocks);
  const resumed = RebuildSession.resume(saved, restored, { lsnApplied: 12 });
  assert.equal(resumed.lsnApplied, 12);
  assert.equal(resumed.chunksDone, 4);
  assert.deepEqual(resumed.chunksWanted(10), [2, 3, 5, 6, 8, 9], 'in-flight chunks 2 and 5 are copied again');
  assert.ok(resumed.markReplayed(REF, rec(10, 'write', 0, 4)).ok, 'at or below lsnBase: no mark');
  assert.ok(resumed.markReplayed(REF, rec(11, 'write', 9, 2)).ok);
  assert.ok(resumed.markReplayed(REF, rec(12, 'trim', 20, 3)).ok);
  const beyond = resumed.markReplayed(REF, rec(13, 'write', 0, 1));
  assert.equal(!beyond.ok && beyond.error, 'lsn_gap');
  assert.deepEqual([...restored.bits.keys()].filter((b) => restored.get(b)), [9, 10, 20, 21, 22]);
  const planned = resumed.planBaseWrite(REF, ...chunkOf(resumed, 2, 1, 11));
  assert.ok(planned.ok);
  assert.deepEqual(planned.plan.runs, [{ startBlock: 8, lengthBlocks: 1 }, { startBlock: 11, lengthBlocks: 1 }]);
  assert.ok(resumed.baseWriteDone(REF, planned.plan.token).ok);
  for (const index of [3, 5, 6, 8, 9]) {
    const p = resumed.planBaseWrite(REF, ...chunkOf(resumed, index, 1, 11));
    assert.ok(p.ok);
    assert.ok(resumed.baseWriteDone(REF, p.plan.token).ok);
  }
  assert.deepEqual(resumed.tryComplete(REF), { ok: true, lsnAchieved: 12 });
});

test('resume refuses progress that does not fit the session', () => {
  const { session } = make();
  const saved = session.progress();
  assert.throws(() => RebuildSession.resume({ ...saved, chunkIndexNext: 4 }, new ArrayBitmap(10)), RangeError);
  assert.throws(() => RebuildSession.resume({ ...saved, chunkIndexNext: 1, chunksDoneAbove: [1] }, new ArrayBitmap(10)), RangeError);
  assert.throws(() => RebuildSession.resume({ ...saved, lsnCheckpointMax: 9 }, new ArrayBitmap(10)), RangeError);
  assert.throws(() => RebuildSession.resume(saved, new ArrayBitmap(10), { lsnApplied: 9 }), RangeError);
});

test('parameters are checked at the edge', () => {
  for (const bad of [{ chunkBlocks: 0 }, { lsnTarget: 9 }, { sessionId: -1 }, { volumeBlocks: 1.5 }, { blockBytes: 0 }]) {
    assert.throws(() => make(bad), RangeError, JSON.stringify(bad));
  }
});

test('RebuildSlot: a newer session supersedes, an older or equal one is refused, even after clear()', () => {
  const slot = new RebuildSlot();
  const first = make().session;
  assert.ok(slot.start(first).ok);
  assert.equal(slot.get(REF), first);
  assert.equal(slot.get({ sessionId: 7, epoch: 2 }), undefined);
  const newer = make({ sessionId: 8 }).session;
  const started = slot.start(newer);
  assert.ok(started.ok && started.superseded === first);
  assert.equal(first.phase, 'failed');
  assert.equal(first.failure?.failure, 'superseded');
  for (const [params, error] of [
    [{ sessionId: 8 }, 'stale_session'],
    [{ sessionId: 5 }, 'stale_session'],
    [{ sessionId: 99, epoch: 2 }, 'stale_epoch'],
  ] as const) {
    const refused = slot.start(make(params).session);
    assert.equal(!refused.ok && refused.error, error, JSON.stringify(params));
  }
  assert.equal(slot.active, newer);
  slot.clear();
  assert.equal(slot.active, undefined);
  const late = slot.start(make({ sessionId: 8 }).session);
  assert.equal(!late.ok && late.error, 'stale_session');
  const nextEpoch = slot.start(make({ sessionId: 1, epoch: 4 }).session);
  assert.ok(nextEpoch.ok && nextEpoch.superseded === undefined);
});

test('hooks: a subclass can change the small rules (the simulator plants its bugs this way)', () => {
  class MarksFirstBlockOnly extends RebuildSession {
    protected override runToMarkOnApply(record: AppliedRecord): { startBlock: number; lengthBlocks: number } | null {
      const run = super.runToMarkOnApply(record);
      return run === null ? null : { startBlock: run.startBlock, lengthBlocks: 1 };
    }
  }
  const bitmap = new ArrayBitmap(10);
  const session = new MarksFirstBlockOnly(PARAMS, bitmap);
  assert.ok(session.walApplied(REF, rec(11, 'write', 2, 3)).ok);
  assert.equal(bitmap.countSet(), 1);
  const resumed = MarksFirstBlockOnly.resume(session.progress(), new ArrayBitmap(10));
  assert.ok(resumed instanceof MarksFirstBlockOnly, 'resume() builds the subclass');
});

// A bitmap that reports its marks as runs, as DenseBitmap's readRuns does:
// a page of out.length / 2 runs at a time (a chunk of 300 blocks can hold more).
class RunsBitmap extends ArrayBitmap {
  readRuns(fromBlock: number, endBlock: number, out: Float64Array): number {
    return readSetRuns(this.bits, fromBlock, endBlock, out);
  }
}

test('WAL_WINS: a base plan from the bitmap runs skips exactly the blocks the block-by-block plan skips', () => {
  fc.assert(
    fc.property(
      fc.integer({ min: 1, max: 300 }),
      fc.array(fc.tuple(fc.nat(), fc.integer({ min: 1, max: 9 })), { maxLength: 60 }),
      (chunkBlocks, marks) => {
        const params = { ...PARAMS, chunkBlocks, volumeBlocks: 700, lsnTarget: 10 + marks.length };
        const byBlock = new RebuildSession(params, new ArrayBitmap(700));
        const byRuns = new RebuildSession(params, new RunsBitmap(700));
        marks.forEach(([lba, length], i) => {
          const r = rec(11 + i, 'write', lba % 700, Math.min(length, 700 - (lba % 700)));
          assert.ok(byBlock.walApplied(REF, r).ok && byRuns.walApplied(REF, r).ok);
        });
        assert.deepEqual(copyBase(byRuns), copyBase(byBlock));
      },
    ),
    { numRuns: 300 },
  );
});

test('RESYNC: an unchanged chunk writes nothing and counts as done; outside a resync it is refused', () => {
  const plain = make().session;
  const [chunk0] = chunkOf(plain, 0);
  const refused = plain.planUnchanged(REF, chunk0);
  assert.equal(refused.ok, false);
  assert.equal(!refused.ok && refused.error, 'chunk_mismatch');
  assert.equal(plain.isChunkDone(0), false);

  const { session } = make({ resync: true });
  assert.equal(session.resync, true);
  const [c0] = chunkOf(session, 0);
  const [c1, d1] = chunkOf(session, 1);
  const [c2] = chunkOf(session, 2);
  const u0 = session.planUnchanged(REF, c0);
  assert.ok(u0.ok);
  assert.deepEqual(u0.plan.runs, [], 'nothing to write');
  assert.equal(session.planUnchanged(REF, c0).ok, false, 'a chunk in flight is not planned twice');
  const w1 = session.planBaseWrite(REF, c1, d1);
  assert.ok(w1.ok);
  assert.equal(w1.plan.runs.length, 1, 'a marked chunk comes with its data as in a rebuild');
  const u2 = session.planUnchanged(REF, c2);
  assert.ok(u2.ok);
  for (const token of [u0.plan.token, w1.plan.token]) assert.ok(session.baseWriteDone(REF, token).ok);
  assert.equal(session.baseDone, false);
  assert.ok(session.baseWriteDone(REF, u2.plan.token).ok);
  assert.equal(session.baseDone, true);
  assert.equal(session.planUnchanged(REF, c0).ok, false, 'a done chunk is refused');
  const outside = session.planUnchanged(REF, { ...c0, index: 3, startBlock: 12 });
  assert.equal(!outside.ok && outside.error, 'chunk_mismatch');
});
