// Volume I/O (reads walk the layer chain, writes go to the head, copy-on-write at block
// granularity), flattening, and per-volume statistics.
#include <algorithm>
#include <cstring>
#include <future>

#include "core/store_impl.h"

namespace stellarium {

using format::LayerRecord;
using format::LayerState;

namespace {

class VolumeHandle : public Volume {
 public:
  VolumeHandle(StoreImpl* impl, std::shared_ptr<VolumeState> st, bool read_only)
      : impl_(impl), st_(std::move(st)), read_only_(read_only), id_(st_->rec.info.id) {}
  ~VolumeHandle() override { impl_->ReleaseState(st_); }

  const std::string& id() const override { return id_; }
  uint64_t size() const override {
    std::shared_lock l(st_->mu);
    return st_->rec.info.size_bytes;
  }
  uint32_t block_size() const override { return st_->rec.info.block_size; }
  bool read_only() const override { return read_only_; }

  Status Read(uint64_t offset, size_t len, char* out) override {
    std::shared_lock l(st_->mu);
    RETURN_IF_ERROR(Check(offset, len));
    if (len == 0) return Status::Ok();
    const uint64_t bs = st_->rec.info.block_size;
    const uint64_t b0 = offset / bs, b1 = (offset + len + bs - 1) / bs;
    // Which chunk backs each mapped block of the range (the others read as zeros).
    std::vector<uint64_t> blocks;
    std::vector<ChunkRef> ids;
    RETURN_IF_ERROR(impl_->ResolveRange(st_->chain, b0, b1, [&](uint64_t block, std::string_view v) {
      const format::MapValue m = format::DecodeMapValue(v);
      if (m.kind == format::MapValue::kZero) return Status::Ok();
      if (!m.is_chunk()) {
        return Status::Corruption("volume " + id_ + " block " + std::to_string(block) +
                                  ": undecodable map entry; run fsck");
      }
      blocks.push_back(block);
      ids.push_back(ChunkRef{m.id, m.hint});
      return Status::Ok();
    }));
    ZeroUnbacked(offset, len, bs, blocks, out);
    auto fetch = [&](size_t from, size_t to) -> Status {
      std::vector<ChunkRef> part(ids.begin() + from, ids.begin() + to);
      return impl_->chunks->ReadMany(part, "volume " + id_, [&](size_t i, std::string_view chunk) -> Status {
        const uint64_t block = blocks[from + i];
        if (chunk.size() != bs) {
          return Status::Corruption("volume " + id_ + " block " + std::to_string(block) +
                                    ": chunk size " + std::to_string(chunk.size()) + " != block size");
        }
        uint64_t bstart = block * bs;
        uint64_t lo = std::max<uint64_t>(bstart, offset);
        uint64_t hi = std::min<uint64_t>(bstart + bs, offset + len);
        std::memcpy(out + (lo - offset), chunk.data() + (lo - bstart), hi - lo);
        return Status::Ok();
      });
    };
    // Large reads fetch and verify in two halves on two threads, when a helper is idle.
    constexpr size_t kSplit = 64;
    if (ids.size() < kSplit) return fetch(0, ids.size());
    const size_t mid = ids.size() / 2;
    Status second;
    std::future<void> helped;
    if (!impl_->read_helpers.TryRun([&] { second = fetch(mid, ids.size()); }, &helped)) {
      return fetch(0, ids.size());
    }
    Status first = fetch(0, mid);
    helped.wait();
    RETURN_IF_ERROR(first);
    return second;
  }

