// Sha256Many (core/sha256.h) against OpenSSL's one-at-a-time Sha256: every length class
// the multi-buffer lanes treat differently (short, one padding block or two, whole
// blocks, long), batches that do not fill the lanes, unaligned inputs, and threads.
#include "core/sha256.h"

#include <gtest/gtest.h>

#include <random>
#include <string>
#include <thread>
#include <vector>

#include "tests/core/test_util.h"

namespace stellarium {
namespace {

using testing::RandomBytes;

// Sha256Many over `inputs`, checked input by input against Sha256.
void ExpectSameAsOneAtATime(const std::vector<std::string_view>& inputs) {
  std::vector<ChunkId> many(inputs.size());
  Sha256Many(inputs.data(), inputs.size(), many.data());
  for (size_t i = 0; i < inputs.size(); ++i) {
    ASSERT_EQ(ToHex(many[i]), ToHex(Sha256(inputs[i].data(), inputs[i].size())))
        << "input " << i << " of " << inputs.size() << ", " << inputs[i].size() << " bytes";
  }
}

TEST(Sha256ManyTest, KnownDigests) {
  const std::string abc = "abc", empty;
  std::vector<std::string_view> in = {abc, empty, abc};
  std::vector<ChunkId> out(in.size());
  Sha256Many(in.data(), in.size(), out.data());
  EXPECT_EQ(ToHex(out[0]), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(ToHex(out[1]), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(out[2], out[0]);
}

TEST(Sha256ManyTest, EveryLengthClassMatchesOneAtATime) {
  std::mt19937_64 rng(7);
  std::vector<std::string> data;
  for (size_t len : std::initializer_list<size_t>{1, 3, 55, 56, 63, 64, 65, 119, 120, 128, 1000,
                                                  4095, 4096, 4097, 65536, (1u << 20) + 7}) {
    data.push_back(RandomBytes(rng, len));
  }
  std::vector<std::string_view> in(data.begin(), data.end());
  ExpectSameAsOneAtATime(in);
}

TEST(Sha256ManyTest, BatchesThatDoNotFillTheLanesMatch) {
  std::mt19937_64 rng(11);
  const std::string pool = RandomBytes(rng, 300 * 4096 + 64);
  for (size_t n : std::initializer_list<size_t>{0, 1, 2, 7, 15, 16, 17, 31, 33, 255, 256, 300}) {
    std::vector<std::string_view> in;
    for (size_t i = 0; i < n; ++i) in.emplace_back(pool.data() + i * 4096, 4096);
    ExpectSameAsOneAtATime(in);
    if (HasFailure()) return;
  }
}

TEST(Sha256ManyTest, UnalignedAndMixedInputsMatch) {
  std::mt19937_64 rng(13);
  const std::string pool = RandomBytes(rng, 1u << 20);
  std::vector<std::string_view> in;
  for (size_t i = 0; i < 100; ++i) {
    size_t off = rng() % (pool.size() - 9000), len = rng() % 9000;  // 0 included
    in.emplace_back(pool.data() + off, len);
  }
  ExpectSameAsOneAtATime(in);
}

TEST(Sha256ManyTest, ThreadsHashSideBySide) {
  std::mt19937_64 rng(17);
  const std::string pool = RandomBytes(rng, 64 * 4096);
  std::vector<std::string_view> in;
  for (size_t i = 0; i < 64; ++i) in.emplace_back(pool.data() + i * 4096, 4096);
  std::vector<ChunkId> want(in.size());
  for (size_t i = 0; i < in.size(); ++i) want[i] = Sha256(in[i].data(), in[i].size());
  std::vector<int> wrong(4, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      std::vector<ChunkId> out(in.size());
      for (int round = 0; round < 50; ++round) {
        Sha256Many(in.data(), in.size(), out.data());
        if (out != want) ++wrong[t];
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(wrong, std::vector<int>(4, 0));
}

TEST(Sha256ManyTest, UsesTheMultiBufferLibraryWhereBuiltWithIt) {
  const std::string engine = Sha256ManyEngine();
#ifdef STELLARIUM_HAVE_IPSEC_MB
  // Every amd64 CPU has at least the library's SSE code path.
  EXPECT_EQ(engine.rfind("ipsec-mb ", 0), 0u) << engine;
#else
  EXPECT_EQ(engine, "openssl");
#endif
}

}  // namespace
}  // namespace stellarium
