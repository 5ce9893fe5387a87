// Crash safety: SIGKILL a worker (crash_worker) in the middle of writes, clones,
// snapshots, imports and flattening, at many random points; after each kill the store
// opens, fsck reports no error, and every block reads as one of the contents written.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <thread>

#include "core/image_source.h"
#include "tests/core/crash_workload.h"
#include "tests/core/test_util.h"

namespace stellarium {
namespace {

using testing::CrashBlock;
using testing::CrashImage;
using testing::kCrashBlocks;
using testing::kCrashBs;
using testing::TempDir;
using testing::Unwrap;

pid_t Spawn(const std::string& store, int seed) {
  pid_t pid = fork();
  if (pid == 0) {
    std::string s = std::to_string(seed);
    execl(STELLARIUM_CRASH_WORKER, STELLARIUM_CRASH_WORKER, store.c_str(), s.c_str(), (char*)nullptr);
    _exit(127);
  }
  return pid;
}

TEST(CrashTest, KillAtRandomPointsLeavesAConsistentStore) {
  TempDir dir;
  StoreOptions o;
  o.path = dir / "store";
  {
    auto store = Unwrap(Store::Open(o));
    CreateVolumeRequest r;
    r.name = "v";
    r.size_bytes = kCrashBlocks * kCrashBs;
    auto v = Unwrap(store->CreateVolume(r));
    auto h = Unwrap(store->OpenVolume(v.id));
    for (uint64_t i = 0; i < kCrashBlocks; ++i) {
      std::string b = CrashBlock(i, 0);
      ASSERT_TRUE(h->Write(i * kCrashBs, b.data(), b.size()).ok());
    }
    h.reset();
    ASSERT_TRUE(Unwrap(store->CreateSnapshot("base", v.id)).id.size() > 0);
  }
  std::mt19937_64 rng(2024);
  const int kRounds = 25;
  int killed_running = 0;
  for (int round = 1; round <= kRounds; ++round) {
    pid_t pid = Spawn(o.path, round);
    ASSERT_GT(pid, 0);
    std::this_thread::sleep_for(std::chrono::milliseconds(30 + rng() % 400));
    kill(pid, SIGKILL);
    int status = 0;
    waitpid(pid, &status, 0);
    if (WIFSIGNALED(status)) ++killed_running;
    else ADD_FAILURE() << "worker exited by itself with " << WEXITSTATUS(status) << " in round " << round;

    auto store = Unwrap(Store::Open(o));
    auto rep = Unwrap(store->Fsck());
    for (const auto& e : rep.errors) ADD_FAILURE() << "round " << round << ": fsck: " << e;
    // Every block of v is some generation's content of that block.
    auto v = Unwrap(store->FindVolumeByName("v"));
    auto h = Unwrap(store->OpenVolume(v.id));
    std::string b(kCrashBs, '\0');
    for (uint64_t i = 0; i < kCrashBlocks; ++i) {
      ASSERT_TRUE(h->Read(i * kCrashBs, kCrashBs, b.data()).ok());
      uint64_t bi, g;
      std::memcpy(&bi, b.data(), 8);
      std::memcpy(&g, b.data() + 8, 8);
      ASSERT_EQ(bi, i) << "round " << round;
      ASSERT_EQ(b, CrashBlock(i, g)) << "round " << round << " block " << i << " is torn";
    }
    h.reset();
    // Clones of the base snapshot read as the base; imports that exist are complete.
    for (const auto& vol : Unwrap(store->ListVolumes())) {
      if (vol.name.rfind("c-", 0) == 0) {
        auto c = Unwrap(store->OpenVolume(vol.id));
        for (uint64_t i = 0; i < kCrashBlocks; i += 9) {
          ASSERT_TRUE(c->Read(i * kCrashBs, kCrashBs, b.data()).ok());
          ASSERT_EQ(b, CrashBlock(i, 0)) << vol.name;
        }
      } else if (vol.name.rfind("i-", 0) == 0) {
        uint64_t k = std::stoull(vol.name.substr(2));
        auto c = Unwrap(store->OpenVolume(vol.id));
        std::string all(c->size(), '\0');
        ASSERT_TRUE(c->Read(0, all.size(), all.data()).ok());
        ASSERT_EQ(all, CrashImage(k)) << vol.name;
      }
    }
    if (round % 5 == 0) {
      ASSERT_TRUE(store->Gc().ok());
      auto after = Unwrap(store->Fsck());
      EXPECT_TRUE(after.ok());
      EXPECT_EQ(after.dead_layers, 0u);
    }
  }
  EXPECT_GE(killed_running, kRounds - 1);
}

}  // namespace
}  // namespace stellarium
