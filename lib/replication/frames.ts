// The replication wire format: length-prefixed binary frames, each covered by
// an XXH3-64 checksum. Pure: no sockets, no clock. frame_decoder.ts reads
// frames out of a byte stream with the checks exported here.
//
// Every frame is a 32-byte header and a body. Integers are little-endian
// (like the WAL and the superblock); u64 LSNs, epochs and sequences stay at
// or below 2^53 - 1 so they cross into JS as exact numbers.
//
//   header   offset size  field
//            0      4     magic 0x50574c42 (bytes "BLWP")
//            4      1     protocol version (PROTOCOL_VERSION)
//            5      1     frame type (FRAME_TYPE_CODES)
//            6      2     flags (none defined: must be 0)
//            8      8     epoch of the sender
//            16     4     body length in bytes
//            20     4     reserved (must be 0)
//            24     8     XXH3-64 (seed 0) of header bytes [0, 24) ‖ body,
//                         the digest's 8 bytes in canonical (big-endian) order
//
// The protocol version is the HELLO's version too: HELLO is the first frame
// on a link, so a peer speaking another version fails there with
// ERR_FRAME_VERSION (the error carries the version seen).
//
// A receiver checks, in this order: magic, version, body length against its
// limit (ERR_FRAME_TOO_LARGE, before any body byte is buffered), type, body
// length against the type's bounds; then, once the body is in: checksum,
// flags, reserved, epoch range, and the body's own shape. Anything wrong
// closes the link: a frame stream has no resynchronisation point.
//
// Bodies (offset: field; u64 fields without a note are u53 numbers):
//   HELLO        0 role u8 (1 primary, 2 replica), 1 nodeIdBytes u8,
//                2 helloFlags u8 (bit 0: rebuild info follows the node id;
//                bit 1: epochApplied follows; other bits 0), 3..7 reserved 0,
//                8 volume UUID (16 bytes),
//                24 lsnDurable, 32 lsnApplied, 40 lsnTail, 48 lsnHead,
//                56 applyChecksum u64, 64 node id (UTF-8, 1..NODE_ID_BYTES_MAX
//                bytes), then with bit 0 the replica's unfinished rebuild at
//                r = 64 + nodeIdBytes: r+0 sessionId, r+8 epoch, r+16 baseLsn,
//                r+24 chunksDone u32, r+28 chunksTotal u32 (1.., chunksDone
//                <= chunksTotal), r+32..r+39 reserved 0; then with bit 1
//                epochApplied (the epoch of the newest barrier the sender
//                applied, 0: none; statemachine/epoch_history.ts). Exactly
//                64 + nodeIdBytes (+ 40 with bit 0, + 8 with bit 1) bytes.
//   WAL_RECORDS  0 recordCount u32 (1..WAL_RECORDS_PER_FRAME_MAX), 4 reserved
//                0, 8 lsnCommit (0: none; else the primary's commit LSN, as a
//                COMMIT frame before the records would say: it rides along
//                so a write costs no frame of its own), 16 index: recordCount
//                entries of {lsn u64, lengthBytes u32}, then the records'
//                bytes back to back in index order.
//                LSNs strictly increase; each record is 1..WAL_RECORD_BYTES_MAX
//                bytes; the body ends exactly after the last record. Records
//                are opaque here (the WAL format verifies them).
//   ACK          0 lsnReceived, 8 lsnDurable, 16 lsnApplied, 24 applyChecksum
//                u64 (the chain at lsnApplied), 32 lsnCheckpoint (<= lsnApplied:
//                its base image holds everything up to it; after a crash it
//                applies at least this far again). 40 bytes.
//   COMMIT       0 lsnCommit. 8 bytes.
//   SYNC         0 lsnSync: make every record up to it durable, then ACK. 8 bytes.
//   HEARTBEAT    0 sequence (no sender time: the core reads no clock). 8 bytes.
//   ERROR,
//   GOODBYE      0 close code u16 (CLOSE_CODES), 2 messageBytes u16,
//                4 message (UTF-8, 0..CLOSE_MESSAGE_BYTES_MAX bytes).
//   REBUILD_START  0 sessionId, 8 lsnBase, 16 lsnTarget (>= lsnBase),
//                24 applyChecksumBase u64 (the primary's chain at lsnBase),
//                32 sizeBytes (a positive multiple of BLOCK_BYTES), 40 features
//                (bit set below 2^FEATURE_BITS), 48 chunkBlocks u32
//                (1..BASE_CHUNK_BLOCKS_MAX), 52 chunkFrom u32 (first chunk the
//                primary sends, <= the session's chunk count), 56 durabilityCode
//                u8 (0 none, else statemachine/control.ts codes), 57 startFlags
//                u8 (bit 0: a bitmap resync: the replica keeps its base image,
//                made current to its applied LSN, and the primary sends only
//                chunks its dirty bitmap marks, the others as unchanged;
//                bit 1: the epoch history up to lsnBase follows; other bits
//                0), 58..63 reserved 0; then with bit 1: 64 count u32
//                (0..EPOCH_STARTS_MAX), 68 reserved u32 0, 72 count entries
//                of {epoch, lsn} (both strictly increasing). 64 bytes, or
//                72 + 16 x count with bit 1.
//   BASE_CHUNK   0 sessionId, 8 index u32, 12 blocks u32
//                (1..BASE_CHUNK_BLOCKS_MAX), 16 startBlock, 24 lsnCheckpoint
//                (the primary's checkpoint when it read the chunk), 32 digest
//                u64 (XXH3-64 of the chunk's blocks x BLOCK_BYTES bytes, zero
//                or not), 40 chunkFlags u32 (bit 0: all zeros, no data; bit 1:
//                unchanged since the replica's position, no data, digest 0,
//                only in a resync; not both; other bits 0), 44 reserved u32
//                0, 48 data: blocks x BLOCK_BYTES bytes, none when all zeros
//                or unchanged. (startBlock + blocks) x
//                BLOCK_BYTES <= 2^53 - 1. Exactly 48 (+ the data) bytes.
//   SESSION_ACK  0 sessionId, 8 lsnApplied, 16 lsnAchieved (0 unless the
//                phase is completed), 24 chunksDone u32 (a durable prefix),
//                28 phase u8 (SESSION_PHASE_CODES), 29 failure u8
//                (SESSION_FAILURE_CODES when the phase is failed, else 0),
//                30 ackFlags u8 (bit 0: digestsMatch; other bits 0),
//                31 reserved 0, 32 messageBytes u16, 34 reserved u16 0,
//                36 message (UTF-8, 0..CLOSE_MESSAGE_BYTES_MAX bytes).
//
// The codec checks shape, not meaning: whether lsnApplied <= lsnDurable, or a
// frame's epoch is acceptable (epoch.ts), is for the protocol to judge.
import { constants as bufferConstants } from 'node:buffer';

import { addon } from '../native/addon';
import { BlockwalError } from '../native/errors';
import type { ReplicaFacts, SessionFailure } from '../protocol/types';
import { durabilityOfCode, FEATURE_BITS } from '../statemachine/control';
import { checkEpochStarts, EPOCH_STARTS_MAX, type EpochStart } from '../statemachine/epoch_history';
import type { ApplyChecksum } from './apply_checksum';
import { assert, assertNever } from '../util/assert';
import type { Role } from './epoch';

const MiB = 1 << 20;
const U32_MAX = 0xffff_ffff;
const U53_MAX = Number.MAX_SAFE_INTEGER;
const U64_LIMIT = 1n << 64n;

// ---- Layout ----

export const FRAME_MAGIC = 0x50574c42;
export const PROTOCOL_VERSION = 2;
export const FRAME_HEADER_BYTES = 32;
// Header bytes the checksum covers, followed by the body.
const CHECKSUM_COVERED_HEADER_BYTES = 24;
const H_MAGIC = 0;
const H_VERSION = 4;
const H_TYPE = 5;
const H_FLAGS = 6;
const H_EPOCH = 8;
const H_BODY_BYTES = 16;
const H_RESERVED = 20;
const H_CHECKSUM = 24;
// No flag is defined in version 1; a set bit is malformed.
const FRAME_FLAGS_KNOWN = 0;

