// The NBD wire protocol (NetworkBlockDevice/nbd doc/proto.md): magic numbers,
// option/reply/info/command/flag/error values, encoders and decoders for
// headers and replies, and the pure decisions about a request (is it valid,
// does it carry a payload, which error does it get). No I/O here: connection.ts
// is the shell that moves bytes.
//
// Rules kept here:
// - Every integer on the wire is big-endian.
// - Offsets and cookies are u64. A cookie is opaque and kept as two u32
//   halves; an offset is exact as a number below 2^53 and is otherwise
//   OFFSET_BEYOND, which lies past the end of any export (u64-safe bounds:
//   `length > size || offset > size - length`, never a sum).
// - Strings (names, messages, queries) are at most STRING_BYTES_MAX bytes.

// ---- Magic numbers ----

export const NBDMAGIC = 0x4e42444d41474943n;
export const IHAVEOPT = 0x49484156454f5054n;
export const OPTION_REPLY_MAGIC = 0x3e889045565a9n;
export const REQUEST_MAGIC = 0x25609513;
export const SIMPLE_REPLY_MAGIC = 0x67446698;
export const STRUCTURED_REPLY_MAGIC = 0x668e33ef;

// ---- Handshake ----

export const HANDSHAKE_FLAG_FIXED_NEWSTYLE = 1 << 0;
export const HANDSHAKE_FLAG_NO_ZEROES = 1 << 1;
export const CLIENT_FLAG_FIXED_NEWSTYLE = 1 << 0;
export const CLIENT_FLAG_NO_ZEROES = 1 << 1;
export const CLIENT_FLAGS_KNOWN = CLIENT_FLAG_FIXED_NEWSTYLE | CLIENT_FLAG_NO_ZEROES;

export enum Opt {
  exportName = 1,
  abort = 2,
  list = 3,
  peekExport = 4, // withdrawn
  startTls = 5,
  info = 6,
  go = 7,
  structuredReply = 8,
  listMetaContext = 9,
  setMetaContext = 10,
  extendedHeaders = 11,
}

const REP_ERROR_BIT = 2 ** 31;

export enum Rep {
  ack = 1,
  server = 2,
  info = 3,
  metaContext = 4,
  errUnsup = REP_ERROR_BIT + 1,
  errPolicy = REP_ERROR_BIT + 2,
  errInvalid = REP_ERROR_BIT + 3,
  errPlatform = REP_ERROR_BIT + 4,
  errTlsReqd = REP_ERROR_BIT + 5,
  errUnknown = REP_ERROR_BIT + 6,
  errShutdown = REP_ERROR_BIT + 7,
  errBlockSizeReqd = REP_ERROR_BIT + 8,
  errTooBig = REP_ERROR_BIT + 9,
}

export enum InfoType {
  export = 0,
  name = 1,
  description = 2,
  blockSize = 3,
}

// ---- Transmission ----

export enum TransmissionFlag {
  hasFlags = 1 << 0,
  readOnly = 1 << 1,
  sendFlush = 1 << 2,
  sendFua = 1 << 3,
  rotational = 1 << 4,
  sendTrim = 1 << 5,
  sendWriteZeroes = 1 << 6,
  sendDf = 1 << 7,
  canMultiConn = 1 << 8,
  sendResize = 1 << 9,
  sendCache = 1 << 10,
  sendFastZero = 1 << 11,
}

export enum Cmd {
  read = 0,
  write = 1,
  disc = 2,
  flush = 3,
  trim = 4,
  cache = 5,
  writeZeroes = 6,
  blockStatus = 7,
}

export const COMMAND_NAMES = ['read', 'write', 'disc', 'flush', 'trim', 'cache', 'write_zeroes', 'block_status'] as const;
export type CommandName = (typeof COMMAND_NAMES)[number] | 'unknown';

export function commandName(type: number): CommandName {
  return type < COMMAND_NAMES.length ? COMMAND_NAMES[type]! : 'unknown';
}

