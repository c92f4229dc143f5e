// A closed-loop load generator: N async workers, each awaiting its own
// operation before issuing the next, so exactly N operations are in flight.
//
// Timeline: warm-up (ops run, nothing counted), then the measurement window
// (completions counted, latency recorded, process and host CPU sampled at both
// edges), then stop: workers finish the op they hold and exit. Completions
// after the window closes are not counted. Optional counters of the system
// under test are sampled at the two edges too. The hot path allocates nothing of
// its own: one histogram bucket increment and two clock reads per op.
import { assert } from './bench';
import type { CpuSnapshot, CpuWindow } from './cpu';
import { cpuSince, cpuSnapshot } from './cpu';
import type { LatencySummaryUs } from './latency';
import { LatencyHistogram } from './latency';

export interface ClosedLoopOptions {
  readonly inFlight: number;
  readonly warmupMs: number;
  readonly measureMs: number;
  /** One operation; seq counts up from 0 across all workers. */
  readonly op: (seq: number) => Promise<unknown>;
  /** Counters of the system under test, sampled at both window edges. */
  readonly counters?: () => Counters;
}

export type Counters = Readonly<Record<string, number>>;

export interface ClosedLoopResult {
  readonly ops: number;
  readonly opsPerSec: number;
  readonly cpu: CpuWindow;
  readonly cpuUsPerOp: number;
  readonly latencyUs: LatencySummaryUs;
  /** Change of each counter over the window (empty without options.counters). */
  readonly counterDeltas: Counters;
}

type Phase = 'warmup' | 'measure' | 'stop';

export async function measureClosedLoop(options: ClosedLoopOptions): Promise<ClosedLoopResult> {
  const { inFlight, warmupMs, measureMs, op } = options;
  const sampleCounters = options.counters ?? ((): Counters => ({}));
  assert(Number.isInteger(inFlight) && inFlight >= 1, `inFlight ${inFlight}`);
  assert(measureMs > 0 && warmupMs >= 0, 'window lengths');
  const histogram = new LatencyHistogram();
  let phase: Phase = 'warmup';
  let seq = 0;
  let ops = 0;
  let cpuStart: CpuSnapshot | null = null;
  let countersStart: Counters = {};
  let closed: Closed | null = null;

  const worker = async (): Promise<void> => {
    while (phase !== 'stop') {
      const startMs = performance.now();
      await op(seq++);
      const endMs = performance.now();
      if (phase === 'measure') {
        histogram.record((endMs - startMs) * 1e6);
        ops += 1;
      }
    }
  };

  const openTimer = setTimeout(() => {
    countersStart = sampleCounters();
    cpuStart = cpuSnapshot();
    phase = 'measure';
  }, warmupMs);
  const closeTimer = setTimeout(() => {
    closed = { ops, cpu: cpuSince(cpuStart!), counterDeltas: deltas(countersStart, sampleCounters()) };
    phase = 'stop';
  }, warmupMs + measureMs);
  const workers: Promise<void>[] = [];
  for (let i = 0; i < inFlight; i++) workers.push(worker());
  try {
    await Promise.all(workers);
  } catch (err) {
    phase = 'stop';
    await Promise.allSettled(workers);
    throw err;
  } finally {
    clearTimeout(openTimer);
    clearTimeout(closeTimer);
  }
  const window = closed as Closed | null;
  assert(window !== null, 'measurement window never closed');
  assert(window.ops > 0, 'no operation completed in the measurement window');
  return {
    ops: window.ops,
    opsPerSec: window.ops / (window.cpu.wallMs / 1000),
    cpu: window.cpu,
    cpuUsPerOp: window.cpu.processUs / window.ops,
    latencyUs: histogram.summaryUs(),
    counterDeltas: window.counterDeltas,
  };
}

interface Closed {
  readonly ops: number;
  readonly cpu: CpuWindow;
  readonly counterDeltas: Counters;
}

function deltas(start: Counters, end: Counters): Counters {
  const out: Record<string, number> = {};
  for (const [name, value] of Object.entries(end)) out[name] = value - (start[name] ?? 0);
  return out;
}
