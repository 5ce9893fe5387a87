#include "core/chunk_store.h"

#include <mutex>

#include "core/db.h"
#include "core/format.h"

namespace stellarium {
namespace {

// Chunk records: i64 LE reference count, then the bytes (format.h, docs/FORMAT.md).
class RocksChunkStore : public ChunkStore {
 public:
  explicit RocksChunkStore(Db* db) : db_(db) {}

  Status Read(const ChunkId& id, std::string* out, const std::string& context) override {
    rocksdb::PinnableSlice v;
    rocksdb::Status s = db_->raw()->Get(rocksdb::ReadOptions(), db_->cf(Cf::kChunks), Key(id), &v);
    if (!s.ok() && !s.IsNotFound()) return FromRocks(s, context + ": chunk " + ToHex(id));
    std::string_view data;
    RETURN_IF_ERROR(Verify(id, s.ok() ? std::string_view(v.data(), v.size()) : std::string_view(),
                           !s.ok(), context, &data));
    out->assign(data);
    return Status::Ok();
  }

  Status ReadMany(const std::vector<ChunkId>& ids, const std::string& context,
                  const std::function<Status(size_t, std::string_view)>& fn) override {
    const size_t n = ids.size();
    std::vector<rocksdb::Slice> keys(n);
    std::vector<rocksdb::PinnableSlice> values(n);
    std::vector<rocksdb::Status> statuses(n);
    for (size_t i = 0; i < n; ++i) keys[i] = Key(ids[i]);
    db_->raw()->MultiGet(rocksdb::ReadOptions(), db_->cf(Cf::kChunks), n, keys.data(), values.data(),
                         statuses.data());
    for (size_t i = 0; i < n; ++i) {
      if (!statuses[i].ok() && !statuses[i].IsNotFound()) {
        return FromRocks(statuses[i], context + ": chunk " + ToHex(ids[i]));
      }
      std::string_view data;
      RETURN_IF_ERROR(Verify(ids[i], std::string_view(values[i].data(), values[i].size()),
                             statuses[i].IsNotFound(), context, &data));
      RETURN_IF_ERROR(fn(i, data));
    }
    return Status::Ok();
  }

  Result<bool> Contains(const ChunkId& id) override {
    rocksdb::PinnableSlice v;
    rocksdb::Status s = db_->raw()->Get(rocksdb::ReadOptions(), db_->cf(Cf::kChunks), Key(id), &v);
    if (s.IsNotFound()) return false;
    if (!s.ok()) return FromRocks(s, "chunk " + ToHex(id));
    return v.size() > format::kChunkCountSize;  // a count without bytes stores nothing
  }

  Result<int64_t> RefCount(const ChunkId& id) override {
    rocksdb::PinnableSlice v;
    rocksdb::Status s = db_->raw()->Get(rocksdb::ReadOptions(), db_->cf(Cf::kChunks), Key(id), &v);
    if (s.IsNotFound()) return int64_t{0};
    if (!s.ok()) return FromRocks(s, "chunk " + ToHex(id));
    return v.size() >= 8 ? format::DecodeI64(std::string_view(v.data(), 8)) : 0;
  }

  void AddRef(Txn* txn, const ChunkId& id, std::string_view data) override {
    std::string op = kPlusOne;
    op.append(data);
    txn->Merge(db_->cf(Cf::kChunks), Key(id), op);
  }

  void DropRef(Txn* txn, const ChunkId& id) override {
    txn->Merge(db_->cf(Cf::kChunks), Key(id), kMinusOne);
  }

  Result<SweepResult> Sweep() override {
    std::unique_lock lock(sweep_lock());
    SweepResult r;
    auto it = db_->NewIterator(Cf::kChunks, /*fill_cache=*/false);
    rocksdb::WriteBatch batch;
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      std::string_view v = it->value().ToStringView();
      if (v.size() >= 8 && format::DecodeI64(v.substr(0, 8)) > 0) continue;
      r.bytes_freed += v.size() > 8 ? v.size() - 8 : 0;
      batch.Delete(db_->cf(Cf::kChunks), it->key());
      ++r.chunks_deleted;
      if (batch.Count() >= 8192) {
        RETURN_IF_ERROR(db_->Write(&batch, WriteMode::kNoSync, "gc: delete chunks"));
        batch.Clear();
      }
    }
    RETURN_IF_ERROR(FromRocks(it->status(), "gc: scan chunks"));
    RETURN_IF_ERROR(db_->Write(&batch, WriteMode::kSync, "gc: delete chunks"));
    return r;
  }

  Status ForEach(
      const std::function<Status(const ChunkId&, std::string_view, int64_t)>& fn) override {
    auto it = db_->NewIterator(Cf::kChunks, false);
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      std::string_view v = it->value().ToStringView();
      ChunkId id = ChunkIdFromBytes(it->key().ToStringView());
      int64_t count = v.size() >= 8 ? format::DecodeI64(v.substr(0, 8)) : 0;
      RETURN_IF_ERROR(fn(id, v.size() > 8 ? v.substr(8) : std::string_view(), count));
    }
    return FromRocks(it->status(), "scan chunks");
  }

 private:
  static rocksdb::Slice Key(const ChunkId& id) {
    return rocksdb::Slice(reinterpret_cast<const char*>(id.data()), id.size());
  }

  // Checks a fetched record: present, with bytes, matching its id.
  static Status Verify(const ChunkId& id, std::string_view record, bool missing,
                       const std::string& context, std::string_view* data) {
    if (missing || record.size() <= format::kChunkCountSize) {
      return Status::Corruption(context + ": chunk " + ToHex(id) + " is missing from the store");
    }
    *data = record.substr(format::kChunkCountSize);
    if (Sha256(data->data(), data->size()) != id) {
      return Status::Corruption(context + ": chunk " + ToHex(id) +
                                " does not match its SHA-256 (corrupted on disk); run fsck");
    }
    return Status::Ok();
  }

  const std::string kPlusOne = format::EncodeI64(1);
  const std::string kMinusOne = format::EncodeI64(-1);
  Db* db_;
};

}  // namespace

std::unique_ptr<ChunkStore> NewRocksChunkStore(Db* db) {
  return std::make_unique<RocksChunkStore>(db);
}

}  // namespace stellarium
