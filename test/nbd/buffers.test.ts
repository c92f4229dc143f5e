// Memory the NBD server hands back for reuse: a READ's result goes back to
// the backend (readDone) only once its reply has been written, and a WRITE
// payload from the I/O buffer pool only once the backend's promise has
// settled. Each test uses a backend that scribbles on memory as soon as it
// is handed back, with replies held in the socket (the client reads nothing
// until every request is sent): handed back too early, the client would see
// the scribble, or the backend a changed payload.
import { type TestContext, test } from 'node:test';
import * as assert from 'node:assert/strict';

import type { NbdBackend } from '../../lib/nbd/backend';
import { MemoryBackend } from '../../lib/nbd/memory_backend';
import { ChunkType, Cmd } from '../../lib/nbd/protocol';
import { NbdServer } from '../../lib/nbd/server';
import { ioBuffers } from '../../lib/util/buffer_pool';
import { type Chunk, RawClient, until } from './raw_client';

const MiB = 1 << 20;
const SCRIBBLE = 0xee;

function pattern(seed: number, bytes: number): Buffer {
  const b = Buffer.alloc(bytes);
  for (let i = 0; i < bytes; i += 4) b.writeUInt32LE((seed * 2654435761 + i) >>> 0, i);
  return b;
}

async function turns(n: number): Promise<void> {
  for (let i = 0; i < n; i++) await new Promise<void>((resolve) => setImmediate(resolve));
}

// Reads come back in fresh buffers it tracks; readDone checks each comes back
// once, then scribbles on it. Writes are checked at settle time against a
// copy taken at the call, a few turns later.
class ScribblingBackend implements NbdBackend {
  readonly inner = new MemoryBackend({ sizeBytes: 128 * MiB });
  readonly lent = new Set<Uint8Array>();
  readsDone = 0;
  readonly problems: string[] = [];
  readonly sizeBytes = this.inner.sizeBytes;
  readonly readOnly = false;

  async read(offsetBytes: number, lengthBytes: number): Promise<Uint8Array> {
    const data = Buffer.from(await this.inner.read(offsetBytes, lengthBytes));
    await turns(offsetBytes % 3);
    this.lent.add(data);
    return data;
  }

  readDone(data: Uint8Array): void {
    if (!this.lent.delete(data)) this.problems.push('readDone for a result not lent, or twice');
    this.readsDone++;
    data.fill(SCRIBBLE);
  }

  async write(offsetBytes: number, data: Uint8Array, fua: boolean): Promise<void> {
    const copy = Buffer.from(data);
    await turns(1 + (offsetBytes / MiB) % 4);
    if (!copy.equals(data)) this.problems.push(`the payload of the write at ${offsetBytes} changed before it settled`);
    await this.inner.write(offsetBytes, copy, fua);
  }

  flush(): Promise<void> {
    return this.inner.flush();
  }
  trim(offsetBytes: number, lengthBytes: number, fua: boolean): Promise<void> {
    return this.inner.trim(offsetBytes, lengthBytes, fua);
  }
  writeZeroes(offsetBytes: number, lengthBytes: number, options: Parameters<NbdBackend['writeZeroes']>[2]): Promise<void> {
    return this.inner.writeZeroes(offsetBytes, lengthBytes, options);
  }
  cache(offsetBytes: number, lengthBytes: number): Promise<void> {
    return this.inner.cache(offsetBytes, lengthBytes);
  }
  blockStatus(offsetBytes: number, lengthBytes: number): ReturnType<NbdBackend['blockStatus']> {
    return this.inner.blockStatus(offsetBytes, lengthBytes);
  }
}

