#include "csi/node/lock_table.h"

namespace stellarium::node {

LockTable::Guard& LockTable::Guard::operator=(Guard&& other) noexcept {
  if (this != &other) {
    Release();
    table_ = other.table_;
    key_ = std::move(other.key_);
    other.table_ = nullptr;
  }
  return *this;
}

void LockTable::Guard::Release() {
  if (table_ != nullptr) {
    table_->Unlock(key_);
    table_ = nullptr;
  }
}

LockTable::Guard LockTable::Acquire(const std::string& key) {
  std::unique_lock<std::mutex> lock(mu_);
  auto& slot = entries_[key];
  if (!slot) slot = std::make_unique<Entry>();
  Entry* entry = slot.get();  // stable: erased only when nobody holds or waits
  ++entry->waiters;
  entry->cv.wait(lock, [entry] { return !entry->held; });
  --entry->waiters;
  entry->held = true;
  return Guard(this, key);
}

LockTable::Guard LockTable::TryAcquire(const std::string& key, bool* acquired) {
  std::lock_guard<std::mutex> lock(mu_);
  auto& slot = entries_[key];
  if (!slot) slot = std::make_unique<Entry>();
  if (slot->held) {
    *acquired = false;
    return Guard();
  }
  slot->held = true;
  *acquired = true;
  return Guard(this, key);
}

void LockTable::Unlock(const std::string& key) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = entries_.find(key);
  if (it == entries_.end()) return;
  Entry* entry = it->second.get();
  entry->held = false;
  if (entry->waiters == 0) {
    entries_.erase(it);
  } else {
    entry->cv.notify_one();
  }
}

size_t LockTable::Size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return entries_.size();
}

}  // namespace stellarium::node
