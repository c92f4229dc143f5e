// Faults under load: a primary and two replicas (separate processes, sync_all,
// a 1 s ack timeout, small WAL segments, rebuilds paced to 8 MiB/s so that
// a fault can land in one) while fio writes through NBD and
// verifies what it reads back. A seeded sequence of faults runs meanwhile:
// a replica SIGKILLed, stopped with SIGTERM, paused past the ack timeout,
// wiped (a fresh volume, so a full rebuild), or wiped and then killed or
// stopped in the middle of that rebuild; the primary SIGKILLed and restarted
// (fio with it); or a failover: the primary SIGKILLed once its replicas are
// current, the replica with the most durable records restarted as the
// primary of the next epoch, and the old primary brought back as its replica
// (its own unacknowledged records, maybe already in its base image, must
// not survive that); or a fault of one replica's link, through a relay
// between the primary and that replica: every connection reset, one byte
// flipped one way (the receiver must refuse the frame and close the link
// within 15 s), or nothing forwarded for 0.2-8 s with the connection left
// open (past the 1 s ack timeout, and at times past the links' 5 s idle
// timeout, when both ends close it). Afterwards every replica must stream
// at the primary's head with the same apply checksum, every node must stop
// cleanly (exit 0) with the same `blockwal checksum`, fio must have found
// nothing wrong in what it read, and no node may have logged an error.
//
// BLOCKWAL_CHAOS_SECONDS (default 40), BLOCKWAL_CHAOS_SEED (default 717) and
// BLOCKWAL_CHAOS_DURABILITY (default sync_all) make it run longer, another
// sequence or another mode, by hand.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import * as fs from 'node:fs';

import { type Cluster, type ClusterNode, createVolume, MiB, settled, until, withCluster } from '../support/cluster';
import { assertSameChecksums, skipWithoutFioNbd } from '../support/cluster_fio';
import type { DurabilityMode } from '../../lib/replication/primary';
import { LinkProxy } from '../support/link_proxy';
import { prng } from '../support/tmp';

const SIZE_BYTES = 64 * MiB;
const CREATE_EXTRA = ['--wal-segment-size', '4M'];
const SECONDS = Number(process.env.BLOCKWAL_CHAOS_SECONDS ?? 40);
const SEED = Number(process.env.BLOCKWAL_CHAOS_SEED ?? 717);
const DURABILITY = (process.env.BLOCKWAL_CHAOS_DURABILITY ?? 'sync_all') as DurabilityMode;
const PRIMARY_EXTRA = ['--rebuild-rate', '8M'];

type Fault = 'kill' | 'stop' | 'pause' | 'wipe' | 'kill_in_rebuild' | 'stop_in_rebuild' | 'kill_primary' | 'failover' | 'cut_link' | 'corrupt_link' | 'stall_link';
const FAULTS: Fault[] = ['kill', 'kill', 'stop', 'pause', 'wipe', 'kill_in_rebuild', 'stop_in_rebuild', 'kill_primary', 'failover', 'cut_link', 'corrupt_link', 'stall_link'];
const CORRUPT_DEADLINE_MS = 15_000;

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// One fio run: random writes of 4-64 KiB with crc32c headers, each block
// read back and verified within 256 writes, a FLUSH every 16 writes, paced.
class FioRun {
  readonly child: ChildProcess;
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  output = '';

  constructor(cluster: Cluster, primary: ClusterNode, index: number, seconds: number) {
    const args = [
      `--name=chaos${index}`,
      '--ioengine=nbd',
      `--uri=${primary.uri}`,
      '--rw=randwrite',
      '--bsrange=4k-64k',
      `--size=${48 * MiB}`,
      '--iodepth=4',
      '--verify=crc32c',
      '--verify_backlog=256',
      '--verify_fatal=1',
      '--fsync=16',
      '--rate=4m',
      '--time_based',
      '--thread', // one process: a SIGKILL ends every job (a forked job outlives its parent)
      `--runtime=${Math.max(1, Math.ceil(seconds))}`,
    ];
    this.child = spawn('fio', args, { stdio: ['ignore', 'pipe', 'pipe'], cwd: cluster.root });
    for (const s of [this.child.stdout!, this.child.stderr!]) s.setEncoding('utf8').on('data', (c: string) => (this.output = (this.output + c).slice(-20_000)));
    this.exited = new Promise((resolve) => this.child.once('close', (code, signal) => resolve({ code, signal })));
  }

