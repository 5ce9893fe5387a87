// Store: opening, recovery, and the catalog (volumes, snapshots, images, layers).
// Every catalog change is assembled in a CatalogTxn and committed in one synced batch.
#include "core/store.h"

#include <chrono>
#include <random>

#include "core/store_impl.h"

namespace stellarium {

using format::LayerRecord;
using format::LayerState;
using format::SnapshotRecord;
using format::VolumeRecord;

int64_t NowUnixNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

Status ValidateBlockSize(uint32_t bs) {
  if (bs < kMinBlockSize || bs > kMaxBlockSize || (bs & (bs - 1)) != 0) {
    return Status::InvalidArgument("block size " + std::to_string(bs) +
                                   " is not supported: use a power of two from 4096 to 1048576");
  }
  return Status::Ok();
}

Result<uint64_t> ParseSize(const std::string& text) {
  if (text.empty()) return Status::InvalidArgument("size '': empty");
  size_t pos = 0;
  uint64_t n = 0;
  while (pos < text.size() && isdigit(static_cast<unsigned char>(text[pos]))) {
    uint64_t d = text[pos] - '0';
    if (n > (UINT64_MAX - d) / 10) return Status::InvalidArgument("size '" + text + "': too large");
    n = n * 10 + d;
    ++pos;
  }
  if (pos == 0) return Status::InvalidArgument("size '" + text + "': not a number");
  std::string unit = text.substr(pos);
  uint64_t mul = 1;
  if (unit.empty() || unit == "B") mul = 1;
  else if (unit == "K" || unit == "KiB" || unit == "k") mul = 1ull << 10;
  else if (unit == "M" || unit == "MiB") mul = 1ull << 20;
  else if (unit == "G" || unit == "GiB") mul = 1ull << 30;
  else if (unit == "T" || unit == "TiB") mul = 1ull << 40;
  else return Status::InvalidArgument("size '" + text + "': unknown unit '" + unit +
                                      "' (use K, M, G or T)");
  if (n > UINT64_MAX / mul) return Status::InvalidArgument("size '" + text + "': too large");
  return n * mul;
}

// ---------------------------------------------------------------------------
// StoreImpl helpers

Result<LayerRecord> StoreImpl::LoadLayer(uint64_t id) {
  ASSIGN_OR_RETURN(auto v, db->Get(Cf::kLayers, format::LayerKey(id), "layer " + std::to_string(id)));
  if (!v) return Status::Corruption("layer " + std::to_string(id) + " is missing from the catalog");
  return format::DecodeLayer(id, *v);
}

Result<LayerRecord*> StoreImpl::TxnLayer(CatalogTxn* txn, uint64_t id) {
  auto it = txn->layers.find(id);
  if (it != txn->layers.end()) return &it->second;
  ASSIGN_OR_RETURN(LayerRecord r, LoadLayer(id));
  return &(txn->layers[id] = r);
}

uint64_t StoreImpl::NewLayer(CatalogTxn* txn, uint64_t parent, LayerState state,
                             uint32_t block_size, uint64_t refs) {
  LayerRecord r;
  r.id = next_layer++;
  r.parent = parent;
  r.state = state;
  r.block_size = block_size;
  r.refs = refs;
  r.created_unix_ns = NowUnixNs();
  txn->layers[r.id] = r;
  txn->batch.Put(db->cf(Cf::kMeta), std::string(format::kMetaNextLayer),
                 format::EncodeU64(next_layer));
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
    if (!l->image_digest.empty()) {
      // The image is forgotten with its last user; a later import stores it again.
      ASSIGN_OR_RETURN(auto img, db->Get(Cf::kImages, l->image_digest, "image"));
      if (img) {
        ASSIGN_OR_RETURN(auto rec, format::DecodeImage(l->image_digest, *img));
        if (rec.layer == id) txn->batch.Delete(db->cf(Cf::kImages), l->image_digest);
      }
    }
    id = l->parent;
  }
  return Status::Ok();
}

Status StoreImpl::KillLayer(CatalogTxn* txn, uint64_t id) {
  ASSIGN_OR_RETURN(LayerRecord * l, TxnLayer(txn, id));
  if (l->state == LayerState::kDead) return Status::Ok();
  l->state = LayerState::kDead;
  return l->parent != 0 ? UnrefLayer(txn, l->parent) : Status::Ok();
}

