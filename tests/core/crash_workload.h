// The workload that crash_test kills at random points, shared by the worker program
// (which runs it until killed) and the test (which checks what survived).
#pragma once

#include <cstdint>
#include <cstring>
#include <string>

namespace stellarium::testing {

inline constexpr uint64_t kCrashBlocks = 64;
inline constexpr uint32_t kCrashBs = 4096;

// Block `i` of generation `g`: a header (i, g) and bytes derived from both, so any
// block read back tells which write it came from.
inline std::string CrashBlock(uint64_t i, uint64_t g) {
  std::string b(kCrashBs, '\0');
  uint64_t x = i * 0x9E3779B97F4A7C15ull ^ (g + 1) * 0xC2B2AE3D27D4EB4Full;
  std::memcpy(b.data(), &i, 8);
  std::memcpy(b.data() + 8, &g, 8);
  for (size_t k = 16; k < b.size(); k += 8) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    std::memcpy(b.data() + k, &x, 8);
  }
  return b;
}

// The image imported by the worker, k-th: 2 MiB, half of it shared with every other k.
inline std::string CrashImage(uint64_t k) {
  std::string img;
  for (uint64_t i = 0; i < 512; ++i) img += CrashBlock(1000 + i, i < 256 ? 0 : k + 1);
  return img;
}

}  // namespace stellarium::testing
