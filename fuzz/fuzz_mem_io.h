// An in-memory BlockIo for the fuzz targets (the store is not what is being fuzzed).
// Locked: read-ahead helpers read it while the target writes.
#pragma once

#include <cstring>
#include <mutex>
#include <vector>

#include "core/block_io.h"

namespace stellarium::fuzz {

class FuzzMemIo : public BlockIo {
 public:
  explicit FuzzMemIo(uint64_t size, bool ro = false) : data_(size), ro_(ro) {}
  uint64_t size() const override { return data_.size(); }
  uint32_t block_size() const override { return 4096; }
  bool read_only() const override { return ro_; }
  Status Read(uint64_t off, size_t len, char* out) override {
    if (off > data_.size() || len > data_.size() - off) __builtin_trap();  // must never happen
    std::lock_guard<std::mutex> lock(mu_);
    memcpy(out, data_.data() + off, len);
    return Status::Ok();
  }
  Status Write(uint64_t off, const char* in, size_t len) override {
    if (ro_ || off > data_.size() || len > data_.size() - off) __builtin_trap();
    std::lock_guard<std::mutex> lock(mu_);
    memcpy(data_.data() + off, in, len);
    return Status::Ok();
  }
  Status Flush() override { return Status::Ok(); }

 private:
  std::mutex mu_;
  std::vector<char> data_;
  bool ro_;
};

}  // namespace stellarium::fuzz
