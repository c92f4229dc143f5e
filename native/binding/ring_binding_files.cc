// Ring: files, test hooks, info and close.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>

#include "binding/errors.h"
#include "binding/ring_binding.h"
#include "util/assert.h"

namespace blockwal::binding {

namespace {
constexpr uint32_t kFileFlagWrite = 1, kFileFlagCreate = 2, kFileFlagExclusive = 4, kFileFlagDirect = 8;
constexpr uint32_t kTraceFields = 13;
constexpr uint32_t kRecordFields = 18;
constexpr uint64_t kRecordingCapMax = 8ull << 30;
}  // namespace

// openFile(path, flags) -> fileId. Flags: 1 write, 2 create, 4 exclusive, 8 O_DIRECT.
Napi::Value RingWrap::open_file(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!open_) throw_error(env, "ERR_RING_CLOSED", "the ring is closed");
  std::string path = arg_string(info, 0, "path");
  uint32_t flags = arg_u32(info, 1, "flags", 15);
  int oflags = O_CLOEXEC | ((flags & kFileFlagWrite) ? O_RDWR : O_RDONLY);
  if (flags & kFileFlagCreate) oflags |= O_CREAT;
  if (flags & kFileFlagExclusive) oflags |= O_EXCL;
  if (flags & kFileFlagDirect) oflags |= O_DIRECT;
  int fd = ::open(path.c_str(), oflags, 0644);
  if (fd < 0) throw_error(env, "ERR_OPEN", "cannot open " + path, errno, "open");
  for (uint32_t i = 0; i < fds_.size(); i++) {
    if (fds_[i] < 0) {
      fds_[i] = fd;
      if (i < owned_.size()) owned_[i] = true;
      return Napi::Number::New(env, i);
    }
  }
  fds_.push_back(fd);
  return Napi::Number::New(env, static_cast<double>(fds_.size() - 1));
}

// adoptFd(fd) -> fileId for a descriptor the ring does not own (a mapped
// bitmap's): operations may use it; closeFile forgets it without closing.
Napi::Value RingWrap::adopt_fd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!open_) throw_error(env, "ERR_RING_CLOSED", "the ring is closed");
  int fd = static_cast<int>(arg_u32(info, 0, "fd", INT32_MAX));
  if (fcntl(fd, F_GETFD) < 0) throw_error(env, "ERR_OPEN", "not an open file descriptor", errno, "fcntl");
  fds_.push_back(fd);
  owned_.resize(fds_.size(), true);
  owned_[fds_.size() - 1] = false;
  return Napi::Number::New(env, static_cast<double>(fds_.size() - 1));
}

Napi::Value RingWrap::close_file(const Napi::CallbackInfo& info) {
  uint32_t id = arg_u32(info, 0, "fileId", UINT32_MAX);
  int fd = file_fd(info.Env(), id);
  if (id >= owned_.size() || owned_[id]) ::close(fd);
  fds_[id] = -1;
  return info.Env().Undefined();
}

Napi::Value RingWrap::file_size(const Napi::CallbackInfo& info) {
  int fd = file_fd(info.Env(), arg_u32(info, 0, "fileId", UINT32_MAX));
  struct stat st {};
  if (fstat(fd, &st) != 0) throw_error(info.Env(), "ERR_IO", "fstat failed", errno, "fstat");
  return Napi::Number::New(info.Env(), static_cast<double>(st.st_size));
}

// injectFault(kind, purpose, skip, errno, shortWrite): the (skip+1)-th op of
// that kind and purpose (255 = any purpose) reports -errno (or a short write)
// without reaching the disk.
Napi::Value RingWrap::inject_fault(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t kind = arg_u32(info, 0, "kind", 6);
  if (kind == 0) throw Napi::RangeError::New(env, "unknown op kind");
  auto purpose = static_cast<ring::Purpose>(arg_u32(info, 1, "purpose", 255));
  uint32_t skip = arg_u32(info, 2, "skip", 1u << 30);
  int32_t err = static_cast<int32_t>(arg_u32(info, 3, "errno", 4095));
  bool short_write = arg_bool(info, 4, "shortWrite");
  ring_.add_fault(ring::FaultRule{static_cast<ring::OpKind>(kind), purpose, skip, err, short_write, true});
  return env.Undefined();
}

Napi::Value RingWrap::clear_faults(const Napi::CallbackInfo& info) {
  ring_.clear_faults();
  return info.Env().Undefined();
}

// setShuffle(seed | null)
Napi::Value RingWrap::set_shuffle(const Napi::CallbackInfo& info) {
  if (info.Length() > 0 && info[0].IsNumber()) ring_.set_shuffle(true, static_cast<uint64_t>(info[0].As<Napi::Number>().Int64Value()));
  else ring_.set_shuffle(false, 0);
  return info.Env().Undefined();
}

Napi::Value RingWrap::set_trace(const Napi::CallbackInfo& info) {
  ring_.set_trace(arg_bool(info, 0, "on"));
  return info.Env().Undefined();
}

// takeTrace() -> Float64Array, 13 fields per event:
// seq, type (1 submit, 2 complete, 3 event), kind, fd, offset, length, flags, result, a, b, purpose, slot, time_ns
Napi::Value RingWrap::take_trace(const Napi::CallbackInfo& info) {
  std::vector<ring::TraceEvent> events = ring_.take_trace();
  Napi::Float64Array out = Napi::Float64Array::New(info.Env(), events.size() * kTraceFields);
  for (size_t i = 0; i < events.size(); i++) {
    const ring::TraceEvent& e = events[i];
    double* f = out.Data() + i * kTraceFields;
    f[0] = static_cast<double>(e.seq);
    f[1] = static_cast<double>(e.type);
    f[2] = e.kind;
    f[3] = e.fd;
    f[4] = static_cast<double>(e.offset);
    f[5] = e.length;
    f[6] = e.flags;
    f[7] = e.result;
    f[8] = static_cast<double>(e.a);
    f[9] = static_cast<double>(e.b);
    f[10] = static_cast<double>(e.purpose);
    f[11] = e.slot;
    f[12] = static_cast<double>(e.time_ns);
  }
  return out;
}

