// Error codes and sizes as the CSI spec's tables say (issue 18, "Error codes" and
// "Oversized input"): ids and names past the driver's limit are INVALID_ARGUMENT before
// any lookup, with a short message and a short log line; over-long paths are
// INVALID_ARGUMENT; NodeGetVolumeStats and NodeExpandVolume look the volume up before the
// path. Through the real driver over gRPC; nothing here mounts.
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>

#include <climits>
#include <filesystem>
#include <functional>
#include <sstream>

#include "csi/logging.h"
#include "tests/csi/csi_fixture.h"

namespace stellarium::csi::testing {
namespace {

namespace fs = std::filesystem;
using grpc::StatusCode;

constexpr size_t kHuge = 1 << 20;       // 1 MiB
constexpr size_t kShortMessage = 1024;  // what a refusal's message may take
constexpr size_t kShortLogLine = 4096;  // what one log line may take

class CsiRequestLimitsTest : public CsiDriverTest {
 protected:
  void TearDown() override {
    CsiDriverTest::TearDown();
    SetupLogging("warn", "text");  // log_ goes with this test
  }

  // Sends the driver's log to `log_` through the same set-up the driver uses.
  void CaptureLog() {
    log_.str("");
    SetupLogging("warn", "text", std::make_shared<spdlog::sinks::ostream_sink_mt>(log_));
  }
  std::vector<std::string> LogLines() {
    spdlog::default_logger()->flush();
    std::vector<std::string> lines;
    std::istringstream in(log_.str());
    for (std::string line; std::getline(in, line);) lines.push_back(line);
    return lines;
  }

