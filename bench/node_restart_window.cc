// node_restart_window: what node tools see while the driver restarts with its fd holder,
// and how long that lasts. Real processes throughout: a `stellarium-fd-holder`, a
// `stellarium-csi` driver over gRPC on a unix socket, a volume staged as ext4 on a loop
// device on the driver's FUSE file, and the tools an admin or a node script runs.
//
// Restart rounds (--rounds, each once with SIGTERM and once with SIGKILL): a few MiB
// are written and fsynced on the mount (so a killed driver leaves recent writes for the
// store to recover), the page cache of a data file on the mount is dropped, the driver
// is stopped, and after the attribute cache the old driver gave the kernel has expired
// the tools below are started together. --restart-delay seconds after the old driver
// exited (what the kubelet's container restart takes) a new driver is started. For each
// tool the program prints whether it returned while no driver ran or waited, and then
// how long after the new driver was started it got its answer. It also prints the new
// driver's start-up steps (from its log): store opened, FUSE connection resumed, gRPC
// serving, and when the first FUSE request (a statfs of the mount issued during the
// window) was answered. A summary per signal follows the rounds.
//
// Then two cases where no driver comes back: "gone" (the holder keeps the connection,
// the driver never returns; after --abort-after seconds the connection is aborted the
// way docs/troubleshooting.md says: /sys/fs/fuse/connections/N/abort where fusectl is
// mounted, else `umount -f --no-canonicalize` of the FUSE mount) and "uninstalled"
// (driver and holder stopped together, as deleting the node pod does).
//
// usage: node_restart_window [--rounds N] [--restart-delay S] [--abort-after S]
//                            [--fill-mib N] [--work DIR] [--driver PATH] [--holder PATH]
//        (root: loop devices, mounts, FUSE)
#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "bench/node_bench_util.h"
#include "bench/work_dir.h"
#include "csi.grpc.pb.h"
#include "tests/node/test_util.h"

namespace {

namespace fs = std::filesystem;
namespace v1 = ::csi::v1;
constexpr char kProgram[] = "node_restart_window";
constexpr size_t kMiB = 1 << 20;
using stellarium::testing::SpawnLogged;

void Must(bool ok, const std::string& what) { stellarium::bench::Must(ok, kProgram, what); }

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
// Wall-clock seconds since the epoch: comparable with the driver's log timestamps.
double WallNow() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}
void SleepUntil(double t) {
  double d = t - Now();
  if (d > 0) std::this_thread::sleep_for(std::chrono::duration<double>(d));
}

