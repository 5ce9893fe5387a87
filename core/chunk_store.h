// ChunkStore: the content-addressed store of blocks (the CAS).
//
// A chunk is a block's bytes keyed by their SHA-256. Each distinct chunk is stored once
// with a reference count; a map entry (layer, block) -> id holds one reference. Counts
// change in the same transaction as the map change that adds or drops the reference,
// so they are never out of step after a crash. Chunks whose count reaches zero stay
// until Sweep() removes them. Read() checks the hash: a mismatch is DATA_LOSS, never
// wrong data.
//
// Backends: RocksChunkStore. An index record per chunk (id -> count, locator) and the
// bytes under their locator in a family of their own, locators handed out in write
// order so that blocks written together are read together (docs/FORMAT.md). "Is it
// stored?" for a chunk that is not is answered from an in-memory presence filter
// (presence_filter.h) rather than the index. The interface is deliberately small
// (read, contains, add/drop a reference inside a transaction, sweep, visit) so that a
// distributed object store (chunks as objects named by digest, put-if-absent, counts
// in omap) can implement it later with its own Txn.
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
class IngestBatch;
using Txn = rocksdb::WriteBatch;

struct SweepResult {
  uint64_t chunks_deleted = 0;
  uint64_t bytes_freed = 0;  // includes unreferenced bytes (a racing writer's copy)
};

// A chunk to read: its id and where its bytes probably are (0: unknown).
struct ChunkRef {
  ChunkId id;
  uint64_t hint = 0;
};

struct ChunkTotals {
  uint64_t chunks = 0;  // index records
  uint64_t bytes = 0;   // stored bytes, uncompressed, including unreferenced copies
};

// Places the bytes of new chunks next to each other: a writer that is about to store
// up to n new chunks reserves n places at once (Reserve) and passes the placement to
// each AddRef. Unused places are simply never written.
struct Placement {
  uint64_t next = 0;
  uint64_t end = 0;
};

class ChunkStore {
 public:
  virtual ~ChunkStore() = default;

  // Reads chunk `id` into *out and verifies its hash. NOT_FOUND when absent; DATA_LOSS
  // on a mismatch or unreadable data. `context` names the reader in errors
  // ("volume vol-1 block 7").
  virtual Status Read(const ChunkId& id, std::string* out, const std::string& context) = 0;
  // Reads many chunks at once and calls fn(i, bytes) for refs[i] (in no particular
  // order), each verified as Read() does. A ref's hint (a locator from a map entry, 0
  // for none) saves the index lookup when it is still right. Stops at the first error.
  virtual Status ReadMany(const std::vector<ChunkRef>& refs, const std::string& context,
                          const std::function<Status(size_t, std::string_view)>& fn) = 0;
  // The chunk's locator when it is stored (whatever its count), else 0.
  virtual Result<uint64_t> Locate(const ChunkId& id) = 0;
  Result<bool> Contains(const ChunkId& id) {
    ASSIGN_OR_RETURN(uint64_t loc, Locate(id));
    return loc != 0;
  }
  // Locate() for many ids at once: (*locators)[i] is ids[i]'s locator or 0.
  virtual Status LocateMany(const std::vector<ChunkId>& ids, std::vector<uint64_t>* locators) = 0;
  // The chunk's reference count (0 when absent).
  virtual Result<int64_t> RefCount(const ChunkId& id) = 0;
  // Stages one more reference to `id` in txn; also stages the bytes when `data` is not
  // empty, at the next place of *placement when given. Storing bytes of a chunk that is
  // already stored is harmless: the first copy stays the chunk's, the other is
  // unreferenced until gc. Without bytes, the chunk must be stored durably already.
  // Returns the locator the bytes were staged at (0 when `data` is empty): a hint for
  // the map entry, right unless another writer stored the same chunk first.
  virtual uint64_t AddRef(Txn* txn, const ChunkId& id, std::string_view data,
                          Placement* placement = nullptr) = 0;
  // Bulk staging for an import, into an IngestBatch (db.h) that the caller ingests:
  // StageBytes stages a new chunk's bytes at a locator the caller reserved (Reserve);
  // StageRefs stages `delta` references to `id` and, with a non-zero locator, where its
  // bytes are. Ingesting makes bytes and index records durable and visible, so bytes
  // must be ingested no later than the index records that name them. REQUIRES: within
  // one batch, locators and ids in increasing order, each at most once.
  virtual Status StageBytes(IngestBatch* batch, uint64_t locator, std::string_view bytes) = 0;
  virtual Status StageRefs(IngestBatch* batch, const ChunkId& id, int64_t delta,
                           uint64_t locator) = 0;
  // Reserves places for up to n new chunks, next to each other.
  virtual Placement Reserve(size_t n) = 0;
  virtual void DropRef(Txn* txn, const ChunkId& id) = 0;
  // Deletes every chunk whose count is zero or below, and stored bytes no chunk refers
  // to. Excludes writers while it runs.
  virtual Result<SweepResult> Sweep() = 0;
  // Calls fn(id, bytes, count) for every stored chunk record, in id order, with the
  // hash check left to the caller (bytes are empty for a count without data). Stops at
  // the first error fn returns or the backend reports.
  virtual Status ForEach(
      const std::function<Status(const ChunkId&, std::string_view, int64_t)>& fn) = 0;
  // Waits until the store answers "is it stored?" for absent chunks from memory (the
  // chunks stored before open have been loaded into the backend's presence filter).
  // Answers are right before that too, only slower. For tests and benchmarks.
  virtual void WaitForPresenceFilter() {}
  // Bytes of table files the store has asked the kernel to read ahead of sequential
  // readers so far (StoreOptions::disk_readahead_bytes); for tests and benchmarks.
  virtual uint64_t bytes_read_ahead() const { return 0; }
  // How many chunks and stored bytes there are (one scan, no hash checks).
  virtual Result<ChunkTotals> Totals() = 0;

  // Held shared by writers that stage AddRef and commit; held exclusively by Sweep().
  std::shared_mutex& sweep_lock() { return sweep_lock_; }

 private:
  std::shared_mutex sweep_lock_;
};

// disk_readahead_bytes: StoreOptions::disk_readahead_bytes.
Result<std::unique_ptr<ChunkStore>> NewRocksChunkStore(Db* db, uint64_t disk_readahead_bytes = 0);

}  // namespace stellarium
