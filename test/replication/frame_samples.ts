// Shared by the replication frame tests: one sample frame of every type,
// fast-check arbitraries for every type, a decoder driver, and craftFrame(),
// which builds a frame byte by byte from the layout table in frames.ts (with
// its own XXH3, independent of the encoder) so tests can make frames the
// encoder refuses to produce.
import fc from 'fast-check';
import { XXHash3 } from 'xxhash-addon';

import { FrameDecoder } from '../../lib/replication/frame_decoder';
import {
  BASE_CHUNK_BLOCKS_MAX,
  BLOCK_BYTES,
  CLOSE_CODES,
  CLOSE_MESSAGE_BYTES_MAX,
  FRAME_HEADER_BYTES,
  FRAME_MAGIC,
  NODE_ID_BYTES_MAX,
  PROTOCOL_VERSION,
  SESSION_FAILURE_CODES,
  SESSION_PHASE_CODES,
  type CloseCode,
  type Frame,
  type SessionPhase,
  type WalRecord,
} from '../../lib/replication/frames';
import { EPOCH_STARTS_MAX } from '../../lib/statemachine/epoch_history';
import type { SessionFailure } from '../../lib/protocol/types';

export const UUID = '0123456789abcdef0011223344556677';

export function bytesOf(length: number, seed: number): Uint8Array {
  const out = new Uint8Array(length);
  let x = (seed * 2654435761 + 1) >>> 0;
  for (let i = 0; i < length; i++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    out[i] = x >>> 24;
  }
  return out;
}

