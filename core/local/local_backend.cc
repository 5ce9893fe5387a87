#include "core/local/local_backend.h"

#include "core/format.h"
#include "core/local/local_seams.h"

namespace stellarium {
namespace {

const char* TableName(Table t) {
  switch (t) {
    case Table::kVolumes:
      return "volumes";
    case Table::kSnapshots:
      return "snapshots";
    case Table::kImages:
      return "images";
    case Table::kNames:
      return "names";
    case Table::kLayers:
      return "layers";
  }
  return "?";
}

class LocalBackendImpl final : public LocalBackend {
 public:
  LocalBackendImpl(std::unique_ptr<Db> db, uint64_t next_locator, uint64_t chunks_now,
                   uint64_t next_layer, uint64_t disk_readahead_bytes)
      : db_(std::move(db)),
        bytes_(db_.get(), next_locator, disk_readahead_bytes),
        index_(db_.get(), chunks_now),
        catalog_(db_.get(), next_layer) {}

  ChunkBytes& bytes() override { return bytes_; }
  ChunkIndex& index() override { return index_; }
  Catalog& catalog() override { return catalog_; }
  Db* db() override { return db_.get(); }

  std::unique_ptr<Batch> NewBatch() override { return std::make_unique<LocalBatch>(); }

  Status Commit(Batch* batch, Durability durability, const std::string& what) override {
    LocalBatch* b = AsLocal(batch);
    const WriteMode mode = durability == Durability::kSync ? WriteMode::kSync : WriteMode::kNoSync;
    Status st;
    if (b->guards.empty() && !b->changes_tables) {
      st = db_->Write(&b->writes, mode, what);
    } else {
      // Every batch that changes a table commits under this mutex, so nothing changes a
      // guarded key between its check and the write.
      std::lock_guard lock(commit_mu_);
      st = CheckGuards(*b, what);
      if (st.ok()) st = db_->Write(&b->writes, mode, what);
    }
    b->writes.Clear();
    b->guards.clear();
    b->changes_tables = false;
    return st;
  }

  std::unique_ptr<BulkBatch> NewBulkBatch(const std::string& what) override {
    return std::make_unique<LocalBulkBatch>(db_->NewIngestBatch(what));
  }

  Status Sync() override { return db_->SyncWal(); }
  Status WaitIdle() override { return db_->WaitIdle(); }

  // Deleted entries leave tombstones; their space comes back when compaction meets
  // them. An incremental pass compacts only the key ranges it deleted in (an import's
  // chunk bytes lie together, so a deleted volume's are one range), and leaves the index
  // (random keys, a few bytes each) to RocksDB's own compactions.
  void ReclaimSpace(bool everything) override {
    rocksdb::CompactRangeOptions o;
    uint64_t lo, hi;
    const bool data = bytes_.deleted().Take(&lo, &hi);
    if (everything) {
      for (Cf cf : {Cf::kChunks, Cf::kData, Cf::kMaps}) {
        db_->raw()->CompactRange(o, db_->cf(cf), nullptr, nullptr);
      }
      catalog_.deleted_layers().Take(&lo, &hi);
      return;
    }
    if (data) Compact(Cf::kData, format::DataKey(lo), format::DataKey(hi + 1));
    if (catalog_.deleted_layers().Take(&lo, &hi)) {
      Compact(Cf::kMaps, format::MapKey(lo, 0), format::MapKey(hi + 1, 0));
    }
  }

  Result<BackendEstimate> Estimate() override {
    BackendEstimate e;
    ASSIGN_OR_RETURN(e.chunks, db_->EstimateKeys(Cf::kChunks));
    ASSIGN_OR_RETURN(e.chunk_bytes, db_->EstimateValueBytes(Cf::kData));
    ASSIGN_OR_RETURN(e.map_entries, db_->EstimateKeys(Cf::kMaps));
    return e;
  }

  uint64_t DiskBytes() override { return db_->DiskBytes(); }

 private:
  void Compact(Cf cf, const std::string& from, const std::string& to) {
    const rocksdb::Slice a(from), b(to);
    db_->raw()->CompactRange(rocksdb::CompactRangeOptions(), db_->cf(cf), &a, &b);
  }

  // REQUIRES: commit_mu_ held.
  Status CheckGuards(const LocalBatch& b, const std::string& what) {
    for (const LocalBatch::Guard& g : b.guards) {
      ASSIGN_OR_RETURN(auto now, db_->Get(CfOf(g.table), g.key, what));
      if (now != g.value) {
        return Status::Aborted(what + ": a " + TableName(g.table) +
                               " record changed concurrently; retry");
      }
    }
    return Status::Ok();
  }

  std::unique_ptr<Db> db_;  // first: the seams below use it until they are destroyed
  LocalChunkBytes bytes_;
  LocalChunkIndex index_;
  LocalCatalog catalog_;
  std::mutex commit_mu_;
};

// The highest u64 BE key of a family plus one (1 when it is empty).
Result<uint64_t> AfterLastKey(Db* db, Cf cf, const std::string& what) {
  auto it = db->NewIterator(cf, /*fill_cache=*/false);
  it->SeekToLast();
  RETURN_IF_ERROR(FromRocks(it->status(), what));
  return it->Valid() ? format::DecodeLayerKey(it->key().ToStringView()) + 1 : 1;
}

}  // namespace

Result<std::unique_ptr<LocalBackend>> LocalBackend::Open(const LocalBackendOptions& o) {
  DbOptions dbo;
  dbo.create_if_missing = o.create_if_missing;
  dbo.mmap_reads = o.mmap_reads;
  dbo.read_only = o.read_only;
  ASSIGN_OR_RETURN(std::unique_ptr<Db> db, Db::Open(o.dir, dbo));
  const std::string what = "store " + o.dir;
  // Locators continue after the highest one stored, layer ids after the highest one
  // stored or handed out.
  ASSIGN_OR_RETURN(uint64_t next_locator, AfterLastKey(db.get(), Cf::kData, what + ": chunks"));
  ASSIGN_OR_RETURN(uint64_t next_layer, AfterLastKey(db.get(), Cf::kLayers, what + ": layers"));
  ASSIGN_OR_RETURN(auto recorded, db->Get(Cf::kMeta, format::kMetaNextLayer, what));
  if (recorded) next_layer = std::max(next_layer, format::DecodeU64(*recorded));
  auto chunks = db->EstimateKeys(Cf::kChunks);
  return std::unique_ptr<LocalBackend>(new LocalBackendImpl(
      std::move(db), next_locator, chunks.ok() ? *chunks : 0, next_layer, o.disk_readahead_bytes));
}

}  // namespace stellarium
