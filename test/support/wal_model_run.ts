// One seeded run of the WAL against the disk model (durability_model.ts): a
// ring that traces every submission and completion and shuffles completions
// by the seed, 1-32 workers appending 4 KiB records (some FUA) and flushing,
// then the trace checked. Used by the writer's tests with and without a
// group hold.
import * as path from 'node:path';

import { Ring } from '../../lib/native/ring';
import { Wal } from '../../lib/native/wal';
import { checkWalTrace, type ModelReport } from './durability_model';
import { prng, tempDir } from './tmp';

export interface ModelRunOptions {
  operations: number;
  // Share of operations that are FUA appends (flushes take the first 15 %).
  fuaShare: number;
  groupHoldUs?: number;
}

export async function runWalModel(seed: number, o: ModelRunOptions): Promise<ModelReport> {
  const { dir, cleanup } = tempDir('walmodel');
  const ring = Ring.open({ depth: 128, arenaBytes: 32 << 20 });
  try {
    ring.setTrace(true);
    ring.setShuffle(seed);
    const { wal } = await Wal.open(ring, { dir: path.join(dir, 'wal'), create: true, segmentBytes: 1 << 20, groupBytes: 64 << 10 });
    if (o.groupHoldUs !== undefined) wal.setGroupHold(o.groupHoldUs);
    const rand = prng(seed);
    let remaining = o.operations;
    const worker = async (): Promise<void> => {
      while (remaining-- > 0) {
        const r = rand();
        if (r < 0.15) await wal.flush();
        else await wal.append({ kind: 'write', epoch: 1, lba: Math.floor(rand() * 1000), lengthBlocks: 1, payload: payloadFor(remaining), fua: r < 0.15 + o.fuaShare });
      }
    };
    await Promise.all(Array.from({ length: 1 + Math.floor(rand() * 32) }, worker));
    await wal.flush();
    const trace = ring.takeTrace();
    await wal.close();
    return checkWalTrace(trace);
  } finally {
    await ring.close();
    cleanup();
  }
}

export function payloadFor(lsnHint: number, bytes = 4096): Buffer {
  const b = Buffer.alloc(bytes);
  for (let i = 0; i < bytes; i += 4) b.writeUInt32LE((lsnHint * 2654435761 + i) >>> 0, i);
  return b;
}
