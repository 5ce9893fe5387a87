// Gc (reclaim dead layers, then sweep unreferenced chunks), Fsck (check everything,
// change nothing) and store statistics.
#include <algorithm>
#include <map>
#include <set>

#include "core/store_impl.h"

namespace stellarium {

using format::LayerRecord;
using format::LayerState;

namespace {

// Every layer record of the catalog, decoded. Undecodable ones go to `bad` when given,
// else they fail the scan.
Result<std::map<uint64_t, LayerRecord>> LoadLayers(StoreImpl& s,
                                                    std::vector<std::string>* bad = nullptr) {
  std::map<uint64_t, LayerRecord> layers;
  RETURN_IF_ERROR(s.catalog().Scan(Table::kLayers, [&](std::string_view key, std::string_view v) {
    const uint64_t id = format::DecodeLayerKey(key);
    auto r = format::DecodeLayer(id, v);
    if (r.ok()) {
      layers[id] = *r;
    } else if (bad != nullptr) {
      bad->push_back(r.status().message());
    } else {
      return r.status();
    }
    return Status::Ok();
  }));
  return layers;
}

// Drops a dead layer's map entries (each batch dropping the entries and their chunk
// references together), then the layer record.
Status ReclaimLayer(StoreImpl& s, uint64_t id, GcReport* report) {
  const std::string what = "gc: layer " + std::to_string(id);
  for (;;) {
    auto cursor = s.catalog().NewMapCursor(id, 0, UINT64_MAX, /*fill_cache=*/false);
    std::unique_ptr<Batch> batch = s.backend->NewBatch();
    size_t n = 0;
    for (; cursor->Valid() && n < 8192; cursor->Next(), ++n) {
      const format::MapValue m = format::DecodeMapValue(cursor->value());
      if (m.is_chunk()) s.chunks->DropRef(batch.get(), m.id);
      s.catalog().DeleteMap(batch.get(), id, cursor->block());
    }
    RETURN_IF_ERROR(cursor->status().Annotate(what));
    if (n == 0) break;
    report->map_entries_dropped += n;
    RETURN_IF_ERROR(s.backend->Commit(batch.get(), Durability::kNoSync, what));
  }
  std::unique_ptr<Batch> batch = s.backend->NewBatch();
  // A dead layer stays dead: nothing to guard.
  s.catalog().Delete(batch.get(), Table::kLayers, format::LayerKey(id));
  RETURN_IF_ERROR(s.backend->Commit(batch.get(), Durability::kSync, "gc: drop layer " + std::to_string(id)));
  ++report->layers_reclaimed;
  return Status::Ok();
}

}  // namespace

Result<GcReport> Store::Gc() {
  StoreImpl& s = *impl_;
  GcReport report;
  // 1. Dead layers: nothing refers to them, so their map entries can go.
  ASSIGN_OR_RETURN(auto layers, LoadLayers(s));
  for (const auto& [id, rec] : layers) {
    if (rec.state == LayerState::kDead) RETURN_IF_ERROR(ReclaimLayer(s, id, &report));
  }
  // 2. Chunks whose count reached zero.
  ASSIGN_OR_RETURN(SweepResult sw, s.chunks->Sweep());
  report.chunks_deleted = sw.chunks_deleted;
  report.bytes_freed = sw.bytes_freed;
  if (report.map_entries_dropped > 0 || report.chunks_deleted > 0 || report.bytes_freed > 0) {
    s.backend->ReclaimSpace();  // so the space really comes back
  }
  return report;
}

namespace {

// One fsck pass: what it has learnt so far and the errors it found.
class FsckPass {
 public:
  explicit FsckPass(StoreImpl& s) : s_(s) {}

  Result<FsckReport> Run() {
    std::vector<std::string> bad;
    ASSIGN_OR_RETURN(layers_, LoadLayers(s_, &bad));
    for (auto& e : bad) Error(std::move(e));
    rep_.layers = layers_.size();
    CheckLayerLinks();
    CheckVolumes();
    CheckSnapshots();
    CheckImages();
    CheckNames();
    CheckLayerRefs();
    CheckMapsAndChunks();
    return std::move(rep_);
  }

