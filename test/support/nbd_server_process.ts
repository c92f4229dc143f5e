// The `blockwal` command as a child process, for end-to-end tests that drive
// the real server with real NBD clients:
//
//   const server = await NbdServerProcess.start({ volumeDir, exportName: 'vol', listen: { path: sock } });
//   try { ...use server.uri... ; assert.equal((await server.stop()).code, 0); }
//   finally { await server.dispose(); }
//
// start() resolves once the server prints `blockwal: serving DIR on ADDR` on
// stderr, and rejects (with the server's stderr) if it exits first or does
// not get there within READY_TIMEOUT_MS. stop() sends SIGTERM and awaits the
// exit status; a server that does not exit within STOP_TIMEOUT_MS is
// SIGKILLed and stop() rejects. dispose() SIGKILLs a server still running and
// never throws: it belongs in a finally block. Every child still alive when
// the test process exits is SIGKILLed, so a crashed test leaves no server
// holding a volume lock.
import { type ChildProcess, spawn } from 'node:child_process';
import * as path from 'node:path';
import { SERVER_NODE_OPTIONS } from '../../lib/cli/node_options';

// dist/test/support/ -> dist/lib/cli/main.js
export const CLI_JS = path.join(__dirname, '..', '..', 'lib', 'cli', 'main.js');

const READY_TIMEOUT_MS = 60_000;
const STOP_TIMEOUT_MS = 60_000;
const CLI_TIMEOUT_MS = 120_000;
// Output kept per stream: the tail is what a failure message needs.
const OUTPUT_KEEP_BYTES = 1 << 20;
const SERVING_LINE = /^blockwal: serving (.+) on (.+)$/m;

export type ListenAddress = { path: string } | { host: string; port: number };

export interface ExitStatus {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface ServeOptions {
  volumeDir: string;
  exportName: string;
  listen: ListenAddress;
  // More `serve` flags (--metrics, --read-only, ...).
  extraArgs?: string[];
  env?: NodeJS.ProcessEnv;
}

const live = new Set<ChildProcess>();
process.on('exit', () => {
  for (const child of live) child.kill('SIGKILL');
});

function track(child: ChildProcess): Promise<ExitStatus> {
  live.add(child);
  return new Promise((resolve) => {
    child.once('exit', (code, signal) => {
      live.delete(child);
      resolve({ code, signal });
    });
  });
}

// A bounded text buffer: keeps the last OUTPUT_KEEP_BYTES characters.
class Tail {
  private text = '';

  push(chunk: string): void {
    this.text += chunk;
    if (this.text.length > 2 * OUTPUT_KEEP_BYTES) this.text = this.text.slice(-OUTPUT_KEEP_BYTES);
  }

  toString(): string {
    return this.text.slice(-OUTPUT_KEEP_BYTES);
  }
}

export function nbdUri(exportName: string, listen: ListenAddress): string {
  const name = encodeURIComponent(exportName);
  return 'path' in listen ? `nbd+unix:///${name}?socket=${listen.path}` : `nbd://${listen.host}:${listen.port}/${name}`;
}

export class NbdServerProcess {
  readonly uri: string;
  // The address the server reported in its 'serving' line.
  servingAddress = '';
  private exitStatus: ExitStatus | undefined;

  private constructor(
    private readonly child: ChildProcess,
    readonly exited: Promise<ExitStatus>,
    private readonly stderrTail: Tail,
    readonly options: ServeOptions,
  ) {
    this.uri = nbdUri(options.exportName, options.listen);
    void exited.then((s) => (this.exitStatus = s));
  }

