// The steps of `blockwal demo` (see demo.ts): each step says what it does,
// acts, and reports what happened from the primary's status. Waiting is by
// polling status with a deadline; a step that does not get where it should
// fails the demo with the last state seen.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';

import type { PrimaryReplicationStatus, ReplicaPeerStatus } from '../replication/primary';
import { bar, formatBytes, progressBar } from './args';
import { type DemoNode, runBlockwal, runProgram, until } from './demo_nodes';
import { FsWorkload } from './demo_workload';
import { NbdClient } from './nbd_client';

export interface Tour {
  root: string;
  seed: number;
  p: DemoNode;
  r1: DemoNode;
  r2: DemoNode;
}

const MiB = 1 << 20;
const CREATE_FLAGS = ['--size', '256M', '--wal-segment-size', '4M'];
const EXPORT_NAME = 'demo';
const NBD_SOCKET = 'nbd.sock';
// Workload sizes per step. While r1 is down: well past the 4 MiB backlog, well
// within the WAL the primary keeps for a lagging replica (half of 64 segments
// of 4 MiB), so r1 is caught up from the WAL on disk.
const FIRST_BYTES = 48 * MiB;
const WHILE_DOWN_BYTES = 64 * MiB;
const WHILE_WIPED_BYTES = 16 * MiB;
const DURING_REBUILD_BYTES = 24 * MiB;
const DURING_REBUILD_BYTES_PER_SECOND = 8 * MiB;
const POLL_MS = 50;
const PROGRESS_EVERY_MS = 500;
const DEADLINE_MS = 60_000;

function say(line = ''): void {
  process.stdout.write(line + '\n');
}

function seconds(fromMs: number): string {
  return `${((performance.now() - fromMs) / 1000).toFixed(1)} s`;
}

// A progress line: rewritten in place on a terminal; otherwise printed at
// most every PROGRESS_EVERY_MS, and the last one always.
class ProgressLine {
  private readonly tty = process.stdout.isTTY === true;
  private lastPrintMs = -Infinity;
  private pending: string | undefined;

  update(line: string): void {
    if (this.tty) {
      process.stdout.write(`\r\x1b[K${line}`);
      this.pending = line;
    } else if (performance.now() - this.lastPrintMs >= PROGRESS_EVERY_MS) {
      say(line);
      this.lastPrintMs = performance.now();
      this.pending = undefined;
    } else {
      this.pending = line;
    }
  }

  done(): void {
    if (this.tty && this.pending !== undefined) process.stdout.write('\n');
    else if (this.pending !== undefined) say(this.pending);
    this.pending = undefined;
  }
}

export async function runTour(t: Tour): Promise<void> {
  const startedMs = performance.now();
  say(`blockwal demo: a primary and two replicas on loopback, in ${t.root}`);
  say();
  await createVolumes(t);
  await startNodes(t);
  const client = await NbdClient.connect({ path: path.join(t.root, NBD_SOCKET) }, EXPORT_NAME);
  const workload = new FsWorkload(client.sizeBytes, t.seed);
  await firstWorkload(t, client, workload);
  await killAndCatchUp(t, client, workload);
  await wipeAndRebuild(t, client, workload);
  await client.close();
  await finalStatus(t);
  await stopAndCompare(t, workload);
  say();
  say(`done in ${seconds(startedMs)}. Where to look next:`);
  say('  - README.md, "Replicas": the same flags on three machines; `blockwal status DIR` on a running node shows');
  say('    what step 8 shows, with progress bars during a catch-up or rebuild (`--json` for machines)');
  say('  - `blockwal demo --keep` keeps the volumes and each node\'s log (pino JSON: decisions, sessions, checkpoints)');
  say('  - `npm test`: test/replication/catch_up.test.ts and rebuild.test.ts do this under fio, with interruptions');
}

async function createVolumes(t: Tour): Promise<void> {
  say('1. Three volumes of 256 MiB, one per node. Small WAL segments (4 MiB) make the WAL move on quickly:');
  const nodes = [t.p, t.r1, t.r2];
  for (const n of nodes) say(`   $ blockwal create ${n.relDir} ${CREATE_FLAGS.join(' ')}`);
  await Promise.all(nodes.map((n) => runBlockwal(['create', n.relDir, ...CREATE_FLAGS], t.root)));
}

