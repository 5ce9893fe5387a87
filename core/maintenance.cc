// Gc (reclaim dead layers, then sweep unreferenced chunks), Fsck (check everything,
// change nothing) and store statistics.
#include <absl/container/flat_hash_set.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <map>
#include <set>
#include <thread>

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

// Paces a gc pass: after a batch that took `took`, sleeps so that the pass works only
// `duty` of its time; false once the pass should stop.
class GcPacer {
 public:
  explicit GcPacer(const GcOptions& o) : o_(o) {}
  bool operator()(std::chrono::steady_clock::duration took) {
    if (o_.duty > 0 && o_.duty < 1) {
      auto rest = std::chrono::duration_cast<std::chrono::steady_clock::duration>(
          took * ((1 - o_.duty) / o_.duty));
      while (rest.count() > 0 && !Stopped()) {
        const auto slice =
            std::min<std::chrono::steady_clock::duration>(rest, std::chrono::milliseconds(20));
        std::this_thread::sleep_for(slice);
        rest -= slice;
      }
    }
    return !Stopped();
  }
  bool Stopped() const { return o_.stop != nullptr && o_.stop->load(); }
  bool wait_for_imports() const { return o_.wait_for_imports; }

 private:
  const GcOptions& o_;
};

// Drops a dead layer's map entries (each batch dropping the entries and their chunk
// references together), then the layer record. False when the pacer said stop.
Result<bool> ReclaimLayer(StoreImpl& s, uint64_t id, GcPacer& pace, GcReport* report) {
  const std::string what = "gc: layer " + std::to_string(id);
  for (;;) {
    const auto started = std::chrono::steady_clock::now();
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
    if (!pace(std::chrono::steady_clock::now() - started)) return false;
  }
  std::unique_ptr<Batch> batch = s.backend->NewBatch();
  // A dead layer stays dead: nothing to guard.
  s.catalog().Delete(batch.get(), Table::kLayers, format::LayerKey(id));
  RETURN_IF_ERROR(
      s.backend->Commit(batch.get(), Durability::kSync, "gc: drop layer " + std::to_string(id)));
  ++report->layers_reclaimed;
  return true;
}

// Deletes the chunks whose references were dropped since the last call, if their
// count is zero now.
Status SweepDropped(StoreImpl& s, GcPacer& pace, GcReport* report) {
  bool overflowed = false;
  const std::vector<ChunkId> ids = s.chunks->TakeDropped(&overflowed);
  if (overflowed) s.full_gc_needed = true;
  ASSIGN_OR_RETURN(SweepResult sw, s.chunks->SweepChunks(ids, std::ref(pace), /*with_bytes=*/true,
                                                          pace.wait_for_imports()));
  report->chunks_deleted += sw.chunks_deleted;
  report->postponed |= sw.postponed;
  return Status::Ok();
}

// Dead layers: nothing refers to them, so their map entries can go. False when the
// pacer said stop.
Result<bool> ReclaimDeadLayers(StoreImpl& s, bool full, GcPacer& pace, GcReport* report) {
  s.layers_died = false;  // deaths from now on are the next pass's
  ASSIGN_OR_RETURN(auto layers, LoadLayers(s));
  for (const auto& [id, rec] : layers) {
    if (rec.state != LayerState::kDead) continue;
    ASSIGN_OR_RETURN(bool go, ReclaimLayer(s, id, pace, report));
    // Without reference counts a dropped reference says nothing about the chunk: only
    // the mark (MarkAndSweep) may delete chunks.
    if (!full && s.backend->index().counts_references()) RETURN_IF_ERROR(SweepDropped(s, pace, report));
    if (!go) return false;
  }
  return true;
}

}  // namespace

