// Driver: what the three CSI services share inside one stellarium-csi process: the
// options, the store (controller and node use the same in-process store: no copy, no
// network hop), the node's block devices and staging records, the mounter and the
// per-volume lock table. Owned by Server; the services hold a pointer.
//
// Thread-safety: every member is itself thread-safe; the pointers are set once before
// the first RPC and never change.
#pragma once

#include <atomic>
#include <memory>

#include "core/admin.h"
#include "core/collector.h"
#include "core/store.h"
#include "csi/node/block_device/block_device_provider.h"
#include "csi/node/lock_table.h"
#include "csi/node/mounter.h"
#include "csi/node/node_state.h"
#include "csi/options.h"

namespace stellarium::csi {

struct Driver {
  Options options;
  std::unique_ptr<Store> store;
  // Both use the store and go before it (declared after it).
  std::unique_ptr<Collector> collector;  // background gc; null when gc_interval_seconds is 0
  std::unique_ptr<AdminServer> admin;    // <store>/admin.sock: `stellarium gc` on a live node
  std::unique_ptr<node::BlockDeviceProvider> devices;
  std::unique_ptr<node::NodeState> node_state;
  node::Mounter mounter;
  node::LockTable locks;
  std::atomic<bool> ready{false};  // Probe: true once recovery finished

  // Lock keys. A caller needing two takes the name key first, then the volume key.
  static std::string VolumeKey(const std::string& id) { return "volume:" + id; }
  static std::string VolumeNameKey(const std::string& name) { return "volume-name:" + name; }
  static std::string SnapshotNameKey(const std::string& name) { return "snapshot-name:" + name; }
};

}  // namespace stellarium::csi
