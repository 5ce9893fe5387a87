// Split virtqueues and virtio-blk request handling over guest memory, written from the
// virtio 1.2 specification (sections 2.7 "Split Virtqueues" and 5.2 "Block Device").
//
// Everything here is pure computation over memory the caller has mapped: no sockets, no
// file descriptors. That keeps it testable and lets fuzz/ drive it with arbitrary bytes.
//
// Trust model: every byte of guest memory is controlled by the guest and may change at
// any moment (another vCPU). So each descriptor, ring index and request header is copied
// out once, then validated on the copy; a guest address becomes a host pointer only
// through GuestMemory, which checks that the whole range lies inside one mapped region.
// A bad chain or request gets VIRTIO_BLK_S_IOERR/UNSUPP when a status byte can be found,
// otherwise it is returned as used with length 0; a corrupt ring (an index jump larger
// than the queue, a head past the table) stops the queue. Nothing is ever accessed
// outside the mapped regions and the volume's [0, size).
//
// Thread-safety: GuestMemory is immutable after construction (share it read-only);
// a SplitQueue is used by one thread at a time.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/block_io.h"
#include "core/status.h"
#include "csi/node/read_ahead.h"

namespace stellarium::node {

// virtio-blk constants (virtio 1.2, 5.2). Part of the virtio ABI; never renumber.
inline constexpr uint32_t kVirtioBlkTIn = 0;
inline constexpr uint32_t kVirtioBlkTOut = 1;
inline constexpr uint32_t kVirtioBlkTFlush = 4;
inline constexpr uint32_t kVirtioBlkTGetId = 8;
inline constexpr uint8_t kVirtioBlkSOk = 0;
inline constexpr uint8_t kVirtioBlkSIoErr = 1;
inline constexpr uint8_t kVirtioBlkSUnsupp = 2;
inline constexpr uint32_t kVirtioBlkIdBytes = 20;
inline constexpr uint64_t kSectorSize = 512;

inline constexpr uint16_t kVirtqDescFNext = 1;
inline constexpr uint16_t kVirtqDescFWrite = 2;
inline constexpr uint16_t kVirtqDescFIndirect = 4;
inline constexpr uint32_t kMaxQueueSize = 32768;

// Limits we advertise (VIRTIO_BLK_F_SIZE_MAX, VIRTIO_BLK_F_SEG_MAX) and enforce.
inline constexpr uint32_t kBlkSizeMax = 1 << 20;  // bytes in one data descriptor
// seg_max 254: with the header and status descriptors a chain fits a 256-entry ring
// without indirect descriptors (Firecracker), and a 1 MiB read of scattered pages is
// one request with them (QEMU's own virtio-blk advertises the same).
inline constexpr uint32_t kBlkSegMax = 254;                  // data descriptors in one request
inline constexpr uint64_t kBlkMaxRequestBytes = 8ull << 20;  // data bytes in one request

// One mapped region of guest memory.
struct MemoryRegion {
  uint64_t guest_addr = 0;  // guest physical address of the first byte
  uint64_t size = 0;
  uint64_t user_addr = 0;   // the VMM's virtual address of the first byte
  uint8_t* host = nullptr;  // our mapping of the first byte
};

class GuestMemory {
 public:
  GuestMemory() = default;
  explicit GuestMemory(std::vector<MemoryRegion> regions) : regions_(std::move(regions)) {}
  // Host pointer to [gpa, gpa+len) if the range lies inside one region, else nullptr.
  uint8_t* TranslateGuest(uint64_t gpa, uint64_t len) const;
  // The same for a VMM virtual address (vring addresses are given that way).
  uint8_t* TranslateUser(uint64_t uva, uint64_t len) const;
  bool empty() const { return regions_.empty(); }
  const std::vector<MemoryRegion>& regions() const { return regions_; }

