// The primary's decision for a replica (lib/protocol/decide.ts): one table row
// per outcome and per boundary (the WAL tail, the backlog floor, the head,
// the bitmap's start), then properties over random facts: decide() is total
// and deterministic, every feed starts at an LSN the primary still holds, and
// moving a replica closer to the head never yields a costlier kind.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';

import fc from 'fast-check';

import { BLOCK_BYTES } from '../../lib/native/base_image';
import { BITMAP_BLOCK_BYTES, decide } from '../../lib/protocol/decide';
import type { Decision, DecisionKind, PrimaryFacts, ReplicaFacts } from '../../lib/protocol/types';

const GiB = 2 ** 30;

// Head 200, checkpoint 150, WAL holds 121..200, backlog holds 181..200.
const PRIMARY: PrimaryFacts = {
  epoch: 3,
  lsnHead: 200,
  lsnCheckpoint: 150,
  backlogFloor: 180,
  walTail: 120,
  walBytesAfterReplica: 10_000,
  volumeBytes: GiB,
};

function at(position: number, more: Partial<ReplicaFacts> = {}): ReplicaFacts {
  return { epoch: 3, lsnReceived: position, lsnDurable: position, lsnApplied: position, chainMatches: true, ...more };
}

// Epoch 2 opened at LSN 50, epoch 3 at LSN 120 (no barrier before: epoch 1, the first, had none).
const HISTORY = { epochStarts: [{ epoch: 2, lsn: 50 }, { epoch: 3, lsn: 120 }] };

const REBUILD_COST = GiB + 10_000; // the image plus the WAL lane (walBytesAfterReplica as its estimate)
const UNFINISHED = { sessionId: 7, epoch: 3, baseLsn: 130, chunksDone: 3, chunksTotal: 4 };

interface Row {
  name: string;
  primary?: Partial<PrimaryFacts>;
  replica: ReplicaFacts;
  expect: Partial<Decision> & { kind: DecisionKind };
  reason: RegExp;
}

