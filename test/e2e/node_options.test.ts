// The Node options a server runs with (lib/cli/node_options.ts): the
// `blockwal` command's shebang carries exactly SERVER_NODE_OPTIONS, in the
// source and in the built file; `blockwal serve` started by a plain `node`
// says in its log which are missing, and says nothing when they are there.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';

import { expectedShebang, nodeOptionsMissing, SERVER_NODE_OPTIONS } from '../../lib/cli/node_options';
import { CLI_JS, describeRun, type RunResult, runCli, runProgram } from '../support/nbd_server_process';
import { scopedTempDir, withScope } from './harness';

// dist/test/e2e → the repository's lib/cli/main.ts.
const MAIN_TS = path.resolve(__dirname, '..', '..', '..', 'lib', 'cli', 'main.ts');

function firstLine(file: string): string {
  return fs.readFileSync(file, 'utf8').split('\n', 1)[0]!;
}

test('the blockwal command starts node with SERVER_NODE_OPTIONS: its shebang, in main.ts and in the built main.js', () => {
  assert.ok(SERVER_NODE_OPTIONS.length > 0);
  assert.equal(firstLine(MAIN_TS), expectedShebang(), MAIN_TS);
  assert.equal(firstLine(CLI_JS), expectedShebang(), CLI_JS);
  assert.equal(expectedShebang(), '#!/usr/bin/env -S node --initial-old-space-size=256');
});

test('nodeOptionsMissing: an option counts as set at any value, others do not stand in for it', () => {
  assert.deepEqual(nodeOptionsMissing([]), ['--initial-old-space-size=256']);
  assert.deepEqual(nodeOptionsMissing(['--initial-old-space-size=256']), []);
  assert.deepEqual(nodeOptionsMissing(['--cpu-prof', '--initial-old-space-size=1024']), []);
  assert.deepEqual(nodeOptionsMissing(['--max-old-space-size=256', '--initial-old-space-size-x=1']), ['--initial-old-space-size=256']);
});

// The warning is logged before the volume opens, so a serve that fails to
// open one shows it (or not) and exits at once.
function optionWarnings(r: RunResult): { msg: string; missing: string[] }[] {
  return r.stderr
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as { msg: string; missing?: string[] })
    .filter((e) => e.missing !== undefined)
    .map((e) => ({ msg: e.msg, missing: e.missing! }));
}

test('blockwal serve under a plain node logs the missing options; with them it does not', async () => {
  await withScope(async (scope) => {
    const dir = scopedTempDir(scope, 'node-options-');
    const notVolume = path.join(dir, 'not-a-volume');
    fs.mkdirSync(notVolume);
    const args = ['serve', notVolume, '--nbd', `unix:${path.join(dir, 'nbd.sock')}`];

    const plain = await runCli(args);
    assert.equal(plain.code, 1, describeRun('serve of a non-volume under plain node', plain));
    const warned = optionWarnings(plain);
    assert.equal(warned.length, 1, describeRun('one warning about the missing options', plain));
    assert.deepEqual(warned[0]!.missing, [...SERVER_NODE_OPTIONS]);
    assert.match(warned[0]!.msg, /--initial-old-space-size=256/);

    const tuned = await runProgram(process.execPath, [...SERVER_NODE_OPTIONS, CLI_JS, ...args]);
    assert.equal(tuned.code, 1, describeRun('serve of a non-volume with the options', tuned));
    assert.deepEqual(optionWarnings(tuned), [], describeRun('no warning with the options set', tuned));
  });
});
