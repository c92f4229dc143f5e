// fio's nbd engine against a cluster's primary, and the checks every
// multi-process replication test ends with: the same apply checksum at the
// same applied LSN on every node, and the same `blockwal checksum`.
import type { TestContext } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';

import type { Cluster } from './cluster';
import { describeRun, runProgram, type RunResult } from './nbd_server_process';

const BLOCK_BYTES = 4096;

export interface FioWorkload {
  jobs: number; // one NBD connection each, each on its own range
  jobBytes: number;
  fsyncEvery: number; // an NBD FLUSH after every N writes
  iodepth: number;
  blockBytes?: number; // default 4 KiB
}

interface FioJobReport {
  jobname: string;
  error: number;
  read: { io_bytes: number };
  write: { io_bytes: number };
  sync?: { total_ios: number };
}

let fioProbe: Promise<boolean> | undefined;

// Skips the test (and returns true) without fio's nbd engine.
export async function skipWithoutFioNbd(t: TestContext): Promise<boolean> {
  fioProbe ??= runProgram('fio', ['--enghelp=nbd']).then(
    (r) => r.code === 0 && /uri/.test(r.stdout),
    () => false,
  );
  if (await fioProbe) return false;
  t.skip('missing fio with the nbd engine (fio --enghelp=nbd)');
  return true;
}

// Starts fio: randwrite with crc32c verify headers, then a read-back verify
// pass; resolves with its run once it exits.
export function startFio(cluster: Cluster, name: string, w: FioWorkload): Promise<RunResult> {
  const out = path.join(cluster.root, `fio-${name}.json`);
  const args = [
    `--name=${name}`,
    '--ioengine=nbd',
    `--uri=${cluster.primary.uri}`,
    '--rw=randwrite',
    `--bs=${w.blockBytes ?? BLOCK_BYTES}`,
    `--size=${w.jobBytes}`,
    `--numjobs=${w.jobs}`,
    `--offset_increment=${w.jobBytes}`,
    `--iodepth=${w.iodepth}`,
    `--fsync=${w.fsyncEvery}`,
    '--verify=crc32c',
    '--verify_fatal=1',
    '--randseed=20251123',
    '--output-format=json',
    `--output=${out}`,
  ];
  // fio writes its verify state files into its working directory.
  return runProgram('fio', args, { timeoutMs: 300_000, cwd: cluster.root });
}

export function checkFio(cluster: Cluster, name: string, w: FioWorkload, r: RunResult): void {
  const label = `fio ${name}`;
  assert.equal(r.code, 0, describeRun(label, r));
  assert.doesNotMatch(r.stderr + r.stdout, /verify:|bad magic|crc32c: verify failed/, describeRun(label, r));
  const jobs = (JSON.parse(fs.readFileSync(path.join(cluster.root, `fio-${name}.json`), 'utf8')) as { jobs: FioJobReport[] }).jobs;
  assert.equal(jobs.length, w.jobs, describeRun(label, r));
  for (const job of jobs) {
    assert.equal(job.error, 0, `${label}: job error ${job.error}`);
    assert.equal(job.write.io_bytes, w.jobBytes, `${label}: every block written`);
    assert.equal(job.read.io_bytes, w.jobBytes, `${label}: every written block read back and verified`);
    assert.ok((job.sync?.total_ios ?? 0) >= w.jobBytes / (w.blockBytes ?? BLOCK_BYTES) / w.fsyncEvery, `${label}: FLUSHes sent: ${JSON.stringify(job.sync)}`);
  }
}

export async function runFio(cluster: Cluster, name: string, w: FioWorkload): Promise<void> {
  checkFio(cluster, name, w, await startFio(cluster, name, w));
}

// Every node's own status (through `blockwal status --json`) shows the same
// apply checksum at the same applied LSN, and the primary's view of each
// replica agrees.
export async function assertSameApplied(cluster: Cluster, lsnAtLeast: number): Promise<void> {
  const common = await cluster.waitApplied();
  assert.ok(common.lsnApplied >= lsnAtLeast, `applied LSN ${common.lsnApplied} covers the ${lsnAtLeast} writes`);
  for (const n of cluster.nodes) {
    const v = (await n.statusCli()).volumes[0]!;
    assert.equal(v.lsnApplied, common.lsnApplied, `${n.name}: lsnApplied (status --json)`);
    assert.equal(v.applyChecksum, common.applyChecksum, `${n.name}: applyChecksum at LSN ${common.lsnApplied} (status --json)`);
  }
  const p = await cluster.primary.primaryStatus();
  for (const r of p.replicas) {
    assert.equal(r.lsnApplied, common.lsnApplied, `the primary's view of ${r.address}: lsnApplied`);
    assert.equal(r.applyChecksum, common.applyChecksum, `the primary's view of ${r.address}: applyChecksum`);
  }
}

export async function assertSameChecksums(cluster: Cluster): Promise<Record<string, string>> {
  const sums = await cluster.checksums();
  for (const r of cluster.replicas) assert.equal(sums[r.name], sums.p, `blockwal checksum of ${r.name} equals the primary's: ${JSON.stringify(sums)}`);
  return sums;
}

