// Volume: block semantics over the WAL.
//
// A volume is a directory: `superblock` (two checksummed slots), `base.img`
// (the sparse block image), `wal/` (segments) and `lock` (flock'ed while
// open). Writes become WAL records; the dirty map says where each block's
// newest version lives until the flusher has applied it to base.img and the
// checkpoint in the superblock has passed it. Reads see every resolved write:
// dirty map (group buffers or WAL) first, then base.img.
//
// Rules:
//  - write resolves once its records are in the WAL; with fua once durable;
//    flush resolves once everything resolved before it is durable.
//  - sub-block writes are read-modify-write, ordered by RangeLocks.
//  - open scans the WAL from the retention floor (wal_retention.ts: the
//    records kept below the checkpoint for catch-up are indexed again) and
//    replays what lies above the checkpoint into the dirty map; a torn tail
//    ends the log, mid-log corruption above the checkpoint refuses to open
//    with the location.
//  - any WAL or flusher I/O failure stops writes with the reason; reads go on.
import { randomUUID } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import * as fs from 'node:fs';
import * as path from 'node:path';

import pino, { type Logger } from 'pino';

import { BaseImage, BLOCK_BYTES } from '../native/base_image';
import { BlockwalError } from '../native/errors';
import { FileLock } from '../native/lock';
import { Ring } from '../native/ring';
import type { DenseBitmap } from '../native/bitmap';
import { Wal } from '../native/wal';
import { recordKindCode, recordKindOf, type ScanResult, splitControlPayloads } from '../native/wal_format';
import { type AllocationExtent, BaseAllocation, blockStatus } from './allocation';
import { type ApplyChecksum, applyChecksumToHex, extendApplyChecksum } from '../replication/apply_checksum';
import type { EpochStart } from '../statemachine/epoch_history';
import { type Applied, check as checkControl, type ControlEntry, decodeControl, durabilityCode, durabilityOfCode, type ReplicatedState } from '../statemachine/control';
import { DirtyMap } from './dirty_map';
import { createRebuildBitmap, openRebuildBitmap, type RebuildSaved, readRebuildSaved, removeRebuildFiles, writeRebuildSaved } from './rebuild_files';
import { Flusher } from './flusher';
import { BlockCache } from './block_cache';
import { RangeLocks } from './range_locks';
import { peekSuperblock, Superblock, type SuperblockFields } from './superblock';
import { type PendingRecord, type ShippedRecord, VolumeIo, type VolumeRole } from './volume_io';
import { openWalRetained } from './wal_retention';

export type { ShippedRecord, VolumeRole };

export const FILES = { superblock: 'superblock', base: 'base.img', wal: 'wal', lock: 'lock' } as const;

const WAL_SEGMENT_BYTES_DEFAULT = 64 << 20;
const WAL_SEGMENTS_MAX_DEFAULT = 64;
const RING_DEPTH = 256;
const ARENA_BYTES_DEFAULT = 64 << 20;
// Replayed records a primary hands its replication backlog at open, at most.
const REPLAYED_TAIL_BYTES_MAX = 256 << 20;
// Recent WAL frames kept in memory (walCacheBytes), at most, by default.
const WAL_CACHE_BYTES_DEFAULT = 256 << 20;
// base.img blocks kept in memory (blockCacheBytes), by default.
export const BLOCK_CACHE_BYTES_DEFAULT = 256 << 20;
// The largest read or write one call takes (NBD's maximum block size).
export const REQUEST_BYTES_MAX = 32 << 20;
// The largest volume a resize may make (the WAL format's block addresses allow more).
export const SIZE_BYTES_MAX = 2 ** 50;

export interface VolumeOptions {
  // pino logger for recovery figures, fallbacks, checkpoints and failures (default: silent).
  logger?: Logger;
  arenaBytes?: number;
  // Recently written WAL frames kept in memory, so a checkpoint (and a
  // catch-up of recent records) writes base.img without reading the WAL back
  // from the disk. Default: 256 MiB or the whole WAL if smaller; 0: only the
  // WAL's group buffers serve those reads.
  walCacheBytes?: number;
  // base.img blocks kept in memory (block_cache.ts), so reads of checkpointed
  // data read before skip the disk: reads fill it, writes refresh what it
  // holds (default 256 MiB, filled as reads need; 0: no cache).
  blockCacheBytes?: number;
  // Dirty bytes that start a checkpoint in the background (default: half the
  // WAL cache, at most a quarter of the WAL).
  flushTriggerBytes?: number;
  // A checkpoint runs after this long without writes (default 1000 ms; 0: never by time).
  flushIdleMs?: number;
  // Called once if an I/O failure (fsync error, EIO) stops writes, with the reason.
  onFailure?: (failure: BlockwalError) => void;
  // Runs the volume on the caller's ring (tests recording I/O, several volumes
  // sharing one ring). The caller keeps it: close() waits for the volume's
  // operations on it but leaves it open.
  ring?: Ring;
  // 'replica': client writes are refused; records arrive from the primary
  // (appendReceived) and are applied once committed (commit). Default 'primary'.
  role?: VolumeRole;
  // Primary: each record, encoded, in LSN order, as it gets its LSN (for shipping).
  onRecord?: (record: ShippedRecord) => void;
  // Each control record as it is applied (replay at open included), with the outcome.
  onControl?: (entry: ControlEntry, applied: Applied) => void;
}

export interface VolumeCreateOptions extends VolumeOptions {
  sizeBytes: number;
  walSegmentBytes?: number;
  walSegmentsMax?: number;
  walRetentionBytes?: number;
}

