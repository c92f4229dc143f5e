// The replication bench's kernel-thread figure (bench/lib/kthreads.ts): only
// kthreadd's children count, time is taken per thread between two snapshots
// and summed by kind, a thread that starts meanwhile counts from zero, and the
// text gives the time per client operation.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';

import { kernelThreadKind, kernelThreadsSince, kernelThreadsSnapshot, kernelThreadsText, parseStat } from '../../bench/lib/kthreads';
import { tempDir } from '../support/tmp';

function fakeThread(procDir: string, pid: number, comm: string, ppid: number, ns: number): void {
  const dir = path.join(procDir, String(pid));
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, 'stat'), `${pid} (${comm}) S ${ppid} 0 0 0 -1 69238880 0 0 0 0 0 0\n`);
  fs.writeFileSync(path.join(dir, 'schedstat'), `${ns} 1234 56\n`);
}

test('kernel threads: the time of kthreadd\'s children between two snapshots, summed by kind', (t) => {
  const { dir, cleanup } = tempDir('benchkthreads');
  t.after(cleanup);
  fakeThread(dir, 2, 'kthreadd', 0, 1_000_000);
  fakeThread(dir, 40, 'kworker/1:11-dio/vda', 2, 5_000_000);
  fakeThread(dir, 41, 'kworker/0:1H-kblockd', 2, 7_000_000);
  fakeThread(dir, 42, 'ksoftirqd/0', 2, 9_000_000);
  fakeThread(dir, 900, 'node', 1, 50_000_000); // a process, not a kernel thread
  fs.mkdirSync(path.join(dir, 'self'));
  const start = kernelThreadsSnapshot(dir);
  assert.ok(start !== null);
  assert.deepEqual([...start.threads.keys()].sort((a, b) => a - b), [2, 40, 41, 42]);

  fakeThread(dir, 40, 'kworker/1:11-dio/vda', 2, 8_000_000); // +3 ms
  fakeThread(dir, 41, 'kworker/0:1H-kblockd', 2, 8_000_000); // +1 ms
  fakeThread(dir, 42, 'ksoftirqd/0', 2, 9_500_000); // +0.5 ms
  fakeThread(dir, 43, 'kworker/u4:2-events_unbound', 2, 2_000_000); // new: all 2 ms count
  fakeThread(dir, 900, 'node', 1, 90_000_000);
  const w = kernelThreadsSince(start, dir);
  assert.ok(w !== null);
  assert.deepEqual(
    w.byKind.map((k) => [k.kind, Math.round(k.us)]),
    [
      ['kworker', 6000],
      ['ksoftirqd', 500],
      ['kthreadd', 0],
    ],
  );
  assert.equal(Math.round(w.totalUs), 6500);
});

test('kernel threads: the text gives µs per client operation over the window', () => {
  const w = { wallMs: 2000, byKind: [{ kind: 'kworker', us: 40_000 }, { kind: 'ksoftirqd', us: 2_000 }, { kind: 'rcu_preempt', us: 10 }], totalUs: 42_010 };
  // 10,000 writes/s over 2 s: 20,000 writes.
  assert.equal(kernelThreadsText(w, 10_000, 'write'), 'kernel threads 2.10 µs per write (kworker 2.00, ksoftirqd 0.10)');
  assert.equal(kernelThreadsText({ wallMs: 1000, byKind: [], totalUs: 0 }, 5_000, 'write'), 'kernel threads 0.00 µs per write');
});

test('kernel threads: comm and ppid from a stat line whose comm holds spaces and parentheses', () => {
  assert.deepEqual(parseStat('77 (a (b) c) S 2 0 0'), { comm: 'a (b) c', ppid: 2 });
  assert.equal(parseStat('garbage'), null);
  assert.equal(parseStat('5 (x) S notanumber'), null);
  assert.equal(kernelThreadKind('kworker/1:11-dio/vda'), 'kworker');
  assert.equal(kernelThreadKind('jbd2/vda1-8'), 'jbd2');
  assert.equal(kernelThreadKind('kdamond.0'), 'kdamond');
  assert.equal(kernelThreadKind('rcu_preempt'), 'rcu_preempt');
});

test('kernel threads: this machine\'s /proc gives a window, and a place without them gives none', (t) => {
  assert.equal(kernelThreadsSnapshot('/no/such/proc'), null);
  assert.equal(kernelThreadsSince(null), null);
  const start = kernelThreadsSnapshot();
  if (start === null) {
    t.skip('skipped: missing kernel threads in /proc (not Linux, or /proc hides them)');
    return;
  }
  assert.ok(start.threads.has(2), 'kthreadd itself is counted');
  const w = kernelThreadsSince(start);
  assert.ok(w !== null);
  assert.ok(w.totalUs >= 0 && w.byKind.every((k) => k.us >= 0));
});
