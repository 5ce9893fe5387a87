// ChunkStore on a real RocksDB: locators, hints, racing copies and their reclamation.
#include "core/chunk_store.h"

#include <fcntl.h>
#include <rocksdb/db.h>
#include <sys/mman.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <thread>

#include "core/local/db.h"
#include "core/local/local_backend.h"
#include "core/format.h"
#include "tests/core/test_util.h"

namespace stellarium {
namespace {

using testing::RandomBytes;
using testing::TempDir;
using testing::Unwrap;

class ChunkStoreTest : public ::testing::Test {
 protected:
  void SetUp() override { Open(); }
  // (Re)opens the store's backend with disk_readahead_.
  void Open() {
    chunks_.reset();
    backend_.reset();
    LocalBackendOptions o;
    o.dir = dir_ / "store";
    o.disk_readahead_bytes = disk_readahead_;
    backend_ = Unwrap(LocalBackend::Open(o));
    db_ = backend_->db();
    chunks_ = std::make_unique<ChunkStore>(backend_.get());
  }
  // Stores one reference to `data` (with its bytes) in a batch of its own.
  uint64_t Put(const std::string& data, Placement* place = nullptr) {
    auto batch = backend_->NewBatch();
    uint64_t loc = Unwrap(chunks_->AddRefWithBytes(batch.get(), Sha256(data.data(), data.size()), data, place));
    EXPECT_TRUE(backend_->Commit(batch.get(), Durability::kSync, "test").ok());
    return loc;
  }
  // Reads refs and returns each one's bytes by index.
  Result<std::vector<std::string>> ReadAll(const std::vector<ChunkRef>& refs) {
    std::vector<std::string> out(refs.size());
    RETURN_IF_ERROR(chunks_->ReadMany(refs, "test", [&](size_t i, std::string_view d) {
      out[i] = std::string(d);
      return Status::Ok();
    }));
    return out;
  }

