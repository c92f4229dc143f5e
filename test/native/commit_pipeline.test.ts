// The group-commit bookkeeping (native/commit/pipeline.h) driven step by step
// through its test hook, in orders a disk produces only by chance:
//  - a sync in flight is not outrun by groups that complete after it (they
//    once merged into the range it covered, gave it a newer stamp, and so
//    sent out a sync after every group while the durable LSN stood still);
//  - one fdatasync covers every group up to the target that was in flight
//    when the first of them completed; groups submitted later never hold it;
//  - seeded random runs against a model of the POSIX rules: never durable
//    before the model says so, always durable up to the target once the
//    disk has answered everything.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';

import { CommitPipeline } from '../../lib/native/commit_pipeline';
import { prng } from '../support/tmp';

const FILE = 7;

/** Submits and completes what syncWanted asks for, as the WAL writer's kick does; returns the sync ids. */
function submitWantedSyncs(p: CommitPipeline): number[] {
  const ids: number[] = [];
  for (let file = p.syncWanted(); file !== null; file = p.syncWanted()) ids.push(p.syncSubmitted(file));
  return ids;
}

test('a sync in flight is not outrun by groups completing after it', () => {
  const p = new CommitPipeline(1);
  p.groupSubmitted(1, 10, FILE);
  p.requestDurable(10);
  p.groupCompleted(1);
  const first = submitWantedSyncs(p);
  assert.equal(first.length, 1, 'the written group up to the target gets one sync');
  // The disk is slow to flush: five more groups, all past the target,
  // complete while that sync is in flight.
  for (let k = 0; k < 5; k++) {
    const lsn = 11 + 10 * k;
    p.groupSubmitted(lsn, lsn + 9, FILE);
    p.groupCompleted(lsn);
    assert.deepEqual(submitWantedSyncs(p), [], `no second sync after group ${lsn} (past the target)`);
  }
  p.syncCompleted(first[0]!);
  assert.equal(p.lsnDurable, 10, 'the sync made its range durable, whatever completed after it was submitted');
  assert.equal(p.pendingEntries, 1, 'the five later groups are one written range');
});

test('one sync covers every group up to the target that was in flight when the first completed', () => {
  const p = new CommitPipeline(1);
  p.groupSubmitted(1, 10, FILE);
  p.groupSubmitted(11, 20, FILE);
  p.groupSubmitted(21, 30, FILE);
  p.requestDurable(30);
  p.groupCompleted(11);
  assert.equal(p.syncWanted(), null, 'an earlier group is still in flight');
  p.groupCompleted(1);
  assert.equal(p.syncWanted(), null, 'a later group up to the target is still in flight: one sync will cover all three');
  p.groupCompleted(21);
  const ids = submitWantedSyncs(p);
  assert.equal(ids.length, 1);
  p.syncCompleted(ids[0]!);
  assert.equal(p.lsnDurable, 30);
  assert.equal(p.pendingEntries, 0);
});

test('a group submitted after the first completion never holds the sync back', () => {
  const p = new CommitPipeline(1);
  p.groupSubmitted(1, 10, FILE);
  p.requestDurable(1000);
  p.groupCompleted(1);
  // Requests keep raising the target and groups keep going out: none of them
  // was in flight when LSNs 1-10 completed, so none may postpone their sync.
  p.groupSubmitted(11, 20, FILE);
  p.requestDurable(2000);
  const ids = submitWantedSyncs(p);
  assert.equal(ids.length, 1, 'the sync for 1-10 goes out while 11-20 is in flight');
  p.syncCompleted(ids[0]!);
  assert.equal(p.lsnDurable, 10);
  p.groupCompleted(11);
  const more = submitWantedSyncs(p);
  assert.equal(more.length, 1);
  p.syncCompleted(more[0]!);
  assert.equal(p.lsnDurable, 20);
});

test('groups on another file are not waited for, and each file gets its own sync', () => {
  const p = new CommitPipeline(1);
  p.groupSubmitted(1, 10, FILE);
  p.groupSubmitted(11, 20, FILE + 1);
  p.requestDurable(20);
  p.groupCompleted(1);
  assert.equal(p.syncWanted(), FILE, 'the next segment\'s group in flight does not hold this segment\'s sync');
  const a = p.syncSubmitted(FILE);
  p.groupCompleted(11);
  assert.equal(p.syncWanted(), FILE + 1);
  const b = p.syncSubmitted(FILE + 1);
  p.syncCompleted(b);
  assert.equal(p.lsnDurable, 0, 'durable is a prefix: 11-20 waits for 1-10');
  p.syncCompleted(a);
  assert.equal(p.lsnDurable, 20);
});