Status StoreImpl::Commit(CatalogTxn* txn, const std::string& what) {
  for (const auto& [id, rec] : txn->layers) {
    txn->batch.Put(db->cf(Cf::kLayers), format::LayerKey(id), format::EncodeLayer(rec));
  }
  return db->Write(&txn->batch, WriteMode::kSync, what);
}

Result<std::optional<VolumeRecord>> StoreImpl::LoadVolume(const std::string& id) {
  ASSIGN_OR_RETURN(auto v, db->Get(Cf::kVolumes, id, "volume " + id));
  if (!v) return std::optional<VolumeRecord>();
  ASSIGN_OR_RETURN(auto rec, format::DecodeVolume(id, *v));
  return std::optional<VolumeRecord>(std::move(rec));
}

Result<std::optional<SnapshotRecord>> StoreImpl::LoadSnapshot(const std::string& id) {
  ASSIGN_OR_RETURN(auto v, db->Get(Cf::kSnapshots, id, "snapshot " + id));
  if (!v) return std::optional<SnapshotRecord>();
  ASSIGN_OR_RETURN(auto rec, format::DecodeSnapshot(id, *v));
  return std::optional<SnapshotRecord>(std::move(rec));
}

std::shared_ptr<VolumeState> StoreImpl::OpenState(const std::string& id) {
  auto it = open_volumes.find(id);
  if (it == open_volumes.end()) return nullptr;
  auto st = it->second.lock();
  if (!st) open_volumes.erase(it);
  return st;
}

std::string StoreImpl::NewId(const char* prefix, Cf cf) {
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  for (;;) {
    char buf[17];
    snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(rng()));
    std::string id = std::string(prefix) + buf;
    auto v = db->Get(cf, id, "id");
    if (v.ok() && !v->has_value()) return id;
  }
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
  auto it = db->NewIterator(Cf::kMaps);
  std::string prefix = format::LayerKey(id);
  it->Seek(prefix);
  if (!it->status().ok()) return FromRocks(it->status(), "layer " + std::to_string(id));
  return !(it->Valid() && it->key().starts_with(prefix));
}

Status StoreImpl::ResolveRange(const std::vector<uint64_t>& chain, uint64_t b0, uint64_t b1,
                               const std::function<Status(uint64_t, std::string_view)>& fn) {
  if (b0 >= b1) return Status::Ok();
  if (chain.size() == 1) {
    auto it = db->NewIterator(Cf::kMaps);
    std::string end = format::MapKey(chain[0], b1);
    for (it->Seek(format::MapKey(chain[0], b0)); it->Valid() && it->key().compare(end) < 0;
         it->Next()) {
      uint64_t layer, block;
      format::DecodeMapKey(std::string_view(it->key().data(), it->key().size()), &layer, &block);
      RETURN_IF_ERROR(fn(block, std::string_view(it->value().data(), it->value().size())));
    }
    return FromRocks(it->status(), "read map of layer " + std::to_string(chain[0]));
  }
  // k-way merge over the chain's layers, ordered by block; the topmost layer wins.
  struct Cursor {
    std::unique_ptr<rocksdb::Iterator> it;
    std::string end;
    uint64_t block = 0;
    bool valid = false;
  };
  std::vector<Cursor> cursors(chain.size());
  auto advance = [&](Cursor& c) {
    c.valid = c.it->Valid() && c.it->key().compare(c.end) < 0;
    if (c.valid) {
      uint64_t layer;
      format::DecodeMapKey(std::string_view(c.it->key().data(), c.it->key().size()), &layer,
                           &c.block);
    }
  };
  for (size_t i = 0; i < chain.size(); ++i) {
    cursors[i].it = db->NewIterator(Cf::kMaps);
    cursors[i].end = format::MapKey(chain[i], b1);
    cursors[i].it->Seek(format::MapKey(chain[i], b0));
    advance(cursors[i]);
  }
  for (;;) {
    size_t best = SIZE_MAX;
    for (size_t i = 0; i < cursors.size(); ++i) {
      if (cursors[i].valid && (best == SIZE_MAX || cursors[i].block < cursors[best].block)) best = i;
    }
    if (best == SIZE_MAX) break;
    uint64_t block = cursors[best].block;
    const auto& v = cursors[best].it->value();
    RETURN_IF_ERROR(fn(block, std::string_view(v.data(), v.size())));
    for (auto& c : cursors) {
      if (c.valid && c.block == block) {
        c.it->Next();
        advance(c);
      }
    }
  }
  for (size_t i = 0; i < cursors.size(); ++i) {
    RETURN_IF_ERROR(FromRocks(cursors[i].it->status(), "read map of layer " + std::to_string(chain[i])));
  }
  return Status::Ok();
}

