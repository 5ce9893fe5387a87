// Gc (reclaim dead layers, then sweep unreferenced chunks), Fsck (check everything,
// change nothing) and store statistics.
#include <algorithm>
#include <map>
#include <set>

#include "core/store_impl.h"

namespace stellarium {

using format::LayerRecord;
using format::LayerState;

Result<GcReport> Store::Gc() {
  StoreImpl& s = *impl_;
  GcReport report;
  // 1. Dead layers: nothing refers to them, so their map entries can go, each batch
  //    dropping the entries and their chunk references together.
  std::vector<uint64_t> dead;
  {
    auto it = s.db->NewIterator(Cf::kLayers);
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      uint64_t id = format::DecodeLayerKey(it->key().ToStringView());
      ASSIGN_OR_RETURN(LayerRecord r, format::DecodeLayer(id, it->value().ToStringView()));
      if (r.state == LayerState::kDead) dead.push_back(id);
    }
    RETURN_IF_ERROR(FromRocks(it->status(), "gc: scan layers"));
  }
  for (uint64_t id : dead) {
    const std::string end = format::MapKey(id + 1, 0);
    for (;;) {
      auto it = s.db->NewIterator(Cf::kMaps, false);
      Txn batch;
      size_t n = 0;
      for (it->Seek(format::MapKey(id, 0)); it->Valid() && it->key().compare(end) < 0 && n < 8192;
           it->Next(), ++n) {
        std::string_view v = it->value().ToStringView();
        if (!format::IsZeroMarker(v)) s.chunks->DropRef(&batch, ChunkIdFromBytes(v));
        batch.Delete(s.db->cf(Cf::kMaps), it->key());
      }
      RETURN_IF_ERROR(FromRocks(it->status(), "gc: layer " + std::to_string(id)));
      if (n == 0) break;
      report.map_entries_dropped += n;
      RETURN_IF_ERROR(s.db->Write(&batch, WriteMode::kNoSync, "gc: layer " + std::to_string(id)));
    }
    Txn batch;
    batch.Delete(s.db->cf(Cf::kLayers), format::LayerKey(id));
    RETURN_IF_ERROR(s.db->Write(&batch, WriteMode::kSync, "gc: drop layer " + std::to_string(id)));
    ++report.layers_reclaimed;
  }
  // 2. Chunks whose count reached zero.
  ASSIGN_OR_RETURN(SweepResult sw, s.chunks->Sweep());
  report.chunks_deleted = sw.chunks_deleted;
  report.bytes_freed = sw.bytes_freed;
  if (report.map_entries_dropped > 0 || report.chunks_deleted > 0 || report.bytes_freed > 0) {
    // Let compaction drop the tombstones so the space really comes back.
    s.db->raw()->CompactRange(rocksdb::CompactRangeOptions(), s.db->cf(Cf::kChunks), nullptr, nullptr);
    s.db->raw()->CompactRange(rocksdb::CompactRangeOptions(), s.db->cf(Cf::kData), nullptr, nullptr);
    s.db->raw()->CompactRange(rocksdb::CompactRangeOptions(), s.db->cf(Cf::kMaps), nullptr, nullptr);
  }
  return report;
}