namespace {

// Collection where the index counts no references (a store shared by many clients):
// mark every chunk some block map names, then the backend condemns the others, and
// deletes those it condemned long enough ago.
Status MarkAndSweep(StoreImpl& s, GcReport* report) {
  const int64_t mark_start = NowUnixNs();
  absl::flat_hash_set<ChunkId> named;
  RETURN_IF_ERROR(s.catalog().ScanMaps([&](uint64_t, uint64_t, std::string_view v) {
    const format::MapValue m = format::DecodeMapValue(v);
    if (m.is_chunk()) named.insert(m.id);
    return Status::Ok();
  }).Annotate("gc: mark"));
  ASSIGN_OR_RETURN(UnreferencedSweep sw, s.backend->SweepUnreferenced(
                                             [&](const ChunkId& id) { return named.contains(id); },
                                             mark_start));
  report->chunks_condemned += sw.condemned;
  report->chunks_spared += sw.spared;
  report->chunks_deleted += sw.chunks_deleted;
  report->bytes_freed += sw.bytes_freed;
  return Status::Ok();
}

// One pass's work (Store::Gc), into *report.
Status GcPass(StoreImpl& s, const GcOptions& options, GcReport* report) {
  GcPacer pace(options);
  ASSIGN_OR_RETURN(bool go, ReclaimDeadLayers(s, report->full, pace, report));
  if (go && !s.backend->index().counts_references()) {
    bool overflowed;
    (void)s.chunks->TakeDropped(&overflowed);  // counts are not kept: the mark finds everything
    return MarkAndSweep(s, report);
  }
  // Chunks whose count reached zero (and, in a full pass, bytes nothing names).
  if (go && report->full) {
    bool overflowed;
    (void)s.chunks->TakeDropped(&overflowed);  // the full sweep sees them all
    ASSIGN_OR_RETURN(SweepResult sw, s.chunks->Sweep(std::ref(pace), options.wait_for_imports));
    report->chunks_deleted += sw.chunks_deleted;
    report->bytes_freed += sw.bytes_freed;
    report->postponed |= sw.postponed;
  } else if (go) {
    RETURN_IF_ERROR(SweepDropped(s, pace, report));
  }
  report->stopped = pace.Stopped();
  if (report->map_entries_dropped > 0 || report->chunks_deleted > 0 || report->bytes_freed > 0) {
    s.backend->ReclaimSpace(report->full);  // so the space really comes back
  }
  return Status::Ok();
}

}  // namespace

Result<GcReport> Store::Gc(const GcOptions& options) {
  StoreImpl& s = *impl_;
  std::lock_guard one_pass(s.gc_mu);
  const auto started = std::chrono::steady_clock::now();
  GcReport report;
  report.disk_bytes_before = s.backend->DiskBytes();
  const bool full_needed = s.full_gc_needed.exchange(false);
  report.full = options.full || full_needed;
  Status st = GcPass(s, options, &report);
  if (!st.ok() || report.stopped || report.postponed) {
    s.layers_died = true;  // the next pass goes on where this one stopped
    if (report.full) s.full_gc_needed = true;
  }
  RETURN_IF_ERROR(st);
  report.disk_bytes_after = s.backend->DiskBytes();
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  return report;
}

bool Store::HasGarbage() const {
  const StoreImpl& s = *impl_;
  // A shared store's garbage is also other clients' deletes: only a mark can tell.
  if (!s.backend->index().counts_references()) return true;
  return s.layers_died.load() || s.full_gc_needed.load() || s.chunks->HasDropped();
}


namespace {

// One fsck pass: what it has learnt so far and the problems it found. Every scan goes
// on past what it cannot read where the backend allows, and a scan that stops is one
// problem whose follow-ons (checks that need what it did not read) are skipped, not
// listed.
class FsckPass {
 public:
  explicit FsckPass(StoreImpl& s) : s_(s) {}

  Result<FsckReport> Run() {
    std::vector<std::string> bad;
    auto layers = LoadLayers(s_, &bad);
    if (layers.ok()) {
      layers_ = std::move(layers).value();
    } else {
      layers_ok_ = false;
      Problem("unreadable table", "layers: " + layers.status().message() +
                                      "; layer links and reference counts not checked");
    }
    for (auto& e : bad) Problem("catalog", std::move(e));
    rep_.layers = layers_.size();
    CheckLayerLinks();
    CheckVolumes();
    CheckSnapshots();
    CheckImages();
    CheckNames();
    CheckLayerRefs();
    CheckMapsAndChunks();
    ReportDamagedChunks();
    Finish();
    return std::move(rep_);
  }

 private:
  // A chunk whose data is damaged, and the line that will say so.
  struct Damaged {
    std::string kind, message;
    std::vector<std::string> users = {};  // filled by ReportDamagedChunks
  };

  void Problem(const std::string& kind, std::string line) {
    ++rep_.problems[kind];
    lines_.push_back(std::move(line));
  }
  // A scan that stopped on an error; `skipped` says which checks that costs.
  bool ScanOk(const Status& st, const char* table, const std::string& skipped) {
    if (st.ok()) return true;
    Problem("unreadable table", std::string(table) + ": " + st.message() +
                                    (skipped.empty() ? "" : "; " + skipped + " not checked"));
    return false;
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
      Problem("catalog", std::string(RecordKind<Record>::kWhat) + " " + id +
                             ": name index entry for '" + name + "' is missing or wrong");
    }
  }
  // A record's layer (head or frozen layer): missing or dead is a problem (unless the
  // layers could not be read), and it is one more reference the layer should count.
  void CheckLayerOf(const std::string& who, const char* which, uint64_t layer) {
    if (layers_ok_ && !Live(layer)) {
      Problem("catalog", who + ": " + which + " " + std::to_string(layer) + " is missing or dead");
    }
    ++expected_refs_[layer];
  }