const ROWS: Row[] = [
  // keep-up
  { name: 'a replica at the head is kept up at no cost', replica: at(200), expect: { kind: 'keep_up', lsnFrom: 201, lsnTarget: 200, costBytes: 0 }, reason: /at LSN 200 is current with the head 200/ },
  { name: 'a replica at the head is kept up with an empty backlog', primary: { backlogFloor: 0 }, replica: at(200), expect: { kind: 'keep_up', lsnFrom: 201, costBytes: 0 }, reason: /current/ },
  { name: 'a replica at the backlog floor is kept up from memory', replica: at(180), expect: { kind: 'keep_up', lsnFrom: 181, lsnTarget: 200, costBytes: 10_000 }, reason: /in-memory backlog \(after LSN 180\)/ },
  { name: 'a replica between the backlog floor and the head is kept up from memory', replica: at(199), expect: { kind: 'keep_up', lsnFrom: 200 }, reason: /in-memory backlog/ },
  { name: 'a replica one below the backlog floor catches up from the WAL', replica: at(179), expect: { kind: 'catch_up', lsnFrom: 180, lsnTarget: 200, costBytes: 10_000 }, reason: /within the WAL \(after LSN 120\)/ },
  { name: 'an empty backlog (floor 0) feeds nobody from memory', primary: { backlogFloor: 0 }, replica: at(199), expect: { kind: 'catch_up', lsnFrom: 200 }, reason: /catch up LSN 200\.\.200/ },
  // catch-up and the WAL tail
  { name: 'a replica at walTail + 1 catches up', replica: at(121), expect: { kind: 'catch_up', lsnFrom: 122, lsnTarget: 200, costBytes: 10_000, lsnBase: 121 }, reason: /at LSN 121 is 79 behind the head 200/ },
  { name: 'a replica exactly at the WAL tail catches up (the WAL holds every record after it)', replica: at(120), expect: { kind: 'catch_up', lsnFrom: 121 }, reason: /catch up LSN 121\.\.200 from the WAL/ },
  { name: 'a replica at walTail - 1 without a bitmap is rebuilt', replica: at(119), expect: { kind: 'rebuild', lsnFrom: 151, lsnTarget: 200, costBytes: REBUILD_COST, lsnBase: 150 }, reason: /at LSN 119 is behind the WAL tail 120 and no dirty bitmap is kept/ },
  { name: 'a fresh replica catches up when the WAL holds everything from LSN 1', primary: { lsnHead: 100, lsnCheckpoint: 50, walTail: 0, backlogFloor: 0 }, replica: at(0), expect: { kind: 'catch_up', lsnFrom: 1, lsnTarget: 100 }, reason: /catch up LSN 1\.\.100/ },
  { name: 'a fresh replica of a fresh volume is kept up from LSN 1', primary: { lsnHead: 0, lsnCheckpoint: 0, walTail: 0, backlogFloor: 0 }, replica: at(0), expect: { kind: 'keep_up', lsnFrom: 1, costBytes: 0 }, reason: /current/ },
  { name: 'an empty WAL (walTail = head) sends anyone behind the head to rebuild', primary: { walTail: 200, lsnCheckpoint: 200, backlogFloor: 0 }, replica: at(199), expect: { kind: 'rebuild', lsnFrom: 201, lsnBase: 200 }, reason: /behind the WAL tail 200/ },
  { name: 'received (not applied) is the position: unapplied records in its WAL count', replica: at(150, { lsnApplied: 100, lsnDurable: 150 }), expect: { kind: 'catch_up', lsnFrom: 151 }, reason: /at LSN 150/ },
  // bitmap resync
  {
    name: 'a replica below the tail with a bitmap of this epoch from before its applied LSN is resynced from the bitmap',
    primary: { bitmap: { epoch: 3, lsnFrom: 100, dirtyBlocks: 500 } },
    replica: at(119),
    expect: { kind: 'bitmap_resync', lsnFrom: 151, lsnTarget: 200, lsnBase: 150, costBytes: 500 * 4096 + 10_000 },
    reason: /dirty bitmap of epoch 3 marks every block written after LSN 100 ≤ its applied LSN 119: resync 500 blocks/,
  },
  { name: 'a bitmap starting exactly at the applied LSN bounds the gap', primary: { bitmap: { epoch: 3, lsnFrom: 119, dirtyBlocks: 5 } }, replica: at(119), expect: { kind: 'bitmap_resync' }, reason: /after LSN 119 ≤ its applied LSN 119/ },
  { name: 'a bitmap starting after the applied LSN does not bound the gap', primary: { bitmap: { epoch: 3, lsnFrom: 120, dirtyBlocks: 5 } }, replica: at(119), expect: { kind: 'rebuild', costBytes: REBUILD_COST }, reason: /starts at LSN 120, after its applied LSN 119/ },
  { name: 'the bitmap is bounded by the applied LSN, not the received one', primary: { bitmap: { epoch: 3, lsnFrom: 110, dirtyBlocks: 5 } }, replica: at(119, { lsnApplied: 105 }), expect: { kind: 'rebuild' }, reason: /after its applied LSN 105/ },
  { name: 'a bitmap of another epoch is not used', primary: { bitmap: { epoch: 2, lsnFrom: 100, dirtyBlocks: 5 } }, replica: at(119), expect: { kind: 'rebuild', costBytes: REBUILD_COST }, reason: /dirty bitmap is of epoch 2, not 3/ },
  { name: 'a replica inside the WAL catches up even when a bitmap exists', primary: { bitmap: { epoch: 3, lsnFrom: 100, dirtyBlocks: 5 } }, replica: at(120), expect: { kind: 'catch_up' }, reason: /catch up/ },
  { name: 'the WAL lane estimate uses walBytesAfterCheckpoint when given', primary: { walBytesAfterCheckpoint: 7_000, bitmap: { epoch: 3, lsnFrom: 100, dirtyBlocks: 2 } }, replica: at(119), expect: { kind: 'bitmap_resync', costBytes: 2 * 4096 + 7_000 }, reason: /about 15192 bytes/ },
  // rebuild
  { name: 'a rebuild costs the image plus the WAL after the checkpoint when given', primary: { walBytesAfterCheckpoint: 7_000 }, replica: at(10), expect: { kind: 'rebuild', lsnFrom: 151, costBytes: GiB + 7_000 }, reason: /rebuild from the checkpoint at LSN 150 \(1073741824 bytes\) and the WAL LSN 151\.\.200/ },
  { name: 'a replica that applied beyond our head is divergent', replica: at(201), expect: { kind: 'rebuild', lsnFrom: 151, lsnTarget: 200, lsnBase: 150 }, reason: /divergent: the replica applied up to LSN 201, beyond this primary's head 200/ },
  { name: 'a replica that received beyond our head is divergent though its applied LSN is not', replica: at(205, { lsnApplied: 190 }), expect: { kind: 'rebuild', lsnFrom: 151 }, reason: /divergent: the replica received up to LSN 205/ },
  { name: 'a chain mismatch at the head sends the replica to rebuild', replica: at(200, { chainMatches: false }), expect: { kind: 'rebuild', lsnFrom: 151, costBytes: REBUILD_COST }, reason: /chain mismatch: the replica's apply checksum at LSN 200 differs/ },
  { name: 'a chain mismatch beats a bitmap that would bound the gap', primary: { bitmap: { epoch: 3, lsnFrom: 100, dirtyBlocks: 5 } }, replica: at(119, { chainMatches: false }), expect: { kind: 'rebuild' }, reason: /chain mismatch/ },
  { name: 'an unknown chain (undefined) is decided by position', replica: at(200, { chainMatches: undefined }), expect: { kind: 'keep_up' }, reason: /current/ },
  // epochs
  { name: 'a replica of a higher epoch fences this primary', replica: at(200, { epoch: 4 }), expect: { kind: 'fence', lsnFrom: 0, lsnTarget: 0, costBytes: 0 }, reason: /epoch 4, newer than this primary's epoch 3: this primary is deposed/ },
  { name: 'fencing comes before divergence and chain checks', replica: at(500, { epoch: 9, chainMatches: false }), expect: { kind: 'fence' }, reason: /epoch 9/ },
  { name: 'a replica of a lower epoch at the head is still kept up', replica: at(200, { epoch: 1 }), expect: { kind: 'keep_up' }, reason: /current/ },
  { name: 'a replica of a lower epoch inside the WAL still catches up', replica: at(150, { epoch: 2 }), expect: { kind: 'catch_up', lsnFrom: 151 }, reason: /catch up/ },
  // the epoch history: are the replica's applied records ours?
  { name: 'a replica whose newest applied barrier is our current epoch is kept up', primary: HISTORY, replica: at(200, { epochApplied: 3 }), expect: { kind: 'keep_up' }, reason: /current/ },
  { name: 'a replica of epoch 2 applied up to just below our epoch 3 barrier catches up', primary: HISTORY, replica: at(150, { lsnApplied: 119, epochApplied: 2 }), expect: { kind: 'catch_up', lsnFrom: 151 }, reason: /catch up/ },
  {
    name: 'a replica of epoch 2 applied at our epoch 3 barrier is divergent (a deposed primary\'s own records)',
    primary: HISTORY,
    replica: at(150, { lsnApplied: 120, epochApplied: 2 }),
    expect: { kind: 'rebuild', lsnFrom: 151, lsnBase: 150, costBytes: REBUILD_COST },
    reason: /divergent: the replica's applied records are not all this primary's history: it applied records of epoch 2 up to LSN 120, but here epoch 3 opened at LSN 120/,
  },
  { name: 'a replica that applied no barrier, up to just below our first one, catches up', primary: HISTORY, replica: at(121, { lsnApplied: 49, epochApplied: 0 }), expect: { kind: 'catch_up', lsnFrom: 122 }, reason: /catch up/ },
  { name: 'a replica that applied no barrier, past our first one, is divergent', primary: HISTORY, replica: at(200, { lsnApplied: 50, epochApplied: 0 }), expect: { kind: 'rebuild' }, reason: /epoch 0 up to LSN 50, but here epoch 2 opened at LSN 50/ },
  { name: 'a replica whose applied barrier opened an epoch we never opened is divergent', primary: HISTORY, replica: at(200, { epochApplied: 1 }), expect: { kind: 'rebuild' }, reason: /records of epoch 1, an epoch this history never opened/ },
  { name: 'history divergence is found before an unfinished rebuild would resume', primary: HISTORY, replica: at(160, { lsnApplied: 130, epochApplied: 2, rebuild: UNFINISHED }), expect: { kind: 'rebuild', resumesSessionId: undefined }, reason: /epoch 3 opened at LSN 120/ },
  { name: 'without the replica\'s applied epoch the history is not consulted', primary: HISTORY, replica: at(200, { lsnApplied: 130 }), expect: { kind: 'keep_up' }, reason: /current/ },
  { name: 'without the primary\'s history the replica\'s applied epoch is not consulted', replica: at(200, { lsnApplied: 130, epochApplied: 1 }), expect: { kind: 'keep_up' }, reason: /current/ },
  // an unfinished rebuild
  {
    name: 'an unfinished rebuild of this epoch whose WAL lane is inside the WAL resumes, costing the chunks left',
    replica: at(160, { rebuild: UNFINISHED }),
    expect: { kind: 'rebuild', lsnFrom: 161, lsnTarget: 200, lsnBase: 130, resumesSessionId: 7, costBytes: GiB / 4 + 10_000 },
    reason: /resume the unfinished rebuild \(session 7, epoch 3, base LSN 130, 3\/4 chunks\): 1 chunks left, WAL lane from LSN 161/,
  },
  { name: 'an unfinished rebuild at the head resumes rather than keeping up (its image is partial)', replica: at(200, { rebuild: UNFINISHED }), expect: { kind: 'rebuild', lsnFrom: 201, resumesSessionId: 7 }, reason: /resume/ },
  { name: 'an unfinished rebuild with its WAL lane exactly at the tail resumes', replica: at(120, { rebuild: { ...UNFINISHED, baseLsn: 110 } }), expect: { kind: 'rebuild', lsnFrom: 121, lsnBase: 110, resumesSessionId: 7 }, reason: /resume/ },
  { name: 'an unfinished rebuild with its WAL lane behind the tail starts afresh', replica: at(119, { rebuild: { ...UNFINISHED, baseLsn: 110 } }), expect: { kind: 'rebuild', lsnFrom: 151, lsnBase: 150, costBytes: REBUILD_COST, resumesSessionId: undefined }, reason: /cannot resume: its WAL lane at LSN 119 is behind the WAL tail 120/ },
  { name: 'an unfinished rebuild of another epoch starts afresh', replica: at(160, { rebuild: { ...UNFINISHED, epoch: 2 } }), expect: { kind: 'rebuild', lsnFrom: 151, resumesSessionId: undefined }, reason: /cannot resume: it is of epoch 2, not 3/ },
  { name: 'an unfinished rebuild whose WAL lane is below its base starts afresh', replica: at(125, { rebuild: UNFINISHED }), expect: { kind: 'rebuild', lsnFrom: 151 }, reason: /WAL lane at LSN 125 is below its base LSN 130/ },
  { name: 'an unfinished rebuild whose base is beyond our head starts afresh', replica: at(160, { rebuild: { ...UNFINISHED, baseLsn: 250 } }), expect: { kind: 'rebuild', lsnFrom: 151 }, reason: /base LSN 250 is beyond the head 200/ },
  { name: 'an unfinished rebuild with every chunk done resumes for its WAL lane and digests only', replica: at(190, { rebuild: { ...UNFINISHED, chunksDone: 4 } }), expect: { kind: 'rebuild', costBytes: 10_000 }, reason: /0 chunks left/ },
];

for (const row of ROWS) {
  test(`decide: ${row.name}`, () => {
    const decision = decide({ ...PRIMARY, ...row.primary }, row.replica);
    for (const [key, value] of Object.entries(row.expect)) {
      assert.equal(decision[key as keyof Decision], value, `${key} in ${JSON.stringify(decision)}`);
    }
    assert.match(decision.reason, row.reason);
  });
}

test('decide: every kind is reached by the table', () => {
  const kinds = new Set(ROWS.map((row) => row.expect.kind));
  assert.deepEqual([...kinds].sort(), ['bitmap_resync', 'catch_up', 'fence', 'keep_up', 'rebuild']);
});

test('decide: the bitmap marks whole blocks of the base image size', () => {
  assert.equal(BITMAP_BLOCK_BYTES, BLOCK_BYTES);
});

test('decide: inconsistent or malformed facts are refused with RangeError', () => {
  const cases: [Partial<PrimaryFacts>, Partial<ReplicaFacts>, RegExp][] = [
    [{ walTail: 160 }, {}, /walTail ≤ lsnCheckpoint ≤ lsnHead, got 160, 150, 200/],
    [{ lsnCheckpoint: 201 }, {}, /walTail ≤ lsnCheckpoint ≤ lsnHead/],
    [{ backlogFloor: 201 }, {}, /backlogFloor 201 is beyond lsnHead 200/],
    [{ lsnHead: -1 }, {}, /primary.lsnHead must be a non-negative safe integer/],
    [{ volumeBytes: 1.5 }, {}, /primary.volumeBytes/],
    [{ walBytesAfterCheckpoint: -3 }, {}, /walBytesAfterCheckpoint/],
    [{ bitmap: { epoch: 3, lsnFrom: NaN, dirtyBlocks: 1 } }, {}, /bitmap.lsnFrom/],
    [{}, { lsnApplied: 2 ** 53 }, /replica.lsnApplied/],
    [{}, { rebuild: { ...UNFINISHED, chunksDone: 5 } }, /chunksDone ≤ chunksTotal/],
    [{}, { rebuild: { ...UNFINISHED, chunksDone: 0, chunksTotal: 0 } }, /chunksTotal > 0/],
    [{ epochStarts: [{ epoch: 3, lsn: 50 }, { epoch: 2, lsn: 120 }] }, {}, /primary.epochStarts: epoch start 1 \(epoch 2, LSN 120\) does not follow epoch 3 at LSN 50/],
    [{ epochStarts: [{ epoch: 2, lsn: 0 }] }, {}, /primary.epochStarts: epoch start 0 \(epoch 2, LSN 0\) is not two positive integers/],
    [{}, { epochApplied: -1 }, /replica.epochApplied/],
  ];
  for (const [primary, replica, message] of cases) {
    assert.throws(() => decide({ ...PRIMARY, ...primary }, { ...at(150), ...replica }), (err: Error) => err instanceof RangeError && message.test(err.message), String(message));
  }
});

// ---- properties ----

const lsnArb = fc.integer({ min: 0, max: 1_000 });

const primaryArb: fc.Arbitrary<PrimaryFacts> = fc
  .record({
    epoch: fc.integer({ min: 1, max: 5 }),
    lsns: fc.tuple(lsnArb, lsnArb, lsnArb).map((xs) => xs.sort((a, b) => a - b)),
    backlogFloor: lsnArb,
    walBytesAfterReplica: fc.integer({ min: 0, max: 2 ** 40 }),
    walBytesAfterCheckpoint: fc.option(fc.integer({ min: 0, max: 2 ** 40 }), { nil: undefined }),
    volumeBytes: fc.integer({ min: 0, max: 2 ** 44 }),
    bitmap: fc.option(fc.record({ epoch: fc.integer({ min: 1, max: 5 }), lsnFrom: lsnArb, dirtyBlocks: fc.integer({ min: 0, max: 2 ** 30 }) }), { nil: undefined }),
  })
  .map(({ lsns: [walTail, lsnCheckpoint, lsnHead], backlogFloor, walBytesAfterCheckpoint, bitmap, ...rest }) => ({
    ...rest,
    walTail,
    lsnCheckpoint,
    lsnHead,
    backlogFloor: Math.min(backlogFloor, lsnHead),
    ...(walBytesAfterCheckpoint === undefined ? {} : { walBytesAfterCheckpoint }),
    ...(bitmap === undefined ? {} : { bitmap }),
  }));

const rebuildArb = fc
  .record({
    sessionId: fc.integer({ min: 1, max: 100 }),
    epoch: fc.integer({ min: 1, max: 5 }),
    baseLsn: lsnArb,
    chunksTotal: fc.integer({ min: 1, max: 64 }),
    chunksDone: fc.integer({ min: 0, max: 64 }),
  })
  .map((r) => ({ ...r, chunksDone: Math.min(r.chunksDone, r.chunksTotal) }));

const replicaArb: fc.Arbitrary<ReplicaFacts> = fc
  .record({
    epoch: fc.integer({ min: 0, max: 6 }),
    lsnReceived: lsnArb,
    lsnDurable: lsnArb,
    lsnApplied: lsnArb,
    chainMatches: fc.constantFrom(true, false, undefined),
    rebuild: fc.option(rebuildArb, { nil: undefined }),
  })
  .map(({ rebuild, ...rest }) => (rebuild === undefined ? rest : { ...rest, rebuild }));

test('decide is total and deterministic, and every feed starts at an LSN the primary still holds', () => {
  fc.assert(
    fc.property(primaryArb, replicaArb, (primary, replica) => {
      const decision = decide(primary, replica);
      assert.deepEqual(decide(primary, replica), decision);
      assert.ok(Number.isSafeInteger(decision.costBytes) && decision.costBytes >= 0, `costBytes ${decision.costBytes}`);
      assert.ok(decision.reason.length > 0);
      if (decision.kind === 'fence') {
        assert.ok(replica.epoch > primary.epoch);
        return;
      }
      assert.equal(decision.lsnTarget, primary.lsnHead);
      assert.ok(decision.lsnFrom <= primary.lsnHead + 1, 'lsnFrom is at most one past the head');
      if (decision.kind === 'keep_up') {
        const fromMemory = primary.backlogFloor > 0 && decision.lsnFrom > primary.backlogFloor;
        assert.ok(decision.lsnFrom === primary.lsnHead + 1 || fromMemory, `keep-up from LSN ${decision.lsnFrom}, backlog after ${primary.backlogFloor}`);
      } else {
        assert.ok(decision.lsnFrom > primary.walTail, `${decision.kind} from LSN ${decision.lsnFrom} but the WAL holds only after ${primary.walTail}`);
      }
      if (decision.kind === 'bitmap_resync' || (decision.kind === 'rebuild' && decision.resumesSessionId === undefined)) {
        assert.equal(decision.lsnBase, primary.lsnCheckpoint);
        assert.equal(decision.lsnFrom, primary.lsnCheckpoint + 1);
      }
    }),
  );
});

const RANK: Record<DecisionKind, number> = { keep_up: 0, catch_up: 1, bitmap_resync: 2, rebuild: 3, fence: -1 };

test('moving a replica closer to the head (received and applied, never past it) never yields a costlier kind', () => {
  fc.assert(
    fc.property(primaryArb, replicaArb, lsnArb, lsnArb, fc.boolean(), (anyPrimary, far, receivedUp, appliedUp, bitmapOfThisEpoch) => {
      // Bias towards the interesting cases: a bitmap of this epoch, a replica not from the future.
      const bitmap = anyPrimary.bitmap;
      const primary = bitmap !== undefined && bitmapOfThisEpoch ? { ...anyPrimary, bitmap: { ...bitmap, epoch: anyPrimary.epoch } } : anyPrimary;
      const clamp = (lsn: number): number => Math.min(lsn, primary.lsnHead);
      const epoch = Math.min(far.epoch, primary.epoch);
      const farther = { ...far, epoch, lsnReceived: clamp(far.lsnReceived), lsnApplied: clamp(far.lsnApplied) };
      const closer = {
        ...farther,
        lsnReceived: clamp(farther.lsnReceived + receivedUp),
        lsnApplied: clamp(farther.lsnApplied + appliedUp),
      };
      const kindFar = decide(primary, farther).kind;
      const kindClose = decide(primary, closer).kind;
      assert.ok(RANK[kindClose] <= RANK[kindFar], `closer ${JSON.stringify(closer)} → ${kindClose}, farther → ${kindFar}`);
    }),
    { numRuns: 2_000 },
  );
});
