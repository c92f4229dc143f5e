// The child of the kill test (test/fault/crash_kill.test.ts):
//   node crash_child.js <dir> <seed> <cycle> <firstId>
// Opens the volume (creates it on cycle 0), then runs a seeded random
// workload with some concurrency until the parent SIGKILLs it: writes of 1..16
// blocks (a share at sector offsets that are not block-aligned), trims and
// write-zeroes, flushes, FUA writes, and reads that check every sector this
// child has written and seen acknowledged (reads see every acknowledged
// write). Each intention and acknowledgement is one line on stdout, in the
// protocol described in crash_verify.ts, written synchronously before the
// child goes on: an op's line reaches the parent before the op is issued.
//
// The child never has two overlapping operations in flight, so the parent's
// per-sector history is exact under any engine ordering. Disjoint sectors of
// one block may be in flight together: that exercises the engine's per-block
// read-modify-write ordering.
import * as fs from 'node:fs';

import { Volume } from '../../lib/engine/volume';
import {
  BLOCK_BYTES, CRASH_ARENA_BYTES, CRASH_VOLUME_BYTES, CRASH_WAL_SEGMENT_BYTES, CRASH_WAL_SEGMENTS_MAX, SECTOR_BYTES, ZERO_VERSION,
  decodeSector, writeContent,
} from './crash_verify';
import { prng } from './tmp';

const SECTORS_PER_BLOCK = BLOCK_BYTES / SECTOR_BYTES;
const TOTAL_SECTORS = CRASH_VOLUME_BYTES / SECTOR_BYTES;
const HOT_ZONE_SECTORS = (1 << 20) / SECTOR_BYTES;
const WRITE_BLOCKS_MAX = 16;
const READ_BLOCKS_MAX = 32;
const RUN_MS_MAX = 8000; // the parent kills long before; a clean close if it does not
const CONCURRENCY_CHOICES = [1, 2, 4, 8, 16, 32];

const sleepCell = new Int32Array(new SharedArrayBuffer(4));

// Writes one line to the parent before going on. stdout may be a
// non-blocking socket: when the parent is slow to read, wait and retry (a
// line cut by a kill is dropped by the parent: it was never acted on).
function emit(line: string): void {
  const buf = Buffer.from(`${line}\n`, 'latin1');
  for (let offset = 0; offset < buf.byteLength; ) {
    try {
      offset += fs.writeSync(1, buf, offset);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EAGAIN') throw err;
      Atomics.wait(sleepCell, 0, 0, 1);
    }
  }
}

function fail(message: string): never {
  fs.writeSync(2, `crash_child: ${message}\n`);
  process.exit(3);
}

class Workload {
  private readonly rand: () => number;
  private readonly busy = new Uint8Array(TOTAL_SECTORS); // sectors with an op in flight
  private readonly known = new Int32Array(TOTAL_SECTORS).fill(-1); // version acked by this child, or -1
  private readonly hotFirstSector: number;
  private nextId: number;
  private nextFlush = 1;
  private stopping = false;

  constructor(private readonly vol: Volume, seed: number, firstId: number) {
    this.rand = prng(seed);
    this.nextId = firstId;
    const hotBlocks = HOT_ZONE_SECTORS / SECTORS_PER_BLOCK;
    this.hotFirstSector = Math.floor(this.rand() * (TOTAL_SECTORS / SECTORS_PER_BLOCK - hotBlocks)) * SECTORS_PER_BLOCK;
  }

  async run(): Promise<void> {
    const concurrency = CONCURRENCY_CHOICES[Math.floor(this.rand() * CONCURRENCY_CHOICES.length)]!;
    const timer = setTimeout(() => (this.stopping = true), RUN_MS_MAX);
    await Promise.all(Array.from({ length: concurrency }, () => this.worker()));
    clearTimeout(timer);
  }

  private async worker(): Promise<void> {
    while (!this.stopping) {
      const r = this.rand();
      if (r < 0.08) await this.flush();
      else if (r < 0.12) await this.zeroing('T');
      else if (r < 0.16) await this.zeroing('Z');
      else if (r < 0.21) await this.read();
      else await this.write(this.rand() < 0.15);
    }
  }

  // A free range: [firstSector, sectorCount], or undefined after a few tries.
  private pick(blocksMax: number, unalignedShare: number): [number, number] | undefined {
    for (let attempt = 0; attempt < 8; attempt++) {
      const hot = this.rand() < 0.6;
      const zoneFirst = hot ? this.hotFirstSector : 0;
      const zoneSectors = hot ? HOT_ZONE_SECTORS : TOTAL_SECTORS;
      let first: number;
      let count: number;
      if (this.rand() < unalignedShare) {
        count = 1 + Math.floor(this.rand() * (blocksMax * SECTORS_PER_BLOCK - 1));
        first = zoneFirst + Math.floor(this.rand() * (zoneSectors - count + 1));
      } else {
        const blocks = 1 + Math.floor(this.rand() * blocksMax);
        count = blocks * SECTORS_PER_BLOCK;
        first = zoneFirst + Math.floor(this.rand() * (zoneSectors / SECTORS_PER_BLOCK - blocks + 1)) * SECTORS_PER_BLOCK;
      }
      if (this.isFree(first, count)) return [first, count];
    }
    return undefined;
  }

