// A small pipelined NBD client for the demo: fixed newstyle handshake with
// NBD_OPT_GO, simple replies only (no structured replies are asked for), and
// READ, WRITE (optionally FUA), TRIM, FLUSH and DISC. Requests may be in
// flight together; replies are matched to them by cookie. It refuses to send
// a request that overlaps one in flight (NBD leaves the outcome of two
// concurrent overlapping writes undefined), so callers drain first.
//
//   const c = await NbdClient.connect({ path: sock }, 'demo');
//   await c.write(0, data, { fua: true });
//   await c.flush();
//   await c.close();
//
// When the connection ends, every request still in flight is rejected.
import * as net from 'node:net';

import { assert } from '../util/assert';
import {
  CLIENT_FLAG_FIXED_NEWSTYLE,
  CLIENT_FLAG_NO_ZEROES,
  Cmd,
  CmdFlag,
  IHAVEOPT,
  InfoType,
  NBDMAGIC,
  Opt,
  OPTION_REPLY_MAGIC,
  PAYLOAD_BYTES_MAX,
  REQUEST_HEADER_BYTES,
  REQUEST_MAGIC,
  Rep,
  SIMPLE_REPLY_BYTES,
  SIMPLE_REPLY_MAGIC,
  TransmissionFlag,
} from '../nbd/protocol';

const OPTION_REPLY_HEADER_BYTES = 20;
const OPTION_REPLY_DATA_BYTES_MAX = 64 * 1024;

interface Pending {
  offsetBytes: number;
  lengthBytes: number;
  readBytes: number; // data that follows a successful reply (READ only)
  resolve: (data: Buffer) => void;
  reject: (err: Error) => void;
}

export class NbdClient {
  private readonly pending = new Map<bigint, Pending>();
  private nextCookie = 1n;
  private buffered: Buffer[] = [];
  private bufferedBytes = 0;
  private wake: (() => void) | undefined;
  private endedReason: string | undefined;
  private readLoopDone: Promise<void> | undefined;
  sizeBytes = 0;
  transmissionFlags = 0;

  private constructor(private readonly socket: net.Socket) {
    socket.on('data', (chunk: Buffer) => {
      this.buffered.push(chunk);
      this.bufferedBytes += chunk.length;
      this.notify();
    });
    socket.on('error', (err) => this.end(err.message));
    socket.on('close', () => this.end('the server closed the connection'));
  }

  static async connect(address: { path: string } | { host: string; port: number }, exportName: string): Promise<NbdClient> {
    const socket = await new Promise<net.Socket>((resolve, reject) => {
      const s = 'path' in address ? net.connect(address.path) : net.connect(address.port, address.host);
      s.once('error', reject);
      s.once('connect', () => {
        s.off('error', reject);
        resolve(s);
      });
    });
    socket.setNoDelay(true);
    const client = new NbdClient(socket);
    try {
      await client.handshake(exportName);
    } catch (err) {
      socket.destroy();
      throw err;
    }
    client.readLoopDone = client.readLoop();
    return client;
  }

  get inFlight(): number {
    return this.pending.size;
  }

  get canTrim(): boolean {
    return (this.transmissionFlags & TransmissionFlag.sendTrim) !== 0;
  }

  // True when [offsetBytes, +lengthBytes) overlaps a request in flight.
  overlapsInFlight(offsetBytes: number, lengthBytes: number): boolean {
    for (const p of this.pending.values()) {
      if (offsetBytes < p.offsetBytes + p.lengthBytes && p.offsetBytes < offsetBytes + lengthBytes) return true;
    }
    return false;
  }

  write(offsetBytes: number, payload: Buffer, o: { fua?: boolean } = {}): Promise<void> {
    assert(payload.length > 0 && payload.length <= PAYLOAD_BYTES_MAX, `write of ${payload.length} bytes`);
    return this.issue(Cmd.write, o.fua === true ? CmdFlag.fua : 0, offsetBytes, payload.length, payload, 0).then(() => undefined);
  }

  read(offsetBytes: number, lengthBytes: number): Promise<Buffer> {
    assert(lengthBytes > 0 && lengthBytes <= PAYLOAD_BYTES_MAX, `read of ${lengthBytes} bytes`);
    return this.issue(Cmd.read, 0, offsetBytes, lengthBytes, undefined, lengthBytes);
  }

  trim(offsetBytes: number, lengthBytes: number): Promise<void> {
    return this.issue(Cmd.trim, 0, offsetBytes, lengthBytes, undefined, 0).then(() => undefined);
  }

  // Covers the writes that completed before it was sent (callers drain first).
  flush(): Promise<void> {
    return this.issue(Cmd.flush, 0, 0, 0, undefined, 0).then(() => undefined);
  }

  // Sends DISC and waits for the server to close the connection.
  async close(): Promise<void> {
    if (this.endedReason === undefined) this.socket.write(requestHeader(Cmd.disc, 0, 0n, 0, 0));
    this.socket.end();
    await this.readLoopDone;
  }

