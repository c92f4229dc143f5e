// nbdinfo against a served volume: what the export advertises (size, name,
// description, every transmission flag, block size constraints), its
// base:allocation map after known writes, trims and zeroing (live, then
// again from base.img after a clean restart, and NO_HOLE zeroing on its
// own), and a read-only export.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';

import { XXHash3 } from 'xxhash-addon';

import { describeRun, runProgram } from '../support/nbd_server_process';
import { KiB, MiB, mustRun, mustRunCli, qemuIo, servedVolume, skipUnlessTools, startServer, stopCleanly, withScope } from './harness';

interface ExportInfo {
  'export-name': string;
  description?: string;
  'export-size': number;
  contexts?: string[];
  is_read_only: boolean;
  is_rotational: boolean;
  can_cache: boolean;
  can_df: boolean;
  can_fast_zero: boolean;
  can_flush: boolean;
  can_fua: boolean;
  can_multi_conn: boolean;
  can_trim: boolean;
  can_zero: boolean;
  block_size_minimum?: number;
  block_size_preferred?: number;
  block_size_maximum?: number;
}

interface MapExtent {
  offset: number;
  length: number;
  type: number; // bit 0: hole, bit 1: zero
  description: string;
}

const TYPE_DATA = 0;
const TYPE_ZERO = 2;
const TYPE_HOLE_ZERO = 3;

async function exportInfo(args: string[]): Promise<ExportInfo> {
  const r = await mustRun('nbdinfo', ['--json', ...args]);
  const doc = JSON.parse(r.stdout) as { exports: ExportInfo[]; structured?: boolean };
  assert.equal(doc.exports.length, 1, r.stdout);
  return doc.exports[0]!;
}

async function volumeUuid(volumeDir: string): Promise<string> {
  const r = await mustRunCli(['status', volumeDir, '--json']);
  const doc = JSON.parse(r.stdout) as { served?: { volumes: { uuid: string }[] } };
  assert.ok(doc.served !== undefined, `status of a served volume should come from the server: ${r.stdout}`);
  return doc.served.volumes[0]!.uuid;
}

// The map with neighbours of equal type merged (a server may split extents anywhere).
async function allocationMap(uri: string, sizeBytes: number): Promise<MapExtent[]> {
  const r = await mustRun('nbdinfo', ['--map', '--json', uri]);
  const merged: MapExtent[] = [];
  let pos = 0;
  for (const e of JSON.parse(r.stdout) as MapExtent[]) {
    assert.equal(e.offset, pos, `extents must tile the export: ${r.stdout}`);
    pos += e.length;
    const last = merged[merged.length - 1];
    if (last !== undefined && last.type === e.type) last.length += e.length;
    else merged.push({ ...e });
  }
  assert.equal(pos, sizeBytes, `extents must cover the export: ${r.stdout}`);
  return merged;
}

// Every extent overlapping [from, to) has one of the types.
function assertMapTypes(map: MapExtent[], from: number, to: number, types: number[], label: string): void {
  for (const e of map) {
    if (e.offset + e.length <= from || e.offset >= to) continue;
    assert.ok(types.includes(e.type), `${label} [${from}, ${to}): extent ${JSON.stringify(e)} should be of type ${types.join(' or ')}\nmap: ${JSON.stringify(map)}`);
  }
}

test('nbdinfo --json: size, name, description, every flag, block sizes', (t) =>
  withScope(async (scope) => {
    if (skipUnlessTools(t, 'nbdinfo')) return;
    const sizeBytes = 48 * MiB;
    const v = await servedVolume(scope, { sizeBytes, exportName: 'e2e-info' });
    const info = await exportInfo([v.server.uri]);
    assert.equal(info['export-size'], sizeBytes);
    assert.equal(info['export-name'], 'e2e-info');
    assert.equal(info.description, `blockwal volume ${await volumeUuid(v.volumeDir)}`);
    assert.ok(info.contexts?.includes('base:allocation'), `contexts: ${JSON.stringify(info.contexts)}`);
    const flags = {
      is_read_only: false,
      is_rotational: false,
      can_flush: true,
      can_fua: true,
      can_trim: true,
      can_zero: true,
      can_fast_zero: true,
      can_multi_conn: true,
      can_cache: true,
      can_df: true,
    };
    for (const [flag, expected] of Object.entries(flags)) assert.equal(info[flag as keyof ExportInfo], expected, flag);
    assert.equal(info.block_size_minimum, 1);
    assert.equal(info.block_size_preferred, 4096);
    assert.equal(info.block_size_maximum, 32 * MiB);
    await stopCleanly(v.server);
  }));

