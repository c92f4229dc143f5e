// `blockwal status DIR|URL [--json]`: a running server's status (through the
// volume's control socket, or the metrics URL), or an offline volume's.
import { Volume, type VolumeStatus } from '../engine/volume';
import { queryControl } from '../node/control';
import type { NodeStatus } from '../node/storage_node';
import type { AckWaitCounts, PrimaryReplicationStatus } from '../replication/primary';
import type { ReplicaReplicationStatus } from '../replication/replica';
import { bar, type Command, formatBytes, parse, progressBar } from './args';
import { help } from './create';

export const status: Command = {
  usage: `usage: blockwal status DIR|URL [--json]

Shows a volume's state: size, LSNs (head, durable, checkpoint, WAL tail),
dirty bytes, WAL use, failures. DIR: asks the server serving it, or opens it
offline (read-only use; recovery runs). URL: a server's --metrics address
(http://HOST:PORT).
  --json   one JSON document on stdout`,

  async run(args) {
    const { values, positionals } = parse(args, { json: { type: 'boolean' } }, { min: 1, max: 1, names: 'DIR or URL' });
    if (values.help === true) return help(this.usage);
    const target = positionals[0]!;
    const answer = target.startsWith('http://') ? await fetchStatus(target) : await statusOfDir(target);
    process.stdout.write(values.json === true ? JSON.stringify(answer, null, 2) + '\n' : render(answer));
    return 0;
  },
};

type Answer = { served: NodeStatus } | { offline: VolumeStatus };

async function fetchStatus(url: string): Promise<Answer> {
  const res = await fetch(new URL('/status', url));
  if (!res.ok) throw new Error(`${url}: HTTP ${res.status}`);
  return { served: (await res.json()) as NodeStatus };
}

async function statusOfDir(dir: string): Promise<Answer> {
  const live = await queryControl(dir);
  if (live !== undefined) return { served: live as NodeStatus };
  const vol = await Volume.open(dir, { flushIdleMs: 0 });
  try {
    return { offline: vol.status() };
  } finally {
    await vol.close();
  }
}

function render(answer: Answer): string {
  if ('offline' in answer) return `offline volume\n${renderVolume(answer.offline)}`;
  const n = answer.served;
  const nbd = n.nbd.address === undefined ? (n.nbd.connections > 0 ? 'stdio' : 'not listening') : 'path' in n.nbd.address ? `unix:${n.nbd.address.path}` : `${n.nbd.address.host}:${n.nbd.address.port}`;
  const lines = [
    `node ${n.nodeId} (pid ${n.pid}), up ${n.uptimeSeconds} s`,
    `nbd ${nbd}, ${n.nbd.connections} connection(s)${n.metrics === undefined ? '' : `, metrics http://${n.metrics.host}:${n.metrics.port}/metrics`}`,
  ];
  for (const v of n.volumes) {
    lines.push(`export '${v.exportName}'${v.readOnly ? ' (read-only)' : ''}`, renderVolume(v));
    if (v.replication !== undefined) lines.push(renderReplication(v.replication));
  }
  return lines.join('\n') + '\n';
}

function renderVolume(s: VolumeStatus): string {
  const lines = [
    `  volume     ${s.dir}  uuid ${s.uuid}  size ${formatBytes(s.sizeBytes)}  epoch ${s.epoch}`,
    `  state      ${s.failure === undefined ? 'ok' : `FAILED (writes refused): ${s.failure}`}`,
    `  lsn        head ${s.lsnHead}  durable ${s.lsnDurable}  checkpoint ${s.checkpointLsn}  wal tail ${s.lsnTail}`,
    `  dirty      ${formatBytes(s.dirtyBytes)} in ${s.dirtyBlocks} blocks, ${s.zeroRanges} zeroed ranges`,
    `  wal        ${s.walSegments} of ${s.walSegmentsMax} segments of ${formatBytes(s.walSegmentBytes)}, retention ${formatBytes(s.walRetentionBytes)}`,
    `             cache ${formatBytes(s.walCacheBytes)}; read back ${formatBytes(s.walReadMemoryBytes)} from memory, ${formatBytes(s.walReadDiskBytes)} from the disk`,
    `             ${s.walGroupWrites} group writes (${s.walDsyncGroupWrites} with RWF_DSYNC), ${s.walSyncs} fdatasyncs`,
    `  cache      ${formatBytes(s.blockCacheUsedBytes)} of ${formatBytes(s.blockCacheBytes)} of base.img blocks; reads: ${s.blockCacheHits} blocks from memory, ${s.blockCacheMisses} from the disk`,
  ];
  if (s.superblockFallback !== undefined) lines.push(`  warning    superblock fell back to its older slot: ${s.superblockFallback}`);
  return lines.join('\n') + '\n';
}

