// DenseBitmap (native/bitmap): range operations against a reference model,
// persistence and its failure modes, a sparse 16 TiB-volume bitmap, argument
// checks. Seeded property tests print their seed (BITMAP_SEED=n replays one).
import { after, before, describe, test } from 'node:test';
import * as assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as v8 from 'node:v8';
import * as vm from 'node:vm';
import fc from 'fast-check';

import { BitRun, DenseBitmap, bitmapLimits } from '../../lib/native/bitmap';
import { BlockwalError } from '../../lib/native/errors';

const kHeaderBytes = 4096;
const kBlocksPerPage = 4096 * 8;

let dir = '';
let fileSeq = 0;
function freshPath(): string {
  fileSeq++;
  return path.join(dir, `b${fileSeq}.bitmap`);
}

before(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bw-bitmap-'));
});
after(() => {
  fs.rmSync(dir, { recursive: true, force: true });
});

function isCode(code: string, errnoName?: string): (err: unknown) => boolean {
  return (err: unknown) => {
    assert.ok(err instanceof BlockwalError, `expected a BlockwalError, got ${String(err)}`);
    assert.equal(err.code, code, err.message);
    if (errnoName !== undefined) assert.equal(err.errnoName, errnoName, err.message);
    return true;
  };
}

// --- reference model: one byte per block -----------------------------------

function modelRuns(model: Uint8Array, from: number, end: number): BitRun[] {
  const runs: BitRun[] = [];
  let i = from;
  while (i < end) {
    if (model[i] === 0) {
      i++;
      continue;
    }
    const start = i;
    while (i < end && model[i] === 1) i++;
    runs.push({ startBlock: start, lengthBlocks: i - start });
  }
  return runs;
}

function modelCount(model: Uint8Array, start: number, count: number): number {
  let total = 0;
  for (let i = start; i < start + count; i++) total += model[i]!;
  return total;
}

function modelNext(model: Uint8Array, from: number, value: number): number {
  for (let i = from; i < model.length; i++) if (model[i] === value) return i;
  return -1;
}

// Positions biased towards 64-bit word and 4 KiB page edges.
function positionArb(): fc.Arbitrary<number> {
  return fc.oneof(
    fc.nat(),
    fc.tuple(fc.nat({ max: 2000 }), fc.integer({ min: -1, max: 1 })).map(([w, d]) => Math.max(0, w * 64 + d)),
    fc.tuple(fc.nat({ max: 5 }), fc.integer({ min: -1, max: 1 })).map(([p, d]) =>
      Math.max(0, p * kBlocksPerPage + d),
    ),
  );
}

function sizeArb(): fc.Arbitrary<number> {
  return fc.oneof(
    fc.integer({ min: 1, max: 300 }),
    fc.constantFrom(1, 63, 64, 65, 127, 128, 129, kBlocksPerPage - 1, kBlocksPerPage, kBlocksPerPage + 1),
    fc.integer({ min: 1, max: 3 * kBlocksPerPage + 200 }),
  );
}

interface Op {
  kind: 'set' | 'clear';
  a: number;
  b: number;
  qa: number;
  qb: number;
  runsPerCall: number;
}

const opArb: fc.Arbitrary<Op> = fc.record({
  kind: fc.constantFrom<'set' | 'clear'>('set', 'clear'),
  a: positionArb(),
  b: positionArb(),
  qa: positionArb(),
  qb: positionArb(),
  runsPerCall: fc.integer({ min: 1, max: 5 }),
});

// Turns two arbitrary positions into a valid (start, count) for size blocks.
function rangeOf(size: number, a: number, b: number): [number, number] {
  const start = a % (size + 1);
  return [start, b % (size - start + 1)];
}