  // fio's nbd engine spins on a connection whose server died: it is killed with it.
  async kill(): Promise<void> {
    this.child.kill('SIGKILL');
    await settled('fio to exit after SIGKILL', this.exited, { deadlineMs: 30_000 });
  }

  checkOutput(label: string): void {
    assert.doesNotMatch(this.output, /verify failed|bad magic|bad header|verify: /i, `${label} found bad data:\n${this.output.slice(-4000)}`);
  }
}

// The primary names a replica by the address it dials: the replica's relay.
async function replicaState(primary: ClusterNode, relay: LinkProxy): Promise<string | undefined> {
  const s = await primary.primaryStatus();
  return s.replicas.find((p) => p.address === relay.address)?.state;
}

async function wipe(r: ClusterNode): Promise<void> {
  await r.kill('SIGKILL');
  fs.rmSync(r.dir, { recursive: true, force: true });
  await createVolume(r.dir, SIZE_BYTES, CREATE_EXTRA);
  await r.restart();
}

test(`faults under fio (${DURABILITY}, seed ${SEED}, ${SECONDS} s): replicas killed, stopped, paused, wiped, killed or stopped mid-rebuild, links cut, corrupted or stalled, the primary killed and restarted or failed over; all nodes end identical, nothing logged as an error`, async (t) => {
  if (await skipWithoutFioNbd(t)) return;
  // Two streams: the faults and their targets do not depend on how many
  // waits came before them.
  const choice = prng(SEED);
  const timing = prng(SEED + 0x9e3779b9);
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(choice() * xs.length)]!;
  const between = (lo: number, hi: number): number => lo + timing() * (hi - lo);
  // Each node's relay, made the first time a primary dials it; it dials
  // wherever that node listens as a replica.
  const relays = new Map<ClusterNode, LinkProxy>();
  const relay = (r: ClusterNode): LinkProxy => relays.get(r)!;
  const via = async (r: ClusterNode): Promise<string> => {
    if (!relays.has(r)) relays.set(r, await LinkProxy.start(() => r.replAddress));
    return relay(r).address;
  };
  try {
    await withCluster(
      { sizeBytes: SIZE_BYTES, replicas: 2, durability: DURABILITY, ackTimeoutMs: 1000, createExtra: CREATE_EXTRA, primaryExtra: PRIMARY_EXTRA, replicaAddress: via },
      async (cluster) => {
        await cluster.waitCurrent();
        // Roles move with failovers.
        let primary = cluster.primary;
        let replicas = [...cluster.replicas];
        let epoch = 1;
        const endMs = Date.now() + SECONDS * 1000;
        let runs = 0;
        let fio = new FioRun(cluster, primary, ++runs, SECONDS + 5);
        const done: string[] = [];
        const unseen: string[] = []; // faults that did not land: a rebuild ended before it was seen, nothing sent to corrupt
        const skipped: string[] = []; // failovers while a replica was not current
        while (Date.now() < endMs) {
          await sleep(between(500, 3000));
          const fault = pick(FAULTS);
          const r = pick(replicas);
          done.push(fault === 'kill_primary' ? `${fault} ${primary.name}` : fault === 'failover' ? `${fault} from ${primary.name}` : `${fault} ${r.name}`);
          switch (fault) {
            case 'kill':
              await r.kill('SIGKILL');
              await sleep(between(0, 1500));
              await r.restart();
              break;
            case 'stop':
              await r.stop(); // exit 0 asserted
              await sleep(between(0, 1500));
              await r.restart();
              break;
            case 'pause':
              r.pause();
              await sleep(between(200, 2500));
              r.resume();
              break;
            case 'wipe':
              await wipe(r);
              break;
            case 'kill_in_rebuild':
            case 'stop_in_rebuild': {
              await wipe(r);
              let seen: string | undefined;
              const rebuilding = await until(`${r.name} rebuilding`, async () => (seen = await replicaState(primary, relay(r))) === 'rebuilding', { deadlineMs: 20_000 }).catch(() => false);
              if (!rebuilding) {
                unseen.push(`${fault} ${r.name} (${seen ?? 'not listed'})`);
                break;
              }
              await sleep(between(100, 1500));
              if (fault === 'kill_in_rebuild') await r.kill('SIGKILL');
              else await r.stop(); // exit 0 asserted
              await sleep(between(0, 1000));
              await r.restart();
              break;
            }
            case 'kill_primary': {
              await primary.kill('SIGKILL');
              await fio.kill();
              fio.checkOutput(`fio run ${runs} (killed with the primary)`);
              await sleep(between(0, 1500));
              await primary.restart();
              fio = new FioRun(cluster, primary, ++runs, (endMs - Date.now()) / 1000 + 5);
              break;
            }
            case 'failover': {
              // Only from a healthy set, as a coordinator would: a replica being
              // rebuilt holds a partial image and cannot take over.
              const current = await until(
                'every replica current before a failover',
                async () => (await primary.primaryStatus()).replicas.every((x) => x.state === 'streaming' && x.inAckSet && x.lagLsn === 0),
                { deadlineMs: 15_000 },
              ).catch(() => false);
              if (!current) {
                skipped.push(done.pop()!);
                break;
              }
              await primary.kill('SIGKILL');
              await fio.kill();
              fio.checkOutput(`fio run ${runs} (killed with the primary, failing over)`);
              // The replica with the most durable records takes over.
              const durable = await Promise.all(replicas.map(async (n) => (await n.volumeStatus()).lsnDurable));
              const next = durable[0]! >= durable[1]! ? replicas[0]! : replicas[1]!;
              const other = replicas.find((n) => n !== next)!;
              const old = primary;
              await next.stop(); // exit 0 asserted
              await old.restart(old.replicaFlags());
              epoch++;
              await next.restart(next.primaryFlags({ replicas: [other, old], addresses: [await via(other), await via(old)], durability: DURABILITY, ackTimeoutMs: 1000, epoch, extra: PRIMARY_EXTRA }));
              primary = next;
              replicas = [other, old];
              fio = new FioRun(cluster, primary, ++runs, (endMs - Date.now()) / 1000 + 5);
              break;
            }
            case 'cut_link':
              relay(r).cut();
              break;
            case 'corrupt_link': {
              const direction = pick(['to_replica', 'to_primary'] as const);
              done[done.length - 1] += ` ${direction}`;
              const outcome = await relay(r).corrupt(direction, choice(), CORRUPT_DEADLINE_MS);
              assert.notEqual(outcome, 'lived_on', `a byte flipped ${direction} on ${r.name}'s link: the connection was still open ${CORRUPT_DEADLINE_MS} ms later`);
              if (outcome === 'not_sent') unseen.push(done.pop()!);
              break;
            }
            case 'stall_link': {
              const ms = between(200, 8000);
              done[done.length - 1] += ` ${(ms / 1000).toFixed(1)} s`;
              await relay(r).stall(ms);
              break;
            }
          }
        }
        t.diagnostic(
          `faults: ${done.join(', ')}; not landed (no rebuild seen running, or nothing sent on the link to corrupt): ${unseen.join(', ') || 'none'}; ` +
            `failovers skipped (a replica not current): ${skipped.join(', ') || 'none'}; primary at the end ${primary.name}, epoch ${epoch}`,
        );
        // A primary that died by itself would leave fio spinning: bounded.
        const last = await settled(`fio run ${runs} to end`, fio.exited, { deadlineMs: 120_000, explain: () => cluster.describe() }).catch(async (err: Error) => {
          await fio.kill();
          throw err;
        });
        fio.checkOutput(`fio run ${runs}`);
        assert.deepEqual(last, { code: 0, signal: null }, `fio run ${runs} ran to its end:\n${fio.output.slice(-4000)}`);

        await cluster.waitCurrent(primary);
        const common = await cluster.waitApplied(primary, replicas);
        await cluster.stopAll();
        const sums = await assertSameChecksums(cluster);
        for (const n of cluster.nodes) assert.deepEqual(n.errorLines, [], `${n.name} logged errors`);
        t.diagnostic(`${done.length} faults, ${runs} fio runs; every node at LSN ${common.lsnApplied}, checksum ${sums.p}`);
        assert.ok(done.length >= 3, `faults ran: ${done.join(', ')}`);
      },
    );
  } finally {
    for (const p of relays.values()) await p.close();
  }
});
