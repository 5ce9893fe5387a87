// The local store's ChunkIndex: the "chunks" family (chunk id -> count and locator,
// changed by merge operands; db.cc's merge operator) and the presence filter in front
// of it.
#include <algorithm>

#include "core/format.h"
#include "core/local/local_seams.h"

namespace stellarium {
namespace {

rocksdb::Slice Key(const ChunkId& id) {
  const std::string_view k = format::ChunkKey(id);
  return rocksdb::Slice(k.data(), k.size());
}

Status Undecodable(const ChunkId& id) {
  return Status::Corruption("chunk " + ToHex(id) + ": undecodable index record; run fsck");
}

}  // namespace

LocalChunkIndex::LocalChunkIndex(Db* db, uint64_t chunks_now)
    : db_(db),
      plus_one_(format::EncodeChunkRecord({1, 0})),
      minus_one_(format::EncodeChunkRecord({-1, 0})),
      filter_(std::max<uint64_t>(1u << 20, 2 * chunks_now), kFilterMaxBytes),
      fill_(&filter_, [this](PresenceFilter& f, const std::atomic<bool>& stop) {
        return ScanIntoFilter(f, stop);
      }) {}

LocalChunkIndex::~LocalChunkIndex() = default;

Result<std::optional<IndexEntry>> LocalChunkIndex::Get(const ChunkId& id) {
  ASSIGN_OR_RETURN(auto v, db_->Get(Cf::kChunks, Key(id), "chunk " + ToHex(id)));
  if (!v) return std::optional<IndexEntry>();
  format::ChunkRecord r;
  if (!format::DecodeChunkRecord(*v, &r)) return Undecodable(id);
  return std::optional<IndexEntry>(IndexEntry{r.count, r.locator});
}

Status LocalChunkIndex::GetMany(const std::vector<ChunkId>& ids,
                                std::vector<std::optional<IndexEntry>>* entries) {
  const size_t n = ids.size();
  entries->assign(n, std::nullopt);
  if (n == 0) return Status::Ok();
  std::vector<rocksdb::Slice> keys(n);
  std::vector<rocksdb::PinnableSlice> records(n);
  std::vector<rocksdb::Status> statuses(n);
  for (size_t i = 0; i < n; ++i) keys[i] = Key(ids[i]);
  db_->raw()->MultiGet(rocksdb::ReadOptions(), db_->cf(Cf::kChunks), n, keys.data(),
                       records.data(), statuses.data());
  for (size_t i = 0; i < n; ++i) {
    if (statuses[i].IsNotFound()) continue;
    if (!statuses[i].ok()) return FromRocks(statuses[i], "chunk " + ToHex(ids[i]));
    format::ChunkRecord r;
    if (!format::DecodeChunkRecord(records[i].ToStringView(), &r)) return Undecodable(ids[i]);
    (*entries)[i] = IndexEntry{r.count, r.locator};
  }
  return Status::Ok();
}

Status LocalChunkIndex::LocateMany(const std::vector<ChunkId>& ids,
                                   std::vector<uint64_t>* locators) {
  return LocateThroughFilter(
      filter_, ids, [this](const auto& ask, auto* entries) { return GetMany(ask, entries); }, locators);
}

void LocalChunkIndex::AddRefs(Batch* batch, const ChunkId& id, int64_t delta, uint64_t locator) {
  if (locator != 0) filter_.Add(id);  // before the chunk can be seen in the index
  rocksdb::ColumnFamilyHandle* cf = db_->cf(Cf::kChunks);
  rocksdb::WriteBatch& w = AsLocal(batch)->writes;
  if (locator == 0 && delta == 1) {
    w.Merge(cf, Key(id), plus_one_);
  } else if (locator == 0 && delta == -1) {
    w.Merge(cf, Key(id), minus_one_);
  } else {
    w.Merge(cf, Key(id), format::EncodeChunkRecord({delta, locator}));
  }
}

Status LocalChunkIndex::AddRefs(BulkBatch* batch, const ChunkId& id, int64_t delta,
                                uint64_t locator) {
  if (locator != 0) filter_.Add(id);  // before the chunk can be seen in the index
  return AsLocal(batch)->Merge(Cf::kChunks, format::ChunkKey(id),
                               format::EncodeChunkRecord({delta, locator}));
}

void LocalChunkIndex::Erase(Batch* batch, const ChunkId& id) {
  AsLocal(batch)->writes.Delete(db_->cf(Cf::kChunks), Key(id));
}

Status LocalChunkIndex::ForEach(
    const std::function<Status(const ChunkId&, const IndexEntry&)>& fn) {
  auto it = db_->NewIterator(Cf::kChunks, /*fill_cache=*/false);
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    const ChunkId id = ChunkIdFromBytes(it->key().ToStringView());
    format::ChunkRecord r;
    if (!format::DecodeChunkRecord(it->value().ToStringView(), &r)) return Undecodable(id);
    RETURN_IF_ERROR(fn(id, IndexEntry{r.count, r.locator}));
  }
  return FromRocks(it->status(), "scan chunk index");
}

// Adds every chunk of the index to the filter, then declares it complete.
bool LocalChunkIndex::ScanIntoFilter(PresenceFilter& filter, const std::atomic<bool>& stop) {
  auto it = db_->NewIterator(Cf::kChunks, /*fill_cache=*/false);
  for (it->SeekToFirst(); it->Valid() && !stop.load(); it->Next()) {
    filter.Add(ChunkIdFromBytes(it->key().ToStringView()));
  }
  // A failed scan leaves the filter incomplete: it then answers "maybe" to everything.
  return it->status().ok();
}

}  // namespace stellarium
