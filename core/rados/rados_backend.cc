#include "core/rados/rados_backend.h"

#include <absl/container/flat_hash_set.h>

#include <chrono>
#include <condition_variable>
#include <list>
#include <thread>

#include "core/rados/rados_seams.h"
#include "core/thread_name.h"

namespace stellarium {
namespace {

const std::string kCatalog(format::rados::kCatalogObject);
// Without a cache directory chunks are cached in memory, this much at most (enough for
// the read-ahead of a sequential reader, and a working set).
constexpr uint64_t kMemoryCacheBytes = 256u << 20;

int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// The sets and removals of `changes` as one write op (plus what `op` already holds).
void AddChanges(const OmapChanges& changes, librados::ObjectWriteOperation* op) {
  std::map<std::string, librados::bufferlist> set;
  std::set<std::string> rm;
  for (const auto& [k, v] : changes) {
    if (v) set[k] = Bl(*v);
    else rm.insert(k);
  }
  if (!set.empty()) op->omap_set(set);
  if (!rm.empty()) op->omap_rm_keys(rm);
}

}  // namespace

class RadosBackend final : public Backend {
 public:
  RadosBackend(std::unique_ptr<RadosIo> io, std::unique_ptr<ChunkCache> cache,
               const RadosBackendOptions& o)
      : io_(std::move(io)),
        options_(o),
        bytes_(io_.get(), std::move(cache), 64u << 20, o.writer_window_ns / 4),
        index_(io_.get()),
        catalog_(io_.get(), o.map_cache_bytes),
        client_("client." + std::to_string(io_->instance_id())) {}
  // Takes this client's lease (before anything it writes can name it as an owner), then
  // renews it in the background.
  Status Start() {
    RETURN_IF_ERROR(WriteLease());
    lease_thread_ = std::thread([this] {
      NameThisThread("stl-lease");
      RenewLeases();
    });
    return Status::Ok();
  }
  ~RadosBackend() override {
    {
      std::lock_guard l(lease_mu_);
      stop_ = true;
    }
    lease_cv_.notify_all();
    if (lease_thread_.joinable()) lease_thread_.join();
    (void)io_->Remove(format::rados::ClientObject(client_), "lease");
  }

  ChunkBytes& bytes() override { return bytes_; }
  ChunkIndex& index() override { return index_; }
  Catalog& catalog() override { return catalog_; }

  std::unique_ptr<Batch> NewBatch() override { return std::make_unique<RadosBatch>(); }
  Status Commit(Batch* batch, Durability, const std::string& what) override {
    RadosChanges& c = ChangesOf(batch);
    Status st = Apply(c, /*whole_packs=*/false, what);
    c.Clear();
    return st;
  }
  std::unique_ptr<BulkBatch> NewBulkBatch(const std::string& what) override {
    return std::make_unique<RadosBulkBatch>(this, what);
  }
  Status Sync() override { return Status::Ok(); }  // every commit is durable when it returns
  Status WaitIdle() override { return Status::Ok(); }
  // RADOS frees deleted objects' space itself; the size is measured afresh next time.
  void ReclaimSpace(bool) override {
    std::lock_guard l(disk_mu_);
    disk_at_ = {};
  }
  Result<BackendEstimate> Estimate() override { return BackendEstimate{}; }
  uint64_t DiskBytes() override;

  // A bulk batch holds its entries in memory until ingested: 64 Ki map entries at a time
  // keep an import's memory small.
  uint64_t preferred_index_period_blocks() const override { return 64u << 10; }
  // A data period is one pack: 8 MiB of chunks, a few MiB once compressed.
  uint64_t preferred_data_period_bytes() const override { return 8u << 20; }
  std::string client_id() const override { return client_; }
  Result<bool> IsClientGone(const std::string& owner) override;
  Result<UnreferencedSweep> SweepUnreferenced(const std::function<bool(const ChunkId&)>& referenced,
                                              int64_t mark_start_unix_ns) override;

  // Applies `c` in the order described in rados_backend.h.
  Status Apply(const RadosChanges& c, bool whole_packs, const std::string& what);

 private:
  Status ApplyByObject(const std::map<std::string, OmapChanges>& objects, const std::string& what);
  Status ApplyIndex(const RadosChanges& c, const std::string& what);
  Status ApplyCatalog(const RadosChanges& c, const std::string& what);
  Status SweepShard(uint8_t shard, const std::function<bool(const ChunkId&)>& referenced,
                    int64_t mark_start, UnreferencedSweep* out, absl::flat_hash_set<uint64_t>* live);
  Status SweepPacks(const absl::flat_hash_set<uint64_t>& live, int64_t mark_start,
                    UnreferencedSweep* out);
  Status SweepOrphanMaps();
  // One collector at a time (docs/FORMAT.md): the exclusive lock "gc" on
  // stellarium.gc, this client's id as its cookie. A holder whose lease ran out is
  // broken; a live one makes this ABORTED, naming it.
  Status LockCollector();
  void UnlockCollector();
  Status WriteLease();
  void RenewLeases();

