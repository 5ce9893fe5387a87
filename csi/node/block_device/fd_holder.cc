// FdHolder: see fd_holder.h. Every SCM_RIGHTS call of the project lives in this file
// (and vhost_user_blk.cc for the vhost-user socket).
#include "csi/node/block_device/fd_holder.h"

#include <errno.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <vector>

#include "core/thread_name.h"

namespace stellarium::node {
namespace {

constexpr size_t kMaxName = 64;
constexpr size_t kMaxMessage = 2 + kMaxName + kFdHolderMaxPayload;
constexpr int kMaxFdsPerMessage = 4;  // more are received only to be closed
constexpr uint8_t kOk = 0, kNotFound = 1, kBadRequest = 2;

bool ValidName(const std::string& name) {
  if (name.empty() || name.size() > kMaxName) return false;
  for (char c : name) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != '-') {
      return false;
    }
  }
  return true;
}

Status NameError(const std::string& name) {
  return Status::InvalidArgument("fd holder entry '" + name +
                                 "': names are 1-64 bytes of [A-Za-z0-9._-]");
}

Result<sockaddr_un> AddressOf(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(addr.sun_path)) {
    return Status::InvalidArgument("fd holder socket '" + path + "': must be 1-107 bytes long");
  }
  memcpy(addr.sun_path, path.data(), path.size());
  return addr;
}

Result<int> Connect(const std::string& path) {
  ASSIGN_OR_RETURN(sockaddr_un addr, AddressOf(path));
  int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (fd < 0) return Status::FromErrno(errno, "fd holder " + path + ": socket");
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    int err = errno;
    close(fd);
    return Status::Unavailable("fd holder " + path + ": no holder listens (" + strerror(err) + ")");
  }
  return fd;
}

// Sends one message with at most one fd.
Status SendMessage(int sock, const std::string& data, int fd, const std::string& what) {
  struct iovec iov = {const_cast<char*>(data.data()), data.size()};
  struct msghdr msg {};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(struct cmsghdr) char control[CMSG_SPACE(sizeof(int))];
  if (fd >= 0) {
    memset(control, 0, sizeof(control));
    msg.msg_control = control;
    msg.msg_controllen = sizeof(control);
    struct cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &fd, sizeof(int));
  }
  ssize_t n;
  do {
    n = sendmsg(sock, &msg, MSG_NOSIGNAL);
  } while (n < 0 && errno == EINTR);
  if (n != static_cast<ssize_t>(data.size())) return Status::FromErrno(errno, what + ": send");
  return Status::Ok();
}

// Receives one message; every fd that came with it is appended to *fds (the caller
// closes them). Returns the bytes; an empty result means the peer closed.
Result<std::string> ReceiveMessage(int sock, std::vector<int>* fds, const std::string& what) {
  std::string data(kMaxMessage + 1, '\0');
  struct iovec iov = {data.data(), data.size()};
  struct msghdr msg {};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(struct cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFdsPerMessage)];
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  ssize_t n;
  do {
    n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
  } while (n < 0 && errno == EINTR);
  if (n < 0) return Status::FromErrno(errno, what + ": receive");
  for (struct cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < count; ++i) {
      int fd;
      memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
      fds->push_back(fd);
    }
  }
  if (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) {
    return Status::InvalidArgument(what + ": message too large");
  }
  data.resize(static_cast<size_t>(n));
  return data;
}

void CloseAll(const std::vector<int>& fds) {
  for (int fd : fds) close(fd);
}

std::string Request(char op, const std::string& name, const std::string& payload) {
  std::string m;
  m.push_back(op);
  m.push_back(static_cast<char>(name.size()));
  m += name;
  m += payload;
  return m;
}

