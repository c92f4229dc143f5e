// The fixed newstyle handshake: the greeting, the client's flags, then
// options until EXPORT_NAME or GO picks an export and transmission starts.
//
// Each option is read whole (at most OPTION_DATA_BYTES_MAX bytes) before it
// is handled; replies are written at once, in order, unbatched. A client
// that breaks the framing (bad magic, unknown client flags, an oversized
// option, more than maxOptions options) is dropped; a bad option gets an
// error reply and the haggling goes on. While the server shuts down every
// option but ABORT gets ERR_SHUTDOWN.
import type { Logger } from 'pino';

import type { NbdExport } from './backend';
import type { ConnectionHost } from './host';
import type { ChunkQueue } from '../util/chunk_queue';
import { assertNever } from '../util/assert';
import { ALLOCATION_CONTEXT_ID, CLIENT_FLAG_NO_ZEROES, CLIENT_FLAGS_BYTES, CLIENT_FLAGS_KNOWN, decodeInfoRequest, decodeMetaContextRequest, decodeOptionHeader, encodeExportNameReply, encodeGreeting, encodeInfoBlockSize, encodeInfoExport, encodeInfoString, encodeMetaContextReply, encodeOptionError, encodeOptionReply, encodeServerReply, InfoType, META_CONTEXT_ALLOCATION, Opt, OPTION_DATA_BYTES_MAX, OPTION_HEADER_BYTES, queryMatchesAllocation, Rep, STRING_BYTES_MAX, transmissionFlagsFor } from './protocol';

// What the handshake needs from its connection.
export interface HandshakeOwner {
  // Writes a handshake reply (dropped once the connection is ending).
  send(reply: Buffer): void;
  violation(message: string, close: boolean): false;
  stopReading(reason: string): void;
  abort(reason: string): void;
  startTransmission(exp: NbdExport, structuredReplies: boolean, blockStatus: boolean): void;
}

// What the next input is.
enum HandshakeState {
  clientFlags,
  optionHeader,
  optionData,
}

// Selected meta contexts: base:allocation for one export, or nothing.
interface MetaSelection {
  exportName: string;
}

export class Handshake {
  private state = HandshakeState.clientFlags;
  private noZeroes = false;
  private structuredReplies = false;
  private meta: MetaSelection | undefined;
  private optionsSeen = 0;
  private option = 0;
  private optionBytes = 0;

  constructor(
    private readonly owner: HandshakeOwner,
    private readonly host: ConnectionHost,
    private readonly log: Logger,
    private readonly queue: ChunkQueue<Buffer>,
  ) {}

  // EOF here ends the session cleanly.
  get atMessageBoundary(): boolean {
    return this.state !== HandshakeState.optionData;
  }

  get stateName(): string {
    return HandshakeState[this.state];
  }

  greet(): void {
    this.owner.send(encodeGreeting());
  }

  // Handles one unit of input; false when it is incomplete or input must stop.
  step(): boolean {
    switch (this.state) {
      case HandshakeState.clientFlags:
        return this.parseClientFlags();
      case HandshakeState.optionHeader:
        return this.parseOptionHeader();
      case HandshakeState.optionData:
        return this.parseOptionData();
      default:
        return assertNever(this.state);
    }
  }

  private parseClientFlags(): boolean {
    if (this.queue.bytesQueued < CLIENT_FLAGS_BYTES) return false;
    const b = this.queue.peek(CLIENT_FLAGS_BYTES);
    const flags = b.readUInt32BE(this.queue.peekOffsetBytes);
    this.queue.consume(CLIENT_FLAGS_BYTES);
    if ((flags & ~CLIENT_FLAGS_KNOWN) !== 0) {
      this.owner.violation(`unknown client flags 0x${flags.toString(16)}`, true);
      return false;
    }
    this.noZeroes = (flags & CLIENT_FLAG_NO_ZEROES) !== 0;
    this.state = HandshakeState.optionHeader;
    return true;
  }

  private parseOptionHeader(): boolean {
    if (this.queue.bytesQueued < OPTION_HEADER_BYTES) return false;
    const b = this.queue.peek(OPTION_HEADER_BYTES);
    const h = decodeOptionHeader(b, this.queue.peekOffsetBytes);
    this.queue.consume(OPTION_HEADER_BYTES);
    if (!h.magicOk) return this.owner.violation('bad option magic', true);
    if (h.lengthBytes > OPTION_DATA_BYTES_MAX) {
      return this.owner.violation(`option ${h.option} carries ${h.lengthBytes} bytes (at most ${OPTION_DATA_BYTES_MAX})`, true);
    }
    if (++this.optionsSeen > this.host.limits.maxOptions) {
      return this.owner.violation(`more than ${this.host.limits.maxOptions} options`, true);
    }
    this.option = h.option;
    this.optionBytes = h.lengthBytes;
    this.state = HandshakeState.optionData;
    return true;
  }

  private parseOptionData(): boolean {
    if (this.queue.bytesQueued < this.optionBytes) return false;
    const data = Buffer.allocUnsafe(this.optionBytes);
    this.queue.takeInto(data, 0);
    this.state = HandshakeState.optionHeader;
    this.handleOption(this.option, data);
    return true;
  }

