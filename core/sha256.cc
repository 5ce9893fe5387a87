#include "core/sha256.h"

#include <openssl/evp.h>

#include <cstring>
#include <vector>
#ifdef STELLARIUM_HAVE_IPSEC_MB
#include <intel-ipsec-mb.h>
#endif

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

#ifdef STELLARIUM_HAVE_IPSEC_MB
namespace {

// One multi-buffer manager per thread (a manager is not thread-safe), set up on the
// thread's first batch for the best code path this CPU has; null when that failed.
struct MbManager {
  IMB_MGR* mgr = nullptr;
  std::string engine = "openssl";
  MbManager() {
    mgr = alloc_mb_mgr(0);
    if (mgr == nullptr) return;
    IMB_ARCH arch = IMB_ARCH_NONE;
    init_mb_mgr_auto(mgr, &arch);
    const char* name = nullptr;
    switch (arch) {
      case IMB_ARCH_NOAESNI:
        name = "ipsec-mb sse-no-aesni";
        break;
      case IMB_ARCH_SSE:
        name = "ipsec-mb sse";
        break;
      case IMB_ARCH_AVX:
        name = "ipsec-mb avx";
        break;
      case IMB_ARCH_AVX2:
        name = "ipsec-mb avx2";
        break;
      case IMB_ARCH_AVX512:
        name = "ipsec-mb avx512";
        break;
      default:
        break;
    }
    if (name == nullptr || imb_get_errno(mgr) != 0) {
      free_mb_mgr(mgr);
      mgr = nullptr;
      return;
    }
    engine = name;
  }
  ~MbManager() {
    if (mgr) free_mb_mgr(mgr);
  }
};

MbManager& ThreadMbManager() {
  thread_local MbManager m;
  return m;
}

}  // namespace

void Sha256Many(const std::string_view* in, size_t n, ChunkId* out) {
  IMB_MGR* m = ThreadMbManager().mgr;
  if (m == nullptr) {
    for (size_t i = 0; i < n; ++i) out[i] = Sha256(in[i].data(), in[i].size());
    return;
  }
  // Jobs complete in lanes of the manager's width; each writes its digest straight into
  // out[i]. A job the library refuses (it should not) is hashed by OpenSSL instead.
  std::vector<size_t> redo;
  auto collect = [&](IMB_JOB* done) {
    for (; done != nullptr; done = IMB_GET_COMPLETED_JOB(m)) {
      if (done->status != IMB_STATUS_COMPLETED)
        redo.push_back(reinterpret_cast<size_t>(done->user_data));
    }
  };
  for (size_t i = 0; i < n; ++i) {
    if (in[i].empty()) {  // the library wants at least one byte
      out[i] = Sha256(in[i].data(), 0);
      continue;
    }
    IMB_JOB* job = IMB_GET_NEXT_JOB(m);
    std::memset(job, 0, sizeof *job);
    job->cipher_mode = IMB_CIPHER_NULL;
    job->cipher_direction = IMB_DIR_ENCRYPT;
    job->chain_order = IMB_ORDER_HASH_CIPHER;
    job->hash_alg = IMB_AUTH_SHA_256;
    job->src = reinterpret_cast<const uint8_t*>(in[i].data());
    job->hash_start_src_offset_in_bytes = 0;
    job->msg_len_to_hash_in_bytes = in[i].size();
    job->auth_tag_output = out[i].data();
    job->auth_tag_output_len_in_bytes = kChunkIdSize;
    job->user_data = reinterpret_cast<void*>(i);
    collect(IMB_SUBMIT_JOB(m));
  }
  for (IMB_JOB* j; (j = IMB_FLUSH_JOB(m)) != nullptr;) collect(j);
  for (size_t i : redo) out[i] = Sha256(in[i].data(), in[i].size());
}

std::string Sha256ManyEngine() { return ThreadMbManager().engine; }

#else

void Sha256Many(const std::string_view* in, size_t n, ChunkId* out) {
  for (size_t i = 0; i < n; ++i) out[i] = Sha256(in[i].data(), in[i].size());
}

std::string Sha256ManyEngine() { return "openssl"; }

#endif

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
