// Epochs and failover with real `blockwal serve` processes on loopback
// (test/support/cluster.ts):
//  - fencing: after a failover to epoch 2, the old primary restarted with its
//    epoch-1 flags gets no write acknowledged (not even one that reached its
//    WAL before its HELLO was refused), changes nothing on the replica, and
//    reports itself fenced;
//  - kill -9 of the primary under sync_all while this process writes distinct
//    blocks with FUA and FLUSH through a raw NBD client and books every
//    acknowledgement: the replica, restarted as primary in epoch 2, holds
//    every write that was durably acknowledged, and no block holds anything
//    that was never written.
// Seeded (BLOCKWAL_FENCING_SEED replays the block order and op mix; the
// kill's moment depends on timing). Waiting is by polling, never by time.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as crypto from 'node:crypto';

import type { ExitStatus } from '../support/nbd_server_process';
import { type Cluster, type ClusterNode, MiB, NbdSession, type NbdReply, readMembership, settled, until, withCluster } from '../support/cluster';
import { prng } from '../support/tmp';

const BLOCK_BYTES = 4096;
const EIO = 5;

function seedFromEnv(): number {
  const env = process.env.BLOCKWAL_FENCING_SEED;
  return env !== undefined && env !== '' ? Number(env) : crypto.randomInt(2 ** 31);
}

// A 4 KiB block that names its write: (magic, seed, id, block) repeated.
const MAGIC = 0x4657_4c42;
function payloadOf(seed: number, id: number, block: number): Buffer {
  const b = Buffer.alloc(BLOCK_BYTES);
  for (let at = 0; at < BLOCK_BYTES; at += 16) {
    b.writeUInt32LE(MAGIC, at);
    b.writeUInt32LE(seed >>> 0, at + 4);
    b.writeUInt32LE(id >>> 0, at + 8);
    b.writeUInt32LE(block >>> 0, at + 12);
  }
  return b;
}

async function writeBlocks(session: NbdSession, firstBlock: number, count: number, tag: number): Promise<void> {
  const writes = Array.from({ length: count }, (_, i) => session.write((firstBlock + i) * BLOCK_BYTES, payloadOf(tag, i, firstBlock + i)));
  const replies = await settled(`${count} writes`, Promise.all(writes));
  assert.deepEqual(replies.map((r) => r.error), new Array(count).fill(0), 'every write succeeds');
  assert.equal((await settled('a FLUSH', session.flush())).error, 0, 'the FLUSH succeeds');
}

async function withSession<T>(node: ClusterNode, fn: (s: NbdSession) => Promise<T>): Promise<T> {
  const session = await NbdSession.open(node.nbd);
  try {
    return await fn(session);
  } finally {
    session.close();
  }
}

// Restarts the old primary p with flags while its replica is paused, so the
// first half of the writes reach p's WAL before p's HELLO is answered; then
// resumes the replica, waits until p reports itself fenced and sends the
// rest. Resolves with every reply (or the error that ended it).
async function writesOnOldPrimary(
  p: ClusterNode,
  flags: string[],
  replica: ClusterNode,
  attempts: number,
): Promise<{ results: (NbdReply | Error)[]; beforeHello: number }> {
  const replies: Promise<NbdReply | Error>[] = [];
  replica.pause();
  await p.restart(flags);
  const session = await NbdSession.open(p.nbd);
  try {
    const head0 = (await p.volumeStatus()).lsnHead;
    const attempt = (i: number): void => void replies.push(session.write((200 + i) * BLOCK_BYTES, payloadOf(3, i, 200 + i)).catch((err: Error) => err));
    const beforeHello = attempts / 2;
    for (let i = 0; i < beforeHello; i++) attempt(i);
    await until("the writes sent before the HELLO exchange are in the old primary's WAL", async () => (await p.volumeStatus()).lsnHead >= head0 + beforeHello);
    assert.equal(session.repliesReceived, 0, 'no reply while the replica has not answered');
    replica.resume();
    const fenced = await until('the old primary is fenced', async () => {
      const s = await p.primaryStatus();
      return s.mode === 'fenced' && s;
    });
    assert.match(fenced.reason ?? '', /epoch/, `the reason names the epoch: ${fenced.reason}`);
    for (let i = beforeHello; i < attempts; i++) attempt(i);
    await until('every attempt answered', async () => session.repliesReceived === attempts || session.inFlight === 0);
    return { results: await Promise.all(replies), beforeHello };
  } finally {
    session.close();
  }
}

