#include "core/export.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>

#include "core/sha256.h"

namespace stellarium {

Result<ExportSummary> ExportVolume(Volume& volume, const std::string& path,
                                   const ProgressFn& progress) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return Status::FromErrno(errno, "export to " + path);
  auto fail = [&](Status s) -> Result<ExportSummary> {
    ::close(fd);
    ::unlink(path.c_str());
    return s;
  };
  ExportSummary sum;
  sum.bytes = volume.size();
  if (::ftruncate(fd, static_cast<off_t>(sum.bytes)) != 0) {
    return fail(Status::FromErrno(errno, "export to " + path + ": set size"));
  }
  const uint64_t bs = volume.block_size();
  const uint64_t step = std::max<uint64_t>(bs, 4u << 20);
  std::string buf(step, '\0');
  for (uint64_t off = 0; off < sum.bytes; off += step) {
    size_t n = static_cast<size_t>(std::min(step, sum.bytes - off));
    Status s = volume.Read(off, n, buf.data());
    if (!s.ok()) return fail(s.Annotate("export volume " + volume.id()));
    for (size_t b = 0; b < n; b += bs) {
      size_t len = std::min<size_t>(bs, n - b);
      if (IsAllZero(buf.data() + b, len)) continue;  // leave a hole
      size_t done = 0;
      while (done < len) {
        ssize_t w = ::pwrite(fd, buf.data() + b + done, len - done, static_cast<off_t>(off + b + done));
        if (w < 0) {
          if (errno == EINTR) continue;
          return fail(Status::FromErrno(errno, "export to " + path + ": write"));
        }
        done += static_cast<size_t>(w);
      }
      sum.data_bytes += len;
    }
    if (progress) progress(Progress{off + n, sum.bytes});
  }
  if (::fsync(fd) != 0) return fail(Status::FromErrno(errno, "export to " + path + ": fsync"));
  ::close(fd);
  return sum;
}

}  // namespace stellarium
