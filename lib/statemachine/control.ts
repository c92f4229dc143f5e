// Control entries: the WAL records that change a volume's replicated state
// rather than its blocks. A primary appends them like writes, replicas
// receive them like writes, and every node applies them through apply() in
// LSN order, so every node holds the same state at the same LSN. Pure: no
// I/O; the caller carries out the effects apply() returns.
//
// Entries:
//   epoch_barrier  opens an epoch: the first record a primary writes in a new
//                  epoch. Its commit commits everything before it.
//   feature_enable sets a feature bit (0..52); never cleared.
//   resize         grows the volume to sizeBytes (online grow; never shrinks).
//   durability     the primary's durability mode from this LSN on.
//
// Rules: an entry is checked before a primary appends it (check()); apply()
// of an entry that no longer fits the state (a resize that would not grow,
// say, because another one came first) changes nothing and says so: every
// node reaches the same verdict from the same state, so it stays a no-op
// everywhere and the chained checksum still covers it.
//
// Payload (little-endian, 16 bytes): 0 type u8, 1 version u8 (1), 2..7
// reserved 0, 8 value u64 (epoch, feature bit, sizeBytes, or the mode code).
import { BlockwalError } from '../native/errors';

export type DurabilityMode = 'best_effort' | 'sync_all' | 'sync_quorum';
export const DURABILITY_MODES: readonly DurabilityMode[] = ['best_effort', 'sync_all', 'sync_quorum'];

export type ControlEntry =
  | { readonly type: 'epoch_barrier'; readonly epoch: number }
  | { readonly type: 'feature_enable'; readonly feature: number }
  | { readonly type: 'resize'; readonly sizeBytes: number }
  | { readonly type: 'durability'; readonly mode: DurabilityMode };

export interface ReplicatedState {
  readonly epoch: number; // the newest epoch opened by a barrier
  readonly features: number; // bit set, below 2^53
  readonly sizeBytes: number;
  readonly durability: DurabilityMode | undefined; // undefined: never set by a record
}

export type ControlEffect = { readonly kind: 'grow'; readonly sizeBytes: number } | { readonly kind: 'durability'; readonly mode: DurabilityMode };

export interface Applied {
  readonly state: ReplicatedState;
  readonly effects: readonly ControlEffect[];
  readonly noop: string | undefined; // why the entry changed nothing
}

export const CONTROL_PAYLOAD_BYTES = 16;
const VERSION = 1;
const BLOCK_BYTES = 4096;
export const FEATURE_BITS = 53;
const TYPE_CODES = { epoch_barrier: 1, feature_enable: 2, resize: 3, durability: 4 } as const;
const TYPE_BY_CODE = new Map(Object.entries(TYPE_CODES).map(([k, v]) => [v as number, k as ControlEntry['type']]));
const MODE_CODES: Record<DurabilityMode, number> = { best_effort: 1, sync_all: 2, sync_quorum: 3 };
const MODE_BY_CODE = new Map(Object.entries(MODE_CODES).map(([k, v]) => [v, k as DurabilityMode]));

// The mode as a small number (superblock field; 0: none set) and back.
export function durabilityCode(mode: DurabilityMode | undefined): number {
  return mode === undefined ? 0 : MODE_CODES[mode];
}

export function durabilityOfCode(code: number): DurabilityMode | undefined {
  return MODE_BY_CODE.get(code);
}

function valueOf(entry: ControlEntry): number {
  switch (entry.type) {
    case 'epoch_barrier':
      return entry.epoch;
    case 'feature_enable':
      return entry.feature;
    case 'resize':
      return entry.sizeBytes;
    case 'durability':
      return MODE_CODES[entry.mode];
  }
}

export function encodeControl(entry: ControlEntry): Buffer {
  const out = Buffer.alloc(CONTROL_PAYLOAD_BYTES);
  const code = TYPE_CODES[entry.type];
  if (code === undefined) throw new RangeError(`unknown control entry type ${String(entry.type)}`);
  const value = valueOf(entry);
  if (!Number.isSafeInteger(value) || value < 0) throw new RangeError(`${entry.type}: value ${value} is not a non-negative safe integer`);
  out.writeUInt8(code, 0);
  out.writeUInt8(VERSION, 1);
  out.writeBigUInt64LE(BigInt(value), 8);
  return out;
}