Result<std::optional<VolumeRecord>> StoreImpl::FindCompatible(
    const CreateVolumeRequest& req, uint32_t block_size, uint64_t min_size,
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

  ASSIGN_OR_RETURN(auto id, db->Get(Cf::kNames, format::VolumeNameKey(req.name), "volume name " + req.name));
  if (id) {
    ASSIGN_OR_RETURN(auto rec, LoadVolume(*id));
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
  ASSIGN_OR_RETURN(auto found, FindCompatible(req, block_size, min_size, source_kind, source_id, &size));
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
  rec.info.id = NewId("vol-", Cf::kVolumes);
  rec.info.name = req.name;
  rec.info.size_bytes = size;
  rec.info.block_size = block_size;
  rec.info.source_kind = source_kind;
  rec.info.source_id = source_id;
  rec.info.created_unix_ns = NowUnixNs();
  rec.info.attributes = req.attributes;
  rec.head = NewLayer(txn, base, LayerState::kActive, block_size, 1);
  txn->batch.Put(db->cf(Cf::kVolumes), rec.info.id, format::EncodeVolume(rec));
  txn->batch.Put(db->cf(Cf::kNames), format::VolumeNameKey(req.name), rec.info.id);
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
  txn->batch.Put(db->cf(Cf::kVolumes), vol->info.id, format::EncodeVolume(*vol));
  return frozen;
}

// ---------------------------------------------------------------------------
// Store

Store::Store(std::unique_ptr<StoreImpl> impl) : impl_(std::move(impl)) {}
Store::~Store() = default;
const StoreOptions& Store::options() const { return impl_->options; }

Result<std::unique_ptr<Store>> Store::Open(const StoreOptions& options) {
  if (options.path.empty()) return Status::InvalidArgument("store path is empty");
  RETURN_IF_ERROR(ValidateBlockSize(options.default_block_size).Annotate("store " + options.path));
  if (options.max_chain_depth < 2) {
    return Status::InvalidArgument("store " + options.path + ": max_chain_depth must be at least 2");
  }
  auto impl = std::make_unique<StoreImpl>();
  impl->options = options;
  ASSIGN_OR_RETURN(impl->db, Db::Open(options.path, options.create_if_missing, options.mmap_reads));
  ASSIGN_OR_RETURN(impl->chunks, NewRocksChunkStore(impl->db.get(), options.disk_readahead_bytes));

  ASSIGN_OR_RETURN(auto next, impl->db->Get(Cf::kMeta, std::string(format::kMetaNextLayer), "store"));
  if (next) impl->next_layer = format::DecodeU64(*next);

  // Recovery: an import that did not commit leaves a layer in kImporting; it is dead
  // now (its map entries and chunk references go at the next gc).
  CatalogTxn txn;
  auto it = impl->db->NewIterator(Cf::kLayers);
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    uint64_t id = format::DecodeLayerKey(std::string_view(it->key().data(), it->key().size()));
    ASSIGN_OR_RETURN(LayerRecord r, format::DecodeLayer(id, std::string_view(it->value().data(), it->value().size())));
    if (r.id >= impl->next_layer) impl->next_layer = r.id + 1;
    if (r.state == LayerState::kImporting) txn.layers[id] = r;
  }
  std::vector<uint64_t> interrupted;
  for (const auto& [id, r] : txn.layers) interrupted.push_back(id);
  for (uint64_t id : interrupted) RETURN_IF_ERROR(impl->KillLayer(&txn, id));
  RETURN_IF_ERROR(FromRocks(it->status(), "store " + options.path + ": scan layers"));
  if (!txn.layers.empty()) RETURN_IF_ERROR(impl->Commit(&txn, "store " + options.path + ": recovery"));
  return std::unique_ptr<Store>(new Store(std::move(impl)));
}

Result<VolumeInfo> Store::CreateVolume(const CreateVolumeRequest& req) {
  StoreImpl& s = *impl_;
  std::lock_guard lock(s.catalog_mu);
  uint32_t bs = req.block_size ? req.block_size : s.options.default_block_size;
  CatalogTxn txn;
  VolumeRecord rec;
  bool existing;
  RETURN_IF_ERROR(s.StageVolume(&txn, req, 0, bs, 0, "", "", &rec, &existing));
  if (!existing) RETURN_IF_ERROR(s.Commit(&txn, "create volume " + req.name));
  return rec.info;
}

