// ChunkId and SHA-256 helpers. A chunk is named by the SHA-256 of its content
// (OpenSSL EVP, which uses the CPU's SHA extensions where present; many chunks at once
// through libipsec-mb's multi-buffer SHA-256 where the build has it).
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

// The SHA-256 of n independent inputs: out[i] = Sha256(in[i]). Where the build has
// Intel's multi-buffer crypto library (libipsec-mb, Debian's libipsec-mb-dev, amd64),
// up to 16 inputs are hashed side by side in the CPU's vector registers (AVX-512 lanes,
// or two SHA-extension streams at once), several times the single-input rate
// (docs/BENCHMARKS.md has the figures); elsewhere it is Sha256() in a loop. The
// importer hashes a segment's blocks and the read path verifies a read's chunks this way.
// Each thread that calls it keeps a manager of the library's, about half a MiB.
void Sha256Many(const std::string_view* in, size_t n, ChunkId* out);
// What Sha256Many() runs on this thread: "ipsec-mb avx512", "ipsec-mb sse", ... or
// "openssl" (no multi-buffer library in the build, or it could not start here).
std::string Sha256ManyEngine();
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