  void CheckLayerLinks() {
    for (const auto& [id, l] : layers_) {
      if (l.state == LayerState::kDead) {
        ++rep_.dead_layers;
        continue;
      }
      if (l.parent != 0) CheckLayerOf("layer " + std::to_string(id), "parent layer", l.parent);
    }
  }

  void CheckVolumes() {
    std::set<uint64_t> heads;
    records_ok_ &= ScanOk(s_.catalog().Scan(Table::kVolumes, [&](std::string_view key, std::string_view v) {
      ++rep_.volumes;
      auto rec = format::DecodeVolume(key, v);
      if (!rec.ok()) {
        Problem("catalog", rec.status().message());
        return Status::Ok();
      }
      const VolumeInfo& info = rec->info;
      CheckLayerOf("volume " + info.id, "head layer", rec->head);
      if (Live(rec->head) && layers_[rec->head].state != LayerState::kActive) {
        Problem("catalog", "volume " + info.id + ": head layer is not writable");
      }
      if (!heads.insert(rec->head).second) {
        Problem("catalog", "volume " + info.id + ": head layer shared with another volume");
      }
      CheckNameOf<format::VolumeRecord>(info.id, info.name);
      owners_.emplace_back(rec->head, "volume " + info.id + " (" + info.name + ")");
      return Status::Ok();
    }), "volumes", "layer reference counts");
  }

  void CheckSnapshots() {
    records_ok_ &= ScanOk(s_.catalog().Scan(Table::kSnapshots, [&](std::string_view key, std::string_view v) {
      ++rep_.snapshots;
      auto rec = format::DecodeSnapshot(key, v);
      if (!rec.ok()) {
        Problem("catalog", rec.status().message());
        return Status::Ok();
      }
      if (rec->layer != 0) CheckLayerOf("snapshot " + rec->info.id, "layer", rec->layer);
      CheckNameOf<format::SnapshotRecord>(rec->info.id, rec->info.name);
      owners_.emplace_back(rec->layer, "snapshot " + rec->info.id + " (" + rec->info.name + ")");
      return Status::Ok();
    }), "snapshots", "layer reference counts");
  }

  void CheckImages() {
    ScanOk(s_.catalog().Scan(Table::kImages, [&](std::string_view key, std::string_view v) {
      auto rec = format::DecodeImage(key, v);
      if (!rec.ok()) {
        Problem("catalog", rec.status().message());
        return Status::Ok();
      }
      if (layers_ok_ && !Live(rec->layer)) {
        Problem("catalog", "image " + rec->info.digest + ": layer " + std::to_string(rec->layer) +
                               " is missing or dead");
      }
      owners_.emplace_back(rec->layer, "image " + rec->info.digest);
      return Status::Ok();
    }), "images", "");
  }

  void CheckNames() {
    ScanOk(s_.catalog().Scan(Table::kNames, [&](std::string_view key, std::string_view id) {
      const Table table = !key.empty() && key[0] == 's' ? Table::kSnapshots : Table::kVolumes;
      auto target = s_.catalog().Get(table, id);
      if (!target.ok() || !target->has_value()) {
        Problem("catalog", "name '" + std::string(key.substr(1)) + "' points to missing " + std::string(id));
      }
      return Status::Ok();
    }), "names", "");
  }

  void CheckLayerRefs() {
    if (!layers_ok_ || !records_ok_) return;  // follow-ons of an unreadable table
    for (const auto& [id, l] : layers_) {
      if (l.state == LayerState::kDead) continue;
      const uint64_t want = expected_refs_.count(id) ? expected_refs_[id] : 0;
      if (l.refs != want) {
        Problem("reference count", "layer " + std::to_string(id) + ": reference count " +
                                       std::to_string(l.refs) + ", expected " + std::to_string(want));
      }
    }
  }

  // Map entries: each names a known layer and a valid chunk id. The ids are collected
  // (sorted vector: 32 bytes per entry) to count references per chunk while walking the
  // chunk index, whose every chunk's hash is checked.
  void CheckMapsAndChunks() {
    std::vector<ChunkId> refs;
    uint64_t malformed = 0;
    maps_ok_ = ScanOk(s_.catalog().ScanMaps([&](uint64_t layer, uint64_t block, std::string_view v) {
      ++rep_.map_entries;
      if (layers_ok_ && !layers_.count(layer)) {
        Problem("catalog", "map entry for unknown layer " + std::to_string(layer) + " block " +
                               std::to_string(block));
      }
      const format::MapValue m = format::DecodeMapValue(v);
      if (m.kind == format::MapValue::kMalformed) {
        Problem("catalog", "layer " + std::to_string(layer) + " block " + std::to_string(block) +
                               ": malformed map entry");
      } else if (m.is_chunk()) {
        refs.push_back(m.id);
      }
      return Status::Ok();
    }, &malformed), "block maps", "chunk reference counts");
    for (uint64_t i = 0; i < malformed; ++i) Problem("catalog", "map entry with a malformed key");
    std::sort(refs.begin(), refs.end());
    CheckChunks(refs);
  }

