// node_reader: the reader every pass of node_data_path runs, on the host and inside
// the QEMU guest (linked statically so the busybox guest can run it): O_DIRECT reads
// of a file or block device, timed with CLOCK_MONOTONIC.
//   node_reader PATH seq            sequential 1 MiB reads of the whole PATH
//   node_reader PATH rand N SEED    N random 4 KiB reads (4 KiB-aligned offsets)
// Prints one line: "NODE-READER <mode> bytes=<n> seconds=<s> MBps=<x> IOPS=<y>".
#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace {

double Now() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

int Fail(const char* what) {
  std::fprintf(stderr, "node_reader: %s: %s\n", what, std::strerror(errno));
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: node_reader PATH seq | node_reader PATH rand N SEED\n");
    return 2;
  }
  const bool seq = std::strcmp(argv[2], "seq") == 0;
  int fd = open(argv[1], O_RDONLY | O_DIRECT | O_CLOEXEC);
  if (fd < 0) return Fail(argv[1]);
  struct stat st;
  if (fstat(fd, &st) != 0) return Fail("fstat");
  uint64_t size = static_cast<uint64_t>(st.st_size);
  if (S_ISBLK(st.st_mode) && ioctl(fd, BLKGETSIZE64, &size) != 0) return Fail("BLKGETSIZE64");
  const size_t unit = seq ? (1u << 20) : 4096;
  void* buf = nullptr;
  if (posix_memalign(&buf, 4096, unit) != 0) return Fail("posix_memalign");
  uint64_t bytes = 0, ops = 0;
  const double t0 = Now();
  if (seq) {
    for (uint64_t off = 0; off + unit <= size; off += unit, ++ops) {
      ssize_t n = pread(fd, buf, unit, static_cast<off_t>(off));
      if (n != static_cast<ssize_t>(unit)) return Fail("pread");
      bytes += unit;
    }
  } else {
    const uint64_t count = argc > 3 ? std::strtoull(argv[3], nullptr, 10) : 10000;
    uint64_t x = argc > 4 ? std::strtoull(argv[4], nullptr, 10) : 1;
    const uint64_t blocks = size / unit;
    for (; ops < count; ++ops) {
      x ^= x << 13;  // xorshift64
      x ^= x >> 7;
      x ^= x << 17;
      ssize_t n = pread(fd, buf, unit, static_cast<off_t>((x % blocks) * unit));
      if (n != static_cast<ssize_t>(unit)) return Fail("pread");
      bytes += unit;
    }
  }
  const double secs = Now() - t0;
  std::printf("NODE-READER %s bytes=%llu seconds=%.3f MBps=%.1f IOPS=%.0f\n", seq ? "seq" : "rand",
              static_cast<unsigned long long>(bytes), secs, static_cast<double>(bytes) / secs / 1e6,
              static_cast<double>(ops) / secs);
  return 0;
}
