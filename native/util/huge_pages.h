// Anonymous memory advised for transparent huge pages: for buffers that are
// written and read all over for a long time (the ring's arena, the WAL's
// frame cache, recovery's read buffers, backlog slabs), where 4 KiB pages
// cost a TLB miss (on a VM, a two-level page walk) nearly every page touched.
#pragma once

#include <sys/mman.h>

#include <cstddef>

namespace blockwal {

// Zeroed pages, faulted in on first touch; nullptr with errno set when the
// mapping fails. The advice may be refused (huge pages off): the memory
// works the same. Release with munmap(mem, bytes).
inline void* map_huge_pages(size_t bytes) {
  void* mem = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) return nullptr;
  madvise(mem, bytes, MADV_HUGEPAGE);
  return mem;
}

}  // namespace blockwal
