// The raw shape of the addon's exports, as the C++ binding defines them. Only
// lib/native/ uses these types; the rest of the code uses the wrappers.
// Each binding file adds its part to RawAddon.

export interface RawAddon {
  [name: string]: unknown;
}

// bitmap ------------------------------------------------------------------
// native/binding/bitmap_binding.cc. Blocks are JS numbers (exact: at most
// bitmapLimits.blockCountMax = 2^36). Wrapper: lib/native/bitmap.ts.

export interface RawBitmap {
  readonly blockCount: number;
  readonly tag: Buffer; // a copy
  readonly fd: number; // -1 once closed
  readonly generation: number;
  readonly wasClean: boolean;
  readonly isOpen: boolean;
  get(block: number): boolean;
  setRange(startBlock: number, lengthBlocks: number): void;
  clearRange(startBlock: number, lengthBlocks: number): void;
  countSet(): number;
  countSetInRange(startBlock: number, lengthBlocks: number): number;
  anySetInRange(startBlock: number, lengthBlocks: number): boolean;
  nextSet(fromBlock: number): number; // -1 when none
  nextClear(fromBlock: number): number; // blockCount when none
  // Writes (startBlock, lengthBlocks) pairs into out; returns how many runs.
  runs(fromBlock: number, endBlock: number, out: Float64Array): number;
  sync(): void;
  close(clean: boolean): void;
}

export interface RawBitmapLimits {
  readonly blockCountMax: number;
  readonly tagBytesMax: number;
  readonly runsPerCallMax: number;
  readonly blocksPerPage: number;
}

export interface RawAddon {
  Bitmap: new (path: string) => RawBitmap;
  bitmapCreate(path: string, blockCount: number, tag?: Uint8Array): void;
  bitmapLimits: RawBitmapLimits;
}
// end bitmap --------------------------------------------------------------

// wal_format --------------------------------------------------------------
// native/binding/wal_format_binding.cc: the WAL record/frame codec and the
// recovery scan. LSNs, epochs, LBAs and seqs are JS numbers (exact: the format
// keeps them <= 2^53 - 1). Kinds are the on-disk codes (1 write, 2 trim,
// 3 zero, 4 control). Wrapper: lib/native/wal_format.ts.

export interface RawRecordFields {
  kind: number;
  epoch: number;
  lsn: number;
  lba: number;
  lengthBlocks: number;
}

export interface RawDecodedRecord extends RawRecordFields {
  payloadBytes: number;
  checksum: bigint;
  spanBytes: number; // header + payload padded to 8
}

export interface RawFrameOptions {
  segmentSeq: number;
  lsnFirst: number;
  lsnDurableHint: number;
  dsync?: boolean;
}

export interface RawFrameRecord {
  kind: number;
  epoch: number;
  lba: number;
  lengthBlocks: number;
  payload?: Uint8Array | null;
}

export interface RawScanOptions {
  dir: string;
  lsnFrom: number;
  segmentBytes: number;
  wantControlPayloads: boolean;
}

// One typed array per field, index i = the i-th record in LSN order.
export interface RawScannedRecords {
  lsn: Float64Array;
  epoch: Float64Array;
  lba: Float64Array;
  lengthBlocks: Float64Array;
  segmentSeq: Float64Array;
  offsetBytes: Uint32Array; // of the record header within its segment
  payloadBytes: Uint32Array;
  kind: Uint8Array;
  checksum: BigUint64Array;
}

export interface RawScannedSegment {
  seq: number;
  lsnFirst: number;
  lsnLast: number;
  role: 'chain' | 'free' | 'spare';
}

export interface RawScanResult {
  records: RawScannedRecords;
  controlPayloads: Buffer;
  segments: RawScannedSegment[];
  lsnNext: number;
  lsnFirstRetained: number;
  seqMax: number;
  bytesScanned: number;
  tornTailBytes: number;
}

export interface RawWalFormatLimits {
  readonly blockBytes: number;
  readonly recordHeaderBytes: number;
  readonly frameHeaderBytes: number;
  readonly recordAlignBytes: number;
  readonly recordPayloadMax: number;
  readonly controlPayloadMax: number;
  readonly frameBytesLimit: number;
  readonly lsnMax: number;
  readonly epochMax: number;
  readonly lbaLimit: number; // lba + lengthBlocks <= lbaLimit
  readonly segmentSeqMax: number;
  readonly segmentBytesMin: number;
  readonly segmentBytesMax: number;
}

export type RawFrameError = 'ok' | 'not_a_frame' | 'wrong_segment' | 'bad_shape' | 'bad_record' | 'lsn_gap';

export interface RawCheckedFrame {
  error: RawFrameError;
  // The rest only when error === 'ok'.
  segmentSeq?: number;
  lsnFirst?: number;
  lsnDurableHint?: number;
  recordCount?: number;
  frameBytes?: number;
  bodyBytes?: number;
  dsync?: boolean;
}

export interface RawWalFormat {
  walFormatLimits: RawWalFormatLimits;
  checkFrame(buf: Uint8Array, segmentSeq: number, offset?: number): RawCheckedFrame;
  encodeRecord(fields: RawRecordFields, payload: Uint8Array | null): Buffer;
  decodeRecord(buf: Uint8Array, offset?: number): RawDecodedRecord;
  // 0: fields = [kind, epoch, lsn, lba, lengthBlocks, payloadBytes, spanBytes],
  // checksum[0] set; -1: the record does not decode (decodeRecord says why).
  decodeRecordInto(buf: Uint8Array, offset: number, fields: Float64Array, checksum: BigUint64Array): number;
  // XXH3-64 of the parts joined, written big-endian at out[outOffset..+8].
  xxh3Parts(out: Uint8Array, outOffset: number, ...parts: Uint8Array[]): void;
  encodeFrame(options: RawFrameOptions, records: RawFrameRecord[]): Buffer;
  scanWal(options: RawScanOptions): Promise<RawScanResult>;
  segmentFileName(seq: number): string;
  applyChecksumExtend(chain: bigint, recordChecksum: bigint): bigint;
  applyChecksumChain(chain: bigint, recordChecksums: BigUint64Array, count: number): bigint;
}

// eslint-disable-next-line @typescript-eslint/no-empty-interface
export interface RawAddon extends RawWalFormat {}
// end wal_format ----------------------------------------------------------