export interface VolumeStatus {
  dir: string;
  uuid: string;
  sizeBytes: number;
  epoch: number;
  lsnHead: number;
  lsnTail: number; // lowest LSN the WAL still holds (0: none)
  lsnWritten: number;
  lsnDurable: number;
  // Replication: role, the last record received (replica) and applied, and
  // the chained apply checksum at lsnApplied (16 hex digits).
  role: VolumeRole;
  lsnReceived: number;
  lsnApplied: number;
  applyChecksum: string;
  // What control records set: the opened epoch, features, durability mode.
  epochOpened: number;
  // The epochs opened up to lsnApplied, each at its barrier's LSN (null: not
  // recorded, a volume made before the superblock held them).
  epochStarts: readonly EpochStart[] | null;
  features: number;
  durability: string | undefined;
  checkpointLsn: number;
  dirtyBlocks: number;
  dirtyBytes: number;
  zeroRanges: number;
  walSegments: number;
  walSegmentsMax: number;
  walSegmentBytes: number;
  walRetentionBytes: number;
  // WAL reads (checkpoints, catch-up) since the WAL was opened: bytes served
  // from memory (group buffers and the WAL cache) and read from the disk.
  walCacheBytes: number;
  walReadMemoryBytes: number;
  walReadDiskBytes: number;
  // WAL group writes submitted since open, those written with RWF_DSYNC
  // (durable when written), and fdatasyncs of WAL segments.
  walGroupWrites: number;
  walDsyncGroupWrites: number;
  walSyncs: number;
  // The block cache: its size, what it holds, and the blocks of reads it
  // answered (hits) and that went to base.img (misses) since the volume opened.
  blockCacheBytes: number;
  blockCacheUsedBytes: number;
  blockCacheHits: number;
  blockCacheMisses: number;
  checkpoints: number;
  failure: string | undefined;
  // Set when open fell back to the older superblock slot, with the reason.
  superblockFallback: string | undefined;
}

export class Volume {
  private closed = false;
  private walGroupHoldUs = 0;
  // The unfinished rebuild (replica), from rebuild.json.
  private rebuild: RebuildSaved | undefined;

  private constructor(
    readonly dir: string,
    private readonly io: VolumeIo,
    private readonly flusher: Flusher,
    private readonly lock: FileLock,
    private readonly allocation: BaseAllocation,
    private readonly walSegmentsMax: number,
    private readonly walCacheBytes: number,
  ) {}

  // Makes a new volume in dir (which must be missing or empty) and opens it.
  static async create(dir: string, options: VolumeCreateOptions): Promise<Volume> {
    const { sizeBytes } = options;
    if (!Number.isSafeInteger(sizeBytes) || sizeBytes <= 0 || sizeBytes % BLOCK_BYTES !== 0) {
      throw new RangeError('sizeBytes must be a positive multiple of 4096');
    }
    const walSegmentBytes = options.walSegmentBytes ?? WAL_SEGMENT_BYTES_DEFAULT;
    if (!Number.isSafeInteger(walSegmentBytes) || walSegmentBytes < 1 << 20 || walSegmentBytes % BLOCK_BYTES !== 0) {
      throw new RangeError('walSegmentBytes must be a multiple of 4096, at least 1 MiB');
    }
    fs.mkdirSync(dir, { recursive: true });
    const present = fs.readdirSync(dir).filter((n) => n !== FILES.lock);
    if (present.length > 0) {
      throw new BlockwalError('ERR_EXISTS', `${dir} is not empty (${present.slice(0, 3).join(', ')}): refusing to create a volume there`);
    }
    const lock = FileLock.acquire(path.join(dir, FILES.lock));
    const ring = Ring.open({ depth: RING_DEPTH, arenaBytes: options.arenaBytes ?? ARENA_BYTES_DEFAULT });
    try {
      fs.mkdirSync(path.join(dir, FILES.wal));
      const base = await BaseImage.create(ring, path.join(dir, FILES.base), sizeBytes);
      base.close();
      const fields: SuperblockFields = {
        uuid: randomUUID().replace(/-/g, ''),
        sizeBytes,
        blockBytes: BLOCK_BYTES,
        epoch: 1,
        checkpointLsn: 0,
        walSegmentBytes,
        walRetentionBytes: options.walRetentionBytes ?? 0,
        features: 0,
        createdAtMs: Date.now(),
        applyChecksum: 0n,
        durabilityCode: 0,
        epochStarts: [],
      };
      const sb = await Superblock.create(ring, path.join(dir, FILES.superblock), fields);
      sb.close();
      fsyncDir(dir);
    } finally {
      await ring.close();
    }
    return Volume.openLocked(dir, lock, options);
  }

  static async open(dir: string, options: VolumeOptions & { walSegmentsMax?: number } = {}): Promise<Volume> {
    if (!fs.existsSync(dir)) {
      throw new BlockwalError('ERR_NOT_A_VOLUME', `${dir} does not exist; create a volume there with \`blockwal create\``);
    }
    if (!fs.existsSync(path.join(dir, FILES.superblock))) {
      throw new BlockwalError('ERR_NOT_A_VOLUME', `${dir} holds no volume (no ${FILES.superblock}); create one with \`blockwal create\``);
    }
    const lock = FileLock.acquire(path.join(dir, FILES.lock));
    return Volume.openLocked(dir, lock, options);
  }

