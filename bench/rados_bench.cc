// rados_bench: the store on Ceph RADOS against what a Ceph user has, in one run on one
// test cluster (scripts/ceph-test-cluster.sh, started here and stopped at the end):
//   import  an ext4 image of a tree (default /usr/share) with `stellarium build` into
//           rados://POOL/ours, beside `rbd import` of the same raw image and `rados bench`
//           writing 4 MiB objects 16 at a time for as many bytes (the cluster's limit);
//           the bytes each leaves in the pool; our import's peak RSS;
//   read    the whole volume from a second process with an empty cache (`stellarium
//           export`), beside `rbd export`; then again with the cache warm, beside an
//           export from the local store;
//   clones  snapshot and clone of a 1 GiB and a 64 GiB volume on the pool (clone_bench).
// It prints every figure and the ratios the floors name.
//
// usage: rados_bench --cli build/builder/stellarium [--tree DIR] [--work DIR]
#include <rados/librados.hpp>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "bench/work_dir.h"
#include "core/process.h"
#include "core/tree_image.h"

using namespace stellarium;
namespace fs = std::filesystem;

namespace {

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

void Must(const Status& s, const std::string& what) {
  if (!s.ok()) {
    fprintf(stderr, "rados_bench: %s: %s\n", what.c_str(), s.ToString().c_str());
    exit(1);
  }
}

struct Timed {
  double seconds = 0;
  uint64_t max_rss_kib = 0;
  std::string output;
};

// Runs argv under /usr/bin/time (peak RSS), fails the bench when it fails. Every row
// starts with no dirty data on the machine (sync, untimed): otherwise a row pays for
// the writeback of the files the rows before it wrote (exports write 1.2 GiB each).
// With flush, the time includes a sync after the program: `stellarium export` fsyncs
// the file it writes, `rbd export` does not, so its row pays for the same flush.
Timed Run(const std::string& what, std::vector<std::string> argv, bool flush = false) {
  argv.insert(argv.begin(), {"/usr/bin/time", "-f", "maxrss_kib=%M"});
  ::sync();
  Timed t;
  const double t0 = Now();
  auto r = RunProgram(argv);
  if (flush) ::sync();
  t.seconds = Now() - t0;
  if (!r.ok() || r->exit_code != 0) {
    fprintf(stderr, "rados_bench: %s failed:\n%s\n", what.c_str(), r.ok() ? r->output.c_str() : "");
    exit(1);
  }
  t.output = r->output;
  const size_t at = t.output.rfind("maxrss_kib=");
  if (at != std::string::npos) t.max_rss_kib = std::stoull(t.output.substr(at + 11));
  return t;
}

// Bytes of the objects of one namespace whose names start with `prefix`.
uint64_t ObjectBytes(librados::Rados& rados, const std::string& pool, const std::string& ns,
                     const std::string& prefix, uint64_t* count = nullptr) {
  librados::IoCtx io;
  if (rados.ioctx_create(pool.c_str(), io) != 0) return 0;
  io.set_namespace(ns);
  uint64_t total = 0;
  for (auto it = io.nobjects_begin(); it != io.nobjects_end(); ++it) {
    if (it->get_oid().rfind(prefix, 0) != 0) continue;
    uint64_t size = 0;
    time_t mtime;
    if (io.stat(it->get_oid(), &size, &mtime) == 0) total += size;
    if (count) ++*count;
  }
  return total;
}

struct Cluster {
  std::string dir, conf, pool;
  ~Cluster() {
    if (!dir.empty()) (void)RunProgram({STELLARIUM_CEPH_TEST_CLUSTER_SCRIPT, "stop", dir});
  }
};

void Start(Cluster* c, const std::string& dir) {
  auto r = RunProgram({STELLARIUM_CEPH_TEST_CLUSTER_SCRIPT, "start", dir, "--osd-gib", "20"});
  if (!r.ok() || r->exit_code != 0) {
    fprintf(stderr, "rados_bench: the test cluster did not start:\n%s\n", r.ok() ? r->output.c_str() : "");
    exit(1);
  }
  c->dir = dir;
  std::istringstream lines(r->output);
  for (std::string line; std::getline(lines, line);) {
    if (line.rfind("CEPH_CONF=", 0) == 0) c->conf = line.substr(10);
    if (line.rfind("CEPH_POOL=", 0) == 0) c->pool = line.substr(10);
  }
}

void Row(const char* what, double seconds, uint64_t bytes, uint64_t stored) {
  printf("%-52s %7.2f s %7.0f MB/s %10.1f MiB\n", what, seconds, bytes / seconds / 1e6,
         stored / 1048576.0);
}

}  // namespace

