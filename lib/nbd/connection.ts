// One NBD connection: its streams, its input loop and its lifecycle. The
// phases do the protocol: handshake.ts (greeting and options), then
// transmission.ts (requests, backend calls, replies through
// reply_writer.ts), both reading from one ChunkQueue of received chunks.
//
// Input loop: each received chunk is queued and the current phase handles
// whole units of input (step) until one is incomplete or, in transmission,
// no request can be admitted. While a request waits for a slot the input is
// paused and the socket's receive window fills up, so held input is at most
// one Readable high-water mark plus the chunks already received (the
// in-flight limits themselves are in slot.ts).
//
// Ending: after DISC, ABORT, EOF at a message boundary, or a server
// shutdown the connection reads no more requests, finishes the ones the
// backend is doing, flushes their replies and ends its output; on a socket
// it then waits up to LINGER_MS for the peer to close. A broken stream or a
// protocol violation drops everything at once: late completions release
// their slot and write nothing.
import type { Readable, Writable } from 'node:stream';
import type { Logger } from 'pino';

import type { NbdExport } from './backend';
import { Handshake, type HandshakeOwner } from './handshake';
import type { ConnectionHost } from './host';
import { ChunkQueue } from '../util/chunk_queue';
import { assertNever } from '../util/assert';
import { CLIENT_FLAGS_BYTES, OPTION_HEADER_BYTES, REQUEST_HEADER_BYTES } from './protocol';
import { Transmission, type TransmissionOwner } from './transmission';

// After we end a socket, how long the peer gets to close its side.
const LINGER_MS = 2000;
// The largest fixed-size header read from the input.
const PEEK_BYTES_MAX = Math.max(CLIENT_FLAGS_BYTES, OPTION_HEADER_BYTES, REQUEST_HEADER_BYTES);

enum Phase {
  handshake,
  transmission,
  stopped, // no more input is accepted: it is dropped
}

export class Connection implements HandshakeOwner, TransmissionOwner {
  // Resolves once the connection is torn down.
  readonly done: Promise<void>;
  private readonly log: Logger;
  // One stream both ways (a socket), rather than a pair (stdin/stdout).
  private readonly duplex: boolean;
  private readonly queue = new ChunkQueue<Buffer>(Buffer.allocUnsafe(PEEK_BYTES_MAX));
  private readonly handshake: Handshake;
  private transmission: Transmission | undefined;
  private phase = Phase.handshake;
  private pumping = false;
  private pumpAgain = false;
  private inputPaused = false;
  private inputEnded = false;
  private ending = false;
  private closed = false;
  private stopReason = '';
  private resolveDone!: () => void;
  private handshakeTimer: NodeJS.Timeout | undefined;
  private lingerTimer: NodeJS.Timeout | undefined;

  constructor(
    private readonly host: ConnectionHost,
    logger: Logger,
    private readonly input: Readable,
    private readonly output: Writable,
  ) {
    this.log = logger;
    this.duplex = (input as unknown) === output;
    this.handshake = new Handshake(this, host, logger, this.queue);
    this.done = new Promise<void>((resolve) => (this.resolveDone = resolve));
  }

  get isClosed(): boolean {
    return this.closed;
  }

  // Input received but not yet parsed: ours plus the stream's buffer.
  get queuedBytes(): number {
    return this.queue.bytesQueued + this.input.readableLength;
  }

  start(): void {
    this.input.on('data', this.onData);
    this.input.on('end', this.onEnd);
    this.input.on('error', this.onStreamError);
    this.input.on('close', this.onStreamClose);
    if (!this.duplex) {
      this.output.on('error', this.onStreamError);
      this.output.on('close', this.onStreamClose);
    }
    this.handshakeTimer = setTimeout(this.onHandshakeTimeout, this.host.limits.handshakeTimeoutMs);
    this.handshakeTimer.unref();
    this.handshake.greet();
    this.log.info('connection open');
  }

  // The server is stopping: new options get ERR_SHUTDOWN, new requests
  // ESHUTDOWN; the connection ends once the backend has finished its requests.
  shutdown(): void {
    if (this.closed || this.ending) return;
    if (this.transmission === undefined) {
      this.stopReading('server shutdown');
      return;
    }
    this.transmission.shutdown();
    this.maybeFinish();
  }

  // Drops the connection at once.
  abort(reason: string): void {
    if (this.closed) return;
    this.log.info({ reason }, 'connection aborted');
    this.input.destroy();
    if (!this.duplex) this.output.destroy();
    this.teardown(reason);
  }

  // ---- Called by the phases ----

  send(reply: Buffer): void {
    if (!this.closed && !this.ending) this.output.write(reply);
  }

  violation(message: string, close: boolean): false {
    this.host.counters.protocolViolations++;
    this.log.warn({ violation: message }, 'protocol violation');
    if (close) this.abort(message);
    return false;
  }

  stopReading(reason: string): void {
    if (this.phase !== Phase.stopped) this.stopReason = reason;
    this.phase = Phase.stopped;
    this.queue.clear();
    this.maybeFinish();
  }