  private static async openLocked(dir: string, lock: FileLock, options: VolumeOptions & { walSegmentsMax?: number }): Promise<Volume> {
    const log = (options.logger ?? pino({ level: 'silent' })).child({ volume: dir });
    const startedMs = performance.now();
    const ownsRing = options.ring === undefined;
    const ring = options.ring ?? Ring.open({ depth: RING_DEPTH, arenaBytes: options.arenaBytes ?? ARENA_BYTES_DEFAULT });
    let sb: Superblock | undefined;
    let wal: Wal | undefined;
    let base: BaseImage | undefined;
    try {
      // The WAL reserves its arena space before anything else allocates.
      const f = peekSuperblock(path.join(dir, FILES.superblock));
      const walSegmentsMax = options.walSegmentsMax ?? WAL_SEGMENTS_MAX_DEFAULT;
      const walBytes = walSegmentsMax * f.walSegmentBytes;
      const walCacheBytes = walCacheBytesFor(options.walCacheBytes, walBytes);
      const walOpen = await openWalRetained(ring, {
        dir: path.join(dir, FILES.wal),
        segmentBytes: f.walSegmentBytes,
        segmentsMax: walSegmentsMax,
        cacheBytes: walCacheBytes,
      }, f, log);
      wal = walOpen.wal;
      const opened = await Superblock.open(ring, path.join(dir, FILES.superblock));
      sb = opened.superblock;
      base = BaseImage.open(ring, path.join(dir, FILES.base));
      // base.img may be larger: a resize grows it before the checkpoint records the size.
      if (base.sizeBlocks * BLOCK_BYTES < f.sizeBytes) {
        throw new BlockwalError('ERR_CORRUPT', `${FILES.base} holds ${base.sizeBlocks * BLOCK_BYTES} bytes, the superblock says ${f.sizeBytes}`);
      }
      const dirty = new DirtyMap();
      const role = options.role ?? 'primary';
      const io = new VolumeIo(ring, ownsRing, wal, base, sb, dirty, new RangeLocks(), opened.fallbackReason, log, role);
      const cache = new BlockCache(options.blockCacheBytes ?? BLOCK_CACHE_BYTES_DEFAULT);
      if (cache.capacityBlocks > 0) {
        base.watcher = cache;
        io.cache = cache;
      }
      io.onControl = options.onControl;
      const recordsReplayed = replay(walOpen.scan, f.checkpointLsn, io);
      io.onFailure = options.onFailure;
      io.onRecord = options.onRecord;
      if (opened.fallbackReason !== undefined) {
        log.warn({ reason: opened.fallbackReason }, 'superblock: one slot is invalid; opened from the other');
      }
      log.info(
        {
          role,
          checkpointLsn: f.checkpointLsn,
          recordsReplayed,
          recordsRetained: walOpen.scan.records.count - recordsReplayed,
          walBytesScanned: walOpen.scan.bytesScanned,
          tornTailBytes: walOpen.scan.tornTailBytes,
          lsnNext: walOpen.scan.lsnNext,
          dirtyBlocks: dirty.dirtyBlocks,
          lsnApplied: io.lsnApplied,
          ms: Math.round(performance.now() - startedMs),
        },
        'volume opened',
      );
      const flusher = new Flusher(io, {
        triggerBytes: options.flushTriggerBytes ?? defaultTriggerBytes(walBytes, walCacheBytes),
        idleMs: options.flushIdleMs ?? 1000,
        // Never more than half the WAL: writers would wait forever for space.
        retentionBytes: Math.min(f.walRetentionBytes, Math.floor(walBytes / 2)),
        pinBudgetBytes: f.walRetentionBytes > 0 ? Math.min(f.walRetentionBytes, Math.floor(walBytes / 2)) : Math.floor(walBytes / 2),
      });
      // Replayed records count as dirty: a full WAL (stopped while full) frees
      // its segments only through a checkpoint.
      flusher.noteWrite();
      if (wal.status().segmentCount >= walSegmentsMax) flusher.kick();
      const volume = new Volume(dir, io, flusher, lock, new BaseAllocation(path.join(dir, FILES.base)), walSegmentsMax, walCacheBytes);
      volume.rebuild = readRebuildSaved(dir);
      if (volume.rebuild !== undefined) log.warn({ rebuild: volume.rebuild }, 'an unfinished rebuild: the base image is partial until the primary completes it');
      return volume;
    } catch (err) {
      if (wal !== undefined) await wal.close().catch(() => undefined);
      base?.close();
      sb?.close();
      if (ownsRing) await ring.close().catch(() => undefined);
      else await ring.settle().catch(() => undefined);
      lock.release();
      throw err;
    }
  }

  // The size as control records have made it (a resize grows it online).
  get sizeBytes(): number {
    return this.io.state.sizeBytes;
  }

  // The replicated state control records keep: opened epoch, features, size, durability mode.
  get replicatedState(): ReplicatedState {
    return this.io.state;
  }

  // The epochs opened up to lsnApplied, each with its barrier's LSN
  // (statemachine/epoch_history.ts; undefined: not recorded).
  get epochStarts(): readonly EpochStart[] | undefined {
    return this.io.epochStarts;
  }

  // Primary: appends a control record (an epoch barrier, a feature, an online
  // grow, a durability mode), applied on this node when it gets its LSN and on
  // replicas when committed. Refused (ERR_CONTROL_REFUSED) when it does not
  // fit the state. Resolves with its LSN once in the WAL.
  async appendControl(entry: ControlEntry): Promise<number> {
    this.checkOpen();
    const why = checkControl(this.io.state, entry, { sizeBytesMax: SIZE_BYTES_MAX });
    if (why !== undefined) throw new BlockwalError('ERR_CONTROL_REFUSED', `${entry.type}: ${why}`);
    const lsn = await this.io.appendControl(entry);
    this.flusher.noteWrite();
    return lsn;
  }

  // The volume's io_uring (fault injection and traces in tests; diagnostics).
  get ring(): Ring {
    return this.io.ring;
  }

  read(offsetBytes: number, lengthBytes: number): Promise<Buffer> {
    this.checkOpen();
    const rebuilding = this.rebuildingError();
    if (rebuilding !== undefined) return Promise.reject(rebuilding);
    checkRange(offsetBytes, lengthBytes, this.sizeBytes, REQUEST_BYTES_MAX);
    return this.io.read(offsetBytes, lengthBytes);
  }