export enum CmdFlag {
  fua = 1 << 0,
  noHole = 1 << 1,
  df = 1 << 2,
  reqOne = 1 << 3,
  fastZero = 1 << 4,
}

export enum ChunkType {
  none = 0,
  offsetData = 1,
  offsetHole = 2,
  blockStatus = 5,
  error = 2 ** 15 + 1,
}

export const CHUNK_FLAG_DONE = 1;

// The only error values allowed on the wire.
export enum Errno {
  ok = 0,
  eperm = 1,
  eio = 5,
  enomem = 12,
  einval = 22,
  enospc = 28,
  eoverflow = 75,
  enotsup = 95,
  eshutdown = 108,
}

export const STATE_HOLE = 1 << 0;
export const STATE_ZERO = 1 << 1;

export const META_CONTEXT_ALLOCATION = 'base:allocation';
// The id SET_META_CONTEXT gives base:allocation (LIST replies use 0).
export const ALLOCATION_CONTEXT_ID = 1;

// ---- Sizes and limits ----

export const GREETING_BYTES = 18;
export const CLIENT_FLAGS_BYTES = 4;
export const OPTION_HEADER_BYTES = 16;
export const REQUEST_HEADER_BYTES = 28;
export const SIMPLE_REPLY_BYTES = 16;
export const CHUNK_HEADER_BYTES = 20;
export const EXPORT_NAME_ZEROES_BYTES = 124;

export const STRING_BYTES_MAX = 4096;
// Larger option data is a denial of service: the connection is closed.
export const OPTION_DATA_BYTES_MAX = 64 * 1024;

// Advertised block size constraints: the engine does read-modify-write.
export const BLOCK_BYTES_MIN = 1;
export const BLOCK_BYTES_PREFERRED = 4096;
export const PAYLOAD_BYTES_MAX = 32 * 1024 * 1024;
// A WRITE up to this size above PAYLOAD_BYTES_MAX is consumed and failed;
// anything larger loses the connection.
export const WRITE_BYTES_DISCARD_MAX = 2 * PAYLOAD_BYTES_MAX;
// Extents in one BLOCK_STATUS chunk (the spec's SHOULD is 2^20).
export const EXTENTS_MAX = 1 << 16;

// Offsets at or above 2^53 are not exact numbers and lie past any export.
export const OFFSET_BEYOND = Number.POSITIVE_INFINITY;
const OFFSET_HI_EXACT_LIMIT = 2 ** 21;
const U32 = 2 ** 32;

// ---- Handshake encoders ----

export function encodeGreeting(): Buffer {
  const b = Buffer.alloc(GREETING_BYTES);
  b.writeBigUInt64BE(NBDMAGIC, 0);
  b.writeBigUInt64BE(IHAVEOPT, 8);
  b.writeUInt16BE(HANDSHAKE_FLAG_FIXED_NEWSTYLE | HANDSHAKE_FLAG_NO_ZEROES, 16);
  return b;
}

export interface OptionHeader {
  magicOk: boolean;
  option: number;
  lengthBytes: number;
}

export function decodeOptionHeader(b: Buffer, at: number): OptionHeader {
  return {
    magicOk: b.readBigUInt64BE(at) === IHAVEOPT,
    option: b.readUInt32BE(at + 8),
    lengthBytes: b.readUInt32BE(at + 12),
  };
}

export function encodeOptionReply(option: number, type: Rep, data?: Uint8Array): Buffer {
  const dataBytes = data === undefined ? 0 : data.byteLength;
  const b = Buffer.allocUnsafe(20 + dataBytes);
  b.writeBigUInt64BE(OPTION_REPLY_MAGIC, 0);
  b.writeUInt32BE(option, 8);
  b.writeUInt32BE(type, 12);
  b.writeUInt32BE(dataBytes, 16);
  if (data !== undefined) b.set(data, 20);
  return b;
}

export function encodeOptionError(option: number, type: Rep, message: string): Buffer {
  return encodeOptionReply(option, type, Buffer.from(truncateUtf8(message)));
}

