// BlockIo: byte-addressed access to one volume's contents. It is the seam between the
// storage engine and whatever exposes a volume (a FUSE file behind a loop device, a
// vhost-user-blk backend, an export to a raw file): they all read and write through
// this interface and never see chunks, layers or RocksDB.
//
// Thread-safety: implementations are safe to call from several threads at once;
// overlapping writes are applied in some serial order.
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/status.h"

namespace stellarium {

class BlockIo {
 public:
  virtual ~BlockIo() = default;

  // Virtual size in bytes (a multiple of block_size()).
  virtual uint64_t size() const = 0;
  // The volume's block size: the unit of copy-on-write. Any offset and length are
  // accepted, but I/O aligned to it avoids read-modify-write.
  virtual uint32_t block_size() const = 0;
  virtual bool read_only() const = 0;

  // Reads [offset, offset+len). REQUIRES: offset + len <= size().
  // OUT_OF_RANGE past the end; DATA_LOSS if a stored chunk fails its checksum.
  virtual Status Read(uint64_t offset, size_t len, char* out) = 0;
  // Writes [offset, offset+len). OUT_OF_RANGE past the end; FAILED_PRECONDITION if
  // read-only. The data is visible to readers at once and durable after Flush().
  virtual Status Write(uint64_t offset, const char* data, size_t len) = 0;
  // Makes every completed Write durable (survives a crash or power loss).
  virtual Status Flush() = 0;
};

}  // namespace stellarium
