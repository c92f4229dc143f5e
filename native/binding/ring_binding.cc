#include "binding/ring_binding.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>

#include "binding/errors.h"
#include "binding/init.h"
#include "util/assert.h"
#include "util/constants.h"
#include "wal/writer.h"

namespace blockwal::binding {

namespace {

// Ring slots JS may not take, so the WAL writer can always submit a group.
constexpr uint32_t kWriterReservedSlots = 16;
constexpr uint32_t kDescriptorFields = 7;  // op, fileId, arenaOffset, lengthBytes, fileOffset, flags, tag
constexpr uint32_t kOpFlagDsync = 1;

}  // namespace

Napi::Function RingWrap::define(Napi::Env env) {
  return DefineClass(env, "Ring",
                     {
                         InstanceMethod<&RingWrap::submit>("submit"),
                         InstanceMethod<&RingWrap::kick>("kick"),
                         InstanceMethod<&RingWrap::open_file>("openFile"),
                         InstanceMethod<&RingWrap::close_file>("closeFile"),
                         InstanceMethod<&RingWrap::adopt_fd>("adoptFd"),
                         InstanceMethod<&RingWrap::file_size>("fileSize"),
                         InstanceMethod<&RingWrap::inject_fault>("injectFault"),
                         InstanceMethod<&RingWrap::clear_faults>("clearFaults"),
                         InstanceMethod<&RingWrap::set_shuffle>("setShuffle"),
                         InstanceMethod<&RingWrap::set_trace>("setTrace"),
                         InstanceMethod<&RingWrap::take_trace>("takeTrace"),
                         InstanceMethod<&RingWrap::set_recording>("setRecording"),
                         InstanceMethod<&RingWrap::record_mark>("recordMark"),
                         InstanceMethod<&RingWrap::take_recording>("takeRecording"),
                         InstanceMethod<&RingWrap::info>("info"),
                         InstanceMethod<&RingWrap::claim_js_region>("claimJsRegion"),
                         InstanceMethod<&RingWrap::close>("close"),
                     });
}

// new Ring(depth, arenaBytes, onDrain(jsCompletionCount), registerBuffers)
RingWrap::RingWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<RingWrap>(info) {
  Napi::Env env = info.Env();
  env_ = env;
  uint32_t depth = arg_u32(info, 0, "depth", kRingDepthMax);
  uint64_t arena_bytes = arg_u64(info, 1, "arenaBytes", 1ull << 34);
  if (depth < 8 + kWriterReservedSlots) throw Napi::RangeError::New(env, "depth must be at least 24");
  if (arena_bytes == 0 || !is_aligned(arena_bytes, kDirectAlignBytes)) {
    throw Napi::RangeError::New(env, "arenaBytes must be a positive multiple of 4096");
  }
  if (info.Length() < 3 || !info[2].IsFunction()) throw Napi::TypeError::New(env, "onDrain must be a function");
  bool register_buffers = info.Length() < 4 || info[3].ToBoolean().Value();
  std::string what;
  int rc = ring_.init(depth, arena_bytes, register_buffers, &what);
  if (rc < 0) throw_error(env, "ERR_RING_SETUP", "io_uring set-up failed at " + what, -rc, "io_uring_setup");

  on_drain_ = Napi::Persistent(info[2].As<Napi::Function>());
  Napi::ArrayBuffer arena = Napi::ArrayBuffer::New(env, ring_.arena(), ring_.arena_bytes());
  arena_ref_ = Napi::Persistent(arena.As<Napi::Object>());
  completions_capacity_ = depth;
  Napi::ArrayBuffer completions = Napi::ArrayBuffer::New(env, completions_capacity_ * 2 * sizeof(int32_t));
  completions_ = static_cast<int32_t*>(completions.Data());
  completions_ref_ = Napi::Persistent(completions.As<Napi::Object>());
  info.This().As<Napi::Object>().Set("arena", arena);
  info.This().As<Napi::Object>().Set("completions", Napi::Int32Array::New(env, completions_capacity_ * 2, completions, 0));

  napi_value resource_name = Napi::String::New(env, "blockwal.ring");
  NAPI_THROW_IF_FAILED_VOID(env, napi_async_init(env, info.This(), resource_name, &async_context_));

  uv_loop_t* loop = nullptr;
  NAPI_THROW_IF_FAILED_VOID(env, napi_get_uv_event_loop(env, &loop));
  poll_ = new uv_poll_t{};
  poll_->data = this;
  BW_ASSERT(uv_poll_init(loop, poll_, ring_.fd()) == 0);
  BW_ASSERT(uv_poll_start(poll_, UV_READABLE, &RingWrap::on_poll) == 0);
  uv_unref(reinterpret_cast<uv_handle_t*>(poll_));
  open_ = true;
  Ref();  // stays alive while open: the poll handle points at it
}

RingWrap::~RingWrap() {
  if (async_context_ != nullptr) napi_async_destroy(env_, async_context_);
}

void RingWrap::attach_writer(wal::Writer* writer, std::function<void()> publish) {
  BW_ASSERT(writer_ == nullptr);
  writer_ = writer;
  publish_ = std::move(publish);
}

void RingWrap::detach_writer() {
  writer_ = nullptr;
  publish_ = nullptr;
}

void RingWrap::update_ref() {
  bool want = ring_.in_flight() > 0;
  if (want == referenced_ || poll_ == nullptr) return;
  referenced_ = want;
  if (want) uv_ref(reinterpret_cast<uv_handle_t*>(poll_));
  else uv_unref(reinterpret_cast<uv_handle_t*>(poll_));
}

void RingWrap::on_complete(uint64_t cookie, int32_t result) {
  BW_ASSERT(completions_count_ < completions_capacity_);
  completions_[completions_count_ * 2] = static_cast<int32_t>(cookie);
  completions_[completions_count_ * 2 + 1] = result;
  completions_count_++;
}

void RingWrap::on_poll(uv_poll_t* handle, int, int) {
  static_cast<RingWrap*>(handle->data)->handle_poll();
}

void RingWrap::handle_poll() {
  if (!open_) return;
  Napi::Env env(env_);
  Napi::HandleScope scope(env);
  completions_count_ = 0;
  // Nothing is submitted here: JS kicks once per loop iteration, after this
  // and every other callback of its poll phase (Ring.scheduleKick), so what
  // the completions let the writer submit goes with the requests read
  // meanwhile, in one kernel entry.
  uint32_t reaped = ring_.drain();
  update_ref();
  if (reaped == 0) return;
  if (publish_) publish_();
  try {
    on_drain_.MakeCallback(Value(), {Napi::Number::New(env, completions_count_)}, async_context_);
  } catch (const Napi::Error& e) {
    napi_fatal_exception(env_, e.Value());
  }
}

int RingWrap::file_fd(Napi::Env env, uint32_t file_id) {
  if (file_id >= fds_.size() || fds_[file_id] < 0) throw Napi::RangeError::New(env, "unknown fileId");
  return fds_[file_id];
}

namespace {

// Checks one JS descriptor; false when it must not reach the kernel.
bool descriptor_valid(const ring::Ring& ring, ring::OpKind kind, uint64_t arena_offset, uint64_t length,
                      uint64_t file_offset) {
  if (kind < ring::OpKind::read || kind > ring::OpKind::nop) return false;
  if (kind == ring::OpKind::read || kind == ring::OpKind::write) {
    return is_aligned(arena_offset, kDirectAlignBytes) && is_aligned(length, kBlockBytes) && length > 0 &&
           length <= (1u << 30) && is_aligned(file_offset, kBlockBytes) && arena_offset >= ring.reserved_bytes() &&
           arena_offset + length <= ring.arena_bytes();
  }
  if (kind == ring::OpKind::punch_hole) return length > 0 && length <= UINT32_MAX;
  return true;
}

}  // namespace

// submit(descriptors: Float64Array, count) -> accepted, or -(accepted + 1)
// when descriptor #accepted is malformed (unaligned, outside the JS arena,
// unknown kind or file): the ones before it were queued, it was not.
Napi::Value RingWrap::submit(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!open_) throw_error(env, "ERR_RING_CLOSED", "the ring is closed");
  if (info.Length() < 2 || !info[0].IsTypedArray()) throw Napi::TypeError::New(env, "descriptors must be a Float64Array");
  Napi::Float64Array desc = info[0].As<Napi::Float64Array>();
  uint32_t count = arg_u32(info, 1, "count", static_cast<uint32_t>(desc.ElementLength() / kDescriptorFields));
  for (uint32_t i = 0; i < count; i++) {
    if (ring_.slots_free() <= kWriterReservedSlots) return Napi::Number::New(env, i);
    const double* d = desc.Data() + i * kDescriptorFields;
    auto kind = static_cast<ring::OpKind>(static_cast<int>(d[0]));
    auto file_id = static_cast<uint64_t>(d[1]);
    auto arena_offset = static_cast<uint64_t>(d[2]);
    auto length = static_cast<uint64_t>(d[3]);
    auto file_offset = static_cast<uint64_t>(d[4]);
    if (file_id >= fds_.size() || fds_[file_id] < 0 || !descriptor_valid(ring_, kind, arena_offset, length, file_offset)) {
      return Napi::Number::New(env, -static_cast<double>(i) - 1);
    }
    int rw_flags = (kind == ring::OpKind::write && (static_cast<uint32_t>(d[5]) & kOpFlagDsync)) ? RWF_DSYNC : 0;
    ring::Op op{kind, fds_[file_id], arena_offset, static_cast<uint32_t>(length), file_offset, rw_flags, ring::Purpose::js};
    ring_.prep(op, this, static_cast<uint32_t>(d[6]));
  }
  return Napi::Number::New(env, count);
}

// kick(): submits what JS and the attached writer queued this turn. Returns
// the microseconds the writer still holds its open group (0: none held).
Napi::Value RingWrap::kick(const Napi::CallbackInfo& info) {
  if (!open_) return Napi::Number::New(info.Env(), 0);
  uint32_t held_us = writer_ != nullptr ? writer_->kick() : 0;
  int rc = ring_.submit();
  update_ref();
  if (publish_) publish_();
  if (rc < 0 && rc != -EAGAIN && rc != -EBUSY && rc != -EINTR) {
    throw_error(info.Env(), "ERR_IO", "io_uring_submit failed", -rc, "io_uring_enter");
  }
  return Napi::Number::New(info.Env(), held_us);
}

void init_ring(Napi::Env env, Napi::Object exports) { exports.Set("Ring", RingWrap::define(env)); }

}  // namespace blockwal::binding
