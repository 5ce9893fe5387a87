// import_bench: our import of a real ext4 image, and the re-import of a copy with one
// file changed, side by side with the machine's limits (reading the file; SHA-256 on
// all cores) and with casync and borg on the same images, all in one run. Also the peak
// memory of importing a 10 GiB sparse image with the CLI.
//
// usage: import_bench [--tree DIR] [--work DIR] [--cli PATH]  (scratch files go in a new
//        directory under DIR, default /tmp, removed at the end)
// Prints a table; the figures in docs/BENCHMARKS.md come from it.
#include <fcntl.h>
#include <lz4.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>
#include <thread>

#include "bench/work_dir.h"
#include "core/image_source.h"
#include "core/process.h"
#include "core/sha256.h"
#include "core/store.h"
#include "core/tree_image.h"

using namespace stellarium;
namespace fs = std::filesystem;

namespace {

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

uint64_t DirBytes(const std::string& dir) {
  uint64_t total = 0;
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(dir, ec); !ec && it != fs::recursive_directory_iterator();
       it.increment(ec)) {
    if (it->is_regular_file(ec)) total += it->file_size(ec);
  }
  return total;
}

void Must(const Status& s) {
  if (!s.ok()) {
    fprintf(stderr, "import_bench: %s\n", s.ToString().c_str());
    exit(1);
  }
}

std::string ReadFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

struct Row {
  std::string what;
  double seconds = 0;
  uint64_t bytes = 0;     // input bytes
  uint64_t added = 0;     // bytes added to the tool's store
};

void PrintRow(const Row& r, double ref_seconds) {
  printf("%-44s %8.2f s %9.0f MB/s %12.1f MiB %8.2fx\n", r.what.c_str(), r.seconds,
         r.bytes / r.seconds / 1e6, r.added / 1048576.0, ref_seconds / r.seconds);
}

// Sum of the LZ4 sizes of each distinct non-zero 4 KiB block, compressed alone.
uint64_t IdealBytes(const std::string& img, std::set<ChunkId>* seen, uint64_t* distinct) {
  uint64_t total = 0;
  std::string out(LZ4_compressBound(4096), '\0');
  for (size_t off = 0; off + 4096 <= img.size(); off += 4096) {
    const char* p = img.data() + off;
    if (IsAllZero(p, 4096)) continue;
    if (!seen->insert(Sha256(p, 4096)).second) continue;
    ++*distinct;
    int n = LZ4_compress_default(p, out.data(), 4096, static_cast<int>(out.size()));
    total += std::min(n, 4096);
  }
  return total;
}

Row RunTool(const std::string& what, const std::vector<std::string>& argv, uint64_t bytes,
            const std::string& store_dir, const std::vector<std::string>& env = {}) {
  uint64_t before = DirBytes(store_dir);
  double t0 = Now();
  std::string out;
  Status s = RunProgramOk(argv, env, &out);
  double t1 = Now();
  if (!s.ok()) fprintf(stderr, "%s failed: %s\n", what.c_str(), s.ToString().c_str());
  return Row{what, t1 - t0, bytes, DirBytes(store_dir) - before};
}

}  // namespace

