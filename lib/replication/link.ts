// One replication link: frames (frames.ts) both ways over a TCP socket. The
// I/O shell around the codec: it encodes and writes frames, feeds received
// bytes to a FrameDecoder and hands whole frames to onFrame, sends heartbeats
// while it has nothing else to say and closes the link when the peer goes
// quiet. It knows frames only: epochs, HELLO contents and LSNs are for the
// caller to judge.
//
// Rules:
// - Delivery: frames reach onFrame synchronously and in order from the
//   socket's 'data' handler. A HEARTBEAT only shows the peer is alive; an
//   ERROR or GOODBYE closes the link. Nothing is delivered once it is closed.
// - First cause wins (close_once): whatever closes the link first (close(),
//   a bad frame, the peer's ERROR/GOODBYE or end, a socket error, the idle
//   timeout) is the reason; later causes are ignored. The link ends its side
//   (after its own ERROR/GOODBYE when it is the one closing) and destroys the
//   socket LINGER_MS later unless the peer closed its side first. onClose
//   runs exactly once, on the next tick: never inside the call that closed
//   the link, so a caller's close() cannot re-enter its own onClose.
// - No throw from socket handlers: a FrameError closes the link with ERROR
//   bad_frame; an exception from onFrame closes it with a logged reason; the
//   close frame is sent best effort. (A failed assert still throws: a bug.)
// - Lazy timers: a send or a receive only records the time; a timer that
//   fires before its interval has passed since then re-arms for the rest, so
//   the hot path touches no timer. Timers are unref'd and cleared on close.
// - Input bound (input_bounded): frames are consumed synchronously and the
//   decoder refuses a body over bodyBytesMax before buffering any of it, so
//   after each chunk less than one frame stays queued. That is asserted
//   against INPUT_QUEUED_FACTOR x bodyBytesMax rather than handled by pausing
//   the socket: only more input can consume the queue, so a pause would never
//   end.
import * as net from 'node:net';
import pino, { type Logger } from 'pino';

import { assert, assertNever } from '../util/assert';
import type { OutputFence, OutputMark } from './backlog';
import { FrameDecoder } from './frame_decoder';
import {
  CLOSE_CODES,
  CLOSE_MESSAGE_BYTES_MAX,
  encodeFrameChunks,
  FRAME_BODY_BYTES_MAX,
  FrameError,
  type CloseCode,
  type CloseFrame,
  type Frame,
} from './frames';

// The heartbeat default is this, or less for a short idle timeout: at least
// HEARTBEATS_PER_IDLE_TIMEOUT heartbeats fit in one idle timeout.
export const HEARTBEAT_INTERVAL_MS_DEFAULT = 500;
const HEARTBEATS_PER_IDLE_TIMEOUT = 4;
export const IDLE_TIMEOUT_MS_DEFAULT = 5000;
export const CONNECT_TIMEOUT_MS_DEFAULT = 5000;
// After the link ends its side, how long the peer gets to close its own.
export const LINGER_MS = 1000;
// Received bytes the decoder may hold, in units of its body limit.
const INPUT_QUEUED_FACTOR = 2;
// setTimeout's largest delay.
const TIMER_MS_MAX = 2 ** 31 - 1;
// Close codes of an orderly stop: close() sends GOODBYE for these by default.
const GOODBYE_CODES: ReadonlySet<CloseCode> = new Set<CloseCode>(['shutdown', 'stepping_down', 'reassigned']);

assert(
  HEARTBEAT_INTERVAL_MS_DEFAULT * HEARTBEATS_PER_IDLE_TIMEOUT <= IDLE_TIMEOUT_MS_DEFAULT,
  'default heartbeats arrive within the default idle timeout',
);
assert(INPUT_QUEUED_FACTOR * FRAME_BODY_BYTES_MAX <= Number.MAX_SAFE_INTEGER, 'input bound is exact');

export interface LinkOptions {
  logger?: Logger; // child loggers get {peer: 'host:port'}
  heartbeatIntervalMs?: number; // send a HEARTBEAT when nothing was sent for this long (below idleTimeoutMs)
  idleTimeoutMs?: number; // nothing received for this long: close with reason 'timeout'
  bodyBytesMax?: number; // passed to FrameDecoder
  // The sender epoch put on heartbeats and close frames, read at send time.
  // Must return a safe integer >= 0 and not throw.
  epoch: () => number;
}