Result<VolumeInfo> Store::CreateVolumeFromSnapshot(const CreateVolumeRequest& req,
                                                   const std::string& snapshot_id) {
  StoreImpl& s = *impl_;
  VolumeRecord rec;
  {
    std::lock_guard lock(s.catalog_mu);
    ASSIGN_OR_RETURN(auto snap, s.LoadSnapshot(snapshot_id));
    if (!snap) return Status::NotFound("snapshot " + snapshot_id + " not found");
    CatalogTxn txn;
    bool existing;
    RETURN_IF_ERROR(s.StageVolume(&txn, req, snap->layer, snap->info.block_size, snap->info.size_bytes,
                                  "snapshot", snapshot_id, &rec, &existing));
    if (existing) return rec.info;
    RETURN_IF_ERROR(s.Commit(&txn, "create volume " + req.name + " from snapshot " + snapshot_id));
  }
  return rec.info;
}

Result<VolumeInfo> Store::CreateVolumeFromImage(const CreateVolumeRequest& req,
                                                const std::string& image_digest) {
  StoreImpl& s = *impl_;
  ASSIGN_OR_RETURN(ChunkId digest, ChunkIdFromHex(image_digest));
  std::lock_guard lock(s.catalog_mu);
  ASSIGN_OR_RETURN(auto v, s.db->Get(Cf::kImages, AsBytes(digest), "image " + image_digest));
  if (!v) return Status::NotFound("image " + image_digest + " not found");
  ASSIGN_OR_RETURN(auto img, format::DecodeImage(AsBytes(digest), *v));
  CatalogTxn txn;
  VolumeRecord rec;
  bool existing;
  RETURN_IF_ERROR(s.StageVolume(&txn, req, img.layer, img.info.block_size, img.info.size_bytes,
                                "image", img.info.digest, &rec, &existing));
  if (!existing) RETURN_IF_ERROR(s.Commit(&txn, "create volume " + req.name + " from image"));
  return rec.info;
}

Result<VolumeInfo> Store::CloneVolume(const CreateVolumeRequest& req, const std::string& volume_id) {
  StoreImpl& s = *impl_;
  {
    // Keep the source's chain short before it grows by one (see FlattenIfDeep).
    std::unique_lock lock(s.catalog_mu);
    ASSIGN_OR_RETURN(auto src, s.LoadVolume(volume_id));
    if (!src) return Status::NotFound("source volume " + volume_id + " not found");
    ASSIGN_OR_RETURN(auto existing_id, s.db->Get(Cf::kNames, format::VolumeNameKey(req.name), "name"));
    lock.unlock();
    if (!existing_id) {
      ASSIGN_OR_RETURN(auto chain, s.LoadChain(src->head));
      RETURN_IF_ERROR(s.FlattenIfDeep(volume_id, static_cast<uint32_t>(chain.size() + 1)));
    }
  }
  std::lock_guard lock(s.catalog_mu);
  ASSIGN_OR_RETURN(auto src, s.LoadVolume(volume_id));
  if (!src) return Status::NotFound("source volume " + volume_id + " not found");
  CatalogTxn txn;
  VolumeRecord rec;
  bool existing;
  // The idempotency check runs before the source's head is touched.
  uint64_t size;
  ASSIGN_OR_RETURN(auto found, s.FindCompatible(req, src->info.block_size, src->info.size_bytes,
                                                "volume", volume_id, &size));
  if (found) return found->info;
  auto st = s.OpenState(volume_id);
  std::unique_lock<std::shared_mutex> vlock;
  if (st) vlock = std::unique_lock(st->mu);
  VolumeRecord source = *src;
  ASSIGN_OR_RETURN(uint64_t base, s.FreezeHead(&txn, &source));
  RETURN_IF_ERROR(s.StageVolume(&txn, req, base, src->info.block_size, src->info.size_bytes,
                                "volume", volume_id, &rec, &existing));
  RETURN_IF_ERROR(s.Commit(&txn, "clone volume " + volume_id + " as " + req.name));
  if (st) {
    st->rec = source;
    ASSIGN_OR_RETURN(st->chain, s.LoadChain(source.head));
  }
  return rec.info;
}

