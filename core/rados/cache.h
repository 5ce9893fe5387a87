// The node-local caches of the RADOS store: what a node read from the cluster, kept so
// it reads each thing from the cluster once.
//
//   ChunkCache  chunk bytes (decompressed, keyed by locator) in files under --cache DIR,
//               bounded by size: whole segment files are evicted, least recently used
//               first. It only ever holds copies: every chunk in it is durable in the
//               cluster, and every read of it is checked against the chunk's SHA-256 by
//               ChunkStore as any other. It outlives its process (each segment has a
//               file of the keys it holds): a locator's bytes never change in the store
//               (packs are appended to, never rewritten, and pack numbers never reused),
//               so what a restarted driver finds there is still right. Only a cache its
//               process closed is kept (synced, then marked clean); after a crash the
//               next process starts with an empty one. One process at a time uses a
//               directory (a lock file); bytes that fail their digest check are
//               forgotten (Forget), so the next read goes to the cluster.
//   LruMap      an in-memory map bounded by the bytes its values take (block map shards
//               of frozen layers, pack slot tables).
//
// Thread-safety: all methods may be called from any thread.
#pragma once

#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <absl/container/flat_hash_map.h>

#include "core/status.h"

namespace stellarium {

class ChunkCache {
 public:
  // A cache of at most max_bytes under dir (created; what an earlier process cached
  // there is kept, up to max_bytes); dir "": in memory, for this process only.
  // max_bytes 0: nothing is cached. FAILED_PRECONDITION when another process has the
  // directory open.
  static Result<std::unique_ptr<ChunkCache>> Open(const std::string& dir, uint64_t max_bytes);
  ~ChunkCache();

  // A cached chunk: its bytes stay valid while the hit is held (even if the cache evicts
  // them meanwhile).
  struct Hit {
    std::shared_ptr<const void> hold;
    std::string_view bytes;
  };
  // The bytes cached for `key`; false when not cached.
  bool Get(uint64_t key, Hit* out);
  // Caches chunks, written together (best effort: an I/O error drops them).
  void PutMany(const std::vector<std::pair<uint64_t, std::string_view>>& items);
  // Drops what is cached for `key` (bytes that did not match their digest), also for
  // the processes that open the directory next.
  void Forget(uint64_t key);

  struct Stats {
    uint64_t hits = 0, misses = 0, bytes = 0, evicted_segments = 0;
  };
  Stats stats() const;

  static constexpr uint64_t kSegmentBytes = 32u << 20;

 private:
  struct Segment {
    int fd = -1;
    int keys_fd = -1;           // "<path>.keys": (u64 key, u64 offset, u32 length) records
    const char* map = nullptr;  // the whole file, read-only: hits are read from here
    std::string path;
    uint64_t size = 0;
    uint64_t last_use = 0;
    std::vector<uint64_t> keys;
    ~Segment();
  };
  struct Entry {
    std::shared_ptr<Segment> segment;
    uint64_t offset = 0;
    uint32_t length = 0;
  };
  static constexpr size_t kRecordBytes = 20;  // a keys file record
  static constexpr uint64_t kForgotten = UINT64_MAX;  // a record's offset: Forget(key)
  ChunkCache(std::string dir, uint64_t max_bytes) : dir_(std::move(dir)), max_bytes_(max_bytes) {}
  // REQUIRES: mu_ held.
  Status NewSegment();
  Status OpenSegment(const std::string& path, bool create, std::shared_ptr<Segment>* out);
  void Load();  // the segments an earlier process left
  void EvictOne();

  const std::string dir_;
  const uint64_t max_bytes_;
  int lock_fd_ = -1;  // flock'ed "<dir>/lock": one process per directory
  mutable std::mutex mu_;
  absl::flat_hash_map<uint64_t, Entry> index_;        // GUARDED_BY(mu_)
  std::vector<std::shared_ptr<Segment>> segments_;    // GUARDED_BY(mu_); the last is open
  uint64_t clock_ = 0, next_segment_ = 0;             // GUARDED_BY(mu_)
  Stats stats_;                                       // GUARDED_BY(mu_)
};

// An in-memory map from K to V holding at most max_bytes of values (as `size` says),
// least recently used entries evicted first.
template <typename K, typename V>
class LruMap {
 public:
  explicit LruMap(uint64_t max_bytes) : max_bytes_(max_bytes) {}
  // The value of key, or null.
  std::shared_ptr<const V> Get(const K& key) {
    std::lock_guard l(mu_);
    auto it = map_.find(key);
    if (it == map_.end()) return nullptr;
    order_.splice(order_.begin(), order_, it->second.pos);
    return it->second.value;
  }
  void Put(const K& key, std::shared_ptr<const V> value, uint64_t size) {
    std::lock_guard l(mu_);
    Erase(key);
    order_.push_front(key);
    map_[key] = Item{std::move(value), size, order_.begin()};
    bytes_ += size;
    while (bytes_ > max_bytes_ && order_.size() > 1) Erase(order_.back());
  }
  void Remove(const K& key) {
    std::lock_guard l(mu_);
    Erase(key);
  }

 private:
  struct Item {
    std::shared_ptr<const V> value;
    uint64_t size = 0;
    typename std::list<K>::iterator pos;
  };
  // REQUIRES: mu_ held.
  void Erase(const K& key) {
    auto it = map_.find(key);
    if (it == map_.end()) return;
    bytes_ -= it->second.size;
    order_.erase(it->second.pos);
    map_.erase(it);
  }
  const uint64_t max_bytes_;
  std::mutex mu_;
  std::list<K> order_;  // most recent first
  std::unordered_map<K, Item> map_;
  uint64_t bytes_ = 0;
};

}  // namespace stellarium