  Status Write(uint64_t offset, const char* data, size_t len) override {
    if (read_only_) return Status::FailedPrecondition("volume " + id_ + " is open read-only");
    std::unique_lock l(st_->mu);
    RETURN_IF_ERROR(Check(offset, len));
    if (len == 0) return Status::Ok();
    const uint64_t bs = st_->rec.info.block_size;
    const uint64_t b0 = offset / bs, b1 = (offset + len + bs - 1) / bs;
    const uint64_t head = st_->chain.front();
    const bool has_parent = st_->chain.size() > 1;

    // Current head entries of the range (to drop their references).
    std::map<uint64_t, format::MapValue> old_head;
    RETURN_IF_ERROR(impl_->ResolveRange({head}, b0, b1, [&](uint64_t b, std::string_view v) {
      old_head.emplace(b, format::DecodeMapValue(v));
      return Status::Ok();
    }));

    std::shared_lock sweep(impl_->chunks->sweep_lock());
    Catalog& catalog = impl_->catalog();
    std::unique_ptr<Batch> batch = impl_->backend->NewBatch();
    Placement place;  // the write's new chunks sit next to each other
    std::string block(bs, '\0');
    for (uint64_t b = b0; b < b1; ++b) {
      uint64_t bstart = b * bs;
      uint64_t from = std::max<uint64_t>(bstart, offset);
      uint64_t to = std::min<uint64_t>(bstart + bs, offset + len);
      const char* content;
      if (to - from == bs) {
        content = data + (from - offset);
      } else {
        // Partial block: read-modify-write through the chain.
        RETURN_IF_ERROR(ReadBlockLocked(b, block.data()));
        std::memcpy(block.data() + (from - bstart), data + (from - offset), to - from);
        content = block.data();
      }
      auto old = old_head.find(b);
      const bool had_chunk = old != old_head.end() && old->second.is_chunk();
      if (IsAllZero(content, bs)) {
        if (had_chunk) impl_->chunks->DropRef(batch.get(), old->second.id);
        if (has_parent) {
          if (old == old_head.end() || had_chunk) catalog.PutMap(batch.get(), head, b, "");
        } else if (old != old_head.end()) {
          catalog.DeleteMap(batch.get(), head, b);
        }
        continue;
      }
      ChunkId id = Sha256(content, bs);
      if (had_chunk && old->second.id == id) continue;
      ASSIGN_OR_RETURN(uint64_t hint, impl_->chunks->Locate(id));
      if (hint != 0) {
        impl_->chunks->AddRef(batch.get(), id);
      } else {
        if (place.next == place.end) {
          ASSIGN_OR_RETURN(place, impl_->backend->bytes().Reserve(b1 - b));
        }
        ASSIGN_OR_RETURN(hint, impl_->chunks->AddRefWithBytes(batch.get(), id,
                                                              std::string_view(content, bs), &place));
      }
      if (had_chunk) impl_->chunks->DropRef(batch.get(), old->second.id);
      catalog.PutMap(batch.get(), head, b, format::MapValueOf(id, hint).view());
    }
    if (batch->Count() == 0) return Status::Ok();
    return impl_->backend->Commit(batch.get(), Durability::kNoSync, "volume " + id_ + ": write");
  }

  Status Flush() override {
    {
      std::shared_lock l(st_->mu);
      if (st_->deleted) return Status::NotFound("volume " + id_ + " was deleted");
    }
    return impl_->backend->Sync();
  }

 private:
  // REQUIRES: st_->mu held.
  Status Check(uint64_t offset, size_t len) const {
    if (st_->deleted) return Status::NotFound("volume " + id_ + " was deleted");
    uint64_t size = st_->rec.info.size_bytes;
    if (offset > size || len > size - offset) {
      return Status::OutOfRange("volume " + id_ + ": range [" + std::to_string(offset) + ", +" +
                                std::to_string(len) + ") is past the end (" + std::to_string(size) +
                                " bytes)");
    }
    return Status::Ok();
  }

  // Zeroes the bytes of [offset, offset+len) that no block of `blocks` covers (`out`
  // holds the range); the covered ones are about to be copied from their chunks.
  static void ZeroUnbacked(uint64_t offset, size_t len, uint64_t bs,
                           const std::vector<uint64_t>& blocks, char* out) {
    std::vector<uint64_t> sorted;
    const std::vector<uint64_t>* mapped = &blocks;
    if (!std::is_sorted(blocks.begin(), blocks.end())) {
      sorted = blocks;
      std::sort(sorted.begin(), sorted.end());
      mapped = &sorted;
    }
    const uint64_t end = offset + len;
    uint64_t cur = offset;  // bytes before it are covered or zeroed
    for (uint64_t b : *mapped) {
      const uint64_t lo = std::max<uint64_t>(b * bs, offset);
      if (lo > cur) std::memset(out + (cur - offset), 0, lo - cur);
      cur = std::max<uint64_t>(cur, std::min<uint64_t>(b * bs + bs, end));
    }
    if (cur < end) std::memset(out + (cur - offset), 0, end - cur);
  }

