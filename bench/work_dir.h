// WorkDir: a benchmark's scratch directory, made fresh under a parent directory the
// user names (--work DIR) and removed at the end. The parent itself and whatever else
// it holds are never touched: `--work /var/tmp` must not empty /var/tmp.
//
// Thread-safety: not thread-safe; one per benchmark run.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

namespace stellarium::bench {

class WorkDir {
 public:
  // Makes <parent>/<name>-XXXXXX (mkdtemp); exits with a message when it cannot.
  WorkDir(const std::string& parent, const std::string& name) {
    std::error_code ec;
    std::filesystem::create_directories(parent, ec);
    std::string tmpl = parent + "/" + name + "-XXXXXX";
    if (::mkdtemp(tmpl.data()) == nullptr) {
      std::fprintf(stderr, "%s: cannot make a directory under %s\n", name.c_str(), parent.c_str());
      std::exit(1);
    }
    path_ = tmpl;
  }
  ~WorkDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  WorkDir(const WorkDir&) = delete;
  WorkDir& operator=(const WorkDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

}  // namespace stellarium::bench