async function startNodes(t: Tour): Promise<void> {
  say(`2. Three \`blockwal serve\` processes (in ${t.root}; logs in logs/):`);
  for (const r of [t.r1, t.r2]) {
    const flags = ['--role', 'replica', '--repl-listen', '127.0.0.1:0', '--node-id', r.name];
    say(`   $ blockwal serve ${r.relDir} ${flags.join(' ')} &`);
    await r.start(flags);
    say(`     ${r.name}: pid ${r.pid}, a replica listening for its primary on ${r.replAddress}`);
  }
  const flags = ['--nbd', `unix:${NBD_SOCKET}`, '--export', EXPORT_NAME, '--node-id', t.p.name, '--replica', t.r1.replAddress, '--replica', t.r2.replAddress];
  flags.push('--durability', 'sync_quorum', '--repl-backlog', '4M', '--rebuild-rate', '64M');
  say(`   $ blockwal serve ${t.p.relDir} ${flags.join(' ')} &`);
  const startMs = performance.now();
  await t.p.start(flags);
  say(`     p: pid ${t.p.pid}, the primary, NBD on unix:${NBD_SOCKET}. sync_quorum: a write is acknowledged once 2 of the`);
  say('     3 nodes have it, so one replica down does not stop writes; 4 MiB of recent records stay in memory for');
  say('     replicas that reconnect; a rebuild copies at most 64 MiB/s');
  await waitCurrent(t, 'both replicas streaming');
  say(`   both replicas connected and streaming ${seconds(startMs)} after the primary started`);
  await describeExport(t);
}

// nbdinfo (libnbd-bin), a real NBD client, describes the export.
async function describeExport(t: Tour): Promise<void> {
  if (spawnSync('nbdinfo', ['--version']).error !== undefined) {
    say('   (nbdinfo is not installed: Debian package libnbd-bin; the export description is skipped)');
    return;
  }
  const uri = `nbd+unix:///${EXPORT_NAME}?socket=${path.join(t.root, NBD_SOCKET)}`;
  say(`   $ nbdinfo --json '${uri}'`);
  const info = JSON.parse(await runProgram('nbdinfo', ['--json', uri])) as { exports: Record<string, unknown>[] };
  const e = info.exports[0]!;
  say(`     ${formatBytes(Number(e['export-size']))}, block sizes ${e['block_size_minimum']}/${e['block_size_preferred']}/${formatBytes(Number(e['block_size_maximum']))}, multi-conn ${e['can_multi_conn']}, fua ${e['can_fua']}, trim ${e['can_trim']}, flush ${e['can_flush']}`);
}

async function firstWorkload(t: Tour, client: NbdClient, workload: FsWorkload): Promise<void> {
  say(`3. A filesystem-like workload through NBD (an in-process client, seed ${t.seed}): a superblock, an inode table,`);
  say('   a journal committed with FUA, files written as extents, overwritten in place and deleted with TRIM,');
  say('   and a FLUSH (an fsync) every 24 operations');
  await workload.format(client);
  say(`   ${await writeSome(t, client, workload, FIRST_BYTES)}`);
  const applied = await waitApplied(t);
  say(`   every node applied LSN ${applied.lsn}; the replicas' checksum chains match the primary's (${applied.chain})`);
}