  // Reads are refused while a rebuild has the base image half copied.
  private rebuildingError(): BlockwalError | undefined {
    if (this.rebuild === undefined) return undefined;
    return new BlockwalError('ERR_REBUILDING', `the volume is being rebuilt from its primary (session ${this.rebuild.sessionId}): its data is not whole yet`);
  }

  // read() into the caller's memory: `into.byteLength` bytes at offsetBytes.
  // Resolves with `into` (as a Buffer view of it) once every byte is there;
  // after a rejection some bytes may still be written, so reuse `into` only
  // after a success.
  readInto(offsetBytes: number, into: Uint8Array): Promise<Buffer> {
    try {
      this.checkOpen();
      if (!(into instanceof Uint8Array)) throw new TypeError('into must be a Uint8Array');
      const rebuilding = this.rebuildingError();
      if (rebuilding !== undefined) throw rebuilding;
      checkRange(offsetBytes, into.byteLength, this.sizeBytes, REQUEST_BYTES_MAX);
    } catch (err) {
      return Promise.reject(err);
    }
    const out = Buffer.isBuffer(into) ? into : Buffer.from(into.buffer, into.byteOffset, into.byteLength);
    return this.io.read(offsetBytes, out.byteLength, out);
  }

  // write, trim and writeZeroes resolve with the LSN of their last record
  // (what replication waits on).
  write(offsetBytes: number, data: Uint8Array, options: { fua?: boolean } = {}): Promise<number> {
    try {
      this.checkOpen();
      if (!(data instanceof Uint8Array)) throw new TypeError('data must be a Uint8Array');
      checkRange(offsetBytes, data.byteLength, this.sizeBytes, REQUEST_BYTES_MAX);
    } catch (err) {
      return Promise.reject(err);
    }
    const written = this.io.write(offsetBytes, data, options.fua === true);
    // The records are in the dirty map already (they got their LSNs).
    this.flusher.noteWrite();
    return written;
  }

  async trim(offsetBytes: number, lengthBytes: number): Promise<number> {
    this.checkOpen();
    checkRange(offsetBytes, lengthBytes, this.sizeBytes, Number.MAX_SAFE_INTEGER);
    const lsn = await this.io.zero(offsetBytes, lengthBytes, 'trim');
    this.flusher.noteWrite();
    return lsn;
  }

  async writeZeroes(offsetBytes: number, lengthBytes: number, options: { fua?: boolean } = {}): Promise<number> {
    this.checkOpen();
    checkRange(offsetBytes, lengthBytes, this.sizeBytes, Number.MAX_SAFE_INTEGER);
    const lsn = await this.io.zero(offsetBytes, lengthBytes, 'zero');
    if (options.fua === true) await this.io.flush();
    this.flusher.noteWrite();
    return lsn;
  }

  // ---- replication ----

  get role(): VolumeRole {
    return this.io.role;
  }

  get epoch(): number {
    return this.io.sb.fields.epoch;
  }

  get uuid(): string {
    return this.io.sb.fields.uuid;
  }

  // The last LSN assigned locally (primary) or received (replica).
  get lsnHead(): number {
    return this.io.wal.lsnHead;
  }

  get lsnDurable(): number {
    return this.io.wal.lsnDurable;
  }

  get lsnApplied(): number {
    return this.io.lsnApplied;
  }

  get lsnReceived(): number {
    return this.io.lsnReceived;
  }

  // The chained apply checksum at lsnApplied.
  get applyChecksum(): bigint {
    return this.io.applyChecksum;
  }

  // True while the volume has never held a record (a fresh replica may take
  // its identity from the first primary that feeds it).
  get pristine(): boolean {
    return this.io.wal.lsnHead === 0 && this.io.sb.fields.checkpointLsn === 0;
  }

  // Persists a new epoch (it must not go down) before anything acts in it.
  async setEpoch(epoch: number): Promise<void> {
    this.checkOpen();
    if (!Number.isSafeInteger(epoch) || epoch < this.epoch) {
      throw new RangeError(`epoch ${epoch} must be an integer not below the current epoch ${this.epoch}`);
    }
    if (epoch === this.epoch) return;
    await this.io.sb.update({ epoch });
    this.io.log.info({ epoch }, 'epoch persisted');
  }

  // A pristine replica takes the volume identity of its first primary.
  async adoptIdentity(uuid: string): Promise<void> {
    this.checkOpen();
    if (!/^[0-9a-f]{32}$/.test(uuid)) throw new RangeError(`uuid must be 32 lower-case hex digits, got ${JSON.stringify(uuid)}`);
    if (uuid === this.uuid) return;
    if (!this.pristine) {
      throw new BlockwalError('ERR_WRONG_VOLUME', `volume ${this.uuid} holds data: it cannot become volume ${uuid}`);
    }
    await this.io.sb.update({ uuid });
    this.io.log.info({ uuid }, 'took the volume identity of the primary');
  }

  // Replica: appends a record the primary shipped (verified; it must carry
  // the next LSN); resolves with its LSN once written to the local WAL.
  async appendReceived(bytes: Uint8Array): Promise<number> {
    this.checkOpen();
    return this.io.appendReceived(bytes);
  }

  // Replica: appends the records of one frame in order (each as
  // appendReceived checks it); resolves with the last LSN once all are
  // written, undefined for none. Throws on the first that does not verify.
  appendReceivedAll(records: readonly { bytes: Uint8Array }[]): Promise<number> | undefined {
    this.checkOpen();
    return this.io.appendReceivedAll(records);
  }

  // Primary: the newest records replayed at open, encoded, each with the
  // chain after it (for a replication backlog that survives a restart).
  // Reads them back from the WAL; a record gone meanwhile (checkpointed and
  // recycled) drops it and every older one. Handed out once.
  async replayedRecords(): Promise<{ lsn: number; bytes: Buffer; checksum: bigint; applyChecksum: bigint }[]> {
    this.checkOpen();
    const out: { lsn: number; bytes: Buffer; checksum: bigint; applyChecksum: bigint }[] = [];
    for (const { record, applyChecksum } of this.io.takeReplayedTail()) {
      const bytes = await this.io.readRecordAt(record);
      if (bytes === undefined) {
        out.length = 0;
        continue;
      }
      out.push({ lsn: record.lsn, bytes, checksum: record.checksum, applyChecksum });
    }
    return out;
  }