std::string ReadText(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// Seconds since the epoch of the first line of `log` at or after `after` that
// contains `what`; -1 when there is none. Lines start "2026-12-08T01:44:54.079+00:00".
double LogTime(const std::string& log, const std::string& what, double after) {
  std::istringstream in(ReadText(log));
  std::string line;
  while (std::getline(in, line)) {
    if (line.find(what) == std::string::npos || line.size() < 29) continue;
    struct tm tm {};
    if (strptime(line.substr(0, 19).c_str(), "%Y-%m-%dT%H:%M:%S", &tm) == nullptr) continue;
    double t = static_cast<double>(timegm(&tm)) + std::atoi(line.substr(20, 3).c_str()) / 1000.0;
    int sign = line[23] == '-' ? -1 : 1;
    t -= sign * (std::atoi(line.substr(24, 2).c_str()) * 3600 +
                 std::atoi(line.substr(27, 2).c_str()) * 60);
    if (t >= after - 0.002) return t;
  }
  return -1;
}

// One tool run during the window.
struct Tool {
  std::string name;
  std::vector<std::string> argv;
  bool usable = true;  // returned promptly with the driver up (else: machine noise)
  pid_t pid = -1;
  double start = 0, end = -1;
  int status = 0;
};

// Starts every usable tool; returns when all ended, or at `deadline` (the rest are
// killed, which ends a FUSE request still queued; a process in uninterruptible I/O
// stays and is reported as not returned).
void RunTools(std::vector<Tool>* tools, const std::string& log, double deadline,
              const std::function<void(double)>& tick) {
  for (Tool& t : *tools) {
    t.end = -1;
    t.pid = t.usable ? SpawnLogged(t.argv, log) : -1;
    t.start = Now();
  }
  while (true) {
    bool running = false;
    for (Tool& t : *tools) {
      if (t.pid <= 0 || t.end >= 0) continue;
      if (waitpid(t.pid, &t.status, WNOHANG) == t.pid) {
        t.end = Now();
      } else {
        running = true;
      }
    }
    tick(Now());
    if (!running) return;
    if (Now() > deadline) break;
    usleep(2000);
  }
  for (Tool& t : *tools) {
    if (t.pid > 0 && t.end < 0) kill(t.pid, SIGKILL);
  }
  for (Tool& t : *tools) {
    if (t.pid > 0 && t.end < 0) {
      usleep(200000);
      if (waitpid(t.pid, &t.status, WNOHANG) == t.pid) t.status = -1;  // killed at the cap
    }
  }
}

std::string ExitText(const Tool& t) {
  if (t.status == -1) return "killed at the cap";
  if (WIFEXITED(t.status)) return "exit " + std::to_string(WEXITSTATUS(t.status));
  if (WIFSIGNALED(t.status)) return std::string("signal ") + strsignal(WTERMSIG(t.status));
  return "?";
}

class Node {
 public:
  Node(std::string dir, std::string driver, std::string holder)
      : dir_(std::move(dir)), driver_bin_(std::move(driver)), holder_bin_(std::move(holder)) {
    for (const char* d : {"kubelet", "state", "logs"}) fs::create_directories(dir_ + "/" + d);
  }

  const std::string& dir() const { return dir_; }
  std::string fuse_mount() const { return dir_ + "/state/fuse"; }
  std::string staging() const { return dir_ + "/kubelet/staging/v"; }
  std::string backing_file() const { return fuse_mount() + "/" + volume_id_; }
  const std::string& device() const { return device_; }
  std::string driver_log() const { return dir_ + "/logs/driver-" + std::to_string(runs_) + ".log"; }
  pid_t driver_pid() const { return driver_; }

  void StartHolder() {
    holder_ = SpawnLogged({holder_bin_, "--socket", dir_ + "/state/fd-holder.sock"},
                          dir_ + "/logs/holder.log");
    Must(holder_ > 0, "start " + holder_bin_);
    for (int i = 0; i < 500 && !fs::exists(dir_ + "/state/fd-holder.sock"); ++i) usleep(10000);
    Must(fs::exists(dir_ + "/state/fd-holder.sock"), "the holder did not listen");
  }
  void StopHolder(int sig) {
    if (holder_ <= 0) return;
    kill(holder_, sig);
    waitpid(holder_, nullptr, 0);
    holder_ = -1;
  }

  // Starts a driver; returns at once (Ready() polls it).
  void SpawnDriver() {
    ++runs_;
    driver_ = SpawnLogged({driver_bin_, "--endpoint", "unix://" + dir_ + "/csi.sock", "--node-id",
                           "bench", "--store", dir_ + "/store", "--state-dir", dir_ + "/state",
                           "--kubelet-dir", dir_ + "/kubelet", "--log-level", "info"},
                          driver_log());
    Must(driver_ > 0, "start " + driver_bin_);
    auto channel =
        grpc::CreateChannel("unix://" + dir_ + "/csi.sock", grpc::InsecureChannelCredentials());
    identity_ = v1::Identity::NewStub(channel);
    controller_ = v1::Controller::NewStub(channel);
    node_ = v1::Node::NewStub(channel);
  }
  bool Ready() {
    int status;
    Must(waitpid(driver_, &status, WNOHANG) == 0, "the driver exited:\n" + ReadText(driver_log()));
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(100));
    v1::ProbeResponse resp;
    return identity_->Probe(&ctx, v1::ProbeRequest(), &resp).ok() && resp.ready().value();
  }
  void StartDriver() {
    SpawnDriver();
    double until = Now() + 60;
    while (!Ready()) {
      Must(Now() < until, "the driver did not get ready:\n" + ReadText(driver_log()));
      usleep(20000);
    }
  }
  // Stops the driver with `sig`; returns the seconds from the signal to its exit.
  double StopDriver(int sig) {
    double t0 = Now();
    kill(driver_, sig);
    waitpid(driver_, nullptr, 0);
    driver_ = -1;
    return Now() - t0;
  }

  // A blank volume staged as ext4 (formatted at the first stage), filled with
  // `fill_mib` MiB of random data in data.bin.
  void StageVolume(size_t fill_mib) {
    v1::VolumeCapability cap;
    cap.mutable_mount()->set_fs_type("ext4");
    cap.mutable_access_mode()->set_mode(v1::VolumeCapability::AccessMode::SINGLE_NODE_WRITER);
    v1::CreateVolumeRequest creq;
    creq.set_name("restart-window");
    creq.mutable_capacity_range()->set_required_bytes(
        static_cast<int64_t>((fill_mib + 256) * kMiB));
    *creq.add_volume_capabilities() = cap;
    v1::CreateVolumeResponse cresp;
    grpc::ClientContext c1;
    grpc::Status st = controller_->CreateVolume(&c1, creq, &cresp);
    Must(st.ok(), "CreateVolume: " + st.error_message());
    volume_id_ = cresp.volume().volume_id();
    fs::create_directories(staging());
    v1::NodeStageVolumeRequest sreq;
    sreq.set_volume_id(volume_id_);
    sreq.set_staging_target_path(staging());
    *sreq.mutable_volume_capability() = cap;
    v1::NodeStageVolumeResponse sresp;
    grpc::ClientContext c2;
    st = node_->NodeStageVolume(&c2, sreq, &sresp);
    Must(st.ok(), "NodeStageVolume: " + st.error_message());
    device_ = MountSource(staging());
    Must(device_.rfind("/dev/loop", 0) == 0, "no loop device mounted at " + staging());
    WriteRandom(staging() + "/data.bin", fill_mib * kMiB, 1);
  }
  void Unstage() {
    v1::NodeUnstageVolumeRequest req;
    req.set_volume_id(volume_id_);
    req.set_staging_target_path(staging());
    v1::NodeUnstageVolumeResponse resp;
    grpc::ClientContext ctx;
    grpc::Status st = node_->NodeUnstageVolume(&ctx, req, &resp);
    Must(st.ok(), "NodeUnstageVolume: " + st.error_message());
  }

  // After the connection died (aborted, or no process held it): what an admin does.
  void CleanUpDeadMounts() {
    umount2(staging().c_str(), MNT_DETACH);
    pid_t p = SpawnLogged({"losetup", "-d", device_}, "/dev/null");
    waitpid(p, nullptr, 0);
    umount2(fuse_mount().c_str(), MNT_DETACH);
  }

  static void WriteRandom(const std::string& path, size_t bytes, uint64_t seed) {
    int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    Must(fd >= 0, "open " + path);
    std::mt19937_64 rng(seed);
    std::vector<uint64_t> buf(kMiB / 8);
    for (size_t done = 0; done < bytes; done += kMiB) {
      for (auto& w : buf) w = rng();
      Must(write(fd, buf.data(), kMiB) == static_cast<ssize_t>(kMiB), "write " + path);
    }
    Must(fsync(fd) == 0, "fsync " + path);
    close(fd);
  }
  // Drops the page cache of a file (its pages are clean: it was fsynced).
  static void DropCache(const std::string& path) {
    int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
    Must(fd >= 0, "open " + path);
    Must(posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED) == 0, "fadvise " + path);
    close(fd);
  }

  // The source of the mount at `dir` ("" when none), from /proc/self/mountinfo.
  static std::string MountSource(const std::string& dir) { return MountField(dir, 9); }
  // "major:minor" of the mount at `dir`.
  static std::string MountDev(const std::string& dir) { return MountField(dir, 2); }

 private:
  static std::string MountField(const std::string& dir, int field) {
    std::ifstream in("/proc/self/mountinfo");
    std::string line;
    std::string found;
    while (std::getline(in, line)) {
      std::istringstream f(line);
      std::vector<std::string> w;
      std::string x;
      while (f >> x) w.push_back(x);
      if (w.size() < 10 || w[4] != dir) continue;
      // After the optional fields comes "-", then type, source.
      size_t dash = 6;
      while (dash < w.size() && w[dash] != "-") ++dash;
      if (field == 2) found = w[2];
      if (field == 9 && dash + 2 < w.size()) found = w[dash + 2];
    }
    return found;
  }

  std::string dir_, driver_bin_, holder_bin_;
  pid_t holder_ = -1, driver_ = -1;
  int runs_ = 0;
  std::string volume_id_, device_;
  std::unique_ptr<v1::Identity::Stub> identity_;
  std::unique_ptr<v1::Controller::Stub> controller_;
  std::unique_ptr<v1::Node::Stub> node_;
};

