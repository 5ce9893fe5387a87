// NodeExposures and the combination of exposures: see node_exposure.h.
#include "csi/node/node_exposure.h"

#include <spdlog/spdlog.h>

#include <algorithm>

namespace stellarium::node {
namespace {

// Several exposures run as one: forward calls in order, undo in reverse order; a
// failed Stage or Publish undoes what the earlier parts of this call did.
class CombinedExposure final : public NodeExposure {
 public:
  explicit CombinedExposure(std::vector<NodeExposure*> parts) : parts_(std::move(parts)) {}

  Status Stage(StagedVolume* staged) override {
    for (size_t i = 0; i < parts_.size(); ++i) {
      Status st = parts_[i]->Stage(staged);
      if (st.ok()) continue;
      for (size_t j = i; j-- > 0;) {
        Status undo = parts_[j]->Unstage(*staged, /*recorded=*/true);
        if (!undo.ok()) {
          spdlog::error("volume {}: undoing a failed stage: {}", staged->volume_id,
                        undo.ToString());
        }
      }
      return st;
    }
    return Status::Ok();
  }

  Status Unstage(const StagedVolume& staged, bool recorded) override {
    for (size_t i = parts_.size(); i-- > 0;) RETURN_IF_ERROR(parts_[i]->Unstage(staged, recorded));
    return Status::Ok();
  }

  Status Publish(const StagedVolume& staged, const std::string& target, const PublishedTarget& how,
                 bool recorded) override {
    for (size_t i = 0; i < parts_.size(); ++i) {
      Status st = parts_[i]->Publish(staged, target, how, recorded);
      if (st.ok()) continue;
      if (!recorded) {
        for (size_t j = i; j-- > 0;) {
          Status undo = parts_[j]->Unpublish(staged, target, /*recorded=*/true);
          if (!undo.ok()) {
            spdlog::error("volume {}: undoing a failed publish at {}: {}", staged.volume_id, target,
                          undo.ToString());
          }
        }
      }
      return st;
    }
    return Status::Ok();
  }

  Status Unpublish(const StagedVolume& staged, const std::string& target, bool recorded) override {
    for (size_t i = parts_.size(); i-- > 0;) {
      RETURN_IF_ERROR(parts_[i]->Unpublish(staged, target, recorded));
    }
    return Status::Ok();
  }

  Status Restore(const StagedVolume& staged) override {
    for (NodeExposure* p : parts_) RETURN_IF_ERROR(p->Restore(staged));
    return Status::Ok();
  }

  Status Flush(const StagedVolume& staged) override {
    for (NodeExposure* p : parts_) RETURN_IF_ERROR(p->Flush(staged));
    return Status::Ok();
  }

  Result<uint64_t> Expand(const StagedVolume& staged) override {
    uint64_t size = 0;
    for (NodeExposure* p : parts_) {
      ASSIGN_OR_RETURN(uint64_t s, p->Expand(staged));
      size = std::max(size, s);
    }
    return size;
  }

  Result<ExposureUsage> Inspect(const StagedVolume& staged, const std::string& path) override {
    ExposureUsage out;
    for (NodeExposure* p : parts_) {
      ASSIGN_OR_RETURN(ExposureUsage u, p->Inspect(staged, path));
      if (!out.filesystem && u.filesystem) out.filesystem = u.filesystem;
      out.size_bytes = std::max(out.size_bytes, u.size_bytes);
      if (!u.abnormal.empty()) out.abnormal += (out.abnormal.empty() ? "" : "; ") + u.abnormal;
    }
    return out;
  }

 private:
  std::vector<NodeExposure*> parts_;
};

}  // namespace

std::string FirecrackerDrivePath(const std::string& target) {
  return target + ".firecracker-drive.json";
}

std::string CloudHypervisorDiskPath(const std::string& target) {
  return target + ".cloud-hypervisor-disk";
}

NodeExposures::NodeExposures(std::string block_name, std::unique_ptr<NodeExposure> block,
                             std::string vhost_user_name, std::unique_ptr<NodeExposure> vhost_user,
                             std::unique_ptr<NodeExposure> descriptors)
    : block_name_(std::move(block_name)), vhost_user_name_(std::move(vhost_user_name)) {
  NodeExposure* b = block.get();
  NodeExposure* v = vhost_user.get();
  NodeExposure* d = descriptors.get();
  owned_.push_back(std::move(block));
  owned_.push_back(std::move(vhost_user));
  owned_.push_back(std::move(descriptors));
  by_name_[block_name_] = std::make_unique<CombinedExposure>(std::vector<NodeExposure*>{b});
  by_name_[vhost_user_name_] = std::make_unique<CombinedExposure>(std::vector<NodeExposure*>{v, d});
  all_ = std::make_unique<CombinedExposure>(std::vector<NodeExposure*>{b, v, d});
}

NodeExposures::~NodeExposures() = default;

std::string NodeExposures::Normalize(const std::string& exposure) const {
  return exposure.empty() ? block_name_ : exposure;
}

Result<NodeExposure*> NodeExposures::For(const std::string& exposure) {
  auto it = by_name_.find(Normalize(exposure));
  if (it == by_name_.end()) {
    return Status::FailedPrecondition("exposure '" + exposure + "' is not offered by this node (" +
                                      block_name_ + ", " + vhost_user_name_ + ")");
  }
  return it->second.get();
}

}  // namespace stellarium::node
