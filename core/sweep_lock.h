// SweepLock: what keeps gc from deleting a chunk that a writer is about to reference.
//
//   - shared (lock_shared): a volume write or a flatten, from its "is this chunk
//     stored?" to its commit; milliseconds.
//   - exclusive (lock): gc deleting a batch of chunks whose count it read as zero;
//     milliseconds. A waiting exclusive holder keeps new shared holders out, so gc is
//     not starved by writers that overlap each other.
//   - imports (ImportPin): an import, from its first lookup to its last ingest, which
//     may take minutes. Imports do not block writers or each other; gc deletes no chunk
//     while one runs (it waits, or postpones, as its caller chooses).
//
// Thread-safety: all methods may be called from any thread.
#pragma once

#include <chrono>
#include <condition_variable>
#include <mutex>

namespace stellarium {

class SweepLock {
 public:
  void lock_shared() {
    std::unique_lock l(mu_);
    cv_.wait(l, [&] { return !exclusive_ && waiting_ == 0; });
    ++shared_;
  }
  void unlock_shared() {
    std::lock_guard l(mu_);
    if (--shared_ == 0) cv_.notify_all();
  }
  // Exclusive, with no import running. wait = false: returns false at once when an
  // import runs; wait = true: waits for the imports to end.
  bool lock_without_imports(bool wait) {
    std::unique_lock l(mu_);
    if (!wait && imports_ > 0) return false;
    ++waiting_;
    cv_.wait(l, [&] { return !exclusive_ && shared_ == 0 && imports_ == 0; });
    --waiting_;
    exclusive_ = true;
    return true;
  }
  void unlock() {
    std::lock_guard l(mu_);
    exclusive_ = false;
    cv_.notify_all();
  }

  // Held by an import for its whole run.
  class ImportPin {
   public:
    explicit ImportPin(SweepLock& s) : s_(s) {
      std::unique_lock l(s_.mu_);
      s_.cv_.wait(l, [&] { return !s_.exclusive_; });  // a gc batch under way ends first
      ++s_.imports_;
    }
    ~ImportPin() {
      std::lock_guard l(s_.mu_);
      if (--s_.imports_ == 0) s_.cv_.notify_all();
    }
    ImportPin(const ImportPin&) = delete;
    ImportPin& operator=(const ImportPin&) = delete;

   private:
    SweepLock& s_;
  };

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int shared_ = 0, imports_ = 0, waiting_ = 0;  // GUARDED_BY(mu_)
  bool exclusive_ = false;                       // GUARDED_BY(mu_)
};

}  // namespace stellarium
