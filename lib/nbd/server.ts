// The NBD server: listens on TCP or Unix sockets (or serves one connection
// over a pair of streams, e.g. stdin/stdout), hands each connection to a
// Connection, keeps shared counters, and stops gracefully: close() stops
// accepting, lets requests already at a backend finish, answers new ones
// ESHUTDOWN (new options ERR_SHUTDOWN) and ends every connection.
//
//   const server = new NbdServer({ exports: [{ name: 'vol', description: '', backend }] });
//   const address = await server.listen({ host: '127.0.0.1', port: 10809 });
//   ...
//   await server.close();
import * as net from 'node:net';
import type { Readable, Writable } from 'node:stream';
import pino, { type Logger } from 'pino';

import type { NbdExport } from './backend';
import { Connection } from './connection';
import type { ConnectionHost, ConnectionLimits, Counters, RequestObserver } from './host';
import { COMMAND_NAMES, type CommandName } from './protocol';

export interface NbdServerOptions {
  exports: NbdExport[] | (() => NbdExport[]);
  // Served for the empty name (default: the first export).
  defaultExport?: string;
  logger?: Logger;
  // Per connection (default 64).
  maxRequestsInFlight?: number;
  // Per connection: READ/WRITE data held between request and reply (default 64 MiB).
  maxBytesInFlight?: number;
  // Time from connect to the end of option haggling (default 10000).
  handshakeTimeoutMs?: number;
  // Options per connection before it is closed (default 128).
  maxOptions?: number;
  // Called as each request is answered; `bytes` is the request's length. Keep it cheap.
  onRequest?: RequestObserver;
}

export type NbdAddress = { host: string; port: number } | { path: string };

export interface NbdServerStats extends Counters {
  connectionsOpen: number;
  // Input received and not yet parsed (it waits while a connection is at its limits).
  bytesQueued: number;
}

export const DEFAULT_LIMITS: Readonly<ConnectionLimits> = {
  maxRequestsInFlight: 64,
  maxBytesInFlight: 64 * 1024 * 1024,
  handshakeTimeoutMs: 10_000,
  maxOptions: 128,
};
const REQUESTS_IN_FLIGHT_MAX = 4096;

export class NbdServer {
  private readonly log: Logger;
  private readonly limits: ConnectionLimits;
  private readonly counters: Counters;
  private readonly host: ConnectionHost;
  private readonly listeners: net.Server[] = [];
  private readonly open = new Set<Connection>();
  private nextConnectionId = 1;
  private shuttingDown = false;
  private closing: Promise<void> | undefined;

  constructor(private readonly options: NbdServerOptions) {
    if (Array.isArray(options.exports)) options.exports.forEach(checkExport);
    else if (typeof options.exports !== 'function') throw new TypeError('exports must be an array or a function');
    this.log = options.logger ?? pino({ level: 'silent' });
    this.limits = limitsOf(options);
    this.counters = {
      connectionsAccepted: 0,
      requests: Object.fromEntries([...COMMAND_NAMES, 'unknown'].map((name) => [name, 0])) as Record<CommandName, number>,
      bytesRead: 0,
      bytesWritten: 0,
      errors: 0,
      protocolViolations: 0,
      requestsInFlight: 0,
      bytesInFlight: 0,
    };
    this.host = this.makeHost();
  }

  get connections(): number {
    return this.open.size;
  }

  // Port 0 picks a free port; the result carries the real one.
  listen(address: { host: string; port: number } | { path: string }): Promise<{ host: string; port: number } | { path: string }> {
    if (this.shuttingDown) return Promise.reject(new Error('the NBD server is closed'));
    const listener = net.createServer({ allowHalfOpen: true }, (socket) => this.handleSocket(socket));
    this.listeners.push(listener);
    return new Promise((resolve, reject) => {
      listener.once('error', (err) => {
        this.listeners.splice(this.listeners.indexOf(listener), 1);
        reject(err);
      });
      const onListening = (): void => {
        listener.removeAllListeners('error');
        listener.on('error', (err) => this.log.error({ err: err.message }, 'listener error'));
        const bound = listener.address();
        const result = typeof bound === 'object' && bound !== null ? { host: bound.address, port: bound.port } : { path: String(bound) };
        this.log.info(result, 'listening');
        resolve(result);
      };
      if ('path' in address) listener.listen(address.path, onListening);
      else listener.listen(address.port, address.host, onListening);
    });
  }

