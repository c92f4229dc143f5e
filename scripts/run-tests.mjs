// Runs every compiled test file (dist/test/**/*.test.js) with node's test
// runner, one file at a time so tests that measure or kill processes do not
// fight over the two cores. Arguments filter files by substring.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

const root = path.join(path.dirname(new URL(import.meta.url).pathname), '..');
const testRoot = path.join(root, 'dist', 'test');
const filters = process.argv.slice(2).filter((a) => !a.startsWith('--'));

function walk(dir) {
  const out = [];
  if (!fs.existsSync(dir)) return out;
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) out.push(...walk(full));
    else if (entry.name.endsWith('.test.js')) out.push(full);
  }
  return out;
}

// A compiled test whose source is gone (renamed or deleted since the last
// build: tsc leaves its output behind) is not run.
const hasSource = (f) => fs.existsSync(path.join(root, path.relative(path.join(root, 'dist'), f)).replace(/\.js$/, '.ts'));
const stale = walk(testRoot).filter((f) => !hasSource(f));
for (const f of stale) console.error(`run-tests: skipping ${path.relative(root, f)}: its source is gone (a stale build output)`);
const files = walk(testRoot)
  .filter(hasSource)
  .sort()
  .filter((f) => filters.length === 0 || filters.some((flt) => f.includes(flt)));
if (files.length === 0) {
  console.error('run-tests: no test files found under dist/test (did tsc run?)');
  process.exit(1);
}
const env = { ...process.env };
if (process.argv.includes('--asan')) {
  const lib = spawnSync('gcc', ['-print-file-name=libasan.so'], { encoding: 'utf8' }).stdout.trim();
  env.LD_PRELOAD = lib;
  env.ASAN_OPTIONS = 'detect_leaks=0';
}
const result = spawnSync(
  process.execPath,
  ['--test', '--test-concurrency=1', '--test-reporter=spec', ...files],
  { stdio: 'inherit', env, cwd: root },
);
process.exit(result.status ?? 1);
