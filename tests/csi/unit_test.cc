// Unit tests of the csi/ pieces that need no server: lock table, path checks, options,
// status mapping, StorageClass parameters and capabilities.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <thread>

#include "core/store.h"
#include "csi/node/block_device/fuse_block_server.h"
#include "csi/node/lock_table.h"
#include "csi/node/paths.h"
#include "csi/node/vhost_user/vhost_user_blk.h"
#include "csi/options.h"
#include "csi/request_limits.h"
#include "csi/status_map.h"
#include "csi/volume_spec.h"
#include "tests/spawn_util.h"

namespace stellarium::csi {
namespace {

namespace fs = std::filesystem;
using ::csi::v1::VolumeCapability;
using node::LockTable;
using node::ResolveUnderAnyRoot;
using node::ResolveUnderRoot;

class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/csi-unit-XXXXXX";
    path_ = ::mkdtemp(tmpl);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// ---- LockTable ----

TEST(LockTableTest, SameKeyIsSerialized) {
  LockTable table;
  std::atomic<int> inside{0}, max_inside{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 8; ++i) {
    threads.emplace_back([&] {
      for (int j = 0; j < 200; ++j) {
        auto guard = table.Acquire("volume:a");
        int now = ++inside;
        max_inside = std::max(max_inside.load(), now);
        --inside;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(max_inside.load(), 1);
  EXPECT_EQ(table.Size(), 0u) << "entries are dropped when nobody holds or waits";
}

TEST(LockTableTest, DifferentKeysDoNotBlockEachOther) {
  LockTable table;
  auto a = table.Acquire("volume:a");
  bool acquired = false;
  auto b = table.TryAcquire("volume:b", &acquired);
  EXPECT_TRUE(acquired);
  auto a2 = table.TryAcquire("volume:a", &acquired);
  EXPECT_FALSE(acquired);
  a.Release();
  auto a3 = table.TryAcquire("volume:a", &acquired);
  EXPECT_TRUE(acquired);
}

// ---- paths ----

TEST(PathsTest, AcceptsPathsUnderTheRootIncludingMissingTails) {
  TempDir dir;
  fs::create_directories(dir.path() + "/kubelet/pods");
  auto r = ResolveUnderRoot("target_path", dir.path() + "/kubelet/pods/p1/mount",
                            dir.path() + "/kubelet");
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(*r, fs::canonical(dir.path()).string() + "/kubelet/pods/p1/mount");
}

TEST(PathsTest, RejectsRelativeDotDotAndEmpty) {
  TempDir dir;
  EXPECT_EQ(ResolveUnderRoot("p", "relative/x", dir.path()).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(ResolveUnderRoot("p", dir.path() + "/a/../../etc", dir.path()).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(ResolveUnderRoot("p", "", dir.path()).status().code(), StatusCode::kInvalidArgument);
}

TEST(PathsTest, RejectsPathsOutsideTheRoot) {
  TempDir dir;
  fs::create_directories(dir.path() + "/kubelet");
  fs::create_directories(dir.path() + "/kubelet-other");
  auto r = ResolveUnderRoot("p", dir.path() + "/kubelet-other/x", dir.path() + "/kubelet");
  EXPECT_EQ(r.status().code(), StatusCode::kPermissionDenied) << "a prefix is not a parent";
  EXPECT_EQ(ResolveUnderRoot("p", "/etc/passwd", dir.path() + "/kubelet").status().code(),
            StatusCode::kPermissionDenied);
}

TEST(PathsTest, RejectsSymlinkEscapes) {
  TempDir dir;
  fs::create_directories(dir.path() + "/kubelet");
  fs::create_directories(dir.path() + "/outside");
  fs::create_directory_symlink(dir.path() + "/outside", dir.path() + "/kubelet/link");
  auto r = ResolveUnderRoot("p", dir.path() + "/kubelet/link/x", dir.path() + "/kubelet");
  EXPECT_EQ(r.status().code(), StatusCode::kPermissionDenied);
  EXPECT_NE(r.status().message().find("resolves to"), std::string::npos) << r.status().message();
  // A dangling symlink would be followed by a later mkdir or mount.
  fs::create_symlink("/nonexistent-target", dir.path() + "/kubelet/dangling");
  EXPECT_EQ(ResolveUnderRoot("p", dir.path() + "/kubelet/dangling", dir.path() + "/kubelet")
                .status()
                .code(),
            StatusCode::kPermissionDenied);
}

TEST(PathsTest, AnyOfSeveralRoots) {
  TempDir dir;
  fs::create_directories(dir.path() + "/a");
  fs::create_directories(dir.path() + "/b");
  std::ofstream(dir.path() + "/b/img") << "x";
  auto r = ResolveUnderAnyRoot("image", dir.path() + "/b/img", {dir.path() + "/a", dir.path() + "/b"});
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(ResolveUnderAnyRoot("image", dir.path() + "/b/img", {}).status().code(),
            StatusCode::kPermissionDenied);
}

// ---- options ----

CommandLine Parse(std::vector<std::string> args) {
  std::vector<const char*> argv = {"stellarium-csi"};
  for (const auto& a : args) argv.push_back(a.c_str());
  return ParseCommandLine(static_cast<int>(argv.size()), argv.data());
}

TEST(OptionsTest, DefaultsAreDocumented) {
  CommandLine cl = Parse({"--node-id", "n1"});
  ASSERT_FALSE(cl.exit) << cl.output;
  EXPECT_EQ(cl.options.endpoint, kDefaultEndpoint);
  EXPECT_EQ(cl.options.store, "/var/lib/stellarium/store");
  EXPECT_EQ(cl.options.state_dir, "/var/lib/stellarium/state");
  EXPECT_EQ(cl.options.driver_name, "csi.stellarium.io");
  EXPECT_EQ(cl.options.kubelet_dir, "/var/lib/kubelet");
  EXPECT_EQ(cl.options.log_level, "info");
  EXPECT_EQ(cl.options.log_format, "text");
  EXPECT_EQ(cl.options.max_volumes_per_node, 0);
  EXPECT_EQ(cl.options.block_device, "fuse");
  EXPECT_TRUE(cl.options.store_mmap_reads);
  EXPECT_EQ(cl.options.store_disk_readahead_mib, 64u);
  EXPECT_EQ(cl.options.store_disk_readahead_mib << 20, StoreOptions{}.disk_readahead_bytes);
  EXPECT_EQ(cl.options.exposure_readahead_mib << 20,
            node::FuseBlockServerOptions{}.readahead_bytes);
  EXPECT_EQ(cl.options.exposure_readahead_mib << 20,
            node::VhostUserBlkOptions{}.readahead_bytes);
  EXPECT_EQ(FdHolderSocket(cl.options), "/var/lib/stellarium/state/fd-holder.sock");
}

// A SIGBUS (what a disk read error under a mapped table file raises; sent here with
// kill, since a failing disk cannot be made on demand) ends the real driver by that
// signal, after it says on stderr what the signal most likely means.
TEST(DriverProcessTest, SigbusIsExplainedBeforeTheDriverDies) {
  TempDir dir;
  const std::string log = dir.path() + "/driver.log";
  const std::string sock = dir.path() + "/csi.sock";
  const pid_t pid = stellarium::testing::SpawnLogged(
      {STELLARIUM_CSI_PATH, "--endpoint", "unix://" + sock, "--node-id", "n1", "--store",
       dir.path() + "/store", "--state-dir", dir.path() + "/state"},
      log);
  ASSERT_GT(pid, 0);
  for (int i = 0; i < 500 && !fs::exists(sock); ++i) ::usleep(20000);
  EXPECT_TRUE(fs::exists(sock)) << "the driver did not start serving";
  ASSERT_EQ(::kill(pid, SIGBUS), 0);
  std::string out;
  const int status = stellarium::testing::WaitLogged(pid, log, &out);
  // The driver's FUSE mount outlives it (no fd holder here, so its connection is dead):
  // detach it so that the directory can be removed.
  ::umount2((dir.path() + "/state/fuse").c_str(), MNT_DETACH);
  ASSERT_TRUE(WIFSIGNALED(status)) << "status " << status << "; log:\n" << out;
  EXPECT_EQ(WTERMSIG(status), SIGBUS);
  EXPECT_NE(out.find("SIGBUS"), std::string::npos) << out;
  EXPECT_NE(out.find("--store-mmap-reads=false"), std::string::npos) << out;
}

TEST(OptionsTest, StoreMmapReadsFromYamlAndFlag) {
  Options o;
  ASSERT_TRUE(LoadYaml("store_mmap_reads: false\n", "c.yaml", &o).ok());
  EXPECT_FALSE(o.store_mmap_reads);
  CommandLine cl = Parse({"--node-id", "n1", "--store-mmap-reads", "false"});
  ASSERT_FALSE(cl.exit) << cl.output;
  EXPECT_FALSE(cl.options.store_mmap_reads);
  cl = Parse({"--node-id", "n1", "--store-mmap-reads", "maybe"});
  EXPECT_TRUE(cl.exit);
  EXPECT_NE(cl.exit_code, 0);
}

// A rados:// store is a pool, not a path: it is kept as given (a relative directory
// is made absolute, which turned "rados://pool/ns" into a local store under the cwd).
TEST(OptionsTest, ARadosStoreIsKeptAsGivenAndADirectoryMadeAbsolute) {
  CommandLine cl = Parse({"--node-id", "n1", "--store", "rados://pool/ns", "--ceph-id", "csi"});
  ASSERT_FALSE(cl.exit) << cl.output;
  EXPECT_EQ(cl.options.store, "rados://pool/ns");
  EXPECT_EQ(cl.options.ceph_id, "csi");
  cl = Parse({"--node-id", "n1", "--store", "relative/store"});
  ASSERT_FALSE(cl.exit) << cl.output;
  EXPECT_EQ(cl.options.store, (std::filesystem::current_path() / "relative/store").string());
}

// The read-ahead sizes in MiB: from YAML, from their flags, and a flag that is not a
// number is refused.
TEST(OptionsTest, ReadaheadSizesFromYamlAndFlag) {
  struct Case {
    const char* key;
    const char* flag;
    uint64_t Options::*field;
  };
  for (const Case& c : {Case{"store_disk_readahead_mib", "--store-disk-readahead-mib",
                             &Options::store_disk_readahead_mib},
                        Case{"exposure_readahead_mib", "--exposure-readahead-mib",
                             &Options::exposure_readahead_mib}}) {
    SCOPED_TRACE(c.key);
    Options o;
    ASSERT_TRUE(LoadYaml(std::string(c.key) + ": 0\n", "c.yaml", &o).ok());
    EXPECT_EQ(o.*c.field, 0u);
    CommandLine cl = Parse({"--node-id", "n1", c.flag, "16"});
    ASSERT_FALSE(cl.exit) << cl.output;
    EXPECT_EQ(cl.options.*c.field, 16u);
    cl = Parse({"--node-id", "n1", c.flag, "lots"});
    EXPECT_TRUE(cl.exit);
    EXPECT_NE(cl.exit_code, 0);
  }
}

TEST(OptionsTest, BlockDeviceFuseFromYamlAndFlag) {
  Options o;
  ASSERT_TRUE(LoadYaml("block_device: fuse\n", "c.yaml", &o).ok());
  EXPECT_EQ(o.block_device, "fuse");
  CommandLine cl = Parse({"--node-id", "n1", "--block-device", "fuse"});
  ASSERT_FALSE(cl.exit) << cl.output;
  EXPECT_EQ(cl.options.block_device, "fuse");
}

// The export-to-file device (block_device: loop) was removed: a configuration that still
// names it, in the YAML file or as a flag, stops the start with a message that says so
// and what to use instead.
TEST(OptionsTest, RemovedLoopBlockDeviceFailsNamingTheReplacement) {
  TempDir dir;
  const std::string config = dir.path() + "/c.yaml";
  std::ofstream(config) << "node_id: n1\nblock_device: loop\n";
  for (const auto& args : {std::vector<std::string>{"--config", config},
                           std::vector<std::string>{"--node-id", "n1", "--block-device", "loop"}}) {
    CommandLine cl = Parse(args);
    EXPECT_TRUE(cl.exit);
    EXPECT_EQ(cl.exit_code, 2);
    EXPECT_NE(cl.output.find("block_device 'loop' was removed"), std::string::npos) << cl.output;
    EXPECT_NE(cl.output.find("use fuse"), std::string::npos) << cl.output;
  }
}

TEST(OptionsTest, YamlThenFlagsOverride) {
  TempDir dir;
  fs::create_directories(dir.path() + "/img1");
  fs::create_directories(dir.path() + "/img2");
  std::string config = dir.path() + "/c.yaml";
  std::ofstream(config) << "node_id: from-yaml\nstore: " << dir.path() << "/s\n"
                        << "log_level: debug\nimport_root: [" << dir.path() << "/img1]\n"
                        << "max_volumes_per_node: 7\n";
  CommandLine cl = Parse({"--config", config, "--log-level", "warn", "--import-root",
                          dir.path() + "/img2", "--import-root", dir.path() + "/img1"});
  ASSERT_FALSE(cl.exit) << cl.output;
  EXPECT_EQ(cl.options.node_id, "from-yaml");
  EXPECT_EQ(cl.options.store, dir.path() + "/s");
  EXPECT_EQ(cl.options.log_level, "warn");
  EXPECT_EQ(cl.options.max_volumes_per_node, 7);
  EXPECT_EQ(cl.options.import_root,
            (std::vector<std::string>{dir.path() + "/img2", dir.path() + "/img1"}));
}

TEST(OptionsTest, BadValuesFailWithTheKeyNamed) {
  struct Case {
    std::vector<std::string> args;
    std::string expected;
  } cases[] = {
      {{"--node-id", "has space"}, "node_id"},
      {{"--node-id", "n", "--endpoint", "tcp://1.2.3.4:5"}, "endpoint"},
      {{"--node-id", "n", "--log-level", "loud"}, "log_level"},
      {{"--node-id", "n", "--log-format", "xml"}, "log_format"},
      {{"--node-id", "n", "--driver-name", "bad_name!"}, "driver_name"},
      {{"--node-id", "n", "--import-root", "/does/not/exist"}, "import_root"},
      {{"--node-id", "n", "--max-volumes-per-node", "-1"}, "max_volumes_per_node"},
      {{"--node-id", "n", "--metrics-address", "nope"}, "metrics_address"},
      {{"--node-id", "n", "--block-device", "nbd"}, "block_device 'nbd'"},
      {{"--node-id", "n", "--state-dir", "/" + std::string(100, 's')}, "fd-holder.sock"},
      {{"--no-such-flag"}, "no-such-flag"},
  };
  for (const auto& c : cases) {
    CommandLine cl = Parse(c.args);
    EXPECT_TRUE(cl.exit);
    EXPECT_EQ(cl.exit_code, 2) << c.expected;
    EXPECT_NE(cl.output.find(c.expected), std::string::npos) << cl.output;
  }
}

TEST(OptionsTest, UnknownYamlKeyIsNamed) {
  Options o;
  Status st = LoadYaml("node_id: a\nnodeid: b\n", "c.yaml", &o);
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("'nodeid'"), std::string::npos) << st.message();
  st = LoadYaml("max_volumes_per_node: lots\n", "c.yaml", &o);
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("max_volumes_per_node"), std::string::npos) << st.message();
}

TEST(OptionsTest, DumpConfigPrintsEveryKeyAndRoundTrips) {
  CommandLine cl = Parse({"--node-id", "n1", "--dump-config", "--log-format", "json"});
  ASSERT_TRUE(cl.exit);
  EXPECT_EQ(cl.exit_code, 0);
  for (const char* key : {"endpoint:", "node_id:", "store:", "state_dir:", "driver_name:",
                          "kubelet_dir:", "import_root:", "max_volumes_per_node:", "log_level:",
                          "log_format:", "metrics_address:"}) {
    EXPECT_NE(cl.output.find(key), std::string::npos) << key << " missing in\n" << cl.output;
  }
  Options reloaded;
  ASSERT_TRUE(LoadYaml(cl.output, "dump", &reloaded).ok());
  EXPECT_EQ(reloaded.node_id, "n1");
  EXPECT_EQ(reloaded.log_format, "json");
}

TEST(OptionsTest, VersionAndHelpExitZero) {
  CommandLine v = Parse({"--version"});
  EXPECT_TRUE(v.exit);
  EXPECT_EQ(v.exit_code, 0);
  EXPECT_NE(v.output.find(STELLARIUM_VERSION), std::string::npos) << v.output;
  CommandLine h = Parse({"--help"});
  EXPECT_TRUE(h.exit);
  EXPECT_EQ(h.exit_code, 0);
  EXPECT_NE(h.output.find("--kubelet-dir"), std::string::npos);
}

// ---- status mapping ----

TEST(StatusMapTest, CodesPassThroughWithMessages) {
  EXPECT_TRUE(ToGrpcStatus(Status::Ok()).ok());
  struct {
    Status in;
    grpc::StatusCode out;
  } cases[] = {
      {Status::NotFound("snapshot snap-1: not found"), grpc::StatusCode::NOT_FOUND},
      {Status::AlreadyExists("x"), grpc::StatusCode::ALREADY_EXISTS},
      {Status::OutOfRange("x"), grpc::StatusCode::OUT_OF_RANGE},
      {Status::FailedPrecondition("x"), grpc::StatusCode::FAILED_PRECONDITION},
      {Status::ResourceExhausted("x"), grpc::StatusCode::RESOURCE_EXHAUSTED},
      {Status::Aborted("x"), grpc::StatusCode::ABORTED},
      {Status::Corruption("chunk c: checksum mismatch"), grpc::StatusCode::DATA_LOSS},
      {Status::InvalidArgument("x"), grpc::StatusCode::INVALID_ARGUMENT},
  };
  for (const auto& c : cases) {
    grpc::Status g = ToGrpcStatus(c.in);
    EXPECT_EQ(g.error_code(), c.out);
    EXPECT_EQ(g.error_message(), c.in.message());
  }
}

// ---- parameters and capabilities ----

google::protobuf::Map<std::string, std::string> Params(std::map<std::string, std::string> m) {
  google::protobuf::Map<std::string, std::string> out;
  for (auto& [k, v] : m) out[k] = v;
  return out;
}

TEST(VolumeSpecTest, ParametersParseAndUnknownKeysAreNamed) {
  auto p = ParseVolumeParameters(
      Params({{"blockSize", "64K"}, {"fsType", "ext4"}, {"exposure", "loop"},
              {"csi.storage.k8s.io/pvc/name", "claim"}}),
      "loop");
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  EXPECT_EQ(p->block_size, 64u * 1024);
  auto bad = ParseVolumeParameters(Params({{"imgae", "/x"}}), "loop");
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("'imgae'"), std::string::npos);
  EXPECT_FALSE(ParseVolumeParameters(Params({{"blockSize", "3000"}}), "loop").ok());
  EXPECT_FALSE(ParseVolumeParameters(Params({{"fsType", "xfs"}}), "loop").ok());
  EXPECT_FALSE(ParseVolumeParameters(Params({{"exposure", "fuse"}}), "loop").ok());
  EXPECT_FALSE(ParseVolumeParameters(Params({{"image", "/a"}, {"imageDir", "/b"}}), "loop").ok());
}

TEST(VolumeSpecTest, Capabilities) {
  VolumeCapability cap;
  EXPECT_EQ(CheckCapability(cap).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  cap.mutable_mount();
  EXPECT_EQ(CheckCapability(cap).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  cap.mutable_access_mode()->set_mode(VolumeCapability::AccessMode::SINGLE_NODE_WRITER);
  EXPECT_TRUE(CheckCapability(cap).ok());
  cap.mutable_access_mode()->set_mode(VolumeCapability::AccessMode::MULTI_NODE_MULTI_WRITER);
  EXPECT_EQ(CheckCapability(cap).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  cap.mutable_access_mode()->set_mode(VolumeCapability::AccessMode::SINGLE_NODE_MULTI_WRITER);
  cap.mutable_mount()->set_fs_type("xfs");
  EXPECT_EQ(CheckCapability(cap).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

TEST(VolumeSpecTest, NamesRejectBannedControlCharacters) {
  EXPECT_TRUE(CheckName("pvc-1234 with space", "name").ok());
  // The CLI's rule (core/provision.h ValidateName): no tab or line break either.
  EXPECT_FALSE(CheckName("pvc-1234 with\ttab", "name").ok());
  EXPECT_TRUE(CheckName(std::string(128, 'n'), "name").ok());
  EXPECT_FALSE(CheckName("", "name").ok());
  EXPECT_FALSE(CheckName(std::string("a\x01z"), "name").ok());
  EXPECT_FALSE(CheckName("a\xc2\x85z", "name").ok());  // U+0085
}

TEST(RequestLimitsUnitTest, ShortenKeepsShortTextAndCutsAtACharacterBoundary) {
  EXPECT_EQ(Shorten("vol-1"), "vol-1");
  EXPECT_EQ(Shorten(std::string(128, 'a')), std::string(128, 'a'));
  EXPECT_EQ(Shorten(std::string(129, 'a')), std::string(128, 'a') + "... (129 bytes)");
  // 127 ASCII bytes, then a two-byte character across the cut: it goes whole.
  const std::string text = std::string(127, 'a') + "\xc3\xa9" + std::string(10, 'b');
  EXPECT_EQ(Shorten(text), std::string(127, 'a') + "... (139 bytes)");
}

TEST(RequestLimitsUnitTest, BoundStatusShortensRequestStringsAndCapsTheMessage) {
  ::csi::v1::NodePublishVolumeRequest req;
  const std::string target = "/k/" + std::string(300, 't');
  req.set_target_path(target);
  (*req.mutable_secrets())["token"] = std::string(200, 's');
  grpc::Status st = BoundStatus(
      grpc::Status(grpc::StatusCode::NOT_FOUND, "target_path " + target + " or " + target), req);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::NOT_FOUND);
  const std::string shown = Shorten(target);
  EXPECT_EQ(st.error_message(), "target_path " + shown + " or " + shown);
  st = BoundStatus(grpc::Status(grpc::StatusCode::INTERNAL, std::string(10000, 'm')), req);
  EXPECT_LT(st.error_message().size(), kMaxMessageBytes + 64);
  EXPECT_NE(st.error_message().find("(message of 10000 bytes cut)"), std::string::npos);
  EXPECT_TRUE(BoundStatus(grpc::Status::OK, req).ok());
}

TEST(RequestLimitsUnitTest, CheckRequestLimitsFindsNestedIdsAndPaths) {
  ::csi::v1::CreateVolumeRequest create;
  create.set_name("ok");
  EXPECT_TRUE(CheckRequestLimits(create).ok());
  create.mutable_volume_content_source()->mutable_volume()->set_volume_id(
      std::string(kMaxIdBytes, 'v'));
  EXPECT_TRUE(CheckRequestLimits(create).ok());
  create.mutable_volume_content_source()->mutable_volume()->set_volume_id(
      std::string(kMaxIdBytes + 1, 'v'));
  grpc::Status st = CheckRequestLimits(create);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(st.error_message().find("volume_content_source.volume.volume_id"), std::string::npos)
      << st.error_message();
  // Parameters and secrets are not ids: their sizes are the services' business.
  ::csi::v1::CreateVolumeRequest params;
  (*params.mutable_parameters())["name"] = std::string(kMaxIdBytes + 1, 'p');
  (*params.mutable_secrets())["caBundle"] = std::string(1 << 16, 'c');
  EXPECT_TRUE(CheckRequestLimits(params).ok());
}

}  // namespace
}  // namespace stellarium::csi