  startTransmission(exp: NbdExport, structuredReplies: boolean, blockStatus: boolean): void {
    clearTimeout(this.handshakeTimer);
    this.handshakeTimer = undefined;
    this.transmission = new Transmission(this, this.host, this.log, this.queue, this.output, exp.backend, structuredReplies, blockStatus);
    this.phase = Phase.transmission;
    this.log.info({ export: exp.name, structuredReplies, blockStatus }, 'transmission');
  }

  // Slots are free again: parse what waited for them.
  repliesWritten(): void {
    if (this.inputPaused || this.queue.bytesQueued > 0) this.pump();
  }

  // Ends the connection once input has stopped (DISC, EOF, shutdown) and
  // the backend holds no request: their replies are queued by then.
  maybeFinish(): void {
    if (this.closed || this.ending) return;
    const t = this.transmission;
    if (t !== undefined && t.backendInFlight > 0) return;
    const stopped = this.phase === Phase.stopped;
    if (!stopped && !(t !== undefined && t.shutdownDue)) return;
    if (!stopped) this.stopReason = 'server shutdown';
    this.phase = Phase.stopped;
    this.endGracefully();
  }

  // ---- Input ----

  private readonly onData = (chunk: Buffer): void => {
    if (this.closed) return;
    this.queue.push(chunk);
    this.pump();
  };

  // EOF is judged once the requests already received have been parsed.
  private readonly onEnd = (): void => {
    if (this.closed) return;
    this.inputEnded = true;
    this.pump();
  };

  private afterEnd(): void {
    if (this.phase === Phase.stopped) return;
    const t = this.phase === Phase.transmission ? this.transmission! : undefined;
    const waiting = t !== undefined && t.waitingForSlot && this.queue.bytesQueued >= REQUEST_HEADER_BYTES;
    if (waiting) return; // a release pumps again
    const atBoundary = t !== undefined ? t.atMessageBoundary : this.handshake.atMessageBoundary;
    if (this.queue.bytesQueued === 0 && atBoundary) {
      this.stopReading('end of input');
      return;
    }
    const state = t !== undefined ? t.stateName : this.handshake.stateName;
    this.violation(`end of input in the middle of a message (state ${state}, ${this.queue.bytesQueued} bytes pending)`, true);
  }

  private readonly onStreamError = (err: Error): void => {
    if (this.closed) return;
    this.log.info({ err: err.message }, 'stream error');
    this.abort(`stream error: ${err.message}`);
  };

  private readonly onStreamClose = (): void => {
    if (this.closed) return;
    if (this.ending) {
      this.input.destroy();
      if (!this.duplex) this.output.destroy();
      this.teardown(this.stopReason);
      return;
    }
    this.abort('stream closed');
  };

  private readonly onHandshakeTimeout = (): void => {
    this.handshakeTimer = undefined;
    if (this.transmission === undefined && !this.closed) this.violation('handshake timeout', true);
  };

  private pump(): void {
    if (this.pumping) {
      this.pumpAgain = true;
      return;
    }
    this.pumping = true;
    do {
      this.pumpAgain = false;
      this.parse();
    } while (this.pumpAgain && !this.closed);
    this.pumping = false;
    if (this.inputEnded && !this.closed) this.afterEnd();
    this.updateInputFlow();
  }

  // Handles whole units of input until one is incomplete or no slot is free.
  private parse(): void {
    for (;;) {
      if (this.closed) return;
      switch (this.phase) {
        case Phase.handshake:
          if (!this.handshake.step()) return;
          break;
        case Phase.transmission:
          if (!this.transmission!.step()) return;
          break;
        case Phase.stopped:
          this.queue.clear();
          return;
        default:
          assertNever(this.phase);
      }
    }
  }

  // Pauses the input while requests cannot be admitted, so the client's
  // sends back up into its own socket rather than into our memory.
  private updateInputFlow(): void {
    if (this.closed) return;
    const blocked = this.phase === Phase.transmission && this.transmission!.waitingForSlot;
    if (blocked && !this.inputPaused) {
      this.inputPaused = true;
      this.input.pause();
    } else if (!blocked && this.inputPaused) {
      this.inputPaused = false;
      this.input.resume();
    }
  }

  // ---- Ending ----

  private endGracefully(): void {
    this.transmission?.flushReplies();
    this.ending = true;
    clearTimeout(this.handshakeTimer);
    if (this.inputPaused) {
      this.inputPaused = false;
      this.input.resume();
    }
    if (this.duplex) {
      // Wait for the peer to close its side (onStreamClose), but not forever.
      this.lingerTimer = setTimeout(() => this.abort('peer did not close'), LINGER_MS);
      this.lingerTimer.unref();
      this.output.end();
      return;
    }
    this.output.end(() => {
      this.input.destroy();
      this.teardown(this.stopReason);
    });
  }

  private teardown(reason: string): void {
    if (this.closed) return;
    this.closed = true;
    this.phase = Phase.stopped;
    clearTimeout(this.handshakeTimer);
    clearTimeout(this.lingerTimer);
    this.queue.clear();
    this.transmission?.abandonPayload();
    this.log.info({ reason, requestsInFlight: this.transmission?.requestsInFlight ?? 0 }, 'connection closed');
    this.host.connectionClosed(this);
    this.resolveDone();
  }
}
