// FuseBlockServer: see fuse_block_server.h. All libfuse calls live in this file.
#define FUSE_USE_VERSION 312
#include "csi/node/block_device/fuse_block_server.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <fuse3/fuse_lowlevel.h>
#include <linux/fuse.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/uio.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>

#include "core/thread_name.h"
#include "csi/node/mounter.h"

namespace stellarium::node {

namespace {

constexpr fuse_ino_t kRootIno = FUSE_ROOT_ID;
constexpr size_t kMaxWrite = 1 << 20;  // 1 MiB: the largest bio a loop device sends
// The `unique` of the replayed FUSE_INIT: even (odd ones address interrupts) and far
// above any id the kernel hands out, so the kernel drops our answer with ENOENT.
constexpr uint64_t kReplayedInitUnique = 0x7ffffffffffffffeULL;
// FUSE_NOTIFY_RESEND from <linux/fuse.h> 7.40 (Linux 6.9); Debian 12's headers are
// older. Persisted in the kernel ABI; never renumbered.
constexpr int32_t kNotifyResend = 7;
constexpr auto kInitWait = std::chrono::seconds(10);

// The inode number of a volume file: a hash of its name (FNV-1a, 64 bits), so that a
// new process serving the same connection answers for the inodes the kernel already
// knows. Never 0 or the root's 1.
fuse_ino_t InoFor(const std::string& name) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (unsigned char c : name) {
    h ^= c;
    h *= 0x100000001b3ULL;
  }
  return h < 2 ? h + 2 : h;
}

int ErrnoFor(const Status& s) {
  switch (s.code()) {
    case StatusCode::kOk:
      return 0;
    case StatusCode::kFailedPrecondition:
      return EROFS;
    case StatusCode::kOutOfRange:
      return ENOSPC;
    case StatusCode::kInvalidArgument:
      return EINVAL;
    case StatusCode::kNotFound:
      return ENODEV;  // the volume was deleted under us
    default:
      return EIO;
  }
}

}  // namespace

struct FuseBlockServer::Entry {
  std::string name;
  fuse_ino_t ino = 0;
  std::shared_ptr<BlockIo> io;    // as added (identity, size, flush)
  std::shared_ptr<BlockIo> data;  // what reads and writes use: io, or a read-ahead over it
  int open_count = 0;             // GUARDED_BY(State::mu): opens made by this process
  bool removed = false;           // GUARDED_BY(State::mu): gone from by_name, kept while open
};

struct FuseBlockServer::State {
  mutable std::mutex mu;
  std::map<std::string, std::shared_ptr<Entry>> by_name;  // GUARDED_BY(mu)
  std::map<fuse_ino_t, std::shared_ptr<Entry>> by_ino;    // GUARDED_BY(mu)
  std::string mountpoint;
  time_t mount_time = 0;
  double attr_timeout = 0;  // FuseBlockServerOptions::attr_timeout_seconds
  std::string init_in;      // GUARDED_BY(mu): the FUSE_INIT body, once seen
  std::condition_variable init_seen;
  std::atomic<bool> ended{false};  // the connection is gone (unmounted or aborted)

  std::shared_ptr<Entry> Find(fuse_ino_t ino) {
    std::lock_guard<std::mutex> lock(mu);
    auto it = by_ino.find(ino);
    return it == by_ino.end() ? nullptr : it->second;
  }
  std::shared_ptr<Entry> FindName(const std::string& name) {
    std::lock_guard<std::mutex> lock(mu);
    auto it = by_name.find(name);
    return it == by_name.end() ? nullptr : it->second;
  }
};

