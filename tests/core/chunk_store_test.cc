// ChunkStore on a real RocksDB: locators, hints, racing copies and their reclamation.
#include "core/chunk_store.h"

#include <rocksdb/db.h>

#include "core/db.h"
#include "core/format.h"
#include "tests/core/test_util.h"

namespace stellarium {
namespace {

using testing::RandomBytes;
using testing::TempDir;
using testing::Unwrap;

class ChunkStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    db_ = Unwrap(Db::Open(dir_ / "store", true, /*mmap_reads=*/true));
    chunks_ = Unwrap(NewRocksChunkStore(db_.get()));
  }
  // Stores one reference to `data` (with its bytes) in a batch of its own.
  uint64_t Put(const std::string& data, Placement* place = nullptr) {
    Txn txn;
    uint64_t loc = chunks_->AddRef(&txn, Sha256(data.data(), data.size()), data, place);
    EXPECT_TRUE(db_->Write(&txn, WriteMode::kSync, "test").ok());
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
  std::unique_ptr<Db> db_;
  std::unique_ptr<ChunkStore> chunks_;
  std::mt19937_64 rng_{7};
};

TEST_F(ChunkStoreTest, ReservedPlacesAreConsecutiveAndSurviveReopen) {
  Placement p = chunks_->Reserve(3);
  std::vector<uint64_t> locs;
  for (int i = 0; i < 3; ++i) locs.push_back(Put(RandomBytes(rng_, 4096), &p));
  EXPECT_EQ(locs[1], locs[0] + 1);
  EXPECT_EQ(locs[2], locs[0] + 2);
  uint64_t after = Put(RandomBytes(rng_, 4096));  // the placement is used up
  EXPECT_GT(after, locs[2]);
  // A reopened store hands out locators past every stored one.
  chunks_.reset();
  db_.reset();
  SetUp();
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
  Txn drop;
  chunks_->DropRef(&drop, id);
  ASSERT_TRUE(db_->Write(&drop, WriteMode::kSync, "test").ok());
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
  chunks_.reset();
  db_.reset();
  SetUp();
  chunks_->WaitForPresenceFilter();
  std::vector<uint64_t> locs;
  ASSERT_OK(chunks_->LocateMany(before, &locs));
  for (size_t i = 0; i < before.size(); ++i) ASSERT_NE(locs[i], 0u) << "chunk " << i << " hidden";
  for (const ChunkId& id : before) ASSERT_NE(Unwrap(chunks_->Locate(id)), 0u);

  std::string w = RandomBytes(rng_, 4096);
  ChunkId wid = Sha256(w.data(), w.size());
  Put(w);
  EXPECT_NE(Unwrap(chunks_->Locate(wid)), 0u);

  std::string g = RandomBytes(rng_, 4096);
  ChunkId gid = Sha256(g.data(), g.size());
  auto batch = db_->NewIngestBatch("test");
  Placement p = chunks_->Reserve(1);
  ASSERT_OK(chunks_->StageBytes(batch.get(), p.next, g));
  ASSERT_OK(chunks_->StageRefs(batch.get(), gid, 1, p.next));
  ASSERT_OK(batch->Ingest());
  EXPECT_EQ(Unwrap(chunks_->Locate(gid)), p.next);
  EXPECT_EQ(Unwrap(ReadAll({{gid, 0}}))[0], g);

  std::string absent = RandomBytes(rng_, 4096);
  EXPECT_EQ(Unwrap(chunks_->Locate(Sha256(absent.data(), absent.size()))), 0u);
}

}  // namespace
}  // namespace stellarium
