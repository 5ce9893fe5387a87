#include "core/helper_pool.h"

#include "core/thread_name.h"

namespace stellarium {

HelperPool::HelperPool(unsigned threads, std::string name) {
  for (unsigned i = 0; i < threads; ++i) {
    threads_.emplace_back([this, name] {
      NameThisThread(name.c_str());
      std::unique_lock l(mu_);
      for (;;) {
        ++idle_;
        cv_.wait(l, [&] { return stopping_ || !tasks_.empty(); });
        --idle_;
        if (tasks_.empty()) return;  // stopping
        std::packaged_task<void()> task = std::move(tasks_.front());
        tasks_.pop_front();
        l.unlock();
        task();
        l.lock();
      }
    });
  }
}

HelperPool::~HelperPool() {
  {
    std::lock_guard l(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  for (auto& t : threads_) t.join();
}

bool HelperPool::TryRun(std::function<void()> fn, std::future<void>* done) {
  std::packaged_task<void()> task(std::move(fn));
  {
    std::lock_guard l(mu_);
    if (stopping_ || idle_ <= tasks_.size()) return false;
    *done = task.get_future();
    tasks_.push_back(std::move(task));
  }
  cv_.notify_one();
  return true;
}

}  // namespace stellarium
