// The `blockwal` command's contract (DESIGN.md §7): --help for every
// subcommand, exit status 2 for bad usage and 1 for runtime failures, each
// with a one-line `blockwal <cmd>: reason`; `status` of a served volume
// (through its control socket, or the metrics URL) and of a stopped one;
// a second `serve` of a volume refused; Prometheus metrics after NBD I/O.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';

import { describeRun, NbdServerProcess, type RunResult, runCli } from '../support/nbd_server_process';
import { MiB, createVolume, freePort, mustRun, mustRunCli, qemuIo, scopedTempDir, servedVolume, skipUnlessTools, stopCleanly, withScope } from './harness';

const SUBCOMMANDS = ['create', 'serve', 'status', 'export', 'checksum', 'demo'];

// stderr lines that are not pino JSON logs.
function reasonLines(r: RunResult): string[] {
  return r.stderr.split('\n').filter((l) => l.length > 0 && !l.startsWith('{'));
}

// Exit status `code`, and a first non-log stderr line `blockwal <cmd>: reason` matching `reason`.
function assertFails(r: RunResult, code: number, cmd: string, reason: RegExp, label: string): void {
  assert.equal(r.code, code, describeRun(label, r));
  const first = reasonLines(r)[0] ?? '';
  assert.match(first, new RegExp(`^blockwal ${cmd}: \\S`), describeRun(`${label}: one-line reason`, r));
  assert.match(first, reason, describeRun(label, r));
}

test('--help: `blockwal --help` and every subcommand print usage and exit 0', async () => {
  const top = await runCli(['--help']);
  assert.equal(top.code, 0, describeRun('blockwal --help', top));
  for (const cmd of SUBCOMMANDS) assert.match(top.stdout, new RegExp(`^\\s+${cmd}\\b`, 'm'), `top-level usage lists ${cmd}`);
  for (const cmd of SUBCOMMANDS) {
    for (const flag of ['--help', '-h']) {
      const r = await runCli([cmd, flag]);
      assert.equal(r.code, 0, describeRun(`blockwal ${cmd} ${flag}`, r));
      assert.match(r.stdout, new RegExp(`^usage: blockwal ${cmd}\\b`), describeRun(`blockwal ${cmd} ${flag}`, r));
    }
  }
});

test('bad usage exits 2, runtime failures exit 1, each with a one-line reason', () =>
  withScope(async (scope) => {
    const dir = scopedTempDir(scope, 'e2e-cli');
    const vol = path.join(dir, 'vol');
    const noArgs = await runCli([]);
    assert.equal(noArgs.code, 2, describeRun('blockwal', noArgs));
    const unknown = await runCli(['frobnicate']);
    assert.equal(unknown.code, 2, describeRun('blockwal frobnicate', unknown));
    assert.match(reasonLines(unknown)[0] ?? '', /^blockwal: unknown command 'frobnicate'/);

    const usage: [string[], string, RegExp][] = [
      [['create', vol, '--size', '1M', '--bogus'], 'create', /bogus/],
      [['create', vol], 'create', /--size/],
      [['create', vol, '--size', '12Q'], 'create', /12Q/],
      [['create', vol, '--size', '1000'], 'create', /4096/],
      [['create'], 'create', /DIR/],
      [['serve'], 'serve', /DIR/],
      [['serve', vol, '--nbd', 'nowhere'], 'serve', /nowhere/],
      [['serve', vol, '--metrics', '127.0.0.1:99999'], 'serve', /99999/],
      [['serve', vol, '--wal-cache', '-1'], 'serve', /--wal-cache/],
      [['status'], 'status', /DIR/],
      [['export', vol], 'export', /FILE/],
      [['checksum', vol, 'extra'], 'checksum', /extra/],
    ];
    for (const [args, cmd, reason] of usage) assertFails(await runCli(args), 2, cmd, reason, `blockwal ${args.join(' ')}`);
    assert.equal(fs.existsSync(vol), false, 'bad usage must not create anything');

    const notVolume = path.join(dir, 'not-a-volume');
    fs.mkdirSync(notVolume);
    const runtime: [string[], string][] = [
      [['serve', notVolume, '--nbd', `unix:${path.join(dir, 'nbd.sock')}`], 'serve'],
      [['serve', path.join(dir, 'missing'), '--nbd', `unix:${path.join(dir, 'nbd.sock')}`], 'serve'],
      [['status', notVolume], 'status'],
      [['checksum', notVolume], 'checksum'],
      [['export', notVolume, path.join(dir, 'out.raw')], 'export'],
    ];
    for (const [args, cmd] of runtime) {
      const r = await runCli(args);
      assertFails(r, 1, cmd, /./, `blockwal ${args.join(' ')}`);
      assert.equal(reasonLines(r).length, 1, describeRun(`blockwal ${args.join(' ')}: exactly one reason line`, r));
    }
    await createVolume(vol, MiB);
    assertFails(await runCli(['create', vol, '--size', '1M']), 1, 'create', /./, 'create over an existing volume');
  }));

