// node_data_path: the node's data path in one run, on one imported volume of random
// data (so nothing is deduplicated or zero):
//   (a) the plain exported raw file (what a copying driver would hand out),
//   (b) a loop device (direct I/O) on the volume's file in a FUSE mount (the block
//       device exposure), and the same with the store's disk read-ahead off,
//   (c) vhost-user-blk served from the store, read from inside a QEMU guest (microvm,
//       TCG), against the same guest reading the exported raw file as a plain
//       virtio-blk drive (cache=none).
// Every pass runs the same static program, node_reader (sequential 1 MiB and random
// 4 KiB O_DIRECT reads); in the guest it comes in on a second drive. The page cache
// is dropped before each pass (echo 3 > /proc/sys/vm/drop_caches) when the machine
// allows it, and the output says whether it did. Prints the figures and the ratios
// against the floors: (b)/(a) >= 0.5 for sequential reads, (c) >= 0.7 of the
// guest's raw-file figure. For the host passes it also prints the core-seconds the
// whole machine was busy during the sequential read (the store's threads, FUSE, the
// loop device's kernel workers), and what one core's SHA-256 check of every 4 KiB chunk
// costs: on N cores a pass that needs S core-seconds per GiB reads at most N / S GiB/s.
//
// usage: node_data_path --reader PATH [--size-mib N] [--rand N] [--work DIR]
//                       [--guest-dir DIR] [--source-dir DIR]          (root: FUSE, loop)
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "bench/cpu_time.h"
#include "bench/node_bench_util.h"
#include "core/image_source.h"
#include "core/sha256.h"
#include "core/store.h"
#include "csi/node/block_device/fuse_block_server.h"
#include "csi/node/block_device/loop_control.h"
#include "csi/node/vhost_user/vhost_user_blk.h"
#include "tests/node/guest_util.h"
#include "tests/node/test_util.h"

using namespace stellarium;
using stellarium::testing::CommandResult;
using stellarium::testing::RunCommand;

namespace {

void Must(bool ok, const std::string& what) { bench::Must(ok, "node_data_path", what); }

struct Figures {
  double seq_mbps = 0;
  double rand_iops = 0;
  double seq_busy = 0;  // core-seconds the machine was busy during the sequential read
};

bool DropCaches() {
  ::sync();
  std::ofstream f("/proc/sys/vm/drop_caches");
  if (!f) return false;
  f << "3\n";
  f.flush();
  return static_cast<bool>(f);
}

// Parses the NODE-READER lines of a run (host or guest console).
Figures Parse(const std::string& out, const std::string& what) {
  Figures f;
  std::smatch m;
  Must(std::regex_search(out, m, std::regex("NODE-READER seq .* MBps=([0-9.]+)")),
       what + ": no sequential figure in:\n" + out);
  f.seq_mbps = std::stod(m[1]);
  Must(std::regex_search(out, m, std::regex("NODE-READER rand .* IOPS=([0-9.]+)")),
       what + ": no random figure in:\n" + out);
  f.rand_iops = std::stod(m[1]);
  return f;
}

}  // namespace

