// The store on a real Ceph cluster (StoreOptions::path "rados://POOL/NAMESPACE"): what one
// client writes another reads with an empty cache; one copy of each block however many
// clients import it; clients racing each other lose nothing; a client killed anywhere
// leaves a consistent pool that collection empties; a corrupt pack is an error naming
// the chunks and volumes, never wrong data.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <set>
#include <thread>

#include "core/format.h"
#include "core/image_source.h"
#include "core/process.h"
#include "core/rados/rados_backend.h"
#include "core/sha256.h"
#include "core/store.h"
#include "tests/ceph/ceph_cluster.h"
#include "tests/ceph/rados_workload.h"

namespace stellarium::testing {
namespace {

template <typename T>
T Must(Result<T> r) {
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  if (!r.ok()) throw std::runtime_error(r.status().ToString());
  return std::move(r).value();
}

class RadosStoreTest : public CephTest {
 protected:
  void SetUp() override {
    CephTest::SetUp();
    if (IsSkipped() || HasFailure()) return;
    dir_ = std::filesystem::temp_directory_path() / ("rados-store-" + ns());
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
    CephTest::TearDown();
  }
  std::string Path() { return "rados://" + cluster().pool() + "/" + ns(); }
  // A client of this test's store with its own cache directory.
  std::unique_ptr<Store> Client(const std::string& cache) {
    const std::string dir = cache.empty() ? "" : (dir_ / cache).string();
    return Must(Store::Open(RadosTestOptions(Path(), cluster().conf(), cluster().client_id(), dir)));
  }
  // Bytes of chunk data in the pool (pack objects) and how many objects of a kind.
  uint64_t PackBytes() {
    uint64_t total = 0;
    ForEachObject("stellarium.pack.", [&](const std::string& oid) {
      uint64_t size = 0;
      time_t mtime;
      if (io().stat(oid, &size, &mtime) == 0) total += size;
    });
    return total;
  }
  std::set<std::string> ObjectNames(const std::string& prefix) {
    std::set<std::string> names;
    ForEachObject(prefix, [&](const std::string& oid) { names.insert(oid); });
    return names;
  }
  size_t Objects(const std::string& prefix) {
    size_t n = 0;
    ForEachObject(prefix, [&](const std::string&) { ++n; });
    return n;
  }
  void ForEachObject(const std::string& prefix, const std::function<void(const std::string&)>& fn) {
    for (auto it = io().nobjects_begin(); it != io().nobjects_end(); ++it) {
      if (it->get_oid().rfind(prefix, 0) == 0) fn(it->get_oid());
    }
  }
  static std::string ReadAll(Store& store, const std::string& id) {
    auto v = Must(store.OpenVolume(id, /*read_only=*/true));
    std::string out(v->size(), '\0');
    Status st = v->Read(0, out.size(), out.data());
    EXPECT_TRUE(st.ok()) << st.ToString();
    return out;
  }
  static VolumeInfo Import(Store& store, const std::string& name, const std::string& bytes) {
    ImportOptions o;
    o.volume.name = name;
    return Must(store.ImportImage(*NewMemoryImageSource(name, bytes), o)).volume;
  }
  // Deletes every volume and snapshot, then collects twice, a writer window apart.
  void DeleteEverythingAndCollect(Store& store) {
    for (const auto& s : Must(store.ListSnapshots())) ASSERT_TRUE(store.DeleteSnapshot(s.id).ok());
    for (const auto& v : Must(store.ListVolumes())) ASSERT_TRUE(store.DeleteVolume(v.id).ok());
    for (int pass = 0; pass < 2; ++pass) {
      Must(store.Gc());
      std::this_thread::sleep_for(std::chrono::milliseconds(1100));
    }
    Must(store.Gc());
  }
  static void ExpectFsckClean(Store& store) {
    auto rep = Must(store.Fsck());
    for (const auto& e : rep.errors) ADD_FAILURE() << "fsck: " << e;
  }
  // fsck is clean; once everything is deleted and collected, no pack and no block map
  // object is left, and fsck is clean again.
  void ExpectCleanThenEmptiedByCollection(Store& store) {
    ExpectFsckClean(store);
    DeleteEverythingAndCollect(store);
    EXPECT_EQ(Objects("stellarium.pack."), 0u);
    EXPECT_EQ(Objects("stellarium.map"), 0u);
    ExpectFsckClean(store);
  }
  static std::string RandomImage(std::mt19937_64& rng, size_t blocks) {
    std::string img(blocks * 4096, '\0');
    for (size_t i = 0; i < img.size(); i += 8) {
      const uint64_t v = rng();
      std::memcpy(img.data() + i, &v, 8);
    }
    return img;
  }

