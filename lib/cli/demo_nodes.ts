// The demo's nodes: each one a real `blockwal serve` process of this very
// command (so that "killed" is a SIGKILL of a real process), its stderr (pino
// logs) appended to a log file in the demo directory.
//
// Rules:
// - A node is ready when it has printed the ready lines its flags call for:
//   `blockwal: replica of DIR listening for its primary on HOST:PORT` (the
//   port is kept, so a restarted replica listens where the primary looks)
//   and `blockwal: serving DIR on ADDR` when it serves NBD.
// - Status comes from the node's control socket (what `blockwal status DIR
//   --json` prints under "served").
// - Every child still running when this process exits is SIGKILLed.
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

import { queryControl } from '../node/control';
import type { NodeStatus } from '../node/storage_node';
import type { PrimaryReplicationStatus } from '../replication/primary';
import { SERVER_NODE_OPTIONS } from './node_options';

// dist/lib/cli/demo_nodes.js -> dist/lib/cli/main.js
export const CLI_JS = path.join(__dirname, 'main.js');

const READY_TIMEOUT_MS = 30_000;
const STOP_TIMEOUT_MS = 30_000;
const CLI_TIMEOUT_MS = 60_000;
const STDERR_KEEP_CHARS = 64 * 1024;
const POLL_MS = 20;
const SERVING_LINE = /^blockwal: serving (.+) on (.+)$/m;
const REPLICA_LINE = /^blockwal: replica of (.+) listening for its primary on (.+):(\d+)$/m;

const live = new Set<ChildProcess>();
process.on('exit', () => {
  for (const child of live) child.kill('SIGKILL');
});

export interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

export function describeExit(e: Exit): string {
  return e.signal !== null ? `killed by ${e.signal}` : `exit status ${e.code}`;
}

export class DemoNode {
  private child: ChildProcess | undefined;
  private exited: Promise<Exit> | undefined;
  private exit: Exit | undefined;
  private stderrText = '';
  private flags: string[] = [];
  // Where this node listens for a primary (a replica, from its first run).
  replPort: number | undefined;

  // The node's volume: `relDir` in `root`, where the process runs (so the
  // commands the demo prints are short).
  readonly dir: string;
  readonly logFile: string;

  constructor(
    readonly name: string,
    readonly root: string,
    readonly relDir: string,
  ) {
    this.dir = path.join(root, relDir);
    this.logFile = path.join(root, 'logs', `${name}.log`);
  }

  get running(): boolean {
    return this.child !== undefined && this.exit === undefined;
  }

  get pid(): number | undefined {
    return this.child?.pid;
  }

  get replAddress(): string {
    if (this.replPort === undefined) throw new Error(`${this.name} has not run as a replica yet`);
    return `127.0.0.1:${this.replPort}`;
  }

  // The last lines this node wrote on stderr (for failure messages).
  get stderrTail(): string {
    return this.stderrText.split('\n').slice(-12).join('\n');
  }

  // `blockwal serve DIR ...flags`; resolves once the node is ready.
  async start(flags: string[]): Promise<void> {
    if (this.running) throw new Error(`${this.name} is already running (pid ${this.child?.pid})`);
    this.flags = [...flags];
    this.stderrText = '';
    this.exit = undefined;
    const log = fs.openSync(this.logFile, 'a');
    const child = spawn(process.execPath, [...SERVER_NODE_OPTIONS, CLI_JS, 'serve', this.relDir, ...flags], { cwd: this.root, stdio: ['ignore', 'ignore', 'pipe'] });
    this.child = child;
    live.add(child);
    this.exited = new Promise((resolve) => {
      child.once('exit', (code, signal) => {
        live.delete(child);
        this.exit = { code, signal };
        resolve(this.exit);
      });
    });
    child.stderr!.on('data', (chunk: Buffer) => {
      fs.writeSync(log, chunk);
      this.stderrText = (this.stderrText + chunk.toString('utf8')).slice(-STDERR_KEEP_CHARS);
    });
    child.stderr!.once('close', () => fs.closeSync(log));
    try {
      await this.waitReady(flags.includes('replica'), flags.includes('--nbd'));
    } catch (err) {
      await this.kill('SIGKILL');
      throw new Error(`${this.name}: blockwal serve ${this.relDir} ${flags.join(' ')}: ${(err as Error).message}\n${this.stderrTail}`);
    }
  }

