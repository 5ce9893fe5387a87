// ChunkBytes: the first of a backend's three seams (backend.h). It keeps the bytes of
// chunks, each under a locator: a non-zero number the backend hands out (Reserve), in
// increasing order as chunks are written, so that chunks written together (an import's
// new blocks, in image order) are stored together and a sequential volume read is a
// sequential read of the store. What a locator means (a key, an offset in a packed
// object) is the backend's business; 0 means "none".
//
// ChunkBytes knows nothing of ids or hashes: the chunk index (chunk_index.h) says which
// locator holds a chunk, and ChunkStore checks each chunk's SHA-256 after reading it.
// Bytes nobody's index record names (a failed import's, a racing writer's second copy,
// a swept chunk's) are garbage that gc deletes.
//
// Thread-safety: all methods may be called concurrently.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"

namespace stellarium {

class Batch;
class BulkBatch;

// Places for new chunks, next to each other: a writer about to store up to n new chunks
// reserves n locators at once and uses them in order. Unused places are never written.
struct Placement {
  uint64_t next = 0;
  uint64_t end = 0;
};

class ChunkBytes {
 public:
  virtual ~ChunkBytes() = default;

  // Reserves n consecutive locators, above every locator handed out before (also by an
  // earlier process on the same store). An error when the store cannot hand any out (a
  // shared store whose catalog is unreachable).
  virtual Result<Placement> Reserve(size_t n) = 0;
  // Stages `bytes` under `locator` (one of this store's reserved locators).
  virtual void Put(Batch* batch, uint64_t locator, std::string_view bytes) = 0;
  // The same for an import's bulk batch. REQUIRES: locators increasing within a batch;
  // `bytes` stay valid until the batch is ingested (a backend may keep only the view).
  virtual Status Put(BulkBatch* batch, uint64_t locator, std::string_view bytes) = 0;
  virtual void Delete(Batch* batch, uint64_t locator) = 0;

  // Reads the bytes under each of `locators` (REQUIRES: sorted, increasing) and calls
  // fn once with all of them: found[k] holds the bytes under locators[k], or is empty
  // when nothing is stored there. The views stay valid until fn returns. `context`
  // names the reader in errors. A backend may read ahead of a long, dense run of
  // locators (a sequential reader).
  virtual Status GetMany(const std::vector<uint64_t>& locators, const std::string& context,
                         const std::function<Status(std::span<const std::string_view> found)>&
                             fn) = 0;
  // Drops any copy of the bytes under `locator` this process keeps apart from the store
  // (a node cache), so the next read gets them from the store itself: for bytes that did
  // not match their digest.
  virtual void Forget(uint64_t locator) { (void)locator; }
  // Calls fn(locator, stored size) for every stored chunk's bytes, in locator order.
  // Stops at the first error fn returns.
  virtual Status ForEach(const std::function<Status(uint64_t, size_t)>& fn) = 0;

  // Bytes asked to be read ahead of sequential readers so far (0 when the backend does
  // not read ahead); for tests and benchmarks.
  virtual uint64_t bytes_read_ahead() const { return 0; }
};

}  // namespace stellarium