export type LinkCloseReason =
  | { kind: 'peer_closed'; code?: CloseCode; message: string } // peer sent ERROR/GOODBYE, or the socket ended
  | { kind: 'bad_frame'; error: FrameError } // a frame did not decode (we sent ERROR bad_frame)
  | { kind: 'timeout'; message: string }
  | { kind: 'local'; code: CloseCode; message: string } // close(), or onFrame threw (code bad_frame)
  | { kind: 'socket_error'; error: Error };

type CloseFrameType = CloseFrame['type'];

interface LinkSettings {
  readonly heartbeatIntervalMs: number;
  readonly idleTimeoutMs: number;
}

export class ReplicationLink {
  readonly peer: string; // "host:port" of the remote side
  // Every decoded frame except HEARTBEAT and ERROR/GOODBYE.
  onFrame: (frame: Frame) => void = () => {};
  onClose: (reason: LinkCloseReason) => void = () => {};
  // The write buffer drained after send() returned false.
  onDrain: () => void = () => {};

  private readonly socket: net.Socket;
  private readonly log: Logger;
  private readonly decoder: FrameDecoder;
  private readonly epoch: () => number;
  private readonly settings: LinkSettings;
  private readonly inputQueuedBytesMax: number;
  private closing = false;
  private sentAtMs: number;
  private receivedAtMs: number;
  private heartbeatSequence = 0;
  private heartbeatTimer: NodeJS.Timeout | undefined;
  private idleTimer: NodeJS.Timeout | undefined;
  private lingerTimer: NodeJS.Timeout | undefined;
  private framesReceived = 0;
  private framesSent = 0;
  private bytesReceived = 0;
  private bytesSent = 0;

  // Every link whose socket is not yet closed may hold queued output that
  // refers to the memory it was written from (see outputFence).
  private static readonly open = new Set<ReplicationLink>();

  // Whether the sockets of this process have let go of the memory frames
  // were written from. A socket write that did not complete at once refers
  // to its bytes until it does; writes complete in order, so once a link's
  // completed bytes (handed to the socket − still queued there) reach what
  // had been handed to it at a mark, nothing written before the mark is
  // referenced any more. A destroyed socket counts as holding everything
  // until it closes (its cancelled writes are done by then).
  static readonly outputFence: OutputFence = {
    mark(): OutputMark {
      const queued: [ReplicationLink, number][] = [];
      for (const link of ReplicationLink.open) if (link.socket.writableLength > 0 || link.socket.destroyed) queued.push([link, link.bytesSent]);
      return queued;
    },
    passed(mark: OutputMark): boolean {
      for (const [link, bytes] of mark as [ReplicationLink, number][]) {
        if (!ReplicationLink.open.has(link)) continue;
        if (link.socket.destroyed || link.bytesSent - link.socket.writableLength < bytes) return false;
      }
      return true;
    },
  };

  constructor(socket: net.Socket, options: LinkOptions) {
    if (!(socket instanceof net.Socket)) throw new TypeError('socket must be a net.Socket');
    this.settings = checkOptions(options);
    this.decoder = new FrameDecoder({ bodyBytesMax: options.bodyBytesMax });
    this.inputQueuedBytesMax = INPUT_QUEUED_FACTOR * this.decoder.bodyBytesMax;
    this.epoch = options.epoch;
    this.socket = socket;
    this.peer = peerOf(socket);
    this.log = (options.logger ?? pino({ level: 'silent' })).child({ peer: this.peer });
    this.sentAtMs = this.receivedAtMs = performance.now();
    socket.setNoDelay(true);
    socket.on('data', this.handleData);
    socket.on('end', this.handleEnd);
    socket.on('error', this.handleError);
    socket.on('close', this.handleSocketClose);
    socket.on('drain', this.handleDrain);
    if (!socket.destroyed) ReplicationLink.open.add(this);
    this.heartbeatTimer = later(this.heartbeatDue, this.settings.heartbeatIntervalMs);
    this.idleTimer = later(this.idleDue, this.settings.idleTimeoutMs);
    this.log.debug(this.settings, 'link open');
    if (socket.destroyed) this.shutdown({ kind: 'peer_closed', message: 'the socket was closed before the link was made' });
  }