int main(int argc, char** argv) {
  const std::vector<std::string> known = {"--reader", "--size-mib",  "--rand",
                                          "--work",   "--guest-dir", "--source-dir"};
  const char* usage =
      "node_data_path --reader PATH [--size-mib N] [--rand N] [--work DIR] [--guest-dir DIR] "
      "[--source-dir DIR]";
  auto flag = [&](const char* name, const std::string& fallback) {
    return bench::FlagValue(argc, argv, name, fallback, known, usage);
  };
  const std::string reader = flag("--reader", "");
  const uint64_t size = std::strtoull(flag("--size-mib", "1024").c_str(), nullptr, 10) << 20;
  const std::string rand_reads = flag("--rand", "20000");
  const std::string guest_dir = flag("--guest-dir", testing::DefaultGuestDir());
  const std::string source_dir = flag("--source-dir", STELLARIUM_SOURCE_DIR);
  std::string work = flag("--work", "");
  Must(!reader.empty(), std::string("--reader is required\nusage: ") + usage);
  Must(::geteuid() == 0, "needs root (FUSE, loop devices, drop_caches)");
  const bool own_work = work.empty();
  if (own_work) {
    char tmpl[] = "/var/tmp/node-data-XXXXXX";  // on disk, not tmpfs
    Must(::mkdtemp(tmpl) != nullptr, "mkdtemp");
    work = tmpl;
  }

  // The volume: random bytes imported into a store.
  const std::string image = work + "/image.raw";
  {
    std::ofstream out(image, std::ios::binary);
    std::vector<char> chunk(1 << 20);
    uint64_t x = 0x9e3779b97f4a7c15ull;
    for (uint64_t done = 0; done < size; done += chunk.size()) {
      for (size_t i = 0; i < chunk.size(); i += 8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        std::memcpy(chunk.data() + i, &x, 8);
      }
      out.write(chunk.data(), static_cast<std::streamsize>(chunk.size()));
    }
    Must(static_cast<bool>(out), "write " + image);
  }
  auto store = Store::Open({.path = work + "/store"});
  Must(store.ok(), store.ok() ? "" : store.status().ToString());
  auto source = OpenFileImageSource(image);
  Must(source.ok(), "open image");
  ImportOptions import;
  import.volume.name = "bench";
  auto imported = (*store)->ImportImage(**source, import);
  Must(imported.ok(), imported.ok() ? "" : imported.status().ToString());
  std::filesystem::remove(image);
  const std::string volume_id = imported->volume.id;
  auto volume = (*store)->OpenVolume(volume_id);
  Must(volume.ok(), "open volume");
  // Before a pass over the store: close and open it again, so that nothing read by an
  // earlier pass stays in the process (RocksDB's block cache, table files it keeps
  // open or mapped: drop_caches cannot drop pages a process has mapped).
  auto reopen = [&](uint64_t disk_readahead = StoreOptions{}.disk_readahead_bytes) {
    volume->reset();
    store->reset();
    store = Store::Open({.path = work + "/store", .disk_readahead_bytes = disk_readahead});
    Must(store.ok(), store.ok() ? "" : store.status().ToString());
    volume = (*store)->OpenVolume(volume_id);
    Must(volume.ok(), "open volume");
  };

  // (a)'s file: the volume exported through core.
  const std::string exported = work + "/export.raw";
  {
    std::ofstream out(exported, std::ios::binary);
    std::vector<char> buf(4 << 20);
    for (uint64_t off = 0; off < size; off += buf.size()) {
      Must((*volume)->Read(off, buf.size(), buf.data()).ok(), "export read");
      out.write(buf.data(), static_cast<std::streamsize>(buf.size()));
    }
    Must(static_cast<bool>(out), "write " + exported);
  }

  bool dropped = true;
  auto host_pass = [&](const std::string& path, const std::string& what) {
    dropped = DropCaches() && dropped;
    const double busy = bench::MachineBusy();
    CommandResult seq = RunCommand({reader, path, "seq"});
    const double seq_busy = bench::MachineBusy() - busy;
    Must(seq.exit_code == 0, what + ": " + seq.output);
    dropped = DropCaches() && dropped;
    CommandResult rnd = RunCommand({reader, path, "rand", rand_reads, "42"});
    Must(rnd.exit_code == 0, what + ": " + rnd.output);
    Figures f = Parse(seq.output + rnd.output, what);
    f.seq_busy = seq_busy;
    return f;
  };

  const Figures a = host_pass(exported, "(a) raw file");

  // (b), and (b) again with the store's disk read-ahead off (StoreOptions::
  // disk_readahead_bytes = 0: the kernel's own read-ahead only).
  auto fuse_pass = [&](uint64_t disk_readahead, const std::string& what) {
    reopen(disk_readahead);
    auto fuse = node::FuseBlockServer::Start({.mountpoint = work + "/fuse"});
    Must(fuse.ok(), fuse.ok() ? "" : fuse.status().ToString());
    Must((*fuse)->AddVolume("bench", *volume).ok(), "fuse add");
    auto loop =
        node::AttachLoop((*fuse)->PathOf("bench"), {.read_only = true, .direct_io = true});
    Must(loop.ok(), loop.ok() ? "" : loop.status().ToString());
    Figures f = host_pass(loop->path, what);
    Must(node::DetachLoop(loop->path).ok(), "detach loop");
    Must((*fuse)->RemoveVolume("bench").ok(), "fuse remove");
    return f;
  };
  const Figures b = fuse_pass(StoreOptions{}.disk_readahead_bytes, "(b) loop on FUSE");
  const Figures b_off = fuse_pass(0, "(b) loop on FUSE, no disk read-ahead");

  // (c): the guest, with the reader on a second drive (padded to whole sectors).
  CommandResult built = testing::BuildGuest(source_dir, guest_dir);
  Must(built.exit_code == 0, "scripts/build-guest.sh: " + built.output);
  const uint64_t reader_bytes = std::filesystem::file_size(reader);
  const std::string reader_disk = work + "/reader.disk";
  std::filesystem::copy_file(reader, reader_disk,
                             std::filesystem::copy_options::overwrite_existing);
  std::filesystem::resize_file(reader_disk, (reader_bytes + 511) / 512 * 512);
  const std::string script = "head -c " + std::to_string(reader_bytes) +
                             " /dev/vdb > /bin/node_reader\nchmod +x /bin/node_reader\n"
                             "/bin/node_reader /dev/vda seq\n/bin/node_reader /dev/vda rand " +
                             rand_reads + " 42\n";
  auto guest_pass = [&](std::vector<std::string> disk, const std::string& what) {
    std::vector<std::string> reader_drive = testing::RawDriveArgs(reader_disk, true);
    disk.insert(disk.end(), reader_drive.begin(), reader_drive.end());
    dropped = DropCaches() && dropped;
    CommandResult r = testing::BootGuest(guest_dir, disk, script);
    return Parse(r.output, what);
  };
  Figures c_vhost, c_raw;
  {
    reopen();
    const std::string socket = work + "/vhost.sock";
    auto server =
        node::VhostUserBlkServer::Start(socket, *volume, {.num_queues = 1, .read_only = true});
    Must(server.ok(), server.ok() ? "" : server.status().ToString());
    c_vhost = guest_pass(testing::VhostUserDiskArgs(socket), "(c) guest, vhost-user-blk");
  }
  c_raw = guest_pass(testing::RawDriveArgs(exported, true), "(c) guest, raw file drive");

  std::printf(
      "node data path: one %llu MiB volume of random data; sequential 1 MiB and %s "
      "random 4 KiB O_DIRECT reads (depth 1) by node_reader\n",
      static_cast<unsigned long long>(size >> 20), rand_reads.c_str());
  std::printf(
      "page cache: %s before every pass\n",
      dropped ? "dropped (echo 3 > /proc/sys/vm/drop_caches)" : "NOT dropped (not allowed)");
  std::printf("%-40s %12s %12s\n", "path", "seq MB/s", "rand IOPS");
  std::printf("%-40s %12.1f %12.0f\n", "(a) exported raw file", a.seq_mbps, a.rand_iops);
  std::printf("%-40s %12.1f %12.0f\n", "(b) loop (direct I/O) on the FUSE file", b.seq_mbps,
              b.rand_iops);
  std::printf("%-40s %12.1f %12.0f\n", "(b) same, store disk read-ahead off", b_off.seq_mbps,
              b_off.rand_iops);
  std::printf("%-40s %12.1f %12.0f\n", "(c) guest: vhost-user-blk from the store", c_vhost.seq_mbps,
              c_vhost.rand_iops);
  std::printf("%-40s %12.1f %12.0f\n", "(c) guest: raw file drive, cache=none", c_raw.seq_mbps,
              c_raw.rand_iops);
  const double rb_seq = b.seq_mbps / a.seq_mbps, rb_rand = b.rand_iops / a.rand_iops;
  const double rc_seq = c_vhost.seq_mbps / c_raw.seq_mbps;
  const double rc_rand = c_vhost.rand_iops / c_raw.rand_iops;
  std::printf("(b)/(a): seq %.2f (floor 0.5: %s), rand %.2f; disk read-ahead on/off: seq %.2f\n",
              rb_seq, rb_seq >= 0.5 ? "met" : "NOT met", rb_rand, b.seq_mbps / b_off.seq_mbps);
  std::printf("(c) vhost-user / raw drive: seq %.2f (floor 0.7: %s), rand %.2f (floor 0.7: %s)\n",
              rc_seq, rc_seq >= 0.7 ? "met" : "NOT met", rc_rand,
              rc_rand >= 0.7 ? "met" : "NOT met");

  // What the cores allow. One core's SHA-256 of 4 KiB chunks (the check every chunk read
  // makes, DESIGN.md), on bytes already in the CPU's caches: a lower bound of its cost.
  // Both ways: one chunk at a time (OpenSSL) and a read's chunks at once (Sha256Many, what
  // the read path uses: core/sha256.h).
  double sha_per_gib = 0, sha_many_per_gib = 0;
  {
    std::vector<char> buf(1 << 20);
    for (size_t i = 0; i < buf.size(); ++i) buf[i] = static_cast<char>(i * 2654435761u >> 13);
    volatile uint8_t sink = 0;  // keeps the hashing from being optimized away
    double c0 = bench::SelfAndChildrenCpu();
    for (int round = 0; round < 1024; ++round) {
      for (size_t off = 0; off < buf.size(); off += 4096)
        sink = sink ^ Sha256(buf.data() + off, 4096)[0];
    }
    sha_per_gib = bench::SelfAndChildrenCpu() - c0;
    std::vector<std::string_view> chunks;
    for (size_t off = 0; off < buf.size(); off += 4096) chunks.emplace_back(buf.data() + off, 4096);
    std::vector<ChunkId> ids(chunks.size());
    c0 = bench::SelfAndChildrenCpu();
    for (int round = 0; round < 1024; ++round) {
      Sha256Many(chunks.data(), chunks.size(), ids.data());
      sink = sink ^ ids[round % ids.size()][0];
    }
    sha_many_per_gib = bench::SelfAndChildrenCpu() - c0;
  }
  const double gib = static_cast<double>(size) / (1u << 30);
  const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
  auto per_gib = [&](const Figures& f) { return f.seq_busy / gib; };
  std::printf(
      "cores: %u; machine busy during the sequential read, core-s per GiB: (a) %.2f, "
      "(b) %.2f, (b) without disk read-ahead %.2f\n",
      cores, per_gib(a), per_gib(b), per_gib(b_off));
  std::printf(
      "cores: SHA-256 of every 4 KiB chunk on one core: %.2f core-s per GiB (%.0f MB/s) one at a "
      "time; %.2f (%.0f MB/s) 256 at once (%s, the read path's)\n",
      sha_per_gib, sha_per_gib > 0 ? 1073.741824 / sha_per_gib : 0.0, sha_many_per_gib,
      sha_many_per_gib > 0 ? 1073.741824 / sha_many_per_gib : 0.0, Sha256ManyEngine().c_str());
  if (per_gib(b) > 0) {
    const double most = cores / per_gib(b) * 1073.741824;  // MB/s
    std::printf(
        "cores: at %.2f core-s per GiB, (b) reads at most %.0f MB/s on %u cores; the "
        "floor needs %.0f MB/s (0.5 of (a))%s\n",
        per_gib(b), most, cores, 0.5 * a.seq_mbps,
        most < 0.5 * a.seq_mbps ? ": beyond these cores" : "");
  }

  volume->reset();
  store->reset();
  if (own_work) std::filesystem::remove_all(work);
  return 0;
}