// One of each type (and the variants of HELLO, BASE_CHUNK and SESSION_ACK),
// with values that use the high half of their u64 fields. Tests index the
// first eight; new samples go at the end.
export const SAMPLES: readonly Frame[] = [
  {
    type: 'hello',
    epoch: 7,
    role: 'primary',
    volumeUuid: UUID,
    nodeId: 'node-a',
    lsnDurable: 2 ** 40 + 3,
    lsnApplied: 2 ** 40,
    lsnTail: 17,
    lsnHead: 2 ** 40 + 5,
    applyChecksum: 0xfedcba9876543210n,
  },
  {
    type: 'wal_records',
    epoch: 7,
    lsnCommit: 99,
    records: [
      { lsn: 100, bytes: bytesOf(64, 1) },
      { lsn: 101, bytes: bytesOf(200, 2) },
      { lsn: 103, bytes: bytesOf(1, 3) },
    ],
  },
  { type: 'ack', epoch: 7, lsnReceived: 103, lsnDurable: 101, lsnApplied: 100, applyChecksum: 1n, lsnCheckpoint: 97 },
  { type: 'commit', epoch: 7, lsnCommit: Number.MAX_SAFE_INTEGER },
  { type: 'heartbeat', epoch: 0, sequence: 42 },
  { type: 'error', epoch: 3, code: 'stale_epoch', message: 'stale epoch: frame epoch 3 < local epoch 7' },
  { type: 'goodbye', epoch: 7, code: 'shutdown', message: '' },
  { type: 'sync', epoch: 7, lsnSync: 123_456_789 },
  {
    type: 'rebuild_start',
    epoch: 7,
    sessionId: 2 ** 40 + 9,
    lsnBase: 2 ** 40,
    lsnTarget: 2 ** 40 + 5,
    applyChecksumBase: 0x8877665544332211n,
    sizeBytes: 2 ** 40,
    features: 2 ** 52 + 5,
    durabilityCode: 2,
    chunkBlocks: 8192,
    chunkFrom: 3,
  },
  {
    type: 'base_chunk',
    epoch: 7,
    sessionId: 2 ** 40 + 9,
    index: 0xffff_fffe,
    startBlock: 2 ** 33,
    blocks: 1,
    lsnCheckpoint: 2 ** 40 + 2,
    digest: 0xf0e1d2c3b4a59687n,
    zero: false,
    data: bytesOf(BLOCK_BYTES, 4),
  },
  {
    type: 'base_chunk',
    epoch: 7,
    sessionId: 2 ** 40 + 9,
    index: 4,
    startBlock: 4 * 8192,
    blocks: 8192,
    lsnCheckpoint: 2 ** 40,
    digest: 0x0123456789abcdefn,
    zero: true,
    data: undefined,
  },
  {
    type: 'session_ack',
    epoch: 7,
    sessionId: 2 ** 40 + 9,
    phase: 'failed',
    chunksDone: 0xffff_ffff,
    lsnApplied: 2 ** 40 + 1,
    lsnAchieved: 0,
    digestsMatch: false,
    failure: 'digest_mismatch',
    message: 'chunk 5 (blocks 40960+8192) does not match its digest',
  },
  {
    type: 'session_ack',
    epoch: 7,
    sessionId: 2 ** 40 + 9,
    phase: 'completed',
    chunksDone: 12,
    lsnApplied: 2 ** 40 + 5,
    lsnAchieved: 2 ** 40 + 5,
    digestsMatch: true,
    failure: undefined,
    message: '',
  },
  {
    type: 'hello',
    epoch: 7,
    role: 'replica',
    volumeUuid: UUID,
    nodeId: 'node-b',
    lsnDurable: 2 ** 40 + 1,
    lsnApplied: 2 ** 40 + 1,
    lsnTail: 2 ** 40,
    lsnHead: 2 ** 40 + 1,
    applyChecksum: 0x0102030405060708n,
    rebuild: { sessionId: 2 ** 40 + 8, epoch: 2 ** 33 + 6, baseLsn: 2 ** 40, chunksDone: 0xffff_fffe, chunksTotal: 0xffff_ffff },
  },
  // A bitmap resync's start, and a chunk it sends as unchanged.
  {
    type: 'rebuild_start',
    epoch: 8,
    sessionId: 12,
    lsnBase: 500,
    lsnTarget: 510,
    applyChecksumBase: 0x1234n,
    sizeBytes: 64 * 2 ** 20,
    features: 0,
    durabilityCode: 1,
    chunkBlocks: 256,
    chunkFrom: 0,
    resync: true,
  },
  {
    type: 'base_chunk',
    epoch: 8,
    sessionId: 12,
    index: 5,
    startBlock: 5 * 256,
    blocks: 256,
    lsnCheckpoint: 500,
    digest: 0n,
    zero: false,
    data: undefined,
    unchanged: true,
  },
  // A replica's HELLO with the epoch of its newest applied barrier, with and
  // without rebuild info; a REBUILD_START carrying the epoch history.
  {
    type: 'hello',
    epoch: 9,
    role: 'replica',
    volumeUuid: UUID,
    nodeId: 'r',
    lsnDurable: 300,
    lsnApplied: 290,
    lsnTail: 100,
    lsnHead: 300,
    applyChecksum: 0x55n,
    epochApplied: 2 ** 40 + 3,
  },
  {
    type: 'hello',
    epoch: 9,
    role: 'replica',
    volumeUuid: UUID,
    nodeId: 'rr',
    lsnDurable: 300,
    lsnApplied: 290,
    lsnTail: 100,
    lsnHead: 300,
    applyChecksum: 0x56n,
    rebuild: { sessionId: 4, epoch: 9, baseLsn: 200, chunksDone: 1, chunksTotal: 8 },
    epochApplied: 0,
  },
  {
    type: 'rebuild_start',
    epoch: 9,
    sessionId: 13,
    lsnBase: 700,
    lsnTarget: 710,
    applyChecksumBase: 0x4321n,
    sizeBytes: 64 * 2 ** 20,
    features: 0,
    durabilityCode: 2,
    chunkBlocks: 256,
    chunkFrom: 0,
    resync: true,
    epochStarts: [
      { epoch: 2, lsn: 50 },
      { epoch: 2 ** 40, lsn: 2 ** 41 },
    ],
  },
];

