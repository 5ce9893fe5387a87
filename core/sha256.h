// ChunkId and SHA-256 helpers. A chunk is named by the SHA-256 of its content
// (OpenSSL EVP, which uses the CPU's SHA extensions where present).
//
// Thread-safety: free functions, safe from any thread.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "core/status.h"

namespace stellarium {

inline constexpr size_t kChunkIdSize = 32;
using ChunkId = std::array<uint8_t, kChunkIdSize>;

ChunkId Sha256(const void* data, size_t len);
std::string ToHex(const uint8_t* data, size_t len);
inline std::string ToHex(const ChunkId& id) { return ToHex(id.data(), id.size()); }
// Parses 64 hex digits (an optional "sha256:" prefix is accepted).
Result<ChunkId> ChunkIdFromHex(std::string_view hex);
inline std::string_view AsBytes(const ChunkId& id) {
  return {reinterpret_cast<const char*>(id.data()), id.size()};
}
ChunkId ChunkIdFromBytes(std::string_view bytes);  // REQUIRES: bytes.size() == 32

// True when all len bytes are zero (fast path for the importer's zero-block test).
bool IsAllZero(const char* data, size_t len);

// Incremental SHA-256 (for content digests built from many pieces).
class Sha256Stream {
 public:
  Sha256Stream();
  ~Sha256Stream();
  Sha256Stream(const Sha256Stream&) = delete;
  Sha256Stream& operator=(const Sha256Stream&) = delete;
  void Update(const void* data, size_t len);
  ChunkId Finish();

 private:
  void* ctx_;  // EVP_MD_CTX*
};

}  // namespace stellarium