  private handleOption(option: number, data: Buffer): void {
    if (this.host.shuttingDown && option !== Opt.abort) {
      this.optionError(option, Rep.errShutdown, 'the server is shutting down');
      return;
    }
    switch (option) {
      case Opt.exportName:
        return this.optExportName(data);
      case Opt.abort:
        this.owner.send(encodeOptionReply(option, Rep.ack));
        return this.owner.stopReading('abort');
      case Opt.list:
        return this.optList(data);
      case Opt.startTls:
        return this.optionError(option, Rep.errPolicy, 'TLS is not available on this server');
      case Opt.info:
      case Opt.go:
        return this.optInfo(option, data);
      case Opt.structuredReply:
        return this.optStructuredReply(data);
      case Opt.listMetaContext:
      case Opt.setMetaContext:
        return this.optMetaContext(option, data);
      case Opt.extendedHeaders:
        return this.optionError(option, Rep.errUnsup, 'extended headers are not supported');
      default:
        return this.optionError(option, Rep.errUnsup, `option ${option} is not supported`);
    }
  }

  private optionError(option: number, type: Rep, message: string): void {
    this.log.debug({ option, type, message }, 'option refused');
    this.owner.send(encodeOptionError(option, type, message));
  }

  // EXPORT_NAME has no error reply: an unknown name ends the session.
  private optExportName(data: Buffer): void {
    const exp = data.length <= STRING_BYTES_MAX ? this.host.findExport(data.toString('utf8')) : undefined;
    if (exp === undefined) {
      this.log.info({ exportName: data.toString('utf8', 0, Math.min(data.length, 256)) }, 'EXPORT_NAME of an unknown export');
      this.owner.abort('unknown export');
      return;
    }
    const flags = transmissionFlagsFor(exp.backend.readOnly, this.structuredReplies);
    this.owner.send(encodeExportNameReply(exp.backend.sizeBytes, flags, this.noZeroes));
    this.startTransmission(exp);
  }

  private optList(data: Buffer): void {
    if (data.length !== 0) return this.optionError(Opt.list, Rep.errInvalid, 'LIST takes no data');
    for (const exp of this.host.listExports()) this.owner.send(encodeServerReply(Opt.list, exp.name, exp.description));
    this.owner.send(encodeOptionReply(Opt.list, Rep.ack));
  }

  private optInfo(option: Opt.info | Opt.go, data: Buffer): void {
    const request = decodeInfoRequest(data);
    if (typeof request === 'string') return this.optionError(option, Rep.errInvalid, request);
    const exp = this.host.findExport(request.name);
    if (exp === undefined) return this.optionError(option, Rep.errUnknown, `no export named "${request.name}"`);
    const flags = transmissionFlagsFor(exp.backend.readOnly, this.structuredReplies);
    this.owner.send(encodeInfoExport(option, exp.backend.sizeBytes, flags));
    if (request.infoTypes.includes(InfoType.name)) this.owner.send(encodeInfoString(option, InfoType.name, exp.name));
    if (request.infoTypes.includes(InfoType.description)) {
      this.owner.send(encodeInfoString(option, InfoType.description, exp.description));
    }
    this.owner.send(encodeInfoBlockSize(option));
    this.owner.send(encodeOptionReply(option, Rep.ack));
    if (option === Opt.go) this.startTransmission(exp);
  }

  private optStructuredReply(data: Buffer): void {
    if (data.length !== 0) return this.optionError(Opt.structuredReply, Rep.errInvalid, 'STRUCTURED_REPLY takes no data');
    this.structuredReplies = true;
    this.owner.send(encodeOptionReply(Opt.structuredReply, Rep.ack));
  }

  // SET replaces the selection even when it fails; LIST changes nothing.
  private optMetaContext(option: Opt.listMetaContext | Opt.setMetaContext, data: Buffer): void {
    const list = option === Opt.listMetaContext;
    if (!list) this.meta = undefined;
    if (!list && !this.structuredReplies) {
      return this.optionError(option, Rep.errInvalid, 'SET_META_CONTEXT needs structured replies first');
    }
    const request = decodeMetaContextRequest(data);
    if (typeof request === 'string') return this.optionError(option, Rep.errInvalid, request);
    const exp = this.host.findExport(request.exportName);
    if (exp === undefined) return this.optionError(option, Rep.errUnknown, `no export named "${request.exportName}"`);
    const selected = list && request.queries.length === 0 ? true : request.queries.some((q) => queryMatchesAllocation(q, list));
    if (selected) {
      this.owner.send(encodeMetaContextReply(option, list ? 0 : ALLOCATION_CONTEXT_ID, META_CONTEXT_ALLOCATION));
      if (!list) this.meta = { exportName: exp.name };
    }
    this.owner.send(encodeOptionReply(option, Rep.ack));
  }

  // BLOCK_STATUS is allowed when base:allocation was selected for this export.
  private startTransmission(exp: NbdExport): void {
    const blockStatus = this.structuredReplies && this.meta?.exportName === exp.name;
    this.owner.startTransmission(exp, this.structuredReplies, blockStatus);
  }
}
