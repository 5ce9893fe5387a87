#include "core/chunk_store.h"

#include <mutex>

#include "core/db.h"
#include "core/format.h"

namespace stellarium {
namespace {

class RocksChunkStore : public ChunkStore {
 public:
  explicit RocksChunkStore(Db* db) : db_(db) {}

  Status Read(const ChunkId& id, std::string* out, const std::string& context) override {
    rocksdb::PinnableSlice v;
    rocksdb::Status s = db_->raw()->Get(rocksdb::ReadOptions(), db_->cf(Cf::kChunks),
                                        rocksdb::Slice(reinterpret_cast<const char*>(id.data()),
                                                       id.size()),
                                        &v);
    if (s.IsNotFound()) {
      return Status::Corruption(context + ": chunk " + ToHex(id) + " is missing from the store");
    }
    if (!s.ok()) return FromRocks(s, context + ": chunk " + ToHex(id));
    if (Sha256(v.data(), v.size()) != id) {
      return Status::Corruption(context + ": chunk " + ToHex(id) +
                                " does not match its SHA-256 (corrupted on disk); run fsck");
    }
    out->assign(v.data(), v.size());
    return Status::Ok();
  }

  Status ReadMany(const std::vector<ChunkId>& ids, const std::string& context,
                  const std::function<Status(size_t, std::string_view)>& fn) override {
    const size_t n = ids.size();
    std::vector<rocksdb::Slice> keys(n);
    std::vector<rocksdb::PinnableSlice> values(n);
    std::vector<rocksdb::Status> statuses(n);
    for (size_t i = 0; i < n; ++i) {
      keys[i] = rocksdb::Slice(reinterpret_cast<const char*>(ids[i].data()), ids[i].size());
    }
    db_->raw()->MultiGet(rocksdb::ReadOptions(), db_->cf(Cf::kChunks), n, keys.data(), values.data(),
                         statuses.data());
    for (size_t i = 0; i < n; ++i) {
      if (statuses[i].IsNotFound()) {
        return Status::Corruption(context + ": chunk " + ToHex(ids[i]) + " is missing from the store");
      }
      if (!statuses[i].ok()) return FromRocks(statuses[i], context + ": chunk " + ToHex(ids[i]));
      if (Sha256(values[i].data(), values[i].size()) != ids[i]) {
        return Status::Corruption(context + ": chunk " + ToHex(ids[i]) +
                                  " does not match its SHA-256 (corrupted on disk); run fsck");
      }
      RETURN_IF_ERROR(fn(i, std::string_view(values[i].data(), values[i].size())));
    }
    return Status::Ok();
  }

  Result<bool> Contains(const ChunkId& id) override {
    rocksdb::PinnableSlice v;
    rocksdb::Slice key(reinterpret_cast<const char*>(id.data()), id.size());
    rocksdb::Status s = db_->raw()->Get(rocksdb::ReadOptions(), db_->cf(Cf::kRefs), key, &v);
    if (s.IsNotFound()) return false;
    if (!s.ok()) return FromRocks(s, "chunk " + ToHex(id));
    return true;
  }

  void AddRef(Txn* txn, const ChunkId& id, std::string_view data) override {
    rocksdb::Slice key(reinterpret_cast<const char*>(id.data()), id.size());
    if (!data.empty()) txn->Put(db_->cf(Cf::kChunks), key, rocksdb::Slice(data.data(), data.size()));
    txn->Merge(db_->cf(Cf::kRefs), key, kPlusOne);
  }

  void DropRef(Txn* txn, const ChunkId& id) override {
    rocksdb::Slice key(reinterpret_cast<const char*>(id.data()), id.size());
    txn->Merge(db_->cf(Cf::kRefs), key, kMinusOne);
  }

  Result<SweepResult> Sweep() override {
    std::unique_lock lock(sweep_lock());
    SweepResult r;
    auto it = db_->NewIterator(Cf::kRefs, /*fill_cache=*/false);
    rocksdb::WriteBatch batch;
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      if (format::DecodeI64(std::string_view(it->value().data(), it->value().size())) > 0) continue;
      std::string v;
      rocksdb::Status s = db_->raw()->Get(rocksdb::ReadOptions(), db_->cf(Cf::kChunks), it->key(), &v);
      if (s.ok()) r.bytes_freed += v.size();
      batch.Delete(db_->cf(Cf::kChunks), it->key());
      batch.Delete(db_->cf(Cf::kRefs), it->key());
      ++r.chunks_deleted;
      if (batch.Count() >= 8192) {
        RETURN_IF_ERROR(db_->Write(&batch, WriteMode::kNoSync, "gc: delete chunks"));
        batch.Clear();
      }
    }
    RETURN_IF_ERROR(FromRocks(it->status(), "gc: scan reference counts"));
    RETURN_IF_ERROR(db_->Write(&batch, WriteMode::kSync, "gc: delete chunks"));
    return r;
  }

  Status ForEach(
      const std::function<Status(const ChunkId&, std::string_view, int64_t)>& fn) override {
    auto chunks = db_->NewIterator(Cf::kChunks, false);
    auto refs = db_->NewIterator(Cf::kRefs, false);
    chunks->SeekToFirst();
    refs->SeekToFirst();
    // Merge-walk the two column families in key order; a count without a chunk is
    // reported with empty bytes, a chunk without a count with count 0.
    while (chunks->Valid() || refs->Valid()) {
      int cmp;
      if (!chunks->Valid()) cmp = 1;
      else if (!refs->Valid()) cmp = -1;
      else cmp = chunks->key().compare(refs->key());
      if (cmp <= 0) {
        ChunkId id = ChunkIdFromBytes(std::string_view(chunks->key().data(), chunks->key().size()));
        int64_t count = 0;
        if (cmp == 0) {
          count = format::DecodeI64(std::string_view(refs->value().data(), refs->value().size()));
          refs->Next();
        }
        RETURN_IF_ERROR(fn(id, std::string_view(chunks->value().data(), chunks->value().size()),
                           count));
        chunks->Next();
      } else {
        ChunkId id = ChunkIdFromBytes(std::string_view(refs->key().data(), refs->key().size()));
        int64_t count =
            format::DecodeI64(std::string_view(refs->value().data(), refs->value().size()));
        RETURN_IF_ERROR(fn(id, std::string_view(), count));
        refs->Next();
      }
    }
    RETURN_IF_ERROR(FromRocks(chunks->status(), "scan chunks"));
    return FromRocks(refs->status(), "scan reference counts");
  }

 private:
  const std::string kPlusOne = format::EncodeI64(1);
  const std::string kMinusOne = format::EncodeI64(-1);
  Db* db_;
};

}  // namespace

std::unique_ptr<ChunkStore> NewRocksChunkStore(Db* db) {
  return std::make_unique<RocksChunkStore>(db);
}

}  // namespace stellarium