  // ---- the retained WAL (catch-up of a replica that fell behind) ----

  // Every record after this LSN is still in the WAL.
  get walTail(): number {
    this.checkOpen();
    return this.io.walTail;
  }

  // WAL bytes of the records after lsn (what a catch-up from there moves).
  walBytesAfter(lsn: number): number {
    return this.io.walIndex.bytesAfter(lsn);
  }

  // Records from lsnFrom on, encoded, read back from the WAL (about bytesMax
  // at most, at least one); ERR_WAL_GONE when lsnFrom is no longer held.
  readWalRecords(lsnFrom: number, bytesMax: number): Promise<{ lsn: number; bytes: Buffer }[]> {
    this.checkOpen();
    return this.io.readWalRecords(lsnFrom, bytesMax);
  }

  // The lowest LSN some reader still needs from the WAL: checkpoints do not
  // release the WAL past it while what it holds fits in the retention budget.
  setWalPin(pin: (() => number) | undefined): void {
    this.flusher.setWalPin(pin);
  }

  // How long (µs) the WAL keeps its open group open for more records when
  // nothing waits for them to be written or durable (wal.ts setGroupHold): a
  // replica's acknowledgements do not wait for its WAL writes, so it makes
  // fewer, larger ones. 0 (the default) writes each group as soon as the
  // pipeline is idle. Kept across a WAL replaced by a rebuild or a truncation.
  setWalGroupHold(us: number): void {
    if (this.closed) return;
    this.io.wal.setGroupHold(us);
    this.walGroupHoldUs = us;
  }

  // Where the encoded records handed to onRecord go: room for spanBytes,
  // asked for synchronously before each record gets its LSN (a primary's
  // backlog reuses its slabs); undefined for the WAL's own.
  setRecordSpace(take: ((spanBytes: number) => Buffer) | undefined): void {
    this.io.recordSpace = take;
  }

  // The most WAL a pin may hold (the retention budget).
  get walPinBudgetBytes(): number {
    return this.flusher.pinBudgetBytes;
  }

  get lsnCheckpoint(): number {
    return this.io.sb.fields.checkpointLsn;
  }

  // ---- rebuild (primary): the base lane's source ----

  // The checkpoint the base lane copies from: its LSN, the chain there and
  // what control records had made of the volume there (one consistent read).
  checkpointState(): { lsnCheckpoint: number; applyChecksum: bigint; state: ReplicatedState; epochStarts: readonly EpochStart[] | undefined } {
    this.checkOpen();
    const f = this.io.sb.fields;
    return {
      lsnCheckpoint: f.checkpointLsn,
      applyChecksum: f.applyChecksum,
      state: { epoch: f.epoch, features: f.features, sizeBytes: f.sizeBytes, durability: durabilityOfCode(f.durabilityCode) },
      epochStarts: f.epochStarts,
    };
  }

  // Blocks [startBlock, startBlock + lengthBlocks) of base.img as they are on
  // disk now (holding everything up to the checkpoint, maybe newer).
  async readBaseBlocks(startBlock: number, lengthBlocks: number): Promise<Buffer> {
    this.checkOpen();
    const io = this.io;
    const bytes = lengthBlocks * BLOCK_BYTES;
    const slice = io.ring.allocNow(bytes) ?? (await io.ring.allocWait(bytes));
    try {
      await io.base.readBlocks(startBlock, lengthBlocks, slice);
      return Buffer.from(slice.bytes.subarray(0, bytes));
    } finally {
      io.ring.free(slice);
    }
  }

  // ---- rebuild (replica): see rebuild_files.ts ----

  // The unfinished rebuild (rebuild.json), if any: while set, the base image
  // is partial and reads are refused.
  get rebuildSaved(): RebuildSaved | undefined {
    return this.rebuild;
  }

  // Starts a rebuild at the primary's checkpoint lsnBase: records what is
  // being done first, then drops everything local (WAL, dirty map) and sets
  // the volume to lsnBase with the primary's chain and state there. Returns
  // the session's fresh bitmap; the caller marks it from onApply.
  async beginRebuild(saved: RebuildSaved, base: { applyChecksum: bigint; state: ReplicatedState; epochStarts?: readonly EpochStart[] }): Promise<DenseBitmap> {
    this.checkOpen();
    const io = this.io;
    if (io.role !== 'replica') throw new BlockwalError('ERR_NOT_REPLICA', 'only a replica is rebuilt');
    await io.wal.waitWritten(io.lsnReceived).catch(() => undefined);
    return this.flusher.exclusive(async () => {
      await writeRebuildSaved(this.dir, saved);
      this.rebuild = saved;
      const walDir = path.join(this.dir, FILES.wal);
      await io.wal.close();
      for (const name of fs.readdirSync(walDir).sort().reverse()) fs.rmSync(path.join(walDir, name), { force: true });
      fsyncDir(walDir);
      const reopened = await Wal.open(io.ring, { dir: walDir, segmentBytes: io.sb.fields.walSegmentBytes, segmentsMax: this.walSegmentsMax, cacheBytes: this.walCacheBytes, lsnFrom: saved.lsnBase + 1 });
      reopened.wal.setGroupHold(this.walGroupHoldUs);
      const sizeBlocks = base.state.sizeBytes / BLOCK_BYTES;
      if (io.base.sizeBlocks < sizeBlocks) io.base.grow(sizeBlocks);
      io.resetForRebuild(reopened.wal, saved.lsnBase, base.applyChecksum, base.state, base.epochStarts);
      this.flusher.walReplaced(saved.lsnBase);
      await io.sb.update({
        epoch: Math.max(io.sb.fields.epoch, saved.epoch),
        checkpointLsn: saved.lsnBase,
        walTailLsn: saved.lsnBase,
        applyChecksum: base.applyChecksum,
        sizeBytes: base.state.sizeBytes,
        features: base.state.features,
        durabilityCode: durabilityCode(base.state.durability),
        epochStarts: base.epochStarts,
      });
      io.log.warn({ sessionId: saved.sessionId, lsnBase: saved.lsnBase, lsnTarget: saved.lsnTarget }, 'rebuild started: local data dropped; the base image is partial until it completes');
      return createRebuildBitmap(this.dir, Math.max(1, sizeBlocks));
    });
  }

