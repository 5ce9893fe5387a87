// VhostUserBlkServer: a vhost-user-blk back-end serving one BlockIo on a unix socket,
// so a VMM (QEMU, Cloud Hypervisor, Firecracker) gives its guest a virtio-blk disk that
// reads and writes the volume directly, with no kernel block device on the host.
//
// Written from QEMU's docs/interop/vhost-user.rst and the virtio 1.2 block device
// section. Supported: VIRTIO_F_VERSION_1, VHOST_USER_F_PROTOCOL_FEATURES,
// VIRTIO_RING_F_INDIRECT_DESC, VIRTIO_BLK_F_SIZE_MAX/SEG_MAX/BLK_SIZE/FLUSH/MQ and
// VIRTIO_BLK_F_RO for read-only volumes; protocol features MQ, REPLY_ACK and CONFIG;
// split virtqueues without event index; requests IN, OUT, FLUSH and GET_ID.
//
// The VMM and its guest are untrusted: VhostUserBlkSession validates every message
// (vhost_user_protocol.h) and every ring access (virtio_blk.h). A protocol error closes
// the connection; a bad request gets an error status. Either way the server keeps
// listening: a restarted VMM simply connects again.
//
// Known limit: guest memory is mapped from the VMM's memfd without seals, so a VMM
// that shrinks its own memfd afterwards could make this process fault (SIGBUS). The
// region sizes are checked against the fd's size when mapped.
//
// How requests are read (see docs/EXPOSURE.md, "vhost-user-blk"): the thread serving
// a connection takes requests off the rings and hands reads and writes to a few I/O
// threads (VhostUserBlkOptions::io_threads), so the several requests a guest makes of
// one large read are read from the store at once and complete in any order. Reads go
// through a ReadAheadBlockIo: a guest reading in sequence finds the next range already
// read and verified by helper threads (bounded by readahead_bytes per connection).
//
// Thread-safety: the server runs one thread that serves one connection at a time
// (messages, taking requests off the rings); requests run on the session's I/O
// threads. Start/Stop from any one thread.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "core/block_io.h"
#include "core/status.h"
#include "csi/node/read_ahead.h"
#include "csi/node/vhost_user/vhost_user_protocol.h"
#include "csi/node/vhost_user/virtio_blk.h"

namespace stellarium::node {

// An owned file descriptor.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  ~UniqueFd() { Reset(); }
  UniqueFd(UniqueFd&& o) noexcept : fd_(o.Release()) {}
  UniqueFd& operator=(UniqueFd&& o) noexcept {
    if (this != &o) {
      Reset();
      fd_ = o.Release();
    }
    return *this;
  }
  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  int Release() {
    int fd = fd_;
    fd_ = -1;
    return fd;
  }
  void Reset();

 private:
  int fd_ = -1;
};

struct VhostUserBlkOptions {
  uint32_t num_queues = 4;  // the most a front-end may use (GET_QUEUE_NUM)
  bool read_only = false;   // also forced on when the BlockIo is read-only
  std::string serial{};     // GET_ID answer (at most 20 bytes used)
  // Threads executing a connection's reads and writes (shared by its queues): up to
  // this many requests are read or written at once, and complete in any order. 0
  // executes every request in the thread that took it off the ring, one at a time.
  uint32_t io_threads = 2;
  // Sequential read-ahead per connection (ReadAheadBlockIo): the most bytes held; 0
  // turns it off.
  uint64_t readahead_bytes = 8 << 20;
};

// The state of one front-end connection. Pure protocol logic plus the mappings and
// eventfds the messages hand over; no socket I/O (the server or a fuzzer feeds it).
class VhostUserBlkSession {
 public:
  VhostUserBlkSession(std::shared_ptr<BlockIo> io, const VhostUserBlkOptions& options);
  ~VhostUserBlkSession();
  VhostUserBlkSession(const VhostUserBlkSession&) = delete;
  VhostUserBlkSession& operator=(const VhostUserBlkSession&) = delete;

  // Handles one message. `fds` are the descriptors that came with it (taken over).
  // Appends any reply bytes to *reply. A non-OK status means: close the connection.
  // Waits first for every request in flight (a message may remap memory or move rings).
  Status HandleMessage(const VhostUserMessage& msg, std::vector<UniqueFd> fds,
                       std::vector<uint8_t>* reply);
  // Processes queue `index` after its kick fd fired (or when it becomes enabled):
  // takes its available requests, at most queue-size of them in flight per queue, and
  // executes them (on the I/O threads if any; each completion signals the call fd).
  // Returns the number of requests taken off the ring; when that is the queue size the
  // caller should call again.
  Result<uint32_t> ProcessQueue(uint32_t index);
  // Waits until no request is in flight.
  void Drain();

  // For the server's poll loop: the kick fd of each started queue (-1 if none), and an
  // eventfd that fires when a queue that had its queue size in flight has room again
  // (-1 without I/O threads); call ProcessQueue for every queue then.
  int kick_fd(uint32_t index) const;
  int wake_fd() const { return wake_.get(); }
  uint32_t num_queues() const { return static_cast<uint32_t>(queues_.size()); }
  // The configured size of a started queue (0 if not started).
  uint32_t queue_size(uint32_t index) const;
  uint64_t features() const { return acked_features_; }
  // The features this back-end offers (GET_FEATURES).
  uint64_t offered_features() const;
  uint64_t offered_protocol_features() const;
  // The virtio_blk_config bytes served by GET_CONFIG.
  std::vector<uint8_t> ConfigSpace() const;

