// Always-on assertions for the replication modules. A failed assert is a bug
// in blockwal (never an expected failure of a peer or a disk): it throws a
// plain Error, which no caller catches as a protocol outcome.

export function assert(condition: boolean, message: string): asserts condition {
  if (!condition) throw new Error(`assertion failed: ${message}`);
}

// Ends every switch over a union, so adding a member fails to compile until
// each switch handles it.
export function assertNever(value: never): never {
  throw new Error(`unreachable: ${String(value)}`);
}
