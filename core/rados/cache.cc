#include "core/rados/cache.h"

#include <fcntl.h>
#include <limits.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <filesystem>

namespace stellarium {

// A segment object goes when it is evicted (its files with it) or when the cache
// closes (keep set: the files stay for the next process).
ChunkCache::Segment::~Segment() {
  if (map != nullptr) ::munmap(const_cast<char*>(map), kSegmentBytes);
  if (fd >= 0) ::close(fd);
  if (keys_fd >= 0) ::close(keys_fd);
  if (!path.empty()) {
    ::unlink(path.c_str());
    ::unlink((path + ".keys").c_str());
  }
}

Result<std::unique_ptr<ChunkCache>> ChunkCache::Open(const std::string& dir, uint64_t max_bytes) {
  namespace fs = std::filesystem;
  if (max_bytes == 0 || dir.empty()) return std::unique_ptr<ChunkCache>(new ChunkCache(dir, max_bytes));
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return Status::FromErrno(ec.value(), "cache " + dir + ": create directory");
  // One process per directory: two would number their segments alike and remove each
  // other's files. The lock goes with the process.
  const int lock_fd = ::open((dir + "/lock").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (lock_fd < 0) return Status::FromErrno(errno, "cache " + dir + ": lock file");
  if (::flock(lock_fd, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    ::close(lock_fd);
    if (err == EWOULDBLOCK) {
      return Status::FailedPrecondition("cache " + dir + " is in use by another process");
    }
    return Status::FromErrno(err, "cache " + dir + ": lock");
  }
  std::unique_ptr<ChunkCache> cache(new ChunkCache(dir, max_bytes));
  cache->lock_fd_ = lock_fd;
  cache->Load();
  return cache;
}

namespace {

constexpr const char* kCleanMarker = "/clean";

void SyncDirectory(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;
  (void)::fsync(fd);
  ::close(fd);
}

}  // namespace

// The files stay for the next process: made durable, then marked clean (a cache whose
// process died may hold keys records whose bytes never reached the disk; the next
// process starts that one empty).
ChunkCache::~ChunkCache() {
  std::lock_guard l(mu_);
  index_.clear();
  bool synced = true;
  for (auto& seg : segments_) {
    if (!seg->path.empty()) {
      synced &= ::fdatasync(seg->fd) == 0 && ::fdatasync(seg->keys_fd) == 0;
      seg->path.clear();
    }
  }
  if (lock_fd_ < 0) return;  // in memory, or caching nothing
  if (synced) {
    const int fd = ::open((dir_ + kCleanMarker).c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
    if (fd >= 0) {
      ::close(fd);
      SyncDirectory(dir_);
    }
  }
  ::close(lock_fd_);
}

// A tombstone in the keys file: a record of the key with offset kForgotten, length 0.
void ChunkCache::Forget(uint64_t key) {
  std::lock_guard l(mu_);
  auto it = index_.find(key);
  if (it == index_.end()) return;
  const int keys_fd = it->second.segment->keys_fd;
  index_.erase(it);
  if (keys_fd < 0) return;
  char record[kRecordBytes] = {};
  const uint64_t offset = kForgotten;
  std::memcpy(record, &key, 8);
  std::memcpy(record + 8, &offset, 8);
  (void)!::write(keys_fd, record, sizeof record);
}

Status ChunkCache::OpenSegment(const std::string& path, bool create,
                               std::shared_ptr<Segment>* out) {
  auto seg = std::make_shared<Segment>();
  if (dir_.empty()) {  // in memory, for this process only
    seg->fd = ::memfd_create("stellarium-cache", MFD_CLOEXEC);
    if (seg->fd < 0) return Status::FromErrno(errno, "cache in memory");
  } else {
    const int flags = O_RDWR | O_CLOEXEC | (create ? O_CREAT | O_TRUNC : 0);
    seg->fd = ::open(path.c_str(), flags, 0600);
    seg->keys_fd = ::open((path + ".keys").c_str(), flags | O_APPEND | (create ? 0 : O_CREAT), 0600);
    if (seg->fd < 0 || seg->keys_fd < 0) return Status::FromErrno(errno, "cache " + path);
    seg->path = path;  // from here on the destructor removes the files
  }
  void* map = MAP_FAILED;
  if (::ftruncate(seg->fd, kSegmentBytes) == 0) {
    map = ::mmap(nullptr, kSegmentBytes, PROT_READ, MAP_SHARED, seg->fd, 0);
  }
  if (map == MAP_FAILED) return Status::FromErrno(errno, "cache " + path + ": map");
  seg->map = static_cast<const char*>(map);
  *out = std::move(seg);
  return Status::Ok();
}

void ChunkCache::Load() {
  namespace fs = std::filesystem;
  std::error_code ec;
  // Kept only if the process that wrote it closed it; the mark is gone (durably) before
  // this process writes anything.
  const bool clean = ::unlink((dir_ + kCleanMarker).c_str()) == 0;
  SyncDirectory(dir_);
  std::vector<std::pair<fs::file_time_type, std::string>> found;  // oldest first
  for (const auto& f : fs::directory_iterator(dir_, ec)) {
    const std::string name = f.path().filename().string();
    if (name.rfind("segment-", 0) != 0) continue;
    if (!clean) {
      fs::remove(f.path(), ec);
      continue;
    }
    char* end = nullptr;
    const uint64_t n = std::strtoull(name.c_str() + 8, &end, 10);
    if (f.path().extension() == ".keys" || end == name.c_str() + 8 || *end != '\0') continue;
    found.emplace_back(fs::last_write_time(f.path(), ec), f.path().string());
    next_segment_ = std::max<uint64_t>(next_segment_, n + 1);
  }
  std::sort(found.begin(), found.end());
  std::lock_guard l(mu_);
  for (const auto& [when, path] : found) {
    std::shared_ptr<Segment> seg;
    if (!OpenSegment(path, false, &seg).ok()) continue;  // unusable: its files go
    std::string keys;
    char buf[1 << 16];
    for (ssize_t n; (n = ::pread(seg->keys_fd, buf, sizeof buf, keys.size())) > 0;) keys.append(buf, n);
    for (size_t at = 0; at + kRecordBytes <= keys.size(); at += kRecordBytes) {
      uint64_t key, offset;
      uint32_t length;
      std::memcpy(&key, keys.data() + at, 8);
      std::memcpy(&offset, keys.data() + at + 8, 8);
      std::memcpy(&length, keys.data() + at + 16, 4);
      if (offset == kForgotten) {
        index_.erase(key);
        continue;
      }
      if (offset + length > kSegmentBytes) break;
      index_[key] = Entry{seg, offset, length};
      seg->keys.push_back(key);
      seg->size = std::max<uint64_t>(seg->size, offset + length);
    }
    seg->last_use = ++clock_;
    stats_.bytes += seg->size;
    segments_.push_back(std::move(seg));
    while (stats_.bytes > max_bytes_ && segments_.size() > 1) EvictOne();
  }
  // New chunks go to a segment of their own: a loaded one may end in a torn record.
  if (!segments_.empty()) segments_.back()->size = kSegmentBytes;
}

bool ChunkCache::Get(uint64_t key, Hit* out) {
  std::lock_guard l(mu_);
  auto it = index_.find(key);
  if (it == index_.end()) {
    ++stats_.misses;
    return false;
  }
  const Entry& e = it->second;
  e.segment->last_use = ++clock_;
  ++stats_.hits;
  out->hold = e.segment;
  out->bytes = std::string_view(e.segment->map + e.offset, e.length);
  return true;
}

void ChunkCache::PutMany(const std::vector<std::pair<uint64_t, std::string_view>>& items) {
  if (max_bytes_ == 0) return;
  std::lock_guard l(mu_);
  for (size_t i = 0; i < items.size();) {
    // As many of the items as fit in the open segment, in one write.
    if (segments_.empty() || segments_.back()->size + items[i].second.size() > kSegmentBytes) {
      if (items[i].second.size() > kSegmentBytes || !NewSegment().ok()) return;
    }
    Segment& seg = *segments_.back();
    // As many items as fit, written with one call (at most IOV_MAX at a time).
    std::vector<iovec> iov;
    uint64_t run = 0;
    size_t j = i;
    for (; j < items.size() && iov.size() < IOV_MAX && seg.size + run + items[j].second.size() <= kSegmentBytes; ++j) {
      iov.push_back(iovec{const_cast<char*>(items[j].second.data()), items[j].second.size()});
      run += items[j].second.size();
    }
    if (::pwritev(seg.fd, iov.data(), static_cast<int>(iov.size()), static_cast<off_t>(seg.size)) !=
        static_cast<ssize_t>(run)) {
      return;
    }
    uint64_t at = seg.size;
    std::string records;  // the keys file's records, after the bytes they name
    for (; i < j; ++i) {
      const auto& [key, bytes] = items[i];
      const uint32_t length = static_cast<uint32_t>(bytes.size());
      if (!index_.count(key)) {
        index_[key] = Entry{segments_.back(), at, length};
        seg.keys.push_back(key);
        records.append(reinterpret_cast<const char*>(&key), 8);
        records.append(reinterpret_cast<const char*>(&at), 8);
        records.append(reinterpret_cast<const char*>(&length), 4);
      }
      at += bytes.size();
    }
    if (seg.keys_fd >= 0) (void)!::write(seg.keys_fd, records.data(), records.size());
    seg.size += run;
    seg.last_use = ++clock_;
    stats_.bytes += run;
    while (stats_.bytes > max_bytes_ && segments_.size() > 1) EvictOne();
  }
}

Status ChunkCache::NewSegment() {
  std::shared_ptr<Segment> seg;
  RETURN_IF_ERROR(OpenSegment(dir_ + "/segment-" + std::to_string(next_segment_++), true, &seg));
  segments_.push_back(std::move(seg));
  return Status::Ok();
}

void ChunkCache::EvictOne() {
  size_t victim = 0;  // never the open (last) segment
  for (size_t i = 1; i + 1 < segments_.size(); ++i) {
    if (segments_[i]->last_use < segments_[victim]->last_use) victim = i;
  }
  std::shared_ptr<Segment> seg = segments_[victim];
  for (uint64_t key : seg->keys) {
    auto it = index_.find(key);
    if (it != index_.end() && it->second.segment == seg) index_.erase(it);
  }
  stats_.bytes -= seg->size;
  ++stats_.evicted_segments;
  segments_.erase(segments_.begin() + victim);
}

ChunkCache::Stats ChunkCache::stats() const {
  std::lock_guard l(mu_);
  return stats_;
}

}  // namespace stellarium