  // Connects to host:port; rejects with an Error naming host:port when the
  // connection is refused or not made within connectTimeoutMs.
  static connect(host: string, port: number, options: LinkOptions & { connectTimeoutMs?: number }): Promise<ReplicationLink> {
    return new Promise((resolve, reject) => {
      if (typeof host !== 'string' || host === '') throw new TypeError('host must be a non-empty string');
      if (!Number.isInteger(port) || port < 1 || port > 0xffff) throw new RangeError(`port must be in [1, 65535], got ${port}`);
      const connectTimeoutMs = options.connectTimeoutMs ?? CONNECT_TIMEOUT_MS_DEFAULT;
      checkTimerMs('connectTimeoutMs', connectTimeoutMs);
      checkOptions(options);
      const socket = net.connect({ host, port });
      const fail = (why: string, cause?: Error): void => {
        clearTimeout(timer);
        socket.destroy();
        reject(new Error(`replication link: cannot connect to ${host}:${port}: ${why}`, { cause }));
      };
      const onError = (error: Error): void => fail(error.message, error);
      const timer = later(() => fail(`no connection after ${connectTimeoutMs} ms`), connectTimeoutMs);
      socket.once('error', onError);
      socket.once('connect', () => {
        clearTimeout(timer);
        socket.off('error', onError);
        // Made here, not after an await: the link's 'error' listener must be
        // on the socket before any later event can be emitted.
        try {
          resolve(new ReplicationLink(socket, options));
        } catch (error) {
          socket.destroy();
          reject(error);
        }
      });
    });
  }

  // Consumer back-pressure: stop reading the socket while the caller has too
  // much received work outstanding (a replica's WAL appends waiting for
  // space), and read again once it has caught up.
  pauseInput(): void {
    if (!this.closed) this.socket.pause();
  }

  resumeInput(): void {
    if (!this.closed) this.socket.resume();
  }

  get closed(): boolean {
    return this.closing;
  }

  get bytesBuffered(): number {
    return this.socket.writableLength;
  }

  get framesIn(): number {
    return this.framesReceived;
  }

  // The caller holds no view of that received frame's body any more: its
  // buffer may carry a later frame (FrameDecoder.release).
  releaseBody(view: Uint8Array): void {
    this.decoder.release(view);
  }

  get framesOut(): number {
    return this.framesSent;
  }

  get bytesIn(): number {
    return this.bytesReceived;
  }

  get bytesOut(): number {
    return this.bytesSent;
  }

  // Writes the frame; false once the socket's write buffer is over its
  // high-water mark (wait for onDrain), or when the link is closed (a no-op).
  // A frame the codec refuses throws (RangeError/TypeError: a caller bug);
  // ERROR and GOODBYE go through close(), which also closes the link.
  send(frame: Frame): boolean {
    if (frame.type === 'error' || frame.type === 'goodbye') {
      throw new RangeError(`send a ${frame.type} frame with close(), which closes the link too`);
    }
    if (this.closing) return false;
    return this.writeFrame(frame);
  }

  // Sends an ERROR or GOODBYE (best effort; by default GOODBYE for shutdown,
  // stepping_down and reassigned, ERROR otherwise) and closes the link with
  // reason {kind: 'local'}. Idempotent: only the first call does anything.
  close(code: CloseCode, message: string, kind: CloseFrameType = GOODBYE_CODES.has(code) ? 'goodbye' : 'error'): void {
    if (!Object.hasOwn(CLOSE_CODES, code)) throw new RangeError(`unknown close code ${String(code)}`);
    if (typeof message !== 'string') throw new TypeError('message must be a string');
    if (kind !== 'error' && kind !== 'goodbye') throw new RangeError(`kind must be error or goodbye, got ${String(kind)}`);
    this.shutdown({ kind: 'local', code, message }, { type: kind, code, message });
  }

  // ---- Output ----

  // The frames fn sends leave in one socket write: a SYNC sent right behind
  // the records it covers reaches the peer in the same read.
  batch(fn: () => void): void {
    const socket = this.socket;
    socket.cork();
    try {
      fn();
    } finally {
      socket.uncork();
    }
  }

  // The chunks in one corked write: the record bytes of a WAL_RECORDS frame
  // go to the socket as they are, never joined into one buffer.
  private writeFrame(frame: Frame): boolean {
    const chunks = encodeFrameChunks(frame);
    const socket = this.socket;
    if (socket.destroyed || socket.writableEnded) return false;
    let belowHighWater = true;
    socket.cork();
    for (const chunk of chunks) {
      belowHighWater = socket.write(chunk);
      this.bytesSent += chunk.byteLength;
    }
    socket.uncork();
    this.framesSent++;
    this.sentAtMs = performance.now();
    return belowHighWater;
  }

  private sendCloseFrame(type: CloseFrameType, code: CloseCode, message: string): void {
    try {
      this.writeFrame({ type, epoch: this.epoch(), code, message: truncateUtf8(message, CLOSE_MESSAGE_BYTES_MAX) });
    } catch (error) {
      this.log.error({ err: error }, 'could not send the close frame');
    }
  }