 private:
  std::vector<MemoryRegion> regions_;
};

// Where a split virtqueue's three parts are, in host memory.
struct VringAddresses {
  uint64_t desc_user_addr = 0;
  uint64_t avail_user_addr = 0;
  uint64_t used_user_addr = 0;
};

// A piece of a descriptor chain, already translated and bounds-checked.
struct Segment {
  uint8_t* host = nullptr;
  uint32_t len = 0;
  bool device_writable = false;
};

// Walks the chain starting at `head` in a descriptor table of `queue_size` entries.
// With `indirect_ok` (VIRTIO_RING_F_INDIRECT_DESC negotiated) the head may instead be
// one indirect descriptor whose table (in guest memory, a whole number of descriptors,
// at most kBlkSegMax + 2) holds the chain. INVALID_ARGUMENT on: head or next out of
// range, a loop (more descriptors than the table or kBlkSegMax + 2), an indirect
// descriptor that is not negotiated, not alone at the head, or nested, a zero-length or
// untranslatable buffer or table, a readable descriptor after a writable one, or more
// than kBlkMaxRequestBytes + 17 bytes in total.
Status ReadDescriptorChain(const GuestMemory& mem, const uint8_t* desc_table, uint32_t queue_size,
                           uint16_t head, std::vector<Segment>* out, bool indirect_ok = false);

// A virtio-blk request split out of a chain.
struct BlkRequest {
  uint32_t type = 0;
  uint64_t sector = 0;
  std::vector<Segment> data;  // the bytes between the header and the status byte
  uint64_t data_len = 0;
  uint8_t* status = nullptr;  // the last byte of the chain (device-writable)
};

// Splits a chain into header (16 readable bytes, possibly spread over descriptors),
// data and the status byte (the last byte, which must be writable). INVALID_ARGUMENT
// if there is no room for them; `status` is still set when a status byte exists so the
// caller can report the error.
Status ParseBlkRequest(const std::vector<Segment>& chain, BlkRequest* out);

struct BlkDeviceInfo {
  uint64_t capacity_sectors = 0;
  bool read_only = false;
  std::string serial;  // GET_ID answer, at most 20 bytes used
};

// Validates and executes one request against the volume. Returns the status byte to
// write and sets *written to the number of data bytes the device wrote (IN, GET_ID).
uint8_t ExecuteBlkRequest(BlockIo& io, const BlkDeviceInfo& info, const BlkRequest& req,
                          uint32_t* written);

// A request taken off a queue's available ring by SplitQueue::Pop, not yet completed.
// Its segments point into guest memory: it must be completed (PushUsed) before that
// memory is unmapped or the queue reconfigured.
struct PoppedRequest {
  uint16_t head = 0;  // the chain's head descriptor: the id to put on the used ring
  Status parsed;      // OK if the chain and header were valid; `req` is then complete
  BlkRequest req;     // req.status may be set even when !parsed.ok()
};

// Executes a popped request (or, when it did not parse, reports IOERR through its
// status byte if it has one) and returns the length to put on the used ring: the data
// bytes written plus the status byte, or 0 when there was no status byte to write.
uint32_t ExecutePopped(BlockIo& io, const BlkDeviceInfo& info, const PoppedRequest& p);

// One split virtqueue, owned by the device side.
//
// Thread-safety: Configure/Reset/set_last_avail_idx/Process need exclusive access.
// Otherwise Pop (the available side) and PushUsed (the used side) touch disjoint state
// and ring parts: one thread may Pop while another PushUsed-s, each serialized with
// itself. Completions may be pushed in any order (VIRTIO_F_IN_ORDER is not offered).
class SplitQueue {
 public:
  // Sets size and addresses and translates them. INVALID_ARGUMENT if the size is not a
  // power of two in [1, 32768] or a part does not lie inside the mapped memory.
  Status Configure(const GuestMemory& mem, uint32_t size, const VringAddresses& addrs);
  bool configured() const { return desc_ != nullptr; }
  void Reset();
  // Whether chains may use an indirect table (VIRTIO_RING_F_INDIRECT_DESC negotiated).
  // Kept across Configure/Reset.
  void set_indirect(bool on) { indirect_ = on; }
  uint16_t last_avail_idx() const { return last_avail_idx_; }
  void set_last_avail_idx(uint16_t idx) { last_avail_idx_ = idx; }
  uint32_t size() const { return size_; }
  bool broken() const { return broken_; }

  // Handles available requests, at most size() per call. Returns how many were
  // completed (put on the used ring); when that is size(), more may be waiting and the
  // caller should call again. FAILED_PRECONDITION if the ring itself is corrupt (the
  // queue is then marked broken and processes nothing more until reconfigured).
  // Pop + ExecutePopped + PushUsed in the calling thread.
  Result<uint32_t> Process(const GuestMemory& mem, BlockIo& io, const BlkDeviceInfo& info);

  // Takes the next available request into *out. Returns false when the available ring
  // is empty; FAILED_PRECONDITION if the ring is corrupt (the queue is then broken). A
  // chain that does not parse is still taken (out->parsed says why) and must be pushed.
  Result<bool> Pop(const GuestMemory& mem, PoppedRequest* out);
  // Puts `head` on the used ring with `len` and publishes the used index (release).
  void PushUsed(uint16_t head, uint32_t len);
  // True if the available ring holds requests not yet taken (Pop's side).
  bool HasAvailable() const;

 private:
  uint32_t size_ = 0;
  uint8_t* desc_ = nullptr;
  uint8_t* avail_ = nullptr;
  uint8_t* used_ = nullptr;
  uint16_t last_avail_idx_ = 0;
  uint16_t used_idx_ = 0;  // ours; read from the ring once when configured
  bool broken_ = false;
  bool indirect_ = false;
  std::vector<Segment> chain_;  // scratch, reused
};

}  // namespace stellarium::node
