// http_import_bench: importing an image over HTTP from 127.0.0.1, side by side in one run
// with what a user would otherwise do with the same URL: `curl -o` it, and (for qcow2)
// `qemu-img convert` it to raw.
//
// Two images are served by tests/sources/http_server.py (sendfile):
//   - a ~1 GiB qcow2 (made from a raw image by `qemu-img convert -O qcow2`): our path
//     converts it while it streams (core/sources/qcow2.h: download, convert, hash and store
//     at once), compared with `curl -o` alone (the floor: >= 0.8) and with `curl -o`
//     + `qemu-img convert`, which gives the user a raw file but no volume. A second row
//     reads the qcow2 URL through our source without importing: the source's own speed.
//   - the same raw image: the streaming path, and the HTTP source read alone.
// With --compressed, also a `qemu-img convert -c` qcow2 of the same image (zlib), read
// through our source without importing (decompression speed) and imported. `curl -o /dev/null` is
// the download alone (no disk write), the floor for the read-only rows. With --runs N every row is
// taken N times (interleaved) and its median printed, for a machine others share. The raw image is
// disk-like: random (incompressible) blocks, runs of zeros, repeats.
//
// With the driver built (stellarium_csi), it also times CreateVolume from the raw URL
// through a real stellarium-csi server on a unix socket, and a second one (a clone).
//
// Every row also reports the core-seconds it used (its own program's: ours in process,
// or curl / qemu-img as children) and the HTTP server's in the same interval: on a
// machine of N cores no row can take less than their sum / N seconds.
//
// usage: http_import_bench [--size-mib N] [--work DIR] [--compressed] [--runs N]
//        (default 1024 MiB, /var/tmp, 1 run)
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <thread>

#include "bench/cpu_time.h"
#include "core/process.h"
#include "core/sources/open.h"
#include "core/store.h"
#include "tests/sources/local_http_server.h"
#ifdef STELLARIUM_BENCH_CSI
#include <grpcpp/grpcpp.h>

#include "csi.grpc.pb.h"
#include "csi/server.h"
#endif

using namespace stellarium;
namespace fs = std::filesystem;

