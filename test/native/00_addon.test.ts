// The addon loads and exposes its classes.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';

import { addon } from '../../lib/native/addon';

test('the addon loads from build/', () => {
  const raw = addon();
  assert.equal(typeof raw, 'object');
});
