// Ring: the JS object that owns one io_uring, its arena and its files.
// Completions are watched with a uv_poll handle on the ring fd on Node's own
// loop; each wake-up drains every CQE, lets the attached WAL writer submit
// what follows, then makes one JS call with the batch (tags and results in a
// shared Int32Array). The poll handle is unref'd while nothing is in flight.
#pragma once

#include <napi.h>
#include <uv.h>

#include <functional>
#include <vector>

#include "ring/ring.h"

namespace blockwal::wal {
class Writer;
}

namespace blockwal::binding {

class RingWrap : public Napi::ObjectWrap<RingWrap>, public ring::Owner {
 public:
  static Napi::Function define(Napi::Env env);
  explicit RingWrap(const Napi::CallbackInfo& info);
  ~RingWrap() override;

  ring::Ring& ring() { return ring_; }
  bool open() const { return open_; }
  // One WAL writer may be attached: it is kicked after every drain and its
  // state published before the JS call.
  void attach_writer(wal::Writer* writer, std::function<void()> publish);
  void detach_writer();
  void update_ref();

  void on_complete(uint64_t cookie, int32_t result) override;

 private:
  static void on_poll(uv_poll_t* handle, int status, int events);
  void handle_poll();

  Napi::Value submit(const Napi::CallbackInfo& info);
  Napi::Value kick(const Napi::CallbackInfo& info);
  Napi::Value open_file(const Napi::CallbackInfo& info);
  Napi::Value close_file(const Napi::CallbackInfo& info);
  Napi::Value adopt_fd(const Napi::CallbackInfo& info);
  Napi::Value file_size(const Napi::CallbackInfo& info);
  Napi::Value inject_fault(const Napi::CallbackInfo& info);
  Napi::Value clear_faults(const Napi::CallbackInfo& info);
  Napi::Value set_shuffle(const Napi::CallbackInfo& info);
  Napi::Value set_trace(const Napi::CallbackInfo& info);
  Napi::Value take_trace(const Napi::CallbackInfo& info);
  Napi::Value set_recording(const Napi::CallbackInfo& info);
  Napi::Value record_mark(const Napi::CallbackInfo& info);
  Napi::Value take_recording(const Napi::CallbackInfo& info);
  Napi::Value info(const Napi::CallbackInfo& info);
  Napi::Value claim_js_region(const Napi::CallbackInfo& info);
  Napi::Value close(const Napi::CallbackInfo& info);
  int file_fd(Napi::Env env, uint32_t file_id);

  ring::Ring ring_;
  bool open_ = false;
  uv_poll_t* poll_ = nullptr;
  bool referenced_ = false;
  Napi::FunctionReference on_drain_;
  Napi::ObjectReference arena_ref_;
  Napi::ObjectReference completions_ref_;
  int32_t* completions_ = nullptr;  // [tag, result] pairs
  uint32_t completions_capacity_ = 0;
  uint32_t completions_count_ = 0;
  std::vector<int> fds_;     // file id -> fd (-1 when closed)
  std::vector<bool> owned_;  // file id -> the ring closes it (adopted fds are not)
  wal::Writer* writer_ = nullptr;
  std::function<void()> publish_;
  napi_env env_ = nullptr;
  napi_async_context async_context_ = nullptr;
};

}  // namespace blockwal::binding
