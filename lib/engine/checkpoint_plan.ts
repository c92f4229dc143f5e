// The flusher's plan (pure): which bytes of the WAL a checkpoint reads and
// where each block lands. Held in typed arrays, not an object per block or
// record: a checkpoint of random 4 KiB writes has tens of thousands of both,
// and the plan is built on the JS thread between client requests (objects
// made it tens of milliseconds of work and garbage per checkpoint).
//
// The steps: the dirty map's snapshot (CheckpointBlocks, LBA order) is split
// into pieces (consecutive blocks of one record on consecutive LBAs); the
// records, in WAL order (LSN order is WAL order), are grouped into extents
// (records of one segment whose gap is at most gapBytesMax, read as one span
// of at most readBytesMax; a larger record gets an extent of its own); each
// extent's pieces are laid out in its write area in LBA order and written as
// runs (maximal consecutive LBAs, at most runBlocksMax blocks each). Every
// block lands in exactly one piece.

import { BLOCK_BYTES } from '../native/base_image';

// The blocks a checkpoint applies (DirtyMap.collect): `count` blocks in LBA
// order, each with its record (an index into the rec* columns) and its index
// in that record's payload; `records` records, in no particular order.
export interface CheckpointBlocks {
  count: number;
  lba: Float64Array;
  rec: Uint32Array;
  index: Uint32Array;
  records: number;
  recLsn: Float64Array;
  recSegmentSeq: Float64Array;
  recOffsetBytes: Float64Array;
  recSpanBytes: Float64Array;
}

// One read: [startBytes, endBytes) of a segment (4 KiB aligned) holding the
// records at positions [first, end) of Plan.recOrder; `blocks` = the blocks
// their pieces carry.
export interface PlanExtent {
  segmentSeq: number;
  startBytes: number;
  endBytes: number;
  first: number;
  end: number;
  blocks: number;
}

// One base.img write: lengthBlocks blocks at lba from the write area at dstBytes.
export interface Run {
  lba: number;
  lengthBlocks: number;
  dstBytes: number;
}

export interface Plan {
  readonly blocks: CheckpointBlocks;
  // Pieces, in LBA order: first LBA, length, first block's index in its
  // record, the record, and where in its extent's write area (planRuns).
  readonly pieces: number;
  readonly pieceLba: Float64Array;
  readonly pieceLength: Uint32Array;
  readonly pieceIndex: Uint32Array;
  readonly pieceRec: Uint32Array;
  readonly pieceDstBytes: Float64Array;
  // Records in LSN order; the pieces of the record at position p are
  // piecesOf[pieceStart[p] .. pieceStart[p + 1]), in LBA order.
  readonly recOrder: Uint32Array;
  readonly pieceStart: Uint32Array;
  readonly piecesOf: Uint32Array;
  readonly extents: PlanExtent[];
}

export interface ExtentLimits {
  readBytesMax: number;
  gapBytesMax: number;
}

export function planCheckpoint(blocks: CheckpointBlocks, limits: ExtentLimits): Plan {
  const { count, lba, rec, index } = blocks;
  // Pieces: a block continues the previous piece when it is the next LBA and
  // the next block of the same record.
  const pieceLba = new Float64Array(count);
  const pieceLength = new Uint32Array(count);
  const pieceIndex = new Uint32Array(count);
  const pieceRec = new Uint32Array(count);
  let pieces = 0;
  for (let i = 0; i < count; i++) {
    const p = pieces - 1;
    if (p >= 0 && pieceRec[p] === rec[i] && pieceLba[p]! + pieceLength[p]! === lba[i] && pieceIndex[p]! + pieceLength[p]! === index[i]) {
      pieceLength[p]!++;
      continue;
    }
    pieceLba[pieces] = lba[i]!;
    pieceLength[pieces] = 1;
    pieceIndex[pieces] = index[i]!;
    pieceRec[pieces] = rec[i]!;
    pieces++;
  }
  const recOrder = lsnOrder(blocks);
  // Each record's pieces, grouped by its position in LSN order (a counting
  // sort: pieces stay in LBA order within a record).
  const records = blocks.records;
  const position = new Uint32Array(records);
  for (let p = 0; p < records; p++) position[recOrder[p]!] = p;
  const pieceStart = new Uint32Array(records + 1);
  for (let k = 0; k < pieces; k++) pieceStart[position[pieceRec[k]!]! + 1]!++;
  for (let p = 0; p < records; p++) pieceStart[p + 1]! += pieceStart[p]!;
  const fill = pieceStart.slice(0, records);
  const piecesOf = new Uint32Array(pieces);
  for (let k = 0; k < pieces; k++) piecesOf[fill[position[pieceRec[k]!]!]!++] = k;
  // Extents, walking the records in WAL order.
  const extents: PlanExtent[] = [];
  let ext: PlanExtent | undefined;
  let usedEndBytes = 0; // end of the last record in ext (unaligned)
  for (let p = 0; p < records; p++) {
    const r = recOrder[p]!;
    const seq = blocks.recSegmentSeq[r]!;
    const offsetBytes = blocks.recOffsetBytes[r]!;
    const recEndBytes = offsetBytes + blocks.recSpanBytes[r]!;
    const fits =
      ext !== undefined &&
      seq === ext.segmentSeq &&
      offsetBytes >= usedEndBytes &&
      offsetBytes - usedEndBytes <= limits.gapBytesMax &&
      alignUp(recEndBytes, BLOCK_BYTES) - ext.startBytes <= limits.readBytesMax;
    if (!fits) {
      ext = { segmentSeq: seq, startBytes: alignDown(offsetBytes, BLOCK_BYTES), endBytes: 0, first: p, end: p, blocks: 0 };
      extents.push(ext);
    }
    ext!.end = p + 1;
    ext!.endBytes = alignUp(recEndBytes, BLOCK_BYTES);
    for (let j = pieceStart[p]!; j < pieceStart[p + 1]!; j++) ext!.blocks += pieceLength[piecesOf[j]!]!;
    usedEndBytes = recEndBytes;
  }
  return { blocks, pieces, pieceLba, pieceLength, pieceIndex, pieceRec, pieceDstBytes: new Float64Array(pieces), recOrder, pieceStart, piecesOf, extents };
}

