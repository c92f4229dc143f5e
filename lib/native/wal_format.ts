// Typed wrappers of the WAL format binding: record and frame codec, segment
// names, and the recovery scan (native/wal/format.h and scan.h hold the format
// and the scan rules).
//
// Kinds are strings here and numeric codes on disk. LSNs, epochs, LBAs and
// seqs are JS numbers; the format keeps them at or below 2^53 - 1. Errors
// arrive as BlockwalError: ERR_RECORD (a RecordDecodeError with the reason) for
// records that do not decode or fields that do not fit, ERR_WAL_CORRUPT (a
// WalCorruptError naming the segment and offset) and ERR_IO from the scan.
import { addon } from './addon';
import { BlockwalError, toBlockwalError } from './errors';
import type {
  RawFrameError,
  RawRecordFields,
  RawScanResult,
  RawScannedRecords,
  RawScannedSegment,
  RawWalFormatLimits,
} from './raw';

export type RecordKind = 'write' | 'trim' | 'zero' | 'control';

const kindCodes: Record<RecordKind, number> = { write: 1, trim: 2, zero: 3, control: 4 };
const kindsByCode: readonly (RecordKind | undefined)[] = [undefined, 'write', 'trim', 'zero', 'control'];

export function recordKindCode(kind: RecordKind): number {
  return kindCodes[kind];
}

export function recordKindOf(code: number): RecordKind {
  const kind = kindsByCode[code];
  if (kind === undefined) throw new RangeError(`unknown record kind code ${code}`);
  return kind;
}

// Limits of the format, from the addon (native/util/constants.h, native/wal/format.h).
export function walFormatLimits(): RawWalFormatLimits {
  return addon().walFormatLimits;
}

export type RecordErrorReason = 'truncated' | 'bad_magic' | 'bad_version' | 'bad_kind' | 'bad_shape' | 'bad_checksum';

// ERR_RECORD: a record that does not decode, or fields that cannot be encoded.
export class RecordDecodeError extends BlockwalError {
  readonly reason: RecordErrorReason;
  constructor(message: string, reason: RecordErrorReason) {
    super('ERR_RECORD', message);
    this.reason = reason;
  }
}

// ERR_WAL_CORRUPT: the scan found a bad frame that had been durable, a gap, or
// a malformed segment file. segmentFile and offsetBytes say where.
export class WalCorruptError extends BlockwalError {
  readonly segmentSeq: number;
  readonly segmentFile: string;
  readonly offsetBytes: number;
  constructor(message: string, segmentSeq: number, segmentFile: string, offsetBytes: number) {
    super('ERR_WAL_CORRUPT', message);
    this.segmentSeq = segmentSeq;
    this.segmentFile = segmentFile;
    this.offsetBytes = offsetBytes;
  }
}

interface RawDetails {
  reason?: unknown;
  segmentSeq?: unknown;
  segmentFile?: unknown;
  offsetBytes?: unknown;
}

function toWalFormatError(err: unknown): Error {
  const converted = toBlockwalError(err);
  if (!(converted instanceof BlockwalError)) return converted;
  const raw = err as RawDetails;
  if (converted.code === 'ERR_RECORD' && typeof raw.reason === 'string') {
    return new RecordDecodeError(converted.message, raw.reason as RecordErrorReason);
  }
  if (
    converted.code === 'ERR_WAL_CORRUPT' &&
    typeof raw.segmentSeq === 'number' &&
    typeof raw.segmentFile === 'string' &&
    typeof raw.offsetBytes === 'number'
  ) {
    return new WalCorruptError(converted.message, raw.segmentSeq, raw.segmentFile, raw.offsetBytes);
  }
  return converted;
}

// Like nativeCall, keeping the details (reason, segment, offset) the binding sets.
function call<T>(fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    throw toWalFormatError(err);
  }
}

export interface RecordFields {
  kind: RecordKind;
  epoch: number;
  lsn: number;
  lba: number; // in 4 KiB blocks
  lengthBlocks: number;
}

export interface DecodedRecord extends RecordFields {
  payloadBytes: number;
  checksum: bigint; // XXH3-64 over the header (checksum field zero) and the payload
  spanBytes: number; // header + payload, padded to 8
}

function rawFields(fields: RecordFields): RawRecordFields {
  return {
    kind: recordKindCode(fields.kind),
    epoch: fields.epoch,
    lsn: fields.lsn,
    lba: fields.lba,
    lengthBlocks: fields.lengthBlocks,
  };
}

// Encodes one record: header + payload + zero padding to 8 bytes.
export function encodeRecord(fields: RecordFields, payload: Uint8Array | null = null): Buffer {
  return call(() => addon().encodeRecord(rawFields(fields), payload));
}

// Verifies and decodes the record at offsetBytes of buf (header + payload).
// One call, no object made natively (decodeRecordInto); a record that does
// not decode goes through decodeRecord again for the reason.
const decodedFields = new Float64Array(7);
const decodedChecksum = new BigUint64Array(1);

