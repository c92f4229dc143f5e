// The Node options a blockwal server process runs with.
//
// V8 sets the old generation's first allocation limit from the live heap,
// which is small here (10–15 MB). Under load every write leaves a little
// garbage in the old generation, so V8 starts a full mark-compact every
// 100–200 ms: concurrent marking threads, write barriers on the JS thread,
// and a sweep. With a 256 MB initial old space, that garbage gathers first
// and a full collection comes a few times a minute. Measured on the 2-vCPU
// reference machine (fio 4 KiB randwrite qd32 through NBD, 8 s): server CPU
// per write 23–28 → 15–16 µs on one node, primary + replica 64–70 →
// 48–49 µs; RSS about 50 MB higher.
//
// V8 reads this flag only when the process starts, and NODE_OPTIONS may not
// carry it. So: the `blockwal` command's shebang (main.ts) names these
// options; what starts main.js with `node` itself (the demo, the tests, the
// benches) passes SERVER_NODE_OPTIONS; an embedding process passes them to
// its own `node`. `blockwal serve` without them says so in its log.
export const SERVER_NODE_OPTIONS: readonly string[] = ['--initial-old-space-size=256'];

// The options of SERVER_NODE_OPTIONS that execArgv does not set (at any value).
export function nodeOptionsMissing(execArgv: readonly string[] = process.execArgv): string[] {
  const nameOf = (option: string): string => option.split('=')[0]!;
  return SERVER_NODE_OPTIONS.filter((option) => !execArgv.some((arg) => nameOf(arg) === nameOf(option)));
}

// The shebang main.ts must begin with: `env -S` splits it into node and its options.
export function expectedShebang(): string {
  return `#!/usr/bin/env -S node ${SERVER_NODE_OPTIONS.join(' ')}`;
}
