// A replication link over real loopback sockets: frames of every type both
// ways (a 1 MiB record, 1000 pipelined frames), bad input from a raw socket
// answered with ERROR bad_frame, every way a link closes (GOODBYE, ERROR,
// peer gone, idle timeout, a throwing onFrame) with onClose called once, and
// heartbeats keeping a quiet link open. No timing assertions: tests wait for
// events, and the timeout tests only use short timeouts.
import { afterEach, test } from 'node:test';
import * as assert from 'node:assert/strict';
import { once } from 'node:events';
import * as net from 'node:net';

import { encodeFrame, FRAME_HEADER_BYTES, WAL_RECORD_BYTES_MAX, type CloseFrame, type Frame } from '../../lib/replication/frames';
import { ReplicationLink, type LinkCloseReason, type LinkOptions } from '../../lib/replication/link';
import { bytesOf, decodeChunks, SAMPLES } from './frame_samples';

const HOST = '127.0.0.1';
const EPOCH = 7;
// Heartbeats far apart, so frame and byte counts are exact.
const QUIET: LinkOptions = { epoch: () => EPOCH, heartbeatIntervalMs: 60_000, idleTimeoutMs: 120_000 };
// Short timers, for the liveness tests.
const FAST: LinkOptions = { epoch: () => EPOCH, heartbeatIntervalMs: 25, idleTimeoutMs: 200 };
// No test waits forever on an event that never comes: it fails instead.
const BOUNDED = { timeout: 30_000 };
const HEARTBEAT_BYTES = FRAME_HEADER_BYTES + 8;
const COMMIT_BYTES = FRAME_HEADER_BYTES + 8;

// What a link delivered: frames, close reasons (to count them), the first close.
interface Watched {
  readonly frames: Frame[];
  readonly closes: LinkCloseReason[];
  readonly closed: Promise<LinkCloseReason>;
}

// Links and raw sockets of the running test, closed after it even when it
// failed half way (an open socket would keep the test process alive).
const opened: Array<ReplicationLink | net.Socket> = [];

afterEach(() => {
  for (const item of opened.splice(0)) {
    if (item instanceof ReplicationLink) item.close('shutdown', 'test cleanup');
    else item.destroy();
  }
});

function watch(link: ReplicationLink): Watched {
  opened.push(link);
  const frames: Frame[] = [];
  const closes: LinkCloseReason[] = [];
  const closed = new Promise<LinkCloseReason>((resolve) => {
    link.onClose = (reason) => {
      closes.push(reason);
      resolve(reason);
    };
  });
  link.onFrame = (frame) => frames.push(frame);
  return { frames, closes, closed };
}

async function sleep(ms: number): Promise<void> {
  await new Promise((resolve) => setTimeout(resolve, ms));
}

// Lets the event loop run until pred() holds; fails after a generous deadline.
async function until(pred: () => boolean, what: string | (() => string)): Promise<void> {
  for (let waitedMs = 0; !pred(); waitedMs += 5) {
    if (waitedMs > 20_000) assert.fail(`timed out waiting for ${typeof what === 'string' ? what : what()}`);
    await sleep(5);
  }
}

// A server on 127.0.0.1 port 0 that accepts one connection and then stops
// listening (the accepted socket lives on).
async function acceptOne(): Promise<{ port: number; accepted: Promise<net.Socket> }> {
  const server = net.createServer();
  server.listen(0, HOST);
  await once(server, 'listening');
  const accepted = once(server, 'connection').then(([socket]) => {
    server.close();
    return socket as net.Socket;
  });
  return { port: (server.address() as net.AddressInfo).port, accepted };
}

interface LinkPair {
  readonly client: ReplicationLink;
  readonly server: ReplicationLink;
  readonly clientSeen: Watched;
  readonly serverSeen: Watched;
}

async function linkPair(options: LinkOptions): Promise<LinkPair> {
  const { port, accepted } = await acceptOne();
  const client = await ReplicationLink.connect(HOST, port, options);
  const server = new ReplicationLink(await accepted, options);
  return { client, server, clientSeen: watch(client), serverSeen: watch(server) };
}