std::vector<Tool> ToolsFor(const Node& n) {
  const std::string data = n.staging() + "/data.bin";
  const std::string last_block = std::to_string(fs::file_size(data) / 4096 - 1);
  return {
      {"losetup -a", {"losetup", "-a"}},
      {"losetup -l", {"losetup", "-l"}},
      {"lsblk", {"lsblk"}},
      {"lsblk -f", {"lsblk", "-f"}},
      {"blkid DEV", {"blkid", n.device()}},  // may answer from blkid's cache
      {"blkid -p DEV", {"blkid", "-p", n.device()}},
      {"stat BACKING_FILE", {"stat", n.backing_file()}},
      {"stat FUSE_MOUNT", {"stat", n.fuse_mount()}},
      {"ls FUSE_MOUNT", {"ls", n.fuse_mount()}},
      {"ls -l STATE_DIR", {"ls", "-l", n.dir() + "/state"}},  // holds the FUSE mount
      {"df EXT4_MOUNT", {"df", n.staging()}},
      {"df (all mounts)", {"df"}},
      {"df -x fuse.stellarium", {"df", "-x", "fuse.stellarium"}},
      {"findmnt", {"findmnt"}},
      // A block of the ext4 file whose cached pages were dropped: through the loop
      // device to FUSE. Buffered, and O_DIRECT (different blocks).
      {"read uncached block",
       {"dd", "if=" + data, "of=/dev/null", "bs=4k", "count=1", "skip=" + last_block}},
      {"read O_DIRECT block",
       {"dd", "if=" + data, "of=/dev/null", "bs=4k", "count=1", "skip=7", "iflag=direct"}},
  };
}

