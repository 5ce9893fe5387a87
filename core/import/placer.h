// Placer: the import's deciding stage, on the importing thread. It takes the hashed
// segments back in image order and decides, block by block, which chunks are new (the
// first occurrence, in image order, of a chunk the store lacks) and where their bytes
// go (consecutive locators, in image order), builds the layer's map entries and each
// index period's reference counts, and feeds the image's content digest, the summary,
// progress and cancellation. It hands new chunk bytes to the data writers (DataWork, a
// data period at a time) and map entries and counts to the index writer (IndexWork, a
// segment at a time), and every segment back to the reader's free channel.
//
// Memory: the index period's table of chunks, and the ids earlier periods met (kKnownCap).
#pragma once

#include <absl/container/flat_hash_map.h>

#include <chrono>
#include <memory>
#include <queue>

#include "core/format.h"
#include "core/import/work.h"
#include "core/store_impl.h"

namespace stellarium::import {

struct PlacerOptions {
  uint32_t block_size = 0;
  uint64_t data_period_bytes = 0;    // ImportOptions; 0 = the default
  uint64_t index_period_blocks = 0;  // ImportOptions; 0 = the default
  size_t segment_bytes = 0;
  std::optional<uint64_t> known_size;  // the source's size, for progress
  ProgressFn progress;
  const std::atomic<bool>* cancel = nullptr;
};

class Placer {
 public:
  Placer(StoreImpl& store, const PlacerOptions& options, std::string what, ImportControl* control,
         Channel<std::unique_ptr<DataWork>>* data_out, Channel<std::unique_ptr<DataWork>>* data_free,
         Channel<std::unique_ptr<IndexWork>>* index_out,
         Channel<std::unique_ptr<IndexWork>>* index_free);

  // Takes hashed segments from `in` until it is closed, in image order, and returns each
  // to `free`.
  void Run(Channel<std::unique_ptr<Segment>>* in, Channel<std::unique_ptr<Segment>>* free);
  // Ends the last data and index periods. REQUIRES: Run() returned.
  Status Finish() { return Place(nullptr, /*last=*/true); }

  ImportSummary& summary() { return sum_; }
  ChunkId Digest() { return digest_.Finish(opts_.block_size, sum_.blocks * opts_.block_size); }

  static constexpr uint64_t kDefaultDataPeriodBytes = 16u << 20;
  static constexpr uint64_t kDefaultIndexPeriodBlocks = 512u << 10;

 private:
  // One segment, in image order: digest, summary, decisions, progress, cancellation.
  void Take(Segment* seg);
  // Decides one segment's blocks and hands the results to the writers; `last` ends
  // every period.
  Status Place(Segment* seg, bool last);
  // The map entry of a kData block, storing the chunk when it is new.
  Result<MapEntry> PlaceChunk(const Segment& seg, size_t i);
  Status EndDataPeriod(bool last);
  void EndIndexPeriod(IndexWork* w, bool last);

  static constexpr size_t kKnownCap = 512u << 10;  // ids remembered across index periods
  static constexpr size_t kPlacementRun = 16384;   // locators reserved at a time

  StoreImpl& s_;
  const PlacerOptions opts_;
  const uint64_t data_period_limit_, index_period_limit_;
  const std::string what_;
  ImportControl* control_;
  Channel<std::unique_ptr<DataWork>>* data_out_;
  Channel<std::unique_ptr<DataWork>>* data_free_;
  Channel<std::unique_ptr<IndexWork>>* index_out_;
  Channel<std::unique_ptr<IndexWork>>* index_free_;

  ImportSummary sum_;
  format::ImageDigest digest_;
  std::chrono::steady_clock::time_point last_progress_ = std::chrono::steady_clock::now();
  Placement placement_;        // where the data period's new chunks go
  uint64_t data_periods_ = 0;  // handed to the data writers so far
  uint64_t index_period_blocks_ = 0;
  absl::flat_hash_map<ChunkId, PeriodRef, ChunkIdHash> period_;  // the index period's chunks
  absl::flat_hash_map<ChunkId, uint64_t, ChunkIdHash> known_;    // earlier periods': hint
  std::unique_ptr<DataWork> data_;  // the data period being filled
};

}  // namespace stellarium::import
