// The RADOS store's Catalog: every record in the omap of one object (so a catalog change
// is one guarded write operation: atomic), block maps in shard objects of
// kMapShardBlocks blocks each.
#include <algorithm>
#include <random>
#include <set>

#include "core/rados/rados_seams.h"

namespace stellarium {

using format::rados::kMapShardBlocks;

namespace {

const std::string kCatalog(format::rados::kCatalogObject);

using format::rados::DecodeMapBlockKey;
using format::rados::MapBlockKey;

// Walks the entries of [from, to) of one layer, through the shards its directory lists.
class RadosMapCursor final : public MapCursor {
 public:
  RadosMapCursor(RadosCatalog* catalog, uint64_t layer, uint64_t from, uint64_t to)
      : catalog_(catalog), layer_(layer), from_(from), to_(to) {
    if (from >= to) return;
    auto shards = catalog_->Shards(layer);
    if (!shards.ok()) {
      status_ = shards.status();
      return;
    }
    shards_ = *shards;
    next_shard_ = shards_->lower_bound(from / kMapShardBlocks);
    Advance();
  }
  bool Valid() const override { return status_.ok() && data_ && it_ != data_->end(); }
  uint64_t block() const override { return it_->first; }
  std::string_view value() const override { return it_->second; }
  void Next() override {
    ++it_;
    if (it_ == data_->end() || it_->first >= to_) Advance();
  }
  Status status() const override { return status_; }

