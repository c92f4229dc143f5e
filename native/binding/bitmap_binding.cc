// JS binding of the dense bitmap (native/bitmap). Exports:
//   bitmapCreate(path, blockCount, tag?: Uint8Array)   creates the file, clean, not opened
//   new Bitmap(path)                                   opens (maps, validates, marks not-clean)
//   bitmapLimits                                       { blockCountMax, tagBytesMax, runsPerCallMax }
// Every operation works on the mapping in place; no bit is copied into JS
// memory except the runs a caller asks for, written into its Float64Array.
// Arguments are checked here (TypeError/RangeError); the core asserts them again.
#include <napi.h>

#include <algorithm>
#include <string>

#include "binding/errors.h"
#include "binding/init.h"
#include "bitmap/bitmap.h"
#include "util/assert.h"

namespace blockwal::binding {

namespace {

using bitmap::MappedBitmap;
using bitmap::Status;
using bitmap::StatusKind;

[[noreturn]] void throw_status(Napi::Env env, const Status& status) {
  BW_ASSERT(!status.ok());
  const char* code = status.kind == StatusKind::corrupt ? "ERR_BITMAP_CORRUPT" : "ERR_BITMAP";
  throw_error(env, code, status.message, status.err, status.syscall);
}

// An optional tag argument: undefined, or a Uint8Array (Buffer) of at most kTagBytesMax bytes.
Napi::Uint8Array arg_tag(const Napi::CallbackInfo& info, size_t index) {
  if (info.Length() <= index || info[index].IsUndefined()) return Napi::Uint8Array();
  const Napi::Value value = info[index];
  if (!value.IsTypedArray() || value.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) {
    throw Napi::TypeError::New(info.Env(), "tag must be a Buffer or Uint8Array");
  }
  Napi::Uint8Array tag = value.As<Napi::Uint8Array>();
  if (tag.ElementLength() > bitmap::kTagBytesMax) {
    throw Napi::RangeError::New(info.Env(),
                                "tag must be at most " + std::to_string(bitmap::kTagBytesMax) + " bytes");
  }
  return tag;
}

Napi::Value bitmap_create(const Napi::CallbackInfo& info) {
  const std::string path = arg_string(info, 0, "path");
  const uint64_t block_count = arg_u64(info, 1, "blockCount", bitmap::kBlockCountMax);
  if (block_count == 0) throw Napi::RangeError::New(info.Env(), "blockCount must be at least 1");
  const Napi::Uint8Array tag = arg_tag(info, 2);
  const uint32_t tag_bytes = tag.IsEmpty() ? 0 : static_cast<uint32_t>(tag.ElementLength());
  const Status status = MappedBitmap::create_file(path, block_count, tag_bytes ? tag.Data() : nullptr, tag_bytes);
  if (!status.ok()) throw_status(info.Env(), status);
  return info.Env().Undefined();
}

class BitmapWrap : public Napi::ObjectWrap<BitmapWrap> {
 public:
  static Napi::Function define(Napi::Env env) {
    return DefineClass(env, "Bitmap",
                       {
                           InstanceMethod<&BitmapWrap::get>("get"),
                           InstanceMethod<&BitmapWrap::set_range>("setRange"),
                           InstanceMethod<&BitmapWrap::clear_range>("clearRange"),
                           InstanceMethod<&BitmapWrap::count_set>("countSet"),
                           InstanceMethod<&BitmapWrap::count_set_in_range>("countSetInRange"),
                           InstanceMethod<&BitmapWrap::any_set_in_range>("anySetInRange"),
                           InstanceMethod<&BitmapWrap::next_set>("nextSet"),
                           InstanceMethod<&BitmapWrap::next_clear>("nextClear"),
                           InstanceMethod<&BitmapWrap::runs>("runs"),
                           InstanceMethod<&BitmapWrap::sync>("sync"),
                           InstanceMethod<&BitmapWrap::close>("close"),
                           InstanceAccessor<&BitmapWrap::block_count>("blockCount"),
                           InstanceAccessor<&BitmapWrap::tag>("tag"),
                           InstanceAccessor<&BitmapWrap::fd>("fd"),
                           InstanceAccessor<&BitmapWrap::generation>("generation"),
                           InstanceAccessor<&BitmapWrap::was_clean>("wasClean"),
                           InstanceAccessor<&BitmapWrap::is_open>("isOpen"),
                       });
  }

