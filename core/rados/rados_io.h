// RadosIo: the one owner of librados in core. It connects to the cluster (a ceph.conf
// and a cephx user), opens the pool, and turns every librados return code into a core
// Status (FromRados, the only such conversion). The RADOS seams (rados_seams.h) speak to
// the cluster only through it.
//
// Thread-safety: all methods may be called from any thread (librados's Rados and IoCtx
// are thread-safe). An AioBatch is used by one thread.
#pragma once

#include <rados/librados.hpp>

#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "core/status.h"

namespace stellarium {

struct RadosConnectOptions {
  std::string pool;
  std::string conf = "/etc/ceph/ceph.conf";  // ceph.conf (mon addresses, keyring path)
  std::string id = "admin";                  // the cephx user, without "client."
  std::string ns;                            // RADOS namespace in the pool ("" = default)
};

// A librados return code (0 or -errno) as a Status naming `what`. -ECANCELED (a guard
// that did not hold) is ABORTED, -ENOENT NOT_FOUND, -EEXIST ALREADY_EXISTS, a blocklisted
// client (-ESHUTDOWN) FAILED_PRECONDITION, -EIO DATA_LOSS, timeouts and the like
// UNAVAILABLE.
Status FromRados(int rc, const std::string& what);

// `s` as a bufferlist of one buffer of its exact size (bufferlist::append of a short
// string takes a page-sized buffer: 4 KiB for each omap value otherwise).
inline librados::bufferlist Bl(std::string_view s) {
  librados::bufferlist bl;
  bl.push_back(ceph::buffer::copy(s.data(), static_cast<unsigned>(s.size())));
  return bl;
}

class RadosIo {
 public:
  static Result<std::unique_ptr<RadosIo>> Connect(const RadosConnectOptions& options);
  ~RadosIo();

  librados::IoCtx& io() { return io_; }
  librados::Rados& cluster() { return *rados_; }
  const std::string& pool() const { return pool_; }
  // This client's address as the monitors know it ("127.0.0.1:0/123"): what a fence
  // blocklists. And its instance id (the "client.N" of locks).
  std::string address();
  uint64_t instance_id();
  // Which store this is, as a file name: the cluster's fsid, the pool's id (a pool made
  // again under the same name is another store) and the namespace (hex).
  std::string StoreIdentity();

  Status Operate(const std::string& oid, librados::ObjectWriteOperation* op, const std::string& what);
  // The values of `keys` that exist.
  Result<std::map<std::string, std::string>> OmapGet(const std::string& oid,
                                                     const std::set<std::string>& keys,
                                                     const std::string& what);
  // OmapGet of many objects at once (the reads run in parallel): by object, the values
  // of its keys that exist.
  Result<std::map<std::string, std::map<std::string, std::string>>> OmapGetMany(
      const std::map<std::string, std::set<std::string>>& keys, const std::string& what);
  // Calls fn(key, value) for the omap entries after `start_after` with `prefix`, in key
  // order, a page (at most 1024) at a time, until fn returns false or an error. A missing
  // object has no entries.
  Status OmapScan(const std::string& oid, const std::string& start_after,
                  const std::string& prefix,
                  const std::function<Result<bool>(const std::string&, const std::string&)>& fn,
                  const std::string& what);
  // Bytes [off, off + len) of an object; short at its end.
  Result<std::string> Read(const std::string& oid, uint64_t off, uint64_t len, const std::string& what);
  Result<std::string> GetXattr(const std::string& oid, const char* name, const std::string& what);
  // OK when the object does not exist.
  Status Remove(const std::string& oid, const std::string& what);
  // Calls fn(name) for every object of the pool (in this namespace) whose name starts
  // with `prefix`.
  Status List(const std::string& prefix, const std::function<Status(const std::string&)>& fn);
  // A monitor command (JSON); returns its output buffer.
  Result<std::string> MonCommand(const std::string& json, const std::string& what);

 private:
  RadosIo() = default;
  std::unique_ptr<librados::Rados> rados_;
  librados::IoCtx io_;
  std::string pool_;
};

// Write operations started together and waited for together (each on its own object):
// the cluster works on them in parallel.
class AioBatch {
 public:
  explicit AioBatch(RadosIo* io) : io_(io) {}
  ~AioBatch();
  // Starts op on oid; the op is owned by the batch until Wait.
  void Write(const std::string& oid, std::unique_ptr<librados::ObjectWriteOperation> op,
             std::string what);
  size_t size() const { return pending_.size(); }
  // Waits for every started op; the first failure, by the order they were started.
  Status Wait();

 private:
  struct Pending {
    librados::AioCompletion* completion;
    std::unique_ptr<librados::ObjectWriteOperation> op;
    std::string what;
    int start_rc = 0;  // aio_operate's result: negative when the op never started
  };
  RadosIo* io_;
  std::vector<Pending> pending_;
};

}  // namespace stellarium
