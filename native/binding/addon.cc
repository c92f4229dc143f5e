// The addon's entry point: registers every binding class and function.
#include <napi.h>

#include "binding/init.h"

namespace {

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  blockwal::binding::init_ring(env, exports);
  blockwal::binding::init_wal(env, exports);
  blockwal::binding::init_wal_format(env, exports);
  blockwal::binding::init_bitmap(env, exports);
  blockwal::binding::init_lock(env, exports);
  blockwal::binding::init_extents(env, exports);
  blockwal::binding::init_memory(env, exports);
  blockwal::binding::init_pipeline(env, exports);
  return exports;
}

}  // namespace

NODE_API_MODULE(blockwal, Init)