  explicit BitmapWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<BitmapWrap>(info) {
    const std::string path = arg_string(info, 0, "path");
    const Status status = bitmap_.open(path);
    if (!status.ok()) throw_status(info.Env(), status);
  }

  // The finalizer: a bitmap the JS side forgot to close is unmapped and
  // closed without a clean mark, exactly like a crash.
  ~BitmapWrap() override { bitmap_.release(); }

 private:
  void require_open(const Napi::CallbackInfo& info, const char* op) const {
    if (bitmap_.is_open()) return;
    throw_error(info.Env(), "ERR_BITMAP", std::string("bitmap ") + bitmap_.path() + " is closed (" + op + ")");
  }

  uint64_t arg_block(const Napi::CallbackInfo& info, size_t index, const char* name) const {
    return arg_u64(info, index, name, bitmap_.block_count() - 1);
  }

  // A position in [0, blockCount]: where a search or walk starts or ends.
  uint64_t arg_position(const Napi::CallbackInfo& info, size_t index, const char* name) const {
    return arg_u64(info, index, name, bitmap_.block_count());
  }

  // (startBlock, lengthBlocks) arguments: RangeError unless inside the bitmap.
  std::pair<uint64_t, uint64_t> arg_range(const Napi::CallbackInfo& info) const {
    const uint64_t start = arg_position(info, 0, "startBlock");
    const uint64_t count = arg_u64(info, 1, "lengthBlocks", bitmap::kBlockCountMax);
    if (count > bitmap_.block_count() - start) {
      throw Napi::RangeError::New(info.Env(), "startBlock + lengthBlocks (" + std::to_string(start + count) +
                                                  ") exceeds blockCount (" +
                                                  std::to_string(bitmap_.block_count()) + ")");
    }
    return {start, count};
  }

  Napi::Value get(const Napi::CallbackInfo& info) {
    require_open(info, "get");
    return Napi::Boolean::New(info.Env(), bitmap_.get(arg_block(info, 0, "block")));
  }

  Napi::Value set_range(const Napi::CallbackInfo& info) {
    require_open(info, "setRange");
    const auto [start, count] = arg_range(info);
    const Status status = bitmap_.set_range(start, count);
    if (!status.ok()) throw_status(info.Env(), status);
    return info.Env().Undefined();
  }

  Napi::Value clear_range(const Napi::CallbackInfo& info) {
    require_open(info, "clearRange");
    const auto [start, count] = arg_range(info);
    bitmap_.clear_range(start, count);
    return info.Env().Undefined();
  }

  Napi::Value count_set(const Napi::CallbackInfo& info) {
    require_open(info, "countSet");
    return Napi::Number::New(info.Env(), static_cast<double>(bitmap_.count_set()));
  }

  Napi::Value count_set_in_range(const Napi::CallbackInfo& info) {
    require_open(info, "countSetInRange");
    const auto [start, count] = arg_range(info);
    return Napi::Number::New(info.Env(), static_cast<double>(bitmap_.count_set_in_range(start, count)));
  }

  Napi::Value any_set_in_range(const Napi::CallbackInfo& info) {
    require_open(info, "anySetInRange");
    const auto [start, count] = arg_range(info);
    return Napi::Boolean::New(info.Env(), bitmap_.any_set_in_range(start, count));
  }

  // -1 when no block at or after fromBlock is set.
  Napi::Value next_set(const Napi::CallbackInfo& info) {
    require_open(info, "nextSet");
    const uint64_t end = bitmap_.block_count();
    const uint64_t found = bitmap_.next_set(arg_position(info, 0, "fromBlock"), end);
    return Napi::Number::New(info.Env(), found == end ? -1.0 : static_cast<double>(found));
  }