export const HELLO_FIXED_BYTES = 64;
export const WAL_RECORDS_PREFIX_BYTES = 16;
export const WAL_RECORD_ENTRY_BYTES = 12;
export const ACK_BODY_BYTES = 40;
export const COMMIT_BODY_BYTES = 8;
export const SYNC_BODY_BYTES = 8;
export const HEARTBEAT_BODY_BYTES = 8;
export const CLOSE_FIXED_BYTES = 4;
export const HELLO_REBUILD_BYTES = 40;
export const HELLO_EPOCH_BYTES = 8;
export const REBUILD_START_BODY_BYTES = 64;
export const BASE_CHUNK_FIXED_BYTES = 48;
export const SESSION_ACK_FIXED_BYTES = 36;
// HELLO byte 2; BASE_CHUNK's chunkFlags; SESSION_ACK's ackFlags.
const HELLO_FLAG_REBUILD = 0x1;
const HELLO_FLAG_EPOCH = 0x2;
const CHUNK_FLAG_ZERO = 0x1;
const CHUNK_FLAG_UNCHANGED = 0x2;
const START_FLAG_RESYNC = 0x1;
const START_FLAG_HISTORY = 0x2;
const REBUILD_START_HISTORY_FIXED_BYTES = 8;
const EPOCH_START_BYTES = 16;
const REBUILD_START_BODY_BYTES_MAX = REBUILD_START_BODY_BYTES + REBUILD_START_HISTORY_FIXED_BYTES + EPOCH_STARTS_MAX * EPOCH_START_BYTES;
const ACK_FLAG_DIGESTS_MATCH = 0x1;

// ---- Limits ----

// Mirrors of native/util/constants.h and native/wal/format.h (a test checks
// them against the addon): a WAL record is a 64-byte header and at most
// 1 MiB of payload; a commit group is at most 4 MiB.
export const WAL_RECORD_HEADER_BYTES = 64;
export const WAL_RECORD_PAYLOAD_MAX = 1 * MiB;
export const WAL_GROUP_BYTES_MAX = 4 * MiB;
export const WAL_RECORD_BYTES_MAX = WAL_RECORD_HEADER_BYTES + WAL_RECORD_PAYLOAD_MAX;
// A full commit group of the smallest records (a header and no payload).
export const WAL_RECORDS_PER_FRAME_MAX = WAL_GROUP_BYTES_MAX / WAL_RECORD_HEADER_BYTES;
export const NODE_ID_BYTES_MAX = 255;
export const CLOSE_MESSAGE_BYTES_MAX = 1024;
// A base chunk carries whole blocks of the volume (the engine's block size).
export const BLOCK_BYTES = 4096;
export const BASE_CHUNK_BLOCKS_MAX = 8192;
export const BASE_CHUNK_BODY_BYTES_MAX = BASE_CHUNK_FIXED_BYTES + BASE_CHUNK_BLOCKS_MAX * BLOCK_BYTES;
export const FRAME_BODY_BYTES_MAX = 64 * MiB;
// WAL_RECORDS carrying one maximal record.
export const WAL_RECORD_ALONE_BODY_BYTES = WAL_RECORDS_PREFIX_BYTES + WAL_RECORD_ENTRY_BYTES + WAL_RECORD_BYTES_MAX;
// The lowest body limit a decoder may set: one maximal WAL record alone and a
// maximal base chunk must always fit, or a large write could never be
// shipped and a rebuild could stall on a link the primary cannot see into.
export const FRAME_BODY_BYTES_FLOOR = Math.max(WAL_RECORD_ALONE_BODY_BYTES, BASE_CHUNK_BODY_BYTES_MAX);
const HELLO_BODY_BYTES_MAX = HELLO_FIXED_BYTES + NODE_ID_BYTES_MAX + HELLO_REBUILD_BYTES + HELLO_EPOCH_BYTES;
const CLOSE_BODY_BYTES_MAX = CLOSE_FIXED_BYTES + CLOSE_MESSAGE_BYTES_MAX;
const SESSION_ACK_BODY_BYTES_MAX = SESSION_ACK_FIXED_BYTES + CLOSE_MESSAGE_BYTES_MAX;

assert(FRAME_HEADER_BYTES + FRAME_BODY_BYTES_MAX <= U32_MAX, 'body length fits its u32 field');
assert(FRAME_HEADER_BYTES + FRAME_BODY_BYTES_MAX <= bufferConstants.MAX_LENGTH, 'a whole frame fits one Buffer');
assert(FRAME_BODY_BYTES_FLOOR <= FRAME_BODY_BYTES_MAX, 'one maximal record or base chunk fits a frame');
assert(HELLO_BODY_BYTES_MAX <= FRAME_BODY_BYTES_FLOOR, 'a HELLO fits under any decoder limit');
assert(CLOSE_BODY_BYTES_MAX <= FRAME_BODY_BYTES_FLOOR, 'an ERROR/GOODBYE fits under any decoder limit');
assert(SESSION_ACK_BODY_BYTES_MAX <= FRAME_BODY_BYTES_FLOOR, 'a SESSION_ACK fits under any decoder limit');
assert(REBUILD_START_BODY_BYTES_MAX <= FRAME_BODY_BYTES_FLOOR, 'a REBUILD_START fits under any decoder limit');
assert(BASE_CHUNK_BODY_BYTES_MAX <= FRAME_BODY_BYTES_FLOOR, 'a maximal base chunk fits under any decoder limit');
assert(BASE_CHUNK_BLOCKS_MAX <= U32_MAX, 'chunk block count fits u32');
assert(FEATURE_BITS <= 53, 'a feature bit set fits a u53 field');
assert(
  WAL_RECORDS_PREFIX_BYTES + WAL_RECORDS_PER_FRAME_MAX * WAL_RECORD_ENTRY_BYTES + WAL_GROUP_BYTES_MAX <= FRAME_BODY_BYTES_MAX,
  'a full commit group fits one frame with its index',
);
assert(WAL_RECORD_BYTES_MAX <= U32_MAX && WAL_RECORDS_PER_FRAME_MAX <= U32_MAX, 'record length and count fit u32');
assert(NODE_ID_BYTES_MAX <= 0xff && CLOSE_MESSAGE_BYTES_MAX <= 0xffff, 'string lengths fit their fields');

// ---- Frames ----

export type CloseCode =
  | 'stale_epoch' // the frame's epoch is lower than ours (fencing)
  | 'wrong_volume' // HELLO named another volume UUID
  | 'bad_frame' // a frame from the peer did not decode
  | 'unsupported_version'
  | 'role_conflict' // e.g. a primary greeted by a primary
  | 'shutdown' // orderly stop of the sender
  | 'stepping_down' // a primary that learned of a higher epoch
  | 'reassigned'; // the coordinator moved this replica elsewhere

export interface HelloFrame {
  readonly type: 'hello';
  readonly epoch: number;
  readonly role: Role;
  readonly volumeUuid: string; // 32 lower-case hex digits, as in the superblock
  readonly nodeId: string;
  readonly lsnDurable: number;
  readonly lsnApplied: number;
  readonly lsnTail: number;
  readonly lsnHead: number;
  readonly applyChecksum: ApplyChecksum; // the chain at lsnApplied
  // A replica's unfinished rebuild (its persisted progress); absent when it
  // has none. The shape of ReplicaFacts.rebuild, so it passes straight on.
  readonly rebuild?: HelloRebuild;
  // The epoch of the newest barrier the sender applied (0: none); absent
  // when it does not know its history (statemachine/epoch_history.ts).
  readonly epochApplied?: number;
}

export type HelloRebuild = Readonly<NonNullable<ReplicaFacts['rebuild']>>;

export interface WalRecord {
  readonly lsn: number;
  readonly bytes: Uint8Array;
}

export interface WalRecordsFrame {
  readonly type: 'wal_records';
  readonly epoch: number;
  // The primary's commit LSN, carried instead of a COMMIT frame (decoded
  // only when not 0).
  readonly lsnCommit?: number;
  readonly records: readonly WalRecord[];
}

export interface AckFrame {
  readonly type: 'ack';
  readonly epoch: number;
  readonly lsnReceived: number;
  readonly lsnDurable: number;
  readonly lsnApplied: number;
  readonly applyChecksum: ApplyChecksum; // the chain at lsnApplied
  readonly lsnCheckpoint: number; // <= lsnApplied: applied again at least this far after a crash
}

export interface CommitFrame {
  readonly type: 'commit';
  readonly epoch: number;
  readonly lsnCommit: number;
}

