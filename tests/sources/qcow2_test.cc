// The streaming qcow2 reader (core/sources/qcow2.h) against qemu-img. Every image is
// made by qemu-img / qemu-io, or by WriteQcow2 (tests/sources/qcow2_writer.h) and then
// passed by `qemu-img check`; it is read by our reader from a local file and over HTTP
// through the real local server (tests/sources/http_server.py), and compared byte for
// byte with `qemu-img convert -O raw` of the same file. Bad images are imported into a
// real store and must fail with INVALID_ARGUMENT and leave nothing behind.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <random>

#include "core/export.h"
#include "core/image_source.h"
#include "core/process.h"
#include "core/sha256.h"
#include "core/sources/format.h"
#include "core/sources/http_source.h"
#include "core/sources/open.h"
#include "core/sources/reorder_buffer.h"
#include "tests/core/test_util.h"
#include "tests/sources/local_http_server.h"
#include "tests/sources/qcow2_writer.h"

namespace stellarium {
namespace {

using testing::LocalHttpServer;
using testing::Qcow2Layout;
using testing::RandomBytes;
using testing::TempDir;
using testing::Unwrap;
using testing::WriteQcow2;
using Order = Qcow2Layout::Order;
using L2Place = Qcow2Layout::L2Place;

using testing::ReadFile;
using testing::WriteFile;
using testing::Sha256Hex;

void MustRun(const std::vector<std::string>& argv) {
  std::string out;
  Status s = RunProgramOk(argv, {}, &out);
  ASSERT_TRUE(s.ok()) << s.ToString();
}

// A disk-like image: random blocks (incompressible), text-like blocks (compressible),
// repeated blocks and runs of zeros, among them a whole 2 MiB cluster ([4, 6) MiB) and
// two whole 64 KiB clusters.
std::string MakeImage(uint64_t seed, uint64_t bytes) {
  std::mt19937_64 rng(seed);
  std::string img, repeated = RandomBytes(rng, 4096);
  const char* words[] = {"qcow2 ", "cluster ", "stream ", "guest ", "refcount ", "table\n"};
  while (img.size() < bytes) {
    switch (rng() % 6) {
      case 0:
        img += std::string(4096 * (1 + rng() % 8), '\0');
        break;
      case 1:
        img += repeated;
        break;
      case 2:
      case 3: {
        std::string t;
        while (t.size() < 4096 * 4) t += words[rng() % 6];
        img += t.substr(0, 4096 * 4);
        break;
      }
      default:
        img += RandomBytes(rng, 4096 * (1 + rng() % 4));
        break;
    }
  }
  img.resize(bytes);
  auto zero = [&](uint64_t from, uint64_t len) {
    if (from + len <= bytes) std::memset(img.data() + from, 0, len);
  };
  zero(4u << 20, 2u << 20);
  zero((1u << 20) + (128u << 10), 128u << 10);
  return img;
}

// What a read of a whole source saw.
struct ReadResult {
  Status status;
  uint64_t bytes = 0, hole_bytes = 0;
  std::string mismatch;  // the first difference from the reference, if any
};

// Reads `src` to its end with varying buffer sizes (whole and partial clusters) and
// compares every byte with the file `reference` (holes must read as zeros there).
ReadResult ReadAndCompare(ImageSource& src, const std::string& reference) {
  ReadResult r;
  int fd = ::open(reference.c_str(), O_RDONLY);
  if (fd < 0) {
    r.status = Status::NotFound(reference);
    return r;
  }
  const uint64_t ref_size = std::filesystem::file_size(reference);
  const size_t sizes[] = {4u << 20, 1u << 20, 12345, 4096, 3u << 20, 65536 + 512};
  std::string buf(4u << 20, '\0'), want(4u << 20, '\0');
  for (size_t call = 0;; ++call) {
    bool hole = false;
    auto n = src.Next(buf.data(), sizes[call % 6], &hole);
    if (!n.ok()) {
      r.status = n.status();
      break;
    }
    if (*n == 0) break;
    if (hole) std::memset(buf.data(), 0, *n);
    if (r.bytes + *n > ref_size) {
      if (r.mismatch.empty())
        r.mismatch = "longer than the reference (" + std::to_string(ref_size) + " bytes)";
    } else if (static_cast<size_t>(::pread(fd, want.data(), *n, static_cast<off_t>(r.bytes))) !=
                   *n ||
               std::memcmp(buf.data(), want.data(), *n) != 0) {
      if (r.mismatch.empty()) {
        size_t i = 0;
        while (i < *n && buf[i] == want[i]) ++i;
        r.mismatch = "differs at guest offset " + std::to_string(r.bytes + i);
      }
    }
    r.bytes += *n;
    if (hole) r.hole_bytes += *n;
  }
  ::close(fd);
  if (r.status.ok() && r.bytes != ref_size && r.mismatch.empty()) {
    r.mismatch =
        "read " + std::to_string(r.bytes) + " bytes, the reference has " + std::to_string(ref_size);
  }
  return r;
}

class Qcow2Test : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    www_ = new TempDir();
    server_ = new LocalHttpServer(STELLARIUM_TEST_SERVER, www_->path());
  }
  static void TearDownTestSuite() {
    delete server_;
    delete www_;
  }
  void SetUp() override { ASSERT_NE(server_->port(), 0) << server_->error(); }