namespace {

using Entry = FuseBlockServer::Entry;
using State = FuseBlockServer::State;

State* StateOf(fuse_req_t req) { return static_cast<State*>(fuse_req_userdata(req)); }

void FillRootAttr(const State* st, struct stat* attr) {
  memset(attr, 0, sizeof(*attr));
  attr->st_ino = kRootIno;
  attr->st_mode = S_IFDIR | 0755;
  attr->st_nlink = 2;
  attr->st_mtime = attr->st_ctime = attr->st_atime = st->mount_time;
}

void FillFileAttr(const State* st, const Entry& e, struct stat* attr) {
  memset(attr, 0, sizeof(*attr));
  attr->st_ino = e.ino;
  attr->st_mode = S_IFREG | (e.io->read_only() ? 0400 : 0600);
  attr->st_nlink = 1;
  attr->st_size = static_cast<off_t>(e.io->size());
  attr->st_blksize = e.io->block_size();
  attr->st_blocks = static_cast<blkcnt_t>(e.io->size() / 512);
  attr->st_mtime = attr->st_ctime = attr->st_atime = st->mount_time;
}

void OpInit(void* userdata, struct fuse_conn_info* conn) {
  // Receive write payloads by copy: each write arrives whole in one buffer.
  conn->want &= ~(FUSE_CAP_SPLICE_READ | FUSE_CAP_SPLICE_WRITE | FUSE_CAP_SPLICE_MOVE);
  if (conn->capable & FUSE_CAP_ASYNC_DIO) conn->want |= FUSE_CAP_ASYNC_DIO;
  conn->max_write = kMaxWrite;  // libfuse derives max_pages from it
  conn->max_readahead = kMaxWrite;
}

void OpLookup(fuse_req_t req, fuse_ino_t parent, const char* name) {
  State* st = StateOf(req);
  if (parent != kRootIno) {
    fuse_reply_err(req, ENOTDIR);
    return;
  }
  std::shared_ptr<Entry> e = st->FindName(name);
  if (!e) {
    fuse_reply_err(req, ENOENT);
    return;
  }
  struct fuse_entry_param ep;
  memset(&ep, 0, sizeof(ep));
  ep.ino = e->ino;
  ep.generation = 1;
  ep.attr_timeout = st->attr_timeout;
  ep.entry_timeout = st->attr_timeout;
  FillFileAttr(st, *e, &ep.attr);
  fuse_reply_entry(req, &ep);
}

void OpGetattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info* fi) {
  State* st = StateOf(req);
  struct stat attr;
  if (ino == kRootIno) {
    FillRootAttr(st, &attr);
    fuse_reply_attr(req, &attr, st->attr_timeout);
    return;
  }
  std::shared_ptr<Entry> e = st->Find(ino);
  if (!e) {
    fuse_reply_err(req, ENOENT);
    return;
  }
  FillFileAttr(st, *e, &attr);
  fuse_reply_attr(req, &attr, st->attr_timeout);
}

void OpSetattr(fuse_req_t req, fuse_ino_t ino, struct stat* attr, int to_set,
               struct fuse_file_info* fi) {
  State* st = StateOf(req);
  std::shared_ptr<Entry> e = ino == kRootIno ? nullptr : st->Find(ino);
  if (!e) {
    fuse_reply_err(req, ino == kRootIno ? EPERM : ENOENT);
    return;
  }
  // A volume's size changes only through the store; truncation is refused. Other
  // attribute changes (times, mode) are accepted and ignored so tools do not fail.
  if ((to_set & FUSE_SET_ATTR_SIZE) && static_cast<uint64_t>(attr->st_size) != e->io->size()) {
    fuse_reply_err(req, EPERM);
    return;
  }
  struct stat out;
  FillFileAttr(st, *e, &out);
  fuse_reply_attr(req, &out, st->attr_timeout);
}

void OpOpen(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info* fi) {
  State* st = StateOf(req);
  if (ino == kRootIno) {
    fuse_reply_err(req, EISDIR);
    return;
  }
  std::shared_ptr<Entry> e = st->Find(ino);
  if (!e) {
    fuse_reply_err(req, ENOENT);
    return;
  }
  int acc = fi->flags & O_ACCMODE;
  if (e->io->read_only() && acc != O_RDONLY) {
    fuse_reply_err(req, EROFS);
    return;
  }
  if (fi->flags & O_TRUNC) {
    fuse_reply_err(req, EPERM);
    return;
  }
  fi->direct_io = 1;  // no page cache: every read and write reaches the BlockIo
  fi->keep_cache = 0;
  fi->nonseekable = 0;
  // No pointer in fh: the kernel keeps it across a driver restart. Requests are
  // routed by inode number.
  fi->fh = ino;
  {
    std::lock_guard<std::mutex> lock(st->mu);
    ++e->open_count;
  }
  if (fuse_reply_open(req, fi) == -ENOENT) {  // the open was interrupted
    std::lock_guard<std::mutex> lock(st->mu);
    --e->open_count;
  }
}

