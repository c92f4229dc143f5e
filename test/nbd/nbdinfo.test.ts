// The NBD server against a real client: libnbd's nbdinfo reads the
// negotiated facts (size, flags, block sizes, contexts), the export list and
// the allocation map, over TCP and through systemd socket activation
// (nbdinfo starts the server itself). Skipped, and counted so, when nbdinfo
// is not installed.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

import { MemoryBackend } from '../../lib/nbd/memory_backend';
import { NbdServer } from '../../lib/nbd/server';

const NBDINFO = '/usr/bin/nbdinfo';
const skip = fs.existsSync(NBDINFO) ? false : `${NBDINFO} is not installed (apt-get install libnbd-bin)`;
const MiB = 1 << 20;

function nbdinfo(args: string[]): Promise<string> {
  return new Promise((resolve, reject) =>
    execFile(NBDINFO, args, { encoding: 'utf8', timeout: 30_000 }, (err, stdout, stderr) =>
      err ? reject(new Error(`nbdinfo ${args.join(' ')}: ${err.message}\n${stderr}`)) : resolve(stdout),
    ),
  );
}

async function withServer(fn: (uri: string, disk: MemoryBackend) => Promise<void>): Promise<void> {
  const disk = new MemoryBackend({ sizeBytes: 4 * MiB });
  const ro = new MemoryBackend({ sizeBytes: MiB, readOnly: true });
  const server = new NbdServer({
    exports: [
      { name: 'disk', description: 'a memory disk', backend: disk },
      { name: 'ro', description: 'read-only', backend: ro },
    ],
  });
  const address = (await server.listen({ host: '127.0.0.1', port: 0 })) as { host: string; port: number };
  try {
    await fn(`nbd://127.0.0.1:${address.port}`, disk);
  } finally {
    await server.close();
  }
}

test('nbdinfo --json: size, flags, block sizes and contexts', { skip }, () =>
  withServer(async (uri) => {
    const info = JSON.parse(await nbdinfo(['--json', uri]));
    assert.equal(info.protocol, 'newstyle-fixed');
    assert.equal(info.structured, true);
    const e = info.exports[0];
    assert.equal(e['export-name'], 'disk', 'the empty name serves the first export');
    assert.equal(e.description, 'a memory disk');
    assert.equal(e['export-size'], 4 * MiB);
    assert.deepEqual(e.contexts, ['base:allocation']);
    const flags = ['is_read_only', 'is_rotational', 'can_cache', 'can_df', 'can_fast_zero', 'can_flush', 'can_fua', 'can_multi_conn', 'can_trim', 'can_zero'];
    assert.deepEqual(
      Object.fromEntries(flags.map((f) => [f, e[f]])),
      { is_read_only: false, is_rotational: false, can_cache: true, can_df: true, can_fast_zero: true, can_flush: true, can_fua: true, can_multi_conn: true, can_trim: true, can_zero: true },
    );
    assert.deepEqual([e.block_size_minimum, e.block_size_preferred, e.block_size_maximum], [1, 4096, 32 * MiB]);
    const ro = JSON.parse(await nbdinfo(['--json', `${uri}/ro`])).exports[0];
    assert.deepEqual([ro.is_read_only, ro.can_trim, ro.can_zero, ro.can_fua, ro.can_flush, ro['export-size']], [true, false, false, false, true, MiB]);
  }));

test('nbdinfo --list: every export with its description', { skip }, () =>
  withServer(async (uri) => {
    const list = JSON.parse(await nbdinfo(['--list', '--json', uri]));
    assert.deepEqual(
      list.exports.map((e: Record<string, unknown>) => [e['export-name'], e.description, e['export-size']]),
      [
        ['disk', 'a memory disk', 4 * MiB],
        ['ro', 'read-only', MiB],
      ],
    );
  }));

test('nbdinfo --map: data, zeroed (NO_HOLE) and hole extents after writes, zeroing and trims', { skip }, () =>
  withServer(async (uri, disk) => {
    await disk.write(0, Buffer.alloc(3 * 4096, 1), false);
    await disk.writeZeroes(MiB, MiB, { fua: false, noHole: true, fastZero: false });
    await disk.write(2 * MiB, Buffer.alloc(MiB, 2), false);
    await disk.trim(2 * MiB + 4096, MiB - 8192, false);
    await disk.writeZeroes(4096, 4096, { fua: false, noHole: false, fastZero: false });
    const map = JSON.parse(await nbdinfo(['--map', '--json', `${uri}/disk`]));
    assert.deepEqual(
      map.map((e: Record<string, number>) => [e.offset, e.length, e.type]),
      [
        [0, 4096, 0],
        [4096, 4096, 3],
        [8192, 4096, 0],
        [12288, MiB - 12288, 3],
        [MiB, MiB, 2],
        [2 * MiB, 4096, 0],
        [2 * MiB + 4096, MiB - 8192, 3],
        [3 * MiB - 4096, 4096, 0],
        [3 * MiB, MiB, 3],
      ],
    );
  }));

test('nbdinfo [ CMD ] (systemd socket activation): handleSocket serves an inherited listener', { skip }, async () => {
  const lib = path.join(__dirname, '..', '..', 'lib', 'nbd');
  const script = `
    const net = require('node:net');
    const { NbdServer } = require(${JSON.stringify(path.join(lib, 'server.js'))});
    const { MemoryBackend } = require(${JSON.stringify(path.join(lib, 'memory_backend.js'))});
    const backend = new MemoryBackend({ sizeBytes: 3 * 1048576 });
    const server = new NbdServer({ exports: [{ name: 'act', description: 'socket activation', backend }] });
    if (process.env.LISTEN_FDS !== '1' || process.env.LISTEN_PID !== String(process.pid)) process.exit(2);
    net.createServer((socket) => server.handleSocket(socket)).listen({ fd: 3 });`;
  const info = JSON.parse(await nbdinfo(['--json', '--', '[', process.execPath, '-e', script, ']']));
  assert.equal(info.exports[0]['export-size'], 3 * MiB);
  assert.equal(info.exports[0].description, 'socket activation');
  assert.equal((await nbdinfo(['--size', '--', '[', process.execPath, '-e', script, ']'])).trim(), String(3 * MiB));
});