// REP_SERVER: u32 name length, name, description.
export function encodeServerReply(option: number, name: string, description: string): Buffer {
  const nameBytes = Buffer.from(name);
  const data = Buffer.allocUnsafe(4 + nameBytes.length);
  data.writeUInt32BE(nameBytes.length, 0);
  nameBytes.copy(data, 4);
  return encodeOptionReply(option, Rep.server, Buffer.concat([data, Buffer.from(truncateUtf8(description))]));
}

export function encodeInfoExport(option: number, sizeBytes: number, transmissionFlags: number): Buffer {
  const data = Buffer.allocUnsafe(12);
  data.writeUInt16BE(InfoType.export, 0);
  data.writeBigUInt64BE(BigInt(sizeBytes), 2);
  data.writeUInt16BE(transmissionFlags, 10);
  return encodeOptionReply(option, Rep.info, data);
}

export function encodeInfoString(option: number, type: InfoType.name | InfoType.description, text: string): Buffer {
  const textBytes = Buffer.from(truncateUtf8(text));
  const data = Buffer.allocUnsafe(2 + textBytes.length);
  data.writeUInt16BE(type, 0);
  textBytes.copy(data, 2);
  return encodeOptionReply(option, Rep.info, data);
}

export function encodeInfoBlockSize(option: number): Buffer {
  const data = Buffer.allocUnsafe(14);
  data.writeUInt16BE(InfoType.blockSize, 0);
  data.writeUInt32BE(BLOCK_BYTES_MIN, 2);
  data.writeUInt32BE(BLOCK_BYTES_PREFERRED, 6);
  data.writeUInt32BE(PAYLOAD_BYTES_MAX, 10);
  return encodeOptionReply(option, Rep.info, data);
}

export function encodeMetaContextReply(option: number, contextId: number, name: string): Buffer {
  const nameBytes = Buffer.from(name);
  const data = Buffer.allocUnsafe(4 + nameBytes.length);
  data.writeUInt32BE(contextId, 0);
  nameBytes.copy(data, 4);
  return encodeOptionReply(option, Rep.metaContext, data);
}

// The reply to EXPORT_NAME: size, flags, and 124 zeroes unless NO_ZEROES.
export function encodeExportNameReply(sizeBytes: number, transmissionFlags: number, noZeroes: boolean): Buffer {
  const b = Buffer.alloc(10 + (noZeroes ? 0 : EXPORT_NAME_ZEROES_BYTES));
  b.writeBigUInt64BE(BigInt(sizeBytes), 0);
  b.writeUInt16BE(transmissionFlags, 8);
  return b;
}

// ---- Option data decoders (pure; a string result is the ERR_INVALID message) ----

export interface InfoRequest {
  name: string;
  infoTypes: number[];
}

// INFO/GO data: u32 name length, name, u16 count, count x u16 info type.
export function decodeInfoRequest(data: Buffer): InfoRequest | string {
  if (data.length < 6) return `option data of ${data.length} bytes is too short (at least 6)`;
  const nameBytes = data.readUInt32BE(0);
  if (nameBytes > data.length - 6) return `name length ${nameBytes} overruns the option (${data.length} bytes)`;
  if (nameBytes > STRING_BYTES_MAX) return `name length ${nameBytes} exceeds ${STRING_BYTES_MAX} bytes`;
  const count = data.readUInt16BE(4 + nameBytes);
  if (data.length !== 6 + nameBytes + 2 * count) {
    return `${count} info requests do not match the option length (${data.length} bytes)`;
  }
  const infoTypes: number[] = [];
  for (let i = 0; i < count; i++) infoTypes.push(data.readUInt16BE(6 + nameBytes + 2 * i));
  return { name: data.toString('utf8', 4, 4 + nameBytes), infoTypes };
}

export interface MetaContextRequest {
  exportName: string;
  queries: string[];
}