  static std::string Www(const std::string& name) { return *www_ / name; }
  // `qemu-img convert -O raw` of a served qcow2: the reference output.
  std::string Reference(const std::string& name) {
    const std::string out = dir_ / (name + ".raw");
    if (!std::filesystem::exists(out)) {
      MustRun({"qemu-img", "convert", "-q", "-f", "qcow2", "-O", "raw", Www(name), out});
    }
    return out;
  }
  // `qemu-img check` of a served qcow2: 0 when the image is consistent.
  int Check(const std::string& name) {
    auto r = Unwrap(RunProgram({"qemu-img", "check", "-q", "-f", "qcow2", Www(name)}));
    if (r.exit_code != 0) ADD_FAILURE() << "qemu-img check " << name << ": " << r.output;
    return r.exit_code;
  }

  // Opens a served file through the format layer, from the local file or over HTTP.
  Result<std::unique_ptr<ImageSource>> Open(const std::string& name, bool http,
                                            FormatOptions f = {}, ImageFormat* format = nullptr) {
    std::unique_ptr<ImageSource> raw;
    if (http) {
      HttpSourceOptions h;
      h.url = server_->Url("/" + name);
      ASSIGN_OR_RETURN(raw, HttpImageSource::Open(h));
    } else {
      ASSIGN_OR_RETURN(raw, OpenFileImageSource(Www(name)));
    }
    if (f.scratch_dir.empty()) f.scratch_dir = dir_.path();
    return OpenFormatted(std::move(raw), f, format);
  }

  // The stats of the HTTP reads with the default and with the small reorder memory.
  struct BothStats {
    Qcow2Stats usual, small;
  };
  // Reads `name` from the file and over HTTP, with the default reorder memory and with
  // `small_memory` (to make the reorder buffer spill), and compares each read with
  // qemu-img's conversion.
  BothStats ExpectSameAsQemuImg(const std::string& name, uint64_t small_memory = 1u << 20) {
    const std::string ref = Reference(name);
    BothStats last;
    for (bool http : {false, true}) {
      for (uint64_t memory : {uint64_t{64} << 20, small_memory}) {
        SCOPED_TRACE(name + (http ? " over http" : " from a file") + ", reorder memory " +
                     std::to_string(memory));
        FormatOptions f;
        f.qcow2_reorder_memory_bytes = memory;
        Qcow2Stats stats;
        f.qcow2_stats = &stats;
        ImageFormat format;
        auto src = Open(name, http, f, &format);
        EXPECT_TRUE(src.ok()) << src.status().ToString();
        if (!src.ok()) return last;
        EXPECT_EQ(format, ImageFormat::kQcow2);
        EXPECT_EQ((*src)->Size(), std::filesystem::file_size(ref));
        ReadResult r = ReadAndCompare(**src, ref);
        EXPECT_TRUE(r.status.ok()) << r.status.ToString();
        EXPECT_EQ(r.mismatch, "");
        EXPECT_EQ(stats.file_bytes, std::filesystem::file_size(Www(name)))
            << "the file was not read to its end";
        EXPECT_LE(stats.peak_memory_bytes, memory);
        EXPECT_EQ(ScratchFiles(), 0) << "the reorder buffer's scratch file is visible";
        (memory == small_memory ? last.small : last.usual) = stats;
      }
    }
    return last;
  }

  int ScratchFiles() {
    int n = 0;
    for (auto& e : std::filesystem::directory_iterator(dir_.path())) {
      n += e.path().filename().string().rfind("stellarium-", 0) == 0;
    }
    return n;
  }

