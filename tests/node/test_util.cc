#include "tests/node/test_util.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

extern "C" char** environ;

namespace stellarium::testing {

CommandResult RunCommand(const std::vector<std::string>& argv) {
  CommandResult result;
  int pipefd[2];
  if (pipe2(pipefd, O_CLOEXEC) != 0) return result;
  pid_t pid = fork();
  if (pid < 0) {
    close(pipefd[0]);
    close(pipefd[1]);
    return result;
  }
  if (pid == 0) {
    dup2(pipefd[1], 1);
    dup2(pipefd[1], 2);
    int devnull = open("/dev/null", O_RDONLY);
    if (devnull >= 0) dup2(devnull, 0);
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execvp(args[0], args.data());
    _exit(127);
  }
  close(pipefd[1]);
  char buf[4096];
  ssize_t n;
  while ((n = read(pipefd[0], buf, sizeof(buf))) > 0 || (n < 0 && errno == EINTR)) {
    if (n > 0) result.output.append(buf, static_cast<size_t>(n));
  }
  close(pipefd[0]);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return result;
}

pid_t SpawnLogged(const std::vector<std::string>& argv, const std::string& log) {
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
  posix_spawn_file_actions_adddup2(&actions, 1, 2);
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  pid_t pid = -1;
  int rc = posix_spawnp(&pid, args[0], &actions, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  return rc == 0 ? pid : -1;
}

BackgroundCommand::BackgroundCommand(const std::vector<std::string>& argv) {
  for (const auto& a : argv) command_ += (command_.empty() ? "" : " ") + a;
  pid_ = SpawnLogged(argv, "/dev/null");
  done_ = pid_ < 0;
}

BackgroundCommand::~BackgroundCommand() {
  if (done_) return;
  kill(pid_, SIGKILL);
  while (waitpid(pid_, nullptr, 0) < 0 && errno == EINTR) {
  }
}

bool BackgroundCommand::WaitFor(double seconds) {
  const auto until = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  while (!done_) {
    int status = 0;
    pid_t r = waitpid(pid_, &status, WNOHANG);
    if (r == pid_) {
      done_ = true;
      exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
      break;
    }
    if (std::chrono::steady_clock::now() >= until) break;
    usleep(5000);
  }
  return done_;
}

bool HaveProgram(const std::string& program) {
  if (program.find('/') != std::string::npos) return access(program.c_str(), X_OK) == 0;
  const char* path = getenv("PATH");
  std::string p = path ? path : "/usr/sbin:/usr/bin:/sbin:/bin";
  p += ":/usr/sbin:/sbin";
  size_t start = 0;
  while (start <= p.size()) {
    size_t end = p.find(':', start);
    if (end == std::string::npos) end = p.size();
    std::string dir = p.substr(start, end - start);
    if (!dir.empty() && access((dir + "/" + program).c_str(), X_OK) == 0) return true;
    start = end + 1;
  }
  return false;
}

std::string NodeTestsUnavailableReason() {
  if (geteuid() != 0) return "node tests need root (FUSE mounts, loop devices, ext4 mounts)";
  if (access("/dev/fuse", R_OK | W_OK) != 0) return "node tests need /dev/fuse";
  if (access("/dev/loop-control", R_OK | W_OK) != 0) return "node tests need /dev/loop-control";
  return "";
}

TempDir::TempDir() {
  char tmpl[] = "/tmp/stellarium-node-XXXXXX";
  char* p = mkdtemp(tmpl);
  path_ = p ? p : "/tmp";
}

TempDir::~TempDir() {
  if (path_ == "/tmp") return;
  // Lazily unmount anything still mounted below the directory, deepest first.
  std::ifstream mounts("/proc/self/mounts");
  std::vector<std::string> below;
  std::string dev, dir, rest;
  while (mounts >> dev >> dir && std::getline(mounts, rest)) {
    if (dir.compare(0, path_.size() + 1, path_ + "/") == 0) below.push_back(dir);
  }
  for (auto it = below.rbegin(); it != below.rend(); ++it) umount2(it->c_str(), MNT_DETACH);
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

uint64_t MemBlockIo::size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return data_.size();
}

Status MemBlockIo::Read(uint64_t offset, size_t len, char* out) {
  std::lock_guard<std::mutex> lock(mu_);
  if (offset > data_.size() || len > data_.size() - offset) {
    return Status::OutOfRange("mem volume: read past the end");
  }
  memcpy(out, data_.data() + offset, len);
  bytes_read += len;
  return Status::Ok();
}

Status MemBlockIo::Write(uint64_t offset, const char* data, size_t len) {
  std::lock_guard<std::mutex> lock(mu_);
  if (read_only_) return Status::FailedPrecondition("mem volume: read-only");
  if (offset > data_.size() || len > data_.size() - offset) {
    return Status::OutOfRange("mem volume: write past the end");
  }
  memcpy(data_.data() + offset, data, len);
  return Status::Ok();
}

std::vector<char> MemBlockIo::Snapshot() const {
  std::lock_guard<std::mutex> lock(mu_);
  return data_;
}

void MemBlockIo::Resize(uint64_t size) {
  std::lock_guard<std::mutex> lock(mu_);
  data_.resize(size);
}

std::vector<char> PatternBytes(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<char> out(n);
  for (size_t i = 0; i < n; i += 8) {
    uint64_t v = rng();
    memcpy(out.data() + i, &v, std::min<size_t>(8, n - i));
  }
  return out;
}

}  // namespace stellarium::testing
