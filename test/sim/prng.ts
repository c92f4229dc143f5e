// The simulator's only source of randomness: mulberry32, seeded per world.
// Every choice a world makes comes from one Prng, so a seed reproduces a run
// exactly (no Math.random, no clock).

import { mulberry32 } from '../../lib/util/prng';

export class Prng {
  readonly #next: () => number;

  constructor(seed: number) {
    this.#next = mulberry32(seed);
  }

  // A float in [0, 1).
  next(): number {
    return this.#next();
  }

  // An integer in [min, max] (inclusive).
  int(min: number, max: number): number {
    return min + Math.floor(this.next() * (max - min + 1));
  }

  chance(probability: number): boolean {
    return this.next() < probability;
  }

  pick<T>(items: readonly T[]): T {
    return items[Math.floor(this.next() * items.length)]!;
  }
}