// One request/response on an open connection. For a get, *out receives the fd.
Status Exchange(int sock, const std::string& path, char op, const std::string& name, int fd,
                const std::string& payload, HeldFd* out) {
  const std::string what = "fd holder " + path + " entry " + name;
  RETURN_IF_ERROR(SendMessage(sock, Request(op, name, payload), fd, what));
  std::vector<int> fds;
  Result<std::string> reply = ReceiveMessage(sock, &fds, what);
  if (!reply.ok()) {
    CloseAll(fds);
    return reply.status();
  }
  if (reply->empty()) {
    CloseAll(fds);
    return Status::Unavailable(what + ": the holder closed the connection");
  }
  uint8_t status = static_cast<uint8_t>((*reply)[0]);
  if (status != kOk) {
    CloseAll(fds);
    if (status == kNotFound) return Status::NotFound(what + ": nothing held");
    return Status::InvalidArgument(what + ": the holder refused the request");
  }
  if (op == 'G') {
    if (fds.size() != 1) {
      CloseAll(fds);
      return Status::Internal(what + ": the reply carries " + std::to_string(fds.size()) + " fds");
    }
    out->fd = fds[0];
    out->payload = reply->substr(1);
  } else {
    CloseAll(fds);
  }
  return Status::Ok();
}

Status OneShot(const std::string& path, char op, const std::string& name, int fd,
               const std::string& payload, HeldFd* out) {
  if (!ValidName(name)) return NameError(name);
  ASSIGN_OR_RETURN(int sock, Connect(path));
  Status st = Exchange(sock, path, op, name, fd, payload, out);
  close(sock);
  return st;
}

}  // namespace

// ---- server ----

Result<std::unique_ptr<FdHolderServer>> FdHolderServer::Listen(const std::string& socket_path) {
  ASSIGN_OR_RETURN(sockaddr_un addr, AddressOf(socket_path));
  struct stat st;
  if (lstat(socket_path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      return Status::FailedPrecondition("fd holder socket " + socket_path +
                                        " exists and is not a socket: remove it");
    }
    Result<int> probe = Connect(socket_path);
    if (probe.ok()) {
      close(*probe);
      return Status::FailedPrecondition("fd holder socket " + socket_path +
                                        " is served by another holder");
    }
    if (unlink(socket_path.c_str()) != 0) {
      return Status::FromErrno(errno, "fd holder: remove stale socket " + socket_path);
    }
  }
  int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (fd < 0) return Status::FromErrno(errno, "fd holder " + socket_path + ": socket");
  mode_t old = umask(0177);  // 0600 from birth
  int rc = bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  int err = errno;
  umask(old);
  if (rc != 0 || listen(fd, 16) != 0) {
    if (rc == 0) err = errno;
    close(fd);
    return Status::FromErrno(err, "fd holder: listen on " + socket_path);
  }
  return std::unique_ptr<FdHolderServer>(new FdHolderServer(socket_path, fd));
}

FdHolderServer::~FdHolderServer() {
  if (listen_fd_ >= 0) {
    close(listen_fd_);
    unlink(path_.c_str());
  }
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& [name, h] : held_) close(h.fd);
}

size_t FdHolderServer::held() const {
  std::lock_guard<std::mutex> lock(mu_);
  return held_.size();
}

void FdHolderServer::HandleMessage(int client) {
  std::vector<int> fds;
  Result<std::string> m = ReceiveMessage(client, &fds, "fd holder " + path_);
  auto reply = [&](uint8_t status, const std::string& payload = "", int fd = -1) {
    std::string r(1, static_cast<char>(status));
    r += payload;
    (void)SendMessage(client, r, fd, "fd holder " + path_);
  };
  if (!m.ok() || m->size() < 2 || m->size() < 2 + size_t{static_cast<uint8_t>((*m)[1])}) {
    CloseAll(fds);
    if (m.ok() && !m->empty()) reply(kBadRequest);
    return;
  }
  char op = (*m)[0];
  std::string name = m->substr(2, static_cast<uint8_t>((*m)[1]));
  std::string payload = m->substr(2 + name.size());
  bool fd_ok = op == 'P' ? fds.size() == 1 : fds.empty();
  if (!ValidName(name) || !fd_ok || (op != 'P' && !payload.empty()) ||
      (op != 'P' && op != 'G' && op != 'D')) {
    CloseAll(fds);
    reply(kBadRequest);
    return;
  }
  std::lock_guard<std::mutex> lock(mu_);
  auto it = held_.find(name);
  if (op == 'P') {
    if (it != held_.end()) close(it->second.fd);
    held_[name] = Held{fds[0], payload};
    reply(kOk);
  } else if (op == 'G') {
    if (it == held_.end()) return reply(kNotFound);
    reply(kOk, it->second.payload, it->second.fd);
  } else {
    if (it != held_.end()) {
      close(it->second.fd);
      held_.erase(it);
    }
    reply(kOk);
  }
}