  // The base lane: for each chunk, writes the runs its plan() picks (data
  // starts at chunkStartBlock; undefined: the chunk is all zeros and the
  // runs become holes). The plans run and the writes go out under
  // Flusher.baseWrite: no checkpoint takes its snapshot between a plan and
  // the end of the writes, so a record applied to a block after its plan
  // reaches base.img after the base data (planning first and writing later
  // would let a checkpoint write the newer record before the older base
  // data overwrote it).
  async writeBaseRuns(
    chunks: readonly { plan: () => readonly { startBlock: number; lengthBlocks: number }[]; chunkStartBlock: number; data: Uint8Array | undefined }[],
  ): Promise<void> {
    this.checkOpen();
    const io = this.io;
    await this.flusher.baseWrite(
      () => chunks.map((chunk) => ({ chunk, runs: chunk.plan() })),
      async (planned) => {
        const writes: Promise<void>[] = [];
        for (const { chunk, runs } of planned) for (const run of runs) writes.push(this.writeBaseRun(run, chunk.chunkStartBlock, chunk.data));
        const settled = await Promise.allSettled(writes);
        const failed = settled.find((r) => r.status === 'rejected');
        if (failed !== undefined) throw io.fail((failed as PromiseRejectedResult).reason);
      },
    );
  }

  // The primitive under writeBaseRuns (Flusher.baseWrite): plan() and then
  // write(), with no checkpoint taking its snapshot in between or until
  // write() is done.
  baseWrite<T>(plan: () => T, write: (planned: T) => Promise<void>): Promise<T> {
    this.checkOpen();
    return this.flusher.baseWrite(plan, write);
  }

  private async writeBaseRun(run: { startBlock: number; lengthBlocks: number }, chunkStartBlock: number, data: Uint8Array | undefined): Promise<void> {
    const io = this.io;
    if (data === undefined) {
      await io.base.punchHole(run.startBlock, run.lengthBlocks);
      return;
    }
    const bytes = run.lengthBlocks * BLOCK_BYTES;
    const slice = io.ring.allocNow(bytes) ?? (await io.ring.allocWait(bytes));
    try {
      const from = (run.startBlock - chunkStartBlock) * BLOCK_BYTES;
      slice.bytes.set(data.subarray(from, from + bytes));
      await io.base.writeBlocks(run.startBlock, run.lengthBlocks, slice);
    } finally {
      io.ring.free(slice);
    }
  }

  // Makes the base lane's writes durable, then records progress (what
  // saved() returns once they are).
  async persistRebuild(saved: () => RebuildSaved): Promise<void> {
    this.checkOpen();
    await this.io.base.fdatasync();
    const record = saved();
    await writeRebuildSaved(this.dir, record);
    this.rebuild = record;
  }

  // The rebuild is complete: a checkpoint covers what was applied, then the
  // rebuild files go and reads are served again.
  async finishRebuild(): Promise<void> {
    this.checkOpen();
    await this.flusher.checkpoint();
    await this.io.base.fdatasync();
    await removeRebuildFiles(this.dir);
    this.rebuild = undefined;
    this.io.log.info('rebuild complete: the volume is whole');
  }

  // The unfinished session's bitmap (undefined: missing or not trustworthy).
  openRebuildBitmap(): DenseBitmap | undefined {
    return openRebuildBitmap(this.dir);
  }

  // Replica rebuilding: hooks for the session (see VolumeIo.onApply, beforeCheckpoint).
  setRebuildHooks(hooks: { onApply: ((record: PendingRecord) => void) | undefined; beforeCheckpoint: (() => void) | undefined }): void {
    this.io.onApply = hooks.onApply;
    this.io.beforeCheckpoint = hooks.beforeCheckpoint;
  }

  // Replica: the epoch of the newest received record not applied yet.
  get pendingEpoch(): number | undefined {
    return this.io.pendingEpoch;
  }

  // Replica: drops the received records beyond lsnApplied (an uncommitted
  // suffix its new primary does not have), so that the next record received
  // is lsnApplied + 1. Checkpoints first, so the WAL holds nothing the volume
  // still needs; then removes the segments, newest first (a crash meanwhile
  // leaves a prefix of the log), and starts a fresh WAL. Resolves with the
  // number of records dropped.
  async truncateUnapplied(): Promise<number> {
    this.checkOpen();
    if (this.io.role !== 'replica') throw new BlockwalError('ERR_NOT_REPLICA', 'only a replica drops unapplied records');
    const io = this.io;
    await io.wal.waitWritten(io.lsnReceived);
    await this.flusher.checkpoint();
    return this.flusher.exclusive(async () => {
      const dropped = io.lsnReceived - io.lsnApplied;
      if (dropped === 0) return 0;
      const walDir = path.join(this.dir, FILES.wal);
      const lsnFrom = io.sb.fields.checkpointLsn + 1;
      if (lsnFrom !== io.lsnApplied + 1) throw new BlockwalError('ERR_STATE', `checkpoint ${lsnFrom - 1} is not at applied LSN ${io.lsnApplied}`);
      // Nothing below the checkpoint is kept once the WAL goes (recorded first: it claims less).
      await io.sb.update({ walTailLsn: lsnFrom - 1 });
      this.flusher.walReplaced(lsnFrom - 1);
      await io.wal.close();
      for (const name of fs.readdirSync(walDir).sort().reverse()) fs.rmSync(path.join(walDir, name), { force: true });
      fsyncDir(walDir);
      const reopened = await Wal.open(io.ring, { dir: walDir, segmentBytes: io.sb.fields.walSegmentBytes, segmentsMax: this.walSegmentsMax, cacheBytes: this.walCacheBytes, lsnFrom });
      reopened.wal.setGroupHold(this.walGroupHoldUs);
      io.resetReceived(reopened.wal);
      io.log.warn({ dropped, lsnApplied: io.lsnApplied }, 'dropped received records beyond the applied LSN (an uncommitted suffix)');
      return dropped;
    });
  }

