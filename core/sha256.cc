#include "core/sha256.h"

#include <openssl/evp.h>

#include <cstring>

namespace stellarium {

namespace {

// The SHA-256 implementation, fetched from OpenSSL's provider once (an implicit fetch
// on every EVP_Digest call costs a lock and a lookup per 4 KiB block).
const EVP_MD* Sha256Md() {
  static const EVP_MD* md = EVP_MD_fetch(nullptr, "SHA256", nullptr);
  return md;
}

// One digest context per thread, reused for every block that thread hashes.
struct ThreadContext {
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  ~ThreadContext() { EVP_MD_CTX_free(ctx); }
};

}  // namespace

ChunkId Sha256(const void* data, size_t len) {
  thread_local ThreadContext t;
  ChunkId id;
  unsigned int out_len = 0;
  EVP_DigestInit_ex2(t.ctx, Sha256Md(), nullptr);
  EVP_DigestUpdate(t.ctx, data, len);
  EVP_DigestFinal_ex(t.ctx, id.data(), &out_len);
  return id;
}

std::string ToHex(const uint8_t* data, size_t len) {
  static const char kDigits[] = "0123456789abcdef";
  std::string s(len * 2, '0');
  for (size_t i = 0; i < len; ++i) {
    s[2 * i] = kDigits[data[i] >> 4];
    s[2 * i + 1] = kDigits[data[i] & 15];
  }
  return s;
}

Result<ChunkId> ChunkIdFromHex(std::string_view hex) {
  if (hex.substr(0, 7) == "sha256:") hex.remove_prefix(7);
  if (hex.size() != 64) {
    return Status::InvalidArgument("digest '" + std::string(hex) + "': want 64 hex digits");
  }
  ChunkId id;
  for (size_t i = 0; i < 32; ++i) {
    int v = 0;
    for (int j = 0; j < 2; ++j) {
      char c = hex[2 * i + j];
      int d;
      if (c >= '0' && c <= '9')
        d = c - '0';
      else if (c >= 'a' && c <= 'f')
        d = c - 'a' + 10;
      else if (c >= 'A' && c <= 'F')
        d = c - 'A' + 10;
      else
        return Status::InvalidArgument("digest '" + std::string(hex) + "': not hex");
      v = v * 16 + d;
    }
    id[i] = static_cast<uint8_t>(v);
  }
  return id;
}

ChunkId ChunkIdFromBytes(std::string_view bytes) {
  ChunkId id{};
  std::memcpy(id.data(), bytes.data(), std::min(bytes.size(), id.size()));
  return id;
}

bool IsAllZero(const char* data, size_t len) {
  // Compare 8 bytes at a time; the compiler vectorizes the OR-reduction.
  size_t i = 0;
  uint64_t acc = 0;
  for (; i + 64 <= len; i += 64) {
    uint64_t w[8];
    std::memcpy(w, data + i, 64);
    acc |= w[0] | w[1] | w[2] | w[3] | w[4] | w[5] | w[6] | w[7];
    if (acc) return false;
  }
  for (; i < len; ++i) acc |= static_cast<uint8_t>(data[i]);
  return acc == 0;
}

Sha256Stream::Sha256Stream() {
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr);
  ctx_ = ctx;
}

Sha256Stream::~Sha256Stream() { EVP_MD_CTX_free(static_cast<EVP_MD_CTX*>(ctx_)); }

void Sha256Stream::Update(const void* data, size_t len) {
  EVP_DigestUpdate(static_cast<EVP_MD_CTX*>(ctx_), data, len);
}

ChunkId Sha256Stream::Finish() {
  ChunkId id;
  unsigned int n = 0;
  EVP_DigestFinal_ex(static_cast<EVP_MD_CTX*>(ctx_), id.data(), &n);
  return id;
}

}  // namespace stellarium