  std::filesystem::path dir_;
  std::mt19937_64 rng_{19};
};

// A second client, with an empty cache of its own, reads what the first imported byte
// for byte (twice: from the cluster, then from its cache); fsck of the pool is clean.
TEST_F(RadosStoreTest, ASecondClientWithAnEmptyCacheReadsTheImportByteForByte) {
  const std::string img = RandomImage(rng_, 3000) + std::string(1 << 20, '\0');
  auto a = Client("a");
  const VolumeInfo v = Import(*a, "disk", img);
  auto b = Client("b");
  EXPECT_EQ(ReadAll(*b, v.id), img);
  const uint64_t packs_read = PackBytes();
  EXPECT_EQ(ReadAll(*b, v.id), img) << "again, from b's cache";
  EXPECT_EQ(PackBytes(), packs_read);
  ExpectFsckClean(*b);
}

// A cached copy that went bad on the node's disk is not an error: its digest check
// fails, the copy is forgotten and the chunk read from the cluster.
TEST_F(RadosStoreTest, ABadCachedCopyIsReadAgainFromTheCluster) {
  const std::string img = RandomImage(rng_, 200);
  const VolumeInfo v = Import(*Client(""), "disk", img);
  EXPECT_EQ(ReadAll(*Client("c"), v.id), img);  // fills the cache, closes it cleanly
  size_t damaged = 0;
  for (const auto& f : std::filesystem::recursive_directory_iterator(dir_ / "c")) {
    const std::string name = f.path().filename().string();
    if (name.rfind("segment-", 0) != 0 || f.path().extension() == ".keys") continue;
    std::fstream seg(f.path(), std::ios::in | std::ios::out | std::ios::binary);
    for (uint64_t at = 100; at < 200 * 4096; at += 4096) {  // a byte in every chunk
      seg.seekp(static_cast<std::streamoff>(at));
      seg.put('\x5a');
    }
    ++damaged;
  }
  ASSERT_GT(damaged, 0u) << "no cache segment found";
  auto c = Client("c");
  EXPECT_EQ(ReadAll(*c, v.id), img) << "read through the damaged cache";
  EXPECT_EQ(ReadAll(*c, v.id), img) << "again, from the repaired cache";
}

// The same through the CLI, process by process: `stellarium build` imports an image
// file; another `stellarium export`, with an empty cache directory of its own, writes
// it back byte for byte; `stellarium fsck` of the pool exits 0.
TEST_F(RadosStoreTest, AnotherProcessWithAnEmptyCacheExportsTheImportByteForByte) {
  const std::string img = RandomImage(rng_, 2000) + std::string(2 << 20, '\0') + RandomImage(rng_, 100);
  const std::string in = (dir_ / "in.img").string(), out = (dir_ / "out.img").string();
  {
    std::ofstream f(in, std::ios::binary);
    f.write(img.data(), static_cast<std::streamsize>(img.size()));
  }
  const std::vector<std::string> store = {"--store", Path(), "--ceph-conf", cluster().conf(),
                                          "--ceph-id", cluster().client_id()};
  auto cli = [&](std::vector<std::string> args) {
    args.insert(args.begin(), STELLARIUM_CLI);
    args.insert(args.begin() + 2, store.begin(), store.end());
    return RunProgramOk(args);
  };
  ASSERT_TRUE(cli({"build", "--from-image", in, "--name", "disk"}).ok());
  const std::string cache = (dir_ / "cache").string();
  Status st = cli({"export", "--cache", cache, "--volume", "disk", "-o", out});
  ASSERT_TRUE(st.ok()) << st.ToString();
  std::ifstream f(out, std::ios::binary);
  const std::string back((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  EXPECT_TRUE(back == img) << "the export differs from the image";
  EXPECT_TRUE(std::filesystem::exists(cache)) << "the export kept no cache";
  st = cli({"fsck"});
  EXPECT_TRUE(st.ok()) << st.ToString();
}

// The same image imported by two clients adds nothing the second time; an image with a
// few blocks changed adds about those blocks (at most 1.2 times their bytes).
TEST_F(RadosStoreTest, EachBlockIsStoredOnceHoweverManyClientsImportIt) {
  std::string img = RandomImage(rng_, 2048);
  auto a = Client("a");
  Import(*a, "one", img);
  const uint64_t after_one = PackBytes();
  auto b = Client("b");
  ImportOptions two;
  two.volume.name = "two";
  auto second = Must(b->ImportImage(*NewMemoryImageSource("two", img), two));
  EXPECT_TRUE(second.summary.reused_image);
  EXPECT_EQ(second.summary.new_chunks, 0u);
  EXPECT_EQ(PackBytes(), after_one) << "the second import stored nothing";
  constexpr size_t kChanged = 20;
  for (size_t k = 0; k < kChanged; ++k) img[(100 + 50 * k) * 4096 + 5] ^= 1;
  ImportOptions three;
  three.volume.name = "three";
  auto third = Must(b->ImportImage(*NewMemoryImageSource("three", img), three));
  EXPECT_EQ(third.summary.new_chunks, kChanged);
  const uint64_t ideal = kChanged * 4096;  // random blocks do not compress
  EXPECT_LE(PackBytes() - after_one, ideal * 12 / 10);
  EXPECT_EQ(ReadAll(*a, third.volume.id), img);
}

// Two worker processes import, clone, snapshot, delete and collect at once against one
// pool: no volume is lost or doubled, every volume holds what its name says, and once
// everything is deleted and collected the pool holds no chunk bytes and no block maps.
TEST_F(RadosStoreTest, TwoClientsAtOnceLoseNothingAndCollectionEmptiesThePool) {
  std::vector<pid_t> workers;
  for (int seed : {1, 2}) {
    const std::string s = std::to_string(seed);
    pid_t pid = fork();
    if (pid == 0) {
      execl(STELLARIUM_RADOS_WORKER, STELLARIUM_RADOS_WORKER, Path().c_str(), cluster().conf().c_str(),
            cluster().client_id().c_str(), s.c_str(), "60", (char*)nullptr);
      _exit(127);
    }
    workers.push_back(pid);
  }
  for (pid_t pid : workers) {
    int status = 0;
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "worker status " << status;
  }
  auto store = Client("check");
  std::set<std::string> names;
  for (const auto& v : Must(store->ListVolumes())) {
    EXPECT_TRUE(names.insert(v.name).second) << "two volumes named " << v.name;
    const int64_t k = ImageOfName(v.name);
    ASSERT_GE(k, 0) << v.name;
    EXPECT_EQ(ReadAll(*store, v.id), RadosImage(k)) << v.name;
  }
  EXPECT_FALSE(names.empty());
  ExpectCleanThenEmptiedByCollection(*store);
}

// A writer names a chunk it found stored only if, when its index op runs, the chunk is
// still stored and not condemned: one gc condemned meanwhile makes the write ABORTED
// with nothing named (a chunk condemned a writer window ago may be deleted by the next
// mark, which would leave the new map entry naming nothing).
TEST_F(RadosStoreTest, AWriterNamesAFoundChunkOnlyIfGcHasNotCondemnedItMeanwhile) {
  auto store = Client("");
  const std::string gone = RandomImage(rng_, 2), kept = RandomImage(rng_, 2);
  // (kept first: an import of a same-sized image layers itself on the latest one, so
  // gone's layer would live on as kept's parent)
  Import(*store, "kept", kept);
  const VolumeInfo v = Import(*store, "gone", gone);
  ASSERT_TRUE(store->DeleteVolume(v.id).ok());  // gone's chunks: named by nothing now
  RadosBackendOptions o;
  o.connect.pool = cluster().pool();
  o.connect.ns = ns();
  o.connect.conf = cluster().conf();
  o.connect.id = cluster().client_id();
  o.writer_window_ns = 1'000'000'000;
  auto writer = Must(OpenRadosBackend(o));
  const ChunkId gone_id = Sha256(gone.data(), 4096), kept_id = Sha256(kept.data(), 4096);
  std::vector<uint64_t> found;
  ASSERT_TRUE(writer->index().LocateMany({gone_id, kept_id}, &found).ok());
  ASSERT_NE(found[0], 0u);
  ASSERT_NE(found[1], 0u);
  // The writer stages a map entry naming each (a layer of its own), ...
  constexpr uint64_t kLayer = 77;
  auto name = [&](const ChunkId& id, uint64_t block) {
    auto batch = writer->NewBatch();
    writer->index().AddRefs(batch.get(), id, 1, 0);
    writer->catalog().PutMap(batch.get(), kLayer, block, format::EncodeMapValue(id, 0));
    return batch;
  };
  auto gone_batch = name(gone_id, 0), kept_batch = name(kept_id, 1);
  // ... gc marks meanwhile and condemns what nothing names, ...
  const GcReport r = Must(store->Gc());
  EXPECT_GE(r.chunks_condemned, 2u);
  // ... so naming `gone` is refused, naming `kept` goes through.
  Status st = writer->Commit(gone_batch.get(), Durability::kSync, "write naming gone");
  EXPECT_EQ(st.code(), StatusCode::kAborted) << st.ToString();
  EXPECT_FALSE(Must(writer->catalog().GetMap(kLayer, 0)).has_value()) << "a map entry names a condemned chunk";
  ASSERT_TRUE(writer->Commit(kept_batch.get(), Durability::kSync, "write naming kept").ok());
  EXPECT_TRUE(Must(writer->catalog().GetMap(kLayer, 1)).has_value());
  // A chunk deleted by gc (a window later) is refused the same way.
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));
  const GcReport r2 = Must(store->Gc());
  EXPECT_GE(r2.chunks_deleted, 2u);
  auto late = name(gone_id, 2);
  st = writer->Commit(late.get(), Durability::kSync, "late write naming gone");
  EXPECT_EQ(st.code(), StatusCode::kAborted) << st.ToString();
  EXPECT_FALSE(Must(writer->catalog().GetMap(kLayer, 2)).has_value());
}

// A client that stays open does not learn of chunks others store later (its presence
// filter was filled when it opened): it may store its own copy, and the index then names
// that one, so gc deletes the first copy's pack. Readers of the first import must still
// read it: past the dead hint, they ask the index itself.
TEST_F(RadosStoreTest, ReadsFindAChunkWhoseFirstCopyGcDeletedAfterAnotherClientStoredItAgain) {
  auto early = Client("");   // opened before the import: knows none of its chunks
  auto reader = Client("");  // the same, and reads afterwards
  const std::string img = RandomImage(rng_, 300);
  auto first = Client("");
  const VolumeInfo v = Import(*first, "first", img);
  const std::set<std::string> packs_before = ObjectNames("stellarium.pack.");
  // The same blocks and one more (a size of its own: no import layers itself on the first).
  const std::string longer = img + RandomImage(rng_, 1);
  ImportOptions again;
  again.volume.name = "again";
  auto second = Must(early->ImportImage(*NewMemoryImageSource("again", longer), again));
  EXPECT_EQ(second.summary.new_chunks, 301u) << "the early client should not have known them";
  for (int pass = 0; pass < 3; ++pass) {
    Must(first->Gc());
    std::this_thread::sleep_for(std::chrono::milliseconds(1100));
  }
  for (const std::string& oid : packs_before) {
    EXPECT_FALSE(ObjectNames("stellarium.pack.").count(oid)) << oid << ": the first copy's pack stayed";
  }
  EXPECT_EQ(ReadAll(*reader, v.id), img);
  EXPECT_EQ(ReadAll(*reader, second.volume.id), longer);
  ExpectFsckClean(*reader);
}

// One collector at a time: a gc while another live client holds the collector's lock
// is ABORTED naming it and changes nothing; once that client's lease has run out, the
// next gc breaks its lock and collects.
TEST_F(RadosStoreTest, OneCollectorAtATimeAndADeadCollectorsLockIsBroken) {
  auto store = Client("");
  const VolumeInfo v = Import(*store, "doomed", RandomImage(rng_, 4));
  ASSERT_TRUE(store->DeleteVolume(v.id).ok());
  const std::string other = "client.987654321";  // a collector that is not this store
  auto lease = [&](int64_t expires) {
    librados::ObjectWriteOperation op;
    librados::bufferlist bl;
    const std::string e = format::rados::EncodeI64(expires);
    bl.append(e.data(), e.size());
    op.omap_set({{"expires", bl}});
    ASSERT_EQ(io().operate(format::rados::ClientObject(other), &op), 0);
  };
  const int64_t now = std::chrono::duration_cast<std::chrono::nanoseconds>(
                          std::chrono::system_clock::now().time_since_epoch()).count();
  lease(now + 3'600'000'000'000);
  ASSERT_EQ(io().lock_exclusive(std::string(format::rados::kGcLockObject), "gc", other, "test",
                                nullptr, 0), 0);
  auto refused = store->Gc();
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), StatusCode::kAborted);
  EXPECT_NE(refused.status().message().find(other), std::string::npos) << refused.status().ToString();
  lease(now - 1);  // its lease ran out: the holder is dead
  const GcReport r = Must(store->Gc());
  EXPECT_GE(r.chunks_condemned, 4u) << "the refused pass must not have condemned them";
  // The lock is free again (this store let it go): another client can take it.
  EXPECT_EQ(io().lock_exclusive(std::string(format::rados::kGcLockObject), "gc", other, "test",
                                nullptr, 0), 0);
}