  // Replica: applies every received record up to lsnCommit (the primary's commit LSN).
  commit(lsnCommit: number): void {
    this.checkOpen();
    if (this.io.commit(lsnCommit) > 0) this.flusher.noteWrite();
  }

  // Which parts of [offset, offset + length) hold data and which read as
  // zeros: extents from offset on, in order; they may stop short of the end
  // when the range holds thousands of extents (ask again from there).
  blockStatus(offsetBytes: number, lengthBytes: number): AllocationExtent[] {
    this.checkOpen();
    checkRange(offsetBytes, lengthBytes, this.sizeBytes, Number.MAX_SAFE_INTEGER);
    return blockStatus(this.io.dirty, this.allocation, offsetBytes, lengthBytes);
  }

  flush(): Promise<void> {
    this.checkOpen();
    return this.io.flush();
  }

  // Asks for the records up to lsn appended so far to become durable as they
  // are written (RWF_DSYNC), without waiting: a replica told that a flush
  // follows, before its WAL writes them.
  requestDurable(lsn: number): void {
    this.checkOpen();
    this.io.requestDurable(lsn);
  }

  // Applies everything written so far to base.img and advances the checkpoint.
  checkpoint(): Promise<void> {
    this.checkOpen();
    return this.flusher.checkpoint();
  }

  status(): VolumeStatus {
    const f = this.io.sb.fields;
    const w = this.io.wal.status();
    return {
      dir: this.dir,
      uuid: f.uuid,
      sizeBytes: this.io.state.sizeBytes,
      epoch: f.epoch,
      lsnHead: w.lsnHead,
      lsnTail: w.lsnTail,
      lsnWritten: w.lsnWritten,
      lsnDurable: w.lsnDurable,
      role: this.io.role,
      lsnReceived: this.io.role === 'replica' ? this.io.lsnReceived : w.lsnHead,
      lsnApplied: this.io.lsnApplied,
      applyChecksum: applyChecksumToHex(this.io.applyChecksum),
      epochOpened: this.io.state.epoch,
      epochStarts: this.io.epochStarts ?? null,
      features: this.io.state.features,
      durability: this.io.state.durability,
      checkpointLsn: f.checkpointLsn,
      dirtyBlocks: this.io.dirty.dirtyBlocks,
      dirtyBytes: this.io.dirty.dirtyBlocks * BLOCK_BYTES,
      zeroRanges: this.io.dirty.zeroRanges,
      walSegments: w.segmentCount,
      walSegmentsMax: this.walSegmentsMax,
      walSegmentBytes: f.walSegmentBytes,
      walRetentionBytes: f.walRetentionBytes,
      walCacheBytes: this.walCacheBytes,
      walReadMemoryBytes: w.readMemoryBytes,
      walReadDiskBytes: w.readDiskBytes,
      walGroupWrites: w.groupsSubmitted,
      walDsyncGroupWrites: w.dsyncGroupsSubmitted,
      walSyncs: w.syncsSubmitted,
      blockCacheBytes: (this.io.cache?.capacityBlocks ?? 0) * BLOCK_BYTES,
      blockCacheUsedBytes: (this.io.cache?.usedBlocks ?? 0) * BLOCK_BYTES,
      blockCacheHits: this.io.cache?.hits ?? 0,
      blockCacheMisses: this.io.cache?.misses ?? 0,
      checkpoints: this.flusher.checkpoints,
      failure: this.io.failure?.message,
      superblockFallback: this.io.superblockFallback,
    };
  }

  // Waits for operations in flight, makes the WAL durable, checkpoints and
  // releases everything. After a failure it closes without the checkpoint.
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.io.drain();
    if (this.io.failure === undefined) await this.flusher.checkpoint().catch(() => undefined);
    await this.flusher.stop();
    await this.io.close();
    this.allocation.close();
    this.lock.release();
  }

  private checkOpen(): void {
    if (this.closed) throw new BlockwalError('ERR_CLOSED', `volume ${this.dir} is closed`);
  }
}