test('fencing: the old primary, back at epoch 1 after a failover to epoch 2, gets no write acknowledged and changes nothing on the replica', async () => {
  await withCluster({ sizeBytes: 64 * MiB, replicas: 2, durability: 'sync_all', epoch: 1 }, async (cluster) => {
    const [p, r1, r2] = [cluster.primary, cluster.replicas[0]!, cluster.replicas[1]!];
    const oldPrimaryFlags = p.primaryFlags({ replicas: [r2], durability: 'sync_all', epoch: 1 });
    await cluster.waitCurrent();
    await withSession(p, (s) => writeBlocks(s, 0, 64, 1));
    await cluster.waitApplied();

    // Failover: P stops; R1 becomes the primary of R2 in epoch 2.
    await p.stop();
    await r1.stop();
    await r1.restart(r1.primaryFlags({ replicas: [r2], durability: 'sync_all', epoch: 2 }));
    await until('R2 persisted epoch 2 and streams from R1', async () => {
      const s = await r2.replicaStatus();
      return s.epoch === 2 && s.state === 'streaming' && s.primary?.nodeId === 'r1';
    });
    assert.equal((await r2.volumeStatus()).epoch, 2, "R2's volume is at epoch 2");
    await cluster.waitCurrent(r1);
    await withSession(r1, (s) => writeBlocks(s, 64, 16, 2));
    await cluster.waitApplied(r1, [r2]);
    const before = await r2.replicaStatus();

    // The old primary comes back with its old flags (epoch 1, feeding R2).
    const ATTEMPTS = 20;
    const { results, beforeHello } = await writesOnOldPrimary(p, oldPrimaryFlags, r2, ATTEMPTS);
    const acks = results.filter((r) => !(r instanceof Error) && r.error === 0).length;
    const eio = results.filter((r) => !(r instanceof Error) && r.error === EIO).length;
    const after = await r2.replicaStatus();
    console.log(
      `fencing: ${results.length} write attempts on the fenced old primary (${beforeHello} before its HELLO was answered), ${acks} acknowledged, ${eio} EIO; ` +
        `R2 framesRefused ${before.framesRefused} -> ${after.framesRefused}, lastClose ${JSON.stringify(after.lastClose)}`,
    );
    assert.equal(results.length, ATTEMPTS);
    assert.equal(acks, 0, 'the fenced primary acknowledged no write');

    assert.equal((await p.primaryStatus()).mode, 'fenced');
    assert.equal(after.epoch, 2);
    assert.equal(after.primary?.nodeId, 'r1', 'R2 still follows R1');
    assert.equal(after.lsnReceived, before.lsnReceived, "R2's lsnReceived did not move because of the old primary");
    assert.equal(after.lsnApplied, before.lsnApplied);
    assert.equal(after.applyChecksum, before.applyChecksum, "R2's apply checksum did not change");
    assert.ok(
      after.framesRefused > before.framesRefused || /stale/.test(after.lastClose ?? ''),
      `R2 refused the old primary: framesRefused ${before.framesRefused} -> ${after.framesRefused}, lastClose ${after.lastClose}`,
    );

    // The new primary still writes through R2.
    await withSession(r1, (s) => writeBlocks(s, 80, 8, 4));
    await cluster.waitApplied(r1, [r2]);
    await cluster.stopAll();
    const sums = await cluster.checksums([r1, r2]);
    assert.equal(sums.r2, sums.r1, `R1 and R2 end identical: ${JSON.stringify(sums)}`);
  });
});

// ---- kill -9 of the primary under FUA/FLUSH writes ----

const enum WriteState {
  None = 0,
  Issued = 1, // sent; no reply (yet)
  Acked = 2,
  Durable = 3, // FUA acknowledged, or acknowledged before a FLUSH that succeeded
  Refused = 4, // an error reply
}

// Writes each block at most once (a seeded permutation), from several
// workers over two connections, with FUA on a share of them and a FLUSH now
// and then, and books every acknowledgement as it arrives.
class DurableWriter {
  readonly state: Uint8Array;
  readonly blockOf: Uint32Array;
  private readonly ackOrder: Int32Array;
  // performance.now() when each write became durable (NaN: not durable).
  readonly durableAtMs: Float64Array;
  private nextId = 0;
  private acked = 0;
  private durableUpTo = 0; // writes with ackOrder below it are durable (a FLUSH covered them)
  durableCount = 0;
  flushes = 0;
  stopped = false;
  // Called as each write becomes durable, with the count so far.
  onDurable: (count: number) => void = () => undefined;
  private readonly rand: () => number;

