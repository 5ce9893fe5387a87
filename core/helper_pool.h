// HelperPool: a few threads that take a share of one caller's work when they are idle.
// Volume::Read verifies the chunks of a large read on two cores: the reader hands half
// of them to a helper, if one is idle, and does the rest itself. Starting a thread per
// read instead cost a clone, a fresh stack and a join on every 256 KiB or more read.
//
// Thread-safety: TryRun may be called from any thread. The pool's threads run until it
// is destroyed, which waits for the tasks they are running.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <future>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace stellarium {

class HelperPool {
 public:
  // name: the helpers' thread name (core/thread_name.h).
  HelperPool(unsigned threads, std::string name);
  ~HelperPool();
  HelperPool(const HelperPool&) = delete;
  HelperPool& operator=(const HelperPool&) = delete;

  // Starts fn on an idle helper and returns true (*done becomes ready when fn returns);
  // returns false, without running fn, when every helper is busy.
  bool TryRun(std::function<void()> fn, std::future<void>* done);

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::packaged_task<void()>> tasks_;  // GUARDED_BY(mu_)
  unsigned idle_ = 0;                             // GUARDED_BY(mu_)
  bool stopping_ = false;                         // GUARDED_BY(mu_)
  std::vector<std::thread> threads_;
};

}  // namespace stellarium
