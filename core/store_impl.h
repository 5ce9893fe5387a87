// Private to core: the state behind Store. See store.h for the contract and
// docs/FORMAT.md for the data model.
//
// Locking (acquire in this order, never the reverse):
//   1. catalog_mu_            - serializes catalog changes (all O(1) metadata batches)
//   2. VolumeState::mu        - per open volume: shared for reads, exclusive for writes
//                               and for catalog changes of that volume (head swaps)
//   3. ChunkStore::sweep_lock - shared by anything that stages a chunk reference
#pragma once

#include <rocksdb/write_batch.h>

#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <vector>

#include "core/chunk_store.h"
#include "core/db.h"
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

// A catalog change being assembled: a batch plus the layer records it modifies
// (read-your-writes for layers touched more than once, e.g. cascading unrefs).
struct CatalogTxn {
  Txn batch;
  std::map<uint64_t, format::LayerRecord> layers;
};

// One block's value as resolved through a chain: a chunk id or a zero marker.
struct Resolved {
  uint64_t block;
  std::string value;  // 32-byte id, or empty for an explicit zero
};

class StoreImpl {
 public:
  StoreOptions options;
  std::unique_ptr<Db> db;
  std::unique_ptr<ChunkStore> chunks;
  HelperPool read_helpers{2, "stl-read-helper"};  // the second halves of large volume reads

  std::mutex catalog_mu;
  uint64_t next_layer = 1;                                           // GUARDED_BY(catalog_mu)
  std::map<std::string, std::weak_ptr<VolumeState>> open_volumes;    // GUARDED_BY(catalog_mu)

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
  Result<std::optional<format::VolumeRecord>> LoadVolume(const std::string& id);
  Result<std::optional<format::SnapshotRecord>> LoadSnapshot(const std::string& id);
  std::shared_ptr<VolumeState> OpenState(const std::string& id);  // nullptr if not open
  std::string NewId(const char* prefix, Cf cf);

  // The idempotency check by name: the existing record when the name exists with the
  // same parameters, ALREADY_EXISTS with others, nullopt when the name is free. Also
  // validates and rounds the size (*size_out).
  Result<std::optional<format::VolumeRecord>> FindCompatible(
      const CreateVolumeRequest& req, uint32_t block_size, uint64_t min_size,
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
