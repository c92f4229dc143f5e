// Errors crossing into JS. Every native failure that is not a bug becomes a JS
// Error with string `code`, and `errno`/`syscall` where a system call failed.
// lib/native/errors.ts turns these into BlockwalError instances.
#pragma once

#include <napi.h>

#include <string>

namespace blockwal::binding {

// Returns the symbolic name of an errno value ("EIO"), or "E<number>".
const char* errno_name(int err);

// Builds (does not throw) an Error with code, message, and optional errno/syscall.
Napi::Error make_error(Napi::Env env, const std::string& code, const std::string& message, int err = 0,
                       const char* syscall = nullptr);

// Throws a JS exception built by make_error (C++ exceptions are enabled).
[[noreturn]] void throw_error(Napi::Env env, const std::string& code, const std::string& message, int err = 0,
                              const char* syscall = nullptr);

// Argument checks at the edge: TypeError / RangeError with a clear message.
uint64_t arg_u64(const Napi::CallbackInfo& info, size_t index, const char* name, uint64_t max);
uint32_t arg_u32(const Napi::CallbackInfo& info, size_t index, const char* name, uint32_t max);
std::string arg_string(const Napi::CallbackInfo& info, size_t index, const char* name);
bool arg_bool(const Napi::CallbackInfo& info, size_t index, const char* name);

}  // namespace blockwal::binding