  std::unique_ptr<RadosIo> io_;
  const RadosBackendOptions options_;
  RadosChunkBytes bytes_;
  RadosChunkIndex index_;
  RadosCatalog catalog_;
  const std::string client_;
  std::mutex lease_mu_;
  std::condition_variable lease_cv_;
  bool stop_ = false;  // GUARDED_BY(lease_mu_)
  std::thread lease_thread_;
  std::mutex disk_mu_;
  uint64_t disk_bytes_ = 0;                                 // GUARDED_BY(disk_mu_)
  std::chrono::steady_clock::time_point disk_at_{};         // GUARDED_BY(disk_mu_)
};

Status RadosBulkBatch::IngestWith(BulkBatch* other) {
  // Both batches' bytes first, then both batches' index entries and maps.
  RadosChanges merged = std::move(changes);
  if (other != nullptr) {
    RadosChanges& o = ChangesOf(other);
    merged.bytes.merge(o.bytes);
    for (auto& [shard, ch] : o.index) merged.index[shard].merge(ch);
    for (auto& [shard, ids] : o.named) merged.named[shard].merge(ids);
    for (auto& [oid, ch] : o.maps) merged.maps[oid].merge(ch);
    for (auto& [oid, rec] : o.map_appends) merged.map_appends[oid] += rec;
    o.Clear();
  }
  changes.Clear();
  return backend->Apply(merged, /*whole_packs=*/true, what);
}

Status RadosBackend::Apply(const RadosChanges& c, bool whole_packs, const std::string& what) {
  if (!c.bytes.empty()) RETURN_IF_ERROR(bytes_.WritePacks(c.bytes, whole_packs, what));
  const auto checked = std::chrono::steady_clock::now();
  RETURN_IF_ERROR(ApplyIndex(c, what));
  // The index op found the stored chunks this batch names uncondemned: gc deletes none
  // of them before a writer window from then. The maps must land before that.
  if (std::chrono::steady_clock::now() - checked > std::chrono::nanoseconds(options_.writer_window_ns / 2)) {
    return Status::Aborted(what + ": took longer than half the writer window between checking the " +
                           "chunks it names and naming them; nothing names them yet, try again");
  }
  if (!c.catalog.empty() || !c.guards.empty()) RETURN_IF_ERROR(ApplyCatalog(c, what));
  RETURN_IF_ERROR(ApplyByObject(RadosCatalog::DirectoryChanges(c), what + ": map directory"));
  RETURN_IF_ERROR(ApplyByObject(c.maps, what + ": block map"));
  AioBatch appends(io_.get());
  for (const auto& [oid, records] : c.map_appends) {
    auto op = std::make_unique<librados::ObjectWriteOperation>();
    op->append(Bl(records));
    appends.Write(oid, std::move(op), what + ": block map (" + oid + ")");
  }
  RETURN_IF_ERROR(appends.Wait());
  catalog_.Forget(c.map_appends);
  catalog_.Applied(c.maps);
  return Status::Ok();
}

Status RadosBackend::ApplyByObject(const std::map<std::string, OmapChanges>& objects,
                                   const std::string& what) {
  AioBatch aio(io_.get());
  for (const auto& [oid, changes] : objects) {
    auto op = std::make_unique<librados::ObjectWriteOperation>();
    op->create(false);
    AddChanges(changes, op.get());
    aio.Write(oid, std::move(op), what + " (" + oid + ")");
  }
  return aio.Wait();
}

// Index entries by shard; with each shard's op, the checks that the stored chunks the
// batch names are still stored (L greater than "") and not condemned (C absent, i.e. "").
Status RadosBackend::ApplyIndex(const RadosChanges& c, const std::string& what) {
  std::set<uint8_t> shards;
  for (const auto& [shard, ch] : c.index) shards.insert(shard);
  for (const auto& [shard, ids] : c.named) shards.insert(shard);
  AioBatch aio(io_.get());
  for (uint8_t shard : shards) {
    auto op = std::make_unique<librados::ObjectWriteOperation>();
    op->create(false);
    const auto staged = c.index.find(shard);
    const auto named = c.named.find(shard);
    if (named != c.named.end()) {
      std::map<std::string, std::pair<librados::bufferlist, int>> guards;
      for (const ChunkId& id : named->second) {
        const std::string lkey = format::rados::IndexLocationKey(id);
        // Stored anew by this very batch: its entry is set here, nothing to check.
        if (staged != c.index.end() && staged->second.count(lkey)) continue;
        // (omap_cmp knows EQ, LT and GT only, as "stored OP given": GT "" is "present")
        guards[lkey] = {Bl(""), LIBRADOS_CMPXATTR_OP_GT};
        guards[format::rados::IndexCondemnedKey(id)] = {Bl(""), LIBRADOS_CMPXATTR_OP_EQ};
      }
      if (!guards.empty()) op->omap_cmp(guards, nullptr);
    }
    if (staged != c.index.end()) AddChanges(staged->second, op.get());
    aio.Write(format::rados::IndexObject(shard), std::move(op),
              what + ": chunk index (" + format::rados::IndexObject(shard) + ")");
  }
  Status st = aio.Wait();
  // A check fails (ABORTED), or finds no shard object at all (NOT_FOUND: no chunk there).
  if (st.code() == StatusCode::kAborted || (st.code() == StatusCode::kNotFound && !c.named.empty())) {
    return Status::Aborted(what + ": a chunk it names was condemned or deleted by gc meanwhile; try again");
  }
  return st;
}

// Guards: omap_cmp EQ the expected value; an absent key compares as "", which no record
// is, so "absent" is EQ "". Guards see the object as it was before the op.
Status RadosBackend::ApplyCatalog(const RadosChanges& c, const std::string& what) {
  librados::ObjectWriteOperation op;
  std::map<std::string, std::pair<librados::bufferlist, int>> guards;
  for (const auto& [k, v] : c.guards) guards[k] = {Bl(v ? *v : ""), LIBRADOS_CMPXATTR_OP_EQ};
  int cmp = 0;
  if (!guards.empty()) op.omap_cmp(guards, &cmp);
  AddChanges(c.catalog, &op);
  return io_->Operate(kCatalog, &op, what);
}

uint64_t RadosBackend::DiskBytes() {
  std::lock_guard l(disk_mu_);
  const auto now = std::chrono::steady_clock::now();
  if (now - disk_at_ < std::chrono::seconds(30)) return disk_bytes_;
  uint64_t total = 0;
  (void)io_->List(std::string(format::rados::kPackObjectPrefix), [&](const std::string& oid) {
    uint64_t size = 0;
    time_t mtime;
    if (io_->io().stat(oid, &size, &mtime) == 0) total += size;
    return Status::Ok();
  });
  disk_bytes_ = total;
  disk_at_ = now;
  return total;
}

Status RadosBackend::WriteLease() {
  librados::ObjectWriteOperation op;
  op.create(false);
  op.omap_set({{"expires", Bl(format::rados::EncodeI64(NowNs() + options_.lease_ns))}});
  return io_->Operate(format::rados::ClientObject(client_), &op, "lease of " + client_);
}

void RadosBackend::RenewLeases() {
  std::unique_lock l(lease_mu_);
  for (;;) {
    lease_cv_.wait_for(l, std::chrono::nanoseconds(options_.lease_ns / 4), [&] { return stop_; });
    if (stop_) return;
    l.unlock();
    (void)WriteLease();  // a failure is retried a quarter lease later
    l.lock();
  }
}

Result<bool> RadosBackend::IsClientGone(const std::string& owner) {
  if (owner.empty()) return true;
  if (owner == client_) return false;
  const std::string oid = format::rados::ClientObject(owner);
  ASSIGN_OR_RETURN(auto vals, io_->OmapGet(oid, {"expires"}, "lease of " + owner));
  auto it = vals.find("expires");
  return it == vals.end() || format::rados::DecodeI64(it->second) < NowNs();
}

// One shard: a referenced chunk loses its condemnation; an unreferenced one is
// condemned, or, condemned long enough before this mark began, deleted. One guarded op
// for the shard; when a writer changed a key meanwhile, the shard is done again.
Status RadosBackend::SweepShard(uint8_t shard, const std::function<bool(const ChunkId&)>& referenced,
                                int64_t mark_start, UnreferencedSweep* out,
                                absl::flat_hash_set<uint64_t>* live) {
  const std::string oid = format::rados::IndexObject(shard);
  for (int attempt = 0; attempt < 5; ++attempt) {
    UnreferencedSweep s;
    std::vector<uint64_t> kept;
    std::map<std::string, std::pair<librados::bufferlist, int>> guards;
    OmapChanges changes;
    const std::string now = format::rados::EncodeI64(NowNs());
    RETURN_IF_ERROR(index_.ScanShard(shard, [&](const ChunkId& id, const RadosChunkIndex::Raw& raw) {
      const std::string lkey = format::rados::IndexLocationKey(id);
      const std::string ckey = format::rados::IndexCondemnedKey(id);
      const uint64_t loc = format::DecodeU64(raw.location);
      if (referenced(id)) {
        kept.push_back(loc);
        if (!raw.condemned.empty()) {
          guards[ckey] = {Bl(raw.condemned), LIBRADOS_CMPXATTR_OP_EQ};
          changes[ckey] = std::nullopt;
          ++s.spared;
        }
        return Status::Ok();
      }
      guards[lkey] = {Bl(raw.location), LIBRADOS_CMPXATTR_OP_EQ};
      guards[ckey] = {Bl(raw.condemned), LIBRADOS_CMPXATTR_OP_EQ};
      if (raw.condemned.empty()) {
        changes[ckey] = now;
        ++s.condemned;
        kept.push_back(loc);
      } else if (format::rados::DecodeI64(raw.condemned) + options_.writer_window_ns <= mark_start) {
        changes[lkey] = std::nullopt;
        changes[ckey] = std::nullopt;
        ++s.chunks_deleted;
      } else {
        kept.push_back(loc);
      }
      return Status::Ok();
    }));
    Status st;
    if (!changes.empty()) {
      librados::ObjectWriteOperation op;
      int cmp = 0;
      op.omap_cmp(guards, &cmp);
      AddChanges(changes, &op);
      st = io_->Operate(oid, &op, "gc: chunk index shard " + std::to_string(shard));
    }
    if (st.code() == StatusCode::kAborted) continue;  // a writer was here: again
    RETURN_IF_ERROR(st);
    out->condemned += s.condemned;
    out->spared += s.spared;
    out->chunks_deleted += s.chunks_deleted;
    for (uint64_t loc : kept) live->insert(format::rados::PackOf(loc));
    return Status::Ok();
  }
  return Status::Aborted("gc: chunk index shard " + std::to_string(shard) +
                         " kept changing; it is swept again at the next pass");
}

// Packs no index entry names any more, last written before the mark began by more than
// a writer's window (so no writer is about to name chunks in them), are deleted whole.
Status RadosBackend::SweepPacks(const absl::flat_hash_set<uint64_t>& live, int64_t mark_start,
                                UnreferencedSweep* out) {
  std::vector<std::pair<std::string, std::string>> dead;  // oid, its "written" stamp
  RETURN_IF_ERROR(io_->List(std::string(format::rados::kPackObjectPrefix), [&](const std::string& oid) {
    uint64_t pack;
    if (!format::rados::DecodePackObject(oid, &pack) || live.count(pack)) return Status::Ok();
    auto written = io_->GetXattr(oid, format::rados::kPackWrittenXattr, "gc: " + oid);
    if (!written.ok()) return Status::Ok();  // being written: not yet
    if (format::rados::DecodeI64(*written) + options_.writer_window_ns > mark_start) return Status::Ok();
    dead.emplace_back(oid, std::move(written).value());
    return Status::Ok();
  }));
  for (const auto& [oid, written] : dead) {
    uint64_t size = 0;
    time_t mtime;
    if (io_->io().stat(oid, &size, &mtime) != 0) continue;
    // Only as last written when looked at: an append since keeps it (and its writer's
    // append fails if it comes after this).
    librados::ObjectWriteOperation op;
    op.cmpxattr(format::rados::kPackWrittenXattr, LIBRADOS_CMPXATTR_OP_EQ, Bl(written));
    op.remove();
    Status st = io_->Operate(oid, &op, "gc: " + oid);
    if (st.code() == StatusCode::kAborted || st.code() == StatusCode::kNotFound) continue;
    RETURN_IF_ERROR(st);
    out->bytes_freed += size;
    ++out->packs_deleted;
  }
  return Status::Ok();
}

// Map objects of layers the catalog no longer has (gc dropped their entries and the
// layer record) are removed. The objects are listed before the layers are read: a
// layer's record is committed before its first map object and layer ids are never
// reused, so an object listed first whose layer the later read lacks is an orphan for
// good (listed the other way round, a layer made in between would lose its maps).
Status RadosBackend::SweepOrphanMaps() {
  std::vector<std::pair<uint64_t, std::string>> candidates;  // layer, object
  RETURN_IF_ERROR(io_->List("stellarium.map", [&](const std::string& oid) {
    uint64_t layer, shard;
    if (format::rados::DecodeMapObject(oid, &layer, &shard) ||
        format::rados::DecodeMapDirectoryObject(oid, &layer)) {
      candidates.emplace_back(layer, oid);
    }
    return Status::Ok();
  }));
  absl::flat_hash_set<uint64_t> layers;
  RETURN_IF_ERROR(catalog_.Scan(Table::kLayers, [&](std::string_view key, std::string_view) {
    layers.insert(format::DecodeLayerKey(key));
    return Status::Ok();
  }));
  for (const auto& [layer, oid] : candidates) {
    if (!layers.count(layer)) RETURN_IF_ERROR(io_->Remove(oid, "gc: " + oid));
  }
  return Status::Ok();
}

Status RadosBackend::LockCollector() {
  const std::string oid(format::rados::kGcLockObject);
  for (int attempt = 0; attempt < 3; ++attempt) {
    int rc = io_->io().lock_exclusive(oid, "gc", client_, "stellarium gc", nullptr, 0);
    if (rc == 0) return Status::Ok();
    if (rc != -EBUSY && rc != -EEXIST) return Status::FromErrno(-rc, "gc: lock " + oid);
    int exclusive = 0;
    std::string tag;
    std::list<librados::locker_t> lockers;
    rc = io_->io().list_lockers(oid, "gc", &exclusive, &tag, &lockers);
    if (rc < 0) return Status::FromErrno(-rc, "gc: holders of " + oid);
    for (const librados::locker_t& l : lockers) {
      ASSIGN_OR_RETURN(bool gone, IsClientGone(l.cookie));
      if (!gone) {
        return Status::Aborted("gc: " + l.cookie + " (at " + l.address +
                               ") is collecting this pool; run gc again once it is done");
      }
      rc = io_->io().break_lock(oid, "gc", l.client, l.cookie);  // its lease ran out
      if (rc < 0 && rc != -ENOENT) return Status::FromErrno(-rc, "gc: break the lock of " + l.cookie);
    }
  }
  return Status::Aborted("gc: the collector lock " + oid + " kept changing hands; try again");
}

void RadosBackend::UnlockCollector() {
  (void)io_->io().unlock(std::string(format::rados::kGcLockObject), "gc", client_);
}

Result<UnreferencedSweep> RadosBackend::SweepUnreferenced(
    const std::function<bool(const ChunkId&)>& referenced, int64_t mark_start) {
  RETURN_IF_ERROR(LockCollector());
  struct Unlock {
    RadosBackend* b;
    ~Unlock() { b->UnlockCollector(); }
  } unlock{this};
  UnreferencedSweep out;
  absl::flat_hash_set<uint64_t> live;  // packs an index entry names
  for (int shard = 0; shard < format::rados::kIndexShards; ++shard) {
    RETURN_IF_ERROR(SweepShard(static_cast<uint8_t>(shard), referenced, mark_start, &out, &live));
  }
  RETURN_IF_ERROR(SweepPacks(live, mark_start, &out));
  RETURN_IF_ERROR(SweepOrphanMaps());
  return out;
}

Result<std::unique_ptr<Backend>> OpenRadosBackend(const RadosBackendOptions& o) {
  ASSIGN_OR_RETURN(std::unique_ptr<RadosIo> io, RadosIo::Connect(o.connect));
  // The catalog object exists before anyone guards a key of it.
  librados::ObjectWriteOperation create;
  create.create(false);
  RETURN_IF_ERROR(io->Operate(kCatalog, &create, "rados://" + o.connect.pool + ": catalog"));
  std::unique_ptr<ChunkCache> cache;
  // One directory per store under the cache directory: locators are numbers every store
  // hands out, so two stores must never share cached chunks.
  const std::string dir = o.cache_dir.empty() ? "" : o.cache_dir + "/" + io->StoreIdentity();
  auto opened = ChunkCache::Open(
      dir, o.cache_dir.empty() ? std::min(o.cache_bytes, kMemoryCacheBytes) : o.cache_bytes);
  if (opened.status().code() == StatusCode::kFailedPrecondition) {
    // Another process (the node's driver, a second command) has the directory: this one
    // caches in memory for itself.
    opened = ChunkCache::Open("", std::min(o.cache_bytes, kMemoryCacheBytes));
  }
  ASSIGN_OR_RETURN(cache, std::move(opened));
  auto backend = std::make_unique<RadosBackend>(std::move(io), std::move(cache), o);
  RETURN_IF_ERROR(backend->Start());
  return std::unique_ptr<Backend>(std::move(backend));
}

}  // namespace stellarium