  private readonly heartbeatDue = (): void => {
    if (this.closing) return;
    this.decoder.trimPool();
    const quietMs = performance.now() - this.sentAtMs;
    if (quietMs < this.settings.heartbeatIntervalMs) {
      this.heartbeatTimer = later(this.heartbeatDue, this.settings.heartbeatIntervalMs - quietMs);
      return;
    }
    // Output still queued reaches the peer first; a heartbeat would only wait
    // behind it (and pile up while the peer does not read).
    if (this.socket.writableLength === 0) {
      this.writeFrame({ type: 'heartbeat', epoch: this.epoch(), sequence: ++this.heartbeatSequence });
    }
    this.heartbeatTimer = later(this.heartbeatDue, this.settings.heartbeatIntervalMs);
  };

  // ---- Input ----

  private readonly handleData = (chunk: Buffer): void => {
    if (this.closing) return; // the link is closing: input is dropped
    this.bytesReceived += chunk.byteLength;
    this.receivedAtMs = performance.now();
    this.decoder.push(chunk);
    this.deliverFrames();
  };

  private deliverFrames(): void {
    while (!this.closing) {
      let frame: Frame | undefined;
      try {
        frame = this.decoder.next();
      } catch (error) {
        if (!(error instanceof FrameError)) throw error;
        this.log.warn({ code: error.code, reason: error.message }, 'bad frame from peer');
        this.shutdown({ kind: 'bad_frame', error }, { type: 'error', code: 'bad_frame', message: error.message });
        return;
      }
      if (frame === undefined) break;
      this.framesReceived++;
      this.handleFrame(frame);
    }
    if (this.closing) return;
    // input_bounded: less than one frame is left once whole frames are taken.
    assert(
      this.decoder.bytesQueued <= this.inputQueuedBytesMax,
      `decoder holds ${this.decoder.bytesQueued} bytes, over ${this.inputQueuedBytesMax}`,
    );
  }

  private handleFrame(frame: Frame): void {
    switch (frame.type) {
      case 'heartbeat':
        return; // receiving it already counted as hearing from the peer
      case 'error':
      case 'goodbye':
        this.log.debug({ type: frame.type, code: frame.code }, 'peer closed the link');
        this.shutdown({ kind: 'peer_closed', code: frame.code, message: frame.message });
        return;
      case 'hello':
      case 'wal_records':
      case 'ack':
      case 'commit':
      case 'sync':
      case 'rebuild_start':
      case 'base_chunk':
      case 'session_ack':
        this.deliver(frame);
        return;
      default:
        assertNever(frame);
    }
  }

  private deliver(frame: Frame): void {
    try {
      this.onFrame(frame);
    } catch (error) {
      const message = error instanceof Error ? error.message : String(error);
      this.log.error({ err: error, type: frame.type }, 'onFrame threw: closing the link');
      this.shutdown({ kind: 'local', code: 'bad_frame', message }, { type: 'error', code: 'bad_frame', message });
    }
  }

  private readonly idleDue = (): void => {
    if (this.closing) return;
    const quietMs = performance.now() - this.receivedAtMs;
    if (quietMs < this.settings.idleTimeoutMs) {
      this.idleTimer = later(this.idleDue, this.settings.idleTimeoutMs - quietMs);
      return;
    }
    const message = `nothing received for ${Math.round(quietMs)} ms (idle timeout ${this.settings.idleTimeoutMs} ms)`;
    this.shutdown({ kind: 'timeout', message });
  };

  // ---- Socket events ----

  private readonly handleEnd = (): void => {
    this.shutdown({ kind: 'peer_closed', message: 'the peer ended the connection' });
  };

  private readonly handleError = (error: Error): void => {
    if (this.closing) {
      this.log.debug({ err: error }, 'socket error after close');
      return;
    }
    this.socket.destroy();
    this.shutdown({ kind: 'socket_error', error });
  };

  private readonly handleSocketClose = (): void => {
    ReplicationLink.open.delete(this);
    clearTimeout(this.lingerTimer);
    this.lingerTimer = undefined;
    this.shutdown({ kind: 'peer_closed', message: 'the socket closed' });
  };

  private readonly handleDrain = (): void => {
    if (!this.closing) this.onDrain();
  };

  // ---- Closing ----

