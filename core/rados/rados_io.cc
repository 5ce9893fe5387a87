#include "core/rados/rados_io.h"

#include <cerrno>
#include <cstring>

namespace stellarium {
namespace {

constexpr uint64_t kOmapPage = 1024;  // the most an OSD returns per call

std::string Str(const librados::bufferlist& bl) { return bl.to_str(); }

}  // namespace

Status FromRados(int rc, const std::string& what) {
  if (rc >= 0) return Status::Ok();
  const std::string msg = what + ": " + std::strerror(-rc) + " (" + std::to_string(rc) + ")";
  switch (-rc) {
    case ECANCELED:
      return Status::Aborted(what + ": changed concurrently; retry");
    case ENOENT:
      return Status::NotFound(msg);
    case EEXIST:
      return Status::AlreadyExists(msg);
    case ESHUTDOWN:
      return Status::FailedPrecondition(what + ": this client was blocklisted by the cluster "
                                               "(fenced by another node); restart it");
    case EIO:
      return Status::Corruption(msg);
    case EINVAL:
    case ERANGE:
    case EMSGSIZE:
      return Status::InvalidArgument(msg);
    case EPERM:
    case EACCES:
      return Status::PermissionDenied(msg);
    case ENOSPC:
    case EDQUOT:
      return Status::ResourceExhausted(msg);
    default:
      return Status::Unavailable(msg);
  }
}

Result<std::unique_ptr<RadosIo>> RadosIo::Connect(const RadosConnectOptions& o) {
  const std::string what = "rados://" + o.pool + " (ceph.conf " + o.conf + ", client." + o.id + ")";
  if (o.pool.empty()) return Status::InvalidArgument(what + ": no pool named");
  std::unique_ptr<RadosIo> r(new RadosIo());
  r->pool_ = o.pool;
  r->rados_ = std::make_unique<librados::Rados>();
  RETURN_IF_ERROR(FromRados(r->rados_->init(o.id.c_str()), what + ": init"));
  RETURN_IF_ERROR(FromRados(r->rados_->conf_read_file(o.conf.c_str()), what + ": read ceph.conf"));
  // Fail fast when the monitors cannot be reached, rather than librados's 5 minutes.
  (void)r->rados_->conf_set("client_mount_timeout", "30");
  (void)r->rados_->conf_set("rados_osd_op_timeout", "60");
  RETURN_IF_ERROR(FromRados(r->rados_->connect(), what + ": connect"));
  RETURN_IF_ERROR(FromRados(r->rados_->ioctx_create(o.pool.c_str(), r->io_), what + ": open pool"));
  r->io_.set_namespace(o.ns);
  return r;
}

RadosIo::~RadosIo() {
  io_.close();
  if (rados_) rados_->shutdown();
}

std::string RadosIo::address() { return rados_->get_addrs(); }

uint64_t RadosIo::instance_id() { return rados_->get_instance_id(); }

Status RadosIo::Operate(const std::string& oid, librados::ObjectWriteOperation* op,
                        const std::string& what) {
  return FromRados(io_.operate(oid, op), what);
}

Result<std::map<std::string, std::string>> RadosIo::OmapGet(const std::string& oid,
                                                            const std::set<std::string>& keys,
                                                            const std::string& what) {
  std::map<std::string, librados::bufferlist> vals;
  const int rc = io_.omap_get_vals_by_keys(oid, keys, &vals);
  std::map<std::string, std::string> out;
  if (rc == -ENOENT) return out;
  RETURN_IF_ERROR(FromRados(rc, what));
  for (auto& [k, v] : vals) out.emplace(k, Str(v));
  return out;
}

Result<std::map<std::string, std::map<std::string, std::string>>> RadosIo::OmapGetMany(
    const std::map<std::string, std::set<std::string>>& keys, const std::string& what) {
  struct Read {
    librados::ObjectReadOperation op;
    std::map<std::string, librados::bufferlist> vals;
    int rval = 0;
    librados::AioCompletion* completion = nullptr;
  };
  std::vector<std::unique_ptr<Read>> reads;
  for (const auto& [oid, ks] : keys) {
    auto r = std::make_unique<Read>();
    r->op.omap_get_vals_by_keys(ks, &r->vals, &r->rval);
    r->completion = librados::Rados::aio_create_completion();
    const int rc = io_.aio_operate(oid, r->completion, &r->op, nullptr);
    if (rc < 0) {  // not started: nothing to wait for
      r->completion->release();
      r->completion = nullptr;
      r->rval = rc;
    }
    reads.push_back(std::move(r));
  }
  std::map<std::string, std::map<std::string, std::string>> out;
  Status first;
  auto it = keys.begin();
  for (auto& r : reads) {
    int rc = r->rval;
    if (r->completion != nullptr) {
      r->completion->wait_for_complete();
      rc = r->completion->get_return_value();
      r->completion->release();
      if (rc >= 0) rc = r->rval;
    }
    if (rc == -ENOENT) rc = 0;  // a shard not written yet: no entries
    if (first.ok() && rc < 0) first = FromRados(rc, what + ": " + it->first);
    auto& vals = out[it->first];
    for (auto& [k, v] : r->vals) vals.emplace(k, Str(v));
    ++it;
  }
  RETURN_IF_ERROR(first);
  return out;
}

Status RadosIo::OmapScan(const std::string& oid, const std::string& start_after,
                         const std::string& prefix,
                         const std::function<Result<bool>(const std::string&, const std::string&)>& fn,
                         const std::string& what) {
  std::string after = start_after;
  for (bool more = true; more;) {
    std::map<std::string, librados::bufferlist> page;
    const int rc = io_.omap_get_vals2(oid, after, prefix, kOmapPage, &page, &more);
    if (rc == -ENOENT) return Status::Ok();
    RETURN_IF_ERROR(FromRados(rc, what));
    for (auto& [k, v] : page) {
      ASSIGN_OR_RETURN(bool go, fn(k, Str(v)));
      if (!go) return Status::Ok();
      after = k;
    }
    if (page.empty()) break;
  }
  return Status::Ok();
}

std::string RadosIo::StoreIdentity() {
  std::string fsid;
  (void)rados_->cluster_fsid(&fsid);
  static const char kHex[] = "0123456789abcdef";
  std::string ns_hex;
  for (unsigned char c : io_.get_namespace()) {
    ns_hex += kHex[c >> 4];
    ns_hex += kHex[c & 15];
  }
  return fsid + "." + std::to_string(io_.get_id()) + (ns_hex.empty() ? "" : "." + ns_hex);
}

Result<std::string> RadosIo::Read(const std::string& oid, uint64_t off, uint64_t len,
                                  const std::string& what) {
  librados::bufferlist bl;
  const int rc = io_.read(oid, bl, len, off);
  RETURN_IF_ERROR(FromRados(rc, what));
  return Str(bl);
}

Result<std::string> RadosIo::GetXattr(const std::string& oid, const char* name,
                                      const std::string& what) {
  librados::bufferlist bl;
  RETURN_IF_ERROR(FromRados(io_.getxattr(oid, name, bl), what));
  return Str(bl);
}

Status RadosIo::Remove(const std::string& oid, const std::string& what) {
  const int rc = io_.remove(oid);
  return rc == -ENOENT ? Status::Ok() : FromRados(rc, what);
}

Status RadosIo::List(const std::string& prefix, const std::function<Status(const std::string&)>& fn) {
  try {
    for (auto it = io_.nobjects_begin(); it != io_.nobjects_end(); ++it) {
      const std::string& oid = it->get_oid();
      if (oid.compare(0, prefix.size(), prefix) == 0) RETURN_IF_ERROR(fn(oid));
    }
  } catch (const std::exception& e) {
    return Status::Unavailable("list objects of pool " + pool_ + ": " + e.what());
  }
  return Status::Ok();
}

Result<std::string> RadosIo::MonCommand(const std::string& json, const std::string& what) {
  librados::bufferlist in, out;
  std::string status;
  const int rc = rados_->mon_command(json, in, &out, &status);
  if (rc < 0) return FromRados(rc, what + (status.empty() ? "" : " (" + status + ")"));
  return Str(out);
}

AioBatch::~AioBatch() { (void)Wait(); }

void AioBatch::Write(const std::string& oid, std::unique_ptr<librados::ObjectWriteOperation> op,
                     std::string what) {
  librados::AioCompletion* c = librados::Rados::aio_create_completion();
  const int rc = io_->io().aio_operate(oid, c, op.get());
  if (rc < 0) {
    // Could not even start: its error is the op's result.
    c->release();
    c = nullptr;
    what += " (not started)";
  }
  pending_.push_back({c, std::move(op), std::move(what), rc});
}

Status AioBatch::Wait() {
  Status first;
  for (Pending& p : pending_) {
    int rc = p.start_rc;
    if (p.completion != nullptr) {
      p.completion->wait_for_complete();
      rc = p.completion->get_return_value();
      p.completion->release();
    }
    Status st = FromRados(rc, p.what);
    if (first.ok() && !st.ok()) first = st;
  }
  pending_.clear();
  return first;
}

}  // namespace stellarium