Status Store::DeleteVolume(const std::string& volume_id) {
  StoreImpl& s = *impl_;
  std::lock_guard lock(s.catalog_mu);
  ASSIGN_OR_RETURN(auto rec, s.LoadVolume(volume_id));
  if (!rec) return Status::Ok();
  auto st = s.OpenState(volume_id);
  if (st && st->handles.load() > 0) {
    return Status::FailedPrecondition("volume " + volume_id + " (" + rec->info.name +
                                      ") is in use: close or unstage it first");
  }
  CatalogTxn txn;
  txn.batch.Delete(s.db->cf(Cf::kVolumes), volume_id);
  txn.batch.Delete(s.db->cf(Cf::kNames), format::VolumeNameKey(rec->info.name));
  RETURN_IF_ERROR(s.UnrefLayer(&txn, rec->head));
  RETURN_IF_ERROR(s.Commit(&txn, "delete volume " + volume_id));
  if (st) {
    std::unique_lock vl(st->mu);
    st->deleted = true;
  }
  return Status::Ok();
}

Result<VolumeInfo> Store::GetVolume(const std::string& volume_id) {
  ASSIGN_OR_RETURN(auto rec, impl_->LoadVolume(volume_id));
  if (!rec) return Status::NotFound("volume " + volume_id + " not found");
  return rec->info;
}

Result<VolumeInfo> Store::FindVolumeByName(const std::string& name) {
  ASSIGN_OR_RETURN(auto id, impl_->db->Get(Cf::kNames, format::VolumeNameKey(name), "volume name " + name));
  if (!id) return Status::NotFound("volume named " + name + " not found");
  return GetVolume(*id);
}

Result<std::vector<VolumeInfo>> Store::ListVolumes() {
  std::vector<VolumeInfo> out;
  auto it = impl_->db->NewIterator(Cf::kVolumes);
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    ASSIGN_OR_RETURN(auto rec, format::DecodeVolume(it->key().ToStringView(), it->value().ToStringView()));
    out.push_back(std::move(rec.info));
  }
  RETURN_IF_ERROR(FromRocks(it->status(), "list volumes"));
  return out;
}

Result<VolumeInfo> Store::ResizeVolume(const std::string& volume_id, uint64_t new_size) {
  StoreImpl& s = *impl_;
  std::lock_guard lock(s.catalog_mu);
  ASSIGN_OR_RETURN(auto rec, s.LoadVolume(volume_id));
  if (!rec) return Status::NotFound("volume " + volume_id + " not found");
  uint64_t bs = rec->info.block_size;
  if (new_size > UINT64_MAX - bs) return Status::OutOfRange("volume " + volume_id + ": size too large");
  uint64_t size = (new_size + bs - 1) / bs * bs;
  if (size < rec->info.size_bytes) {
    return Status::OutOfRange("volume " + volume_id + ": cannot shrink from " +
                              std::to_string(rec->info.size_bytes) + " to " + std::to_string(size) +
                              " bytes; only growing is supported");
  }
  if (size == rec->info.size_bytes) return rec->info;
  auto st = s.OpenState(volume_id);
  std::unique_lock<std::shared_mutex> vlock;
  if (st) vlock = std::unique_lock(st->mu);
  rec->info.size_bytes = size;
  CatalogTxn txn;
  txn.batch.Put(s.db->cf(Cf::kVolumes), volume_id, format::EncodeVolume(*rec));
  RETURN_IF_ERROR(s.Commit(&txn, "resize volume " + volume_id));
  if (st) st->rec.info.size_bytes = size;
  return rec->info;
}