namespace {

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

void Must(const Status& s, const char* what) {
  if (!s.ok()) {
    fprintf(stderr, "http_import_bench: %s: %s\n", what, s.ToString().c_str());
    exit(1);
  }
}

void MakeRaw(const std::string& path, uint64_t bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  uint64_t x = 0x9e3779b97f4a7c15ull;
  auto next = [&] {  // splitmix64
    uint64_t z = (x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  };
  std::string block(4096, '\0'), zeros(4096, '\0'), repeated(4096, 'r');
  for (uint64_t off = 0; off < bytes; off += 4096) {
    uint64_t pick = next() % 10;
    if (pick < 3) {
      f.write(zeros.data(), 4096);
    } else if (pick < 4) {
      f.write(repeated.data(), 4096);
    } else {
      for (size_t i = 0; i < 4096; i += 8) {
        uint64_t v = next();
        std::memcpy(block.data() + i, &v, 8);
      }
      f.write(block.data(), 4096);
    }
  }
}

// One sample of a row: wall-clock seconds; core-seconds of this process and of the
// children it waited for (curl, qemu-img); core-seconds of the HTTP server.
struct Sample {
  double wall = 0, cpu = 0, server = 0;
};

pid_t g_server_pid = -1;  // the HTTP server, once started

class Clock {
 public:
  Clock()
      : wall_(Now()), cpu_(bench::SelfAndChildrenCpu()), server_(bench::ProcessCpu(g_server_pid)) {}
  Sample Stop() const {
    return {Now() - wall_, bench::SelfAndChildrenCpu() - cpu_,
            bench::ProcessCpu(g_server_pid) - server_};
  }

 private:
  double wall_, cpu_, server_;
};

Sample TimeProgram(const std::vector<std::string>& argv) {
  Clock c;
  std::string out;
  Must(RunProgramOk(argv, {}, &out), argv[0].c_str());
  return c.Stop();
}

struct Ours {
  Sample sample;
  ImportSummary summary;
};

Ours Import(const std::string& where, const std::string& work, const std::string& name) {
  std::string store_dir = work + "/store-" + name;
  fs::remove_all(store_dir);
  StoreOptions so;
  so.path = store_dir;
  auto store = Store::Open(so);
  Must(store.status(), "open store");
  Clock c;
  ImageSourceSpec spec;
  (where.rfind("http", 0) == 0 ? spec.url : spec.path) = where;
  spec.scratch_dir = work;
  auto opened = OpenImageSource(spec);
  Must(opened.status(), "open source");
  ImportOptions io;
  io.volume.name = name;
  auto r = (*store)->ImportImage(*opened->source, io);
  Must(r.status(), "import");
  Must((*store)->Sync(), "sync");
  Ours o;
  o.sample = c.Stop();
  o.summary = r->summary;
  store->reset();
  fs::remove_all(store_dir);
  return o;
}

// Reads a URL through OpenImageSource (format detection, qcow2 conversion) to the end
// without importing: what the source alone costs. *raw_bytes gets the raw image's size.
Sample ReadOnly(const std::string& url, const std::string& work, uint64_t* raw_bytes) {
  Clock c;
  ImageSourceSpec spec;
  spec.url = url;
  spec.scratch_dir = work;
  auto opened = OpenImageSource(spec);
  Must(opened.status(), "open source");
  std::vector<char> buf(4u << 20);
  uint64_t total = 0;
  for (;;) {
    bool hole = false;
    auto n = opened->source->Next(buf.data(), buf.size(), &hole);
    Must(n.status(), "read source");
    if (*n == 0) break;
    total += *n;
  }
  *raw_bytes = total;
  return c.Stop();
}

#ifdef STELLARIUM_BENCH_CSI
// The same URL through the driver: CreateVolume over gRPC on a unix socket (the
// ImageImporter's background import, then a clone), and a second CreateVolume of the
// same URL and digest (a clone, no request). Seconds of each call.
std::pair<double, double> CsiImport(const std::string& url, const std::string& sha256,
                                    const std::string& work) {
  const std::string dir = work + "/csi";
  fs::remove_all(dir);
  fs::create_directories(dir + "/kubelet");
  stellarium::csi::Options o;
  o.endpoint = "unix://" + dir + "/csi.sock";
  o.node_id = "bench";
  o.store = dir + "/store";
  o.state_dir = dir + "/state";
  o.kubelet_dir = dir + "/kubelet";
  o.log_level = "warn";
  Must(stellarium::csi::Validate(&o), "driver options");
  auto server = stellarium::csi::Server::Start(o);
  Must(server.status(), "start the driver");
  auto stub = ::csi::v1::Controller::NewStub(grpc::CreateChannel(o.endpoint, grpc::InsecureChannelCredentials()));
  auto create = [&](const std::string& name) {
    ::csi::v1::CreateVolumeRequest req;
    req.set_name(name);
    auto* cap = req.add_volume_capabilities();
    cap->mutable_block();
    cap->mutable_access_mode()->set_mode(::csi::v1::VolumeCapability::AccessMode::SINGLE_NODE_WRITER);
    (*req.mutable_parameters())["url"] = url;
    (*req.mutable_parameters())["sha256"] = sha256;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::hours(1));
    ::csi::v1::CreateVolumeResponse resp;
    double t = Now();
    grpc::Status st = stub->CreateVolume(&ctx, req, &resp);
    if (!st.ok()) {
      fprintf(stderr, "http_import_bench: CreateVolume: %s\n", st.error_message().c_str());
      exit(1);
    }
    return Now() - t;
  };
  double first = create("pvc-1");
  double second = create("pvc-2");
  server->reset();
  fs::remove_all(dir);
  return {first, second};
}
#endif

}  // namespace