 private:
  // Moves to the first entry in range of the next listed shard that has one.
  void Advance() {
    data_.reset();
    while (next_shard_ != shards_->end() && *next_shard_ * kMapShardBlocks < to_) {
      auto shard = catalog_->LoadShard(layer_, *next_shard_++);
      if (!shard.ok()) {
        status_ = shard.status();
        return;
      }
      auto it = (*shard)->lower_bound(from_);
      if (it != (*shard)->end() && it->first < to_) {
        data_ = *shard;
        it_ = it;
        return;
      }
    }
  }
  RadosCatalog* catalog_;
  const uint64_t layer_, from_, to_;
  std::shared_ptr<const std::set<uint64_t>> shards_;
  std::set<uint64_t>::const_iterator next_shard_;
  std::shared_ptr<const RadosCatalog::Shard> data_;
  RadosCatalog::Shard::const_iterator it_;
  Status status_;
};

}  // namespace

RadosCatalog::RadosCatalog(RadosIo* io, uint64_t map_cache_bytes)
    : io_(io), shards_(map_cache_bytes), dirs_(map_cache_bytes / 16) {}

Result<std::shared_ptr<const std::set<uint64_t>>> RadosCatalog::Shards(uint64_t layer) {
  if (auto cached = dirs_.Get(layer)) return cached;
  auto shards = std::make_shared<std::set<uint64_t>>();
  RETURN_IF_ERROR(io_->OmapScan(format::rados::MapDirectoryObject(layer), "", "",
                                [&](const std::string& k, const std::string&) -> Result<bool> {
                                  shards->insert(DecodeMapBlockKey(k));
                                  return true;
                                },
                                "layer " + std::to_string(layer) + " map directory"));
  dirs_.Put(layer, shards, 64 + 16 * shards->size());
  return std::shared_ptr<const std::set<uint64_t>>(shards);
}

std::map<std::string, OmapChanges> RadosCatalog::DirectoryChanges(const RadosChanges& c) {
  std::map<std::string, OmapChanges> dirs;
  auto add = [&](const std::string& oid) {
    uint64_t layer, shard;
    if (format::rados::DecodeMapObject(oid, &layer, &shard)) {
      dirs[format::rados::MapDirectoryObject(layer)][MapBlockKey(shard)] = "";
    }
  };
  for (const auto& [oid, changes] : c.maps) add(oid);
  for (const auto& [oid, records] : c.map_appends) add(oid);
  return dirs;
}

Status RadosCatalog::ReadShard(const std::string& oid, Shard* out, uint64_t* bytes,
                               uint64_t* malformed) {
  const std::string what = "block map " + oid;
  uint64_t size = 0;
  time_t mtime;
  const int rc = io_->io().stat(oid, &size, &mtime);
  if (rc == -ENOENT) return Status::Ok();
  RETURN_IF_ERROR(FromRados(rc, what));
  if (size > 0) {
    ASSIGN_OR_RETURN(std::string data, io_->Read(oid, 0, size, what));
    if (!format::rados::DecodeMapRecords(data, [&](uint64_t block, std::string_view v) {
          (*out)[block] = std::string(v);
        })) {
      return Status::Corruption(what + ": undecodable records");
    }
  }
  RETURN_IF_ERROR(io_->OmapScan(
      oid, "", "",
      [&](const std::string& k, const std::string& v) -> Result<bool> {
        if (k.size() != 8) {
          if (malformed != nullptr) ++*malformed;
          return true;
        }
        if (v == format::rados::kMapTombstone) {
          out->erase(DecodeMapBlockKey(k));
        } else {
          (*out)[DecodeMapBlockKey(k)] = v;
        }
        return true;
      },
      what));
  for (const auto& [b, v] : *out) *bytes += v.size() + 48;
  return Status::Ok();
}

char RadosCatalog::Letter(Table table) {
  switch (table) {
    case Table::kVolumes:
      return 'v';
    case Table::kSnapshots:
      return 's';
    case Table::kImages:
      return 'i';
    case Table::kNames:
      return 'n';
    case Table::kLayers:
      return 'l';
  }
  return '?';
}

Result<std::optional<std::string>> RadosCatalog::Get(Table table, std::string_view key) {
  const std::string k = format::rados::CatalogKey(Letter(table), key);
  ASSIGN_OR_RETURN(auto vals, io_->OmapGet(kCatalog, {k}, "catalog"));
  auto it = vals.find(k);
  if (it == vals.end()) return std::optional<std::string>();
  return std::optional<std::string>(it->second);
}

Status RadosCatalog::Scan(Table table,
                          const std::function<Status(std::string_view, std::string_view)>& fn) {
  const std::string prefix(1, Letter(table));
  return io_->OmapScan(kCatalog, "", prefix,
                       [&](const std::string& k, const std::string& v) -> Result<bool> {
                         RETURN_IF_ERROR(fn(std::string_view(k).substr(1), v));
                         return true;
                       },
                       "catalog");
}

void RadosCatalog::Put(Batch* batch, Table table, std::string_view key, std::string_view value) {
  RadosChanges& c = ChangesOf(batch);
  c.catalog[format::rados::CatalogKey(Letter(table), key)] = std::string(value);
  ++c.count;
}

void RadosCatalog::Delete(Batch* batch, Table table, std::string_view key) {
  RadosChanges& c = ChangesOf(batch);
  c.catalog[format::rados::CatalogKey(Letter(table), key)] = std::nullopt;
  ++c.count;
}

void RadosCatalog::Expect(Batch* batch, Table table, std::string_view key,
                          std::optional<std::string_view> value) {
  ChangesOf(batch).guards[format::rados::CatalogKey(Letter(table), key)] =
      value ? std::optional<std::string>(std::string(*value)) : std::nullopt;
}

// Random: no counter every client would contend for. A collision is as likely as two
// equal 63-bit random numbers, and the new layer's record is guarded as absent.
uint64_t RadosCatalog::NewLayerId(Batch* batch) {
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  uint64_t id = 0;
  while (id == 0) id = rng() >> 1;
  Expect(batch, Table::kLayers, format::LayerKey(id), std::nullopt);
  return id;
}

Result<std::shared_ptr<const RadosCatalog::Shard>> RadosCatalog::LoadShard(uint64_t layer,
                                                                         uint64_t shard) {
  const std::string oid = format::rados::MapObject(layer, shard);
  if (auto cached = shards_.Get(oid)) return cached;
  auto data = std::make_shared<Shard>();
  uint64_t bytes = 0;
  RETURN_IF_ERROR(ReadShard(oid, data.get(), &bytes, nullptr)
                      .Annotate("layer " + std::to_string(layer)));
  shards_.Put(oid, data, bytes);
  return std::shared_ptr<const Shard>(data);
}

void RadosCatalog::Applied(const std::map<std::string, OmapChanges>& maps) {
  for (const auto& [oid, changes] : maps) {
    uint64_t layer, shard;
    if (format::rados::DecodeMapObject(oid, &layer, &shard)) {
      auto dir = dirs_.Get(layer);
      if (dir && !dir->count(shard)) {
        auto copy = std::make_shared<std::set<uint64_t>>(*dir);
        copy->insert(shard);
        dirs_.Put(layer, copy, 64 + 16 * copy->size());
      }
    }
    auto cached = shards_.Get(oid);
    if (!cached) continue;
    auto copy = std::make_shared<Shard>(*cached);
    uint64_t bytes = 0;
    for (const auto& [k, v] : changes) {
      if (v && *v != format::rados::kMapTombstone) (*copy)[DecodeMapBlockKey(k)] = *v;
      else copy->erase(DecodeMapBlockKey(k));
    }
    for (const auto& [b, v] : *copy) bytes += v.size() + 48;
    shards_.Put(oid, copy, bytes);
  }
}

void RadosCatalog::Forget(const std::map<std::string, std::string>& objects) {
  for (const auto& [oid, records] : objects) {
    shards_.Remove(oid);
    uint64_t layer, shard;
    if (format::rados::DecodeMapObject(oid, &layer, &shard)) dirs_.Remove(layer);
  }
}

std::unique_ptr<MapCursor> RadosCatalog::NewMapCursor(uint64_t layer, uint64_t from, uint64_t to,
                                                      bool) {
  return std::make_unique<RadosMapCursor>(this, layer, from, to);
}

Result<std::optional<std::string>> RadosCatalog::GetMap(uint64_t layer, uint64_t block) {
  ASSIGN_OR_RETURN(auto shard, LoadShard(layer, block / kMapShardBlocks));
  auto it = shard->find(block);
  if (it == shard->end()) return std::optional<std::string>();
  return std::optional<std::string>(it->second);
}

void RadosCatalog::PutMap(Batch* batch, uint64_t layer, uint64_t block, std::string_view value) {
  RadosChanges& c = ChangesOf(batch);
  c.maps[format::rados::MapObject(layer, block / kMapShardBlocks)][MapBlockKey(block)] = std::string(value);
  ++c.count;
}

// A tombstone, not a removal: the entry may be one of the object's appended records.
void RadosCatalog::DeleteMap(Batch* batch, uint64_t layer, uint64_t block) {
  RadosChanges& c = ChangesOf(batch);
  c.maps[format::rados::MapObject(layer, block / kMapShardBlocks)][MapBlockKey(block)] =
      std::string(format::rados::kMapTombstone);
  ++c.count;
}

// An import's entries are appended to the shard objects as records: one write per shard
// and period, not one omap key per block.
Status RadosCatalog::PutMap(BulkBatch* batch, uint64_t layer, uint64_t block, std::string_view value) {
  RadosChanges& c = ChangesOf(batch);
  format::rados::AppendMapRecord(&c.map_appends[format::rados::MapObject(layer, block / kMapShardBlocks)],
                                 block, value);
  ++c.count;
  return Status::Ok();
}

Status RadosCatalog::ScanMaps(const std::function<Status(uint64_t, uint64_t, std::string_view)>& fn,
                              uint64_t* malformed) {
  std::vector<std::pair<uint64_t, uint64_t>> shards;  // (layer, shard)
  RETURN_IF_ERROR(io_->List(std::string(format::rados::kMapObjectPrefix), [&](const std::string& oid) {
    uint64_t layer, shard;
    if (format::rados::DecodeMapObject(oid, &layer, &shard)) shards.emplace_back(layer, shard);
    return Status::Ok();
  }));
  std::sort(shards.begin(), shards.end());
  for (const auto& [layer, shard] : shards) {
    Shard data;
    uint64_t bytes = 0;
    RETURN_IF_ERROR(ReadShard(format::rados::MapObject(layer, shard), &data, &bytes, malformed));
    for (const auto& [block, v] : data) RETURN_IF_ERROR(fn(layer, block, v));
  }
  return Status::Ok();
}

}  // namespace stellarium
