// StoreImpl's catalog helpers: layer records and their reference counts, the volume
// creation rules shared by every way of making a volume, and reading through a layer
// chain. Every change is staged in a CatalogTxn and committed in one synced batch.
#include <chrono>
#include <random>

#include "core/store_impl.h"

namespace stellarium {

using format::LayerRecord;
using format::LayerState;
using format::VolumeRecord;

int64_t NowUnixNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

Result<std::optional<std::string>> StoreImpl::Read(Table table, std::string_view key,
                                                   CatalogTxn* txn) {
  ASSIGN_OR_RETURN(auto v, catalog().Get(table, key));
  if (txn != nullptr) {
    catalog().Expect(txn->batch.get(), table, key,
                     v ? std::optional<std::string_view>(*v) : std::nullopt);
  }
  return v;
}

Result<LayerRecord> StoreImpl::LoadLayer(uint64_t id) {
  ASSIGN_OR_RETURN(auto v, catalog().Get(Table::kLayers, format::LayerKey(id)));
  if (!v) return Status::Corruption("layer " + std::to_string(id) + " is missing from the catalog");
  return format::DecodeLayer(id, *v);
}

Result<LayerRecord*> StoreImpl::TxnLayer(CatalogTxn* txn, uint64_t id) {
  auto it = txn->layers.find(id);
  if (it != txn->layers.end()) return &it->second;
  ASSIGN_OR_RETURN(auto v, Read(Table::kLayers, format::LayerKey(id), txn));
  if (!v) return Status::Corruption("layer " + std::to_string(id) + " is missing from the catalog");
  ASSIGN_OR_RETURN(LayerRecord r, format::DecodeLayer(id, *v));
  return &(txn->layers[id] = r);
}

uint64_t StoreImpl::NewLayer(CatalogTxn* txn, uint64_t parent, LayerState state,
                             uint32_t block_size, uint64_t refs) {
  LayerRecord r;
  r.id = catalog().NewLayerId(txn->batch.get());
  r.parent = parent;
  r.state = state;
  r.block_size = block_size;
  r.refs = refs;
  r.created_unix_ns = NowUnixNs();
  txn->layers[r.id] = r;
  return r.id;
}

Status StoreImpl::UnrefLayer(CatalogTxn* txn, uint64_t id) {
  while (id != 0) {
    ASSIGN_OR_RETURN(LayerRecord * l, TxnLayer(txn, id));
    if (l->refs == 0) {
      return Status::Corruption("layer " + std::to_string(id) + ": reference count underflow");
    }
    if (--l->refs > 0) return Status::Ok();
    l->state = LayerState::kDead;
    layers_died = true;
    if (!l->image_digest.empty()) {
      // The image is forgotten with its last user; a later import stores it again.
      ASSIGN_OR_RETURN(auto img, Load<format::ImageRecord>(l->image_digest, txn));
      if (img && img->layer == id) catalog().Delete(txn->batch.get(), Table::kImages, l->image_digest);
    }
    id = l->parent;
  }
  return Status::Ok();
}

Status StoreImpl::KillLayer(CatalogTxn* txn, uint64_t id) {
  ASSIGN_OR_RETURN(LayerRecord * l, TxnLayer(txn, id));
  if (l->state == LayerState::kDead) return Status::Ok();
  l->state = LayerState::kDead;
  layers_died = true;
  return l->parent != 0 ? UnrefLayer(txn, l->parent) : Status::Ok();
}

Status StoreImpl::Commit(CatalogTxn* txn, const std::string& what) {
  for (const auto& [id, rec] : txn->layers) {
    catalog().Put(txn->batch.get(), Table::kLayers, format::LayerKey(id), format::EncodeLayer(rec));
  }
  return backend->Commit(txn->batch.get(), Durability::kSync, what);
}

std::shared_ptr<VolumeState> StoreImpl::OpenState(const std::string& id) {
  auto it = open_volumes.find(id);
  if (it == open_volumes.end()) return nullptr;
  auto st = it->second.lock();
  if (!st) open_volumes.erase(it);
  return st;
}

Result<std::string> StoreImpl::NewId(const char* prefix, Table table, CatalogTxn* txn) {
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  for (;;) {
    char buf[17];
    snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(rng()));
    std::string id = std::string(prefix) + buf;
    ASSIGN_OR_RETURN(auto v, Read(table, id, txn));
    if (!v) return id;
  }
}

void StoreImpl::PutVolume(CatalogTxn* txn, const VolumeRecord& rec) {
  catalog().Put(txn->batch.get(), Table::kVolumes, rec.info.id, format::EncodeVolume(rec));
}

Result<std::vector<uint64_t>> StoreImpl::LoadChain(uint64_t head) {
  std::vector<uint64_t> chain;
  for (uint64_t id = head; id != 0;) {
    if (chain.size() > 4096) return Status::Corruption("layer chain from " + std::to_string(head) + " loops");
    chain.push_back(id);
    ASSIGN_OR_RETURN(LayerRecord r, LoadLayer(id));
    id = r.parent;
  }
  return chain;
}

Result<bool> StoreImpl::LayerIsEmpty(uint64_t id) {
  auto cursor = catalog().NewMapCursor(id, 0, UINT64_MAX);
  RETURN_IF_ERROR(cursor->status().Annotate("layer " + std::to_string(id)));
  return !cursor->Valid();
}

