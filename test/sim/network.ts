// The simulated network: every message gets a random delay (so messages
// reorder), and during the fault phase may be dropped, duplicated, cut by a
// partition (one-way or both ways) or — a base chunk's data — corrupted.
// After the fault phase only delay remains. Delivery is in (due step, send
// order), so a seed gives one order.
import { BLOCK_BYTES, type Faults, FAULT_END_STEP, type Profile, type ToPrimary, type ToReplica } from './model';
import type { Prng } from './prng';

export const PRIMARY = 'p';

export interface Envelope {
  dueStep: number;
  seq: number;
  from: string;
  to: string;
  msg: ToReplica | ToPrimary;
}

export class Network {
  #queue: Envelope[] = [];
  #seq = 0;
  // Per replica: until which step each direction is cut.
  readonly #cutToReplica = new Map<string, number>();
  readonly #cutToPrimary = new Map<string, number>();

  constructor(
    private readonly prng: Prng,
    private readonly profile: Profile,
    private readonly faults: Faults,
  ) {}

  get inFlight(): number {
    return this.#queue.length;
  }

  partition(replica: string, nowStep: number, lengthSteps: number, direction: 'both' | 'to_replica' | 'to_primary'): void {
    if (direction !== 'to_primary') this.#cutToReplica.set(replica, nowStep + lengthSteps);
    if (direction !== 'to_replica') this.#cutToPrimary.set(replica, nowStep + lengthSteps);
  }

  send(nowStep: number, from: string, to: string, msg: ToReplica | ToPrimary): void {
    const faulty = nowStep < FAULT_END_STEP;
    if (faulty) {
      const replica = from === PRIMARY ? to : from;
      const cut = from === PRIMARY ? this.#cutToReplica.get(replica) : this.#cutToPrimary.get(replica);
      if (cut !== undefined && nowStep < cut) return;
      if (this.prng.chance(this.profile.dropChance)) {
        this.faults.drops++;
        return;
      }
    }
    let body = msg;
    if (faulty && body.t === 'chunk' && this.prng.chance(this.profile.corruptChunkChance)) {
      const data = Uint8Array.from(body.data);
      const block = this.prng.int(0, data.length / BLOCK_BYTES - 1);
      data[block * BLOCK_BYTES + 3] ^= 1 << this.prng.int(0, 7);
      body = { ...body, data };
      this.faults.corruptChunks++;
    }
    this.#enqueue(nowStep, from, to, body);
    if (faulty && this.prng.chance(this.profile.duplicateChance)) {
      this.faults.duplicates++;
      this.#enqueue(nowStep, from, to, body);
    }
  }

  #enqueue(nowStep: number, from: string, to: string, msg: ToReplica | ToPrimary): void {
    const dueStep = nowStep + this.prng.int(1, this.profile.delayStepsMax);
    this.#queue.push({ dueStep, seq: this.#seq++, from, to, msg });
  }

  // The messages due at nowStep, in (due step, send order).
  due(nowStep: number): Envelope[] {
    const out: Envelope[] = [];
    const keep: Envelope[] = [];
    for (const e of this.#queue) (e.dueStep <= nowStep ? out : keep).push(e);
    this.#queue = keep;
    return out.sort((a, b) => a.dueStep - b.dueStep || a.seq - b.seq);
  }
}