  // Runs again with the flags of the last run (a replica on the same port).
  restart(): Promise<void> {
    const flags = [...this.flags];
    const at = flags.indexOf('--repl-listen');
    if (at >= 0) flags[at + 1] = this.replAddress;
    return this.start(flags);
  }

  private async waitReady(replica: boolean, serving: boolean): Promise<void> {
    const startMs = performance.now();
    for (;;) {
      const r = REPLICA_LINE.exec(this.stderrText);
      if (replica && r !== null) {
        const port = Number(r[3]);
        if (this.replPort !== undefined && port !== this.replPort) throw new Error(`listens on port ${port}, not on ${this.replPort} as before`);
        this.replPort = port;
      }
      if ((!replica || r !== null) && (!serving || SERVING_LINE.test(this.stderrText))) return;
      if (this.exit !== undefined) throw new Error(`exited (${describeExit(this.exit)}) before it was ready`);
      if (performance.now() - startMs > READY_TIMEOUT_MS) throw new Error(`not ready within ${READY_TIMEOUT_MS} ms`);
      await sleep(POLL_MS);
    }
  }

  // Sends the signal and awaits the exit.
  async kill(signal: NodeJS.Signals): Promise<Exit> {
    if (!this.running) return this.exit ?? { code: null, signal: null };
    this.child!.kill(signal);
    return this.exited!;
  }

  // SIGTERM; the node must finish its requests, checkpoint and exit 0.
  async stop(): Promise<void> {
    if (!this.running) return;
    this.child!.kill('SIGTERM');
    let timer: NodeJS.Timeout | undefined;
    const exit = await Promise.race([this.exited!, new Promise<undefined>((resolve) => (timer = setTimeout(() => resolve(undefined), STOP_TIMEOUT_MS)))]);
    clearTimeout(timer);
    if (exit === undefined) {
      await this.kill('SIGKILL');
      throw new Error(`${this.name} did not exit within ${STOP_TIMEOUT_MS} ms of SIGTERM (log: ${this.logFile})`);
    }
    if (exit.code !== 0) throw new Error(`${this.name} exited with ${describeExit(exit)} after SIGTERM, not 0 (log: ${this.logFile})\n${this.stderrTail}`);
  }

  async status(): Promise<NodeStatus> {
    const s = (await queryControl(this.dir)) as NodeStatus | undefined;
    if (s === undefined) throw new Error(`${this.name}: no server answers on ${this.dir}/control.sock`);
    return s;
  }

  async primaryStatus(): Promise<PrimaryReplicationStatus> {
    const r = (await this.status()).volumes[0]?.replication;
    if (r?.role !== 'primary') throw new Error(`${this.name} is not a replicating primary`);
    return r;
  }
}

// Runs `blockwal ARGS...` (this command) in cwd to completion; its stdout,
// or an error with its stderr's last line.
export function runBlockwal(args: string[], cwd: string): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(process.execPath, [CLI_JS, ...args], { cwd, encoding: 'utf8', timeout: CLI_TIMEOUT_MS, maxBuffer: 1 << 20 }, (err, stdout, stderr) => {
      if (err === null) resolve(stdout);
      else reject(new Error(`blockwal ${args.join(' ')} failed (${err.code ?? err.signal}): ${stderr.trim().split('\n').at(-1)}`));
    });
  });
}

// Runs an external program (an NBD client) to completion; its stdout.
export function runProgram(file: string, args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(file, args, { encoding: 'utf8', timeout: CLI_TIMEOUT_MS, maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      if (err === null) resolve(stdout);
      else reject(new Error(`${file} failed (${err.code ?? err.signal}): ${stderr.trim().split('\n')[0]}`));
    });
  });
}

// Polls probe every pollMs until it returns a value (not undefined); fails
// after deadlineMs with explain()'s account of the last state.
export async function until<T>(what: string, probe: () => Promise<T | undefined>, o: { pollMs: number; deadlineMs: number; explain: () => string }): Promise<T> {
  const startMs = performance.now();
  for (;;) {
    const v = await probe();
    if (v !== undefined) return v;
    if (performance.now() - startMs > o.deadlineMs) throw new Error(`gave up waiting for ${what} after ${(o.deadlineMs / 1000).toFixed(0)} s: ${o.explain()}`);
    await sleep(o.pollMs);
  }
}
