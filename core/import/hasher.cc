#include "core/import/hasher.h"

#include "core/thread_name.h"

namespace stellarium::import {

void SegmentHasher::Start(unsigned threads, Channel<std::unique_ptr<Segment>>* in,
                          Channel<std::unique_ptr<Segment>>* out) {
  running_ = threads;
  for (unsigned t = 0; t < threads; ++t) {
    threads_.emplace_back([this, in, out] {
      NameThisThread("stl-imp-hash");
      std::unique_ptr<Segment> seg;
      while (in->Pop(&seg)) {
        if (!control_->stopped()) {
          Status st = Process(*seg);
          if (!st.ok()) control_->Fail(st);
        }
        out->Push(std::move(seg));
      }
      if (--running_ == 0) out->Close();
    });
  }
}

Status SegmentHasher::BaseView(const Segment& seg,
                               std::vector<std::pair<uint64_t, format::MapValue>>* out) {
  out->clear();
  if (base_chain_.empty()) return Status::Ok();
  return s_.ResolveRange(base_chain_, seg.first_block, seg.first_block + seg.nblocks,
                         [&](uint64_t b, std::string_view v) {
                           out->emplace_back(b, format::DecodeMapValue(v));
                           return Status::Ok();
                         });
}

Status SegmentHasher::Process(Segment& seg) {
  seg.ids.resize(seg.nblocks);
  seg.zero.assign(seg.nblocks, 0);
  seg.kind.assign(seg.nblocks, kSkip);
  seg.located.assign(seg.nblocks, 0);
  seg.same_as_base = 0;
  // The non-zero blocks' SHA-256s, many at once.
  std::vector<std::string_view> data;
  std::vector<size_t> data_block;
  data.reserve(seg.nblocks);
  data_block.reserve(seg.nblocks);
  for (size_t i = 0; i < seg.nblocks; ++i) {
    const char* p = seg.buf.data() + i * bs_;
    if (seg.hole_bytes[i] == bs_ || IsAllZero(p, bs_)) {
      seg.zero[i] = 1;
    } else {
      data.emplace_back(p, bs_);
      data_block.push_back(i);
    }
  }
  std::vector<ChunkId> digests(data.size());
  Sha256Many(data.data(), data.size(), digests.data());
  for (size_t k = 0; k < data.size(); ++k) seg.ids[data_block[k]] = digests[k];

  // The base image's view of this segment (in block order), when the import is a delta.
  std::vector<std::pair<uint64_t, format::MapValue>> base;
  RETURN_IF_ERROR(BaseView(seg, &base));
  std::vector<ChunkId> lookup;
  std::vector<size_t> lookup_block;
  size_t b = 0;  // the first base entry at or after the current block
  for (size_t i = 0; i < seg.nblocks; ++i) {
    while (b < base.size() && base[b].first < seg.first_block + i) ++b;
    const format::MapValue* in_base =
        b < base.size() && base[b].first == seg.first_block + i ? &base[b].second : nullptr;
    const bool base_has_data = in_base != nullptr && in_base->kind != format::MapValue::kZero;
    if (seg.zero[i]) {
      if (base_has_data) seg.kind[i] = kZeroOverBase;
      continue;
    }
    if (base_has_data && in_base->is_chunk() && in_base->id == seg.ids[i]) {
      ++seg.same_as_base;  // the base image has this very block here: nothing to write
      continue;
    }
    seg.kind[i] = kData;
    lookup.push_back(seg.ids[i]);
    lookup_block.push_back(i);
  }
  std::vector<uint64_t> found;
  RETURN_IF_ERROR(s_.backend->index().LocateMany(lookup, &found).Annotate(what_));
  for (size_t k = 0; k < lookup.size(); ++k) seg.located[lookup_block[k]] = found[k];
  return Status::Ok();
}

}  // namespace stellarium::import
