// Space comes back on a live node: the driver's background collector, and the
// `stellarium` CLI's gc, info, list and fsck against the store the driver holds.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <nlohmann/json.hpp>
#include <thread>

#include "core/process.h"
#include "tests/csi/csi_fixture.h"

namespace stellarium::csi::testing {
namespace {

using json = nlohmann::json;
constexpr char kCli[] = STELLARIUM_CLI_PATH;

template <typename T>
T Unwrap(Result<T> r) {
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  if (!r.ok()) throw std::runtime_error(r.status().ToString());
  return std::move(r).value();
}

class DriverGcTest : public CsiDriverTest {
 protected:
  void SetUp() override {
    gc_interval_seconds_ = 1;
    CsiDriverTest::SetUp();
  }
  uint64_t StoreDiskBytes() {
    uint64_t n = 0;
    for (const auto& f : std::filesystem::recursive_directory_iterator(root_ + "/store")) {
      if (f.is_regular_file()) n += f.file_size();
    }
    return n;
  }
  ProgramResult Cli(const std::vector<std::string>& args) {
    std::vector<std::string> argv = {kCli};
    argv.insert(argv.end(), args.begin(), args.end());
    auto r = RunProgram(argv);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() ? *r : ProgramResult{};
  }
  // An image of `mib` MiB of distinct data blocks under the import root.
  std::string DataImage(const std::string& name, int mib) {
    const std::string path = images_ + "/" + name;
    std::mt19937_64 rng(mib);
    std::string data(static_cast<size_t>(mib) << 20, '\0');
    for (size_t i = 0; i < data.size(); i += 8) {
      const uint64_t v = rng();
      std::memcpy(data.data() + i, &v, 8);
    }
    std::ofstream(path, std::ios::binary).write(data.data(), data.size());
    return path;
  }
};

// The only volume of a store deleted through the driver: while the driver keeps running,
// the store falls below a third of its peak size on disk, and the gc metrics say so.
TEST_F(DriverGcTest, DeletingTheOnlyVolumeGivesTheSpaceBack) {
  v1::Volume vol;
  ASSERT_TRUE(CreateVolume(VolumeRequest("big", 0, {{"image", DataImage("big.img", 96)}}), &vol).ok());
  // The first pass after open is a full one; let it run on the full store first.
  std::this_thread::sleep_for(std::chrono::seconds(2));
  const uint64_t peak = StoreDiskBytes();
  ASSERT_GT(peak, 90u << 20);
  ASSERT_TRUE(DeleteVolume(vol.volume_id()).ok());
  uint64_t now = peak;
  for (int i = 0; i < 120 && now * 3 >= peak; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    now = StoreDiskBytes();
  }
  EXPECT_LT(now * 3, peak) << "store still " << now << " bytes after the delete; peak " << peak;
  ASSERT_NE(driver().collector, nullptr);
  // The metric counts what a pass saw leave the disk; RocksDB may delete the compacted
  // files only after the pass ended, so it can be less than what the test measures.
  EXPECT_GT(driver().collector->totals().chunks_deleted, 20000u);
  EXPECT_EQ(Unwrap(driver().store->GetStats()).chunks, 0u);
}

// Creates and deletes go on, and lose nothing, while the collector reclaims what the
// deletes free.
TEST_F(DriverGcTest, CreateAndDeleteLoadKeepsWorkingWhileCollectionRuns) {
  v1::Volume golden;
  ASSERT_TRUE(CreateVolume(VolumeRequest("golden", 0, {{"image", DataImage("g.img", 32)}}), &golden).ok());
  const std::string snap = MustCreateSnapshot("golden-snap", golden.volume_id());
  std::atomic<int> failures{0};
  std::vector<std::thread> load;
  for (int t = 0; t < 2; ++t) {
    load.emplace_back([&, t] {
      const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(6);
      for (int i = 0; std::chrono::steady_clock::now() < until; ++i) {
        auto req = VolumeRequest("clone-" + std::to_string(t) + "-" + std::to_string(i));
        req.mutable_volume_content_source()->mutable_snapshot()->set_snapshot_id(snap);
        v1::Volume v;
        if (!CreateVolume(req, &v).ok() || !DeleteVolume(v.volume_id()).ok()) ++failures;
        // Data that becomes garbage: a blank volume written through the store.
        auto blank = driver().store->CreateVolume({"scratch-" + std::to_string(t) + "-" + std::to_string(i), 1 << 20, 0, {}});
        if (!blank.ok()) {
          ++failures;
          continue;
        }
        {
          auto h = driver().store->OpenVolume(blank->id);
          std::string data(1 << 20, static_cast<char>('a' + i % 26));
          data[0] = static_cast<char>(t);
          if (!h.ok() || !(*h)->Write(0, data.data(), data.size()).ok()) ++failures;
        }
        if (!driver().store->DeleteVolume(blank->id).ok()) ++failures;
      }
    });
  }
  for (auto& t : load) t.join();
  EXPECT_EQ(failures.load(), 0);
  const CollectorTotals during = driver().collector->totals();
  EXPECT_GE(during.passes, 1u);
  EXPECT_GT(during.layers_reclaimed, 0u) << "reclamation ran while the load did";
  // The golden image reads back whole, and the store is consistent.
  auto h = Unwrap(driver().store->OpenVolume(golden.volume_id()));
  std::string all(h->size(), '\0');
  ASSERT_TRUE(h->Read(0, all.size(), all.data()).ok());
  std::ifstream f(images_ + "/g.img", std::ios::binary);
  EXPECT_EQ(all, std::string(std::istreambuf_iterator<char>(f), {}));
  auto rep = Unwrap(driver().store->Fsck());
  for (const auto& e : rep.errors) ADD_FAILURE() << "fsck: " << e;
}

// The CLI on the store the driver holds: list, info and fsck read a read-only view; gc
// asks the driver through the store's admin socket.
TEST_F(DriverGcTest, TheCliReadsAndCollectsALiveDriversStore) {
  const std::string store = root_ + "/store";
  v1::Volume vol;
  ASSERT_TRUE(CreateVolume(VolumeRequest("disk", 0, {{"image", DataImage("d.img", 8)}}), &vol).ok());
  auto list = Cli({"list", "--store", store, "--json"});
  ASSERT_EQ(list.exit_code, 0) << list.output;
  EXPECT_NE(list.output.find(vol.volume_id()), std::string::npos) << list.output;
  EXPECT_NE(list.output.find("read-only view"), std::string::npos) << "said on stderr";
  auto info = Cli({"info", "--store", store, "disk", "--json"});
  EXPECT_EQ(info.exit_code, 0) << info.output;
  EXPECT_NE(info.output.find("\"mapped_blocks\""), std::string::npos) << info.output;
  auto fsck = Cli({"fsck", "--store", store});
  EXPECT_EQ(fsck.exit_code, 0) << fsck.output;
  EXPECT_NE(fsck.output.find("no problems"), std::string::npos) << fsck.output;
  // The view is read-only: a change through it is refused and the driver's store stays.
  auto del = Cli({"delete", "--store", store, "--volume", "disk"});
  EXPECT_NE(del.exit_code, 0);
  EXPECT_TRUE(driver().store->GetVolume(vol.volume_id()).ok());

  ASSERT_TRUE(DeleteVolume(vol.volume_id()).ok());
  auto gc = Cli({"gc", "--store", store, "--json"});
  ASSERT_EQ(gc.exit_code, 0) << gc.output;
  EXPECT_NE(gc.output.find("asking it to collect"), std::string::npos) << gc.output;
  EXPECT_EQ(Unwrap(driver().store->GetStats()).chunks, 0u);
}

}  // namespace
}  // namespace stellarium::csi::testing
