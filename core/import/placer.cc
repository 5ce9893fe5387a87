#include "core/import/placer.h"

namespace stellarium::import {
namespace {

struct SeqLess {
  bool operator()(const std::unique_ptr<Segment>& a, const std::unique_ptr<Segment>& b) const {
    return a->seq > b->seq;
  }
};

}  // namespace

Placer::Placer(StoreImpl& store, const PlacerOptions& options, std::string what,
               ImportControl* control, Channel<std::unique_ptr<DataWork>>* data_out,
               Channel<std::unique_ptr<DataWork>>* data_free,
               Channel<std::unique_ptr<IndexWork>>* index_out,
               Channel<std::unique_ptr<IndexWork>>* index_free)
    : s_(store),
      opts_(options),
      data_period_limit_(options.data_period_bytes ? options.data_period_bytes
                                                   : kDefaultDataPeriodBytes),
      index_period_limit_(options.index_period_blocks ? options.index_period_blocks
                                                      : kDefaultIndexPeriodBlocks),
      what_(std::move(what)),
      control_(control),
      data_out_(data_out),
      data_free_(data_free),
      index_out_(index_out),
      index_free_(index_free),
      data_(std::make_unique<DataWork>()) {
  // The data period's bytes fit its buffer from the start: no regrowth.
  data_->bytes.reserve(data_period_limit_ + opts_.segment_bytes);
}

void Placer::Run(Channel<std::unique_ptr<Segment>>* in, Channel<std::unique_ptr<Segment>>* free) {
  uint64_t next_seq = 0;
  std::priority_queue<std::unique_ptr<Segment>, std::vector<std::unique_ptr<Segment>>, SeqLess>
      pending;
  std::unique_ptr<Segment> seg;
  while (in->Pop(&seg)) {
    pending.push(std::move(seg));
    while (!pending.empty() && pending.top()->seq == next_seq) {
      std::unique_ptr<Segment> cur = std::move(const_cast<std::unique_ptr<Segment>&>(pending.top()));
      pending.pop();
      ++next_seq;
      Take(cur.get());
      free->Push(std::move(cur));
    }
  }
}

void Placer::Take(Segment* seg) {
  const uint32_t bs = opts_.block_size;
  if (!control_->stopped()) {
    static const ChunkId kZeroId{};
    for (size_t i = 0; i < seg->nblocks; ++i) {
      ++sum_.blocks;
      if (seg->zero[i]) ++sum_.zero_blocks;
      digest_.AddBlock(seg->zero[i] ? kZeroId : seg->ids[i]);
    }
    Status st = Place(seg, false);
    if (!st.ok()) control_->Fail(st);
    if (opts_.cancel && opts_.cancel->load()) {
      control_->Fail(Status(StatusCode::kCancelled, what_ + ": import cancelled"));
    }
  }
  sum_.raw_bytes += seg->nblocks * bs;
  const auto now = std::chrono::steady_clock::now();
  if (opts_.progress && now - last_progress_ > std::chrono::milliseconds(200)) {
    last_progress_ = now;
    opts_.progress(Progress{sum_.raw_bytes, opts_.known_size.value_or(0)});
  }
}

Result<MapEntry> Placer::PlaceChunk(const Segment& seg, size_t i) {
  const uint32_t bs = opts_.block_size;
  MapEntry m;
  m.block = seg.first_block + i;
  const ChunkId& id = seg.ids[i];
  auto [it, first] = period_.try_emplace(id);
  PeriodRef& ref = it->second;
  if (first) {
    if (auto k = known_.find(id); k != known_.end()) {
      ref.hint = k->second;
    } else if (seg.located[i] != 0) {
      ref.hint = seg.located[i];
    } else {
      // The first time this import meets a chunk the store lacks: store it.
      if (placement_.next == placement_.end) {
        ASSIGN_OR_RETURN(placement_, s_.backend->bytes().Reserve(kPlacementRun));
      }
      ref.stored_at = ref.hint = placement_.next++;
      data_->locators.push_back(ref.stored_at);
      data_->bytes.append(seg.buf.data() + i * bs, bs);
      ++sum_.new_chunks;
      sum_.bytes_added += bs;
    }
  }
  if (ref.count > 0 || ref.stored_at == 0) ++sum_.duplicate_blocks;
  ++ref.count;
  m.id = id;
  m.hint = ref.hint;
  return m;
}

Status Placer::Place(Segment* seg, bool last) {
  std::unique_ptr<IndexWork> w;
  if (!index_free_->Pop(&w)) return Status::Aborted(what_ + ": import stopped");
  for (size_t i = 0; seg != nullptr && i < seg->nblocks; ++i) {
    if (seg->kind[i] == kSkip) continue;
    ++index_period_blocks_;
    if (seg->kind[i] == kZeroOverBase) {
      MapEntry m;
      m.block = seg->first_block + i;
      m.zero = true;
      w->maps.push_back(m);
      continue;
    }
    ASSIGN_OR_RETURN(MapEntry m, PlaceChunk(*seg, i));
    w->maps.push_back(m);
  }
  if (seg != nullptr) sum_.duplicate_blocks += seg->same_as_base;
  const bool end_index = last || index_period_blocks_ >= index_period_limit_;
  if (end_index || data_->bytes.size() >= data_period_limit_) RETURN_IF_ERROR(EndDataPeriod(last));
  if (end_index) EndIndexPeriod(w.get(), last);
  index_out_->Push(std::move(w));
  return Status::Ok();
}

// The last period takes no fresh buffer: waiting for one would hold the last index
// period back until a data writer is done, where both can run side by side.
Status Placer::EndDataPeriod(bool last) {
  if (data_->locators.empty()) return Status::Ok();
  data_->period = data_periods_++;
  data_out_->Push(std::move(data_));
  if (last) return Status::Ok();
  if (!data_free_->Pop(&data_)) return Status::Aborted(what_ + ": import stopped");
  data_->bytes.reserve(data_period_limit_ + opts_.segment_bytes);
  placement_ = {};  // the next data table's keys start above everything so far
  return Status::Ok();
}

void Placer::EndIndexPeriod(IndexWork* w, bool last) {
  w->end_index_period = true;
  w->data_periods = data_periods_;
  index_period_blocks_ = 0;
  w->refs.assign(period_.begin(), period_.end());
  if (!last) {  // what later periods look up; after the last there are none
    if (known_.size() + period_.size() > kKnownCap) known_.clear();
    for (const auto& [pid, ref] : period_) known_[pid] = ref.hint;
  }
  period_.clear();
}

}  // namespace stellarium::import
