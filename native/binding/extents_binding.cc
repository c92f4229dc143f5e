// Which byte ranges of a sparse file hold data (SEEK_DATA / SEEK_HOLE), for
// NBD block status over base.img. Node's fs has no SEEK_DATA.
#include <unistd.h>

#include <cerrno>
#include <vector>

#include "binding/errors.h"
#include "binding/init.h"

namespace blockwal::binding {

namespace {

// dataExtents(fd, offset, length, maxExtents) -> Float64Array [start, end, ...]
// of the data ranges inside [offset, offset + length), clipped to it, at most
// maxExtents pairs (the scan stops there; the caller asks again from the end).
Napi::Value data_extents(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = static_cast<int>(arg_u32(info, 0, "fd", INT32_MAX));
  constexpr uint64_t kMaxSafe = (1ULL << 53) - 1;
  uint64_t offset = arg_u64(info, 1, "offset", kMaxSafe);
  uint64_t length = arg_u64(info, 2, "length", kMaxSafe - offset);
  uint32_t max_extents = arg_u32(info, 3, "maxExtents", 1u << 20);
  uint64_t end = offset + length;
  std::vector<double> out;
  uint64_t pos = offset;
  while (pos < end && out.size() / 2 < max_extents) {
    off_t data = lseek(fd, static_cast<off_t>(pos), SEEK_DATA);
    if (data < 0) {
      if (errno == ENXIO) break;  // no data at or after pos
      throw_error(env, "ERR_IO", "lseek(SEEK_DATA) failed", errno, "lseek");
    }
    if (static_cast<uint64_t>(data) >= end) break;
    off_t hole = lseek(fd, data, SEEK_HOLE);
    if (hole < 0) throw_error(env, "ERR_IO", "lseek(SEEK_HOLE) failed", errno, "lseek");
    uint64_t stop = static_cast<uint64_t>(hole) < end ? static_cast<uint64_t>(hole) : end;
    out.push_back(static_cast<double>(data));
    out.push_back(static_cast<double>(stop));
    pos = stop;
  }
  Napi::Float64Array arr = Napi::Float64Array::New(env, out.size());
  for (size_t i = 0; i < out.size(); i++) arr[i] = out[i];
  return arr;
}

}  // namespace

void init_extents(Napi::Env env, Napi::Object exports) {
  exports.Set("dataExtents", Napi::Function::New(env, data_extents, "dataExtents"));
}

}  // namespace blockwal::binding