// Lays the extent's pieces out in its write area in LBA order (setting
// plan.pieceDstBytes for them) and returns the base.img writes: maximal runs
// of consecutive LBAs, at most runBlocksMax blocks each.
export function planRuns(plan: Plan, ext: PlanExtent, runBlocksMax: number): Run[] {
  // Pieces are numbered in LBA order: the extent's, sorted by number, are in LBA order.
  const mine = new Float64Array(plan.pieceStart[ext.end]! - plan.pieceStart[ext.first]!);
  let n = 0;
  for (let p = ext.first; p < ext.end; p++) {
    for (let j = plan.pieceStart[p]!; j < plan.pieceStart[p + 1]!; j++) mine[n++] = plan.piecesOf[j]!;
  }
  mine.sort();
  const runs: Run[] = [];
  let dstBytes = 0;
  for (let i = 0; i < n; i++) {
    const k = mine[i]!;
    plan.pieceDstBytes[k] = dstBytes;
    const first = plan.pieceLba[k]!;
    const length = plan.pieceLength[k]!;
    let lba = first;
    let left = length;
    while (left > 0) {
      const last = runs[runs.length - 1];
      if (last !== undefined && last.lba + last.lengthBlocks === lba && last.lengthBlocks < runBlocksMax) {
        const take = Math.min(left, runBlocksMax - last.lengthBlocks);
        last.lengthBlocks += take;
        lba += take;
        left -= take;
      } else {
        const take = Math.min(left, runBlocksMax);
        runs.push({ lba, lengthBlocks: take, dstBytes: dstBytes + (lba - first) * BLOCK_BYTES });
        lba += take;
        left -= take;
      }
    }
    dstBytes += length * BLOCK_BYTES;
  }
  return runs;
}

// The records in LSN order. LSNs are distinct integers; those of one
// checkpoint lie in a range about as wide as the records written since the
// last one, so a table indexed by LSN orders them without a comparator sort
// (tens of thousands of records); a sparse range falls back to one.
function lsnOrder(blocks: CheckpointBlocks): Uint32Array {
  const records = blocks.records;
  const order = new Uint32Array(records);
  if (records === 0) return order;
  let lo = Infinity;
  let hi = -Infinity;
  for (let r = 0; r < records; r++) {
    const lsn = blocks.recLsn[r]!;
    if (lsn < lo) lo = lsn;
    if (lsn > hi) hi = lsn;
  }
  const width = hi - lo + 1;
  if (width <= 8 * records + 1024) {
    const slot = new Int32Array(width).fill(-1);
    for (let r = 0; r < records; r++) slot[blocks.recLsn[r]! - lo] = r;
    let n = 0;
    for (let i = 0; i < width; i++) if (slot[i]! >= 0) order[n++] = slot[i]!;
    if (n === records) return order; // else two records share an LSN: sort them all
  }
  for (let r = 0; r < records; r++) order[r] = r;
  return order.sort((a, b) => blocks.recLsn[a]! - blocks.recLsn[b]!);
}

function alignUp(value: number, multiple: number): number {
  return Math.ceil(value / multiple) * multiple;
}

export function alignDown(value: number, multiple: number): number {
  return Math.floor(value / multiple) * multiple;
}
