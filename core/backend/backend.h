// Backend: what a store's storage engine provides underneath Store. Store (catalog
// logic, volume I/O, import, gc, fsck) is written against three seams and the batches
// that change them; a backend implements all of them:
//
//   - ChunkBytes (chunk_bytes.h): the bytes of chunks, each under a locator the
//     backend hands out.
//   - ChunkIndex (chunk_index.h): chunk id (SHA-256) -> locator and reference count.
//   - Catalog (catalog.h): the catalog's records (volumes, snapshots, images, names,
//     layers) and every layer's block map (block index -> map value).
//
// Changes to all three are staged in a Batch and applied by Commit, atomically: after a
// crash at any instant either every change of a committed batch is there or none is.
// That is how a map entry and the reference count it holds never disagree. An import's
// bulk data goes through a BulkBatch instead (entries in key order, no per-entry log),
// applied by Ingest with the same all-or-nothing rule.
//
// Implementations: the local store (core/local/: RocksDB in a directory, on-disk format
// in docs/FORMAT.md). The contract below is what Store relies on; a backend that spreads
// the three seams over several machines keeps it with its own means (guarded updates,
// intent records completed by recovery).
//
// Durability: Commit(kSync) returns once the batch is durable. Commit(kNoSync) makes the
// batch visible at once and durable at the next Sync() (or a later kSync commit).
// Ingest returns once the bulk batch is durable and visible.
//
// Thread-safety: a Backend and its seams are safe to use from many threads; a Batch or a
// BulkBatch is used by one thread at a time.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "core/backend/catalog.h"
#include "core/backend/chunk_bytes.h"
#include "core/backend/chunk_index.h"
#include "core/status.h"

namespace stellarium {

enum class Durability { kSync, kNoSync };

// A set of changes applied all at once by Backend::Commit. Staged through the seams'
// methods that take a Batch* (Catalog::Put, ChunkIndex::AddRefs, ChunkBytes::Put, ...);
// each backend's seams accept only that backend's batches.
class Batch {
 public:
  virtual ~Batch() = default;
  // Changes staged so far (guards not counted).
  virtual size_t Count() const = 0;
};

// Bulk data of an import: chunk bytes, index records and map entries, each kind staged
// in strictly increasing key order (locator; chunk id; layer and block). Nothing is
// visible until Ingest, which applies everything at once. A batch may be filled and
// ingested many times; destroying it drops what was not ingested.
class BulkBatch {
 public:
  virtual ~BulkBatch() = default;
  // Applies what is staged, together with `other`'s staged entries (may be null) in the
  // same all-or-nothing step; both batches are empty afterwards. REQUIRES: where both
  // hold entries of one kind, their key ranges do not overlap.
  virtual Status IngestWith(BulkBatch* other) = 0;
  Status Ingest() { return IngestWith(nullptr); }
};

// What a mark-and-sweep collection did (Backend::SweepUnreferenced).
struct UnreferencedSweep {
  uint64_t condemned = 0;       // unreferenced chunks marked for deletion
  uint64_t chunks_deleted = 0;  // chunks condemned long enough ago, deleted
  uint64_t spared = 0;          // condemned chunks referenced again
  uint64_t packs_deleted = 0;   // stored-bytes objects nothing names any more
  uint64_t bytes_freed = 0;
};

// Estimates that cost constant time (for metrics scraped every few seconds).
struct BackendEstimate {
  uint64_t chunks = 0;       // index records
  uint64_t chunk_bytes = 0;  // stored chunk bytes, uncompressed (unreferenced copies too)
  uint64_t map_entries = 0;  // block map entries, zero markers included
};

class Backend {
 public:
  virtual ~Backend() = default;

  virtual ChunkBytes& bytes() = 0;
  virtual ChunkIndex& index() = 0;
  virtual Catalog& catalog() = 0;

  virtual std::unique_ptr<Batch> NewBatch() = 0;
  // Applies the batch (see the durability rules above); the batch is empty afterwards.
  // ABORTED, with nothing applied, when a guard staged with Catalog::Expect does not
  // hold. `what` names the change in errors ("delete volume vol-1").
  virtual Status Commit(Batch* batch, Durability durability, const std::string& what) = 0;
  // `what` names the import in errors.
  virtual std::unique_ptr<BulkBatch> NewBulkBatch(const std::string& what) = 0;
  // Makes every change committed with kNoSync durable.
  virtual Status Sync() = 0;

  // ---- housekeeping ----
  // Waits until background work (flushes, compactions) is done: for benchmarks that
  // measure a settled store.
  virtual Status WaitIdle() = 0;
  // Gives back the space of what gc deleted since the last call (compaction of deleted
  // entries); may take a while. `everything`: of everything deleted ever (after a full
  // pass), else only where deletes were seen since the last call. Best effort.
  virtual void ReclaimSpace(bool everything) = 0;
  virtual Result<BackendEstimate> Estimate() = 0;
  // Bytes the backend occupies on disk (or in its cluster).
  virtual uint64_t DiskBytes() = 0;

  // How many map entries an import should gather before it ingests them with their
  // index entries (0: the import's own default). A backend whose bulk batches cost
  // memory per entry until ingested asks for fewer.
  virtual uint64_t preferred_index_period_blocks() const { return 0; }
  // And how many bytes of new chunks per data period (0: the import's own default).
  virtual uint64_t preferred_data_period_bytes() const { return 0; }

  // ---- stores shared by several clients ----
  // This client's name in the store (the owner of the layers it imports); "" for a
  // store only one process opens.
  virtual std::string client_id() const { return ""; }
  // Whether the client that owns an importing layer is gone for good (its import will
  // never finish: the layer may be discarded). A store only one process opens: always.
  virtual Result<bool> IsClientGone(const std::string& owner) { return true; }
  // For an index that does not count references (ChunkIndex::counts_references): one
  // step of mark-and-sweep collection, given what the block maps named in a mark that
  // started at mark_start_unix_ns (referenced(id) may say true of an unreferenced chunk:
  // that keeps it longer, never loses one). Unreferenced chunks are condemned first and
  // deleted only by a later sweep, once writers that may have found them before they
  // were condemned have written their map entries. UNIMPLEMENTED for counting indexes.
  virtual Result<UnreferencedSweep> SweepUnreferenced(
      const std::function<bool(const ChunkId&)>& referenced, int64_t mark_start_unix_ns) {
    return Status::Unimplemented("this store counts references; gc sweeps by count");
  }
};

}  // namespace stellarium
