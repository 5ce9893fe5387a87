// ReorderBuffer: bytes of a forward-only stream kept for later, addressed by their
// offset in the stream.
//
// Why: a reader that turns a stream into something in another order (the qcow2 reader,
// qcow2.h) sees bytes before it knows where they go. It keeps them here until it can
// use them, and drops them when nothing can need them any more. Memory is used up to a
// limit; beyond it the bytes go to one scratch file that is unlinked as soon as it is
// created, so nothing is left behind even if the process dies. Dropped bytes on disk are
// given back to the filesystem (hole punching) where it supports that.
//
// What must stay true:
//   - Put() appends: every Put starts at or after the end of the previous one (the
//     stream only moves forward). Get() and Drop() may address any range.
//   - Get() never returns bytes that were not put, or were dropped: it says so instead.
//   - A range put as zeros (a hole in the stream) costs neither memory nor disk.
//
// Thread-safety: none; one owner (the reader thread of an import).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/status.h"

namespace stellarium {

class ReorderBuffer {
 public:
  // `what` names the image in errors ("image https://host/x.qcow2"). The scratch file
  // (stellarium-reorder-XXXXXX, unlinked at once) is made in `scratch_dir` when memory
  // holds `memory_limit` bytes and more must be kept.
  ReorderBuffer(std::string scratch_dir, uint64_t memory_limit, std::string what);
  ~ReorderBuffer();
  ReorderBuffer(const ReorderBuffer&) = delete;
  ReorderBuffer& operator=(const ReorderBuffer&) = delete;

  // Keeps [off, off+n). `data` == nullptr keeps n zero bytes.
  // REQUIRES: off >= the end of every earlier Put.
  Status Put(uint64_t off, const char* data, size_t n);
  // Copies [off, off+n) into out. False (out partly written) when any byte of the range
  // is not held; an error only when the scratch file cannot be read.
  Result<bool> Get(uint64_t off, size_t n, char* out) const;
  // True when every byte of [off, off+n) is held.
  bool Has(uint64_t off, uint64_t n) const;
  // Forgets whatever is held in [off, off+n). Not an error if nothing is.
  void Drop(uint64_t off, uint64_t n);
  // The held ranges (start, end), in order; adjacent ranges are not merged.
  std::vector<std::pair<uint64_t, uint64_t>> Ranges() const;

  uint64_t held_bytes() const { return held_; }
  uint64_t memory_bytes() const { return memory_; }  // allocated for held bytes
  // Totals over the buffer's life, for stats and tests.
  uint64_t put_bytes() const { return put_total_; }
  uint64_t spilled_bytes() const { return spilled_total_; }  // written to the scratch file
  uint64_t peak_held_bytes() const { return peak_held_; }
  uint64_t peak_memory_bytes() const { return peak_memory_; }

 private:
  // One held range: in memory (buf), in the scratch file (disk_off >= 0), or zeros.
  struct Extent {
    uint64_t len = 0;
    std::shared_ptr<char[]> buf;  // shared by the pieces of a split extent
    uint64_t buf_off = 0;
    int64_t disk_off = -1;
  };
  Status OpenScratch();
  void PunchHole(int64_t disk_off, uint64_t len);

  const std::string scratch_dir_;
  const uint64_t memory_limit_;
  const std::string what_;
  std::map<uint64_t, Extent> extents_;  // by stream offset; never overlapping
  uint64_t put_end_ = 0;
  int fd_ = -1;            // the scratch file, once needed
  uint64_t disk_end_ = 0;  // where the next spilled byte goes
  uint64_t held_ = 0, memory_ = 0;
  uint64_t put_total_ = 0, spilled_total_ = 0, peak_held_ = 0, peak_memory_ = 0;
};

}  // namespace stellarium
