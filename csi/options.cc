#include "csi/options.h"

#include "core/store.h"
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <CLI/CLI.hpp>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

namespace stellarium::csi {
namespace {

namespace fs = std::filesystem;

const std::set<std::string> kLogLevels = {"trace", "debug", "info", "warn", "error"};
const std::set<std::string> kLogFormats = {"text", "json"};


// Every YAML key, in the order --dump-config prints them.
const std::vector<std::string> kKeys = {"endpoint",
                                        "node_id",
                                        "store",
                                        "state_dir",
                                        "driver_name",
                                        "kubelet_dir",
                                        "import_root",
                                        "max_volumes_per_node",
                                        "log_level",
                                        "log_format",
                                        "metrics_address",
                                        "controller_expansion",
                                        "max_image_size",
                                        "max_concurrent_imports",
                                        "kata_direct_volume_dir",
                                        "block_device",
                                        "store_mmap_reads",
                                        "store_disk_readahead_mib",
                                        "exposure_readahead_mib",
                                        "gc_interval_seconds",
                                        "gc_duty",
                                        "ceph_conf",
                                        "ceph_id",
                                        "cache",
                                        "cache_mib"};

bool IsAlnum(char c) { return std::isalnum(static_cast<unsigned char>(c)) != 0; }

// Kubernetes label value rules (the node id becomes a topology label value).
bool IsLabelValue(const std::string& s) {
  if (s.empty() || s.size() > 63 || !IsAlnum(s.front()) || !IsAlnum(s.back())) return false;
  for (char c : s) {
    if (!IsAlnum(c) && c != '-' && c != '_' && c != '.') return false;
  }
  return true;
}

bool IsDriverName(const std::string& s) {
  if (s.empty() || s.size() > 63 || !IsAlnum(s.front()) || !IsAlnum(s.back())) return false;
  for (char c : s) {
    if (!IsAlnum(c) && c != '-' && c != '.') return false;
  }
  return true;
}

std::string Absolute(const std::string& path) {
  std::error_code ec;
  fs::path abs = fs::absolute(path, ec);
  return ec ? path : abs.lexically_normal().string();
}

std::string Hostname() {
  char buf[256] = {};
  if (::gethostname(buf, sizeof(buf) - 1) != 0) return "";
  return buf;
}

// Declares every flag. Values land in *flags (and the two that are not Options
// fields in *max_image_size and *dump_config); ApplyFlags copies the given ones.
void AddFlags(CLI::App& app, Options* flags, std::string* max_image_size, bool* dump_config) {
  app.set_version_flag("--version", std::string("stellarium-csi ") + STELLARIUM_VERSION);
  app.add_option("--config", flags->config, "YAML file with any of the options below");
  app.add_option("--endpoint", flags->endpoint, "gRPC endpoint, unix:///path/csi.sock")
      ->default_str(kDefaultEndpoint);
  app.add_option("--node-id", flags->node_id, "this node's id and topology value")
      ->default_str("hostname");
  app.add_option("--store", flags->store, "store directory, or rados://POOL (a Ceph pool)")
      ->default_str(kDefaultStore);
  app.add_option("--ceph-conf", flags->ceph_conf, "rados:// stores: the cluster's ceph.conf")
      ->default_str("/etc/ceph/ceph.conf");
  app.add_option("--ceph-id", flags->ceph_id, "rados:// stores: the cephx user")->default_str("admin");
  app.add_option("--cache", flags->cache,
                 "rados:// stores: node-local cache directory for chunks read from the cluster");
  app.add_option("--cache-mib", flags->cache_mib, "rados:// stores: the cache's bound, MiB")
      ->default_str("4096");
  app.add_option("--state-dir", flags->state_dir,
                 "node-side files (FUSE mount, sockets, staging bookkeeping)")
      ->default_str(kDefaultStateDir);
  app.add_option("--driver-name", flags->driver_name, "CSI driver name")
      ->default_str(kDefaultDriverName);
  app.add_option("--kubelet-dir", flags->kubelet_dir,
                 "staging and target paths must be under this directory")
      ->default_str(kDefaultKubeletDir);
  app.add_option("--import-root", flags->import_root,
                 "directory that image paths in StorageClass parameters must be under "
                 "(repeatable)");
  app.add_option("--max-volumes-per-node", flags->max_volumes_per_node,
                 "NodeGetInfo max_volumes_per_node; 0 = no limit")
      ->default_str("0");
  app.add_option("--log-level", flags->log_level, "trace|debug|info|warn|error")
      ->default_str("info");
  app.add_option("--log-format", flags->log_format, "text|json")->default_str("text");
  app.add_option("--metrics-address", flags->metrics_address,
                 "serve Prometheus metrics on host:port (e.g. :9810); empty = off")
      ->default_str("");
  app.add_option("--controller-expansion", flags->controller_expansion,
                 "advertise ControllerExpandVolume (false in distributed deployments: "
                 "NodeExpandVolume then grows the volume)")
      ->default_str("true");
  app.add_option("--store-mmap-reads", flags->store_mmap_reads,
                 "read the store's table files through mmap (faster; a disk read error "
                 "then ends the process with SIGBUS instead of failing one read)")
      ->default_str("true");
  app.add_option("--store-disk-readahead-mib", flags->store_disk_readahead_mib,
                 "MiB of chunk bytes the store asks the kernel to read from disk ahead of a "
                 "sequential reader (0 = the kernel's own read-ahead only)")
      ->default_str("64");
  app.add_option("--exposure-readahead-mib", flags->exposure_readahead_mib,
                 "MiB read ahead of a sequential reader per FUSE-served volume and per "
                 "vhost-user-blk connection, by 3 helper threads each (0 = off)")
      ->default_str("8");
  app.add_option("--gc-interval-seconds", flags->gc_interval_seconds,
                 "seconds between the background collector's looks at the store (a pass runs "
                 "when something was freed); 0 = no background collection")
      ->default_str("20");
  app.add_option("--gc-duty", flags->gc_duty,
                 "fraction of its time a background gc pass works (it sleeps the rest, so "
                 "volumes keep their speed), 0 < duty <= 1")
      ->default_str("0.25");
  app.add_option("--kata-direct-volume-dir", flags->kata_direct_volume_dir,
                 "where Kata direct-volume descriptors (mountInfo.json) are written for "
                 "vhost-user-blk volumes")
      ->default_str(kDefaultKataDirectVolumeDir);
  app.add_option("--max-image-size", *max_image_size,
                 "largest image a URL may bring, bytes or 10G/512M; 0 = no limit")
      ->default_str("0");
  app.add_option("--max-concurrent-imports", flags->max_concurrent_imports,
                 "image imports from URLs running at once on this node")
      ->default_str("2");
  app.add_option("--block-device", flags->block_device,
                 "fuse: a file in the driver's FUSE mount behind a loop device, lazy; survives "
                 "driver restarts with stellarium-fd-holder (the only value; loop was removed)")
      ->default_str("fuse");
  app.add_flag("--dump-config", *dump_config,
               "print the effective configuration as YAML (every key) and exit");

}

// Reads the YAML file at `path` into *o.
Status LoadConfigFile(const std::string& path, Options* o) {
  std::ifstream in(path);
  if (!in) return Status::InvalidArgument("cannot read config file " + path);
  std::stringstream text;
  text << in.rdbuf();
  RETURN_IF_ERROR(LoadYaml(text.str(), path, o));
  o->config = path;
  return Status::Ok();
}

// Copies the flags given on the command line over *o (the defaults and the YAML file).
Status ApplyFlags(const CLI::App& app, const Options& flags, const std::string& max_image_size,
                  Options* o) {
  auto given = [&](const char* name) { return app.count(name) > 0; };
  if (given("--endpoint")) o->endpoint = flags.endpoint;
  if (given("--node-id")) o->node_id = flags.node_id;
  if (given("--store")) o->store = flags.store;
  if (given("--state-dir")) o->state_dir = flags.state_dir;
  if (given("--driver-name")) o->driver_name = flags.driver_name;
  if (given("--kubelet-dir")) o->kubelet_dir = flags.kubelet_dir;
  if (given("--import-root")) o->import_root = flags.import_root;
  if (given("--max-volumes-per-node")) o->max_volumes_per_node = flags.max_volumes_per_node;
  if (given("--log-level")) o->log_level = flags.log_level;
  if (given("--log-format")) o->log_format = flags.log_format;
  if (given("--metrics-address")) o->metrics_address = flags.metrics_address;
  if (given("--controller-expansion")) o->controller_expansion = flags.controller_expansion;
  if (given("--block-device")) o->block_device = flags.block_device;
  if (given("--store-mmap-reads")) o->store_mmap_reads = flags.store_mmap_reads;
  if (given("--store-disk-readahead-mib"))
    o->store_disk_readahead_mib = flags.store_disk_readahead_mib;
  if (given("--exposure-readahead-mib")) o->exposure_readahead_mib = flags.exposure_readahead_mib;
  if (given("--gc-interval-seconds")) o->gc_interval_seconds = flags.gc_interval_seconds;
  if (given("--gc-duty")) o->gc_duty = flags.gc_duty;
  if (given("--ceph-conf")) o->ceph_conf = flags.ceph_conf;
  if (given("--ceph-id")) o->ceph_id = flags.ceph_id;
  if (given("--cache")) o->cache = flags.cache;
  if (given("--cache-mib")) o->cache_mib = flags.cache_mib;
  if (given("--max-concurrent-imports")) o->max_concurrent_imports = flags.max_concurrent_imports;
  if (given("--max-image-size")) {
    Result<uint64_t> size = ParseSize(max_image_size);
    if (!size.ok()) {
      return Status::InvalidArgument("--max-image-size '" + max_image_size +
                                     "': not a size (e.g. 0, 10G)");
    }
    o->max_image_size = *size;
  }
  if (given("--kata-direct-volume-dir")) o->kata_direct_volume_dir = flags.kata_direct_volume_dir;
  return Status::Ok();
}

// What ParseCommandLine returns for a command line that must not start the driver.
CommandLine Refuse(const std::string& message) {
  CommandLine result;
  result.exit = true;
  result.exit_code = 2;
  result.output = "stellarium-csi: " + message + "\n";
  return result;
}

}  // namespace

std::string FdHolderSocket(const Options& options) {
  return options.state_dir + "/fd-holder.sock";
}

std::string EndpointPath(const std::string& endpoint) {
  const std::string scheme = "unix://";
  if (endpoint.rfind(scheme, 0) != 0) return "";
  return endpoint.substr(scheme.size());
}

Status LoadYaml(const std::string& yaml_text, const std::string& origin, Options* o) {
  YAML::Node root;
  try {
    root = YAML::Load(yaml_text);
  } catch (const YAML::Exception& e) {
    return Status::InvalidArgument("config " + origin + ": " + e.what());
  }
  if (root.IsNull()) return Status::Ok();  // an empty file changes nothing
  if (!root.IsMap()) {
    return Status::InvalidArgument("config " + origin + ": expected a mapping of keys to values");
  }
  std::string key;
  try {
    for (const auto& kv : root) {
      key = kv.first.as<std::string>();
      const YAML::Node& v = kv.second;
      if (key == "endpoint") o->endpoint = v.as<std::string>();
      else if (key == "node_id") o->node_id = v.as<std::string>();
      else if (key == "store") o->store = v.as<std::string>();
      else if (key == "state_dir") o->state_dir = v.as<std::string>();
      else if (key == "driver_name") o->driver_name = v.as<std::string>();
      else if (key == "kubelet_dir") o->kubelet_dir = v.as<std::string>();
      else if (key == "import_root") {
        if (v.IsSequence()) o->import_root = v.as<std::vector<std::string>>();
        else if (v.IsNull()) o->import_root.clear();
        else o->import_root = {v.as<std::string>()};
      } else if (key == "max_volumes_per_node") o->max_volumes_per_node = v.as<int64_t>();
      else if (key == "log_level") o->log_level = v.as<std::string>();
      else if (key == "log_format") o->log_format = v.as<std::string>();
      else if (key == "kata_direct_volume_dir") o->kata_direct_volume_dir = v.as<std::string>();
      else if (key == "metrics_address") o->metrics_address = v.IsNull() ? "" : v.as<std::string>();
      else if (key == "controller_expansion") o->controller_expansion = v.as<bool>();
      else if (key == "store_mmap_reads") o->store_mmap_reads = v.as<bool>();
      else if (key == "store_disk_readahead_mib")
        o->store_disk_readahead_mib = v.as<uint64_t>();
      else if (key == "exposure_readahead_mib")
        o->exposure_readahead_mib = v.as<uint64_t>();
      else if (key == "block_device") o->block_device = v.as<std::string>();
      else if (key == "gc_interval_seconds") o->gc_interval_seconds = v.as<uint64_t>();
      else if (key == "gc_duty") o->gc_duty = v.as<double>();
      else if (key == "ceph_conf") o->ceph_conf = v.as<std::string>();
      else if (key == "ceph_id") o->ceph_id = v.as<std::string>();
      else if (key == "cache") o->cache = v.IsNull() ? "" : v.as<std::string>();
      else if (key == "cache_mib") o->cache_mib = v.as<uint64_t>();
      else if (key == "max_image_size") {
        Result<uint64_t> size = ParseSize(v.as<std::string>());
        if (!size.ok()) {
          return Status::InvalidArgument("config " + origin + ": max_image_size '" +
                                         v.as<std::string>() + "': not a size (e.g. 0, 10G)");
        }
        o->max_image_size = *size;
      } else if (key == "max_concurrent_imports") o->max_concurrent_imports = v.as<int>();
      else {
        std::string known;
        for (const auto& k : kKeys) known += (known.empty() ? "" : ", ") + k;
        return Status::InvalidArgument("config " + origin + ": unknown key '" + key +
                                       "' (known keys: " + known + ")");
      }
    }
  } catch (const YAML::Exception& e) {
    return Status::InvalidArgument("config " + origin + ": key '" + key +
                                   "' has a value of the wrong type: " + e.what());
  }
  return Status::Ok();
}

std::string DumpYaml(const Options& o) {
  YAML::Emitter out;
  out << YAML::BeginMap;
  out << YAML::Key << "endpoint" << YAML::Value << o.endpoint;
  out << YAML::Key << "node_id" << YAML::Value << o.node_id;
  out << YAML::Key << "store" << YAML::Value << o.store;
  out << YAML::Key << "state_dir" << YAML::Value << o.state_dir;
  out << YAML::Key << "driver_name" << YAML::Value << o.driver_name;
  out << YAML::Key << "kubelet_dir" << YAML::Value << o.kubelet_dir;
  out << YAML::Key << "import_root" << YAML::Value << YAML::Flow << o.import_root;
  out << YAML::Key << "max_volumes_per_node" << YAML::Value << o.max_volumes_per_node;
  out << YAML::Key << "log_level" << YAML::Value << o.log_level;
  out << YAML::Key << "log_format" << YAML::Value << o.log_format;
  out << YAML::Key << "metrics_address" << YAML::Value << YAML::DoubleQuoted
      << o.metrics_address;
  out << YAML::Key << "controller_expansion" << YAML::Value << o.controller_expansion;
  out << YAML::Key << "max_image_size" << YAML::Value << o.max_image_size;
  out << YAML::Key << "max_concurrent_imports" << YAML::Value << o.max_concurrent_imports;
  out << YAML::Key << "kata_direct_volume_dir" << YAML::Value << o.kata_direct_volume_dir;
  out << YAML::Key << "block_device" << YAML::Value << o.block_device;
  out << YAML::Key << "store_mmap_reads" << YAML::Value << o.store_mmap_reads;
  out << YAML::Key << "store_disk_readahead_mib" << YAML::Value << o.store_disk_readahead_mib;
  out << YAML::Key << "exposure_readahead_mib" << YAML::Value << o.exposure_readahead_mib;
  out << YAML::Key << "gc_interval_seconds" << YAML::Value << o.gc_interval_seconds;
  out << YAML::Key << "gc_duty" << YAML::Value << o.gc_duty;
  out << YAML::Key << "ceph_conf" << YAML::Value << o.ceph_conf;
  out << YAML::Key << "ceph_id" << YAML::Value << o.ceph_id;
  out << YAML::Key << "cache" << YAML::Value << YAML::DoubleQuoted << o.cache;
  out << YAML::Key << "cache_mib" << YAML::Value << o.cache_mib;
  out << YAML::EndMap;
  return std::string(out.c_str()) + "\n";
}

Status Validate(Options* o) {
  const std::string path = EndpointPath(o->endpoint);
  if (path.empty() || path[0] != '/') {
    return Status::InvalidArgument("endpoint '" + o->endpoint +
                                   "': must be unix:///absolute/path.sock");
  }
  if (path.size() >= 108) {  // sizeof(sockaddr_un::sun_path)
    return Status::InvalidArgument("endpoint '" + o->endpoint +
                                   "': socket path longer than 107 bytes");
  }
  if (o->node_id.empty()) o->node_id = Hostname();
  if (!IsLabelValue(o->node_id)) {
    return Status::InvalidArgument(
        "node_id '" + o->node_id +
        "': must be 1-63 characters of [A-Za-z0-9._-], starting and ending with a letter or "
        "digit (it becomes the value of the topology label " + std::string(kTopologyKey) + ")");
  }
  if (!IsDriverName(o->driver_name)) {
    return Status::InvalidArgument("driver_name '" + o->driver_name +
                                   "': must be domain notation (e.g. csi.stellarium.io), "
                                   "1-63 characters of [A-Za-z0-9.-]");
  }
  if (o->kata_direct_volume_dir.empty() || o->kata_direct_volume_dir[0] != '/') {
    return Status::InvalidArgument("kata_direct_volume_dir '" + o->kata_direct_volume_dir +
                                   "': must be an absolute path");
  }
  for (auto* dir : {&o->store, &o->state_dir, &o->kubelet_dir}) {
    if (dir->empty()) {
      std::string name = dir == &o->store ? "store" : dir == &o->state_dir ? "state_dir" : "kubelet_dir";
      return Status::InvalidArgument(name + ": must not be empty");
    }
    if (dir == &o->store && dir->rfind("rados://", 0) == 0) continue;  // a pool, not a path
    *dir = Absolute(*dir);
  }
  for (auto& root : o->import_root) {
    if (root.empty() || root[0] != '/') {
      return Status::InvalidArgument("import_root '" + root + "': must be an absolute path");
    }
    std::error_code ec;
    if (!fs::is_directory(root, ec)) {
      return Status::InvalidArgument("import_root '" + root + "': not an existing directory");
    }
    root = fs::path(root).lexically_normal().string();
    if (root.size() > 1 && root.back() == '/') root.pop_back();
  }
  if (o->max_volumes_per_node < 0) {
    return Status::InvalidArgument("max_volumes_per_node " +
                                   std::to_string(o->max_volumes_per_node) +
                                   ": must be 0 (no limit) or positive");
  }
  if (!(o->gc_duty > 0 && o->gc_duty <= 1)) {
    return Status::InvalidArgument("gc_duty " + std::to_string(o->gc_duty) +
                                   ": must be more than 0 and at most 1");
  }
  if (o->max_concurrent_imports < 1) {
    return Status::InvalidArgument("max_concurrent_imports " +
                                   std::to_string(o->max_concurrent_imports) +
                                   ": must be at least 1");
  }
  if (!kLogLevels.count(o->log_level)) {
    return Status::InvalidArgument("log_level '" + o->log_level +
                                   "': must be one of trace, debug, info, warn, error");
  }
  if (!kLogFormats.count(o->log_format)) {
    return Status::InvalidArgument("log_format '" + o->log_format + "': must be text or json");
  }
  if (o->block_device == "loop") {
    return Status::InvalidArgument(
        "block_device 'loop' was removed (it exported each staged volume to a raw file): use "
        "fuse, the default, or drop the setting; unstage the node's volumes with the old "
        "driver first");
  }
  if (o->block_device != "fuse") {
    return Status::InvalidArgument("block_device '" + o->block_device + "': must be fuse");
  }
  if (FdHolderSocket(*o).size() >= 108) {
    return Status::InvalidArgument("state_dir '" + o->state_dir +
                                   "': too long for the fd holder's socket path "
                                   "(<state_dir>/fd-holder.sock must be under 108 bytes)");
  }
  if (!o->metrics_address.empty()) {
    auto colon = o->metrics_address.rfind(':');
    std::string port = colon == std::string::npos ? "" : o->metrics_address.substr(colon + 1);
    bool digits = !port.empty() && port.find_first_not_of("0123456789") == std::string::npos;
    if (!digits || std::stoi(port) > 65535) {
      return Status::InvalidArgument("metrics_address '" + o->metrics_address +
                                     "': must be host:port or :port");
    }
  }
  return Status::Ok();
}

CommandLine ParseCommandLine(int argc, const char* const* argv) {
  CommandLine result;
  Options flags;  // values given on the command line
  std::string max_image_size;
  bool dump_config = false;

  CLI::App app{"stellarium-csi: the Stellarium CSI driver (Identity, Controller and Node "
               "services on one unix socket). Flags override the YAML file given with "
               "--config; its keys are the flag names with '-' replaced by '_'."};
  AddFlags(app, &flags, &max_image_size, &dump_config);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    std::ostringstream out, err;
    int code = app.exit(e, out, err);
    result.exit = true;
    result.exit_code = code == 0 ? 0 : 2;
    result.output = code == 0 ? out.str() : err.str();
    return result;
  }

  Options o;
  if (!flags.config.empty()) {
    Status st = LoadConfigFile(flags.config, &o);
    if (!st.ok()) return Refuse(st.message());
  }
  Status st = ApplyFlags(app, flags, max_image_size, &o);
  if (!st.ok()) return Refuse(st.message());
  st = Validate(&o);
  if (!st.ok()) return Refuse("invalid configuration: " + st.message());
  result.options = o;
  if (dump_config) {
    result.exit = true;
    result.exit_code = 0;
    result.output = DumpYaml(o);
  }
  return result;
}

}  // namespace stellarium::csi
