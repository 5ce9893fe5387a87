// Options: everything stellarium-csi can be told, as one plain struct.
//
// Sources, later ones winning: the defaults below, the YAML file named by --config
// (keys are the flag names with '-' -> '_', e.g. node_id, state_dir, import_root), then
// the command-line flags. Validate() checks and normalizes the result before the
// server starts; every failure message names the key and what is wrong with it.
//
// Thread-safety: a value type.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"

namespace stellarium::csi {

inline constexpr char kDefaultEndpoint[] =
    "unix:///var/lib/kubelet/plugins/csi.stellarium.io/csi.sock";
inline constexpr char kDefaultStore[] = "/var/lib/stellarium/store";
inline constexpr char kDefaultStateDir[] = "/var/lib/stellarium/state";
inline constexpr char kDefaultDriverName[] = "csi.stellarium.io";
inline constexpr char kDefaultKubeletDir[] = "/var/lib/kubelet";
inline constexpr char kTopologyKey[] = "topology.stellarium.io/node";
inline constexpr char kDefaultKataDirectVolumeDir[] = "/run/kata-containers/shared/direct-volumes";

struct Options {
  std::string config;  // the YAML file these came from ("" = none); not a YAML key

  // gRPC endpoint, "unix:///absolute/path.sock". The socket is created mode 0600.
  std::string endpoint = kDefaultEndpoint;
  // This node's id in NodeGetInfo and the topology segment value. Default: hostname.
  std::string node_id;
  // The store directory (core's Store; opened by one process at a time), or
  // "rados://POOL" for the store on a Ceph pool every node shares.
  std::string store = kDefaultStore;
  // rados:// stores: the cluster's ceph.conf, the cephx user, the node-local cache of
  // chunks read from the cluster ("" = none) and its bound in MiB.
  std::string ceph_conf = "/etc/ceph/ceph.conf";
  std::string ceph_id = "admin";
  std::string cache;
  uint64_t cache_mib = 4096;
  // Node-side files: the FUSE mount, sockets and staging bookkeeping.
  std::string state_dir = kDefaultStateDir;
  // The CSI driver name (GetPluginInfo), domain notation, at most 63 characters.
  std::string driver_name = kDefaultDriverName;
  // Staging and target paths must lie under this directory.
  std::string kubelet_dir = kDefaultKubeletDir;
  // Image files and trees named by StorageClass parameters must lie under one of these.
  // Empty: creating volumes from images is refused.
  std::vector<std::string> import_root;
  // NodeGetInfo's max_volumes_per_node; 0 = no limit.
  int64_t max_volumes_per_node = 0;
  std::string log_level = "info";   // trace|debug|info|warn|error
  std::string log_format = "text";  // text|json
  // Prometheus exposition address "host:port" (e.g. ":9810"); "" = off.
  std::string metrics_address;
  // Advertise the controller's EXPAND_VOLUME capability. A distributed deployment turns
  // it off: the one elected csi-resizer can reach only its own node's driver, so it
  // must not call ControllerExpandVolume; without the capability it records the new
  // size and kubelet calls NodeExpandVolume on the volume's node, which grows the
  // volume in the local store, then its device and file system.
  bool controller_expansion = true;
  // StoreOptions::mmap_reads: read the store's table files through mmap (faster reads;
  // a disk read error under a mapped page ends the process with SIGBUS instead of
  // failing that one read).
  bool store_mmap_reads = true;
  // StoreOptions::disk_readahead_bytes, in MiB: how far ahead of a sequential reader the
  // store asks the kernel to read chunk bytes from disk; 0 = the kernel's own only.
  uint64_t store_disk_readahead_mib = 64;
  // Read-ahead for sequential readers in the node's user-space exposures, in MiB: the
  // most held per FUSE-served volume and per vhost-user-blk connection, each read by 3
  // helper threads of its own (started at the first read-ahead); 0 = off.
  uint64_t exposure_readahead_mib = 8;
  // Background garbage collection (core/collector.h): every gc_interval_seconds the
  // driver looks whether deletes or overwrites freed anything and, if so, reclaims it in
  // a pass that works gc_duty of its time. 0 = no background collection (`stellarium
  // gc` still works through the store's admin socket).
  uint64_t gc_interval_seconds = 20;
  double gc_duty = 0.25;
  // Images from URLs (csi/node/image_importer.h): the largest image a download may bring,
  // in bytes (the YAML key and the flag also take "10G", "512M"); 0 = no limit. And how
  // many imports may run at once on this node; a CreateVolume that would start one more
  // gets ABORTED and is retried by the sidecar.
  uint64_t max_image_size = 0;
  int max_concurrent_imports = 2;
  // Where NodePublishVolume writes Kata direct-volume descriptors for volumes with the
  // vhost-user-blk exposure (<dir>/<base64url(target path)>/mountInfo.json). Kata reads
  // the default; tests point it elsewhere.
  std::string kata_direct_volume_dir = kDefaultKataDirectVolumeDir;
  // How a staged volume becomes a kernel block device (docs/EXPOSURE.md). One value:
  //   fuse  the volume is a file in the driver's FUSE mount (<state_dir>/fuse) with a
  //         loop device on it: lazy, staging costs the same for any size, every write
  //         reaches the store; with stellarium-fd-holder on <state_dir>/fd-holder.sock
  //         staged volumes survive a restart of the driver.
  // "loop" (the volume exported to a raw file under <state_dir>/devices) was removed;
  // Validate() refuses it with a message saying what to use instead.
  std::string block_device = "fuse";
};

// The fd holder's socket for a state directory: <state_dir>/fd-holder.sock.
std::string FdHolderSocket(const Options& options);

// What the command line asked for.
struct CommandLine {
  Options options;
  bool exit = false;    // --help, --version, --dump-config or an error: do not start
  int exit_code = 0;    // 0 for --help/--version/--dump-config, 2 for errors
  std::string output;   // what to print (stdout when exit_code is 0, else stderr)
};

// Parses flags, loads --config, applies flag overrides and validates.
CommandLine ParseCommandLine(int argc, const char* const* argv);

// Merges a YAML document into *options. INVALID_ARGUMENT names an unknown key or a
// value of the wrong type.
Status LoadYaml(const std::string& yaml_text, const std::string& origin, Options* options);
// The effective configuration as YAML, every key present (what --dump-config prints).
std::string DumpYaml(const Options& options);
// Checks every field; fills node_id from the hostname and makes paths absolute.
Status Validate(Options* options);
// The socket path of a "unix://" endpoint.
std::string EndpointPath(const std::string& endpoint);

}  // namespace stellarium::csi
