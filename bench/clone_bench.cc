// clone_bench: snapshot and clone are O(1). Times CreateSnapshot, CreateVolumeFromSnapshot
// and CloneVolume on a 1 GiB and a 64 GiB volume, each with real data mapped, and
// prints the ratio of the two (expected about 1).
//
// usage: clone_bench [--work DIR] [--reps N]  (the store goes in a new directory under
//        DIR, default /tmp, removed at the end)
//        clone_bench --store rados://POOL/NAMESPACE [--ceph-conf F] [--ceph-id ID] [--reps N]
//        (the same on the store on a Ceph pool; bench/rados_bench runs it so)
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "bench/work_dir.h"
#include "core/store.h"

using namespace stellarium;

namespace {

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

void Must(const Status& s) {
  if (!s.ok()) {
    fprintf(stderr, "clone_bench: %s\n", s.ToString().c_str());
    exit(1);
  }
}

// Generates an image of `size` bytes in which one block of every `stride` holds data
// (256 distinct contents, so the store stays small) and the rest are holes.
class PatternSource : public ImageSource {
 public:
  PatternSource(uint64_t size, uint64_t stride) : size_(size), stride_(stride) {}
  std::string Describe() const override { return "pattern"; }
  std::optional<uint64_t> Size() const override { return size_; }
  Result<size_t> Next(char* buf, size_t max, bool* hole) override {
    if (pos_ >= size_) return size_t{0};
    uint64_t block = pos_ / 4096;
    if (block % stride_ != 0) {
      uint64_t next_data = (block / stride_ + 1) * stride_ * 4096;
      size_t n = static_cast<size_t>(std::min<uint64_t>({max, next_data - pos_, size_ - pos_}));
      *hole = true;
      pos_ += n;
      return n;
    }
    *hole = false;
    size_t n = std::min<size_t>(max, 4096);
    std::memset(buf, static_cast<int>(1 + block % 255), n);
    std::memcpy(buf, &block, std::min<size_t>(n, 1));
    pos_ += n;
    return n;
  }

 private:
  uint64_t size_, stride_, pos_ = 0;
};

struct Times {
  double snapshot = 0, clone_snap = 0, clone_vol = 0;
  uint64_t mapped = 0;
};

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

Times Measure(Store& store, const std::string& tag, uint64_t size, uint64_t stride, int reps) {
  ImportOptions io;
  io.volume.name = "base-" + tag;
  PatternSource src(size, stride);
  auto imp = store.ImportImage(src, io);
  Must(imp.status());
  Times t;
  t.mapped = imp->summary.blocks - imp->summary.zero_blocks;
  auto vol = store.OpenVolume(imp->volume.id);
  Must(vol.status());
  std::vector<double> snap, cs, cv;
  std::string block(4096, 'w');
  for (int i = 0; i < reps; ++i) {
    // Dirty the head so every snapshot freezes a real layer.
    block[0] = static_cast<char>(i);
    Must((*vol)->Write(static_cast<uint64_t>(i) * 4096 * 7, block.data(), block.size()));
    double t0 = Now();
    auto s = store.CreateSnapshot("snap-" + tag + "-" + std::to_string(i), imp->volume.id);
    double t1 = Now();
    Must(s.status());
    CreateVolumeRequest r;
    r.name = "from-snap-" + tag + "-" + std::to_string(i);
    auto c = store.CreateVolumeFromSnapshot(r, s->id);
    double t2 = Now();
    Must(c.status());
    snap.push_back(t1 - t0);
    cs.push_back(t2 - t1);
  }
  vol->reset();
  for (int i = 0; i < reps; ++i) {
    CreateVolumeRequest r;
    r.name = "clone-" + tag + "-" + std::to_string(i);
    double t0 = Now();
    auto c = store.CloneVolume(r, imp->volume.id);
    double t1 = Now();
    Must(c.status());
    cv.push_back(t1 - t0);
    // Keep the source's chain from growing across repetitions: delete the clone.
    Must(store.DeleteVolume(c->id));
  }
  t.snapshot = Median(snap);
  t.clone_snap = Median(cs);
  t.clone_vol = Median(cv);
  return t;
}

}  // namespace

int main(int argc, char** argv) {
  std::string parent = "/tmp";
  int reps = 7;
  StoreOptions o;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string a = argv[i];
    if (a == "--work") parent = argv[i + 1];
    if (a == "--reps") reps = std::stoi(argv[i + 1]);
    if (a == "--store") o.path = argv[i + 1];
    if (a == "--ceph-conf") o.ceph_conf = argv[i + 1];
    if (a == "--ceph-id") o.ceph_id = argv[i + 1];
  }
  bench::WorkDir work(parent, "clone_bench");
  if (o.path.empty()) o.path = work.path() + "/store";
  printf("store: %s\n", o.path.c_str());
  o.max_chain_depth = 64;  // measure the O(1) path, not the occasional flatten
  auto store = Store::Open(o);
  Must(store.status());
  printf("mapping data: 1 GiB volume (every block), 64 GiB volume (every 8th block) ...\n");
  Times small = Measure(**store, "1g", 1ull << 30, 1, reps);
  Times big = Measure(**store, "64g", 64ull << 30, 8, reps);
  printf("\n%-28s %14s %14s %8s\n", ("median of " + std::to_string(reps)).c_str(), "1 GiB", "64 GiB", "ratio");
  printf("%-28s %14llu %14llu\n", "mapped blocks", (unsigned long long)small.mapped, (unsigned long long)big.mapped);
  auto row = [](const char* what, double a, double b) {
    printf("%-28s %11.3f ms %11.3f ms %8.2f\n", what, a * 1e3, b * 1e3, b / a);
  };
  row("snapshot", small.snapshot, big.snapshot);
  row("clone from snapshot", small.clone_snap, big.clone_snap);
  row("clone from volume", small.clone_vol, big.clone_vol);
  store->reset();
  return 0;
}
