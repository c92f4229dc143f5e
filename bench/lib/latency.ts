// A fixed-size log-linear latency histogram (HDR-style), so recording on the
// hot path allocates nothing and costs a few arithmetic operations.
//
// Values are nanoseconds. Below 2^SUB_BITS ns each value has its own bucket;
// above, every power of two is split into 2^SUB_BITS equal buckets, so a
// reported percentile is within 1/2^SUB_BITS (1.6 %) of the true value.
// Values at or above 2^32 ns (4.3 s) land in the last bucket; max is exact.

const SUB_BITS = 6;
const SUB_COUNT = 1 << SUB_BITS;
const MAX_EXPONENT = 32;
const BUCKET_COUNT = SUB_COUNT + (MAX_EXPONENT - SUB_BITS) * SUB_COUNT;
const VALUE_LIMIT_NS = 2 ** MAX_EXPONENT - 1;

export interface LatencySummaryUs {
  readonly count: number;
  readonly mean: number;
  readonly p50: number;
  readonly p99: number;
  readonly p999: number;
  readonly max: number;
}

export class LatencyHistogram {
  private readonly counts = new Float64Array(BUCKET_COUNT);
  private count = 0;
  private sumNs = 0;
  private maxNs = 0;

  record(valueNs: number): void {
    const v = valueNs < 0 ? 0 : valueNs;
    this.counts[bucketOf(v)]! += 1;
    this.count += 1;
    this.sumNs += v;
    if (v > this.maxNs) this.maxNs = v;
  }

  reset(): void {
    this.counts.fill(0);
    this.count = 0;
    this.sumNs = 0;
    this.maxNs = 0;
  }

  /** The value at quantile q (0..1), in ns: the upper edge of the bucket holding it. */
  quantileNs(q: number): number {
    if (this.count === 0) return NaN;
    const rank = Math.max(1, Math.ceil(q * this.count));
    let seen = 0;
    for (let i = 0; i < BUCKET_COUNT; i++) {
      seen += this.counts[i]!;
      if (seen >= rank) return Math.min(bucketUpperNs(i), this.maxNs);
    }
    return this.maxNs;
  }

  summaryUs(): LatencySummaryUs {
    return {
      count: this.count,
      mean: this.count === 0 ? NaN : this.sumNs / this.count / 1000,
      p50: this.quantileNs(0.5) / 1000,
      p99: this.quantileNs(0.99) / 1000,
      p999: this.quantileNs(0.999) / 1000,
      max: this.count === 0 ? NaN : this.maxNs / 1000,
    };
  }
}

function bucketOf(valueNs: number): number {
  const v = valueNs >= VALUE_LIMIT_NS ? VALUE_LIMIT_NS : Math.floor(valueNs);
  if (v < SUB_COUNT) return v;
  const exponent = 31 - Math.clz32(v); // >= SUB_BITS
  const shift = exponent - SUB_BITS;
  const sub = (v >>> shift) - SUB_COUNT; // 0..SUB_COUNT-1
  return SUB_COUNT + shift * SUB_COUNT + sub;
}

function bucketUpperNs(bucket: number): number {
  if (bucket < SUB_COUNT) return bucket;
  const shift = Math.floor((bucket - SUB_COUNT) / SUB_COUNT);
  const sub = (bucket - SUB_COUNT) % SUB_COUNT;
  return ((SUB_COUNT + sub + 1) * 2 ** shift) - 1;
}
