// vhost-user-blk back-end: see vhost_user_blk.h. All socket, mmap and eventfd calls of
// the vhost-user exposure live in this file.
#include "csi/node/vhost_user/vhost_user_blk.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "core/thread_name.h"

namespace stellarium::node {

void UniqueFd::Reset() {
  if (fd_ >= 0) close(fd_);
  fd_ = -1;
}

namespace {

constexpr uint32_t kBlkSizeAdvertised = 512;  // logical block size the guest uses
constexpr uint32_t kMaxIoThreads = 16;

bool Has(uint64_t features, int bit) { return (features >> bit) & 1; }

// The payload of a reply: the bytes of `value` as the front-end reads them.
template <typename T>
std::vector<uint8_t> PayloadOf(const T& value) {
  const auto* p = reinterpret_cast<const uint8_t*>(&value);
  return std::vector<uint8_t>(p, p + sizeof(value));
}

std::string RequestName(uint32_t r) { return "vhost-user request " + std::to_string(r); }

}  // namespace

VhostUserBlkSession::VhostUserBlkSession(std::shared_ptr<BlockIo> io,
                                         const VhostUserBlkOptions& options)
    : io_(std::move(io)), options_(options) {
  if (options_.num_queues == 0) options_.num_queues = 1;
  if (options_.num_queues > 64) options_.num_queues = 64;
  info_.capacity_sectors = io_->size() / kSectorSize;
  info_.read_only = options_.read_only || io_->read_only();
  info_.serial = options_.serial;
  queues_.resize(options_.num_queues);
  if (options_.readahead_bytes > 0) {
    ReadAheadOptions ra;
    ra.max_bytes = options_.readahead_bytes;
    readahead_ = std::make_shared<ReadAheadBlockIo>(io_, ra);
  }
  options_.io_threads = std::min<uint32_t>(options_.io_threads, kMaxIoThreads);
  if (options_.io_threads > 0) {
    wake_ = UniqueFd(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (!wake_.valid()) options_.io_threads = 0;  // no eventfd: run requests inline
  }
  for (uint32_t i = 0; i < options_.io_threads; ++i) workers_.emplace_back([this] { Worker(); });
}

VhostUserBlkSession::~VhostUserBlkSession() {
  {
    std::lock_guard<std::mutex> lock(exec_mu_);
    stopping_ = true;  // workers finish the tasks queued, then exit
  }
  work_.notify_all();
  for (auto& t : workers_) t.join();
  readahead_.reset();
  UnmapAll();
}

BlockIo& VhostUserBlkSession::target() { return readahead_ ? *readahead_ : *io_; }

void VhostUserBlkSession::Drain() {
  std::unique_lock<std::mutex> lock(exec_mu_);
  idle_.wait(lock, [this] { return in_flight_ == 0; });
}

void VhostUserBlkSession::Signal(uint32_t queue) {
  const Queue& q = queues_[queue];
  if (!q.call.valid()) return;
  uint64_t one = 1;
  ssize_t n = write(q.call.get(), &one, sizeof(one));
  (void)n;
}

void VhostUserBlkSession::Worker() {
  NameThisThread("stl-vhost-io");
  std::unique_lock<std::mutex> lock(exec_mu_);
  for (;;) {
    work_.wait(lock, [this] { return stopping_ || !tasks_.empty(); });
    if (tasks_.empty()) return;  // stopping, nothing left
    Task t = std::move(tasks_.front());
    tasks_.pop_front();
    lock.unlock();
    const uint32_t used_len = ExecutePopped(target(), info_, t.request);
    lock.lock();
    Queue& q = queues_[t.queue];
    q.ring.PushUsed(t.request.head, used_len);
    lock.unlock();
    // Still counted in flight: no message can replace the call fd meanwhile.
    Signal(t.queue);
    lock.lock();
    --q.in_flight;
    --in_flight_;
    if (q.throttled) {
      q.throttled = false;
      uint64_t one = 1;
      ssize_t n = write(wake_.get(), &one, sizeof(one));
      (void)n;
    }
    if (in_flight_ == 0) idle_.notify_all();
  }
}

uint64_t VhostUserBlkSession::offered_features() const {
  uint64_t f = (1ull << kVirtioFVersion1) | (1ull << kVhostUserFProtocolFeatures) |
               (1ull << kVirtioRingFIndirectDesc) | (1ull << kVirtioBlkFSizeMax) |
               (1ull << kVirtioBlkFSegMax) | (1ull << kVirtioBlkFBlkSize) |
               (1ull << kVirtioBlkFFlush) | (1ull << kVirtioBlkFMq);
  if (info_.read_only) f |= 1ull << kVirtioBlkFRo;
  return f;
}

uint64_t VhostUserBlkSession::offered_protocol_features() const {
  return (1ull << kVhostUserProtocolFMq) | (1ull << kVhostUserProtocolFReplyAck) |
         (1ull << kVhostUserProtocolFConfig);
}

std::vector<uint8_t> VhostUserBlkSession::ConfigSpace() const {
  // struct virtio_blk_config (virtio 1.2, 5.2.4), little-endian.
  std::vector<uint8_t> c(kVirtioBlkConfigSize, 0);
  uint64_t capacity = io_->size() / kSectorSize;
  uint32_t size_max = kBlkSizeMax, seg_max = kBlkSegMax, blk_size = kBlkSizeAdvertised;
  uint16_t nq = static_cast<uint16_t>(queues_.size());
  memcpy(c.data() + 0, &capacity, 8);
  memcpy(c.data() + 8, &size_max, 4);
  memcpy(c.data() + 12, &seg_max, 4);
  memcpy(c.data() + 20, &blk_size, 4);
  memcpy(c.data() + 34, &nq, 2);
  return c;
}

uint32_t VhostUserBlkSession::queue_size(uint32_t index) const {
  return index < queues_.size() ? queues_[index].ring.size() : 0;
}

int VhostUserBlkSession::kick_fd(uint32_t index) const {
  if (index >= queues_.size()) return -1;
  const Queue& q = queues_[index];
  return q.ring.configured() ? q.kick.get() : -1;
}

void VhostUserBlkSession::UnmapAll() {
  for (auto& m : mappings_) munmap(m.addr, m.len);
  mappings_.clear();
  memory_ = GuestMemory();
}

Status VhostUserBlkSession::SetMemTable(const VhostUserMessage& msg, std::vector<UniqueFd>& fds) {
  ASSIGN_OR_RETURN(std::vector<MemRegionDesc> descs, ParseMemTable(msg.payload, fds.size()));
  std::vector<Mapping> maps;
  std::vector<MemoryRegion> regions;
  auto undo = [&maps] {
    for (auto& m : maps) munmap(m.addr, m.len);
  };
  for (size_t i = 0; i < descs.size(); ++i) {
    const MemRegionDesc& d = descs[i];
    uint64_t len = d.mmap_offset + d.size;  // no overflow: checked by the parser
    struct stat st;
    if (fstat(fds[i].get(), &st) != 0 ||
        (S_ISREG(st.st_mode) && static_cast<uint64_t>(st.st_size) < len)) {
      undo();
      return Status::InvalidArgument("vhost-user memory region " + std::to_string(i) +
                                     ": fd is smaller than mmap offset + size");
    }
    void* addr =
        mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fds[i].get(), 0);
    if (addr == MAP_FAILED) {
      int err = errno;
      undo();
      return Status::FromErrno(err, "vhost-user memory region " + std::to_string(i) + ": mmap");
    }
    maps.push_back({addr, len});
    regions.push_back(
        {d.guest_addr, d.size, d.user_addr, static_cast<uint8_t*>(addr) + d.mmap_offset});
  }
  UnmapAll();
  mappings_ = std::move(maps);
  memory_ = GuestMemory(std::move(regions));
  // Rings move to the new table; a ring whose kick fd and addresses came before any
  // table starts now.
  for (uint32_t i = 0; i < queues_.size(); ++i) RETURN_IF_ERROR(StartQueueIfReady(i));
  return Status::Ok();
}

Status VhostUserBlkSession::StartQueueIfReady(uint32_t index) {
  Queue& q = queues_[index];
  if (!q.kick.valid() || !q.addrs || q.size == 0 || memory_.empty()) return Status::Ok();
  uint16_t last = q.ring.last_avail_idx();
  Status s = q.ring.Configure(memory_, q.size, *q.addrs);
  q.ring.set_last_avail_idx(last);
  return s.Annotate("vring " + std::to_string(index));
}

void VhostUserBlkSession::StopQueue(uint32_t index) {
  Queue& q = queues_[index];
  uint16_t last = q.ring.last_avail_idx();
  q.ring.Reset();
  q.ring.set_last_avail_idx(last);
  q.kick.Reset();
}

Result<uint32_t> VhostUserBlkSession::ProcessQueue(uint32_t index) {
  if (index >= queues_.size()) return Status::InvalidArgument("vring index out of range");
  Queue& q = queues_[index];
  if (!q.ring.configured() || !q.enabled) return 0u;
  if (workers_.empty()) {
    Result<uint32_t> done = q.ring.Process(memory_, target(), info_);
    if (done.ok() && *done > 0) Signal(index);
    return done;
  }
  uint32_t taken = 0;
  bool completed_here = false;
  Status ring_error;
  while (taken < q.ring.size()) {
    {
      std::lock_guard<std::mutex> lock(exec_mu_);
      if (q.in_flight >= q.ring.size()) {  // a guest cannot have more: it republished heads
        q.throttled = true;                // a completion wakes the server again
        break;
      }
    }
    PoppedRequest p;
    Result<bool> got = q.ring.Pop(memory_, &p);
    if (!got.ok()) {
      ring_error = got.status();
      break;
    }
    if (!*got) break;
    ++taken;
    const bool io = p.parsed.ok() && (p.req.type == kVirtioBlkTIn || p.req.type == kVirtioBlkTOut);
    if (!io) {
      // Errors, GET_ID and unknown types are answered at once. A FLUSH makes durable
      // every write completed before it: wait for the writes in flight first.
      if (p.parsed.ok() && p.req.type == kVirtioBlkTFlush) Drain();
      const uint32_t used_len = ExecutePopped(target(), info_, p);
      std::lock_guard<std::mutex> lock(exec_mu_);
      q.ring.PushUsed(p.head, used_len);
      completed_here = true;
      continue;
    }
    {
      std::lock_guard<std::mutex> lock(exec_mu_);
      // A lone request (nothing else in flight or waiting: a guest reading at depth 1)
      // runs here: handing it to a worker would only add a thread switch.
      if (in_flight_ > 0 || taken > 1 || q.ring.HasAvailable()) {
        ++q.in_flight;
        ++in_flight_;
        tasks_.push_back(Task{index, std::move(p)});
        work_.notify_one();
        continue;
      }
    }
    const uint32_t used_len = ExecutePopped(target(), info_, p);
    {
      std::lock_guard<std::mutex> lock(exec_mu_);
      q.ring.PushUsed(p.head, used_len);
    }
    Signal(index);
  }
  if (completed_here) Signal(index);
  if (!ring_error.ok()) return ring_error;
  return taken;
}

Status VhostUserBlkSession::HandleMessage(const VhostUserMessage& msg, std::vector<UniqueFd> fds,
                                          std::vector<uint8_t>* reply) {
  const uint32_t req = msg.header.request;
  Drain();  // requests in flight use the memory and rings a message may change
  if (msg.header.size != msg.payload.size()) {
    return Status::InvalidArgument(RequestName(req) + ": header size disagrees with payload");
  }
  // Only these messages carry descriptors.
  bool takes_fds = req == kVhostUserSetMemTable || req == kVhostUserSetVringKick ||
                   req == kVhostUserSetVringCall || req == kVhostUserSetVringErr;
  if (!takes_fds && !fds.empty()) {
    return Status::InvalidArgument(RequestName(req) + ": unexpected file descriptors");
  }
  MessageReply out;
  switch (req) {
    case kVhostUserGetFeatures:
    case kVhostUserSetFeatures:
    case kVhostUserSetOwner:
    case kVhostUserResetOwner:
    case kVhostUserGetProtocolFeatures:
    case kVhostUserSetProtocolFeatures:
    case kVhostUserGetQueueNum:
      RETURN_IF_ERROR(HandleOwnerMessage(msg, &out));
      break;
    case kVhostUserSetMemTable:
      RETURN_IF_ERROR(SetMemTable(msg, fds));
      break;
    case kVhostUserSetVringNum:
    case kVhostUserSetVringAddr:
    case kVhostUserSetVringBase:
    case kVhostUserGetVringBase:
    case kVhostUserSetVringEnable:
      RETURN_IF_ERROR(HandleVringMessage(msg, &out));
      break;
    case kVhostUserSetVringKick:
    case kVhostUserSetVringCall:
    case kVhostUserSetVringErr:
      RETURN_IF_ERROR(SetVringFd(msg, fds));
      break;
    case kVhostUserGetConfig:
    case kVhostUserSetConfig:
      RETURN_IF_ERROR(HandleConfigMessage(msg, &out));
      break;
    default:
      return Status::Unimplemented(RequestName(req) + ": not supported by this back-end");
  }
  if (out.payload) {
    std::vector<uint8_t> r = EncodeReply(req, out.payload->data(), out.payload->size());
    reply->insert(reply->end(), r.begin(), r.end());
  } else if ((msg.header.flags & kVhostUserNeedReplyFlag) &&
             Has(acked_protocol_features_, kVhostUserProtocolFReplyAck)) {
    const uint64_t ack = out.ack.ok() ? 0 : 1;
    std::vector<uint8_t> r = EncodeReply(req, &ack, sizeof(ack));
    reply->insert(reply->end(), r.begin(), r.end());
  }
  return Status::Ok();
}

Status VhostUserBlkSession::HandleOwnerMessage(const VhostUserMessage& msg, MessageReply* out) {
  const uint32_t nq = static_cast<uint32_t>(queues_.size());
  switch (msg.header.request) {
    case kVhostUserGetFeatures:
      out->payload = PayloadOf(offered_features());
      return Status::Ok();
    case kVhostUserSetFeatures: {
      ASSIGN_OR_RETURN(uint64_t f, ParseU64Payload(msg.payload));
      if (f & ~offered_features()) {
        return Status::InvalidArgument("vhost-user SET_FEATURES: features not offered: " +
                                       std::to_string(f & ~offered_features()));
      }
      acked_features_ = f;
      for (auto& q : queues_) q.ring.set_indirect(Has(f, kVirtioRingFIndirectDesc));
      if (!Has(f, kVhostUserFProtocolFeatures)) {
        for (auto& q : queues_) q.enabled = true;  // rings start enabled without it
      }
      return Status::Ok();
    }
    case kVhostUserSetOwner:
      owner_set_ = true;
      return Status::Ok();
    case kVhostUserResetOwner:
      for (uint32_t i = 0; i < nq; ++i) StopQueue(i);
      owner_set_ = false;
      return Status::Ok();
    case kVhostUserGetProtocolFeatures:
      out->payload = PayloadOf(offered_protocol_features());
      return Status::Ok();
    case kVhostUserSetProtocolFeatures: {
      ASSIGN_OR_RETURN(uint64_t f, ParseU64Payload(msg.payload));
      if (f & ~offered_protocol_features()) {
        return Status::InvalidArgument("vhost-user SET_PROTOCOL_FEATURES: not offered: " +
                                       std::to_string(f & ~offered_protocol_features()));
      }
      acked_protocol_features_ = f;
      return Status::Ok();
    }
    default:  // kVhostUserGetQueueNum
      out->payload = PayloadOf(static_cast<uint64_t>(nq));
      return Status::Ok();
  }
}

Status VhostUserBlkSession::HandleVringMessage(const VhostUserMessage& msg, MessageReply* out) {
  const uint32_t nq = static_cast<uint32_t>(queues_.size());
  if (msg.header.request == kVhostUserSetVringAddr) {
    ASSIGN_OR_RETURN(VringAddr a, ParseVringAddr(msg.payload, nq));
    queues_[a.index].addrs = VringAddresses{a.desc_user_addr, a.avail_user_addr, a.used_user_addr};
    return StartQueueIfReady(a.index);
  }
  ASSIGN_OR_RETURN(VringState s, ParseVringState(msg.payload, nq));
  Queue& q = queues_[s.index];
  switch (msg.header.request) {
    case kVhostUserSetVringNum:
      if (s.num == 0 || s.num > kMaxQueueSize || (s.num & (s.num - 1)) != 0) {
        return Status::InvalidArgument("vhost-user SET_VRING_NUM: size " + std::to_string(s.num) +
                                       " is not a power of two in [1, 32768]");
      }
      q.size = s.num;
      return Status::Ok();
    case kVhostUserSetVringBase:
      if (s.num > 0xffff) {
        return Status::InvalidArgument("vhost-user SET_VRING_BASE: index " + std::to_string(s.num) +
                                       " does not fit 16 bits");
      }
      q.ring.set_last_avail_idx(static_cast<uint16_t>(s.num));
      return Status::Ok();
    case kVhostUserGetVringBase: {
      StopQueue(s.index);
      const uint32_t state[2] = {s.index, q.ring.last_avail_idx()};
      out->payload = PayloadOf(state);
      return Status::Ok();
    }
    default:  // kVhostUserSetVringEnable
      if (s.num > 1) {
        return Status::InvalidArgument("vhost-user SET_VRING_ENABLE: value " +
                                       std::to_string(s.num) + " is not 0 or 1");
      }
      q.enabled = s.num == 1;
      if (s.num == 1) {
        auto done = ProcessQueue(s.index);  // requests that arrived while disabled
        (void)done;
      }
      return Status::Ok();
  }
}

Status VhostUserBlkSession::SetVringFd(const VhostUserMessage& msg, std::vector<UniqueFd>& fds) {
  const uint32_t req = msg.header.request;
  const uint32_t nq = static_cast<uint32_t>(queues_.size());
  bool no_fd = false;
  ASSIGN_OR_RETURN(uint32_t index, ParseVringFdIndex(msg.payload, nq, fds.size(), &no_fd));
  Queue& q = queues_[index];
  UniqueFd fd = no_fd ? UniqueFd() : std::move(fds[0]);
  if (req == kVhostUserSetVringKick) {
    if (no_fd) {
      return Status::InvalidArgument("vhost-user vring " + std::to_string(index) +
                                     ": polling without a kick fd is not supported");
    }
    q.kick = std::move(fd);
    return StartQueueIfReady(index);
  }
  if (req == kVhostUserSetVringCall) {
    q.call = std::move(fd);
  } else {
    q.err = std::move(fd);
  }
  return Status::Ok();
}

Status VhostUserBlkSession::HandleConfigMessage(const VhostUserMessage& msg, MessageReply* out) {
  ASSIGN_OR_RETURN(ConfigAccess c, ParseConfigAccess(msg.payload));
  if (msg.header.request == kVhostUserSetConfig) {
    // No writable config field is offered (no VIRTIO_BLK_F_CONFIG_WCE).
    out->ack = Status::FailedPrecondition("vhost-user SET_CONFIG: no writable config fields");
    return Status::Ok();
  }
  std::vector<uint8_t> space = ConfigSpace();
  std::vector<uint8_t> payload(12 + c.size);
  memcpy(payload.data(), msg.payload.data(), 12);
  memcpy(payload.data() + 12, space.data() + c.offset, c.size);
  out->payload = std::move(payload);
  return Status::Ok();
}

// ---------------------------------------------------------------------------
// Server

namespace {

// Waits until `fd` is readable or `stop_fd` fires. False on stop or error.
bool WaitReadable(int fd, int stop_fd) {
  for (;;) {
    struct pollfd p[2] = {{fd, POLLIN, 0}, {stop_fd, POLLIN, 0}};
    int rc = poll(p, 2, -1);
    if (rc < 0 && errno == EINTR) continue;
    if (rc < 0 || (p[1].revents & POLLIN)) return false;
    if (p[0].revents) return true;
  }
}

// Reads exactly n bytes. 0 = EOF before any byte, 1 = ok, -1 = error/stop/EOF midway.
int ReadFull(int fd, int stop_fd, uint8_t* buf, size_t n, bool eof_ok) {
  size_t got = 0;
  while (got < n) {
    if (!WaitReadable(fd, stop_fd)) return -1;
    ssize_t r = read(fd, buf + got, n - got);
    if (r < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (r < 0) return -1;
    if (r == 0) return (got == 0 && eof_ok) ? 0 : -1;
    got += static_cast<size_t>(r);
  }
  return 1;
}

}  // namespace

Result<std::unique_ptr<VhostUserBlkServer>> VhostUserBlkServer::Start(
    const std::string& socket_path, std::shared_ptr<BlockIo> io,
    const VhostUserBlkOptions& options) {
  if (!io) return Status::InvalidArgument("vhost-user-blk " + socket_path + ": no volume given");
  struct sockaddr_un addr;
  memset(&addr, 0, sizeof(addr));
  addr.sun_family = AF_UNIX;
  if (socket_path.empty() || socket_path.size() >= sizeof(addr.sun_path)) {
    return Status::InvalidArgument("vhost-user-blk socket path '" + socket_path +
                                   "': empty or longer than " +
                                   std::to_string(sizeof(addr.sun_path) - 1) + " bytes");
  }
  memcpy(addr.sun_path, socket_path.c_str(), socket_path.size());
  struct stat st;
  if (lstat(socket_path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      return Status::AlreadyExists("vhost-user-blk socket path " + socket_path +
                                   ": exists and is not a socket");
    }
    unlink(socket_path.c_str());  // a stale socket from an earlier run
  }
  std::unique_ptr<VhostUserBlkServer> s(new VhostUserBlkServer());
  s->socket_path_ = socket_path;
  s->io_ = std::move(io);
  s->options_ = options;
  s->listen_fd_ = UniqueFd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!s->listen_fd_.valid()) return Status::FromErrno(errno, "vhost-user-blk socket");
  if (bind(s->listen_fd_.get(), reinterpret_cast<struct sockaddr*>(&addr), sizeof(addr)) != 0) {
    return Status::FromErrno(errno, "vhost-user-blk bind " + socket_path);
  }
  chmod(socket_path.c_str(), 0660);
  if (listen(s->listen_fd_.get(), 4) != 0) {
    return Status::FromErrno(errno, "vhost-user-blk listen " + socket_path);
  }
  s->stop_fd_ = UniqueFd(eventfd(0, EFD_CLOEXEC));
  if (!s->stop_fd_.valid()) return Status::FromErrno(errno, "vhost-user-blk eventfd");
  VhostUserBlkServer* raw = s.get();
  s->thread_ = std::thread([raw] { raw->Run(); });
  return s;
}

VhostUserBlkServer::~VhostUserBlkServer() {
  if (stop_fd_.valid()) {
    uint64_t one = 1;
    ssize_t n = write(stop_fd_.get(), &one, sizeof(one));
    (void)n;
  }
  if (thread_.joinable()) thread_.join();
  unlink(socket_path_.c_str());
}

std::string VhostUserBlkServer::last_error() const {
  std::lock_guard<std::mutex> lock(error_mu_);
  return last_error_;
}

void VhostUserBlkServer::Run() {
  NameThisThread("stl-vhost");
  for (;;) {
    if (!WaitReadable(listen_fd_.get(), stop_fd_.get())) return;
    UniqueFd conn(accept4(listen_fd_.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (!conn.valid()) continue;
    ++connections_;
    Status s = Serve(conn.get());
    {
      std::lock_guard<std::mutex> lock(error_mu_);
      last_error_ = s.ok() ? "" : s.ToString();
    }
    uint64_t v;
    struct pollfd p = {stop_fd_.get(), POLLIN, 0};
    if (poll(&p, 1, 0) > 0 && read(stop_fd_.get(), &v, sizeof(v)) >= 0) return;
  }
}

Status VhostUserBlkServer::Serve(int conn) {
  VhostUserBlkSession session(io_, options_);
  const int stop = stop_fd_.get();
  std::vector<uint32_t> again;  // queues that had a full batch: more may be waiting
  for (;;) {
    // stop, the connection, the session's wake fd (-1: ignored by poll), the kicks.
    constexpr size_t kFirstKick = 3;
    std::vector<struct pollfd> pfds = {
        {stop, POLLIN, 0}, {conn, POLLIN, 0}, {session.wake_fd(), POLLIN, 0}};
    std::vector<uint32_t> queue_of;
    for (uint32_t i = 0; i < session.num_queues(); ++i) {
      int k = session.kick_fd(i);
      if (k >= 0) {
        pfds.push_back({k, POLLIN, 0});
        queue_of.push_back(i);
      }
    }
    int rc = poll(pfds.data(), pfds.size(), again.empty() ? -1 : 0);
    if (rc < 0 && errno == EINTR) continue;
    if (rc < 0) return Status::FromErrno(errno, "vhost-user-blk poll");
    if (pfds[0].revents & POLLIN) {
      uint64_t one = 1;
      ssize_t n = write(stop, &one, sizeof(one));  // leave it set for Run()
      (void)n;
      return Status::Ok();
    }
    std::vector<uint32_t> to_process;
    to_process.swap(again);
    if (pfds[2].revents & POLLIN) {  // a queue that was full has room again
      uint64_t count;
      ssize_t n = read(pfds[2].fd, &count, sizeof(count));
      (void)n;
      for (uint32_t i = 0; i < session.num_queues(); ++i) to_process.push_back(i);
    }
    for (size_t j = kFirstKick; j < pfds.size(); ++j) {
      if (!(pfds[j].revents & POLLIN)) continue;
      uint64_t count;
      ssize_t n = read(pfds[j].fd, &count, sizeof(count));
      (void)n;
      to_process.push_back(queue_of[j - kFirstKick]);
    }
    std::sort(to_process.begin(), to_process.end());
    to_process.erase(std::unique(to_process.begin(), to_process.end()), to_process.end());
    for (uint32_t q : to_process) {
      auto done = session.ProcessQueue(q);  // a corrupt ring stops only that queue
      if (done.ok() && *done > 0 && *done == session.queue_size(q)) again.push_back(q);
    }
    if (!pfds[1].revents) continue;

    // One message: the header comes with any fds in the ancillary data.
    uint8_t header[kVhostUserHeaderSize];
    char cbuf[CMSG_SPACE(sizeof(int) * kVhostUserMaxFds)];
    struct iovec iov = {header, sizeof(header)};
    struct msghdr mh;
    memset(&mh, 0, sizeof(mh));
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    mh.msg_control = cbuf;
    mh.msg_controllen = sizeof(cbuf);
    ssize_t got = recvmsg(conn, &mh, MSG_CMSG_CLOEXEC);
    if (got == 0) return Status::Ok();  // the front-end went away
    if (got < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      return Status::FromErrno(errno, "vhost-user-blk recvmsg");
    }
    std::vector<UniqueFd> fds;
    for (struct cmsghdr* c = CMSG_FIRSTHDR(&mh); c != nullptr; c = CMSG_NXTHDR(&mh, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
      size_t nfd = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (size_t i = 0; i < nfd; ++i) {
        int fd;
        memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
        fds.emplace_back(fd);
      }
    }
    if (mh.msg_flags & MSG_CTRUNC) {
      return Status::InvalidArgument("vhost-user-blk: more than 8 fds in one message");
    }
    if (static_cast<size_t>(got) < sizeof(header) &&
        ReadFull(conn, stop, header + got, sizeof(header) - got, false) != 1) {
      return Status::InvalidArgument("vhost-user-blk: connection ended inside a header");
    }
    VhostUserMessage msg;
    RETURN_IF_ERROR(ParseVhostUserHeader(header, sizeof(header), &msg.header));
    msg.payload.resize(msg.header.size);
    if (msg.header.size > 0 &&
        ReadFull(conn, stop, msg.payload.data(), msg.header.size, false) != 1) {
      return Status::InvalidArgument("vhost-user-blk: connection ended inside a payload");
    }
    std::vector<uint8_t> reply;
    RETURN_IF_ERROR(session.HandleMessage(msg, std::move(fds), &reply));
    size_t sent = 0;
    while (sent < reply.size()) {
      ssize_t n = send(conn, reply.data() + sent, reply.size() - sent, MSG_NOSIGNAL);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return Status::FromErrno(errno, "vhost-user-blk send");
      sent += static_cast<size_t>(n);
    }
  }
}

}  // namespace stellarium::node
