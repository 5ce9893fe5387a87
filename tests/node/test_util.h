// Helpers for the node exposure tests: running programs with an argument vector,
// temporary directories, and MemBlockIo, an in-memory BlockIo used as a test double
// for the storage backend only (the end-to-end tests use a real core Volume).
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "core/block_io.h"

namespace stellarium::testing {

struct CommandResult {
  int exit_code = -1;  // -1 if it could not run or was killed
  std::string output;  // stdout and stderr, interleaved
};

// Runs argv[0] (looked up in PATH) with argv, no shell. Output is captured.
CommandResult RunCommand(const std::vector<std::string>& argv);
// Starts argv[0] (looked up in PATH) with argv, no shell, its stdout and stderr appended
// to the file `log`; the caller reaps it. Returns its pid, or -1.
pid_t SpawnLogged(const std::vector<std::string>& argv, const std::string& log);

// A program started in the background (argv, no shell; output discarded), to see
// whether it waits: e.g. a tool that may block on a FUSE request nobody answers yet.
// Not thread-safe.
class BackgroundCommand {
 public:
  explicit BackgroundCommand(const std::vector<std::string>& argv);
  // Kills it if it still runs (a process in uninterruptible I/O ends only when that I/O
  // does) and reaps it.
  ~BackgroundCommand();
  BackgroundCommand(const BackgroundCommand&) = delete;
  BackgroundCommand& operator=(const BackgroundCommand&) = delete;

  // True once it has exited; waits at most `seconds` for that.
  bool WaitFor(double seconds);
  // Its exit code once WaitFor returned true; -1 if it was killed or never ran.
  int exit_code() const { return exit_code_; }
  // "stat /x" for messages.
  const std::string& command() const { return command_; }

 private:
  pid_t pid_ = -1;
  bool done_ = false;
  int exit_code_ = -1;
  std::string command_;
};

// True if `program` is found in PATH (or is an executable path).
bool HaveProgram(const std::string& program);
// Why node tests cannot run here, or "" if they can (root, /dev/fuse, /dev/loop-control).
std::string NodeTestsUnavailableReason();

// A fresh directory under /tmp, removed (recursively, after lazy-unmounting anything
// mounted inside it) when destroyed.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// A BlockIo over memory. Thread-safe. Counts bytes read and flushes.
class MemBlockIo : public BlockIo {
 public:
  MemBlockIo(uint64_t size, uint32_t block_size = 4096, bool read_only = false)
      : data_(size), block_size_(block_size), read_only_(read_only) {}
  uint64_t size() const override;
  uint32_t block_size() const override { return block_size_; }
  bool read_only() const override { return read_only_; }
  Status Read(uint64_t offset, size_t len, char* out) override;
  Status Write(uint64_t offset, const char* data, size_t len) override;
  Status Flush() override {
    ++flushes;
    return Status::Ok();
  }
  // Test access.
  std::vector<char> Snapshot() const;
  void Resize(uint64_t size);
  std::atomic<uint64_t> bytes_read{0};
  std::atomic<uint64_t> flushes{0};

 private:
  mutable std::mutex mu_;
  std::vector<char> data_;
  uint32_t block_size_;
  bool read_only_;
};

// Deterministic pseudo-random bytes.
std::vector<char> PatternBytes(size_t n, uint64_t seed);

}  // namespace stellarium::testing
