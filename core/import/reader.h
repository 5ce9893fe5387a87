// SegmentReader: the import's first stage. It owns the ImageSource and reads it, on a
// thread of its own (stl-imp-read), into 1 MiB segments taken from a free channel:
// holes are marked per block and never read, a short last block is padded with zeros
// (or refused, as ImportOptions::pad_to_block says). Each filled segment goes to the
// hashers' channel, which it closes at the end of the image or on a failure.
//
// Its failure (the source's error, or a size that is not a multiple of the block size)
// is kept apart from the other stages': it is the import's error when there is one.
#pragma once

#include <memory>
#include <thread>

#include "core/import/work.h"
#include "core/store.h"

namespace stellarium::import {

class SegmentReader {
 public:
  SegmentReader(ImageSource& source, uint32_t block_size, size_t blocks_per_segment,
                bool pad_to_block, std::string what, ImportControl* control)
      : source_(source),
        bs_(block_size),
        blocks_per_segment_(blocks_per_segment),
        pad_(pad_to_block),
        what_(std::move(what)),
        control_(control) {}
  ~SegmentReader() { Join(); }

  // Starts the thread: segments from `free` are filled and pushed to `out`.
  void Start(Channel<std::unique_ptr<Segment>>* free, Channel<std::unique_ptr<Segment>>* out);
  void Join() {
    if (thread_.joinable()) thread_.join();
  }
  // REQUIRES: Join() returned.
  const Status& status() const { return status_; }

 private:
  void Run(Channel<std::unique_ptr<Segment>>* free, Channel<std::unique_ptr<Segment>>* out);
  // Fills seg from the source; false at the end of the image or on a failure.
  bool Fill(Segment* seg, bool* eof);
  void Fail(Status st) {
    status_ = std::move(st);
    control_->Stop();
  }

  ImageSource& source_;
  const uint32_t bs_;
  const size_t blocks_per_segment_;
  const bool pad_;
  const std::string what_;
  ImportControl* control_;
  uint64_t total_read_ = 0;
  Status status_;
  std::thread thread_;
};

}  // namespace stellarium::import
