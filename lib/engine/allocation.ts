// Block status: which byte ranges of a volume hold data, and which read as
// zeros. Three layers, newest on top: the dirty map's block entries (data),
// its trim ranges (holes) and write-zeroes ranges (zeros, still allocated:
// NBD's NO_HOLE), and base.img's allocation (SEEK_DATA). A checkpoint punches
// both kinds of range out of base.img, so afterwards both read as holes.
import * as fs from 'node:fs';

import { addon } from '../native/addon';
import { BLOCK_BYTES } from '../native/base_image';
import { nativeCall } from '../native/errors';
import type { DirtyMap } from './dirty_map';

export interface AllocationExtent {
  lengthBytes: number;
  hole: boolean; // unallocated (reads return zeros)
  zero: boolean; // reads return zeros
}

// A run of blocks [start, end).
interface Run {
  start: number;
  end: number;
}

// Extents per answer at most; a caller asks again from where the answer stopped.
const EXTENTS_MAX = 4096;

interface RawExtents {
  dataExtents(fd: number, offset: number, length: number, maxExtents: number): Float64Array;
}

// base.img's allocation, read through its own descriptor (lseek needs no O_DIRECT).
export class BaseAllocation {
  private fd: number;

  constructor(file: string) {
    this.fd = fs.openSync(file, fs.constants.O_RDONLY);
  }

  // Data runs (in blocks) inside [startBlock, endBlock), at most EXTENTS_MAX.
  dataRuns(startBlock: number, endBlock: number): Run[] {
    const raw = addon() as unknown as RawExtents;
    const pairs = nativeCall(() =>
      raw.dataExtents(this.fd, startBlock * BLOCK_BYTES, (endBlock - startBlock) * BLOCK_BYTES, EXTENTS_MAX),
    );
    const runs: Run[] = [];
    for (let i = 0; i < pairs.length; i += 2) {
      runs.push({ start: Math.floor(pairs[i]! / BLOCK_BYTES), end: Math.ceil(pairs[i + 1]! / BLOCK_BYTES) });
    }
    return runs;
  }

  close(): void {
    if (this.fd < 0) return;
    fs.closeSync(this.fd);
    this.fd = -1;
  }
}

// Extents covering [offsetBytes, offsetBytes + lengthBytes) from its start;
// they may stop short of the end when the range holds very many extents.
export function blockStatus(dirty: DirtyMap, base: BaseAllocation, offsetBytes: number, lengthBytes: number): AllocationExtent[] {
  const startBlock = Math.floor(offsetBytes / BLOCK_BYTES);
  let endBlock = Math.ceil((offsetBytes + lengthBytes) / BLOCK_BYTES);
  const dataRuns = base.dataRuns(startBlock, endBlock);
  // A capped answer from the file system bounds the range we can describe.
  if (dataRuns.length >= EXTENTS_MAX) endBlock = dataRuns[dataRuns.length - 1]!.end;
  let dirtyRuns = toRuns(dirty.blocksIn(startBlock, endBlock));
  if (dirtyRuns.length > EXTENTS_MAX) {
    // Describe only up to the first run left out.
    endBlock = dirtyRuns[EXTENTS_MAX]!.start;
    dirtyRuns = dirtyRuns.slice(0, EXTENTS_MAX);
  }
  const zeroRanges = dirty.zeroRangesIn(startBlock, endBlock);
  const trimRuns = zeroRanges.filter((r) => r.kind === 'trim').map((r) => ({ start: r.startBlock, end: r.endBlock }));
  const zeroRuns = zeroRanges.filter((r) => r.kind === 'zero').map((r) => ({ start: r.startBlock, end: r.endBlock }));
  const extents = layer(startBlock, endBlock, [
    { runs: dirtyRuns, state: 'data' },
    { runs: trimRuns, state: 'hole' },
    { runs: zeroRuns, state: 'zero' },
    { runs: dataRuns, state: 'data' },
  ]);
  return clipToBytes(extents, startBlock, offsetBytes, Math.min(offsetBytes + lengthBytes, endBlock * BLOCK_BYTES));
}

// Consecutive block numbers (sorted) as runs.
function toRuns(blocks: number[]): Run[] {
  const runs: Run[] = [];
  for (const b of blocks) {
    const last = runs[runs.length - 1];
    if (last !== undefined && last.end === b) last.end = b + 1;
    else runs.push({ start: b, end: b + 1 });
  }
  return runs;
}

type State = 'data' | 'hole' | 'zero';

// Sweeps sorted, non-overlapping layers of runs (trim and zero ranges never
// overlap each other); the topmost layer covering a piece decides its state,
// and a piece no layer covers is a hole.
function layer(startBlock: number, endBlock: number, input: { runs: Run[]; state: State }[]): { blocks: number; state: State }[] {
  const layers = input.map((l) => ({ ...l, i: 0 }));
  const bounds = new Set<number>([startBlock, endBlock]);
  for (const l of layers) {
    for (const r of l.runs) {
      if (r.start > startBlock && r.start < endBlock) bounds.add(r.start);
      if (r.end > startBlock && r.end < endBlock) bounds.add(r.end);
    }
  }
  const points = [...bounds].sort((a, b) => a - b);
  const out: { blocks: number; state: State }[] = [];
  for (let k = 0; k + 1 < points.length; k++) {
    const p = points[k]!;
    let state: State = 'hole';
    for (const l of layers) {
      while (l.i < l.runs.length && l.runs[l.i]!.end <= p) l.i++;
      const r = l.runs[l.i];
      if (r !== undefined && r.start <= p) {
        state = l.state;
        break;
      }
    }
    const blocks = points[k + 1]! - p;
    const last = out[out.length - 1];
    if (last !== undefined && last.state === state) last.blocks += blocks;
    else out.push({ blocks, state });
  }
  return out;
}

function clipToBytes(pieces: { blocks: number; state: State }[], startBlock: number, fromBytes: number, toBytes: number): AllocationExtent[] {
  const out: AllocationExtent[] = [];
  let pos = startBlock * BLOCK_BYTES;
  for (const piece of pieces) {
    const end = pos + piece.blocks * BLOCK_BYTES;
    const a = Math.max(pos, fromBytes);
    const b = Math.min(end, toBytes);
    if (b > a) out.push({ lengthBytes: b - a, hole: piece.state === 'hole', zero: piece.state !== 'data' });
    pos = end;
  }
  return out;
}