// Closes both links in order and waits for both onClose calls.
async function closePair(pair: LinkPair): Promise<void> {
  pair.client.close('shutdown', 'test done');
  await Promise.all([pair.clientSeen.closed, pair.serverSeen.closed]);
}

// A link on the server side of a connection whose client is a raw socket.
interface RawPeer {
  readonly link: ReplicationLink;
  readonly seen: Watched;
  readonly accepted: net.Socket; // the link's socket
  readonly raw: net.Socket;
  // Every frame the raw socket received, once the link ended the connection.
  readonly received: Promise<Frame[]>;
}

// allowHalfOpen: the raw socket does not end its side when the link ends.
async function rawPeer(options: LinkOptions, allowHalfOpen = false): Promise<RawPeer> {
  const { port, accepted: acceptedPromise } = await acceptOne();
  const raw = net.connect({ host: HOST, port, allowHalfOpen });
  opened.push(raw);
  raw.on('error', () => undefined); // a reset after the link closed is expected
  const chunks: Buffer[] = [];
  raw.on('data', (chunk: Buffer) => chunks.push(chunk));
  const received = new Promise<Frame[]>((resolve) => raw.on('end', () => resolve(decodeChunks(chunks))));
  await once(raw, 'connect');
  const accepted = await acceptedPromise;
  const link = new ReplicationLink(accepted, options);
  return { link, seen: watch(link), accepted, raw, received };
}

// ---- Frames both ways ----

test('frames of every type sent both ways arrive equal; heartbeats are counted, not delivered', BOUNDED, async () => {
  const pair = await linkPair(QUIET);
  const sent = SAMPLES.filter((frame) => frame.type !== 'error' && frame.type !== 'goodbye');
  const delivered = sent.filter((frame) => frame.type !== 'heartbeat');
  for (const frame of sent) {
    assert.equal(pair.client.send(frame), true);
    assert.equal(pair.server.send(frame), true);
  }
  await until(() => pair.clientSeen.frames.length === delivered.length && pair.serverSeen.frames.length === delivered.length, 'frames');
  assert.deepEqual(pair.serverSeen.frames, delivered);
  assert.deepEqual(pair.clientSeen.frames, delivered);
  const sentBytes = sent.reduce((sum, frame) => sum + encodeFrame(frame).length, 0);
  for (const link of [pair.client, pair.server]) {
    assert.equal(link.framesOut, sent.length);
    assert.equal(link.bytesOut, sentBytes);
  }
  await until(() => pair.server.framesIn === sent.length && pair.client.framesIn === sent.length, 'heartbeats counted');
  assert.equal(pair.server.bytesIn, sentBytes);
  assert.equal(pair.client.bytesIn, sentBytes);

  const errorSample = SAMPLES.find((frame): frame is CloseFrame => frame.type === 'error')!;
  pair.server.close(errorSample.code, errorSample.message);
  assert.deepEqual(await pair.clientSeen.closed, { kind: 'peer_closed', code: errorSample.code, message: errorSample.message });
  assert.deepEqual(await pair.serverSeen.closed, { kind: 'local', code: errorSample.code, message: errorSample.message });
});

test('a WAL_RECORDS frame with a 1 MiB record arrives intact, and send() reports back-pressure until onDrain', BOUNDED, async () => {
  const pair = await linkPair(QUIET);
  const frame: Frame = {
    type: 'wal_records',
    epoch: EPOCH,
    records: [
      { lsn: 1, bytes: bytesOf(WAL_RECORD_BYTES_MAX, 11) },
      { lsn: 2, bytes: bytesOf(100, 12) },
    ],
  };
  let drains = 0;
  pair.client.onDrain = () => drains++;
  assert.equal(pair.client.send(frame), false, 'a 1 MiB frame is over the socket high-water mark');
  await until(() => pair.serverSeen.frames.length === 1, 'the large frame');
  assert.deepEqual(pair.serverSeen.frames, [frame]);
  await until(() => drains === 1, 'onDrain');
  assert.equal(pair.client.bytesBuffered, 0);
  assert.equal(pair.server.bytesIn, pair.client.bytesOut);
  assert.equal(pair.client.bytesOut, encodeFrame(frame).length);
  await closePair(pair);
});