Status FdHolderServer::Run(int stop_fd) {
  std::vector<int> clients;
  Status result = Status::Ok();
  while (true) {
    std::vector<struct pollfd> fds;
    fds.push_back({stop_fd, POLLIN, 0});
    fds.push_back({listen_fd_, POLLIN, 0});
    for (int c : clients) fds.push_back({c, POLLIN, 0});
    if (poll(fds.data(), fds.size(), -1) < 0) {
      if (errno == EINTR) continue;
      result = Status::FromErrno(errno, "fd holder " + path_ + ": poll");
      break;
    }
    if (stop_fd >= 0 && fds[0].revents != 0) break;
    std::vector<int> keep;
    for (size_t i = 2; i < fds.size(); ++i) {
      int c = fds[i].fd;
      if (fds[i].revents & POLLIN) {
        HandleMessage(c);
        // A peer that closed shows POLLHUP (possibly with POLLIN for its last message).
      }
      if (fds[i].revents & (POLLHUP | POLLERR | POLLNVAL)) {
        close(c);
      } else {
        keep.push_back(c);
      }
    }
    clients.swap(keep);
    if (fds[1].revents & POLLIN) {
      int c = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (c >= 0) clients.push_back(c);
    }
  }
  for (int c : clients) close(c);
  return result;
}

// ---- client ----

Status FdHolderPut(const std::string& socket_path, const std::string& name, int fd,
                   const std::string& payload) {
  if (fd < 0) return Status::InvalidArgument("fd holder entry " + name + ": no fd given");
  if (payload.size() > kFdHolderMaxPayload) {
    return Status::InvalidArgument("fd holder entry " + name + ": payload of " +
                                   std::to_string(payload.size()) + " bytes exceeds " +
                                   std::to_string(kFdHolderMaxPayload));
  }
  return OneShot(socket_path, 'P', name, fd, payload, nullptr);
}

Result<HeldFd> FdHolderGet(const std::string& socket_path, const std::string& name) {
  HeldFd out;
  RETURN_IF_ERROR(OneShot(socket_path, 'G', name, -1, "", &out));
  return out;
}

Status FdHolderDrop(const std::string& socket_path, const std::string& name) {
  return OneShot(socket_path, 'D', name, -1, "", nullptr);
}

// ---- lease ----

FdHolderLease::FdHolderLease(std::string socket_path, std::string name, int fd, std::string payload,
                             std::function<void(bool)> on_change)
    : socket_path_(std::move(socket_path)),
      name_(std::move(name)),
      fd_(fd),
      payload_(std::move(payload)),
      on_change_(std::move(on_change)) {
  stop_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  // The first deposit happens here, so held() is true on return when a holder listens.
  int sock = Deposit();
  held_.store(sock >= 0);
  on_change_(sock >= 0);
  thread_ = std::thread([this, sock] { Loop(sock); });
}

FdHolderLease::~FdHolderLease() {
  uint64_t one = 1;
  (void)!write(stop_fd_, &one, sizeof(one));
  if (thread_.joinable()) thread_.join();
  close(stop_fd_);
}

int FdHolderLease::Deposit() {
  Result<int> c = Connect(socket_path_);
  if (!c.ok()) return -1;
  if (!Exchange(*c, socket_path_, 'P', name_, fd_, payload_, nullptr).ok()) {
    close(*c);
    return -1;
  }
  return *c;
}

void FdHolderLease::Loop(int sock) {
  NameThisThread("stl-fd-lease");
  while (true) {
    if (sock >= 0) {
      // Wait for the holder to go away (the connection closes) or for our stop.
      struct pollfd fds[2] = {{stop_fd_, POLLIN, 0}, {sock, POLLIN, 0}};
      while (poll(fds, 2, -1) < 0 && errno == EINTR) {
      }
      close(sock);
      if (fds[0].revents != 0) return;
      held_.store(false);
      on_change_(false);
    }
    // Retry once a second until a holder listens again.
    while (true) {
      struct pollfd stop = {stop_fd_, POLLIN, 0};
      if (poll(&stop, 1, 1000) > 0) return;
      sock = Deposit();
      if (sock >= 0) break;
    }
    held_.store(true);
    on_change_(true);
  }
}

}  // namespace stellarium::node
