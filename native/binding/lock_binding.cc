// Advisory exclusive locks (flock) for volume directories: a second opener, in
// this process or another, is refused. Node has no flock of its own.
#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>

#include "binding/errors.h"
#include "binding/init.h"

namespace blockwal::binding {

namespace {

// lockExclusive(path) -> fd holding the lock; throws ERR_LOCKED when held elsewhere.
Napi::Value lock_exclusive(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = arg_string(info, 0, "path");
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) throw_error(env, "ERR_OPEN", "cannot open lock file " + path, errno, "open");
  if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    int err = errno;
    ::close(fd);
    if (err == EWOULDBLOCK) {
      throw_error(env, "ERR_LOCKED", path + " is locked: the volume is open elsewhere (another process or handle)");
    }
    throw_error(env, "ERR_OPEN", "cannot lock " + path, err, "flock");
  }
  return Napi::Number::New(env, fd);
}

// unlock(fd): releases and closes.
Napi::Value unlock(const Napi::CallbackInfo& info) {
  int fd = static_cast<int>(arg_u32(info, 0, "fd", INT32_MAX));
  flock(fd, LOCK_UN);
  ::close(fd);
  return info.Env().Undefined();
}

}  // namespace

void init_lock(Napi::Env env, Napi::Object exports) {
  exports.Set("lockExclusive", Napi::Function::New(env, lock_exclusive, "lockExclusive"));
  exports.Set("unlock", Napi::Function::New(env, unlock, "unlock"));
}

}  // namespace blockwal::binding
