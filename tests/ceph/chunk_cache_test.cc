// The RADOS store's node-local chunk cache (core/rados/cache.h) on a real directory:
// what it returns, how it stays within its bound, and what a next process finds.
#include "core/rados/cache.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <random>
#include <string>
#include <vector>

namespace stellarium {
namespace {

namespace fs = std::filesystem;

std::string Bytes(uint64_t seed, size_t n) {
  std::mt19937_64 rng(seed);
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>(rng());
  return s;
}

class ChunkCacheTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("chunk-cache-test." + std::to_string(::getpid()));
    fs::remove_all(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::unique_ptr<ChunkCache> Open(uint64_t max_bytes) {
    auto c = ChunkCache::Open(dir_.string(), max_bytes);
    EXPECT_TRUE(c.ok()) << c.status().ToString();
    return std::move(c).value();
  }
  // Caches chunks [from, to) of 64 KiB, key i holding Bytes(i).
  static void PutRange(ChunkCache& c, uint64_t from, uint64_t to) {
    std::vector<std::string> keep;
    std::vector<std::pair<uint64_t, std::string_view>> items;
    keep.reserve(to - from);
    for (uint64_t k = from; k < to; ++k) keep.push_back(Bytes(k, 64 << 10));
    for (uint64_t k = from; k < to; ++k) items.emplace_back(k, keep[k - from]);
    c.PutMany(items);
  }
  static bool Holds(ChunkCache& c, uint64_t key) {
    ChunkCache::Hit hit;
    if (!c.Get(key, &hit)) return false;
    EXPECT_EQ(hit.bytes, Bytes(key, 64 << 10)) << "key " << key;
    return true;
  }
  fs::path dir_;
};

TEST_F(ChunkCacheTest, ReturnsWhatWasPutAndMissesWhatWasNot) {
  for (const std::string& dir : {dir_.string(), std::string()}) {  // on disk, in memory
    auto c = ChunkCache::Open(dir, 256u << 20);
    ASSERT_TRUE(c.ok());
    PutRange(**c, 0, 100);
    for (uint64_t k = 0; k < 100; ++k) EXPECT_TRUE(Holds(**c, k));
    ChunkCache::Hit hit;
    EXPECT_FALSE((*c)->Get(100, &hit));
    EXPECT_EQ((*c)->stats().hits, 100u);
    EXPECT_EQ((*c)->stats().misses, 1u);
  }
}

// Past its bound it evicts whole segments, least recently used first: a segment read
// recently stays, the oldest unread one goes.
TEST_F(ChunkCacheTest, StaysWithinItsBoundEvictingTheLeastRecentlyUsedSegment) {
  constexpr uint64_t kPerSegment = ChunkCache::kSegmentBytes / (64 << 10);  // 512
  auto c = Open(3 * ChunkCache::kSegmentBytes);
  PutRange(*c, 0, 3 * kPerSegment);             // segments A, B, C full
  EXPECT_TRUE(Holds(*c, 0));                    // A used last
  PutRange(*c, 3 * kPerSegment, 4 * kPerSegment);  // D: one segment must go
  EXPECT_LE(c->stats().bytes, 3 * ChunkCache::kSegmentBytes);
  EXPECT_GE(c->stats().evicted_segments, 1u);
  EXPECT_TRUE(Holds(*c, 1));                       // A stayed
  EXPECT_FALSE(Holds(*c, kPerSegment));            // B went
  EXPECT_TRUE(Holds(*c, 4 * kPerSegment - 1));     // D is there
}

// A cache its process closed is there for the next one; one left by a process that
// died (no clean mark) is started empty, since its keys may name unwritten bytes.
TEST_F(ChunkCacheTest, ANextProcessFindsAClosedCacheButNotACrashedOne) {
  {
    auto c = Open(256u << 20);
    PutRange(*c, 0, 50);
  }
  ASSERT_TRUE(fs::exists(dir_ / "clean"));
  {
    auto c = Open(256u << 20);
    EXPECT_FALSE(fs::exists(dir_ / "clean")) << "the mark must go while the cache is open";
    for (uint64_t k = 0; k < 50; ++k) EXPECT_TRUE(Holds(*c, k));
    PutRange(*c, 50, 60);
  }
  fs::remove(dir_ / "clean");  // as if the process had died
  auto c = Open(256u << 20);
  ChunkCache::Hit hit;
  EXPECT_FALSE(c->Get(0, &hit));
  EXPECT_FALSE(c->Get(55, &hit));
  EXPECT_EQ(c->stats().bytes, 0u);
  PutRange(*c, 0, 10);
  EXPECT_TRUE(Holds(*c, 9));
}

// Forget drops a key at once and for the processes that open the directory later; a
// key cached again afterwards is back.
TEST_F(ChunkCacheTest, AForgottenKeyStaysForgottenAfterReopen) {
  {
    auto c = Open(256u << 20);
    PutRange(*c, 0, 20);
    c->Forget(7);
    c->Forget(1000);  // not cached: nothing happens
    ChunkCache::Hit hit;
    EXPECT_FALSE(c->Get(7, &hit));
    EXPECT_TRUE(Holds(*c, 8));
  }
  {
    auto c = Open(256u << 20);
    ChunkCache::Hit hit;
    EXPECT_FALSE(c->Get(7, &hit));
    EXPECT_TRUE(Holds(*c, 6));
    EXPECT_TRUE(Holds(*c, 8));
    PutRange(*c, 7, 8);
  }
  auto c = Open(256u << 20);
  EXPECT_TRUE(Holds(*c, 7));
}

// One process per directory: a second Open while the first holds it is refused (the
// RADOS store then caches in memory), and succeeds once the first has closed it.
TEST_F(ChunkCacheTest, ADirectoryInUseIsRefusedToASecondOpen) {
  auto first = Open(256u << 20);
  PutRange(*first, 0, 3);
  auto second = ChunkCache::Open(dir_.string(), 256u << 20);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), StatusCode::kFailedPrecondition) << second.status().ToString();
  EXPECT_TRUE(Holds(*first, 2)) << "the refused open must leave the first's files alone";
  first.reset();
  auto third = Open(256u << 20);
  EXPECT_TRUE(Holds(*third, 2));
}

TEST_F(ChunkCacheTest, StrayFilesInTheDirectoryAreIgnored) {
  fs::create_directories(dir_);
  for (const char* name : {"segment-x", "segment-", "segment-12junk", "notes"}) {
    std::FILE* f = std::fopen((dir_ / name).c_str(), "w");
    ASSERT_NE(f, nullptr);
    std::fclose(f);
  }
  std::FILE* f = std::fopen((dir_ / "clean").c_str(), "w");
  std::fclose(f);
  auto c = Open(256u << 20);
  PutRange(*c, 0, 5);
  EXPECT_TRUE(Holds(*c, 4));
}

}  // namespace
}  // namespace stellarium