async function killAndCatchUp(t: Tour, client: NbdClient, workload: FsWorkload): Promise<void> {
  say(`4. kill -9 r1 (pid ${t.r1.pid}): a crash, no goodbye`);
  await t.r1.kill('SIGKILL');
  const down = await until(
    'the primary to notice r1 is gone',
    async () => {
      const peer = peerOf(await t.p.primaryStatus(), t.r1);
      return peer.state === 'streaming' ? undefined : peer;
    },
    explainWith(t, () => 'r1 still streaming'),
  );
  say(`   the primary noticed: r1 ${describeState(down)}; writes go on (p and r2 are 2 of 3)`);
  const headBefore = (await primaryVolume(t)).lsnHead;
  say(`   ${await writeSome(t, client, workload, WHILE_DOWN_BYTES)}`);
  const s = await t.p.primaryStatus();
  const peer = peerOf(s, t.r1);
  const held = peer.retention;
  say(`   r1 missed LSN ${headBefore + 1} to ${(await primaryVolume(t)).lsnHead}; the in-memory backlog (${formatBytes(s.backlog.bytesMax)}) holds only LSN ${s.backlog.lsnFirst} on,`);
  say(`   so the rest must come from the primary's WAL on disk: ${held === undefined ? 'none' : formatBytes(held.heldBytes)} kept there for r1, ${held === undefined ? '?' : formatBytes(held.headroomBytes)} more before it would need a rebuild`);

  say('5. r1 restarted: it recovers its own WAL; the primary\'s link retries (with backoff), r1 says how far it got,');
  say('   and the primary decides');
  const startMs = performance.now();
  await t.r1.restart();
  const recovered = (await t.r1.status()).volumes[0]!;
  say(`   r1: pid ${t.r1.pid}; its own WAL, recovered, holds up to LSN ${recovered.lsnDurable}`);
  let progressSeen = false;
  const final = await follow(t, t.r1, peer, (p, line) => {
    progressSeen ||= p.catchUp !== undefined;
    if (p.catchUp !== undefined) line.update(`   catch-up ${progressBar(p.catchUp.bytesDone, p.catchUp.bytesTotal, p.catchUp.bytesPerSecond, p.catchUp.etaSeconds)}; LSN ${p.catchUp.lsnFrom} to ${p.catchUp.lsnTarget}`);
  });
  if (!progressSeen) say(`   (the catch-up ran between two looks at the primary's status, ${POLL_MS} ms apart)`);
  say(`   r1 streaming again ${seconds(startMs)} after its restart: ${final.decision?.kind === 'catch_up' ? 'caught up from the WAL, then keep-up with no gap' : `decision ${final.decision?.kind}`}`);
}

async function wipeAndRebuild(t: Tour, client: NbdClient, workload: FsWorkload): Promise<void> {
  say('6. r2 stopped (SIGTERM), its directory wiped and made again: a replacement disk');
  await t.r2.stop();
  say(`   $ rm -rf ${t.r2.relDir} && blockwal create ${t.r2.relDir} ${CREATE_FLAGS.join(' ')}`);
  fs.rmSync(t.r2.dir, { recursive: true, force: true });
  await runBlockwal(['create', t.r2.relDir, ...CREATE_FLAGS], t.root);
  say(`   ${await writeSome(t, client, workload, WHILE_WIPED_BYTES)}`);
  // A checkpoint recycles the start of the primary's WAL (the idle one comes
  // 1–2 s after the writes); until then an empty replica could be caught up.
  let tail = 0;
  const s = await until(
    'the primary to checkpoint and recycle the start of its WAL',
    async () => {
      const st = await t.p.primaryStatus();
      tail = st.wal.lsnTail;
      return tail > 0 ? st : undefined;
    },
    explainWith(t, () => `the primary's WAL still starts at LSN ${tail}`),
  );
  say(`   the primary's WAL now starts at LSN ${s.wal.lsnTail} (head ${(await primaryVolume(t)).lsnHead}): checkpointed and recycled before that, so an`);
  say('   empty replica cannot be caught up from it');

  say('7. r2 restarted, empty. The primary decides; while r2 is rebuilt the workload goes on (paced to 8 MiB/s)');
  const before = peerOf(s, t.r2);
  const startMs = performance.now();
  await t.r2.restart();
  say(`   r2: pid ${t.r2.pid}; the primary's link to it retries with backoff`);
  let writes: Promise<string> | undefined;
  let writing = false;
  const final = await follow(t, t.r2, before, (p, line) => {
    const b = p.rebuild;
    if (b === undefined) return;
    if (writes === undefined) {
      writing = true;
      writes = writeSome(t, client, workload, DURING_REBUILD_BYTES, DURING_REBUILD_BYTES_PER_SECOND).finally(() => (writing = false));
      writes.catch(() => undefined); // awaited below; not unobserved meanwhile
    }
    line.update(`   rebuild  ${progressBar(b.bytesSent, b.bytesTotal, b.bytesPerSecond, b.etaSeconds)}; chunks durable on r2 ${b.chunksDone}/${b.chunksTotal}${writing ? ', writes going on' : ''}`);
  });
  const how = final.decision?.kind === 'rebuild' ? 'the checkpointed base image copied chunk by chunk while the WAL lane applied live writes' : `decision ${final.decision?.kind}`;
  say(`   r2 streaming ${seconds(startMs)} after its restart: ${how}`);
  say(writes === undefined ? '   (the rebuild ended before the demo saw it running: no writes during it)' : `   meanwhile the workload ${await writes}`);
}