interface ServedStatus {
  served: {
    pid: number;
    nbd: { address: { path: string } };
    metrics?: { host: string; port: number };
    volumes: { exportName: string; uuid: string; sizeBytes: number; lsnHead: number; readOnly: boolean; walCacheBytes: number }[];
  };
}

test('status: a served volume answers through its control socket and metrics URL; a stopped one offline', (t) =>
  withScope(async (scope) => {
    if (skipUnlessTools(t, 'qemu-io')) return;
    const metricsPort = await freePort();
    const v = await servedVolume(scope, { sizeBytes: 8 * MiB, exportName: 'e2e-status', serveArgs: ['--metrics', `127.0.0.1:${metricsPort}`, '--wal-cache', '16M'] });
    await qemuIo(v.server.uri, [`write -P 0x33 0 ${MiB}`, 'flush']);

    const live = JSON.parse((await mustRunCli(['status', v.volumeDir, '--json'])).stdout) as ServedStatus;
    assert.ok(live.served !== undefined, JSON.stringify(live));
    assert.equal(live.served.pid, v.server.pid);
    assert.equal(live.served.nbd.address.path, v.socketPath);
    assert.deepEqual(live.served.metrics, { host: '127.0.0.1', port: metricsPort });
    assert.equal(live.served.volumes.length, 1);
    const vol = live.served.volumes[0]!;
    assert.equal(vol.exportName, 'e2e-status');
    assert.equal(vol.sizeBytes, 8 * MiB);
    assert.equal(vol.readOnly, false);
    assert.ok(vol.lsnHead >= 1, `a write was made: ${JSON.stringify(vol)}`);
    assert.equal(vol.walCacheBytes, 16 * MiB, '--wal-cache reaches the volume');
    const text = await mustRunCli(['status', v.volumeDir]);
    assert.match(text.stdout, /export 'e2e-status'/);
    assert.match(text.stdout, /cache 16\.0 MiB; read back /);

    const byUrl = JSON.parse((await mustRunCli(['status', `http://127.0.0.1:${metricsPort}`, '--json'])).stdout) as ServedStatus;
    assert.equal(byUrl.served.pid, v.server.pid);
    assert.equal(byUrl.served.volumes[0]!.uuid, vol.uuid);

    await stopCleanly(v.server);
    const offline = JSON.parse((await mustRunCli(['status', v.volumeDir, '--json'])).stdout) as { offline?: { uuid: string; sizeBytes: number; lsnHead: number } };
    assert.ok(offline.offline !== undefined, `after stop: ${JSON.stringify(offline)}`);
    assert.equal(offline.offline.uuid, vol.uuid);
    assert.equal(offline.offline.sizeBytes, 8 * MiB);
    assert.ok(offline.offline.lsnHead >= vol.lsnHead, JSON.stringify(offline));
  }));

test('serve refuses a volume another process is serving (exit 1, locked); the first goes on', (t) =>
  withScope(async (scope) => {
    if (skipUnlessTools(t, 'qemu-io')) return;
    const v = await servedVolume(scope, { sizeBytes: 4 * MiB });
    const second = await runCli(['serve', v.volumeDir, '--nbd', `unix:${path.join(v.dir, 'second.sock')}`], { timeoutMs: 60_000 });
    assertFails(second, 1, 'serve', /lock|open|in use|served/i, 'a second serve of the same volume');
    assert.equal(v.server.running, true, 'the first server must still run');
    await qemuIo(v.server.uri, ['write -P 0x44 0 4096', 'read -P 0x44 0 4096']);
    // The refused server must not have taken over the first one's control socket.
    const live = JSON.parse((await mustRunCli(['status', v.volumeDir, '--json'])).stdout) as ServedStatus;
    assert.equal(live.served.pid, v.server.pid);
    await stopCleanly(v.server);
  }));