  void CheckChunks(const std::vector<ChunkId>& refs) {
    size_t pos = 0;
    auto missing_before = [&](const ChunkId* bound) {
      while (pos < refs.size() && (bound == nullptr || refs[pos] < *bound)) {
        const ChunkId missing = refs[pos];
        damaged_[missing] = {"missing chunk", "chunk " + ToHex(missing) +
                                                  " is referenced by a map but missing from the store"};
        while (pos < refs.size() && refs[pos] == missing) ++pos;
      }
    };
    Status walk = s_.chunks->ForEach([&](const ChunkId& id, std::string_view bytes, int64_t count,
                                         const Status& read) {
      ++rep_.chunks;
      missing_before(&id);  // entries naming chunks that sort before this one have none
      int64_t n = 0;
      while (pos < refs.size() && refs[pos] == id) ++n, ++pos;
      if (!read.ok()) {
        damaged_[id] = {"unreadable chunk", "chunk " + ToHex(id) + ": cannot be read: " + read.message()};
        return Status::Ok();
      }
      if (bytes.empty()) {
        damaged_[id] = {"missing chunk", "chunk " + ToHex(id) + ": reference count without data"};
        return Status::Ok();
      }
      ++rep_.chunks_checked;
      if (Sha256(bytes.data(), bytes.size()) != id) {
        damaged_[id] = {"corrupt chunk",
                        "chunk " + ToHex(id) + ": content does not match its SHA-256 (corrupted)"};
      }
      if (maps_ok_ && counted_ && count != n) {
        Problem("reference count", "chunk " + ToHex(id) + ": reference count " +
                                       std::to_string(count) + ", map entries " + std::to_string(n));
      }
      return Status::Ok();
    });
    if (ScanOk(walk, "chunk index", "the chunks after the last one read")) missing_before(nullptr);
  }

  // Names whose data each damaged chunk is: the map entries naming it (a second pass
  // over the maps), their layers, and the volumes, snapshots and images whose chain
  // reaches those layers.
  void ReportDamagedChunks() {
    if (damaged_.empty()) return;
    std::map<uint64_t, std::vector<std::pair<ChunkId, uint64_t>>> by_layer;  // layer -> (id, block)
    if (maps_ok_) {
      (void)s_.catalog().ScanMaps([&](uint64_t layer, uint64_t block, std::string_view v) {
        const format::MapValue m = format::DecodeMapValue(v);
        if (m.is_chunk() && damaged_.count(m.id)) by_layer[layer].emplace_back(m.id, block);
        return Status::Ok();
      });
    }
    std::set<std::string> affected;
    for (const auto& [top, owner] : owners_) {
      for (uint64_t layer = top, hops = 0; layer != 0 && hops < 4096; ++hops) {
        auto found = by_layer.find(layer);
        if (found != by_layer.end()) {
          for (const auto& [id, block] : found->second) {
            auto& users = damaged_[id].users;
            if (users.size() < 8) users.push_back(owner + " block " + std::to_string(block));
          }
          affected.insert(owner);
        }
        auto l = layers_.find(layer);
        layer = l == layers_.end() ? 0 : l->second.parent;
      }
    }
    rep_.affected.assign(affected.begin(), affected.end());
    for (auto& [id, d] : damaged_) {
      std::string line = d.message;
      for (size_t i = 0; i < d.users.size(); ++i) line += (i == 0 ? "; data of " : ", ") + d.users[i];
      Problem(d.kind, std::move(line));
    }
  }

  void Finish() {
    const size_t total = lines_.size();
    if (total > FsckReport::kMaxErrorLines) {
      lines_.resize(FsckReport::kMaxErrorLines - 1);
      lines_.push_back("... and " + std::to_string(total - lines_.size()) +
                       " more problems (counted above)");
    }
    rep_.errors = std::move(lines_);
  }

  StoreImpl& s_;
  FsckReport rep_;
  std::vector<std::string> lines_;
  std::map<uint64_t, LayerRecord> layers_;
  std::map<uint64_t, uint64_t> expected_refs_;
  std::vector<std::pair<uint64_t, std::string>> owners_;  // (top layer, "volume vol-1 (a)")
  std::map<ChunkId, Damaged> damaged_;
  bool layers_ok_ = true, records_ok_ = true, maps_ok_ = true;
  const bool counted_ = s_.backend->index().counts_references();
};

}  // namespace

Result<FsckReport> Store::Fsck() {
  std::lock_guard no_gc(impl_->gc_mu);  // a gc pass changes maps and counts between scans
  return FsckPass(*impl_).Run();
}

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
