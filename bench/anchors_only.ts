// The fio anchors alone (A1, A2 of wal_append), for checking the disk and the
// harness without the engine: `node dist/bench/run.js anchors`.
import type { Bench, BenchContext } from './lib/bench';
import { A1_QD1_SYNC_EACH, A2_QD32_SYNC_64, measureAnchor, prepareAnchorFile } from './lib/anchors';
import type { BenchResult } from './lib/report';
import { ratio } from './lib/report';

export const bench: Bench = {
  name: 'anchors',
  description: 'fio anchors only: durable 4 KiB O_DIRECT writes at qd1 (fdatasync=1) and qd32 (fdatasync=64)',
  run,
};

async function run(ctx: BenchContext): Promise<BenchResult> {
  const startedAt = new Date().toISOString();
  const { fio, file } = await prepareAnchorFile(ctx);
  const a1 = await measureAnchor(ctx, A1_QD1_SYNC_EACH, file);
  const a2 = await measureAnchor(ctx, A2_QD32_SYNC_64, file);
  return {
    bench: bench.name,
    description: bench.description,
    startedAt,
    env: { fio },
    anchors: [a1.figure, a2.figure],
    subjects: [],
    ratios: [ratio('A2 / A1', a2.figure, a1.figure, '>=', null)],
    checks: [],
    notes: [],
  };
}