  private isFree(first: number, count: number): boolean {
    for (let s = first; s < first + count; s++) if (this.busy[s] !== 0) return false;
    return true;
  }

  private async write(fua: boolean): Promise<void> {
    const range = this.pick(WRITE_BLOCKS_MAX, 0.3);
    if (range === undefined) return this.yieldTurn();
    const [first, count] = range;
    const id = this.nextId++;
    const data = writeContent(id, first, count);
    this.busy.fill(1, first, first + count);
    emit(`W ${id} ${first} ${count} ${fua ? 1 : 0}`);
    await this.vol.write(first * SECTOR_BYTES, data, { fua });
    emit(`A ${id}`);
    this.busy.fill(0, first, first + count);
    this.known.fill(id, first, first + count);
  }

  private async zeroing(kind: 'T' | 'Z'): Promise<void> {
    const big = this.rand() < 0.1;
    const range = this.pick(big ? 512 : 64, 0.2);
    if (range === undefined) return this.yieldTurn();
    const [first, count] = range;
    const id = this.nextId++;
    this.busy.fill(1, first, first + count);
    emit(`${kind} ${id} ${first} ${count}`);
    if (kind === 'T') await this.vol.trim(first * SECTOR_BYTES, count * SECTOR_BYTES);
    else await this.vol.writeZeroes(first * SECTOR_BYTES, count * SECTOR_BYTES);
    emit(`A ${id}`);
    this.busy.fill(0, first, first + count);
    this.known.fill(ZERO_VERSION, first, first + count);
  }

  private async flush(): Promise<void> {
    const n = this.nextFlush++;
    emit(`F ${n}`);
    await this.vol.flush();
    emit(`G ${n}`);
  }

  // Reads a free range and checks each sector this child knows.
  private async read(): Promise<void> {
    const range = this.pick(READ_BLOCKS_MAX, 0.2);
    if (range === undefined) return this.yieldTurn();
    const [first, count] = range;
    this.busy.fill(1, first, first + count);
    const data = await this.vol.read(first * SECTOR_BYTES, count * SECTOR_BYTES);
    this.busy.fill(0, first, first + count);
    if (data.byteLength !== count * SECTOR_BYTES) fail(`read of ${count} sectors at ${first} returned ${data.byteLength} bytes`);
    const aligned = data.byteOffset % 4 === 0 ? data : Buffer.from(Uint8Array.from(data));
    const words = new Uint32Array(aligned.buffer, aligned.byteOffset, aligned.byteLength >>> 2);
    const scratch = new Uint32Array(SECTOR_BYTES / 4);
    for (let i = 0; i < count; i++) {
      const want = this.known[first + i]!;
      if (want < 0) continue;
      const got = decodeSector(words, (i * SECTOR_BYTES) / 4, first + i, scratch);
      if (got !== want) fail(`read-your-writes: sector ${first + i} holds ${got}, the last acknowledged version is ${want}`);
    }
  }

  private yieldTurn(): Promise<void> {
    return new Promise((resolve) => setImmediate(resolve));
  }
}

async function main(): Promise<void> {
  const [dir, seedArg, cycleArg, firstIdArg] = process.argv.slice(2);
  const seed = Number(seedArg);
  const cycle = Number(cycleArg);
  const firstId = Number(firstIdArg);
  if (dir === undefined || !Number.isSafeInteger(seed) || !Number.isSafeInteger(cycle) || !(firstId >= 1)) {
    fs.writeSync(2, 'usage: crash_child <dir> <seed> <cycle> <firstId>\n');
    process.exit(2);
  }
  stage = cycle === 0 ? 'creating the volume' : 'opening the volume (recovery)';
  emit('O');
  const vol =
    cycle === 0
      ? await Volume.create(dir, { sizeBytes: CRASH_VOLUME_BYTES, walSegmentBytes: CRASH_WAL_SEGMENT_BYTES, walSegmentsMax: CRASH_WAL_SEGMENTS_MAX, arenaBytes: CRASH_ARENA_BYTES })
      : await Volume.open(dir, { walSegmentsMax: CRASH_WAL_SEGMENTS_MAX, arenaBytes: CRASH_ARENA_BYTES });
  emit('R');
  stage = 'running the workload';
  await new Workload(vol, seed, firstId).run();
  stage = 'closing the volume';
  await vol.close();
  emit('X');
  process.exit(0);
}

// A promise of the volume that never settles lets the event loop run dry,
// and node would exit 0 in silence: say so, and fail.
let stage = 'starting';
process.on('beforeExit', () => fail(`the event loop ran dry while ${stage}: a volume promise never settled`));

main().catch((err: unknown) => fail(err instanceof Error ? (err.stack ?? err.message) : String(err)));
