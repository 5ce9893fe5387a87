// IndexWriter: the import's map-and-index stage, on one thread (stl-imp-index). From
// the placer it takes, segment by segment, the map entries of the import's layer and
// stages them into a bulk batch of the backend's catalog; at the end of an index period
// (512 Ki map entries by default, and at the end of the image) it stages the period's
// chunk index records (a chunk's references of the period summed into one delta),
// waits until the data periods before it are ingested (DataWriter::WaitFor), and
// ingests map entries and index records in one step: map entries never exist without
// the counts they hold, and the index never names bytes that are not stored.
//
// A large period's records are staged in two halves side by side (the second by a
// helper thread into a batch of its own; both batches are ingested together): at the
// end of an import the other core is often idle.
#pragma once

#include <memory>
#include <thread>

#include "core/import/data_writer.h"
#include "core/import/work.h"
#include "core/store_impl.h"

namespace stellarium::import {

class IndexWriter {
 public:
  IndexWriter(StoreImpl& store, uint64_t layer, DataWriter* data, std::string what,
              ImportControl* control)
      : s_(store), layer_(layer), data_(data), what_(std::move(what)), control_(control) {}
  ~IndexWriter() { Join(); }

  void Start(Channel<std::unique_ptr<IndexWork>>* in, Channel<std::unique_ptr<IndexWork>>* free);
  void Join() {
    if (thread_.joinable()) thread_.join();
  }

 private:
  using Ref = std::pair<ChunkId, PeriodRef>;
  void Run(Channel<std::unique_ptr<IndexWork>>* in, Channel<std::unique_ptr<IndexWork>>* free);
  Status Write(IndexWork& w);
  // Sorts [from, to) by id and stages it into `into`.
  Status StageRefs(std::vector<Ref>::iterator from, std::vector<Ref>::iterator to,
                   BulkBatch* into);

  // Records from this many are staged by two threads.
  static constexpr size_t kSplitRefs = 16384;
  StoreImpl& s_;
  const uint64_t layer_;
  DataWriter* data_;
  const std::string what_;
  ImportControl* control_;
  std::unique_ptr<BulkBatch> batch_, upper_;  // upper_: the upper half's records
  std::thread thread_;
};

}  // namespace stellarium::import