  constructor(
    readonly seed: number,
    readonly blocks: number,
  ) {
    this.rand = prng(seed);
    this.state = new Uint8Array(blocks);
    this.ackOrder = new Int32Array(blocks).fill(-1);
    this.durableAtMs = new Float64Array(blocks).fill(NaN);
    this.blockOf = new Uint32Array(blocks);
    for (let i = 0; i < blocks; i++) this.blockOf[i] = i;
    for (let i = blocks - 1; i > 0; i--) {
      const j = Math.floor(this.rand() * (i + 1));
      [this.blockOf[i], this.blockOf[j]] = [this.blockOf[j]!, this.blockOf[i]!];
    }
  }

  get issued(): number {
    return this.nextId;
  }

  run(sessions: NbdSession[], workersPerSession: number): Promise<void> {
    return Promise.all(sessions.flatMap((s) => Array.from({ length: workersPerSession }, () => this.worker(s)))).then(() => undefined);
  }

  private async worker(session: NbdSession): Promise<void> {
    while (!this.stopped && this.nextId < this.blocks) {
      try {
        if (this.rand() < 0.1) await this.flush(session);
        else await this.write(session, this.rand() < 0.3);
      } catch {
        return; // the connection ended: the primary is gone
      }
    }
  }

  private async write(session: NbdSession, fua: boolean): Promise<void> {
    const id = this.nextId++;
    const block = this.blockOf[id]!;
    this.state[id] = WriteState.Issued;
    const reply = await session.write(block * BLOCK_BYTES, payloadOf(this.seed, id, block), fua);
    if (reply.error !== 0) {
      this.state[id] = WriteState.Refused;
      return;
    }
    this.ackOrder[id] = this.acked++;
    this.state[id] = WriteState.Acked;
    if (fua) this.markDurable(id);
  }

  // Covers the writes acknowledged before it was sent (on any connection).
  private async flush(session: NbdSession): Promise<void> {
    const covers = this.acked;
    const reply = await session.flush();
    if (reply.error !== 0) return;
    this.flushes++;
    if (covers <= this.durableUpTo) return;
    this.durableUpTo = covers;
    for (let id = 0; id < this.nextId; id++) {
      if (this.state[id] === WriteState.Acked && this.ackOrder[id]! < covers) this.markDurable(id);
    }
  }

  private markDurable(id: number): void {
    this.state[id] = WriteState.Durable;
    this.durableAtMs[id] = performance.now();
    this.durableCount++;
    this.onDurable(this.durableCount);
  }
}

interface ReadBack {
  durableChecked: number;
  durableLost: number;
  ackedOnly: number;
  ackedOnlyPresent: number;
  inFlight: number;
  inFlightLanded: number;
  foreign: number; // blocks holding neither zeros nor the write issued to them
  anomalies: string[];
}

// Reads back every block the writer touched, through NBD on node.
async function readBack(node: ClusterNode, w: DurableWriter): Promise<ReadBack> {
  const out: ReadBack = { durableChecked: 0, durableLost: 0, ackedOnly: 0, ackedOnlyPresent: 0, inFlight: 0, inFlightLanded: 0, foreign: 0, anomalies: [] };
  const zeros = Buffer.alloc(BLOCK_BYTES);
  await withSession(node, async (session) => {
    const BATCH = 64;
    for (let first = 0; first < w.issued; first += BATCH) {
      const ids = Array.from({ length: Math.min(BATCH, w.issued - first) }, (_, i) => first + i);
      const reads = await settled('reads', Promise.all(ids.map((id) => session.read(w.blockOf[id]! * BLOCK_BYTES, BLOCK_BYTES))));
      ids.forEach((id, i) => {
        const block = w.blockOf[id]!;
        const r = reads[i]!;
        assert.equal(r.error, 0, `read of block ${block} failed with ${r.error}`);
        const present = r.data.equals(payloadOf(w.seed, id, block));
        if (!present && !r.data.equals(zeros)) {
          out.foreign++;
          out.anomalies.push(`block ${block} (write ${id}) holds bytes never written there: ${r.data.subarray(0, 16).toString('hex')}`);
        }
        switch (w.state[id] as WriteState) {
          case WriteState.Durable:
            out.durableChecked++;
            if (!present) {
              out.durableLost++;
              out.anomalies.push(`durable write ${id} to block ${block} is lost`);
            }
            return;
          case WriteState.Acked:
            out.ackedOnly++;
            if (present) out.ackedOnlyPresent++;
            return;
          case WriteState.Issued:
          case WriteState.Refused:
            out.inFlight++;
            if (present) out.inFlightLanded++;
            return;
          case WriteState.None:
            return;
        }
      });
    }
  });
  return out;
}

