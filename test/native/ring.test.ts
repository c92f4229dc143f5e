// The ring on the real kernel: more operations than slots queue and all
// complete, completions run cooperatively and still wake an idle loop, a
// malformed request fails alone, injected errors become typed errors, the
// arena is bounded and detached on close.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as os from 'node:os';
import * as path from 'node:path';

import { OpKind, OpPurpose, Ring } from '../../lib/native/ring';
import { tempDir } from '../support/tmp';

test('more operations than ring slots are queued, not refused, and all complete', async () => {
  const { dir, cleanup } = tempDir('ringq');
  const ring = Ring.open({ depth: 32, arenaBytes: 8 << 20 });
  try {
    const file = ring.openFile(path.join(dir, 'f'), { write: true, create: true, direct: true });
    const slices = Array.from({ length: 400 }, (_, i) => {
      const s = ring.alloc(4096);
      s.bytes.fill(i & 0xff);
      return s;
    });
    const results = await Promise.all(slices.map((s, i) => ring.write(file, s, i * 4096)));
    assert.ok(results.every((n) => n === 4096));
    await ring.fdatasync(file);
    const back = ring.alloc(4096);
    await ring.read(file, back, 399 * 4096);
    assert.ok(back.bytes.every((b) => b === (399 & 0xff)));
    assert.equal(ring.info().inFlight, 0);
  } finally {
    await ring.close();
    cleanup();
  }
});

// Linux 5.19 took IORING_SETUP_COOP_TASKRUN; older kernels get a ring without it.
function kernelAtLeast(major: number, minor: number): boolean {
  const [a = 0, b = 0] = os.release().split('.').map((n) => Number.parseInt(n, 10));
  return a > major || (a === major && b >= minor);
}

test('the ring is set up for cooperative task running (no IPI per completion), and completions still wake an idle loop', async (t) => {
  if (!kernelAtLeast(5, 19)) {
    t.skip('skipped: missing Linux 5.19 (IORING_SETUP_COOP_TASKRUN)');
    return;
  }
  const { dir, cleanup } = tempDir('ringcoop');
  const ring = Ring.open({ depth: 32, arenaBytes: 1 << 20 });
  try {
    assert.equal(ring.info().coopTaskrun, true);
    const file = ring.openFile(path.join(dir, 'f'), { write: true, create: true, direct: true });
    const s = ring.alloc(4096);
    s.bytes.fill(7);
    // Nothing else is pending on the event loop: only the completion wakes it.
    for (let i = 0; i < 8; i++) assert.equal(await ring.write(file, s, i * 4096), 4096);
    await ring.fdatasync(file);
    assert.equal(ring.info().inFlight, 0);
  } finally {
    await ring.close();
    cleanup();
  }
});

test('a malformed request fails alone with a typed error', async () => {
  const { dir, cleanup } = tempDir('ringbad');
  const ring = Ring.open({ depth: 32, arenaBytes: 1 << 20 });
  try {
    const file = ring.openFile(path.join(dir, 'f'), { write: true, create: true, direct: true });
    const s = ring.alloc(8192);
    const good = ring.write(file, s, 4096);
    const bad = ring.write(file, s, 100); // not 4 KiB aligned: O_DIRECT would refuse it
    const [g, b] = await Promise.allSettled([good, bad]);
    assert.equal(g.status, 'fulfilled');
    assert.equal(b.status, 'rejected');
    assert.equal((b as PromiseRejectedResult).reason.code, 'ERR_IO');
    assert.equal((b as PromiseRejectedResult).reason.errno, 22);
  } finally {
    await ring.close();
    cleanup();
  }
});

test('injected errors reach the caller with code, errno and syscall', async () => {
  const { dir, cleanup } = tempDir('ringfault');
  const ring = Ring.open({ depth: 32, arenaBytes: 1 << 20 });
  try {
    const file = ring.openFile(path.join(dir, 'f'), { write: true, create: true, direct: true });
    const s = ring.alloc(4096);
    await ring.write(file, s, 0);
    ring.injectFault({ kind: OpKind.read, purpose: OpPurpose.js, skip: 1, errno: 5 });
    await ring.read(file, s, 0); // skipped by the rule
    await assert.rejects(ring.read(file, s, 0), (err: Error & { code: string; errno: number; syscall: string }) => {
      assert.equal(err.code, 'ERR_IO');
      assert.equal(err.errno, 5);
      assert.equal(err.syscall, 'read');
      return true;
    });
    assert.equal(await ring.read(file, s, 0), 4096, 'a rule fires once');
    ring.injectFault({ kind: OpKind.write, shortWrite: true });
    await assert.rejects(ring.write(file, s, 0), { code: 'ERR_IO', message: /short write/ });
  } finally {
    await ring.close();
    cleanup();
  }
});

test('the arena is bounded and detached when the ring closes', async () => {
  const ring = Ring.open({ depth: 32, arenaBytes: 64 << 10 });
  const a = ring.alloc(32 << 10);
  const b = ring.alloc(32 << 10);
  assert.throws(() => ring.alloc(4096), { code: 'ERR_ARENA' });
  ring.free(a);
  const c = ring.alloc(16 << 10);
  assert.equal(c.offsetBytes, a.offsetBytes, 'freed space is reused');
  assert.equal(b.bytes.byteLength, 32 << 10);
  await ring.close();
  assert.equal(b.bytes.byteLength, 0, 'views of a closed arena are empty, not dangling');
  await assert.rejects(ring.fdatasync(0), { code: 'ERR_RING_CLOSED' });
});

test('bad ring options are refused', () => {
  assert.throws(() => Ring.open({ depth: 3 }), RangeError);
  assert.throws(() => Ring.open({ arenaBytes: 1000 }), RangeError);
});
