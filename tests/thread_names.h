// The names of this process's threads, for tests of core/thread_name.h's users.
#pragma once

#include <filesystem>
#include <fstream>
#include <set>
#include <string>

namespace stellarium::testing {

// /proc/self/task/*/comm, as a set.
inline std::set<std::string> ThreadNames() {
  std::set<std::string> names;
  for (const auto& task : std::filesystem::directory_iterator("/proc/self/task")) {
    std::ifstream comm(task.path() / "comm");
    std::string name;
    if (std::getline(comm, name)) names.insert(name);
  }
  return names;
}

}  // namespace stellarium::testing
