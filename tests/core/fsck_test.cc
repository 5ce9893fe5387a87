// Fsck against real damage on disk: chunks whose bytes were changed, table blocks that
// no longer pass RocksDB's checksums, a block-map table that cannot be read. Fsck must
// report every problem in one pass, name whose data is damaged, and not bury a cause
// under the problems that follow from it.
#include <fcntl.h>
#include <rocksdb/db.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include "core/image_source.h"
#include "core/store.h"
#include "tests/core/test_util.h"

namespace stellarium {
namespace {

using testing::RandomBytes;
using testing::TempDir;
using testing::Unwrap;

class FsckTest : public ::testing::Test {
 protected:
  void SetUp() override { Reopen(); }
  void Reopen() {
    store_.reset();
    StoreOptions o;
    o.path = dir_ / "store";
    store_ = Unwrap(Store::Open(o));
  }
  // Imports `blocks` random 4 KiB blocks as a volume.
  VolumeInfo Import(const std::string& name, size_t blocks) {
    ImportOptions o;
    o.volume.name = name;
    return Unwrap(store_->ImportImage(*NewMemoryImageSource(name, RandomBytes(rng_, blocks * 4096)), o))
        .volume;
  }
  // With the store closed: the table files of one column family, and a function of the
  // raw database for changing values under their keys.
  std::vector<std::string> TableFiles(const std::string& family) {
    std::vector<std::string> files;
    WithRawDb([&](rocksdb::DB* db, rocksdb::ColumnFamilyHandle* cf) {
      rocksdb::ColumnFamilyMetaData meta;
      db->GetColumnFamilyMetaData(cf, &meta);
      for (const auto& level : meta.levels) {
        for (const auto& f : level.files) files.push_back(f.db_path + f.name);
      }
    }, family);
    return files;
  }
  void WithRawDb(const std::function<void(rocksdb::DB*, rocksdb::ColumnFamilyHandle*)>& fn,
                 const std::string& family) {
    store_.reset();
    rocksdb::DBOptions dbo;
    std::vector<std::string> names;
    ASSERT_TRUE(rocksdb::DB::ListColumnFamilies(dbo, dir_ / "store/db", &names).ok());
    std::vector<rocksdb::ColumnFamilyDescriptor> cfs;
    for (const auto& n : names) cfs.emplace_back(n, rocksdb::ColumnFamilyOptions());
    std::vector<rocksdb::ColumnFamilyHandle*> handles;
    rocksdb::DB* raw;
    ASSERT_TRUE(rocksdb::DB::Open(dbo, dir_ / "store/db", cfs, &handles, &raw).ok());
    const size_t i = std::find(names.begin(), names.end(), family) - names.begin();
    ASSERT_LT(i, names.size());
    fn(raw, handles[i]);
    for (auto* h : handles) raw->DestroyColumnFamilyHandle(h);
    delete raw;
  }
  // Flips one byte of a file.
  static void Flip(const std::string& path, off_t at) {
    int fd = ::open(path.c_str(), O_RDWR);
    ASSERT_GE(fd, 0) << path;
    char c;
    ASSERT_EQ(::pread(fd, &c, 1, at), 1);
    c ^= 0x5a;
    ASSERT_EQ(::pwrite(fd, &c, 1, at), 1);
    ::close(fd);
  }
  size_t Count(const FsckReport& r, const std::string& kind) {
    auto it = r.problems.find(kind);
    return it == r.problems.end() ? 0 : it->second;
  }
  static size_t Lines(const FsckReport& r, const std::string& has) {
    size_t n = 0;
    for (const auto& e : r.errors) n += e.find(has) != std::string::npos;
    return n;
  }

