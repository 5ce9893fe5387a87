// Fuzzes the split virtqueue and virtio-blk request parsing: the input is the guest's
// memory (descriptor table, rings and buffers, all guest-controlled). The backend must
// never touch memory outside the region or the volume outside [0, size) — FuzzMemIo
// traps on the latter, AddressSanitizer on the former — and must always terminate.
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "csi/node/vhost_user/vhost_user_blk.h"
#include "csi/node/vhost_user/virtio_blk.h"
#include "fuzz/fuzz_mem_io.h"

using namespace stellarium;
using namespace stellarium::node;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 4) return 0;
  // Header: queue size exponent; flags: read-only, indirect descriptors, requests
  // through the read-ahead layer (reads filled in pieces from its windows straight
  // into the guest's segments); starting avail index.
  uint32_t qsize = 1u << (data[0] % 9);  // 1..256
  bool ro = data[1] & 1;
  bool indirect = data[1] & 2;
  bool via_readahead = data[1] & 4;
  uint16_t start;
  memcpy(&start, data + 2, 2);
  data += 4;
  size -= 4;

  constexpr uint64_t kMem = 64 * 1024;
  constexpr uint64_t kGpa = 0x10000, kUva = 0x7f0000000000ull;
  std::vector<uint8_t> mem(kMem, 0);  // exactly the region: ASan flags any overrun
  memcpy(mem.data(), data, std::min<size_t>(size, kMem));
  GuestMemory gm({{kGpa, kMem, kUva, mem.data()}});

  SplitQueue q;
  // Rings at fixed places: desc at 0, avail at 0x2000, used at 0x3000 (fit for 256).
  if (!q.Configure(gm, qsize, {kUva, kUva + 0x2000, kUva + 0x3000}).ok()) __builtin_trap();
  q.set_last_avail_idx(start);
  q.set_indirect(indirect);
  auto mem_io = std::make_shared<fuzz::FuzzMemIo>(64 * 1024, ro);
  std::unique_ptr<ReadAheadBlockIo> readahead;
  if (via_readahead) {
    readahead = std::make_unique<ReadAheadBlockIo>(
        mem_io, ReadAheadOptions{.max_bytes = 16 * 1024, .window = 4096, .threads = 1});
  }
  BlockIo& io = readahead ? static_cast<BlockIo&>(*readahead) : *mem_io;
  BlkDeviceInfo info{(64 * 1024) / 512, ro, "fuzz-serial"};
  // Round 1 as the server's own thread does it; round 2 as with I/O threads: take
  // what is available, then complete it in reverse order (used entries out of order).
  auto r = q.Process(gm, io, info);
  (void)r;
  std::vector<PoppedRequest> taken;
  for (uint32_t i = 0; i < qsize; ++i) {
    PoppedRequest p;
    auto got = q.Pop(gm, &p);
    if (!got.ok() || !*got) break;
    taken.push_back(std::move(p));
  }
  for (auto it = taken.rbegin(); it != taken.rend(); ++it) {
    uint32_t used_len = ExecutePopped(io, info, *it);
    if (used_len > it->req.data_len + 1) __builtin_trap();
    q.PushUsed(it->head, used_len);
  }
  // Parse every head directly too (covers chains the avail ring did not name).
  std::vector<Segment> chain;
  for (uint32_t head = 0; head < qsize; ++head) {
    if (!ReadDescriptorChain(gm, mem.data(), qsize, static_cast<uint16_t>(head), &chain, indirect)
             .ok())
      continue;
    for (const Segment& s : chain) {
      if (s.host < mem.data() || s.host + s.len > mem.data() + kMem) __builtin_trap();
    }
    BlkRequest req;
    if (ParseBlkRequest(chain, &req).ok()) {
      uint32_t written = 0;
      ExecuteBlkRequest(io, info, req, &written);
      if (written > req.data_len) __builtin_trap();
    }
  }
  return 0;
}
