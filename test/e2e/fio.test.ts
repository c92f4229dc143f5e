// fio's nbd engine: four jobs (four connections, each its own 8 MiB range)
// write random 4 KiB blocks at queue depth 32 with a FLUSH every 32 writes
// and crc32c verification headers, then read everything back and verify;
// a second fio run re-verifies in verify-only mode on new connections, and
// a third after a clean restart (the data now comes from recovery and
// base.img).
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';

import { describeRun, runProgram } from '../support/nbd_server_process';
import { MiB, servedVolume, skipUnlessTools, startServer, stopCleanly, withScope } from './harness';

const JOBS = 4;
const JOB_BYTES = 8 * MiB;
const WRITES_PER_FLUSH = 32;

interface FioJob {
  jobname: string;
  error: number;
  read: { io_bytes: number };
  write: { io_bytes: number };
  sync?: { total_ios: number };
}

// fio writes its verify state files into its working directory: the volume's temp dir.
async function fio(uri: string, outFile: string, extraArgs: string[]): Promise<FioJob[]> {
  const args = [
    '--name=e2e-verify',
    '--ioengine=nbd',
    `--uri=${uri}`,
    '--rw=randwrite',
    '--bs=4k',
    `--size=${JOB_BYTES}`,
    `--numjobs=${JOBS}`,
    `--offset_increment=${JOB_BYTES}`,
    '--iodepth=32',
    '--verify=crc32c',
    '--verify_fatal=1',
    '--randseed=20240601',
    '--output-format=json',
    `--output=${outFile}`,
    ...extraArgs,
  ];
  const r = await runProgram('fio', args, { timeoutMs: 300_000, cwd: path.dirname(outFile) });
  const label = `fio ${extraArgs.join(' ')}`;
  assert.equal(r.code, 0, describeRun(label, r));
  assert.doesNotMatch(r.stderr + r.stdout, /verify:|bad magic|crc32c: verify failed/, describeRun(label, r));
  const jobs = (JSON.parse(fs.readFileSync(outFile, 'utf8')) as { jobs: FioJob[] }).jobs;
  assert.equal(jobs.length, JOBS, describeRun(label, r));
  for (const job of jobs) {
    assert.equal(job.error, 0, `${label}: job error ${job.error}`);
    assert.equal(job.read.io_bytes, JOB_BYTES, `${label}: every written block is read back and verified`);
  }
  return jobs;
}

test('fio nbd engine: 4 connections of randwrite with flushes, crc32c verify, re-verify live and after restart', (t) =>
  withScope(async (scope) => {
    if (skipUnlessTools(t, 'fio')) return;
    const probe = await runProgram('fio', ['--enghelp=nbd']);
    if (probe.code !== 0 || !/uri/.test(probe.stdout)) {
      t.skip('missing fio nbd engine (fio --enghelp=nbd)');
      return;
    }
    const v = await servedVolume(scope, { sizeBytes: JOBS * JOB_BYTES });
    const out = (name: string): string => path.join(v.dir, `${name}.json`);

    const written = await fio(v.server.uri, out('write'), [`--fsync=${WRITES_PER_FLUSH}`]);
    for (const job of written) {
      assert.equal(job.write.io_bytes, JOB_BYTES);
      assert.ok((job.sync?.total_ios ?? 0) >= JOB_BYTES / 4096 / WRITES_PER_FLUSH, `flushes sent: ${JSON.stringify(job.sync)}`);
    }
    await fio(v.server.uri, out('verify-live'), ['--verify_only']);

    await stopCleanly(v.server);
    const restarted = await startServer(scope, v);
    await fio(restarted.uri, out('verify-restart'), ['--verify_only']);
    await stopCleanly(restarted);
  }));