// The link's socket with its writes counted (each _write or _writev call is
// one write to the kernel), chunks per write.
function countWrites(socket: net.Socket): number[] {
  type Hooks = { _write: (...args: unknown[]) => void; _writev: (...args: unknown[]) => void };
  const s = socket as unknown as Hooks;
  const counts: number[] = [];
  const write = s._write.bind(socket);
  const writev = s._writev.bind(socket);
  s._write = (...args: unknown[]) => {
    counts.push(1);
    write(...args);
  };
  s._writev = (...args: unknown[]) => {
    counts.push((args[0] as unknown[]).length);
    writev(...args);
  };
  return counts;
}

test('batch(): the frames sent inside it leave in one socket write, in order', BOUNDED, async () => {
  const peer = await rawPeer(QUIET);
  const writes = countWrites(peer.accepted);
  const frames: Frame[] = [
    { type: 'wal_records', epoch: EPOCH, records: [{ lsn: 1, bytes: bytesOf(100, 1) }, { lsn: 2, bytes: bytesOf(300, 2) }] },
    { type: 'sync', epoch: EPOCH, lsnSync: 2 },
    { type: 'commit', epoch: EPOCH, lsnCommit: 2 },
  ];
  peer.link.batch(() => {
    for (const frame of frames) peer.link.send(frame);
  });
  assert.equal(writes.length, 1, `one write: ${JSON.stringify(writes)}`);
  peer.link.close('shutdown', 'done');
  const received = await peer.received;
  assert.deepEqual(received.slice(0, frames.length), frames);
});

test('1000 small frames pipelined both ways arrive in order', BOUNDED, async () => {
  const pair = await linkPair(QUIET);
  const frames: Frame[] = Array.from({ length: 1000 }, (_, i) => ({ type: 'commit', epoch: EPOCH, lsnCommit: i + 1 }));
  for (const frame of frames) {
    pair.client.send(frame);
    pair.server.send(frame);
  }
  await until(() => pair.clientSeen.frames.length === 1000 && pair.serverSeen.frames.length === 1000, '1000 frames each way');
  assert.deepEqual(pair.serverSeen.frames, frames);
  assert.deepEqual(pair.clientSeen.frames, frames);
  for (const link of [pair.client, pair.server]) {
    assert.equal(link.framesOut, 1000);
    assert.equal(link.framesIn, 1000);
    assert.equal(link.bytesOut, 1000 * COMMIT_BYTES);
    assert.equal(link.bytesIn, 1000 * COMMIT_BYTES);
  }
  await closePair(pair);
});

// ---- Bad input ----

test('garbage bytes close the link with bad_frame, and the peer gets ERROR bad_frame before the end', BOUNDED, async () => {
  const peer = await rawPeer(QUIET);
  peer.raw.write(Buffer.alloc(64, 0xab));
  const reason = await peer.seen.closed;
  assert.ok(reason.kind === 'bad_frame', `closed with ${reason.kind}`);
  assert.equal(reason.error.code, 'ERR_FRAME_MAGIC');
  assert.deepEqual(await peer.received, [{ type: 'error', epoch: EPOCH, code: 'bad_frame', message: reason.error.message }]);
  assert.deepEqual(peer.seen.frames, []);
  assert.equal(peer.link.closed, true);
});

test('a frame with a flipped checksum byte closes the link with bad_frame after the good frame before it', BOUNDED, async () => {
  const peer = await rawPeer(QUIET);
  const good = SAMPLES.find((frame) => frame.type === 'commit')!;
  const bad = encodeFrame(good);
  bad[FRAME_HEADER_BYTES - 1]! ^= 0x10;
  peer.raw.write(Buffer.concat([encodeFrame(good), bad]));
  const reason = await peer.seen.closed;
  assert.ok(reason.kind === 'bad_frame', `closed with ${reason.kind}`);
  assert.equal(reason.error.code, 'ERR_FRAME_CHECKSUM');
  assert.deepEqual(peer.seen.frames, [good]);
  assert.deepEqual(await peer.received, [{ type: 'error', epoch: EPOCH, code: 'bad_frame', message: reason.error.message }]);
});