// LIST/SET_META_CONTEXT data: u32 name length, name, u32 count, count x (u32 length, query).
export function decodeMetaContextRequest(data: Buffer): MetaContextRequest | string {
  if (data.length < 8) return `option data of ${data.length} bytes is too short (at least 8)`;
  const nameBytes = data.readUInt32BE(0);
  if (nameBytes > data.length - 8) return `export name length ${nameBytes} overruns the option (${data.length} bytes)`;
  if (nameBytes > STRING_BYTES_MAX) return `export name length ${nameBytes} exceeds ${STRING_BYTES_MAX} bytes`;
  const exportName = data.toString('utf8', 4, 4 + nameBytes);
  const count = data.readUInt32BE(4 + nameBytes);
  const queries: string[] = [];
  let at = 8 + nameBytes;
  for (let i = 0; i < count; i++) {
    if (data.length - at < 4) return `query ${i} of ${count} overruns the option`;
    const queryBytes = data.readUInt32BE(at);
    if (queryBytes > data.length - at - 4) return `query ${i} length ${queryBytes} overruns the option`;
    if (queryBytes > STRING_BYTES_MAX) return `query ${i} length ${queryBytes} exceeds ${STRING_BYTES_MAX} bytes`;
    queries.push(data.toString('utf8', at + 4, at + 4 + queryBytes));
    at += 4 + queryBytes;
  }
  if (at !== data.length) return `${data.length - at} bytes follow the last query`;
  return { exportName, queries };
}

// Which of our contexts a query names. LIST treats `base:` as a wildcard;
// SET ignores it. Unknown namespaces and leaves select nothing.
export function queryMatchesAllocation(query: string, list: boolean): boolean {
  if (query === META_CONTEXT_ALLOCATION) return true;
  return list && query === 'base:';
}

// ---- Requests ----

// Filled in place by decodeRequestHeader (one per connection: no allocation per request).
export interface RequestHeader {
  magicOk: boolean;
  flags: number;
  type: number;
  cookieHi: number;
  cookieLo: number;
  offsetHi: number;
  offsetLo: number;
  // Exact below 2^53, else OFFSET_BEYOND.
  offsetBytes: number;
  lengthBytes: number;
}

export function newRequestHeader(): RequestHeader {
  return { magicOk: false, flags: 0, type: 0, cookieHi: 0, cookieLo: 0, offsetHi: 0, offsetLo: 0, offsetBytes: 0, lengthBytes: 0 };
}

export function decodeRequestHeader(b: Buffer, at: number, out: RequestHeader): void {
  out.magicOk = b.readUInt32BE(at) === REQUEST_MAGIC;
  out.flags = b.readUInt16BE(at + 4);
  out.type = b.readUInt16BE(at + 6);
  out.cookieHi = b.readUInt32BE(at + 8);
  out.cookieLo = b.readUInt32BE(at + 12);
  out.offsetHi = b.readUInt32BE(at + 16);
  out.offsetLo = b.readUInt32BE(at + 20);
  out.offsetBytes = out.offsetHi < OFFSET_HI_EXACT_LIMIT ? out.offsetHi * U32 + out.offsetLo : OFFSET_BEYOND;
  out.lengthBytes = b.readUInt32BE(at + 24);
}

export function formatOffset(offsetHi: number, offsetLo: number): string {
  return ((BigInt(offsetHi) << 32n) | BigInt(offsetLo)).toString();
}

// What to do with the bytes after a request header.
export enum Payload {
  none,
  read, // a WRITE payload to read into a buffer
  discard, // too large to accept, small enough to skip: consume and fail with EINVAL
  disconnect, // too large to skip: framing cannot be kept
}

export function payloadOf(type: number, lengthBytes: number): Payload {
  if (type !== Cmd.write) return Payload.none;
  if (lengthBytes <= PAYLOAD_BYTES_MAX) return Payload.read;
  if (lengthBytes <= WRITE_BYTES_DISCARD_MAX) return Payload.discard;
  return Payload.disconnect;
}

