// read_bench: core's read path. Sequential 1 MiB reads and 4 KiB random reads of an
// imported image through Volume::Read, side by side with the same reads of the raw
// image file (page cache warm), in one run.
//
// usage: read_bench IMAGE [--work DIR]  (the store goes in a new directory under DIR,
//        default /tmp, removed at the end)
#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <random>

#include "bench/work_dir.h"
#include "core/image_source.h"
#include "core/store.h"

using namespace stellarium;

namespace {

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// User + system CPU time of this process (all threads).
double CpuSeconds() {
  struct rusage u;
  getrusage(RUSAGE_SELF, &u);
  return u.ru_utime.tv_sec + u.ru_stime.tv_sec + 1e-6 * (u.ru_utime.tv_usec + u.ru_stime.tv_usec);
}

void Must(const Status& s) {
  if (!s.ok()) {
    fprintf(stderr, "read_bench: %s\n", s.ToString().c_str());
    exit(1);
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: read_bench IMAGE [--work DIR]\n");
    return 2;
  }
  std::string image = argv[1], parent = "/tmp";
  if (argc >= 4 && std::string(argv[2]) == "--work") parent = argv[3];
  bench::WorkDir work_dir(parent, "read_bench");
  const std::string work = work_dir.path() + "/store";
  StoreOptions o;
  o.path = work;
  auto store = Store::Open(o);
  Must(store.status());
  auto src = OpenFileImageSource(image);
  Must(src.status());
  ImportOptions io;
  io.volume.name = "img";
  auto imp = (*store)->ImportImage(**src, io);
  Must(imp.status());
  Must((*store)->WaitIdle());  // read a settled store, not one compacting beside the reads
  auto vol = (*store)->OpenVolume(imp->volume.id, true);
  Must(vol.status());
  const uint64_t size = (*vol)->size();
  int fd = ::open(image.c_str(), O_RDONLY);
  std::string buf(1 << 20, '\0');

  auto seq_file = [&] {
    double t0 = Now();
    for (uint64_t off = 0; off < size; off += buf.size()) {
      if (::pread(fd, buf.data(), buf.size(), static_cast<off_t>(off)) < 0) exit(1);
    }
    return size / (Now() - t0) / 1e6;
  };
  double v_seq_cpu = 0;  // MB per CPU-second: what the read costs, whatever else runs
  auto seq_vol = [&] {
    double t0 = Now(), c0 = CpuSeconds();
    for (uint64_t off = 0; off < size; off += buf.size()) Must((*vol)->Read(off, buf.size(), buf.data()));
    v_seq_cpu = size / (CpuSeconds() - c0) / 1e6;
    return size / (Now() - t0) / 1e6;
  };
  const int kRandom = 50000;
  auto rnd = [&](bool file) {
    std::mt19937_64 rng(1);
    double t0 = Now();
    for (int i = 0; i < kRandom; ++i) {
      uint64_t off = (rng() % (size / 4096)) * 4096;
      if (file) {
        if (::pread(fd, buf.data(), 4096, static_cast<off_t>(off)) < 0) exit(1);
      } else {
        Must((*vol)->Read(off, 4096, buf.data()));
      }
    }
    return kRandom / (Now() - t0);
  };
  seq_file();  // warm the page cache
  double f_seq = seq_file(), v_seq = seq_vol();
  double f_rnd = rnd(true), v_rnd = rnd(false);
  printf("image %s: %.2f GiB, %llu mapped blocks\n", image.c_str(), size / 1073741824.0,
         (unsigned long long)(imp->summary.blocks - imp->summary.zero_blocks));
  printf("%-36s %12s %12s %8s\n", "", "raw file", "Volume", "ratio");
  printf("%-36s %9.0f MB/s %9.0f MB/s %8.2f\n", "sequential 1 MiB reads", f_seq, v_seq, v_seq / f_seq);
  printf("%-36s %9.0f IOPS %9.0f IOPS %8.2f\n", "random 4 KiB reads", f_rnd, v_rnd, v_rnd / f_rnd);
  printf("Volume sequential reads cost %.0f MB per CPU-second (both threads)\n", v_seq_cpu);
  ::close(fd);
  vol->reset();
  store->reset();
  return 0;
}
