// A replicated cluster on loopback for tests: one `blockwal serve` process
// per node (a primary and its replicas), driven the way an operator would.
//
//   const cluster = await Cluster.start({ sizeBytes: 64 * MiB, replicas: 1, durability: 'sync_all' });
//   try {
//     ...NBD I/O on cluster.primary.nbd (a Unix socket)...
//     await until('the replica is current', async () => (await cluster.primary.primaryStatus()).replicas[0]!.lagLsn === 0);
//     await cluster.stopAll(); // SIGTERM each node, asserting exit 0
//     const sums = await cluster.checksums(); // `blockwal checksum` of each dir
//   } finally {
//     await cluster.dispose(); // SIGKILL what still runs, remove the temp dir
//   }
//
// Rules:
// - Replicas listen on 127.0.0.1 port 0; the bound port is read from their
//   ready line (`blockwal: replica of DIR listening for its primary on
//   HOST:PORT`) and kept: a restarted replica listens on the same port, so
//   the primary's --replica flags stay right.
// - A node is ready when it has printed every ready line its flags call for
//   (the replica line, and `blockwal: serving DIR on ADDR` when it serves NBD).
// - Status comes from the node's control socket (DIR/control.sock), the
//   document `blockwal status DIR --json` prints under "served";
//   statusCli() runs that command itself. A paused (SIGSTOPped) node is not
//   asked: its answer would never come.
// - Waiting is polling: until() asks again every POLL_MS up to a deadline
//   (60 s by default) and fails with the last thing it saw. Tests never
//   assert on elapsed time.
// - Every child still running when the test process exits is SIGKILLed.
import * as assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

import { Cmd } from '../../lib/nbd/protocol';
import { queryControl } from '../../lib/node/control';
import type { NodeStatus, ServedVolumeStatus } from '../../lib/node/storage_node';
import type { DurabilityMode, PrimaryReplicationStatus } from '../../lib/replication/primary';
import type { ReplicaReplicationStatus } from '../../lib/replication/replica';
import { RawClient } from '../nbd/raw_client';
import { CLI_JS, describeExit, describeRun, type ExitStatus, nbdUri, runCli } from './nbd_server_process';
import { tempDir } from './tmp';
import { SERVER_NODE_OPTIONS } from '../../lib/cli/node_options';

