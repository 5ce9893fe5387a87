// LocalBackend: the store's seams (core/backend/backend.h) on RocksDB in one directory,
// for one process at a time (the embedded default). The on-disk format (column
// families, keys, values, durability) is docs/FORMAT.md; core/format.h encodes it.
//
//   ChunkBytes -> the "data" family: locator (u64 BE) -> chunk bytes. Reads go through
//                 one iterator per batch of locators; a long, dense run of locators
//                 makes the store ask the kernel to read the following table bytes
//                 ahead (disk read-ahead, from a thread of its own).
//   ChunkIndex -> the "chunks" family: chunk id -> (count, locator), counts changed by
//                 merge operands; an in-memory presence filter (presence_filter.h)
//                 answers "not stored" without the index.
//   Catalog    -> one family per table, and "maps": (layer, block) -> map value. Guards
//                 (Catalog::Expect) are checked under a mutex that every batch changing
//                 a table takes, so a guarded commit is atomic with respect to them.
//   Batch      -> a rocksdb::WriteBatch (one WAL record: all or nothing).
//   BulkBatch  -> table files built in key order and ingested together (db.h).
//
// Thread-safety: as Backend.
#pragma once

#include <memory>
#include <string>

#include "core/backend/backend.h"

namespace stellarium {

class Db;

struct LocalBackendOptions {
  std::string dir;
  bool create_if_missing = true;
  bool mmap_reads = true;             // StoreOptions::mmap_reads
  uint64_t disk_readahead_bytes = 0;  // StoreOptions::disk_readahead_bytes
  bool read_only = false;             // StoreOptions::read_only
};

class LocalBackend : public Backend {
 public:
  // FAILED_PRECONDITION when another process holds the directory (Db::Open).
  static Result<std::unique_ptr<LocalBackend>> Open(const LocalBackendOptions& options);
  // The database underneath, for tests that inject faults into it.
  virtual Db* db() = 0;
};

}  // namespace stellarium
