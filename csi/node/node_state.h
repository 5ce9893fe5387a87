// NodeState: what this node has staged and published, persisted in the state directory
// (<state-dir>/staged/<volume id>.yaml, one file per staged volume, replaced atomically)
// so a restarted driver answers NodeStage/NodePublish/NodeUnstage idempotently and
// knows which mounts and devices are its own.
//
// The files are the driver's own bookkeeping, not an interface: their keys may change
// between versions (a missing key reads as its default).
//
// Thread-safety: all methods are safe from any thread. The caller serializes changes
// to one volume (the node service holds the volume's lock).
#pragma once

#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "core/status.h"

namespace stellarium::node {

struct PublishedTarget {
  bool read_only = false;
  std::vector<std::string> mount_flags;
  // The driver made the target (the directory or file) when it published, so unpublish
  // removes it; a target that was there before (the kubelet's) stays. Records of older
  // versions read false: their targets are left for the kubelet to remove.
  bool created = false;
  bool operator==(const PublishedTarget&) const = default;
};

struct StagedVolume {
  std::string volume_id;
  std::string staging_path;  // resolved
  std::string device;        // the block device behind it
  bool block = false;        // access type Block (else Mount)
  std::string fs_type;       // Mount only
  std::vector<std::string> mount_flags;
  int access_mode = 0;       // csi.v1 AccessMode.Mode value
  bool read_only = false;    // the device is attached read-only
  // How the volume is exposed (csi/node/node_exposure.h): "" or the block device provider's
  // name for a kernel block device, "vhost-user-blk" for a vhost-user-blk socket.
  std::string exposure;
  std::string socket;        // vhost-user-blk: the socket the back-end serves
  std::map<std::string, PublishedTarget> targets;  // resolved target path -> how
  bool operator==(const StagedVolume&) const = default;
};

class NodeState {
 public:
  explicit NodeState(std::string dir) : dir_(std::move(dir)) {}

  // Reads every record in the directory (creating it if missing).
  Status Load();
  std::optional<StagedVolume> Get(const std::string& volume_id) const;
  std::vector<StagedVolume> List() const;
  // Writes the record durably, then updates memory.
  Status Put(const StagedVolume& staged);
  Status Remove(const std::string& volume_id);

 private:
  std::string PathFor(const std::string& volume_id) const;
  const std::string dir_;
  mutable std::mutex mu_;
  std::map<std::string, StagedVolume> volumes_;  // GUARDED_BY(mu_)
};

}  // namespace stellarium::node