function checkAgainstModel(bitmap: DenseBitmap, model: Uint8Array, op: Op): void {
  const size = model.length;
  const expectedRuns = modelRuns(model, 0, size);
  assert.deepEqual([...bitmap.runs(0, { runsPerCall: op.runsPerCall })], expectedRuns, 'runs');
  assert.deepEqual([...bitmap.runs()], expectedRuns, 'runs (one page)');
  assert.equal(bitmap.countSet(), modelCount(model, 0, size), 'countSet');

  const [qs, qc] = rangeOf(size, op.qa, op.qb);
  assert.equal(bitmap.countSetInRange(qs, qc), modelCount(model, qs, qc), `countSetInRange(${qs}, ${qc})`);
  assert.equal(bitmap.anySetInRange(qs, qc), modelCount(model, qs, qc) > 0, `anySetInRange(${qs}, ${qc})`);
  const rangeRuns = [...bitmap.runs(qs, { endBlock: qs + qc, runsPerCall: op.runsPerCall })];
  assert.deepEqual(rangeRuns, modelRuns(model, qs, qs + qc), `runs in [${qs}, ${qs + qc})`);

  // Probe the searches and get() at the query point and around every run edge.
  const probes = new Set<number>([0, qs, Math.min(qs + qc, size), size]);
  for (const run of expectedRuns.slice(0, 16)) {
    const end = run.startBlock + run.lengthBlocks;
    for (const p of [run.startBlock - 1, run.startBlock, end - 1, end]) if (p >= 0 && p <= size) probes.add(p);
  }
  for (const p of probes) {
    const nextClear = modelNext(model, p, 0);
    assert.equal(bitmap.nextSet(p), modelNext(model, p, 1), `nextSet(${p})`);
    assert.equal(bitmap.nextClear(p), nextClear === -1 ? size : nextClear, `nextClear(${p})`);
    if (p < size) assert.equal(bitmap.get(p), model[p] === 1, `get(${p})`);
  }
}

function seedFromEnv(): number {
  const fromEnv = process.env.BITMAP_SEED;
  return fromEnv !== undefined ? Number(fromEnv) : Date.now() % 2 ** 31;
}

describe('range operations match a reference model', () => {
  test('random set/clear sequences on random sizes', (t) => {
    const seed = seedFromEnv();
    t.diagnostic(`seed ${seed}`);
    fc.assert(
      fc.property(sizeArb(), fc.array(opArb, { minLength: 1, maxLength: 12 }), (size, ops) => {
        const file = freshPath();
        const bitmap = DenseBitmap.create(file, { blockCount: size });
        const model = new Uint8Array(size);
        try {
          for (const op of ops) {
            const [start, count] = rangeOf(size, op.a, op.b);
            if (op.kind === 'set') bitmap.setRange(start, count);
            else bitmap.clearRange(start, count);
            model.fill(op.kind === 'set' ? 1 : 0, start, start + count);
            checkAgainstModel(bitmap, model, op);
          }
          // The summary must survive a reopen (rebuilt from the file's extents).
          bitmap.close({ clean: ops.length % 2 === 0 });
          const reopened = DenseBitmap.open(file);
          checkAgainstModel(reopened, model, ops[0]!);
          reopened.close();
        } finally {
          bitmap.close();
          fs.rmSync(file);
        }
      }),
      { seed, numRuns: 120 },
    );
  });

  test('word and page edges, exhaustively on a small bitmap', () => {
    const size = 200;
    const bitmap = DenseBitmap.create(freshPath(), { blockCount: size });
    const edges = [0, 1, 62, 63, 64, 65, 127, 128, 129, 191, 192, 199];
    for (const start of edges) {
      for (const end of edges) {
        if (end < start) continue;
        bitmap.setRange(start, end - start);
        const model = new Uint8Array(size).fill(1, start, end);
        const op = { kind: 'set' as const, a: start, b: end - start, qa: start, qb: end - start, runsPerCall: 1 };
        checkAgainstModel(bitmap, model, op);
        bitmap.clearRange(0, size);
        assert.equal(bitmap.countSet(), 0);
      }
    }
    bitmap.close();
  });

  test('clearing every bit of a page then setting one elsewhere on it', () => {
    const size = 3 * kBlocksPerPage;
    const bitmap = DenseBitmap.create(freshPath(), { blockCount: size });
    bitmap.setRange(kBlocksPerPage - 10, 20); // spans pages 0 and 1
    bitmap.clearRange(kBlocksPerPage - 10, 10); // page 0 becomes all zero
    assert.equal(bitmap.nextSet(0), kBlocksPerPage);
    bitmap.setRange(5, 1);
    assert.equal(bitmap.nextSet(0), 5);
    assert.equal(bitmap.countSet(), 11);
    bitmap.clearRange(kBlocksPerPage, kBlocksPerPage); // the whole of page 1
    assert.equal(bitmap.nextSet(6), -1);
    assert.equal(bitmap.countSetInRange(0, size), 1);
    bitmap.close();
  });
});