  TempDir dir_;
  uint64_t disk_readahead_ = 0;  // LocalBackendOptions::disk_readahead_bytes
  std::unique_ptr<LocalBackend> backend_;
  Db* db_ = nullptr;  // backend_'s
  std::unique_ptr<ChunkStore> chunks_;
  std::mt19937_64 rng_{7};
};

TEST_F(ChunkStoreTest, ReservedPlacesAreConsecutiveAndSurviveReopen) {
  Placement p = Unwrap(backend_->bytes().Reserve(3));
  std::vector<uint64_t> locs;
  for (int i = 0; i < 3; ++i) locs.push_back(Put(RandomBytes(rng_, 4096), &p));
  EXPECT_EQ(locs[1], locs[0] + 1);
  EXPECT_EQ(locs[2], locs[0] + 2);
  uint64_t after = Put(RandomBytes(rng_, 4096));  // the placement is used up
  EXPECT_GT(after, locs[2]);
  // A reopened store hands out locators past every stored one.
  Open();
  EXPECT_GT(Put(RandomBytes(rng_, 4096)), after);
}

// Two writers storing the same chunk: the first copy is the chunk's, the second is
// unreferenced, a read through the second copy's (soon stale) hint is still right, and
// gc reclaims exactly the second copy's bytes.
TEST_F(ChunkStoreTest, RacingCopyIsReadCorrectlyAndReclaimed) {
  std::string a = RandomBytes(rng_, 4096), b = RandomBytes(rng_, 4096);
  ChunkId ida = Sha256(a.data(), a.size()), idb = Sha256(b.data(), b.size());
  uint64_t first = Put(a), second = Put(a), other = Put(b);
  ASSERT_NE(first, second);
  EXPECT_EQ(Unwrap(chunks_->Locate(ida)), first);
  EXPECT_EQ(Unwrap(chunks_->RefCount(ida)), 2);

  SweepResult sw = Unwrap(chunks_->Sweep());
  EXPECT_EQ(sw.chunks_deleted, 0u);
  EXPECT_EQ(sw.bytes_freed, 4096u) << "exactly the racing copy's bytes";
  EXPECT_EQ(Unwrap(chunks_->Totals()).bytes, 2 * 4096u);

  // Hints: right, stale (bytes gone), another chunk's bytes, none.
  auto got = Unwrap(ReadAll({{ida, first}, {ida, second}, {ida, other}, {ida, 0}, {idb, other}}));
  for (int i = 0; i < 4; ++i) EXPECT_EQ(got[i], a) << "ref " << i;
  EXPECT_EQ(got[4], b);
}

TEST_F(ChunkStoreTest, DroppedChunksGoWithTheirBytes) {
  std::string a = RandomBytes(rng_, 4096);
  ChunkId id = Sha256(a.data(), a.size());
  Put(a);
  auto drop = backend_->NewBatch();
  chunks_->DropRef(drop.get(), id);
  ASSERT_TRUE(backend_->Commit(drop.get(), Durability::kSync, "test").ok());
  EXPECT_TRUE(Unwrap(chunks_->Contains(id))) << "stays until swept";
  SweepResult sw = Unwrap(chunks_->Sweep());
  EXPECT_EQ(sw.chunks_deleted, 1u);
  EXPECT_EQ(sw.bytes_freed, 4096u);
  EXPECT_FALSE(Unwrap(chunks_->Contains(id)));
  ChunkTotals t = Unwrap(chunks_->Totals());
  EXPECT_EQ(t.chunks, 0u);
  EXPECT_EQ(t.bytes, 0u);
  auto r = ReadAll({{id, 0}});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(r.status().message().find("missing"), std::string::npos) << r.status().message();
}

// Wrong bytes at the chunk's own locator are corruption even when a hint led there.
TEST_F(ChunkStoreTest, WrongBytesAtTheIndexedPlaceAreDataLoss) {
  std::string a = RandomBytes(rng_, 4096);
  ChunkId id = Sha256(a.data(), a.size());
  uint64_t loc = Put(a);
  std::string bad = a;
  bad[100] ^= 1;
  ASSERT_TRUE(
      db_->raw()->Put(rocksdb::WriteOptions(), db_->cf(Cf::kData), format::DataKey(loc), bad).ok());
  for (uint64_t hint : {loc, uint64_t{0}}) {
    auto r = ReadAll({{id, hint}});
    ASSERT_FALSE(r.ok()) << "hint " << hint;
    EXPECT_EQ(r.status().code(), StatusCode::kDataLoss);
    EXPECT_NE(r.status().message().find(ToHex(id)), std::string::npos) << r.status().message();
  }
}

// The presence filter answers "not stored" without the index; it must never say so of
// a stored chunk: one stored before the store was opened (loaded by the scan), one
// stored with a volume write's batch, one ingested by an import.
TEST_F(ChunkStoreTest, PresenceFilterNeverHidesAStoredChunk) {
  std::vector<ChunkId> before;
  for (int i = 0; i < 3000; ++i) {
    std::string d = RandomBytes(rng_, 4096);
    before.push_back(Sha256(d.data(), d.size()));
    Put(d);
  }
  Open();
  backend_->index().WaitForPresenceFilter();
  std::vector<uint64_t> locs;
  ASSERT_OK(backend_->index().LocateMany(before, &locs));
  for (size_t i = 0; i < before.size(); ++i) ASSERT_NE(locs[i], 0u) << "chunk " << i << " hidden";
  for (const ChunkId& id : before) ASSERT_NE(Unwrap(chunks_->Locate(id)), 0u);

  std::string w = RandomBytes(rng_, 4096);
  ChunkId wid = Sha256(w.data(), w.size());
  Put(w);
  EXPECT_NE(Unwrap(chunks_->Locate(wid)), 0u);

  std::string g = RandomBytes(rng_, 4096);
  ChunkId gid = Sha256(g.data(), g.size());
  auto batch = backend_->NewBulkBatch("test");
  Placement p = Unwrap(backend_->bytes().Reserve(1));
  ASSERT_OK(backend_->bytes().Put(batch.get(), p.next, g));
  ASSERT_OK(backend_->index().AddRefs(batch.get(), gid, 1, p.next));
  ASSERT_OK(batch->Ingest());
  EXPECT_EQ(Unwrap(chunks_->Locate(gid)), p.next);
  EXPECT_EQ(Unwrap(ReadAll({{gid, 0}}))[0], g);

  std::string absent = RandomBytes(rng_, 4096);
  EXPECT_EQ(Unwrap(chunks_->Locate(Sha256(absent.data(), absent.size()))), 0u);
}

// Disk read-ahead, observed in the page cache (mincore) of real table files.
class DiskReadAheadTest : public ChunkStoreTest {
 protected:
  static constexpr uint64_t kPerTable = 2048;  // 4 KiB chunks: 8 MiB tables
  static constexpr uint64_t kMiB = 1 << 20;
  // kTables tables of random chunks at locators 1..kTables*kPerTable, one ingest each,
  // so table t (from 0) holds locators t*kPerTable+1 .. (t+1)*kPerTable in key order.
  void SetUp() override {
    ChunkStoreTest::SetUp();
    for (uint64_t t = 0; t < kTables; ++t) {
      auto batch = db_->NewIngestBatch("test");
      for (uint64_t i = 1; i <= kPerTable; ++i) {
        std::string d = RandomBytes(rng_, 4096);
        const uint64_t loc = t * kPerTable + i;
        ids_[loc] = Sha256(d.data(), d.size());
        ASSERT_OK(batch->Put(Cf::kData, format::DataKey(loc), d));
      }
      ASSERT_OK(batch->Ingest());
    }
    rocksdb::ColumnFamilyMetaData meta;
    db_->raw()->GetColumnFamilyMetaData(db_->cf(Cf::kData), &meta);
    for (const auto& level : meta.levels) {
      for (const auto& f : level.files) {
        tables_[format::DecodeDataKey(f.smallestkey) / kPerTable] = f.db_path + f.name;
      }
    }
    ASSERT_EQ(tables_.size(), kTables);
    for (const auto& [t, path] : tables_) ASSERT_GE(std::filesystem::file_size(path), 8 * kMiB);
  }
  // Drops the tables' pages from the page cache (those mapped by the store stay).
  void Evict() {
    for (const auto& [t, path] : tables_) {
      int fd = ::open(path.c_str(), O_RDONLY);
      ASSERT_GE(fd, 0) << path;
      ::fdatasync(fd);
      ASSERT_EQ(::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED), 0);
      ::close(fd);
    }
  }
  // Resident pages of table t in [from, to) bytes.
  size_t Resident(uint64_t t, uint64_t from, uint64_t to) {
    int fd = ::open(tables_.at(t).c_str(), O_RDONLY);
    EXPECT_GE(fd, 0);
    const size_t size = std::filesystem::file_size(tables_.at(t));
    void* map = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
    ::close(fd);
    EXPECT_NE(map, MAP_FAILED);
    const size_t page = ::sysconf(_SC_PAGESIZE);
    std::vector<unsigned char> vec((size + page - 1) / page);
    EXPECT_EQ(::mincore(map, size, vec.data()), 0);
    ::munmap(map, size);
    size_t n = 0;
    for (uint64_t p = from / page; p < to / page && p < vec.size(); ++p) n += vec[p] & 1;
    return n;
  }
  // Waits (up to 20 s: the disk reads in the background) until [from, to) of table t
  // is all in the page cache; returns whether it got there.
  bool BecomesResident(uint64_t t, uint64_t from, uint64_t to) {
    const size_t want = (to - from) / ::sysconf(_SC_PAGESIZE);
    for (int i = 0; i < 2000; ++i) {
      if (Resident(t, from, to) == want) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return false;
  }
  // bytes_read_ahead() once the store's read-ahead thread has finished asking: the
  // counter grows after each whole ask, and pages may arrive before the ask returns.
  uint64_t SettledBytesReadAhead() {
    uint64_t last = backend_->bytes().bytes_read_ahead();
    for (int i = 0; i < 100; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      const uint64_t now = backend_->bytes().bytes_read_ahead();
      if (now == last) return now;
      last = now;
    }
    return last;
  }
  // Reads locators [first, first+n) (every `stride`-th) with their hints.
  void ReadRun(uint64_t first, uint64_t n, uint64_t stride = 1) {
    std::vector<ChunkRef> refs;
    for (uint64_t i = 0; i < n; ++i)
      refs.push_back({ids_.at(first + i * stride), first + i * stride});
    auto read = ReadAll(refs);
    ASSERT_OK(read.status());
  }
  static constexpr uint64_t kTables = 4;
  std::map<uint64_t, ChunkId> ids_;         // locator -> id
  std::map<uint64_t, std::string> tables_;  // table number -> path
};

// Db::Prefetch reads the part of a table that holds the keys asked for (estimated from
// the table's key range, plus a margin) and leaves tables outside the range alone.
TEST_F(DiskReadAheadTest, PrefetchReadsTheAskedKeysOfTheirTable) {
  Evict();
  ASSERT_EQ(Resident(1, 2 * kMiB, 6 * kMiB), 0u);
  // The middle half of table 1: locators 2561..3584, its bytes about [2, 6) MiB.
  const uint64_t asked =
      db_->Prefetch(Cf::kData, format::DataKey(kPerTable + 513), format::DataKey(kPerTable + 1536));
  EXPECT_GE(asked, 4 * kMiB);
  EXPECT_LE(asked, 4 * kMiB + 2 * Db::kPrefetchMargin + 256 * 1024);
  EXPECT_TRUE(BecomesResident(1, 2 * kMiB, 6 * kMiB));
  // Nothing of the other tables, nor of table 1 beyond the margin.
  for (uint64_t t : {0, 2, 3}) EXPECT_EQ(Resident(t, 1 * kMiB, 7 * kMiB), 0u) << "table " << t;
  EXPECT_EQ(Resident(1, 0, kMiB - 64 * 1024), 0u);
  // A range past every table, or reversed, asks for nothing.
  EXPECT_EQ(db_->Prefetch(Cf::kData, format::DataKey(1000000), format::DataKey(2000000)), 0u);
  EXPECT_EQ(db_->Prefetch(Cf::kData, format::DataKey(3000), format::DataKey(2000)), 0u);
}

// A long, dense run of chunks makes the store read the chunks that follow it ahead
// from disk; short runs, sparse runs, and a store with read-ahead off do not.
TEST_F(DiskReadAheadTest, LongDenseRunsReadTheFollowingChunksAhead) {
  disk_readahead_ = 12 * kMiB;
  Open();
  Evict();
  // Short (100 chunks) and sparse (256 chunks over 1024 locators) runs: nothing.
  ReadRun(1, 100);
  ReadRun(2 * kPerTable + 1, 256, 4);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_EQ(backend_->bytes().bytes_read_ahead(), 0u);
  EXPECT_EQ(Resident(1, 1 * kMiB, 7 * kMiB), 0u);
  // 256 chunks in a row at the start of table 0: the next 12 MiB (the rest of table 0
  // and table 1's first half) are asked for and arrive, table 3 is left alone.
  ReadRun(1, 256);
  EXPECT_TRUE(BecomesResident(0, 2 * kMiB, 7 * kMiB));
  EXPECT_TRUE(BecomesResident(1, 0, 3 * kMiB));
  const uint64_t asked = SettledBytesReadAhead();
  EXPECT_GE(asked, 11 * kMiB);
  EXPECT_EQ(Resident(3, 1 * kMiB, 7 * kMiB), 0u);
  // The reader going on within what was asked for asks nothing more.
  ReadRun(257, 256);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_EQ(backend_->bytes().bytes_read_ahead(), asked);

  // Read-ahead off: the same long run asks for nothing.
  disk_readahead_ = 0;
  Open();
  Evict();
  ReadRun(1, 256);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_EQ(backend_->bytes().bytes_read_ahead(), 0u);
  EXPECT_EQ(Resident(1, 1 * kMiB, 7 * kMiB), 0u);
}

}  // namespace
}  // namespace stellarium