const KILL_AFTER_DURABLE = 400;

test('kill -9 of the primary under sync_all FUA/FLUSH writes: the replica, promoted to epoch 2, holds every durably acknowledged write', async () => {
  const seed = seedFromEnv();
  console.log(`kill primary: seed ${seed} (replay with BLOCKWAL_FENCING_SEED=${seed})`);
  const sizeBytes = 64 * MiB;
  // A long --ack-timeout: the replica never leaves the ack set, so every
  // durable acknowledgement waited for it.
  await withCluster({ sizeBytes, replicas: 1, durability: 'sync_all', ackTimeoutMs: 600_000 }, async (cluster: Cluster) => {
    const [p, r] = [cluster.primary, cluster.replicas[0]!];
    await cluster.waitCurrent();
    const writer = new DurableWriter(seed, sizeBytes / BLOCK_BYTES);
    const sessions = [await NbdSession.open(p.nbd), await NbdSession.open(p.nbd)];
    let killAtMs = NaN;
    let killed: Promise<ExitStatus> | undefined;
    // Armed once the primary was seen healthy: a fast pair may reach
    // KILL_AFTER_DURABLE while that status is still being read.
    let armed = false;
    // The SIGKILL goes out from the bookkeeping itself, while acknowledgements stream in.
    writer.onDurable = (count) => {
      if (!armed || count < KILL_AFTER_DURABLE || killed !== undefined) return;
      killAtMs = performance.now();
      killed = p.kill('SIGKILL');
    };
    const running = writer.run(sessions, 8);
    try {
      await until('100 durable writes', async () => writer.durableCount >= 100);
      const healthy = await p.primaryStatus();
      assert.equal(healthy.mode, 'healthy', `the primary is healthy before the kill: ${healthy.reason}`);
      assert.ok(healthy.ackSet.includes(r.replAddress), 'the replica is in the ack set');
      armed = true;
      await until(`the SIGKILL after ${KILL_AFTER_DURABLE} durable writes`, async () => killed);
      assert.equal((await killed!).signal, 'SIGKILL');
    } finally {
      writer.stopped = true;
      for (const s of sessions) s.close();
      await settled('the writer stops', running);
    }
    const membership = readMembership(p.dir);
    assert.ok(membership === undefined || membership.ackSet.includes(r.replAddress), `the primary never dropped the replica: ${JSON.stringify(membership)}`);

    // Failover: the replica stops cleanly and comes back as the primary of epoch 2.
    await r.stop();
    await r.restart(r.primaryFlags({ replicas: [], epoch: 2 }));
    const v = await r.volumeStatus();
    assert.equal(v.epoch, 2);
    assert.equal(v.role, 'primary');
    const report = await readBack(r, writer);
    console.log(
      `kill primary: ${writer.issued} writes issued, ${writer.flushes} flushes; ${report.durableChecked} acked-durable writes checked, ${report.durableLost} lost; ` +
        `acked-only ${report.ackedOnly} (${report.ackedOnlyPresent} present), in flight at the kill ${report.inFlight} (${report.inFlightLanded} landed), ` +
        `foreign blocks ${report.foreign}; seed ${seed}`,
    );
    let lastDurableMs = -Infinity;
    for (const at of writer.durableAtMs) if (at <= killAtMs) lastDurableMs = Math.max(lastDurableMs, at);
    console.log(`kill primary: the last durable acknowledgement before the SIGKILL came ${(killAtMs - lastDurableMs).toFixed(1)} ms before it`);
    for (const a of report.anomalies.slice(0, 20)) console.log(`kill primary: ${a}`);
    assert.ok(report.durableChecked >= KILL_AFTER_DURABLE, `${report.durableChecked} durable writes checked`);
    assert.equal(report.durableLost, 0, `durably acknowledged writes lost (seed ${seed})`);
    assert.equal(report.foreign, 0, `blocks holding bytes never written to them (seed ${seed})`);
    await r.stop();
  });
});
