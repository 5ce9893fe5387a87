#include "tests/ceph/ceph_cluster.h"

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <mutex>
#include <sstream>

extern char** environ;

namespace stellarium::testing {
namespace {

namespace fs = std::filesystem;

// The programs a cluster needs, as the script runs them (found on PATH).
constexpr const char* kCephTools[] = {"ceph-mon",   "ceph-osd", "ceph-authtool",
                                      "monmaptool", "ceph",     "rados"};

bool OnPath(const std::string& tool) {
  const char* path = std::getenv("PATH");
  std::stringstream dirs(path ? path : "/usr/bin:/bin");
  std::string dir;
  while (std::getline(dirs, dir, ':')) {
    if (!dir.empty() && ::access((fs::path(dir) / tool).c_str(), X_OK) == 0) return true;
  }
  return false;
}

std::string ClusterDir() {
  if (const char* dir = std::getenv("STELLARIUM_CEPH_CLUSTER_DIR"); dir && *dir) return dir;
  std::error_code ec;
  const fs::path self = fs::read_symlink("/proc/self/exe", ec);
  if (ec) return (fs::temp_directory_path() / "stellarium-test.ceph").string();
  return (self.parent_path() / (self.filename().string() + ".ceph")).string();
}

std::string ErrorText(int rc) { return std::to_string(rc) + " (" + std::strerror(-rc) + ")"; }

std::mutex g_mu;
CephCluster* g_cluster = nullptr;  // GUARDED_BY(g_mu)
bool g_tried = false;              // GUARDED_BY(g_mu)
std::string g_why;                 // GUARDED_BY(g_mu)
bool g_skip = false;               // GUARDED_BY(g_mu)

// Stops the program's cluster after its last test.
class StopClusterAtEnd : public ::testing::Environment {
 public:
  void TearDown() override {
    std::lock_guard<std::mutex> lock(g_mu);
    if (g_cluster != nullptr) g_cluster->Stop();
  }
};
[[maybe_unused]] ::testing::Environment* const g_stop_at_end =
    ::testing::AddGlobalTestEnvironment(new StopClusterAtEnd);

}  // namespace

int CephCluster::RunScript(const std::vector<std::string>& args, std::string* out) {
  std::vector<std::string> argv_storage;
  argv_storage.push_back(STELLARIUM_CEPH_TEST_CLUSTER_SCRIPT);
  argv_storage.insert(argv_storage.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : argv_storage) argv.push_back(a.data());
  argv.push_back(nullptr);

  int pipe_fds[2];
  if (::pipe2(pipe_fds, O_CLOEXEC) != 0) return -1;
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, pipe_fds[1], 1);
  pid_t pid = -1;
  const int rc = ::posix_spawn(&pid, argv[0], &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  ::close(pipe_fds[1]);
  if (rc != 0) {
    ::close(pipe_fds[0]);
    return -1;
  }
  out->clear();
  char buf[4096];
  for (;;) {
    const ssize_t n = ::read(pipe_fds[0], buf, sizeof(buf));
    if (n > 0) {
      out->append(buf, static_cast<size_t>(n));
    } else if (n == 0 || errno != EINTR) {
      break;
    }
  }
  ::close(pipe_fds[0]);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) return -1;
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

CephCluster* CephCluster::Shared(const CephClusterOptions& options, bool* skip, std::string* why) {
  std::lock_guard<std::mutex> lock(g_mu);
  if (!g_tried) {
    g_tried = true;
    std::string missing;
    for (const char* tool : kCephTools) {
      if (!OnPath(tool)) missing += std::string(missing.empty() ? "" : ", ") + tool;
    }
    if (options.mgr && !OnPath("ceph-mgr")) missing += missing.empty() ? "ceph-mgr" : ", ceph-mgr";
    if (!missing.empty()) {
      g_skip = true;
      g_why = "Ceph is not installed (" + missing +
              " not on PATH; Debian: ceph-mon ceph-osd ceph-mgr ceph-common)";
    } else {
      auto* cluster = new CephCluster();
      if (cluster->Start(options, &g_why)) {
        g_cluster = cluster;
      } else {
        delete cluster;
      }
    }
  }
  *skip = g_skip;
  *why = g_why;
  return g_cluster;
}

bool CephCluster::Start(const CephClusterOptions& options, std::string* why) {
  dir_ = ClusterDir();
  std::vector<std::string> args = {"start",       dir_,
                                   "--osds",      std::to_string(options.osds),
                                   "--owner-pid", std::to_string(::getpid())};
  if (options.mgr) args.push_back("--mgr");
  std::string out;
  const int rc = RunScript(args, &out);
  if (rc != 0) {
    *why = "scripts/ceph-test-cluster.sh start " + dir_ + " failed (exit status " +
           std::to_string(rc) + "; its messages are above)";
    return false;
  }
  running_ = true;
  std::map<std::string, std::string> env;
  std::stringstream lines(out);
  std::string line;
  while (std::getline(lines, line)) {
    const size_t eq = line.find('=');
    if (eq != std::string::npos) env[line.substr(0, eq)] = line.substr(eq + 1);
  }
  conf_ = env["CEPH_CONF"];
  client_id_ = env["CEPH_ID"];
  pool_ = env["CEPH_POOL"];
  if (conf_.empty() || client_id_.empty() || pool_.empty()) {
    *why = "scripts/ceph-test-cluster.sh start printed no CEPH_CONF, CEPH_ID or CEPH_POOL: " + out;
    Stop();
    return false;
  }
  return true;
}

void CephCluster::Stop() {
  if (!running_) return;
  running_ = false;
  std::string out;
  if (const int rc = RunScript({"stop", dir_}, &out); rc != 0) {
    ADD_FAILURE() << "scripts/ceph-test-cluster.sh stop " << dir_ << ": exit status " << rc;
  }
}

std::unique_ptr<librados::Rados> CephCluster::Connect(std::string* error) const {
  auto rados = std::make_unique<librados::Rados>();
  int rc = rados->init(client_id_.c_str());
  if (rc == 0) rc = rados->conf_read_file(conf_.c_str());
  if (rc == 0) rc = rados->connect();
  if (rc != 0) {
    *error =
        "connecting to the cluster of " + conf_ + " as client." + client_id_ + ": " + ErrorText(rc);
    return nullptr;
  }
  return rados;
}

void CephTest::SetUp() {
  bool skip = false;
  std::string why;
  cluster_ = CephCluster::Shared(options_, &skip, &why);
  if (cluster_ == nullptr) {
    if (skip) GTEST_SKIP() << why;
    FAIL() << why;
  }
  rados_ = NewClient();
  ASSERT_TRUE(rados_ != nullptr);
  static std::atomic<int> serial{0};
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  ns_ = std::string(info->test_suite_name()) + "." + info->name() + "." +
        std::to_string(serial.fetch_add(1));
  io_ = IoCtxOf(*rados_);
}

void CephTest::TearDown() {
  io_.close();
  for (const std::string& pool : pools_) {
    if (const int rc = rados_->pool_delete(pool.c_str()); rc != 0) {
      ADD_FAILURE() << "deleting pool " << pool << ": " << ErrorText(rc);
    }
  }
  pools_.clear();
  if (rados_) rados_->shutdown();
  rados_.reset();
}

std::unique_ptr<librados::Rados> CephTest::NewClient() {
  std::string error;
  auto client = cluster_->Connect(&error);
  if (client == nullptr) ADD_FAILURE() << error;
  return client;
}

librados::IoCtx CephTest::IoCtxOf(librados::Rados& client) {
  librados::IoCtx io;
  if (const int rc = client.ioctx_create(cluster_->pool().c_str(), io); rc != 0) {
    ADD_FAILURE() << "opening pool " << cluster_->pool() << ": " << ErrorText(rc);
    return io;
  }
  io.set_namespace(ns_);
  return io;
}

std::string CephTest::NewPool() {
  static std::atomic<int> serial{0};
  const std::string name =
      "test-" + std::to_string(::getpid()) + "-" + std::to_string(serial.fetch_add(1));
  if (const int rc = rados_->pool_create(name.c_str()); rc != 0) {
    ADD_FAILURE() << "creating pool " << name << ": " << ErrorText(rc);
    return "";
  }
  pools_.push_back(name);
  librados::IoCtx io;
  int rc = rados_->ioctx_create(name.c_str(), io);
  if (rc == 0) rc = io.application_enable("stellarium", false);
  if (rc != 0) {
    ADD_FAILURE() << "enabling application stellarium on pool " << name << ": " << ErrorText(rc);
    return "";
  }
  return name;
}

int CephTest::MonCommand(const std::string& json, std::string* out, std::string* status) {
  librados::bufferlist in;
  librados::bufferlist outbl;
  std::string outs;
  const int rc = rados_->mon_command(json, in, &outbl, &outs);
  if (out != nullptr) *out = outbl.to_str();
  if (status != nullptr) *status = outs;
  return rc;
}

}  // namespace stellarium::testing