int main(int argc, char** argv) {
  uint64_t mib = 1024;
  std::string work_parent = "/var/tmp";
  bool compressed = false;
  int runs = 1;
  for (int i = 1; i < argc; ++i) {
    if (!strcmp(argv[i], "--size-mib") && i + 1 < argc) mib = std::stoull(argv[++i]);
    else if (!strcmp(argv[i], "--work") && i + 1 < argc) work_parent = argv[++i];
    else if (!strcmp(argv[i], "--compressed")) compressed = true;
    else if (!strcmp(argv[i], "--runs") && i + 1 < argc) runs = std::max(1, atoi(argv[++i]));
    else {
      fprintf(stderr, "usage: http_import_bench [--size-mib N] [--work DIR] [--compressed] [--runs N]\n");
      return 2;
    }
  }
  std::string work = work_parent + "/http-import-bench-" + std::to_string(getpid());
  fs::create_directories(work + "/www");
  const std::string raw = work + "/www/disk.img", qcow = work + "/www/disk.qcow2";
  const uint64_t bytes = mib << 20;
  fprintf(stderr, "making a %llu MiB raw image and its qcow2 in %s ...\n", (unsigned long long)mib, work.c_str());
  MakeRaw(raw, bytes);
  Must(RunProgramOk({"qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", raw, qcow}), "qemu-img");
  const uint64_t qcow_bytes = fs::file_size(qcow);
  const std::string cqcow = work + "/www/disk-c.qcow2";
  if (compressed) {
    Must(RunProgramOk({"qemu-img", "convert", "-q", "-c", "-f", "raw", "-O", "qcow2", raw, cqcow}), "qemu-img -c");
  }

  testing::LocalHttpServer server(STELLARIUM_TEST_SERVER, work + "/www");
  if (!server.port()) {
    fprintf(stderr, "http_import_bench: %s\n", server.error().c_str());
    return 1;
  }
  g_server_pid = server.pid();
  const std::string qurl = server.Url("/disk.qcow2"), rurl = server.Url("/disk.img");
  const std::string curl_c = server.Url("/disk-c.qcow2");

  // Warm the page cache so no row pays for the first read of the served file.
  TimeProgram({"curl", "-sSf", "-o", "/dev/null", qurl});
  TimeProgram({"curl", "-sSf", "-o", "/dev/null", rurl});
  if (compressed) TimeProgram({"curl", "-sSf", "-o", "/dev/null", curl_c});

  // Every row's samples; the one with the median wall-clock time is printed.
  std::map<std::string, std::vector<Sample>> t;
  auto median_sample = [&](const std::string& row) {
    std::vector<Sample> v = t[row];
    std::sort(v.begin(), v.end(), [](const Sample& a, const Sample& b) { return a.wall < b.wall; });
    return v[v.size() / 2];
  };
  auto median = [&](const std::string& row) { return median_sample(row).wall; };
  const std::string out = work + "/out";
  Ours ours_q;
  for (int run = 0; run < runs; ++run) {
    // The rows that write nothing first: right after a 1 GiB write and delete the
    // machine serves slower for a while, which is not what those rows measure.
    t["curl_null_q"].push_back(TimeProgram({"curl", "-sSf", "-o", "/dev/null", qurl}));
    uint64_t n = 0;
    t["read_q"].push_back(ReadOnly(qurl, work, &n));
    if (n != bytes) Must(Status::Internal("read qcow2 returned " + std::to_string(n) + " bytes"), "read-only");
    t["curl_q"].push_back(TimeProgram({"curl", "-sSf", "-o", out + ".qcow2", qurl}));
    t["conv"].push_back(
        TimeProgram({"qemu-img", "convert", "-q", "-f", "qcow2", "-O", "raw", out + ".qcow2", out + ".raw"}));
    fs::remove(out + ".qcow2");
    fs::remove(out + ".raw");
    ours_q = Import(qurl, work, "qcow2");
    t["ours_q"].push_back(ours_q.sample);

    t["curl_null_r"].push_back(TimeProgram({"curl", "-sSf", "-o", "/dev/null", rurl}));
    t["read_r"].push_back(ReadOnly(rurl, work, &n));
    if (n != bytes) Must(Status::Internal("read raw returned " + std::to_string(n) + " bytes"), "read-only");
    t["curl_r"].push_back(TimeProgram({"curl", "-sSf", "-o", out + ".img", rurl}));
    fs::remove(out + ".img");
    t["ours_r"].push_back(Import(rurl, work, "raw").sample);
    // The same importer reading the local raw file: the store's own speed here, which
    // bounds every source.
    t["local_r"].push_back(Import(raw, work, "local").sample);
    if (compressed) {
      t["read_c"].push_back(ReadOnly(curl_c, work, &n));
      if (n != bytes) Must(Status::Internal("read compressed returned " + std::to_string(n) + " bytes"), "read-only");
      t["curl_c"].push_back(TimeProgram({"curl", "-sSf", "-o", out + ".c.qcow2", curl_c}));
      fs::remove(out + ".c.qcow2");
      t["ours_c"].push_back(Import(curl_c, work, "compressed").sample);
    }
  }
  const double curl_null_q = median("curl_null_q"), curl_q = median("curl_q"), conv = median("conv"),
               read_q = median("read_q"), ours_q_s = median("ours_q"), curl_null_r = median("curl_null_r"),
               curl_r = median("curl_r"), read_r = median("read_r"), ours_r_s = median("ours_r"),
               local_r_s = median("local_r");
#ifdef STELLARIUM_BENCH_CSI
  std::string sha;
  Must(RunProgramOk({"sha256sum", raw}, {}, &sha), "sha256sum");
  auto [csi_first, csi_second] = CsiImport(rurl, sha.substr(0, 64), work);
#endif

  auto mbs = [](uint64_t b, double s) { return b / 1e6 / s; };
  const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
  printf(
      "http_import_bench: %llu MiB raw image (qcow2 %.0f MiB), served from 127.0.0.1, %u cores, "
      "median of %d run(s)\n",
      (unsigned long long)mib, qcow_bytes / 1048576.0, cores, runs);
  printf("%-44s %9s %12s %9s %9s\n", "", "seconds", "raw MB/s", "CPU s", "server s");
  auto row = [&](const char* label, const Sample& x) {
    printf("%-44s %9.2f %12.0f %9.2f %9.2f\n", label, x.wall, mbs(bytes, x.wall), x.cpu, x.server);
  };
  const Sample curl_q_x = median_sample("curl_q"), conv_x = median_sample("conv"),
               ours_q_x = median_sample("ours_q"), curl_r_x = median_sample("curl_r"),
               ours_r_x = median_sample("ours_r");
  row("curl -o /dev/null disk.qcow2 (download only)", median_sample("curl_null_q"));
  row("curl -o disk.qcow2", curl_q_x);
  row("qemu-img convert qcow2 -> raw (local)", conv_x);
  row("curl -o + qemu-img convert",
      {curl_q_x.wall + conv_x.wall, curl_q_x.cpu + conv_x.cpu, curl_q_x.server + conv_x.server});
  row("ours: read qcow2 URL -> raw (no import)", median_sample("read_q"));
  row("ours: qcow2 URL -> volume (streamed)", ours_q_x);
  row("curl -o /dev/null disk.img (download only)", median_sample("curl_null_r"));
  row("curl -o disk.img", curl_r_x);
  row("ours: read raw URL (no import)", median_sample("read_r"));
  row("ours: raw URL -> volume (streamed)", ours_r_x);
  row("ours: local raw file -> volume", median_sample("local_r"));
  if (compressed) {
    row("curl -o disk-c.qcow2 (qemu-img -c)", median_sample("curl_c"));
    printf("%-44s (file %.0f MiB)\n", "", fs::file_size(cqcow) / 1048576.0);
    row("ours: read compressed qcow2 URL (no import)", median_sample("read_c"));
    row("ours: compressed qcow2 URL -> volume", median_sample("ours_c"));
  }
  printf(
      "(CPU s: core-seconds of the row's own program, ours in process or curl/qemu-img; "
      "server s: the HTTP server's, same interval)\n");
#ifdef STELLARIUM_BENCH_CSI
  printf("%-44s %9.2f %12.0f\n", "driver: CreateVolume from the raw URL", csi_first, mbs(bytes, csi_first));
  printf("%-44s %9.4f %12s\n", "driver: 2nd CreateVolume, same URL+sha256", csi_second, "(clone)");
#endif
  printf("stored: %llu new chunks, %.0f MiB (of %llu MiB raw; zero blocks %llu)\n",
         (unsigned long long)ours_q.summary.new_chunks, ours_q.summary.bytes_added / 1048576.0,
         (unsigned long long)mib, (unsigned long long)ours_q.summary.zero_blocks);
  double r1 = curl_q / ours_q_s, r2 = (curl_q + conv) / ours_q_s, r3 = curl_r / ours_r_s;
  printf("ratio qcow2: ours vs curl -o                 %.2f  (floor 0.80: %s)\n", r1, r1 >= 0.8 ? "met" : "NOT met");
  printf("ratio qcow2: ours vs curl -o + qemu-img       %.2f\n", r2);
  printf("ratio qcow2: read-only source vs curl -o     %.2f  (vs curl -o /dev/null: %.2f; the qcow2 source's own speed)\n",
         curl_q / read_q, curl_null_q / read_q);
  printf("ratio raw:   read-only source vs curl -o     %.2f  (vs curl -o /dev/null: %.2f; the HTTP source's own speed)\n",
         curl_r / read_r, curl_null_r / read_r);
  printf("ratio raw:   ours vs curl -o                 %.2f  (floor 0.80: %s)\n", r3, r3 >= 0.8 ? "met" : "NOT met");
  printf("ratio raw:   URL import vs local file import  %.2f  (the HTTP source's own cost)\n",
         local_r_s / ours_r_s);
  // What the cores allow: a row's core-seconds (its own and the server's) spread over
  // every core is the least time it can take; the floor asks ours <= curl -o / 0.8.
  auto bound = [&](const char* what, const Sample& ours, const Sample& curl) {
    const double need = ours.cpu + ours.server, least = need / cores, allowed = curl.wall / 0.8;
    printf(
        "%s: ours needs %.2f core-s (with the server's) -> at least %.2f s on %u cores; "
        "the floor needs <= %.2f s (curl -o %.2f s, %.2f core-s)%s\n",
        what, need, least, cores, allowed, curl.wall, curl.cpu + curl.server,
        least > allowed ? ": beyond these cores" : "");
  };
  bound("cores qcow2", ours_q_x, curl_q_x);
  bound("cores raw  ", ours_r_x, curl_r_x);
  fs::remove_all(work);
  return 0;
}
