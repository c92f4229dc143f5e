// The control socket: `control.sock` in a served volume's directory, so that
// `blockwal status DIR` reaches the running server (which holds the volume's
// lock). A connection gets one JSON document and is closed.
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';

export const CONTROL_SOCKET = 'control.sock';
// sockaddr_un.sun_path holds 108 bytes including the terminating NUL.
const SOCKET_PATH_MAX = 107;
const QUERY_TIMEOUT_MS = 5000;

export class ControlServer {
  private constructor(
    private readonly server: net.Server,
    readonly socketPath: string,
  ) {}

  // Undefined when the directory's path is too long for a Unix socket.
  static async start(dir: string, answer: () => unknown): Promise<ControlServer | undefined> {
    const socketPath = path.join(dir, CONTROL_SOCKET);
    if (Buffer.byteLength(socketPath) > SOCKET_PATH_MAX) return undefined;
    // A socket left by a killed server: we hold the volume lock, so it is stale.
    fs.rmSync(socketPath, { force: true });
    const server = net.createServer((socket) => {
      socket.on('error', () => undefined);
      socket.end(JSON.stringify(answer()) + '\n');
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(socketPath, () => resolve());
    });
    return new ControlServer(server, socketPath);
  }

  async close(): Promise<void> {
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
    fs.rmSync(this.socketPath, { force: true });
  }
}

// The running server's answer, or undefined when no server listens there.
export async function queryControl(dir: string): Promise<unknown> {
  const socketPath = path.join(dir, CONTROL_SOCKET);
  if (!fs.existsSync(socketPath)) return undefined;
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    const socket = net.connect(socketPath);
    socket.setTimeout(QUERY_TIMEOUT_MS, () => socket.destroy(new Error(`no answer from ${socketPath} within ${QUERY_TIMEOUT_MS} ms`)));
    socket.on('data', (c: Buffer) => chunks.push(c));
    socket.on('end', () => {
      try {
        resolve(JSON.parse(Buffer.concat(chunks).toString('utf8')));
      } catch (err) {
        reject(new Error(`bad answer from ${socketPath}: ${(err as Error).message}`));
      }
    });
    socket.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'ECONNREFUSED' || err.code === 'ENOENT') resolve(undefined);
      else reject(err);
    });
  });
}
