// Fuzzes the vhost-user message handling: the input is what a hostile VMM sends. Layout:
//   u16 n, then n & 0x7fff bytes of guest memory content (a memfd handed over with
//   SET_MEM_TABLE), then a stream of messages (12-byte header + payload). n's top
//   bit runs requests on I/O threads.
// SET_MEM_TABLE gets the memfd, SET_VRING_KICK/CALL/ERR an eventfd, so the whole state
// machine (memory mapping, ring configuration, queue processing) is reachable. Every
// message is also run through the pure payload parsers.
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "csi/node/vhost_user/vhost_user_blk.h"
#include "fuzz/fuzz_mem_io.h"

using namespace stellarium;
using namespace stellarium::node;

namespace {

constexpr size_t kMemSize = 64 * 1024;

int GuestMemfd() {
  static int fd = [] {
    int f = memfd_create("fuzz-guest", MFD_CLOEXEC);
    if (f < 0 || ftruncate(f, kMemSize) != 0) __builtin_trap();
    return f;
  }();
  return fd;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  uint16_t n;
  memcpy(&n, data, 2);
  data += 2;
  size -= 2;
  // The top bit of n picks how requests run: in this thread (reproducible) or on two
  // I/O threads, as the server runs them.
  const uint32_t io_threads = (n & 0x8000) ? 2 : 0;
  n &= 0x7fff;
  n = static_cast<uint16_t>(std::min<size_t>(n, size));
  std::vector<uint8_t> content(kMemSize, 0);
  memcpy(content.data(), data, n);
  if (pwrite(GuestMemfd(), content.data(), kMemSize, 0) != static_cast<ssize_t>(kMemSize)) {
    __builtin_trap();
  }
  data += n;
  size -= n;

  auto io = std::make_shared<fuzz::FuzzMemIo>(64 * 1024);
  VhostUserBlkSession session(io, {.num_queues = 2, .serial = "fuzz", .io_threads = io_threads});
  while (size >= kVhostUserHeaderSize) {
    VhostUserMessage msg;
    if (!ParseVhostUserHeader(data, size, &msg.header).ok()) break;
    data += kVhostUserHeaderSize;
    size -= kVhostUserHeaderSize;
    if (msg.header.size > size) break;
    msg.payload.assign(data, data + msg.header.size);
    data += msg.header.size;
    size -= msg.header.size;

    // The pure parsers, on every payload.
    (void)ParseU64Payload(msg.payload);
    (void)ParseVringState(msg.payload, 2);
    (void)ParseVringAddr(msg.payload, 2);
    (void)ParseMemTable(msg.payload, 1);
    (void)ParseConfigAccess(msg.payload);
    bool no_fd;
    (void)ParseVringFdIndex(msg.payload, 2, 1, &no_fd);

    std::vector<UniqueFd> fds;
    uint32_t r = msg.header.request;
    if (r == kVhostUserSetMemTable) {
      fds.emplace_back(dup(GuestMemfd()));
    } else if ((r == kVhostUserSetVringKick || r == kVhostUserSetVringCall ||
                r == kVhostUserSetVringErr) &&
               msg.payload.size() == 8 && !(msg.payload[1] & 1)) {
      fds.emplace_back(eventfd(0, EFD_CLOEXEC));
    }
    std::vector<uint8_t> reply;
    if (!session.HandleMessage(msg, std::move(fds), &reply).ok()) break;  // connection closed
    if (!reply.empty() && reply.size() < kVhostUserHeaderSize) __builtin_trap();
    for (uint32_t q = 0; q < session.num_queues(); ++q) (void)session.ProcessQueue(q);
  }
  return 0;
}