  // REQUIRES: st_->mu held. Reads one whole block through the chain.
  Status ReadBlockLocked(uint64_t b, char* out) {
    const uint32_t bs = st_->rec.info.block_size;
    std::memset(out, 0, bs);
    std::string chunk;
    return impl_->ResolveRange(st_->chain, b, b + 1, [&](uint64_t, std::string_view v) -> Status {
      const format::MapValue m = format::DecodeMapValue(v);
      if (m.kind == format::MapValue::kZero) return Status::Ok();
      if (!m.is_chunk()) {
        return Status::Corruption("volume " + id_ + " block " + std::to_string(b) +
                                  ": undecodable map entry; run fsck");
      }
      RETURN_IF_ERROR(impl_->chunks->Read(m.id, &chunk, "volume " + id_ + " block " + std::to_string(b)));
      std::memcpy(out, chunk.data(), std::min<size_t>(bs, chunk.size()));
      return Status::Ok();
    });
  }

  StoreImpl* impl_;
  std::shared_ptr<VolumeState> st_;
  bool read_only_;
  std::string id_;
};

}  // namespace

Result<std::shared_ptr<VolumeState>> StoreImpl::AcquireState(const std::string& id) {
  std::lock_guard lock(catalog_mu);
  auto st = OpenState(id);
  if (!st) {
    ASSIGN_OR_RETURN(auto rec, Load<format::VolumeRecord>(id));
    if (!rec) return Status::NotFound("volume " + id + " not found");
    st = std::make_shared<VolumeState>();
    st->rec = *rec;
    ASSIGN_OR_RETURN(st->chain, LoadChain(rec->head));
    open_volumes[id] = st;
  }
  st->handles.fetch_add(1);
  return st;
}

void StoreImpl::ReleaseState(const std::shared_ptr<VolumeState>& st) { st->handles.fetch_sub(1); }

std::shared_ptr<Volume> MakeVolumeHandle(StoreImpl* impl, std::shared_ptr<VolumeState> st,
                                         bool read_only) {
  return std::make_shared<VolumeHandle>(impl, std::move(st), read_only);
}

Result<std::shared_ptr<Volume>> Store::OpenVolume(const std::string& volume_id, bool read_only) {
  ASSIGN_OR_RETURN(auto st, impl_->AcquireState(volume_id));
  return MakeVolumeHandle(impl_.get(), std::move(st), read_only);
}

Status StoreImpl::FlattenIfDeep(const std::string& id, uint32_t depth_after_next) {
  if (depth_after_next <= options.max_chain_depth) return Status::Ok();
  return FlattenVolume(id);
}

// Copies every ancestor's entries that the head does not override into the head, in
// bounded batches under the volume's lock, then cuts the head loose from its parent.
// Each batch leaves the volume's contents unchanged, so a crash at any point is safe.
Status StoreImpl::FlattenVolume(const std::string& id) {
  ASSIGN_OR_RETURN(auto st, AcquireState(id));
  struct Release {
    StoreImpl* s;
    std::shared_ptr<VolumeState> st;
    ~Release() { s->ReleaseState(st); }
  } release{this, st};

  std::vector<uint64_t> chain;
  uint64_t head;
  {
    std::shared_lock l(st->mu);
    chain = st->chain;
    head = chain.front();
  }
  if (chain.size() <= 1) return Status::Ok();
  constexpr size_t kBatch = 4096;
  for (size_t i = 1; i < chain.size(); ++i) {
    uint64_t next = 0;  // the first block of chain[i] not looked at yet
    for (;;) {
      std::unique_lock l(st->mu);
      if (st->deleted) return Status::NotFound("volume " + id + " was deleted");
      if (st->chain.front() != head) {
        return Status::Aborted("flatten of volume " + id + " was interrupted by a snapshot or clone");
      }
      std::shared_lock sweep(chunks->sweep_lock());
      auto cursor = catalog().NewMapCursor(chain[i], next, UINT64_MAX);
      std::unique_ptr<Batch> batch = backend->NewBatch();
      for (size_t n = 0; cursor->Valid() && n < kBatch; cursor->Next(), ++n) {
        ASSIGN_OR_RETURN(auto mine, catalog().GetMap(head, cursor->block()));
        if (mine) continue;  // the head (or a layer copied before) overrides it
        const format::MapValue m = format::DecodeMapValue(cursor->value());
        if (m.is_chunk()) chunks->AddRef(batch.get(), m.id);
        catalog().PutMap(batch.get(), head, cursor->block(), cursor->value());
      }
      RETURN_IF_ERROR(cursor->status().Annotate("flatten volume " + id));
      const bool done = !cursor->Valid();
      if (!done) next = cursor->block();
      if (batch->Count() > 0) {
        RETURN_IF_ERROR(backend->Commit(batch.get(), Durability::kNoSync, "flatten volume " + id));
      }
      if (done) break;
    }
  }
  // Cut the head loose: its parent loses a reference (and may die with its ancestors).
  std::lock_guard lock(catalog_mu);
  std::unique_lock l(st->mu);
  if (st->chain.front() != head) {
    return Status::Aborted("flatten of volume " + id + " was interrupted by a snapshot or clone");
  }
  CatalogTxn txn(*backend);
  ASSIGN_OR_RETURN(LayerRecord * h, TxnLayer(&txn, head));
  uint64_t parent = h->parent;
  h->parent = 0;
  RETURN_IF_ERROR(UnrefLayer(&txn, parent));
  RETURN_IF_ERROR(Commit(&txn, "flatten volume " + id));
  st->chain = {head};
  return Status::Ok();
}

Status Store::FlattenVolume(const std::string& volume_id) { return impl_->FlattenVolume(volume_id); }

Result<VolumeStats> Store::GetVolumeStats(const std::string& volume_id) {
  StoreImpl& s = *impl_;
  ASSIGN_OR_RETURN(auto rec, s.Load<format::VolumeRecord>(volume_id));
  if (!rec) return Status::NotFound("volume " + volume_id + " not found");
  ASSIGN_OR_RETURN(auto chain, s.LoadChain(rec->head));
  VolumeStats st;
  st.size_bytes = rec->info.size_bytes;
  st.block_size = rec->info.block_size;
  st.chain_depth = static_cast<uint32_t>(chain.size());
  const uint64_t nblocks = rec->info.size_bytes / rec->info.block_size;
  RETURN_IF_ERROR(s.ResolveRange({rec->head}, 0, nblocks, [&](uint64_t, std::string_view v) {
    if (format::DecodeMapValue(v).is_chunk()) ++st.head_blocks;
    return Status::Ok();
  }));
  RETURN_IF_ERROR(s.ResolveRange(chain, 0, nblocks, [&](uint64_t, std::string_view v) {
    if (format::DecodeMapValue(v).is_chunk()) ++st.mapped_blocks;
    return Status::Ok();
  }));
  // Unique: chunks referenced once, in the layers only this volume reaches (its head and
  // the ancestors up to the first layer shared with a snapshot or another volume): what
  // deleting the volume would free.
  for (uint64_t layer : chain) {
    ASSIGN_OR_RETURN(LayerRecord l, s.LoadLayer(layer));
    if (l.refs != 1) break;
    RETURN_IF_ERROR(s.ResolveRange({layer}, 0, UINT64_MAX, [&](uint64_t, std::string_view v) -> Status {
      const format::MapValue m = format::DecodeMapValue(v);
      if (!m.is_chunk()) return Status::Ok();
      ASSIGN_OR_RETURN(int64_t count, s.chunks->RefCount(m.id));
      if (count == 1) st.unique_bytes += l.block_size;
      return Status::Ok();
    }));
  }
  return st;
}

}  // namespace stellarium
