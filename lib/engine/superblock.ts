// The volume superblock: two 4 KiB slots in one file, written with O_DIRECT +
// RWF_DSYNC through the ring. Each slot holds every field, a sequence number
// and an XXH3-64 checksum; an update writes the slot with the older sequence,
// so a torn or failed write leaves the other, newer-valid slot intact. Open
// picks the valid slot with the highest sequence; one bad slot is a logged
// fallback, both bad refuses to open.
import * as fs from 'node:fs';

import { XXHash3 } from 'xxhash-addon';

import { BlockwalError } from '../native/errors';
import { checkEpochStarts, EPOCH_STARTS_MAX, type EpochStart } from '../statemachine/epoch_history';
import type { ArenaSlice, Ring } from '../native/ring';

export const SLOT_BYTES = 4096;
const MAGIC = 0x5245505553574c42n; // "BLWSUPER"
const VERSION = 1;
const CHECKSUM_OFFSET = SLOT_BYTES - 8;

export interface SuperblockFields {
  uuid: string; // 32 lower-case hex digits
  sizeBytes: number;
  blockBytes: number;
  epoch: number;
  checkpointLsn: number;
  walSegmentBytes: number;
  walRetentionBytes: number;
  features: number;
  createdAtMs: number;
  // The chained apply checksum at checkpointLsn (replication/apply_checksum.ts).
  applyChecksum: bigint;
  // The durability mode set by the last control record (statemachine/control.ts; 0: none).
  durabilityCode: number;
  // The WAL retention floor (wal_retention.ts): every record after this LSN
  // was kept in the WAL when it was recorded (never above checkpointLsn; a
  // hint, the recovery scan decides what is there). Absent: not recorded
  // (a volume made before it existed), the WAL holds nothing below the checkpoint.
  walTailLsn?: number;
  // The epochs the history up to checkpointLsn opened (statemachine/
  // epoch_history.ts). Absent: not recorded (a volume made before it existed).
  epochStarts?: readonly EpochStart[];
}

const EPOCH_STARTS_COUNT_OFFSET = 120;
const EPOCH_STARTS_OFFSET = 128;

export interface SuperblockOpen {
  superblock: Superblock;
  // Why the other slot was not used, when it was not valid (for the log).
  fallbackReason: string | undefined;
}

// Encodes a slot; pure.
export function encodeSlot(fields: SuperblockFields, seq: number, out: Uint8Array): void {
  if (out.byteLength < SLOT_BYTES) throw new RangeError('slot buffer too small');
  out.fill(0, 0, SLOT_BYTES);
  const v = new DataView(out.buffer, out.byteOffset, SLOT_BYTES);
  const u64 = (offset: number, value: number): void => v.setBigUint64(offset, BigInt(value), true);
  v.setBigUint64(0, MAGIC, true);
  v.setUint32(8, VERSION, true);
  v.setUint32(12, fields.blockBytes, true);
  u64(16, seq);
  out.set(Buffer.from(fields.uuid, 'hex'), 24);
  u64(40, fields.sizeBytes);
  u64(48, fields.epoch);
  u64(56, fields.checkpointLsn);
  u64(64, fields.walSegmentBytes);
  u64(72, fields.walRetentionBytes);
  u64(80, fields.features);
  u64(88, fields.createdAtMs);
  v.setBigUint64(96, fields.applyChecksum, true);
  u64(104, fields.durabilityCode);
  // Stored plus one so that the zeros of an older slot read as absent.
  u64(112, fields.walTailLsn === undefined ? 0 : fields.walTailLsn + 1);
  // Stored plus one as well: 0 (an older slot) is "not recorded".
  const starts = fields.epochStarts;
  if (starts !== undefined) {
    const bad = checkEpochStarts(starts);
    if (bad !== undefined) throw new RangeError(`superblock: ${bad}`);
    u64(EPOCH_STARTS_COUNT_OFFSET, starts.length + 1);
    starts.forEach((s, i) => {
      u64(EPOCH_STARTS_OFFSET + 16 * i, s.epoch);
      u64(EPOCH_STARTS_OFFSET + 16 * i + 8, s.lsn);
    });
  }
  const checksum = XXHash3.hash(Buffer.from(out.buffer, out.byteOffset, CHECKSUM_OFFSET));
  out.set(checksum, CHECKSUM_OFFSET);
}

// Decodes a slot; returns the reason when it is not valid. Pure.
export function decodeSlot(buf: Uint8Array): { fields: SuperblockFields; seq: number } | { error: string } {
  if (buf.byteLength < SLOT_BYTES) return { error: 'short slot' };
  const v = new DataView(buf.buffer, buf.byteOffset, SLOT_BYTES);
  if (v.getBigUint64(0, true) !== MAGIC) return { error: 'bad magic' };
  const checksum = XXHash3.hash(Buffer.from(buf.buffer, buf.byteOffset, CHECKSUM_OFFSET));
  if (!Buffer.from(buf.buffer, buf.byteOffset + CHECKSUM_OFFSET, 8).equals(checksum)) return { error: 'bad checksum' };
  if (v.getUint32(8, true) !== VERSION) return { error: `unknown version ${v.getUint32(8, true)}` };
  const u64 = (offset: number): number => Number(v.getBigUint64(offset, true));
  const fields: SuperblockFields = {
    uuid: Buffer.from(buf.buffer, buf.byteOffset + 24, 16).toString('hex'),
    blockBytes: v.getUint32(12, true),
    sizeBytes: u64(40),
    epoch: u64(48),
    checkpointLsn: u64(56),
    walSegmentBytes: u64(64),
    walRetentionBytes: u64(72),
    features: u64(80),
    createdAtMs: u64(88),
    applyChecksum: v.getBigUint64(96, true),
    durabilityCode: u64(104),
  };
  const walTailStored = u64(112);
  if (walTailStored > 0) fields.walTailLsn = walTailStored - 1;
  const startsStored = u64(EPOCH_STARTS_COUNT_OFFSET);
  if (startsStored > 0) {
    if (startsStored - 1 > EPOCH_STARTS_MAX) return { error: `${startsStored - 1} epoch starts, more than ${EPOCH_STARTS_MAX}` };
    const starts = Array.from({ length: startsStored - 1 }, (_, i) => ({ epoch: u64(EPOCH_STARTS_OFFSET + 16 * i), lsn: u64(EPOCH_STARTS_OFFSET + 16 * i + 8) }));
    const bad = checkEpochStarts(starts);
    if (bad !== undefined) return { error: bad };
    fields.epochStarts = starts;
  }
  return { fields, seq: u64(16) };
}

