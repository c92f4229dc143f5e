// The benches' disk figures (bench/lib/disk.ts): a window over real writes to
// the temp dir's device counts them, and a place with no block device gives
// no figure rather than a wrong one.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';

import { diskSince, diskSnapshot, diskText } from '../../bench/lib/disk';
import { tempDir } from '../support/tmp';

test('a disk window counts the writes made to the temp dir\'s device', async (t) => {
  const { dir, cleanup } = tempDir('benchdisk');
  try {
    const start = diskSnapshot(dir);
    if (start === null) {
      t.skip('skipped: missing a block device under the temp dir (/proc/diskstats has none for it)');
      return;
    }
    const file = path.join(dir, 'f');
    const fd = fs.openSync(file, 'w');
    const block = Buffer.alloc(1 << 20, 0x5a);
    for (let i = 0; i < 8; i++) {
      fs.writeSync(fd, block);
      fs.fdatasyncSync(fd);
    }
    fs.closeSync(fd);
    await new Promise((resolve) => setTimeout(resolve, 20));
    const w = diskSince(start);
    assert.ok(w !== null, 'a window over the same device');
    assert.equal(w.device, start.device);
    assert.ok(w.writesPerSec > 0, `writes counted (${w.writesPerSec}/s)`);
    assert.ok(w.writeBytesPerSec > 0, 'bytes counted');
    assert.ok(w.busyPct >= 0 && w.avgQueue >= 0 && w.writeAwaitMs >= 0);
    assert.match(diskText(w, w.writesPerSec + w.readsPerSec, 'write'), new RegExp(`^disk ${start.device}: [\\d,]+ writes/s, [\\d,]+ reads/s \\(1\\.00 per client write\\)`));
  } finally {
    cleanup();
  }
});

test('no figure for a place without a block device', () => {
  assert.equal(diskSnapshot('/proc'), null, '/proc is not on a disk');
  assert.equal(diskSnapshot('/no/such/dir'), null);
  assert.equal(diskSince(null), null);
});
