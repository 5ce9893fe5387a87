// The vhost-user wire protocol (QEMU docs/interop/vhost-user.rst): message numbers,
// feature bits and pure parsers for every payload this backend accepts. No sockets
// here: the parsers take bytes and return validated values, so fuzz/ can drive them.
//
// All numbers are native byte order (the front-end is on the same host).
// Thread-safety: pure functions.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "core/status.h"

namespace stellarium::node {

// Message ids (front-end requests). Part of the protocol; never renumber.
enum VhostUserRequest : uint32_t {
  kVhostUserGetFeatures = 1,
  kVhostUserSetFeatures = 2,
  kVhostUserSetOwner = 3,
  kVhostUserResetOwner = 4,
  kVhostUserSetMemTable = 5,
  kVhostUserSetLogBase = 6,
  kVhostUserSetLogFd = 7,
  kVhostUserSetVringNum = 8,
  kVhostUserSetVringAddr = 9,
  kVhostUserSetVringBase = 10,
  kVhostUserGetVringBase = 11,
  kVhostUserSetVringKick = 12,
  kVhostUserSetVringCall = 13,
  kVhostUserSetVringErr = 14,
  kVhostUserGetProtocolFeatures = 15,
  kVhostUserSetProtocolFeatures = 16,
  kVhostUserGetQueueNum = 17,
  kVhostUserSetVringEnable = 18,
  kVhostUserGetConfig = 24,
  kVhostUserSetConfig = 25,
};

// Header flags.
inline constexpr uint32_t kVhostUserVersion = 0x1;
inline constexpr uint32_t kVhostUserVersionMask = 0x3;
inline constexpr uint32_t kVhostUserReplyFlag = 1u << 2;
inline constexpr uint32_t kVhostUserNeedReplyFlag = 1u << 3;

// Feature bits (virtio 1.2 and vhost-user).
inline constexpr int kVirtioBlkFSizeMax = 1;
inline constexpr int kVirtioBlkFSegMax = 2;
inline constexpr int kVirtioBlkFRo = 5;
inline constexpr int kVirtioBlkFBlkSize = 6;
inline constexpr int kVirtioBlkFFlush = 9;
inline constexpr int kVirtioBlkFMq = 12;
inline constexpr int kVirtioRingFIndirectDesc = 28;
inline constexpr int kVhostUserFProtocolFeatures = 30;
inline constexpr int kVirtioFVersion1 = 32;

// Protocol feature bits.
inline constexpr int kVhostUserProtocolFMq = 0;
inline constexpr int kVhostUserProtocolFReplyAck = 3;
inline constexpr int kVhostUserProtocolFConfig = 9;

inline constexpr size_t kVhostUserHeaderSize = 12;
inline constexpr size_t kVhostUserMaxPayload = 4096;
inline constexpr uint32_t kVhostUserMaxRegions = 8;
inline constexpr uint32_t kVhostUserMaxFds = 8;
inline constexpr uint32_t kVirtioBlkConfigSize =
    256;  // config space we serve (zeros past the fields)

struct VhostUserHeader {
  uint32_t request = 0;
  uint32_t flags = 0;
  uint32_t size = 0;
};

// A whole message: header plus payload (size == payload.size()).
struct VhostUserMessage {
  VhostUserHeader header;
  std::vector<uint8_t> payload;
};

struct VringState {
  uint32_t index = 0;
  uint32_t num = 0;
};

struct VringAddr {
  uint32_t index = 0;
  uint32_t flags = 0;
  uint64_t desc_user_addr = 0;
  uint64_t used_user_addr = 0;
  uint64_t avail_user_addr = 0;
  uint64_t log_guest_addr = 0;
};

struct MemRegionDesc {
  uint64_t guest_addr = 0;
  uint64_t size = 0;
  uint64_t user_addr = 0;
  uint64_t mmap_offset = 0;
};

struct ConfigAccess {
  uint32_t offset = 0;
  uint32_t size = 0;
  uint32_t flags = 0;
};

// Checks a 12-byte header: version 1, not a reply, payload size at most
// kVhostUserMaxPayload. INVALID_ARGUMENT otherwise (the connection is then closed).
Status ParseVhostUserHeader(const uint8_t* data, size_t len, VhostUserHeader* out);
// Payload parsers: each checks the exact size the request needs.
Result<uint64_t> ParseU64Payload(const std::vector<uint8_t>& payload);
Result<VringState> ParseVringState(const std::vector<uint8_t>& payload, uint32_t num_queues);
Result<VringAddr> ParseVringAddr(const std::vector<uint8_t>& payload, uint32_t num_queues);
// SET_MEM_TABLE: 1..8 regions, one file descriptor each (fd_count), no zero sizes, no
// address arithmetic that overflows, no two regions overlapping in guest or user space.
Result<std::vector<MemRegionDesc>> ParseMemTable(const std::vector<uint8_t>& payload,
                                                 size_t fd_count);
// GET_CONFIG: offset + size within kVirtioBlkConfigSize and the payload carrying
// exactly `size` bytes after the 12-byte access header.
Result<ConfigAccess> ParseConfigAccess(const std::vector<uint8_t>& payload);
// SET_VRING_KICK / CALL / ERR: the u64 holds the ring index (bits 0-7) and bit 8 set
// when no fd is sent. Validates index < num_queues and that fd presence matches.
Result<uint32_t> ParseVringFdIndex(const std::vector<uint8_t>& payload, uint32_t num_queues,
                                   size_t fd_count, bool* no_fd);

// Serializes a reply to `request` with the given payload.
std::vector<uint8_t> EncodeReply(uint32_t request, const void* payload, size_t size);

}  // namespace stellarium::node
