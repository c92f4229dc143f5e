// The benches' reading of /proc/<pid>/stat (bench/lib/proc_stat.ts): the comm
// ends at the last ')', and a server's CPU sample (bench/lib/server_process.ts)
// built on it sees a real child's main thread spend CPU.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';

import { parseProcStat } from '../../bench/lib/proc_stat';
import { cpuBetween, ServerProcess } from '../../bench/lib/server_process';

test('proc stat: comm with spaces and parentheses, then the fields from the state on', () => {
  const stat = parseProcStat('4242 (node (x) y) R 1 4242 4242 0 -1 4194304 10 0 0 0 37 5 0 0 20 0 11 0\n');
  assert.ok(stat !== null);
  assert.equal(stat.comm, 'node (x) y');
  assert.equal(stat.fields[0], 'R');
  assert.equal(stat.fields[1], '1', 'ppid');
  assert.deepEqual([stat.fields[11], stat.fields[12]], ['37', '5'], 'utime and stime (proc(5) fields 14 and 15)');
  assert.equal(parseProcStat('no parentheses here'), null);
});

test('proc stat: a server\'s CPU sample counts a busy child\'s main thread', async () => {
  const server = await ServerProcess.start({
    name: 'spinner',
    command: process.execPath,
    // Busy for 300 ms, then idle until stopped.
    args: ['-e', 'const end = Date.now() + 300; while (Date.now() < end); console.error("spun"); setInterval(() => {}, 1000);'],
    ready: (stderr) => stderr.includes('spun'),
    readyTimeoutMs: 30_000,
  });
  try {
    const sample = server.cpuSample();
    assert.ok(sample.total.userUs + sample.total.systemUs >= 200_000, `at least 200 ms of CPU (${JSON.stringify(sample.total)})`);
    const main = sample.threads.get(server.pid);
    assert.ok(main !== undefined && main.name === 'main', 'the pid\'s own thread is labelled main');
    assert.ok(main.cpu.userUs + main.cpu.systemUs >= 200_000, 'the spinning was on the main thread');
    const delta = cpuBetween(sample, server.cpuSample());
    assert.ok(delta.totalUs >= 0 && delta.wallMs >= 0);
  } finally {
    await server.stop();
  }
});
