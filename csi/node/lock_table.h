// LockTable: one mutex per key ("vol:<id>", "name:<volume name>", ...), created on
// first use and dropped when nobody holds or waits for it.
//
// Why: the CSI sidecars and the kubelet retry calls and may issue several at once for
// the same volume; those must be serialized (idempotency depends on it), while calls for
// different volumes must run in parallel. One global mutex would serialize everything.
//
// Acquire() blocks until the key is free. Keys are taken one at a time by each caller;
// a caller that needs two keys takes them in a fixed order (name before volume), so two
// callers never wait on each other in a cycle.
//
// Thread-safety: all methods are safe to call from any thread.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

namespace stellarium::node {

class LockTable {
 public:
  class Guard {
   public:
    Guard() = default;
    Guard(Guard&& other) noexcept : table_(other.table_), key_(std::move(other.key_)) {
      other.table_ = nullptr;
    }
    Guard& operator=(Guard&& other) noexcept;
    Guard(const Guard&) = delete;
    Guard& operator=(const Guard&) = delete;
    ~Guard() { Release(); }
    void Release();

   private:
    friend class LockTable;
    Guard(LockTable* table, std::string key) : table_(table), key_(std::move(key)) {}
    LockTable* table_ = nullptr;
    std::string key_;
  };

  // Blocks until `key` is free, then holds it until the Guard goes away.
  [[nodiscard]] Guard Acquire(const std::string& key);
  // Takes `key` only if free at once. REQUIRES: the caller checks `*acquired`.
  [[nodiscard]] Guard TryAcquire(const std::string& key, bool* acquired);

  // Keys currently held or waited for (for tests: 0 when idle).
  size_t Size() const;

 private:
  struct Entry {
    bool held = false;
    int waiters = 0;
    std::condition_variable cv;
  };
  void Unlock(const std::string& key);

  mutable std::mutex mu_;
  std::unordered_map<std::string, std::unique_ptr<Entry>> entries_;  // GUARDED_BY(mu_)
};

}  // namespace stellarium::node
