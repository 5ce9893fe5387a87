// The RADOS store's ChunkBytes: chunks packed into pack objects (docs/FORMAT.md, "The
// RADOS store").
#include <lz4.h>

#include <algorithm>
#include <cstring>
#include <chrono>
#include <set>

#include "core/rados/rados_seams.h"

namespace stellarium {

using format::rados::Slot;

namespace {

constexpr uint64_t kPackRange = 256;      // pack numbers taken from the catalog at a time
constexpr uint64_t kReadGap = 64 << 10;   // ranges closer than this are read as one
constexpr size_t kReadAheadRun = 64;      // misses in one pack that make a sequential reader
constexpr uint64_t kReadAheadPacks = 3;   // packs a sequential reader's read-ahead keeps ahead
constexpr unsigned kReadAheadThreads = 2;  // ... fetched this many at once

int64_t Now() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// A chunk as stored, at `at` (room for LZ4_compressBound bytes): LZ4 when that saves an
// eighth or more, else as is (LZ4 rather than zstd: beside an OSD on few cores the import
// is short of CPU). Returns the slot, offset left to the caller.
Slot Compress(std::string_view raw, char* at) {
  Slot slot;
  slot.raw = static_cast<uint32_t>(raw.size());
  slot.present = true;
  const int bound = LZ4_compressBound(static_cast<int>(raw.size()));
  const int n = LZ4_compress_default(raw.data(), at, static_cast<int>(raw.size()), bound);
  if (n > 0 && static_cast<size_t>(n) < raw.size() - raw.size() / 8) {
    slot.codec = 1;
    slot.stored = static_cast<uint32_t>(n);
  } else {
    std::memcpy(at, raw.data(), raw.size());
    slot.codec = 0;
    slot.stored = slot.raw;
  }
  return slot;
}

// The chunks compressed back to back into one buffer the op takes as is (no copy);
// slots[slot] gets each one's place, `base` added to its offset.
librados::bufferlist Pack(const std::vector<std::pair<uint32_t, std::string_view>>& chunks,
                          uint64_t base, std::vector<Slot>* slots) {
  size_t room = 0;
  for (const auto& [slot, raw] : chunks) room += LZ4_compressBound(static_cast<int>(raw.size()));
  ceph::bufferptr bp(static_cast<unsigned>(room));
  uint32_t used = 0;
  for (const auto& [slot, raw] : chunks) {
    if (slots->size() <= slot) slots->resize(slot + 1);
    Slot s = Compress(raw, bp.c_str() + used);
    s.offset = static_cast<uint32_t>(base + used);
    (*slots)[slot] = s;
    used += s.stored;
  }
  bp.set_length(used);
  librados::bufferlist bl;
  bl.push_back(std::move(bp));
  return bl;
}

// Decompresses a slot's stored bytes into `raw` (room for slot.raw bytes).
Status Decompress(const Slot& slot, std::string_view stored, char* raw, const std::string& what) {
  if (slot.codec == 0) {
    if (stored.size() != slot.raw) return Status::Corruption(what + ": stored chunk has the wrong size");
    std::memcpy(raw, stored.data(), stored.size());
    return Status::Ok();
  }
  const int n = LZ4_decompress_safe(stored.data(), raw, static_cast<int>(stored.size()),
                                    static_cast<int>(slot.raw));
  if (n < 0 || static_cast<uint32_t>(n) != slot.raw) {
    // What the pack holds there is not what was written: corruption, like a bad hash.
    return Status::Corruption(what + ": stored bytes do not decompress (corrupted pack)");
  }
  return Status::Ok();
}

// The slot groups of `slots` touched by slots [first, last], encoded.
std::map<std::string, librados::bufferlist> Groups(const std::vector<Slot>& slots, uint32_t first,
                                                   uint32_t last) {
  std::map<std::string, librados::bufferlist> out;
  for (uint32_t g = first / format::rados::kSlotGroup; g <= last / format::rados::kSlotGroup; ++g) {
    const size_t from = size_t{g} * format::rados::kSlotGroup;
    const size_t to = std::min(slots.size(), from + format::rados::kSlotGroup);
    if (from >= to) continue;
    std::vector<Slot> part(slots.begin() + from, slots.begin() + to);
    out[format::rados::SlotGroupKey(g)] = Bl(format::rados::EncodeSlotGroup(part));
  }
  return out;
}

// The pack's "written" stamp: set by every write, so gc keeps a pack for a writer
// window after its latest bytes (whose index entries may not be written yet).
librados::bufferlist Written() {
  return Bl(format::rados::EncodeI64(Now()));
}

}  // namespace

RadosChunkBytes::RadosChunkBytes(RadosIo* io, std::unique_ptr<ChunkCache> cache,
                                 uint64_t slot_cache_bytes, int64_t idle_ns)
    : io_(io),
      cache_(std::move(cache)),
      idle_(idle_ns),
      slot_cache_(slot_cache_bytes),
      read_ahead_([this](uint64_t pack) { (void)FetchFromPack(pack, {}, true, nullptr, "read-ahead"); },
                  kReadAheadPacks, kReadAheadThreads) {}

Result<uint64_t> RadosChunkBytes::NewPackNumber() {
  // REQUIRES: mu_ held.
  if (next_pack_ < pack_range_end_) return next_pack_++;
  const std::string key = format::rados::CatalogKey('m', format::rados::kMetaNextPack.substr(1));
  const std::string oid(format::rados::kCatalogObject);
  for (;;) {
    ASSIGN_OR_RETURN(auto vals, io_->OmapGet(oid, {key}, "catalog: next pack"));
    const std::string old = vals.count(key) ? vals[key] : "";
    const uint64_t first = old.empty() ? 1 : format::DecodeU64(old);
    librados::ObjectWriteOperation op;
    int cmp = 0;
    op.omap_cmp({{key, {Bl(old), LIBRADOS_CMPXATTR_OP_EQ}}}, &cmp);
    op.omap_set({{key, Bl(format::EncodeU64(first + kPackRange))}});
    Status st = io_->Operate(oid, &op, "catalog: take pack numbers");
    if (st.code() == StatusCode::kAborted) continue;  // another client took them first
    RETURN_IF_ERROR(st);
    next_pack_ = first + 1;
    pack_range_end_ = first + kPackRange;
    return first;
  }
}

Result<Placement> RadosChunkBytes::Reserve(size_t n) {
  std::lock_guard l(mu_);
  Placement p;
  if (n == 0) return p;
  if (n >= kOwnPackReservation) {
    ASSIGN_OR_RETURN(uint64_t pack, NewPackNumber());
    p.next = format::rados::Locator(pack, 0);
    p.end = p.next + std::min<size_t>(n, size_t{1} << format::rados::kSlotBits);
    return p;
  }
  const auto now = std::chrono::steady_clock::now();
  OpenPack* open = current_shared_ ? &shared_[current_shared_] : nullptr;
  if (open == nullptr || open->size >= kPackBytes || now - open->touched > idle_ ||
      open->next_slot + n > (size_t{1} << format::rados::kSlotBits)) {
    ASSIGN_OR_RETURN(uint64_t pack, NewPackNumber());
    // The old pack is sealed: late commits of slots reserved in it reload it.
    if (current_shared_ != 0) shared_.erase(current_shared_);
    current_shared_ = pack;
    open = &shared_[pack];
    open->pack = pack;
    open->loaded = true;  // new: nothing in the cluster yet
    unwritten_.insert(pack);
  }
  p.next = format::rados::Locator(open->pack, open->next_slot);
  open->touched = now;
  open->next_slot += static_cast<uint32_t>(n);
  p.end = format::rados::Locator(open->pack, open->next_slot);
  return p;
}

void RadosChunkBytes::Put(Batch* batch, uint64_t locator, std::string_view bytes) {
  RadosChanges& c = ChangesOf(batch);
  c.owned.emplace_back(bytes);
  c.bytes[locator] = c.owned.back();
  ++c.count;
}

// A bulk batch keeps the view: the caller's bytes outlive the ingest (chunk_bytes.h).
Status RadosChunkBytes::Put(BulkBatch* batch, uint64_t locator, std::string_view bytes) {
  RadosChanges& c = ChangesOf(batch);
  c.bytes[locator] = bytes;
  ++c.count;
  return Status::Ok();
}

// Bytes are reclaimed pack by pack by the collector (RadosBackend::SweepUnreferenced).
void RadosChunkBytes::Delete(Batch*, uint64_t) {}

std::unique_ptr<librados::ObjectWriteOperation> RadosChunkBytes::WholePack(
    const std::vector<std::pair<uint32_t, std::string_view>>& chunks) {
  std::vector<Slot> slots(chunks.back().first + 1);
  librados::bufferlist bl = Pack(chunks, 0, &slots);
  auto op = std::make_unique<librados::ObjectWriteOperation>();
  op->create(true);  // a pack number is never used twice
  op->write_full(bl);
  op->omap_set(Groups(slots, 0, static_cast<uint32_t>(slots.size() - 1)));
  op->setxattr(format::rados::kPackWrittenXattr, Written());
  return op;
}

Status RadosChunkBytes::AppendToShared(
    uint64_t pack, const std::vector<std::pair<uint32_t, std::string_view>>& chunks,
    const std::string& what) {
  // Appends to one pack are serialized: each rewrites the slot groups it touches.
  std::lock_guard l(mu_);
  OpenPack& open = shared_[pack];
  if (!open.loaded) RETURN_IF_ERROR(Reload(pack, &open));
  librados::ObjectWriteOperation op;
  const bool first_write = unwritten_.count(pack) > 0;
  if (first_write) {
    op.create(false);
  } else {
    op.assert_exists();  // gc removed it (all its chunks died): the write fails, not revives it
  }
  op.setxattr(format::rados::kPackWrittenXattr, Written());
  librados::bufferlist bl = Pack(chunks, open.size, &open.slots);
  uint32_t first = UINT32_MAX, last = 0;
  for (const auto& [slot, raw] : chunks) {
    first = std::min(first, slot);
    last = std::max(last, slot);
  }
  const uint64_t appended = bl.length();
  op.write(open.size, bl);
  op.omap_set(Groups(open.slots, first, last));
  RETURN_IF_ERROR(io_->Operate(format::rados::PackObject(pack), &op, what));
  open.size += appended;
  if (first_write) unwritten_.erase(pack);
  open.touched = std::chrono::steady_clock::now();
  slot_cache_.Remove(pack);
  if (pack != current_shared_) shared_.erase(pack);  // sealed: reloaded if needed again
  return Status::Ok();
}

// A sealed shared pack that a late commit appends to: its slots and size as stored.
Status RadosChunkBytes::Reload(uint64_t pack, OpenPack* open) {
  open->pack = pack;
  slot_cache_.Remove(pack);
  ASSIGN_OR_RETURN(auto slots, Slots(pack));
  open->slots = *slots;
  open->size = 0;
  for (const Slot& s : open->slots) {
    if (s.present) open->size = std::max<uint64_t>(open->size, uint64_t{s.offset} + s.stored);
  }
  open->loaded = true;
  return Status::Ok();
}

Status RadosChunkBytes::WritePacks(const std::map<uint64_t, std::string_view>& bytes,
                                   bool whole_packs, const std::string& what) {
  std::map<uint64_t, std::vector<std::pair<uint32_t, std::string_view>>> by_pack;
  for (const auto& [loc, raw] : bytes) {
    by_pack[format::rados::PackOf(loc)].emplace_back(format::rados::SlotOf(loc), raw);
  }
  AioBatch whole(io_);
  for (auto& [pack, chunks] : by_pack) {
    if (!whole_packs) {
      RETURN_IF_ERROR(AppendToShared(pack, chunks, what));
    } else {
      whole.Write(format::rados::PackObject(pack), WholePack(chunks),
                  what + ": write pack " + std::to_string(pack));
    }
  }
  return whole.Wait();
}

Result<std::shared_ptr<const std::vector<Slot>>> RadosChunkBytes::Slots(uint64_t pack) {
  if (auto cached = slot_cache_.Get(pack)) return cached;
  auto slots = std::make_shared<std::vector<Slot>>();
  RETURN_IF_ERROR(io_->OmapScan(
      format::rados::PackObject(pack), "", "s",
      [&](const std::string& key, const std::string& value) -> Result<bool> {
        uint32_t group = 0;
        for (size_t i = 1; i < key.size() && i < 5; ++i) group = group << 8 | static_cast<uint8_t>(key[i]);
        std::vector<Slot> part;
        if (key.size() != 5 || !format::rados::DecodeSlotGroup(value, &part)) {
          return Status::Corruption("pack " + std::to_string(pack) + ": undecodable slot table");
        }
        const size_t from = size_t{group} * format::rados::kSlotGroup;
        if (slots->size() < from + part.size()) slots->resize(from + part.size());
        std::copy(part.begin(), part.end(), slots->begin() + from);
        return true;
      },
      "pack " + std::to_string(pack) + ": slot table"));
  slot_cache_.Put(pack, slots, slots->size() * sizeof(Slot) + 64);
  return std::shared_ptr<const std::vector<Slot>>(slots);
}

Status RadosChunkBytes::FetchFromPack(uint64_t pack,
                                      const std::vector<std::pair<uint64_t, size_t>>& wanted,
                                      bool read_ahead, Fetched* out, const std::string& context) {
  ASSIGN_OR_RETURN(auto slots, Slots(pack));
  uint32_t top = 0;
  for (const auto& [loc, k] : wanted) top = std::max(top, format::rados::SlotOf(loc));
  if (top >= slots->size() || !(*slots)[top].present) {
    slot_cache_.Remove(pack);  // a pack still being appended to by another client
    ASSIGN_OR_RETURN(slots, Slots(pack));
  }
  // The byte span to read: the wanted slots (none: the whole pack), or for a sequential
  // reader everything from the first wanted slot to the pack's end.
  uint64_t lo = wanted.empty() ? 0 : UINT64_MAX, hi = 0;
  for (const auto& [loc, k] : wanted) {
    const uint32_t s = format::rados::SlotOf(loc);
    if (s >= slots->size() || !(*slots)[s].present) continue;
    lo = std::min<uint64_t>(lo, (*slots)[s].offset);
    hi = std::max<uint64_t>(hi, uint64_t{(*slots)[s].offset} + (*slots)[s].stored);
  }
  if (read_ahead || wanted.empty()) {
    for (const Slot& s : *slots) {
      if (s.present && s.offset >= lo) hi = std::max<uint64_t>(hi, uint64_t{s.offset} + s.stored);
    }
  }
  if (lo >= hi) return Status::Ok();  // nothing stored there: the callers' "missing"
  const std::string what = context + ": pack " + std::to_string(pack);
  ASSIGN_OR_RETURN(std::string span, io_->Read(format::rados::PackObject(pack), lo, hi - lo, what));
  // Every chunk read, decompressed back to back into one buffer.
  std::vector<uint32_t> in_span;
  uint64_t raw_bytes = 0;
  for (uint32_t s = 0; s < slots->size(); ++s) {
    const Slot& slot = (*slots)[s];
    if (!slot.present || slot.offset < lo || uint64_t{slot.offset} + slot.stored > lo + span.size()) continue;
    in_span.push_back(s);
    raw_bytes += slot.raw;
  }
  auto arena = std::make_shared<std::string>(raw_bytes, '\0');
  std::map<uint32_t, std::string_view> raws;
  std::vector<std::pair<uint64_t, std::string_view>> cached;
  uint64_t at = 0;
  for (uint32_t s : in_span) {
    const Slot& slot = (*slots)[s];
    const std::string_view raw(arena->data() + at, slot.raw);
    // A slot that does not decompress reads as nothing stored: its chunk then fails its
    // SHA-256 check or is missing, a corruption error naming it.
    if (!Decompress(slot, std::string_view(span).substr(slot.offset - lo, slot.stored),
                    arena->data() + at, what).ok()) {
      continue;
    }
    at += slot.raw;
    raws[s] = raw;
    cached.emplace_back(format::rados::Locator(pack, s), raw);
  }
  cache_->PutMany(cached);
  if (out != nullptr) {
    for (const auto& [loc, k] : wanted) {
      auto r = raws.find(format::rados::SlotOf(loc));
      if (r != raws.end()) out->views[k] = r->second;
    }
    out->arenas.push_back(std::move(arena));
  }
  return Status::Ok();
}

Status RadosChunkBytes::GetMany(const std::vector<uint64_t>& locators, const std::string& context,
                                const std::function<Status(std::span<const std::string_view>)>& fn) {
  std::vector<ChunkCache::Hit> hits(locators.size());
  Fetched fetched;
  fetched.views.resize(locators.size());
  std::map<uint64_t, std::vector<std::pair<uint64_t, size_t>>> misses;  // by pack
  std::set<uint64_t> touched;  // packs the reader is in
  for (size_t k = 0; k < locators.size(); ++k) {
    touched.insert(format::rados::PackOf(locators[k]));
    if (cache_->Get(locators[k], &hits[k])) {
      fetched.views[k] = hits[k].bytes;
    } else {
      misses[format::rados::PackOf(locators[k])].emplace_back(locators[k], k);
    }
  }
  for (auto& [pack, wanted] : misses) {
    // A pack the read-ahead is fetching: wait for it, then take what it cached.
    if (read_ahead_.WaitFor(pack)) {
      std::erase_if(wanted, [&](const std::pair<uint64_t, size_t>& w) {
        if (!cache_->Get(w.first, &hits[w.second])) return false;
        fetched.views[w.second] = hits[w.second].bytes;
        return true;
      });
      if (wanted.empty()) continue;
    }
    const bool sequential = wanted.size() >= kReadAheadRun;
    RETURN_IF_ERROR(FetchFromPack(pack, wanted, sequential, &fetched, context));
    if (sequential) read_ahead_.After(pack);
  }
  for (uint64_t pack : touched) read_ahead_.Touched(pack);
  return fn(fetched.views);
}

Status RadosChunkBytes::ForEach(const std::function<Status(uint64_t, size_t)>& fn) {
  std::vector<uint64_t> packs;
  RETURN_IF_ERROR(io_->List(std::string(format::rados::kPackObjectPrefix), [&](const std::string& oid) {
    uint64_t pack;
    if (format::rados::DecodePackObject(oid, &pack)) packs.push_back(pack);
    return Status::Ok();
  }));
  std::sort(packs.begin(), packs.end());
  for (uint64_t pack : packs) {
    ASSIGN_OR_RETURN(auto slots, Slots(pack));
    for (uint32_t s = 0; s < slots->size(); ++s) {
      if ((*slots)[s].present) RETURN_IF_ERROR(fn(format::rados::Locator(pack, s), (*slots)[s].raw));
    }
  }
  return Status::Ok();
}

}  // namespace stellarium
