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
#include <thread>
#include <vector>

#include "csi/node/read_ahead.h"
#include "fuzz/fuzz_mem_io.h"

using namespace stellarium;
using namespace stellarium::node;

namespace {

constexpr uint64_t kSize = 1 << 20;

// The fuzz targets' in-memory volume, slowed down for the helpers: a store read takes
// time, so a helper holds the bytes it read for a while and the fuzzer's writes (after
// a pause op) land while a window holds older bytes.
class SlowMemIo : public fuzz::FuzzMemIo {
 public:
  SlowMemIo() : FuzzMemIo(kSize) {}
  Status Read(uint64_t off, size_t len, char* out) override {
    Status st = FuzzMemIo::Read(off, len, out);
    if (std::this_thread::get_id() != owner_) {
      std::this_thread::sleep_for(std::chrono::microseconds(500));
    }
    return st;
  }

 private:
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
  auto io = std::make_shared<SlowMemIo>();
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
