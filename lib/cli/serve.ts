// `blockwal serve DIR`: opens the volume and serves it over NBD until SIGINT
// or SIGTERM, then finishes requests in flight, checkpoints and exits 0.
import { type ReplicationOptions, StorageNode } from '../node/storage_node';
import { DURABILITY_MODES, type DurabilityMode } from '../replication/primary';
import { type Command, parse, parseHostPort, parseSize, stderrLogger, UsageError } from './args';
import { help } from './create';
import { nodeOptionsMissing } from './node_options';

const NBD_DEFAULT = '127.0.0.1:10809';

export const serve: Command = {
  usage: `usage: blockwal serve DIR [--nbd HOST:PORT | --nbd unix:PATH | --nbd stdio] [--export NAME]
                      [--metrics HOST:PORT] [--node-id ID] [--read-only] [--wal-cache SIZE]
                      [--block-cache SIZE]
                      [--role primary|replica] [--repl-listen HOST:PORT]
                      [--replica HOST:PORT]... [--durability best_effort|sync_all|sync_quorum]
                      [--epoch N] [--ack-timeout MS] [--repl-backlog SIZE]
                      [--rebuild-rate SIZE] [--rebuild-latency-target MS]

Serves the volume in DIR over NBD (default ${NBD_DEFAULT}, or the socket
handed over by systemd socket activation, as \`nbdinfo -- [ blockwal serve DIR ]\`
and nbdcopy/nbdfuse do when they start the server).
  --nbd ADDR         HOST:PORT, unix:PATH, or stdio: one connection on stdin/stdout
                     (nbdfuse --command blockwal serve DIR --nbd stdio)
  --export NAME      the export name (default: DIR's base name; clients asking for "" get it too)
  --metrics ADDR     HTTP on HOST:PORT: /metrics (Prometheus) and /status (JSON)
  --node-id ID       this node's name in logs, status and metrics
  --read-only        refuse writes (NBD READ_ONLY)
  --wal-cache SIZE   recent WAL kept in memory so checkpoints and catch-ups do
                     not read it back from the disk (default 256M, at most the
                     WAL's size; 0 turns it off; checkpoints start at half of it)
  --block-cache SIZE base.img blocks kept in memory, so reads of checkpointed
                     data skip the disk (default 256M; 0 turns it off)
Replication (WAL shipping from a primary to its replicas):
  --role ROLE        primary (default) or replica. A replica takes writes only
                     from its primary and serves NBD (read-only) only with --nbd
  --repl-listen ADDR a replica listens for its primary on HOST:PORT
  --replica ADDR     a primary feeds the replica at HOST:PORT (repeat for more)
  --durability MODE  best_effort (ack after the local WAL, default), sync_all
                     (every replica has it; FLUSH/FUA: durable on every replica),
                     sync_quorum (a majority of the nodes, this one included)
  --epoch N          persist epoch N first (a new primary: higher than the old one's)
  --ack-timeout MS   sync_all: a replica holding an acknowledgement this long
                     leaves the ack set and the volume runs degraded (default 5000)
  --repl-backlog SIZE recent records kept in memory for replicas (default 256M);
                     a replica further behind is caught up from the WAL on disk
                     (kept for it within the volume's WAL retention budget)
  --rebuild-rate SIZE a replica's rebuild copies at most SIZE per second of
                     this node's base image (e.g. 100M; default: unthrottled)
  --rebuild-latency-target MS  while a rebuild runs, slow its base lane down
                     when foreground writes take longer than MS on average
Logs are JSON on stderr (BLOCKWAL_LOG=debug|info|warn). \`blockwal status DIR\` asks the running server.`,

  async run(args) {
    const { values, positionals } = parse(
      args,
      {
        nbd: { type: 'string' },
        export: { type: 'string' },
        metrics: { type: 'string' },
        'node-id': { type: 'string' },
        'read-only': { type: 'boolean' },
        'wal-cache': { type: 'string' },
        'block-cache': { type: 'string' },
        role: { type: 'string' },
        'repl-listen': { type: 'string' },
        replica: { type: 'string', multiple: true },
        durability: { type: 'string' },
        epoch: { type: 'string' },
        'ack-timeout': { type: 'string' },
        'repl-backlog': { type: 'string' },
        'rebuild-rate': { type: 'string' },
        'rebuild-latency-target': { type: 'string' },
      },
      { min: 1, max: 1, names: 'DIR' },
    );
    if (values.help === true) return help(this.usage);
    const replication = parseReplication(values);
    // A replica serves NBD only when asked to.
    const nbd = values.nbd === undefined && replication?.role === 'replica' ? undefined : parseNbdAddress(values.nbd ?? NBD_DEFAULT);
    // A client that starts the server (\`nbdinfo -- [ CMD ]\`) hands over its socket this way.
    const activatedFd = (values.nbd === undefined && nbd !== undefined) || nbd === 'stdio' ? socketActivationFd() : undefined;
    const epoch = values.epoch === undefined ? undefined : parseEpoch(values.epoch);
    const metrics = values.metrics === undefined ? undefined : parseHostPort(values.metrics, '--metrics');
    const walCacheBytes = values['wal-cache'] === undefined ? undefined : parseSize(values['wal-cache'], '--wal-cache', { allowZero: true });
    const blockCacheBytes = values['block-cache'] === undefined ? undefined : parseSize(values['block-cache'], '--block-cache', { allowZero: true });
    const log = stderrLogger();
    const node = new StorageNode({ nodeId: values['node-id'], logger: log });
    const missing = nodeOptionsMissing();
    if (missing.length > 0) {
      log.warn({ missing }, 'node runs without the options the blockwal command sets: expect about a third more CPU per write (full garbage collections every 100-200 ms); start it as `blockwal` or as `node ' + missing.join(' ') + ' .../main.js`');
    }
    const stopped = stopOnSignals(node);
    try {
      await node.openVolume(positionals[0]!, { exportName: values.export, readOnly: values['read-only'] === true, epoch, replication, walCacheBytes, blockCacheBytes });
      if (metrics !== undefined) await node.listenMetrics(metrics);
      const repl = node.status().volumes[0]?.replication;
      if (repl?.role === 'replica') process.stderr.write(`blockwal: replica of ${positionals[0]} listening for its primary on ${repl.listen}\n`);
      if (nbd === undefined) {
        await stopped;
      } else if (activatedFd !== undefined) {
        await node.listenNbdOnFd(activatedFd);
        await stopped;
      } else if (nbd === 'stdio') {
        await Promise.race([node.serveNbdStreams(process.stdin, process.stdout), stopped]);
      } else {
        const bound = await node.listenNbd(nbd);
        process.stderr.write(`blockwal: serving ${positionals[0]} on ${'path' in bound ? `unix:${bound.path}` : `${bound.host}:${bound.port}`}\n`);
        await stopped;
      }
    } finally {
      await node.close();
    }
    return 0;
  },
};

