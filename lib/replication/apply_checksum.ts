// The chained apply checksum: every node folds the checksum of each WAL
// record it applies, in LSN order, into
//
//   h_0 = 0,   h_n = XXH3-64(be64(h_{n-1}) ‖ be64(c_n))
//
// where c_n is the record's own XXH3-64 checksum (the numeric value in its
// header) and be64 is the 8-byte big-endian form (XXH3's canonical byte
// order, so C++ gets the same value with XXH64_canonicalFromHash-style
// writes). Two nodes that applied the same records in the same order hold the
// same h at the same applied LSN; replicas report it in ACK frames and a
// mismatch at an equal LSN means divergence (rebuild).
//
// Values are bigints in [0, 2^64); status and logs show them as 16 lower-case
// hex digits. The steps run in the addon (libxxhash, wal::apply_checksum_step):
// one crossing per record (or one per batch) instead of a hash object, a
// buffer and two bigint conversions in JS, and one implementation for the
// native side and this one.
import { addon } from '../native/addon';

export type ApplyChecksum = bigint;

export const APPLY_CHECKSUM_INITIAL: ApplyChecksum = 0n;

const U64_LIMIT = 1n << 64n;
const HEX_PATTERN = /^[0-9a-f]{16}$/;

export function extendApplyChecksum(applyChecksum: ApplyChecksum, recordChecksum: bigint): ApplyChecksum {
  checkU64('applyChecksum', applyChecksum);
  checkU64('recordChecksum', recordChecksum);
  return addon().applyChecksumExtend(applyChecksum, recordChecksum);
}

// Folds record checksums in the order given (LSN order).
export function extendApplyChecksumBatch(applyChecksum: ApplyChecksum, recordChecksums: Iterable<bigint>): ApplyChecksum {
  checkU64('applyChecksum', applyChecksum);
  const all = [...recordChecksums];
  for (const c of all) checkU64('recordChecksum', c);
  return addon().applyChecksumChain(applyChecksum, BigUint64Array.from(all), all.length);
}

// Folds a run of record checksums (a scan's, in LSN order) in one call.
export function extendApplyChecksumRun(applyChecksum: ApplyChecksum, recordChecksums: BigUint64Array): ApplyChecksum {
  checkU64('applyChecksum', applyChecksum);
  return addon().applyChecksumChain(applyChecksum, recordChecksums, recordChecksums.length);
}

export function applyChecksumToHex(applyChecksum: ApplyChecksum): string {
  checkU64('applyChecksum', applyChecksum);
  return applyChecksum.toString(16).padStart(16, '0');
}

export function applyChecksumFromHex(hex: string): ApplyChecksum {
  if (typeof hex !== 'string' || !HEX_PATTERN.test(hex)) {
    throw new RangeError(`apply checksum must be 16 lower-case hex digits, got ${JSON.stringify(hex)}`);
  }
  return BigInt(`0x${hex}`);
}

function checkU64(name: string, value: bigint): void {
  if (typeof value !== 'bigint' || value < 0n || value >= U64_LIMIT) {
    throw new RangeError(`${name} must be a bigint in [0, 2^64), got ${String(value)}`);
  }
}
