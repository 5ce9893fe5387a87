// rados_worker PATH CONF ID SEED [OPS]: imports, clones, snapshots, deletes and collects
// on a RADOS store in a loop, OPS times or until killed. Used by the RADOS store's crash
// and concurrency tests (rados_store_test), which SIGKILL it at random points or run two
// at once.
#include <cstdio>
#include <random>
#include <vector>

#include "core/image_source.h"
#include "tests/ceph/rados_workload.h"

using namespace stellarium;
using namespace stellarium::testing;

namespace {

// One step of the workload; a failure a concurrent client can cause (ABORTED: a guarded
// catalog change lost a race; NOT_FOUND: the other deleted it first) is part of the game.
Status Step(Store& store, std::mt19937_64& rng, const std::string& me, uint64_t n) {
  const int op = static_cast<int>(rng() % 10);
  const uint64_t k = rng() % 4;
  auto vols = store.ListVolumes();
  RETURN_IF_ERROR(vols.status());
  if (op < 3 || vols->empty()) {
    ImportOptions o;
    o.volume.name = "img-" + std::to_string(k) + "-" + me + "-" + std::to_string(n);
    // Many small periods: a kill lands between an import's ingests more often.
    o.data_period_bytes = 64 << 10;
    o.index_period_blocks = 128;
    return store.ImportImage(*NewMemoryImageSource(o.volume.name, RadosImage(k)), o).status();
  }
  const VolumeInfo& v = (*vols)[rng() % vols->size()];
  const int64_t vk = ImageOfName(v.name);
  if (vk < 0) return Status::Ok();
  if (op < 5) {
    CreateVolumeRequest r;
    r.name = "clone-" + std::to_string(vk) + "-" + me + "-" + std::to_string(n);
    return store.CloneVolume(r, v.id).status();
  }
  if (op < 7) {
    auto snap = store.CreateSnapshot("snap-" + std::to_string(vk) + "-" + me + "-" + std::to_string(n), v.id);
    RETURN_IF_ERROR(snap.status());
    CreateVolumeRequest r;
    r.name = "clone-" + std::to_string(vk) + "-" + me + "-s" + std::to_string(n);
    RETURN_IF_ERROR(store.CreateVolumeFromSnapshot(r, snap->id).status());
    return store.DeleteSnapshot(snap->id);
  }
  if (op < 9) return store.DeleteVolume(v.id);
  GcOptions gc;
  gc.full = false;
  return store.Gc(gc).status();
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 5) {
    fprintf(stderr, "usage: rados_worker PATH CONF ID SEED [OPS]\n");
    return 2;
  }
  auto store = Store::Open(RadosTestOptions(argv[1], argv[2], argv[3], ""));
  if (!store.ok()) {
    fprintf(stderr, "rados_worker: %s\n", store.status().ToString().c_str());
    return 1;
  }
  const std::string me = std::string("w") + argv[4];
  std::mt19937_64 rng(std::stoull(argv[4]));
  const uint64_t ops = argc > 5 ? std::stoull(argv[5]) : UINT64_MAX;
  for (uint64_t n = 0; n < ops; ++n) {
    Status st = Step(**store, rng, me, n);
    if (!st.ok() && st.code() != StatusCode::kAborted && st.code() != StatusCode::kNotFound &&
        st.code() != StatusCode::kFailedPrecondition) {
      fprintf(stderr, "rados_worker: %s\n", st.ToString().c_str());
      return 1;
    }
  }
  return 0;
}