Result<FsckReport> Store::Fsck() {
  StoreImpl& s = *impl_;
  FsckReport rep;
  auto err = [&](std::string e) {
    if (rep.errors.size() < 1000) rep.errors.push_back(std::move(e));
  };

  // Layers and the references we expect each to have.
  std::map<uint64_t, LayerRecord> layers;
  std::map<uint64_t, uint64_t> expected_refs;
  {
    auto it = s.db->NewIterator(Cf::kLayers, false);
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      uint64_t id = format::DecodeLayerKey(it->key().ToStringView());
      auto r = format::DecodeLayer(id, it->value().ToStringView());
      if (!r.ok()) {
        err(r.status().message());
        continue;
      }
      layers[id] = *r;
    }
    if (!it->status().ok()) err("layers: " + it->status().ToString());
  }
  rep.layers = layers.size();
  auto live = [&](uint64_t id) {
    auto it = layers.find(id);
    return it != layers.end() && it->second.state != LayerState::kDead &&
           it->second.state != LayerState::kImporting;
  };
  for (const auto& [id, l] : layers) {
    if (l.state == LayerState::kDead) {
      ++rep.dead_layers;
      continue;
    }
    if (l.parent != 0) {
      if (!live(l.parent)) err("layer " + std::to_string(id) + ": parent layer " + std::to_string(l.parent) + " is missing or dead");
      ++expected_refs[l.parent];
    }
  }
  std::set<uint64_t> heads;
  {
    auto it = s.db->NewIterator(Cf::kVolumes, false);
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      ++rep.volumes;
      auto v = format::DecodeVolume(it->key().ToStringView(), it->value().ToStringView());
      if (!v.ok()) {
        err(v.status().message());
        continue;
      }
      const auto& info = v->info;
      if (!live(v->head)) err("volume " + info.id + ": head layer " + std::to_string(v->head) + " is missing or dead");
      else if (layers[v->head].state != LayerState::kActive) err("volume " + info.id + ": head layer is not writable");
      if (!heads.insert(v->head).second) err("volume " + info.id + ": head layer shared with another volume");
      ++expected_refs[v->head];
      auto name = s.db->Get(Cf::kNames, format::VolumeNameKey(info.name), "fsck");
      if (!name.ok() || !name->has_value() || **name != info.id) err("volume " + info.id + ": name index entry for '" + info.name + "' is missing or wrong");
    }
    if (!it->status().ok()) err("volumes: " + it->status().ToString());
  }
  {
    auto it = s.db->NewIterator(Cf::kSnapshots, false);
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      ++rep.snapshots;
      auto v = format::DecodeSnapshot(it->key().ToStringView(), it->value().ToStringView());
      if (!v.ok()) {
        err(v.status().message());
        continue;
      }
      if (v->layer != 0) {
        if (!live(v->layer)) err("snapshot " + v->info.id + ": layer " + std::to_string(v->layer) + " is missing or dead");
        ++expected_refs[v->layer];
      }
      auto name = s.db->Get(Cf::kNames, format::SnapshotNameKey(v->info.name), "fsck");
      if (!name.ok() || !name->has_value() || **name != v->info.id) err("snapshot " + v->info.id + ": name index entry is missing or wrong");
    }
  }
  {
    auto it = s.db->NewIterator(Cf::kImages, false);
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      auto v = format::DecodeImage(it->key().ToStringView(), it->value().ToStringView());
      if (!v.ok()) {
        err(v.status().message());
        continue;
      }
      if (!live(v->layer)) err("image " + v->info.digest + ": layer " + std::to_string(v->layer) + " is missing or dead");
    }
  }
  {
    auto it = s.db->NewIterator(Cf::kNames, false);
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      std::string_view k = it->key().ToStringView();
      Cf cf = !k.empty() && k[0] == 's' ? Cf::kSnapshots : Cf::kVolumes;
      auto target = s.db->Get(cf, it->value(), "fsck");
      if (!target.ok() || !target->has_value()) err("name '" + std::string(k.substr(1)) + "' points to missing " + it->value().ToString());
    }
  }
  for (const auto& [id, l] : layers) {
    if (l.state == LayerState::kDead) continue;
    uint64_t want = expected_refs.count(id) ? expected_refs[id] : 0;
    if (l.refs != want) {
      err("layer " + std::to_string(id) + ": reference count " + std::to_string(l.refs) + ", expected " + std::to_string(want));
    }
  }

  // Map entries: each names a known layer and a valid chunk id. Collect the ids to
  // count references per chunk (sorted vector: 32 bytes per entry).
  std::vector<ChunkId> refs;
  {
    auto it = s.db->NewIterator(Cf::kMaps, false);
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      ++rep.map_entries;
      uint64_t layer, block;
      if (it->key().size() != format::kMapKeySize) {
        err("map entry with a malformed key");
        continue;
      }
      format::DecodeMapKey(it->key().ToStringView(), &layer, &block);
      if (!layers.count(layer)) err("map entry for unknown layer " + std::to_string(layer) + " block " + std::to_string(block));
      std::string_view v = it->value().ToStringView();
      if (format::IsZeroMarker(v)) continue;
      ChunkId id;
      uint64_t hint;
      if (!format::DecodeMapValue(v, &id, &hint)) {
        err("layer " + std::to_string(layer) + " block " + std::to_string(block) + ": malformed map entry");
        continue;
      }
      refs.push_back(id);
    }
    if (!it->status().ok()) err("maps: " + it->status().ToString());
  }
  std::sort(refs.begin(), refs.end());
  size_t pos = 0;
  Status walk = s.chunks->ForEach([&](const ChunkId& id, std::string_view bytes, int64_t count) {
    // Entries referring to chunks that sort before this one have no chunk at all.
    while (pos < refs.size() && refs[pos] < id) {
      err("chunk " + ToHex(refs[pos]) + " is referenced by a map but missing from the store");
      ChunkId missing = refs[pos];
      while (pos < refs.size() && refs[pos] == missing) ++pos;
    }
    int64_t n = 0;
    while (pos < refs.size() && refs[pos] == id) ++n, ++pos;
    if (bytes.empty()) {
      err("chunk " + ToHex(id) + ": reference count without data");
      return Status::Ok();
    }
    ++rep.chunks_checked;
    if (Sha256(bytes.data(), bytes.size()) != id) {
      err("chunk " + ToHex(id) + ": content does not match its SHA-256 (corrupted)");
    }
    if (count != n) {
      err("chunk " + ToHex(id) + ": reference count " + std::to_string(count) + ", map entries " + std::to_string(n));
    }
    return Status::Ok();
  });
  if (!walk.ok()) err("chunks: " + walk.message());
  while (walk.ok() && pos < refs.size()) {
    err("chunk " + ToHex(refs[pos]) + " is referenced by a map but missing from the store");
    ChunkId missing = refs[pos];
    while (pos < refs.size() && refs[pos] == missing) ++pos;
  }
  return rep;
}