void OpRead(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info* fi) {
  std::shared_ptr<Entry> e = StateOf(req)->Find(ino);
  if (!e) {
    fuse_reply_err(req, EBADF);
    return;
  }
  BlockIo& io = *e->data;
  uint64_t vsize = io.size();
  if (off < 0) {
    fuse_reply_err(req, EINVAL);
    return;
  }
  uint64_t uoff = static_cast<uint64_t>(off);
  if (uoff >= vsize || size == 0) {
    fuse_reply_buf(req, nullptr, 0);  // end of file
    return;
  }
  size_t n = static_cast<size_t>(std::min<uint64_t>(size, vsize - uoff));
  thread_local std::vector<char> buf;
  if (buf.size() < n) buf.resize(n);
  Status s = io.Read(uoff, n, buf.data());
  if (!s.ok()) {
    fuse_reply_err(req, ErrnoFor(s));
    return;
  }
  fuse_reply_buf(req, buf.data(), n);
}

void OpWrite(fuse_req_t req, fuse_ino_t ino, const char* data, size_t size, off_t off,
             struct fuse_file_info* fi) {
  std::shared_ptr<Entry> e = StateOf(req)->Find(ino);
  if (!e) {
    fuse_reply_err(req, EBADF);
    return;
  }
  BlockIo& io = *e->data;
  if (io.read_only()) {
    fuse_reply_err(req, EROFS);
    return;
  }
  if (off < 0) {
    fuse_reply_err(req, EINVAL);
    return;
  }
  uint64_t uoff = static_cast<uint64_t>(off);
  // Whole or nothing: a write reaching past the end is refused, never shortened.
  if (uoff > io.size() || size > io.size() - uoff) {
    fuse_reply_err(req, ENOSPC);
    return;
  }
  Status s = io.Write(uoff, data, size);
  if (!s.ok()) {
    fuse_reply_err(req, ErrnoFor(s));
    return;
  }
  fuse_reply_write(req, size);
}

void OpFlush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info* fi) {
  std::shared_ptr<Entry> e = StateOf(req)->Find(ino);
  if (!e) {
    fuse_reply_err(req, EBADF);
    return;
  }
  if (e->io->read_only()) {
    fuse_reply_err(req, 0);
    return;
  }
  fuse_reply_err(req, ErrnoFor(e->io->Flush()));
}

void OpFsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info* fi) {
  OpFlush(req, ino, fi);
}

void OpRelease(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info* fi) {
  State* st = StateOf(req);
  {
    std::lock_guard<std::mutex> lock(st->mu);
    auto it = st->by_ino.find(ino);
    // An open made by an earlier process is not counted here: never go below zero.
    if (it != st->by_ino.end() && it->second->open_count > 0 && --it->second->open_count == 0 &&
        it->second->removed) {
      st->by_ino.erase(it);
    }
  }
  fuse_reply_err(req, 0);
}

void OpOpendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info* fi) {
  if (ino != kRootIno) {
    fuse_reply_err(req, ENOTDIR);
    return;
  }
  fuse_reply_open(req, fi);
}

void OpReaddir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info* fi) {
  State* st = StateOf(req);
  if (ino != kRootIno) {
    fuse_reply_err(req, ENOTDIR);
    return;
  }
  // Offsets: 1 = ".", 2 = "..", 2+k = the k-th volume (1-based) in name order.
  std::vector<std::pair<std::string, fuse_ino_t>> names;
  names.emplace_back(".", kRootIno);
  names.emplace_back("..", kRootIno);
  {
    std::lock_guard<std::mutex> lock(st->mu);
    for (const auto& [name, e] : st->by_name) names.emplace_back(name, e->ino);
  }
  std::vector<char> buf(size);
  size_t used = 0;
  for (size_t i = static_cast<size_t>(std::max<off_t>(off, 0)); i < names.size(); ++i) {
    struct stat attr;
    memset(&attr, 0, sizeof(attr));
    attr.st_ino = names[i].second;
    attr.st_mode = i < 2 ? S_IFDIR : S_IFREG;
    size_t need = fuse_add_direntry(req, buf.data() + used, size - used, names[i].first.c_str(),
                                    &attr, static_cast<off_t>(i + 1));
    if (need > size - used) break;
    used += need;
  }
  fuse_reply_buf(req, buf.data(), used);
}

