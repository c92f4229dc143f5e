// Large, long-lived buffers outside the JS heap, backed by transparent huge
// pages where the kernel grants them (native/binding/memory_binding.cc).
import { addon } from './addon';
import { nativeCall } from './errors';

interface RawMemory {
  allocHugePages(bytes: number): ArrayBuffer;
}

// A zeroed buffer of `bytes` (a multiple of 4096), 2 MiB aligned; freed when collected.
export function allocHugePages(bytes: number): Buffer {
  const raw = addon() as unknown as RawMemory;
  return Buffer.from(nativeCall(() => raw.allocHugePages(bytes)));
}