Result<SnapshotInfo> Store::CreateSnapshot(const std::string& name, const std::string& volume_id) {
  StoreImpl& s = *impl_;
  if (name.empty()) return Status::InvalidArgument("snapshot name is empty");
  {
    std::unique_lock lock(s.catalog_mu);
    ASSIGN_OR_RETURN(auto sid, s.db->Get(Cf::kNames, format::SnapshotNameKey(name), "snapshot name " + name));
    if (sid) {
      ASSIGN_OR_RETURN(auto snap, s.LoadSnapshot(*sid));
      if (!snap) return Status::Corruption("snapshot name " + name + " points to missing snapshot " + *sid);
      if (snap->info.source_volume_id == volume_id) return snap->info;
      return Status::AlreadyExists("snapshot " + name + " already exists (" + *sid +
                                   ") for another volume (" + snap->info.source_volume_id + ")");
    }
    ASSIGN_OR_RETURN(auto vol, s.LoadVolume(volume_id));
    if (!vol) return Status::NotFound("volume " + volume_id + " not found");
    ASSIGN_OR_RETURN(auto chain, s.LoadChain(vol->head));
    lock.unlock();
    RETURN_IF_ERROR(s.FlattenIfDeep(volume_id, static_cast<uint32_t>(chain.size() + 1)));
  }
  std::lock_guard lock(s.catalog_mu);
  ASSIGN_OR_RETURN(auto sid, s.db->Get(Cf::kNames, format::SnapshotNameKey(name), "snapshot name"));
  if (sid) return Status::Aborted("snapshot " + name + " was created concurrently; retry");
  ASSIGN_OR_RETURN(auto vol, s.LoadVolume(volume_id));
  if (!vol) return Status::NotFound("volume " + volume_id + " not found");
  auto st = s.OpenState(volume_id);
  std::unique_lock<std::shared_mutex> vlock;
  if (st) vlock = std::unique_lock(st->mu);
  CatalogTxn txn;
  ASSIGN_OR_RETURN(uint64_t layer, s.FreezeHead(&txn, &*vol));
  if (layer != 0) {
    ASSIGN_OR_RETURN(LayerRecord * l, s.TxnLayer(&txn, layer));
    ++l->refs;
  }
  SnapshotRecord rec;
  rec.info.id = s.NewId("snap-", Cf::kSnapshots);
  rec.info.name = name;
  rec.info.source_volume_id = volume_id;
  rec.info.size_bytes = vol->info.size_bytes;
  rec.info.block_size = vol->info.block_size;
  rec.info.created_unix_ns = NowUnixNs();
  rec.layer = layer;
  txn.batch.Put(s.db->cf(Cf::kSnapshots), rec.info.id, format::EncodeSnapshot(rec));
  txn.batch.Put(s.db->cf(Cf::kNames), format::SnapshotNameKey(name), rec.info.id);
  RETURN_IF_ERROR(s.Commit(&txn, "snapshot volume " + volume_id + " as " + name));
  if (st) {
    st->rec = *vol;
    ASSIGN_OR_RETURN(st->chain, s.LoadChain(vol->head));
  }
  return rec.info;
}

Status Store::DeleteSnapshot(const std::string& snapshot_id) {
  StoreImpl& s = *impl_;
  std::lock_guard lock(s.catalog_mu);
  ASSIGN_OR_RETURN(auto snap, s.LoadSnapshot(snapshot_id));
  if (!snap) return Status::Ok();
  CatalogTxn txn;
  txn.batch.Delete(s.db->cf(Cf::kSnapshots), snapshot_id);
  txn.batch.Delete(s.db->cf(Cf::kNames), format::SnapshotNameKey(snap->info.name));
  if (snap->layer != 0) RETURN_IF_ERROR(s.UnrefLayer(&txn, snap->layer));
  return s.Commit(&txn, "delete snapshot " + snapshot_id);
}

Result<SnapshotInfo> Store::GetSnapshot(const std::string& snapshot_id) {
  ASSIGN_OR_RETURN(auto rec, impl_->LoadSnapshot(snapshot_id));
  if (!rec) return Status::NotFound("snapshot " + snapshot_id + " not found");
  return rec->info;
}

Result<SnapshotInfo> Store::FindSnapshotByName(const std::string& name) {
  ASSIGN_OR_RETURN(auto id, impl_->db->Get(Cf::kNames, format::SnapshotNameKey(name), "snapshot name " + name));
  if (!id) return Status::NotFound("snapshot named " + name + " not found");
  return GetSnapshot(*id);
}

Result<std::vector<SnapshotInfo>> Store::ListSnapshots() {
  std::vector<SnapshotInfo> out;
  auto it = impl_->db->NewIterator(Cf::kSnapshots);
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    ASSIGN_OR_RETURN(auto rec, format::DecodeSnapshot(it->key().ToStringView(), it->value().ToStringView()));
    out.push_back(std::move(rec.info));
  }
  RETURN_IF_ERROR(FromRocks(it->status(), "list snapshots"));
  return out;
}

Result<std::vector<ImageInfo>> Store::ListImages() {
  std::vector<ImageInfo> out;
  auto it = impl_->db->NewIterator(Cf::kImages);
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    ASSIGN_OR_RETURN(auto rec, format::DecodeImage(it->key().ToStringView(), it->value().ToStringView()));
    out.push_back(std::move(rec.info));
  }
  RETURN_IF_ERROR(FromRocks(it->status(), "list images"));
  return out;
}

Status Store::Sync() { return impl_->db->SyncWal(); }

}  // namespace stellarium
