#include "csi/server.h"

#include <errno.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>

#include "csi/controller_service.h"
#include "csi/identity_service.h"
#include "csi/metrics.h"
#include "csi/node/block_device/fuse_loop_provider.h"
#include "csi/node_service.h"
#include "csi/run_rpc.h"
#include "csi/volume_spec.h"

namespace stellarium::csi {
namespace {

// True when something accepts connections on the unix socket at `path`.
bool SocketIsServed(const std::string& path) {
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  bool served = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  ::close(fd);
  return served;
}

// Makes `path` free for a new socket: a stale socket of a dead driver is removed; a
// live one, or anything that is not a socket, is refused.
Status PrepareSocketPath(const std::string& path) {
  std::error_code ec;
  std::filesystem::create_directories(std::filesystem::path(path).parent_path(), ec);
  if (ec) return Status::Internal("create the socket's directory for " + path + ": " + ec.message());
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return Status::Ok();
    return Status::FromErrno(errno, "stat " + path);
  }
  if (!S_ISSOCK(st.st_mode)) {
    return Status::FailedPrecondition("endpoint " + path + " exists and is not a socket: remove it");
  }
  if (SocketIsServed(path)) {
    return Status::FailedPrecondition("endpoint " + path +
                                      " is served by another process (another stellarium-csi?)");
  }
  if (::unlink(path.c_str()) != 0) return Status::FromErrno(errno, "remove stale socket " + path);
  return Status::Ok();
}

}  // namespace

namespace {

// The store's admin socket, and the background collector: a log line per pass that
// reclaimed something (or failed), the totals in the metrics.
Status StartHousekeeping(Driver* d) {
  // A rados:// store is shared: the CLI opens it directly; only a local one needs a socket.
  if (d->options.store.rfind("rados://", 0) != 0) {
    ASSIGN_OR_RETURN(d->admin, AdminServer::Start(d->store.get()));
  }
  if (d->options.gc_interval_seconds == 0) return Status::Ok();
  CollectorOptions co;
  co.interval = std::chrono::seconds(d->options.gc_interval_seconds);
  co.duty = d->options.gc_duty;
  co.on_pass = [](const Result<GcReport>& r) {
    if (!r.ok()) {
      spdlog::warn("gc: {}", r.status().ToString());
      return;
    }
    const int64_t reclaimed = static_cast<int64_t>(r->disk_bytes_before) -
                              static_cast<int64_t>(r->disk_bytes_after);
    spdlog::log(r->layers_reclaimed + r->chunks_deleted > 0 ? spdlog::level::info : spdlog::level::debug,
                "gc: {} pass: {} layers, {} map entries, {} chunks; store {} -> {} bytes on disk "
                "({:+} reclaimed) in {:.2f} s{}",
                r->full ? "full" : "incremental", r->layers_reclaimed, r->map_entries_dropped,
                r->chunks_deleted, r->disk_bytes_before, r->disk_bytes_after, reclaimed,
                r->seconds, r->stopped ? " (stopped)" : "");
  };
  d->collector = std::make_unique<Collector>(d->store.get(), std::move(co));
  return Status::Ok();
}

}  // namespace