// Each tool once with the driver up: one that does not return within 5 s here (a dead
// mount elsewhere on a shared machine) is left out and said so.
void CheckUsable(std::vector<Tool>* tools, const std::string& log) {
  RunTools(tools, log, Now() + 5, [](double) {});
  for (Tool& t : *tools) {
    if (t.end < 0 || t.end - t.start > 5) {
      t.usable = false;
      std::printf(
          "note: '%s' does not return within 5 s even with the driver up on this "
          "machine (another dead mount?); left out\n",
          t.name.c_str());
    }
  }
}

struct Summary {
  int at_once = 0, waited = 0, not_returned = 0;
  double max_at_once_ms = 0, max_after_start_ms = 0;
};

void RestartRound(Node* n, std::vector<Tool>* tools, int sig, double delay, int round,
                  std::map<std::string, Summary>* sum,
                  std::map<std::string, std::vector<double>>* steps) {
  Node::WriteRandom(n->staging() + "/recent.bin", 16 * kMiB, 100 + round);
  Node::DropCache(n->staging() + "/data.bin");
  const std::string old_log = n->driver_log();
  const double stop_wall = WallNow();
  const double stop_s = n->StopDriver(sig);
  const double exited = Now();
  // A stopped driver stops answering FUSE when it hands the connection over.
  const double released = LogTime(old_log, "stay attached", stop_wall);
  // Past the kernel's attribute cache of the old driver (1 s before this change).
  SleepUntil(exited + 1.5);
  // The first FUSE request answered: a statfs of the mount, issued now.
  std::atomic<double> statfs_done{-1};
  std::thread statfs_thread([&] {
    struct statfs sf;
    (void)statfs(n->fuse_mount().c_str(), &sf);
    statfs_done.store(Now());
  });
  double spawn = -1, spawn_wall = 0, ready = -1;
  const double restart_at = exited + delay;
  RunTools(tools, n->dir() + "/logs/tools.log", restart_at + 60, [&](double now) {
    if (spawn < 0 && now >= restart_at) {
      spawn = Now();
      spawn_wall = WallNow();
      n->SpawnDriver();
    }
  });
  if (spawn < 0) {  // every tool returned before the restart
    SleepUntil(restart_at);
    spawn = Now();
    spawn_wall = WallNow();
    n->SpawnDriver();
  }
  while (ready < 0) {
    if (n->Ready()) ready = Now();
    Must(Now() < spawn + 60, "the new driver did not get ready");
    usleep(5000);
  }
  statfs_thread.join();
  const std::string log = n->driver_log();
  auto since_spawn = [&](const std::string& what) {
    double t = LogTime(log, what, spawn_wall - 1);
    return t < 0 ? -1.0 : (t - spawn_wall) * 1000;
  };
  const double store_ms = since_spawn("opened store");
  const double resumed_ms = since_spawn("resumed the FUSE connection");
  const double first_ms = (statfs_done.load() - spawn) * 1000;
  const double serving_ms = since_spawn("serving");
  const double ready_ms = serving_ms >= 0 ? serving_ms : (ready - spawn) * 1000;
  const char* sig_name = sig == SIGKILL ? "SIGKILL" : "SIGTERM";
  (*steps)[std::string(sig_name) + " signal to exit"].push_back(stop_s * 1000);
  if (store_ms >= 0) (*steps)[std::string(sig_name) + " store opened"].push_back(store_ms);
  (*steps)[std::string(sig_name) + " FUSE resumed"].push_back(resumed_ms);
  (*steps)[std::string(sig_name) + " first FUSE answer"].push_back(first_ms);
  (*steps)[std::string(sig_name) + " serving CSI"].push_back(ready_ms);
  std::printf(
      "\nround %d, %s: old driver exited %.0f ms after the signal%s; new driver "
      "started %.1f s after that\n",
      round, sig_name, stop_s * 1000,
      released < 0
          ? ""
          : (", stopped serving FUSE " +
             std::to_string(static_cast<int>((released - stop_wall) * 1000)) + " ms after it")
                .c_str(),
      spawn - exited);
  if (released >= 0) {
    (*steps)[std::string(sig_name) + " signal to FUSE handover"].push_back((released - stop_wall) *
                                                                           1000);
  }
  std::printf(
      "  new driver, ms after its start: store opened %s, FUSE resumed %.0f, first "
      "FUSE request answered %.0f, serving CSI %.0f\n",
      store_ms < 0 ? "(not logged)" : std::to_string(static_cast<int>(store_ms)).c_str(),
      resumed_ms, first_ms, ready_ms);
  for (const Tool& t : *tools) {
    if (!t.usable) continue;
    Summary& s = (*sum)[std::string(sig_name) + "|" + t.name];
    if (t.end < 0 || t.status == -1) {
      ++s.not_returned;
      std::printf("  %-22s did not return within 60 s of the restart\n", t.name.c_str());
    } else if (t.end < spawn) {
      ++s.at_once;
      s.max_at_once_ms = std::max(s.max_at_once_ms, (t.end - t.start) * 1000);
      std::printf("  %-22s returned while no driver ran, in %.0f ms (%s)\n", t.name.c_str(),
                  (t.end - t.start) * 1000, ExitText(t).c_str());
    } else {
      ++s.waited;
      s.max_after_start_ms = std::max(s.max_after_start_ms, (t.end - spawn) * 1000);
      std::printf("  %-22s waited %.1f s: answered %.0f ms after the new driver started (%s)\n",
                  t.name.c_str(), t.end - t.start, (t.end - spawn) * 1000, ExitText(t).c_str());
    }
  }
}

