// Long-lived buffers on transparent huge pages. A replication backlog slab
// (4 MiB) gets a copy of every shipped record and is read again by the
// socket's writes; on 4 KiB pages each record lands on a page the TLB has not
// seen, and on a VM every such miss is a two-level page walk.
#include <sys/mman.h>

#include <cerrno>
#include <cstring>

#include "binding/errors.h"
#include "binding/init.h"
#include "util/huge_pages.h"

namespace blockwal::binding {

namespace {

constexpr uint32_t kHugeBufferBytesMax = 1u << 30;

void unmap(Napi::Env env, void* data, size_t* bytes) {
  munmap(data, *bytes);
  Napi::MemoryManagement::AdjustExternalMemory(env, -static_cast<int64_t>(*bytes));
  delete bytes;
}

// hugePageBuffer(bytes) -> ArrayBuffer: anonymous memory advised for huge
// pages and written whole (zeros), so using it takes no page faults. The
// mapping goes when the ArrayBuffer is collected.
Napi::Value huge_page_buffer(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t bytes = arg_u32(info, 0, "bytes", kHugeBufferBytesMax);
  if (bytes == 0) throw Napi::RangeError::New(env, "bytes must be positive");
  void* mem = map_huge_pages(bytes);
  if (mem == nullptr) throw_error(env, "ERR_NOMEM", "cannot map " + std::to_string(bytes) + " bytes", errno, "mmap");
  std::memset(mem, 0, bytes);
  Napi::MemoryManagement::AdjustExternalMemory(env, bytes);
  return Napi::ArrayBuffer::New(env, mem, bytes, unmap, new size_t(bytes));
}

}  // namespace

void init_memory(Napi::Env env, Napi::Object exports) {
  exports.Set("hugePageBuffer", Napi::Function::New(env, huge_page_buffer, "hugePageBuffer"));
}

}  // namespace blockwal::binding
