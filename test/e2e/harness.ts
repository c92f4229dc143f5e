// Plumbing for the end-to-end tests, which drive a real `blockwal serve`
// process with real NBD clients (nbdinfo, nbdcopy, qemu-img, qemu-io, fio,
// nbdfuse) over a Unix socket in a temporary directory (no ports, no races).
//
// Rules:
// - A test whose client is missing calls t.skip('missing X') and returns:
//   it is counted as skipped, never as passed.
// - Everything a test starts (servers, mounts, loop devices, temp dirs) is
//   registered with its Scope as soon as it exists and undone in reverse
//   order when the test ends, whether it passed or not.
// - Random content is seeded (the seed is printed), so a failure replays.
import * as assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import type { TestContext } from 'node:test';

import { XXHash3 } from 'xxhash-addon';

import { describeRun, NbdServerProcess, type RunOptions, type RunResult, runCli, runProgram } from '../support/nbd_server_process';
import { tempDir } from '../support/tmp';

export const KiB = 1 << 10;
export const MiB = 1 << 20;

// ---- Tools ----

function onPath(name: string): boolean {
  for (const dir of (process.env.PATH ?? '').split(':').concat(['/usr/sbin', '/sbin'])) {
    try {
      fs.accessSync(path.join(dir, name), fs.constants.X_OK);
      return true;
    } catch {
      // not in this directory
    }
  }
  return false;
}

// Skips the test (and returns true) when one of the programs is not installed.
export function skipUnlessTools(t: TestContext, ...names: string[]): boolean {
  const missing = names.filter((n) => !onPath(n));
  if (missing.length === 0) return false;
  t.skip(`missing ${missing.join(', ')}`);
  return true;
}

// Runs a program and asserts exit status 0, with its output in the message.
export async function mustRun(file: string, args: string[], options: RunOptions = {}): Promise<RunResult> {
  const r = await runProgram(file, args, options);
  assert.ok(r.code === 0 && !r.timedOut, describeRun(`${file} ${args.join(' ')}`, r));
  return r;
}

export async function mustRunCli(args: string[], options: RunOptions = {}): Promise<RunResult> {
  const r = await runCli(args, options);
  assert.ok(r.code === 0 && !r.timedOut, describeRun(`blockwal ${args.join(' ')}`, r));
  return r;
}

// ---- Scope: cleanup in reverse order, always ----

export class Scope {
  private readonly undo: { label: string; fn: () => Promise<void> | void }[] = [];

  defer(label: string, fn: () => Promise<void> | void): void {
    this.undo.push({ label, fn });
  }

  async close(): Promise<Error[]> {
    const errors: Error[] = [];
    while (this.undo.length > 0) {
      const { label, fn } = this.undo.pop()!;
      try {
        await fn();
      } catch (err) {
        errors.push(new Error(`cleanup '${label}' failed: ${(err as Error).message}`));
      }
    }
    return errors;
  }
}

// Runs fn with a scope; cleanup failures fail a passing test and are printed
// (not thrown over the original error) for a failing one.
export async function withScope<T>(fn: (scope: Scope) => Promise<T>): Promise<T> {
  const scope = new Scope();
  let failed = false;
  try {
    return await fn(scope);
  } catch (err) {
    failed = true;
    throw err;
  } finally {
    const errors = await scope.close();
    if (errors.length > 0) {
      if (failed) for (const e of errors) console.error(e.message);
      else throw new AggregateError(errors, errors.map((e) => e.message).join('; '));
    }
  }
}

export function scopedTempDir(scope: Scope, prefix: string): string {
  const { dir, cleanup } = tempDir(prefix);
  scope.defer(`remove ${dir}`, cleanup);
  return dir;
}

// ---- Volumes and servers ----

export interface ServedVolume {
  dir: string; // the test's temp dir
  volumeDir: string;
  socketPath: string;
  exportName: string;
  server: NbdServerProcess;
}

export async function createVolume(volumeDir: string, sizeBytes: number, extraArgs: string[] = []): Promise<void> {
  await mustRunCli(['create', volumeDir, '--size', String(sizeBytes), ...extraArgs]);
}

