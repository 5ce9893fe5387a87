// vhost-user-blk: the virtqueue/request layer driven with hand-built rings (including
// hostile ones), the message parsers, and the server over a real unix socket with a
// front-end written here (memfd guest memory, eventfds, SCM_RIGHTS). guest_test.cc
// does the same with a real QEMU guest.
#include "csi/node/vhost_user/vhost_user_blk.h"

#include <gtest/gtest.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <functional>
#include <thread>

#include "tests/node/test_util.h"

namespace stellarium::node {
namespace {

using stellarium::testing::MemBlockIo;
using stellarium::testing::PatternBytes;
using stellarium::testing::TempDir;

constexpr uint64_t kGuestBase = 0x100000;          // guest physical address of memory
constexpr uint64_t kUserBase = 0x7f0000000000ull;  // the "VMM's" address of it
constexpr uint64_t kMemSize = 4 << 20;
constexpr uint32_t kQ = 16;  // queue size
constexpr uint64_t kDescOff = 0x0, kAvailOff = 0x1000, kUsedOff = 0x2000, kBufOff = 0x10000;

// A guest driver's view of one split virtqueue in a memory block.
class FakeDriver {
 public:
  explicit FakeDriver(uint8_t* mem) : mem_(mem) {}
  uint8_t* mem() { return mem_; }
  // Writes descriptor i (of the queue's table, or of a table at `table_off`).
  void Desc(uint16_t i, uint64_t gpa, uint32_t len, uint16_t flags, uint16_t next,
            uint64_t table_off = kDescOff) {
    uint8_t* p = mem_ + table_off + 16 * i;
    memcpy(p, &gpa, 8);
    memcpy(p + 8, &len, 4);
    memcpy(p + 12, &flags, 2);
    memcpy(p + 14, &next, 2);
  }
  // Makes `head` available.
  void Publish(uint16_t head) {
    uint16_t idx;
    memcpy(&idx, mem_ + kAvailOff + 2, 2);
    memcpy(mem_ + kAvailOff + 4 + 2 * (idx % kQ), &head, 2);
    ++idx;
    __atomic_store_n(reinterpret_cast<uint16_t*>(mem_ + kAvailOff + 2), idx, __ATOMIC_RELEASE);
  }
  void SetAvailIdx(uint16_t idx) { memcpy(mem_ + kAvailOff + 2, &idx, 2); }
  uint16_t UsedIdx() {
    return __atomic_load_n(reinterpret_cast<uint16_t*>(mem_ + kUsedOff + 2), __ATOMIC_ACQUIRE);
  }
  std::pair<uint32_t, uint32_t> Used(uint16_t slot) {
    uint32_t id, len;
    memcpy(&id, mem_ + kUsedOff + 4 + 8 * (slot % kQ), 4);
    memcpy(&len, mem_ + kUsedOff + 4 + 8 * (slot % kQ) + 4, 4);
    return {id, len};
  }
  // Builds a 3-descriptor request at descriptors [d, d+2]: header, data, status.
  // Returns the guest offset of the data buffer (status right after it).
  uint64_t Request(uint16_t d, uint32_t type, uint64_t sector, uint32_t data_len,
                   uint64_t buf_off = kBufOff) {
    uint8_t* hdr = mem_ + buf_off;
    uint32_t reserved = 0;
    memcpy(hdr, &type, 4);
    memcpy(hdr + 4, &reserved, 4);
    memcpy(hdr + 8, &sector, 8);
    uint64_t data = buf_off + 16;
    uint64_t status = data + data_len;
    mem_[status] = 0xff;
    bool in = type == 0 || type == 8;
    Desc(d, kGuestBase + buf_off, 16, kVirtqDescFNext, d + 1);
    Desc(d + 1, kGuestBase + data, data_len, kVirtqDescFNext | (in ? kVirtqDescFWrite : 0), d + 2);
    Desc(d + 2, kGuestBase + status, 1, kVirtqDescFWrite, 0);
    return data;
  }
  uint8_t StatusAfter(uint64_t data_off, uint32_t data_len) { return mem_[data_off + data_len]; }

 private:
  uint8_t* mem_;
};

class VirtqueueTest : public ::testing::Test {
 protected:
  void SetUp() override {
    buf_.assign(kMemSize, 0);
    mem_ = GuestMemory({{kGuestBase, kMemSize, kUserBase, buf_.data()}});
    ASSERT_TRUE(queue_
                    .Configure(mem_, kQ,
                               {kUserBase + kDescOff, kUserBase + kAvailOff, kUserBase + kUsedOff})
                    .ok());
    info_.capacity_sectors = io_->size() / 512;
    info_.serial = "vol-0123456789abcdef-extra";
  }
  uint32_t Run() {
    auto r = queue_.Process(mem_, *io_, info_);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() ? *r : 0;
  }

  std::vector<uint8_t> buf_;
  GuestMemory mem_;
  SplitQueue queue_;
  std::shared_ptr<MemBlockIo> io_ = std::make_shared<MemBlockIo>(1 << 20);
  BlkDeviceInfo info_;
  FakeDriver drv_{nullptr};
};

// A MemBlockIo that can hold reads or writes of a chosen range: a held read has
// already copied its bytes (so a read-ahead window held here carries the bytes from
// before any write made meanwhile); a held write has not written yet. Logs writes
// done and flushes, in order.
class GatedBlockIo : public MemBlockIo {
 public:
  using MemBlockIo::MemBlockIo;
  void HoldReads(uint64_t from, uint64_t to) { Hold(&read_gate_, from, to); }
  void HoldWrites(uint64_t from, uint64_t to) { Hold(&write_gate_, from, to); }
  void Release() {
    std::lock_guard<std::mutex> lock(gate_mu_);
    read_gate_ = write_gate_ = {0, 0};
    cv_.notify_all();
  }
  // Waits until `n` operations are held (false after 30 s).
  bool WaitHeld(int n) {
    std::unique_lock<std::mutex> lock(gate_mu_);
    return cv_.wait_for(lock, std::chrono::seconds(30), [&] { return held_ >= n; });
  }
  std::string Events() {
    std::lock_guard<std::mutex> lock(gate_mu_);
    return events_;
  }
  Status Read(uint64_t offset, size_t len, char* out) override {
    Status s = MemBlockIo::Read(offset, len, out);
    Wait(read_gate_, offset, len);
    return s;
  }
  Status Write(uint64_t offset, const char* data, size_t len) override {
    Wait(write_gate_, offset, len);
    Status s = MemBlockIo::Write(offset, data, len);
    std::lock_guard<std::mutex> lock(gate_mu_);
    events_ += "write-done ";
    return s;
  }
  Status Flush() override {
    std::lock_guard<std::mutex> lock(gate_mu_);
    events_ += "flush ";
    return MemBlockIo::Flush();
  }

 private:
  using Gate = std::pair<uint64_t, uint64_t>;
  void Hold(Gate* g, uint64_t from, uint64_t to) {
    std::lock_guard<std::mutex> lock(gate_mu_);
    *g = {from, to};
  }
  void Wait(const Gate& g, uint64_t offset, size_t len) {
    std::unique_lock<std::mutex> lock(gate_mu_);
    if (!(offset < g.second && offset + len > g.first)) return;
    ++held_;
    cv_.notify_all();
    cv_.wait(lock, [&] { return !(offset < g.second && offset + len > g.first); });
  }
  std::mutex gate_mu_;
  std::condition_variable cv_;
  Gate read_gate_{0, 0}, write_gate_{0, 0};
  int held_ = 0;
  std::string events_;
};

// A MemBlockIo whose reads touching [bad, bad+1) fail, as a chunk failing its hash.
class FailingBlockIo : public MemBlockIo {
 public:
  FailingBlockIo(uint64_t size, uint64_t bad) : MemBlockIo(size), bad_(bad) {}
  Status Read(uint64_t offset, size_t len, char* out) override {
    if (offset <= bad_ && bad_ < offset + len) return Status::Corruption("test: bad chunk");
    return MemBlockIo::Read(offset, len, out);
  }

