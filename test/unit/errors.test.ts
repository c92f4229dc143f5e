// Native errors become BlockwalError with code, errno, syscall and details.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';

import { BlockwalError, toBlockwalError } from '../../lib/native/errors';

test('a native error with a code becomes a BlockwalError carrying its facts', () => {
  const raw = Object.assign(new Error('write failed: Input/output error'), {
    code: 'ERR_IO',
    errno: 5,
    errnoName: 'EIO',
    syscall: 'pwrite',
    segmentSeq: 7,
  });
  const err = toBlockwalError(raw);
  assert.ok(err instanceof BlockwalError);
  const e = err as BlockwalError;
  assert.equal(e.code, 'ERR_IO');
  assert.equal(e.errno, 5);
  assert.equal(e.errnoName, 'EIO');
  assert.equal(e.syscall, 'pwrite');
  assert.deepEqual(e.details, { segmentSeq: 7 });
});

test('argument errors pass through unchanged; other values become Errors', () => {
  const range = new RangeError('bad');
  assert.equal(toBlockwalError(range), range);
  const plain = new Error('plain');
  assert.equal(toBlockwalError(plain), plain);
  assert.equal(toBlockwalError('text').message, 'text');
});
