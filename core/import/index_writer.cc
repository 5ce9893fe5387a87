#include "core/import/index_writer.h"

#include <algorithm>

#include "core/thread_name.h"

namespace stellarium::import {

void IndexWriter::Start(Channel<std::unique_ptr<IndexWork>>* in,
                        Channel<std::unique_ptr<IndexWork>>* free) {
  batch_ = s_.backend->NewBulkBatch(what_);
  upper_ = s_.backend->NewBulkBatch(what_);
  thread_ = std::thread([this, in, free] {
    NameThisThread("stl-imp-index");
    Run(in, free);
  });
}

void IndexWriter::Run(Channel<std::unique_ptr<IndexWork>>* in,
                      Channel<std::unique_ptr<IndexWork>>* free) {
  std::unique_ptr<IndexWork> w;
  while (in->Pop(&w)) {
    if (!control_->stopped()) {
      Status st = Write(*w);
      if (!st.ok()) control_->Fail(st);
    }
    w->Clear();
    free->Push(std::move(w));
  }
}

Status IndexWriter::Write(IndexWork& w) {
  Catalog& catalog = s_.catalog();
  for (const MapEntry& m : w.maps) {
    RETURN_IF_ERROR(catalog.PutMap(batch_.get(), layer_, m.block,
                                   m.zero ? std::string_view()
                                          : format::MapValueOf(m.id, m.hint).view()));
  }
  if (!w.end_index_period) return Status::Ok();
  // The period's index records, in key order: ids below 0x80 by this thread, the others
  // by a helper into a batch of their own.
  if (w.refs.size() < kSplitRefs) {
    RETURN_IF_ERROR(StageRefs(w.refs.begin(), w.refs.end(), batch_.get()));
  } else {
    auto mid = std::partition(w.refs.begin(), w.refs.end(),
                              [](const Ref& r) { return r.first[0] < 0x80; });
    Status upper_status;
    std::thread helper([&] {
      NameThisThread("stl-imp-index");
      upper_status = StageRefs(mid, w.refs.end(), upper_.get());
    });
    Status lower_status = StageRefs(w.refs.begin(), mid, batch_.get());
    helper.join();
    RETURN_IF_ERROR(lower_status);
    RETURN_IF_ERROR(upper_status);
  }
  data_->WaitFor(w.data_periods);
  if (control_->stopped()) return Status::Ok();  // the failure is reported already
  return batch_->IngestWith(upper_.get());
}

// A SHA-256 is uniform, so its first 8 bytes (as a big-endian number) order nearly all
// pairs: comparing those first is a third of the time of memcmp.
Status IndexWriter::StageRefs(std::vector<Ref>::iterator from, std::vector<Ref>::iterator to,
                              BulkBatch* into) {
  auto prefix = [](const ChunkId& id) {
    uint64_t p;
    std::memcpy(&p, id.data(), sizeof p);
    return __builtin_bswap64(p);
  };
  std::sort(from, to, [&](const Ref& a, const Ref& b) {
    const uint64_t pa = prefix(a.first), pb = prefix(b.first);
    if (pa != pb) return pa < pb;
    return a.first < b.first;
  });
  ChunkIndex& index = s_.backend->index();
  for (auto it = from; it != to; ++it) {
    RETURN_IF_ERROR(index.AddRefs(into, it->first, it->second.count, it->second.stored_at));
  }
  return Status::Ok();
}

}  // namespace stellarium::import