// No driver comes back. `uninstall`: the holder stops too. Otherwise, after
// `abort_after` seconds, the connection is aborted through fusectl.
void NoReturn(Node* n, bool uninstall, double abort_after) {
  std::vector<Tool> tools = ToolsFor(*n);
  CheckUsable(&tools, n->dir() + "/logs/tools.log");
  Node::DropCache(n->staging() + "/data.bin");
  const std::string conn = Node::MountDev(n->fuse_mount());
  const std::string abort_file =
      "/sys/fs/fuse/connections/" + conn.substr(conn.find(':') + 1) + "/abort";
  if (uninstall) {
    // Deleting the node pod: both containers get SIGTERM.
    n->StopDriver(SIGTERM);
    n->StopHolder(SIGTERM);
  } else {
    n->StopDriver(SIGKILL);
  }
  const double stopped = Now();
  SleepUntil(stopped + 1.5);
  double aborted = -1;
  // fusectl where it is mounted; otherwise a forced unmount, which aborts the
  // connection too (and fails with "target is busy" while a loop device holds a file).
  const bool fusectl = fs::exists(abort_file);
  RunTools(&tools, n->dir() + "/logs/tools.log", stopped + abort_after + 30, [&](double now) {
    if (!uninstall && aborted < 0 && now >= stopped + abort_after) {
      if (fusectl) {
        std::ofstream(abort_file) << "1\n";
      } else {
        pid_t p = SpawnLogged({"umount", "-f", "--no-canonicalize", n->fuse_mount()}, "/dev/null");
        waitpid(p, nullptr, 0);
      }
      aborted = Now();
    }
  });
  std::printf("\n%s\n", uninstall ? "uninstalled: driver and fd holder stopped together (SIGTERM)"
                                  : "driver gone for good (SIGKILL, never restarted); the "
                                    "connection aborted after the wait");
  if (!uninstall) {
    std::printf("  aborted %.0f s after the kill with %s\n", abort_after,
                fusectl ? ("echo 1 > " + abort_file).c_str()
                        : "umount -f --no-canonicalize FUSE_MOUNT (fusectl not mounted)");
  }
  for (const Tool& t : tools) {
    if (!t.usable) continue;
    if (t.end < 0 || t.status == -1) {
      std::printf("  %-22s did not return\n", t.name.c_str());
    } else if (aborted < 0 || t.end < aborted) {
      std::printf("  %-22s returned in %.0f ms (%s)\n", t.name.c_str(), (t.end - t.start) * 1000,
                  ExitText(t).c_str());
    } else {
      std::printf("  %-22s waited until the abort: returned %.0f ms after it (%s)\n",
                  t.name.c_str(), (t.end - aborted) * 1000, ExitText(t).c_str());
    }
  }
  n->CleanUpDeadMounts();
  n->StopHolder(SIGTERM);
}

}  // namespace

