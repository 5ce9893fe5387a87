// Split virtqueues and virtio-blk requests: see virtio_blk.h.
#include "csi/node/vhost_user/virtio_blk.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <string>

namespace stellarium::node {

namespace {

// Layouts from virtio 1.2, 2.7 (little-endian; this backend runs on x86-64 hosts).
constexpr size_t kDescSize = 16;       // le64 addr, le32 len, le16 flags, le16 next
constexpr size_t kAvailHeader = 4;     // le16 flags, le16 idx
constexpr size_t kUsedHeader = 4;      // le16 flags, le16 idx
constexpr size_t kUsedElemSize = 8;    // le32 id, le32 len
constexpr size_t kBlkHeaderSize = 16;  // le32 type, le32 reserved, le64 sector

struct Desc {
  uint64_t addr;
  uint32_t len;
  uint16_t flags;
  uint16_t next;
};

Desc LoadDesc(const uint8_t* table, uint32_t i) {
  Desc d;
  const uint8_t* p = table + static_cast<size_t>(i) * kDescSize;
  memcpy(&d.addr, p, 8);
  memcpy(&d.len, p + 8, 4);
  memcpy(&d.flags, p + 12, 2);
  memcpy(&d.next, p + 14, 2);
  return d;
}

uint16_t LoadU16Acquire(const uint8_t* p) {
  return __atomic_load_n(reinterpret_cast<const uint16_t*>(p), __ATOMIC_ACQUIRE);
}

void StoreU16Release(uint8_t* p, uint16_t v) {
  __atomic_store_n(reinterpret_cast<uint16_t*>(p), v, __ATOMIC_RELEASE);
}

bool InRegion(const MemoryRegion& r, uint64_t base, uint64_t addr, uint64_t len) {
  return addr >= base && len <= r.size && addr - base <= r.size - len;
}

}  // namespace

uint8_t* GuestMemory::TranslateGuest(uint64_t gpa, uint64_t len) const {
  for (const auto& r : regions_) {
    if (InRegion(r, r.guest_addr, gpa, len)) return r.host + (gpa - r.guest_addr);
  }
  return nullptr;
}

uint8_t* GuestMemory::TranslateUser(uint64_t uva, uint64_t len) const {
  for (const auto& r : regions_) {
    if (InRegion(r, r.user_addr, uva, len)) return r.host + (uva - r.user_addr);
  }
  return nullptr;
}

namespace {

// Walks a chain through `table` (`entries` descriptors), appending its buffers to *out.
// `indirect_ok`: the head may be a VIRTQ_DESC_F_INDIRECT descriptor (only in the
// queue's own table, only alone: not chained, not nested); its table is walked instead.
Status WalkChain(const GuestMemory& mem, const uint8_t* table, uint32_t entries, uint16_t head,
                 uint32_t max_descs, bool indirect_ok, std::vector<Segment>* out) {
  uint64_t total = 0;
  bool seen_writable = false;
  uint32_t i = head;
  for (uint32_t count = 0;; ++count) {
    if (count >= max_descs) {
      return Status::InvalidArgument("virtqueue: descriptor chain from " + std::to_string(head) +
                                     " is longer than " + std::to_string(max_descs) +
                                     " (a loop or too many segments)");
    }
    Desc d = LoadDesc(table, i);  // one copy; validated below
    if (d.flags & kVirtqDescFIndirect) {
      if (!indirect_ok) {
        return Status::InvalidArgument(
            "virtqueue: indirect descriptor (not negotiated, nested or not at the head)");
      }
      // virtio 1.2, 2.7.5.3: the driver must not set NEXT with INDIRECT; the table is a
      // whole number of descriptors, at most as many as one request may use.
      if ((d.flags & kVirtqDescFNext) || d.len == 0 || d.len % kDescSize != 0 ||
          d.len / kDescSize > kBlkSegMax + 2) {
        return Status::InvalidArgument("virtqueue: indirect table of " + std::to_string(d.len) +
                                       " bytes is empty, chained, not a whole number of "
                                       "descriptors or longer than " +
                                       std::to_string(kBlkSegMax + 2));
      }
      const uint8_t* inner = mem.TranslateGuest(d.addr, d.len);
      if (inner == nullptr) {
        return Status::InvalidArgument("virtqueue: indirect table at guest address " +
                                       std::to_string(d.addr) + " is outside guest memory");
      }
      const uint32_t n = d.len / kDescSize;
      return WalkChain(mem, inner, n, 0, n, /*indirect_ok=*/false, out);
    }
    if (d.len == 0) return Status::InvalidArgument("virtqueue: zero-length descriptor");
    bool writable = (d.flags & kVirtqDescFWrite) != 0;
    if (seen_writable && !writable) {
      return Status::InvalidArgument("virtqueue: readable descriptor after a writable one");
    }
    seen_writable |= writable;
    total += d.len;
    if (total > kBlkMaxRequestBytes + kBlkHeaderSize + 1) {
      return Status::InvalidArgument("virtqueue: request larger than " +
                                     std::to_string(kBlkMaxRequestBytes) + " bytes");
    }
    uint8_t* host = mem.TranslateGuest(d.addr, d.len);
    if (host == nullptr) {
      return Status::InvalidArgument("virtqueue: buffer at guest address " +
                                     std::to_string(d.addr) + " length " + std::to_string(d.len) +
                                     " is outside guest memory");
    }
    out->push_back({host, d.len, writable});
    indirect_ok = false;  // only a chain's first descriptor may be indirect
    if (!(d.flags & kVirtqDescFNext)) break;
    if (d.next >= entries) {
      return Status::InvalidArgument("virtqueue: next descriptor " + std::to_string(d.next) +
                                     " past the table");
    }
    i = d.next;
  }
  return Status::Ok();
}

}  // namespace

Status ReadDescriptorChain(const GuestMemory& mem, const uint8_t* desc_table, uint32_t queue_size,
                           uint16_t head, std::vector<Segment>* out, bool indirect_ok) {
  out->clear();
  if (head >= queue_size) {
    return Status::InvalidArgument("virtqueue: head descriptor " + std::to_string(head) +
                                   " past the table of " + std::to_string(queue_size));
  }
  const uint32_t max_descs = std::min<uint32_t>(queue_size, kBlkSegMax + 2);
  return WalkChain(mem, desc_table, queue_size, head, max_descs, indirect_ok, out);
}

Status ParseBlkRequest(const std::vector<Segment>& chain, BlkRequest* out) {
  *out = BlkRequest();
  if (chain.empty()) return Status::InvalidArgument("virtio-blk: empty chain");
  const Segment& last = chain.back();
  if (last.device_writable && last.len >= 1) out->status = last.host + last.len - 1;
  if (out->status == nullptr) {
    return Status::InvalidArgument("virtio-blk: no writable status byte at the end");
  }
  // Header: the first 16 bytes, from readable descriptors.
  uint8_t header[kBlkHeaderSize];
  size_t have = 0;
  size_t seg = 0, off = 0;
  while (have < kBlkHeaderSize && seg < chain.size()) {
    const Segment& s = chain[seg];
    if (s.device_writable) break;
    size_t n = std::min<size_t>(kBlkHeaderSize - have, s.len - off);
    memcpy(header + have, s.host + off, n);
    have += n;
    off += n;
    if (off == s.len) {
      ++seg;
      off = 0;
    }
  }
  if (have < kBlkHeaderSize) {
    return Status::InvalidArgument("virtio-blk: request header shorter than 16 bytes");
  }
  memcpy(&out->type, header, 4);
  memcpy(&out->sector, header + 8, 8);
  // Data: everything after the header up to (excluding) the status byte.
  size_t nsegs = chain.size();
  for (; seg < nsegs; ++seg) {
    const Segment& s = chain[seg];
    uint32_t len = s.len - static_cast<uint32_t>(off);
    if (seg == nsegs - 1) len -= 1;  // the status byte
    if (len > 0) {
      out->data.push_back({s.host + off, len, s.device_writable});
      out->data_len += len;
    }
    off = 0;
  }
  if (out->data.size() > kBlkSegMax) {
    return Status::InvalidArgument("virtio-blk: more than " + std::to_string(kBlkSegMax) +
                                   " data segments");
  }
  return Status::Ok();
}

uint8_t ExecuteBlkRequest(BlockIo& io, const BlkDeviceInfo& info, const BlkRequest& req,
                          uint32_t* written) {
  *written = 0;
  switch (req.type) {
    case kVirtioBlkTIn:
    case kVirtioBlkTOut: {
      bool is_read = req.type == kVirtioBlkTIn;
      if (!is_read && info.read_only) return kVirtioBlkSIoErr;
      if (req.data_len == 0 || req.data_len % kSectorSize != 0 ||
          req.data_len > kBlkMaxRequestBytes) {
        return kVirtioBlkSIoErr;
      }
      uint64_t sectors = req.data_len / kSectorSize;
      if (req.sector > info.capacity_sectors || sectors > info.capacity_sectors - req.sector) {
        return kVirtioBlkSIoErr;  // past the end of the volume
      }
      // A read fills guest buffers: they must be device-writable, and vice versa.
      for (const Segment& s : req.data) {
        if (s.device_writable != is_read) return kVirtioBlkSIoErr;
      }
      const uint64_t offset = req.sector * kSectorSize;
      if (req.data.size() == 1) {
        const Segment& s = req.data[0];
        Status st = is_read ? io.Read(offset, s.len, reinterpret_cast<char*>(s.host))
                            : io.Write(offset, reinterpret_cast<const char*>(s.host), s.len);
        if (!st.ok()) return kVirtioBlkSIoErr;
      } else if (PieceReader* pieces = is_read ? dynamic_cast<PieceReader*>(&io) : nullptr) {
        // Pieces come in order: walk the guest's segments along with them (from the
        // start again should one come earlier; never past the request).
        size_t seg = 0;
        uint64_t seg_start = 0;  // offset of data[seg] within the request
        Status st =
            pieces->ReadPieces(offset, req.data_len, [&](uint64_t at, const char* src, size_t n) {
              if (at < seg_start) seg = 0, seg_start = 0;
              if (at > req.data_len || n > req.data_len - at) return;
              while (n > 0) {
                while (at >= seg_start + req.data[seg].len) seg_start += req.data[seg++].len;
                const uint64_t in_seg = at - seg_start;
                const size_t k = std::min<uint64_t>(n, req.data[seg].len - in_seg);
                memcpy(req.data[seg].host + in_seg, src, k);
                at += k;
                src += k;
                n -= k;
              }
            });
        if (!st.ok()) return kVirtioBlkSIoErr;
      } else {
        // The guest's buffers are usually scattered pages: one read or write of the
        // whole range through a bounce buffer costs the store one lookup of the range
        // instead of one per page. data_len is bounded by the segment limits.
        thread_local std::string bounce;
        bounce.resize(req.data_len);
        if (!is_read) {
          size_t at = 0;
          for (const Segment& s : req.data) memcpy(bounce.data() + at, s.host, s.len), at += s.len;
        }
        Status st = is_read ? io.Read(offset, req.data_len, bounce.data())
                            : io.Write(offset, bounce.data(), req.data_len);
        if (!st.ok()) return kVirtioBlkSIoErr;
        if (is_read) {
          size_t at = 0;
          for (const Segment& s : req.data) memcpy(s.host, bounce.data() + at, s.len), at += s.len;
        }
      }
      if (is_read) *written = static_cast<uint32_t>(req.data_len);
      return kVirtioBlkSOk;
    }
    case kVirtioBlkTFlush:
      if (info.read_only) return kVirtioBlkSOk;
      return io.Flush().ok() ? kVirtioBlkSOk : kVirtioBlkSIoErr;
    case kVirtioBlkTGetId: {
      char id[kVirtioBlkIdBytes] = {};
      memcpy(id, info.serial.data(), std::min<size_t>(info.serial.size(), kVirtioBlkIdBytes));
      uint32_t left = kVirtioBlkIdBytes;
      const char* src = id;
      for (const Segment& s : req.data) {
        if (!s.device_writable) return kVirtioBlkSIoErr;
        uint32_t n = std::min(left, s.len);
        memcpy(s.host, src, n);
        src += n;
        left -= n;
        *written += n;
        if (left == 0) break;
      }
      return kVirtioBlkSOk;
    }
    default:
      return kVirtioBlkSUnsupp;
  }
}

Status SplitQueue::Configure(const GuestMemory& mem, uint32_t size, const VringAddresses& addrs) {
  Reset();
  if (size == 0 || size > kMaxQueueSize || (size & (size - 1)) != 0) {
    return Status::InvalidArgument("virtqueue: size " + std::to_string(size) +
                                   " is not a power of two in [1, 32768]");
  }
  uint8_t* desc = mem.TranslateUser(addrs.desc_user_addr, kDescSize * size);
  uint8_t* avail = mem.TranslateUser(addrs.avail_user_addr, kAvailHeader + 2ull * size + 2);
  uint8_t* used = mem.TranslateUser(addrs.used_user_addr, kUsedHeader + kUsedElemSize * size + 2);
  if (desc == nullptr || avail == nullptr || used == nullptr) {
    return Status::InvalidArgument("virtqueue: ring of size " + std::to_string(size) +
                                   " does not lie inside guest memory");
  }
  if ((reinterpret_cast<uintptr_t>(avail) & 1) || (reinterpret_cast<uintptr_t>(used) & 3)) {
    return Status::InvalidArgument("virtqueue: misaligned available or used ring");
  }
  size_ = size;
  desc_ = desc;
  avail_ = avail;
  used_ = used;
  memcpy(&used_idx_, used_ + 2, 2);
  return Status::Ok();
}

void SplitQueue::Reset() {
  size_ = 0;
  desc_ = avail_ = used_ = nullptr;
  broken_ = false;
}

uint32_t ExecutePopped(BlockIo& io, const BlkDeviceInfo& info, const PoppedRequest& p) {
  if (p.parsed.ok()) {
    uint32_t written = 0;
    *p.req.status = ExecuteBlkRequest(io, info, p.req, &written);
    return written + 1;
  }
  if (p.req.status == nullptr) return 0;  // nowhere to report: returned unused
  *p.req.status = kVirtioBlkSIoErr;
  return 1;
}

Result<bool> SplitQueue::Pop(const GuestMemory& mem, PoppedRequest* out) {
  if (!configured()) return Status::FailedPrecondition("virtqueue: not configured");
  if (broken_) return Status::FailedPrecondition("virtqueue: broken by an earlier corrupt ring");
  uint16_t avail_idx = LoadU16Acquire(avail_ + 2);
  if (avail_idx == last_avail_idx_) return false;
  if (static_cast<uint16_t>(avail_idx - last_avail_idx_) > size_) {
    broken_ = true;
    return Status::FailedPrecondition(
        "virtqueue: available index jumped by more than the queue size");
  }
  uint16_t head;
  memcpy(&head, avail_ + kAvailHeader + 2 * (last_avail_idx_ % size_), 2);
  if (head >= size_) {
    broken_ = true;
    return Status::FailedPrecondition("virtqueue: available ring names descriptor " +
                                      std::to_string(head) + " past the table");
  }
  ++last_avail_idx_;
  out->head = head;
  out->req = BlkRequest();
  Status chain_ok = ReadDescriptorChain(mem, desc_, size_, head, &chain_, indirect_);
  out->parsed = chain_ok.ok() ? ParseBlkRequest(chain_, &out->req) : chain_ok;
  return true;
}

bool SplitQueue::HasAvailable() const {
  return configured() && !broken_ && LoadU16Acquire(avail_ + 2) != last_avail_idx_;
}

void SplitQueue::PushUsed(uint16_t head, uint32_t len) {
  uint8_t* elem = used_ + kUsedHeader + kUsedElemSize * (used_idx_ % size_);
  uint32_t id = head;
  memcpy(elem, &id, 4);
  memcpy(elem + 4, &len, 4);
  ++used_idx_;
  StoreU16Release(used_ + 2, used_idx_);
}

Result<uint32_t> SplitQueue::Process(const GuestMemory& mem, BlockIo& io,
                                     const BlkDeviceInfo& info) {
  if (!configured()) return Status::FailedPrecondition("virtqueue: not configured");
  if (broken_) return Status::FailedPrecondition("virtqueue: broken by an earlier corrupt ring");
  uint32_t done = 0;
  PoppedRequest p;
  // At most one ring's worth per call, so a guest that keeps adding requests cannot
  // keep this thread from its other work (the caller calls again when done == size).
  while (done < size_) {
    ASSIGN_OR_RETURN(bool got, Pop(mem, &p));
    if (!got) break;
    PushUsed(p.head, ExecutePopped(io, info, p));
    ++done;
  }
  std::atomic_thread_fence(std::memory_order_seq_cst);
  return done;
}

}  // namespace stellarium::node
