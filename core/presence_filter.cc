#include "core/presence_filter.h"

#include <algorithm>
#include <cstring>

#include "core/thread_name.h"

namespace stellarium {
namespace {

constexpr uint64_t kBitsPerId = 12;

uint64_t Word(const ChunkId& id, int at) {
  uint64_t w;
  std::memcpy(&w, id.data() + at, sizeof w);
  return w;
}

}  // namespace

PresenceFilter::PresenceFilter(uint64_t expected, uint64_t max_bytes) {
  const uint64_t bytes_per_block = kBitsPerBlock / 8;
  blocks_ = std::max<uint64_t>(1, expected * kBitsPerId / kBitsPerBlock);
  blocks_ = std::max<uint64_t>(1, std::min(blocks_, max_bytes / bytes_per_block));
  capacity_ = blocks_ * kBitsPerBlock / kBitsPerId;
  bits_ = std::make_unique<Block[]>(blocks_);
  for (uint64_t b = 0; b < blocks_; ++b) {
    for (auto& w : bits_[b].words) w.store(0, std::memory_order_relaxed);
  }
}

void PresenceFilter::Add(const ChunkId& id) {
  Block& block = bits_[Word(id, 0) % blocks_];
  uint64_t h = Word(id, 8);
  for (int i = 0; i < kProbes; ++i, h >>= 9) {
    const unsigned bit = h & (kBitsPerBlock - 1);
    block.words[bit / 64].fetch_or(uint64_t{1} << (bit % 64), std::memory_order_relaxed);
  }
  added_.fetch_add(1, std::memory_order_relaxed);
}

bool PresenceFilter::MayContain(const ChunkId& id) const {
  if (!complete()) return true;
  // Far past its capacity nearly every block is full: not worth asking.
  if (added_.load(std::memory_order_relaxed) > 4 * capacity_) return true;
  const Block& block = bits_[Word(id, 0) % blocks_];
  uint64_t h = Word(id, 8);
  for (int i = 0; i < kProbes; ++i, h >>= 9) {
    const unsigned bit = h & (kBitsPerBlock - 1);
    if ((block.words[bit / 64].load(std::memory_order_relaxed) & (uint64_t{1} << (bit % 64))) ==
        0) {
      return false;
    }
  }
  return true;
}

Status LocateThroughFilter(const PresenceFilter& filter, const std::vector<ChunkId>& ids,
                           const GetEntries& get_many, std::vector<uint64_t>* locators) {
  locators->assign(ids.size(), 0);
  std::vector<ChunkId> ask;   // the ids the filter cannot rule out
  std::vector<size_t> where;  // and their positions in ids
  for (size_t i = 0; i < ids.size(); ++i) {
    if (filter.MayContain(ids[i])) {
      ask.push_back(ids[i]);
      where.push_back(i);
    }
  }
  std::vector<std::optional<IndexEntry>> entries;
  RETURN_IF_ERROR(get_many(ask, &entries));
  for (size_t k = 0; k < ask.size(); ++k) {
    if (entries[k]) (*locators)[where[k]] = entries[k]->locator;
  }
  return Status::Ok();
}

PresenceFilterFill::PresenceFilterFill(PresenceFilter* filter, Scan scan) {
  thread_ = std::thread([this, filter, scan = std::move(scan)] {
    NameThisThread("stl-filter-scan");
    if (scan(*filter, stop_) && !stop_.load()) filter->MarkComplete();
    done_.set_value();
  });
}

PresenceFilterFill::~PresenceFilterFill() {
  stop_ = true;
  thread_.join();
}

}  // namespace stellarium