describe('persistence', () => {
  test('a clean close keeps the bits, blockCount and tag; reopening bumps the generation', () => {
    const file = freshPath();
    const tag = Buffer.from('replica-2/epoch-7/lsn-123456', 'utf8');
    const first = DenseBitmap.create(file, { blockCount: 100_000, tag });
    assert.equal(first.generation, 1);
    assert.equal(first.wasClean, true); // a new file is clean
    first.setRange(10, 5);
    first.setRange(99_990, 10);
    first.close({ clean: true });

    const second = DenseBitmap.open(file);
    assert.equal(second.blockCount, 100_000);
    assert.deepEqual(second.tag, tag);
    assert.equal(second.wasClean, true);
    assert.equal(second.generation, 2);
    assert.deepEqual([...second.runs()], [
      { startBlock: 10, lengthBlocks: 5 },
      { startBlock: 99_990, lengthBlocks: 10 },
    ]);
    second.close();
  });

  test('a full 64-byte tag round-trips; the default tag is empty', () => {
    const tag = Buffer.alloc(64);
    for (let i = 0; i < 64; i++) tag[i] = 255 - i;
    const a = DenseBitmap.create(freshPath(), { blockCount: 1, tag });
    assert.deepEqual(a.tag, tag);
    a.close();
    const b = DenseBitmap.create(freshPath(), { blockCount: 1 });
    assert.equal(b.tag.length, 0);
    b.close();
  });

  test('a close without the clean mark reopens as not clean, with its bits', () => {
    const file = freshPath();
    const first = DenseBitmap.create(file, { blockCount: 5000 });
    first.setRange(100, 900);
    first.close({ clean: false });
    const second = DenseBitmap.open(file);
    assert.equal(second.wasClean, false);
    assert.equal(second.countSet(), 900);
    second.close();
    const third = DenseBitmap.open(file);
    assert.equal(third.wasClean, true);
    assert.equal(third.generation, 3);
    third.close();
  });

  test('a process killed after sync leaves a not-clean file with the synced bits', () => {
    const file = freshPath();
    DenseBitmap.create(file, { blockCount: 70_000 }).close();
    const wrapper = path.join(__dirname, '..', '..', 'lib', 'native', 'bitmap.js');
    const script =
      `const { DenseBitmap } = require(${JSON.stringify(wrapper)});` +
      `const b = DenseBitmap.open(${JSON.stringify(file)});` +
      'b.setRange(1000, 40000); b.sync();' +
      "process.kill(process.pid, 'SIGKILL');";
    const child = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8' });
    assert.equal(child.signal, 'SIGKILL', child.stderr);
    const reopened = DenseBitmap.open(file); // the flock died with the process
    assert.equal(reopened.wasClean, false);
    assert.deepEqual([...reopened.runs()], [{ startBlock: 1000, lengthBlocks: 40000 }]);
    reopened.close();
  });

  test('a bitmap dropped without close is released by the garbage collector', async () => {
    v8.setFlagsFromString('--expose-gc');
    const gc = vm.runInNewContext('gc') as () => void;
    const file = freshPath();
    (() => {
      const forgotten = DenseBitmap.create(file, { blockCount: 10 });
      forgotten.setRange(3, 2);
    })();
    assert.throws(() => DenseBitmap.open(file).close(), isCode('ERR_BITMAP', 'EAGAIN'));
    let reopened: DenseBitmap | undefined;
    for (let attempt = 0; attempt < 50 && reopened === undefined; attempt++) {
      gc();
      await new Promise((resolve) => setImmediate(resolve));
      try {
        reopened = DenseBitmap.open(file);
      } catch (err) {
        assert.ok(err instanceof BlockwalError && err.code === 'ERR_BITMAP', String(err));
      }
    }
    assert.ok(reopened !== undefined, 'the finalizer never released the bitmap');
    assert.equal(reopened.wasClean, false);
    assert.equal(reopened.countSet(), 2);
    reopened.close();
  });
});

