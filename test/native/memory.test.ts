// Buffers on transparent huge pages (lib/native/memory.ts): zeros of the size
// asked, advised for huge pages, written whole so using them takes no page
// faults, and unmapped once collected.
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { test } from 'node:test';
import * as assert from 'node:assert/strict';

import { hugePageBuffer } from '../../lib/native/memory';
import { hugePageAdvisedBytes, hugePagesMissing } from '../support/huge_pages';

const MIB = 1 << 20;

test('hugePageBuffer: zeros of the size asked, advised for huge pages', (t) => {
  const missing = hugePagesMissing();
  if (missing !== undefined) return t.skip(`skipped: missing ${missing}`);
  const before = hugePageAdvisedBytes();
  const buf = hugePageBuffer(4 * MIB);
  assert.equal(buf.length, 4 * MIB);
  assert.equal(buf.buffer.byteLength, 4 * MIB, 'the Buffer views the whole mapping');
  assert.ok(buf.every((b) => b === 0), 'zeros');
  buf.fill(0xa5, MIB, 2 * MIB);
  assert.equal(buf[MIB], 0xa5);
  assert.equal(buf[2 * MIB], 0);
  assert.ok(hugePageAdvisedBytes() - before >= 4 * MIB, 'the mapping is advised MADV_HUGEPAGE');
});

test('hugePageBuffer: already written, so using it takes no page faults', () => {
  // A fresh process: pages other tests freed are not at hand. Against a
  // plain allocation of the same size, whose pages fault in as first written.
  const script = `
    const { hugePageBuffer } = require(${JSON.stringify(path.join(__dirname, '../../lib/native/memory'))});
    const touch = (buf) => { for (let i = 0; i < buf.length; i += 4096) buf[i] = 1; };
    const faults = (buf) => { const before = process.resourceUsage().minorPageFault; touch(buf); return process.resourceUsage().minorPageFault - before; };
    touch(Buffer.alloc(1 << 20)); // the loop itself, warm
    const huge = hugePageBuffer(${8 * MIB});
    const plain = Buffer.allocUnsafeSlow(${8 * MIB});
    process.stdout.write(JSON.stringify({ huge: faults(huge), plain: faults(plain) }));
  `;
  const run = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8' });
  assert.equal(run.status, 0, run.stderr);
  const { huge, plain } = JSON.parse(run.stdout) as { huge: number; plain: number };
  // Untouched, each of its 2,048 pages of 4 KiB would fault (as the plain one's do).
  assert.ok(plain >= 1024, `the plain buffer faulted ${plain} pages: the measure sees faults`);
  assert.ok(huge < plain / 8, `writing one byte per page faulted ${huge} pages (a plain buffer: ${plain})`);
});

test('hugePageBuffer: the mapping goes when the buffer is collected', (t) => {
  const missing = hugePagesMissing();
  if (missing !== undefined) return t.skip(`skipped: missing ${missing}`);
  const script = `
    const { hugePageBuffer } = require(${JSON.stringify(path.join(__dirname, '../../lib/native/memory'))});
    const { hugePageAdvisedBytes } = require(${JSON.stringify(path.join(__dirname, '../support/huge_pages'))});
    const base = hugePageAdvisedBytes();
    let bufs = [];
    for (let i = 0; i < 16; i++) bufs.push(hugePageBuffer(${4 * MIB}));
    const held = hugePageAdvisedBytes() - base;
    bufs = undefined;
    (async () => {
      for (let i = 0; i < 5 && hugePageAdvisedBytes() - base > 0; i++) {
        gc();
        await new Promise((resolve) => setImmediate(resolve));
      }
      process.stdout.write(JSON.stringify({ held, after: hugePageAdvisedBytes() - base }));
    })();
  `;
  const run = spawnSync(process.execPath, ['--expose-gc', '-e', script], { encoding: 'utf8' });
  assert.equal(run.status, 0, run.stderr);
  const { held, after } = JSON.parse(run.stdout) as { held: number; after: number };
  assert.ok(held >= 64 * MIB, `16 buffers of 4 MiB held ${held} advised bytes`);
  assert.equal(after, 0, 'collected buffers leave no advised mapping behind');
});

test('hugePageBuffer: sizes out of range are refused', () => {
  assert.throws(() => hugePageBuffer(0), RangeError);
  assert.throws(() => hugePageBuffer(2 ** 31), RangeError);
  assert.throws(() => hugePageBuffer(-1), RangeError);
});
