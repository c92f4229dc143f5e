// `blockwal serve DIR`: opens the volume and serves it over NBD until SIGINT
// or SIGTERM, then finishes requests in flight, checkpoints and exits 0.
import { StorageNode } from '../node/storage_node';
import { type Command, parse, parseHostPort, stderrLogger, UsageError } from './args';
import { help } from './create';

const NBD_DEFAULT = '127.0.0.1:10809';

export const serve: Command = {
  usage: `usage: blockwal serve DIR [--nbd HOST:PORT | --nbd unix:PATH | --nbd stdio] [--export NAME]
                      [--metrics HOST:PORT] [--node-id ID] [--read-only]

Serves the volume in DIR over NBD (default ${NBD_DEFAULT}, or the socket
handed over by systemd socket activation, as \`nbdinfo -- [ blockwal serve DIR ]\`
and nbdcopy/nbdfuse do when they start the server).
  --nbd ADDR         HOST:PORT, unix:PATH, or stdio: one connection on stdin/stdout
                     (nbdfuse --command blockwal serve DIR --nbd stdio)
  --export NAME      the export name (default: DIR's base name; clients asking for "" get it too)
  --metrics ADDR     HTTP on HOST:PORT: /metrics (Prometheus) and /status (JSON)
  --node-id ID       this node's name in logs, status and metrics
  --read-only        refuse writes (NBD READ_ONLY)
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
      },
      { min: 1, max: 1, names: 'DIR' },
    );
    if (values.help === true) return help(this.usage);
    const nbd = parseNbdAddress(values.nbd ?? NBD_DEFAULT);
    // A client that starts the server (\`nbdinfo -- [ CMD ]\`) hands over its socket this way.
    const activatedFd = values.nbd === undefined || nbd === 'stdio' ? socketActivationFd() : undefined;
    const metrics = values.metrics === undefined ? undefined : parseHostPort(values.metrics, '--metrics');
    const log = stderrLogger();
    const node = new StorageNode({ nodeId: values['node-id'], logger: log });
    const stopped = stopOnSignals(node);
    try {
      await node.openVolume(positionals[0]!, { exportName: values.export, readOnly: values['read-only'] === true });
      if (metrics !== undefined) await node.listenMetrics(metrics);
      if (activatedFd !== undefined) {
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
