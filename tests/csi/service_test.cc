// The services through a real gRPC channel on a temporary unix socket: every RPC, the
// error codes of the CSI spec's tables, paging, idempotency. Nothing here mounts or
// needs root (lifecycle_test.cc does the real mounts).
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <set>

#include "core/export.h"
#include "core/process.h"
#include "core/store.h"
#include "tests/csi/csi_fixture.h"

namespace stellarium::csi::testing {
namespace {

namespace fs = std::filesystem;
using grpc::StatusCode;

#define EXPECT_CODE(expr, code)                                         \
  do {                                                                  \
    grpc::Status _st = (expr);                                          \
    EXPECT_EQ(_st.error_code(), code) << #expr << ": " << _st.error_message(); \
  } while (0)

class ServiceTest : public CsiDriverTest {};

// ---- Identity ----

TEST_F(ServiceTest, IdentityDescribesTheDriver) {
  v1::GetPluginInfoResponse info;
  ASSERT_TRUE(identity_->GetPluginInfo(Ctx().get(), {}, &info).ok());
  EXPECT_EQ(info.name(), "csi.stellarium.io");
  EXPECT_EQ(info.vendor_version(), STELLARIUM_VERSION);

  v1::GetPluginCapabilitiesResponse caps;
  ASSERT_TRUE(identity_->GetPluginCapabilities(Ctx().get(), {}, &caps).ok());
  std::set<int> services;
  for (const auto& c : caps.capabilities()) {
    if (c.has_service()) services.insert(c.service().type());
  }
  EXPECT_TRUE(services.count(v1::PluginCapability::Service::CONTROLLER_SERVICE));
  EXPECT_TRUE(services.count(v1::PluginCapability::Service::VOLUME_ACCESSIBILITY_CONSTRAINTS));

  v1::ProbeResponse probe;
  ASSERT_TRUE(identity_->Probe(Ctx().get(), {}, &probe).ok());
  EXPECT_TRUE(probe.ready().value());
}

TEST_F(ServiceTest, SocketIsPrivate) {
  struct stat st;
  ASSERT_EQ(::stat((root_ + "/csi.sock").c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 0777, 0600u);
}

TEST_F(ServiceTest, ShutdownRemovesTheSocket) {
  StopServer();
  EXPECT_FALSE(fs::exists(root_ + "/csi.sock"));
  StartServer();
  v1::ProbeResponse probe;
  EXPECT_TRUE(identity_->Probe(Ctx().get(), {}, &probe).ok());
}

TEST_F(ServiceTest, SecondServerOnTheSameStoreIsRefused) {
  Options o = MakeOptions();
  o.endpoint = "unix://" + root_ + "/other.sock";
  auto second = Server::Start(o);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), stellarium::StatusCode::kFailedPrecondition);
  EXPECT_NE(second.status().message().find("held by another process"), std::string::npos)
      << second.status().message();
}

// ---- Controller: capabilities and CreateVolume ----

TEST_F(ServiceTest, ControllerCapabilities) {
  v1::ControllerGetCapabilitiesResponse resp;
  ASSERT_TRUE(controller_->ControllerGetCapabilities(Ctx().get(), {}, &resp).ok());
  std::set<int> types;
  for (const auto& c : resp.capabilities()) types.insert(c.rpc().type());
  using T = v1::ControllerServiceCapability::RPC;
  for (auto t : {T::CREATE_DELETE_VOLUME, T::CREATE_DELETE_SNAPSHOT, T::CLONE_VOLUME,
                 T::LIST_VOLUMES, T::LIST_SNAPSHOTS, T::GET_CAPACITY, T::EXPAND_VOLUME,
                 T::GET_VOLUME, T::VOLUME_CONDITION, T::SINGLE_NODE_MULTI_WRITER}) {
    EXPECT_TRUE(types.count(t)) << T::Type_Name(t);
  }
  EXPECT_FALSE(types.count(T::PUBLISH_UNPUBLISH_VOLUME));
}

TEST_F(ServiceTest, CreateVolumeReturnsTopologyContextAndRoundedCapacity) {
  v1::Volume v;
  ASSERT_TRUE(CreateVolume(VolumeRequest("pvc-1", 10 * 1024 * 1024 + 1), &v).ok());
  EXPECT_EQ(v.capacity_bytes(), 10 * 1024 * 1024 + 4096) << "rounded up to the block size";
  EXPECT_EQ(v.volume_id().rfind("vol-", 0), 0u);
  ASSERT_EQ(v.accessible_topology_size(), 1);
  EXPECT_EQ(v.accessible_topology(0).segments().at("topology.stellarium.io/node"), "node-1");
  EXPECT_EQ(v.volume_context().at("stellarium.io/fs-type"), "ext4");
  EXPECT_EQ(v.volume_context().at("stellarium.io/exposure"), "loop");

  v1::Volume dflt;
  ASSERT_TRUE(CreateVolume(VolumeRequest("pvc-default"), &dflt).ok());
  EXPECT_EQ(dflt.capacity_bytes(), 1ll << 30) << "no capacity_range: 1 GiB";
}

TEST_F(ServiceTest, CreateVolumeValidatesTheRequest) {
  auto req = VolumeRequest("");
  EXPECT_CODE(CreateVolume(req), StatusCode::INVALID_ARGUMENT);

  req = VolumeRequest("no-caps");
  req.clear_volume_capabilities();
  EXPECT_CODE(CreateVolume(req), StatusCode::INVALID_ARGUMENT);

  req = VolumeRequest("no-access-type");
  req.mutable_volume_capabilities(0)->clear_mount();
  EXPECT_CODE(CreateVolume(req), StatusCode::INVALID_ARGUMENT);

  req = VolumeRequest("multi-node");
  *req.mutable_volume_capabilities(0) = MountCap(Mode::MULTI_NODE_MULTI_WRITER);
  EXPECT_CODE(CreateVolume(req), StatusCode::INVALID_ARGUMENT);

  req = VolumeRequest("negative");
  req.mutable_capacity_range()->set_required_bytes(-1);
  EXPECT_CODE(CreateVolume(req), StatusCode::INVALID_ARGUMENT);

  req = VolumeRequest("inverted", 1 << 30);
  req.mutable_capacity_range()->set_limit_bytes(1 << 20);
  EXPECT_CODE(CreateVolume(req), StatusCode::OUT_OF_RANGE);

  req = VolumeRequest("bad-source");
  req.mutable_volume_content_source();  // neither snapshot nor volume
  EXPECT_CODE(CreateVolume(req), StatusCode::INVALID_ARGUMENT);

  grpc::Status st = CreateVolume(VolumeRequest("typo", 0, {{"blocksize", "4096"}}));
  EXPECT_EQ(st.error_code(), StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(st.error_message().find("'blocksize'"), std::string::npos) << st.error_message();

  // The sidecars' own keys are not ours to refuse.
  EXPECT_TRUE(CreateVolume(VolumeRequest("sidecar-keys", 1 << 20,
                                         {{"csi.storage.k8s.io/pvc/name", "claim"},
                                          {"csi.storage.k8s.io/pv/name", "pv"}}))
                  .ok());
}

TEST_F(ServiceTest, NamesUpTo128BytesWork) {
  std::string name(128, 'x');
  v1::Volume v;
  ASSERT_TRUE(CreateVolume(VolumeRequest(name, 1 << 20), &v).ok());
  v1::Volume again;
  ASSERT_TRUE(CreateVolume(VolumeRequest(name, 1 << 20), &again).ok());
  EXPECT_EQ(v.volume_id(), again.volume_id());
  EXPECT_FALSE(MustCreateSnapshot(std::string(128, 's'), v.volume_id()).empty());
}

TEST_F(ServiceTest, CreateVolumeIsIdempotentAndRefusesIncompatibleReuse) {
  v1::Volume first;
  ASSERT_TRUE(CreateVolume(VolumeRequest("pvc-idem", 8 << 20), &first).ok());
  for (int i = 0; i < 10; ++i) {
    v1::Volume again;
    ASSERT_TRUE(CreateVolume(VolumeRequest("pvc-idem", 8 << 20), &again).ok());
    EXPECT_EQ(again.volume_id(), first.volume_id());
    EXPECT_EQ(again.capacity_bytes(), first.capacity_bytes());
  }
  // A compatible range (the existing size fits) is the same volume.
  auto range = VolumeRequest("pvc-idem", 4 << 20);
  range.mutable_capacity_range()->set_limit_bytes(16 << 20);
  v1::Volume ranged;
  ASSERT_TRUE(CreateVolume(range, &ranged).ok());
  EXPECT_EQ(ranged.volume_id(), first.volume_id());

  EXPECT_CODE(CreateVolume(VolumeRequest("pvc-idem", 16 << 20)), StatusCode::ALREADY_EXISTS);
  EXPECT_CODE(CreateVolume(VolumeRequest("pvc-idem", 8 << 20, {{"blockSize", "64K"}})),
              StatusCode::ALREADY_EXISTS);
  auto from_snap = VolumeRequest("pvc-idem", 8 << 20);
  from_snap.mutable_volume_content_source()->mutable_snapshot()->set_snapshot_id(
      MustCreateSnapshot("snap-idem", first.volume_id()));
  EXPECT_CODE(CreateVolume(from_snap), StatusCode::ALREADY_EXISTS);

  auto volumes = driver().store->ListVolumes();
  ASSERT_TRUE(volumes.ok());
  EXPECT_EQ(volumes->size(), 1u);
}

TEST_F(ServiceTest, CreateFromSnapshotAndVolume) {
  std::string src = MustCreateVolume("src", 8 << 20);
  std::string snap = MustCreateSnapshot("snap-1", src);

  auto req = VolumeRequest("from-snap", 4 << 20);  // smaller than the source: source size
  req.mutable_volume_content_source()->mutable_snapshot()->set_snapshot_id(snap);
  v1::Volume v;
  ASSERT_TRUE(CreateVolume(req, &v).ok());
  EXPECT_EQ(v.capacity_bytes(), 8 << 20);
  EXPECT_EQ(v.content_source().snapshot().snapshot_id(), snap);
  EXPECT_EQ(v.volume_context().at("stellarium.io/source-kind"), "snapshot");

  req = VolumeRequest("from-snap-bigger", 32 << 20);
  req.mutable_volume_content_source()->mutable_snapshot()->set_snapshot_id(snap);
  ASSERT_TRUE(CreateVolume(req, &v).ok());
  EXPECT_EQ(v.capacity_bytes(), 32 << 20);

  req = VolumeRequest("clone", 0);
  req.mutable_volume_content_source()->mutable_volume()->set_volume_id(src);
  ASSERT_TRUE(CreateVolume(req, &v).ok());
  EXPECT_EQ(v.content_source().volume().volume_id(), src);
  EXPECT_EQ(v.capacity_bytes(), 8 << 20);
}

TEST_F(ServiceTest, CreateFromMissingSourceIsNotFound) {
  auto req = VolumeRequest("from-nothing");
  req.mutable_volume_content_source()->mutable_snapshot()->set_snapshot_id("snap-0000000000000000");
  EXPECT_CODE(CreateVolume(req), StatusCode::NOT_FOUND);
  req = VolumeRequest("clone-of-nothing");
  req.mutable_volume_content_source()->mutable_volume()->set_volume_id("vol-0000000000000000");
  EXPECT_CODE(CreateVolume(req), StatusCode::NOT_FOUND);
}

TEST_F(ServiceTest, CapacityBelowTheSourceIsOutOfRange) {
  std::string src = MustCreateVolume("big-src", 16 << 20);
  std::string snap = MustCreateSnapshot("big-snap", src);
  auto req = VolumeRequest("too-small", 1 << 20);
  req.mutable_capacity_range()->set_limit_bytes(8 << 20);
  req.mutable_volume_content_source()->mutable_snapshot()->set_snapshot_id(snap);
  EXPECT_CODE(CreateVolume(req), StatusCode::OUT_OF_RANGE);
  req.mutable_volume_content_source()->mutable_volume()->set_volume_id(src);
  EXPECT_CODE(CreateVolume(req), StatusCode::OUT_OF_RANGE);
}

TEST_F(ServiceTest, CreateFromImageAndTheSecondImportIsAClone) {
  std::string image = MakeExt4Image("base", {{"etc/motd", "hello from the image\n"}});
  v1::Volume a, b;
  ASSERT_TRUE(CreateVolume(VolumeRequest("img-a", 0, {{"image", image}}), &a).ok());
  EXPECT_EQ(a.capacity_bytes(), 32 << 20);
  EXPECT_EQ(a.volume_context().at("stellarium.io/source-kind"), "image");
  auto before = driver().store->GetStats();
  ASSERT_TRUE(before.ok());
  ASSERT_TRUE(CreateVolume(VolumeRequest("img-b", 64 << 20, {{"image", image}}), &b).ok());
  EXPECT_EQ(b.capacity_bytes(), 64 << 20) << "required_bytes above the image size is honoured";
  auto after = driver().store->GetStats();
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(after->chunks, before->chunks) << "the same image stores nothing new";
  auto images = driver().store->ListImages();
  ASSERT_TRUE(images.ok());
  EXPECT_EQ(images->size(), 1u);
  // Idempotent by name without reading the image again.
  v1::Volume again;
  ASSERT_TRUE(CreateVolume(VolumeRequest("img-a", 0, {{"image", image}}), &again).ok());
  EXPECT_EQ(again.volume_id(), a.volume_id());
}

TEST_F(ServiceTest, CreateFromDirectoryTree) {
  std::string tree = MakeTree("tree", {{"a.txt", "a"}, {"sub/b.txt", "b"}});
  v1::Volume v;
  ASSERT_TRUE(CreateVolume(VolumeRequest("tree-vol", 0, {{"imageDir", tree}}), &v).ok());
  EXPECT_GE(v.capacity_bytes(), 32 << 20);
  // The same tree builds the same image: a second volume adds no chunks.
  auto before = driver().store->GetStats();
  ASSERT_TRUE(CreateVolume(VolumeRequest("tree-vol-2", 0, {{"imageDir", tree}}), &v).ok());
  auto after = driver().store->GetStats();
  EXPECT_EQ(after->chunks, before->chunks);
  EXPECT_FALSE(fs::exists(root_ + "/state/tmp") && !fs::is_empty(root_ + "/state/tmp"))
      << "the temporary image is removed";
}

// Makes `out` from `in` with a program (qemu-img, gzip); false when the program is missing.
bool Convert(const std::vector<std::string>& argv) {
  std::string output;
  Status st = RunProgramOk(argv, {}, &output);
  if (st.code() == stellarium::StatusCode::kNotFound) return false;
  EXPECT_TRUE(st.ok()) << st.ToString();
  return true;
}

std::string FileBytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

// Regression (issues 17, 18): the StorageClass parameter image= stored a local qcow2 as
// its container bytes (url= of the same file converted it). Local files now go through
// the same format detection as URLs.
TEST_F(ServiceTest, ImageParameterQcow2AndGzipBecomeTheDiskTheyContain) {
  const std::string raw = MakeExt4Image("disk", {{"etc/motd", "hello from inside a qcow2\n"}});
  if (!Convert({"qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", raw, images_ + "/disk.qcow2"}) ||
      !Convert({"qemu-img", "convert", "-q", "-c", "-f", "raw", "-O", "qcow2", raw, images_ + "/disk-c.qcow2"}) ||
      !Convert({"gzip", "-k", raw})) {
    GTEST_SKIP() << "needs qemu-img and gzip";
  }
  const std::string want = FileBytes(raw);
  int n = 0;
  for (const std::string& file : {images_ + "/disk.qcow2", images_ + "/disk-c.qcow2", raw + ".gz"}) {
    SCOPED_TRACE(file);
    v1::Volume v;
    grpc::Status st = CreateVolume(VolumeRequest("local-" + std::to_string(n++), 0, {{"image", file}}), &v);
    ASSERT_TRUE(st.ok()) << st.error_message();
    EXPECT_EQ(v.capacity_bytes(), static_cast<int64_t>(want.size()));
    auto vol = driver().store->OpenVolume(v.volume_id(), /*read_only=*/true);
    ASSERT_TRUE(vol.ok()) << vol.status().ToString();
    const std::string out = root_ + "/export.raw";
    ASSERT_TRUE(ExportVolume(**vol, out).ok());
    EXPECT_TRUE(FileBytes(out) == want) << "the volume is not the disk " << file << " contains";
  }
  auto images = driver().store->ListImages();
  ASSERT_TRUE(images.ok());
  EXPECT_EQ(images->size(), 1u) << "three containers of one disk are one image";
}

// Regression (issue 18): a truncated qcow2 was imported as a raw image. A damaged or
// unsupported container is INVALID_ARGUMENT naming the file and leaves nothing behind.
TEST_F(ServiceTest, ImageParameterTruncatedOrUnsupportedContainerIsRefused) {
  const std::string raw = MakeExt4Image("disk", {{"a", "a"}});
  const std::string qcow2 = root_ + "/whole.qcow2";
  if (!Convert({"qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", raw, qcow2})) {
    GTEST_SKIP() << "needs qemu-img";
  }
  const std::string whole = FileBytes(qcow2);
  { std::ofstream(images_ + "/half.qcow2", std::ios::binary) << whole.substr(0, whole.size() / 2); }
  { std::ofstream(images_ + "/disk.vmdk", std::ios::binary) << "KDMV" << std::string(8188, '\1'); }
  for (const auto& [file, says] : std::vector<std::pair<std::string, std::string>>{
           {"half.qcow2", "file offset"}, {"disk.vmdk", "VMDK images are not supported"}}) {
    SCOPED_TRACE(file);
    grpc::Status st = CreateVolume(VolumeRequest("bad", 0, {{"image", images_ + "/" + file}}));
    EXPECT_EQ(st.error_code(), StatusCode::INVALID_ARGUMENT) << st.error_message();
    EXPECT_NE(st.error_message().find(images_ + "/" + file), std::string::npos) << st.error_message();
    EXPECT_NE(st.error_message().find(says), std::string::npos) << st.error_message();
  }
  EXPECT_TRUE(driver().store->ListVolumes()->empty());
  EXPECT_TRUE(driver().store->ListImages()->empty());
  ASSERT_TRUE(driver().store->Gc().ok());
  EXPECT_EQ(driver().store->GetStats()->chunks, 0u) << "a refused import left chunks after gc";
  EXPECT_FALSE(fs::exists(root_ + "/state/tmp") && !fs::is_empty(root_ + "/state/tmp"));
}

TEST_F(ServiceTest, ImagePathsAreConfinedToImportRoots) {
  std::string outside = root_ + "/outside.img";
  { std::ofstream(outside) << std::string(4096, 'x'); }
  EXPECT_CODE(CreateVolume(VolumeRequest("escape", 0, {{"image", outside}})),
              StatusCode::PERMISSION_DENIED);
  EXPECT_CODE(CreateVolume(VolumeRequest("dotdot", 0, {{"image", images_ + "/../outside.img"}})),
              StatusCode::INVALID_ARGUMENT);
  fs::create_symlink(outside, images_ + "/link.img");
  EXPECT_CODE(CreateVolume(VolumeRequest("symlink", 0, {{"image", images_ + "/link.img"}})),
              StatusCode::PERMISSION_DENIED);
  EXPECT_CODE(CreateVolume(VolumeRequest("missing", 0, {{"image", images_ + "/none.img"}})),
              StatusCode::NOT_FOUND);
  auto volumes = driver().store->ListVolumes();
  EXPECT_TRUE(volumes->empty()) << "nothing is left behind";
}

TEST_F(ServiceTest, TopologyRequirementForAnotherNodeIsResourceExhausted) {
  auto req = VolumeRequest("elsewhere", 1 << 20);
  (*req.mutable_accessibility_requirements()->add_requisite()->mutable_segments())
      ["topology.stellarium.io/node"] = "node-2";
  EXPECT_CODE(CreateVolume(req), StatusCode::RESOURCE_EXHAUSTED);
  (*req.mutable_accessibility_requirements()->add_requisite()->mutable_segments())
      ["topology.stellarium.io/node"] = "node-1";
  EXPECT_TRUE(CreateVolume(req).ok());
}

// ---- DeleteVolume, snapshots ----

TEST_F(ServiceTest, DeleteVolumeIsIdempotent) {
  std::string id = MustCreateVolume("to-delete");
  for (int i = 0; i < 10; ++i) EXPECT_TRUE(DeleteVolume(id).ok());
  EXPECT_CODE(DeleteVolume(""), StatusCode::INVALID_ARGUMENT);
  EXPECT_TRUE(DeleteVolume("vol-0123456789abcdef").ok()) << "deleting what does not exist is OK";
}

TEST_F(ServiceTest, SnapshotsAreIdempotentAndReady) {
  std::string vol = MustCreateVolume("snap-src", 8 << 20);
  std::string first;
  for (int i = 0; i < 10; ++i) {
    v1::CreateSnapshotRequest req;
    req.set_name("daily");
    req.set_source_volume_id(vol);
    v1::CreateSnapshotResponse resp;
    ASSERT_TRUE(controller_->CreateSnapshot(Ctx().get(), req, &resp).ok());
    if (i == 0) first = resp.snapshot().snapshot_id();
    EXPECT_EQ(resp.snapshot().snapshot_id(), first);
    EXPECT_TRUE(resp.snapshot().ready_to_use());
    EXPECT_EQ(resp.snapshot().size_bytes(), 8 << 20);
    EXPECT_EQ(resp.snapshot().source_volume_id(), vol);
    EXPECT_GT(resp.snapshot().creation_time().seconds(), 1600000000);
  }
  v1::CreateSnapshotRequest other;
  other.set_name("daily");
  other.set_source_volume_id(MustCreateVolume("other-src"));
  v1::CreateSnapshotResponse resp;
  EXPECT_CODE(controller_->CreateSnapshot(Ctx().get(), other, &resp), StatusCode::ALREADY_EXISTS);
  other.set_name("");
  EXPECT_CODE(controller_->CreateSnapshot(Ctx().get(), other, &resp), StatusCode::INVALID_ARGUMENT);
  other.set_name("x");
  other.clear_source_volume_id();
  EXPECT_CODE(controller_->CreateSnapshot(Ctx().get(), other, &resp), StatusCode::INVALID_ARGUMENT);
  other.set_source_volume_id("vol-0123456789abcdef");
  EXPECT_CODE(controller_->CreateSnapshot(Ctx().get(), other, &resp), StatusCode::NOT_FOUND);
  other.set_source_volume_id(vol);
  (*other.mutable_parameters())["retention"] = "7d";
  EXPECT_CODE(controller_->CreateSnapshot(Ctx().get(), other, &resp), StatusCode::INVALID_ARGUMENT);

  v1::GetSnapshotRequest get;
  get.set_snapshot_id(first);
  v1::GetSnapshotResponse got;
  ASSERT_TRUE(controller_->GetSnapshot(Ctx().get(), get, &got).ok());
  EXPECT_EQ(got.snapshot().snapshot_id(), first);

  for (int i = 0; i < 10; ++i) {
    v1::DeleteSnapshotRequest del;
    del.set_snapshot_id(first);
    v1::DeleteSnapshotResponse dresp;
    EXPECT_TRUE(controller_->DeleteSnapshot(Ctx().get(), del, &dresp).ok());
  }
  EXPECT_CODE(controller_->GetSnapshot(Ctx().get(), get, &got), StatusCode::NOT_FOUND);
  v1::DeleteSnapshotRequest empty;
  v1::DeleteSnapshotResponse dresp;
  EXPECT_CODE(controller_->DeleteSnapshot(Ctx().get(), empty, &dresp), StatusCode::INVALID_ARGUMENT);
}

TEST_F(ServiceTest, DeletingASnapshotNeverBreaksItsClones) {
  std::string vol = MustCreateVolume("base", 8 << 20);
  std::string snap = MustCreateSnapshot("base-snap", vol);
  auto req = VolumeRequest("child");
  req.mutable_volume_content_source()->mutable_snapshot()->set_snapshot_id(snap);
  v1::Volume child;
  ASSERT_TRUE(CreateVolume(req, &child).ok());
  v1::DeleteSnapshotRequest del;
  del.set_snapshot_id(snap);
  v1::DeleteSnapshotResponse dresp;
  ASSERT_TRUE(controller_->DeleteSnapshot(Ctx().get(), del, &dresp).ok());
  ASSERT_TRUE(DeleteVolume(vol).ok());
  v1::ControllerGetVolumeRequest get;
  get.set_volume_id(child.volume_id());
  v1::ControllerGetVolumeResponse got;
  ASSERT_TRUE(controller_->ControllerGetVolume(Ctx().get(), get, &got).ok());
  EXPECT_FALSE(got.status().volume_condition().abnormal());
}

// ---- listing and paging ----

TEST_F(ServiceTest, ListVolumesPagesAndRejectsBadTokens) {
  std::set<std::string> created;
  for (int i = 0; i < 5; ++i) created.insert(MustCreateVolume("list-" + std::to_string(i), 1 << 20));
  std::set<std::string> seen;
  std::string token;
  int pages = 0;
  do {
    v1::ListVolumesRequest req;
    req.set_max_entries(2);
    req.set_starting_token(token);
    v1::ListVolumesResponse resp;
    ASSERT_TRUE(controller_->ListVolumes(Ctx().get(), req, &resp).ok());
    EXPECT_LE(resp.entries_size(), 2);
    for (const auto& e : resp.entries()) {
      seen.insert(e.volume().volume_id());
      EXPECT_FALSE(e.status().volume_condition().abnormal());
    }
    token = resp.next_token();
    ++pages;
  } while (!token.empty() && pages < 10);
  EXPECT_EQ(pages, 3);
  EXPECT_EQ(seen, created);

  v1::ListVolumesRequest bad;
  bad.set_starting_token("garbage");
  v1::ListVolumesResponse resp;
  EXPECT_CODE(controller_->ListVolumes(Ctx().get(), bad, &resp), StatusCode::ABORTED);
  bad.set_starting_token("");
  bad.set_max_entries(-1);
  EXPECT_CODE(controller_->ListVolumes(Ctx().get(), bad, &resp), StatusCode::INVALID_ARGUMENT);
}

TEST_F(ServiceTest, ListSnapshotsFiltersAndPages) {
  std::string a = MustCreateVolume("a"), b = MustCreateVolume("b");
  std::string a1 = MustCreateSnapshot("a1", a), a2 = MustCreateSnapshot("a2", a);
  std::string b1 = MustCreateSnapshot("b1", b);

  v1::ListSnapshotsRequest req;
  v1::ListSnapshotsResponse resp;
  ASSERT_TRUE(controller_->ListSnapshots(Ctx().get(), req, &resp).ok());
  EXPECT_EQ(resp.entries_size(), 3);

  req.set_source_volume_id(a);
  resp.Clear();
  ASSERT_TRUE(controller_->ListSnapshots(Ctx().get(), req, &resp).ok());
  EXPECT_EQ(resp.entries_size(), 2);

  req.Clear();
  req.set_snapshot_id(b1);
  resp.Clear();
  ASSERT_TRUE(controller_->ListSnapshots(Ctx().get(), req, &resp).ok());
  ASSERT_EQ(resp.entries_size(), 1);
  EXPECT_EQ(resp.entries(0).snapshot().snapshot_id(), b1);

  req.set_snapshot_id("snap-ffffffffffffffff");
  resp.Clear();
  ASSERT_TRUE(controller_->ListSnapshots(Ctx().get(), req, &resp).ok());
  EXPECT_EQ(resp.entries_size(), 0) << "an unknown id is an empty list, not an error";

  req.Clear();
  req.set_max_entries(2);
  resp.Clear();
  ASSERT_TRUE(controller_->ListSnapshots(Ctx().get(), req, &resp).ok());
  EXPECT_EQ(resp.entries_size(), 2);
  ASSERT_FALSE(resp.next_token().empty());
  req.set_starting_token(resp.next_token());
  resp.Clear();
  ASSERT_TRUE(controller_->ListSnapshots(Ctx().get(), req, &resp).ok());
  EXPECT_EQ(resp.entries_size(), 1);
  EXPECT_TRUE(resp.next_token().empty());

  req.set_starting_token("next");
  EXPECT_CODE(controller_->ListSnapshots(Ctx().get(), req, &resp), StatusCode::ABORTED);
  (void)a1;
  (void)a2;
}

// ---- capacity, expansion, validation, get ----

TEST_F(ServiceTest, GetCapacityReportsTheStoreFilesystem) {
  v1::GetCapacityRequest req;
  v1::GetCapacityResponse resp;
  ASSERT_TRUE(controller_->GetCapacity(Ctx().get(), req, &resp).ok());
  EXPECT_GT(resp.available_capacity(), 0);
  (*req.mutable_accessible_topology()->mutable_segments())["topology.stellarium.io/node"] = "node-9";
  ASSERT_TRUE(controller_->GetCapacity(Ctx().get(), req, &resp).ok());
  EXPECT_EQ(resp.available_capacity(), 0);
  req.Clear();
  (*req.mutable_parameters())["nonsense"] = "1";
  EXPECT_CODE(controller_->GetCapacity(Ctx().get(), req, &resp), StatusCode::INVALID_ARGUMENT);
}

TEST_F(ServiceTest, ControllerExpandVolume) {
  std::string id = MustCreateVolume("grow", 8 << 20);
  v1::ControllerExpandVolumeRequest req;
  req.set_volume_id(id);
  req.mutable_capacity_range()->set_required_bytes(20 << 20);
  *req.mutable_volume_capability() = MountCap();
  v1::ControllerExpandVolumeResponse resp;
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(controller_->ControllerExpandVolume(Ctx().get(), req, &resp).ok());
    EXPECT_EQ(resp.capacity_bytes(), 20 << 20);
    EXPECT_TRUE(resp.node_expansion_required()) << "a filesystem is grown by the node";
  }
  req.mutable_capacity_range()->set_required_bytes(4 << 20);  // smaller: nothing to do
  ASSERT_TRUE(controller_->ControllerExpandVolume(Ctx().get(), req, &resp).ok());
  EXPECT_EQ(resp.capacity_bytes(), 20 << 20);
  *req.mutable_volume_capability() = BlockCap();
  ASSERT_TRUE(controller_->ControllerExpandVolume(Ctx().get(), req, &resp).ok());
  EXPECT_FALSE(resp.node_expansion_required()) << "a block volume not attached anywhere";

  req.mutable_capacity_range()->set_required_bytes(64 << 20);
  req.mutable_capacity_range()->set_limit_bytes(32 << 20);
  EXPECT_CODE(controller_->ControllerExpandVolume(Ctx().get(), req, &resp), StatusCode::OUT_OF_RANGE);
  req.clear_capacity_range();
  EXPECT_CODE(controller_->ControllerExpandVolume(Ctx().get(), req, &resp),
              StatusCode::INVALID_ARGUMENT);
  req.mutable_capacity_range()->set_required_bytes(64 << 20);
  req.set_volume_id("vol-0123456789abcdef");
  EXPECT_CODE(controller_->ControllerExpandVolume(Ctx().get(), req, &resp), StatusCode::NOT_FOUND);
}

TEST_F(ServiceTest, ValidateVolumeCapabilities) {
  v1::Volume v;
  ASSERT_TRUE(CreateVolume(VolumeRequest("validate", 1 << 20), &v).ok());
  v1::ValidateVolumeCapabilitiesRequest req;
  req.set_volume_id(v.volume_id());
  *req.add_volume_capabilities() = MountCap();
  *req.add_volume_capabilities() = BlockCap(Mode::SINGLE_NODE_READER_ONLY);
  *req.mutable_volume_context() = v.volume_context();
  v1::ValidateVolumeCapabilitiesResponse resp;
  ASSERT_TRUE(controller_->ValidateVolumeCapabilities(Ctx().get(), req, &resp).ok());
  EXPECT_TRUE(resp.has_confirmed()) << resp.message();
  EXPECT_EQ(resp.confirmed().volume_capabilities_size(), 2);

  *req.add_volume_capabilities() = MountCap(Mode::MULTI_NODE_MULTI_WRITER);
  resp.Clear();
  ASSERT_TRUE(controller_->ValidateVolumeCapabilities(Ctx().get(), req, &resp).ok());
  EXPECT_FALSE(resp.has_confirmed());
  EXPECT_FALSE(resp.message().empty());

  req.clear_volume_capabilities();
  EXPECT_CODE(controller_->ValidateVolumeCapabilities(Ctx().get(), req, &resp),
              StatusCode::INVALID_ARGUMENT);
  *req.add_volume_capabilities() = MountCap();
  req.set_volume_id("vol-0123456789abcdef");
  EXPECT_CODE(controller_->ValidateVolumeCapabilities(Ctx().get(), req, &resp),
              StatusCode::NOT_FOUND);
}

TEST_F(ServiceTest, ControllerGetVolumeAndUnimplementedRpcs) {
  v1::Volume v;
  ASSERT_TRUE(CreateVolume(VolumeRequest("get-me", 1 << 20), &v).ok());
  v1::ControllerGetVolumeRequest req;
  req.set_volume_id(v.volume_id());
  v1::ControllerGetVolumeResponse resp;
  ASSERT_TRUE(controller_->ControllerGetVolume(Ctx().get(), req, &resp).ok());
  EXPECT_EQ(resp.volume().volume_id(), v.volume_id());
  EXPECT_EQ(resp.volume().volume_context().at("stellarium.io/node"), "node-1");
  EXPECT_FALSE(resp.status().volume_condition().abnormal());
  EXPECT_EQ(resp.status().published_node_ids_size(), 0);
  req.set_volume_id("vol-0123456789abcdef");
  EXPECT_CODE(controller_->ControllerGetVolume(Ctx().get(), req, &resp), StatusCode::NOT_FOUND);

  v1::ControllerPublishVolumeRequest pub;
  v1::ControllerPublishVolumeResponse pub_resp;
  EXPECT_CODE(controller_->ControllerPublishVolume(Ctx().get(), pub, &pub_resp),
              StatusCode::UNIMPLEMENTED);
  v1::ControllerModifyVolumeRequest mod;
  v1::ControllerModifyVolumeResponse mod_resp;
  EXPECT_CODE(controller_->ControllerModifyVolume(Ctx().get(), mod, &mod_resp),
              StatusCode::UNIMPLEMENTED);
}

// ---- Node: everything that fails before touching a device ----

TEST_F(ServiceTest, NodeInfoAndCapabilities) {
  v1::NodeGetInfoResponse info;
  ASSERT_TRUE(node_->NodeGetInfo(Ctx().get(), {}, &info).ok());
  EXPECT_EQ(info.node_id(), "node-1");
  EXPECT_EQ(info.max_volumes_per_node(), 64);
  EXPECT_EQ(info.accessible_topology().segments().at("topology.stellarium.io/node"), "node-1");

  v1::NodeGetCapabilitiesResponse caps;
  ASSERT_TRUE(node_->NodeGetCapabilities(Ctx().get(), {}, &caps).ok());
  std::set<int> types;
  for (const auto& c : caps.capabilities()) types.insert(c.rpc().type());
  using T = v1::NodeServiceCapability::RPC;
  for (auto t : {T::STAGE_UNSTAGE_VOLUME, T::GET_VOLUME_STATS, T::EXPAND_VOLUME, T::VOLUME_CONDITION}) {
    EXPECT_TRUE(types.count(t)) << T::Type_Name(t);
  }
}

TEST_F(ServiceTest, NodeStageValidatesFieldsAndPaths) {
  std::string id = MustCreateVolume("stage-me");
  std::string staging = StagingPath("stage-me");
  EXPECT_CODE(Stage("", staging, MountCap()), StatusCode::INVALID_ARGUMENT);
  EXPECT_CODE(Stage(id, "", MountCap()), StatusCode::INVALID_ARGUMENT);
  EXPECT_CODE(Stage(id, staging, v1::VolumeCapability()), StatusCode::INVALID_ARGUMENT);
  EXPECT_CODE(Stage("vol-0123456789abcdef", staging, MountCap()), StatusCode::NOT_FOUND);
  EXPECT_CODE(Stage(id, root_ + "/elsewhere", MountCap()), StatusCode::PERMISSION_DENIED);
  EXPECT_CODE(Stage(id, kubelet_ + "/../elsewhere", MountCap()), StatusCode::INVALID_ARGUMENT);
  fs::create_directories(root_ + "/outside");
  fs::create_directory_symlink(root_ + "/outside", kubelet_ + "/escape");
  EXPECT_CODE(Stage(id, kubelet_ + "/escape/staging", MountCap()), StatusCode::PERMISSION_DENIED);
  EXPECT_CODE(Stage(id, staging, MountCap(Mode::MULTI_NODE_MULTI_WRITER)),
              StatusCode::INVALID_ARGUMENT);
  EXPECT_CODE(Unstage("", staging), StatusCode::INVALID_ARGUMENT);
  EXPECT_TRUE(Unstage(id, staging).ok()) << "unstaging what is not staged is OK";
}

TEST_F(ServiceTest, NodePublishBeforeStageAndUnknownVolumes) {
  std::string id = MustCreateVolume("publish-me");
  std::string staging = StagingPath("publish-me");
  std::string target = TargetPath("publish-me");
  EXPECT_CODE(Publish(id, staging, target, MountCap()), StatusCode::FAILED_PRECONDITION);
  EXPECT_CODE(Publish("vol-0123456789abcdef", staging, target, MountCap()), StatusCode::NOT_FOUND);
  EXPECT_CODE(Publish(id, staging, "", MountCap()), StatusCode::INVALID_ARGUMENT);
  EXPECT_CODE(Publish(id, "", target, MountCap()), StatusCode::INVALID_ARGUMENT);
  EXPECT_CODE(Publish(id, staging, target, v1::VolumeCapability()), StatusCode::INVALID_ARGUMENT);
  EXPECT_CODE(Publish(id, staging, "/etc/target", MountCap()), StatusCode::PERMISSION_DENIED);
  EXPECT_CODE(Unpublish("vol-0123456789abcdef", target), StatusCode::NOT_FOUND);
  EXPECT_CODE(Unpublish(id, ""), StatusCode::INVALID_ARGUMENT);
  EXPECT_TRUE(Unpublish(id, target).ok()) << "unpublishing what is not published is OK";
}

TEST_F(ServiceTest, NodeStatsOfUnknownVolumesAndPaths) {
  std::string id = MustCreateVolume("stats");
  v1::NodeGetVolumeStatsRequest req;
  v1::NodeGetVolumeStatsResponse resp;
  req.set_volume_id(id);
  EXPECT_CODE(node_->NodeGetVolumeStats(Ctx().get(), req, &resp), StatusCode::INVALID_ARGUMENT);
  req.set_volume_path(TargetPath("stats"));
  EXPECT_CODE(node_->NodeGetVolumeStats(Ctx().get(), req, &resp), StatusCode::NOT_FOUND);
  req.set_volume_id("vol-0123456789abcdef");
  EXPECT_CODE(node_->NodeGetVolumeStats(Ctx().get(), req, &resp), StatusCode::NOT_FOUND);

  v1::NodeExpandVolumeRequest expand;
  v1::NodeExpandVolumeResponse expand_resp;
  expand.set_volume_id(id);
  expand.set_volume_path(TargetPath("stats"));
  EXPECT_CODE(node_->NodeExpandVolume(Ctx().get(), expand, &expand_resp), StatusCode::NOT_FOUND);
  expand.clear_volume_path();
  EXPECT_CODE(node_->NodeExpandVolume(Ctx().get(), expand, &expand_resp),
              StatusCode::INVALID_ARGUMENT);
}

}  // namespace
}  // namespace stellarium::csi::testing
