#include "core/rados/read_ahead.h"

namespace stellarium {

namespace {
constexpr size_t kRemembered = 256;  // fetched packs remembered, for Touched
}

PackReadAhead::PackReadAhead(std::function<void(uint64_t)> fetch, uint64_t depth,
                             unsigned threads)
    : fetch_(std::move(fetch)), depth_(depth), threads_(threads) {}

PackReadAhead::~PackReadAhead() {
  {
    std::lock_guard l(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  for (auto& t : workers_) t.join();
}

void PackReadAhead::After(uint64_t pack) {
  if (depth_ == 0) return;
  {
    std::lock_guard l(mu_);
    for (uint64_t p = pack + 1; p <= pack + depth_; ++p) {
      if (pending_.count(p) || done_.count(p)) continue;
      pending_.insert(p);
      queue_.push_back(p);
    }
    while (workers_.size() < threads_) workers_.emplace_back([this] { Loop(); });
  }
  cv_.notify_all();
}

void PackReadAhead::Touched(uint64_t pack) {
  bool was_read_ahead;
  {
    std::lock_guard l(mu_);
    was_read_ahead = done_.count(pack) > 0;
  }
  if (was_read_ahead) After(pack);
}

bool PackReadAhead::WaitFor(uint64_t pack) {
  std::unique_lock l(mu_);
  if (!pending_.count(pack)) return false;
  cv_.wait(l, [&] { return !pending_.count(pack); });
  return true;
}

uint64_t PackReadAhead::fetched() const {
  std::lock_guard l(mu_);
  return fetched_;
}

void PackReadAhead::Loop() {
  std::unique_lock l(mu_);
  for (;;) {
    cv_.wait(l, [&] { return stop_ || !queue_.empty(); });
    if (stop_) {
      for (uint64_t p : queue_) pending_.erase(p);
      queue_.clear();
      cv_.notify_all();
      return;
    }
    const uint64_t pack = queue_.front();
    queue_.pop_front();
    l.unlock();
    fetch_(pack);
    l.lock();
    pending_.erase(pack);
    ++fetched_;
    done_.insert(pack);
    done_order_.push_back(pack);
    if (done_order_.size() > kRemembered) {
      done_.erase(done_order_.front());
      done_order_.pop_front();
    }
    cv_.notify_all();
  }
}

}  // namespace stellarium