// Feeds chunks one by one, taking every frame as soon as it is whole.
export function decodeChunks(chunks: readonly Uint8Array[], decoder = new FrameDecoder()): Frame[] {
  const frames: Frame[] = [];
  for (const chunk of chunks) {
    decoder.push(chunk);
    for (let frame = decoder.next(); frame !== undefined; frame = decoder.next()) frames.push(frame);
  }
  return frames;
}

// A copy in an ArrayBuffer of its own (Buffer.from may share Node's pool, and
// tests compare .buffer identity to prove views).
export function own(bytes: Uint8Array): Uint8Array {
  return new Uint8Array(bytes);
}

export interface CraftFields {
  magic?: number;
  version?: number;
  typeCode: number;
  flags?: number;
  epoch?: bigint;
  bodyBytes?: number; // the length field; default body.length
  reserved?: number;
  body: Uint8Array;
  badChecksum?: boolean;
}

// A frame laid out as the table in frames.ts says, checksum computed here.
export function craftFrame(fields: CraftFields): Buffer {
  const header = Buffer.alloc(FRAME_HEADER_BYTES);
  header.writeUInt32LE(fields.magic ?? FRAME_MAGIC, 0);
  header.writeUInt8(fields.version ?? PROTOCOL_VERSION, 4);
  header.writeUInt8(fields.typeCode, 5);
  header.writeUInt16LE(fields.flags ?? 0, 6);
  header.writeBigUInt64LE(fields.epoch ?? 1n, 8);
  header.writeUInt32LE(fields.bodyBytes ?? fields.body.length, 16);
  header.writeUInt32LE(fields.reserved ?? 0, 20);
  const checksum = XXHash3.hash(Buffer.concat([header.subarray(0, 24), fields.body]));
  if (fields.badChecksum === true) checksum[7]! ^= 1;
  checksum.copy(header, 24);
  return Buffer.concat([header, fields.body]);
}

// ---- Arbitraries ----

// Frames as plain objects, like the decoder's (fc.record's default has a null
// prototype, which deepStrictEqual tells apart).
const PLAIN = { noNullPrototype: true } as const;
const u53 = fc.maxSafeNat();
const u64 = fc.bigInt({ min: 0n, max: (1n << 64n) - 1n });
const utf8Length = (text: string): number => Buffer.byteLength(text, 'utf8');

// Any code points (no lone surrogates) up to the byte limit; the extremes too.
function utf8String(minBytes: number, maxBytes: number): fc.Arbitrary<string> {
  return fc.oneof(
    fc.string({ unit: 'binary', minLength: minBytes, maxLength: 64 }).filter((s) => utf8Length(s) >= minBytes && utf8Length(s) <= maxBytes),
    fc.constant('x'.repeat(maxBytes)),
    fc.constant('é'.repeat(Math.floor(maxBytes / 2))),
  );
}

const uuidArb = fc.uint8Array({ minLength: 16, maxLength: 16 }).map((b) => Buffer.from(b).toString('hex'));

const u32 = fc.nat({ max: 0xffff_ffff });

// chunksDone <= chunksTotal, chunksTotal >= 1.
const helloRebuildArb = fc
  .record({ sessionId: u53, epoch: u53, baseLsn: u53, chunksTotal: fc.integer({ min: 1, max: 0xffff_ffff }), done: fc.double({ min: 0, max: 1, noNaN: true }) })
  .map(({ done, ...rest }) => ({ ...rest, chunksDone: Math.floor(done * rest.chunksTotal) }));

// With or without rebuild info (without: no rebuild key, as the decoder gives).
const helloArb: fc.Arbitrary<Frame> = fc.record({
  type: fc.constant('hello' as const),
  epoch: u53,
  role: fc.constantFrom('primary' as const, 'replica' as const),
  volumeUuid: uuidArb,
  nodeId: utf8String(1, NODE_ID_BYTES_MAX),
  lsnDurable: u53,
  lsnApplied: u53,
  lsnTail: u53,
  lsnHead: u53,
  applyChecksum: u64,
  rebuild: helloRebuildArb,
  epochApplied: u53,
}, { ...PLAIN, requiredKeys: ['type', 'epoch', 'role', 'volumeUuid', 'nodeId', 'lsnDurable', 'lsnApplied', 'lsnTail', 'lsnHead', 'applyChecksum'] });