// ---- Closing ----

test('the peer sending GOODBYE closes the link with peer_closed shutdown', BOUNDED, async () => {
  const pair = await linkPair(QUIET);
  const goodbye = SAMPLES.find((frame): frame is CloseFrame => frame.type === 'goodbye')!;
  pair.client.close(goodbye.code, 'node stopping', 'goodbye');
  assert.deepEqual(await pair.serverSeen.closed, { kind: 'peer_closed', code: 'shutdown', message: 'node stopping' });
  assert.deepEqual(await pair.clientSeen.closed, { kind: 'local', code: 'shutdown', message: 'node stopping' });
  assert.deepEqual(pair.serverSeen.frames, []);
});

test('close() sends GOODBYE for an orderly code and ERROR otherwise, stamped with the current epoch', BOUNDED, async () => {
  let epoch = 3;
  const orderly = await rawPeer({ ...QUIET, epoch: () => epoch });
  epoch = 9; // read at send time
  orderly.link.close('stepping_down', 'higher epoch seen');
  assert.deepEqual(await orderly.received, [{ type: 'goodbye', epoch: 9, code: 'stepping_down', message: 'higher epoch seen' }]);

  const failing = await rawPeer(QUIET);
  failing.link.close('wrong_volume', 'x'.repeat(5000));
  const [frame] = await failing.received;
  assert.ok(frame?.type === 'error');
  assert.equal(frame.code, 'wrong_volume');
  assert.equal(frame.message, 'x'.repeat(1024), 'the message is cut to fit the frame');
  assert.deepEqual(await failing.seen.closed, { kind: 'local', code: 'wrong_volume', message: 'x'.repeat(5000) });
});

test('the peer socket destroyed closes the link with peer_closed', BOUNDED, async () => {
  const peer = await rawPeer(QUIET);
  peer.raw.destroy();
  const reason = await peer.seen.closed;
  assert.equal(reason.kind, 'peer_closed');
  assert.ok(reason.kind === 'peer_closed' && reason.code === undefined);
  assert.equal(peer.link.send(SAMPLES[3]!), false, 'sending on a closed link is a no-op');
});

test('a peer that does not end its side is destroyed after the linger', BOUNDED, async () => {
  const peer = await rawPeer(QUIET, true);
  let socketClosed = false;
  peer.accepted.on('close', () => (socketClosed = true));
  peer.link.close('shutdown', 'bye');
  assert.deepEqual(await peer.received, [{ type: 'goodbye', epoch: EPOCH, code: 'shutdown', message: 'bye' }]);
  assert.equal(peer.raw.writableEnded, false, 'the raw peer keeps its side open');
  await until(() => socketClosed, 'the link to destroy its socket after the linger');
});

test('onClose is called exactly once when close() is called twice and the peer also closes', BOUNDED, async () => {
  const pair = await linkPair(QUIET);
  pair.client.close('shutdown', 'first');
  pair.client.close('stale_epoch', 'second');
  pair.server.close('reassigned', 'peer too');
  assert.equal(pair.client.closed, true);
  assert.equal(pair.clientSeen.closes.length, 0, 'onClose runs on a later tick, not inside close()');
  await Promise.all([pair.clientSeen.closed, pair.serverSeen.closed]);
  await untilNoHandles();
  assert.deepEqual(pair.clientSeen.closes, [{ kind: 'local', code: 'shutdown', message: 'first' }]);
  assert.deepEqual(pair.serverSeen.closes, [{ kind: 'local', code: 'reassigned', message: 'peer too' }]);
  assert.equal(pair.client.send(SAMPLES[3]!), false);
});

test('an onFrame that throws closes the link with a local bad_frame reason and the process survives', BOUNDED, async () => {
  const pair = await linkPair(QUIET);
  let calls = 0;
  pair.server.onFrame = () => {
    calls++;
    throw new Error('handler failed');
  };
  pair.client.send(SAMPLES[2]!);
  pair.client.send(SAMPLES[3]!);
  assert.deepEqual(await pair.serverSeen.closed, { kind: 'local', code: 'bad_frame', message: 'handler failed' });
  assert.deepEqual(await pair.clientSeen.closed, { kind: 'peer_closed', code: 'bad_frame', message: 'handler failed' });
  assert.equal(calls, 1, 'nothing is delivered after the link closed');
});

