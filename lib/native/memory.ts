// Long-lived buffers on transparent huge pages (native/binding/memory_binding.cc).
import { addon } from './addon';
import { nativeCall } from './errors';

interface RawMemory {
  hugePageBuffer(bytes: number): ArrayBuffer;
}

// bytes of zeros, already written (no page faults on use), advised for huge
// pages; the memory goes with the last view. Fewer TLB misses than 4 KiB
// pages for a buffer that is written and read all over for a long time.
export function hugePageBuffer(bytes: number): Buffer {
  const raw = addon() as unknown as RawMemory;
  return Buffer.from(nativeCall(() => raw.hugePageBuffer(bytes)));
}
