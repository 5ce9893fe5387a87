// ChunkStore: the content-addressed store of blocks (the CAS).
//
// A chunk is a block's bytes keyed by their SHA-256. Each distinct chunk is stored once
// with a reference count; a map entry (layer, block) -> id holds one reference. Counts
// change in the same transaction as the map change that adds or drops the reference,
// so they are never out of step after a crash. Chunks whose count reaches zero stay
// until Sweep() removes them. Read() checks the hash: a mismatch is DATA_LOSS, never
// wrong data.
//
// Backends: RocksChunkStore (one record per chunk in the store's RocksDB: its count and
// its bytes, counts changed with merge operands). The interface
// is deliberately small (read, contains, add/drop a reference inside a transaction,
// sweep, visit) so that a distributed object store (chunks as objects named by digest,
// put-if-absent, counts in omap) can implement it later with its own Txn.
//
// Thread-safety: all methods are safe to call concurrently. Writers that add references
// hold a shared SweepGuard while staging and committing so a concurrent Sweep() cannot
// delete a chunk between the "already stored" check and the commit.
#pragma once

#include <rocksdb/write_batch.h>

#include <functional>
#include <memory>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <vector>

#include "core/sha256.h"
#include "core/status.h"

namespace stellarium {

class Db;
using Txn = rocksdb::WriteBatch;

struct SweepResult {
  uint64_t chunks_deleted = 0;
  uint64_t bytes_freed = 0;
};

class ChunkStore {
 public:
  virtual ~ChunkStore() = default;

  // Reads chunk `id` into *out and verifies its hash. NOT_FOUND when absent; DATA_LOSS
  // on a mismatch or unreadable data. `context` names the reader in errors
  // ("volume vol-1 block 7").
  virtual Status Read(const ChunkId& id, std::string* out, const std::string& context) = 0;
  // Reads many chunks at once (one batched lookup) and calls fn(i, bytes) for ids[i],
  // each verified as Read() does. Stops at the first error.
  virtual Status ReadMany(const std::vector<ChunkId>& ids, const std::string& context,
                          const std::function<Status(size_t, std::string_view)>& fn) = 0;
  // True when the chunk is stored (whatever its count).
  virtual Result<bool> Contains(const ChunkId& id) = 0;
  // The chunk's reference count (0 when absent).
  virtual Result<int64_t> RefCount(const ChunkId& id) = 0;
  // Stages one more reference to `id` in txn; also stages the bytes when `data` is not
  // empty (a blind write is harmless: same id, same bytes).
  virtual void AddRef(Txn* txn, const ChunkId& id, std::string_view data) = 0;
  virtual void DropRef(Txn* txn, const ChunkId& id) = 0;
  // Deletes every chunk whose count is zero or below. Excludes writers while it runs.
  virtual Result<SweepResult> Sweep() = 0;
  // Calls fn(id, bytes, count) for every stored chunk record, in id order, with the
  // hash check left to the caller (bytes are empty for a count without data). Stops at
  // the first error fn returns or the backend reports.
  virtual Status ForEach(
      const std::function<Status(const ChunkId&, std::string_view, int64_t)>& fn) = 0;

  // Held shared by writers that stage AddRef and commit; held exclusively by Sweep().
  std::shared_mutex& sweep_lock() { return sweep_lock_; }

 private:
  std::shared_mutex sweep_lock_;
};

std::unique_ptr<ChunkStore> NewRocksChunkStore(Db* db);

}  // namespace stellarium
