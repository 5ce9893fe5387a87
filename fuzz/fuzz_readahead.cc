// Fuzzes ReadAheadBlockIo against a plain copy of the volume: the input is a sequence
// of reads and writes (what a guest asks for), with the read-ahead's limits taken from
// its first bytes. Every read must return exactly the bytes of the model (the volume
// as the writes so far left it) whatever the helper threads are doing: a prefetched
// window must never shadow a write. Layout:
//   u8 max_bytes (4 KiB units, 1..256), u8 window (4 KiB units), u8 threads,
//   then ops of 5 bytes: u8 kind (% 3: read, write, pause), u16 offset (512-byte
//   sectors), u16 length (sectors, 1..64).
#include <chrono>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

#include "csi/exposure/vhost_user_blk.h"

using namespace stellarium;
using namespace stellarium::exposure;

namespace {

constexpr uint64_t kSize = 1 << 20;

// A locked in-memory volume (the helpers read it while the fuzzer writes).
class LockedMemIo : public BlockIo {
 public:
  uint64_t size() const override { return kSize; }
  uint32_t block_size() const override { return 4096; }
  bool read_only() const override { return false; }
  Status Read(uint64_t off, size_t len, char* out) override {
    if (off > kSize || len > kSize - off) __builtin_trap();  // never past the end
    {
      std::lock_guard<std::mutex> lock(mu_);
      memcpy(out, data_.data() + off, len);
    }
    // A store read takes time: a helper holds the bytes it read for a while, so the
    // fuzzer's writes (after a pause op) land while a window holds older bytes.
    if (std::this_thread::get_id() != owner_) {
      std::this_thread::sleep_for(std::chrono::microseconds(500));
    }
    return Status::Ok();
  }
  Status Write(uint64_t off, const char* in, size_t len) override {
    if (off > kSize || len > kSize - off) __builtin_trap();
    std::lock_guard<std::mutex> lock(mu_);
    memcpy(data_.data() + off, in, len);
    return Status::Ok();
  }
  Status Flush() override { return Status::Ok(); }

 private:
  std::mutex mu_;
  std::vector<char> data_ = std::vector<char>(kSize, 0);
  const std::thread::id owner_ = std::this_thread::get_id();  // the fuzzer's thread
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 3) return 0;
  ReadAheadOptions options;
  options.max_bytes = 4096ull * (1 + data[0]);
  options.window = 4096ull * (1 + data[1] % 64);
  options.threads = 1 + data[2] % 3;
  data += 3;
  size -= 3;
  auto io = std::make_shared<LockedMemIo>();
  std::vector<char> model(kSize, 0);
  std::vector<char> buf;
  {
    ReadAheadBlockIo ra(io, options);
    for (uint32_t op = 0; size >= 5; ++op, data += 5, size -= 5) {
      uint16_t sector, sectors;
      memcpy(&sector, data + 1, 2);
      memcpy(&sectors, data + 3, 2);
      const uint64_t offset = (uint64_t{sector} * 512) % kSize;
      const uint64_t len = std::min<uint64_t>((sectors % 64 + 1) * 512ull, kSize - offset);
      buf.resize(len);
      if (data[0] % 3 == 2) {  // let the helpers start on what was queued
        std::this_thread::sleep_for(std::chrono::microseconds(100));
      } else if (data[0] % 3 == 1) {
        for (size_t i = 0; i < len; ++i) buf[i] = static_cast<char>(op * 31 + i);
        if (!ra.Write(offset, buf.data(), len).ok()) __builtin_trap();
        memcpy(model.data() + offset, buf.data(), len);
      } else {
        if (!ra.Read(offset, len, buf.data()).ok()) __builtin_trap();
        if (memcmp(buf.data(), model.data() + offset, len) != 0) __builtin_trap();  // stale
      }
      if (ra.stats().bytes_held > options.max_bytes) __builtin_trap();
    }
  }
  return 0;
}