// The primary needs the replica durable up to lsnSync (a FLUSH, a FUA write,
// or the commit LSN moving on); the replica answers with an ACK once it is.
export interface SyncFrame {
  readonly type: 'sync';
  readonly epoch: number;
  readonly lsnSync: number;
}

export interface HeartbeatFrame {
  readonly type: 'heartbeat';
  readonly epoch: number;
  readonly sequence: number;
}

// ERROR: the sender closes the link because something is wrong.
// GOODBYE: the sender closes it in order (shutdown, stepping down, moved).
export interface CloseFrame {
  readonly type: 'error' | 'goodbye';
  readonly epoch: number;
  readonly code: CloseCode;
  readonly message: string;
}

// A two-lane rebuild session (protocol/rebuild_session.ts): the primary
// opens it with REBUILD_START and sends BASE_CHUNKs on the same link as the
// WAL lane's WAL_RECORDS; the replica reports with SESSION_ACK.

// Opens (or resumes, chunkFrom > 0) session sessionId on the replica.
export interface RebuildStartFrame {
  readonly type: 'rebuild_start';
  readonly epoch: number;
  readonly sessionId: number;
  readonly lsnBase: number; // the checkpoint the base lane copies; the WAL lane starts after it
  readonly lsnTarget: number; // >= lsnBase
  readonly applyChecksumBase: ApplyChecksum; // the primary's chain at lsnBase
  readonly sizeBytes: number; // the volume, a positive multiple of BLOCK_BYTES
  readonly features: number; // the replicated feature bit set (statemachine/control.ts)
  readonly durabilityCode: number; // statemachine/control.ts durabilityCode(): 0 none, 1..3
  readonly chunkBlocks: number; // 1..BASE_CHUNK_BLOCKS_MAX
  readonly chunkFrom: number; // u32, <= ceil(sizeBytes / BLOCK_BYTES / chunkBlocks)
  // A bitmap resync (decoded only when set): the replica keeps its base image.
  readonly resync?: boolean;
  // The epochs opened up to lsnBase (absent: the primary does not know).
  readonly epochStarts?: readonly EpochStart[];
}

// One chunk of the base lane. data is blocks x BLOCK_BYTES bytes, or
// undefined when zero (the chunk is all zeros and carries no data). Decoded
// data is a view of the received body, not a copy (like WAL record bytes).
export interface BaseChunkFrame {
  readonly type: 'base_chunk';
  readonly epoch: number;
  readonly sessionId: number;
  readonly index: number; // u32
  readonly startBlock: number;
  readonly blocks: number; // 1..BASE_CHUNK_BLOCKS_MAX
  readonly lsnCheckpoint: number; // the primary's checkpoint when it read the chunk (BASE_NEWER)
  readonly digest: bigint; // XXH3-64 of the chunk's blocks x BLOCK_BYTES bytes, zeros included
  readonly zero: boolean;
  readonly data: Uint8Array | undefined;
  // Unchanged since the replica's position (a resync; decoded only when set):
  // not zero, no data, digest 0; the replica keeps what it holds.
  readonly unchanged?: boolean;
}

export type SessionPhase = 'accepted' | 'running' | 'base_done' | 'completed' | 'failed';

// The replica's report on a session. failure is set exactly when the phase
// is failed; lsnAchieved is 0 unless it is completed.
export interface SessionAckFrame {
  readonly type: 'session_ack';
  readonly epoch: number;
  readonly sessionId: number;
  readonly phase: SessionPhase;
  readonly chunksDone: number; // u32: chunks durably written, a contiguous prefix
  readonly lsnApplied: number;
  readonly lsnAchieved: number;
  readonly digestsMatch: boolean;
  readonly failure: SessionFailure | undefined;
  readonly message: string; // UTF-8, 0..CLOSE_MESSAGE_BYTES_MAX bytes
}

export type Frame =
  | HelloFrame
  | WalRecordsFrame
  | AckFrame
  | CommitFrame
  | SyncFrame
  | HeartbeatFrame
  | CloseFrame
  | RebuildStartFrame
  | BaseChunkFrame
  | SessionAckFrame;
export type FrameType = Frame['type'];

export const FRAME_TYPE_CODES: Readonly<Record<FrameType, number>> = {
  hello: 1,
  wal_records: 2,
  ack: 3,
  commit: 4,
  heartbeat: 5,
  error: 6,
  goodbye: 7,
  sync: 8,
  rebuild_start: 9,
  base_chunk: 10,
  session_ack: 11,
};
export const ROLE_CODES: Readonly<Record<Role, number>> = { primary: 1, replica: 2 };
export const CLOSE_CODES: Readonly<Record<CloseCode, number>> = {
  stale_epoch: 1,
  wrong_volume: 2,
  bad_frame: 3,
  unsupported_version: 4,
  role_conflict: 5,
  shutdown: 6,
  stepping_down: 7,
  reassigned: 8,
};
export const SESSION_PHASE_CODES: Readonly<Record<SessionPhase, number>> = {
  accepted: 1,
  running: 2,
  base_done: 3,
  completed: 4,
  failed: 5,
};
// 0 on the wire: no failure.
export const SESSION_FAILURE_CODES: Readonly<Record<SessionFailure, number>> = {
  epoch_mismatch: 1,
  transport_lost: 2,
  progress_stalled: 3,
  deadline_exceeded: 4,
  pin_lost: 5,
  digest_mismatch: 6,
  local_wal_corrupt: 7,
  local_base_corrupt: 8,
  superseded: 9,
  cancelled: 10,
};
const FRAME_TYPE_BY_CODE = inverse(FRAME_TYPE_CODES);
const ROLE_BY_CODE = inverse(ROLE_CODES);
const CLOSE_CODE_BY_NUMBER = inverse(CLOSE_CODES);
const SESSION_PHASE_BY_CODE = inverse(SESSION_PHASE_CODES);
const SESSION_FAILURE_BY_CODE = inverse(SESSION_FAILURE_CODES);

function inverse<K extends string>(codes: Readonly<Record<K, number>>): ReadonlyMap<number, K> {
  return new Map(Object.entries<number>(codes).map(([name, code]) => [code, name as K]));
}

// The code of a name from the caller (undefined for anything not a key of
// the table, 'constructor' and 'toString' included).
function codeOf<K extends string>(codes: Readonly<Record<K, number>>, name: unknown): number | undefined {
  return typeof name === 'string' && Object.hasOwn(codes, name) ? codes[name as K] : undefined;
}

// ---- Errors ----

export type FrameErrorCode =
  | 'ERR_FRAME_MAGIC'
  | 'ERR_FRAME_VERSION'
  | 'ERR_FRAME_TOO_LARGE'
  | 'ERR_FRAME_CHECKSUM'
  | 'ERR_FRAME_TYPE'
  | 'ERR_FRAME_MALFORMED';

// A frame that must not be used: the link that carried it is closed.
export class FrameError extends BlockwalError {
  declare readonly code: FrameErrorCode;
  constructor(code: FrameErrorCode, message: string, details: Record<string, unknown> = {}) {
    super(code, message, { details });
    this.name = 'FrameError';
  }
}

function malformed(message: string): FrameError {
  return new FrameError('ERR_FRAME_MALFORMED', message);
}

// ---- Checksum ----

// XXH3-64 of the covered header bytes and the body parts, hashed where they
// lie (never joined) in one native call, written big-endian at
// out[outOffset..+8].
function frameChecksumInto(header: Uint8Array, body: readonly Uint8Array[], out: Uint8Array, outOffset: number): void {
  addon().xxh3Parts(out, outOffset, header.subarray(0, CHECKSUM_COVERED_HEADER_BYTES), ...body);
}

const checksumScratch = Buffer.allocUnsafe(8);

// Zero-filled bytes off the V8 heap (a pooled slice for small sizes): a
// DataView over them does not move the bytes, as it would for Buffer.alloc's
// small on-heap arrays.
function zeroed(lengthBytes: number): Buffer {
  return Buffer.allocUnsafe(lengthBytes).fill(0);
}

