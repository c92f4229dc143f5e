// Fencing by epoch: what a node does with a frame, from its own epoch and
// role and the epoch the frame carries. Pure: no clock, no I/O.
//
// Rules (DESIGN.md §4), as one table:
//  - a frame from a lower epoch is refused, whoever we are (a deposed primary
//    must never get a record or an ack accepted);
//  - an equal epoch is accepted;
//  - a higher epoch means someone newer was appointed: a primary steps down
//    (stops accepting writes before anything else); a replica adopts it, and
//    must persist the new epoch before acting on this or any later frame, so
//    that a restart cannot bring it back in the old epoch.
// Epochs are integers in [0, EPOCH_MAX] (exact JS numbers, like the WAL's).
import { assertNever } from '../util/assert';

export type Role = 'primary' | 'replica';

export const ROLES: readonly Role[] = ['primary', 'replica'];

export const EPOCH_MAX = Number.MAX_SAFE_INTEGER;

export type EpochOutcome = 'accept' | 'refuse' | 'step_down' | 'adopt';

export type EpochDecision =
  | { readonly outcome: 'accept' }
  // reason names the close code an ERROR frame to the sender carries.
  | { readonly outcome: 'refuse'; readonly reason: 'stale_epoch'; readonly message: string }
  | { readonly outcome: 'step_down'; readonly epochSeen: number }
  // The caller persists epochNew, then handles the frame as accepted.
  | { readonly outcome: 'adopt'; readonly epochNew: number };

type EpochOrder = 'lower' | 'equal' | 'higher';

// The frame's epoch relative to ours → what we do, per role.
const EPOCH_RULES: Readonly<Record<Role, Readonly<Record<EpochOrder, EpochOutcome>>>> = {
  primary: { lower: 'refuse', equal: 'accept', higher: 'step_down' },
  replica: { lower: 'refuse', equal: 'accept', higher: 'adopt' },
};

export function checkEpoch(localEpoch: number, frameEpoch: number, localRole: Role): EpochDecision {
  checkEpochValue('localEpoch', localEpoch);
  checkEpochValue('frameEpoch', frameEpoch);
  const rules = EPOCH_RULES[localRole];
  if (rules === undefined) throw new RangeError(`localRole must be primary or replica, got ${String(localRole)}`);
  const order: EpochOrder = frameEpoch < localEpoch ? 'lower' : frameEpoch === localEpoch ? 'equal' : 'higher';
  const outcome = rules[order];
  switch (outcome) {
    case 'accept':
      return { outcome };
    case 'refuse':
      return { outcome, reason: 'stale_epoch', message: `stale epoch: frame epoch ${frameEpoch} < local epoch ${localEpoch}` };
    case 'step_down':
      return { outcome, epochSeen: frameEpoch };
    case 'adopt':
      return { outcome, epochNew: frameEpoch };
    default:
      return assertNever(outcome);
  }
}

function checkEpochValue(name: string, epoch: number): void {
  if (!Number.isSafeInteger(epoch) || epoch < 0) {
    throw new RangeError(`${name} must be an integer in [0, ${EPOCH_MAX}], got ${epoch}`);
  }
}
