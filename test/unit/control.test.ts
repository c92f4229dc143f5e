// The control-entry state machine (lib/statemachine/control.ts): payloads
// round-trip and every malformed one is refused with ERR_CONTROL; check()
// says why a primary may not append an entry; apply() is a pure function of
// (state, entry) with the documented effects and no-ops.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';

import fc from 'fast-check';

import {
  apply,
  check,
  CONTROL_PAYLOAD_BYTES,
  type ControlEntry,
  decodeControl,
  DURABILITY_MODES,
  durabilityCode,
  durabilityOfCode,
  encodeControl,
  FEATURE_BITS,
  type ReplicatedState,
} from '../../lib/statemachine/control';

const STATE: ReplicatedState = { epoch: 2, features: 0b101, sizeBytes: 1 << 20, durability: 'sync_all' };
const LIMITS = { sizeBytesMax: 2 ** 40 };

const entryArb: fc.Arbitrary<ControlEntry> = fc.oneof(
  fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER }).map((epoch) => ({ type: 'epoch_barrier' as const, epoch })),
  fc.integer({ min: 0, max: FEATURE_BITS - 1 }).map((feature) => ({ type: 'feature_enable' as const, feature })),
  fc.integer({ min: 1, max: 2 ** 40 }).map((blocks) => ({ type: 'resize' as const, sizeBytes: blocks * 4096 })),
  fc.constantFrom(...DURABILITY_MODES).map((mode) => ({ type: 'durability' as const, mode })),
);

test('every entry round-trips through its 16-byte payload', () => {
  fc.assert(
    fc.property(entryArb, (entry) => {
      const payload = encodeControl(entry);
      assert.equal(payload.length, CONTROL_PAYLOAD_BYTES);
      assert.deepEqual(decodeControl(payload), entry);
    }),
  );
});

test('malformed payloads are refused with ERR_CONTROL and a reason', () => {
  const good = encodeControl({ type: 'resize', sizeBytes: 8192 });
  const with_ = (at: number, byte: number): Buffer => {
    const b = Buffer.from(good);
    b[at] = byte;
    return b;
  };
  const value = (type: number, v: bigint): Buffer => {
    const b = Buffer.alloc(16);
    b[0] = type;
    b[1] = 1;
    b.writeBigUInt64LE(v, 8);
    return b;
  };
  const cases: [Uint8Array, RegExp][] = [
    [good.subarray(0, 15), /15 bytes/],
    [Buffer.concat([good, Buffer.alloc(1)]), /17 bytes/],
    [with_(1, 2), /version 2/],
    [with_(5, 1), /reserved/],
    [with_(0, 0), /unknown type code 0/],
    [with_(0, 9), /unknown type code 9/],
    [value(2, 53n), /feature bit 53/],
    [value(3, 0n), /size 0/],
    [value(3, 4097n), /size 4097/],
    [value(4, 0n), /mode code 0/],
    [value(4, 7n), /mode code 7/],
    [value(1, 1n << 60n), /2\^53/],
  ];
  for (const [payload, reason] of cases) {
    assert.throws(() => decodeControl(payload), (err: Error & { code?: string }) => err.code === 'ERR_CONTROL' && reason.test(err.message), String(reason));
  }
});

test('any single-byte change of a payload decodes to an error or to a different entry, never silently to the same one', () => {
  fc.assert(
    fc.property(entryArb, fc.integer({ min: 0, max: 15 }), fc.integer({ min: 1, max: 255 }), (entry, at, xor) => {
      const b = encodeControl(entry);
      b[at]! ^= xor;
      let decoded: ControlEntry | undefined;
      try {
        decoded = decodeControl(b);
      } catch (err) {
        assert.equal((err as { code?: string }).code, 'ERR_CONTROL');
        return;
      }
      assert.notDeepEqual(decoded, entry);
    }),
  );
});

test('check(): what a primary may append', () => {
  assert.equal(check(STATE, { type: 'epoch_barrier', epoch: 2 }, LIMITS), undefined);
  assert.match(check(STATE, { type: 'epoch_barrier', epoch: 1 }, LIMITS)!, /below the opened epoch 2/);
  assert.equal(check(STATE, { type: 'resize', sizeBytes: 2 << 20 }, LIMITS), undefined);
  assert.match(check(STATE, { type: 'resize', sizeBytes: 1 << 20 }, LIMITS)!, /only grow/);
  assert.match(check(STATE, { type: 'resize', sizeBytes: 4096 }, LIMITS)!, /only grow/);
  assert.match(check(STATE, { type: 'resize', sizeBytes: (1 << 20) + 100 }, LIMITS)!, /multiple of 4096/);
  assert.match(check(STATE, { type: 'resize', sizeBytes: 2 ** 41 }, LIMITS)!, /largest volume/);
  assert.equal(check(STATE, { type: 'feature_enable', feature: 52 }, LIMITS), undefined);
  assert.match(check(STATE, { type: 'feature_enable', feature: 53 }, LIMITS)!, /not in \[0, 53\)/);
  assert.equal(check(STATE, { type: 'durability', mode: 'best_effort' }, LIMITS), undefined);
  assert.match(check(STATE, { type: 'durability', mode: 'fast' as never }, LIMITS)!, /unknown durability mode/);
});

test('apply(): effects, no-ops, and the state it leaves', () => {
  const grow = apply(STATE, { type: 'resize', sizeBytes: 4 << 20 });
  assert.deepEqual(grow, { state: { ...STATE, sizeBytes: 4 << 20 }, effects: [{ kind: 'grow', sizeBytes: 4 << 20 }], noop: undefined });
  const shrink = apply(grow.state, { type: 'resize', sizeBytes: 2 << 20 });
  assert.equal(shrink.state, grow.state);
  assert.deepEqual(shrink.effects, []);
  assert.match(shrink.noop!, /does not grow/);

  const mode = apply(STATE, { type: 'durability', mode: 'sync_quorum' });
  assert.deepEqual(mode.effects, [{ kind: 'durability', mode: 'sync_quorum' }]);
  assert.equal(mode.state.durability, 'sync_quorum');
  assert.match(apply(STATE, { type: 'durability', mode: 'sync_all' }).noop!, /already sync_all/);

  assert.equal(apply(STATE, { type: 'feature_enable', feature: 1 }).state.features, 0b111);
  assert.match(apply(STATE, { type: 'feature_enable', feature: 2 }).noop!, /already enabled/);
  assert.equal(apply(STATE, { type: 'feature_enable', feature: 52 }).state.features, 0b101 + 2 ** 52);

  assert.equal(apply(STATE, { type: 'epoch_barrier', epoch: 5 }).state.epoch, 5);
  assert.match(apply(STATE, { type: 'epoch_barrier', epoch: 1 }).noop!, /after epoch 2/);
});

test('apply() is deterministic: two nodes applying the same entries in the same order reach the same state', () => {
  fc.assert(
    fc.property(fc.array(entryArb, { maxLength: 40 }), (entries) => {
      const run = (): ReplicatedState => entries.reduce((s, e) => apply(s, e).state, STATE);
      assert.deepEqual(run(), run());
      const final = run();
      assert.ok(final.sizeBytes >= STATE.sizeBytes, 'a volume never shrinks');
      assert.ok(final.epoch >= STATE.epoch, 'the opened epoch never goes down');
    }),
  );
});

test('durability codes map both ways; 0 is "none set"', () => {
  for (const mode of DURABILITY_MODES) assert.equal(durabilityOfCode(durabilityCode(mode)), mode);
  assert.equal(durabilityCode(undefined), 0);
  assert.equal(durabilityOfCode(0), undefined);
});