// ---- Liveness ----

test('a raw peer that sends nothing is closed with timeout, after the link sent it heartbeats', BOUNDED, async () => {
  const peer = await rawPeer(FAST);
  const reason = await peer.seen.closed;
  assert.equal(reason.kind, 'timeout');
  const received = await peer.received;
  assert.ok(received.length >= 1, 'heartbeats were sent while nothing else was');
  received.forEach((frame, i) => assert.deepEqual(frame, { type: 'heartbeat', epoch: EPOCH, sequence: i + 1 }));
});

test('heartbeats keep an otherwise idle link open past several idle timeouts', BOUNDED, async () => {
  const pair = await linkPair(FAST);
  await sleep(5 * FAST.idleTimeoutMs!);
  assert.equal(pair.client.closed, false);
  assert.equal(pair.server.closed, false);
  assert.deepEqual(pair.clientSeen.closes, []);
  assert.deepEqual(pair.serverSeen.closes, []);
  assert.deepEqual(pair.clientSeen.frames, [], 'heartbeats are not delivered');
  for (const link of [pair.client, pair.server]) {
    assert.ok(link.framesIn >= 2, `${link.framesIn} heartbeats received`);
    assert.equal(link.bytesIn, link.framesIn * HEARTBEAT_BYTES);
  }
  await closePair(pair);
});

test('a closed link leaves no socket or timer keeping the process alive', BOUNDED, async () => {
  const pair = await linkPair(FAST);
  pair.client.send(SAMPLES[3]!);
  await until(() => pair.serverSeen.frames.length === 1, 'a frame');
  await closePair(pair);
  await untilNoHandles();
});

// ---- Connecting and options ----

test('connect() to a closed port rejects with a message naming host:port', BOUNDED, async () => {
  const { port } = await closedPort();
  await assert.rejects(ReplicationLink.connect(HOST, port, QUIET), (error: unknown) => {
    assert.ok(error instanceof Error);
    assert.match(error.message, new RegExp(`${HOST.replaceAll('.', '\\.')}:${port}`));
    assert.match(error.message, /ECONNREFUSED/);
    return true;
  });
});

test('options are checked before anything is done', BOUNDED, async () => {
  const socket = new net.Socket();
  assert.throws(() => new ReplicationLink(socket, { epoch: undefined as unknown as () => number }), TypeError);
  assert.throws(() => new ReplicationLink(socket, { epoch: () => 1, heartbeatIntervalMs: 200, idleTimeoutMs: 200 }), /below idleTimeoutMs/);
  assert.throws(() => new ReplicationLink(socket, { epoch: () => 1, idleTimeoutMs: 0 }), RangeError);
  // Only an idle timeout given: the default heartbeat shrinks to fit it.
  new ReplicationLink(socket, { epoch: () => 1, idleTimeoutMs: 100 }).close('shutdown', 'done');
  assert.throws(() => new ReplicationLink(socket, { epoch: () => 1, bodyBytesMax: 1 }), RangeError);
  await assert.rejects(ReplicationLink.connect(HOST, 1, { ...QUIET, connectTimeoutMs: -1 }), RangeError);
  await assert.rejects(ReplicationLink.connect(HOST, 0, QUIET), RangeError);
  socket.destroy();
});

async function closedPort(): Promise<{ port: number }> {
  const server = net.createServer();
  server.listen(0, HOST);
  await once(server, 'listening');
  const { port } = server.address() as net.AddressInfo;
  server.close();
  await once(server, 'close');
  return { port };
}

// Waits until no TCP handle or ref'd timer is left (the links' timers are
// unref'd, so this sees the sockets; a leaked linger would keep one open).
async function untilNoHandles(): Promise<void> {
  const alive = (): string[] => process.getActiveResourcesInfo().filter((type) => /^(TCP|Timeout)/.test(type));
  await until(
    () => alive().length === 0,
    () => `sockets and ref'd timers to close (${alive().join(', ')})`,
  );
}
