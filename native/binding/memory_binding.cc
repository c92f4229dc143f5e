// Large, long-lived buffers for JS (the block cache's slabs): anonymous
// mappings aligned to 2 MiB and advised to use transparent huge pages, so
// random 4 KiB accesses across gigabytes do not miss the TLB on every block
// (under nested paging a miss walks two page tables). Freed by munmap when
// the ArrayBuffer is collected.
#include <sys/mman.h>

#include <cerrno>
#include <cstdint>

#include "binding/errors.h"
#include "binding/init.h"

namespace blockwal::binding {

namespace {

constexpr uint64_t kHugePageBytes = 2ull << 20;

// allocHugePages(bytes) -> ArrayBuffer of bytes (a multiple of 4096), zeroed.
Napi::Value alloc_huge_pages(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint64_t bytes = arg_u64(info, 0, "bytes", 1ull << 40);
  if (bytes == 0 || bytes % 4096 != 0) throw Napi::RangeError::New(env, "bytes must be a positive multiple of 4096");
  // Map extra and trim to a 2 MiB boundary, so whole huge pages fit.
  uint64_t mapped = bytes + kHugePageBytes;
  void* raw = mmap(nullptr, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) throw_error(env, "ERR_NOMEM", "cannot map " + std::to_string(bytes) + " bytes", errno, "mmap");
  auto start = reinterpret_cast<uintptr_t>(raw);
  uintptr_t aligned = (start + kHugePageBytes - 1) & ~(kHugePageBytes - 1);
  if (aligned > start) munmap(raw, aligned - start);
  uintptr_t end = start + mapped;
  if (end > aligned + bytes) munmap(reinterpret_cast<void*>(aligned + bytes), end - (aligned + bytes));
  void* mem = reinterpret_cast<void*>(aligned);
  madvise(mem, bytes, MADV_HUGEPAGE);  // advice only: may be refused
  auto* length = new uint64_t(bytes);
  return Napi::ArrayBuffer::New(
      env, mem, bytes,
      [](Napi::Env, void* data, uint64_t* len) {
        munmap(data, *len);
        delete len;
      },
      length);
}

}  // namespace

void init_memory(Napi::Env env, Napi::Object exports) {
  exports.Set("allocHugePages", Napi::Function::New(env, alloc_huge_pages, "allocHugePages"));
}

}  // namespace blockwal::binding
