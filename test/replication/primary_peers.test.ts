// The primary's side against scripted replicas, in one process: a fake
// replica (a listening socket and a ReplicationLink) answers the primary's
// HELLO as the test says. Checks the peer lifecycle (reconnecting with a
// bounded backoff, needs_catchup, failed), what bad answers do (an ACK for
// records never sent, a divergent apply checksum, a higher epoch) and that
// close() in the middle of any of it leaves nothing running.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as net from 'node:net';
import * as path from 'node:path';

import pino from 'pino';

import { Volume } from '../../lib/engine/volume';
import type { Frame, HelloFrame } from '../../lib/replication/frames';
import { ReplicationLink } from '../../lib/replication/link';
import { type DurabilityMode, PrimaryReplication, type ReplicaPeerStatus } from '../../lib/replication/primary';
import { tempDir } from '../support/tmp';

const MiB = 1 << 20;
const silent = pino({ level: 'silent' });

type Script = (frame: Frame, link: ReplicationLink) => void;

// A replica that answers with script; every link it accepted is kept.
async function fakeReplica(script: Script): Promise<{ port: number; links: ReplicationLink[]; close: () => Promise<void> }> {
  const links: ReplicationLink[] = [];
  const server = net.createServer((socket) => {
    const link = new ReplicationLink(socket, { epoch: () => 1, logger: silent });
    links.push(link);
    link.onFrame = (frame) => script(frame, link);
    link.onClose = () => undefined;
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  const port = (server.address() as net.AddressInfo).port;
  return {
    port,
    links,
    close: async () => {
      for (const l of links) l.close('shutdown', 'test over');
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

function replicaHello(to: HelloFrame, overrides: Partial<HelloFrame> = {}): HelloFrame {
  return { ...to, role: 'replica', nodeId: 'fake', lsnDurable: 0, lsnApplied: 0, lsnTail: 0, lsnHead: 0, applyChecksum: 0n, ...overrides };
}

async function withPrimary(
  replicas: number[],
  options: { durability?: DurabilityMode; backlogBytes?: number },
  fn: (ctx: { volume: Volume; primary: PrimaryReplication; peer: () => ReplicaPeerStatus }) => Promise<void>,
): Promise<void> {
  const { dir, cleanup } = tempDir('repl-primary');
  let primary: PrimaryReplication | undefined;
  const volume = await Volume.create(path.join(dir, 'p'), {
    sizeBytes: 8 * MiB,
    walSegmentBytes: MiB,
    walSegmentsMax: 16,
    flushIdleMs: 0,
    onRecord: (r) => primary?.onRecord(r),
  });
  try {
    primary = await PrimaryReplication.start({
      volume,
      nodeId: 'p',
      replicas: replicas.map((port) => ({ host: '127.0.0.1', port })),
      durability: options.durability ?? 'best_effort',
      logger: silent,
      backlogBytes: options.backlogBytes,
      reconnectMinMs: 20,
      reconnectMaxMs: 80,
      ackTimeoutMs: 60_000,
    });
    await fn({ volume, primary, peer: () => primary!.status().replicas[0]! });
  } finally {
    await primary?.close();
    await volume.close();
    cleanup();
  }
}

async function until(what: string, pred: () => boolean): Promise<void> {
  for (let i = 0; i < 12000 && !pred(); i++) await new Promise((r) => setTimeout(r, 5)); // up to a minute on a loaded host
  assert.ok(pred(), `never reached: ${what}`);
}

test('nothing listening: the peer keeps reconnecting with a bounded backoff, and close() in the middle leaves nothing running', async () => {
  const probe = net.createServer();
  await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', () => resolve()));
  const port = (probe.address() as net.AddressInfo).port;
  await new Promise<void>((resolve) => probe.close(() => resolve()));
  await withPrimary([port], {}, async ({ peer, volume }) => {
    await until('reconnecting', () => peer().state === 'reconnecting');
    assert.match(peer().reason ?? '', /connect failed/);
    // best_effort: writes are acknowledged while the replica is away.
    await volume.write(0, Buffer.alloc(4096, 1));
    await new Promise((r) => setTimeout(r, 300));
    assert.ok(['reconnecting', 'connecting'].includes(peer().state), `still trying: ${peer().state}`);
    assert.equal(peer().connects, 0);
  });
});

test('a replica behind the backlog is reported needs_catchup; a current one streams and gets every record', async () => {
  const received: number[] = [];
  let away = false; // the replica refuses the primary meanwhile
  let hellos = 0;
  const fake = await fakeReplica((frame, link) => {
    if (frame.type === 'hello') {
      hellos++;
      if (away) link.close('shutdown', 'away');
      else link.send(replicaHello(frame, { lsnHead: received.length }));
    }
    if (frame.type === 'wal_records') {
      for (const r of frame.records) received.push(r.lsn);
      const last = frame.records[frame.records.length - 1]!.lsn;
      link.send({ type: 'ack', epoch: 1, lsnReceived: last, lsnDurable: last, lsnApplied: 0, applyChecksum: 0n });
    }
  });
  try {
    await withPrimary([fake.port], { backlogBytes: 64 * 1024 }, async ({ volume, peer }) => {
      await until('streaming', () => peer().state === 'streaming');
      for (let i = 0; i < 8; i++) await volume.write(i * 4096, Buffer.alloc(4096, i + 1));
      await until('all received', () => received.length === 8);
      assert.deepEqual(received, [1, 2, 3, 4, 5, 6, 7, 8]);
      // Cut the link, write past what the backlog holds: the replica at LSN 8
      // cannot be fed from memory any more.
      away = true;
      fake.links[0]!.close('shutdown', 'away');
      await until('reconnecting', () => peer().state !== 'streaming');
      for (let i = 0; i < 40; i++) await volume.write(i * 4096, Buffer.alloc(4096, 100 + i));
      assert.equal(received.length, 8, 'nothing reached the replica while it was away');
      const before = hellos;
      away = false; // back, at LSN 8; the backlog now starts far above 9
      await until('needs_catchup', () => peer().state === 'needs_catchup' && hellos > before);
      assert.match(peer().reason ?? '', /replica is at LSN 8; the in-memory backlog starts at \d+/);
    });
  } finally {
    await fake.close();
  }
});

test('an ACK for records never sent closes the link; a divergent apply checksum fails the replica with an alarm', async () => {
  let mode: 'ack_ahead' | 'bad_chain' = 'ack_ahead';
  const fake = await fakeReplica((frame, link) => {
    if (frame.type !== 'hello') return;
    if (mode === 'ack_ahead') {
      link.send(replicaHello(frame));
      link.send({ type: 'ack', epoch: 1, lsnReceived: 99, lsnDurable: 99, lsnApplied: 0, applyChecksum: 0n });
    } else {
      link.send(replicaHello(frame, { lsnHead: frame.lsnHead, lsnApplied: frame.lsnApplied, applyChecksum: frame.applyChecksum ^ 1n }));
    }
  });
  try {
    await withPrimary([fake.port], {}, async ({ volume, peer }) => {
      await until('a link was closed for the bad ACK', () => peer().connects >= 1 && peer().state !== 'streaming' && peer().state !== 'connecting');
      mode = 'bad_chain';
      await volume.write(0, Buffer.alloc(4096, 1));
      await until('failed', () => peer().state === 'failed');
      assert.match(peer().reason ?? '', /apply checksum mismatch at LSN 1/);
    });
  } finally {
    await fake.close();
  }
});

test('a replica at a higher epoch fences the primary: pending and later writes are refused', async () => {
  let answer = false;
  const fake = await fakeReplica((frame, link) => {
    if (frame.type === 'hello' && answer) link.send(replicaHello(frame, { epoch: frame.epoch + 1 }));
  });
  try {
    await withPrimary([fake.port], { durability: 'sync_all' }, async ({ volume, primary }) => {
      await until('the primary connected', () => fake.links.length >= 1);
      const lsn = await volume.write(0, Buffer.alloc(4096, 1));
      const pending = primary.written(lsn, false);
      answer = true;
      fake.links[0]!.close('shutdown', 'again'); // the primary reconnects and meets epoch 2
      await assert.rejects(pending, { code: 'ERR_FENCED' });
      assert.equal(primary.status().mode, 'fenced');
      assert.throws(() => primary.admit(), { code: 'ERR_FENCED' });
      await assert.rejects(primary.flushed(lsn), { code: 'ERR_FENCED' });
    });
  } finally {
    await fake.close();
  }
});
