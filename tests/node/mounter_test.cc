// Mounter's view of the mount table (libmount over /proc/self/mountinfo) against real
// mounts: the kernel escapes space, tab, newline and backslash in mount points and
// sources, and the mount on top of a stack is the one reported.
#include "csi/node/mounter.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>

#include "tests/node/test_util.h"

namespace stellarium::node {
namespace {

using stellarium::testing::TempDir;

TEST(MounterTest, MountPointsAndSourcesWithEscapedCharactersAreFound) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root (mounts a tmpfs)";
  TempDir tmp;
  const std::string target = tmp.path() + "/a b\\c\td";
  std::filesystem::create_directories(target);
  Mounter m;
  ASSERT_EQ(m.IsMountPoint(target).value(), false);
  EXPECT_EQ(m.MountSource(target).status().code(), StatusCode::kNotFound);

  ASSERT_TRUE(m.Mount("stl src\\1", target, "tmpfs", {"size=1m"}).ok());
  EXPECT_TRUE(m.IsMountPoint(target).value());
  EXPECT_FALSE(m.IsMountPoint(tmp.path()).value());
  EXPECT_EQ(m.MountSource(target).value(), "stl src\\1");

  // A second mount on the same point: the top one's source is reported.
  ASSERT_TRUE(m.Mount("stl top", target, "tmpfs", {"size=1m"}).ok());
  EXPECT_EQ(m.MountSource(target).value(), "stl top");

  ASSERT_TRUE(m.Unmount(target).ok());
  EXPECT_EQ(m.MountSource(target).value(), "stl src\\1");
  ASSERT_TRUE(m.Unmount(target).ok());
  EXPECT_FALSE(m.IsMountPoint(target).value());
  EXPECT_TRUE(m.Unmount(target).ok());  // nothing mounted: OK
}

}  // namespace
}  // namespace stellarium::node