// A payload that does not decode is ERR_CONTROL (never an exception of another kind).
export function decodeControl(payload: Uint8Array): ControlEntry {
  const bad = (why: string): BlockwalError => new BlockwalError('ERR_CONTROL', `control record: ${why}`);
  if (payload.byteLength !== CONTROL_PAYLOAD_BYTES) throw bad(`${payload.byteLength} bytes, expected ${CONTROL_PAYLOAD_BYTES}`);
  const b = Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength);
  if (b.readUInt8(1) !== VERSION) throw bad(`unknown version ${b.readUInt8(1)}`);
  for (let i = 2; i < 8; i++) if (b[i] !== 0) throw bad('reserved bytes are not zero');
  const big = b.readBigUInt64LE(8);
  if (big > BigInt(Number.MAX_SAFE_INTEGER)) throw bad('value beyond 2^53 - 1');
  const value = Number(big);
  const type = TYPE_BY_CODE.get(b.readUInt8(0));
  switch (type) {
    case 'epoch_barrier':
      return { type, epoch: value };
    case 'feature_enable':
      if (value >= FEATURE_BITS) throw bad(`feature bit ${value} is not below ${FEATURE_BITS}`);
      return { type, feature: value };
    case 'resize':
      if (value === 0 || value % BLOCK_BYTES !== 0) throw bad(`size ${value} is not a positive multiple of 4096`);
      return { type, sizeBytes: value };
    case 'durability': {
      const mode = MODE_BY_CODE.get(value);
      if (mode === undefined) throw bad(`unknown durability mode code ${value}`);
      return { type, mode };
    }
    default:
      throw bad(`unknown type code ${b.readUInt8(0)}`);
  }
}

// Why a primary may not append entry now (undefined: it may).
export function check(state: ReplicatedState, entry: ControlEntry, limits: { sizeBytesMax: number }): string | undefined {
  switch (entry.type) {
    case 'epoch_barrier':
      return entry.epoch < state.epoch ? `epoch ${entry.epoch} is below the opened epoch ${state.epoch}` : undefined;
    case 'feature_enable':
      return Number.isInteger(entry.feature) && entry.feature >= 0 && entry.feature < FEATURE_BITS ? undefined : `feature bit ${entry.feature} is not in [0, ${FEATURE_BITS})`;
    case 'resize':
      if (!Number.isSafeInteger(entry.sizeBytes) || entry.sizeBytes % BLOCK_BYTES !== 0) return `size ${entry.sizeBytes} is not a multiple of 4096`;
      if (entry.sizeBytes <= state.sizeBytes) return `size ${entry.sizeBytes} does not grow the volume (${state.sizeBytes} bytes): volumes only grow`;
      if (entry.sizeBytes > limits.sizeBytesMax) return `size ${entry.sizeBytes} is over the largest volume (${limits.sizeBytesMax} bytes)`;
      return undefined;
    case 'durability':
      return DURABILITY_MODES.includes(entry.mode) ? undefined : `unknown durability mode ${String(entry.mode)}`;
  }
}

export function apply(state: ReplicatedState, entry: ControlEntry): Applied {
  const noop = (why: string): Applied => ({ state, effects: [], noop: why });
  switch (entry.type) {
    case 'epoch_barrier':
      if (entry.epoch < state.epoch) return noop(`barrier of epoch ${entry.epoch} after epoch ${state.epoch} was opened`);
      return { state: { ...state, epoch: entry.epoch }, effects: [], noop: undefined };
    case 'feature_enable': {
      const bit = 2 ** entry.feature;
      if (Math.floor(state.features / bit) % 2 === 1) return noop(`feature ${entry.feature} is already enabled`);
      return { state: { ...state, features: state.features + bit }, effects: [], noop: undefined };
    }
    case 'resize':
      if (entry.sizeBytes <= state.sizeBytes) return noop(`size ${entry.sizeBytes} does not grow ${state.sizeBytes}`);
      return { state: { ...state, sizeBytes: entry.sizeBytes }, effects: [{ kind: 'grow', sizeBytes: entry.sizeBytes }], noop: undefined };
    case 'durability':
      if (entry.mode === state.durability) return noop(`durability is already ${entry.mode}`);
      return { state: { ...state, durability: entry.mode }, effects: [{ kind: 'durability', mode: entry.mode }], noop: undefined };
  }
}
