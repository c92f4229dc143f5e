// Always-on assertions. A failed assertion is a bug in blockwal: it prints the
// condition and location and aborts the process, in release builds too.
// Expected failures (bad input, I/O errors) are values with codes, never asserts.
#pragma once

#include <cstdio>
#include <cstdlib>

namespace blockwal {

[[noreturn]] inline void assert_fail(const char* expr, const char* file, int line) {
  std::fprintf(stderr, "blockwal: assertion failed: %s (%s:%d)\n", expr, file, line);
  std::fflush(stderr);
  std::abort();
}

}  // namespace blockwal

#define BW_ASSERT(cond)                                              \
  do {                                                               \
    if (__builtin_expect(!(cond), 0)) {                              \
      ::blockwal::assert_fail(#cond, __FILE__, __LINE__);            \
    }                                                                \
  } while (0)

#define BW_UNREACHABLE() ::blockwal::assert_fail("unreachable", __FILE__, __LINE__)