// A worker SIGKILLed at 32 random points of imports, clones, snapshots, deletes and
// collection: after each kill the pool checks clean and every volume reads as its name
// says; at the end, once the killed workers' leases run out, collection empties it.
TEST_F(RadosStoreTest, KillingAClientAnywhereLeavesAConsistentPool) {
  std::mt19937_64 rng(5);
  for (int round = 0; round < 32; ++round) {
    const std::string seed = std::to_string(100 + round);
    pid_t pid = fork();
    if (pid == 0) {
      execl(STELLARIUM_RADOS_WORKER, STELLARIUM_RADOS_WORKER, Path().c_str(), cluster().conf().c_str(),
            cluster().client_id().c_str(), seed.c_str(), (char*)nullptr);
      _exit(127);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(300 + rng() % 1200));
    ASSERT_EQ(kill(pid, SIGKILL), 0);
    int status = 0;
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFSIGNALED(status)) << "the worker ended before it was killed: " << status;
    if (round % 8 != 7) continue;
    auto store = Client("");
    ExpectFsckClean(*store);
    for (const auto& v : Must(store->ListVolumes())) {
      EXPECT_EQ(ReadAll(*store, v.id), RadosImage(ImageOfName(v.name))) << "round " << round << " " << v.name;
    }
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(2500));  // the leases run out
  auto store = Client("");  // discards the killed workers' importing layers
  ExpectCleanThenEmptiedByCollection(*store);
}