  // close_once: the first call decides the reason; later calls do nothing.
  private shutdown(reason: LinkCloseReason, closeFrame?: { type: CloseFrameType; code: CloseCode; message: string }): void {
    if (this.closing) return;
    this.closing = true;
    clearTimeout(this.heartbeatTimer);
    clearTimeout(this.idleTimer);
    this.heartbeatTimer = this.idleTimer = undefined;
    if (closeFrame !== undefined) this.sendCloseFrame(closeFrame.type, closeFrame.code, closeFrame.message);
    const socket = this.socket;
    if (!socket.destroyed) {
      if (!socket.writableEnded) socket.end();
      this.lingerTimer = later(() => socket.destroy(), LINGER_MS);
    }
    const fields = closeLogFields(reason);
    if (reason.kind === 'local' && reason.code === 'shutdown') this.log.debug(fields, 'link closed');
    else this.log.info(fields, 'link closed');
    process.nextTick(() => this.onClose(reason));
  }
}

// ---- Helpers ----

function checkOptions(options: LinkOptions): LinkSettings {
  if (typeof options !== 'object' || options === null) throw new TypeError('options must be an object');
  if (typeof options.epoch !== 'function') throw new TypeError('options.epoch must be a function returning the sender epoch');
  const idleTimeoutMs = options.idleTimeoutMs ?? IDLE_TIMEOUT_MS_DEFAULT;
  checkTimerMs('idleTimeoutMs', idleTimeoutMs);
  const heartbeatIntervalMs =
    options.heartbeatIntervalMs ?? Math.min(HEARTBEAT_INTERVAL_MS_DEFAULT, Math.max(1, Math.floor(idleTimeoutMs / HEARTBEATS_PER_IDLE_TIMEOUT)));
  checkTimerMs('heartbeatIntervalMs', heartbeatIntervalMs);
  // A peer with the same settings must hear a heartbeat before it gives up.
  if (heartbeatIntervalMs >= idleTimeoutMs) {
    throw new RangeError(`heartbeatIntervalMs (${heartbeatIntervalMs}) must be below idleTimeoutMs (${idleTimeoutMs})`);
  }
  return { heartbeatIntervalMs, idleTimeoutMs };
}

function checkTimerMs(name: string, valueMs: number): void {
  if (!Number.isInteger(valueMs) || valueMs < 1 || valueMs > TIMER_MS_MAX) {
    throw new RangeError(`${name} must be an integer in [1, ${TIMER_MS_MAX}], got ${valueMs}`);
  }
}

// An unref'd timer: a link never keeps the process alive by itself.
function later(callback: () => void, delayMs: number): NodeJS.Timeout {
  const timer = setTimeout(callback, Math.max(1, Math.ceil(delayMs)));
  timer.unref();
  return timer;
}

function peerOf(socket: net.Socket): string {
  const address = socket.remoteAddress ?? 'unknown';
  const port = socket.remotePort ?? 0;
  return net.isIPv6(address) ? `[${address}]:${port}` : `${address}:${port}`;
}

// Well-formed (lone surrogates become U+FFFD) and cut at a code point so it
// fits the close frame's message field.
function truncateUtf8(text: string, bytesMax: number): string {
  const wellFormed = Buffer.from(text, 'utf8').toString('utf8');
  if (Buffer.byteLength(wellFormed, 'utf8') <= bytesMax) return wellFormed;
  let out = '';
  let bytes = 0;
  for (const codePoint of wellFormed) {
    const codePointBytes = Buffer.byteLength(codePoint, 'utf8');
    if (bytes + codePointBytes > bytesMax) break;
    out += codePoint;
    bytes += codePointBytes;
  }
  return out;
}

function closeLogFields(reason: LinkCloseReason): Record<string, unknown> {
  switch (reason.kind) {
    case 'peer_closed':
      return { close: reason.kind, code: reason.code, reason: reason.message };
    case 'bad_frame':
      return { close: reason.kind, code: reason.error.code, reason: reason.error.message };
    case 'timeout':
      return { close: reason.kind, reason: reason.message };
    case 'local':
      return { close: reason.kind, code: reason.code, reason: reason.message };
    case 'socket_error':
      return { close: reason.kind, err: reason.error };
    default:
      return assertNever(reason);
  }
}

// One line for logs and status: why a link closed.
export function describeClose(reason: LinkCloseReason): string {
  switch (reason.kind) {
    case 'peer_closed':
      return `peer closed the link${reason.code !== undefined ? ` (${reason.code})` : ''}: ${reason.message}`;
    case 'bad_frame':
      return `bad frame: ${reason.error.message}`;
    case 'timeout':
      return `timeout: ${reason.message}`;
    case 'local':
      return `closed here (${reason.code}): ${reason.message}`;
    case 'socket_error':
      return `socket error: ${reason.error.message}`;
    default:
      return assertNever(reason);
  }
}
