// Which round of a bench workload is reported, on a host others share.
//
// A round is one window per side, seconds apart; its ratio is what the
// targets judge. A round is noisy when either window ran while others loaded
// the host (other load above NOISY_OTHER_LOAD_PCT of all CPUs: someone's build,
// or the hypervisor stealing the vCPUs). A bench asks for a number of rounds
// and runs more, up to a cap, while too few of them were quiet; it reports the
// median of the quiet rounds, or of all of them when none was quiet (run.ts
// then flags the figures). Every round's ratio stays in the notes.

/** Other load (% of all CPUs) above which a window's figures are suspect. */
export const NOISY_OTHER_LOAD_PCT = 20;

export interface RoundOutcome {
  readonly ratio: number;
  readonly noisy: boolean;
}

/** Whether either window's other load (null: unknown, no /proc/stat) makes the round noisy. */
export function isNoisyRound(otherLoadPcts: readonly (number | null | undefined)[]): boolean {
  return otherLoadPcts.some((pct) => pct !== null && pct !== undefined && pct > NOISY_OTHER_LOAD_PCT);
}

/** How many of the rounds were quiet. */
export function quietRounds(outcomes: readonly RoundOutcome[]): number {
  return outcomes.filter((o) => !o.noisy).length;
}

/** Another round is run while fewer than `wanted` were quiet and fewer than `max` ran. */
export function wantsAnotherRound(outcomes: readonly RoundOutcome[], wanted: number, max: number): boolean {
  if (outcomes.length >= max) return false;
  return quietRounds(outcomes) < wanted;
}

export interface ReportedRound {
  /** Index into the outcomes, in the order run. */
  readonly index: number;
  /** Whether it was chosen among quiet rounds (false: none was quiet). */
  readonly quiet: boolean;
  /** How many rounds the median was taken over. */
  readonly over: number;
}

/**
 * The round with the median ratio among the quiet rounds, or among all when
 * none was quiet. Of two middle rounds (an even count), the worse one:
 * the lower ratio when higher is better, else the higher.
 */
export function reportedRound(outcomes: readonly RoundOutcome[], higherIsBetter: boolean): ReportedRound {
  if (outcomes.length === 0) throw new RangeError('no rounds to report');
  const quiet = outcomes.map((o, i) => ({ o, i })).filter(({ o }) => !o.noisy);
  const pool = quiet.length > 0 ? quiet : outcomes.map((o, i) => ({ o, i }));
  // Worst first: the lower middle of this order is the worse of two middles.
  const sorted = [...pool].sort((a, b) => (higherIsBetter ? a.o.ratio - b.o.ratio : b.o.ratio - a.o.ratio));
  return { index: sorted[Math.floor((sorted.length - 1) / 2)]!.i, quiet: quiet.length > 0, over: pool.length };
}
