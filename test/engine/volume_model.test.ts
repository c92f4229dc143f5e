// The volume against an in-memory model: random sequences of writes (aligned
// and not), trims, write-zeroes, flushes, checkpoints, reopens and reads,
// checked after every step. Batches of operations are issued concurrently and
// must equal applying them in call order (later calls win, sub-block writes
// both survive). Run with the default block cache (it holds the whole
// volume), a small one (blocks come and go) and none; reads also run while a
// checkpoint writes base.img. Seeded by fast-check; the seed is printed on
// failure.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as path from 'node:path';

import fc from 'fast-check';

import { Volume } from '../../lib/engine/volume';
import { tempDir } from '../support/tmp';

const SIZE = 1 << 20; // 256 blocks: small, so operations overlap often
const BLOCK = 4096;

type Op =
  | { t: 'write'; offset: number; length: number; seed: number; fua: boolean }
  | { t: 'trim' | 'zero'; offset: number; length: number };
type Step =
  | { t: 'batch'; ops: Op[] }
  | { t: 'read'; offset: number; length: number }
  | { t: 'flush' }
  | { t: 'checkpoint' }
  | { t: 'readsDuringCheckpoint'; reads: { offset: number; length: number }[] }
  | { t: 'reopen' };

const offsetLength = (maxLength: number) =>
  fc.oneof(
    // block-aligned
    fc.record({ b: fc.integer({ min: 0, max: SIZE / BLOCK - 1 }), n: fc.integer({ min: 1, max: Math.max(1, Math.min(16, Math.floor(maxLength / BLOCK))) }) }).map(
      ({ b, n }) => ({ offset: b * BLOCK, length: Math.min(n * BLOCK, SIZE - b * BLOCK) }),
    ),
    // any byte offset and length
    fc.record({ o: fc.integer({ min: 0, max: SIZE - 1 }), n: fc.integer({ min: 1, max: maxLength }) }).map(({ o, n }) => ({
      offset: o,
      length: Math.min(n, SIZE - o),
    })),
  );

const opArb: fc.Arbitrary<Op> = fc.oneof(
  { weight: 6, arbitrary: fc.tuple(offsetLength(20000), fc.integer(), fc.boolean()).map(([r, seed, fua]) => ({ t: 'write' as const, ...r, seed, fua })) },
  { weight: 1, arbitrary: fc.tuple(fc.constantFrom('trim' as const, 'zero' as const), offsetLength(SIZE)).map(([t, r]) => ({ t, ...r })) },
);

const stepArb: fc.Arbitrary<Step> = fc.oneof(
  { weight: 6, arbitrary: fc.array(opArb, { minLength: 1, maxLength: 6 }).map((ops) => ({ t: 'batch' as const, ops })) },
  { weight: 3, arbitrary: offsetLength(40000).map((r) => ({ t: 'read' as const, ...r })) },
  { weight: 1, arbitrary: fc.constant({ t: 'flush' as const }) },
  { weight: 1, arbitrary: fc.constant({ t: 'checkpoint' as const }) },
  { weight: 1, arbitrary: fc.array(offsetLength(40000), { minLength: 1, maxLength: 4 }).map((reads) => ({ t: 'readsDuringCheckpoint' as const, reads })) },
  { weight: 1, arbitrary: fc.constant({ t: 'reopen' as const }) },
);

function content(seed: number, length: number): Buffer {
  const b = Buffer.alloc(length);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    b[i] = x & 0xff;
  }
  return b;
}

const CACHES = [
  { name: 'the default block cache', blockCacheBytes: undefined, numRuns: 40 },
  { name: 'a block cache of 12 blocks', blockCacheBytes: 12 * BLOCK, numRuns: 30 },
  { name: 'no block cache', blockCacheBytes: 0, numRuns: 20 },
];

for (const cacheCase of CACHES) {
  test(`volume reads always match an in-memory model (random ops, concurrent batches, reopen), ${cacheCase.name}`, async () => {
    let runs = 0;
    await fc.assert(
      fc.asyncProperty(fc.array(stepArb, { minLength: 5, maxLength: 40 }), async (steps) => {
        runs++;
        const { dir, cleanup } = tempDir('volmodel');
        const volDir = path.join(dir, 'v');
        const model = Buffer.alloc(SIZE);
        const opts = { walSegmentsMax: 6, flushTriggerBytes: 64 << 10, flushIdleMs: 0, blockCacheBytes: cacheCase.blockCacheBytes };
        let vol = await Volume.create(volDir, { sizeBytes: SIZE, walSegmentBytes: 1 << 20, ...opts });
        try {
          for (const step of steps) {
            switch (step.t) {
              case 'batch': {
                const pending = step.ops.map((op) => {
                  if (op.t === 'write') {
                    const data = content(op.seed, op.length);
                    model.set(data, op.offset);
                    return vol.write(op.offset, data, { fua: op.fua });
                  }
                  model.fill(0, op.offset, op.offset + op.length);
                  return op.t === 'trim' ? vol.trim(op.offset, op.length) : vol.writeZeroes(op.offset, op.length);
                });
                await Promise.all(pending);
                break;
              }
              case 'read': {
                const got = await vol.read(step.offset, step.length);
                assert.ok(got.equals(model.subarray(step.offset, step.offset + step.length)), `read ${step.offset}+${step.length}`);
                break;
              }
              case 'flush':
                await vol.flush();
                break;
              case 'checkpoint':
                await vol.checkpoint();
                assert.equal(vol.status().checkpointLsn, vol.status().lsnWritten);
                break;
              case 'readsDuringCheckpoint': {
                const checkpoint = vol.checkpoint();
                const got = await Promise.all(step.reads.map((r) => vol.read(r.offset, r.length)));
                step.reads.forEach((r, i) => assert.ok(got[i]!.equals(model.subarray(r.offset, r.offset + r.length)), `read ${r.offset}+${r.length} during a checkpoint`));
                await checkpoint;
                break;
              }
              case 'reopen':
                await vol.close();
                vol = await Volume.open(volDir, opts);
                break;
            }
          }
          const all = await vol.read(0, SIZE);
          assert.ok(all.equals(model), 'whole volume');
          await vol.close();
          vol = await Volume.open(volDir, opts);
          assert.ok((await vol.read(0, SIZE)).equals(model), 'whole volume after reopen');
        } finally {
          await vol.close();
          cleanup();
        }
      }),
      { numRuns: cacheCase.numRuns },
    );
    console.log(`volume model, ${cacheCase.name}: ${runs} runs`);
  });
}
