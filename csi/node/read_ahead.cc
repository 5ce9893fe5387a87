// ReadAheadBlockIo: see read_ahead.h.
#include "csi/node/read_ahead.h"

#include <algorithm>
#include <cstring>

#include "core/thread_name.h"

namespace stellarium::node {

namespace {

constexpr size_t kMaxStreams = 4;        // sequential readers followed at once
constexpr uint32_t kStreamMinReads = 2;  // reads continuing a stream before reading ahead

}  // namespace

ReadAheadBlockIo::ReadAheadBlockIo(std::shared_ptr<BlockIo> inner, const ReadAheadOptions& options)
    : inner_(std::move(inner)), options_(options) {
  if (options_.window == 0) options_.window = 1 << 20;
  options_.window = std::min(options_.window, std::max<uint64_t>(options_.max_bytes, 4096));
  if (options_.threads == 0) options_.threads = 1;
}

ReadAheadBlockIo::~ReadAheadBlockIo() {
  std::vector<std::thread> helpers;
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
    helpers.swap(helpers_);
  }
  changed_.notify_all();
  for (auto& t : helpers) t.join();
}

ReadAheadBlockIo::Stats ReadAheadBlockIo::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  Stats s = stats_;
  s.bytes_held = bytes_;
  return s;
}

ReadAheadBlockIo::Stream* ReadAheadBlockIo::NoteRead(uint64_t offset, uint64_t len) {
  ++clock_;
  const uint64_t end = offset + len;
  // Requests of one stream may arrive a little out of order (several run at once), so
  // "continues" means: starts within `slack` of where the stream ended.
  const uint64_t slack = Slack(len);
  for (Stream& s : streams_) {
    if (offset > s.end + slack || offset + slack < s.end) continue;
    s.last_use = clock_;
    s.len = len;
    if (end <= s.end) return nullptr;  // inside what the stream already read
    s.end = end;
    ++s.count;
    return &s;
  }
  Stream* slot;
  if (streams_.size() < kMaxStreams) {
    slot = &streams_.emplace_back();
  } else {
    slot = &*std::min_element(
        streams_.begin(), streams_.end(),
        [](const Stream& a, const Stream& b) { return a.last_use < b.last_use; });
  }
  *slot = Stream{end, len, 0, clock_};
  return nullptr;
}

void ReadAheadBlockIo::Drop(std::map<uint64_t, Window>::iterator it) {
  bytes_ -= it->second.len;
  windows_.erase(it);
}

bool ReadAheadBlockIo::Writing(uint64_t from, uint64_t to) const {
  for (const auto& [a, b] : writing_) {
    if (a >= to) break;  // sorted by start
    if (b > from) return true;
  }
  return false;
}

bool ReadAheadBlockIo::MakeRoom(uint64_t bytes) {
  if (bytes > options_.max_bytes) return false;
  // Windows a stream is about to read stay (also just behind its end: requests that
  // run at once may be served out of order); the others (left by a stream that
  // stopped or jumped) go. Windows being read are never dropped here.
  auto wanted = [&](uint64_t from, uint64_t to) {
    for (const Stream& s : streams_) {
      if (s.count >= kStreamMinReads && from < s.end + options_.max_bytes &&
          to + Slack(s.len) > s.end) {
        return true;
      }
    }
    return false;
  };
  for (auto it = windows_.begin(); it != windows_.end() && bytes_ + bytes > options_.max_bytes;) {
    auto next = std::next(it);
    if (it->second.state != WindowState::kLoading &&
        !wanted(it->first, it->first + it->second.len)) {
      ++stats_.windows_discarded;
      Drop(it);
    }
    it = next;
  }
  return bytes_ + bytes <= options_.max_bytes;
}

void ReadAheadBlockIo::Schedule(const Stream& s, uint64_t read_len, uint64_t size) {
  if (s.count < kStreamMinReads || stopping_) return;
  // How far ahead: a few reads' worth at first, doubling with every read that
  // continues the stream (a short sequential run reads little it does not need).
  const uint64_t ahead =
      std::min<uint64_t>(options_.max_bytes, read_len << std::min<uint32_t>(s.count, 20));
  const uint64_t limit = std::min(size, s.end + ahead);
  const uint64_t step = std::min(options_.window, ahead);
  uint64_t pos = s.end;
  bool queued = false;
  while (pos < limit) {
    auto it = windows_.upper_bound(pos);
    uint64_t next_start = it == windows_.end() ? size : it->first;
    if (it != windows_.begin()) {
      auto prev = std::prev(it);
      if (prev->first + prev->second.len > pos) {  // pos is inside a window already
        if (prev->second.stale) break;             // a write overlaps it: not now
        pos = prev->first + prev->second.len;
        continue;
      }
    }
    const uint64_t len = std::min({step, next_start - pos, size - pos});
    if (Writing(pos, pos + len) || !MakeRoom(len)) break;
    Window w;
    w.len = len;
    windows_[pos] = std::move(w);
    bytes_ += len;
    queued_.push_back(pos);
    queued = true;
    pos += len;
  }
  if (!queued) return;
  while (helpers_.size() < options_.threads) helpers_.emplace_back([this] { Helper(); });
  changed_.notify_all();
}