 private:
  void Error(std::string e) {
    if (rep_.errors.size() < 1000) rep_.errors.push_back(std::move(e));
  }
  void ScanError(const Status& st, const char* what) {
    if (!st.ok()) Error(std::string(what) + ": " + st.message());
  }
  bool Live(uint64_t id) const {
    auto it = layers_.find(id);
    return it != layers_.end() && it->second.state != LayerState::kDead &&
           it->second.state != LayerState::kImporting;
  }
  template <typename Record>
  void CheckNameOf(const std::string& id, const std::string& name) {
    auto named = s_.IdOfName<Record>(name);
    if (!named.ok() || !named->has_value() || **named != id) {
      Error(std::string(RecordKind<Record>::kWhat) + " " + id + ": name index entry for '" + name +
            "' is missing or wrong");
    }
  }

  void CheckLayerLinks() {
    for (const auto& [id, l] : layers_) {
      if (l.state == LayerState::kDead) {
        ++rep_.dead_layers;
        continue;
      }
      if (l.parent != 0) {
        if (!Live(l.parent)) {
          Error("layer " + std::to_string(id) + ": parent layer " + std::to_string(l.parent) +
                " is missing or dead");
        }
        ++expected_refs_[l.parent];
      }
    }
  }

  void CheckVolumes() {
    std::set<uint64_t> heads;
    ScanError(s_.catalog().Scan(Table::kVolumes, [&](std::string_view key, std::string_view v) {
      ++rep_.volumes;
      auto rec = format::DecodeVolume(key, v);
      if (!rec.ok()) {
        Error(rec.status().message());
        return Status::Ok();
      }
      const VolumeInfo& info = rec->info;
      if (!Live(rec->head)) {
        Error("volume " + info.id + ": head layer " + std::to_string(rec->head) + " is missing or dead");
      } else if (layers_[rec->head].state != LayerState::kActive) {
        Error("volume " + info.id + ": head layer is not writable");
      }
      if (!heads.insert(rec->head).second) Error("volume " + info.id + ": head layer shared with another volume");
      ++expected_refs_[rec->head];
      CheckNameOf<format::VolumeRecord>(info.id, info.name);
      return Status::Ok();
    }), "volumes");
  }

  void CheckSnapshots() {
    ScanError(s_.catalog().Scan(Table::kSnapshots, [&](std::string_view key, std::string_view v) {
      ++rep_.snapshots;
      auto rec = format::DecodeSnapshot(key, v);
      if (!rec.ok()) {
        Error(rec.status().message());
        return Status::Ok();
      }
      if (rec->layer != 0) {
        if (!Live(rec->layer)) {
          Error("snapshot " + rec->info.id + ": layer " + std::to_string(rec->layer) +
                " is missing or dead");
        }
        ++expected_refs_[rec->layer];
      }
      CheckNameOf<format::SnapshotRecord>(rec->info.id, rec->info.name);
      return Status::Ok();
    }), "snapshots");
  }

  void CheckImages() {
    ScanError(s_.catalog().Scan(Table::kImages, [&](std::string_view key, std::string_view v) {
      auto rec = format::DecodeImage(key, v);
      if (!rec.ok()) {
        Error(rec.status().message());
        return Status::Ok();
      }
      if (!Live(rec->layer)) {
        Error("image " + rec->info.digest + ": layer " + std::to_string(rec->layer) +
              " is missing or dead");
      }
      return Status::Ok();
    }), "images");
  }

  void CheckNames() {
    ScanError(s_.catalog().Scan(Table::kNames, [&](std::string_view key, std::string_view id) {
      const Table table = !key.empty() && key[0] == 's' ? Table::kSnapshots : Table::kVolumes;
      auto target = s_.catalog().Get(table, id);
      if (!target.ok() || !target->has_value()) {
        Error("name '" + std::string(key.substr(1)) + "' points to missing " + std::string(id));
      }
      return Status::Ok();
    }), "names");
  }

  void CheckLayerRefs() {
    for (const auto& [id, l] : layers_) {
      if (l.state == LayerState::kDead) continue;
      const uint64_t want = expected_refs_.count(id) ? expected_refs_[id] : 0;
      if (l.refs != want) {
        Error("layer " + std::to_string(id) + ": reference count " + std::to_string(l.refs) +
              ", expected " + std::to_string(want));
      }
    }
  }

