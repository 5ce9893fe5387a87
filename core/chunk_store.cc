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
    if (!data.empty()) backend_->bytes().Forget(refs[i].hint);  // a bad cached copy goes
    unplaced.push_back(i);
    return Status::Ok();
  }));
  if (unplaced.empty()) return Status::Ok();
  // 2. Where the index says the others are (asked directly: a shared store's presence
  //    filter may not know chunks other clients stored since it was filled).
  std::vector<ChunkId> ids(unplaced.size());
  for (size_t k = 0; k < unplaced.size(); ++k) ids[k] = refs[unplaced[k]].id;
  std::vector<std::optional<IndexEntry>> entries;
  RETURN_IF_ERROR(backend_->index().GetMany(ids, &entries).Annotate(context));
  order.clear();
  for (size_t k = 0; k < unplaced.size(); ++k) {
    if (!entries[k] || entries[k]->locator == 0) return Missing(ids[k], context);
    order.emplace_back(entries[k]->locator, unplaced[k]);
  }
  return Fetch(&order, context, refs, [&](size_t i, std::string_view data, bool matches) {
    if (data.empty()) return Missing(refs[i].id, context);
    if (!matches) {
      // A node cache's copy is dropped: the next read tries the store itself.
      for (const auto& [loc, k] : order) {
        if (k == i) backend_->bytes().Forget(loc);
      }
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

void ChunkStore::AddRef(Batch* batch, const ChunkId& id) {
  backend_->index().AddRefs(batch, id, 1, 0);
}

Result<uint64_t> ChunkStore::AddRefWithBytes(Batch* batch, const ChunkId& id, std::string_view data,
                                             Placement* placement) {
  uint64_t loc;
  if (placement != nullptr && placement->next < placement->end) {
    loc = placement->next++;
  } else {
    ASSIGN_OR_RETURN(Placement one, backend_->bytes().Reserve(1));
    loc = one.next;
  }
  backend_->bytes().Put(batch, loc, data);
  backend_->index().AddRefs(batch, id, 1, loc);
  return loc;
}

void ChunkStore::DropRef(Batch* batch, const ChunkId& id) {
  backend_->index().AddRefs(batch, id, -1, 0);
  if (!backend_->index().counts_references()) return;  // only the mark can tell
  std::lock_guard lock(dropped_mu_);
  if (dropped_.size() < kMaxDropped) {
    dropped_.push_back(id);
  } else {
    dropped_overflow_ = true;
  }
}

std::vector<ChunkId> ChunkStore::TakeDropped(bool* overflowed) {
  std::vector<ChunkId> ids;
  {
    std::lock_guard lock(dropped_mu_);
    ids.swap(dropped_);
    *overflowed = dropped_overflow_;
    dropped_overflow_ = false;
  }
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  return ids;
}

bool ChunkStore::HasDropped() const {
  std::lock_guard lock(dropped_mu_);
  return !dropped_.empty() || dropped_overflow_;
}

Status ChunkStore::CommitIfFull(Batch* batch, const std::string& what, const Pace& pace,
                                std::chrono::steady_clock::time_point* started, bool* go) {
  if (batch->Count() < kSweepBatch) return Status::Ok();
  RETURN_IF_ERROR(backend_->Commit(batch, Durability::kNoSync, what));
  if (pace && !pace(std::chrono::steady_clock::now() - *started)) *go = false;
  *started = std::chrono::steady_clock::now();
  return Status::Ok();
}

void ChunkStore::Redrop(std::vector<ChunkId>::const_iterator from,
                        std::vector<ChunkId>::const_iterator to) {
  std::lock_guard lock(dropped_mu_);
  for (; from != to; ++from) {
    if (dropped_.size() >= kMaxDropped) {
      dropped_overflow_ = true;
      return;
    }
    dropped_.push_back(*from);
  }
}

Result<SweepResult> ChunkStore::SweepChunks(const std::vector<ChunkId>& ids, const Pace& pace,
                                            bool with_bytes, bool wait_for_imports) {
  SweepResult r;
  if (!backend_->index().counts_references()) {
    // Entries carry no counts there: every one would read as unreferenced.
    return Status::FailedPrecondition("gc: this store counts no references; chunks go by mark and sweep");
  }
  std::unique_ptr<Batch> batch = backend_->NewBatch();
  for (size_t from = 0; from < ids.size(); from += kSweepBatch) {
    const auto started = std::chrono::steady_clock::now();
    const size_t to = std::min(ids.size(), from + kSweepBatch);
    const std::vector<ChunkId> group(ids.begin() + from, ids.begin() + to);
    // No writer is between its "already stored?" and its commit now, and no import is
    // running: a count read here as zero stays zero until the batch is committed.
    if (!sweep_lock_.lock_without_imports(wait_for_imports)) {
      Redrop(ids.begin() + from, ids.end());
      r.postponed = true;
      return r;
    }
    std::unique_lock lock(sweep_lock_, std::adopt_lock);
    std::vector<std::optional<IndexEntry>> entries;
    RETURN_IF_ERROR(backend_->index().GetMany(group, &entries).Annotate("gc"));
    for (size_t k = 0; k < group.size(); ++k) {
      if (!entries[k] || entries[k]->refs > 0) continue;
      backend_->index().Erase(batch.get(), group[k]);
      if (with_bytes && entries[k]->locator != 0) {
        backend_->bytes().Delete(batch.get(), entries[k]->locator);
      }
      ++r.chunks_deleted;
    }
    RETURN_IF_ERROR(backend_->Commit(batch.get(), Durability::kSync, "gc: delete chunks"));
    lock.unlock();
    if (pace && !pace(std::chrono::steady_clock::now() - started)) break;
  }
  return r;
}

Result<SweepResult> ChunkStore::Sweep(const Pace& pace, bool wait_for_imports) {
  // With the lock held no import or write is under way: every locator below the fence
  // is either named by the index or garbage for good.
  SweepResult r;
  if (!sweep_lock_.lock_without_imports(wait_for_imports)) {
    r.postponed = true;
    return r;
  }
  Result<Placement> fence = backend_->bytes().Reserve(0);
  sweep_lock_.unlock();
  RETURN_IF_ERROR(fence.status().Annotate("gc"));
  // 1. Index entries whose count is zero or below.
  std::vector<ChunkId> dead;
  RETURN_IF_ERROR(backend_->index().ForEach([&](const ChunkId& id, const IndexEntry& e) {
    if (e.refs <= 0) dead.push_back(id);
    return Status::Ok();
  }).Annotate("gc"));
  ASSIGN_OR_RETURN(r, SweepChunks(dead, pace, /*with_bytes=*/false, wait_for_imports));
  if (r.postponed) return r;
  // 2. Bytes no index entry names: step 1's chunks' (counted here), and the others.
  ASSIGN_OR_RETURN(SweepResult unnamed, SweepUnnamedBytes(fence->next, pace));
  r.bytes_freed += unnamed.bytes_freed;
  return r;
}

// No lock is needed: a locator below the fence can only be named by an entry that
// already names it (writers index new bytes only at locators reserved after the fence),
// and only gc erases entries.
Result<SweepResult> ChunkStore::SweepUnnamedBytes(uint64_t fence, const Pace& pace) {
  std::vector<bool> named;  // a bit per locator: locators are handed out densely
  RETURN_IF_ERROR(backend_->index().ForEach([&](const ChunkId&, const IndexEntry& e) {
    if (e.locator == 0 || e.locator >= fence) return Status::Ok();
    if (e.locator >= named.size()) named.resize(std::max<uint64_t>(e.locator + 1, 2 * named.size()));
    named[e.locator] = true;
    return Status::Ok();
  }).Annotate("gc"));
  SweepResult r;
  std::unique_ptr<Batch> batch = backend_->NewBatch();
  auto started = std::chrono::steady_clock::now();
  bool go = true;
  Status st = backend_->bytes().ForEach([&](uint64_t loc, size_t size) -> Status {
    if (!go || loc >= fence || (loc < named.size() && named[loc])) return Status::Ok();
    r.bytes_freed += size;
    backend_->bytes().Delete(batch.get(), loc);
    return CommitIfFull(batch.get(), "gc: delete chunk bytes", pace, &started, &go);
  });
  RETURN_IF_ERROR(st.Annotate("gc"));
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