// Indexes every record the scan found (the retained ones below the
// checkpoint included) and hands those after the checkpoint to the volume, in
// LSN order; the ones at or below it are in base.img and the apply chain
// already. Returns how many were handed over. A primary takes them in runs
// (VolumeIo.replaysInRuns): no object per record, the apply chain folded in
// one call per run; its replayed tail (the newest REPLAYED_TAIL_BYTES_MAX,
// for a replication backlog) is built only when asked for. A replica takes
// them one by one (they wait for its primary's commit). A control record
// that does not decode was written by a newer blockwal or damaged in a way
// its checksum missed: refuse to open, naming it.
function replay(scan: ScanResult, checkpointLsn: number, io: VolumeIo): number {
  let replayed = 0;
  const r = scan.records;
  const payloads = splitControlPayloads(scan);
  const controlCode = recordKindCode('control');
  const inRuns = io.replaysInRuns;
  const tailFrom = replayedTailStart(r);
  let chainAtTail = io.applyChecksum;
  const controls = new Map<number, ControlEntry>();
  let runFrom = -1; // the first record of the run being replayed
  const endRun = (end: number): void => {
    if (runFrom < 0) return;
    io.replayedRun(r.checksum.subarray(runFrom, end), r.lsn[end - 1]!);
    runFrom = -1;
  };
  const recordAt = (i: number, control: ControlEntry | undefined): PendingRecord => ({
    lsn: r.lsn[i]!,
    epoch: r.epoch[i]!,
    control,
    kind: recordKindOf(r.kind[i]!),
    lba: r.lba[i]!,
    lengthBlocks: r.lengthBlocks[i]!,
    segmentSeq: r.segmentSeq[i]!,
    offsetBytes: r.offsetBytes[i]!,
    spanBytes: recordSpanBytes(r.payloadBytes[i]!),
    checksum: r.checksum[i]!,
  });
  let nextControl = 0;
  for (let i = 0; i < r.count; i++) {
    const lsn = r.lsn[i]!;
    const code = r.kind[i]!;
    const payload = code === controlCode ? payloads[nextControl++]! : undefined;
    const spanBytes = recordSpanBytes(r.payloadBytes[i]!);
    if (io.walIndex.count > 0 && lsn !== io.walIndex.lsnLast + 1) io.walIndex.clear();
    io.walIndex.add(lsn, r.segmentSeq[i]!, r.offsetBytes[i]!, spanBytes);
    if (lsn <= checkpointLsn) continue;
    replayed++;
    if (i === tailFrom) {
      endRun(i);
      chainAtTail = io.applyChecksum;
    }
    let control: ControlEntry | undefined;
    if (payload !== undefined) {
      try {
        control = decodeControl(payload);
      } catch (err) {
        throw new BlockwalError('ERR_WAL_CORRUPT', `LSN ${lsn}: ${(err as Error).message}`, { cause: err });
      }
    }
    if (!inRuns) {
      io.replayed(recordAt(i, control));
    } else if (control === undefined) {
      if (runFrom < 0) runFrom = i;
      io.replayedBlocks(recordKindOf(code) as 'write' | 'trim' | 'zero', r.lba[i]!, r.lengthBlocks[i]!, lsn, r.segmentSeq[i]!, r.offsetBytes[i]!, spanBytes);
    } else {
      endRun(i);
      controls.set(i, control);
      io.replayedControl(recordAt(i, control));
    }
  }
  endRun(r.count);
  if (inRuns) {
    // The tail's records after the checkpoint, each with the chain after it.
    const firstAbove = Math.max(tailFrom, r.count - replayed);
    io.setReplayedTail(() => {
      const tail: { record: PendingRecord; applyChecksum: ApplyChecksum }[] = [];
      let chain = chainAtTail;
      for (let i = firstAbove; i < r.count; i++) {
        const record = recordAt(i, controls.get(i));
        chain = extendApplyChecksum(chain, record.checksum);
        tail.push({ record, applyChecksum: chain });
      }
      return tail;
    });
  }
  return replayed;
}

// The record's bytes in the WAL: header and payload, 8-byte aligned.
function recordSpanBytes(payloadBytes: number): number {
  return Math.ceil((64 + payloadBytes) / 8) * 8;
}

// The first record of the newest REPLAYED_TAIL_BYTES_MAX of the scan (at
// least one record).
function replayedTailStart(r: ScanResult['records']): number {
  let bytes = 0;
  let i = r.count;
  while (i > 0) {
    const span = recordSpanBytes(r.payloadBytes[i - 1]!);
    if (i < r.count && bytes + span > REPLAYED_TAIL_BYTES_MAX) break;
    bytes += span;
    i--;
  }
  return i;
}

function walCacheBytesFor(requested: number | undefined, walBytes: number): number {
  if (requested === undefined) return Math.min(WAL_CACHE_BYTES_DEFAULT, walBytes);
  if (!Number.isSafeInteger(requested) || requested < 0) throw new RangeError('walCacheBytes must be an integer >= 0');
  return requested;
}

// Half the cache, so a checkpoint finds what it applies still in memory (the
// writes that arrive while the previous one runs take the other half); at
// most a quarter of the WAL, so writers rarely wait for WAL space.
function defaultTriggerBytes(walBytes: number, walCacheBytes: number): number {
  const quarterWal = Math.floor(walBytes / 4);
  const bytes = walCacheBytes > 0 ? Math.min(quarterWal, Math.floor(walCacheBytes / 2)) : quarterWal;
  return Math.max(BLOCK_BYTES, bytes);
}

function checkRange(offsetBytes: number, lengthBytes: number, sizeBytes: number, maxBytes: number): void {
  if (!Number.isSafeInteger(offsetBytes) || offsetBytes < 0) {
    throw rangeError('ERR_BAD_OFFSET', `offset ${offsetBytes} must be a non-negative integer`);
  }
  if (!Number.isSafeInteger(lengthBytes) || lengthBytes <= 0) {
    throw rangeError('ERR_BAD_LENGTH', `length ${lengthBytes} must be a positive integer`);
  }
  if (lengthBytes > maxBytes) throw rangeError('ERR_TOO_LARGE', `length ${lengthBytes} exceeds the maximum of ${maxBytes} bytes`);
  if (offsetBytes + lengthBytes > sizeBytes) {
    throw rangeError('ERR_OUT_OF_RANGE', `bytes ${offsetBytes}+${lengthBytes} lie beyond the end of the volume (${sizeBytes} bytes)`);
  }
}

function rangeError(code: string, message: string): RangeError {
  return Object.assign(new RangeError(message), { code });
}

function fsyncDir(dir: string): void {
  const fd = fs.openSync(dir, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY);
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}