void OpStatfs(fuse_req_t req, fuse_ino_t ino) {
  struct statvfs sv;
  memset(&sv, 0, sizeof(sv));
  sv.f_bsize = 4096;
  sv.f_frsize = 4096;
  sv.f_namemax = 255;
  fuse_reply_statfs(req, &sv);
}

const struct fuse_lowlevel_ops kOps = [] {
  struct fuse_lowlevel_ops ops;
  memset(&ops, 0, sizeof(ops));
  ops.init = OpInit;
  ops.lookup = OpLookup;
  ops.getattr = OpGetattr;
  ops.setattr = OpSetattr;
  ops.open = OpOpen;
  ops.read = OpRead;
  ops.write = OpWrite;
  ops.flush = OpFlush;
  ops.fsync = OpFsync;
  ops.release = OpRelease;
  ops.opendir = OpOpendir;
  ops.readdir = OpReaddir;
  ops.statfs = OpStatfs;
  return ops;
}();

Status ValidateName(const std::string& name) {
  if (name.empty() || name == "." || name == ".." || name.size() > 255 ||
      name.find('/') != std::string::npos || name.find('\0') != std::string::npos) {
    return Status::InvalidArgument("fuse volume name '" + name +
                                   "': must be 1-255 bytes without '/' and not . or ..");
  }
  return Status::Ok();
}

// True when something is mounted at `dir` (the mount table only: never a stat of it).
bool IsMounted(const std::string& dir) {
  Result<bool> mounted = Mounter().IsMountPoint(dir);
  return mounted.ok() && *mounted;
}

// Removes a FUSE mount left behind by an earlier process that nobody will serve. Never
// stat()s it first: if some other process still holds its connection, a stat would
// wait for an answer that never comes.
void ClearOldMount(const std::string& dir) {
  while (IsMounted(dir)) {
    if (umount2(dir.c_str(), MNT_DETACH) != 0) break;
  }
}

// One worker: waits for a request or the stop signal, reads one request, answers it.
// Never reads after the stop signal, never drops a request it has read.
void WorkerLoop(fuse_session* se, State* st, int stop_fd) {
  NameThisThread("stl-fuse");
  struct fuse_buf buf;
  memset(&buf, 0, sizeof(buf));
  const int fd = fuse_session_fd(se);
  while (!st->ended.load()) {
    struct pollfd fds[2] = {{fd, POLLIN, 0}, {stop_fd, POLLIN, 0}};
    if (poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (fds[1].revents != 0) break;
    if (fds[0].revents == 0) continue;
    buf.size = 0;
    int n = fuse_session_receive_buf(se, &buf);  // the fd is non-blocking
    if (n == -EAGAIN || n == -EINTR) continue;   // another worker took it
    if (n <= 0) {
      // 0: the connection ended (unmounted or aborted); < 0: a read error.
      st->ended.store(true);
      break;
    }
    if (static_cast<size_t>(n) >= sizeof(struct fuse_in_header)) {
      const auto* in = static_cast<const struct fuse_in_header*>(buf.mem);
      if (in->opcode == FUSE_INIT && in->len <= static_cast<uint32_t>(n)) {
        std::lock_guard<std::mutex> lock(st->mu);
        st->init_in.assign(static_cast<const char*>(buf.mem) + sizeof(struct fuse_in_header),
                           in->len - sizeof(struct fuse_in_header));
        st->init_seen.notify_all();
      }
    }
    fuse_session_process_buf(se, &buf);
  }
  // Wake the others when the connection ended.
  if (st->ended.load()) {
    uint64_t one = 1;
    (void)!write(stop_fd, &one, sizeof(one));
  }
  free(buf.mem);
}

}  // namespace

FuseBlockServer::FuseBlockServer(FuseBlockServerOptions options)
    : options_(std::move(options)), state_(std::make_unique<State>()) {}