// Bytes of a pack rewritten with one bit flipped (as `rados put` would): reads of the
// blocks in it fail with a corruption error naming the chunk and the volume, other blocks
// read, and fsck names the chunks and the volumes that hold them.
TEST_F(RadosStoreTest, ACorruptPackIsACorruptionErrorNamingTheChunkAndTheVolume) {
  const std::string img = RandomImage(rng_, 512);
  auto a = Client("");
  const VolumeInfo v = Import(*a, "disk", img);
  std::string pack;
  ForEachObject("stellarium.pack.", [&](const std::string& oid) { pack = oid; });
  ASSERT_FALSE(pack.empty());
  librados::bufferlist bl;
  ASSERT_GE(io().read(pack, bl, 1 << 30, 0), 0);
  std::string bytes = bl.to_str();
  bytes[4096 * 7 + 100] ^= 1;  // in the 8th chunk (random: stored as is)
  const std::string file = (dir_ / "pack").string();
  {
    std::ofstream f(file, std::ios::binary);
    f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  }
  // Rewritten as an admin would, with the rados tool.
  Status put = RunProgramOk({"rados", "-c", cluster().conf(), "--id", cluster().client_id(), "-p",
                             cluster().pool(), "-N", ns(), "put", pack, file});
  ASSERT_TRUE(put.ok()) << put.ToString();
  auto b = Client("");  // no cache: reads the pack
  auto h = Must(b->OpenVolume(v.id, true));
  std::string block(4096, '\0');
  Status st = h->Read(7 * 4096, 4096, block.data());
  EXPECT_EQ(st.code(), StatusCode::kDataLoss) << st.ToString();
  EXPECT_NE(st.message().find(v.id), std::string::npos) << st.message();
  EXPECT_TRUE(h->Read(8 * 4096, 4096, block.data()).ok());
  EXPECT_EQ(block, img.substr(8 * 4096, 4096));
  h.reset();
  auto rep = Must(b->Fsck());
  ASSERT_EQ(rep.problems["corrupt chunk"], 1u);
  ASSERT_EQ(rep.errors.size(), 1u);
  EXPECT_NE(rep.errors[0].find("volume " + v.id + " (disk) block 7"), std::string::npos) << rep.errors[0];
}

}  // namespace
}  // namespace stellarium::testing