  private issue(type: Cmd, flags: number, offsetBytes: number, lengthBytes: number, payload: Buffer | undefined, readBytes: number): Promise<Buffer> {
    if (this.endedReason !== undefined) return Promise.reject(new Error(`NBD connection: ${this.endedReason}`));
    assert(offsetBytes >= 0 && offsetBytes + lengthBytes <= this.sizeBytes, `request [${offsetBytes}, +${lengthBytes}) inside the export of ${this.sizeBytes} bytes`);
    assert(type === Cmd.flush || !this.overlapsInFlight(offsetBytes, lengthBytes), `request [${offsetBytes}, +${lengthBytes}) overlaps one in flight`);
    const cookie = this.nextCookie++;
    const done = new Promise<Buffer>((resolve, reject) => this.pending.set(cookie, { offsetBytes, lengthBytes: type === Cmd.flush ? 0 : lengthBytes, readBytes, resolve, reject }));
    this.socket.write(requestHeader(type, flags, cookie, offsetBytes, lengthBytes));
    if (payload !== undefined) this.socket.write(payload);
    return done;
  }

  private async handshake(exportName: string): Promise<void> {
    const greeting = await this.readExactly(18);
    if (greeting.readBigUInt64BE(0) !== NBDMAGIC || greeting.readBigUInt64BE(8) !== IHAVEOPT) throw new Error('not an NBD server (bad greeting)');
    const flags = Buffer.alloc(4);
    flags.writeUInt32BE(CLIENT_FLAG_FIXED_NEWSTYLE | CLIENT_FLAG_NO_ZEROES);
    this.socket.write(flags);
    const name = Buffer.from(exportName);
    const data = Buffer.alloc(4 + name.length + 2);
    data.writeUInt32BE(name.length, 0);
    name.copy(data, 4);
    const header = Buffer.alloc(16);
    header.writeBigUInt64BE(IHAVEOPT, 0);
    header.writeUInt32BE(Opt.go, 8);
    header.writeUInt32BE(data.length, 12);
    this.socket.write(Buffer.concat([header, data]));
    for (;;) {
      const h = await this.readExactly(OPTION_REPLY_HEADER_BYTES);
      if (h.readBigUInt64BE(0) !== OPTION_REPLY_MAGIC) throw new Error('bad option reply magic');
      const type = h.readUInt32BE(12);
      const length = h.readUInt32BE(16);
      if (length > OPTION_REPLY_DATA_BYTES_MAX) throw new Error(`option reply of ${length} bytes`);
      const body = await this.readExactly(length);
      if (type === Rep.ack) break;
      if (type >= 2 ** 31) throw new Error(`export '${exportName}' refused: ${body.toString('utf8') || `reply type 0x${type.toString(16)}`}`);
      if (type === Rep.info && body.readUInt16BE(0) === InfoType.export) {
        this.sizeBytes = Number(body.readBigUInt64BE(2));
        this.transmissionFlags = body.readUInt16BE(10);
      }
    }
    if (this.sizeBytes === 0) throw new Error(`export '${exportName}': the server sent no size`);
  }

  private async readLoop(): Promise<void> {
    try {
      for (;;) {
        const h = await this.readExactly(SIMPLE_REPLY_BYTES);
        if (h.readUInt32BE(0) !== SIMPLE_REPLY_MAGIC) throw new Error(`unexpected reply magic 0x${h.readUInt32BE(0).toString(16)}`);
        const error = h.readUInt32BE(4);
        const cookie = h.readBigUInt64BE(8);
        const p = this.pending.get(cookie);
        if (p === undefined) throw new Error(`a reply to cookie ${cookie}, which is not in flight`);
        this.pending.delete(cookie);
        if (error !== 0) {
          p.reject(new Error(`NBD request at offset ${p.offsetBytes} (${p.lengthBytes} bytes) failed: error ${error}`));
          continue;
        }
        p.resolve(p.readBytes > 0 ? await this.readExactly(p.readBytes) : Buffer.alloc(0));
      }
    } catch (err) {
      this.end((err as Error).message);
    }
  }

  private async readExactly(n: number): Promise<Buffer> {
    while (this.bufferedBytes < n) {
      if (this.endedReason !== undefined) throw new Error(this.endedReason);
      await new Promise<void>((resolve) => (this.wake = resolve));
    }
    const out = Buffer.allocUnsafe(n);
    let at = 0;
    while (at < n) {
      const head = this.buffered[0]!;
      const step = Math.min(n - at, head.length);
      head.copy(out, at, 0, step);
      at += step;
      if (step === head.length) this.buffered.shift();
      else this.buffered[0] = head.subarray(step);
    }
    this.bufferedBytes -= n;
    return out;
  }

  private end(reason: string): void {
    if (this.endedReason !== undefined) return;
    this.endedReason = reason;
    const err = new Error(`NBD connection: ${reason}`);
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
    this.notify();
  }

  private notify(): void {
    const wake = this.wake;
    this.wake = undefined;
    wake?.();
  }
}

function requestHeader(type: Cmd, flags: number, cookie: bigint, offsetBytes: number, lengthBytes: number): Buffer {
  const b = Buffer.alloc(REQUEST_HEADER_BYTES);
  b.writeUInt32BE(REQUEST_MAGIC, 0);
  b.writeUInt16BE(flags, 4);
  b.writeUInt16BE(type, 6);
  b.writeBigUInt64BE(cookie, 8);
  b.writeBigUInt64BE(BigInt(offsetBytes), 16);
  b.writeUInt32BE(lengthBytes, 24);
  return b;
}
