// ChunkStore: the content-addressed store of blocks (the CAS), over a backend's chunk
// bytes and chunk index (core/backend/).
//
// A chunk is a block's bytes keyed by their SHA-256. Each distinct chunk is stored once
// with a reference count; a map entry (layer, block) -> id holds one reference. Counts
// change in the same batch as the map change that adds or drops the reference, so they
// are never out of step after a crash. Chunks whose count reaches zero stay until
// Sweep() removes them. Every read checks the hash: a mismatch is DATA_LOSS, never wrong
// data. What ChunkStore adds to the two seams is that check, the "hint first, index
// second" read, and the rule that gc never deletes a chunk a writer is about to name.
//
// Thread-safety: all methods are safe to call concurrently. Writers that add references
// hold sweep_lock() shared while staging and committing, and imports pin it, so gc cannot
// delete a chunk between a writer's "already stored" check and its commit.
#pragma once

#include <chrono>
#include <functional>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <vector>

#include "core/backend/backend.h"
#include "core/sha256.h"
#include "core/status.h"
#include "core/sweep_lock.h"

namespace stellarium {

struct SweepResult {
  uint64_t chunks_deleted = 0;
  uint64_t bytes_freed = 0;  // includes unreferenced bytes (a racing writer's copy)
  bool postponed = false;    // an import was running: some chunks were left for later
};

// A chunk to read: its id and where its bytes probably are (0: unknown).
struct ChunkRef {
  ChunkId id;
  uint64_t hint = 0;
};

struct ChunkTotals {
  uint64_t chunks = 0;  // index entries
  uint64_t bytes = 0;   // stored bytes, uncompressed, including unreferenced copies
};

class ChunkStore {
 public:
  // REQUIRES: backend outlives the ChunkStore.
  explicit ChunkStore(Backend* backend) : backend_(backend) {}

  // Reads chunk `id` into *out and verifies its hash. DATA_LOSS when it is missing or
  // does not match. `context` names the reader in errors ("volume vol-1 block 7").
  Status Read(const ChunkId& id, std::string* out, const std::string& context);
  // Reads many chunks at once and calls fn(i, bytes) for refs[i] (in no particular
  // order), each verified as Read() does. A ref's hint (a locator from a map entry, 0
  // for none) saves the index lookup when it is still right. Stops at the first error.
  Status ReadMany(const std::vector<ChunkRef>& refs, const std::string& context,
                  const std::function<Status(size_t, std::string_view)>& fn);
  // The chunk's locator when it is stored (whatever its count), else 0.
  Result<uint64_t> Locate(const ChunkId& id);
  Result<bool> Contains(const ChunkId& id) {
    ASSIGN_OR_RETURN(uint64_t loc, Locate(id));
    return loc != 0;
  }
  // The chunk's reference count (0 when absent).
  Result<int64_t> RefCount(const ChunkId& id);
  // Stages one more reference to `id`, a chunk stored durably already, in batch.
  void AddRef(Batch* batch, const ChunkId& id);
  // Stages one more reference to `id` and its bytes, at the next place of *placement
  // when given (else at a locator reserved for it). Storing bytes of a chunk that is
  // already stored is harmless: the first copy stays the chunk's, the other is
  // unreferenced until gc. Returns the locator the bytes were staged at: a hint for the
  // map entry, right unless another writer stored the same chunk first.
  Result<uint64_t> AddRefWithBytes(Batch* batch, const ChunkId& id, std::string_view data,
                                   Placement* placement = nullptr);
  // Stages one reference less, and remembers the id as one that may have become garbage
  // (TakeDropped).
  void DropRef(Batch* batch, const ChunkId& id);

  // ---- gc ----
  // Between two batches of a sweep: told how long the batch took, it may sleep, and
  // returns false to end the sweep early.
  using Pace = std::function<bool(std::chrono::steady_clock::duration)>;
  // The ids DropRef saw since the last call (sorted, each once). *overflowed is set
  // when there were more than kMaxDropped: some were forgotten, only a full sweep
  // finds them.
  std::vector<ChunkId> TakeDropped(bool* overflowed);
  bool HasDropped() const;
  static constexpr size_t kMaxDropped = 1u << 20;
  // Deletes the chunks among `ids` whose count is zero or below (with their bytes
  // unless with_bytes is false: then a later scan finds the bytes no chunk names). In
  // batches, each holding the sweep lock exclusively for its few milliseconds (writers
  // wait). While an import runs no batch is deleted: with wait_for_imports the sweep
  // waits for it, otherwise the ids not yet looked at go back to the dropped set (for
  // the next pass) and the result says postponed. bytes_freed stays 0: the sizes are
  // not read.
  Result<SweepResult> SweepChunks(const std::vector<ChunkId>& ids, const Pace& pace = nullptr,
                                  bool with_bytes = true, bool wait_for_imports = true);
  // The full sweep: every chunk whose count is zero or below, then every stored byte no
  // chunk names (a failed import's, a racing writer's second copy), below the locators
  // handed out when the sweep began. Imports as in SweepChunks.
  Result<SweepResult> Sweep(const Pace& pace = nullptr, bool wait_for_imports = true);
  // Calls fn(id, bytes, count, read) for every index entry, in id order, with the hash
  // check left to the caller: bytes are empty for an entry without data, or when they
  // could not be read (read then says why, and the walk goes on). Stops at the first
  // error fn returns or the index reports.
  Status ForEach(const std::function<Status(const ChunkId&, std::string_view, int64_t,
                                            const Status&)>& fn);
  // How many chunks and stored bytes there are (one scan, no hash checks).
  Result<ChunkTotals> Totals();

  // Held shared by writers that stage AddRef and commit, pinned by imports, exclusively
  // by gc while it deletes a batch (sweep_lock.h).
  SweepLock& sweep_lock() { return sweep_lock_; }

 private:
  // Reads the bytes under each (locator, i) of *order (sorted here), checks every one's
  // SHA-256 against refs[i].id in one Sha256Many batch, then calls fn(i, bytes, matches)
  // in locator order; bytes is empty for a locator with nothing stored.
  Status Fetch(std::vector<std::pair<uint64_t, size_t>>* order, const std::string& context,
               const std::vector<ChunkRef>& refs,
               const std::function<Status(size_t, std::string_view, bool)>& fn);
  // Puts ids back for the next pass (a postponed sweep).
  void Redrop(std::vector<ChunkId>::const_iterator from, std::vector<ChunkId>::const_iterator to);
  // Commits a batch that has grown to kSweepBatch changes and paces; false in *go when
  // the pace says stop.
  Status CommitIfFull(Batch* batch, const std::string& what, const Pace& pace,
                      std::chrono::steady_clock::time_point* started, bool* go);
  // Locators below the fence that no index entry names.
  Result<SweepResult> SweepUnnamedBytes(uint64_t fence, const Pace& pace);
  static constexpr size_t kSweepBatch = 4096;

  Backend* backend_;
  SweepLock sweep_lock_;
  mutable std::mutex dropped_mu_;
  std::vector<ChunkId> dropped_;  // GUARDED_BY(dropped_mu_)
  bool dropped_overflow_ = false;  // GUARDED_BY(dropped_mu_)
};

}  // namespace stellarium
