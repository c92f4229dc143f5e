#include "binding/errors.h"

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>

namespace blockwal::binding {

const char* errno_name(int err) {
  switch (err) {
    case EIO: return "EIO";
    case ENOSPC: return "ENOSPC";
    case EDQUOT: return "EDQUOT";
    case EINVAL: return "EINVAL";
    case ENOENT: return "ENOENT";
    case EEXIST: return "EEXIST";
    case EACCES: return "EACCES";
    case EPERM: return "EPERM";
    case EAGAIN: return "EAGAIN";
    case EBUSY: return "EBUSY";
    case EBADF: return "EBADF";
    case ENOMEM: return "ENOMEM";
    case EROFS: return "EROFS";
    case EFBIG: return "EFBIG";
    case ENOTDIR: return "ENOTDIR";
    case EISDIR: return "EISDIR";
    case ECANCELED: return "ECANCELED";
    case EOPNOTSUPP: return "EOPNOTSUPP";
    case ENOSYS: return "ENOSYS";
    case EBADMSG: return "EBADMSG";
    case EINTR: return "EINTR";
    case EMFILE: return "EMFILE";
    case ENFILE: return "ENFILE";
    default: {
      static thread_local char buf[16];
      std::snprintf(buf, sizeof buf, "E%d", err);
      return buf;
    }
  }
}

Napi::Error make_error(Napi::Env env, const std::string& code, const std::string& message, int err,
                       const char* syscall) {
  std::string text = message;
  if (err != 0) {
    text += ": ";
    text += std::strerror(err);
  }
  Napi::Error error = Napi::Error::New(env, text);
  Napi::Object obj = error.Value();
  obj.Set("code", Napi::String::New(env, code));
  if (err != 0) {
    obj.Set("errno", Napi::Number::New(env, err));
    obj.Set("errnoName", Napi::String::New(env, errno_name(err)));
  }
  if (syscall != nullptr) obj.Set("syscall", Napi::String::New(env, syscall));
  return error;
}

void throw_error(Napi::Env env, const std::string& code, const std::string& message, int err, const char* syscall) {
  throw make_error(env, code, message, err, syscall);
}

uint64_t arg_u64(const Napi::CallbackInfo& info, size_t index, const char* name, uint64_t max) {
  if (info.Length() <= index || !info[index].IsNumber()) {
    throw Napi::TypeError::New(info.Env(), std::string(name) + " must be a number");
  }
  double value = info[index].As<Napi::Number>().DoubleValue();
  if (!(value >= 0) || value != std::floor(value) || value > 9007199254740991.0 || value > static_cast<double>(max)) {
    throw Napi::RangeError::New(info.Env(), std::string(name) + " must be an integer from 0 to " +
                                                std::to_string(max));
  }
  return static_cast<uint64_t>(value);
}

uint32_t arg_u32(const Napi::CallbackInfo& info, size_t index, const char* name, uint32_t max) {
  return static_cast<uint32_t>(arg_u64(info, index, name, max));
}

std::string arg_string(const Napi::CallbackInfo& info, size_t index, const char* name) {
  if (info.Length() <= index || !info[index].IsString()) {
    throw Napi::TypeError::New(info.Env(), std::string(name) + " must be a string");
  }
  return info[index].As<Napi::String>().Utf8Value();
}

bool arg_bool(const Napi::CallbackInfo& info, size_t index, const char* name) {
  if (info.Length() <= index || !info[index].IsBoolean()) {
    throw Napi::TypeError::New(info.Env(), std::string(name) + " must be a boolean");
  }
  return info[index].As<Napi::Boolean>().Value();
}

}  // namespace blockwal::binding
