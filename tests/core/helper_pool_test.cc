// HelperPool: work goes to idle helpers only; a busy pool says no.
#include "core/helper_pool.h"

#include <gtest/gtest.h>
#include <pthread.h>

#include <atomic>
#include <chrono>
#include <string>

namespace stellarium {
namespace {

TEST(HelperPoolTest, IdleHelpersTakeWorkAndBusyOnesRefuseIt) {
  HelperPool pool(2, "test-helper");
  std::promise<void> release;
  std::shared_future<void> released = release.get_future().share();
  std::atomic<int> ran{0};
  std::future<void> a, b, c;
  // Give the helpers a moment to be waiting; TryRun may refuse until they are.
  auto try_until = [&](std::future<void>* done) {
    for (int i = 0; i < 1000; ++i) {
      if (pool.TryRun(
              [&] {
                released.wait();
                ++ran;
              },
              done))
        return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    return false;
  };
  ASSERT_TRUE(try_until(&a));
  ASSERT_TRUE(try_until(&b));
  EXPECT_FALSE(pool.TryRun([&] { ++ran; }, &c)) << "both helpers are busy";
  release.set_value();
  a.wait();
  b.wait();
  EXPECT_EQ(ran.load(), 2);
  ASSERT_TRUE(try_until(&c)) << "a helper is idle again";
  c.wait();
  EXPECT_EQ(ran.load(), 3);
}

TEST(HelperPoolTest, DestructionWaitsForRunningWork) {
  std::atomic<bool> finished{false};
  {
    HelperPool pool(1, "test-helper");
    std::future<void> done;
    for (int i = 0; i < 1000 && !pool.TryRun(
                                    [&] {
                                      std::this_thread::sleep_for(std::chrono::milliseconds(50));
                                      finished = true;
                                    },
                                    &done);
         ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  }
  EXPECT_TRUE(finished.load());
}

TEST(HelperPoolTest, HelpersCarryTheirName) {
  HelperPool pool(1, "stl-a-name-longer-than-15");
  std::string seen;
  std::future<void> done;
  for (int i = 0; i < 1000 && !pool.TryRun(
                                  [&] {
                                    char name[16] = {0};
                                    pthread_getname_np(pthread_self(), name, sizeof(name));
                                    seen = name;
                                  },
                                  &done);
       ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  ASSERT_TRUE(done.valid()) << "no helper took the task";
  done.wait();
  EXPECT_EQ(seen, "stl-a-name-long") << "the name, cut at the kernel's 15 characters";
}

}  // namespace
}  // namespace stellarium