// Picks the valid slot with the higher sequence from both slots' bytes, or
// throws ERR_SUPERBLOCK_CORRUPT when neither is valid. Pure.
export function chooseSlot(
  bytes: Uint8Array,
  path: string,
): { fields: SuperblockFields; seq: number; fallbackReason: string | undefined } {
  const a = bytes.byteLength >= SLOT_BYTES ? decodeSlot(bytes.subarray(0, SLOT_BYTES)) : { error: 'missing' };
  const b = bytes.byteLength >= SLOT_BYTES * 2 ? decodeSlot(bytes.subarray(SLOT_BYTES, SLOT_BYTES * 2)) : { error: 'missing' };
  if ('error' in a && 'error' in b) {
    throw new BlockwalError(
      'ERR_SUPERBLOCK_CORRUPT',
      `${path}: both superblock slots are invalid (slot 0: ${a.error}; slot 1: ${b.error}); the volume cannot be opened`,
    );
  }
  if ('error' in a) return { ...(b as { fields: SuperblockFields; seq: number }), fallbackReason: `slot 0: ${a.error}` };
  if ('error' in b) return { ...a, fallbackReason: `slot 1: ${b.error}` };
  return { ...(a.seq >= b.seq ? a : b), fallbackReason: undefined };
}

// Reads the current fields without the ring (at open, before the arena is laid out).
export function peekSuperblock(path: string): SuperblockFields {
  const fd = fs.openSync(path, 'r');
  try {
    const buf = Buffer.alloc(SLOT_BYTES * 2);
    const n = fs.readSync(fd, buf, 0, buf.byteLength, 0);
    return chooseSlot(buf.subarray(0, n), path).fields;
  } finally {
    fs.closeSync(fd);
  }
}

export class Superblock {
  private current: SuperblockFields;
  private seq: number;
  private pending: Promise<void> = Promise.resolve();
  private failed: Error | undefined;

  private constructor(
    private readonly ring: Ring,
    private readonly fileId: number,
    private readonly slice: ArenaSlice,
    fields: SuperblockFields,
    seq: number,
  ) {
    this.current = fields;
    this.seq = seq;
  }

  get fields(): Readonly<SuperblockFields> {
    return this.current;
  }

  // Writes both slots of a new file (which must not exist) and syncs it.
  static async create(ring: Ring, path: string, fields: SuperblockFields): Promise<Superblock> {
    const fileId = ring.openFile(path, { write: true, create: true, exclusive: true, direct: true });
    const slice = ring.alloc(SLOT_BYTES * 2);
    try {
      // Sequence s lives in slot s % 2: an update always replaces the older one.
      encodeSlot(fields, 2, slice.bytes.subarray(0, SLOT_BYTES));
      encodeSlot(fields, 1, slice.bytes.subarray(SLOT_BYTES));
      await ring.write(fileId, slice, 0, SLOT_BYTES * 2, { dsync: true });
      await ring.fsync(fileId);
    } catch (err) {
      ring.closeFile(fileId);
      ring.free(slice);
      throw err;
    }
    return new Superblock(ring, fileId, slice, { ...fields }, 2);
  }

  static async open(ring: Ring, path: string): Promise<SuperblockOpen> {
    const fileId = ring.openFile(path, { write: true, direct: true });
    const slice = ring.alloc(SLOT_BYTES * 2);
    try {
      const n = await ring.read(fileId, slice, 0, SLOT_BYTES * 2);
      const best = chooseSlot(slice.bytes.subarray(0, n), path);
      return { superblock: new Superblock(ring, fileId, slice, best.fields, best.seq), fallbackReason: best.fallbackReason };
    } catch (err) {
      ring.closeFile(fileId);
      ring.free(slice);
      throw err;
    }
  }

  // Durably replaces fields (one update at a time, in call order). A failed
  // write is final: later updates are refused.
  update(patch: Partial<SuperblockFields>): Promise<void> {
    const run = async (): Promise<void> => {
      if (this.failed !== undefined) throw this.failed;
      const next = { ...this.current, ...patch };
      const seq = this.seq + 1;
      const slot = seq % 2; // holds seq - 2: the older of the two
      encodeSlot(next, seq, this.slice.bytes.subarray(slot * SLOT_BYTES, (slot + 1) * SLOT_BYTES));
      const slotSlice = { ...this.slice, offsetBytes: this.slice.offsetBytes + slot * SLOT_BYTES, lengthBytes: SLOT_BYTES };
      try {
        await this.ring.write(this.fileId, slotSlice, slot * SLOT_BYTES, SLOT_BYTES, { dsync: true });
      } catch (err) {
        this.failed = err as Error;
        throw err;
      }
      this.current = next;
      this.seq = seq;
    };
    const p = this.pending.then(run, run);
    this.pending = p.catch(() => undefined);
    return p;
  }

  close(): void {
    this.ring.closeFile(this.fileId);
    this.ring.free(this.slice);
  }
}