  std::ostringstream log_;
};

TEST_F(CsiRequestLimitsTest, HugeIdsAreRefusedWithShortMessagesAndLogLines) {
  const std::string huge(kHuge, 'v');
  std::string id = MustCreateVolume("real");
  std::string staging = StagingPath("real");
  std::string target = TargetPath("real");
  CaptureLog();

  std::vector<std::pair<std::string, std::function<grpc::Status()>>> calls = {
      {"DeleteVolume", [&] { return DeleteVolume(huge); }},
      {"ControllerGetVolume",
       [&] {
         v1::ControllerGetVolumeRequest req;
         req.set_volume_id(huge);
         v1::ControllerGetVolumeResponse resp;
         return controller_->ControllerGetVolume(Ctx().get(), req, &resp);
       }},
      {"ControllerExpandVolume",
       [&] {
         v1::ControllerExpandVolumeRequest req;
         req.set_volume_id(huge);
         req.mutable_capacity_range()->set_required_bytes(1 << 30);
         v1::ControllerExpandVolumeResponse resp;
         return controller_->ControllerExpandVolume(Ctx().get(), req, &resp);
       }},
      {"ValidateVolumeCapabilities",
       [&] {
         v1::ValidateVolumeCapabilitiesRequest req;
         req.set_volume_id(huge);
         *req.add_volume_capabilities() = MountCap();
         v1::ValidateVolumeCapabilitiesResponse resp;
         return controller_->ValidateVolumeCapabilities(Ctx().get(), req, &resp);
       }},
      {"CreateVolume name", [&] { return CreateVolume(VolumeRequest(huge)); }},
      {"CreateVolume source snapshot",
       [&] {
         auto req = VolumeRequest("from-huge");
         req.mutable_volume_content_source()->mutable_snapshot()->set_snapshot_id(huge);
         return CreateVolume(req);
       }},
      {"CreateSnapshot name",
       [&] {
         v1::CreateSnapshotRequest req;
         req.set_name(huge);
         req.set_source_volume_id(id);
         v1::CreateSnapshotResponse resp;
         return controller_->CreateSnapshot(Ctx().get(), req, &resp);
       }},
      {"CreateSnapshot source",
       [&] {
         v1::CreateSnapshotRequest req;
         req.set_name("snap");
         req.set_source_volume_id(huge);
         v1::CreateSnapshotResponse resp;
         return controller_->CreateSnapshot(Ctx().get(), req, &resp);
       }},
      {"DeleteSnapshot",
       [&] {
         v1::DeleteSnapshotRequest req;
         req.set_snapshot_id(huge);
         v1::DeleteSnapshotResponse resp;
         return controller_->DeleteSnapshot(Ctx().get(), req, &resp);
       }},
      {"GetSnapshot",
       [&] {
         v1::GetSnapshotRequest req;
         req.set_snapshot_id(huge);
         v1::GetSnapshotResponse resp;
         return controller_->GetSnapshot(Ctx().get(), req, &resp);
       }},
      {"ListSnapshots",
       [&] {
         v1::ListSnapshotsRequest req;
         req.set_source_volume_id(huge);
         v1::ListSnapshotsResponse resp;
         return controller_->ListSnapshots(Ctx().get(), req, &resp);
       }},
      {"NodeStageVolume", [&] { return Stage(huge, staging, MountCap()); }},
      {"NodeUnstageVolume", [&] { return Unstage(huge, staging); }},
      {"NodePublishVolume", [&] { return Publish(huge, staging, target, MountCap()); }},
      {"NodeUnpublishVolume", [&] { return Unpublish(huge, target); }},
      {"NodeGetVolumeStats",
       [&] {
         v1::NodeGetVolumeStatsRequest req;
         req.set_volume_id(huge);
         req.set_volume_path(target);
         v1::NodeGetVolumeStatsResponse resp;
         return node_->NodeGetVolumeStats(Ctx().get(), req, &resp);
       }},
      {"NodeExpandVolume", [&] {
         v1::NodeExpandVolumeRequest req;
         req.set_volume_id(huge);
         req.set_volume_path(target);
         v1::NodeExpandVolumeResponse resp;
         return node_->NodeExpandVolume(Ctx().get(), req, &resp);
       }}};
  for (const auto& [what, call] : calls) {
    SCOPED_TRACE(what);
    grpc::Status st = call();
    EXPECT_EQ(st.error_code(), StatusCode::INVALID_ARGUMENT) << st.error_message().substr(0, 300);
    EXPECT_LE(st.error_message().size(), kShortMessage) << st.error_message().substr(0, 300);
    EXPECT_NE(st.error_message().find("(1048576 bytes)"), std::string::npos)
        << st.error_message().substr(0, 300);
  }
  // Nothing was made or taken away.
  auto volumes = driver().store->ListVolumes();
  ASSERT_TRUE(volumes.ok());
  ASSERT_EQ(volumes->size(), 1u);
  EXPECT_EQ((*volumes)[0].id, id);
  EXPECT_TRUE(driver().store->ListSnapshots()->empty());

  std::vector<std::string> lines = LogLines();
  EXPECT_GE(lines.size(), calls.size()) << "every refused call logs one line";
  for (const std::string& line : lines) {
    EXPECT_LE(line.size(), kShortLogLine) << line.substr(0, 300);
    EXPECT_NE(line.find("(1048576 bytes)"), std::string::npos) << line.substr(0, 300);
  }
}

TEST_F(CsiRequestLimitsTest, IdsAndNamesUpToTheLimitWork) {
  // 1 KiB: the documented limit (eight times the 128 bytes the CSI spec asks for).
  v1::Volume v;
  ASSERT_TRUE(CreateVolume(VolumeRequest(std::string(1024, 'n')), &v).ok());
  EXPECT_FALSE(MustCreateSnapshot(std::string(1024, 's'), v.volume_id()).empty());
  grpc::Status st = CreateVolume(VolumeRequest(std::string(1025, 'n')));
  EXPECT_EQ(st.error_code(), StatusCode::INVALID_ARGUMENT) << st.error_message();
  EXPECT_NE(st.error_message().find("1024"), std::string::npos) << st.error_message();
  // An unknown id at the limit is still only unknown.
  EXPECT_EQ(DeleteVolume(std::string(1024, 'x')).error_code(), StatusCode::OK);
  v1::ControllerGetVolumeRequest get;
  get.set_volume_id(std::string(1024, 'x'));
  v1::ControllerGetVolumeResponse got;
  EXPECT_EQ(controller_->ControllerGetVolume(Ctx().get(), get, &got).error_code(),
            StatusCode::NOT_FOUND);
}

// CreateVolume took any name the CSI spec does not ban: '/', ".", "..", a newline.
// CSI names now follow the CLI's rule (core/provision.h ValidateName).
TEST_F(CsiRequestLimitsTest, NamesFollowTheCliRule) {
  CaptureLog();
  for (const std::string& bad : {std::string("a/b"), std::string("."), std::string(".."),
                                 std::string("line\nbreak"), std::string("tab\there")}) {
    SCOPED_TRACE(bad);
    EXPECT_EQ(CreateVolume(VolumeRequest(bad)).error_code(), StatusCode::INVALID_ARGUMENT);
    v1::CreateSnapshotRequest req;
    req.set_name(bad);
    req.set_source_volume_id("vol-0123456789abcdef");
    v1::CreateSnapshotResponse resp;
    EXPECT_EQ(controller_->CreateSnapshot(Ctx().get(), req, &resp).error_code(),
              StatusCode::INVALID_ARGUMENT);
  }
  EXPECT_TRUE(driver().store->ListVolumes()->empty());
  // A line break in a request does not break the driver's log lines.
  std::vector<std::string> lines = LogLines();
  EXPECT_EQ(lines.size(), 10u);
  for (const std::string& line : lines)
    EXPECT_NE(line.find(" rpc=Create"), std::string::npos) << line;
  std::string id = MustCreateVolume("pvc-8f3c2a8e-5d1b-4c6e-9a57-0e2b6d4f1c3a");
  EXPECT_FALSE(MustCreateSnapshot("snapshot-1b2c3d4e-..dots-are-fine", id).empty());
}

// The spec's tables: NOT_FOUND when the volume does not exist, whatever the path; and
// NOT_FOUND when it is not staged or published at that path.
TEST_F(CsiRequestLimitsTest, StatsAndExpandLookTheVolumeUpFirst) {
  std::string id = MustCreateVolume("known");
  const std::string unknown = "vol-0123456789abcdef";
  for (const std::string& path :
       {std::string("some/path"), std::string("/etc"), kubelet_ + "/../elsewhere",
        root_ + "/outside", TargetPath("nowhere")}) {
    for (const std::string& volume : {unknown, id}) {
      SCOPED_TRACE(volume + " at " + path);
      v1::NodeGetVolumeStatsRequest stats;
      stats.set_volume_id(volume);
      stats.set_volume_path(path);
      v1::NodeGetVolumeStatsResponse stats_resp;
      grpc::Status st = node_->NodeGetVolumeStats(Ctx().get(), stats, &stats_resp);
      EXPECT_EQ(st.error_code(), StatusCode::NOT_FOUND) << st.error_message();

      v1::NodeExpandVolumeRequest expand;
      expand.set_volume_id(volume);
      expand.set_volume_path(path);
      v1::NodeExpandVolumeResponse expand_resp;
      st = node_->NodeExpandVolume(Ctx().get(), expand, &expand_resp);
      EXPECT_EQ(st.error_code(), StatusCode::NOT_FOUND) << st.error_message();
    }
  }
}

// A path past PATH_MAX, or with a component past NAME_MAX, answered INTERNAL ("File name
// too long") or a lookup's code.
TEST_F(CsiRequestLimitsTest, OverlongPathsAreInvalidArguments) {
  std::string id = MustCreateVolume("long");
  const std::string long_component = kubelet_ + "/pods/" + std::string(NAME_MAX + 1, 'c');
  std::string long_path = kubelet_;
  while (long_path.size() < PATH_MAX) long_path += "/" + std::string(200, 'p');
  for (const std::string& path : {long_component, long_path}) {
    SCOPED_TRACE(path.size());
    v1::NodeGetVolumeStatsRequest stats;
    stats.set_volume_id(id);
    stats.set_volume_path(path);
    v1::NodeGetVolumeStatsResponse stats_resp;
    grpc::Status st = node_->NodeGetVolumeStats(Ctx().get(), stats, &stats_resp);
    EXPECT_EQ(st.error_code(), StatusCode::INVALID_ARGUMENT) << st.error_message();
    EXPECT_LE(st.error_message().size(), kShortMessage);

    v1::NodeExpandVolumeRequest expand;
    expand.set_volume_id(id);
    expand.set_volume_path(path);
    v1::NodeExpandVolumeResponse expand_resp;
    st = node_->NodeExpandVolume(Ctx().get(), expand, &expand_resp);
    EXPECT_EQ(st.error_code(), StatusCode::INVALID_ARGUMENT) << st.error_message();

    st = Stage(id, path, MountCap());
    EXPECT_EQ(st.error_code(), StatusCode::INVALID_ARGUMENT) << st.error_message();
    EXPECT_LE(st.error_message().size(), kShortMessage);
    EXPECT_EQ(Unstage(id, path).error_code(), StatusCode::INVALID_ARGUMENT);
    EXPECT_EQ(Publish(id, StagingPath("long"), path, MountCap()).error_code(),
              StatusCode::INVALID_ARGUMENT);
    EXPECT_EQ(Unpublish(id, path).error_code(), StatusCode::INVALID_ARGUMENT);
    EXPECT_EQ(
        CreateVolume(VolumeRequest("long-image", 0, {{"image", images_ + path}})).error_code(),
        StatusCode::INVALID_ARGUMENT);
  }
  EXPECT_FALSE(driver().node_state->Get(id).has_value());
}

}  // namespace
}  // namespace stellarium::csi::testing
