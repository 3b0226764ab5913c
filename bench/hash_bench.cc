// XXH3 as Shale computes it (libxxhash's run-time dispatch, engine/common/xxh3.h) against the
// portable code a baseline x86-64 build compiles in (what Shale used before) and against memcpy
// of the same bytes, in the same run. Each replicated MiB is hashed twice (the target seals its
// frame, the replica verifies it), each rebuilt region and snapshot block once or more.
//
//   shale-hash-bench [--reps 5] [--mib 256]
//
// Prints µs per MiB (median of --reps passes over --mib MiB) for 1 MiB and 4 KiB inputs, warm
// (one buffer, in cache) and cold (a ring of 64 MiB, as payloads just received are not), and the
// ratios reference/dispatch and dispatch/memcpy.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string_view>
#include <vector>

#include "engine/common/checksum.h"

#define XXH_INLINE_ALL
#include <xxhash.h>  // the portable reference: static functions under their own names

namespace {

constexpr size_t kMiB = 1 << 20;
constexpr size_t kRing = 64 * kMiB;

// Runs fn over `total` bytes in pieces of `piece` from a window of `window` bytes; µs per MiB.
double UsPerMiB(const std::vector<uint8_t>& ring, size_t window, size_t piece, size_t total,
                const std::function<uint64_t(const uint8_t*, size_t)>& fn) {
  uint64_t sink = 0;
  const auto start = std::chrono::steady_clock::now();
  for (size_t done = 0, off = 0; done < total; done += piece) {
    sink += fn(ring.data() + off, piece);
    off = (off + piece) % window;
  }
  const std::chrono::duration<double, std::micro> took = std::chrono::steady_clock::now() - start;
  if (sink == 42) std::puts("");  // keeps the hashes from being optimized away
  return took.count() / (static_cast<double>(total) / kMiB);
}

// "--name N" with 1 <= N <= max; exits with a message otherwise.
size_t ParseCount(int argc, char** argv, int* i, size_t max) {
  const std::string_view name = argv[*i];
  char* end = nullptr;
  const long long v = *i + 1 < argc ? std::strtoll(argv[*i + 1], &end, 10) : 0;
  if (end == nullptr || *end != '\0' || v < 1 || static_cast<unsigned long long>(v) > max) {
    std::fprintf(stderr, "shale-hash-bench: %s needs a number from 1 to %zu\n",
                 std::string(name).c_str(), max);
    std::exit(2);
  }
  ++*i;
  return static_cast<size_t>(v);
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  size_t reps = 5;
  size_t mib = 256;
  for (int i = 1; i < argc; ++i) {
    const std::string_view a = argv[i];
    if (a == "--reps") {
      reps = ParseCount(argc, argv, &i, 100);
    } else if (a == "--mib") {
      mib = ParseCount(argc, argv, &i, 65536);
    } else {
      std::fprintf(stderr, "usage: shale-hash-bench [--reps 1..100] [--mib 1..65536]\n");
      return 2;
    }
  }

  std::vector<uint8_t> ring(kRing);
  for (size_t i = 0; i < ring.size(); ++i) ring[i] = static_cast<uint8_t>(i * 2654435761u >> 13);
  std::vector<uint8_t> dst(kMiB);
  const std::function<uint64_t(const uint8_t*, size_t)> dispatch = [](const uint8_t* p, size_t n) {
    return shale::Hash64(p, n, 0) ^ shale::HashContent128(p, 0).low;
  };
  const std::function<uint64_t(const uint8_t*, size_t)> reference = [](const uint8_t* p, size_t n) {
    return XXH3_64bits_withSeed(p, n, 0) ^ XXH3_128bits(p, 0).low64;
  };
  const std::function<uint64_t(const uint8_t*, size_t)> copy = [&](const uint8_t* p, size_t n) {
    std::memcpy(dst.data(), p, n);
    return uint64_t{dst[n - 1]};
  };

  std::printf(
      "| input | dispatch us/MiB | reference us/MiB | memcpy us/MiB | reference/dispatch | "
      "dispatch/memcpy |\n");
  std::printf("|---|---|---|---|---|---|\n");
  for (const size_t piece : {kMiB, size_t{4096}}) {
    for (const bool cold : {false, true}) {
      const size_t window = cold ? kRing : piece;
      std::vector<double> d, r, c;
      for (size_t i = 0; i < reps; ++i) {
        d.push_back(UsPerMiB(ring, window, piece, mib * kMiB, dispatch));
        r.push_back(UsPerMiB(ring, window, piece, mib * kMiB, reference));
        c.push_back(UsPerMiB(ring, window, piece, mib * kMiB, copy));
      }
      const double dm = Median(d), rm = Median(r), cm = Median(c);
      std::printf("| %s %s | %.1f | %.1f | %.1f | %.2fx | %.2fx |\n",
                  piece == kMiB ? "1 MiB" : "4 KiB", cold ? "cold (64 MiB ring)" : "warm", dm, rm,
                  cm, rm / dm, dm / cm);
    }
  }
  return 0;
}