int main(int argc, char** argv) {
  const std::string self = fs::canonical("/proc/self/exe").string();
  std::string tree = "/usr/share", parent = "/var/tmp", cli;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--tree") tree = argv[i + 1];
    else if (a == "--work") parent = argv[i + 1];
    else if (a == "--cli") cli = argv[i + 1];
  }
  if (cli.empty()) {
    fprintf(stderr, "usage: rados_bench --cli PATH/stellarium [--tree DIR] [--work DIR]\n");
    return 2;
  }
  bench::WorkDir work_dir(parent, "rados_bench");
  const std::string work = work_dir.path(), img = work + "/image.img";
  printf("building an ext4 image of %s ...\n", tree.c_str());
  Must(BuildExt4FromTree(tree, 0, "bench", img), "image");
  const uint64_t size = fs::file_size(img);
  Cluster cluster;
  Start(&cluster, work + "/cluster");
  printf("image %.2f GiB; cluster %s, pool %s (one OSD, BlueStore on a file)\n\n",
         size / 1073741824.0, cluster.conf.c_str(), cluster.pool.c_str());
  librados::Rados rados;
  if (rados.init("admin") || rados.conf_read_file(cluster.conf.c_str()) || rados.connect()) {
    fprintf(stderr, "rados_bench: cannot connect\n");
    return 1;
  }
  const std::string ours = "rados://" + cluster.pool + "/ours";
  const std::vector<std::string> ceph = {"--ceph-conf", cluster.conf};
  auto with = [&](std::vector<std::string> a, std::vector<std::string> b) {
    a.insert(a.end(), b.begin(), b.end());
    return a;
  };

  // Import.
  Timed rbd_in = Run("rbd import", {"rbd", "-c", cluster.conf, "import", "--no-progress", img,
                                    cluster.pool + "/bench"});
  const uint64_t rbd_bytes = ObjectBytes(rados, cluster.pool, "", "rbd_data.");
  Timed our_in = Run("stellarium build", with({cli, "build", "--store", ours, "--from-image", img,
                                                "--name", "image"}, ceph));
  const uint64_t pack_bytes = ObjectBytes(rados, cluster.pool, "ours", "stellarium.pack.");
  const uint64_t map_bytes = ObjectBytes(rados, cluster.pool, "ours", "stellarium.map");
  const uint64_t objects = (size + (4 << 20) - 1) / (4 << 20);
  Timed bench_in = Run("rados bench", {"rados", "-c", cluster.conf, "-p", cluster.pool, "-N", "radosbench",
                                       "bench", "600", "write", "-t", "16", "-b", "4194304",
                                       "--max-objects", std::to_string(objects), "--no-cleanup"});
  printf("%-52s %9s %12s %14s\n", "", "time", "of the image", "in the pool");
  Row("rados bench: 4 MiB objects, 16 at a time", bench_in.seconds, objects << 22, objects << 22);
  Row("rbd import", rbd_in.seconds, size, rbd_bytes);
  Row("stellarium build --from-image (rados://)", our_in.seconds, size, pack_bytes + map_bytes);
  printf("  ours: %.1f MiB of packs, %.1f MiB of map records (omap entries not counted)\n",
         pack_bytes / 1048576.0, map_bytes / 1048576.0);

  // Read: a second process with an empty cache, then with it warm; the local store.
  const std::string cache = work + "/cache";
  Timed rbd_out = Run("rbd export", {"rbd", "-c", cluster.conf, "export", "--no-progress",
                                     cluster.pool + "/bench", work + "/rbd.out"}, /*flush=*/true);
  Timed cold = Run("export, empty cache", with({cli, "export", "--store", ours, "--cache", cache,
                                                 "--volume", "image", "-o", work + "/cold.out"}, ceph));
  Timed warm = Run("export, warm cache", with({cli, "export", "--store", ours, "--cache", cache,
                                                "--volume", "image", "-o", work + "/warm.out"}, ceph));
  Must(RunProgramOk({"cmp", img, work + "/cold.out"}), "the cold export differs from the image");
  Must(RunProgramOk({"cmp", img, work + "/warm.out"}), "the warm export differs from the image");
  const std::string local = work + "/local";
  Run("local import", {cli, "build", "--store", local, "--from-image", img, "--name", "image"});
  Timed local_out = Run("local export", {cli, "export", "--store", local, "--volume", "image", "-o",
                                          work + "/local.out"});
  Row("rbd export (and a sync of the file it wrote)", rbd_out.seconds, size, 0);
  Row("stellarium export, new process, empty cache", cold.seconds, size, 0);
  Row("stellarium export, new process, warm cache", warm.seconds, size, 0);
  Row("stellarium export from the local store", local_out.seconds, size, 0);

  printf("\nfloors (issue 19):\n");
  printf("  import: ours %.2fx the speed of rbd import (floor 1.0)\n", rbd_in.seconds / our_in.seconds);
  printf("  pool bytes: ours %.2fx RBD's (floor at most 0.5)\n",
         static_cast<double>(pack_bytes + map_bytes) / rbd_bytes);
  printf("  cold read: ours %.2fx the speed of rbd export (floor 0.8)\n", rbd_out.seconds / cold.seconds);
  printf("  import peak RSS: %.0f MiB (floor below 300)\n", our_in.max_rss_kib / 1024.0);
  printf("  warm read: %.2fx the local store's export\n", local_out.seconds / warm.seconds);
  printf("  import against rados bench's 4 MiB writes: %.2fx its time\n", our_in.seconds / bench_in.seconds);

  // Snapshot and clone on the pool: bench/clone_bench (beside this program) on its own
  // namespace, 1 GiB against 64 GiB.
  const std::string clone_bench = (fs::path(self).parent_path() / "clone_bench").string();
  printf("\nsnapshot and clone on rados:// (%s):\n", clone_bench.c_str());
  fflush(stdout);
  Timed clones = Run("clone_bench", {clone_bench, "--store", "rados://" + cluster.pool + "/clones",
                                     "--ceph-conf", cluster.conf, "--reps", "5"});
  printf("%s", clones.output.substr(0, clones.output.rfind("maxrss_kib=")).c_str());
  return 0;
}