async function finalStatus(t: Tour): Promise<void> {
  const applied = await waitApplied(t);
  const s = await t.p.primaryStatus();
  say(`8. The primary's view at the end (\`blockwal status ${t.p.relDir}\` shows it in full):`);
  say(`   p   primary, ${s.durability}, ${s.mode}${s.reason === undefined ? '' : ` (${s.reason})`}, epoch ${s.epoch}, commit LSN ${s.lsnCommit}, ack set ${s.ackSet.map((a) => nameOf(t, a)).join(', ')}`);
  for (const r of [t.r1, t.r2]) {
    const p = peerOf(s, r);
    say(`   ${r.name.padEnd(3)} ${p.state}, applied LSN ${p.lsnApplied} (chain ${p.applyChecksum === applied.chain ? 'matches' : `${p.applyChecksum}, DIFFERENT`}), lag ${p.lagLsn} LSN, connected ${p.connects} times`);
    const d = p.decision;
    say(`       last decision ${d === undefined ? 'none' : `${d.kind} (~${formatBytes(d.costBytes)}): ${d.reason}`}`);
  }
}

async function stopAndCompare(t: Tour, workload: FsWorkload): Promise<void> {
  say('9. All three stopped with SIGTERM, the primary first (its replicas get the last commit); each exits 0.');
  say('   Then `blockwal checksum` of each directory (offline, XXH3-64 of the content):');
  for (const n of [t.p, t.r1, t.r2]) await n.stop();
  const sums = await Promise.all([t.p, t.r1, t.r2].map(async (n) => (await runBlockwal(['checksum', n.relDir], t.root)).trim()));
  const expected = workload.modelChecksum();
  [t.p, t.r1, t.r2].forEach((n, i) => say(`   ${n.name.padEnd(3)} ${sums[i]}`));
  say(`   and the workload's own record of what it wrote: ${expected}`);
  if (sums.some((s) => s !== expected)) {
    throw new Error(`checksums differ: p ${sums[0]}, r1 ${sums[1]}, r2 ${sums[2]}; the workload wrote ${expected}`);
  }
  say('   all equal: each node holds exactly what the clients wrote');
}

// ---- helpers ----

// Runs the workload for about `bytes` more (paced to bytesPerSecond when
// given); returns a line saying what it did.
async function writeSome(t: Tour, client: NbdClient, workload: FsWorkload, bytes: number, bytesPerSecond?: number): Promise<string> {
  const before = { ...workload.stats };
  const startMs = performance.now();
  const line = new ProgressLine();
  // Only a terminal gets a running line: elsewhere it would interleave with other progress.
  const tty = process.stdout.isTTY === true && bytesPerSecond === undefined;
  const run = workload.run(client, bytes, { bytesPerSecond, onProgress: (done) => tty && line.update(`   writing ${bar(done, bytes)} ${formatBytes(done)}`) });
  const after = await withDeadline(t, `the workload to write ${formatBytes(bytes)}`, run);
  line.done();
  const elapsedSeconds = (performance.now() - startMs) / 1000;
  const written = after.bytesWritten - before.bytesWritten;
  return (
    `wrote ${formatBytes(written)} in ${after.writes - before.writes} writes (${after.filesCreated - before.filesCreated} files), ` +
    `trimmed ${formatBytes(after.bytesTrimmed - before.bytesTrimmed)} in ${after.trims - before.trims} TRIMs, ` +
    `${after.flushes - before.flushes} FLUSHes, in ${elapsedSeconds.toFixed(1)} s (${formatBytes(written / elapsedSeconds)}/s)`
  );
}

// Awaits work; after DEADLINE_MS fails with the primary's state then.
async function withDeadline<T>(t: Tour, what: string, work: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      void describeCluster(t).then((state) => reject(new Error(`gave up waiting for ${what} after ${DEADLINE_MS / 1000} s: ${state} (node logs: ${path.join(t.root, 'logs')})`)));
    }, DEADLINE_MS);
  });
  try {
    return await Promise.race([work, late]);
  } finally {
    clearTimeout(timer);
  }
}