  // Imports a served file into a fresh store through OpenImageSource (the public path).
  Result<ImportResult> Import(const std::string& name, const std::string& sha256 = "") {
    if (!store_) {
      StoreOptions o;
      o.path = dir_ / "store";
      ASSIGN_OR_RETURN(store_, Store::Open(o));
    }
    ImageSourceSpec spec;
    spec.url = server_->Url("/" + name);
    spec.expected_sha256 = sha256;
    spec.scratch_dir = dir_.path();
    ASSIGN_OR_RETURN(OpenedImageSource opened, OpenImageSource(spec));
    ImportOptions io;
    io.volume.name = "vol";
    return store_->ImportImage(*opened.source, io);
  }
  uint64_t Chunks() { return store_ ? Unwrap(store_->GetStats()).chunks : 0; }
  // A failed import of `name`: INVALID_ARGUMENT naming the URL and containing `what`,
  // no volume, its chunks gone after gc, no scratch files.
  void ExpectRefused(const std::string& name, const std::string& what) {
    SCOPED_TRACE(name);
    if (!store_) {
      StoreOptions o;
      o.path = dir_ / "store";
      store_ = Unwrap(Store::Open(o));
    }
    const uint64_t before = Chunks();
    auto r = Import(name);
    ASSERT_FALSE(r.ok()) << "a bad image was imported";
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << r.status().ToString();
    EXPECT_NE(r.status().message().find(server_->Url("/" + name)), std::string::npos)
        << r.status().ToString();
    EXPECT_NE(r.status().message().find(what), std::string::npos) << r.status().ToString();
    EXPECT_TRUE(store_->FindVolumeByName("vol").status().IsNotFound());
    Unwrap(store_->Gc());
    EXPECT_EQ(Chunks(), before) << "a failed import left chunks after gc";
    EXPECT_EQ(ScratchFiles(), 0);
  }

  static TempDir* www_;
  static LocalHttpServer* server_;
  TempDir dir_;
  std::unique_ptr<Store> store_;
};
TempDir* Qcow2Test::www_ = nullptr;
LocalHttpServer* Qcow2Test::server_ = nullptr;

// ---- Images written by qemu-img convert ----

struct ConvertCase {
  const char* name;
  std::vector<const char*> options;  // extra `qemu-img convert` arguments
  uint64_t raw_bytes;
};

class Qcow2ConvertTest : public Qcow2Test, public ::testing::WithParamInterface<ConvertCase> {};

