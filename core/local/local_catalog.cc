// The local store's Catalog: one column family per table, and "maps" for the block
// maps, keyed (layer u64 BE, block u64 BE) so that a layer's entries lie together in
// block order.
#include "core/format.h"
#include "core/local/local_seams.h"

namespace stellarium {
namespace {

rocksdb::Slice Slice(std::string_view v) { return rocksdb::Slice(v.data(), v.size()); }

class LocalMapCursor final : public MapCursor {
 public:
  LocalMapCursor(std::unique_ptr<rocksdb::Iterator> it, uint64_t layer, uint64_t from,
                 uint64_t to)
      : it_(std::move(it)), end_(format::MapKey(layer, to)) {
    it_->Seek(format::MapKeyOf(layer, from).view());
    Decode();
  }
  bool Valid() const override { return valid_; }
  uint64_t block() const override { return block_; }
  std::string_view value() const override { return it_->value().ToStringView(); }
  void Next() override {
    it_->Next();
    Decode();
  }
  Status status() const override { return FromRocks(it_->status(), "read block map"); }

 private:
  void Decode() {
    valid_ = it_->Valid() && it_->key().compare(end_) < 0;
    if (valid_) {
      uint64_t layer;
      format::DecodeMapKey(it_->key().ToStringView(), &layer, &block_);
    }
  }
  std::unique_ptr<rocksdb::Iterator> it_;
  const std::string end_;
  bool valid_ = false;
  uint64_t block_ = 0;
};

}  // namespace

Cf CfOf(Table table) {
  switch (table) {
    case Table::kVolumes:
      return Cf::kVolumes;
    case Table::kSnapshots:
      return Cf::kSnapshots;
    case Table::kImages:
      return Cf::kImages;
    case Table::kNames:
      return Cf::kNames;
    case Table::kLayers:
      return Cf::kLayers;
  }
  return Cf::kMeta;  // unreachable: every table is listed
}

Result<std::optional<std::string>> LocalCatalog::Get(Table table, std::string_view key) {
  return db_->Get(CfOf(table), Slice(key), "catalog");
}

Status LocalCatalog::Scan(Table table,
                          const std::function<Status(std::string_view, std::string_view)>& fn) {
  auto it = db_->NewIterator(CfOf(table), /*fill_cache=*/false);
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    RETURN_IF_ERROR(fn(it->key().ToStringView(), it->value().ToStringView()));
  }
  return FromRocks(it->status(), "scan catalog");
}

void LocalCatalog::Put(Batch* batch, Table table, std::string_view key, std::string_view value) {
  LocalBatch* b = AsLocal(batch);
  b->changes_tables = true;
  b->writes.Put(db_->cf(CfOf(table)), Slice(key), Slice(value));
}

void LocalCatalog::Delete(Batch* batch, Table table, std::string_view key) {
  LocalBatch* b = AsLocal(batch);
  b->changes_tables = true;
  b->writes.Delete(db_->cf(CfOf(table)), Slice(key));
}

void LocalCatalog::Expect(Batch* batch, Table table, std::string_view key,
                          std::optional<std::string_view> value) {
  LocalBatch* b = AsLocal(batch);
  b->guards.push_back({table, std::string(key),
                       value ? std::optional<std::string>(std::string(*value)) : std::nullopt});
}

uint64_t LocalCatalog::NewLayerId(Batch* batch) {
  const uint64_t id = next_layer_.fetch_add(1);
  // A later open continues above the largest layer id it finds and above this.
  AsLocal(batch)->writes.Put(db_->cf(Cf::kMeta), Slice(format::kMetaNextLayer),
                             format::EncodeU64(id + 1));
  return id;
}

std::unique_ptr<MapCursor> LocalCatalog::NewMapCursor(uint64_t layer, uint64_t from, uint64_t to,
                                                      bool fill_cache) {
  return std::make_unique<LocalMapCursor>(db_->NewIterator(Cf::kMaps, fill_cache), layer, from,
                                          to);
}

Result<std::optional<std::string>> LocalCatalog::GetMap(uint64_t layer, uint64_t block) {
  return db_->Get(Cf::kMaps, Slice(format::MapKeyOf(layer, block).view()),
                  "layer " + std::to_string(layer) + " block " + std::to_string(block));
}

void LocalCatalog::PutMap(Batch* batch, uint64_t layer, uint64_t block, std::string_view value) {
  AsLocal(batch)->writes.Put(db_->cf(Cf::kMaps), Slice(format::MapKeyOf(layer, block).view()),
                             Slice(value));
}

void LocalCatalog::DeleteMap(Batch* batch, uint64_t layer, uint64_t block) {
  deleted_layers_.Add(layer);
  AsLocal(batch)->writes.Delete(db_->cf(Cf::kMaps), Slice(format::MapKeyOf(layer, block).view()));
}

Status LocalCatalog::PutMap(BulkBatch* batch, uint64_t layer, uint64_t block,
                            std::string_view value) {
  return AsLocal(batch)->Put(Cf::kMaps, format::MapKeyOf(layer, block).view(), value);
}

Status LocalCatalog::ScanMaps(const std::function<Status(uint64_t, uint64_t, std::string_view)>& fn,
                              uint64_t* malformed) {
  auto it = db_->NewIterator(Cf::kMaps, /*fill_cache=*/false);
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    if (it->key().size() != format::kMapKeySize) {
      if (malformed != nullptr) ++*malformed;
      continue;
    }
    uint64_t layer, block;
    format::DecodeMapKey(it->key().ToStringView(), &layer, &block);
    RETURN_IF_ERROR(fn(layer, block, it->value().ToStringView()));
  }
  return FromRocks(it->status(), "scan block maps");
}

}  // namespace stellarium
