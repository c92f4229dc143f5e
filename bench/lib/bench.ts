// What a benchmark is, and what the runner hands it.
//
// A bench is a module exporting `bench: Bench`. run.ts creates one scratch
// directory per bench, passes it in the context, and deletes it afterwards; a
// bench only creates files inside ctx.dir. Measurements run one at a time (the
// machine has two vCPUs; two measurements at once would measure each other).
// A bench that cannot run throws BenchSkipped('missing X'): the runner prints
// `skipped: missing X` and counts it as skipped, never as passed.
import type { BenchResult } from './report';

export interface BenchContext {
  /** Scratch directory for this bench, on the disk under test; removed by the runner. */
  readonly dir: string;
  /** Length of one measurement window (BENCH_SECONDS). */
  readonly measureMs: number;
  /** Warm-up before each window, not measured. */
  readonly warmupMs: number;
  /** Size of the pre-written fio scratch file (BENCH_FILE_MB). */
  readonly fileBytes: number;
  /** Progress lines go to stderr so stdout carries only the report. */
  log(line: string): void;
  /** Call right before each measurement: waits (bounded) for other load on the host to pass. */
  settle(): Promise<void>;
}

export interface Bench {
  readonly name: string;
  readonly description: string;
  run(ctx: BenchContext): Promise<BenchResult>;
}

export class BenchSkipped extends Error {
  constructor(readonly reason: string) {
    super(`skipped: ${reason}`);
    this.name = 'BenchSkipped';
  }
}

export function assert(condition: unknown, message: string): asserts condition {
  if (!condition) throw new Error(`bench: assertion failed: ${message}`);
}