 private:
  uint64_t bad_;
};

// ---- ReadAheadBlockIo ----

constexpr uint64_t kRaVolume = 64 << 20;

template <typename T>
std::shared_ptr<T> PatternVolume(std::shared_ptr<T> io, uint64_t seed) {
  std::vector<char> content = PatternBytes(io->size(), seed);
  EXPECT_TRUE(io->Write(0, content.data(), content.size()).ok());
  return io;
}

// Reads [offset, offset+len) through `ra` and compares with `io`'s bytes.
void ExpectReadMatches(BlockIo& ra, MemBlockIo& io, uint64_t offset, size_t len) {
  std::vector<char> got(len), want(len);
  ASSERT_TRUE(ra.Read(offset, len, got.data()).ok()) << "read at " << offset;
  ASSERT_TRUE(io.MemBlockIo::Read(offset, len, want.data()).ok());
  ASSERT_TRUE(got == want) << "bytes differ in the read at " << offset << " length " << len;
}

// Waits until `ra` has read `n` windows (false after 30 s).
// Waits (up to 30 s) until the counter `field` of ra.stats() reaches n.
bool WaitStat(const ReadAheadBlockIo& ra, uint64_t ReadAheadBlockIo::Stats::*field, uint64_t n) {
  for (int i = 0; i < 30000; ++i) {
    if (ra.stats().*field >= n) return true;
    usleep(1000);
  }
  return false;
}

bool WaitWindowsRead(const ReadAheadBlockIo& ra, uint64_t n) {
  return WaitStat(ra, &ReadAheadBlockIo::Stats::windows_read, n);
}

TEST(ReadAheadTest, SequentialReadsComeFromWindowsWithinTheMemoryBound) {
  auto io = PatternVolume(std::make_shared<MemBlockIo>(kRaVolume), 1);
  ReadAheadBlockIo ra(io, {.max_bytes = 4 << 20, .window = 1 << 20, .threads = 2});
  for (uint64_t off = 0; off < (32u << 20); off += 512 << 10) {
    ASSERT_NO_FATAL_FAILURE(ExpectReadMatches(ra, *io, off, 512 << 10));
    EXPECT_LE(ra.stats().bytes_held, 4u << 20);
  }
  ReadAheadBlockIo::Stats st = ra.stats();
  // The first three reads establish the stream; every later one finds its window.
  EXPECT_EQ(st.reads_through, 3u);
  EXPECT_EQ(st.reads_from_windows, 64u - 3);
  EXPECT_EQ(st.windows_discarded, 0u);
}

TEST(ReadAheadTest, RandomReadsDoNotReadAhead) {
  auto io = PatternVolume(std::make_shared<MemBlockIo>(kRaVolume), 2);
  ReadAheadBlockIo ra(io, {});
  uint64_t x = 42;
  for (int i = 0; i < 2000; ++i) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    ASSERT_NO_FATAL_FAILURE(ExpectReadMatches(ra, *io, (x % (kRaVolume / 4096)) * 4096, 4096));
  }
  EXPECT_EQ(ra.stats().windows_read, 0u);
  EXPECT_EQ(ra.stats().bytes_held, 0u);
}

// A write into a range already read ahead: the window goes, and the read returns the
// written bytes.
TEST(ReadAheadTest, WriteIntoAReadWindowIsReadBack) {
  auto io = PatternVolume(std::make_shared<MemBlockIo>(kRaVolume), 3);
  ReadAheadBlockIo ra(io, {.max_bytes = 4 << 20, .window = 1 << 20, .threads = 2});
  for (uint64_t off = 0; off < (2u << 20); off += 512 << 10) {
    ASSERT_NO_FATAL_FAILURE(ExpectReadMatches(ra, *io, off, 512 << 10));
  }
  ASSERT_TRUE(WaitWindowsRead(ra, 2));  // [2 MiB, 4 MiB) or more is in memory
  std::vector<char> fresh = PatternBytes(4096, 99);
  const uint64_t at = (3u << 20) + 8192;
  ASSERT_TRUE(ra.Write(at, fresh.data(), fresh.size()).ok());
  // The window over `at` is dropped at once if it was queued or read, or when its read
  // ends if the write found it being read (then it is marked stale and counted later).
  EXPECT_TRUE(WaitStat(ra, &ReadAheadBlockIo::Stats::windows_discarded, 1));
  for (uint64_t off = 2u << 20; off < (4u << 20); off += 512 << 10) {
    ASSERT_NO_FATAL_FAILURE(ExpectReadMatches(ra, *io, off, 512 << 10));
  }
  std::vector<char> back(4096);
  ASSERT_TRUE(ra.Read(at, back.size(), back.data()).ok());
  EXPECT_EQ(back, fresh);
}

// A write while the window over it is being read (the window's bytes are from before
// the write): the window is thrown away and the reader gets the written bytes.
TEST(ReadAheadTest, WriteWhileItsWindowIsBeingReadIsNotShadowed) {
  auto io = PatternVolume(std::make_shared<GatedBlockIo>(kRaVolume), 4);
  ReadAheadBlockIo ra(io, {.max_bytes = 4 << 20, .window = 1 << 20, .threads = 2});
  // Reads of 512 KiB from 0: the third schedules windows from 1.5 MiB.
  const uint64_t window_start = 3 * (512u << 10);
  io->HoldReads(window_start, window_start + 4096);
  for (uint64_t off = 0; off < window_start; off += 512 << 10) {
    ASSERT_NO_FATAL_FAILURE(ExpectReadMatches(ra, *io, off, 512 << 10));
  }
  ASSERT_TRUE(io->WaitHeld(1));  // a helper holds the old bytes of the window
  std::vector<char> fresh = PatternBytes(4096, 98);
  const uint64_t at = window_start + 65536;
  ASSERT_TRUE(ra.Write(at, fresh.data(), fresh.size()).ok());
  io->Release();
  // The helper finishes its read of the window: it must throw the bytes away.
  for (int i = 0; i < 30000 && ra.stats().windows_discarded == 0; ++i) usleep(1000);
  EXPECT_EQ(ra.stats().windows_discarded, 1u);
  std::vector<char> back(512 << 10);
  ASSERT_TRUE(ra.Read(window_start, back.size(), back.data()).ok());
  EXPECT_TRUE(std::equal(fresh.begin(), fresh.end(), back.begin() + 65536));
  ASSERT_NO_FATAL_FAILURE(ExpectReadMatches(ra, *io, window_start, 512 << 10));
}

// A read whose window is queued but not started (the only helper is busy) reads that
// window itself instead of waiting; one whose window is being read waits for it.
TEST(ReadAheadTest, AReadTakesOverAQueuedWindowAndWaitsForOneBeingRead) {
  auto io = PatternVolume(std::make_shared<GatedBlockIo>(kRaVolume), 8);
  ReadAheadBlockIo ra(io, {.max_bytes = 4 << 20, .window = 1 << 20, .threads = 1});
  const uint64_t first_window = 3 * (512u << 10);  // the third read queues [1.5, 3.5) MiB
  io->HoldReads(first_window, first_window + 4096);
  for (uint64_t off = 0; off < first_window; off += 512 << 10) {
    ASSERT_NO_FATAL_FAILURE(ExpectReadMatches(ra, *io, off, 512 << 10));
  }
  ASSERT_TRUE(io->WaitHeld(1));  // the helper holds the first window
  // The second window, [2.5, 3.5) MiB, is still queued: this read takes it over.
  ASSERT_NO_FATAL_FAILURE(ExpectReadMatches(ra, *io, first_window + (1 << 20), 512 << 10));
  EXPECT_EQ(ra.stats().reads_loaded, 1u);
  EXPECT_EQ(ra.stats().reads_waited, 0u);
  std::thread release([&] {
    usleep(50000);  // (usually) after the read below started waiting; either way works
    io->Release();
  });
  // The first window is being read: this read waits for it rather than reading again.
  ASSERT_NO_FATAL_FAILURE(ExpectReadMatches(ra, *io, first_window, 512 << 10));
  release.join();
  EXPECT_LE(ra.stats().reads_waited, 1u);
  EXPECT_EQ(ra.stats().reads_through, 3u);  // only the three reads before the stream
}

// ReadPieces hands over exactly the range, in order, once: from windows (several
// pieces) and when read through (one piece).
TEST(ReadAheadTest, PiecesCoverTheRangeOnceInOrder) {
  auto io = PatternVolume(std::make_shared<MemBlockIo>(kRaVolume), 7);
  ReadAheadBlockIo ra(io, {.max_bytes = 1 << 20, .window = 96 << 10, .threads = 2});
  for (uint64_t off = 0; off < (4u << 20); off += 40 << 10) {
    const size_t len = 40 << 10;
    std::vector<char> got(len, 0), want(len);
    ASSERT_TRUE(io->MemBlockIo::Read(off, len, want.data()).ok());
    uint64_t next = 0;
    ASSERT_TRUE(ra.ReadPieces(off, len, [&](uint64_t at, const char* src, size_t n) {
                    EXPECT_EQ(at, next) << "a gap, an overlap or out of order";
                    ASSERT_LE(at + n, len);
                    memcpy(got.data() + at, src, n);
                    next = at + n;
                  }).ok());
    EXPECT_EQ(next, len);
    ASSERT_TRUE(got == want) << "at " << off;
  }
  EXPECT_GT(ra.stats().reads_from_windows, 0u);
}

// A window whose read fails is dropped: the reader that needs it reads the range
// itself and gets the error, never zeros or stale bytes; other reads are unaffected.
TEST(ReadAheadTest, AFailedWindowReadSurfacesAsTheReadersError) {
  const uint64_t bad = (5u << 20) + 100;
  auto io = PatternVolume(std::make_shared<FailingBlockIo>(kRaVolume, bad), 5);
  ReadAheadBlockIo ra(io, {.max_bytes = 4 << 20, .window = 1 << 20, .threads = 2});
  std::vector<char> buf(512 << 10);
  for (uint64_t off = 0; off < (8u << 20); off += buf.size()) {
    Status s = ra.Read(off, buf.size(), buf.data());
    if (off <= bad && bad < off + buf.size()) {
      EXPECT_EQ(s.code(), StatusCode::kDataLoss) << s.ToString();
    } else {
      ASSERT_NO_FATAL_FAILURE(ExpectReadMatches(ra, *io, off, buf.size()));
    }
  }
}

// Several threads, each reading its own region over and over in sequence and writing
// blocks of it now and then; windows span regions, so a neighbour's write must drop
// them. Every read must return exactly what its thread last wrote.
TEST(ReadAheadTest, ConcurrentStreamsAndWritesNeverSeeStaleBytes) {
  constexpr uint64_t kRegion = 3 << 20;  // not a multiple of the window
  constexpr int kThreads = 4;
  auto io = PatternVolume(std::make_shared<MemBlockIo>(kRegion * kThreads), 6);
  ReadAheadBlockIo ra(io, {.max_bytes = 2 << 20, .window = 256 << 10, .threads = 2});
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      const uint64_t base = t * kRegion;
      std::vector<char> model = io->Snapshot();  // only [base, base+kRegion) is ours
      std::vector<char> buf(128 << 10);
      uint64_t x = 1000 + t;
      for (int round = 0; round < 6 && failures == 0; ++round) {
        for (uint64_t off = 0; off < kRegion; off += buf.size()) {
          if (!ra.Read(base + off, buf.size(), buf.data()).ok() ||
              memcmp(buf.data(), model.data() + base + off, buf.size()) != 0) {
            ++failures;
            return;
          }
          x ^= x << 13;
          x ^= x >> 7;
          x ^= x << 17;
          if (x % 3 == 0) {  // a 4 KiB write somewhere in our region, often just ahead
            uint64_t at = base + (off + buf.size() + (x >> 8) % (1 << 20)) % kRegion / 4096 * 4096;
            std::vector<char> block = PatternBytes(4096, x);
            if (!ra.Write(at, block.data(), block.size()).ok()) ++failures;
            memcpy(model.data() + at, block.data(), block.size());
          }
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_LE(ra.stats().bytes_held, 2u << 20);
  EXPECT_GT(ra.stats().reads_from_windows, 0u);
}

TEST(GuestMemoryTest, TranslatesOnlyWhollyContainedRanges) {
  std::vector<uint8_t> buf(4096);
  GuestMemory mem({{0x1000, 4096, 0x9000, buf.data()}});
  EXPECT_EQ(mem.TranslateGuest(0x1000, 4096), buf.data());
  EXPECT_EQ(mem.TranslateGuest(0x1fff, 1), buf.data() + 4095);
  EXPECT_EQ(mem.TranslateGuest(0x1fff, 2), nullptr);  // straddles the end
  EXPECT_EQ(mem.TranslateGuest(0xfff, 1), nullptr);   // before the start
  EXPECT_EQ(mem.TranslateGuest(0x1000, UINT64_MAX), nullptr);
  EXPECT_EQ(mem.TranslateGuest(UINT64_MAX, 2), nullptr);  // wraps around
  EXPECT_EQ(mem.TranslateUser(0x9000 + 100, 8), buf.data() + 100);
  EXPECT_EQ(mem.TranslateUser(0x1000, 8), nullptr);  // a guest address, not a user one
}

TEST_F(VirtqueueTest, WriteThenReadRoundTripsThroughTheVolume) {
  FakeDriver drv(buf_.data());
  std::vector<char> data = PatternBytes(8192, 5);
  uint64_t d = drv.Request(0, kVirtioBlkTOut, 16, 8192);
  memcpy(buf_.data() + d, data.data(), data.size());
  drv.Publish(0);
  EXPECT_EQ(Run(), 1u);
  EXPECT_EQ(drv.StatusAfter(d, 8192), kVirtioBlkSOk);
  EXPECT_EQ(drv.UsedIdx(), 1);
  EXPECT_EQ(drv.Used(0).first, 0u);
  EXPECT_EQ(drv.Used(0).second, 1u);  // only the status byte was written
  std::vector<char> vol = io_->Snapshot();
  EXPECT_TRUE(std::equal(data.begin(), data.end(), vol.begin() + 16 * 512));

  uint64_t r = drv.Request(3, kVirtioBlkTIn, 16, 8192, 0x40000);
  drv.Publish(3);
  EXPECT_EQ(Run(), 1u);
  EXPECT_EQ(drv.StatusAfter(r, 8192), kVirtioBlkSOk);
  EXPECT_EQ(memcmp(buf_.data() + r, data.data(), 8192), 0);
  EXPECT_EQ(drv.Used(1).first, 3u);
  EXPECT_EQ(drv.Used(1).second, 8193u);
}

TEST_F(VirtqueueTest, SectorPastTheEndIsAnIoErrorAndWritesNothing) {
  FakeDriver drv(buf_.data());
  uint64_t last_sector = io_->size() / 512 - 1;
  uint64_t d = drv.Request(0, kVirtioBlkTOut, last_sector, 1024);  // one sector too many
  memset(buf_.data() + d, 'z', 1024);
  drv.Publish(0);
  EXPECT_EQ(Run(), 1u);
  EXPECT_EQ(drv.StatusAfter(d, 1024), kVirtioBlkSIoErr);
  std::vector<char> vol = io_->Snapshot();
  EXPECT_EQ(std::count(vol.begin(), vol.end(), 'z'), 0);
  // A sector number whose byte offset overflows 64 bits.
  d = drv.Request(3, kVirtioBlkTIn, UINT64_MAX / 256, 512, 0x40000);
  drv.Publish(3);
  EXPECT_EQ(Run(), 1u);
  EXPECT_EQ(drv.StatusAfter(d, 512), kVirtioBlkSIoErr);
}

TEST_F(VirtqueueTest, MisalignedLengthUnknownTypeAndReadOnly) {
  FakeDriver drv(buf_.data());
  uint64_t d = drv.Request(0, kVirtioBlkTOut, 0, 100);  // not a multiple of 512
  drv.Publish(0);
  uint64_t u = drv.Request(3, 77, 0, 512, 0x40000);  // unknown request type
  drv.Publish(3);
  EXPECT_EQ(Run(), 2u);
  EXPECT_EQ(drv.StatusAfter(d, 100), kVirtioBlkSIoErr);
  EXPECT_EQ(drv.StatusAfter(u, 512), kVirtioBlkSUnsupp);

  info_.read_only = true;
  uint64_t w = drv.Request(6, kVirtioBlkTOut, 0, 512, 0x50000);
  memset(buf_.data() + w, 'r', 512);
  drv.Publish(6);
  EXPECT_EQ(Run(), 1u);
  EXPECT_EQ(drv.StatusAfter(w, 512), kVirtioBlkSIoErr);
  std::vector<char> vol = io_->Snapshot();
  EXPECT_EQ(std::count(vol.begin(), vol.end(), 'r'), 0);
}

TEST_F(VirtqueueTest, GetIdAnswersTheSerialTruncatedTo20Bytes) {
  FakeDriver drv(buf_.data());
  uint64_t d = drv.Request(0, kVirtioBlkTGetId, 0, 20);
  drv.Publish(0);
  EXPECT_EQ(Run(), 1u);
  EXPECT_EQ(drv.StatusAfter(d, 20), kVirtioBlkSOk);
  EXPECT_EQ(std::string(reinterpret_cast<char*>(buf_.data() + d), 20), "vol-0123456789abcdef");
}

TEST_F(VirtqueueTest, DescriptorLoopIsCutOffWithoutHanging) {
  FakeDriver drv(buf_.data());
  drv.Desc(0, kGuestBase + kBufOff, 16, kVirtqDescFNext, 1);
  drv.Desc(1, kGuestBase + kBufOff + 16, 512, kVirtqDescFNext, 0);  // back to 0
  drv.Publish(0);
  EXPECT_EQ(Run(), 1u);
  EXPECT_EQ(drv.Used(0).second, 0u);  // returned unused: no status byte to report into
}

TEST_F(VirtqueueTest, BuffersOutsideGuestMemoryAreRejected) {
  FakeDriver drv(buf_.data());
  uint64_t d = drv.Request(0, kVirtioBlkTIn, 0, 4096);
  drv.Desc(1, kGuestBase + kMemSize - 100, 4096, kVirtqDescFNext | kVirtqDescFWrite, 2);
  drv.Publish(0);
  EXPECT_EQ(Run(), 1u);
  EXPECT_EQ(drv.Used(0).second, 0u);
  EXPECT_EQ(drv.StatusAfter(d, 4096), 0xff);  // untouched
  // A next index past the table.
  drv.Request(3, kVirtioBlkTIn, 0, 512, 0x40000);
  drv.Desc(4, kGuestBase + 0x40000 + 16, 512, kVirtqDescFNext | kVirtqDescFWrite, 999);
  drv.Publish(3);
  EXPECT_EQ(Run(), 1u);
  EXPECT_EQ(drv.Used(1).second, 0u);
  // Indirect descriptors were not negotiated.
  drv.Desc(7, kGuestBase + kBufOff, 16, kVirtqDescFIndirect, 0);
  drv.Publish(7);
  EXPECT_EQ(Run(), 1u);
  EXPECT_EQ(drv.Used(2).second, 0u);
}

// Multi-segment reads through the read-ahead layer are filled piece by piece straight
// from its windows (no bounce buffer): segments of odd sizes that do not line up with
// the windows get exactly their bytes.
TEST_F(VirtqueueTest, ScatteredReadsAreFilledFromReadAheadWindows) {
  std::vector<char> content = PatternBytes(io_->size(), 21);
  ASSERT_TRUE(io_->Write(0, content.data(), content.size()).ok());
  ReadAheadBlockIo ra(io_, {.max_bytes = 256 << 10, .window = 48 << 10, .threads = 1});
  FakeDriver drv(buf_.data());
  const uint32_t lens[] = {512, 3584, 10240, 3072, 15360};  // 32 KiB in all
  const uint64_t hdr = 0x30000, st = 0x30100, data = 0x40000;
  for (uint64_t req = 0; req < 16; ++req) {
    const uint64_t sector = req * 64;
    uint32_t type = kVirtioBlkTIn;
    memset(buf_.data() + hdr, 0, 16);
    memcpy(buf_.data() + hdr, &type, 4);
    memcpy(buf_.data() + hdr + 8, &sector, 8);
    memset(buf_.data() + data, 0, 1 << 20);
    // Segments in reverse places in guest memory, so guest order != memory order.
    drv.Desc(0, kGuestBase + hdr, 16, kVirtqDescFNext, 1);
    uint64_t at = data + (1 << 19);
    for (uint16_t i = 0; i < 5; ++i) {
      at -= lens[i] + 4096;
      drv.Desc(1 + i, kGuestBase + at, lens[i], kVirtqDescFNext | kVirtqDescFWrite, 2 + i);
    }
    buf_[st] = 0xff;
    drv.Desc(6, kGuestBase + st, 1, kVirtqDescFWrite, 0);
    drv.Publish(0);
    auto done = queue_.Process(mem_, ra, info_);
    ASSERT_TRUE(done.ok() && *done == 1u);
    ASSERT_EQ(buf_[st], kVirtioBlkSOk);
    at = data + (1 << 19);
    uint64_t in_request = 0;
    for (uint16_t i = 0; i < 5; ++i) {
      at -= lens[i] + 4096;
      ASSERT_EQ(memcmp(buf_.data() + at, content.data() + sector * 512 + in_request, lens[i]), 0)
          << "request " << req << " segment " << i;
      in_request += lens[i];
    }
  }
  EXPECT_GT(ra.stats().reads_from_windows, 8u);
}

// An indirect descriptor at the head: its table in guest memory holds the chain. Only
// accepted once VIRTIO_RING_F_INDIRECT_DESC is negotiated.
TEST_F(VirtqueueTest, IndirectTablesCarryRequestsOnlyWhenNegotiated) {
  FakeDriver drv(buf_.data());
  std::vector<char> data = PatternBytes(8192, 9);
  ASSERT_TRUE(io_->Write(4096, data.data(), data.size()).ok());
  // Header at 0x30000, data at 0x31000, status at 0x33000; the table at 0x60000.
  const uint64_t hdr = 0x30000, dat = 0x31000, st = 0x33000, table = 0x60000;
  uint32_t type = kVirtioBlkTIn;
  uint64_t sector = 8;
  memset(buf_.data() + hdr, 0, 16);
  memcpy(buf_.data() + hdr, &type, 4);
  memcpy(buf_.data() + hdr + 8, &sector, 8);
  buf_[st] = 0xff;
  drv.Desc(0, kGuestBase + hdr, 16, kVirtqDescFNext, 1, table);
  drv.Desc(1, kGuestBase + dat, 8192, kVirtqDescFNext | kVirtqDescFWrite, 2, table);
  drv.Desc(2, kGuestBase + st, 1, kVirtqDescFWrite, 0, table);
  drv.Desc(5, kGuestBase + table, 48, kVirtqDescFIndirect, 0);
  drv.Publish(5);
  EXPECT_EQ(Run(), 1u);
  EXPECT_EQ(drv.Used(0), std::make_pair(5u, 0u));  // not negotiated: returned unused
  EXPECT_EQ(buf_[st], 0xff);
  queue_.set_indirect(true);
  drv.Publish(5);
  EXPECT_EQ(Run(), 1u);
  EXPECT_EQ(drv.Used(1), std::make_pair(5u, 8192u + 1));
  EXPECT_EQ(buf_[st], kVirtioBlkSOk);
  EXPECT_EQ(memcmp(buf_.data() + dat, data.data(), 8192), 0);
}

// Hostile indirect tables are refused (returned unused), never followed outside guest
// memory or around a loop.
TEST_F(VirtqueueTest, HostileIndirectTablesAreRefused) {
  FakeDriver drv(buf_.data());
  queue_.set_indirect(true);
  const uint64_t table = 0x60000, hdr = 0x30000;
  auto good_table = [&] {
    drv.Desc(0, kGuestBase + hdr, 16, kVirtqDescFNext, 1, table);
    drv.Desc(1, kGuestBase + hdr + 16, 512, kVirtqDescFNext | kVirtqDescFWrite, 2, table);
    drv.Desc(2, kGuestBase + hdr + 1024, 1, kVirtqDescFWrite, 0, table);
  };
  struct Case {
    const char* what;
    std::function<void()> setup;
  };
  std::vector<Case> cases = {
      {"INDIRECT with NEXT",
       [&] { drv.Desc(0, kGuestBase + table, 48, kVirtqDescFIndirect | kVirtqDescFNext, 1); }},
      {"length not a whole number of descriptors",
       [&] { drv.Desc(0, kGuestBase + table, 40, kVirtqDescFIndirect, 0); }},
      {"longer than a request may be",
       [&] { drv.Desc(0, kGuestBase + table, 16 * (kBlkSegMax + 3), kVirtqDescFIndirect, 0); }},
      {"outside guest memory",
       [&] { drv.Desc(0, kGuestBase + kMemSize - 32, 48, kVirtqDescFIndirect, 0); }},
      {"nested",
       [&] {
         drv.Desc(1, kGuestBase + table, 48, kVirtqDescFIndirect, 0, table);
         drv.Desc(0, kGuestBase + table, 48, kVirtqDescFIndirect, 0);
       }},
      {"a loop inside the table",
       [&] {
         drv.Desc(2, kGuestBase + hdr + 1024, 1, kVirtqDescFWrite | kVirtqDescFNext, 0, table);
         drv.Desc(0, kGuestBase + table, 48, kVirtqDescFIndirect, 0);
       }},
      {"next past the table",
       [&] {
         drv.Desc(1, kGuestBase + hdr + 16, 512, kVirtqDescFNext | kVirtqDescFWrite, 3, table);
         drv.Desc(0, kGuestBase + table, 48, kVirtqDescFIndirect, 0);
       }},
      {"not at the head",
       [&] {
         drv.Desc(0, kGuestBase + hdr, 16, kVirtqDescFNext, 1);
         drv.Desc(1, kGuestBase + table, 48, kVirtqDescFIndirect, 0);
       }},
  };
  uint16_t slot = 0;
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    good_table();
    c.setup();
    drv.Publish(0);
    EXPECT_EQ(Run(), 1u);
    EXPECT_EQ(drv.Used(slot), std::make_pair(0u, 0u));
    ++slot;
  }
  std::vector<char> vol = io_->Snapshot();
  EXPECT_EQ(std::count(vol.begin(), vol.end(), 0), static_cast<long>(vol.size()));
}

TEST_F(VirtqueueTest, ProcessesAtMostOneRingPerCall) {
  FakeDriver drv(buf_.data());
  // A full ring of requests (one chain published kQ times: a driver may not do that,
  // but the device must handle it), then two more once those are consumed.
  uint64_t d = drv.Request(0, kVirtioBlkTIn, 0, 512);
  for (uint32_t i = 0; i < kQ; ++i) drv.Publish(0);
  auto first = queue_.Process(mem_, *io_, info_);
  ASSERT_TRUE(first.ok());
  EXPECT_EQ(*first, kQ);  // == size(): the caller must call again
  drv.Publish(0);
  drv.Publish(0);
  auto second = queue_.Process(mem_, *io_, info_);
  ASSERT_TRUE(second.ok());
  EXPECT_EQ(*second, 2u);
  EXPECT_EQ(drv.UsedIdx(), kQ + 2);
  EXPECT_EQ(drv.StatusAfter(d, 512), kVirtioBlkSOk);
}

// Requests taken off the ring and completed in another order (as I/O threads do):
// each used entry names its own chain with its own length.
TEST_F(VirtqueueTest, RequestsCompletedOutOfOrderKeepTheirIdsAndLengths) {
  FakeDriver drv(buf_.data());
  std::vector<char> data = PatternBytes(16384, 8);
  ASSERT_TRUE(io_->Write(0, data.data(), data.size()).ok());
  uint64_t a = drv.Request(0, kVirtioBlkTIn, 0, 4096);
  uint64_t b = drv.Request(3, kVirtioBlkTIn, 8, 8192, 0x40000);
  drv.Publish(0);
  drv.Publish(3);
  EXPECT_TRUE(queue_.HasAvailable());
  PoppedRequest pa, pb, none;
  ASSERT_TRUE(*queue_.Pop(mem_, &pa));
  ASSERT_TRUE(*queue_.Pop(mem_, &pb));
  EXPECT_FALSE(*queue_.Pop(mem_, &none));
  EXPECT_FALSE(queue_.HasAvailable());
  EXPECT_EQ(pa.head, 0);
  EXPECT_EQ(pb.head, 3);
  queue_.PushUsed(pb.head, ExecutePopped(*io_, info_, pb));
  EXPECT_EQ(drv.UsedIdx(), 1);
  EXPECT_EQ(drv.StatusAfter(a, 4096), 0xff);  // A not executed yet
  queue_.PushUsed(pa.head, ExecutePopped(*io_, info_, pa));
  EXPECT_EQ(drv.UsedIdx(), 2);
  EXPECT_EQ(drv.Used(0), std::make_pair(3u, 8192u + 1));
  EXPECT_EQ(drv.Used(1), std::make_pair(0u, 4096u + 1));
  EXPECT_EQ(memcmp(buf_.data() + a, data.data(), 4096), 0);
  EXPECT_EQ(memcmp(buf_.data() + b, data.data() + 4096, 8192), 0);
}

TEST_F(VirtqueueTest, CorruptAvailableRingStopsTheQueue) {
  FakeDriver drv(buf_.data());
  drv.SetAvailIdx(kQ + 5);  // more entries than the queue holds
  auto r = queue_.Process(mem_, *io_, info_);
  EXPECT_EQ(r.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_TRUE(queue_.broken());
  EXPECT_EQ(drv.UsedIdx(), 0);
}

TEST_F(VirtqueueTest, RingOutsideMemoryIsRefusedAtConfiguration) {
  SplitQueue q;
  EXPECT_FALSE(
      q.Configure(mem_, kQ, {kUserBase + kMemSize - 8, kUserBase + kAvailOff, kUserBase + kUsedOff})
          .ok());
  EXPECT_FALSE(
      q.Configure(mem_, 24, {kUserBase, kUserBase + kAvailOff, kUserBase + kUsedOff}).ok());
  EXPECT_FALSE(q.configured());
}

TEST(VhostUserParseTest, RejectsBadHeadersAndPayloads) {
  VhostUserHeader h;
  uint8_t raw[12] = {};
  uint32_t req = 1, flags = 2, size = 0;  // version 2
  memcpy(raw, &req, 4);
  memcpy(raw + 4, &flags, 4);
  memcpy(raw + 8, &size, 4);
  EXPECT_FALSE(ParseVhostUserHeader(raw, 12, &h).ok());
  flags = 1;
  size = 1 << 20;  // oversized payload
  memcpy(raw + 4, &flags, 4);
  memcpy(raw + 8, &size, 4);
  EXPECT_FALSE(ParseVhostUserHeader(raw, 12, &h).ok());
  EXPECT_FALSE(ParseVhostUserHeader(raw, 11, &h).ok());
  size = 8;
  memcpy(raw + 8, &size, 4);
  EXPECT_TRUE(ParseVhostUserHeader(raw, 12, &h).ok());

  // Two overlapping regions.
  std::vector<uint8_t> mt(8 + 64, 0);
  uint32_t n = 2;
  memcpy(mt.data(), &n, 4);
  uint64_t r0[4] = {0, 0x10000, 0x7000000, 0}, r1[4] = {0x8000, 0x10000, 0x9000000, 0};
  memcpy(mt.data() + 8, r0, 32);
  memcpy(mt.data() + 40, r1, 32);
  EXPECT_FALSE(ParseMemTable(mt, 2).ok());
  r1[0] = 0x20000;
  memcpy(mt.data() + 40, r1, 32);
  EXPECT_TRUE(ParseMemTable(mt, 2).ok());
  EXPECT_FALSE(ParseMemTable(mt, 1).ok());  // fd count must match
  uint64_t wrap[4] = {UINT64_MAX - 10, 0x1000, 0, 0};
  memcpy(mt.data() + 40, wrap, 32);
  EXPECT_FALSE(ParseMemTable(mt, 2).ok());

  std::vector<uint8_t> cfg(12 + 8, 0);
  uint32_t off = kVirtioBlkConfigSize - 4, sz = 8;
  memcpy(cfg.data(), &off, 4);
  memcpy(cfg.data() + 4, &sz, 4);
  EXPECT_FALSE(ParseConfigAccess(cfg).ok());
  bool no_fd;
  std::vector<uint8_t> kick(8, 0);
  kick[0] = 9;  // queue 9 of 4
  EXPECT_FALSE(ParseVringFdIndex(kick, 4, 1, &no_fd).ok());
  kick[0] = 1;
  EXPECT_TRUE(ParseVringFdIndex(kick, 4, 1, &no_fd).ok());
  EXPECT_FALSE(ParseVringFdIndex(kick, 4, 0, &no_fd).ok());  // announced an fd, sent none
}

// ---- The server over a real socket, with a front-end written here. ----

class Frontend {
 public:
  explicit Frontend(const std::string& path) {
    fd_ = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un addr;
    memset(&addr, 0, sizeof(addr));
    addr.sun_family = AF_UNIX;
    strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
    connected_ = connect(fd_, reinterpret_cast<struct sockaddr*>(&addr), sizeof(addr)) == 0;
  }
  ~Frontend() { close(fd_); }
  bool connected() const { return connected_; }
  int fd() const { return fd_; }

  bool Send(uint32_t req, const void* payload, uint32_t size, std::vector<int> fds = {},
            uint32_t flags = 1) {
    std::vector<uint8_t> buf(12 + size);
    memcpy(buf.data(), &req, 4);
    memcpy(buf.data() + 4, &flags, 4);
    memcpy(buf.data() + 8, &size, 4);
    if (size) memcpy(buf.data() + 12, payload, size);
    struct iovec iov = {buf.data(), buf.size()};
    struct msghdr mh;
    memset(&mh, 0, sizeof(mh));
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    char cbuf[CMSG_SPACE(sizeof(int) * 8)];
    if (!fds.empty()) {
      mh.msg_control = cbuf;
      mh.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
      struct cmsghdr* c = CMSG_FIRSTHDR(&mh);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
      memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
    }
    return sendmsg(fd_, &mh, MSG_NOSIGNAL) == static_cast<ssize_t>(buf.size());
  }
  // Reads one reply; empty on EOF.
  std::vector<uint8_t> Reply() {
    uint8_t hdr[12];
    if (!ReadAll(hdr, 12)) return {};
    uint32_t size;
    memcpy(&size, hdr + 8, 4);
    std::vector<uint8_t> out(12 + size);
    memcpy(out.data(), hdr, 12);
    if (size && !ReadAll(out.data() + 12, size)) return {};
    return out;
  }
  uint64_t ReplyU64() {
    std::vector<uint8_t> r = Reply();
    uint64_t v = ~0ull;
    if (r.size() == 20) memcpy(&v, r.data() + 12, 8);
    return v;
  }
  bool ClosedByPeer() {
    struct pollfd p = {fd_, POLLIN, 0};
    if (poll(&p, 1, 10000) <= 0) return false;
    char c;
    return recv(fd_, &c, 1, 0) == 0;
  }

 private:
  bool ReadAll(uint8_t* p, size_t n) {
    size_t got = 0;
    while (got < n) {
      ssize_t r = recv(fd_, p + got, n - got, 0);
      if (r <= 0) return false;
      got += static_cast<size_t>(r);
    }
    return true;
  }
  int fd_;
  bool connected_ = false;
};

// Guest memory and one started queue (queue 0, kQ entries) of a connected front-end.
struct StartedQueue {
  uint8_t* mem = nullptr;
  int kick = -1, call = -1;
  ~StartedQueue() {
    if (mem != nullptr) munmap(mem, kMemSize);
    if (kick >= 0) close(kick);
    if (call >= 0) close(call);
  }
  // Kicks the queue.
  bool Kick() {
    uint64_t one = 1;
    return write(kick, &one, 8) == 8;
  }
  // Waits (up to 30 s) for the back-end to signal the call eventfd.
  bool WaitCall() {
    struct pollfd p = {call, POLLIN, 0};
    uint64_t got;
    return poll(&p, 1, 30000) == 1 && read(call, &got, 8) == 8;
  }
};

// What QEMU does at start: features, protocol features, a memfd memory table, one
// queue's size, base, addresses, kick and call eventfds, enable. `features_out` gets
// GET_FEATURES' answer.
void StartQueue(Frontend& fe, StartedQueue* q, uint64_t* features_out = nullptr) {
  ASSERT_TRUE(fe.Send(kVhostUserGetFeatures, nullptr, 0));
  uint64_t features = fe.ReplyU64();
  if (features_out != nullptr) *features_out = features;
  ASSERT_TRUE(fe.Send(kVhostUserSetOwner, nullptr, 0));
  ASSERT_TRUE(fe.Send(kVhostUserGetProtocolFeatures, nullptr, 0));
  uint64_t pf = fe.ReplyU64();
  ASSERT_TRUE(pf & (1ull << kVhostUserProtocolFConfig));
  ASSERT_TRUE(fe.Send(kVhostUserSetProtocolFeatures, &pf, 8));
  uint64_t acked = features & ~(1ull << kVirtioBlkFMq);
  ASSERT_TRUE(fe.Send(kVhostUserSetFeatures, &acked, 8));
  // Guest memory: a memfd, as QEMU's memory-backend-memfd.
  int memfd = memfd_create("guest", MFD_CLOEXEC);
  ASSERT_EQ(ftruncate(memfd, kMemSize), 0);
  q->mem =
      static_cast<uint8_t*>(mmap(nullptr, kMemSize, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0));
  ASSERT_NE(q->mem, MAP_FAILED);
  uint64_t table[1 + 4] = {1, kGuestBase, kMemSize, kUserBase, 0};
  ASSERT_TRUE(fe.Send(kVhostUserSetMemTable, table, 8 + 32, {memfd}, 1 | kVhostUserNeedReplyFlag));
  EXPECT_EQ(fe.ReplyU64(), 0u);  // REPLY_ACK: success
  close(memfd);
  uint32_t num[2] = {0, kQ}, base[2] = {0, 0};
  ASSERT_TRUE(fe.Send(kVhostUserSetVringNum, num, 8));
  ASSERT_TRUE(fe.Send(kVhostUserSetVringBase, base, 8));
  uint8_t addr[40] = {};
  uint64_t desc = kUserBase + kDescOff, used = kUserBase + kUsedOff, avail = kUserBase + kAvailOff;
  memcpy(addr + 8, &desc, 8);
  memcpy(addr + 16, &used, 8);
  memcpy(addr + 24, &avail, 8);
  ASSERT_TRUE(fe.Send(kVhostUserSetVringAddr, addr, 40));
  q->kick = eventfd(0, EFD_CLOEXEC);
  q->call = eventfd(0, EFD_CLOEXEC);
  uint64_t q0 = 0;
  ASSERT_TRUE(fe.Send(kVhostUserSetVringKick, &q0, 8, {q->kick}));
  ASSERT_TRUE(fe.Send(kVhostUserSetVringCall, &q0, 8, {q->call}));
  uint32_t enable[2] = {0, 1};
  ASSERT_TRUE(fe.Send(kVhostUserSetVringEnable, enable, 8, {}, 1 | kVhostUserNeedReplyFlag));
  EXPECT_EQ(fe.ReplyU64(), 0u);
}

TEST(VhostUserBlkServerTest, ServesAFrontEndAndAcceptsItAgainAfterARestart) {
  TempDir tmp;
  auto io = std::make_shared<MemBlockIo>(8 << 20);
  std::string sock = tmp.path() + "/blk.sock";
  auto server = VhostUserBlkServer::Start(sock, io, {.num_queues = 2, .serial = "stellarium-test"});
  ASSERT_TRUE(server.ok()) << server.status().ToString();

  for (int round = 0; round < 2; ++round) {  // the second round is a "restarted VMM"
    Frontend fe(sock);
    ASSERT_TRUE(fe.connected());
    ASSERT_TRUE(fe.Send(kVhostUserGetQueueNum, nullptr, 0));
    EXPECT_EQ(fe.ReplyU64(), 2u);
    uint32_t cfg_req[3 + 4] = {0, 16, 0};  // read capacity..seg_max
    ASSERT_TRUE(fe.Send(kVhostUserGetConfig, cfg_req, 12 + 16));
    std::vector<uint8_t> cfg = fe.Reply();
    ASSERT_EQ(cfg.size(), 12u + 12 + 16);
    uint64_t capacity;
    memcpy(&capacity, cfg.data() + 24, 8);
    EXPECT_EQ(capacity, (8u << 20) / 512);
    uint32_t seg_max;
    memcpy(&seg_max, cfg.data() + 36, 4);
    EXPECT_EQ(seg_max, 254u);  // 256-entry rings fit a whole chain without indirect tables
    StartedQueue q;
    uint64_t features = 0;
    ASSERT_NO_FATAL_FAILURE(StartQueue(fe, &q, &features));
    EXPECT_TRUE(features & (1ull << kVirtioFVersion1));
    EXPECT_TRUE(features & (1ull << kVhostUserFProtocolFeatures));
    EXPECT_TRUE(features & (1ull << kVirtioRingFIndirectDesc));
    EXPECT_FALSE(features & (1ull << kVirtioBlkFRo));

    // A write then a read, each kicked and waited for on the call eventfd.
    FakeDriver drv(q.mem);
    std::vector<char> data = PatternBytes(65536, 40 + round);
    uint64_t d = drv.Request(0, kVirtioBlkTOut, 2048, 65536);
    memcpy(q.mem + d, data.data(), data.size());
    drv.Publish(0);
    ASSERT_TRUE(q.Kick());
    ASSERT_TRUE(q.WaitCall());
    EXPECT_EQ(drv.StatusAfter(d, 65536), kVirtioBlkSOk);
    uint64_t r = drv.Request(3, kVirtioBlkTIn, 2048, 65536, 0x80000);
    drv.Publish(3);
    ASSERT_TRUE(q.Kick());
    ASSERT_TRUE(q.WaitCall());
    EXPECT_EQ(drv.StatusAfter(r, 65536), kVirtioBlkSOk);
    EXPECT_EQ(memcmp(q.mem + r, data.data(), 65536), 0);
    std::vector<char> vol = io->Snapshot();
    EXPECT_TRUE(std::equal(data.begin(), data.end(), vol.begin() + 2048 * 512));

    uint32_t state[2] = {0, 0};
    ASSERT_TRUE(fe.Send(kVhostUserGetVringBase, state, 8));
    std::vector<uint8_t> vb = fe.Reply();
    ASSERT_EQ(vb.size(), 20u);
    uint32_t last_avail;
    memcpy(&last_avail, vb.data() + 16, 4);
    EXPECT_EQ(last_avail, 2u);
  }
  EXPECT_EQ((*server)->connections(), 2u);
  EXPECT_EQ((*server)->last_error(), "");
}

// Two reads on one queue: the first is held inside the volume, the second completes
// first. The used ring names each request by its own head with its own length, and
// both guests buffers get their own bytes.
TEST(VhostUserBlkServerTest, RequestsCompleteOutOfOrderWithTheirOwnUsedEntries) {
  TempDir tmp;
  auto io = std::make_shared<GatedBlockIo>(8 << 20);
  std::vector<char> content = PatternBytes(8 << 20, 77);
  ASSERT_TRUE(io->Write(0, content.data(), content.size()).ok());
  std::string sock = tmp.path() + "/blk.sock";
  // No read-ahead: the second read must reach the volume itself.
  auto server =
      VhostUserBlkServer::Start(sock, io, {.num_queues = 1, .io_threads = 2, .readahead_bytes = 0});
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  Frontend fe(sock);
  StartedQueue q;
  ASSERT_NO_FATAL_FAILURE(StartQueue(fe, &q));
  FakeDriver drv(q.mem);
  io->HoldReads(0, 4096);  // request A reads sector 0..
  uint64_t a = drv.Request(0, kVirtioBlkTIn, 0, 8192);
  uint64_t b = drv.Request(3, kVirtioBlkTIn, 4096, 16384, 0x80000);  // .. B elsewhere
  drv.Publish(0);
  drv.Publish(3);
  ASSERT_TRUE(q.Kick());
  ASSERT_TRUE(io->WaitHeld(1));
  ASSERT_TRUE(q.WaitCall());
  ASSERT_EQ(drv.UsedIdx(), 1);
  EXPECT_EQ(drv.Used(0).first, 3u);  // B first
  EXPECT_EQ(drv.Used(0).second, 16384u + 1);
  EXPECT_EQ(drv.StatusAfter(b, 16384), kVirtioBlkSOk);
  EXPECT_EQ(memcmp(q.mem + b, content.data() + 4096 * 512, 16384), 0);
  EXPECT_EQ(drv.StatusAfter(a, 8192), 0xff);  // A still held
  io->Release();
  ASSERT_TRUE(q.WaitCall());
  ASSERT_EQ(drv.UsedIdx(), 2);
  EXPECT_EQ(drv.Used(1).first, 0u);
  EXPECT_EQ(drv.Used(1).second, 8192u + 1);
  EXPECT_EQ(drv.StatusAfter(a, 8192), kVirtioBlkSOk);
  EXPECT_EQ(memcmp(q.mem + a, content.data(), 8192), 0);
  EXPECT_EQ((*server)->last_error(), "");
}

// A FLUSH is executed only after the writes taken before it have completed, even when
// those run on other threads.
TEST(VhostUserBlkServerTest, FlushWaitsForTheWritesInFlight) {
  TempDir tmp;
  auto io = std::make_shared<GatedBlockIo>(8 << 20);
  std::string sock = tmp.path() + "/blk.sock";
  auto server = VhostUserBlkServer::Start(sock, io, {.num_queues = 1, .io_threads = 2});
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  Frontend fe(sock);
  StartedQueue q;
  ASSERT_NO_FATAL_FAILURE(StartQueue(fe, &q));
  FakeDriver drv(q.mem);
  io->HoldWrites(100 * 512, 101 * 512);
  uint64_t w = drv.Request(0, kVirtioBlkTOut, 100, 4096);
  memset(q.mem + w, 'w', 4096);
  drv.Publish(0);
  // FLUSH: header and status only.
  uint8_t* hdr = q.mem + 0xA0000;
  uint32_t type = kVirtioBlkTFlush;
  memset(hdr, 0, 16);
  memcpy(hdr, &type, 4);
  q.mem[0xA0010] = 0xff;
  drv.Desc(3, kGuestBase + 0xA0000, 16, kVirtqDescFNext, 4);
  drv.Desc(4, kGuestBase + 0xA0010, 1, kVirtqDescFWrite, 0);
  drv.Publish(3);
  ASSERT_TRUE(q.Kick());
  ASSERT_TRUE(io->WaitHeld(1));
  io->Release();
  while (drv.UsedIdx() < 2) ASSERT_TRUE(q.WaitCall());
  EXPECT_EQ(q.mem[0xA0010], kVirtioBlkSOk);
  EXPECT_EQ(drv.StatusAfter(w, 4096), kVirtioBlkSOk);
  EXPECT_EQ(io->Events(), "write-done flush ");
}

// A message that may remap memory or stop a ring (here GET_VRING_BASE) is answered
// only once the requests in flight are on the used ring.
TEST(VhostUserBlkServerTest, MessagesWaitForTheRequestsInFlight) {
  TempDir tmp;
  auto io = std::make_shared<GatedBlockIo>(8 << 20);
  std::string sock = tmp.path() + "/blk.sock";
  auto server =
      VhostUserBlkServer::Start(sock, io, {.num_queues = 1, .io_threads = 2, .readahead_bytes = 0});
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  Frontend fe(sock);
  StartedQueue q;
  ASSERT_NO_FATAL_FAILURE(StartQueue(fe, &q));
  FakeDriver drv(q.mem);
  // Two reads, so they run on the I/O threads (a lone one runs in the server's).
  io->HoldReads(0, 8192);
  uint64_t r1 = drv.Request(0, kVirtioBlkTIn, 0, 4096);
  uint64_t r2 = drv.Request(3, kVirtioBlkTIn, 8, 4096, 0x80000);
  drv.Publish(0);
  drv.Publish(3);
  ASSERT_TRUE(q.Kick());
  ASSERT_TRUE(io->WaitHeld(2));
  uint32_t state[2] = {0, 0};
  ASSERT_TRUE(fe.Send(kVhostUserGetVringBase, state, 8));
  struct pollfd p = {fe.fd(), POLLIN, 0};
  EXPECT_EQ(poll(&p, 1, 200), 0) << "answered while requests were in flight";
  io->Release();
  std::vector<uint8_t> vb = fe.Reply();
  ASSERT_EQ(vb.size(), 20u);
  EXPECT_EQ(drv.UsedIdx(), 2);  // on the used ring before the answer
  EXPECT_EQ(drv.StatusAfter(r1, 4096), kVirtioBlkSOk);
  EXPECT_EQ(drv.StatusAfter(r2, 4096), kVirtioBlkSOk);
  uint32_t last_avail;
  memcpy(&last_avail, vb.data() + 16, 4);
  EXPECT_EQ(last_avail, 2u);
}

TEST(VhostUserBlkServerTest, ProtocolViolationsCloseTheConnectionButNotTheServer) {
  TempDir tmp;
  auto io = std::make_shared<MemBlockIo>(1 << 20, 4096, /*read_only=*/true);
  std::string sock = tmp.path() + "/blk.sock";
  auto server = VhostUserBlkServer::Start(sock, io, {});
  ASSERT_TRUE(server.ok());
  {
    Frontend fe(sock);
    ASSERT_TRUE(fe.Send(kVhostUserGetFeatures, nullptr, 0));
    EXPECT_TRUE(fe.ReplyU64() & (1ull << kVirtioBlkFRo));  // read-only volume advertised
    uint64_t bogus = 1ull << 63;                           // a feature never offered
    ASSERT_TRUE(fe.Send(kVhostUserSetFeatures, &bogus, 8));
    EXPECT_TRUE(fe.ClosedByPeer());
  }
  {
    Frontend fe(sock);
    uint32_t state[2] = {200, 16};  // queue 200 does not exist
    ASSERT_TRUE(fe.Send(kVhostUserSetVringNum, state, 8));
    EXPECT_TRUE(fe.ClosedByPeer());
  }
  {
    Frontend fe(sock);
    ASSERT_TRUE(fe.Send(kVhostUserGetFeatures, nullptr, 0, {}, 2));  // bad version
    EXPECT_TRUE(fe.ClosedByPeer());
  }
  {
    // A memory table whose region is larger than the memfd behind it.
    Frontend fe(sock);
    int memfd = memfd_create("small", MFD_CLOEXEC);
    ASSERT_EQ(ftruncate(memfd, 4096), 0);
    uint64_t table[5] = {1, 0, 1 << 20, 0x7000000, 0};
    ASSERT_TRUE(fe.Send(kVhostUserSetMemTable, table, 40, {memfd}));
    close(memfd);
    EXPECT_TRUE(fe.ClosedByPeer());
  }
  EXPECT_NE((*server)->last_error(), "");
  Frontend fe(sock);  // still serving
  ASSERT_TRUE(fe.Send(kVhostUserGetQueueNum, nullptr, 0));
  EXPECT_EQ(fe.ReplyU64(), 4u);
  EXPECT_GE((*server)->connections(), 5u);
}

}  // namespace
}  // namespace stellarium::node