// A server the test context closes however the test ends (a failed
// assertion leaves no connection holding the runner open).
async function start(t: TestContext, backend: NbdBackend): Promise<{ server: NbdServer; address: { host: string; port: number }; open: typeof RawClient.open }> {
  const server = new NbdServer({ exports: [{ name: 'disk', description: 'scribbles', backend }], maxBytesInFlight: 256 * MiB });
  const address = (await server.listen({ host: '127.0.0.1', port: 0 })) as { host: string; port: number };
  const clients: RawClient[] = [];
  t.after(async () => {
    for (const c of clients) c.destroy();
    await server.close();
  });
  const open: typeof RawClient.open = async (...args) => {
    const c = await RawClient.open(...args);
    clients.push(c);
    return c;
  };
  return { server, address, open };
}

for (const structured of [true, false]) {
  test(`READ results go back to the backend only after their replies are written (${structured ? 'structured' : 'simple'} replies)`, async (t) => {
    const backend = new ScribblingBackend();
    const count = 48;
    for (let i = 0; i < count; i++) await backend.inner.write(i * MiB, pattern(i + 1, MiB), false);
    const { server, address, open } = await start(t, backend);
    const c = await open(address, { structured });
    c.socket.pause(); // replies pile up in the server's socket
    for (let i = 0; i < count; i++) c.sendRequest({ type: Cmd.read, cookie: BigInt(i + 1), offset: BigInt(i * MiB), length: MiB });
    await until(() => server.stats().bytesInFlight >= 8 * MiB, 'replies to back up');
    c.socket.resume();
    const seen = new Set<bigint>();
    for (let i = 0; i < count; i++) {
      const r = structured ? await c.readChunk() : await c.readSimple(MiB);
      const data = structured ? (r as Chunk).data.subarray(8) : r.data;
      if (structured) assert.equal((r as Chunk).type, ChunkType.offsetData);
      const index = Number(r.cookie) - 1;
      assert.ok(data.equals(pattern(index + 1, MiB)), `read ${r.cookie} arrived intact`);
      seen.add(r.cookie);
    }
    assert.equal(seen.size, count);
    await until(() => backend.readsDone === count, 'every result to be handed back');
    assert.deepEqual(backend.problems, []);
    assert.equal(backend.lent.size, 0, 'nothing left lent');
    c.disconnect();
    await c.expectClosed();
  });
}

test('a client that vanishes with large reads pending: each result handed back at most once', async (t) => {
  const backend = new ScribblingBackend();
  const { server, address, open } = await start(t, backend);
  const c = await open(address);
  c.socket.pause();
  for (let i = 0; i < 64; i++) c.sendRequest({ type: Cmd.read, cookie: BigInt(i + 1), offset: BigInt(i * MiB), length: MiB });
  await until(() => backend.lent.size + backend.readsDone >= 16, 'reads to be served');
  c.destroy();
  await until(() => server.stats().connectionsOpen === 0, 'the connection to end');
  await turns(10);
  assert.deepEqual(backend.problems, []);
});

test('pooled WRITE payloads stay intact until the backend settles; 64 pipelined 1 MiB writes land intact', async (t) => {
  const backend = new ScribblingBackend();
  const { address, open } = await start(t, backend);
  const c = await open(address);
  const count = 64;
  for (let i = 0; i < count; i++) {
    c.sendRequest({ type: Cmd.write, cookie: BigInt(i + 1), offset: BigInt(i * MiB), payload: pattern(1000 + i, MiB) });
  }
  const seen = new Set<bigint>();
  for (let i = 0; i < count; i++) {
    const r = await c.readSimple();
    assert.equal(r.error, 0);
    seen.add(r.cookie);
  }
  assert.equal(seen.size, count);
  assert.deepEqual(backend.problems, []);
  for (let i = 0; i < count; i++) {
    const got = Buffer.from(await backend.inner.read(i * MiB, MiB));
    assert.ok(got.equals(pattern(1000 + i, MiB)), `megabyte ${i} holds its write, whole`);
  }
  assert.ok(ioBuffers.idleBytesHeld >= MiB, 'payloads went back to the pool');
  c.disconnect();
  await c.expectClosed();
});
