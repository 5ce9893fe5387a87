// LocalHttpServer: runs tests/sources/http_server.py on 127.0.0.1 over a directory, for
// the image-source tests and bench/http_import_bench.cc. The server counts requests per
// path and can drop a connection midway (see the script's docstring).
//
// The child gets a pipe as stdin and exits when it is closed, so a crashed test never
// leaves a server behind. Thread-safety: one owner.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "core/sources/http_source.h"

extern char** environ;

namespace stellarium::testing {

class LocalHttpServer {
 public:
  // Starts the server over `root` and waits for its port. port() == 0 on failure, with
  // error() saying why. With a certificate and key (PEM) it serves https.
  LocalHttpServer(const std::string& script, const std::string& root, const std::string& tls_cert = "",
                  const std::string& tls_key = "")
      : scheme_(tls_cert.empty() ? "http" : "https") {
    int in[2], out[2];
    if (pipe2(in, O_CLOEXEC) != 0 || pipe2(out, O_CLOEXEC) != 0) {
      error_ = "pipe failed";
      return;
    }
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, in[0], 0);
    posix_spawn_file_actions_adddup2(&fa, out[1], 1);
    std::vector<std::string> args = {"/usr/bin/python3", script, root};
    if (!tls_cert.empty()) args.insert(args.end(), {"--tls", tls_cert, tls_key});
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    int rc = posix_spawn(&pid_, argv[0], &fa, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&fa);
    close(in[0]);
    close(out[1]);
    stdin_ = in[1];
    if (rc != 0) {
      error_ = "cannot start /usr/bin/python3: " + std::string(strerror(rc));
      pid_ = -1;
      close(out[0]);
      return;
    }
    std::string line;
    char c;
    while (read(out[0], &c, 1) == 1 && c != '\n') line += c;
    close(out[0]);
    port_ = line.empty() ? 0 : std::stoi(line);
    if (port_ == 0) error_ = "the server printed no port";
  }
  ~LocalHttpServer() {
    if (stdin_ >= 0) close(stdin_);
    if (pid_ > 0) {
      int st;
      waitpid(pid_, &st, 0);
    }
  }
  LocalHttpServer(const LocalHttpServer&) = delete;
  LocalHttpServer& operator=(const LocalHttpServer&) = delete;

  int port() const { return port_; }
  pid_t pid() const { return pid_; }  // the server process (-1 when it did not start)
  const std::string& error() const { return error_; }
  std::string Url(const std::string& path) const {
    return scheme_ + "://127.0.0.1:" + std::to_string(port_) + path;
  }

  // GET of a control path; the body, or "" on failure.
  std::string Control(const std::string& path_and_query) const { return Get(Url(path_and_query)); }
  // GET of any http URL (e.g. a metrics endpoint); the body, or "" on failure.
  static std::string Get(const std::string& url) {
    HttpSourceOptions o;
    o.url = url;
    auto src = HttpImageSource::Open(o);
    if (!src.ok()) return "";
    std::string body;
    char buf[256];
    for (;;) {
      bool hole = false;
      auto n = (*src)->Next(buf, sizeof(buf), &hole);
      if (!n.ok() || *n == 0) break;
      body.append(buf, *n);
    }
    return body;
  }
  // Requests the server has seen for `path`.
  int Requests(const std::string& path) const {
    std::string b = Control("/__count?path=" + path);
    return b.empty() ? -1 : std::stoi(b);
  }
  // GETs of `path` answered with its body (not 304, not HEAD).
  int BodyRequests(const std::string& path) const {
    std::string b = Control("/__count?path=" + path + "&what=body");
    return b.empty() ? -1 : std::stoi(b);
  }
  // Responses for `path` stop after `after` body bytes until Release(path).
  bool Hold(const std::string& path, uint64_t after) const {
    return Control("/__hold?path=" + path + "&after=" + std::to_string(after)) == "ok";
  }
  bool Release(const std::string& path) const { return Control("/__release?path=" + path) == "ok"; }
  // The next `times` requests for `path` send `after` body bytes and drop the connection.
  bool DropAfter(const std::string& path, uint64_t after, int times = 1) const {
    return Control("/__drop?path=" + path + "&after=" + std::to_string(after) +
                   "&times=" + std::to_string(times)) == "ok";
  }

 private:
  std::string scheme_;
  pid_t pid_ = -1;
  int stdin_ = -1;
  int port_ = 0;
  std::string error_;
};

}  // namespace stellarium::testing