// One line on where the nodes are, from the primary's status.
async function describeCluster(t: Tour): Promise<string> {
  try {
    const v = (await t.p.status()).volumes[0]!;
    const r = v.replication;
    const peers = r?.role === 'primary' ? r.replicas.map((p) => `${p.nodeId ?? p.address}: ${describeState(p)}, received ${p.lsnReceived} durable ${p.lsnDurable} applied ${p.lsnApplied}`).join('; ') : '';
    return `primary head ${v.lsnHead} durable ${v.lsnDurable}${r?.role === 'primary' ? ` commit ${r.lsnCommit}` : ''}; ${peers}`;
  } catch (err) {
    return `no status from the primary (${(err as Error).message})`;
  }
}

function nameOf(t: Tour, address: string): string {
  return [t.r1, t.r2].find((n) => n.replAddress === address)?.name ?? address;
}

function peerOf(s: PrimaryReplicationStatus, node: DemoNode): ReplicaPeerStatus {
  const peer = s.replicas.find((r) => r.address === node.replAddress);
  if (peer === undefined) throw new Error(`the primary does not list ${node.name} (${node.replAddress})`);
  return peer;
}

async function primaryVolume(t: Tour): Promise<{ lsnHead: number; lsnApplied: number; applyChecksum: string }> {
  return (await t.p.status()).volumes[0]!;
}

function describeState(p: ReplicaPeerStatus): string {
  return `${p.state}${p.reason === undefined ? '' : ` (${p.reason})`}`;
}

function explainWith(t: Tour, last: () => string): { pollMs: number; deadlineMs: number; explain: () => string } {
  return { pollMs: POLL_MS, deadlineMs: DEADLINE_MS, explain: () => `${last()} (node logs: ${path.join(t.root, 'logs')})` };
}

// Until every replica streams, in the ack set, with lag 0.
async function waitCurrent(t: Tour, what: string): Promise<PrimaryReplicationStatus> {
  let last: PrimaryReplicationStatus | undefined;
  return until(
    what,
    async () => {
      last = await t.p.primaryStatus();
      return last.replicas.every((r) => r.state === 'streaming' && r.inAckSet && r.lagLsn === 0) ? last : undefined;
    },
    explainWith(t, () => (last === undefined ? 'no status' : last.replicas.map((r) => `${r.nodeId ?? r.address}: ${describeState(r)}, lag ${r.lagLsn}`).join('; '))),
  );
}

// Until the primary and every replica applied the primary's head with the same chain.
async function waitApplied(t: Tour): Promise<{ lsn: number; chain: string }> {
  let last = '';
  return until(
    'every node to apply the primary\'s head with the same checksum chain',
    async () => {
      const v = await primaryVolume(t);
      const s = await t.p.primaryStatus();
      last = `primary head ${v.lsnHead} applied ${v.lsnApplied}; ` + s.replicas.map((r) => `${r.nodeId ?? r.address}: ${describeState(r)} applied ${r.lsnApplied}`).join('; ');
      const same = v.lsnApplied === v.lsnHead && s.replicas.every((r) => r.state === 'streaming' && r.lsnApplied === v.lsnApplied && r.applyChecksum === v.applyChecksum);
      return same ? { lsn: v.lsnApplied, chain: v.applyChecksum } : undefined;
    },
    explainWith(t, () => last),
  );
}

// After node's restart: prints the primary's new decision once it is made
// (newer than the one in `before`, a status from before the restart), then
// progress (show) on each look, until the node streams again.
async function follow(t: Tour, node: DemoNode, before: ReplicaPeerStatus, show: (p: ReplicaPeerStatus, line: ProgressLine) => void): Promise<ReplicaPeerStatus> {
  const line = new ProgressLine();
  let decided = false;
  let last: ReplicaPeerStatus | undefined;
  const final = await until(
    `${node.name} to stream again`,
    async () => {
      const p = peerOf(await t.p.primaryStatus(), node);
      last = p;
      if (p.connects <= before.connects) return undefined;
      if (!decided && p.decision !== undefined && p.decision.atMs !== before.decision?.atMs) {
        decided = true;
        say(`   decision: ${p.decision.kind} (~${formatBytes(p.decision.costBytes)}): ${p.decision.reason}`);
      }
      show(p, line);
      return p.state === 'streaming' && decided ? p : undefined;
    },
    explainWith(t, () => (last === undefined ? 'no status' : `${node.name}: ${describeState(last)}, decision ${JSON.stringify(last.decision)}`)),
  );
  line.done();
  return final;
}