Status FuseBlockServer::NewSession() {
  state_->mountpoint = options_.mountpoint;
  state_->mount_time = time(nullptr);
  state_->attr_timeout = options_.attr_timeout_seconds;
  std::string opts = "fsname=stellarium,subtype=stellarium,default_permissions";
  if (options_.allow_other) opts += ",allow_other";
  std::vector<std::string> argv_s = {"stellarium-fuse", "-o", opts};
  std::vector<char*> argv;
  for (auto& a : argv_s) argv.push_back(a.data());
  struct fuse_args args = FUSE_ARGS_INIT(static_cast<int>(argv.size()), argv.data());
  session_ = fuse_session_new(&args, &kOps, sizeof(kOps), state_.get());
  if (session_ == nullptr) {
    return Status::Internal("fuse mountpoint " + options_.mountpoint + ": fuse_session_new failed");
  }
  stop_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (stop_fd_ < 0) return Status::FromErrno(errno, "fuse mountpoint " + options_.mountpoint);
  return Status::Ok();
}

void FuseBlockServer::StartWorkers() {
  int fd = fuse_session_fd(session_);
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
  unsigned n = std::max(1u, options_.max_threads);
  for (unsigned i = 0; i < n; ++i) {
    workers_.emplace_back(WorkerLoop, session_, state_.get(), stop_fd_);
  }
}

void FuseBlockServer::StopWorkers() {
  if (stop_fd_ >= 0) {
    uint64_t one = 1;
    (void)!write(stop_fd_, &one, sizeof(one));
  }
  for (auto& t : workers_) t.join();
  workers_.clear();
}

Result<std::unique_ptr<FuseBlockServer>> FuseBlockServer::Start(
    const FuseBlockServerOptions& options) {
  if (options.mountpoint.empty() || options.mountpoint[0] != '/') {
    return Status::InvalidArgument("fuse mountpoint '" + options.mountpoint +
                                   "': must be an absolute path");
  }
  if (access("/dev/fuse", R_OK | W_OK) != 0) {
    return Status::FromErrno(errno, "fuse mountpoint " + options.mountpoint + ": /dev/fuse")
        .Annotate("FUSE unavailable");
  }
  ClearOldMount(options.mountpoint);
  if (mkdir(options.mountpoint.c_str(), 0755) != 0 && errno != EEXIST) {
    return Status::FromErrno(errno, "mkdir " + options.mountpoint);
  }
  std::unique_ptr<FuseBlockServer> server(new FuseBlockServer(options));
  RETURN_IF_ERROR(server->NewSession());
  if (fuse_session_mount(server->session_, options.mountpoint.c_str()) != 0) {
    return Status::Unavailable("fuse mountpoint " + options.mountpoint +
                               ": mount failed (needs root and /dev/fuse)");
  }
  server->mounted_ = true;
  server->StartWorkers();
  // The kernel queued FUSE_INIT at mount time; a worker answers it at once.
  std::unique_lock<std::mutex> lock(server->state_->mu);
  if (!server->state_->init_seen.wait_for(lock, kInitWait,
                                          [&] { return !server->state_->init_in.empty(); })) {
    lock.unlock();
    return Status::Unavailable("fuse mountpoint " + options.mountpoint +
                               ": the kernel sent no FUSE_INIT");
  }
  lock.unlock();
  server->PrimeRootAttributes();
  return server;
}

