#include "core/sources/reorder_buffer.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace stellarium {

ReorderBuffer::ReorderBuffer(std::string scratch_dir, uint64_t memory_limit, std::string what)
    : scratch_dir_(std::move(scratch_dir)), memory_limit_(memory_limit), what_(std::move(what)) {}

ReorderBuffer::~ReorderBuffer() {
  extents_.clear();  // the buffers' deleters update memory_, a member: free them first
  if (fd_ >= 0) ::close(fd_);
}

Status ReorderBuffer::OpenScratch() {
  std::string tmpl = scratch_dir_ + "/stellarium-reorder-XXXXXX";
  std::vector<char> name(tmpl.begin(), tmpl.end());
  name.push_back('\0');
  int fd = ::mkostemp(name.data(), O_CLOEXEC);
  if (fd < 0) return Status::FromErrno(errno, what_ + ": scratch file in " + scratch_dir_);
  ::unlink(name.data());  // the descriptor keeps it; nothing is left behind
  fd_ = fd;
  return Status::Ok();
}

void ReorderBuffer::PunchHole(int64_t disk_off, uint64_t len) {
  // Only whole filesystem blocks can be given back; a failure just keeps the space.
  constexpr uint64_t kBlock = 4096;
  uint64_t start = (static_cast<uint64_t>(disk_off) + kBlock - 1) / kBlock * kBlock;
  uint64_t end = (static_cast<uint64_t>(disk_off) + len) / kBlock * kBlock;
  if (fd_ >= 0 && end > start) {
    (void)::fallocate(fd_, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(start),
                      static_cast<off_t>(end - start));
  }
}

Status ReorderBuffer::Put(uint64_t off, const char* data, size_t n) {
  if (n == 0) return Status::Ok();
  if (off < put_end_) {
    return Status::Internal(what_ + ": reorder buffer: put at " + std::to_string(off) + " before " +
                            std::to_string(put_end_));
  }
  Extent e;
  e.len = n;
  if (data != nullptr && memory_ + n <= memory_limit_) {
    e.buf = std::shared_ptr<char[]>(new char[n], [this, n](char* p) {
      memory_ -= n;
      delete[] p;
    });
    std::memcpy(e.buf.get(), data, n);
    memory_ += n;
    peak_memory_ = std::max(peak_memory_, memory_);
  } else if (data != nullptr) {
    if (fd_ < 0) RETURN_IF_ERROR(OpenScratch());
    for (size_t done = 0; done < n;) {
      ssize_t w = ::pwrite(fd_, data + done, n - done, static_cast<off_t>(disk_end_ + done));
      if (w < 0 && errno == EINTR) continue;
      if (w < 0) return Status::FromErrno(errno, what_ + ": write scratch file in " + scratch_dir_);
      done += static_cast<size_t>(w);
    }
    e.disk_off = static_cast<int64_t>(disk_end_);
    disk_end_ += n;
    spilled_total_ += n;
  }
  extents_.emplace(off, std::move(e));
  put_end_ = off + n;
  held_ += n;
  put_total_ += n;
  peak_held_ = std::max(peak_held_, held_);
  return Status::Ok();
}

Result<bool> ReorderBuffer::Get(uint64_t off, size_t n, char* out) const {
  uint64_t cur = off;
  const uint64_t end = off + n;
  auto it = extents_.upper_bound(cur);
  if (it == extents_.begin()) return n == 0;
  --it;
  for (; cur < end; ++it) {
    if (it == extents_.end() || it->first > cur || it->first + it->second.len <= cur) return false;
    const Extent& e = it->second;
    const uint64_t in = cur - it->first;
    const size_t k = static_cast<size_t>(std::min(end, it->first + e.len) - cur);
    char* dst = out + (cur - off);
    if (e.buf) {
      std::memcpy(dst, e.buf.get() + e.buf_off + in, k);
    } else if (e.disk_off >= 0) {
      for (size_t done = 0; done < k;) {
        ssize_t r = ::pread(fd_, dst + done, k - done, static_cast<off_t>(e.disk_off + in + done));
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
          return Status::FromErrno(r < 0 ? errno : EIO,
                                   what_ + ": read scratch file in " + scratch_dir_);
        }
        done += static_cast<size_t>(r);
      }
    } else {
      std::memset(dst, 0, k);
    }
    cur += k;
  }
  return true;
}

bool ReorderBuffer::Has(uint64_t off, uint64_t n) const {
  uint64_t cur = off;
  const uint64_t end = off + n;
  auto it = extents_.upper_bound(cur);
  if (it == extents_.begin()) return n == 0;
  --it;
  for (; cur < end; ++it) {
    if (it == extents_.end() || it->first > cur || it->first + it->second.len <= cur) return false;
    cur = it->first + it->second.len;
  }
  return true;
}

void ReorderBuffer::Drop(uint64_t off, uint64_t n) {
  if (n == 0 || extents_.empty()) return;
  const uint64_t end = off + n;
  auto it = extents_.upper_bound(off);
  if (it != extents_.begin()) --it;
  while (it != extents_.end() && it->first < end) {
    const uint64_t s = it->first, e_end = s + it->second.len;
    if (e_end <= off) {
      ++it;
      continue;
    }
    Extent old = std::move(it->second);
    it = extents_.erase(it);
    const uint64_t cut_start = std::max(s, off), cut_end = std::min(e_end, end);
    held_ -= cut_end - cut_start;
    if (old.disk_off >= 0)
      PunchHole(old.disk_off + static_cast<int64_t>(cut_start - s), cut_end - cut_start);
    auto piece = [&](uint64_t from, uint64_t to) {
      Extent p;
      p.len = to - from;
      p.buf = old.buf;
      p.buf_off = old.buf_off + (from - s);
      if (old.disk_off >= 0) p.disk_off = old.disk_off + static_cast<int64_t>(from - s);
      return p;
    };
    if (s < cut_start) extents_.emplace(s, piece(s, cut_start));
    if (cut_end < e_end) it = extents_.emplace(cut_end, piece(cut_end, e_end)).first;
  }
}

std::vector<std::pair<uint64_t, uint64_t>> ReorderBuffer::Ranges() const {
  std::vector<std::pair<uint64_t, uint64_t>> out;
  out.reserve(extents_.size());
  for (const auto& [s, e] : extents_) out.emplace_back(s, s + e.len);
  return out;
}

}  // namespace stellarium