export async function startServer(scope: Scope, v: Omit<ServedVolume, 'server'>, extraArgs: string[] = []): Promise<NbdServerProcess> {
  const server = await NbdServerProcess.start({ volumeDir: v.volumeDir, exportName: v.exportName, listen: { path: v.socketPath }, extraArgs });
  scope.defer(`kill server pid ${server.pid}`, () => server.dispose());
  return server;
}

// A new volume of sizeBytes in a temp dir, served on a Unix socket there.
export async function servedVolume(
  scope: Scope,
  options: { sizeBytes: number; exportName?: string; createArgs?: string[]; serveArgs?: string[] },
): Promise<ServedVolume> {
  const dir = scopedTempDir(scope, 'e2e');
  const v = { dir, volumeDir: path.join(dir, 'vol'), socketPath: path.join(dir, 'nbd.sock'), exportName: options.exportName ?? 'vol' };
  await createVolume(v.volumeDir, options.sizeBytes, options.createArgs);
  return { ...v, server: await startServer(scope, v, options.serveArgs) };
}

// Stops the server with SIGTERM and asserts a clean exit (status 0).
export async function stopCleanly(server: NbdServerProcess): Promise<void> {
  const s = await server.stop();
  assert.deepEqual(s, { code: 0, signal: null }, `SIGTERM should exit 0\n--- server stderr ---\n${server.stderr}`);
}

// ---- Content ----

// Writes sizeBytes of seeded pseudo-random bytes (AES-256-CTR keystream) to file.
export function writeSeededFile(file: string, sizeBytes: number, seed: number): void {
  const key = crypto.createHash('sha256').update(`blockwal-e2e-${seed}`).digest();
  const cipher = crypto.createCipheriv('aes-256-ctr', key, Buffer.alloc(16));
  const zeros = Buffer.alloc(4 * MiB);
  const fd = fs.openSync(file, 'w');
  try {
    for (let at = 0; at < sizeBytes; at += zeros.length) {
      const n = Math.min(zeros.length, sizeBytes - at);
      fs.writeSync(fd, cipher.update(zeros.subarray(0, n)));
    }
  } finally {
    fs.closeSync(fd);
  }
}

function forEachChunk(file: string, fn: (chunk: Buffer) => void): void {
  const buf = Buffer.alloc(4 * MiB);
  const fd = fs.openSync(file, 'r');
  try {
    for (;;) {
      const n = fs.readSync(fd, buf, 0, buf.length, null);
      if (n === 0) break;
      fn(buf.subarray(0, n));
    }
  } finally {
    fs.closeSync(fd);
  }
}

export function sha256File(file: string): string {
  const h = crypto.createHash('sha256');
  forEachChunk(file, (c) => h.update(c));
  return h.digest('hex');
}

// XXH3-64 (seed 0), as `blockwal checksum` computes it over a volume.
export function xxh3File(file: string): string {
  const h = new XXHash3(Buffer.alloc(8));
  forEachChunk(file, (c) => h.update(c));
  return h.digest().toString('hex');
}

// The first offset where two files differ, or undefined when they are equal.
export function firstDifference(a: string, b: string): number | undefined {
  const sa = fs.statSync(a).size;
  const sb = fs.statSync(b).size;
  const fa = fs.openSync(a, 'r');
  const fb = fs.openSync(b, 'r');
  try {
    const ba = Buffer.alloc(MiB);
    const bb = Buffer.alloc(MiB);
    for (let at = 0; at < Math.min(sa, sb); at += MiB) {
      const n = fs.readSync(fa, ba, 0, MiB, at);
      fs.readSync(fb, bb, 0, MiB, at);
      if (ba.compare(bb, 0, n, 0, n) !== 0) {
        for (let i = 0; i < n; i++) if (ba[i] !== bb[i]) return at + i;
      }
    }
    return sa === sb ? undefined : Math.min(sa, sb);
  } finally {
    fs.closeSync(fa);
    fs.closeSync(fb);
  }
}