describe('corruption and errors', () => {
  function patchFile(file: string, offsetBytes: number, bytes: number[]): void {
    const fd = fs.openSync(file, 'r+');
    fs.writeSync(fd, Buffer.from(bytes), 0, bytes.length, offsetBytes);
    fs.closeSync(fd);
  }

  test('a damaged header is ERR_BITMAP_CORRUPT', () => {
    for (const offsetBytes of [0, 16, 60, 100, 135]) {
      const file = freshPath();
      DenseBitmap.create(file, { blockCount: 1000 }).close();
      const original = fs.readFileSync(file).subarray(offsetBytes, offsetBytes + 1)[0]!;
      patchFile(file, offsetBytes, [original ^ 0x10]);
      assert.throws(() => DenseBitmap.open(file), isCode('ERR_BITMAP_CORRUPT'), `offset ${offsetBytes}`);
    }
  });

  test('a file of the wrong size or not a bitmap at all is ERR_BITMAP_CORRUPT', () => {
    const truncated = freshPath();
    DenseBitmap.create(truncated, { blockCount: 100_000 }).close();
    fs.truncateSync(truncated, kHeaderBytes + 4096);
    assert.throws(() => DenseBitmap.open(truncated), isCode('ERR_BITMAP_CORRUPT'));
    const short = freshPath();
    fs.writeFileSync(short, 'hello');
    assert.throws(() => DenseBitmap.open(short), isCode('ERR_BITMAP_CORRUPT'));
    const zeros = freshPath();
    fs.writeFileSync(zeros, Buffer.alloc(8192));
    assert.throws(() => DenseBitmap.open(zeros), isCode('ERR_BITMAP_CORRUPT'));
  });

  test('bits changed after a clean close are ERR_BITMAP_CORRUPT, in a written page or a hole', () => {
    for (const blockOffset of [5, 40_000]) {
      const file = freshPath();
      const bitmap = DenseBitmap.create(file, { blockCount: 100_000 });
      bitmap.setRange(0, 8); // page 0 holds data; block 40000 lies in a hole
      bitmap.close({ clean: true });
      const byteOffset = kHeaderBytes + Math.floor(blockOffset / 8);
      patchFile(file, byteOffset, [fs.readFileSync(file)[byteOffset]! ^ 0x01]);
      assert.throws(() => DenseBitmap.open(file), isCode('ERR_BITMAP_CORRUPT'), `block ${blockOffset}`);
    }
  });

  test('bits set beyond blockCount are ERR_BITMAP_CORRUPT even after an unclean close', () => {
    const file = freshPath();
    DenseBitmap.create(file, { blockCount: 100 }).close({ clean: false });
    patchFile(file, kHeaderBytes + 13, [0x01]); // block 104
    assert.throws(() => DenseBitmap.open(file), isCode('ERR_BITMAP_CORRUPT'));
  });

  test('the file is exclusive while open', () => {
    const file = freshPath();
    const bitmap = DenseBitmap.create(file, { blockCount: 10 });
    assert.throws(() => DenseBitmap.open(file), isCode('ERR_BITMAP', 'EAGAIN'));
    bitmap.close();
    DenseBitmap.open(file).close();
  });

  test('create publishes a complete file only, over a leftover from a crashed create', () => {
    const file = freshPath();
    fs.writeFileSync(`${file}.creating`, 'half a bitmap from a crashed create');
    const bitmap = DenseBitmap.create(file, { blockCount: 77 });
    assert.equal(fs.existsSync(`${file}.creating`), false);
    assert.equal(bitmap.blockCount, 77);
    bitmap.close();
  });

  test('create refuses an existing path; open reports a missing one', () => {
    const file = freshPath();
    DenseBitmap.create(file, { blockCount: 10 }).close();
    assert.throws(() => DenseBitmap.create(file, { blockCount: 10 }), isCode('ERR_BITMAP', 'EEXIST'));
    assert.throws(() => DenseBitmap.open(freshPath()), isCode('ERR_BITMAP', 'ENOENT'));
  });

  test('close twice is safe; every operation after close is ERR_BITMAP', () => {
    const bitmap = DenseBitmap.create(freshPath(), { blockCount: 10 });
    assert.ok(bitmap.fd >= 0);
    bitmap.close();
    bitmap.close();
    bitmap.close({ clean: false });
    assert.equal(bitmap.fd, -1);
    assert.equal(bitmap.isOpen, false);
    assert.equal(bitmap.blockCount, 10);
    const ops: Array<() => unknown> = [
      () => bitmap.get(0),
      () => bitmap.setRange(0, 1),
      () => bitmap.clearRange(0, 1),
      () => bitmap.countSet(),
      () => bitmap.countSetInRange(0, 1),
      () => bitmap.anySetInRange(0, 1),
      () => bitmap.nextSet(0),
      () => bitmap.nextClear(0),
      () => [...bitmap.runs()],
      () => bitmap.sync(),
    ];
    for (const op of ops) {
      assert.throws(op, (err: unknown) => isCode('ERR_BITMAP')(err) && /closed/.test((err as Error).message));
    }
  });

  test('bad arguments are TypeError or RangeError', () => {
    const bitmap = DenseBitmap.create(freshPath(), { blockCount: 100 });
    const anyBitmap = bitmap as unknown as Record<string, (...args: unknown[]) => unknown>;
    assert.throws(() => bitmap.get(100), RangeError);
    assert.throws(() => bitmap.get(-1), RangeError);
    assert.throws(() => bitmap.get(1.5), RangeError);
    assert.throws(() => bitmap.get(NaN), RangeError);
    assert.throws(() => anyBitmap.get!.call(bitmap, '1'), TypeError);
    assert.throws(() => bitmap.setRange(99, 2), RangeError);
    assert.throws(() => bitmap.setRange(101, 0), RangeError);
    assert.throws(() => bitmap.clearRange(0, 101), RangeError);
    assert.throws(() => bitmap.countSetInRange(50, 51), RangeError);
    assert.throws(() => bitmap.anySetInRange(0, -1), RangeError);
    assert.throws(() => anyBitmap.setRange!.call(bitmap, 0), TypeError);
    assert.throws(() => bitmap.nextSet(101), RangeError);
    assert.throws(() => bitmap.nextClear(-1), RangeError);
    assert.throws(() => [...bitmap.runs(0, { endBlock: 101 })], RangeError);
    assert.throws(() => [...bitmap.runs(50, { endBlock: 10 })], RangeError);
    assert.throws(() => [...bitmap.runs(0, { runsPerCall: 0 })], RangeError);
    assert.throws(() => bitmap.readRuns(0, 100, new Float64Array(1)), RangeError);
    assert.throws(() => bitmap.readRuns(0, 100, new Float32Array(4) as unknown as Float64Array), TypeError);
    // Edges that are valid: empty ranges, and searches from blockCount.
    bitmap.setRange(100, 0);
    assert.equal(bitmap.anySetInRange(100, 0), false);
    assert.equal(bitmap.nextSet(100), -1);
    assert.equal(bitmap.nextClear(100), 100);
    bitmap.close();

    const limits = bitmapLimits();
    assert.throws(() => DenseBitmap.create(freshPath(), { blockCount: 0 }), RangeError);
    assert.throws(() => DenseBitmap.create(freshPath(), { blockCount: limits.blockCountMax + 1 }), RangeError);
    assert.throws(() => DenseBitmap.create(freshPath(), { blockCount: 10, tag: Buffer.alloc(65) }), RangeError);
    assert.throws(
      () => DenseBitmap.create(freshPath(), { blockCount: 10, tag: 'x' as unknown as Buffer }),
      TypeError,
    );
    assert.throws(() => DenseBitmap.create(42 as unknown as string, { blockCount: 10 }), TypeError);
  });
});

