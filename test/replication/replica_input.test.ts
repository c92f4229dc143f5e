// Bad input on a replica's link, in one process: a ReplicaReplication fed by
// a hand-driven ReplicationLink. Every bad frame or record closes that link
// with a reason, leaves the volume exactly as it was, and the replica then
// takes a good primary as if nothing had happened.
import { once } from 'node:events';
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as net from 'node:net';

import { encodeRecord } from '../../lib/native/wal_format';
import { APPLY_CHECKSUM_INITIAL } from '../../lib/replication/apply_checksum';
import { FrameDecoder } from '../../lib/replication/frame_decoder';
import { type Frame, encodeFrame } from '../../lib/replication/frames';
import { connect, type Fixture, hello, until, withReplica } from '../support/replica_link';

// After bad input: nothing changed, and a good primary is served in full.
async function goodPrimaryWorks(f: Fixture): Promise<void> {
  const { link, frames } = await connect(f.receiver);
  link.send(hello(f.source));
  await until(() => frames.some((x) => x.type === 'hello'));
  const from = f.replica.lsnReceived;
  link.send({ type: 'wal_records', epoch: f.source.epoch, records: f.shipped.slice(from).map((r) => ({ lsn: r.lsn, bytes: r.bytes })) });
  link.send({ type: 'commit', epoch: f.source.epoch, lsnCommit: f.source.lsnHead });
  await until(() => f.replica.lsnApplied === f.source.lsnHead);
  assert.equal(f.replica.applyChecksum, f.source.applyChecksum);
  assert.deepEqual(await f.replica.read(0, 64 * 1024), await f.source.read(0, 64 * 1024));
  link.close('shutdown', 'done');
}

test('bad frames and bad records close the link with a reason and change nothing', () =>
  withReplica(async (f) => {
    for (let i = 0; i < 8; i++) await f.source.write(i * 4096, Buffer.alloc(4096, 1 + i));
    const records = f.shipped.map((r) => ({ lsn: r.lsn, bytes: r.bytes }));
    const flipped = Buffer.from(records[0]!.bytes);
    flipped[200]! ^= 0x40;
    const beyond = encodeRecord({ kind: 'write', epoch: 1, lsn: 1, lba: 2048, lengthBlocks: 1 }, Buffer.alloc(4096, 9));

    const cases: { name: string; frames: (Frame | Buffer)[]; reason: RegExp }[] = [
      { name: 'records before HELLO', frames: [{ type: 'wal_records', epoch: 1, records: records.slice(0, 1) }], reason: /before HELLO/ },
      { name: 'a replica greeting a replica', frames: [hello(f.source, { role: 'replica' })], reason: /only a primary/ },
      { name: 'an LSN gap', frames: [hello(f.source), { type: 'wal_records', epoch: 1, records: records.slice(1, 2) }], reason: /received LSN 2, expected 1/ },
      { name: 'a record whose checksum fails', frames: [hello(f.source), { type: 'wal_records', epoch: 1, records: [{ lsn: 1, bytes: flipped }] }], reason: /does not verify/ },
      { name: 'a record beyond the volume', frames: [hello(f.source), { type: 'wal_records', epoch: 1, records: [{ lsn: 1, bytes: beyond }] }], reason: /beyond this volume/ },
      { name: 'garbage bytes', frames: [Buffer.from('GET / HTTP/1.1\r\n\r\n'.padEnd(64, 'x'))], reason: /magic|bad frame/i },
      { name: 'an ACK from a primary', frames: [hello(f.source), { type: 'ack', epoch: 1, lsnReceived: 0, lsnDurable: 0, lsnApplied: 0, applyChecksum: APPLY_CHECKSUM_INITIAL, lsnCheckpoint: 0 }], reason: /unexpected ack/ },
    ];
    for (const c of cases) {
      const raw = net.connect(f.receiver.port, '127.0.0.1');
      await new Promise<void>((resolve) => raw.once('connect', () => resolve()));
      const received: Buffer[] = [];
      raw.on('data', (d: Buffer) => received.push(d));
      const ended = new Promise<void>((resolve) => raw.once('close', () => resolve()));
      for (const fr of c.frames) raw.write(Buffer.isBuffer(fr) ? fr : encodeFrame(fr));
      await ended;
      const text = Buffer.concat(received).toString('latin1');
      assert.match(text, c.reason, `${c.name}: the ERROR frame says why (${JSON.stringify(text.slice(-200))})`);
      assert.equal(f.replica.lsnReceived, 0, `${c.name}: nothing received`);
      assert.equal(f.replica.lsnApplied, 0, `${c.name}: nothing applied`);
      assert.equal(f.replica.status().failure, undefined, `${c.name}: the volume did not fail`);
    }
    await goodPrimaryWorks(f);

    // Holding data now, the replica refuses a primary of another volume.
    const other = await connect(f.receiver);
    other.link.send(hello(f.source, { volumeUuid: 'ab'.repeat(16) }));
    const reason = await other.closed;
    assert.equal((reason as { code?: string }).code, 'wrong_volume');
    assert.match((reason as { message: string }).message, /holds volume/);
    assert.equal(f.replica.uuid, f.source.uuid);
    assert.equal(f.replica.lsnApplied, f.source.lsnHead);
  }));

test('a pristine replica takes the volume identity of the first primary that greets it', () =>
  withReplica(async (f) => {
    assert.notEqual(f.replica.uuid, f.source.uuid);
    await f.source.write(0, Buffer.alloc(4096, 1));
    await goodPrimaryWorks(f);
    assert.equal(f.replica.uuid, f.source.uuid);
  }));