Status Store::WaitIdle() { return impl_->db->WaitIdle(); }

Result<StoreStats> Store::GetStats(StatsDetail detail) {
  StoreImpl& s = *impl_;
  StoreStats st;
  auto count = [&](Cf cf) -> Result<uint64_t> {
    uint64_t n = 0;
    auto it = s.db->NewIterator(cf, false);
    for (it->SeekToFirst(); it->Valid(); it->Next()) ++n;
    RETURN_IF_ERROR(FromRocks(it->status(), "stats"));
    return n;
  };
  ASSIGN_OR_RETURN(st.volumes, count(Cf::kVolumes));
  ASSIGN_OR_RETURN(st.snapshots, count(Cf::kSnapshots));
  ASSIGN_OR_RETURN(st.images, count(Cf::kImages));
  ASSIGN_OR_RETURN(st.layers, count(Cf::kLayers));
  st.disk_bytes = s.db->DiskBytes();
  if (detail == StatsDetail::kEstimate) {
    ASSIGN_OR_RETURN(st.chunks, s.db->EstimateKeys(Cf::kChunks));
    ASSIGN_OR_RETURN(st.chunk_bytes, s.db->EstimateValueBytes(Cf::kData));
    ASSIGN_OR_RETURN(uint64_t entries, s.db->EstimateKeys(Cf::kMaps));
    st.referenced_bytes = entries * s.options.default_block_size;
    return st;
  }
  std::map<uint64_t, uint32_t> block_size;
  {
    auto it = s.db->NewIterator(Cf::kLayers, false);
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      uint64_t id = format::DecodeLayerKey(it->key().ToStringView());
      ASSIGN_OR_RETURN(LayerRecord r, format::DecodeLayer(id, it->value().ToStringView()));
      if (r.state != LayerState::kDead) block_size[id] = r.block_size;
    }
  }
  {
    auto it = s.db->NewIterator(Cf::kMaps, false);
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      if (it->value().empty()) continue;
      uint64_t layer, block;
      format::DecodeMapKey(it->key().ToStringView(), &layer, &block);
      auto bs = block_size.find(layer);
      if (bs != block_size.end()) st.referenced_bytes += bs->second;
    }
    RETURN_IF_ERROR(FromRocks(it->status(), "stats"));
  }
  ASSIGN_OR_RETURN(ChunkTotals totals, s.chunks->Totals());
  st.chunks = totals.chunks;
  st.chunk_bytes = totals.bytes;
  return st;
}

}  // namespace stellarium