Result<std::unique_ptr<FuseBlockServer>> FuseBlockServer::Resume(
    const FuseBlockServerOptions& options, const FuseResumeState& state) {
  if (options.mountpoint.empty() || options.mountpoint[0] != '/') {
    return Status::InvalidArgument("fuse mountpoint '" + options.mountpoint +
                                   "': must be an absolute path");
  }
  // fuse_init_in: major, minor, max_readahead, flags; newer kernels append more.
  if (state.init_in.size() < 16 || state.init_in.size() > 1024) {
    return Status::InvalidArgument("fuse mountpoint " + options.mountpoint +
                                   ": saved FUSE_INIT of " + std::to_string(state.init_in.size()) +
                                   " bytes is malformed");
  }
  uint32_t major = 0;
  memcpy(&major, state.init_in.data(), sizeof(major));
  if (major != FUSE_KERNEL_VERSION) {
    return Status::InvalidArgument("fuse mountpoint " + options.mountpoint +
                                   ": saved FUSE_INIT has protocol major " + std::to_string(major));
  }
  struct pollfd p = {state.fd, POLLIN, 0};
  if (state.fd < 0 || poll(&p, 1, 0) < 0 || (p.revents & (POLLERR | POLLHUP | POLLNVAL))) {
    return Status::Unavailable("fuse mountpoint " + options.mountpoint +
                               ": the saved FUSE connection is gone");
  }
  if (!IsMounted(options.mountpoint)) {
    return Status::Unavailable("fuse mountpoint " + options.mountpoint +
                               ": nothing is mounted there any more");
  }
  int fd = fcntl(state.fd, F_DUPFD_CLOEXEC, 3);
  if (fd < 0) return Status::FromErrno(errno, "fuse mountpoint " + options.mountpoint + ": dup");
  std::unique_ptr<FuseBlockServer> server(new FuseBlockServer(options));
  Status st = server->NewSession();
  if (!st.ok()) {
    close(fd);
    return st;
  }
  // libfuse takes an open /dev/fuse fd given as the mountpoint "/dev/fd/N".
  std::string dev = "/dev/fd/" + std::to_string(fd);
  if (fuse_session_mount(server->session_, dev.c_str()) != 0) {
    close(fd);
    return Status::Unavailable("fuse mountpoint " + options.mountpoint + ": cannot use fd " +
                               std::to_string(fd));
  }
  // libfuse refuses every request until it has seen FUSE_INIT, which the kernel sent to
  // the process that mounted. Replay that request: the session negotiates exactly what
  // the kernel is using; its answer carries an id the kernel does not know and is
  // dropped by the kernel (ENOENT), which libfuse ignores.
  std::string msg(sizeof(struct fuse_in_header) + state.init_in.size(), '\0');
  struct fuse_in_header in;
  memset(&in, 0, sizeof(in));
  in.len = static_cast<uint32_t>(msg.size());
  in.opcode = FUSE_INIT;
  in.unique = kReplayedInitUnique;
  memcpy(msg.data(), &in, sizeof(in));
  memcpy(msg.data() + sizeof(in), state.init_in.data(), state.init_in.size());
  struct fuse_buf buf;
  memset(&buf, 0, sizeof(buf));
  buf.size = msg.size();
  buf.mem = msg.data();
  fuse_session_process_buf(server->session_, &buf);
  server->state_->init_in = state.init_in;
  server->resumed_ = true;
  return server;
}

Status FuseBlockServer::Serve() {
  if (session_ == nullptr) return Status::FailedPrecondition("fuse server released");
  if (!workers_.empty()) return Status::Ok();
  StartWorkers();
  if (!resumed_) return Status::Ok();
  struct fuse_out_header out;
  memset(&out, 0, sizeof(out));
  out.len = sizeof(out);
  out.error = kNotifyResend;
  out.unique = 0;  // a notification
  const bool resent =
      write(fuse_session_fd(session_), &out, sizeof(out)) == static_cast<ssize_t>(sizeof(out));
  const int err = errno;
  PrimeRootAttributes();  // the old process may never have fetched them
  if (!resent) {
    return Status::Unimplemented("fuse mountpoint " + options_.mountpoint +
                                 ": the kernel cannot resend requests a dead process had read "
                                 "(FUSE_NOTIFY_RESEND needs Linux 6.9): " +
                                 strerror(err));
  }
  return Status::Ok();
}

void FuseBlockServer::PrimeRootAttributes() {
  // statx with the birth time, as coreutils' stat asks: on Linux 6.6+ the kernel sends
  // FUSE_STATX for it, which libfuse 3.14 answers ENOSYS; from then on the kernel knows
  // for the whole connection (also across restarts of the driver) that birth times are
  // not served and answers such a stat() from its cache instead of asking.
  struct statx stx;
  (void)statx(AT_FDCWD, options_.mountpoint.c_str(), 0, STATX_BASIC_STATS | STATX_BTIME, &stx);
}

void FuseBlockServer::Release() {
  if (session_ == nullptr) return;
  StopWorkers();  // every request read so far has been answered
  // Not fuse_session_unmount: the mount stays for the next process.
  fuse_session_destroy(session_);  // closes our fd; the fd holder keeps the connection
  session_ = nullptr;
  mounted_ = false;
  if (stop_fd_ >= 0) close(stop_fd_);
  stop_fd_ = -1;
}

FuseBlockServer::~FuseBlockServer() { Stop(); }