// What the connection knows when it checks a request.
export interface RequestContext {
  sizeBytes: number;
  readOnly: boolean;
  structuredReplies: boolean;
  // base:allocation was selected for this export.
  blockStatus: boolean;
  shuttingDown: boolean;
}

export interface RequestVerdict {
  errno: Errno;
  // Why, for ERROR chunks and the log ('' when errno is ok).
  message: string;
  // The client broke a rule of the protocol (not just a failed operation).
  violation: boolean;
}

const OK: RequestVerdict = { errno: Errno.ok, message: '', violation: false };

const FLAGS_VALID: readonly number[] = [
  /* read */ CmdFlag.fua | CmdFlag.df,
  /* write */ CmdFlag.fua,
  /* disc */ CmdFlag.fua,
  /* flush */ CmdFlag.fua,
  /* trim */ CmdFlag.fua,
  /* cache */ CmdFlag.fua,
  /* write_zeroes */ CmdFlag.fua | CmdFlag.noHole | CmdFlag.fastZero,
  /* block_status */ CmdFlag.fua | CmdFlag.reqOne,
];

// Validates a request up front, in nbdkit's order: shutdown, command and
// flags, permission, size limits, bounds. Pure.
export function checkRequest(h: RequestHeader, ctx: RequestContext): RequestVerdict {
  if (ctx.shuttingDown) return { errno: Errno.eshutdown, message: 'the server is shutting down', violation: false };
  if (h.type >= FLAGS_VALID.length) return violation(Errno.einval, `unknown command ${h.type}`);
  const name = COMMAND_NAMES[h.type]!;
  const badFlags = h.flags & ~FLAGS_VALID[h.type]!;
  if (badFlags !== 0) return violation(Errno.einval, `flags 0x${badFlags.toString(16)} are not valid on ${name}`);
  if ((h.flags & CmdFlag.df) !== 0 && !ctx.structuredReplies) {
    return violation(Errno.einval, 'DF needs structured replies');
  }
  if (h.type === Cmd.blockStatus && !ctx.blockStatus) {
    return violation(Errno.einval, 'block_status needs base:allocation selected with SET_META_CONTEXT for this export');
  }
  if (ctx.readOnly && (h.type === Cmd.write || h.type === Cmd.trim || h.type === Cmd.writeZeroes)) {
    return { errno: Errno.eperm, message: `${name} on a read-only export`, violation: false };
  }
  if ((h.type === Cmd.read || h.type === Cmd.write) && h.lengthBytes > PAYLOAD_BYTES_MAX) {
    return violation(Errno.einval, `${name} of ${h.lengthBytes} bytes exceeds the maximum payload of ${PAYLOAD_BYTES_MAX}`);
  }
  return checkBounds(h, ctx.sizeBytes, name);
}

function checkBounds(h: RequestHeader, sizeBytes: number, name: string): RequestVerdict {
  if (h.type === Cmd.flush) return OK; // offset and length are meaningless (be lenient)
  if (h.lengthBytes <= sizeBytes && h.offsetBytes <= sizeBytes - h.lengthBytes) {
    if (h.type === Cmd.blockStatus && h.lengthBytes === 0) return violation(Errno.einval, 'block_status of 0 bytes');
    return OK;
  }
  const errno = h.type === Cmd.write || h.type === Cmd.writeZeroes ? Errno.enospc : Errno.einval;
  const offset = formatOffset(h.offsetHi, h.offsetLo);
  return violation(errno, `${name} of ${h.lengthBytes} bytes at offset ${offset} lies beyond the end of the export (${sizeBytes} bytes)`);
}

function violation(errno: Errno, message: string): RequestVerdict {
  return { errno, message, violation: true };
}

