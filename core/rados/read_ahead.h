// Read-ahead of packs for a sequential reader of the RADOS store. An import writes a
// volume's chunks into packs numbered in the order it read them, so a reader going
// through the volume in order goes through its packs in order too: once it read pack P
// whole, packs P+1..P+depth are fetched into the node cache by a background thread
// while it works on P. Best effort: a pack that does not exist or fails to read is
// left to the reader, who reads it itself and gets the error.
//
// Thread-safety: all methods may be called from any thread.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

namespace stellarium {

class PackReadAhead {
 public:
  // fetch(pack) reads a pack into the cache; depth: how many packs ahead, fetched by up
  // to `threads` threads at once.
  PackReadAhead(std::function<void(uint64_t)> fetch, uint64_t depth, unsigned threads);
  ~PackReadAhead();  // stops, after the fetch in progress

  // The reader read `pack` whole: the packs after it are fetched.
  void After(uint64_t pack);
  // The reader is in `pack`: when it was read ahead, the read-ahead moves on past it.
  void Touched(uint64_t pack);
  // When `pack` is being read ahead: waits until it is, and returns true.
  bool WaitFor(uint64_t pack);

  uint64_t fetched() const;

 private:
  void Loop();

  const std::function<void(uint64_t)> fetch_;
  const uint64_t depth_;
  const unsigned threads_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<uint64_t> queue_;   // GUARDED_BY(mu_)
  std::set<uint64_t> pending_;   // GUARDED_BY(mu_): queued or being fetched
  std::set<uint64_t> done_;      // GUARDED_BY(mu_): fetched lately (the last kRemembered)
  std::deque<uint64_t> done_order_;  // GUARDED_BY(mu_)
  uint64_t fetched_ = 0;         // GUARDED_BY(mu_)
  bool stop_ = false;            // GUARDED_BY(mu_)
  std::vector<std::thread> workers_;  // started by the first After
};

}  // namespace stellarium