function parseReplication(values: {
  role?: string;
  'repl-listen'?: string;
  replica?: string[];
  durability?: string;
  'ack-timeout'?: string;
  'repl-backlog'?: string;
  'rebuild-rate'?: string;
  'rebuild-latency-target'?: string;
}): ReplicationOptions | undefined {
  const role = values.role ?? 'primary';
  if (role !== 'primary' && role !== 'replica') throw new UsageError(`--role: '${role}' is not primary or replica`);
  const replicas = (values.replica ?? []).map((r) => parseHostPort(r, '--replica'));
  if (role === 'replica') {
    if (values['repl-listen'] === undefined) throw new UsageError('--role replica needs --repl-listen HOST:PORT (where its primary connects)');
    for (const flag of ['replica', 'durability', 'ack-timeout', 'repl-backlog', 'rebuild-rate', 'rebuild-latency-target'] as const) {
      if (values[flag] !== undefined) throw new UsageError(`--${flag} is for a primary; a replica takes its mode from its primary`);
    }
    return { role, listen: parseHostPort(values['repl-listen'], '--repl-listen') };
  }
  if (values['repl-listen'] !== undefined) throw new UsageError('--repl-listen is for --role replica');
  const durability = values.durability ?? 'best_effort';
  if (!DURABILITY_MODES.includes(durability as DurabilityMode)) {
    throw new UsageError(`--durability: '${durability}' is not one of ${DURABILITY_MODES.join(', ')}`);
  }
  if (replicas.length === 0) {
    if (values.durability !== undefined || values['ack-timeout'] !== undefined || values['repl-backlog'] !== undefined || values['rebuild-rate'] !== undefined || values['rebuild-latency-target'] !== undefined) {
      throw new UsageError('--durability, --ack-timeout, --repl-backlog, --rebuild-rate and --rebuild-latency-target need at least one --replica');
    }
    return values.role === undefined ? undefined : { role, replicas };
  }
  let ackTimeoutMs: number | undefined;
  if (values['ack-timeout'] !== undefined) {
    ackTimeoutMs = Number(values['ack-timeout']);
    if (!Number.isSafeInteger(ackTimeoutMs) || ackTimeoutMs < 10) throw new UsageError(`--ack-timeout: '${values['ack-timeout']}' is not a whole number of milliseconds >= 10`);
  }
  const backlogBytes = values['repl-backlog'] === undefined ? undefined : parseSize(values['repl-backlog'], '--repl-backlog');
  const rebuildBytesPerSecond = values['rebuild-rate'] === undefined ? undefined : parseSize(values['rebuild-rate'].replace(/\/s$/, ''), '--rebuild-rate');
  let rebuildLatencyTargetMs: number | undefined;
  if (values['rebuild-latency-target'] !== undefined) {
    rebuildLatencyTargetMs = Number(values['rebuild-latency-target']);
    if (!Number.isFinite(rebuildLatencyTargetMs) || rebuildLatencyTargetMs <= 0) {
      throw new UsageError(`--rebuild-latency-target: '${values['rebuild-latency-target']}' is not a positive number of milliseconds`);
    }
  }
  return { role, replicas, durability: durability as DurabilityMode, ackTimeoutMs, backlogBytes, rebuildBytesPerSecond, rebuildLatencyTargetMs };
}

