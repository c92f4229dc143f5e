// The chained apply checksum: h_0 = 0, h_n = XXH3(be64(h_{n-1}) ‖ be64(c_n)),
// checked against an independent computation and a pinned value; order
// matters, equal inputs give equal chains, a batch equals the steps.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';

import fc from 'fast-check';
import { XXHash3 } from 'xxhash-addon';

import {
  APPLY_CHECKSUM_INITIAL,
  applyChecksumFromHex,
  applyChecksumToHex,
  extendApplyChecksum,
  extendApplyChecksumBatch,
} from '../../lib/replication/apply_checksum';

const u64 = fc.bigInt({ min: 0n, max: (1n << 64n) - 1n });

function independentStep(h: bigint, c: bigint): bigint {
  const input = Buffer.alloc(16);
  input.writeBigUInt64BE(h, 0);
  input.writeBigUInt64BE(c, 8);
  return XXHash3.hash(input).readBigUInt64BE(0);
}

test('the chain starts at 0 and each step is XXH3 of the big-endian pair', () => {
  assert.equal(APPLY_CHECKSUM_INITIAL, 0n);
  fc.assert(
    fc.property(u64, u64, (h, c) => {
      assert.equal(extendApplyChecksum(h, c), independentStep(h, c));
    }),
  );
});

// h_3 for record checksums 1, 2, 2^64 - 1. Computed from the definition with
// libxxhash's XXH3_64bits in C (the native side's implementation), so C++ and
// TS agree on the chain.
const PINNED_HEX = 'd81ad3e5fc69c395';

test('a pinned value: the byte order and seed do not drift', () => {
  const h = extendApplyChecksumBatch(APPLY_CHECKSUM_INITIAL, [1n, 2n, 0xffff_ffff_ffff_ffffn]);
  assert.equal(applyChecksumToHex(h), PINNED_HEX);
});
test('order matters: swapping two different record checksums changes the chain', () => {
  fc.assert(
    fc.property(u64, u64, u64, (h, a, b) => {
      fc.pre(a !== b);
      assert.notEqual(extendApplyChecksumBatch(h, [a, b]), extendApplyChecksumBatch(h, [b, a]));
    }),
  );
});

test('equal inputs give equal chains; a batch equals its steps and splits anywhere', () => {
  fc.assert(
    fc.property(u64, fc.array(u64, { maxLength: 30 }), fc.nat(), (h, checksums, at) => {
      const stepwise = checksums.reduce((acc, c) => extendApplyChecksum(acc, c), h);
      assert.equal(extendApplyChecksumBatch(h, checksums), stepwise);
      assert.equal(extendApplyChecksumBatch(h, [...checksums]), stepwise, 'a second computation agrees');
      const cut = checksums.length === 0 ? 0 : at % (checksums.length + 1);
      const prefix = extendApplyChecksumBatch(h, checksums.slice(0, cut));
      assert.equal(extendApplyChecksumBatch(prefix, checksums.slice(cut)), stepwise);
    }),
  );
  assert.equal(extendApplyChecksumBatch(123n, []), 123n, 'an empty batch changes nothing');
});

test('one more or one different record changes the chain', () => {
  const base = extendApplyChecksumBatch(APPLY_CHECKSUM_INITIAL, [10n, 20n, 30n]);
  assert.notEqual(extendApplyChecksumBatch(APPLY_CHECKSUM_INITIAL, [10n, 20n, 31n]), base);
  assert.notEqual(extendApplyChecksumBatch(APPLY_CHECKSUM_INITIAL, [10n, 20n, 30n, 0n]), base);
  assert.notEqual(extendApplyChecksum(APPLY_CHECKSUM_INITIAL, 0n), APPLY_CHECKSUM_INITIAL, 'even a zero checksum moves it');
});

test('hex form: 16 lower-case digits, round trip, bad strings refused', () => {
  assert.equal(applyChecksumToHex(0n), '0000000000000000');
  assert.equal(applyChecksumToHex(0xffff_ffff_ffff_ffffn), 'ffffffffffffffff');
  fc.assert(fc.property(u64, (h) => assert.equal(applyChecksumFromHex(applyChecksumToHex(h)), h)));
  for (const bad of ['', '0', 'FFFFFFFFFFFFFFFF', '00000000000000000', 'g000000000000000', ' 000000000000000']) {
    assert.throws(() => applyChecksumFromHex(bad), RangeError, JSON.stringify(bad));
  }
});

test('values outside [0, 2^64) are refused', () => {
  for (const bad of [-1n, 1n << 64n]) {
    assert.throws(() => extendApplyChecksum(bad, 0n), RangeError);
    assert.throws(() => extendApplyChecksum(0n, bad), RangeError);
    assert.throws(() => applyChecksumToHex(bad), RangeError);
  }
  assert.throws(() => extendApplyChecksum(0 as unknown as bigint, 0n), RangeError);
});
