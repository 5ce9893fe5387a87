// FuseBlockServer: see fuse_block_server.h. All libfuse calls live in this file.
#define FUSE_USE_VERSION 312
#include "csi/exposure/fuse_block_server.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <fuse3/fuse_lowlevel.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <atomic>
#include <cstring>

namespace stellarium::exposure {

namespace {

constexpr fuse_ino_t kRootIno = FUSE_ROOT_ID;
constexpr size_t kMaxWrite = 1 << 20;  // 1 MiB: the largest bio a loop device sends
constexpr double kAttrTimeout = 1.0;   // invalidated explicitly on resize and removal

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
  std::shared_ptr<BlockIo> io;
};

struct FuseBlockServer::State {
  mutable std::mutex mu;
  std::map<std::string, std::shared_ptr<Entry>> by_name;  // GUARDED_BY(mu)
  std::map<fuse_ino_t, std::shared_ptr<Entry>> by_ino;    // GUARDED_BY(mu)
  fuse_ino_t next_ino = kRootIno + 1;                     // GUARDED_BY(mu); never reused
  std::string mountpoint;
  time_t mount_time = 0;

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

// An open file: keeps the volume alive while the kernel holds it, even after removal.
struct Handle {
  std::shared_ptr<Entry> entry;
};

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
  ep.attr_timeout = kAttrTimeout;
  ep.entry_timeout = kAttrTimeout;
  FillFileAttr(st, *e, &ep.attr);
  fuse_reply_entry(req, &ep);
}

void OpGetattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info* fi) {
  State* st = StateOf(req);
  struct stat attr;
  if (ino == kRootIno) {
    FillRootAttr(st, &attr);
    fuse_reply_attr(req, &attr, kAttrTimeout);
    return;
  }
  std::shared_ptr<Entry> e = st->Find(ino);
  if (!e && fi != nullptr) e = reinterpret_cast<Handle*>(fi->fh)->entry;
  if (!e) {
    fuse_reply_err(req, ENOENT);
    return;
  }
  FillFileAttr(st, *e, &attr);
  fuse_reply_attr(req, &attr, kAttrTimeout);
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
  fuse_reply_attr(req, &out, kAttrTimeout);
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
  fi->fh = reinterpret_cast<uint64_t>(new Handle{e});
  if (fuse_reply_open(req, fi) == -ENOENT) {
    delete reinterpret_cast<Handle*>(fi->fh);  // the open was interrupted
  }
}

void OpRead(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info* fi) {
  Handle* h = reinterpret_cast<Handle*>(fi->fh);
  BlockIo& io = *h->entry->io;
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
  Handle* h = reinterpret_cast<Handle*>(fi->fh);
  BlockIo& io = *h->entry->io;
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
  Handle* h = reinterpret_cast<Handle*>(fi->fh);
  if (h->entry->io->read_only()) {
    fuse_reply_err(req, 0);
    return;
  }
  fuse_reply_err(req, ErrnoFor(h->entry->io->Flush()));
}

void OpFsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info* fi) {
  OpFlush(req, ino, fi);
}

void OpRelease(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info* fi) {
  delete reinterpret_cast<Handle*>(fi->fh);
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

// Removes a FUSE mount left behind by a process that died (stat fails with ENOTCONN).
void ClearDeadMount(const std::string& dir) {
  struct stat st;
  if (stat(dir.c_str(), &st) != 0 && errno == ENOTCONN) umount2(dir.c_str(), MNT_DETACH);
}

}  // namespace

FuseBlockServer::FuseBlockServer(FuseBlockServerOptions options)
    : options_(std::move(options)), state_(std::make_unique<State>()) {}

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
  ClearDeadMount(options.mountpoint);
  if (mkdir(options.mountpoint.c_str(), 0755) != 0 && errno != EEXIST) {
    return Status::FromErrno(errno, "mkdir " + options.mountpoint);
  }
  std::unique_ptr<FuseBlockServer> server(new FuseBlockServer(options));
  server->state_->mountpoint = options.mountpoint;
  server->state_->mount_time = time(nullptr);

  std::string opts = "fsname=stellarium,subtype=stellarium,default_permissions";
  if (options.allow_other) opts += ",allow_other";
  std::vector<std::string> argv_s = {"stellarium-fuse", "-o", opts};
  std::vector<char*> argv;
  for (auto& a : argv_s) argv.push_back(a.data());
  struct fuse_args args = FUSE_ARGS_INIT(static_cast<int>(argv.size()), argv.data());
  server->session_ = fuse_session_new(&args, &kOps, sizeof(kOps), server->state_.get());
  if (server->session_ == nullptr) {
    return Status::Internal("fuse mountpoint " + options.mountpoint + ": fuse_session_new failed");
  }
  if (fuse_session_mount(server->session_, options.mountpoint.c_str()) != 0) {
    fuse_session_destroy(server->session_);
    server->session_ = nullptr;
    return Status::Unavailable("fuse mountpoint " + options.mountpoint +
                               ": mount failed (needs root and /dev/fuse)");
  }
  server->mounted_ = true;
  fuse_session* se = server->session_;
  unsigned max_threads = std::max(1u, options.max_threads);
  server->loop_thread_ = std::thread([se, max_threads] {
    struct fuse_loop_config* cfg = fuse_loop_cfg_create();
    fuse_loop_cfg_set_clone_fd(cfg, 0);
    fuse_loop_cfg_set_idle_threads(cfg, std::min(4u, max_threads));
    fuse_loop_cfg_set_max_threads(cfg, max_threads);
    fuse_session_loop_mt(se, cfg);
    fuse_loop_cfg_destroy(cfg);
  });
  return server;
}

FuseBlockServer::~FuseBlockServer() { Stop(); }

void FuseBlockServer::Stop() {
  if (session_ == nullptr) return;
  if (mounted_) {
    // Unmounting ends the connection, which wakes the workers blocked reading
    // /dev/fuse (they return ENODEV and the loop ends). The session must not be marked
    // exited before that: workers drop requests once it is, and anything that still
    // touched the mount would then wait forever. If a file is still held (an attached
    // loop device), MNT_FORCE aborts the connection (FUSE's umount_begin) so the workers
    // wake anyway, and MNT_DETACH removes the mount from the namespace.
    if (umount2(options_.mountpoint.c_str(), 0) != 0) {
      umount2(options_.mountpoint.c_str(), MNT_FORCE);
      umount2(options_.mountpoint.c_str(), MNT_DETACH);
    }
    mounted_ = false;
  }
  fuse_session_exit(session_);
  if (loop_thread_.joinable()) loop_thread_.join();
  fuse_session_unmount(session_);  // closes the device fd; the mount is already gone
  fuse_session_destroy(session_);
  session_ = nullptr;
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
  auto e = std::make_shared<Entry>();
  e->name = name;
  e->ino = state_->next_ino++;
  e->io = std::move(io);
  state_->by_name[name] = e;
  state_->by_ino[e->ino] = e;
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
    state_->by_ino.erase(e->ino);
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

}  // namespace stellarium::exposure
