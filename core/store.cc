// Store: opening, recovery, and the catalog operations of the public API (volumes,
// snapshots, images). Every catalog change is assembled in a CatalogTxn (catalog.cc) and
// committed in one synced, guarded batch.
#include "core/store.h"

#include "core/local/local_backend.h"
#ifdef STELLARIUM_HAVE_RADOS
#include "core/rados/rados_backend.h"
#endif
#include "core/store_impl.h"

namespace stellarium {

using format::LayerRecord;
using format::LayerState;
using format::SnapshotRecord;
using format::VolumeRecord;

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
// Store

Store::Store(std::unique_ptr<StoreImpl> impl) : impl_(std::move(impl)) {}
Store::~Store() = default;
const StoreOptions& Store::options() const { return impl_->options; }

namespace {

constexpr std::string_view kRadosScheme = "rados://";

Result<std::unique_ptr<Backend>> OpenBackend(const StoreOptions& options) {
  if (options.path.rfind(kRadosScheme, 0) == 0) {
#ifdef STELLARIUM_HAVE_RADOS
    if (options.read_only) {
      return Status::InvalidArgument("store " + options.path + ": a RADOS store is shared: open it "
                                     "as it is, not read-only");
    }
    RadosBackendOptions ro;
    // rados://POOL or rados://POOL/NAMESPACE
    const std::string where = options.path.substr(kRadosScheme.size());
    const size_t slash = where.find('/');
    ro.connect.pool = where.substr(0, slash);
    if (slash != std::string::npos) ro.connect.ns = where.substr(slash + 1);
    ro.connect.conf = options.ceph_conf;
    ro.connect.id = options.ceph_id;
    ro.cache_dir = options.cache_dir;
    ro.cache_bytes = options.cache_bytes;
    ro.writer_window_ns = options.rados_writer_window_ns;
    ro.lease_ns = options.rados_lease_ns;
    return OpenRadosBackend(ro);
#else
    return Status::Unimplemented("store " + options.path + ": this build has no RADOS support "
                                 "(built without librados)");
#endif
  }
  LocalBackendOptions lo;
  lo.dir = options.path;
  lo.create_if_missing = options.create_if_missing;
  lo.mmap_reads = options.mmap_reads;
  lo.disk_readahead_bytes = options.disk_readahead_bytes;
  lo.read_only = options.read_only;
  ASSIGN_OR_RETURN(auto local, LocalBackend::Open(lo));
  return std::unique_ptr<Backend>(std::move(local));
}

// An import that did not commit leaves a layer in kImporting; it is dead now (its map
// entries and chunk references go at the next gc).
Status DiscardInterruptedImports(StoreImpl* impl) {
  CatalogTxn txn(*impl->backend);
  std::vector<uint64_t> interrupted;
  RETURN_IF_ERROR(impl->catalog().Scan(Table::kLayers, [&](std::string_view key, std::string_view v) {
    const uint64_t id = format::DecodeLayerKey(key);
    ASSIGN_OR_RETURN(LayerRecord r, format::DecodeLayer(id, v));
    if (r.state != LayerState::kImporting) return Status::Ok();
    // On a shared store, another client's import may be running: only a gone owner's.
    ASSIGN_OR_RETURN(bool gone, impl->backend->IsClientGone(r.owner));
    if (gone) interrupted.push_back(id);
    return Status::Ok();
  }));
  if (interrupted.empty()) return Status::Ok();
  for (uint64_t id : interrupted) {
    // Read again through the txn (a guard): the import may have ended since the scan.
    ASSIGN_OR_RETURN(LayerRecord * l, impl->TxnLayer(&txn, id));
    if (l->state == LayerState::kImporting) RETURN_IF_ERROR(impl->KillLayer(&txn, id));
  }
  Status st = impl->Commit(&txn, "store " + impl->options.path + ": recovery");
  // Another client changed a layer meanwhile: the next open recovers what is left.
  return st.code() == StatusCode::kAborted ? Status::Ok() : st;
}

}  // namespace

Result<std::unique_ptr<Store>> Store::Open(const StoreOptions& options) {
  if (options.path.empty()) return Status::InvalidArgument("store path is empty");
  RETURN_IF_ERROR(ValidateBlockSize(options.default_block_size).Annotate("store " + options.path));
  if (options.max_chain_depth < 2) {
    return Status::InvalidArgument("store " + options.path + ": max_chain_depth must be at least 2");
  }
  auto impl = std::make_unique<StoreImpl>();
  impl->options = options;
  ASSIGN_OR_RETURN(impl->backend, OpenBackend(options));
  impl->chunks = std::make_unique<ChunkStore>(impl->backend.get());
  // A read-only view leaves the holder's imports alone: they are running, not dead.
  if (!options.read_only) RETURN_IF_ERROR(DiscardInterruptedImports(impl.get()));
  return std::unique_ptr<Store>(new Store(std::move(impl)));
}

Result<VolumeInfo> Store::CreateVolume(const CreateVolumeRequest& req) {
  StoreImpl& s = *impl_;
  std::lock_guard lock(s.catalog_mu);
  uint32_t bs = req.block_size ? req.block_size : s.options.default_block_size;
  CatalogTxn txn(*s.backend);
  VolumeRecord rec;
  bool existing;
  RETURN_IF_ERROR(s.StageVolume(&txn, req, 0, bs, 0, "", "", &rec, &existing));
  if (!existing) RETURN_IF_ERROR(s.Commit(&txn, "create volume " + req.name));
  return rec.info;
}

Result<VolumeInfo> Store::CreateVolumeFromSnapshot(const CreateVolumeRequest& req,
                                                   const std::string& snapshot_id) {
  StoreImpl& s = *impl_;
  std::lock_guard lock(s.catalog_mu);
  CatalogTxn txn(*s.backend);
  ASSIGN_OR_RETURN(auto snap, s.Load<SnapshotRecord>(snapshot_id, &txn));
  if (!snap) return Status::NotFound("snapshot " + snapshot_id + " not found");
  VolumeRecord rec;
  bool existing;
  RETURN_IF_ERROR(s.StageVolume(&txn, req, snap->layer, snap->info.block_size, snap->info.size_bytes,
                                "snapshot", snapshot_id, &rec, &existing));
  if (!existing) {
    RETURN_IF_ERROR(s.Commit(&txn, "create volume " + req.name + " from snapshot " + snapshot_id));
  }
  return rec.info;
}

Result<VolumeInfo> Store::CreateVolumeFromImage(const CreateVolumeRequest& req,
                                                const std::string& image_digest) {
  StoreImpl& s = *impl_;
  ASSIGN_OR_RETURN(ChunkId digest, ChunkIdFromHex(image_digest));
  std::lock_guard lock(s.catalog_mu);
  CatalogTxn txn(*s.backend);
  ASSIGN_OR_RETURN(auto img, s.Load<format::ImageRecord>(AsBytes(digest), &txn));
  if (!img) return Status::NotFound("image " + image_digest + " not found");
  VolumeRecord rec;
  bool existing;
  RETURN_IF_ERROR(s.StageVolume(&txn, req, img->layer, img->info.block_size, img->info.size_bytes,
                                "image", img->info.digest, &rec, &existing));
  if (!existing) RETURN_IF_ERROR(s.Commit(&txn, "create volume " + req.name + " from image"));
  return rec.info;
}

Result<VolumeInfo> Store::CloneVolume(const CreateVolumeRequest& req, const std::string& volume_id) {
  StoreImpl& s = *impl_;
  {
    // Keep the source's chain short before it grows by one (see FlattenIfDeep).
    std::unique_lock lock(s.catalog_mu);
    ASSIGN_OR_RETURN(auto src, s.Load<VolumeRecord>(volume_id));
    if (!src) return Status::NotFound("source volume " + volume_id + " not found");
    ASSIGN_OR_RETURN(auto existing_id, s.IdOfName<VolumeRecord>(req.name));
    lock.unlock();
    if (!existing_id) {
      ASSIGN_OR_RETURN(auto chain, s.LoadChain(src->head));
      RETURN_IF_ERROR(s.FlattenIfDeep(volume_id, static_cast<uint32_t>(chain.size() + 1)));
    }
  }
  std::lock_guard lock(s.catalog_mu);
  CatalogTxn txn(*s.backend);
  ASSIGN_OR_RETURN(auto src, s.Load<VolumeRecord>(volume_id, &txn));
  if (!src) return Status::NotFound("source volume " + volume_id + " not found");
  VolumeRecord rec;
  bool existing;
  // The idempotency check runs before the source's head is touched.
  uint64_t size;
  ASSIGN_OR_RETURN(auto found, s.FindCompatible(&txn, req, src->info.block_size,
                                                src->info.size_bytes, "volume", volume_id, &size));
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
  CatalogTxn txn(*s.backend);
  ASSIGN_OR_RETURN(auto rec, s.Load<VolumeRecord>(volume_id, &txn));
  if (!rec) return Status::Ok();
  auto st = s.OpenState(volume_id);
  if (st && st->handles.load() > 0) {
    return Status::FailedPrecondition("volume " + volume_id + " (" + rec->info.name +
                                      ") is in use: close or unstage it first");
  }
  s.catalog().Delete(txn.batch.get(), Table::kVolumes, volume_id);
  s.catalog().Delete(txn.batch.get(), Table::kNames, format::VolumeNameKey(rec->info.name));
  RETURN_IF_ERROR(s.UnrefLayer(&txn, rec->head));
  RETURN_IF_ERROR(s.Commit(&txn, "delete volume " + volume_id));
  if (st) {
    std::unique_lock vl(st->mu);
    st->deleted = true;
  }
  return Status::Ok();
}

Result<VolumeInfo> Store::GetVolume(const std::string& volume_id) {
  return impl_->GetInfo<VolumeRecord>(volume_id);
}

Result<VolumeInfo> Store::FindVolumeByName(const std::string& name) {
  return impl_->FindInfoByName<VolumeRecord>(name);
}

Result<std::vector<VolumeInfo>> Store::ListVolumes() { return impl_->ListInfos<VolumeRecord>(); }

Result<VolumeInfo> Store::ResizeVolume(const std::string& volume_id, uint64_t new_size) {
  StoreImpl& s = *impl_;
  std::lock_guard lock(s.catalog_mu);
  CatalogTxn txn(*s.backend);
  ASSIGN_OR_RETURN(auto rec, s.Load<VolumeRecord>(volume_id, &txn));
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
  s.PutVolume(&txn, *rec);
  RETURN_IF_ERROR(s.Commit(&txn, "resize volume " + volume_id));
  if (st) st->rec.info.size_bytes = size;
  return rec->info;
}

namespace {

// The snapshot a repeated CreateSnapshot names: itself when it is of the same volume.
Result<std::optional<SnapshotInfo>> ExistingSnapshot(StoreImpl& s, const std::string& name,
                                                     const std::string& volume_id) {
  ASSIGN_OR_RETURN(auto sid, s.IdOfName<SnapshotRecord>(name));
  if (!sid) return std::optional<SnapshotInfo>();
  ASSIGN_OR_RETURN(auto snap, s.Load<SnapshotRecord>(*sid));
  if (!snap) return Status::Corruption("snapshot name " + name + " points to missing snapshot " + *sid);
  if (snap->info.source_volume_id == volume_id) return std::optional<SnapshotInfo>(snap->info);
  return Status::AlreadyExists("snapshot " + name + " already exists (" + *sid +
                               ") for another volume (" + snap->info.source_volume_id + ")");
}

}  // namespace

Result<SnapshotInfo> Store::CreateSnapshot(const std::string& name, const std::string& volume_id) {
  StoreImpl& s = *impl_;
  if (name.empty()) return Status::InvalidArgument("snapshot name is empty");
  {
    std::unique_lock lock(s.catalog_mu);
    ASSIGN_OR_RETURN(auto existing, ExistingSnapshot(s, name, volume_id));
    if (existing) return *existing;
    ASSIGN_OR_RETURN(auto vol, s.Load<VolumeRecord>(volume_id));
    if (!vol) return Status::NotFound("volume " + volume_id + " not found");
    ASSIGN_OR_RETURN(auto chain, s.LoadChain(vol->head));
    lock.unlock();
    RETURN_IF_ERROR(s.FlattenIfDeep(volume_id, static_cast<uint32_t>(chain.size() + 1)));
  }
  std::lock_guard lock(s.catalog_mu);
  CatalogTxn txn(*s.backend);
  ASSIGN_OR_RETURN(auto sid, s.IdOfName<SnapshotRecord>(name, &txn));
  if (sid) return Status::Aborted("snapshot " + name + " was created concurrently; retry");
  ASSIGN_OR_RETURN(auto vol, s.Load<VolumeRecord>(volume_id, &txn));
  if (!vol) return Status::NotFound("volume " + volume_id + " not found");
  auto st = s.OpenState(volume_id);
  std::unique_lock<std::shared_mutex> vlock;
  if (st) vlock = std::unique_lock(st->mu);
  ASSIGN_OR_RETURN(uint64_t layer, s.FreezeHead(&txn, &*vol));
  if (layer != 0) {
    ASSIGN_OR_RETURN(LayerRecord * l, s.TxnLayer(&txn, layer));
    ++l->refs;
  }
  SnapshotRecord rec;
  ASSIGN_OR_RETURN(rec.info.id, s.NewId("snap-", Table::kSnapshots, &txn));
  rec.info.name = name;
  rec.info.source_volume_id = volume_id;
  rec.info.size_bytes = vol->info.size_bytes;
  rec.info.block_size = vol->info.block_size;
  rec.info.created_unix_ns = NowUnixNs();
  rec.layer = layer;
  s.catalog().Put(txn.batch.get(), Table::kSnapshots, rec.info.id, format::EncodeSnapshot(rec));
  s.catalog().Put(txn.batch.get(), Table::kNames, format::SnapshotNameKey(name), rec.info.id);
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
  CatalogTxn txn(*s.backend);
  ASSIGN_OR_RETURN(auto snap, s.Load<SnapshotRecord>(snapshot_id, &txn));
  if (!snap) return Status::Ok();
  s.catalog().Delete(txn.batch.get(), Table::kSnapshots, snapshot_id);
  s.catalog().Delete(txn.batch.get(), Table::kNames, format::SnapshotNameKey(snap->info.name));
  if (snap->layer != 0) RETURN_IF_ERROR(s.UnrefLayer(&txn, snap->layer));
  return s.Commit(&txn, "delete snapshot " + snapshot_id);
}

Result<SnapshotInfo> Store::GetSnapshot(const std::string& snapshot_id) {
  return impl_->GetInfo<SnapshotRecord>(snapshot_id);
}

Result<SnapshotInfo> Store::FindSnapshotByName(const std::string& name) {
  return impl_->FindInfoByName<SnapshotRecord>(name);
}

Result<std::vector<SnapshotInfo>> Store::ListSnapshots() {
  return impl_->ListInfos<SnapshotRecord>();
}

Result<std::vector<ImageInfo>> Store::ListImages() {
  return impl_->ListInfos<format::ImageRecord>();
}

Status Store::Sync() { return impl_->backend->Sync(); }

}  // namespace stellarium
