#include "core/admin.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>

#include "core/thread_name.h"

namespace stellarium {
namespace {

using json = nlohmann::json;
constexpr size_t kMaxRequest = 4096;

Result<sockaddr_un> Address(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof(addr.sun_path)) {
    return Status::InvalidArgument("admin socket " + path + ": path longer than " +
                                   std::to_string(sizeof(addr.sun_path) - 1) + " bytes");
  }
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  return addr;
}

json ReportJson(const GcReport& r) {
  return {{"layers_reclaimed", r.layers_reclaimed}, {"map_entries_dropped", r.map_entries_dropped},
          {"chunks_deleted", r.chunks_deleted},     {"bytes_freed", r.bytes_freed},
          {"disk_bytes_before", r.disk_bytes_before}, {"disk_bytes_after", r.disk_bytes_after},
          {"full", r.full},                         {"stopped", r.stopped},
          {"seconds", r.seconds}};
}

GcReport ReportOf(const json& j) {
  GcReport r;
  r.layers_reclaimed = j.value("layers_reclaimed", uint64_t{0});
  r.map_entries_dropped = j.value("map_entries_dropped", uint64_t{0});
  r.chunks_deleted = j.value("chunks_deleted", uint64_t{0});
  r.bytes_freed = j.value("bytes_freed", uint64_t{0});
  r.disk_bytes_before = j.value("disk_bytes_before", uint64_t{0});
  r.disk_bytes_after = j.value("disk_bytes_after", uint64_t{0});
  r.full = j.value("full", false);
  r.stopped = j.value("stopped", false);
  r.seconds = j.value("seconds", 0.0);
  return r;
}

// Reads one line (up to kMaxRequest bytes) from fd.
Result<std::string> ReadLine(int fd, const std::string& what) {
  std::string line;
  char buf[512];
  while (line.find('\n') == std::string::npos) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Status::FromErrno(errno, what);
    if (n == 0) break;
    line.append(buf, n);
    if (line.size() > kMaxRequest) return Status::InvalidArgument(what + ": message too long");
  }
  return line.substr(0, line.find('\n'));
}

Status WriteAll(int fd, const std::string& data, const std::string& what) {
  for (size_t done = 0; done < data.size();) {
    const ssize_t n = ::write(fd, data.data() + done, data.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Status::FromErrno(errno, what);
    done += n;
  }
  return Status::Ok();
}

}  // namespace

std::string AdminSocketPath(const std::string& store_dir) { return store_dir + "/admin.sock"; }

Result<std::unique_ptr<AdminServer>> AdminServer::Start(Store* store) {
  const std::string path = AdminSocketPath(store->options().path);
  ASSIGN_OR_RETURN(sockaddr_un addr, Address(path));
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return Status::FromErrno(errno, "admin socket " + path);
  ::unlink(path.c_str());  // a stale socket of an earlier holder: this process holds the store
  const mode_t old = ::umask(0077);
  const int bound = ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  ::umask(old);
  if (bound != 0 || ::listen(fd, 4) != 0) {
    Status st = Status::FromErrno(errno, "admin socket " + path);
    ::close(fd);
    return st;
  }
  const int stop = ::eventfd(0, EFD_CLOEXEC);
  if (stop < 0) {
    Status st = Status::FromErrno(errno, "admin socket " + path);
    ::close(fd);
    return st;
  }
  return std::unique_ptr<AdminServer>(new AdminServer(store, fd, stop, path));
}

AdminServer::AdminServer(Store* store, int listen_fd, int stop_fd, std::string path)
    : store_(store), listen_fd_(listen_fd), stop_fd_(stop_fd), path_(std::move(path)) {
  thread_ = std::thread([this] {
    NameThisThread("stl-admin");
    Serve();
  });
}

AdminServer::~AdminServer() {
  const uint64_t one = 1;
  (void)::write(stop_fd_, &one, sizeof one);
  thread_.join();
  ::close(listen_fd_);
  ::close(stop_fd_);
  ::unlink(path_.c_str());
}

void AdminServer::Serve() {
  for (;;) {
    pollfd fds[2] = {{listen_fd_, POLLIN, 0}, {stop_fd_, POLLIN, 0}};
    if (::poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      return;
    }
    if (fds[1].revents != 0) return;
    const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) continue;
    const timeval timeout{5, 0};  // a client that sends nothing does not hold the socket
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
    Handle(fd);
    ::close(fd);
  }
}

void AdminServer::Handle(int fd) {
  const std::string what = "admin socket " + path_;
  json reply;
  auto line = ReadLine(fd, what);
  json request = line.ok() ? json::parse(*line, nullptr, /*allow_exceptions=*/false) : json();
  Status st = line.status();
  if (st.ok() && (!request.is_object() || request.value("command", "") != "gc")) {
    st = Status::InvalidArgument(what + ": unknown request (known: {\"command\": \"gc\"})");
  }
  if (st.ok()) {
    auto report = store_->Gc();
    st = report.status();
    if (st.ok()) reply = {{"ok", true}, {"report", ReportJson(*report)}};
  }
  if (!st.ok()) {
    reply = {{"ok", false}, {"code", static_cast<int>(st.code())}, {"message", st.message()}};
  }
  (void)WriteAll(fd, reply.dump() + "\n", what);
}

Result<GcReport> RequestGc(const std::string& store_dir) {
  const std::string path = AdminSocketPath(store_dir);
  const std::string what = "admin socket " + path;
  ASSIGN_OR_RETURN(sockaddr_un addr, Address(path));
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return Status::FromErrno(errno, what);
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    return Status::Unavailable(what + ": " + std::strerror(errno) +
                               " (is the process holding the store serving it?)");
  }
  RETURN_IF_ERROR(WriteAll(fd, json{{"command", "gc"}}.dump() + "\n", what));
  ASSIGN_OR_RETURN(std::string line, ReadLine(fd, what));
  const json reply = json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (!reply.is_object()) return Status::Internal(what + ": unreadable reply");
  if (!reply.value("ok", false)) {
    return Status(static_cast<StatusCode>(reply.value("code", 13)), reply.value("message", ""));
  }
  return ReportOf(reply.value("report", json::object()));
}

}  // namespace stellarium
