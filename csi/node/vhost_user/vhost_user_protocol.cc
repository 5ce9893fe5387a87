// vhost-user message parsing: see vhost_user_protocol.h.
#include "csi/node/vhost_user/vhost_user_protocol.h"

#include <algorithm>

namespace stellarium::node {

namespace {

template <typename T>
T Load(const uint8_t* p) {
  T v;
  memcpy(&v, p, sizeof(v));
  return v;
}

Status WrongSize(const char* what, size_t got, size_t want) {
  return Status::InvalidArgument(std::string("vhost-user ") + what + ": payload of " +
                                 std::to_string(got) + " bytes, expected " + std::to_string(want));
}

bool Overlaps(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen) {
  return a < b + blen && b < a + alen;  // callers ensured no overflow
}

}  // namespace

Status ParseVhostUserHeader(const uint8_t* data, size_t len, VhostUserHeader* out) {
  if (len < kVhostUserHeaderSize) return WrongSize("header", len, kVhostUserHeaderSize);
  out->request = Load<uint32_t>(data);
  out->flags = Load<uint32_t>(data + 4);
  out->size = Load<uint32_t>(data + 8);
  if ((out->flags & kVhostUserVersionMask) != kVhostUserVersion) {
    return Status::InvalidArgument(
        "vhost-user message " + std::to_string(out->request) + ": protocol version " +
        std::to_string(out->flags & kVhostUserVersionMask) + " is not 1");
  }
  if (out->flags & kVhostUserReplyFlag) {
    return Status::InvalidArgument("vhost-user message " + std::to_string(out->request) +
                                   ": a reply sent to the back-end");
  }
  if (out->size > kVhostUserMaxPayload) {
    return Status::InvalidArgument("vhost-user message " + std::to_string(out->request) +
                                   ": payload of " + std::to_string(out->size) + " bytes exceeds " +
                                   std::to_string(kVhostUserMaxPayload));
  }
  return Status::Ok();
}

Result<uint64_t> ParseU64Payload(const std::vector<uint8_t>& payload) {
  if (payload.size() != 8) return WrongSize("u64", payload.size(), 8);
  return Load<uint64_t>(payload.data());
}

Result<VringState> ParseVringState(const std::vector<uint8_t>& payload, uint32_t num_queues) {
  if (payload.size() != 8) return WrongSize("vring state", payload.size(), 8);
  VringState s{Load<uint32_t>(payload.data()), Load<uint32_t>(payload.data() + 4)};
  if (s.index >= num_queues) {
    return Status::InvalidArgument("vhost-user vring " + std::to_string(s.index) + ": only " +
                                   std::to_string(num_queues) + " queues");
  }
  return s;
}

Result<VringAddr> ParseVringAddr(const std::vector<uint8_t>& payload, uint32_t num_queues) {
  if (payload.size() != 40) return WrongSize("vring address", payload.size(), 40);
  VringAddr a;
  const uint8_t* p = payload.data();
  a.index = Load<uint32_t>(p);
  a.flags = Load<uint32_t>(p + 4);
  a.desc_user_addr = Load<uint64_t>(p + 8);
  a.used_user_addr = Load<uint64_t>(p + 16);
  a.avail_user_addr = Load<uint64_t>(p + 24);
  a.log_guest_addr = Load<uint64_t>(p + 32);
  if (a.index >= num_queues) {
    return Status::InvalidArgument("vhost-user vring " + std::to_string(a.index) + ": only " +
                                   std::to_string(num_queues) + " queues");
  }
  return a;
}

Result<std::vector<MemRegionDesc>> ParseMemTable(const std::vector<uint8_t>& payload,
                                                 size_t fd_count) {
  if (payload.size() < 8) return WrongSize("memory table", payload.size(), 8);
  uint32_t n = Load<uint32_t>(payload.data());
  if (n == 0 || n > kVhostUserMaxRegions) {
    return Status::InvalidArgument("vhost-user memory table: " + std::to_string(n) +
                                   " regions, expected 1 to 8");
  }
  size_t want = 8 + 32 * static_cast<size_t>(n);
  // QEMU sends the full 8-region array; accept anything that holds the n regions.
  if (payload.size() < want) return WrongSize("memory table", payload.size(), want);
  if (fd_count != n) {
    return Status::InvalidArgument("vhost-user memory table: " + std::to_string(n) +
                                   " regions but " + std::to_string(fd_count) + " fds");
  }
  std::vector<MemRegionDesc> out;
  for (uint32_t i = 0; i < n; ++i) {
    const uint8_t* p = payload.data() + 8 + 32 * i;
    MemRegionDesc r{Load<uint64_t>(p), Load<uint64_t>(p + 8), Load<uint64_t>(p + 16),
                    Load<uint64_t>(p + 24)};
    if (r.size == 0 || r.guest_addr + r.size < r.guest_addr || r.user_addr + r.size < r.user_addr ||
        r.mmap_offset + r.size < r.mmap_offset) {
      return Status::InvalidArgument("vhost-user memory region " + std::to_string(i) +
                                     ": empty or wraps around the address space");
    }
    for (const auto& o : out) {
      if (Overlaps(r.guest_addr, r.size, o.guest_addr, o.size) ||
          Overlaps(r.user_addr, r.size, o.user_addr, o.size)) {
        return Status::InvalidArgument("vhost-user memory region " + std::to_string(i) +
                                       ": overlaps another region");
      }
    }
    out.push_back(r);
  }
  return out;
}

Result<ConfigAccess> ParseConfigAccess(const std::vector<uint8_t>& payload) {
  if (payload.size() < 12) return WrongSize("config", payload.size(), 12);
  ConfigAccess c{Load<uint32_t>(payload.data()), Load<uint32_t>(payload.data() + 4),
                 Load<uint32_t>(payload.data() + 8)};
  if (payload.size() != 12 + static_cast<size_t>(c.size)) {
    return WrongSize("config", payload.size(), 12 + static_cast<size_t>(c.size));
  }
  if (c.offset > kVirtioBlkConfigSize || c.size > kVirtioBlkConfigSize - c.offset) {
    return Status::InvalidArgument("vhost-user config access [" + std::to_string(c.offset) + ", +" +
                                   std::to_string(c.size) + ") outside the " +
                                   std::to_string(kVirtioBlkConfigSize) + "-byte config space");
  }
  return c;
}

Result<uint32_t> ParseVringFdIndex(const std::vector<uint8_t>& payload, uint32_t num_queues,
                                   size_t fd_count, bool* no_fd) {
  ASSIGN_OR_RETURN(uint64_t v, ParseU64Payload(payload));
  uint32_t index = static_cast<uint32_t>(v & 0xff);
  *no_fd = (v & 0x100) != 0;
  if ((v & ~0x1ffull) != 0) {
    return Status::InvalidArgument("vhost-user vring fd message: unknown bits set");
  }
  if (index >= num_queues) {
    return Status::InvalidArgument("vhost-user vring " + std::to_string(index) + ": only " +
                                   std::to_string(num_queues) + " queues");
  }
  if (fd_count != (*no_fd ? 0u : 1u)) {
    return Status::InvalidArgument("vhost-user vring " + std::to_string(index) + ": " +
                                   std::to_string(fd_count) + " fds where " +
                                   (*no_fd ? "none" : "one") + " was announced");
  }
  return index;
}

std::vector<uint8_t> EncodeReply(uint32_t request, const void* payload, size_t size) {
  std::vector<uint8_t> out(kVhostUserHeaderSize + size);
  uint32_t flags = kVhostUserVersion | kVhostUserReplyFlag;
  uint32_t sz = static_cast<uint32_t>(size);
  memcpy(out.data(), &request, 4);
  memcpy(out.data() + 4, &flags, 4);
  memcpy(out.data() + 8, &sz, 4);
  if (size > 0) memcpy(out.data() + kVhostUserHeaderSize, payload, size);
  return out;
}

}  // namespace stellarium::node