// Strictly increasing LSNs from a start that leaves room for the gaps.
const recordsArb: fc.Arbitrary<WalRecord[]> = fc
  .tuple(
    fc.integer({ min: 1, max: Number.MAX_SAFE_INTEGER - 20 * 1000 }),
    fc.array(fc.record({ gap: fc.integer({ min: 1, max: 1000 }), bytes: fc.uint8Array({ minLength: 1, maxLength: 300 }) }), {
      minLength: 1,
      maxLength: 20,
    }),
  )
  .map(([lsnStart, entries]) => {
    let lsn = lsnStart - entries[0]!.gap;
    return entries.map(({ gap, bytes }) => ({ lsn: (lsn += gap), bytes }));
  });

const walRecordsArb: fc.Arbitrary<Frame> = fc.record(
  { type: fc.constant('wal_records' as const), epoch: u53, lsnCommit: fc.integer({ min: 1, max: Number.MAX_SAFE_INTEGER }), records: recordsArb },
  { ...PLAIN, requiredKeys: ['type', 'epoch', 'records'] },
);

const ackArb: fc.Arbitrary<Frame> = fc
  .record({ type: fc.constant('ack' as const), epoch: u53, lsnReceived: u53, lsnDurable: u53, lsnApplied: u53, applyChecksum: u64, checkpointShare: fc.double({ min: 0, max: 1, noNaN: true }) }, PLAIN)
  .map(({ checkpointShare, ...ack }) => ({ ...ack, lsnCheckpoint: Math.floor(ack.lsnApplied * checkpointShare) }));

const commitArb: fc.Arbitrary<Frame> = fc.record({ type: fc.constant('commit' as const), epoch: u53, lsnCommit: u53 }, PLAIN);
const syncArb: fc.Arbitrary<Frame> = fc.record({ type: fc.constant('sync' as const), epoch: u53, lsnSync: u53 }, PLAIN);
const heartbeatArb: fc.Arbitrary<Frame> = fc.record({ type: fc.constant('heartbeat' as const), epoch: u53, sequence: u53 }, PLAIN);

const closeArb: fc.Arbitrary<Frame> = fc.record({
  type: fc.constantFrom('error' as const, 'goodbye' as const),
  epoch: u53,
  code: fc.constantFrom(...(Object.keys(CLOSE_CODES) as CloseCode[])),
  message: utf8String(0, CLOSE_MESSAGE_BYTES_MAX),
}, PLAIN);

// lsnBase <= lsnTarget; chunkFrom within the volume's chunks.
const rebuildStartArb: fc.Arbitrary<Frame> = fc
  .record({
    epoch: u53,
    sessionId: u53,
    lsns: fc.tuple(u53, u53).map(([a, b]) => (a <= b ? [a, b] : [b, a])),
    applyChecksumBase: u64,
    sizeBlocks: fc.integer({ min: 1, max: Math.floor(Number.MAX_SAFE_INTEGER / BLOCK_BYTES) }),
    features: u53,
    durabilityCode: fc.integer({ min: 0, max: 3 }),
    chunkBlocks: fc.integer({ min: 1, max: BASE_CHUNK_BLOCKS_MAX }),
    from: fc.double({ min: 0, max: 1, noNaN: true }),
    starts: fc.option(fc.array(fc.tuple(fc.integer({ min: 1, max: 1000 }), fc.integer({ min: 1, max: 1000 })), { maxLength: EPOCH_STARTS_MAX }), { nil: undefined }),
  })
  .map(({ lsns, sizeBlocks, from, starts, ...rest }) => {
    const chunksTotal = Math.ceil(sizeBlocks / rest.chunkBlocks);
    return {
      type: 'rebuild_start' as const,
      epoch: rest.epoch,
      sessionId: rest.sessionId,
      lsnBase: lsns[0]!,
      lsnTarget: lsns[1]!,
      applyChecksumBase: rest.applyChecksumBase,
      sizeBytes: sizeBlocks * BLOCK_BYTES,
      features: rest.features,
      durabilityCode: rest.durabilityCode,
      chunkBlocks: rest.chunkBlocks,
      chunkFrom: Math.min(Math.floor(from * (chunksTotal + 1)), chunksTotal, 0xffff_ffff),
      // Strictly increasing epochs and LSNs from positive gaps.
      ...(starts === undefined ? {} : { epochStarts: runningSums(starts) }),
    };
  });