export function decodeRecord(buf: Uint8Array, offsetBytes = 0): DecodedRecord {
  const f = decodedFields;
  if (buf instanceof Uint8Array && Number.isSafeInteger(offsetBytes) && offsetBytes >= 0 && offsetBytes <= buf.byteLength) {
    if (addon().decodeRecordInto(buf, offsetBytes, f, decodedChecksum) === 0) {
      return {
        kind: recordKindOf(f[0]!),
        epoch: f[1]!,
        lsn: f[2]!,
        lba: f[3]!,
        lengthBlocks: f[4]!,
        payloadBytes: f[5]!,
        checksum: decodedChecksum[0]!,
        spanBytes: f[6]!,
      };
    }
  }
  const raw = call(() => addon().decodeRecord(buf, offsetBytes));
  return {
    kind: recordKindOf(raw.kind),
    epoch: raw.epoch,
    lsn: raw.lsn,
    lba: raw.lba,
    lengthBlocks: raw.lengthBlocks,
    payloadBytes: raw.payloadBytes,
    checksum: raw.checksum,
    spanBytes: raw.spanBytes,
  };
}

export interface FrameOptions {
  segmentSeq: number;
  lsnFirst: number;
  lsnDurableHint: number; // < lsnFirst
  dsync?: boolean;
}

export interface FrameRecord {
  kind: RecordKind;
  epoch: number;
  lba: number;
  lengthBlocks: number;
  payload?: Uint8Array | null;
}

// Builds one sealed frame (a multiple of 4 KiB) as the writer would; records
// get LSNs lsnFirst, lsnFirst + 1, ... Tests write WAL files with it.
export function encodeFrame(options: FrameOptions, records: readonly FrameRecord[]): Buffer {
  const raw = records.map((r) => ({
    kind: recordKindCode(r.kind),
    epoch: r.epoch,
    lba: r.lba,
    lengthBlocks: r.lengthBlocks,
    payload: r.payload ?? null,
  }));
  return call(() => addon().encodeFrame({ ...options, dsync: options.dsync ?? false }, raw));
}

export type FrameError = Exclude<RawFrameError, 'ok'>;

export interface FrameHeaderFields {
  segmentSeq: number;
  lsnFirst: number;
  lsnDurableHint: number;
  recordCount: number;
  frameBytes: number;
  bodyBytes: number;
  dsync: boolean;
}

export type CheckedFrame = ({ ok: true } & FrameHeaderFields) | { ok: false; error: FrameError };

// Verifies the frame at offsetBytes of buf as a frame of segment segmentSeq
// (header, every record, consecutive LSNs, zero padding). A bad frame is a
// value, not an exception.
export function checkFrame(buf: Uint8Array, segmentSeq: number, offsetBytes = 0): CheckedFrame {
  const raw = call(() => addon().checkFrame(buf, segmentSeq, offsetBytes));
  if (raw.error !== 'ok') return { ok: false, error: raw.error };
  return {
    ok: true,
    segmentSeq: raw.segmentSeq!,
    lsnFirst: raw.lsnFirst!,
    lsnDurableHint: raw.lsnDurableHint!,
    recordCount: raw.recordCount!,
    frameBytes: raw.frameBytes!,
    bodyBytes: raw.bodyBytes!,
    dsync: raw.dsync!,
  };
}

// `<16 lower-case hex digits>.wal`
export function segmentFileName(seq: number): string {
  return call(() => addon().segmentFileName(seq));
}

export interface ScanOptions {
  dir: string;
  lsnFrom: number; // first LSN the caller needs (>= 1)
  segmentBytes: number;
  wantControlPayloads?: boolean;
}

export type ScannedRecords = RawScannedRecords & { count: number };
export type ScannedSegment = RawScannedSegment;
export type SegmentRole = RawScannedSegment['role'];

export interface ScanResult extends Omit<RawScanResult, 'records'> {
  records: ScannedRecords;
}

// Reads a WAL directory off the JS thread and returns the log from lsnFrom.
export async function scanWal(options: ScanOptions): Promise<ScanResult> {
  let raw: RawScanResult;
  try {
    raw = await addon().scanWal({ ...options, wantControlPayloads: options.wantControlPayloads ?? false });
  } catch (err) {
    throw toWalFormatError(err);
  }
  return { ...raw, records: { ...raw.records, count: raw.records.lsn.length } };
}

// The control payloads of a scan (wantControlPayloads), one per control
// record, in record order. Each is a view into result.controlPayloads.
export function splitControlPayloads(result: ScanResult): Buffer[] {
  const out: Buffer[] = [];
  const control = recordKindCode('control');
  let offsetBytes = 0;
  for (let i = 0; i < result.records.count; i++) {
    if (result.records.kind[i] !== control) continue;
    const payloadBytes = result.records.payloadBytes[i]!;
    out.push(result.controlPayloads.subarray(offsetBytes, offsetBytes + payloadBytes));
    offsetBytes += payloadBytes;
  }
  if (offsetBytes !== result.controlPayloads.length) {
    throw new RangeError('controlPayloads does not match the control records (was wantControlPayloads set?)');
  }
  return out;
}