function parseEpoch(text: string): number {
  const n = /^\d+$/.test(text) ? Number(text) : NaN;
  if (!Number.isSafeInteger(n) || n < 1) throw new UsageError(`--epoch: '${text}' is not a positive whole number`);
  return n;
}

// systemd socket activation: the first inherited socket is fd 3.
function socketActivationFd(): number | undefined {
  if (process.env.LISTEN_PID !== String(process.pid)) return undefined;
  return Number(process.env.LISTEN_FDS) >= 1 ? 3 : undefined;
}

function parseNbdAddress(text: string): 'stdio' | { host: string; port: number } | { path: string } {
  if (text === 'stdio') return 'stdio';
  if (text.startsWith('unix:')) {
    const path = text.slice('unix:'.length);
    if (path.length === 0) throw new UsageError('--nbd unix: needs a socket path');
    return { path };
  }
  return parseHostPort(text, '--nbd');
}

// Resolves on the first SIGINT/SIGTERM; a second one exits at once.
function stopOnSignals(node: StorageNode): Promise<void> {
  return new Promise((resolve) => {
    const onSignal = (signal: NodeJS.Signals): void => {
      if (stopping) {
        node.log.warn({ signal }, 'second signal: exiting without a clean close');
        process.exit(1);
      }
      stopping = true;
      node.log.info({ signal }, 'stopping: finishing requests in flight, then checkpoint and close');
      resolve();
    };
    let stopping = false;
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
  });
}