  static async start(options: ServeOptions): Promise<NbdServerProcess> {
    const nbd = 'path' in options.listen ? `unix:${options.listen.path}` : `${options.listen.host}:${options.listen.port}`;
    const args = [...SERVER_NODE_OPTIONS, CLI_JS, 'serve', options.volumeDir, '--nbd', nbd, '--export', options.exportName, ...(options.extraArgs ?? [])];
    const child = spawn(process.execPath, args, { stdio: ['ignore', 'ignore', 'pipe'], env: options.env ?? process.env });
    const stderr = new Tail();
    const server = new NbdServerProcess(child, track(child), stderr, options);
    child.stderr!.setEncoding('utf8');
    try {
      server.servingAddress = await new Promise<string>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`no 'serving' line within ${READY_TIMEOUT_MS} ms`)), READY_TIMEOUT_MS);
        let serving = false;
        child.stderr!.on('data', (chunk: string) => {
          stderr.push(chunk);
          const m = serving ? null : SERVING_LINE.exec(stderr.toString());
          if (m !== null) {
            serving = true;
            clearTimeout(timer);
            resolve(m[2]!);
          }
        });
        void server.exited.then((s) => {
          clearTimeout(timer);
          reject(new Error(`exited (${describeExit(s)}) before serving`));
        });
      });
    } catch (err) {
      await server.dispose();
      throw new Error(`blockwal ${args.slice(1).join(' ')}: ${(err as Error).message}\n--- server stderr ---\n${stderr}`);
    }
    return server;
  }

  get pid(): number {
    return this.child.pid!;
  }

  get running(): boolean {
    return this.exitStatus === undefined;
  }

  // Everything the server wrote on stderr so far (JSON logs), for failure messages.
  get stderr(): string {
    return this.stderrTail.toString();
  }

  // SIGTERM, then the exit status. Rejects (after a SIGKILL) if the server
  // does not exit within STOP_TIMEOUT_MS.
  async stop(): Promise<ExitStatus> {
    if (this.exitStatus !== undefined) return this.exitStatus;
    this.child.kill('SIGTERM');
    const status = await Promise.race([this.exited, sleep(STOP_TIMEOUT_MS).then(() => undefined)]);
    if (status !== undefined) return status;
    await this.kill('SIGKILL');
    throw new Error(`server pid ${this.pid} did not exit within ${STOP_TIMEOUT_MS} ms of SIGTERM\n--- server stderr ---\n${this.stderr}`);
  }

  async kill(signal: NodeJS.Signals = 'SIGKILL'): Promise<ExitStatus> {
    if (this.exitStatus !== undefined) return this.exitStatus;
    this.child.kill(signal);
    return this.exited;
  }

  // For finally blocks: SIGKILL if still running, await the exit, never throw.
  async dispose(): Promise<void> {
    if (this.exitStatus !== undefined) return;
    this.child.kill('SIGKILL');
    await this.exited;
  }
}

export function describeExit(s: ExitStatus): string {
  return s.signal !== null ? `signal ${s.signal}` : `code ${s.code}`;
}

export interface RunResult extends ExitStatus {
  stdout: string;
  stderr: string;
  timedOut: boolean;
}

export interface RunOptions {
  timeoutMs?: number;
  env?: NodeJS.ProcessEnv;
  cwd?: string;
}

// Runs a program to completion, collecting its output; SIGKILLed after timeoutMs.
export function runProgram(file: string, args: string[], options: RunOptions = {}): Promise<RunResult> {
  const timeoutMs = options.timeoutMs ?? CLI_TIMEOUT_MS;
  const child = spawn(file, args, { stdio: ['ignore', 'pipe', 'pipe'], env: options.env ?? process.env, cwd: options.cwd });
  const exited = track(child);
  const stdout = new Tail();
  const stderr = new Tail();
  child.stdout!.setEncoding('utf8').on('data', (c: string) => stdout.push(c));
  child.stderr!.setEncoding('utf8').on('data', (c: string) => stderr.push(c));
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    child.kill('SIGKILL');
  }, timeoutMs);
  // 'close' (not 'exit') so the output is complete.
  const closed = new Promise<void>((resolve) => child.once('close', () => resolve()));
  return new Promise((resolve, reject) => {
    child.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    void Promise.all([exited, closed]).then(([status]) => {
      clearTimeout(timer);
      resolve({ ...status, stdout: stdout.toString(), stderr: stderr.toString(), timedOut });
    });
  });
}

// `node dist/lib/cli/main.js ARGS...`
export function runCli(args: string[], options: RunOptions = {}): Promise<RunResult> {
  return runProgram(process.execPath, [CLI_JS, ...args], options);
}

// A one-paragraph account of a finished program, for assertion messages.
export function describeRun(label: string, r: RunResult): string {
  const timed = r.timedOut ? ', timed out' : '';
  return `${label}: ${describeExit(r)}${timed}\n--- stdout ---\n${r.stdout.slice(-4000)}\n--- stderr ---\n${r.stderr.slice(-4000)}`;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms).unref());
}
