// Db: the one owner of RocksDB in core. It opens the database with its column families
// (format.h), holds the store directory's process lock, and converts every
// rocksdb::Status into a core Status (FromRocks, the only such conversion).
//
// Write modes (see docs/FORMAT.md "Durability"):
//   kSync   - WAL, fsync before returning: every catalog change.
//   kNoSync - WAL, no fsync: volume writes; made durable by SyncWal().
//   kNoWal  - no WAL: bulk import data. Durable only after FlushAll(); the database
//             uses atomic_flush so such writes reach disk as a consistent cut across
//             column families, and an import commits its catalog entry only after it.
//
// Thread-safety: all methods are safe to call concurrently.
#pragma once

#include <rocksdb/db.h>
#include <rocksdb/write_batch.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/status.h"

namespace stellarium {

enum class Cf { kMeta = 0, kChunks, kMaps, kLayers, kVolumes, kSnapshots, kImages, kNames, kData, kCount };

enum class WriteMode { kSync, kNoSync, kNoWal };

Status FromRocks(const rocksdb::Status& s, const std::string& context);

class Db {
 public:
  // Opens <dir>/db, taking <dir>/LOCK.stellarium (flock). FAILED_PRECONDITION when another
  // process holds the store.
  static Result<std::unique_ptr<Db>> Open(const std::string& dir, bool create_if_missing);
  ~Db();

  rocksdb::DB* raw() { return db_.get(); }
  rocksdb::ColumnFamilyHandle* cf(Cf which) { return handles_[static_cast<int>(which)]; }
  const std::string& dir() const { return dir_; }

  Status Write(rocksdb::WriteBatch* batch, WriteMode mode, const std::string& what);
  // Value of key, or nullopt when absent.
  Result<std::optional<std::string>> Get(Cf which, const rocksdb::Slice& key,
                                         const std::string& what);
  std::unique_ptr<rocksdb::Iterator> NewIterator(Cf which, bool fill_cache = true);
  // Flushes every memtable of every column family to SST files (atomically).
  Status FlushAll();
  Status SyncWal();
  // Waits until no flush or compaction is running or pending.
  Status WaitIdle();
  // RocksDB's estimate of the keys in a family (constant time).
  Result<uint64_t> EstimateKeys(Cf which);
  // Raw (uncompressed) value bytes of a family's SST files plus its memtables' size.
  Result<uint64_t> EstimateValueBytes(Cf which);
  // Sum of the sizes of the files under dir().
  uint64_t DiskBytes() const;

 private:
  Db() = default;
  std::string dir_;
  int lock_fd_ = -1;
  std::unique_ptr<rocksdb::DB> db_;
  std::vector<rocksdb::ColumnFamilyHandle*> handles_;
};

}  // namespace stellarium