int main(int argc, char** argv) {
  std::string tree = "/usr/share", parent = "/tmp", cli = "stellarium";
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string a = argv[i];
    if (a == "--tree") tree = argv[i + 1];
    else if (a == "--work")
      parent = argv[i + 1];
    else if (a == "--cli") cli = argv[i + 1];
  }
  bench::WorkDir work_dir(parent, "import_bench");
  const std::string work = work_dir.path();
  const std::string a_img = work + "/a.img", b_img = work + "/b.img";

  printf("building an ext4 image of %s ...\n", tree.c_str());
  Must(BuildExt4FromTree(tree, 0, "bench", a_img));
  Must(RunProgramOk({"cp", "--sparse=always", a_img, b_img}));
  {
    std::ofstream(work + "/changed.txt") << std::string(20000, 'c') << "one file changed\n";
    Must(RunProgramOk({"debugfs", "-w", "-R", "write " + work + "/changed.txt /stellarium-bench-changed", b_img}));
  }
  const uint64_t size = fs::file_size(a_img);
  printf("image: %.2f GiB (%s)\n\n", size / 1073741824.0, a_img.c_str());

  // Machine limits, measured now.
  std::string a = ReadFile(a_img);  // warms the page cache for every tool alike
  double t0 = Now();
  {
    std::ifstream f(a_img, std::ios::binary);
    std::string buf(8 << 20, '\0');
    while (f.read(buf.data(), buf.size()) || f.gcount() > 0) {
    }
  }
  Row read_row{"limit: read the image file (page cache)", Now() - t0, size, 0};
  unsigned cores = std::max(1u, std::thread::hardware_concurrency());
  t0 = Now();
  {
    std::vector<std::thread> ts;
    for (unsigned c = 0; c < cores; ++c) {
      ts.emplace_back([&, c] {
        for (size_t off = c * 4096; off + 4096 <= a.size(); off += 4096 * cores) Sha256(a.data() + off, 4096);
      });
    }
    for (auto& t : ts) t.join();
  }
  Row sha_row{"limit: SHA-256 of 4 KiB blocks, " + std::to_string(cores) + " cores", Now() - t0, size, 0};

  // Ideal store sizes: distinct non-zero blocks, each LZ4-compressed alone.
  std::set<ChunkId> seen;
  uint64_t distinct_a = 0, distinct_b = 0;
  uint64_t ideal_a = IdealBytes(a, &seen, &distinct_a);
  std::string b = ReadFile(b_img);
  uint64_t ideal_delta = IdealBytes(b, &seen, &distinct_b);
  std::string().swap(b);  // give the memory back before the tools run
  std::string().swap(a);

  // Ours.
  const std::string store_dir = work + "/store";
  Row ours_a, ours_b;
  uint64_t new_chunks[2] = {0, 0};
  for (int k = 0; k < 2; ++k) {
    // The store is opened for each import and closed before it is measured, so that
    // background flushes and compactions have finished (closing waits for them).
    StoreOptions o;
    o.path = store_dir;
    uint64_t before = fs::exists(store_dir) ? DirBytes(store_dir) : 0;
    auto store = Store::Open(o);
    Must(store.status());
    const std::string& img = k == 0 ? a_img : b_img;
    auto src = OpenFileImageSource(img);
    Must(src.status());
    ImportOptions io;
    io.volume.name = k == 0 ? "a" : "b";
    double s0 = Now();
    auto r = (*store)->ImportImage(**src, io);
    double s1 = Now();
    Must(r.status());
    new_chunks[k] = r->summary.new_chunks;
    store->reset();
    uint64_t after = DirBytes(store_dir);
    Row row{std::string("stellarium import ") + (k == 0 ? "(first image)" : "(one file changed)"), s1 - s0,
            size, after > before ? after - before : 0};
    (k == 0 ? ours_a : ours_b) = row;
  }
  // casync.
  Row casync_a = RunTool("casync make (first image)",
                         {"casync", "make", "--store=" + work + "/casync.castr", work + "/a.caibx", a_img}, size,
                         work + "/casync.castr");
  Row casync_b = RunTool("casync make (one file changed)",
                         {"casync", "make", "--store=" + work + "/casync.castr", work + "/b.caibx", b_img}, size,
                         work + "/casync.castr");
  // borg, no compression, no encryption.
  std::vector<std::string> benv = {"BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes",
                                   "BORG_RELOCATED_REPO_ACCESS_IS_OK=yes", "BORG_BASE_DIR=" + work + "/borg-home"};
  Must(RunProgramOk({"borg", "init", "--encryption=none", work + "/borg"}, benv));
  Row borg_a = RunTool("borg create --compression none (first image)",
                       {"borg", "create", "--compression", "none", work + "/borg::a", a_img}, size, work + "/borg", benv);
  Row borg_b = RunTool("borg create --compression none (one file changed)",
                       {"borg", "create", "--compression", "none", work + "/borg::b", b_img}, size, work + "/borg", benv);

  printf("%-44s %10s %14s %16s %9s\n", "", "wall", "throughput", "added to store", "vs ours");
  PrintRow(read_row, ours_a.seconds);
  PrintRow(sha_row, ours_a.seconds);
  PrintRow(ours_a, ours_a.seconds);
  PrintRow(borg_a, ours_a.seconds);
  PrintRow(casync_a, ours_a.seconds);
  PrintRow(ours_b, ours_b.seconds);
  PrintRow(borg_b, ours_b.seconds);
  PrintRow(casync_b, ours_b.seconds);
  printf("\n(vs ours: the tool's wall time / ours; above 1 means we are faster)\n");
  printf("first import: %.2fx borg's speed (floor 1.0), %.2fx casync's (floor 3.0)\n",
         borg_a.seconds / ours_a.seconds, casync_a.seconds / ours_a.seconds);
  printf("store after first import: %.1f MiB, ideal %.1f MiB: %.3fx (floor <= 1.05)\n", ours_a.added / 1048576.0,
         ideal_a / 1048576.0, static_cast<double>(ours_a.added) / ideal_a);
  printf("first image: %llu new chunks, %llu distinct non-zero blocks\n", (unsigned long long)new_chunks[0],
         (unsigned long long)distinct_a);
  printf("second image: %llu new chunks, ideal %llu distinct new blocks (%.1f KiB compressed): %.3fx (floor <= 1.2)\n",
         (unsigned long long)new_chunks[1], (unsigned long long)distinct_b, ideal_delta / 1024.0,
         distinct_b ? static_cast<double>(new_chunks[1]) / distinct_b : 0.0);
  printf("second image: store grew %.1f MiB on disk in all (its block map included)\n", ours_b.added / 1048576.0);

  // Memory: a 10 GiB sparse image (the image's data at its start) through the CLI.
  const std::string big = work + "/sparse10g.img";
  Must(RunProgramOk({"cp", "--sparse=always", a_img, big}));
  Must(RunProgramOk({"truncate", "-s", "10G", big}));
  // GNU time measures the CLI's own peak RSS (a child forked from this large process
  // would start with a copy of ours).
  std::string st = work + "/store-mem";
  ProgramResult tr = RunProgram({"/usr/bin/time", "-f", "maxrss_kib=%M", cli, "build", "--store", st,
                                 "--from-image", big, "--name", "big"})
                         .value();
  int status = tr.exit_code;
  long maxrss_kib = 0;
  auto pos = tr.output.rfind("maxrss_kib=");
  if (pos != std::string::npos) maxrss_kib = std::stol(tr.output.substr(pos + 11));
  struct { long ru_maxrss; } ru{maxrss_kib};
  printf("10 GiB sparse image import (%s build): exit %d, peak RSS %.1f MiB (floor < 300)\n",
         cli.c_str(), status, ru.ru_maxrss / 1024.0);
  return 0;
}