void ReadAheadBlockIo::Load(std::unique_lock<std::mutex>& lock, uint64_t offset) {
  auto it = windows_.find(offset);
  it->second.state = WindowState::kLoading;
  const uint64_t len = it->second.len;
  lock.unlock();
  std::shared_ptr<char[]> data(new char[len]);  // not zeroed: the read fills it
  Status st = inner_->Read(offset, len, data.get());
  lock.lock();
  // Only the loader removes a window being read, so `offset` is still there.
  it = windows_.find(offset);
  if (!st.ok() || it->second.stale) {
    ++stats_.windows_discarded;
    Drop(it);
  } else {
    it->second.state = WindowState::kReady;
    it->second.data = std::move(data);
    ++stats_.windows_read;
  }
  changed_.notify_all();
}

void ReadAheadBlockIo::Helper() {
  NameThisThread("stl-readahead");
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    changed_.wait(lock, [this] { return stopping_ || !queued_.empty(); });
    if (stopping_) return;
    const uint64_t offset = queued_.front();
    queued_.pop_front();
    auto it = windows_.find(offset);
    // Dropped, or taken over by a reader that needed it first.
    if (it == windows_.end() || it->second.state != WindowState::kQueued) continue;
    Load(lock, offset);
  }
}

Status ReadAheadBlockIo::Read(uint64_t offset, size_t len, char* out) {
  return ReadTo(offset, len, out, nullptr);
}

Status ReadAheadBlockIo::ReadPieces(uint64_t offset, size_t len, const Sink& sink) {
  return ReadTo(offset, len, nullptr, &sink);
}

Status ReadAheadBlockIo::ReadTo(uint64_t offset, size_t len, char* out, const Sink* sink) {
  // A read the inner BlockIo answers: into `out`, or through a buffer to the sink.
  auto through = [&]() -> Status {
    if (out != nullptr) return inner_->Read(offset, len, out);
    thread_local std::string buffer;
    buffer.resize(len);
    RETURN_IF_ERROR(inner_->Read(offset, len, buffer.data()));
    (*sink)(0, buffer.data(), len);
    return Status::Ok();
  };
  if (len == 0 || offset > UINT64_MAX - len) return through();
  const uint64_t end = offset + len;
  const uint64_t size = inner_->size();  // not under mu_: it may wait for a write
  std::unique_lock<std::mutex> lock(mu_);
  // A read continuing a stream queues the ranges beyond it first, so the helpers read
  // them while this one is answered.
  if (Stream* s = NoteRead(offset, len)) Schedule(*s, len, size);
  bool waited = false, loaded = false;
  for (;;) {
    // The windows covering [offset, end) without a gap, if any do.
    std::vector<std::map<uint64_t, Window>::iterator> cover;
    uint64_t pos = offset;
    auto it = windows_.upper_bound(offset);
    if (it != windows_.begin()) --it;
    for (; pos < end && it != windows_.end(); ++it) {
      if (it->first > pos || it->first + it->second.len <= pos || it->second.stale) break;
      cover.push_back(it);
      pos = it->first + it->second.len;
    }
    if (pos < end) break;
    bool loading = false;
    std::optional<uint64_t> queued;
    for (auto w : cover) {
      if (w->second.state == WindowState::kLoading) loading = true;
      if (w->second.state == WindowState::kQueued && !queued) queued = w->first;
    }
    if (queued) {  // not started yet: read it here rather than wait for a helper
      Load(lock, *queued);
      loaded = true;
      continue;
    }
    if (loading) {
      changed_.wait(lock);
      waited = true;
      continue;
    }
    // All read: copy outside the lock (a ready window's bytes never change; a write
    // racing with this read may drop the window, and the copy keeps it alive).
    struct Part {
      std::shared_ptr<char[]> data;
      uint64_t from, to, at;
    };
    std::vector<Part> parts;
    for (auto w : cover) {
      const uint64_t lo = std::max(offset, w->first);
      const uint64_t hi = std::min(end, w->first + w->second.len);
      parts.push_back({w->second.data, lo - w->first, hi - w->first, lo - offset});
      w->second.consumed += hi - lo;
      if (w->second.consumed >= w->second.len) Drop(w);  // read once: done with it
    }
    ++stats_.reads_from_windows;
    stats_.reads_waited += waited;
    stats_.reads_loaded += loaded;
    lock.unlock();
    for (const Part& p : parts) {
      if (out != nullptr) {
        memcpy(out + p.at, p.data.get() + p.from, p.to - p.from);
      } else {
        (*sink)(p.at, p.data.get() + p.from, p.to - p.from);
      }
    }
    return Status::Ok();
  }
  ++stats_.reads_through;
  lock.unlock();
  return through();
}

Status ReadAheadBlockIo::Write(uint64_t offset, const char* data, size_t len) {
  if (len == 0 || offset > UINT64_MAX - len) return inner_->Write(offset, data, len);
  const uint64_t end = offset + len;
  std::multimap<uint64_t, uint64_t>::iterator mine;
  {
    std::lock_guard<std::mutex> lock(mu_);
    mine = writing_.emplace(offset, end);
    auto it = windows_.upper_bound(offset);
    if (it != windows_.begin()) --it;
    while (it != windows_.end() && it->first < end) {
      auto next = std::next(it);
      if (it->first + it->second.len > offset) {
        if (it->second.state == WindowState::kLoading) {
          it->second.stale = true;  // its loader drops it
        } else {
          ++stats_.windows_discarded;
          Drop(it);
        }
      }
      it = next;
    }
  }
  Status st = inner_->Write(offset, data, len);
  {
    std::lock_guard<std::mutex> lock(mu_);
    writing_.erase(mine);
  }
  return st;
}

}  // namespace stellarium::node
