// Private to core: the state behind Store. See store.h for the contract and
// docs/FORMAT.md for the data model. Store is written against a backend's seams
// (core/backend/backend.h), never against RocksDB.
//
// Locking (acquire in this order, never the reverse):
//   1. catalog_mu            - serializes this process's catalog changes (all O(1)
//                              metadata batches)
//   2. VolumeState::mu       - per open volume: shared for reads, exclusive for writes
//                              and for catalog changes of that volume (head swaps)
//   3. ChunkStore::sweep_lock - shared by anything that stages a chunk reference
// Every catalog change is also guarded (Catalog::Expect) by the records it read, so it
// is refused (ABORTED) rather than applied over a concurrent change the mutex does not
// see (another process on a shared backend).
#pragma once

#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <string>
#include <vector>

#include "core/backend/backend.h"
#include "core/chunk_store.h"
#include "core/format.h"
#include "core/helper_pool.h"
#include "core/store.h"

namespace stellarium {

// The live state of a volume that is open for I/O (or being flattened).
struct VolumeState {
  std::shared_mutex mu;
  format::VolumeRecord rec;          // GUARDED_BY(mu)
  std::vector<uint64_t> chain;       // GUARDED_BY(mu); head first
  bool deleted = false;              // GUARDED_BY(mu)
  std::atomic<int> handles{0};
};

// A catalog change being assembled: a batch, and the layer records it modifies
// (read-your-writes for layers touched more than once, e.g. cascading unrefs). Records
// read through it become the batch's guards.
struct CatalogTxn {
  explicit CatalogTxn(Backend& backend) : batch(backend.NewBatch()) {}
  std::unique_ptr<Batch> batch;
  std::map<uint64_t, format::LayerRecord> layers;
};

// How each kind of record is kept in the catalog: table, name index, decoder.
template <typename Record>
struct RecordKind;
template <>
struct RecordKind<format::VolumeRecord> {
  using Info = VolumeInfo;
  static constexpr Table kTable = Table::kVolumes;
  static constexpr const char* kWhat = "volume";
  static std::string NameKey(std::string_view name) { return format::VolumeNameKey(name); }
  static Result<format::VolumeRecord> Decode(std::string_view key, std::string_view v) {
    return format::DecodeVolume(key, v);
  }
};
template <>
struct RecordKind<format::SnapshotRecord> {
  using Info = SnapshotInfo;
  static constexpr Table kTable = Table::kSnapshots;
  static constexpr const char* kWhat = "snapshot";
  static std::string NameKey(std::string_view name) { return format::SnapshotNameKey(name); }
  static Result<format::SnapshotRecord> Decode(std::string_view key, std::string_view v) {
    return format::DecodeSnapshot(key, v);
  }
};
template <>
struct RecordKind<format::ImageRecord> {
  using Info = ImageInfo;
  static constexpr Table kTable = Table::kImages;
  static constexpr const char* kWhat = "image";
  static Result<format::ImageRecord> Decode(std::string_view key, std::string_view v) {
    return format::DecodeImage(key, v);
  }
};

class StoreImpl {
 public:
  StoreOptions options;
  std::unique_ptr<Backend> backend;
  std::unique_ptr<ChunkStore> chunks;
  HelperPool read_helpers{2, "stl-read-helper"};  // the second halves of large volume reads

  std::mutex catalog_mu;
  std::map<std::string, std::weak_ptr<VolumeState>> open_volumes;  // GUARDED_BY(catalog_mu)

  // What the next gc pass has to look at (Store::HasGarbage).
  std::mutex gc_mu;                          // one pass at a time
  std::atomic<bool> layers_died{true};       // a layer may have become dead
  std::atomic<bool> full_gc_needed{true};    // only a full pass can tell (first pass too)

  Catalog& catalog() { return backend->catalog(); }

