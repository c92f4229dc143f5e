// Command-line argument helpers: sizes, addresses, strict flag parsing.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';

import { parse, parseHostPort, parseSize, UsageError } from '../../lib/cli/args';

test('sizes take plain bytes or binary K/M/G/T suffixes', () => {
  const cases: [string, number][] = [
    ['4096', 4096],
    ['64K', 64 << 10],
    ['1M', 1 << 20],
    ['64G', 64 * 2 ** 30],
    ['2T', 2 * 2 ** 40],
    ['16MiB', 16 << 20],
    ['1.5G', 1.5 * 2 ** 30],
    ['8m', 8 << 20],
  ];
  for (const [text, bytes] of cases) assert.equal(parseSize(text, '--size'), bytes, text);
  for (const bad of ['', '12Q', '-1M', '0', 'G', '1.1', '99999999T']) {
    assert.throws(() => parseSize(bad, '--size'), UsageError, bad);
  }
});

test('addresses are HOST:PORT with a port from 0 to 65535', () => {
  assert.deepEqual(parseHostPort('127.0.0.1:10809', '--nbd'), { host: '127.0.0.1', port: 10809 });
  assert.deepEqual(parseHostPort('[::1]:80', '--nbd'), { host: '::1', port: 80 });
  assert.deepEqual(parseHostPort('localhost:0', '--nbd'), { host: 'localhost', port: 0 });
  for (const bad of ['127.0.0.1', ':80', '127.0.0.1:65536', 'host:port', '127.0.0.1:-1']) {
    assert.throws(() => parseHostPort(bad, '--nbd'), UsageError, bad);
  }
});

test('flag parsing is strict and counts positionals', () => {
  const spec = { size: { type: 'string' }, json: { type: 'boolean' } } as const;
  const ok = parse(['DIR', '--size', '1G', '--json'], spec, { min: 1, max: 1, names: 'DIR' });
  assert.deepEqual(ok.positionals, ['DIR']);
  assert.equal(ok.values.size, '1G');
  assert.equal(ok.values.json, true);
  assert.throws(() => parse(['DIR', '--bogus'], spec, { min: 1, max: 1, names: 'DIR' }), UsageError);
  assert.throws(() => parse([], spec, { min: 1, max: 1, names: 'DIR' }), /missing DIR/);
  assert.throws(() => parse(['a', 'b'], spec, { min: 1, max: 1, names: 'DIR' }), /unexpected argument 'b'/);
  // --help needs no positionals.
  assert.equal(parse(['--help'], spec, { min: 1, max: 1, names: 'DIR' }).values.help, true);
});
