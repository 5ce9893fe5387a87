// Starting a program in the background for a test that signals it: argv as given, its
// stdout and stderr into a log file, no core dump when a signal ends it.
//
// Thread-safety: plain functions; SpawnLogged changes this process's core-dump limit.
#pragma once

#include <fcntl.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <iterator>
#include <string>
#include <vector>

extern char** environ;

namespace stellarium::testing {

// Starts args[0] (a path) with args; returns its pid, or -1. The core-dump limit of
// this process (and so of the child) is set to 0 first: the tests that use this end
// the child with signals that would otherwise dump a core.
inline pid_t SpawnLogged(std::vector<std::string> args, const std::string& log) {
  rlimit no_core{0, 0};
  if (::setrlimit(RLIMIT_CORE, &no_core) != 0) return -1;
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 2, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&actions, 2, 1);
  pid_t pid = -1;
  const int rc = ::posix_spawn(&pid, argv[0], &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  return rc == 0 ? pid : -1;
}

// Waits for pid to end; returns its wait status, and its log in *out.
inline int WaitLogged(pid_t pid, const std::string& log, std::string* out) {
  int status = 0;
  if (::waitpid(pid, &status, 0) != pid) status = -1;
  std::ifstream in(log);
  *out = std::string(std::istreambuf_iterator<char>(in), {});
  return status;
}

}  // namespace stellarium::testing
