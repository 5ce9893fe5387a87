// Many calls at once through the real server: the right number of volumes, no errors,
// and a store that checks clean afterwards.
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <set>
#include <thread>

#include "core/store.h"
#include "tests/csi/csi_fixture.h"

namespace stellarium::csi::testing {
namespace {

// Runs fn(i) for i in [0, n) on n threads released together.
template <typename Fn>
void RunTogether(int n, Fn fn) {
  std::mutex mu;
  std::condition_variable cv;
  bool go = false;
  std::vector<std::thread> threads;
  for (int i = 0; i < n; ++i) {
    threads.emplace_back([&, i] {
      {
        std::unique_lock<std::mutex> lock(mu);
        cv.wait(lock, [&] { return go; });
      }
      fn(i);
    });
  }
  {
    std::lock_guard<std::mutex> lock(mu);
    go = true;
  }
  cv.notify_all();
  for (auto& t : threads) t.join();
}

class ConcurrencyTest : public CsiDriverTest {
 protected:
  void ExpectCleanFsck() {
    auto report = driver().store->Fsck();
    ASSERT_TRUE(report.ok()) << report.status().ToString();
    EXPECT_TRUE(report->ok()) << report->errors.size() << " errors, first: "
                              << (report->errors.empty() ? "" : report->errors[0]);
  }
};

TEST_F(ConcurrencyTest, HundredClonesOfOneSnapshot) {
  std::string source = MustCreateVolume("golden", 64 << 20);
  std::string snap = MustCreateSnapshot("golden-snap", source);
  std::mutex mu;
  std::set<std::string> ids;
  std::atomic<int> failures{0};
  RunTogether(100, [&](int i) {
    auto req = VolumeRequest("clone-" + std::to_string(i));
    req.mutable_volume_content_source()->mutable_snapshot()->set_snapshot_id(snap);
    v1::Volume v;
    grpc::Status st = CreateVolume(req, &v);
    if (!st.ok()) {
      ++failures;
      ADD_FAILURE() << "clone-" << i << ": " << st.error_message();
      return;
    }
    std::lock_guard<std::mutex> lock(mu);
    ids.insert(v.volume_id());
  });
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(ids.size(), 100u);
  auto volumes = driver().store->ListVolumes();
  ASSERT_TRUE(volumes.ok());
  EXPECT_EQ(volumes->size(), 101u);
  ExpectCleanFsck();
}

TEST_F(ConcurrencyTest, HundredCreatesOfOneNameMakeOneVolume) {
  std::string source = MustCreateVolume("golden", 64 << 20);
  std::string snap = MustCreateSnapshot("golden-snap", source);
  std::mutex mu;
  std::set<std::string> ids;
  std::atomic<int> failures{0};
  RunTogether(100, [&](int) {
    auto req = VolumeRequest("the-one");
    req.mutable_volume_content_source()->mutable_snapshot()->set_snapshot_id(snap);
    v1::Volume v;
    grpc::Status st = CreateVolume(req, &v);
    if (!st.ok()) {
      ++failures;
      ADD_FAILURE() << st.error_message();
      return;
    }
    std::lock_guard<std::mutex> lock(mu);
    ids.insert(v.volume_id());
  });
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(ids.size(), 1u) << "every caller got the same volume";
  auto volumes = driver().store->ListVolumes();
  ASSERT_TRUE(volumes.ok());
  EXPECT_EQ(volumes->size(), 2u);
  ExpectCleanFsck();
}

TEST_F(ConcurrencyTest, ConcurrentSnapshotsAndDeletesOfManyVolumes) {
  std::vector<std::string> vols;
  for (int i = 0; i < 20; ++i) vols.push_back(MustCreateVolume("v" + std::to_string(i), 8 << 20));
  std::atomic<int> failures{0};
  RunTogether(40, [&](int i) {
    const std::string& vol = vols[i % 20];
    if (i < 20) {
      v1::CreateSnapshotRequest req;
      req.set_name("s" + std::to_string(i));
      req.set_source_volume_id(vol);
      v1::CreateSnapshotResponse resp;
      if (!controller_->CreateSnapshot(Ctx().get(), req, &resp).ok()) ++failures;
    } else {
      auto req = VolumeRequest("c" + std::to_string(i));
      req.mutable_volume_content_source()->mutable_volume()->set_volume_id(vol);
      if (!CreateVolume(req).ok()) ++failures;
    }
  });
  EXPECT_EQ(failures.load(), 0);
  RunTogether(20, [&](int i) {
    if (!DeleteVolume(vols[i]).ok()) ++failures;
  });
  EXPECT_EQ(failures.load(), 0);
  auto volumes = driver().store->ListVolumes();
  ASSERT_TRUE(volumes.ok());
  EXPECT_EQ(volumes->size(), 20u) << "the clones outlive their sources";
  ExpectCleanFsck();
}

}  // namespace
}  // namespace stellarium::csi::testing
