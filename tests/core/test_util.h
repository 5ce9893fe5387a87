// Helpers shared by core's tests: temporary directories and random data.
#pragma once

#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>

#include <gtest/gtest.h>

#include "core/sha256.h"
#include "core/store.h"

namespace stellarium::testing {

class TempDir {
 public:
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "stellarium-test-XXXXXX").string();
    path_ = mkdtemp(tmpl.data());
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// A whole file's bytes ("" when it cannot be read), and a file written whole.
inline std::string ReadFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}
inline void WriteFile(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

inline std::string Sha256Hex(const std::string& bytes) {
  return ToHex(Sha256(bytes.data(), bytes.size()));
}

inline std::string RandomBytes(std::mt19937_64& rng, size_t n) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; i += 8) {
    uint64_t v = rng();
    std::memcpy(s.data() + i, &v, std::min<size_t>(8, n - i));
  }
  return s;
}

inline const Status& StatusOf(const Status& s) { return s; }
template <typename T>
const Status& StatusOf(const Result<T>& r) { return r.status(); }

#define ASSERT_OK(expr)                                                   \
  do {                                                                    \
    const auto& _r = (expr);                                              \
    ASSERT_TRUE(::stellarium::testing::StatusOf(_r).ok())                 \
        << ::stellarium::testing::StatusOf(_r).ToString();                \
  } while (0)
#define EXPECT_CODE(expr, want)                                           \
  do {                                                                    \
    const auto& _r = (expr);                                              \
    EXPECT_EQ(::stellarium::testing::StatusOf(_r).code(), (want))         \
        << ::stellarium::testing::StatusOf(_r).ToString();                \
  } while (0)

template <typename T>
T Unwrap(Result<T> r) {
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  return std::move(r).value();
}

}  // namespace stellarium::testing
