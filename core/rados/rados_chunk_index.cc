// The RADOS store's ChunkIndex: kIndexShards objects by the chunk id's first byte, each
// chunk an omap entry "<id>L" -> locator (and "<id>C" -> condemned since, while the
// collector holds it for deletion). No reference counts: the collector marks what the
// block maps name (RadosBackend::SweepUnreferenced).
#include <absl/container/flat_hash_map.h>

#include "core/rados/rados_seams.h"

namespace stellarium {
namespace {

constexpr uint64_t kFilterChunks = 4u << 20;          // sized for this many chunks
constexpr uint64_t kFilterMaxBytes = 256u << 20;

std::string IndexWhat(uint8_t shard) { return "chunk index shard " + std::to_string(shard); }

}  // namespace

RadosChunkIndex::RadosChunkIndex(RadosIo* io)
    : io_(io),
      filter_(kFilterChunks, kFilterMaxBytes),
      fill_(&filter_, [this](PresenceFilter& f, const std::atomic<bool>& stop) {
        return ScanIntoFilter(f, stop);
      }) {}

RadosChunkIndex::~RadosChunkIndex() = default;

Status RadosChunkIndex::ScanShard(uint8_t shard,
                                  const std::function<Status(const ChunkId&, const Raw&)>& fn) {
  // Keys of one chunk are adjacent ("<id>C" sorts before "<id>L"): gather them, then call.
  std::optional<ChunkId> cur;
  Raw raw;
  auto flush = [&]() -> Status {
    if (!cur || raw.location.empty()) return Status::Ok();  // a lone "C": erased already
    return fn(*cur, raw);
  };
  RETURN_IF_ERROR(io_->OmapScan(
      format::rados::IndexObject(shard), "", "",
      [&](const std::string& key, const std::string& value) -> Result<bool> {
        if (key.size() != kChunkIdSize + 1) {
          return Status::Corruption(IndexWhat(shard) + ": malformed key");
        }
        const ChunkId id = ChunkIdFromBytes(std::string_view(key).substr(0, kChunkIdSize));
        if (!cur || *cur != id) {
          RETURN_IF_ERROR(flush());
          cur = id;
          raw = Raw();
        }
        (key.back() == 'L' ? raw.location : raw.condemned) = value;
        return true;
      },
      IndexWhat(shard)));
  return flush();
}

// A shard that cannot be read ends the scan: the filter stays incomplete.
bool RadosChunkIndex::ScanIntoFilter(PresenceFilter& filter, const std::atomic<bool>& stop) {
  for (int shard = 0; shard < format::rados::kIndexShards; ++shard) {
    Status st = ScanShard(static_cast<uint8_t>(shard), [&](const ChunkId& id, const Raw&) {
      filter.Add(id);
      return stop.load() ? Status::Aborted("stop") : Status::Ok();
    });
    if (!st.ok() || stop.load()) return false;
  }
  return true;
}

// Readers see a condemned chunk (it is stored until gc deletes it); writers do not.
Status RadosChunkIndex::GetMany(const std::vector<ChunkId>& ids,
                                std::vector<std::optional<IndexEntry>>* entries) {
  return GetEntries(ids, /*condemned_too=*/true, entries);
}

Status RadosChunkIndex::GetEntries(const std::vector<ChunkId>& ids, bool condemned_too,
                                   std::vector<std::optional<IndexEntry>>* entries) {
  entries->assign(ids.size(), std::nullopt);
  if (ids.empty()) return Status::Ok();
  std::map<std::string, std::set<std::string>> keys;  // by shard object
  for (const ChunkId& id : ids) {
    auto& ks = keys[format::rados::IndexObject(id[0])];
    ks.insert(format::rados::IndexLocationKey(id));
    ks.insert(format::rados::IndexCondemnedKey(id));
  }
  ASSIGN_OR_RETURN(auto vals, io_->OmapGetMany(keys, "chunk index"));
  for (size_t i = 0; i < ids.size(); ++i) {
    const auto& shard = vals[format::rados::IndexObject(ids[i][0])];
    auto loc = shard.find(format::rados::IndexLocationKey(ids[i]));
    if (loc == shard.end()) continue;
    // To a writer a condemned chunk is as good as gone: it stores its own copy.
    if (!condemned_too && shard.count(format::rados::IndexCondemnedKey(ids[i]))) continue;
    (*entries)[i] = IndexEntry{-1, format::DecodeU64(loc->second)};
  }
  return Status::Ok();
}

Result<std::optional<IndexEntry>> RadosChunkIndex::Get(const ChunkId& id) {
  std::vector<std::optional<IndexEntry>> entries;
  RETURN_IF_ERROR(GetMany({id}, &entries));
  return entries[0];
}

// Waits for the presence filter first: until it is complete every lookup is a round
// trip to the cluster, which costs an import far more than the scan does.
Status RadosChunkIndex::LocateMany(const std::vector<ChunkId>& ids, std::vector<uint64_t>* locators) {
  WaitForPresenceFilter();
  return LocateThroughFilter(
      filter_, ids,
      [this](const auto& ask, auto* entries) { return GetEntries(ask, /*condemned_too=*/false, entries); },
      locators);
}

// A chunk's bytes at `locator`: the location is set (a later copy simply replaces an
// earlier one: both are the same bytes), and a condemnation lifted.
void RadosChunkIndex::Stage(RadosChanges* c, const ChunkId& id, uint64_t locator) {
  filter_.Add(id);
  OmapChanges& shard = c->index[id[0]];
  shard[format::rados::IndexLocationKey(id)] = format::EncodeU64(locator);
  shard[format::rados::IndexCondemnedKey(id)] = std::nullopt;
  ++c->count;
}

// A new chunk's entry is staged; a reference to a stored one becomes a check of the
// index op (RadosBackend::Apply).
void RadosChunkIndex::AddRefs(Batch* batch, const ChunkId& id, int64_t delta, uint64_t locator) {
  AddRefs(&ChangesOf(batch), id, delta, locator);
}

Status RadosChunkIndex::AddRefs(BulkBatch* batch, const ChunkId& id, int64_t delta, uint64_t locator) {
  AddRefs(&ChangesOf(batch), id, delta, locator);
  return Status::Ok();
}

void RadosChunkIndex::AddRefs(RadosChanges* c, const ChunkId& id, int64_t delta, uint64_t locator) {
  if (locator != 0) {
    Stage(c, id, locator);
  } else if (delta > 0) {
    c->named[id[0]].insert(id);
  }
}

void RadosChunkIndex::Erase(Batch* batch, const ChunkId& id) {
  RadosChanges& c = ChangesOf(batch);
  OmapChanges& shard = c.index[id[0]];
  shard[format::rados::IndexLocationKey(id)] = std::nullopt;
  shard[format::rados::IndexCondemnedKey(id)] = std::nullopt;
  ++c.count;
}

Status RadosChunkIndex::ForEach(const std::function<Status(const ChunkId&, const IndexEntry&)>& fn) {
  for (int shard = 0; shard < format::rados::kIndexShards; ++shard) {
    RETURN_IF_ERROR(ScanShard(static_cast<uint8_t>(shard), [&](const ChunkId& id, const Raw& raw) {
      return fn(id, IndexEntry{-1, format::DecodeU64(raw.location)});
    }));
  }
  return Status::Ok();
}

}  // namespace stellarium