// setRecording(on, capBytes, withData): starts a fresh recording (bounded by
// capBytes of events and data; writes without their bytes unless withData)
// or stops it.
Napi::Value RingWrap::set_recording(const Napi::CallbackInfo& info) {
  bool on = arg_bool(info, 0, "on");
  uint64_t cap = on ? arg_u64(info, 1, "capBytes", kRecordingCapMax) : 0;
  bool with_data = on ? arg_bool(info, 2, "withData") : false;
  ring_.set_recording(on, cap, with_data);
  return info.Env().Undefined();
}

// recordMark(kind, a, b) -> seq of the mark (0 when not recording).
Napi::Value RingWrap::record_mark(const Napi::CallbackInfo& info) {
  uint32_t kind = arg_u32(info, 0, "kind", 255);
  uint64_t a = arg_u64(info, 1, "a", 1ull << 53);
  uint64_t b = arg_u64(info, 2, "b", 1ull << 53);
  return Napi::Number::New(info.Env(), static_cast<double>(ring_.record_mark(static_cast<uint8_t>(kind), a, b)));
}

// takeRecording() -> { events: Float64Array (18 fields per event), data: Buffer }.
// Fields: seq, type (1 submit, 2 complete, 3 mark, 4 file, 5 dir), kind,
// purpose, bits, fd, result, flags, slot, length, offset, dev, ino, a, b,
// dataOffset (-1: none), dataBytes, timeNs. Throws ERR_RECORDING_FULL when the
// cap was reached (the recording is incomplete and must not be trusted).
Napi::Value RingWrap::take_recording(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  ring::Recording rec = ring_.take_recording();
  if (rec.overflow) {
    throw_error(env, "ERR_RECORDING_FULL",
                "the recording reached its cap of " + std::to_string(rec.cap_bytes) + " bytes and is incomplete");
  }
  Napi::Float64Array events = Napi::Float64Array::New(env, rec.events.size() * kRecordFields);
  for (size_t i = 0; i < rec.events.size(); i++) {
    const ring::RecordEvent& e = rec.events[i];
    double* f = events.Data() + i * kRecordFields;
    f[0] = static_cast<double>(e.seq);
    f[1] = static_cast<double>(e.type);
    f[2] = e.kind;
    f[3] = static_cast<double>(e.purpose);
    f[4] = e.bits;
    f[5] = e.fd;
    f[6] = e.result;
    f[7] = e.flags;
    f[8] = e.slot;
    f[9] = e.length;
    f[10] = static_cast<double>(e.offset);
    f[11] = static_cast<double>(e.dev);
    f[12] = static_cast<double>(e.ino);
    f[13] = static_cast<double>(e.a);
    f[14] = static_cast<double>(e.b);
    f[15] = e.data_offset == UINT64_MAX ? -1.0 : static_cast<double>(e.data_offset);
    f[16] = static_cast<double>(e.data_bytes);
    f[17] = static_cast<double>(e.time_ns);
  }
  Napi::Object out = Napi::Object::New(env);
  out.Set("events", events);
  out.Set("data", Napi::Buffer<uint8_t>::Copy(env, rec.data.data(), rec.data.size()));
  return out;
}

// claimJsRegion() -> first arena byte JS may use.
Napi::Value RingWrap::claim_js_region(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(ring_.claim_js_region()));
}

Napi::Value RingWrap::info(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  o.Set("open", open_);
  o.Set("depth", ring_.depth());
  o.Set("inFlight", ring_.in_flight());
  o.Set("slotsFree", ring_.slots_free());
  o.Set("arenaBytes", static_cast<double>(ring_.arena_bytes()));
  o.Set("reservedBytes", static_cast<double>(ring_.reserved_bytes()));
  o.Set("buffersRegistered", ring_.buffers_registered());
  o.Set("coopTaskrun", ring_.coop_taskrun());
  o.Set("recording", ring_.recording());
  o.Set("recordingBytes", static_cast<double>(ring_.recording_bytes()));
  return o;
}

Napi::Value RingWrap::close(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!open_) return env.Undefined();
  if (writer_ != nullptr) throw_error(env, "ERR_RING_BUSY", "close the WAL before its ring");
  if (ring_.in_flight() > 0) throw_error(env, "ERR_RING_BUSY", "operations are still in flight");
  for (size_t i = 0; i < fds_.size(); i++) {
    if (fds_[i] >= 0 && (i >= owned_.size() || owned_[i])) ::close(fds_[i]);
    fds_[i] = -1;
  }
  uv_poll_stop(poll_);
  uv_close(reinterpret_cast<uv_handle_t*>(poll_), [](uv_handle_t* h) { delete reinterpret_cast<uv_poll_t*>(h); });
  poll_ = nullptr;
  // JS views of the arena must not outlive it.
  arena_ref_.Value().As<Napi::ArrayBuffer>().Detach();
  arena_ref_.Reset();
  ring_.shutdown();
  open_ = false;
  Unref();
  return env.Undefined();
}

}  // namespace blockwal::binding