  TempDir dir_;
  std::unique_ptr<Store> store_;
  std::mt19937_64 rng_{11};
};

// Two chunks whose bytes changed under their keys (RocksDB's checksums pass): both are
// reported, every chunk is checked, and each line names the volume and block.
TEST_F(FsckTest, EveryCorruptChunkIsReportedWithTheVolumesItBelongsTo) {
  const VolumeInfo a = Import("alpha", 300);
  CreateVolumeRequest clone;
  clone.name = "beta";
  const VolumeInfo b = Unwrap(store_->CloneVolume(clone, a.id));
  const uint64_t chunks = Unwrap(store_->GetStats()).chunks;
  WithRawDb([&](rocksdb::DB* db, rocksdb::ColumnFamilyHandle* data) {
    std::unique_ptr<rocksdb::Iterator> it(db->NewIterator(rocksdb::ReadOptions(), data));
    std::vector<std::pair<std::string, std::string>> changed;
    int n = 0;
    for (it->SeekToFirst(); it->Valid(); it->Next(), ++n) {
      if (n == 10 || n == 250) {
        std::string v = it->value().ToString();
        v[5] ^= 1;
        changed.emplace_back(it->key().ToString(), v);
      }
    }
    ASSERT_EQ(changed.size(), 2u);
    for (auto& [k, v] : changed) ASSERT_TRUE(db->Put(rocksdb::WriteOptions(), data, k, v).ok());
  }, "data");
  Reopen();
  const FsckReport r = Unwrap(store_->Fsck());
  EXPECT_EQ(Count(r, "corrupt chunk"), 2u);
  EXPECT_EQ(r.chunks, chunks);
  EXPECT_EQ(r.chunks_checked, chunks) << "the walk goes on past the first bad chunk";
  EXPECT_EQ(r.errors.size(), 2u);
  EXPECT_EQ(Lines(r, "volume " + a.id + " (alpha) block "), 2u);
  EXPECT_EQ(Lines(r, "volume " + b.id + " (beta) block "), 2u) << "the clone shares them";
  EXPECT_EQ(r.affected.size(), 3u) << "alpha, beta and the image";
}

// Table blocks that fail RocksDB's checksum: the chunks in them are "unreadable", the
// others are still checked, and the walk reaches the end of the index.
TEST_F(FsckTest, UnreadableChunkBlocksDoNotStopTheWalk) {
  const VolumeInfo a = Import("alpha", 2048);  // 8 MiB of chunk bytes
  const uint64_t chunks = Unwrap(store_->GetStats()).chunks;
  const auto files = TableFiles("data");
  ASSERT_EQ(files.size(), 1u);
  const off_t size = std::filesystem::file_size(files[0]);
  Flip(files[0], size / 3);
  Flip(files[0], 2 * size / 3);
  Reopen();
  const FsckReport r = Unwrap(store_->Fsck());
  EXPECT_EQ(r.chunks, chunks) << "every index entry is walked";
  EXPECT_GE(Count(r, "unreadable chunk"), 2u);
  EXPECT_LE(Count(r, "unreadable chunk"), 32u) << "only the chunks of two 32 KiB blocks";
  EXPECT_EQ(r.chunks_checked + Count(r, "unreadable chunk"), chunks);
  EXPECT_EQ(Lines(r, "volume " + a.id + " (alpha) block "), Count(r, "unreadable chunk"));
}

// A block-map table that cannot be read is one problem, not a reference-count error
// for every chunk whose map entries were not seen.
TEST_F(FsckTest, AnUnreadableMapTableIsOneProblemNotAThousand) {
  Import("alpha", 2048);
  const auto files = TableFiles("maps");
  ASSERT_EQ(files.size(), 1u);
  Flip(files[0], std::filesystem::file_size(files[0]) / 2);
  Reopen();
  const FsckReport r = Unwrap(store_->Fsck());
  EXPECT_EQ(Count(r, "unreadable table"), 1u);
  EXPECT_EQ(Count(r, "reference count"), 0u);
  ASSERT_EQ(r.errors.size(), 1u);
  EXPECT_NE(r.errors[0].find("block maps"), std::string::npos) << r.errors[0];
  EXPECT_NE(r.errors[0].find("not checked"), std::string::npos) << r.errors[0];
}

}  // namespace
}  // namespace stellarium