// `name{labels} value` lines of a Prometheus text page.
function sample(page: string, name: string, labels: Record<string, string>): number | undefined {
  for (const line of page.split('\n')) {
    const m = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (m === null || m[1] !== name) continue;
    const have = Object.fromEntries([...(m[2] ?? '').matchAll(/(\w+)="([^"]*)"/g)].map((x) => [x[1], x[2]]));
    if (Object.entries(labels).every(([k, val]) => have[k] === val)) return Number(m[3]);
  }
  return undefined;
}

test('--metrics: /metrics counts NBD requests and shows the volume LSN head after I/O', (t) =>
  withScope(async (scope) => {
    if (skipUnlessTools(t, 'qemu-io')) return;
    const metricsPort = await freePort();
    const v = await servedVolume(scope, { sizeBytes: 4 * MiB, exportName: 'e2e-metrics', serveArgs: ['--metrics', `127.0.0.1:${metricsPort}`, '--wal-cache', '16M'] });
    await qemuIo(v.server.uri, ['write -P 0x12 0 65536', 'write -P 0x13 65536 65536', 'read -P 0x12 0 65536', 'flush']);
    const res = await fetch(`http://127.0.0.1:${metricsPort}/metrics`);
    assert.equal(res.status, 200);
    const page = await res.text();
    const writes = sample(page, 'blockwal_nbd_requests_total', { command: 'write', result: 'ok' });
    const reads = sample(page, 'blockwal_nbd_requests_total', { command: 'read', result: 'ok' });
    const flushes = sample(page, 'blockwal_nbd_requests_total', { command: 'flush', result: 'ok' });
    assert.ok(writes !== undefined && writes >= 2, `writes counted: ${writes}\n${page}`);
    assert.ok(reads !== undefined && reads >= 1, `reads counted: ${reads}`);
    assert.ok(flushes !== undefined && flushes >= 1, `flushes counted: ${flushes}`);
    const head = sample(page, 'blockwal_volume_lsn_head', { export: 'e2e-metrics' });
    assert.ok(head !== undefined && head >= 2, `lsn head: ${head}\n${page}`);
    const missing = await fetch(`http://127.0.0.1:${metricsPort}/nothing`);
    assert.equal(missing.status, 404);
    await missing.text();
    await stopCleanly(v.server);
  }));

test('serve on TCP: HOST:PORT is announced and served', (t) =>
  withScope(async (scope) => {
    if (skipUnlessTools(t, 'nbdinfo')) return;
    const dir = scopedTempDir(scope, 'e2e-tcp');
    const volumeDir = path.join(dir, 'vol');
    await createVolume(volumeDir, 4 * MiB);
    const port = await freePort();
    const server = await NbdServerProcess.start({ volumeDir, exportName: 'tcp', listen: { host: '127.0.0.1', port } });
    scope.defer('kill tcp server', () => server.dispose());
    assert.equal(server.servingAddress, `127.0.0.1:${port}`);
    const r = await mustRun('nbdinfo', ['--size', server.uri]);
    assert.equal(r.stdout.trim(), String(4 * MiB));
    await stopCleanly(server);
  }));

test('serve after a SIGKILL: the same --nbd unix:PATH serves again (a stale socket file is not in the way)', (t) =>
  withScope(async (scope) => {
    if (skipUnlessTools(t, 'nbdinfo')) return;
    const v = await servedVolume(scope, { sizeBytes: 4 * MiB });
    await v.server.kill('SIGKILL');
    assert.ok(fs.existsSync(v.socketPath), 'the killed server left its socket file (the case under test)');
    const restarted = await NbdServerProcess.start({ volumeDir: v.volumeDir, exportName: v.exportName, listen: { path: v.socketPath } });
    scope.defer('kill restarted server', () => restarted.dispose());
    const r = await mustRun('nbdinfo', ['--size', restarted.uri]);
    assert.equal(r.stdout.trim(), String(4 * MiB));
    await stopCleanly(restarted);
  }));

test('serve refuses a Unix socket path another live server listens on, and leaves that server reachable', (t) =>
  withScope(async (scope) => {
    if (skipUnlessTools(t, 'nbdinfo')) return;
    const a = await servedVolume(scope, { sizeBytes: 4 * MiB });
    const otherDir = path.join(a.dir, 'other');
    await createVolume(otherDir, 4 * MiB);
    const second = await runCli(['serve', otherDir, '--nbd', `unix:${a.socketPath}`], { timeoutMs: 60_000 });
    assertFails(second, 1, 'serve', /in use|EADDRINUSE/i, 'a second server on a live socket path');
    const r = await mustRun('nbdinfo', ['--size', a.server.uri]);
    assert.equal(r.stdout.trim(), String(4 * MiB));
    await stopCleanly(a.server);
  }));
