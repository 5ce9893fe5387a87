// The workload of the RADOS store's crash and concurrency tests, shared by the worker
// program (rados_worker, which runs it until killed) and the tests (which check what
// survived). A volume's name says what it must hold: "img-<k>-..." and "clone-<k>-..."
// hold RadosImage(k).
#pragma once

#include <cstdint>
#include <cstring>
#include <string>

#include "core/store.h"

namespace stellarium::testing {

// Image k: 4 MiB of blocks, the first half shared by every k, a quarter zeros.
inline constexpr uint64_t kRadosImageBlocks = 1024;
inline std::string RadosImage(uint64_t k) {
  std::string img;
  for (uint64_t i = 0; i < kRadosImageBlocks; ++i) {
    std::string b(4096, '\0');
    if (i % 4 != 3) {
      uint64_t x = (i < kRadosImageBlocks / 2 ? 0 : k + 1) * 0x9E3779B97F4A7C15ull ^ (i + 7) * 0xC2B2AE3D27D4EB4Full;
      for (size_t o = 0; o < b.size(); o += 8) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        std::memcpy(b.data() + o, &x, 8);
      }
    }
    img += b;
  }
  return img;
}

// The k a workload volume's name carries ("img-3-17" -> 3); -1 when it carries none.
inline int64_t ImageOfName(const std::string& name) {
  const size_t dash = name.find('-');
  if (dash == std::string::npos) return -1;
  const size_t end = name.find('-', dash + 1);
  return std::stoll(name.substr(dash + 1, end - dash - 1));
}

// The store options both the worker and the tests use: short windows so that a test can
// collect what a killed worker left within seconds.
inline StoreOptions RadosTestOptions(const std::string& path, const std::string& conf,
                                     const std::string& id, const std::string& cache) {
  StoreOptions o;
  o.path = path;
  o.ceph_conf = conf;
  o.ceph_id = id;
  o.cache_dir = cache;
  o.rados_writer_window_ns = 1'000'000'000;
  o.rados_lease_ns = 2'000'000'000;
  return o;
}

}  // namespace stellarium::testing
