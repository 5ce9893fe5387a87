// Runtime descriptors: Kata mountInfo.json (path, modes, keys, removal), Firecracker
// drive JSON and the Cloud Hypervisor --disk argument. The JSON is parsed back with
// yaml-cpp (JSON is YAML) to check keys and values, not substrings.
#include "csi/node/runtime_descriptors.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <yaml-cpp/yaml.h>

#include <fstream>

#include "tests/node/test_util.h"

namespace stellarium::node {
namespace {

using stellarium::testing::TempDir;

const char kTarget[] = "/var/lib/kubelet/pods/abc/volumes/kubernetes.io~csi/pvc-1/mount";

std::string Slurp(const std::string& path) {
  std::ifstream in(path);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

TEST(DescriptorsTest, Base64UrlMatchesRfc4648WithPadding) {
  // Expected values from RFC 4648 §10 test vectors, with the URL alphabet.
  EXPECT_EQ(Base64Url(""), "");
  EXPECT_EQ(Base64Url("f"), "Zg==");
  EXPECT_EQ(Base64Url("fo"), "Zm8=");
  EXPECT_EQ(Base64Url("foo"), "Zm9v");
  EXPECT_EQ(Base64Url("foobar"), "Zm9vYmFy");
  EXPECT_EQ(Base64Url("/a?>"), "L2E_Pg==");  // '_' and '-' replace '/' and '+'
  EXPECT_EQ(Base64Url("\xfb\xff"), "-_8=");
}

TEST(DescriptorsTest, KataMountInfoHasPathModesKeysAndIsRemoved) {
  TempDir tmp;
  std::string root = tmp.path() + "/direct-volumes";
  KataMountInfo info;
  info.volume_type = "block";
  info.device = "/dev/loop7";
  info.fstype = "ext4";
  info.metadata = {{"volume-id", "vol-00000000000000ab"}, {"note", "quote \" and \\ back"}};
  info.options = {"rw", "noatime"};
  auto file = WriteKataMountInfo(root, kTarget, info);
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  std::string dir =
      root +
      "/L3Zhci9saWIva3ViZWxldC9wb2RzL2FiYy92b2x1bWVzL2t1YmVybmV0ZXMuaW9-Y3NpL3B2Yy0xL21vdW50";
  EXPECT_EQ(*file, dir + "/mountInfo.json");

  struct stat st;
  ASSERT_EQ(stat(dir.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0700u);
  ASSERT_EQ(stat(file->c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0600u);

  YAML::Node j = YAML::Load(Slurp(*file));
  ASSERT_TRUE(j.IsMap());
  EXPECT_EQ(j.size(), 5u);
  EXPECT_EQ(j["volume-type"].as<std::string>(), "block");
  EXPECT_EQ(j["device"].as<std::string>(), "/dev/loop7");
  EXPECT_EQ(j["fstype"].as<std::string>(), "ext4");
  EXPECT_EQ(j["metadata"]["volume-id"].as<std::string>(), "vol-00000000000000ab");
  EXPECT_EQ(j["metadata"]["note"].as<std::string>(), "quote \" and \\ back");
  ASSERT_EQ(j["options"].size(), 2u);
  EXPECT_EQ(j["options"][1].as<std::string>(), "noatime");

  // Rewriting (a retried publish) replaces it in place.
  info.device = "/dev/loop8";
  ASSERT_TRUE(WriteKataMountInfo(root, kTarget, info).ok());
  EXPECT_EQ(YAML::Load(Slurp(*file))["device"].as<std::string>(), "/dev/loop8");

  ASSERT_TRUE(RemoveKataMountInfo(root, kTarget).ok());
  EXPECT_NE(stat(file->c_str(), &st), 0);
  EXPECT_NE(stat(dir.c_str(), &st), 0);
  EXPECT_TRUE(RemoveKataMountInfo(root, kTarget).ok());  // idempotent
  EXPECT_EQ(stat(root.c_str(), &st), 0);                 // the shared root stays
}

TEST(DescriptorsTest, KataBadInputWritesNothing) {
  TempDir tmp;
  std::string root = tmp.path() + "/dv";
  KataMountInfo info{"block", "/dev/loop1", "ext4", {}, {}};
  EXPECT_EQ(WriteKataMountInfo(root, "relative/path", info).status().code(),
            StatusCode::kInvalidArgument);
  KataMountInfo no_device{"block", "", "ext4", {}, {}};
  auto r = WriteKataMountInfo(root, kTarget, no_device);
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find(kTarget), std::string::npos);
  struct stat st;
  EXPECT_NE(stat(root.c_str(), &st), 0);  // nothing created
}

// JSON text is UTF-8: a value that is not (a path with a stray byte) is refused with a
// message naming the descriptor, and no file is written.
TEST(DescriptorsTest, ValueThatIsNotUtf8IsRefusedAndWritesNothing) {
  TempDir tmp;
  std::string root = tmp.path() + "/dv";
  KataMountInfo info{"spdkvol", "/run/v\xff.sock", "ext4", {}, {}};
  auto r = WriteKataMountInfo(root, kTarget, info);
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("kata direct volume"), std::string::npos)
      << r.status().message();
  struct stat st;
  EXPECT_NE(stat(root.c_str(), &st), 0);  // nothing created
  auto drive = FirecrackerDriveJson({.drive_id = "pvc_1", .socket = "/run/v\xff.sock"});
  EXPECT_EQ(drive.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(drive.status().message().find("firecracker drive pvc_1"), std::string::npos)
      << drive.status().message();
}

TEST(DescriptorsTest, FirecrackerDriveForBlockDeviceAndVhostUser) {
  auto block = FirecrackerDriveJson(
      {.drive_id = "pvc_1", .path_on_host = "/dev/loop3", .is_read_only = true});
  ASSERT_TRUE(block.ok()) << block.status().ToString();
  YAML::Node j = YAML::Load(*block);
  EXPECT_EQ(j["drive_id"].as<std::string>(), "pvc_1");
  EXPECT_EQ(j["path_on_host"].as<std::string>(), "/dev/loop3");
  EXPECT_FALSE(j["socket"]);
  EXPECT_TRUE(j["is_read_only"].as<bool>());
  EXPECT_FALSE(j["is_root_device"].as<bool>());

  auto vu = FirecrackerDriveJson(
      {.drive_id = "rootfs", .socket = "/run/stellarium/v.sock", .is_root_device = true});
  ASSERT_TRUE(vu.ok());
  j = YAML::Load(*vu);
  EXPECT_EQ(j["socket"].as<std::string>(), "/run/stellarium/v.sock");
  EXPECT_FALSE(j["path_on_host"]);
  EXPECT_TRUE(j["is_root_device"].as<bool>());

  EXPECT_FALSE(FirecrackerDriveJson({.drive_id = "bad-id", .path_on_host = "/dev/loop3"}).ok());
  EXPECT_FALSE(
      FirecrackerDriveJson({.drive_id = "both", .path_on_host = "/a", .socket = "/b"}).ok());
  EXPECT_FALSE(FirecrackerDriveJson({.drive_id = "none"}).ok());
}

TEST(DescriptorsTest, CloudHypervisorDiskArgument) {
  auto block = CloudHypervisorDiskArg({.path = "/dev/loop3", .readonly = true});
  ASSERT_TRUE(block.ok());
  EXPECT_EQ(*block, "path=/dev/loop3,readonly=on");
  auto vu = CloudHypervisorDiskArg({.socket = "/run/s/v.sock", .num_queues = 2, .id = "pvc1"});
  ASSERT_TRUE(vu.ok());
  EXPECT_EQ(*vu, "vhost_user=on,socket=/run/s/v.sock,num_queues=2,readonly=off,id=pvc1");
  EXPECT_EQ(CloudHypervisorDiskArg({.path = "/x,readonly=off"}).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_FALSE(CloudHypervisorDiskArg({}).ok());
}

TEST(DescriptorsTest, DescriptorFilesAreWrittenAtomicallyAndRemovedIdempotently) {
  TempDir tmp;
  std::string path = tmp.path() + "/pub/vol/firecracker-drive.json";
  ASSERT_TRUE(WriteDescriptorFile(path, "{\"a\":1}\n").ok());
  EXPECT_EQ(Slurp(path), "{\"a\":1}\n");
  struct stat st;
  ASSERT_EQ(stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  EXPECT_NE(stat((path + ".tmp").c_str(), &st), 0);  // no temporary left behind
  ASSERT_TRUE(RemoveDescriptorFile(path).ok());
  EXPECT_NE(stat(path.c_str(), &st), 0);
  EXPECT_TRUE(RemoveDescriptorFile(path).ok());
}

}  // namespace
}  // namespace stellarium::node