  // ---- records ----
  // A record by key, or nullopt. With a txn, the read becomes one of its guards.
  Result<std::optional<std::string>> Read(Table table, std::string_view key,
                                          CatalogTxn* txn = nullptr);
  template <typename Record>
  Result<std::optional<Record>> Load(std::string_view key, CatalogTxn* txn = nullptr) {
    ASSIGN_OR_RETURN(auto v, Read(RecordKind<Record>::kTable, key, txn));
    if (!v) return std::optional<Record>();
    ASSIGN_OR_RETURN(Record rec, RecordKind<Record>::Decode(key, *v));
    return std::optional<Record>(std::move(rec));
  }
  // The record's info; NOT_FOUND naming it when absent.
  template <typename Record>
  Result<typename RecordKind<Record>::Info> GetInfo(const std::string& id) {
    ASSIGN_OR_RETURN(auto rec, Load<Record>(id));
    if (!rec) return Status::NotFound(std::string(RecordKind<Record>::kWhat) + " " + id + " not found");
    return rec->info;
  }
  // The id a name stands for, or nullopt.
  template <typename Record>
  Result<std::optional<std::string>> IdOfName(std::string_view name, CatalogTxn* txn = nullptr) {
    return Read(Table::kNames, RecordKind<Record>::NameKey(name), txn);
  }
  template <typename Record>
  Result<typename RecordKind<Record>::Info> FindInfoByName(const std::string& name) {
    ASSIGN_OR_RETURN(auto id, IdOfName<Record>(name));
    if (!id) {
      return Status::NotFound(std::string(RecordKind<Record>::kWhat) + " named " + name +
                              " not found");
    }
    return GetInfo<Record>(*id);
  }
  // Every record's info, in key order.
  template <typename Record>
  Result<std::vector<typename RecordKind<Record>::Info>> ListInfos() {
    std::vector<typename RecordKind<Record>::Info> out;
    RETURN_IF_ERROR(catalog().Scan(RecordKind<Record>::kTable,
                                   [&](std::string_view key, std::string_view v) -> Status {
                                     ASSIGN_OR_RETURN(Record rec, RecordKind<Record>::Decode(key, v));
                                     out.push_back(std::move(rec.info));
                                     return Status::Ok();
                                   }));
    return out;
  }

  // ---- catalog helpers; REQUIRES: catalog_mu held ----
  Result<format::LayerRecord*> TxnLayer(CatalogTxn* txn, uint64_t id);
  uint64_t NewLayer(CatalogTxn* txn, uint64_t parent, format::LayerState state,
                    uint32_t block_size, uint64_t refs);
  // Drops one reference; a layer left with none becomes dead, and so on up the chain.
  Status UnrefLayer(CatalogTxn* txn, uint64_t id);
  // Marks a layer nothing refers to (an abandoned import) dead and drops its parent
  // reference.
  Status KillLayer(CatalogTxn* txn, uint64_t id);
  Status Commit(CatalogTxn* txn, const std::string& what);
  std::shared_ptr<VolumeState> OpenState(const std::string& id);  // nullptr if not open
  // A fresh id "<prefix><16 hex digits>", free in `table` (guarded in txn).
  Result<std::string> NewId(const char* prefix, Table table, CatalogTxn* txn);
  void PutVolume(CatalogTxn* txn, const format::VolumeRecord& rec);

  // The idempotency check by name: the existing record when the name exists with the
  // same parameters, ALREADY_EXISTS with others, nullopt when the name is free. Also
  // validates and rounds the size (*size_out).
  Result<std::optional<format::VolumeRecord>> FindCompatible(
      CatalogTxn* txn, const CreateVolumeRequest& req, uint32_t block_size, uint64_t min_size,
      const std::string& source_kind, const std::string& source_id, uint64_t* size_out);
  // Shared by every way of creating a volume: idempotency check by name, size rules,
  // a new empty head over `base` (0 = blank). Stages into txn; *existing is set when
  // the name already exists with the same parameters (nothing staged then).
  Status StageVolume(CatalogTxn* txn, const CreateVolumeRequest& req, uint64_t base,
                     uint32_t block_size, uint64_t min_size, const std::string& source_kind,
                     const std::string& source_id, format::VolumeRecord* out, bool* existing);
  // Freezes the volume's head so it can be shared (snapshot, clone). Returns the layer
  // that holds the volume's current contents (0 for a volume that never had data) and
  // stages the volume's new head (vol->head is updated).
  Result<uint64_t> FreezeHead(CatalogTxn* txn, format::VolumeRecord* vol);

  // ---- layers and maps (no lock needed) ----
  Result<format::LayerRecord> LoadLayer(uint64_t id);
  Result<std::vector<uint64_t>> LoadChain(uint64_t head);
  Result<bool> LayerIsEmpty(uint64_t id);
  // Calls fn for every block in [b0, b1) that some layer of `chain` maps, with the
  // topmost layer's value, in block order.
  Status ResolveRange(const std::vector<uint64_t>& chain, uint64_t b0, uint64_t b1,
                      const std::function<Status(uint64_t, std::string_view)>& fn);

  Status FlattenVolume(const std::string& id);
  Status FlattenIfDeep(const std::string& id, uint32_t depth_after_next);
  Result<std::shared_ptr<VolumeState>> AcquireState(const std::string& id);
  void ReleaseState(const std::shared_ptr<VolumeState>& st);
};

std::shared_ptr<Volume> MakeVolumeHandle(StoreImpl* impl, std::shared_ptr<VolumeState> state,
                                         bool read_only);

int64_t NowUnixNs();

}  // namespace stellarium
