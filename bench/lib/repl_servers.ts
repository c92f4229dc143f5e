// A blockwal primary and its replica as separate `blockwal serve` processes
// on loopback, and what a bench asks of them: start, status, checksums.
//
//   replica  `blockwal serve RDIR --role replica --repl-listen 127.0.0.1:PORT`
//            (PORT 0: the kernel picks one); ready when it prints `... listening
//            for its primary on 127.0.0.1:PORT`. A restarted replica listens on
//            the port its primary was given.
//   primary  `blockwal serve PDIR --nbd unix:SOCK --export NAME --replica
//            127.0.0.1:PORT [OPTIONS]`; ready on `serving PDIR on unix:SOCK`.
// Status comes from the volume's control socket (what `blockwal status DIR
// --json` prints under `served`), read in-process: polling it costs the
// servers one JSON document per query and the bench no Node start-up, so it
// can poll while a measurement runs.
import * as path from 'node:path';

import { queryControl } from '../../lib/node/control';
import type { NodeStatus } from '../../lib/node/storage_node';
import type { PrimaryReplicationStatus } from '../../lib/replication/primary';
import { assert } from './bench';
import type { CpuProfileSpec } from './blockwal_cli';
import { blockwalArgs, volumeChecksum } from './blockwal_cli';
import { ServerProcess } from './server_process';

export const LOOPBACK_HOST = '127.0.0.1';
const REPLICA_READY = /listening for its primary on 127\.0\.0\.1:(\d+)\n/;
/** sun_path holds 108 bytes with its NUL. */
const SOCKET_PATH_MAX = 100;

/** One blockwal serve process and the volume directory it serves. */
export interface VolumeServer {
  readonly dir: string;
  readonly server: ServerProcess;
}

export interface ReplicaStart {
  /** Name in logs and in the CPU profile's file name. */
  readonly name: string;
  readonly dir: string;
  /** 0 = the kernel picks one. */
  readonly port: number;
  readonly profile: CpuProfileSpec;
  readonly readyTimeoutMs: number;
}

export interface PrimaryStart {
  readonly name: string;
  readonly dir: string;
  readonly socket: string;
  readonly exportName: string;
  readonly replicaPort: number;
  /** Further serve options, e.g. ['--durability', 'sync_all']. */
  readonly options: readonly string[];
  readonly profile: CpuProfileSpec;
  readonly readyTimeoutMs: number;
}

export function socketPath(dir: string, name: string): string {
  const p = path.join(dir, name);
  assert(Buffer.byteLength(p) <= SOCKET_PATH_MAX, `socket path ${p} is too long for sun_path; use a shorter BENCH_DIR`);
  return p;
}

export async function startReplicaServer(r: ReplicaStart): Promise<{ server: ServerProcess; port: number }> {
  const server = await ServerProcess.start({
    name: r.name,
    command: process.execPath,
    args: blockwalArgs(r.name, r.profile.dir, r.profile.startedAt, ['serve', r.dir, '--role', 'replica', '--repl-listen', `${LOOPBACK_HOST}:${r.port}`]),
    ready: (stderr) => REPLICA_READY.test(stderr),
    readyTimeoutMs: r.readyTimeoutMs,
  });
  const port = Number(REPLICA_READY.exec(server.stderr)![1]);
  assert(Number.isInteger(port) && port > 0 && port < 65536, `${r.name} announced port ${port}`);
  assert(r.port === 0 || port === r.port, `${r.name} listens on ${port}, not on the ${r.port} asked for`);
  return { server, port };
}

export async function startPrimaryServer(p: PrimaryStart): Promise<ServerProcess> {
  const args = ['serve', p.dir, '--nbd', `unix:${p.socket}`, '--export', p.exportName, '--replica', `${LOOPBACK_HOST}:${p.replicaPort}`, ...p.options];
  return ServerProcess.start({
    name: p.name,
    command: process.execPath,
    args: blockwalArgs(p.name, p.profile.dir, p.profile.startedAt, args),
    ready: (stderr) => stderr.includes(`on unix:${p.socket}\n`),
    readyTimeoutMs: p.readyTimeoutMs,
  });
}

/** The running server's status document; throws when nothing serves dir. */
export async function servedStatus(node: VolumeServer): Promise<NodeStatus> {
  node.server.assertAlive();
  const answer = (await queryControl(node.dir)) as NodeStatus | undefined;
  assert(answer !== undefined, `blockwal status ${node.dir}: not served (is ${node.server.name} running?)`);
  return answer;
}

/** The primary's head and replication status (exactly one replica). */
export async function primaryStatus(primary: VolumeServer): Promise<{ head: number; repl: PrimaryReplicationStatus }> {
  const volume = (await servedStatus(primary)).volumes[0];
  assert(volume !== undefined, `blockwal status ${primary.dir}: no volume`);
  const repl = volume.replication;
  assert(repl !== undefined && repl.role === 'primary', `blockwal status ${primary.dir}: not a primary`);
  assert(repl.replicas.length === 1, `primary has ${repl.replicas.length} replicas, expected 1`);
  assert(Number.isSafeInteger(volume.lsnHead), `primary lsnHead ${String(volume.lsnHead)}`);
  return { head: volume.lsnHead, repl };
}

/** Polls until the primary reports its replica 'streaming'; returns the wait. */
export async function waitForStreaming(primary: VolumeServer, timeoutMs: number, pollMs: number): Promise<number> {
  const startMs = performance.now();
  for (;;) {
    const { repl } = await primaryStatus(primary);
    const peer = repl.replicas[0]!;
    if (peer.state === 'streaming') return performance.now() - startMs;
    if (performance.now() - startMs > timeoutMs) {
      throw new Error(`replica not streaming after ${timeoutMs} ms: state ${peer.state} (${peer.reason ?? 'no reason'})`);
    }
    await sleep(pollMs);
  }
}

/** `blockwal checksum` of both (stopped) volumes; throws unless they agree. */
export async function compareChecksums(primaryDir: string, replicaDir: string): Promise<string> {
  const primary = await volumeChecksum(primaryDir);
  const replica = await volumeChecksum(replicaDir);
  assert(primary === replica, `primary ${primaryDir} checksum ${primary} != replica ${replicaDir} checksum ${replica}`);
  return primary;
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