TEST_P(Qcow2ConvertTest, ReadsWhatQemuImgConvertReads) {
  const ConvertCase& c = GetParam();
  const std::string raw = dir_ / "base.img", name = std::string(c.name) + ".qcow2";
  WriteFile(raw, MakeImage(3, c.raw_bytes));
  std::vector<std::string> argv = {"qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2"};
  argv.insert(argv.end(), c.options.begin(), c.options.end());
  argv.insert(argv.end(), {raw, Www(name)});
  MustRun(argv);
  Qcow2Stats stats = ExpectSameAsQemuImg(name).usual;
  // The round trip raw -> qcow2 -> raw is the identity, and ours agrees.
  EXPECT_TRUE(ReadFile(Reference(name)) == ReadFile(raw));
  // What qemu-img writes streams: nothing goes to disk, and the reorder buffer holds at
  // most a few clusters and the compressed read-ahead.
  EXPECT_EQ(stats.spilled_bytes, 0u);
  EXPECT_LE(stats.peak_buffered_bytes, 6u << 20)
      << "the usual layout should not need a big reorder buffer";
  if (std::find_if(c.options.begin(), c.options.end(),
                   [](const char* o) { return std::string(o) == "-c"; }) == c.options.end()) {
    EXPECT_GT(stats.direct_bytes, 0u)
        << "uncompressed data should be read straight into the caller's buffer";
    EXPECT_EQ(stats.compressed_clusters, 0u);
  } else {
    EXPECT_GT(stats.compressed_clusters, 0u);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Images, Qcow2ConvertTest,
    ::testing::Values(
        ConvertCase{"v2_64k", {"-o", "compat=0.10"}, 12u << 20},
        ConvertCase{"v3_64k", {"-o", "compat=1.1"}, 12u << 20},
        ConvertCase{"v3_4k", {"-o", "cluster_size=4k"}, 12u << 20},
        ConvertCase{"v3_512", {"-o", "cluster_size=512"}, 4u << 20},
        ConvertCase{"v3_2m", {"-o", "cluster_size=2M"}, 24u << 20},
        ConvertCase{"v3_64k_partial_cluster", {}, (12u << 20) + 4096},
        ConvertCase{"extended_l2", {"-o", "extended_l2=on"}, 12u << 20},
        ConvertCase{"zlib_64k", {"-c"}, 12u << 20},
        ConvertCase{"zlib_v2", {"-c", "-o", "compat=0.10"}, 12u << 20},
        ConvertCase{"zlib_4k", {"-c", "-o", "cluster_size=4k"}, 12u << 20},
        ConvertCase{"zlib_2m", {"-c", "-o", "cluster_size=2M"}, 24u << 20},
        ConvertCase{"zstd_64k", {"-c", "-o", "compression_type=zstd"}, 12u << 20},
        ConvertCase{"zstd_2m", {"-c", "-o", "compression_type=zstd,cluster_size=2M"}, 24u << 20}),
    [](const auto& info) { return std::string(info.param.name); });

// ---- Images written by qemu-io: holes, zero clusters, subclusters, reverse order ----

// Makes `name` with `qemu-img create` and the given qemu-io commands.
void MakeWithQemuIo(const std::string& path, const std::string& size,
                    const std::vector<std::string>& create_opts,
                    const std::vector<std::string>& commands) {
  std::vector<std::string> create = {"qemu-img", "create", "-q", "-f", "qcow2"};
  create.insert(create.end(), create_opts.begin(), create_opts.end());
  create.insert(create.end(), {path, size});
  MustRun(create);
  std::vector<std::string> io = {"qemu-io", "-f", "qcow2"};
  for (const auto& c : commands) io.insert(io.end(), {"-c", c});
  io.push_back(path);
  MustRun(io);
}

TEST_F(Qcow2Test, HolesAndZeroClustersCostNoRead) {
  // v3: explicit zero clusters (the zero flag, with and without a preallocated host
  // cluster), unmapped and discarded ranges; v2 has no zero flag.
  const std::vector<std::string> commands = {"write -P 0xaa 0 1M",    "write -z 256k 128k",
                                             "write -z -u 512k 64k",  "discard 768k 64k",
                                             "write -P 0xbb 32M 64k", "write -P 0xcc 40M 4k",
                                             "write -z 40M 64k",      "write -P 0xdd 63M 1M"};
  for (const char* compat : {"compat=1.1", "compat=0.10"}) {
    SCOPED_TRACE(compat);
    const std::string name = std::string("sparse-") + compat + ".qcow2";
    MakeWithQemuIo(Www(name), "64M", {"-o", compat}, commands);
    ExpectSameAsQemuImg(name);
    auto src = Unwrap(Open(name, true));
    ReadResult r = ReadAndCompare(*src, Reference(name));
    EXPECT_TRUE(r.status.ok()) << r.status.ToString();
    // At most ~2.2 MiB of the 64 MiB hold data; everything else must come as holes.
    EXPECT_GE(r.hole_bytes, 61u << 20);
  }
}

TEST_F(Qcow2Test, ExtendedL2SubclustersWrittenByQemuIo) {
  const std::string name = "subclusters.qcow2";
  MakeWithQemuIo(
      Www(name), "16M", {"-o", "extended_l2=on,cluster_size=64k"},
      {"write -P 0x11 4k 2k", "write -P 0x22 10k 6k", "write -z 20k 2k", "write -P 0x33 62k 2k",
       "write -P 0x44 1M 64k", "write -z 1M 2k", "write -P 0x55 15M 6k"});
  ExpectSameAsQemuImg(name);
}

TEST_F(Qcow2Test, DataWrittenInReverseGuestOrder) {
  // qemu-io writing backwards: the L2 table comes first, then every data cluster in
  // reverse guest order, so everything waits in the reorder buffer (and spills).
  std::vector<std::string> commands;
  for (int i = 255; i >= 0; --i) {
    commands.push_back("write -P " + std::to_string(i % 250 + 1) + " " + std::to_string(i * 64) +
                       "k 64k");
  }
  MakeWithQemuIo(Www("reverse.qcow2"), "16M", {}, commands);
  Qcow2Stats stats = ExpectSameAsQemuImg("reverse.qcow2").small;
  EXPECT_GT(stats.spilled_bytes, 8u << 20) << "with 1 MiB of memory most of the 16 MiB must spill";
}

TEST_F(Qcow2Test, MultipleL2TablesOfSixtyFourKiBClusters) {
  // 1.5 GiB virtual with 64 KiB clusters: three L2 tables, written out of order.
  MakeWithQemuIo(Www("big-sparse.qcow2"), "1536M", {},
                 {"write -P 0x61 1400M 1M", "write -P 0x62 0 1M", "write -P 0x63 700M 3M",
                  "write -P 0x64 511M 2M"});
  ExpectSameAsQemuImg("big-sparse.qcow2");
}

TEST_F(Qcow2Test, PreallocatedMetadataStreams) {
  // preallocation=metadata: every cluster allocated (zeros in a sparse file), each L2
  // table right before the clusters it maps.
  MakeWithQemuIo(Www("prealloc.qcow2"), "64M", {"-o", "preallocation=metadata,cluster_size=4k"},
                 {"write -P 0x71 1M 64k", "write -P 0x72 40M 8k"});
  EXPECT_EQ(ExpectSameAsQemuImg("prealloc.qcow2").small.spilled_bytes, 0u);
}

TEST_F(Qcow2Test, TableMemoryIsBounded) {
  // Every L2 table before all data: all tables and the index of all data are held until
  // the data streams by. Within the limit that is read; beyond it, refused.
  Qcow2Layout l;
  l.l2 = L2Place::kFirst;
  WriteFile(Www("l2-first.qcow2"), WriteQcow2(MakeImage(29, 8u << 20), l));
  ASSERT_EQ(Check("l2-first.qcow2"), 0);
  EXPECT_EQ(ExpectSameAsQemuImg("l2-first.qcow2").small.spilled_bytes, 0u);
  FormatOptions f;
  f.qcow2_max_table_memory_bytes = 64u << 10;
  auto src = Unwrap(Open("l2-first.qcow2", true, f));
  ReadResult r = ReadAndCompare(*src, Reference("l2-first.qcow2"));
  EXPECT_EQ(r.status.code(), StatusCode::kInvalidArgument) << r.status.ToString();
  EXPECT_NE(r.status.message().find("L2 tables read ahead of the data"), std::string::npos)
      << r.status.ToString();
}

TEST_F(Qcow2Test, InternalSnapshotsBitmapsAndCopiedL2Tables) {
  // A snapshot makes every cluster shared (refcount 2, no copied flag); writing after it
  // copies the L2 table to the end of the file, after the data it maps. With the
  // snapshot kept, its tables are skipped; with it deleted, the old L2 is garbage.
  const std::string raw = dir_ / "snap.img";
  WriteFile(raw, MakeImage(5, 8u << 20));
  for (bool keep : {true, false}) {
    SCOPED_TRACE(keep ? "snapshot kept" : "snapshot deleted");
    const std::string name = keep ? "snap-kept.qcow2" : "snap-deleted.qcow2";
    MustRun({"qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", "-o", "cluster_size=4k", raw,
             Www(name)});
    MustRun({"qemu-img", "bitmap", "--add", Www(name),
             "b0"});  // a persistent dirty bitmap, skipped too
    MustRun({"qemu-img", "snapshot", "-c", "s1", Www(name)});
    MustRun({"qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 1M 8k", "-c", "write -P 0x5b 6M 4k",
             "-c", "write -z 3M 64k", Www(name)});
    if (!keep) MustRun({"qemu-img", "snapshot", "-d", "s1", Www(name)});
    EXPECT_EQ(Check(name), 0);
    ExpectSameAsQemuImg(name);
  }
}

// ---- Any layout: files written by WriteQcow2 and passed by qemu-img check ----

// Whether a read with 1 MiB of reorder memory must spill to the scratch file.
enum class Spill { kNo, kYes, kMaybe };

struct LayoutCase {
  const char* name;
  Qcow2Layout layout;
  Spill spill;
};

Qcow2Layout L(std::function<void(Qcow2Layout&)> f) {
  Qcow2Layout l;
  f(l);
  return l;
}

class Qcow2LayoutTest : public Qcow2Test, public ::testing::WithParamInterface<LayoutCase> {};

TEST_P(Qcow2LayoutTest, ReadsAnyValidLayout) {
  const LayoutCase& c = GetParam();
  const std::string raw = MakeImage(11, 8u << 20);
  const std::string name = std::string(c.name) + ".qcow2";
  WriteFile(Www(name), WriteQcow2(raw, c.layout));
  ASSERT_EQ(Check(name), 0) << "the test's qcow2 writer made an invalid file";
  Qcow2Stats stats = ExpectSameAsQemuImg(name).small;
  EXPECT_TRUE(ReadFile(Reference(name)) == raw);
  if (c.spill == Spill::kYes) {
    EXPECT_GT(stats.spilled_bytes, 0u);
  } else if (c.spill == Spill::kNo) {
    EXPECT_EQ(stats.spilled_bytes, 0u);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Layouts, Qcow2LayoutTest,
    ::testing::Values(
        LayoutCase{"usual", L([](auto& l) {}), Spill::kNo},
        LayoutCase{"usual_v2", L([](auto& l) { l.version = 2; }), Spill::kNo},
        LayoutCase{"l2_after_its_data", L([](auto& l) { l.l2 = L2Place::kAfterData; }),
                   Spill::kYes},
        LayoutCase{"reverse", L([](auto& l) { l.data_order = Order::kReverse; }), Spill::kYes},
        LayoutCase{"shuffled", L([](auto& l) { l.data_order = Order::kShuffled; }), Spill::kYes},
        LayoutCase{"everything_at_the_end", L([](auto& l) {
                     l.data_order = Order::kShuffled;
                     l.l2 = L2Place::kAtEnd;
                     l.l1_at_end = true;
                     l.refcounts_at_end = true;
                   }),
                   Spill::kYes},
        LayoutCase{"l1_at_the_end", L([](auto& l) { l.l1_at_end = true; }), Spill::kYes},
        LayoutCase{"refcounts_at_the_end", L([](auto& l) { l.refcounts_at_end = true; }),
                   Spill::kNo},
        LayoutCase{"compressed", L([](auto& l) { l.compress = true; }), Spill::kNo},
        LayoutCase{"compressed_512_byte_clusters", L([](auto& l) {
                     l.compress = true;
                     l.cluster_bits = 9;
                   }),
                   Spill::kNo},
        LayoutCase{"compressed_64k_shuffled_l2_after", L([](auto& l) {
                     l.compress = true;
                     l.cluster_bits = 16;
                     l.data_order = Order::kShuffled;
                     l.l2 = L2Place::kAfterData;
                   }),
                   Spill::kYes},
        // Shared clusters (refcount 2) whose second reference is read long after the
        // data: kept because the refcount says another reference is coming.
        LayoutCase{"shared_clusters", L([](auto& l) { l.share_duplicates = true; }), Spill::kNo},
        LayoutCase{"shared_compressed_l2_after", L([](auto& l) {
                     l.share_duplicates = true;
                     l.compress = true;
                     l.l2 = L2Place::kAfterData;
                   }),
                   Spill::kMaybe},
        LayoutCase{"zero_flags", L([](auto& l) { l.zero_flag = true; }), Spill::kNo},
        LayoutCase{"last_l2_at_the_end", L([](auto& l) { l.last_l2_at_end = true; }), Spill::kYes},
        LayoutCase{"dirty_shared_compressed_l2_after", L([](auto& l) {
                     l.dirty = true;
                     l.share_duplicates = true;
                     l.compress = true;
                     l.l2 = L2Place::kAfterData;
                   }),
                   Spill::kYes}),
    [](const auto& info) { return std::string(info.param.name); });

TEST_F(Qcow2Test, TrustedRefcountsLetEmittedCompressedDataGo) {
  // qemu's compressed layout, but the last L2 table at the end of the file: until it is
  // read it might refer to any compressed bytes (they have no copied flag). The same file
  // twice, once marked dirty (refcounts not to be trusted): with trusted refcounts the
  // reader knows when every reference to a host cluster was seen and lets it go.
  Qcow2Layout l;
  l.compress = true;
  l.last_l2_at_end = true;
  // 6 MiB of compressible text (compressed clusters), then one block in the last L2
  // table's range (4 KiB clusters: an L2 table maps 2 MiB).
  std::mt19937_64 rng(23);
  const char* words[] = {"alpha ", "beta ", "gamma ", "delta ", "epsilon ", "zeta\n"};
  std::string raw;
  while (raw.size() < (6u << 20) + 4096) raw += words[rng() % 6];
  raw.resize((6u << 20) + 4096);
  raw.resize(8u << 20, '\0');
  WriteFile(Www("trusted.qcow2"), WriteQcow2(raw, l));
  l.dirty = true;
  WriteFile(Www("dirty.qcow2"), WriteQcow2(raw, l));
  const Qcow2Stats trusted = ExpectSameAsQemuImg("trusted.qcow2").usual;
  const Qcow2Stats dirty = ExpectSameAsQemuImg("dirty.qcow2").usual;
  EXPECT_GT(dirty.compressed_clusters, 1000u);
  EXPECT_LT(trusted.peak_buffered_bytes, 512u << 10)
      << "emitted compressed data should not be kept";
  EXPECT_GT(dirty.peak_buffered_bytes, 3 * trusted.peak_buffered_bytes)
      << "without trusted refcounts it must be kept";
}

TEST_F(Qcow2Test, InconsistentRefcountsFailInsteadOfMisreading) {
  // Shared clusters that claim refcount 1 (and the copied flag): the reader drops them
  // after their first use, and the later reference must fail, not read something else.
  Qcow2Layout l;
  l.share_duplicates = true;
  l.wrong_refcounts = true;
  l.l2 = L2Place::kAfterData;
  WriteFile(Www("wrong-refcounts.qcow2"), WriteQcow2(MakeImage(11, 8u << 20), l));
  auto r = Unwrap(RunProgram({"qemu-img", "check", "-q", Www("wrong-refcounts.qcow2")}));
  EXPECT_NE(r.exit_code, 0) << "qemu-img check should see the wrong refcounts";
  ExpectRefused("wrong-refcounts.qcow2", "refcounts");
}

// ---- Nesting, digests, and what is refused ----

TEST_F(Qcow2Test, CompressedQcow2InsideGzipStreams) {
  WriteFile(dir_ / "n.img", MakeImage(13, 8u << 20));
  MustRun({"qemu-img", "convert", "-q", "-c", "-f", "raw", "-O", "qcow2", dir_ / "n.img",
           Www("nested.qcow2")});
  MustRun({"gzip", "-k", "-1", Www("nested.qcow2")});
  ImageFormat format;
  auto src = Unwrap(Open("nested.qcow2.gz", true, {}, &format));
  EXPECT_EQ(format, ImageFormat::kGzip);
  ReadResult r = ReadAndCompare(*src, dir_ / "n.img");
  EXPECT_TRUE(r.status.ok()) << r.status.ToString();
  EXPECT_EQ(r.mismatch, "");
}

TEST_F(Qcow2Test, DigestIsCheckedAtTheEndOfTheFileAfterTheLastGuestByte) {
  // Bytes after the last guest cluster's data (a qemu-img convert file ends with data;
  // append a tail so the end of the file is well after the image is complete).
  WriteFile(dir_ / "d.img", MakeImage(17, 8u << 20));
  MustRun({"qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", dir_ / "d.img",
           Www("digest.qcow2")});
  WriteFile(Www("digest.qcow2"), ReadFile(Www("digest.qcow2")) + std::string(3u << 20, '\x7f'));
  const std::string digest = "sha256:" + Sha256Hex(ReadFile(Www("digest.qcow2")));
  {
    auto r = Import("digest.qcow2", std::string(64, 'e'));
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << r.status().ToString();
    EXPECT_NE(r.status().message().find("expected sha256:eeee"), std::string::npos)
        << r.status().ToString();
    EXPECT_TRUE(store_->FindVolumeByName("vol").status().IsNotFound());
    EXPECT_EQ(ScratchFiles(), 0);
  }
  auto ok = Unwrap(Import("digest.qcow2", digest));
  auto vol = Unwrap(store_->OpenVolume(ok.volume.id, true));
  ASSERT_TRUE(ExportVolume(*vol, dir_ / "out.raw").ok());
  EXPECT_TRUE(ReadFile(dir_ / "out.raw") == ReadFile(dir_ / "d.img"));
}

TEST_F(Qcow2Test, RefusesBackingFilesEncryptionAndMalformedImages) {
  uint64_t twelfth_guest = 0;  // guest offset of the 12th compressed cluster, below
  WriteFile(dir_ / "base.img", MakeImage(19, 4u << 20));
  MustRun({"qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", dir_ / "base.img",
           Www("base.qcow2")});
  MustRun({"qemu-img", "create", "-q", "-f", "qcow2", "-b", Www("base.qcow2"), "-F", "qcow2",
           Www("overlay.qcow2")});
  // AES, not LUKS: creating a LUKS image times a PBKDF first, which on a loaded machine
  // fails now and then ("Unable to get accurate CPU usage"). Both set the header's
  // crypt_method, which is what the reader refuses.
  MustRun({"qemu-img", "create", "-q", "--object", "secret,id=sec0,data=123456", "-f", "qcow2",
           "-o", "encrypt.format=aes,encrypt.key-secret=sec0", Www("encrypted.qcow2"), "4M"});
  const std::string good = ReadFile(Www("base.qcow2"));
  // qemu-img convert puts the L1 table at cluster 3 and the only L2 table at cluster 4.
  const uint64_t l1 = 3 << 16, l2 = 4 << 16;
  auto patched = [&](const std::string& name, uint64_t at, uint64_t value) {
    std::string f = good;
    testing::PutBe64(f, at, value);
    WriteFile(Www(name), f);
  };
  const uint64_t copied = 1ull << 63;
  patched("l2-entry-past-end.qcow2", l2 + 8 * 5, (uint64_t{1} << 40) | copied);
  patched("l1-entry-past-end.qcow2", l1, (uint64_t{1} << 40) | copied);
  patched("l2-entry-into-header.qcow2", l2 + 8 * 5,
          (uint64_t{1} << 62) | 100);  // compressed, at byte 100
  patched("l2-entry-reserved-bits.qcow2", l2 + 8 * 5, (uint64_t{9} << 16) | 0x10 | copied);
  patched("l2-entry-onto-l1.qcow2", l2 + 8 * 5, l1 | copied);
  patched("l1-unaligned.qcow2", 40, l1 + 4096);
  WriteFile(Www("truncated-half.qcow2"), good.substr(0, good.size() / 2));
  WriteFile(Www("truncated-before-l1.qcow2"), good.substr(0, l1 - 1000));
  WriteFile(Www("truncated-header.qcow2"), good.substr(0, 60));
  {
    // A corrupt compressed cluster: its deflate data starts with an invalid block type.
    MustRun({"qemu-img", "convert", "-q", "-c", "-f", "raw", "-O", "qcow2", dir_ / "base.img",
             Www("c.qcow2")});
    std::string f = ReadFile(Www("c.qcow2"));
    bool found = false;
    for (uint64_t j = 0; j < 8192 && !found; ++j) {
      uint64_t d = 0;
      for (int k = 0; k < 8; ++k) d = (d << 8) | static_cast<uint8_t>(f[l2 + 8 * j + k]);
      if (d & (uint64_t{1} << 62)) {
        f[d & ((uint64_t{1} << 54) - 1)] = '\xff';
        found = true;
      }
    }
    ASSERT_TRUE(found) << "qemu-img -c stored no cluster compressed";
    WriteFile(Www("corrupt-compressed.qcow2"), f);
    // The same in the 12th compressed cluster, after eleven good ones: the error must
    // name that cluster, not the first or the one being read when it surfaced.
    f = ReadFile(Www("c.qcow2"));
    int seen = 0;
    for (uint64_t j = 0; j < 8192 && seen < 12; ++j) {
      uint64_t d = 0;
      for (int k = 0; k < 8; ++k) d = (d << 8) | static_cast<uint8_t>(f[l2 + 8 * j + k]);
      if ((d & (uint64_t{1} << 62)) && ++seen == 12) {
        f[d & ((uint64_t{1} << 54) - 1)] = '\xff';
        twelfth_guest = j << 16;  // 64 KiB clusters
      }
    }
    ASSERT_EQ(seen, 12) << "qemu-img -c stored fewer than 12 clusters compressed";
    WriteFile(Www("corrupt-compressed-12.qcow2"), f);
  }
  struct Bad {
    const char* name;
    const char* what;
  };
  for (const Bad& b :
       {Bad{"overlay.qcow2", "backing file"}, Bad{"encrypted.qcow2", "encrypted"},
        Bad{"l2-entry-past-end.qcow2", "past the end of the file"},
        Bad{"l1-entry-past-end.qcow2",
            "L2 table for guest offset 0 at file offset 1099511627776 "
            "lies past the end of the file"},
        Bad{"l2-entry-into-header.qcow2", "header cluster"},
        Bad{"l2-entry-reserved-bits.qcow2", "reserved bits"},
        Bad{"l2-entry-onto-l1.qcow2", "holds a table"},
        Bad{"l1-unaligned.qcow2", "L1 table offset"},
        Bad{"truncated-half.qcow2", "the image is truncated"},
        Bad{"truncated-before-l1.qcow2", "L1 table at file offset 196608 lies past the end"},
        Bad{"truncated-header.qcow2", "header is truncated"},
        Bad{"corrupt-compressed.qcow2", "is corrupt or truncated"}}) {
    ExpectRefused(b.name, b.what);
  }
  ExpectRefused(
      "corrupt-compressed-12.qcow2",
      "compressed cluster for guest offset " + std::to_string(twelfth_guest) + " at file offset");
}

// ---- The reorder buffer ----

TEST(ReorderBufferTest, KeepsGetsAndDropsRangesInMemoryAndOnDisk) {
  TempDir dir;
  std::mt19937_64 rng(1);
  const std::string a = RandomBytes(rng, 3000), b = RandomBytes(rng, 5000),
                    c = RandomBytes(rng, 7000);
  ReorderBuffer buf(dir.path(), 6000, "image test");
  ASSERT_TRUE(buf.Put(100, a.data(), a.size()).ok());   // memory
  ASSERT_TRUE(buf.Put(3100, nullptr, 900).ok());        // zeros: no memory
  ASSERT_TRUE(buf.Put(4000, b.data(), b.size()).ok());  // over the limit: disk
  ASSERT_TRUE(buf.Put(20000, c.data(), c.size()).ok());
  EXPECT_EQ(buf.memory_bytes(), 3000u);
  EXPECT_EQ(buf.spilled_bytes(), 12000u);
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(dir.path()), {}), 0)
      << "scratch file not unlinked";
  std::string want = a + std::string(900, '\0') + b, got(want.size(), '\0');
  EXPECT_TRUE(Unwrap(buf.Get(100, want.size(), got.data())));
  EXPECT_TRUE(got == want);
  EXPECT_FALSE(Unwrap(buf.Get(8000, 13000, got.data()))) << "a gap reads as held";
  EXPECT_FALSE(buf.Has(50, 100));
  // Dropping the middle of two extents keeps the ends.
  buf.Drop(2000, 3000);
  EXPECT_FALSE(buf.Has(2000, 1));
  EXPECT_FALSE(buf.Has(4999, 1));
  EXPECT_TRUE(buf.Has(100, 1900));
  std::string tail(4000, '\0');
  EXPECT_TRUE(Unwrap(buf.Get(5000, 4000, tail.data())));
  EXPECT_TRUE(tail == b.substr(1000));
  EXPECT_TRUE(Unwrap(buf.Get(100, 1900, got.data())));
  EXPECT_EQ(std::string(got.data(), 1900), a.substr(0, 1900));
  EXPECT_EQ(buf.held_bytes(), 1900u + 4000u + 7000u);
  buf.Drop(0, 1u << 20);
  EXPECT_EQ(buf.held_bytes(), 0u);
  EXPECT_EQ(buf.memory_bytes(), 0u);
  EXPECT_FALSE(buf.Put(10, a.data(), 10).ok()) << "Put must only append";
}

TEST(ReorderBufferTest, UnwritableScratchDirIsAnErrorNamingTheImage) {
  ReorderBuffer buf("/nonexistent/scratch", 0, "image https://host/x.qcow2");
  Status s = buf.Put(0, "abc", 3);
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("image https://host/x.qcow2"), std::string::npos) << s.ToString();
}

}  // namespace
}  // namespace stellarium
