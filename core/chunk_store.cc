#include "core/chunk_store.h"

#include <algorithm>
#include <mutex>

namespace stellarium {
namespace {

Status Missing(const ChunkId& id, const std::string& context) {
  return Status::Corruption(context + ": chunk " + ToHex(id) + " is missing from the store");
}

}  // namespace

Status ChunkStore::Read(const ChunkId& id, std::string* out, const std::string& context) {
  return ReadMany({ChunkRef{id, 0}}, context, [&](size_t, std::string_view data) {
    out->assign(data);
    return Status::Ok();
  });
}

Status ChunkStore::ReadMany(const std::vector<ChunkRef>& refs, const std::string& context,
                            const std::function<Status(size_t, std::string_view)>& fn) {
  const size_t n = refs.size();
  // 1. Straight to the hinted places, in locator order: chunks written together are
  //    read together. A miss or another chunk's bytes there sends the ref to step 2.
  std::vector<std::pair<uint64_t, size_t>> order;  // (locator, i)
  std::vector<size_t> unplaced;
  for (size_t i = 0; i < n; ++i) {
    if (refs[i].hint != 0)
      order.emplace_back(refs[i].hint, i);
    else
      unplaced.push_back(i);
  }
  RETURN_IF_ERROR(Fetch(&order, context, refs, [&](size_t i, std::string_view data, bool matches) {
    if (!data.empty() && matches) return fn(i, data);
    unplaced.push_back(i);
    return Status::Ok();
  }));
  if (unplaced.empty()) return Status::Ok();
  // 2. Where the index says the others are.
  std::vector<ChunkId> ids(unplaced.size());
  for (size_t k = 0; k < unplaced.size(); ++k) ids[k] = refs[unplaced[k]].id;
  std::vector<uint64_t> locators;
  RETURN_IF_ERROR(backend_->index().LocateMany(ids, &locators).Annotate(context));
  order.clear();
  for (size_t k = 0; k < unplaced.size(); ++k) {
    if (locators[k] == 0) return Missing(ids[k], context);
    order.emplace_back(locators[k], unplaced[k]);
  }
  return Fetch(&order, context, refs, [&](size_t i, std::string_view data, bool matches) {
    if (data.empty()) return Missing(refs[i].id, context);
    if (!matches) {
      return Status::Corruption(context + ": chunk " + ToHex(refs[i].id) +
                                " does not match its SHA-256 (corrupted on disk); run fsck");
    }
    return fn(i, data);
  });
}

Status ChunkStore::Fetch(std::vector<std::pair<uint64_t, size_t>>* order,
                         const std::string& context, const std::vector<ChunkRef>& refs,
                         const std::function<Status(size_t, std::string_view, bool)>& fn) {
  if (order->empty()) return Status::Ok();
  std::sort(order->begin(), order->end());
  std::vector<uint64_t> locators(order->size());
  for (size_t k = 0; k < order->size(); ++k) locators[k] = (*order)[k].first;
  return backend_->bytes().GetMany(
      locators, context, [&](std::span<const std::string_view> found) -> Status {
        std::vector<ChunkId> digests(found.size());
        Sha256Many(found.data(), found.size(), digests.data());
        for (size_t k = 0; k < found.size(); ++k) {
          const size_t i = (*order)[k].second;
          RETURN_IF_ERROR(fn(i, found[k], !found[k].empty() && digests[k] == refs[i].id));
        }
        return Status::Ok();
      });
}

Result<uint64_t> ChunkStore::Locate(const ChunkId& id) {
  std::vector<uint64_t> locators;
  RETURN_IF_ERROR(backend_->index().LocateMany({id}, &locators));
  return locators[0];
}

Result<int64_t> ChunkStore::RefCount(const ChunkId& id) {
  ASSIGN_OR_RETURN(auto entry, backend_->index().Get(id));
  return entry ? entry->refs : 0;
}

uint64_t ChunkStore::AddRef(Batch* batch, const ChunkId& id, std::string_view data,
                            Placement* placement) {
  if (data.empty()) {
    backend_->index().AddRefs(batch, id, 1, 0);
    return 0;
  }
  const uint64_t loc = placement != nullptr && placement->next < placement->end
                           ? placement->next++
                           : backend_->bytes().Reserve(1).next;
  backend_->bytes().Put(batch, loc, data);
  backend_->index().AddRefs(batch, id, 1, loc);
  return loc;
}

Status ChunkStore::CommitIfFull(Batch* batch, const std::string& what) {
  if (batch->Count() < 8192) return Status::Ok();
  return backend_->Commit(batch, Durability::kNoSync, what);
}

Result<SweepResult> ChunkStore::Sweep() {
  std::unique_lock lock(sweep_lock_);
  SweepResult r;
  // 1. Index entries whose count is zero or below go; the others' locators are live
  //    (a bit per locator: locators are handed out densely).
  std::vector<bool> live;
  std::unique_ptr<Batch> batch = backend_->NewBatch();
  RETURN_IF_ERROR(backend_->index().ForEach([&](const ChunkId& id, const IndexEntry& e) {
    if (e.refs > 0) {
      if (e.locator >= live.size()) live.resize(std::max<uint64_t>(e.locator + 1, 2 * live.size()));
      live[e.locator] = true;
      return Status::Ok();
    }
    backend_->index().Erase(batch.get(), id);
    ++r.chunks_deleted;
    return CommitIfFull(batch.get(), "gc: delete chunks");
  }).Annotate("gc"));
  RETURN_IF_ERROR(backend_->Commit(batch.get(), Durability::kSync, "gc: delete chunks"));
  // 2. Bytes no index entry names: the deleted chunks' and racing writers' copies.
  RETURN_IF_ERROR(backend_->bytes().ForEach([&](uint64_t loc, size_t size) {
    if (loc < live.size() && live[loc]) return Status::Ok();
    r.bytes_freed += size;
    backend_->bytes().Delete(batch.get(), loc);
    return CommitIfFull(batch.get(), "gc: delete chunk bytes");
  }).Annotate("gc"));
  RETURN_IF_ERROR(backend_->Commit(batch.get(), Durability::kSync, "gc: delete chunk bytes"));
  return r;
}

// Index entries are taken in groups, and each group's bytes read with one GetMany; a
// group that cannot be read is read again chunk by chunk, so one bad table block costs
// only the chunks in it.
Status ChunkStore::ForEach(const std::function<Status(const ChunkId&, std::string_view, int64_t,
                                                      const Status&)>& fn) {
  constexpr size_t kGroup = 1024;
  std::vector<std::pair<ChunkId, IndexEntry>> group;
  Status stop;  // what fn returned when it asked to stop
  // Reads the bytes of group[from, to) and calls fn for each, in group order.
  auto read = [&](size_t from, size_t to) -> Status {
    std::vector<std::pair<uint64_t, size_t>> order;  // (locator, position in group)
    for (size_t k = from; k < to; ++k) {
      if (group[k].second.locator != 0) order.emplace_back(group[k].second.locator, k);
    }
    std::sort(order.begin(), order.end());
    std::vector<uint64_t> locators(order.size());
    for (size_t k = 0; k < order.size(); ++k) locators[k] = order[k].first;
    return backend_->bytes().GetMany(
        locators, "scan chunks", [&](std::span<const std::string_view> found) -> Status {
          std::vector<std::string_view> bytes(to - from);
          for (size_t k = 0; k < order.size(); ++k) bytes[order[k].second - from] = found[k];
          for (size_t k = from; k < to && stop.ok(); ++k) {
            stop = fn(group[k].first, bytes[k - from], group[k].second.refs, Status::Ok());
          }
          return stop;
        });
  };
  auto flush = [&]() -> Status {
    Status whole = read(0, group.size());
    for (size_t k = 0; !whole.ok() && stop.ok() && k < group.size(); ++k) {
      Status one = read(k, k + 1);
      if (!one.ok() && stop.ok()) stop = fn(group[k].first, {}, group[k].second.refs, one);
    }
    group.clear();
    return stop;
  };
  RETURN_IF_ERROR(backend_->index().ForEach([&](const ChunkId& id, const IndexEntry& e) {
    group.emplace_back(id, e);
    return group.size() < kGroup ? Status::Ok() : flush();
  }));
  return group.empty() ? Status::Ok() : flush();
}

Result<ChunkTotals> ChunkStore::Totals() {
  ChunkTotals t;
  RETURN_IF_ERROR(backend_->index().ForEach([&](const ChunkId&, const IndexEntry&) {
    ++t.chunks;
    return Status::Ok();
  }));
  RETURN_IF_ERROR(backend_->bytes().ForEach([&](uint64_t, size_t size) {
    t.bytes += size;
    return Status::Ok();
  }));
  return t;
}

}  // namespace stellarium