void FuseBlockServer::Stop() {
  if (session_ == nullptr) return;
  // Unmount first: that ends the connection, so nothing can wait for an answer from
  // workers that are gone, and the workers see the end. If a file is still held (an
  // attached loop device), MNT_FORCE aborts the connection (FUSE's umount_begin) and
  // MNT_DETACH removes the mount from the namespace. A resumed server unmounts too:
  // it owns the mount now.
  if (mounted_ || resumed_) {
    if (umount2(options_.mountpoint.c_str(), 0) != 0) {
      umount2(options_.mountpoint.c_str(), MNT_FORCE);
      umount2(options_.mountpoint.c_str(), MNT_DETACH);
    }
    mounted_ = false;
  }
  StopWorkers();
  fuse_session_unmount(session_);  // forgets the mountpoint; the mount is already gone
  fuse_session_destroy(session_);  // closes the device fd
  session_ = nullptr;
  if (stop_fd_ >= 0) close(stop_fd_);
  stop_fd_ = -1;
}

int FuseBlockServer::fd() const { return session_ ? fuse_session_fd(session_) : -1; }

std::string FuseBlockServer::init_in() const {
  std::lock_guard<std::mutex> lock(state_->mu);
  return state_->init_in;
}

std::string FuseBlockServer::PathOf(const std::string& name) const {
  return options_.mountpoint + "/" + name;
}

Status FuseBlockServer::AddVolume(const std::string& name, std::shared_ptr<BlockIo> io) {
  RETURN_IF_ERROR(ValidateName(name));
  if (!io) return Status::InvalidArgument("fuse volume " + name + ": no BlockIo given");
  std::lock_guard<std::mutex> lock(state_->mu);
  auto it = state_->by_name.find(name);
  if (it != state_->by_name.end()) {
    if (it->second->io == io) return Status::Ok();
    return Status::AlreadyExists("fuse volume " + name + ": already served from another volume");
  }
  const fuse_ino_t ino = InoFor(name);
  auto other = state_->by_ino.find(ino);
  if (other != state_->by_ino.end() && other->second->name != name) {
    return Status::AlreadyExists("fuse volume " + name + ": inode number collides with volume " +
                                 other->second->name + "; rename one of them");
  }
  auto e = std::make_shared<Entry>();
  e->name = name;
  e->ino = ino;
  e->io = std::move(io);
  e->data = e->io;
  if (options_.readahead_bytes > 0) {
    e->data = std::make_shared<ReadAheadBlockIo>(
        e->io, ReadAheadOptions{.max_bytes = options_.readahead_bytes});
  }
  // A removed entry of the same name still open takes the new one's place.
  if (other != state_->by_ino.end()) e->open_count = other->second->open_count;
  state_->by_name[name] = e;
  state_->by_ino[ino] = e;
  return Status::Ok();
}

Status FuseBlockServer::RemoveVolume(const std::string& name) {
  std::shared_ptr<Entry> e;
  {
    std::lock_guard<std::mutex> lock(state_->mu);
    auto it = state_->by_name.find(name);
    if (it == state_->by_name.end()) return Status::Ok();
    e = it->second;
    state_->by_name.erase(it);
    // Still open (a loop device not yet released): keep answering until closed.
    if (e->open_count > 0) {
      e->removed = true;
    } else {
      state_->by_ino.erase(e->ino);
    }
  }
  // Drop the kernel's cached name so the file disappears at once.
  fuse_lowlevel_notify_inval_entry(session_, kRootIno, name.c_str(), name.size());
  if (e->io->read_only()) return Status::Ok();
  return e->io->Flush().Annotate("fuse volume " + name + ": flush on removal");
}

Status FuseBlockServer::NotifyResized(const std::string& name) {
  std::shared_ptr<Entry> e = state_->FindName(name);
  if (!e) return Status::NotFound("fuse volume " + name + ": not served");
  int rc = fuse_lowlevel_notify_inval_inode(session_, e->ino, 0, 0);
  if (rc != 0 && rc != -ENOENT) {
    return Status::FromErrno(-rc, "fuse volume " + name + ": invalidate attributes");
  }
  return Status::Ok();
}

std::vector<std::string> FuseBlockServer::ListVolumes() const {
  std::lock_guard<std::mutex> lock(state_->mu);
  std::vector<std::string> out;
  for (const auto& [name, e] : state_->by_name) out.push_back(name);
  return out;
}

}  // namespace stellarium::node