// One layer: its entries in order. Several: a k-way merge over the chain's layers,
// ordered by block; the topmost layer wins.
Status StoreImpl::ResolveRange(const std::vector<uint64_t>& chain, uint64_t b0, uint64_t b1,
                               const std::function<Status(uint64_t, std::string_view)>& fn) {
  if (b0 >= b1) return Status::Ok();
  std::vector<std::unique_ptr<MapCursor>> cursors(chain.size());
  for (size_t i = 0; i < chain.size(); ++i) cursors[i] = catalog().NewMapCursor(chain[i], b0, b1);
  if (chain.size() == 1) {
    for (MapCursor& c = *cursors[0]; c.Valid(); c.Next()) RETURN_IF_ERROR(fn(c.block(), c.value()));
  } else {
    for (;;) {
      MapCursor* best = nullptr;
      for (auto& c : cursors) {
        if (c->Valid() && (best == nullptr || c->block() < best->block())) best = c.get();
      }
      if (best == nullptr) break;
      const uint64_t block = best->block();
      RETURN_IF_ERROR(fn(block, best->value()));
      for (auto& c : cursors) {
        if (c->Valid() && c->block() == block) c->Next();
      }
    }
  }
  for (size_t i = 0; i < chain.size(); ++i) {
    RETURN_IF_ERROR(cursors[i]->status().Annotate("layer " + std::to_string(chain[i])));
  }
  return Status::Ok();
}

Result<std::optional<VolumeRecord>> StoreImpl::FindCompatible(
    CatalogTxn* txn, const CreateVolumeRequest& req, uint32_t block_size, uint64_t min_size,
    const std::string& source_kind, const std::string& source_id, uint64_t* size_out) {
  if (req.name.empty()) return Status::InvalidArgument("volume name is empty");
  RETURN_IF_ERROR(ValidateBlockSize(block_size));
  uint64_t size = req.size_bytes == 0 ? min_size : req.size_bytes;
  if (size == 0) return Status::InvalidArgument("volume " + req.name + ": size is zero");
  if (size > (UINT64_MAX - block_size)) {
    return Status::OutOfRange("volume " + req.name + ": size " + std::to_string(size) + " is too large");
  }
  size = (size + block_size - 1) / block_size * block_size;
  *size_out = size;

  ASSIGN_OR_RETURN(auto id, IdOfName<VolumeRecord>(req.name, txn));
  if (id) {
    ASSIGN_OR_RETURN(auto rec, Load<VolumeRecord>(*id));
    if (!rec) return Status::Corruption("volume name " + req.name + " points to missing volume " + *id);
    const VolumeInfo& e = rec->info;
    if (e.size_bytes == size && e.block_size == block_size && e.source_kind == source_kind &&
        e.source_id == source_id && e.attributes == req.attributes) {
      return rec;
    }
    return Status::AlreadyExists("volume " + req.name + " already exists (" + e.id +
                                 ") with other parameters: size " + std::to_string(e.size_bytes) +
                                 ", block size " + std::to_string(e.block_size) +
                                 (e.source_kind.empty() ? "" : ", source " + e.source_kind + " " + e.source_id));
  }
  if (size < min_size) {
    return Status::OutOfRange("volume " + req.name + ": size " + std::to_string(size) +
                              " is smaller than its source (" + std::to_string(min_size) + " bytes)");
  }
  return std::optional<VolumeRecord>();
}

Status StoreImpl::StageVolume(CatalogTxn* txn, const CreateVolumeRequest& req, uint64_t base,
                              uint32_t block_size, uint64_t min_size,
                              const std::string& source_kind, const std::string& source_id,
                              VolumeRecord* out, bool* existing) {
  uint64_t size = 0;
  ASSIGN_OR_RETURN(auto found,
                   FindCompatible(txn, req, block_size, min_size, source_kind, source_id, &size));
  *existing = found.has_value();
  if (found) {
    *out = *found;
    return Status::Ok();
  }
  if (base != 0) {
    ASSIGN_OR_RETURN(LayerRecord * b, TxnLayer(txn, base));
    if (b->state == LayerState::kDead || b->state == LayerState::kImporting) {
      return Status::FailedPrecondition("layer " + std::to_string(base) + " is not usable as a source");
    }
    ++b->refs;
  }
  VolumeRecord rec;
  ASSIGN_OR_RETURN(rec.info.id, NewId("vol-", Table::kVolumes, txn));
  rec.info.name = req.name;
  rec.info.size_bytes = size;
  rec.info.block_size = block_size;
  rec.info.source_kind = source_kind;
  rec.info.source_id = source_id;
  rec.info.created_unix_ns = NowUnixNs();
  rec.info.attributes = req.attributes;
  rec.head = NewLayer(txn, base, LayerState::kActive, block_size, 1);
  PutVolume(txn, rec);
  catalog().Put(txn->batch.get(), Table::kNames, format::VolumeNameKey(req.name), rec.info.id);
  *out = rec;
  return Status::Ok();
}

Result<uint64_t> StoreImpl::FreezeHead(CatalogTxn* txn, VolumeRecord* vol) {
  ASSIGN_OR_RETURN(LayerRecord * head, TxnLayer(txn, vol->head));
  ASSIGN_OR_RETURN(bool empty, LayerIsEmpty(vol->head));
  if (empty) {
    // Nothing written since the last freeze: share the parent, keep the chain short.
    return head->parent;
  }
  // The head becomes frozen; the volume moves to a new empty head on top of it. The
  // volume's reference to the old head becomes the new head's parent reference.
  head->state = LayerState::kFrozen;
  uint32_t bs = head->block_size;
  uint64_t frozen = vol->head;
  vol->head = NewLayer(txn, frozen, LayerState::kActive, bs, 1);
  PutVolume(txn, *vol);
  return frozen;
}

}  // namespace stellarium
