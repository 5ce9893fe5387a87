// The local backend against the seams' contract (core/backend/): guarded commits, layer
// ids that are never handed out twice, a batch spanning the three seams applied as one,
// map cursors over a block range.
#include <gtest/gtest.h>

#include "core/format.h"
#include "core/local/local_backend.h"
#include "tests/core/test_util.h"

namespace stellarium {
namespace {

using testing::TempDir;
using testing::Unwrap;

class LocalBackendTest : public ::testing::Test {
 protected:
  void SetUp() override { Open(); }
  void Open() {
    backend_.reset();
    LocalBackendOptions o;
    o.dir = dir_ / "store";
    backend_ = Unwrap(LocalBackend::Open(o));
  }
  Status Commit(Batch* b) { return backend_->Commit(b, Durability::kSync, "test"); }
  std::optional<std::string> Get(Table t, const std::string& key) {
    return Unwrap(backend_->catalog().Get(t, key));
  }

  TempDir dir_;
  std::unique_ptr<LocalBackend> backend_;
};

// Two writers both read "name is free" and both try to take it: the second one's guard
// fails, it is ABORTED, and nothing of its batch is applied.
TEST_F(LocalBackendTest, AStaleGuardAbortsTheWholeBatch) {
  Catalog& c = backend_->catalog();
  auto first = backend_->NewBatch(), second = backend_->NewBatch();
  for (Batch* b : {first.get(), second.get()}) c.Expect(b, Table::kNames, "vdisk", std::nullopt);
  c.Put(first.get(), Table::kNames, "vdisk", "vol-1");
  c.Put(second.get(), Table::kNames, "vdisk", "vol-2");
  c.Put(second.get(), Table::kVolumes, "vol-2", "record");
  c.PutMap(second.get(), 7, 3, "");
  ASSERT_OK(Commit(first.get()));
  Status st = Commit(second.get());
  EXPECT_EQ(st.code(), StatusCode::kAborted) << st.ToString();
  EXPECT_NE(st.message().find("names"), std::string::npos) << st.message();
  EXPECT_EQ(Get(Table::kNames, "vdisk"), "vol-1");
  EXPECT_EQ(Get(Table::kVolumes, "vol-2"), std::nullopt);
  EXPECT_EQ(Unwrap(c.GetMap(7, 3)), std::nullopt);
}

// A guard on a value holds while the value is unchanged and fails once it changed.
TEST_F(LocalBackendTest, AGuardComparesTheValue) {
  Catalog& c = backend_->catalog();
  auto b = backend_->NewBatch();
  c.Put(b.get(), Table::kLayers, format::LayerKey(5), "v1");
  ASSERT_OK(Commit(b.get()));
  c.Expect(b.get(), Table::kLayers, format::LayerKey(5), std::string_view("v1"));
  c.Put(b.get(), Table::kLayers, format::LayerKey(5), "v2");
  ASSERT_OK(Commit(b.get()));
  c.Expect(b.get(), Table::kLayers, format::LayerKey(5), std::string_view("v1"));
  c.Put(b.get(), Table::kLayers, format::LayerKey(5), "v3");
  EXPECT_EQ(Commit(b.get()).code(), StatusCode::kAborted);
  EXPECT_EQ(Get(Table::kLayers, format::LayerKey(5)), "v2");
}

// Layer ids are never handed out twice: not within a process, and not after a reopen,
// even when the batch that took the highest id was never committed or its layer record
// is gone.
TEST_F(LocalBackendTest, LayerIdsAreNeverReused) {
  Catalog& c = backend_->catalog();
  auto b = backend_->NewBatch();
  const uint64_t a = c.NewLayerId(b.get()), bb = c.NewLayerId(b.get());
  EXPECT_GT(bb, a);
  c.Put(b.get(), Table::kLayers, format::LayerKey(bb), "x");
  ASSERT_OK(Commit(b.get()));
  auto lost = backend_->NewBatch();
  const uint64_t abandoned = backend_->catalog().NewLayerId(lost.get());  // never committed
  EXPECT_GT(abandoned, bb);
  auto del = backend_->NewBatch();
  c.Delete(del.get(), Table::kLayers, format::LayerKey(bb));
  ASSERT_OK(Commit(del.get()));
  Open();
  auto after = backend_->NewBatch();
  EXPECT_GT(backend_->catalog().NewLayerId(after.get()), bb);
}

// Bytes, index entry and map entry staged in one batch become visible together; a map
// cursor walks one layer's range in block order and stops at its end.
TEST_F(LocalBackendTest, OneBatchSpansTheThreeSeams) {
  const std::string bytes(4096, 'x');
  const ChunkId id = Sha256(bytes.data(), bytes.size());
  auto b = backend_->NewBatch();
  const uint64_t loc = Unwrap(backend_->bytes().Reserve(1)).next;
  backend_->bytes().Put(b.get(), loc, bytes);
  backend_->index().AddRefs(b.get(), id, 1, loc);
  for (uint64_t block : {9, 2, 5}) {
    backend_->catalog().PutMap(b.get(), 3, block, format::EncodeMapValue(id, loc));
  }
  backend_->catalog().PutMap(b.get(), 4, 0, "");
  EXPECT_EQ(Unwrap(backend_->index().Get(id)), std::nullopt) << "nothing before the commit";
  ASSERT_OK(Commit(b.get()));
  auto entry = Unwrap(backend_->index().Get(id));
  ASSERT_TRUE(entry.has_value());
  EXPECT_EQ(entry->refs, 1);
  EXPECT_EQ(entry->locator, loc);
  std::string read;
  ASSERT_OK(backend_->bytes().GetMany({loc}, "test", [&](std::span<const std::string_view> f) {
    read = std::string(f[0]);
    return Status::Ok();
  }));
  EXPECT_EQ(read, bytes);
  std::vector<uint64_t> seen;
  auto cursor = backend_->catalog().NewMapCursor(3, 2, 9);
  for (; cursor->Valid(); cursor->Next()) seen.push_back(cursor->block());
  ASSERT_OK(cursor->status());
  EXPECT_EQ(seen, (std::vector<uint64_t>{2, 5})) << "block 9 is past the range";
}

}  // namespace
}  // namespace stellarium
