// crash_worker STORE SEED: writes, clones and imports in a loop until killed.
// Used by crash_test, which SIGKILLs it at random points.
#include <cstdio>
#include <random>

#include "core/image_source.h"
#include "core/store.h"
#include "tests/core/crash_workload.h"

using namespace stellarium;
using namespace stellarium::testing;

int main(int argc, char** argv) {
  if (argc != 3) return 2;
  StoreOptions o;
  o.path = argv[1];
  o.max_chain_depth = 4;  // flattening happens under the knife too
  auto store = Store::Open(o);
  if (!store.ok()) {
    fprintf(stderr, "%s\n", store.status().ToString().c_str());
    return 1;
  }
  std::mt19937_64 rng(std::stoull(argv[2]));
  auto vol = (*store)->FindVolumeByName("v");
  auto snap = (*store)->FindSnapshotByName("base");
  if (!vol.ok() || !snap.ok()) return 1;
  uint64_t gen = std::stoull(argv[2]) * 1000000;
  for (uint64_t n = 0;; ++n) {
    int op = rng() % 10;
    if (op < 6) {
      auto h = (*store)->OpenVolume(vol->id);
      if (!h.ok()) return 1;
      for (int k = 0; k < 8; ++k) {
        uint64_t i = rng() % kCrashBlocks;
        std::string b = CrashBlock(i, ++gen);
        if (!(*h)->Write(i * kCrashBs, b.data(), b.size()).ok()) return 1;
      }
      if (rng() % 4 == 0 && !(*h)->Flush().ok()) return 1;
    } else if (op < 8) {
      CreateVolumeRequest r;
      r.name = "c-" + std::string(argv[2]) + "-" + std::to_string(n);
      if (!(*store)->CreateVolumeFromSnapshot(r, snap->id).ok()) return 1;
      if (rng() % 2 && !(*store)->CreateSnapshot("s-" + r.name, vol->id).ok()) return 1;
    } else {
      ImportOptions io;
      io.volume.name = "i-" + std::to_string(n % 7);
      auto img = NewMemoryImageSource("crash image", CrashImage(n % 7));
      auto r = (*store)->ImportImage(*img, io);
      if (!r.ok() && r.status().code() != StatusCode::kAlreadyExists) return 1;
    }
  }
}