function runningSums(gaps: [number, number][]): { epoch: number; lsn: number }[] {
  let epoch = 0;
  let lsn = 0;
  return gaps.map(([e, l]) => ({ epoch: (epoch += e), lsn: (lsn += l) }));
}

// Zero chunks of any size; data chunks of a few blocks (the bytes cost time).
const baseChunkArb: fc.Arbitrary<Frame> = fc
  .record({
    epoch: u53,
    sessionId: u53,
    index: u32,
    startBlock: fc.integer({ min: 0, max: Math.floor(Number.MAX_SAFE_INTEGER / BLOCK_BYTES) - BASE_CHUNK_BLOCKS_MAX }),
    lsnCheckpoint: u53,
    digest: u64,
    shape: fc.oneof(
      fc.record({ zero: fc.constant(true), blocks: fc.integer({ min: 1, max: BASE_CHUNK_BLOCKS_MAX }), seed: fc.constant(0) }),
      fc.record({ zero: fc.constant(false), blocks: fc.integer({ min: 1, max: 3 }), seed: fc.nat() }),
    ),
  })
  .map(({ shape, ...rest }) => ({
    type: 'base_chunk' as const,
    epoch: rest.epoch,
    sessionId: rest.sessionId,
    index: rest.index,
    startBlock: rest.startBlock,
    blocks: shape.blocks,
    lsnCheckpoint: rest.lsnCheckpoint,
    digest: rest.digest,
    zero: shape.zero,
    data: shape.zero ? undefined : bytesOf(shape.blocks * BLOCK_BYTES, shape.seed),
  }));

const PHASES = Object.keys(SESSION_PHASE_CODES) as SessionPhase[];
const FAILURES = Object.keys(SESSION_FAILURE_CODES) as SessionFailure[];

// A failure exactly with phase failed; lsnAchieved 0 unless completed.
const sessionAckArb: fc.Arbitrary<Frame> = fc
  .record({
    epoch: u53,
    sessionId: u53,
    phase: fc.constantFrom(...PHASES),
    chunksDone: u32,
    lsnApplied: u53,
    lsnAchieved: u53,
    digestsMatch: fc.boolean(),
    failure: fc.constantFrom(...FAILURES),
    message: utf8String(0, CLOSE_MESSAGE_BYTES_MAX),
  })
  .map((r) => ({
    type: 'session_ack' as const,
    epoch: r.epoch,
    sessionId: r.sessionId,
    phase: r.phase,
    chunksDone: r.chunksDone,
    lsnApplied: r.lsnApplied,
    lsnAchieved: r.phase === 'completed' ? r.lsnAchieved : 0,
    digestsMatch: r.digestsMatch,
    failure: r.phase === 'failed' ? r.failure : undefined,
    message: r.message,
  }));

export const FRAME_ARBITRARIES: Readonly<Record<string, fc.Arbitrary<Frame>>> = {
  hello: helloArb,
  wal_records: walRecordsArb,
  ack: ackArb,
  commit: commitArb,
  sync: syncArb,
  heartbeat: heartbeatArb,
  'error/goodbye': closeArb,
  rebuild_start: rebuildStartArb,
  base_chunk: baseChunkArb,
  session_ack: sessionAckArb,
};

export const anyFrameArb: fc.Arbitrary<Frame> = fc.oneof(...Object.values(FRAME_ARBITRARIES));
