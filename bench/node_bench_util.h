// Small helpers of the node benchmarks (node_stage_latency, node_data_path): flags of
// the form --name VALUE, fatal checks, percentiles.
//
// Thread-safety: plain functions.
#pragma once

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

namespace stellarium::bench {

// Exits with "<program>: <what>" when !ok.
inline void Must(bool ok, const char* program, const std::string& what) {
  if (ok) return;
  std::fprintf(stderr, "%s: %s\n", program, what.c_str());
  std::exit(1);
}

// The value after `--name` in argv, or `fallback`. Every argument must be a known
// "--name value" pair: anything else prints `usage` and exits 2.
inline std::string FlagValue(int argc, char** argv, const std::string& name,
                             const std::string& fallback, const std::vector<std::string>& known,
                             const char* usage) {
  std::string value = fallback;
  for (int i = 1; i < argc; i += 2) {
    const std::string a = argv[i];
    if (i + 1 >= argc || std::find(known.begin(), known.end(), a) == known.end()) {
      std::fprintf(stderr, "usage: %s\n", usage);
      std::exit(2);
    }
    if (a == name) value = argv[i + 1];
  }
  return value;
}

// The p-th percentile (0..1) of `v`, nearest rank.
inline double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t i = static_cast<size_t>(p * static_cast<double>(v.size() - 1) + 0.5);
  return v[std::min(i, v.size() - 1)];
}

}  // namespace stellarium::bench