test('a lower epoch is refused; a higher one is persisted before the frame is acted on', () =>
  withReplica(async (f) => {
    await f.source.write(0, Buffer.alloc(4096, 7));
    await f.replica.setEpoch(3);
    const stale = await connect(f.receiver);
    stale.link.send(hello(f.source, { epoch: 2 }));
    const reason = await stale.closed;
    assert.equal(reason.kind, 'peer_closed');
    assert.equal((reason as { code?: string }).code, 'stale_epoch');
    assert.equal(f.receiver.status().framesRefused, 1);
    assert.equal(f.replica.lsnReceived, 0);

    const newer = await connect(f.receiver);
    newer.link.send(hello(f.source, { epoch: 5 }));
    await until(() => newer.frames.some((x) => x.type === 'hello'));
    const answer = newer.frames.find((x) => x.type === 'hello')!;
    assert.equal(answer.epoch, 5, 'the replica answers in the adopted epoch');
    assert.equal(f.replica.epoch, 5, 'and has persisted it');
    newer.link.close('shutdown', 'done');
  }));

test('a second primary link replaces the first; the first gets nothing more in', () =>
  withReplica(async (f) => {
    for (let i = 0; i < 4; i++) await f.source.write(i * 4096, Buffer.alloc(4096, 3 + i));
    const first = await connect(f.receiver);
    first.link.send(hello(f.source));
    await until(() => first.frames.some((x) => x.type === 'hello'));
    const second = await connect(f.receiver);
    second.link.send(hello(f.source));
    const reason = await first.closed;
    assert.equal((reason as { code?: string }).code, 'reassigned');
    await until(() => second.frames.some((x) => x.type === 'hello'));
    second.link.close('shutdown', 'done');
    await goodPrimaryWorks(f);
  }));

test('records and the SYNC right behind them in one read go to the WAL with RWF_DSYNC, with no fdatasync after', () =>
  withReplica(async (f) => {
    for (let i = 0; i < 4; i++) await f.source.write(i * 4096, Buffer.alloc(4096, 5 + i));
    const raw = net.connect(f.receiver.port, '127.0.0.1');
    await once(raw, 'connect');
    const decoder = new FrameDecoder();
    const frames: Frame[] = [];
    raw.on('data', (d: Buffer) => {
      decoder.push(d);
      for (let fr = decoder.next(); fr !== undefined; fr = decoder.next()) frames.push(fr);
    });
    raw.write(encodeFrame(hello(f.source)));
    await until(() => frames.some((x) => x.type === 'hello'));
    const before = f.replica.status();
    const records = f.shipped.map((r) => ({ lsn: r.lsn, bytes: r.bytes }));
    const last = records.at(-1)!.lsn;
    // One write: the replica reads both frames at once, as it does a FLUSH
    // that followed a write on the primary.
    raw.write(Buffer.concat([
      encodeFrame({ type: 'wal_records', epoch: f.source.epoch, records }),
      encodeFrame({ type: 'sync', epoch: f.source.epoch, lsnSync: last }),
    ]));
    await until(() => frames.some((x) => x.type === 'ack' && x.lsnDurable >= last));
    const after = f.replica.status();
    const groups = after.walGroupWrites - before.walGroupWrites;
    assert.ok(groups >= 1, 'the records were written');
    assert.equal(after.walDsyncGroupWrites - before.walDsyncGroupWrites, groups, 'every group with RWF_DSYNC');
    assert.equal(after.walSyncs - before.walSyncs, 0, 'no fdatasync');
    assert.equal(f.replica.lsnDurable, last);
    raw.destroy();
  }));

// The WAL group hold: records nobody waits on stay in one open group; the
// SYNC a FLUSH sends ends the hold at once. The hold here is a minute and
// the test's timeout half that, so a SYNC that waited for it fails the test.
test('a replica holds records nobody waits on in one open WAL group, and a SYNC in a later read ends the hold at once', { timeout: 30_000 }, () =>
  withReplica(async (f) => {
    for (let i = 0; i < 4; i++) await f.source.write(i * 4096, Buffer.alloc(4096, 9 + i));
    const { link, frames } = await connect(f.receiver);
    link.send(hello(f.source));
    await until(() => frames.some((x) => x.type === 'hello'));
    const before = f.replica.status();
    const records = f.shipped.map((r) => ({ lsn: r.lsn, bytes: r.bytes }));
    const last = records.at(-1)!.lsn;
    link.send({ type: 'wal_records', epoch: f.source.epoch, records });
    await until(() => frames.some((x) => x.type === 'ack' && x.lsnReceived >= last));
    for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
    assert.equal(f.replica.status().walGroupWrites, before.walGroupWrites, 'received and acknowledged, and still held');
    link.send({ type: 'sync', epoch: f.source.epoch, lsnSync: last });
    await until(() => frames.some((x) => x.type === 'ack' && x.lsnDurable >= last));
    const after = f.replica.status();
    assert.equal(after.walGroupWrites - before.walGroupWrites, 1, 'the four records went as one group');
    assert.equal(after.walDsyncGroupWrites - before.walDsyncGroupWrites, 1, 'with RWF_DSYNC');
    assert.equal(f.replica.lsnDurable, last);
    link.close('shutdown', 'done');
  }, 60_000_000));