// Backend error codes to wire errors, in one table (see backend.ts).
const ERRNO_BY_CODE: Readonly<Record<string, Errno>> = {
  ERR_OUT_OF_RANGE: Errno.einval,
  ERR_BAD_OFFSET: Errno.einval,
  ERR_BAD_LENGTH: Errno.einval,
  ERR_TOO_LARGE: Errno.einval,
  ERR_READ_ONLY: Errno.eperm,
  ERR_NO_SPACE: Errno.enospc,
  ERR_NOT_FAST: Errno.enotsup,
  ERR_SHUTDOWN: Errno.eshutdown,
  ERR_CLOSED: Errno.eshutdown,
};

export function errnoOf(err: unknown): Errno {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? (ERRNO_BY_CODE[code] ?? Errno.eio) : Errno.eio;
}

// ---- Reply encoders (at `at` in a caller's buffer, returning the bytes written: no allocation) ----

export const DATA_CHUNK_HEADER_BYTES = CHUNK_HEADER_BYTES + 8;
export const HOLE_CHUNK_BYTES = CHUNK_HEADER_BYTES + 12;

export function encodeSimpleReply(b: Buffer, at: number, errno: Errno, cookieHi: number, cookieLo: number): number {
  b.writeUInt32BE(SIMPLE_REPLY_MAGIC, at);
  b.writeUInt32BE(errno, at + 4);
  b.writeUInt32BE(cookieHi, at + 8);
  b.writeUInt32BE(cookieLo, at + 12);
  return SIMPLE_REPLY_BYTES;
}

export function encodeChunkHeader(
  b: Buffer,
  at: number,
  flags: number,
  type: ChunkType,
  cookieHi: number,
  cookieLo: number,
  lengthBytes: number,
): number {
  b.writeUInt32BE(STRUCTURED_REPLY_MAGIC, at);
  b.writeUInt16BE(flags, at + 4);
  b.writeUInt16BE(type, at + 6);
  b.writeUInt32BE(cookieHi, at + 8);
  b.writeUInt32BE(cookieLo, at + 12);
  b.writeUInt32BE(lengthBytes, at + 16);
  return CHUNK_HEADER_BYTES;
}

// What precedes the data of a final OFFSET_DATA chunk.
export function encodeDataChunkHeader(b: Buffer, at: number, cookieHi: number, cookieLo: number, offsetHi: number, offsetLo: number, dataBytes: number): number {
  encodeChunkHeader(b, at, CHUNK_FLAG_DONE, ChunkType.offsetData, cookieHi, cookieLo, 8 + dataBytes);
  b.writeUInt32BE(offsetHi, at + 20);
  b.writeUInt32BE(offsetLo, at + 24);
  return DATA_CHUNK_HEADER_BYTES;
}

// A whole final OFFSET_HOLE chunk.
export function encodeHoleChunk(b: Buffer, at: number, cookieHi: number, cookieLo: number, offsetHi: number, offsetLo: number, holeBytes: number): number {
  encodeChunkHeader(b, at, CHUNK_FLAG_DONE, ChunkType.offsetHole, cookieHi, cookieLo, 12);
  b.writeUInt32BE(offsetHi, at + 20);
  b.writeUInt32BE(offsetLo, at + 24);
  b.writeUInt32BE(holeBytes, at + 28);
  return HOLE_CHUNK_BYTES;
}

// A whole final NONE chunk.
export function encodeNoneChunk(b: Buffer, at: number, cookieHi: number, cookieLo: number): number {
  return encodeChunkHeader(b, at, CHUNK_FLAG_DONE, ChunkType.none, cookieHi, cookieLo, 0);
}

// A final ERROR chunk: u32 error, u16 message length, message.
export function encodeErrorChunk(errno: Errno, cookieHi: number, cookieLo: number, message: string): Buffer {
  const text = Buffer.from(truncateUtf8(message));
  const b = Buffer.allocUnsafe(CHUNK_HEADER_BYTES + 6 + text.length);
  encodeChunkHeader(b, 0, CHUNK_FLAG_DONE, ChunkType.error, cookieHi, cookieLo, 6 + text.length);
  b.writeUInt32BE(errno, 20);
  b.writeUInt16BE(text.length, 24);
  text.copy(b, 26);
  return b;
}