function asBuffer(bytes: Uint8Array): Buffer {
  return Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

function viewOf(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

// ---- Encoding ----

// The frame as chunks for a gathered write: the header, the body's own
// bytes, and the caller's bytes as they are, not copied: WAL_RECORDS' record
// bytes, BASE_CHUNK's data.
// Fields are checked first: a bad one is a caller bug (RangeError/TypeError).
export function encodeFrameChunks(frame: Frame): Uint8Array[] {
  checkU53('epoch', frame.epoch, 0);
  const typeCode = codeOf(FRAME_TYPE_CODES, frame.type);
  if (typeCode === undefined) throw new RangeError(`unknown frame type ${String(frame.type)}`);
  const body = encodeBody(frame);
  const bodyBytes = body.reduce((sum, part) => sum + part.byteLength, 0);
  if (bodyBytes > FRAME_BODY_BYTES_MAX) {
    throw new RangeError(`${frame.type} body of ${bodyBytes} bytes is over FRAME_BODY_BYTES_MAX (${FRAME_BODY_BYTES_MAX}): split it`);
  }
  const header = zeroed(FRAME_HEADER_BYTES);
  const view = viewOf(header);
  view.setUint32(H_MAGIC, FRAME_MAGIC, true);
  view.setUint8(H_VERSION, PROTOCOL_VERSION);
  view.setUint8(H_TYPE, typeCode);
  view.setUint16(H_FLAGS, 0, true);
  writeU53(view, H_EPOCH, frame.epoch);
  view.setUint32(H_BODY_BYTES, bodyBytes, true);
  view.setUint32(H_RESERVED, 0, true);
  frameChecksumInto(header, body, header, H_CHECKSUM);
  return [header, ...body];
}

// The frame in one buffer (copies record bytes and chunk data; see encodeFrameChunks).
export function encodeFrame(frame: Frame): Buffer {
  const chunks = encodeFrameChunks(frame);
  return Buffer.concat(chunks, chunks.reduce((sum, part) => sum + part.byteLength, 0));
}

function encodeBody(frame: Frame): Uint8Array[] {
  switch (frame.type) {
    case 'hello':
      return [encodeHello(frame)];
    case 'wal_records':
      return encodeWalRecords(frame);
    case 'ack':
      return [encodeAck(frame)];
    case 'commit':
      return [encodeSingleU53('lsnCommit', frame.lsnCommit)];
    case 'sync':
      return [encodeSingleU53('lsnSync', frame.lsnSync)];
    case 'heartbeat':
      return [encodeSingleU53('sequence', frame.sequence)];
    case 'error':
    case 'goodbye':
      return [encodeClose(frame)];
    case 'rebuild_start':
      return [encodeRebuildStart(frame)];
    case 'base_chunk':
      return encodeBaseChunk(frame);
    case 'session_ack':
      return [encodeSessionAck(frame)];
    default:
      return assertNever(frame);
  }
}

function encodeHello(frame: HelloFrame): Buffer {
  const roleCode = codeOf(ROLE_CODES, frame.role);
  if (roleCode === undefined) throw new RangeError(`role must be primary or replica, got ${String(frame.role)}`);
  if (typeof frame.volumeUuid !== 'string' || !/^[0-9a-f]{32}$/.test(frame.volumeUuid)) {
    throw new RangeError(`volumeUuid must be 32 lower-case hex digits, got ${JSON.stringify(frame.volumeUuid)}`);
  }
  const nodeId = utf8Bytes('nodeId', frame.nodeId, 1, NODE_ID_BYTES_MAX);
  checkU64('applyChecksum', frame.applyChecksum);
  const rebuild = frame.rebuild;
  const rebuildBytes = rebuild === undefined ? 0 : HELLO_REBUILD_BYTES;
  const epochBytes = frame.epochApplied === undefined ? 0 : HELLO_EPOCH_BYTES;
  const body = zeroed(HELLO_FIXED_BYTES + nodeId.length + rebuildBytes + epochBytes);
  const view = viewOf(body);
  body[0] = roleCode;
  body[1] = nodeId.length;
  if (rebuild !== undefined) {
    body[2] = HELLO_FLAG_REBUILD;
    encodeHelloRebuild(view, HELLO_FIXED_BYTES + nodeId.length, rebuild);
  }
  if (frame.epochApplied !== undefined) {
    body[2]! |= HELLO_FLAG_EPOCH;
    writeLsn(view, HELLO_FIXED_BYTES + nodeId.length + rebuildBytes, 'epochApplied', frame.epochApplied);
  }
  body.write(frame.volumeUuid, 8, 'hex');
  writeLsn(view, 24, 'lsnDurable', frame.lsnDurable);
  writeLsn(view, 32, 'lsnApplied', frame.lsnApplied);
  writeLsn(view, 40, 'lsnTail', frame.lsnTail);
  writeLsn(view, 48, 'lsnHead', frame.lsnHead);
  view.setBigUint64(56, frame.applyChecksum, true);
  body.set(nodeId, HELLO_FIXED_BYTES);
  return body;
}

function encodeHelloRebuild(view: DataView, offset: number, rebuild: HelloRebuild): void {
  if (typeof rebuild !== 'object' || rebuild === null) throw new TypeError('rebuild must be an object or undefined');
  writeLsn(view, offset, 'rebuild.sessionId', rebuild.sessionId);
  writeLsn(view, offset + 8, 'rebuild.epoch', rebuild.epoch);
  writeLsn(view, offset + 16, 'rebuild.baseLsn', rebuild.baseLsn);
  checkU32('rebuild.chunksTotal', rebuild.chunksTotal, 1, U32_MAX);
  checkU32('rebuild.chunksDone', rebuild.chunksDone, 0, rebuild.chunksTotal);
  view.setUint32(offset + 24, rebuild.chunksDone, true);
  view.setUint32(offset + 28, rebuild.chunksTotal, true);
}

// The prefix and index in one buffer, then each record's bytes as given.
function encodeWalRecords(frame: WalRecordsFrame): Uint8Array[] {
  const records = frame.records;
  if (!Array.isArray(records) || records.length < 1 || records.length > WAL_RECORDS_PER_FRAME_MAX) {
    throw new RangeError(`records must hold 1..${WAL_RECORDS_PER_FRAME_MAX} records, got ${records?.length}`);
  }
  const index = zeroed(WAL_RECORDS_PREFIX_BYTES + records.length * WAL_RECORD_ENTRY_BYTES);
  const view = viewOf(index);
  view.setUint32(0, records.length, true);
  writeLsn(view, 8, 'lsnCommit', frame.lsnCommit ?? 0);
  const chunks: Uint8Array[] = [index];
  let lsnPrevious = 0;
  records.forEach((record, i) => {
    checkRecord(record, i, lsnPrevious);
    const entryOffset = WAL_RECORDS_PREFIX_BYTES + i * WAL_RECORD_ENTRY_BYTES;
    writeU53(view, entryOffset, record.lsn);
    view.setUint32(entryOffset + 8, record.bytes.byteLength, true);
    chunks.push(record.bytes);
    lsnPrevious = record.lsn;
  });
  return chunks;
}

function checkRecord(record: WalRecord, i: number, lsnPrevious: number): void {
  checkU53(`records[${i}].lsn`, record.lsn, 1);
  if (record.lsn <= lsnPrevious) {
    throw new RangeError(`records[${i}].lsn ${record.lsn} does not follow ${lsnPrevious}: LSNs must strictly increase`);
  }
  if (!(record.bytes instanceof Uint8Array)) throw new TypeError(`records[${i}].bytes must be a Uint8Array`);
  const lengthBytes = record.bytes.byteLength;
  if (lengthBytes < 1 || lengthBytes > WAL_RECORD_BYTES_MAX) {
    throw new RangeError(`records[${i}] is ${lengthBytes} bytes, outside 1..${WAL_RECORD_BYTES_MAX}`);
  }
}

function encodeAck(frame: AckFrame): Buffer {
  checkU64('applyChecksum', frame.applyChecksum);
  const body = zeroed(ACK_BODY_BYTES);
  const view = viewOf(body);
  writeLsn(view, 0, 'lsnReceived', frame.lsnReceived);
  writeLsn(view, 8, 'lsnDurable', frame.lsnDurable);
  writeLsn(view, 16, 'lsnApplied', frame.lsnApplied);
  view.setBigUint64(24, frame.applyChecksum, true);
  writeLsn(view, 32, 'lsnCheckpoint', frame.lsnCheckpoint);
  if (frame.lsnCheckpoint > frame.lsnApplied) throw new RangeError(`lsnCheckpoint ${frame.lsnCheckpoint} is above lsnApplied ${frame.lsnApplied}`);
  return body;
}

function encodeSingleU53(name: string, value: number): Buffer {
  const body = zeroed(8);
  writeLsn(viewOf(body), 0, name, value);
  return body;
}

function encodeClose(frame: CloseFrame): Buffer {
  const code = codeOf(CLOSE_CODES, frame.code);
  if (code === undefined) throw new RangeError(`unknown close code ${String(frame.code)}`);
  const message = utf8Bytes('message', frame.message, 0, CLOSE_MESSAGE_BYTES_MAX);
  const body = zeroed(CLOSE_FIXED_BYTES + message.length);
  body.writeUInt16LE(code, 0);
  body.writeUInt16LE(message.length, 2);
  body.set(message, CLOSE_FIXED_BYTES);
  return body;
}

function encodeRebuildStart(frame: RebuildStartFrame): Buffer {
  checkU64('applyChecksumBase', frame.applyChecksumBase);
  checkU53('lsnTarget', frame.lsnTarget, 0);
  checkU53('lsnBase', frame.lsnBase, 0);
  if (frame.lsnBase > frame.lsnTarget) throw new RangeError(`lsnBase ${frame.lsnBase} is above lsnTarget ${frame.lsnTarget}`);
  checkU53('sizeBytes', frame.sizeBytes, BLOCK_BYTES);
  if (frame.sizeBytes % BLOCK_BYTES !== 0) throw new RangeError(`sizeBytes ${frame.sizeBytes} is not a multiple of ${BLOCK_BYTES}`);
  checkU53('features', frame.features, 0);
  if (!Number.isInteger(frame.durabilityCode) || (frame.durabilityCode !== 0 && durabilityOfCode(frame.durabilityCode) === undefined)) {
    throw new RangeError(`durabilityCode must be 0 or a durability mode code, got ${frame.durabilityCode}`);
  }
  checkU32('chunkBlocks', frame.chunkBlocks, 1, BASE_CHUNK_BLOCKS_MAX);
  checkU32('chunkFrom', frame.chunkFrom, 0, chunksOf(frame.sizeBytes, frame.chunkBlocks));
  const starts = frame.epochStarts;
  if (starts !== undefined) {
    const bad = Array.isArray(starts) ? checkEpochStarts(starts) : 'not an array';
    if (bad !== undefined) throw new RangeError(`epochStarts: ${bad}`);
  }
  const body = zeroed(starts === undefined ? REBUILD_START_BODY_BYTES : REBUILD_START_BODY_BYTES + REBUILD_START_HISTORY_FIXED_BYTES + starts.length * EPOCH_START_BYTES);
  const view = viewOf(body);
  writeLsn(view, 0, 'sessionId', frame.sessionId);
  writeU53(view, 8, frame.lsnBase);
  writeU53(view, 16, frame.lsnTarget);
  view.setBigUint64(24, frame.applyChecksumBase, true);
  writeU53(view, 32, frame.sizeBytes);
  writeU53(view, 40, frame.features);
  view.setUint32(48, frame.chunkBlocks, true);
  view.setUint32(52, frame.chunkFrom, true);
  view.setUint8(56, frame.durabilityCode);
  if (frame.resync !== undefined && typeof frame.resync !== 'boolean') throw new TypeError('resync must be a boolean or undefined');
  view.setUint8(57, (frame.resync === true ? START_FLAG_RESYNC : 0) | (starts === undefined ? 0 : START_FLAG_HISTORY));
  if (starts !== undefined) {
    view.setUint32(REBUILD_START_BODY_BYTES, starts.length, true);
    starts.forEach((s, i) => {
      const at = REBUILD_START_BODY_BYTES + REBUILD_START_HISTORY_FIXED_BYTES + i * EPOCH_START_BYTES;
      writeU53(view, at, s.epoch);
      writeU53(view, at + 8, s.lsn);
    });
  }
  return body;
}

// Chunks of chunkBlocks blocks in a volume of sizeBytes (the last one shorter).
function chunksOf(sizeBytes: number, chunkBlocks: number): number {
  return Math.ceil(sizeBytes / BLOCK_BYTES / chunkBlocks);
}

// The fixed part in one buffer, then the data as given.
function encodeBaseChunk(frame: BaseChunkFrame): Uint8Array[] {
  checkU32('index', frame.index, 0, U32_MAX);
  checkU32('blocks', frame.blocks, 1, BASE_CHUNK_BLOCKS_MAX);
  checkU53('startBlock', frame.startBlock, 0);
  checkChunkRange(frame.startBlock, frame.blocks, (message) => new RangeError(message));
  checkU64('digest', frame.digest);
  if (typeof frame.zero !== 'boolean') throw new TypeError('zero must be a boolean');
  checkChunkData(frame);
  const fixed = zeroed(BASE_CHUNK_FIXED_BYTES);
  const view = viewOf(fixed);
  writeLsn(view, 0, 'sessionId', frame.sessionId);
  view.setUint32(8, frame.index, true);
  view.setUint32(12, frame.blocks, true);
  writeU53(view, 16, frame.startBlock);
  writeLsn(view, 24, 'lsnCheckpoint', frame.lsnCheckpoint);
  view.setBigUint64(32, frame.digest, true);
  view.setUint32(40, (frame.zero ? CHUNK_FLAG_ZERO : 0) | (frame.unchanged === true ? CHUNK_FLAG_UNCHANGED : 0), true);
  return frame.data === undefined ? [fixed] : [fixed, frame.data];
}

function checkChunkData(frame: BaseChunkFrame): void {
  if (frame.unchanged !== undefined && typeof frame.unchanged !== 'boolean') throw new TypeError('unchanged must be a boolean or undefined');
  if (frame.unchanged === true) {
    if (frame.zero || frame.data !== undefined || frame.digest !== 0n) throw new RangeError('an unchanged chunk is not zero and carries no data and digest 0');
    return;
  }
  if (frame.zero) {
    if (frame.data !== undefined) throw new RangeError('a zero chunk carries no data: data must be undefined');
    return;
  }
  if (frame.data === undefined) throw new RangeError('a chunk that is not zero must carry data');
  if (!(frame.data instanceof Uint8Array)) throw new TypeError('data must be a Uint8Array');
  if (frame.data.byteLength !== frame.blocks * BLOCK_BYTES) {
    throw new RangeError(`data is ${frame.data.byteLength} bytes, expected ${frame.blocks} blocks x ${BLOCK_BYTES}`);
  }
}

// Byte offsets of every block of the chunk stay exact JS numbers.
function checkChunkRange(startBlock: number, blocks: number, error: (message: string) => Error): void {
  if (startBlock + blocks > Math.floor(U53_MAX / BLOCK_BYTES)) {
    throw error(`blocks ${startBlock}+${blocks} end beyond 2^53 - 1 bytes`);
  }
}

function encodeSessionAck(frame: SessionAckFrame): Buffer {
  const phaseCode = codeOf(SESSION_PHASE_CODES, frame.phase);
  if (phaseCode === undefined) throw new RangeError(`unknown session phase ${String(frame.phase)}`);
  const failureCode = frame.failure === undefined ? 0 : codeOf(SESSION_FAILURE_CODES, frame.failure);
  if (failureCode === undefined) throw new RangeError(`unknown session failure ${String(frame.failure)}`);
  if ((frame.phase === 'failed') !== (failureCode !== 0)) {
    throw new RangeError(`failure must be set exactly when the phase is failed (phase ${frame.phase}, failure ${String(frame.failure)})`);
  }
  checkU32('chunksDone', frame.chunksDone, 0, U32_MAX);
  checkU53('lsnAchieved', frame.lsnAchieved, 0);
  if (frame.phase !== 'completed' && frame.lsnAchieved !== 0) {
    throw new RangeError(`lsnAchieved must be 0 unless the phase is completed (phase ${frame.phase}, lsnAchieved ${frame.lsnAchieved})`);
  }
  if (typeof frame.digestsMatch !== 'boolean') throw new TypeError('digestsMatch must be a boolean');
  const message = utf8Bytes('message', frame.message, 0, CLOSE_MESSAGE_BYTES_MAX);
  const body = zeroed(SESSION_ACK_FIXED_BYTES + message.length);
  const view = viewOf(body);
  writeLsn(view, 0, 'sessionId', frame.sessionId);
  writeLsn(view, 8, 'lsnApplied', frame.lsnApplied);
  writeU53(view, 16, frame.lsnAchieved);
  view.setUint32(24, frame.chunksDone, true);
  view.setUint8(28, phaseCode);
  view.setUint8(29, failureCode);
  view.setUint8(30, frame.digestsMatch ? ACK_FLAG_DIGESTS_MATCH : 0);
  view.setUint16(32, message.length, true);
  body.set(message, SESSION_ACK_FIXED_BYTES);
  return body;
}

function utf8Bytes(name: string, text: string, minBytes: number, maxBytes: number): Buffer {
  if (typeof text !== 'string') throw new TypeError(`${name} must be a string`);
  const bytes = Buffer.from(text, 'utf8');
  // A lone surrogate would be sent as U+FFFD and come back as another string.
  if (bytes.toString('utf8') !== text) throw new RangeError(`${name} is not well-formed Unicode`);
  if (bytes.length < minBytes || bytes.length > maxBytes) {
    throw new RangeError(`${name} is ${bytes.length} UTF-8 bytes, outside ${minBytes}..${maxBytes}`);
  }
  return bytes;
}

function writeLsn(view: DataView, offset: number, name: string, value: number): void {
  checkU53(name, value, 0);
  writeU53(view, offset, value);
}

function writeU53(view: DataView, offset: number, value: number): void {
  view.setUint32(offset, value % 0x1_0000_0000, true);
  view.setUint32(offset + 4, Math.floor(value / 0x1_0000_0000), true);
}

function checkU53(name: string, value: number, min: number): void {
  if (!Number.isSafeInteger(value) || value < min) {
    throw new RangeError(`${name} must be an integer in [${min}, ${U53_MAX}], got ${value}`);
  }
}

function checkU32(name: string, value: number, min: number, max: number): void {
  if (!Number.isInteger(value) || value < min || value > max) {
    throw new RangeError(`${name} must be an integer in [${min}, ${max}], got ${value}`);
  }
}

function checkU64(name: string, value: bigint): void {
  if (typeof value !== 'bigint' || value < 0n || value >= U64_LIMIT) {
    throw new RangeError(`${name} must be a bigint in [0, 2^64), got ${String(value)}`);
  }
}

// ---- Decoding: the header ----

// What the header says, checked as far as it can be before the body arrives.
export interface FrameHeader {
  readonly type: FrameType;
  readonly bodyBytes: number;
  readonly bytes: Uint8Array; // the FRAME_HEADER_BYTES header bytes
}

// Checks a header alone: magic, version, body length against bodyBytesMax,
// type, and body length against the type's bounds. Throws a FrameError.
export function checkFrameHeader(bytes: Uint8Array, bodyBytesMax: number = FRAME_BODY_BYTES_MAX): FrameHeader {
  assert(bytes.byteLength === FRAME_HEADER_BYTES, `header of ${bytes.byteLength} bytes`);
  const view = viewOf(bytes);
  const magic = view.getUint32(H_MAGIC, true);
  if (magic !== FRAME_MAGIC) throw new FrameError('ERR_FRAME_MAGIC', `bad frame magic 0x${magic.toString(16)}`, { magic });
  const version = view.getUint8(H_VERSION);
  if (version !== PROTOCOL_VERSION) {
    throw new FrameError('ERR_FRAME_VERSION', `protocol version ${version}, expected ${PROTOCOL_VERSION}`, { version });
  }
  const bodyBytes = view.getUint32(H_BODY_BYTES, true);
  if (bodyBytes > bodyBytesMax) {
    throw new FrameError('ERR_FRAME_TOO_LARGE', `frame body of ${bodyBytes} bytes is over the limit of ${bodyBytesMax}`, {
      bodyBytes,
      bodyBytesMax,
    });
  }
  const typeCode = view.getUint8(H_TYPE);
  const type = FRAME_TYPE_BY_CODE.get(typeCode);
  if (type === undefined) throw new FrameError('ERR_FRAME_TYPE', `unknown frame type ${typeCode}`, { typeCode });
  const [bodyBytesMin, bodyBytesTypeMax] = bodyBoundsOf(type, bodyBytesMax);
  if (bodyBytes < bodyBytesMin || bodyBytes > bodyBytesTypeMax) {
    throw malformed(`${type} body of ${bodyBytes} bytes, outside ${bodyBytesMin}..${bodyBytesTypeMax}`);
  }
  return { type, bodyBytes, bytes };
}

// [min, max] body bytes a frame of this type may have.
function bodyBoundsOf(type: FrameType, bodyBytesMax: number): [number, number] {
  switch (type) {
    case 'hello':
      return [HELLO_FIXED_BYTES + 1, HELLO_BODY_BYTES_MAX];
    case 'wal_records':
      return [WAL_RECORDS_PREFIX_BYTES + WAL_RECORD_ENTRY_BYTES + 1, bodyBytesMax];
    case 'ack':
      return [ACK_BODY_BYTES, ACK_BODY_BYTES];
    case 'commit':
      return [COMMIT_BODY_BYTES, COMMIT_BODY_BYTES];
    case 'sync':
      return [SYNC_BODY_BYTES, SYNC_BODY_BYTES];
    case 'heartbeat':
      return [HEARTBEAT_BODY_BYTES, HEARTBEAT_BODY_BYTES];
    case 'error':
    case 'goodbye':
      return [CLOSE_FIXED_BYTES, CLOSE_BODY_BYTES_MAX];
    case 'rebuild_start':
      return [REBUILD_START_BODY_BYTES, REBUILD_START_BODY_BYTES_MAX];
    case 'base_chunk':
      return [BASE_CHUNK_FIXED_BYTES, BASE_CHUNK_BODY_BYTES_MAX];
    case 'session_ack':
      return [SESSION_ACK_FIXED_BYTES, SESSION_ACK_BODY_BYTES_MAX];
    default:
      return assertNever(type);
  }
}

// ---- Decoding: the body ----

// Verifies the checksum and the rest of the header, then decodes the body.
// WAL record bytes and base chunk data in the result are views of `body`,
// not copies: the caller must not reuse body's memory while it holds them.
export function decodeFrameBody(header: FrameHeader, body: Uint8Array): Frame {
  assert(body.byteLength === header.bodyBytes, `body of ${body.byteLength} bytes, header says ${header.bodyBytes}`);
  frameChecksumInto(header.bytes, [body], checksumScratch, 0);
  if (!checksumScratch.equals(header.bytes.subarray(H_CHECKSUM, FRAME_HEADER_BYTES))) {
    throw new FrameError('ERR_FRAME_CHECKSUM', `${header.type} frame checksum mismatch`);
  }
  const view = viewOf(header.bytes);
  const flags = view.getUint16(H_FLAGS, true);
  if ((flags & ~FRAME_FLAGS_KNOWN) !== 0) throw malformed(`unknown frame flags 0x${flags.toString(16)}`);
  if (view.getUint32(H_RESERVED, true) !== 0) throw malformed('reserved header bytes are not zero');
  const epoch = readU53(view, H_EPOCH, 'epoch');
  return decodeBody(header.type, epoch, body);
}

function decodeBody(type: FrameType, epoch: number, body: Uint8Array): Frame {
  switch (type) {
    case 'hello':
      return decodeHello(epoch, body);
    case 'wal_records':
      return decodeWalRecords(epoch, body);
    case 'ack':
      return decodeAck(epoch, body);
    case 'commit':
      return { type, epoch, lsnCommit: readU53(viewOf(body), 0, 'lsnCommit') };
    case 'sync':
      return { type, epoch, lsnSync: readU53(viewOf(body), 0, 'lsnSync') };
    case 'heartbeat':
      return { type, epoch, sequence: readU53(viewOf(body), 0, 'sequence') };
    case 'error':
    case 'goodbye':
      return decodeClose(type, epoch, body);
    case 'rebuild_start':
      return decodeRebuildStart(epoch, body);
    case 'base_chunk':
      return decodeBaseChunk(epoch, body);
    case 'session_ack':
      return decodeSessionAck(epoch, body);
    default:
      return assertNever(type);
  }
}

function decodeHello(epoch: number, body: Uint8Array): HelloFrame {
  const view = viewOf(body);
  const role = ROLE_BY_CODE.get(body[0]!);
  if (role === undefined) throw malformed(`hello: bad role ${body[0]}`);
  const nodeIdBytes = body[1]!;
  if (nodeIdBytes === 0) throw malformed('hello: empty node id');
  const helloFlags = body[2]!;
  if ((helloFlags & ~(HELLO_FLAG_REBUILD | HELLO_FLAG_EPOCH)) !== 0) throw malformed(`hello: unknown flags 0x${helloFlags.toString(16)}`);
  const rebuildBytes = (helloFlags & HELLO_FLAG_REBUILD) !== 0 ? HELLO_REBUILD_BYTES : 0;
  const epochBytes = (helloFlags & HELLO_FLAG_EPOCH) !== 0 ? HELLO_EPOCH_BYTES : 0;
  const nodeIdEnd = HELLO_FIXED_BYTES + nodeIdBytes;
  if (body.byteLength !== nodeIdEnd + rebuildBytes + epochBytes) {
    const what = (rebuildBytes === 0 ? '' : ` and ${rebuildBytes} bytes of rebuild info`) + (epochBytes === 0 ? '' : ` and ${epochBytes} bytes of applied epoch`);
    throw malformed(`hello: ${body.byteLength} bytes for a node id of ${nodeIdBytes} bytes${what}`);
  }
  if (!body.subarray(3, 8).every((b) => b === 0)) throw malformed('hello: reserved bytes are not zero');
  const hello: HelloFrame = {
    type: 'hello',
    epoch,
    role,
    volumeUuid: asBuffer(body.subarray(8, 24)).toString('hex'),
    nodeId: decodeUtf8(body.subarray(HELLO_FIXED_BYTES, nodeIdEnd), 'hello: node id'),
    lsnDurable: readU53(view, 24, 'lsnDurable'),
    lsnApplied: readU53(view, 32, 'lsnApplied'),
    lsnTail: readU53(view, 40, 'lsnTail'),
    lsnHead: readU53(view, 48, 'lsnHead'),
    applyChecksum: view.getBigUint64(56, true),
  };
  // No key at all without its flag, so such a HELLO equals one built without it.
  const withRebuild = rebuildBytes === 0 ? hello : { ...hello, rebuild: decodeHelloRebuild(view, nodeIdEnd) };
  return epochBytes === 0 ? withRebuild : { ...withRebuild, epochApplied: readU53(view, nodeIdEnd + rebuildBytes, 'hello: epochApplied') };
}

function decodeHelloRebuild(view: DataView, offset: number): HelloRebuild {
  const chunksDone = view.getUint32(offset + 24, true);
  const chunksTotal = view.getUint32(offset + 28, true);
  if (chunksTotal === 0 || chunksDone > chunksTotal) {
    throw malformed(`hello: rebuild chunks ${chunksDone}/${chunksTotal}: need 0 <= chunksDone <= chunksTotal, chunksTotal >= 1`);
  }
  if (view.getBigUint64(offset + 32, true) !== 0n) throw malformed('hello: rebuild reserved bytes are not zero');
  return {
    sessionId: readU53(view, offset, 'hello: rebuild.sessionId'),
    epoch: readU53(view, offset + 8, 'hello: rebuild.epoch'),
    baseLsn: readU53(view, offset + 16, 'hello: rebuild.baseLsn'),
    chunksDone,
    chunksTotal,
  };
}

// Walks the index, checking every entry before slicing its bytes.
function decodeWalRecords(epoch: number, body: Uint8Array): WalRecordsFrame {
  const view = viewOf(body);
  const recordCount = view.getUint32(0, true);
  if (recordCount < 1 || recordCount > WAL_RECORDS_PER_FRAME_MAX) {
    throw malformed(`wal_records: ${recordCount} records, outside 1..${WAL_RECORDS_PER_FRAME_MAX}`);
  }
  if (view.getUint32(4, true) !== 0) throw malformed('wal_records: reserved bytes are not zero');
  const lsnCommit = readU53(view, 8, 'wal_records: lsnCommit');
  let offsetBytes = WAL_RECORDS_PREFIX_BYTES + recordCount * WAL_RECORD_ENTRY_BYTES;
  if (offsetBytes > body.byteLength) throw malformed(`wal_records: index of ${recordCount} entries runs past the end`);
  const records: WalRecord[] = new Array(recordCount);
  let lsnPrevious = 0;
  for (let i = 0; i < recordCount; i++) {
    const entryOffset = WAL_RECORDS_PREFIX_BYTES + i * WAL_RECORD_ENTRY_BYTES;
    const lsn = readU53(view, entryOffset, `wal_records: records[${i}].lsn`);
    if (lsn === 0) throw malformed(`wal_records: records[${i}].lsn is 0 (LSNs start at 1)`);
    if (lsn <= lsnPrevious) throw malformed(`wal_records: records[${i}].lsn ${lsn} does not follow ${lsnPrevious}`);
    const lengthBytes = view.getUint32(entryOffset + 8, true);
    if (lengthBytes < 1 || lengthBytes > WAL_RECORD_BYTES_MAX) {
      throw malformed(`wal_records: records[${i}] is ${lengthBytes} bytes, outside 1..${WAL_RECORD_BYTES_MAX}`);
    }
    if (lengthBytes > body.byteLength - offsetBytes) throw malformed(`wal_records: records[${i}] runs past the end`);
    records[i] = { lsn, bytes: new Uint8Array(body.buffer, body.byteOffset + offsetBytes, lengthBytes) };
    offsetBytes += lengthBytes;
    lsnPrevious = lsn;
  }
  if (offsetBytes !== body.byteLength) throw malformed(`wal_records: ${body.byteLength - offsetBytes} trailing bytes`);
  return lsnCommit === 0 ? { type: 'wal_records', epoch, records } : { type: 'wal_records', epoch, lsnCommit, records };
}

function decodeAck(epoch: number, body: Uint8Array): AckFrame {
  const view = viewOf(body);
  const lsnApplied = readU53(view, 16, 'lsnApplied');
  const lsnCheckpoint = readU53(view, 32, 'lsnCheckpoint');
  if (lsnCheckpoint > lsnApplied) throw malformed(`ack: lsnCheckpoint ${lsnCheckpoint} is above lsnApplied ${lsnApplied}`);
  return {
    type: 'ack',
    epoch,
    lsnReceived: readU53(view, 0, 'lsnReceived'),
    lsnDurable: readU53(view, 8, 'lsnDurable'),
    lsnApplied,
    applyChecksum: view.getBigUint64(24, true),
    lsnCheckpoint,
  };
}

function decodeClose(type: 'error' | 'goodbye', epoch: number, body: Uint8Array): CloseFrame {
  const view = viewOf(body);
  const codeNumber = view.getUint16(0, true);
  const code = CLOSE_CODE_BY_NUMBER.get(codeNumber);
  if (code === undefined) throw malformed(`${type}: unknown close code ${codeNumber}`);
  const messageBytes = view.getUint16(2, true);
  if (messageBytes > CLOSE_MESSAGE_BYTES_MAX) throw malformed(`${type}: message of ${messageBytes} bytes is too long`);
  if (body.byteLength !== CLOSE_FIXED_BYTES + messageBytes) {
    throw malformed(`${type}: ${body.byteLength} bytes for a message of ${messageBytes} bytes`);
  }
  return { type, epoch, code, message: decodeUtf8(body.subarray(CLOSE_FIXED_BYTES), `${type}: message`) };
}

function decodeRebuildStart(epoch: number, body: Uint8Array): RebuildStartFrame {
  const view = viewOf(body);
  const lsnBase = readU53(view, 8, 'rebuild_start: lsnBase');
  const lsnTarget = readU53(view, 16, 'rebuild_start: lsnTarget');
  if (lsnBase > lsnTarget) throw malformed(`rebuild_start: lsnBase ${lsnBase} is above lsnTarget ${lsnTarget}`);
  const sizeBytes = readU53(view, 32, 'rebuild_start: sizeBytes');
  if (sizeBytes === 0 || sizeBytes % BLOCK_BYTES !== 0) {
    throw malformed(`rebuild_start: sizeBytes ${sizeBytes} is not a positive multiple of ${BLOCK_BYTES}`);
  }
  const chunkBlocks = view.getUint32(48, true);
  if (chunkBlocks < 1 || chunkBlocks > BASE_CHUNK_BLOCKS_MAX) {
    throw malformed(`rebuild_start: chunkBlocks ${chunkBlocks}, outside 1..${BASE_CHUNK_BLOCKS_MAX}`);
  }
  const chunkFrom = view.getUint32(52, true);
  const chunksTotal = chunksOf(sizeBytes, chunkBlocks);
  if (chunkFrom > chunksTotal) throw malformed(`rebuild_start: chunkFrom ${chunkFrom} is past the ${chunksTotal} chunks`);
  const durabilityCode = view.getUint8(56);
  if (durabilityCode !== 0 && durabilityOfCode(durabilityCode) === undefined) {
    throw malformed(`rebuild_start: unknown durability code ${durabilityCode}`);
  }
  const startFlags = view.getUint8(57);
  if ((startFlags & ~(START_FLAG_RESYNC | START_FLAG_HISTORY)) !== 0) throw malformed(`rebuild_start: unknown flags 0x${startFlags.toString(16)}`);
  if (!body.subarray(58, REBUILD_START_BODY_BYTES).every((b) => b === 0)) throw malformed('rebuild_start: reserved bytes are not zero');
  let epochStarts: EpochStart[] | undefined;
  if ((startFlags & START_FLAG_HISTORY) === 0) {
    if (body.byteLength !== REBUILD_START_BODY_BYTES) throw malformed(`rebuild_start: ${body.byteLength} bytes without an epoch history`);
  } else {
    if (body.byteLength < REBUILD_START_BODY_BYTES + REBUILD_START_HISTORY_FIXED_BYTES) throw malformed(`rebuild_start: ${body.byteLength} bytes, too short for an epoch history`);
    const count = view.getUint32(REBUILD_START_BODY_BYTES, true);
    if (count > EPOCH_STARTS_MAX) throw malformed(`rebuild_start: ${count} epoch starts, more than ${EPOCH_STARTS_MAX}`);
    if (view.getUint32(REBUILD_START_BODY_BYTES + 4, true) !== 0) throw malformed('rebuild_start: reserved bytes are not zero');
    if (body.byteLength !== REBUILD_START_BODY_BYTES + REBUILD_START_HISTORY_FIXED_BYTES + count * EPOCH_START_BYTES) {
      throw malformed(`rebuild_start: ${body.byteLength} bytes for ${count} epoch starts`);
    }
    epochStarts = Array.from({ length: count }, (_, i) => {
      const at = REBUILD_START_BODY_BYTES + REBUILD_START_HISTORY_FIXED_BYTES + i * EPOCH_START_BYTES;
      return { epoch: readU53(view, at, 'rebuild_start: epoch'), lsn: readU53(view, at + 8, 'rebuild_start: lsn') };
    });
    const bad = checkEpochStarts(epochStarts);
    if (bad !== undefined) throw malformed(`rebuild_start: ${bad}`);
  }
  const frame: RebuildStartFrame = {
    type: 'rebuild_start',
    epoch,
    sessionId: readU53(view, 0, 'rebuild_start: sessionId'),
    lsnBase,
    lsnTarget,
    applyChecksumBase: view.getBigUint64(24, true),
    sizeBytes,
    features: readU53(view, 40, 'rebuild_start: features'),
    durabilityCode,
    chunkBlocks,
    chunkFrom,
  };
  const withResync = (startFlags & START_FLAG_RESYNC) !== 0 ? { ...frame, resync: true } : frame;
  return epochStarts === undefined ? withResync : { ...withResync, epochStarts };
}

// data is a view of body, not a copy.
function decodeBaseChunk(epoch: number, body: Uint8Array): BaseChunkFrame {
  const view = viewOf(body);
  const blocks = view.getUint32(12, true);
  if (blocks < 1 || blocks > BASE_CHUNK_BLOCKS_MAX) throw malformed(`base_chunk: ${blocks} blocks, outside 1..${BASE_CHUNK_BLOCKS_MAX}`);
  const startBlock = readU53(view, 16, 'base_chunk: startBlock');
  checkChunkRange(startBlock, blocks, (message) => malformed(`base_chunk: ${message}`));
  const chunkFlags = view.getUint32(40, true);
  if ((chunkFlags & ~(CHUNK_FLAG_ZERO | CHUNK_FLAG_UNCHANGED)) !== 0) throw malformed(`base_chunk: unknown flags 0x${chunkFlags.toString(16)}`);
  if (view.getUint32(44, true) !== 0) throw malformed('base_chunk: reserved bytes are not zero');
  const zero = (chunkFlags & CHUNK_FLAG_ZERO) !== 0;
  const unchanged = (chunkFlags & CHUNK_FLAG_UNCHANGED) !== 0;
  if (zero && unchanged) throw malformed('base_chunk: both zero and unchanged');
  const digest = view.getBigUint64(32, true);
  if (unchanged && digest !== 0n) throw malformed('base_chunk: an unchanged chunk with a digest');
  const dataBytes = zero || unchanged ? 0 : blocks * BLOCK_BYTES;
  if (body.byteLength !== BASE_CHUNK_FIXED_BYTES + dataBytes) {
    const what = zero ? 'a zero chunk (no data)' : unchanged ? 'an unchanged chunk (no data)' : `${blocks} blocks of data`;
    throw malformed(`base_chunk: ${body.byteLength} bytes for ${what}`);
  }
  const frame: BaseChunkFrame = {
    type: 'base_chunk',
    epoch,
    sessionId: readU53(view, 0, 'base_chunk: sessionId'),
    index: view.getUint32(8, true),
    startBlock,
    blocks,
    lsnCheckpoint: readU53(view, 24, 'base_chunk: lsnCheckpoint'),
    digest,
    zero,
    // A plain Uint8Array view (never a Buffer), like WAL record bytes.
    data: dataBytes === 0 ? undefined : new Uint8Array(body.buffer, body.byteOffset + BASE_CHUNK_FIXED_BYTES, dataBytes),
  };
  return unchanged ? { ...frame, unchanged: true } : frame;
}

function decodeSessionAck(epoch: number, body: Uint8Array): SessionAckFrame {
  const view = viewOf(body);
  const phase = SESSION_PHASE_BY_CODE.get(body[28]!);
  if (phase === undefined) throw malformed(`session_ack: unknown phase ${body[28]}`);
  const failureCode = body[29]!;
  const failure = failureCode === 0 ? undefined : SESSION_FAILURE_BY_CODE.get(failureCode);
  if (failureCode !== 0 && failure === undefined) throw malformed(`session_ack: unknown failure ${failureCode}`);
  if ((phase === 'failed') !== (failure !== undefined)) {
    throw malformed(`session_ack: phase ${phase} with failure ${failure ?? 'none'} (a failure goes with phase failed only)`);
  }
  const lsnAchieved = readU53(view, 16, 'session_ack: lsnAchieved');
  if (phase !== 'completed' && lsnAchieved !== 0) throw malformed(`session_ack: lsnAchieved ${lsnAchieved} in phase ${phase}`);
  const ackFlags = body[30]!;
  if ((ackFlags & ~ACK_FLAG_DIGESTS_MATCH) !== 0) throw malformed(`session_ack: unknown flags 0x${ackFlags.toString(16)}`);
  if (body[31] !== 0 || view.getUint16(34, true) !== 0) throw malformed('session_ack: reserved bytes are not zero');
  const messageBytes = view.getUint16(32, true);
  if (messageBytes > CLOSE_MESSAGE_BYTES_MAX) throw malformed(`session_ack: message of ${messageBytes} bytes is too long`);
  if (body.byteLength !== SESSION_ACK_FIXED_BYTES + messageBytes) {
    throw malformed(`session_ack: ${body.byteLength} bytes for a message of ${messageBytes} bytes`);
  }
  return {
    type: 'session_ack',
    epoch,
    sessionId: readU53(view, 0, 'session_ack: sessionId'),
    phase,
    chunksDone: view.getUint32(24, true),
    lsnApplied: readU53(view, 8, 'session_ack: lsnApplied'),
    lsnAchieved,
    digestsMatch: (ackFlags & ACK_FLAG_DIGESTS_MATCH) !== 0,
    failure,
    message: decodeUtf8(body.subarray(SESSION_ACK_FIXED_BYTES), 'session_ack: message'),
  };
}

const utf8Decoder = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

function decodeUtf8(bytes: Uint8Array, what: string): string {
  try {
    return utf8Decoder.decode(bytes);
  } catch {
    throw malformed(`${what} is not valid UTF-8`);
  }
}

// A u64 field that must be an exact JS number (<= 2^53 - 1).
function readU53(view: DataView, offset: number, name: string): number {
  const low = view.getUint32(offset, true);
  const high = view.getUint32(offset + 4, true);
  if (high > 0x1f_ffff) throw malformed(`${name} is over 2^53 - 1`);
  return high * 0x1_0000_0000 + low;
}
