// ChunkIndex: the second of a backend's three seams (backend.h). For every stored chunk
// (named by the SHA-256 of its bytes) it holds an entry: a reference count and the
// locator of the chunk's bytes in ChunkBytes.
//
// References are added and dropped as deltas (AddRefs) staged in the same batch as the
// map entries that hold them, so counts never disagree with the maps after a crash.
// Applying a delta adds it to the count and, when the entry has no locator yet, takes
// the delta's non-zero locator: the first copy of a chunk's bytes to be indexed is the
// chunk's, and a copy a racing writer stored under another locator is garbage for gc.
// An entry whose count reaches zero or below stays until gc erases it.
//
// "Is this chunk stored?" is asked for every block an import reads; a backend should
// answer it cheaply for chunks that are absent (the local store keeps a presence
// filter in memory).
//
// Thread-safety: all methods may be called concurrently.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <vector>

#include "core/sha256.h"
#include "core/status.h"

namespace stellarium {

class Batch;
class BulkBatch;

struct IndexEntry {
  int64_t refs = 0;      // -1 when the index does not count references (below)
  uint64_t locator = 0;  // 0: references without bytes (never stored, or corrupt)
};

class ChunkIndex {
 public:
  virtual ~ChunkIndex() = default;

  // The entry of `id`, or nullopt when there is none. DATA_LOSS for an undecodable one.
  virtual Result<std::optional<IndexEntry>> Get(const ChunkId& id) = 0;
  // (*entries)[i] is ids[i]'s entry, or nullopt.
  virtual Status GetMany(const std::vector<ChunkId>& ids,
                         std::vector<std::optional<IndexEntry>>* entries) = 0;
  // For writers deciding whether to store a chunk: (*locators)[i] is ids[i]'s locator,
  // or 0 when it is not stored. A store shared by many clients may answer 0 for a chunk
  // another client stored after this one opened (the presence filter does not know it),
  // or one gc condemned: storing another copy is then right, but a reader must use
  // GetMany, which is exact.
  virtual Status LocateMany(const std::vector<ChunkId>& ids, std::vector<uint64_t>* locators) = 0;
  // Stages `delta` references to `id`; a non-zero `locator` says its bytes are there
  // (staged in the same batch, or already durable).
  virtual void AddRefs(Batch* batch, const ChunkId& id, int64_t delta, uint64_t locator) = 0;
  // The same for an import's bulk batch. REQUIRES: ids increasing within a batch, each
  // at most once; bytes ingested no later than the entries that name them.
  virtual Status AddRefs(BulkBatch* batch, const ChunkId& id, int64_t delta,
                         uint64_t locator) = 0;
  // Stages the removal of an entry (gc, for entries whose count is zero or below).
  virtual void Erase(Batch* batch, const ChunkId& id) = 0;
  // Calls fn for every entry, in id order. Stops at the first error fn returns; an
  // undecodable entry is DATA_LOSS.
  virtual Status ForEach(const std::function<Status(const ChunkId&, const IndexEntry&)>& fn) = 0;
  // Waits until absent chunks are answered cheaply (the local store's presence filter
  // has loaded the chunks stored before open). Answers are right before that too.
  virtual void WaitForPresenceFilter() {}
  // Whether the index keeps reference counts. The local store does (changed in the same
  // batch as the map entries, so exact after any crash). A store shared by many clients
  // may not (the RADOS store: keeping counts exact across clients and crashes would need
  // a transaction per change on many objects): its deltas are ignored, refs read -1, and
  // gc finds unreferenced chunks by marking what the block maps name instead
  // (Backend::SweepUnreferenced).
  virtual bool counts_references() const { return true; }
};

}  // namespace stellarium