// Merged extents as (length, flags) pairs, ready for a BLOCK_STATUS chunk.
export interface StatusExtents {
  count: number;
  lengths: Uint32Array;
  flags: Uint32Array;
}

export function extentFlags(hole: boolean, zero: boolean): number {
  return (hole ? STATE_HOLE : 0) | (zero ? STATE_ZERO : 0);
}

// Merges neighbours with equal flags, clips to the request, and keeps at
// most `extentsMax` (1 with REQ_ONE). A string result names the backend bug.
export function mergeExtents(
  extents: readonly { lengthBytes: number; hole: boolean; zero: boolean }[],
  requestBytes: number,
  extentsMax: number,
): StatusExtents | string {
  if (extents.length === 0) return 'the backend returned no extents';
  const lengths = new Uint32Array(Math.min(extents.length, extentsMax));
  const flags = new Uint32Array(lengths.length);
  let count = 0;
  let coveredBytes = 0;
  for (const e of extents) {
    if (!Number.isSafeInteger(e.lengthBytes) || e.lengthBytes <= 0) return `the backend returned an extent of ${e.lengthBytes} bytes`;
    const lengthBytes = Math.min(e.lengthBytes, requestBytes - coveredBytes);
    const f = extentFlags(e.hole, e.zero);
    if (count > 0 && flags[count - 1] === f) {
      lengths[count - 1] += lengthBytes;
    } else {
      if (count === extentsMax) break;
      lengths[count] = lengthBytes;
      flags[count] = f;
      count++;
    }
    coveredBytes += lengthBytes;
    if (coveredBytes === requestBytes) break;
  }
  return { count, lengths, flags };
}

// A final BLOCK_STATUS chunk: u32 context id, then (u32 length, u32 flags) per extent.
export function encodeBlockStatusChunk(cookieHi: number, cookieLo: number, contextId: number, s: StatusExtents): Buffer {
  const payloadBytes = 4 + 8 * s.count;
  const b = Buffer.allocUnsafe(CHUNK_HEADER_BYTES + payloadBytes);
  encodeChunkHeader(b, 0, CHUNK_FLAG_DONE, ChunkType.blockStatus, cookieHi, cookieLo, payloadBytes);
  b.writeUInt32BE(contextId, 20);
  for (let i = 0; i < s.count; i++) {
    b.writeUInt32BE(s.lengths[i]!, 24 + 8 * i);
    b.writeUInt32BE(s.flags[i]!, 28 + 8 * i);
  }
  return b;
}

// Cuts a string to STRING_BYTES_MAX bytes of UTF-8 without splitting a character.
export function truncateUtf8(text: string): string {
  if (Buffer.byteLength(text) <= STRING_BYTES_MAX) return text;
  let cut = Buffer.from(text).subarray(0, STRING_BYTES_MAX).toString('utf8');
  while (Buffer.byteLength(cut) > STRING_BYTES_MAX || cut.endsWith('\ufffd')) cut = cut.slice(0, -1);
  return cut;
}

// The transmission flags for an export: everything we implement, minus the
// writing commands on a read-only export; DF only once structured replies
// are negotiated. CAN_MULTI_CONN holds because every connection shares the
// export's backend, whose flush covers writes completed on any connection.
export function transmissionFlagsFor(readOnly: boolean, structuredReplies: boolean): number {
  let flags = TransmissionFlag.hasFlags | TransmissionFlag.sendFlush | TransmissionFlag.sendCache | TransmissionFlag.canMultiConn;
  if (readOnly) {
    flags |= TransmissionFlag.readOnly;
  } else {
    flags |= TransmissionFlag.sendFua | TransmissionFlag.sendTrim | TransmissionFlag.sendWriteZeroes | TransmissionFlag.sendFastZero;
  }
  if (structuredReplies) flags |= TransmissionFlag.sendDf;
  return flags;
}