function renderReplication(r: PrimaryReplicationStatus | ReplicaReplicationStatus): string {
  if (r.role === 'replica') {
    const from = r.primary === undefined ? 'no primary connected' : `primary ${r.primary.nodeId} at ${r.primary.address}`;
    return [
      `  replica    ${r.state}, ${from}, listening on ${r.listen}`,
      `  lsn        received ${r.lsnReceived}  durable ${r.lsnDurable}  applied ${r.lsnApplied}  commit ${r.lsnCommit}  chain ${r.applyChecksum}`,
      ...(r.lastClose === undefined ? [] : [`  last close ${r.lastClose}`]),
      ...(r.rebuild === undefined
        ? []
        : [
            `  rebuild    session ${r.rebuild.sessionId} ${r.rebuild.phase}: ${bar(r.rebuild.chunksDone, r.rebuild.chunksTotal)} ${r.rebuild.chunksDone} of ${r.rebuild.chunksTotal} chunks; applied ${r.rebuild.lsnApplied} of target ${r.rebuild.lsnTarget} (base LSN ${r.rebuild.lsnBase}); reads are refused until it completes`,
          ]),
    ].join('\n') + '\n';
  }
  const lines = [
    `  primary    ${r.durability}, ${r.mode}${r.reason === undefined ? '' : ` (${r.reason})`}, commit ${r.lsnCommit}, ack set ${r.ackSet.length} of ${r.replicas.length}`,
  ];
  const { writes, flushes } = r.ackWait;
  if (writes.total + flushes.total > 0) lines.push(`  acks held  for the replicas: ${ackWaitText('writes', writes)}; ${ackWaitText('flushes', flushes)}`);
  for (const p of r.replicas) {
    lines.push(
      `  replica    ${p.address}${p.nodeId === undefined ? '' : ` (${p.nodeId})`}: ${p.state}${p.reason === undefined ? '' : ` (${p.reason})`}${p.inAckSet ? '' : ', not in the ack set'}`,
      `             lag ${p.lagLsn} LSN, ${formatBytes(p.lagBytes)}, ${p.lagSeconds.toFixed(1)} s; received ${p.lsnReceived} durable ${p.lsnDurable} applied ${p.lsnApplied}`,
    );
    // The last one, made when the replica last connected: not a view of now.
    const last = p.decision;
    if (last !== undefined) lines.push(`             last decision ${ago(last.atMs)}: ${last.kind} (~${formatBytes(last.costBytes)}): ${last.reason}`);
    if (p.completed.catchUps + p.completed.rebuilds > 0) lines.push(`             completed ${p.completed.catchUps} catch-up(s), ${p.completed.rebuilds} rebuild(s) since this primary started`);
    const c = p.catchUp;
    if (c !== undefined) lines.push(`             catch-up ${progressBar(c.bytesDone, c.bytesTotal, c.bytesPerSecond, c.etaSeconds)}`);
    const b = p.rebuild;
    if (b !== undefined) {
      lines.push(
        `             ${b.resync ? 'resync ' : 'rebuild'}  ${progressBar(b.bytesSent, b.bytesTotal, b.bytesPerSecond, b.etaSeconds)}`,
        `                      session ${b.sessionId}${b.resumed ? ' (resumed)' : ''}: chunks sent ${b.chunksSent}${b.resync ? ` (${b.chunksUnchanged} unchanged, without data)` : ''}, durable there ${b.chunksDone} of ${b.chunksTotal}; base LSN ${b.lsnBase}, target ${b.lsnTarget}`,
      );
    }
    const d = p.dirtyBitmap;
    if (d !== undefined) lines.push(`             dirty bitmap: ${d.dirtyBlocks} blocks (${formatBytes(d.dirtyBlocks * 4096)}) written since LSN ${d.lsnFrom}; a resync copies those if the WAL no longer holds its gap`);
    const h = p.retention;
    if (h !== undefined) {
      const time = h.headroomSeconds === undefined ? 'no writes now' : `about ${h.headroomSeconds.toFixed(0)} s at the current write rate`;
      lines.push(`             WAL held for it ${formatBytes(h.heldBytes)}; headroom ${formatBytes(h.headroomBytes)} (${time}) before it needs a rebuild`);
    }
  }
  lines.push(`  repl wal   tail ${r.wal.lsnTail}, ${formatBytes(r.wal.retainedBytes)} retained of a ${formatBytes(r.wal.budgetBytes)} budget, writes ${formatBytes(r.wal.writeBytesPerSecond)}/s`);
  if (r.replicas.some((p) => p.rebuild !== undefined)) {
    const pace = r.rebuildPace.bytesPerSecond > 0 ? `${formatBytes(r.rebuildPace.bytesPerSecond)}/s` : 'unthrottled';
    const target = r.rebuildPace.latencyTargetMs > 0 ? ` (steered by a ${r.rebuildPace.latencyTargetMs} ms write latency target)` : '';
    lines.push(`  rebuild    base lane pace ${pace}${target}`);
  }
  return lines.join('\n') + '\n';
}

// "12 s ago" for a wall-clock time in ms (the server's clock, this machine's).
function ago(atMs: number): string {
  const seconds = Math.max(0, (Date.now() - atMs) / 1000);
  if (seconds < 120) return `${seconds.toFixed(0)} s ago`;
  if (seconds < 7200) return `${(seconds / 60).toFixed(0)} min ago`;
  return `${(seconds / 3600).toFixed(1)} h ago`;
}

// "writes 97 % of 12345, 0.35 ms each": how many acknowledgements the
// replicas held up and by how much on average.
function ackWaitText(what: string, c: AckWaitCounts): string {
  if (c.total === 0) return `${what} none yet`;
  const share = Math.round((100 * c.held) / c.total);
  return `${what} ${share} % of ${c.total}${c.held === 0 ? '' : `, ${((1000 * c.heldSeconds) / c.held).toFixed(2)} ms each`}`;
}