test('nbdinfo --map: data where written, holes where trimmed or zeroed, live and after a restart', (t) =>
  withScope(async (scope) => {
    if (skipUnlessTools(t, 'nbdinfo', 'qemu-io')) return;
    const sizeBytes = 16 * MiB;
    const v = await servedVolume(scope, { sizeBytes });
    await qemuIo(v.server.uri, [
      `write -P 0xab 0 ${MiB}`,
      `write -P 0xcd ${4 * MiB} ${2 * MiB}`,
      `discard ${4 * MiB + 512 * KiB} ${512 * KiB}`,
      `write -P 0xef ${8 * MiB} ${MiB}`,
      `discard ${8 * MiB} ${MiB}`,
      `write -P 0x42 ${12 * MiB} ${MiB}`,
      `write -z -u ${12 * MiB} ${MiB}`, // WRITE_ZEROES without NO_HOLE: may punch a hole
      'flush',
    ]);
    const reads = [
      `read -P 0xab 0 ${MiB}`,
      `read -P 0 ${MiB} ${3 * MiB}`,
      `read -P 0xcd ${4 * MiB} ${512 * KiB}`,
      `read -P 0 ${4 * MiB + 512 * KiB} ${512 * KiB}`,
      `read -P 0xcd ${5 * MiB} ${MiB}`,
      `read -P 0 ${6 * MiB} ${10 * MiB}`,
    ];
    const check = async (label: string): Promise<void> => {
      await qemuIo(v.server.uri, reads);
      const map = await allocationMap(v.server.uri, sizeBytes);
      assertMapTypes(map, 0, MiB, [TYPE_DATA], `${label}: written`);
      assertMapTypes(map, MiB, 4 * MiB, [TYPE_HOLE_ZERO], `${label}: never written`);
      assertMapTypes(map, 4 * MiB, 4 * MiB + 512 * KiB, [TYPE_DATA], `${label}: written`);
      assertMapTypes(map, 4 * MiB + 512 * KiB, 5 * MiB, [TYPE_HOLE_ZERO], `${label}: trimmed`);
      assertMapTypes(map, 5 * MiB, 6 * MiB, [TYPE_DATA], `${label}: written`);
      assertMapTypes(map, 6 * MiB, 12 * MiB, [TYPE_HOLE_ZERO], `${label}: never written or trimmed`);
      assertMapTypes(map, 12 * MiB, 13 * MiB, [TYPE_ZERO, TYPE_HOLE_ZERO], `${label}: zeroed`);
      assertMapTypes(map, 13 * MiB, sizeBytes, [TYPE_HOLE_ZERO], `${label}: never written`);
    };
    await check('live');
    // A clean stop checkpoints: the same map must now come from base.img.
    await stopCleanly(v.server);
    await startServer(scope, v);
    await check('after restart');
  }));

test('nbdinfo --map: WRITE_ZEROES with NO_HOLE leaves the range allocated (ZERO, not HOLE)', (t) =>
  withScope(async (scope) => {
    if (skipUnlessTools(t, 'nbdinfo', 'qemu-io')) return;
    const sizeBytes = 4 * MiB;
    const v = await servedVolume(scope, { sizeBytes });
    // qemu sends NO_HOLE for `write -z` without -u (no unmapping allowed).
    await qemuIo(v.server.uri, [`write -P 0x42 ${MiB} ${MiB}`, `write -z ${MiB} ${MiB}`, `read -P 0 ${MiB} ${MiB}`]);
    const map = await allocationMap(v.server.uri, sizeBytes);
    // reference/nbd.md §1.13: ZERO (2) for regions zeroed but allocated with NO_HOLE.
    assertMapTypes(map, MiB, 2 * MiB, [TYPE_ZERO], 'zeroed with NO_HOLE');
    await stopCleanly(v.server);
  }));

test('a --read-only export says so and refuses writes', (t) =>
  withScope(async (scope) => {
    if (skipUnlessTools(t, 'nbdinfo', 'qemu-io')) return;
    const v = await servedVolume(scope, { sizeBytes: 4 * MiB, serveArgs: ['--read-only'] });
    const info = await exportInfo([v.server.uri]);
    assert.equal(info.is_read_only, true);
    // libnbd and qemu refuse client-side to write to a read-only export, so
    // this shows the flag's effect; the server's own EPERM answer needs a
    // raw-socket client (the protocol tests).
    const write = await runProgram('qemu-io', ['-f', 'raw', v.server.uri, '-c', 'write -P 0x11 0 4096']);
    assert.notEqual(write.code, 0, describeRun('a write to a read-only export must fail', write));
    await qemuIo(v.server.uri, ['read -P 0 0 4096'], { readOnly: true });
    await stopCleanly(v.server);
    const sum = await mustRunCli(['checksum', v.volumeDir]);
    assert.equal(sum.stdout.trim(), XXHash3.hash(Buffer.alloc(4 * MiB)).toString('hex'), 'the volume must still be all zeros');
  }));