  // Map entries: each names a known layer and a valid chunk id. The ids are collected
  // (sorted vector: 32 bytes per entry) to count references per chunk while walking the
  // chunk index, whose every chunk's hash is checked.
  void CheckMapsAndChunks() {
    std::vector<ChunkId> refs;
    uint64_t malformed = 0;
    ScanError(s_.catalog().ScanMaps([&](uint64_t layer, uint64_t block, std::string_view v) {
      ++rep_.map_entries;
      if (!layers_.count(layer)) {
        Error("map entry for unknown layer " + std::to_string(layer) + " block " + std::to_string(block));
      }
      const format::MapValue m = format::DecodeMapValue(v);
      if (m.kind == format::MapValue::kMalformed) {
        Error("layer " + std::to_string(layer) + " block " + std::to_string(block) + ": malformed map entry");
      } else if (m.is_chunk()) {
        refs.push_back(m.id);
      }
      return Status::Ok();
    }, &malformed), "maps");
    for (uint64_t i = 0; i < malformed; ++i) Error("map entry with a malformed key");
    std::sort(refs.begin(), refs.end());
    CheckChunks(refs);
  }

  void CheckChunks(const std::vector<ChunkId>& refs) {
    size_t pos = 0;
    auto missing_before = [&](const ChunkId* bound) {
      while (pos < refs.size() && (bound == nullptr || refs[pos] < *bound)) {
        Error("chunk " + ToHex(refs[pos]) + " is referenced by a map but missing from the store");
        const ChunkId missing = refs[pos];
        while (pos < refs.size() && refs[pos] == missing) ++pos;
      }
    };
    Status walk = s_.chunks->ForEach([&](const ChunkId& id, std::string_view bytes, int64_t count) {
      missing_before(&id);  // entries naming chunks that sort before this one have none
      int64_t n = 0;
      while (pos < refs.size() && refs[pos] == id) ++n, ++pos;
      if (bytes.empty()) {
        Error("chunk " + ToHex(id) + ": reference count without data");
        return Status::Ok();
      }
      ++rep_.chunks_checked;
      if (Sha256(bytes.data(), bytes.size()) != id) {
        Error("chunk " + ToHex(id) + ": content does not match its SHA-256 (corrupted)");
      }
      if (count != n) {
        Error("chunk " + ToHex(id) + ": reference count " + std::to_string(count) +
              ", map entries " + std::to_string(n));
      }
      return Status::Ok();
    });
    ScanError(walk, "chunks");
    if (walk.ok()) missing_before(nullptr);
  }

  StoreImpl& s_;
  FsckReport rep_;
  std::map<uint64_t, LayerRecord> layers_;
  std::map<uint64_t, uint64_t> expected_refs_;
};

}  // namespace

Result<FsckReport> Store::Fsck() { return FsckPass(*impl_).Run(); }

Status Store::WaitIdle() { return impl_->backend->WaitIdle(); }

Result<StoreStats> Store::GetStats(StatsDetail detail) {
  StoreImpl& s = *impl_;
  StoreStats st;
  auto count = [&](Table table) -> Result<uint64_t> {
    uint64_t n = 0;
    RETURN_IF_ERROR(s.catalog().Scan(table, [&](std::string_view, std::string_view) {
      ++n;
      return Status::Ok();
    }).Annotate("stats"));
    return n;
  };
  ASSIGN_OR_RETURN(st.volumes, count(Table::kVolumes));
  ASSIGN_OR_RETURN(st.snapshots, count(Table::kSnapshots));
  ASSIGN_OR_RETURN(st.images, count(Table::kImages));
  ASSIGN_OR_RETURN(st.layers, count(Table::kLayers));
  st.disk_bytes = s.backend->DiskBytes();
  if (detail == StatsDetail::kEstimate) {
    ASSIGN_OR_RETURN(BackendEstimate e, s.backend->Estimate());
    st.chunks = e.chunks;
    st.chunk_bytes = e.chunk_bytes;
    st.referenced_bytes = e.map_entries * s.options.default_block_size;
    return st;
  }
  ASSIGN_OR_RETURN(auto layers, LoadLayers(s));
  RETURN_IF_ERROR(s.catalog().ScanMaps([&](uint64_t layer, uint64_t, std::string_view v) {
    auto l = layers.find(layer);
    if (!v.empty() && l != layers.end() && l->second.state != LayerState::kDead) {
      st.referenced_bytes += l->second.block_size;
    }
    return Status::Ok();
  }).Annotate("stats"));
  ASSIGN_OR_RETURN(ChunkTotals totals, s.chunks->Totals());
  st.chunks = totals.chunks;
  st.chunk_bytes = totals.bytes;
  return st;
}

}  // namespace stellarium
