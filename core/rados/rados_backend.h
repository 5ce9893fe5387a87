// RadosBackend: the store's seams (core/backend/backend.h) on a Ceph RADOS pool, shared
// by every client (node) that opens it. Layout: docs/FORMAT.md "The RADOS store".
//
//   Catalog    -> one object, "stellarium.catalog", whose omap holds every record: a
//                 catalog change is one write operation with omap_cmp guards (atomic on
//                 one object; ABORTED when another client changed a guarded record).
//                 Block maps: shard objects of 64 Ki blocks per layer.
//   ChunkIndex -> 256 shard objects by the chunk id's first byte: id -> locator. No
//                 reference counts (ChunkIndex::counts_references): gc marks what the
//                 block maps name and condemns, then deletes, the rest.
//   ChunkBytes -> pack objects of a few MiB holding many chunks (LZ4 when it pays),
//                 with a slot table; a locator is pack << 20 | slot.
//   Batch      -> applied in an order that never names what is not there: new chunk
//                 bytes, then index entries, then the catalog (guarded), then block maps.
//                 A crash leaves at most unreferenced bytes and index entries (gc's), or,
//                 within one unflushed volume write, some of its blocks written.
//
// A node-local cache (--cache DIR, bounded, least recently used out) keeps what this
// client read: chunk bytes (ChunkCache), map shards and pack slot tables (in memory).
// Every write is durable in the cluster when the call returns; the cache never holds the
// only copy of anything.
//
// Thread-safety: as Backend.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "core/backend/backend.h"
#include "core/rados/rados_io.h"

namespace stellarium {

struct RadosBackendOptions {
  RadosConnectOptions connect;
  std::string cache_dir;              // the node-local cache ("" = no chunk cache)
  uint64_t cache_bytes = 4ull << 30;  // the chunk cache's bound on disk
  uint64_t map_cache_bytes = 256u << 20;   // map shards kept in memory
  // How long a writer may take between finding a chunk in the index and writing the
  // map entries that name it (an import's index period, a volume write): a chunk
  // condemned by gc is deleted only after a later mark that started this long after.
  int64_t writer_window_ns = 30ll * 60 * 1000 * 1000 * 1000;
  // How long a client's lease lasts without renewal; an importing layer whose owner's
  // lease expired is discarded.
  int64_t lease_ns = 60ll * 1000 * 1000 * 1000;
};

// Connects and opens the pool's store (creating its catalog object if missing).
Result<std::unique_ptr<Backend>> OpenRadosBackend(const RadosBackendOptions& options);

}  // namespace stellarium