describe('a 16 TiB volume (2^32 blocks)', () => {
  test('stays sparse through set, count, walk, clean close and reopen', (t) => {
    const blockCount = 2 ** 32;
    const file = freshPath();
    const timed = <T>(label: string, fn: () => T): T => {
      const startNs = process.hrtime.bigint();
      const value = fn();
      t.diagnostic(`${label}: ${(Number(process.hrtime.bigint() - startNs) / 1e6).toFixed(1)} ms`);
      return value;
    };
    const bitmap = timed('create', () => DenseBitmap.create(file, { blockCount }));
    const middle = 2 ** 31 - 5; // crosses a page boundary
    const expected: BitRun[] = [
      { startBlock: 0, lengthBlocks: 10 },
      { startBlock: middle, lengthBlocks: 10 },
      { startBlock: blockCount - 100, lengthBlocks: 100 },
    ];
    for (const run of expected) bitmap.setRange(run.startBlock, run.lengthBlocks);
    assert.equal(timed('countSet', () => bitmap.countSet()), 120);
    assert.deepEqual(timed('runs', () => [...bitmap.runs()]), expected);
    assert.equal(bitmap.nextSet(10), middle);
    assert.equal(bitmap.nextClear(0), 10);
    assert.equal(bitmap.nextSet(blockCount - 101), blockCount - 100);
    assert.equal(bitmap.nextClear(blockCount - 100), blockCount);
    assert.equal(bitmap.countSetInRange(5, blockCount - 10), 5 + 10 + 95);
    assert.equal(bitmap.anySetInRange(10, middle - 10), false);
    assert.equal(bitmap.get(2 ** 31), true);
    timed('sync', () => bitmap.sync());
    timed('clean close', () => bitmap.close({ clean: true }));

    const reopened = timed('open (verifies the checksum)', () => DenseBitmap.open(file));
    assert.equal(reopened.wasClean, true);
    assert.equal(reopened.blockCount, blockCount);
    assert.equal(reopened.countSet(), 120);
    assert.deepEqual([...reopened.runs()], expected);
    // Clearing everything must not fault in the holes either.
    timed('clearRange(all)', () => reopened.clearRange(0, blockCount));
    assert.equal(reopened.countSet(), 0);
    timed('clean close (after clear)', () => reopened.close({ clean: true }));

    const stat = fs.statSync(file);
    assert.equal(stat.size, kHeaderBytes + 2 ** 29);
    const allocatedBytes = stat.blocks * 512;
    t.diagnostic(`allocated ${allocatedBytes} bytes of ${stat.size}`);
    assert.ok(allocatedBytes <= 4 << 20, `allocated ${allocatedBytes} bytes: not sparse`);
    fs.rmSync(file);
  });
});