export const MiB = 1 << 20;
export const EXPORT_NAME = 'vol';
export const UNTIL_DEADLINE_MS = 60_000;
const POLL_MS = 100;
const READY_TIMEOUT_MS = 60_000;
const STOP_TIMEOUT_MS = 60_000;
const STDERR_KEEP_CHARS = 1 << 20;
const SERVING_LINE = /^blockwal: serving (.+) on (.+)$/m;
const REPLICA_LINE = /^blockwal: replica of (.+) listening for its primary on (.+):(\d+)$/m;
const ERROR_LINE = /^\{"level":(50|60),/;
const ERROR_LINES_KEPT = 50;

// ---- children ----

const live = new Set<ChildProcess>();
process.on('exit', () => {
  for (const child of live) child.kill('SIGKILL');
});

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// Polls probe until it returns something other than undefined or false;
// fails after deadlineMs with explain()'s account of the last state.
export async function until<T>(
  what: string,
  probe: () => Promise<T | undefined | false>,
  options: { deadlineMs?: number; explain?: () => string } = {},
): Promise<T> {
  const deadlineMs = options.deadlineMs ?? UNTIL_DEADLINE_MS;
  const startMs = performance.now();
  let lastError: Error | undefined;
  for (;;) {
    try {
      const v = await probe();
      if (v !== undefined && v !== false) return v;
      lastError = undefined;
    } catch (err) {
      lastError = err as Error;
    }
    if (performance.now() - startMs > deadlineMs) {
      const last = lastError !== undefined ? `; last error: ${lastError.message}` : '';
      assert.fail(`gave up waiting for ${what} after ${deadlineMs} ms${last}${options.explain !== undefined ? `\n${options.explain()}` : ''}`);
    }
    await sleep(POLL_MS);
  }
}

// Awaits promise, failing (with explain()'s account) when it has not settled
// within deadlineMs: a request the system under test never answers fails the
// test instead of hanging it.
export async function settled<T>(what: string, promise: Promise<T>, options: { deadlineMs?: number; explain?: () => string } = {}): Promise<T> {
  const deadlineMs = options.deadlineMs ?? UNTIL_DEADLINE_MS;
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: not settled within ${deadlineMs} ms${options.explain !== undefined ? `\n${options.explain()}` : ''}`)), deadlineMs);
  });
  try {
    return await Promise.race([promise, late]);
  } finally {
    clearTimeout(timer);
  }
}

// ---- one node ----

export class ClusterNode {
  private child: ChildProcess | undefined;
  private exited: Promise<ExitStatus> | undefined;
  private exitStatus: ExitStatus | undefined;
  private stderrText = '';
  private paused = false;
  // The serve flags of the current (or last) run, DIR excluded.
  flags: string[] = [];
  // Where this node listens for a primary (set by its first run as a replica).
  replListen: { host: string; port: number } | undefined;
  // The last status answer, for failure messages.
  lastStatus: NodeStatus | undefined;
  // Every error-level log line (pino level 50 or 60) of every run, run by run.
  readonly errorLines: string[] = [];
  private partialLine = '';
  private runs = 0;

  constructor(
    readonly name: string,
    readonly dir: string,
    // The NBD socket this node serves on when its flags say --nbd.
    readonly nbdSocket: string,
  ) {}

  get replAddress(): string {
    assert.ok(this.replListen !== undefined, `${this.name} has never run as a replica`);
    return `${this.replListen.host}:${this.replListen.port}`;
  }

  get nbd(): { path: string } {
    return { path: this.nbdSocket };
  }

  get uri(): string {
    return nbdUri(EXPORT_NAME, this.nbd);
  }

  get running(): boolean {
    return this.child !== undefined && this.exitStatus === undefined;
  }

  get pid(): number {
    assert.ok(this.child?.pid !== undefined, `${this.name} is not running`);
    return this.child.pid;
  }

  get stderr(): string {
    return this.stderrText.slice(-STDERR_KEEP_CHARS);
  }

  // Flags for serving as a replica: --repl-listen on its kept port (0 the first time).
  replicaFlags(extra: string[] = []): string[] {
    return ['--role', 'replica', '--repl-listen', `127.0.0.1:${this.replListen?.port ?? 0}`, '--node-id', this.name, ...extra];
  }

  // Flags for serving as a primary of the given replicas, with NBD on
  // nbdSocket; addresses, when given, are where it dials them instead.
  primaryFlags(o: { replicas: ClusterNode[]; addresses?: string[]; durability?: DurabilityMode; ackTimeoutMs?: number; epoch?: number; extra?: string[] }): string[] {
    const flags = ['--nbd', `unix:${this.nbdSocket}`, '--export', EXPORT_NAME, '--node-id', this.name];
    o.replicas.forEach((r, i) => flags.push('--replica', o.addresses?.[i] ?? r.replAddress));
    if (o.replicas.length > 0) flags.push('--durability', o.durability ?? 'sync_all');
    if (o.ackTimeoutMs !== undefined) flags.push('--ack-timeout', String(o.ackTimeoutMs));
    if (o.epoch !== undefined) flags.push('--epoch', String(o.epoch));
    return [...flags, ...(o.extra ?? [])];
  }

  // Starts `blockwal serve DIR ...flags` and resolves once it is ready.
  async start(flags: string[]): Promise<void> {
    assert.ok(!this.running, `${this.name} is already running (pid ${this.child?.pid})`);
    this.flags = [...flags];
    this.stderrText = '';
    this.partialLine = '';
    this.runs++;
    this.exitStatus = undefined;
    this.paused = false;
    const args = [...SERVER_NODE_OPTIONS, CLI_JS, 'serve', this.dir, ...flags];
    const child = spawn(process.execPath, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    this.child = child;
    live.add(child);
    this.exited = new Promise((resolve) => {
      child.once('exit', (code, signal) => {
        live.delete(child);
        this.exitStatus = { code, signal };
        resolve({ code, signal });
      });
    });
    child.stderr!.setEncoding('utf8');
    const run = this.runs;
    child.stderr!.on('data', (chunk: string) => {
      const lines = (this.partialLine + chunk).split('\n');
      this.partialLine = lines.pop()!;
      for (const line of lines) if (ERROR_LINE.test(line) && this.errorLines.length < ERROR_LINES_KEPT) this.errorLines.push(`run ${run}: ${line.slice(0, 2000)}`);
      this.stderrText += chunk;
      if (this.stderrText.length > 2 * STDERR_KEEP_CHARS) this.stderrText = this.stderrText.slice(-STDERR_KEEP_CHARS);
    });
    try {
      await this.waitReady(flags.includes('replica'), flags.includes('--nbd'));
      // A restart with these flags listens where this run does.
      const at = this.flags.indexOf('--repl-listen');
      if (at >= 0) this.flags[at + 1] = this.replAddress;
    } catch (err) {
      await this.kill('SIGKILL');
      throw new Error(`${this.name}: blockwal serve ${this.dir} ${flags.join(' ')}: ${(err as Error).message}\n--- ${this.name} stderr ---\n${this.stderr}`);
    }
  }

  private async waitReady(replica: boolean, serving: boolean): Promise<void> {
    const startMs = performance.now();
    for (;;) {
      const text = this.stderrText;
      const r = REPLICA_LINE.exec(text);
      if (replica && r !== null && this.replListen === undefined) this.replListen = { host: r[2]!, port: Number(r[3]) };
      if (replica && r !== null) assert.equal(Number(r[3]), this.replListen!.port, `${this.name} listens on the port it had before`);
      if ((!replica || r !== null) && (!serving || SERVING_LINE.test(text))) return;
      if (this.exitStatus !== undefined) throw new Error(`exited (${describeExit(this.exitStatus)}) before it was ready`);
      if (performance.now() - startMs > READY_TIMEOUT_MS) throw new Error(`not ready within ${READY_TIMEOUT_MS} ms`);
      await sleep(20);
    }
  }

  // Runs again with other flags (or the last ones). The node must be down.
  restart(flags: string[] = this.flags): Promise<void> {
    return this.start(flags);
  }

  // Sends a signal and awaits the exit (SIGKILL by default).
  async kill(signal: NodeJS.Signals = 'SIGKILL'): Promise<ExitStatus> {
    if (!this.running) return this.exitStatus ?? { code: null, signal: null };
    this.child!.kill(signal);
    const status = await this.exited!;
    this.paused = false;
    return status;
  }

  pause(): void {
    assert.ok(this.running && !this.paused, `${this.name} is not running or already paused`);
    this.child!.kill('SIGSTOP');
    this.paused = true;
  }

  resume(): void {
    assert.ok(this.running && this.paused, `${this.name} is not paused`);
    this.child!.kill('SIGCONT');
    this.paused = false;
  }

  // SIGTERM (after SIGCONT if paused); asserts the node finishes and exits 0.
  async stop(): Promise<void> {
    if (!this.running) {
      assert.deepEqual(this.exitStatus, { code: 0, signal: null }, `${this.name} had already exited\n--- stderr ---\n${this.stderr}`);
      return;
    }
    if (this.paused) this.resume();
    this.child!.kill('SIGTERM');
    let timer: NodeJS.Timeout | undefined;
    const status = await Promise.race([this.exited!, new Promise<undefined>((resolve) => (timer = setTimeout(() => resolve(undefined), STOP_TIMEOUT_MS)))]);
    clearTimeout(timer);
    if (status === undefined) {
      await this.kill('SIGKILL');
      assert.fail(`${this.name} did not exit within ${STOP_TIMEOUT_MS} ms of SIGTERM\n--- stderr ---\n${this.stderr}`);
    }
    assert.deepEqual(status, { code: 0, signal: null }, `${this.name}: SIGTERM should exit 0\n--- ${this.name} stderr ---\n${this.stderr.slice(-8000)}`);
  }

  // The running node's status through its control socket.
  async status(): Promise<NodeStatus> {
    assert.ok(this.running, `${this.name} is not running`);
    assert.ok(!this.paused, `${this.name} is paused: it cannot answer`);
    const s = (await queryControl(this.dir)) as NodeStatus | undefined;
    assert.ok(s !== undefined, `${this.name}: no server answers on ${this.dir}/control.sock`);
    this.lastStatus = s;
    return s;
  }

  // The same through `blockwal status DIR --json` (the command's "served" document).
  async statusCli(): Promise<NodeStatus> {
    const r = await runCli(['status', this.dir, '--json']);
    assert.ok(r.code === 0 && !r.timedOut, describeRun(`blockwal status ${this.dir} --json`, r));
    const doc = JSON.parse(r.stdout) as { served?: NodeStatus };
    assert.ok(doc.served !== undefined, `${this.name}: status --json did not come from a running server: ${r.stdout.slice(0, 400)}`);
    this.lastStatus = doc.served;
    return doc.served;
  }

  async volumeStatus(): Promise<ServedVolumeStatus> {
    const v = (await this.status()).volumes[0];
    assert.ok(v !== undefined, `${this.name} serves no volume`);
    return v;
  }

  async primaryStatus(): Promise<PrimaryReplicationStatus> {
    const r = (await this.volumeStatus()).replication;
    assert.ok(r?.role === 'primary', `${this.name} is not a replicating primary: ${JSON.stringify(r)}`);
    return r;
  }

  async replicaStatus(): Promise<ReplicaReplicationStatus> {
    const r = (await this.volumeStatus()).replication;
    assert.ok(r?.role === 'replica', `${this.name} is not a replica: ${JSON.stringify(r)}`);
    return r;
  }

  // `blockwal checksum DIR` (the node must be down).
  async checksum(): Promise<string> {
    assert.ok(!this.running, `${this.name} is still running: checksum is offline`);
    const r = await runCli(['checksum', this.dir]);
    assert.ok(r.code === 0 && !r.timedOut, describeRun(`blockwal checksum ${this.dir}`, r));
    const sum = r.stdout.trim();
    assert.match(sum, /^[0-9a-f]{16}$/, `blockwal checksum ${this.dir} printed ${JSON.stringify(r.stdout)}`);
    return sum;
  }

  // One line for failure messages.
  describe(): string {
    const state = !this.running ? `down (${this.exitStatus === undefined ? 'never started' : describeExit(this.exitStatus)})` : this.paused ? 'paused' : 'running';
    const v = this.lastStatus?.volumes[0];
    return `${this.name} [${state}] ${this.flags.join(' ')}\n  last status: ${v === undefined ? '-' : JSON.stringify({ ...v, dir: undefined })}`;
  }
}

// ---- the cluster ----

export interface ClusterOptions {
  sizeBytes: number;
  replicas: number;
  durability?: DurabilityMode; // default sync_all
  ackTimeoutMs?: number;
  epoch?: number;
  primaryExtra?: string[];
  createExtra?: string[]; // more `blockwal create` flags for every node's volume
  // Where the primary dials each replica (default its --repl-listen address;
  // a test's relay between them, say). Asked once the replicas listen.
  replicaAddress?: (r: ClusterNode) => Promise<string>;
}

export class Cluster {
  private constructor(
    readonly root: string,
    private readonly cleanup: () => void,
    readonly primary: ClusterNode,
    readonly replicas: ClusterNode[],
  ) {}

  get nodes(): ClusterNode[] {
    return [this.primary, ...this.replicas];
  }

  // Creates a volume per node (same size), starts the replicas, then the
  // primary feeding them.
  static async start(o: ClusterOptions): Promise<Cluster> {
    const { dir: root, cleanup } = tempDir('cluster');
    const node = (name: string): ClusterNode => new ClusterNode(name, path.join(root, name), path.join(root, `${name}.sock`));
    const primary = node('p');
    const replicas = Array.from({ length: o.replicas }, (_, i) => node(`r${i + 1}`));
    const cluster = new Cluster(root, cleanup, primary, replicas);
    try {
      await Promise.all(cluster.nodes.map((n) => createVolume(n.dir, o.sizeBytes, o.createExtra)));
      await Promise.all(replicas.map((r) => r.start(r.replicaFlags())));
      const addresses = o.replicaAddress === undefined ? undefined : await Promise.all(replicas.map(o.replicaAddress));
      await primary.start(primary.primaryFlags({ replicas, addresses, durability: o.durability, ackTimeoutMs: o.ackTimeoutMs, epoch: o.epoch, extra: o.primaryExtra }));
    } catch (err) {
      await cluster.dispose();
      throw err;
    }
    return cluster;
  }

  // Until the primary reports every replica streaming, in the ack set and
  // current (by default the cluster's first primary and its replicas).
  async waitCurrent(primary: ClusterNode = this.primary, what = 'every replica streaming, in the ack set, with lag 0'): Promise<PrimaryReplicationStatus> {
    return until(
      what,
      async () => {
        const s = await primary.primaryStatus();
        const ok = s.replicas.every((r) => r.state === 'streaming' && r.inAckSet && r.lagLsn === 0);
        return ok && s;
      },
      { explain: () => this.describe() },
    );
  }

  // Until every replica has applied the primary's head with the same chain;
  // returns the common {lsnApplied, applyChecksum}.
  async waitApplied(primary: ClusterNode = this.primary, replicas: ClusterNode[] = this.replicas): Promise<{ lsnApplied: number; applyChecksum: string }> {
    return until(
      'every node applied the same LSN with the same apply checksum',
      async () => {
        const p = await primary.volumeStatus();
        if (p.lsnApplied !== p.lsnHead) return false;
        for (const r of replicas) {
          const v = await r.volumeStatus();
          if (v.lsnApplied !== p.lsnApplied || v.applyChecksum !== p.applyChecksum) return false;
        }
        return { lsnApplied: p.lsnApplied, applyChecksum: p.applyChecksum };
      },
      { explain: () => this.describe() },
    );
  }

  // SIGTERM every running node, primaries first (their replicas get the last
  // commit); each must exit 0.
  async stopAll(): Promise<void> {
    const primaries = this.nodes.filter((n) => n.running && !n.flags.includes('replica'));
    for (const n of primaries) await n.stop();
    for (const n of this.nodes) if (n.running) await n.stop();
  }

  // `blockwal checksum` of every node's dir, by node name (all must be down).
  async checksums(nodes: ClusterNode[] = this.nodes): Promise<Record<string, string>> {
    const sums: Record<string, string> = {};
    for (const n of nodes) sums[n.name] = await n.checksum();
    return sums;
  }

  describe(): string {
    return this.nodes.map((n) => n.describe()).join('\n');
  }

  // SIGKILL what still runs; remove the temp dir unless keep (then say where it is).
  async dispose(keep = false): Promise<void> {
    for (const n of this.nodes) await n.kill('SIGKILL');
    if (keep) console.log(`cluster: kept ${this.root} for inspection`);
    else this.cleanup();
  }
}

// Runs body on a fresh cluster, disposed afterwards (its dir kept, and each
// node's state added to the error, when body fails).
export async function withCluster(options: ClusterOptions, body: (cluster: Cluster) => Promise<void>): Promise<void> {
  const cluster = await Cluster.start(options);
  let passed = false;
  try {
    await body(cluster);
    passed = true;
  } catch (err) {
    if (err instanceof Error) err.message += `\n--- cluster ---\n${cluster.describe()}`;
    throw err;
  } finally {
    await cluster.dispose(!passed);
  }
}

// A 4 KiB block that names its writer's tag and its block number in every 8 bytes.
export function blockPattern(tag: number, block: number): Buffer {
  const b = Buffer.alloc(4096);
  for (let at = 0; at < 4096; at += 8) {
    b.writeUInt32LE(tag, at);
    b.writeUInt32LE(block, at + 4);
  }
  return b;
}

export async function createVolume(dir: string, sizeBytes: number, extra: string[] = []): Promise<void> {
  const r = await runCli(['create', dir, '--size', String(sizeBytes), ...extra]);
  assert.ok(r.code === 0 && !r.timedOut, describeRun(`blockwal create ${dir}`, r));
}

// ---- a pipelined NBD client ----

export interface NbdReply {
  error: number; // 0: success (an NBD errno otherwise)
  data: Buffer;
}

// Requests may be in flight together; replies are matched to them by cookie.
// Simple replies only (no structured replies negotiated). When the
// connection ends, what is still in flight is rejected with ERR_CONNECTION.
export class NbdSession {
  private readonly waiting = new Map<bigint, { lengthBytes: number; resolve: (r: NbdReply) => void; reject: (err: Error) => void }>();
  private nextCookie = 1n;
  repliesReceived = 0;
  readonly done: Promise<void>;

  private constructor(
    readonly client: RawClient,
    readonly sizeBytes: number,
  ) {
    this.done = this.readLoop();
  }

  static async open(address: { path: string }): Promise<NbdSession> {
    const c = await RawClient.open(address, { exportName: EXPORT_NAME, structured: false });
    return new NbdSession(c, c.sizeBytes);
  }

  get inFlight(): number {
    return this.waiting.size;
  }

  write(offsetBytes: number, payload: Buffer, fua = false): Promise<NbdReply> {
    return this.issue({ type: Cmd.write, flags: fua ? 1 : 0, offset: BigInt(offsetBytes), payload }, 0);
  }

  flush(): Promise<NbdReply> {
    return this.issue({ type: Cmd.flush }, 0);
  }

  read(offsetBytes: number, lengthBytes: number): Promise<NbdReply> {
    return this.issue({ type: Cmd.read, offset: BigInt(offsetBytes), length: lengthBytes }, lengthBytes);
  }

  close(): void {
    this.client.destroy();
  }

  private issue(r: { type: number; flags?: number; offset?: bigint; length?: number; payload?: Buffer }, lengthBytes: number): Promise<NbdReply> {
    if (this.client.isEnded) return Promise.reject(connectionError('the connection has ended'));
    const cookie = this.nextCookie++;
    const p = new Promise<NbdReply>((resolve, reject) => this.waiting.set(cookie, { lengthBytes, resolve, reject }));
    this.client.sendRequest({ ...r, cookie });
    return p;
  }

  private async readLoop(): Promise<void> {
    try {
      for (;;) {
        const reply = await this.client.readReply((cookie) => this.waiting.get(cookie)?.lengthBytes ?? 0);
        assert.equal(reply.kind, 'simple', 'structured replies were not negotiated');
        const w = this.waiting.get(reply.cookie);
        assert.ok(w !== undefined, `a reply to cookie ${reply.cookie}, which is not in flight`);
        this.waiting.delete(reply.cookie);
        this.repliesReceived++;
        if (reply.kind === 'simple') w.resolve({ error: reply.error, data: reply.data });
      }
    } catch (err) {
      const why = connectionError(`connection ended: ${(err as Error).message}`);
      for (const w of this.waiting.values()) w.reject(why);
      this.waiting.clear();
    }
  }
}

function connectionError(message: string): Error {
  return Object.assign(new Error(message), { code: 'ERR_CONNECTION' });
}

// Reads the primary's persisted ack set (DIR/replication.json), or undefined.
export function readMembership(dir: string): { ackSet: string[]; dropped: string[]; epoch: number } | undefined {
  const file = path.join(dir, 'replication.json');
  if (!fs.existsSync(file)) return undefined;
  return JSON.parse(fs.readFileSync(file, 'utf8')) as { ackSet: string[]; dropped: string[]; epoch: number };
}