Result<std::unique_ptr<Server>> Server::Start(const Options& options) {
  std::unique_ptr<Server> server(new Server());
  server->driver_ = std::make_unique<Driver>();
  Driver& d = *server->driver_;
  d.options = options;

  StoreOptions store_options;
  store_options.path = options.store;
  store_options.mmap_reads = options.store_mmap_reads;
  store_options.disk_readahead_bytes = options.store_disk_readahead_mib << 20;
  store_options.ceph_conf = options.ceph_conf;
  store_options.ceph_id = options.ceph_id;
  store_options.cache_dir = options.cache;
  store_options.cache_bytes = options.cache_mib << 20;
  const auto open_start = std::chrono::steady_clock::now();
  Result<std::unique_ptr<Store>> store = Store::Open(store_options);
  if (!store.ok()) {
    if (store.status().code() == StatusCode::kFailedPrecondition) {
      return Status::FailedPrecondition("store " + options.store +
                                        " is held by another process (is another stellarium-csi "
                                        "or stellarium command running?): " +
                                        store.status().message());
    }
    return store.status().Annotate("open store " + options.store);
  }
  d.store = std::move(store).value();
  // Until the block device provider below resumes the FUSE connection, I/O on staged
  // volumes waits: this is part of that wait after a restart (docs/troubleshooting.md).
  spdlog::info("opened store {} in {} ms", options.store,
               std::chrono::duration_cast<std::chrono::milliseconds>(
                   std::chrono::steady_clock::now() - open_start)
                   .count());

  d.node_state = std::make_unique<node::NodeState>(options.state_dir + "/staged");
  RETURN_IF_ERROR(d.node_state->Load().Annotate("load node state"));
  node::FuseLoopProviderOptions fuse_options;
  fuse_options.state_dir = options.state_dir;
  fuse_options.fd_holder_socket = FdHolderSocket(options);
  fuse_options.readahead_bytes = options.exposure_readahead_mib << 20;
  ASSIGN_OR_RETURN(d.devices,
                   node::FuseLoopBlockDeviceProvider::Create(d.store.get(), fuse_options));
  ASSIGN_OR_RETURN(auto attached, d.devices->Recover());
  for (const auto& staged : d.node_state->List()) {
    // A vhost-user-blk volume has no block device: NodeService serves its socket again.
    if (staged.exposure == kExposureVhostUserBlk) continue;
    bool found = false;
    for (const auto& a : attached) found = found || a.volume_id == staged.volume_id;
    if (!found) {
      spdlog::warn("volume {} is recorded as staged at {} but has no device; NodeStageVolume "
                   "will attach it again", staged.volume_id, staged.staging_path);
    }
  }

  RETURN_IF_ERROR(StartHousekeeping(&d));
  if (!options.metrics_address.empty()) {
    ASSIGN_OR_RETURN(server->metrics_, Metrics::Start(options.metrics_address, &d));
    SetRpcObserver(server->metrics_.get());
    spdlog::info("metrics on {} (port {})", options.metrics_address, server->metrics_->port());
  }

  server->socket_path_ = EndpointPath(options.endpoint);
  RETURN_IF_ERROR(PrepareSocketPath(server->socket_path_));

  server->identity_ = std::make_unique<IdentityService>(&d);
  server->node_ = std::make_unique<NodeService>(&d);
  server->controller_ = std::make_unique<ControllerService>(&d, server->node_.get());
  if (server->metrics_) server->metrics_->WatchImports(&server->controller_->importer());

  grpc::ServerBuilder builder;
  int bound_port = 0;
  builder.AddListeningPort(options.endpoint, grpc::InsecureServerCredentials(), &bound_port);
  builder.RegisterService(server->identity_.get());
  builder.RegisterService(server->controller_.get());
  builder.RegisterService(server->node_.get());
  // The socket is created by BuildAndStart: make it 0600 from birth, then say so again.
  mode_t old_umask = ::umask(0177);
  server->grpc_ = builder.BuildAndStart();
  ::umask(old_umask);
  if (!server->grpc_) {
    return Status::Unavailable("cannot listen on " + options.endpoint +
                               " (see the gRPC error above)");
  }
  if (::chmod(server->socket_path_.c_str(), 0600) != 0) {
    Status st = Status::FromErrno(errno, "chmod " + server->socket_path_);
    server->Shutdown(std::chrono::milliseconds(0));
    return st;
  }
  d.ready.store(true);
  spdlog::info("stellarium-csi {} serving {} on {} (node {}, store {}, {} block devices, {} "
               "device(s) recovered)", STELLARIUM_VERSION, options.driver_name, options.endpoint,
               options.node_id, options.store, options.block_device, attached.size());
  return server;
}

Server::~Server() { Shutdown(); }

void Server::Shutdown(std::chrono::milliseconds grace) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (shut_down_) return;
    shut_down_ = true;
  }
  if (driver_) driver_->ready.store(false);
  if (grpc_) {
    grpc_->Shutdown(std::chrono::system_clock::now() + grace);
    grpc_->Wait();
  }
  if (!socket_path_.empty()) ::unlink(socket_path_.c_str());
  if (metrics_) {
    if (GetRpcObserver() == metrics_.get()) SetRpcObserver(nullptr);
    metrics_.reset();
  }
  if (driver_) {
    driver_->admin.reset();
    driver_->collector.reset();  // stops a running pass between two batches
  }
  if (driver_ && driver_->store) {
    Status st = driver_->store->Sync();
    if (!st.ok()) spdlog::error("store sync at shutdown: {}", st.ToString());
  }
}

int Server::metrics_port() const { return metrics_ ? metrics_->port() : 0; }

void Server::Wait() {
  if (grpc_) grpc_->Wait();
}

}  // namespace stellarium::csi