test('calls out of order are refused, not asserted', () => {
  const p = new CommitPipeline(5);
  assert.throws(() => p.groupSubmitted(1, 2, FILE), { code: 'ERR_PIPELINE', message: /expected 5, got 1/ });
  assert.throws(() => p.groupCompleted(5), { code: 'ERR_PIPELINE', message: /no group starting at LSN 5/ });
  assert.throws(() => p.syncCompleted(1), { code: 'ERR_PIPELINE', message: /no sync 1/ });
  p.groupSubmitted(5, 5, FILE);
  assert.throws(() => p.groupSubmitted(6, 5, FILE), { code: 'ERR_PIPELINE', message: /below lsnFirst/ });
  p.groupCompleted(5, -5, 4096);
  assert.equal(p.failed, true, 'a failed write is fatal');
  assert.throws(() => p.groupSubmitted(6, 6, FILE), { code: 'ERR_PIPELINE', message: /has failed/ });
});

interface ModelGroup {
  first: number;
  last: number;
  file: number;
  dsync: boolean;
  writtenAt: number | null; // the step its write completed
  durable: boolean;
}

/** One seeded run: random submissions, out-of-order completions, requests and syncs, checked against the POSIX rules. */
function randomRun(seed: number): { syncs: number; groups: number; maxPending: number } {
  const rand = prng(seed);
  const p = new CommitPipeline(1);
  const groups: ModelGroup[] = [];
  const inFlight: ModelGroup[] = [];
  const syncs: { id: number; file: number; submittedAt: number }[] = [];
  let file = 1;
  let step = 0;
  let syncCount = 0;
  let maxPending = 0;
  const modelDurablePrefix = (): number => {
    let lsn = 0;
    for (const g of groups) {
      if (!g.durable) break;
      lsn = g.last;
    }
    return lsn;
  };
  const check = (): void => {
    assert.ok(p.lsnDurable <= modelDurablePrefix(), `seed ${seed} step ${step}: durable ${p.lsnDurable} but the model has ${modelDurablePrefix()}`);
    maxPending = Math.max(maxPending, p.pendingEntries);
  };
  const kick = (): void => {
    for (let f = p.syncWanted(); f !== null; f = p.syncWanted()) {
      syncs.push({ id: p.syncSubmitted(f), file: f, submittedAt: step });
      syncCount++;
    }
  };
  const completeGroup = (i: number): void => {
    const g = inFlight.splice(i, 1)[0]!;
    p.groupCompleted(g.first);
    g.writtenAt = step;
    if (g.dsync) g.durable = true;
  };
  const completeSync = (i: number): void => {
    const s = syncs.splice(i, 1)[0]!;
    p.syncCompleted(s.id);
    // fdatasync covers the file's writes that completed before it was submitted.
    for (const g of groups) if (g.file === s.file && g.writtenAt !== null && g.writtenAt < s.submittedAt) g.durable = true;
  };
  for (; step < 3000; step++) {
    const r = rand();
    if (r < 0.3 && inFlight.length < 4) {
      const first = p.lsnSubmitted + 1;
      const last = first + Math.floor(rand() * 8);
      if (rand() < 0.03) file++;
      const g: ModelGroup = { first, last, file, dsync: rand() < 0.15, writtenAt: null, durable: false };
      p.groupSubmitted(first, last, file, g.dsync);
      groups.push(g);
      inFlight.push(g);
    } else if (r < 0.6 && inFlight.length > 0) {
      completeGroup(Math.floor(rand() * inFlight.length));
    } else if (r < 0.7) {
      p.requestDurable(p.lsnSubmitted + Math.floor(rand() * 4));
    } else if (r < 0.85 && syncs.length > 0) {
      completeSync(Math.floor(rand() * syncs.length));
    }
    step++;
    kick();
    check();
  }
  // The disk answers everything: the target is reached, as far as it was submitted.
  const target = Math.min(p.lsnDurableTarget, p.lsnSubmitted);
  for (let rounds = 0; inFlight.length > 0 || syncs.length > 0; rounds++) {
    assert.ok(rounds < 100, `seed ${seed}: the pipeline keeps asking for syncs`);
    while (inFlight.length > 0) completeGroup(0);
    step++;
    kick();
    while (syncs.length > 0) completeSync(0);
    step++;
    kick();
    check();
  }
  assert.ok(p.lsnDurable >= target, `seed ${seed}: durable ${p.lsnDurable} below the target ${target} with nothing in flight`);
  return { syncs: syncCount, groups: groups.length, maxPending };
}

test('seeded random orders: never durable early, always durable up to the target in the end', () => {
  let syncs = 0;
  let groups = 0;
  let maxPending = 0;
  for (let seed = 1; seed <= 40; seed++) {
    const r = randomRun(seed);
    syncs += r.syncs;
    groups += r.groups;
    maxPending = Math.max(maxPending, r.maxPending);
  }
  console.log(`commit pipeline model: 40 seeds, ${groups} groups, ${syncs} fdatasyncs, at most ${maxPending} entries tracked`);
  assert.ok(syncs > 0 && groups > 0);
});