  // blockCount when every block at or after fromBlock is set.
  Napi::Value next_clear(const Napi::CallbackInfo& info) {
    require_open(info, "nextClear");
    const uint64_t end = bitmap_.block_count();
    return Napi::Number::New(info.Env(),
                             static_cast<double>(bitmap_.next_clear(arg_position(info, 0, "fromBlock"), end)));
  }

  // runs(fromBlock, endBlock, out: Float64Array) -> runs written as
  // (startBlock, lengthBlocks) pairs, at most min(out.length / 2, runsPerCallMax).
  Napi::Value runs(const Napi::CallbackInfo& info) {
    require_open(info, "runs");
    const uint64_t from = arg_position(info, 0, "fromBlock");
    const uint64_t end = arg_position(info, 1, "endBlock");
    if (from > end) throw Napi::RangeError::New(info.Env(), "fromBlock must not exceed endBlock");
    if (info.Length() <= 2 || !info[2].IsTypedArray() ||
        info[2].As<Napi::TypedArray>().TypedArrayType() != napi_float64_array) {
      throw Napi::TypeError::New(info.Env(), "out must be a Float64Array");
    }
    Napi::Float64Array out = info[2].As<Napi::Float64Array>();
    if (out.ElementLength() < 2) throw Napi::RangeError::New(info.Env(), "out must hold at least one run");
    const uint32_t runs_max =
        static_cast<uint32_t>(std::min<size_t>(out.ElementLength() / 2, bitmap::kRunsPerCallMax));
    return Napi::Number::New(info.Env(), bitmap_.runs(from, end, out.Data(), runs_max));
  }

  Napi::Value sync(const Napi::CallbackInfo& info) {
    require_open(info, "sync");
    const Status status = bitmap_.sync();
    if (!status.ok()) throw_status(info.Env(), status);
    return info.Env().Undefined();
  }

  // close(clean: boolean). Closing a closed bitmap does nothing.
  Napi::Value close(const Napi::CallbackInfo& info) {
    const bool clean = arg_bool(info, 0, "clean");
    const Status status = bitmap_.close(clean);
    if (!status.ok()) throw_status(info.Env(), status);
    return info.Env().Undefined();
  }

  Napi::Value block_count(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), static_cast<double>(bitmap_.block_count()));
  }

  Napi::Value tag(const Napi::CallbackInfo& info) {
    return Napi::Buffer<uint8_t>::Copy(info.Env(), bitmap_.tag(), bitmap_.tag_bytes());
  }

  // -1 once closed.
  Napi::Value fd(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), bitmap_.fd()); }

  Napi::Value generation(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), static_cast<double>(bitmap_.generation()));
  }

  Napi::Value was_clean(const Napi::CallbackInfo& info) {
    return Napi::Boolean::New(info.Env(), bitmap_.was_clean());
  }

  Napi::Value is_open(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), bitmap_.is_open()); }

  MappedBitmap bitmap_;
};

Napi::Object limits(Napi::Env env) {
  Napi::Object limits = Napi::Object::New(env);
  limits.Set("blockCountMax", Napi::Number::New(env, static_cast<double>(bitmap::kBlockCountMax)));
  limits.Set("tagBytesMax", Napi::Number::New(env, bitmap::kTagBytesMax));
  limits.Set("runsPerCallMax", Napi::Number::New(env, bitmap::kRunsPerCallMax));
  limits.Set("blocksPerPage", Napi::Number::New(env, static_cast<double>(bitmap::kBlocksPerPage)));
  return limits;
}

}  // namespace

void init_bitmap(Napi::Env env, Napi::Object exports) {
  exports.Set("Bitmap", BitmapWrap::define(env));
  exports.Set("bitmapCreate", Napi::Function::New<bitmap_create>(env, "bitmapCreate"));
  exports.Set("bitmapLimits", limits(env));
}

}  // namespace blockwal::binding
