#include "core/import/reader.h"

#include <algorithm>

#include "core/thread_name.h"

namespace stellarium::import {

void SegmentReader::Start(Channel<std::unique_ptr<Segment>>* free,
                          Channel<std::unique_ptr<Segment>>* out) {
  thread_ = std::thread([this, free, out] {
    NameThisThread("stl-imp-read");
    Run(free, out);
  });
}

void SegmentReader::Run(Channel<std::unique_ptr<Segment>>* free,
                        Channel<std::unique_ptr<Segment>>* out) {
  uint64_t seq = 0, block = 0;
  bool eof = false;
  while (!eof && !control_->stopped()) {
    std::unique_ptr<Segment> seg;
    if (!free->Pop(&seg)) break;
    seg->seq = seq++;
    seg->first_block = block;
    if (!Fill(seg.get(), &eof)) break;
    block += seg->nblocks;
    if (seg->nblocks == 0) break;
    out->Push(std::move(seg));
  }
  out->Close();
}

bool SegmentReader::Fill(Segment* seg, bool* eof) {
  const size_t seg_bytes = blocks_per_segment_ * bs_;
  seg->buf.resize(seg_bytes);
  seg->hole_bytes.assign(blocks_per_segment_, 0);
  size_t filled = 0;
  while (filled < seg_bytes) {
    bool hole = false;
    auto n = source_.Next(seg->buf.data() + filled, seg_bytes - filled, &hole);
    if (!n.ok()) {
      Fail(n.status());
      return false;
    }
    if (*n == 0) {
      *eof = true;
      break;
    }
    if (hole) {
      // Count the hole per block; zero-fill only blocks it covers partly.
      for (size_t off = filled; off < filled + *n;) {
        size_t b = off / bs_;
        size_t end = std::min<size_t>((b + 1) * bs_, filled + *n);
        seg->hole_bytes[b] += end - off;
        if (end - off != bs_) std::memset(seg->buf.data() + off, 0, end - off);
        off = end;
      }
    }
    filled += *n;
  }
  if (control_->stopped()) return false;
  total_read_ += filled;
  if (filled % bs_ != 0) {
    if (!pad_) {
      Fail(Status::InvalidArgument(what_ + ": size " + std::to_string(total_read_) +
                                   " is not a multiple of block size " + std::to_string(bs_) +
                                   " (pad the image, or choose a smaller block size)"));
      return false;
    }
    size_t padded = (filled + bs_ - 1) / bs_ * bs_;
    std::memset(seg->buf.data() + filled, 0, padded - filled);
    filled = padded;
  }
  seg->nblocks = filled / bs_;
  return true;
}

}  // namespace stellarium::import