export function assertFilesEqual(actual: string, expected: string, what: string): void {
  const at = firstDifference(actual, expected);
  assert.equal(at, undefined, `${what}: ${actual} differs from ${expected} at byte ${at}`);
}

// Seeds: BLOCKWAL_E2E_SEED replays a run; otherwise a fresh one, printed.
export function testSeed(t: TestContext): number {
  const env = process.env.BLOCKWAL_E2E_SEED;
  const seed = env !== undefined ? Number(env) : crypto.randomInt(2 ** 31);
  t.diagnostic(`seed ${seed} (replay with BLOCKWAL_E2E_SEED=${seed})`);
  return seed;
}

// A TCP port free a moment ago on 127.0.0.1 (for flags that take HOST:PORT).
export async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const port = (server.address() as net.AddressInfo).port;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

// ---- FUSE and loop devices ----

const NBDFUSE_READY_TIMEOUT_MS = 30_000;
const NBDFUSE_EXIT_TIMEOUT_MS = 30_000;

export function whyFuseIsImpossible(): string | undefined {
  if (process.getuid?.() !== 0) return 'not root (FUSE mounts here need it)';
  if (!fs.existsSync('/dev/fuse')) return 'no /dev/fuse';
  return undefined;
}

export function whyLoopIsImpossible(): string | undefined {
  if (process.getuid?.() !== 0) return 'not root (loop mounts need it)';
  if (!fs.existsSync('/dev/loop-control')) return 'no loop devices (/dev/loop-control)';
  return undefined;
}

// nbdfuse MOUNTDIR TARGET... (a URI, or --command CMD...) in the
// foreground, ready once it writes its pid file (MOUNTDIR/nbd is then the
// export); undone by
// `fusermount3 -u`, which makes it exit (SIGKILL if it does not).
export async function startNbdfuse(scope: Scope, mountDir: string, pidFile: string, target: string[]): Promise<() => Promise<void>> {
  const child = spawn('nbdfuse', ['-P', pidFile, mountDir, ...target], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (c: string) => (stderr += c));
  let exitCode: number | null | undefined;
  const exited = new Promise<void>((resolve) => child.once('exit', (code) => ((exitCode = code), resolve())));
  const unmount = async (): Promise<void> => {
    // Also when it never got ready: it may have mounted already.
    if (exitCode === undefined) {
      const r = await runProgram('fusermount3', ['-u', mountDir]);
      if (r.code !== 0 && exitCode === undefined) await runProgram('fusermount3', ['-u', '-z', mountDir]);
    }
    const timer = setTimeout(() => child.kill('SIGKILL'), NBDFUSE_EXIT_TIMEOUT_MS);
    await exited;
    clearTimeout(timer);
    assert.equal(exitCode, 0, `nbdfuse should exit 0 after fusermount3 -u\n${stderr}`);
  };
  scope.defer(`unmount nbdfuse ${mountDir}`, unmount);
  for (const startMs = Date.now(); !fs.existsSync(pidFile); ) {
    assert.equal(exitCode, undefined, `nbdfuse exited before it was ready (code ${exitCode}): ${stderr}`);
    assert.ok(Date.now() - startMs < NBDFUSE_READY_TIMEOUT_MS, `nbdfuse not ready within ${NBDFUSE_READY_TIMEOUT_MS} ms: ${stderr}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return unmount;
}

// ---- qemu-io ----

// Runs qemu-io commands (`write -P 0xab 0 1M`, `discard ...`, `read -P ...`,
// `flush`) in one connection; asserts exit 0 and no failed pattern check.
// readOnly: open with -r (qemu refuses to open a read-only export for writing).
export async function qemuIo(uri: string, commands: string[], options: { readOnly?: boolean } = {}): Promise<RunResult> {
  const r = await mustRun('qemu-io', ['-f', 'raw', ...(options.readOnly === true ? ['-r'] : []), uri, ...commands.flatMap((c) => ['-c', c])]);
  assert.doesNotMatch(r.stdout + r.stderr, /Pattern verification failed|error|fail/i, describeRun(`qemu-io ${commands.join('; ')}`, r));
  return r;
}
