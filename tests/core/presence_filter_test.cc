// PresenceFilter: no false negatives, few false positives, "maybe" until complete.
#include "core/presence_filter.h"

#include <gtest/gtest.h>

#include <random>

#include "tests/core/test_util.h"

namespace stellarium {
namespace {

ChunkId RandomId(std::mt19937_64& rng) {
  std::string bytes = testing::RandomBytes(rng, kChunkIdSize);
  return ChunkIdFromBytes(bytes);
}

TEST(PresenceFilterTest, EveryAddedIdIsFoundAndFewOthersAre) {
  std::mt19937_64 rng(3);
  PresenceFilter f(100000, 1 << 30);
  std::vector<ChunkId> added;
  for (int i = 0; i < 100000; ++i) added.push_back(RandomId(rng));
  for (const ChunkId& id : added) f.Add(id);
  ChunkId absent = RandomId(rng);
  EXPECT_TRUE(f.MayContain(absent)) << "answers maybe until the stored ids are all in";
  f.MarkComplete();
  for (const ChunkId& id : added) ASSERT_TRUE(f.MayContain(id));
  int false_positives = 0;
  for (int i = 0; i < 100000; ++i) false_positives += f.MayContain(RandomId(rng));
  EXPECT_LT(false_positives, 5000) << "at capacity the false-positive rate is about 2 %";
}

TEST(PresenceFilterTest, AFilterFarPastItsCapacityAnswersMaybe) {
  std::mt19937_64 rng(4);
  PresenceFilter f(1000, 1 << 30);
  f.MarkComplete();
  for (int i = 0; i < 1000; ++i) f.Add(RandomId(rng));
  int maybe = 0;
  for (int i = 0; i < 1000; ++i) maybe += f.MayContain(RandomId(rng));
  EXPECT_LT(maybe, 100);
  for (int i = 0; i < 10000; ++i) f.Add(RandomId(rng));
  for (int i = 0; i < 1000; ++i) ASSERT_TRUE(f.MayContain(RandomId(rng)));
}

TEST(PresenceFilterTest, MemoryIsCapped) {
  std::mt19937_64 rng(5);
  PresenceFilter f(1u << 30, 1 << 20);  // a billion ids asked, 1 MiB allowed
  f.MarkComplete();
  std::vector<ChunkId> added;
  for (int i = 0; i < 50000; ++i) added.push_back(RandomId(rng));
  for (const ChunkId& id : added) f.Add(id);
  for (const ChunkId& id : added) ASSERT_TRUE(f.MayContain(id));
}

}  // namespace
}  // namespace stellarium