 private:
  struct Mapping {
    void* addr = nullptr;
    size_t len = 0;
  };
  struct Queue {
    uint32_t size = 0;
    std::optional<VringAddresses> addrs;
    SplitQueue ring;
    UniqueFd kick, call, err;
    bool enabled = false;
    uint32_t in_flight = 0;  // GUARDED_BY(exec_mu_); taken, not yet on the used ring
    bool throttled = false;  // GUARDED_BY(exec_mu_); stopped taking at `size` in flight
  };
  struct Task {
    uint32_t queue = 0;
    PoppedRequest request;
  };

  // What handling a message gives back: a reply payload of its own, else the status
  // REPLY_ACK reports when the front-end asked for one.
  struct MessageReply {
    std::optional<std::vector<uint8_t>> payload;
    Status ack = Status::Ok();
  };
  // HandleMessage's parts, one per group of messages; a non-OK status closes the
  // connection. Features and ownership; GET_QUEUE_NUM.
  Status HandleOwnerMessage(const VhostUserMessage& msg, MessageReply* out);
  // SET_VRING_NUM/ADDR/BASE/ENABLE, GET_VRING_BASE.
  Status HandleVringMessage(const VhostUserMessage& msg, MessageReply* out);
  // SET_VRING_KICK/CALL/ERR: the eventfd that came with the message (or none).
  Status SetVringFd(const VhostUserMessage& msg, std::vector<UniqueFd>& fds);
  // GET_CONFIG, SET_CONFIG.
  Status HandleConfigMessage(const VhostUserMessage& msg, MessageReply* out);
  Status SetMemTable(const VhostUserMessage& msg, std::vector<UniqueFd>& fds);
  void UnmapAll();
  Status StartQueueIfReady(uint32_t index);
  void StopQueue(uint32_t index);
  // Puts a finished request on its used ring and signals the queue's call fd.
  void Complete(uint32_t queue, uint16_t head, uint32_t used_len);
  void Signal(uint32_t queue);
  void Worker();
  // What requests read and write: the read-ahead layer if any, else io_.
  BlockIo& target();

  std::shared_ptr<BlockIo> io_;
  std::shared_ptr<ReadAheadBlockIo> readahead_;  // wraps io_ for reads when enabled
  VhostUserBlkOptions options_;
  BlkDeviceInfo info_;
  uint64_t acked_features_ = 0;
  uint64_t acked_protocol_features_ = 0;
  bool owner_set_ = false;
  GuestMemory memory_;
  std::vector<Mapping> mappings_;
  std::vector<Queue> queues_;

  // Requests run on workers_ while the connection's thread keeps taking new ones.
  // Messages are handled only with nothing in flight (Drain), so a worker may use the
  // memory, rings and call fds of its queue without further locking; used rings are
  // written under exec_mu_.
  std::mutex exec_mu_;
  std::condition_variable work_;  // tasks_ has work, or stopping
  std::condition_variable idle_;  // in_flight_ dropped to 0
  std::deque<Task> tasks_;        // GUARDED_BY(exec_mu_)
  uint32_t in_flight_ = 0;        // GUARDED_BY(exec_mu_); over all queues
  bool stopping_ = false;         // GUARDED_BY(exec_mu_)
  std::vector<std::thread> workers_;
  UniqueFd wake_;
};

class VhostUserBlkServer {
 public:
  // Listens on `socket_path` (a stale socket file there is replaced; any other file is
  // an error) and serves `io` to one front-end at a time until destroyed.
  static Result<std::unique_ptr<VhostUserBlkServer>> Start(const std::string& socket_path,
                                                           std::shared_ptr<BlockIo> io,
                                                           const VhostUserBlkOptions& options);
  // Closes the connection, stops the thread and removes the socket file.
  ~VhostUserBlkServer();
  VhostUserBlkServer(const VhostUserBlkServer&) = delete;
  VhostUserBlkServer& operator=(const VhostUserBlkServer&) = delete;

  const std::string& socket_path() const { return socket_path_; }
  // Connections accepted so far (a restarted VMM adds one).
  uint64_t connections() const { return connections_.load(); }
  // Why the last connection was closed by us, "" if it ended normally (for logs/tests).
  std::string last_error() const;

 private:
  VhostUserBlkServer() = default;
  void Run();
  // Serves one connection until it ends or Stop. Returns the protocol error if any.
  Status Serve(int conn);

  std::string socket_path_;
  std::shared_ptr<BlockIo> io_;
  VhostUserBlkOptions options_;
  UniqueFd listen_fd_;
  UniqueFd stop_fd_;  // eventfd: written to stop the thread
  std::thread thread_;
  std::atomic<uint64_t> connections_{0};
  mutable std::mutex error_mu_;
  std::string last_error_;  // GUARDED_BY(error_mu_)
};

}  // namespace stellarium::node
