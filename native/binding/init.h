// One Init function per binding file; addon.cc calls them all.
#pragma once

#include <napi.h>

namespace blockwal::binding {

void init_ring(Napi::Env env, Napi::Object exports);        // ring_binding.cc: Ring (io_uring, arena, files)
void init_wal(Napi::Env env, Napi::Object exports);         // wal_binding.cc: Wal (segments, group commit)
void init_wal_format(Napi::Env env, Napi::Object exports);  // wal_format_binding.cc: record/frame codec, scanWal
void init_bitmap(Napi::Env env, Napi::Object exports);      // bitmap_binding.cc: Bitmap (mmap'd dense bitmap)
void init_lock(Napi::Env env, Napi::Object exports);        // lock_binding.cc: flock for volume directories
void init_extents(Napi::Env env, Napi::Object exports);     // extents_binding.cc: data ranges of sparse files
void init_memory(Napi::Env env, Napi::Object exports);      // memory_binding.cc: buffers on huge pages
void init_pipeline(Napi::Env env, Napi::Object exports);    // pipeline_binding.cc: CommitPipeline (test hook)

}  // namespace blockwal::binding