  handleSocket(socket: net.Socket): void {
    if (this.shuttingDown) {
      socket.destroy();
      return;
    }
    socket.setNoDelay(true);
    // Replies to requests sent before a client's EOF still go out.
    socket.allowHalfOpen = true;
    const peer = socket.remoteAddress === undefined ? 'unix' : `${socket.remoteAddress}:${socket.remotePort}`;
    this.startConnection(socket, socket, peer);
  }

  // One connection over a pair of streams (stdin/stdout mode); resolves when it ends.
  serveConnection(input: Readable, output: Writable): Promise<void> {
    if (this.shuttingDown) {
      input.destroy();
      output.destroy();
      return Promise.resolve();
    }
    return this.startConnection(input, output, 'stream').done;
  }

  stats(): NbdServerStats {
    const c = this.counters;
    let bytesQueued = 0;
    for (const conn of this.open) bytesQueued += conn.queuedBytes;
    return { ...c, requests: { ...c.requests }, connectionsOpen: this.open.size, bytesQueued };
  }

  close(): Promise<void> {
    if (this.closing !== undefined) return this.closing;
    this.shuttingDown = true;
    const stopped = this.listeners.map((l) => new Promise<void>((resolve) => l.close(() => resolve())));
    const ended = [...this.open].map((conn) => {
      conn.shutdown();
      return conn.done;
    });
    this.closing = Promise.all([...stopped, ...ended]).then(() => this.log.info(this.stats(), 'closed'));
    return this.closing;
  }

  private startConnection(input: Readable, output: Writable, peer: string): Connection {
    const id = this.nextConnectionId++;
    const conn = new Connection(this.host, this.log.child({ connection: id, peer }), input, output);
    this.open.add(conn);
    this.counters.connectionsAccepted++;
    conn.start();
    return conn;
  }

  private makeHost(): ConnectionHost {
    const server = this;
    return {
      counters: this.counters,
      limits: this.limits,
      onRequest: this.options.onRequest,
      get shuttingDown() {
        return server.shuttingDown;
      },
      findExport: (name) => this.findExport(name),
      listExports: () => this.currentExports(),
      connectionClosed: (conn) => void this.open.delete(conn),
    };
  }

  private findExport(name: string): NbdExport | undefined {
    const exports = this.currentExports();
    const wanted = name === '' ? (this.options.defaultExport ?? exports[0]?.name) : name;
    return exports.find((e) => e.name === wanted);
  }

  // A dynamic list is read afresh each time; invalid entries are logged and left out.
  private currentExports(): readonly NbdExport[] {
    const exports = this.options.exports;
    if (Array.isArray(exports)) return exports;
    return exports().filter((e) => {
      try {
        checkExport(e);
        return true;
      } catch (err) {
        this.log.error({ err: (err as Error).message }, 'invalid export left out');
        return false;
      }
    });
  }
}

function checkExport(e: NbdExport): void {
  if (typeof e.name !== 'string' || Buffer.byteLength(e.name) > 4096) throw new TypeError('an export name must be a string of at most 4096 bytes');
  if (typeof e.description !== 'string') throw new TypeError(`export "${e.name}": description must be a string`);
  const size = e.backend?.sizeBytes;
  if (!Number.isSafeInteger(size) || size < 0) throw new RangeError(`export "${e.name}": sizeBytes ${size} must be a non-negative safe integer`);
}

function limitsOf(o: NbdServerOptions): ConnectionLimits {
  const limits: ConnectionLimits = {
    maxRequestsInFlight: o.maxRequestsInFlight ?? DEFAULT_LIMITS.maxRequestsInFlight,
    maxBytesInFlight: o.maxBytesInFlight ?? DEFAULT_LIMITS.maxBytesInFlight,
    handshakeTimeoutMs: o.handshakeTimeoutMs ?? DEFAULT_LIMITS.handshakeTimeoutMs,
    maxOptions: o.maxOptions ?? DEFAULT_LIMITS.maxOptions,
  };
  checkInteger('maxRequestsInFlight', limits.maxRequestsInFlight, 1, REQUESTS_IN_FLIGHT_MAX);
  // A request is admitted while fewer bytes are held, so one of any size always fits.
  checkInteger('maxBytesInFlight', limits.maxBytesInFlight, 1, Number.MAX_SAFE_INTEGER);
  checkInteger('handshakeTimeoutMs', limits.handshakeTimeoutMs, 1, 2 ** 31 - 1);
  checkInteger('maxOptions', limits.maxOptions, 1, 1 << 20);
  return limits;
}

function checkInteger(name: string, value: number, min: number, max: number): void {
  if (!Number.isSafeInteger(value) || value < min || value > max) throw new RangeError(`${name} must be an integer in [${min}, ${max}], got ${value}`);
}