// Why a loop mount cannot be made here, or undefined when it can.
function loopMountMissing(): string | undefined {
  if (process.getuid?.() !== 0) return 'root';
  if (spawnSync('mkfs.ext4', ['-V'], { encoding: 'utf8' }).error !== undefined) return 'mkfs.ext4 (e2fsprogs)';
  const free = spawnSync('losetup', ['-f'], { encoding: 'utf8' });
  if (free.status !== 0) return 'a free loop device';
  return undefined;
}

describe('a full disk', () => {
  // A page fault that cannot allocate a block is a SIGBUS; setRange must
  // allocate first and report ENOSPC. Needs a small filesystem to fill.
  test('setRange reports ENOSPC, never a SIGBUS, and the bitmap stays consistent', (t) => {
    const missing = loopMountMissing();
    if (missing !== undefined) {
      t.skip(`skipped: missing ${missing} (mounts an 8 MiB ext4 loop image)`);
      return;
    }
    const image = path.join(dir, 'small.img');
    const mountPoint = path.join(dir, 'small');
    fs.mkdirSync(mountPoint);
    fs.writeFileSync(image, '');
    fs.truncateSync(image, 8 << 20);
    for (const [cmd, args] of [
      ['mkfs.ext4', ['-q', '-F', image]],
      ['mount', ['-o', 'loop', image, mountPoint]],
    ] as const) {
      const done = spawnSync(cmd, args, { encoding: 'utf8' });
      assert.equal(done.status, 0, `${cmd}: ${done.stderr}`);
    }
    try {
      const wrapper = path.join(__dirname, '..', '..', 'lib', 'native', 'bitmap.js');
      const file = path.join(mountPoint, 'full.bitmap');
      // One block per page, page after page, until the disk is full; then
      // ranges over many pages. Runs in a child so a SIGBUS shows as a signal.
      const script = `
        const { DenseBitmap } = require(${JSON.stringify(wrapper)});
        const b = DenseBitmap.create(${JSON.stringify(file)}, { blockCount: 2 ** 32 });
        let setCount = 0, enospc = 0;
        for (let page = 0; page < 4000; page++) {
          try { b.setRange(page * ${kBlocksPerPage}, 1); setCount++; }
          catch (e) { if (e.errnoName !== 'ENOSPC') throw e; enospc++; }
        }
        for (let i = 0; i < 50; i++) {
          const start = 2 ** 31 + i * 10 * ${kBlocksPerPage};
          try { b.setRange(start, 5 * ${kBlocksPerPage}); throw new Error('no ENOSPC'); }
          catch (e) { if (e.errnoName !== 'ENOSPC') throw e; enospc++; }
        }
        const count = b.countSet();
        b.sync();
        b.close();
        const r = DenseBitmap.open(${JSON.stringify(file)});
        console.log(JSON.stringify({ setCount, enospc, count, reopened: r.countSet(), wasClean: r.wasClean }));
        r.close();`;
      const child = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8' });
      assert.equal(child.signal, null, `the child died by ${child.signal}: a page fault found the disk full`);
      assert.equal(child.status, 0, child.stderr);
      const result = JSON.parse(child.stdout) as Record<string, number | boolean>;
      t.diagnostic(JSON.stringify(result));
      assert.ok((result.enospc as number) > 50, 'the disk never filled up');
      assert.ok((result.setCount as number) > 0);
      assert.equal(result.count, result.setCount); // a failed setRange changed no bit
      assert.equal(result.reopened, result.count);
      assert.equal(result.wasClean, true);
    } finally {
      spawnSync('umount', [mountPoint]);
    }
  });
});

describe('persisting through the ring', () => {
  test('persist() is an fdatasync through the ring and leaves the bitmap open', async () => {
    const { Ring, OpKind, OpPurpose } = await import('../../lib/native/ring');
    const ring = Ring.open({ depth: 32, arenaBytes: 1 << 20 });
    const file = path.join(dir, 'persist.bitmap');
    const b = DenseBitmap.create(file, { blockCount: 1 << 20 });
    try {
      ring.setTrace(true);
      b.setRange(1000, 24);
      await b.persist(ring);
      const syncs = ring.takeTrace().filter((e) => e.type === 'complete' && e.kind === OpKind.fdatasync);
      assert.equal(syncs.length, 1);
      assert.equal(syncs[0]!.fd, b.fd);
      assert.equal(syncs[0]!.result, 0);
      assert.equal(b.countSet(), 24, 'still usable after persist');
      ring.injectFault({ kind: OpKind.fdatasync, purpose: OpPurpose.js, errno: 5 });
      await assert.rejects(b.persist(ring), { code: 'ERR_IO', errno: 5 });
    } finally {
      b.close();
      await ring.close();
    }
    const reopened = DenseBitmap.open(file);
    assert.equal(reopened.countSet(), 24);
    reopened.close();
  });
});
