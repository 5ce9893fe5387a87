// Db: the one owner of RocksDB in core. It opens the database with its column families
// (format.h), holds the store directory's process lock, and converts every
// rocksdb::Status into a core Status (FromRocks, the only such conversion).
//
// Write modes (see docs/FORMAT.md "Durability"):
//   kSync   - WAL, fsync before returning: every catalog change.
//   kNoSync - WAL, no fsync: volume writes; made durable by SyncWal().
// Bulk data (an import's chunk bytes, index records and map entries) skips the
// memtables and the WAL altogether: an IngestBatch writes it, in key order, into table
// files under <dir>/import/ and ingests them together (durable and visible at once).
//
// Thread-safety: all methods are safe to call concurrently; an IngestBatch is used by
// one thread at a time.
#pragma once

#include <rocksdb/db.h>
#include <rocksdb/sst_file_writer.h>
#include <rocksdb/write_batch.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"

namespace stellarium {

enum class Cf {
  kMeta = 0,
  kChunks,
  kMaps,
  kLayers,
  kVolumes,
  kSnapshots,
  kImages,
  kNames,
  kData,
  kCount
};

enum class WriteMode { kSync, kNoSync };

class Db;

// Table files of several column families, each built outside the database in strictly
// increasing key order, then ingested together: all their entries become durable and
// visible in one step, with no memtable, WAL or flush in between. Destroying a batch
// drops the files it did not ingest. A batch reused for many ingests stops compressing
// a family whose tables do not shrink (and probes again every few tables).
class IngestBatch {
 public:
  ~IngestBatch();
  IngestBatch(const IngestBatch&) = delete;
  IngestBatch& operator=(const IngestBatch&) = delete;
  // REQUIRES: key greater than every key added to `which` since the last Ingest().
  Status Put(Cf which, std::string_view key, std::string_view value);
  Status Merge(Cf which, std::string_view key, std::string_view operand);
  // Value bytes added to `which` since the last Ingest().
  uint64_t value_bytes(Cf which) const;
  // Finishes the tables and ingests them all at once. The batch is empty afterwards and
  // may be filled again.
  Status Ingest() { return IngestWith(nullptr); }
  // The same, together with `other`'s tables in the same atomic step (both batches are
  // empty afterwards). REQUIRES: where both have a table of one family, their key ranges
  // do not overlap.
  Status IngestWith(IngestBatch* other);

 private:
  friend class Db;
  struct Table;
  explicit IngestBatch(Db* db, std::string what);
  Result<Table*> Open(Cf which);
  Status Add(Cf which, std::string_view key, std::string_view value, bool merge);
  // What the last table of a family showed, for the next ones (see Open).
  struct Compressibility {
    bool incompressible = false;
    uint64_t skipped = 0;
  };
  static constexpr uint64_t kProbeEvery = 8;
  Db* db_;
  std::string what_;
  std::vector<std::unique_ptr<Table>> tables_;    // by Cf; null until used
  std::vector<Compressibility> compressibility_;  // by Cf
};

Status FromRocks(const rocksdb::Status& s, const std::string& context);

struct DbOptions {
  bool create_if_missing = true;
  bool mmap_reads = true;  // StoreOptions::mmap_reads
  // StoreOptions::read_only: a RocksDB secondary instance that reads the database of
  // the process holding the store, as it was at open; takes no lock, writes nothing.
  bool read_only = false;
};

class Db {
 public:
  // Opens <dir>/db, taking <dir>/LOCK.stellarium (flock) unless read_only.
  // FAILED_PRECONDITION when another process holds the store (and read_only is not
  // set); NOT_FOUND when read_only and there is no store.
  static Result<std::unique_ptr<Db>> Open(const std::string& dir, const DbOptions& options);
  ~Db();
  bool read_only() const { return !secondary_dir_.empty(); }

  rocksdb::DB* raw() { return db_.get(); }
  rocksdb::ColumnFamilyHandle* cf(Cf which) { return handles_[static_cast<int>(which)]; }
  const std::string& dir() const { return dir_; }

  Status Write(rocksdb::WriteBatch* batch, WriteMode mode, const std::string& what);
  // Value of key, or nullopt when absent.
  Result<std::optional<std::string>> Get(Cf which, const rocksdb::Slice& key,
                                         const std::string& what);
  std::unique_ptr<rocksdb::Iterator> NewIterator(Cf which, bool fill_cache = true);
  // An empty IngestBatch; `what` names it in errors.
  std::unique_ptr<IngestBatch> NewIngestBatch(const std::string& what);
  Status SyncWal();
  // Waits until no flush or compaction is running or pending.
  Status WaitIdle();
  // RocksDB's estimate of the keys in a family (constant time).
  Result<uint64_t> EstimateKeys(Cf which);
  // Raw (uncompressed) value bytes of a family's SST files plus its memtables' size.
  Result<uint64_t> EstimateValueBytes(Cf which);
  // Sum of the sizes of the files under dir().
  uint64_t DiskBytes() const;
  // Asks the kernel to start reading into the page cache, in the background, the parts
  // of the family's table files that hold the keys [first, last]: read-ahead on disk
  // for a reader about to ask for them. (The kernel's own read-ahead keeps one window
  // in flight a little ahead of the reader, so a reader faster than one disk read of
  // that window waits for each.) Where a key lies in a table is estimated from the
  // table's smallest and largest keys read as big-endian numbers, which is close for
  // the data family's dense locators, and widened by kPrefetchMargin on each side.
  // Best effort: a table gone meanwhile (compacted) is skipped; the list of tables is
  // cached for up to kTablesMaxAge. Returns the bytes asked for.
  uint64_t Prefetch(Cf which, std::string_view first, std::string_view last);
  static constexpr uint64_t kPrefetchMargin = 1 << 20;
  static constexpr std::chrono::milliseconds kTablesMaxAge{1000};

 private:
  friend class IngestBatch;
  Db() = default;
  Status TakeLock();
  Status OpenRocks(const DbOptions& o);
  Status CheckFormat(bool create);
  std::string dir_;
  std::string import_dir_;  // <dir>/import: table files being built (emptied at open)
  std::atomic<uint64_t> next_table_{0};
  std::atomic<bool> direct_writes_{true};  // false once the filesystem refused O_DIRECT
  int lock_fd_ = -1;
  std::string secondary_dir_;  // read_only: the secondary instance's own files
  std::unique_ptr<rocksdb::DB> db_;
  std::vector<rocksdb::ColumnFamilyHandle*> handles_;

  // Prefetch's view of a family's table files.
  struct TableSpan {
    uint64_t smallest = 0, largest = 0;  // keys as big-endian numbers
    uint64_t size = 0;
    std::string path;
  };
  struct Tables {
    std::vector<TableSpan> spans;
    std::chrono::steady_clock::time_point at{};  // when listed; {} = list again
  };
  uint64_t prefetch_piece_ = 128 << 10;  // bytes per posix_fadvise; set by Open
  std::mutex tables_mu_;
  std::vector<Tables> tables_;  // GUARDED_BY(tables_mu_); by Cf
};

}  // namespace stellarium