int main(int argc, char** argv) {
  const std::vector<std::string> known = {"--rounds",   "--restart-delay", "--abort-after",
                                          "--fill-mib", "--work",          "--driver",
                                          "--holder"};
  const char* usage =
      "node_restart_window [--rounds N] [--restart-delay S] [--abort-after S] [--fill-mib N] "
      "[--work DIR] [--driver PATH] [--holder PATH]";
  auto flag = [&](const char* name, const std::string& fallback) {
    return stellarium::bench::FlagValue(argc, argv, name, fallback, known, usage);
  };
  const int rounds = std::atoi(flag("--rounds", "3").c_str());
  const double delay = std::atof(flag("--restart-delay", "3").c_str());
  const double abort_after = std::atof(flag("--abort-after", "5").c_str());
  const size_t fill_mib = std::strtoull(flag("--fill-mib", "256").c_str(), nullptr, 10);
  const std::string driver = flag("--driver", STELLARIUM_CSI_PATH);
  const std::string holder = flag("--holder", STELLARIUM_FD_HOLDER_PATH);
  Must(geteuid() == 0, "needs root (loop devices, mounts, FUSE)");
  Must(delay >= 2, "--restart-delay must be at least 2 s (tools start 1.5 s after the stop)");
  stellarium::bench::WorkDir work(flag("--work", "/tmp"), "restart-window");

  std::printf(
      "driver %s\nholder %s\n%d rounds, new driver %.1f s after the old one exited, "
      "%zu MiB on the volume\n",
      driver.c_str(), holder.c_str(), rounds, delay, fill_mib);
  std::map<std::string, Summary> sum;
  std::map<std::string, std::vector<double>> steps;
  {
    Node n(work.path() + "/restart", driver, holder);
    n.StartHolder();
    n.StartDriver();
    n.StageVolume(fill_mib);
    std::vector<Tool> tools = ToolsFor(n);
    CheckUsable(&tools, n.dir() + "/logs/tools.log");
    for (int r = 1; r <= rounds; ++r) {
      for (int sig : {SIGTERM, SIGKILL}) RestartRound(&n, &tools, sig, delay, r, &sum, &steps);
    }
    n.Unstage();
    n.StopDriver(SIGTERM);
    n.StopHolder(SIGTERM);
  }
  std::printf("\nsummary over %d rounds per signal (ms)\n", rounds);
  for (const auto& [name, v] : steps) {
    std::printf("  %-28s median %6.0f  max %6.0f\n", name.c_str(),
                stellarium::bench::Percentile(v, 0.5), stellarium::bench::Percentile(v, 1.0));
  }
  std::printf("  %-30s %8s %22s %8s %30s\n", "tool", "at once", "slowest at once (ms)", "waited",
              "slowest after restart (ms)");
  for (const auto& [key, s] : sum) {
    std::printf("  %-30s %8d %22.0f %8d %30.0f%s\n", key.c_str(), s.at_once, s.max_at_once_ms,
                s.waited, s.max_after_start_ms, s.not_returned ? "  (some did not return)" : "");
  }
  {
    Node n(work.path() + "/gone", driver, holder);
    n.StartHolder();
    n.StartDriver();
    n.StageVolume(16);
    NoReturn(&n, /*uninstall=*/false, abort_after);
  }
  {
    Node n(work.path() + "/uninstall", driver, holder);
    n.StartHolder();
    n.StartDriver();
    n.StageVolume(16);
    NoReturn(&n, /*uninstall=*/true, abort_after);
  }
  return 0;
}
