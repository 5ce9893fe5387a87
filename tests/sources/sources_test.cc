// Image sources end to end: a real HTTP server on 127.0.0.1 (http_server.py), real
// images made by qemu-img, gzip, xz and zstd, real stores (RocksDB on disk), and the
// volumes exported back (ExportVolume) and compared byte for byte with the raw image.
#include <sys/stat.h>

#include <chrono>
#include <fstream>
#include <random>
#include <thread>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "core/export.h"
#include "core/process.h"
#include "core/sha256.h"
#include "core/sources/open.h"
#include "tests/core/test_util.h"
#include "tests/sources/local_http_server.h"

namespace stellarium {
namespace {

using testing::LocalHttpServer;
using testing::RandomBytes;
using testing::TempDir;
using testing::Unwrap;

constexpr uint64_t kImageBytes = 8u << 20;

using testing::ReadFile;
using testing::WriteFile;
using testing::Sha256Hex;

// A disk-like image: random blocks, runs of zero blocks and repeated blocks.
std::string MakeImage(uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::string img;
  std::string repeated = RandomBytes(rng, 4096);
  while (img.size() < kImageBytes) {
    switch (rng() % 4) {
      case 0: img += std::string(4096 * (1 + rng() % 8), '\0'); break;
      case 1: img += repeated; break;
      default: img += RandomBytes(rng, 4096 * (1 + rng() % 4)); break;
    }
  }
  img.resize(kImageBytes);
  return img;
}

void MustRun(const std::vector<std::string>& argv) {
  std::string out;
  Status s = RunProgramOk(argv, {}, &out);
  ASSERT_TRUE(s.ok()) << s.ToString();
}

class SourcesTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    www_ = new TempDir();
    raw_ = MakeImage(1);
    const std::string raw = *www_ / "disk.img";
    WriteFile(raw, raw_);
    MustRun({"qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", raw, *www_ / "disk.qcow2"});
    MustRun({"qemu-img", "convert", "-q", "-c", "-f", "raw", "-O", "qcow2", raw, *www_ / "disk-compressed.qcow2"});
    MustRun({"gzip", "-k", "-6", raw});
    MustRun({"xz", "-k", "-T1", "-1", raw});
    MustRun({"zstd", "-q", "-k", raw, "-o", *www_ / "disk.img.zst"});
    MustRun({"zstd", "-q", "-k", *www_ / "disk.qcow2", "-o", *www_ / "disk.qcow2.zst"});
    mkdir((*www_ / "private").c_str(), 0755);
    WriteFile(*www_ / "private/disk.img", raw_);
    server_ = new LocalHttpServer(STELLARIUM_TEST_SERVER, www_->path());
  }
  static void TearDownTestSuite() {
    delete server_;
    delete www_;
  }

  void SetUp() override {
    ASSERT_NE(server_->port(), 0) << server_->error();
    StoreOptions o;
    o.path = dir_ / "store";
    store_ = Unwrap(Store::Open(o));
    ASSERT_TRUE(store_);
  }

  Result<ImportResult> Import(const std::string& name, ImageSourceSpec spec, ImageFormat* format = nullptr) {
    if (spec.scratch_dir.empty()) spec.scratch_dir = dir_.path();
    ASSIGN_OR_RETURN(OpenedImageSource opened, OpenImageSource(spec));
    if (format) *format = opened.format;
    ImportOptions io;
    io.volume.name = name;
    return store_->ImportImage(*opened.source, io);
  }
  static ImageSourceSpec Url(const std::string& path) {
    ImageSourceSpec s;
    s.url = server_->Url(path);
    return s;
  }
  std::string Exported(const VolumeInfo& v) {
    auto vol = Unwrap(store_->OpenVolume(v.id, true));
    std::string out = dir_ / ("export-" + v.name);
    EXPECT_TRUE(ExportVolume(*vol, out).ok());
    std::string bytes = ReadFile(out);
    unlink(out.c_str());
    return bytes;
  }
  uint64_t Chunks() { return Unwrap(store_->GetStats()).chunks; }
  // Files left in the scratch directory besides the store.
  int ScratchFiles() {
    int n = 0;
    for (auto& e : std::filesystem::directory_iterator(dir_.path())) n += e.path().filename() != "store";
    return n;
  }
  void ExpectNothingLeft(const std::string& name, uint64_t chunks_before) {
    EXPECT_TRUE(store_->FindVolumeByName(name).status().IsNotFound()) << name;
    auto gc = Unwrap(store_->Gc());
    (void)gc;
    EXPECT_EQ(Chunks(), chunks_before) << "a failed import left chunks after gc";
    auto fsck = Unwrap(store_->Fsck());
    EXPECT_TRUE(fsck.ok()) << (fsck.errors.empty() ? "" : fsck.errors[0]);
    EXPECT_EQ(ScratchFiles(), 0);
  }

  static TempDir* www_;
  static std::string raw_;
  static LocalHttpServer* server_;
  TempDir dir_;
  std::unique_ptr<Store> store_;
};
TempDir* SourcesTest::www_ = nullptr;
std::string SourcesTest::raw_;
LocalHttpServer* SourcesTest::server_ = nullptr;

struct FormatCase {
  const char* file;
  ImageFormat format;
};

class SourcesFormatTest : public SourcesTest, public ::testing::WithParamInterface<FormatCase> {};

TEST_P(SourcesFormatTest, ImportOverHttpExportsTheRawImageWithOneRequest) {
  const std::string path = std::string("/") + GetParam().file;
  const int before = server_->Requests(path);
  ImageSourceSpec spec = Url(path);
  spec.expected_sha256 = "sha256:" + Sha256Hex(ReadFile(*www_ / GetParam().file));
  ImageFormat format;
  auto r = Unwrap(Import("vol", spec, &format));
  EXPECT_EQ(format, GetParam().format);
  EXPECT_EQ(r.volume.size_bytes, kImageBytes);
  EXPECT_TRUE(Exported(r.volume) == raw_) << "volume differs from the raw image";
  EXPECT_EQ(server_->Requests(path), before + 1);
  EXPECT_EQ(ScratchFiles(), 0) << "scratch files left behind";
  // The same bytes from the local file are the same image: a clone, nothing new stored.
  uint64_t chunks = Chunks();
  ImageSourceSpec local;
  local.path = *www_ / GetParam().file;
  auto again = Unwrap(Import("vol-local", local));
  EXPECT_TRUE(again.summary.reused_image);
  EXPECT_EQ(again.summary.image_digest, r.summary.image_digest);
  EXPECT_EQ(Chunks(), chunks);
}

INSTANTIATE_TEST_SUITE_P(Formats, SourcesFormatTest,
                         ::testing::Values(FormatCase{"disk.img", ImageFormat::kRaw},
                                           FormatCase{"disk.qcow2", ImageFormat::kQcow2},
                                           FormatCase{"disk.img.gz", ImageFormat::kGzip},
                                           FormatCase{"disk.img.xz", ImageFormat::kXz},
                                           FormatCase{"disk.img.zst", ImageFormat::kZstd},
                                           FormatCase{"disk.qcow2.zst", ImageFormat::kZstd}),
                         [](const auto& info) {
                           std::string n = info.param.file;
                           for (char& c : n) if (c == '.') c = '_';
                           return n;
                         });

TEST_F(SourcesTest, ExposesSizeEtagAndLastModified) {
  HttpSourceOptions o;
  o.url = server_->Url("/disk.img");
  o.compute_sha256 = true;
  auto src = Unwrap(HttpImageSource::Open(o));
  EXPECT_EQ(src->Size(), kImageBytes);
  EXPECT_FALSE(src->etag().empty());
  EXPECT_NE(src->last_modified().find("GMT"), std::string::npos) << src->last_modified();
  std::string all, buf(1u << 20, '\0');
  for (;;) {
    bool hole = false;
    size_t n = Unwrap(src->Next(buf.data(), buf.size(), &hole));
    if (n == 0) break;
    all.append(buf.data(), n);
  }
  EXPECT_EQ(all.size(), kImageBytes);
  EXPECT_TRUE(all == raw_);
  EXPECT_EQ(src->sha256(), "sha256:" + Sha256Hex(raw_));
}

TEST_F(SourcesTest, HttpReadsOfAnySizeKeepTheBytesInOrder) {
  // Reads of odd sizes make the curl thread switch between the reader's buffer (while
  // the reader waits) and the ring (while it does not).
  HttpSourceOptions o;
  o.url = server_->Url("/disk.img");
  auto src = Unwrap(HttpImageSource::Open(o));
  const size_t sizes[] = {1, 7, 4096, (1u << 20) + 3, 4u << 20, 100000};
  std::string all, buf(4u << 20, '\0');
  for (size_t call = 0;; ++call) {
    bool hole = false;
    size_t n = Unwrap(src->Next(buf.data(), sizes[call % 6], &hole));
    if (n == 0) break;
    ASSERT_LE(n, sizes[call % 6]);
    all.append(buf.data(), n);
    if (call % 5 == 0) std::this_thread::sleep_for(std::chrono::milliseconds(2));  // let the ring fill
  }
  EXPECT_TRUE(all == raw_);
}

TEST_F(SourcesTest, HttpReaderGetsWhatArrivedWhileTheServerPauses) {
  // A reader waiting for a batch must not wait for bytes that are not coming yet.
  ASSERT_TRUE(server_->Hold("/disk.img", 100000));
  HttpSourceOptions o;
  o.url = server_->Url("/disk.img");
  auto src = Unwrap(HttpImageSource::Open(o));
  std::string all, buf(4u << 20, '\0');
  while (all.size() < 100000) {
    bool hole = false;
    size_t n = Unwrap(src->Next(buf.data(), buf.size(), &hole));
    ASSERT_NE(n, 0u);
    all.append(buf.data(), n);
  }
  EXPECT_EQ(all.size(), 100000u) << "bytes past the hold point arrived before the release";
  ASSERT_TRUE(server_->Release("/disk.img"));
  for (;;) {
    bool hole = false;
    size_t n = Unwrap(src->Next(buf.data(), buf.size(), &hole));
    if (n == 0) break;
    all.append(buf.data(), n);
  }
  EXPECT_TRUE(all == raw_);
}

TEST_F(SourcesTest, ConditionalRequestWithCurrentValidatorsIsNotModifiedWithoutBody) {
  HttpSourceOptions o;
  o.url = server_->Url("/private/disk.img");
  o.headers = {"X-Token: let-me-in"};
  auto first = Unwrap(HttpImageSource::Open(o));
  const std::string etag = first->etag(), last_modified = first->last_modified();
  first.reset();
  const int bodies = server_->BodyRequests("/private/disk.img");
  for (int by_date = 0; by_date < 2; ++by_date) {
    HttpSourceOptions c = o;
    (by_date ? c.if_modified_since : c.if_none_match) = by_date ? last_modified : etag;
    auto src = Unwrap(HttpImageSource::Open(c));
    EXPECT_TRUE(src->not_modified());
    bool hole = false;
    char buf[16];
    EXPECT_EQ(Unwrap(src->Next(buf, sizeof(buf), &hole)), 0u);
  }
  EXPECT_EQ(server_->BodyRequests("/private/disk.img"), bodies);
  // A stale validator gets the body.
  HttpSourceOptions stale = o;
  stale.if_none_match = "\"not-the-etag\"";
  auto src = Unwrap(HttpImageSource::Open(stale));
  EXPECT_FALSE(src->not_modified());
  EXPECT_EQ(src->Size(), kImageBytes);
  // Through OpenImageSource: no source at all.
  ImageSourceSpec spec;
  spec.url = o.url;
  spec.headers = o.headers;
  spec.if_none_match = etag;
  auto opened = Unwrap(OpenImageSource(spec));
  EXPECT_TRUE(opened.not_modified);
  EXPECT_EQ(opened.source, nullptr);
}

TEST_F(SourcesTest, OnDataReportsProgressAndCanStopTheTransfer) {
  HttpSourceOptions o;
  o.url = server_->Url("/disk.img");
  uint64_t last = 0;
  std::optional<uint64_t> total;
  o.on_data = [&](uint64_t received, std::optional<uint64_t> length) {
    last = received;
    total = length;
    return received < (1u << 20);  // stop after the first MiB
  };
  // The first MiB may arrive before Open() returns (Open waits for the first bytes), so
  // the stop can surface from Open() or from a later Next().
  auto src = HttpImageSource::Open(o);
  std::string buf(1u << 20, '\0');
  Status st = src.status();
  while (st.ok()) {
    bool hole = false;
    auto n = (*src)->Next(buf.data(), buf.size(), &hole);
    if (!n.ok()) {
      st = n.status();
      break;
    }
    ASSERT_NE(*n, 0u) << "the transfer should have been stopped";
  }
  EXPECT_EQ(st.code(), StatusCode::kCancelled) << st.ToString();
  EXPECT_GE(last, 1u << 20);
  EXPECT_LT(last, kImageBytes);
  EXPECT_EQ(total, kImageBytes);
}

TEST_F(SourcesTest, WrongDigestFailsAndLeavesNothingBehind) {
  // Bytes this store has never seen, so an import that kept anything would show.
  WriteFile(*www_ / "other.img.zst.src", MakeImage(7));
  MustRun({"zstd", "-q", "-f", *www_ / "other.img.zst.src", "-o", *www_ / "other.img.zst"});
  const uint64_t before = Chunks();
  ImageSourceSpec spec = Url("/other.img.zst");
  spec.expected_sha256 = "sha256:" + std::string(64, 'a');
  auto r = Import("bad", spec);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << r.status().ToString();
  EXPECT_NE(r.status().message().find(server_->Url("/other.img.zst")), std::string::npos) << r.status().ToString();
  EXPECT_NE(r.status().message().find("expected sha256:aaaa"), std::string::npos) << r.status().ToString();
  ExpectNothingLeft("bad", before);
  // The right digest imports.
  spec.expected_sha256 = "sha256:" + Sha256Hex(ReadFile(*www_ / "other.img.zst"));
  auto ok = Unwrap(Import("good", spec));
  EXPECT_TRUE(Exported(ok.volume) == MakeImage(7));
}

TEST_F(SourcesTest, WrongDigestOfQcow2FailsTheImport) {
  // The qcow2 is converted while it streams; the digest is checked at the end of the
  // file, after the last guest byte, and still fails the import.
  const uint64_t before = Chunks();
  ImageSourceSpec spec = Url("/disk.qcow2");
  spec.expected_sha256 = std::string(64, '0');
  auto r = Import("bad", spec);
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << r.status().ToString();
  EXPECT_NE(r.status().message().find("expected sha256:0000"), std::string::npos) << r.status().ToString();
  ExpectNothingLeft("bad", before);
}

TEST_F(SourcesTest, MalformedDigestIsInvalidArgument) {
  ImageSourceSpec spec = Url("/disk.img");
  spec.expected_sha256 = "sha256:xyz";
  auto r = OpenImageSource(spec);
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("sha256:xyz"), std::string::npos) << r.status().ToString();
}

class DroppedConnectionTest : public SourcesTest, public ::testing::WithParamInterface<const char*> {};

TEST_P(DroppedConnectionTest, FailsCleanlyAndTheRetrySucceeds) {
  const std::string path = std::string("/") + GetParam();
  const int before_requests = server_->Requests(path);
  ASSERT_TRUE(server_->DropAfter(path, 1u << 20));
  const uint64_t before = Chunks();
  auto r = Import("vol", Url(path));
  ASSERT_FALSE(r.ok()) << "a dropped download was imported as complete";
  EXPECT_EQ(r.status().code(), StatusCode::kUnavailable) << r.status().ToString();
  EXPECT_NE(r.status().message().find("connection dropped"), std::string::npos) << r.status().ToString();
  EXPECT_NE(r.status().message().find(server_->Url(path)), std::string::npos) << r.status().ToString();
  ExpectNothingLeft("vol", before);
  auto ok = Unwrap(Import("vol", Url(path)));
  EXPECT_TRUE(Exported(ok.volume) == raw_);
  EXPECT_EQ(server_->Requests(path), before_requests + 2);
}

INSTANTIATE_TEST_SUITE_P(Formats, DroppedConnectionTest,
                         ::testing::Values("disk.img", "disk.img.zst", "disk.qcow2"),
                         [](const auto& info) {
                           std::string n = info.param;
                           for (char& c : n) if (c == '.') c = '_';
                           return n;
                         });

TEST_F(SourcesTest, HttpErrorsNameTheUrl) {
  auto missing = OpenImageSource(Url("/nope.img"));
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound) << missing.status().ToString();
  EXPECT_NE(missing.status().message().find("HTTP 404"), std::string::npos);
  EXPECT_NE(missing.status().message().find(server_->Url("/nope.img")), std::string::npos);

  auto denied = OpenImageSource(Url("/private/disk.img"));
  EXPECT_EQ(denied.status().code(), StatusCode::kPermissionDenied) << denied.status().ToString();

  ImageSourceSpec with_token = Url("/private/disk.img");
  with_token.headers = {"X-Token: let-me-in"};
  auto ok = Unwrap(Import("private", with_token));
  EXPECT_TRUE(Exported(ok.volume) == raw_);

  ImageSourceSpec bad_header = Url("/disk.img");
  bad_header.headers = {"no colon here"};
  EXPECT_EQ(OpenImageSource(bad_header).status().code(), StatusCode::kInvalidArgument);
}

TEST_F(SourcesTest, HttpsVerifiesTheServerAndTrustsTheGivenCaBundle) {
  const std::string cert = dir_ / "cert.pem", key = dir_ / "key.pem";
  MustRun({"openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days", "2",
           "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"});
  {
    LocalHttpServer tls(STELLARIUM_TEST_SERVER, www_->path(), cert, key);
    ASSERT_NE(tls.port(), 0) << tls.error();
    ImageSourceSpec spec;
    spec.url = tls.Url("/disk.img.zst");
    auto untrusted = OpenImageSource(spec);
    EXPECT_EQ(untrusted.status().code(), StatusCode::kFailedPrecondition) << untrusted.status().ToString();
    EXPECT_NE(untrusted.status().message().find(spec.url), std::string::npos) << untrusted.status().ToString();
    spec.ca_bundle = cert;
    spec.scratch_dir = dir_.path();
    auto ok = Unwrap(Import("tls", spec));
    EXPECT_TRUE(Exported(ok.volume) == raw_);
    spec.ca_bundle = dir_ / "missing.pem";
    EXPECT_FALSE(OpenImageSource(spec).ok());
  }
  unlink(cert.c_str());
  unlink(key.c_str());
}

TEST_F(SourcesTest, RedirectsAreFollowedOnlyToHttp) {
  const int before = server_->Requests("/disk.img.gz");
  auto ok = Unwrap(Import("redirected", Url("/redirect/disk.img.gz")));
  EXPECT_TRUE(Exported(ok.volume) == raw_);
  EXPECT_EQ(server_->Requests("/disk.img.gz"), before + 1);
  auto file = OpenImageSource(Url("/redirect-file/x"));
  EXPECT_EQ(file.status().code(), StatusCode::kInvalidArgument) << file.status().ToString();
}

TEST_F(SourcesTest, ConcatenatedGzipMembersAreOneImage) {
  // What pigz and `cat a.gz b.gz` produce.
  WriteFile(dir_ / "a", raw_.substr(0, kImageBytes / 2));
  WriteFile(dir_ / "b", raw_.substr(kImageBytes / 2));
  MustRun({"gzip", "-q", "-1", dir_ / "a", dir_ / "b"});
  WriteFile(*www_ / "two-members.img.gz", ReadFile(dir_ / "a.gz") + ReadFile(dir_ / "b.gz"));
  unlink((dir_ / "a.gz").c_str());
  unlink((dir_ / "b.gz").c_str());
  auto ok = Unwrap(Import("members", Url("/two-members.img.gz")));
  EXPECT_TRUE(Exported(ok.volume) == raw_);
  // Anything else after the last member is refused rather than ignored.
  WriteFile(*www_ / "trailing.img.gz", ReadFile(*www_ / "two-members.img.gz") + "garbage");
  const uint64_t before = Chunks();
  auto bad = Import("trailing", Url("/trailing.img.gz"));
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument) << bad.status().ToString();
  EXPECT_NE(bad.status().message().find("trailing data"), std::string::npos) << bad.status().ToString();
  ExpectNothingLeft("trailing", before);
}

TEST_F(SourcesTest, RefusedConnectionIsUnavailable) {
  // Port 1 (tcpmux): nothing listens there on a test machine.
  ImageSourceSpec spec;
  spec.url = "http://127.0.0.1:1/disk.img";
  auto r = OpenImageSource(spec);
  EXPECT_EQ(r.status().code(), StatusCode::kUnavailable) << r.status().ToString();
  EXPECT_NE(r.status().message().find("http://127.0.0.1:1/disk.img"), std::string::npos);
}

TEST_F(SourcesTest, OnlyHttpAndHttpsUrls) {
  for (const char* url : {"file:///etc/passwd", "ftp://127.0.0.1/x.img", "gopher://x", "/local/path"}) {
    ImageSourceSpec spec;
    spec.url = url;
    auto r = OpenImageSource(spec);
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << url << ": " << r.status().ToString();
  }
  ImageSourceSpec both = Url("/disk.img");
  both.path = *www_ / "disk.img";
  EXPECT_EQ(OpenImageSource(both).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(OpenImageSource(ImageSourceSpec{}).status().code(), StatusCode::kInvalidArgument);
}

TEST_F(SourcesTest, UrlSecretsAreRedactedInErrors) {
  ImageSourceSpec spec;
  spec.url = server_->Url("/nope.img").insert(7, "user:hunter2@") + "?token=hunter2";
  auto r = OpenImageSource(spec);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().message().find("hunter2"), std::string::npos) << r.status().ToString();
  EXPECT_NE(r.status().message().find("?<redacted>"), std::string::npos) << r.status().ToString();
}

TEST_F(SourcesTest, UnsupportedAndMalformedFormatsAreInvalidArgument) {
  std::string vmdk = "KDMV" + std::string(8188, '\1');
  WriteFile(*www_ / "disk.vmdk", vmdk);
  std::string gz = ReadFile(*www_ / "disk.img.gz");
  gz[gz.size() / 2] ^= 0x5a;
  gz[gz.size() / 2 + 1] ^= 0x5a;
  WriteFile(*www_ / "corrupt.img.gz", gz);
  std::string truncated = ReadFile(*www_ / "disk.img.xz");
  WriteFile(*www_ / "truncated.img.xz", truncated.substr(0, truncated.size() / 2));
  std::string qcow = ReadFile(*www_ / "disk.qcow2");
  std::string backed = qcow;
  backed[15] = 0x70;  // backing_file_offset != 0
  WriteFile(*www_ / "backed.qcow2", backed);
  std::string broken = qcow;
  for (size_t i = 0x30; i < 0x40; ++i) broken[i] = '\xff';  // l1 table offset/refcount garbage
  WriteFile(*www_ / "broken.qcow2", broken);

  const uint64_t before = Chunks();
  for (const char* f : {"disk.vmdk", "corrupt.img.gz", "truncated.img.xz", "backed.qcow2", "broken.qcow2"}) {
    auto r = Import("bad", Url(std::string("/") + f));
    ASSERT_FALSE(r.ok()) << f;
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << f << ": " << r.status().ToString();
    EXPECT_NE(r.status().message().find(server_->Url(std::string("/") + f)), std::string::npos)
        << r.status().ToString();
    ExpectNothingLeft("bad", before);
  }
}

// A truncated container says where it ends, so a user can tell a cut download from a
// damaged one (issue 18: "refused with an error naming the file and offset").
TEST_F(SourcesTest, TruncatedContainersNameTheFileAndTheOffset) {
  const uint64_t before = Chunks();
  for (const char* f : {"disk.img.gz", "disk.img.xz", "disk.img.zst", "disk.qcow2"}) {
    SCOPED_TRACE(f);
    const std::string whole = ReadFile(*www_ / f);
    const std::string cut = dir_ / (std::string("cut-") + f);
    WriteFile(cut, whole.substr(0, whole.size() / 2));
    ImageSourceSpec spec;
    spec.path = cut;
    auto r = Import("cut", spec);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << r.status().ToString();
    EXPECT_NE(r.status().message().find("image " + cut + ": "), std::string::npos) << r.status().ToString();
    EXPECT_NE(r.status().message().find("file offset"), std::string::npos) << r.status().ToString();
    unlink(cut.c_str());
    ExpectNothingLeft("cut", before);
  }
  const std::string header = dir_ / "header.qcow2";
  WriteFile(header, ReadFile(*www_ / "disk.qcow2").substr(0, 50));
  ImageSourceSpec spec;
  spec.path = header;
  auto r = Import("cut", spec);
  EXPECT_NE(r.status().message().find("qcow2 header is truncated at file offset 50"), std::string::npos)
      << r.status().ToString();
}

TEST_F(SourcesTest, MaxSizeIsOutOfRange) {
  ImageSourceSpec spec = Url("/disk.img");
  spec.max_size_bytes = kImageBytes - 4096;
  EXPECT_EQ(OpenImageSource(spec).status().code(), StatusCode::kOutOfRange);
  // A compressed image is checked on its decompressed size too.
  const uint64_t before = Chunks();
  spec = Url("/disk.img.zst");
  spec.max_size_bytes = kImageBytes - 4096;
  auto r = Import("big", spec);
  EXPECT_EQ(r.status().code(), StatusCode::kOutOfRange) << r.status().ToString();
  ExpectNothingLeft("big", before);
  spec = Url("/disk.qcow2");
  spec.max_size_bytes = kImageBytes - 4096;
  EXPECT_EQ(OpenImageSource(spec).status().code(), StatusCode::kOutOfRange);
}

TEST_F(SourcesTest, LocalFilesGetFormatsAndDigestsToo) {
  ImageSourceSpec spec;
  spec.path = *www_ / "disk.img.xz";
  spec.expected_sha256 = "sha256:" + Sha256Hex(ReadFile(spec.path));
  auto ok = Unwrap(Import("local-xz", spec));
  EXPECT_TRUE(Exported(ok.volume) == raw_);
  const uint64_t before = Chunks();
  WriteFile(dir_ / "fresh.img", MakeImage(9));
  spec.path = dir_ / "fresh.img";
  spec.expected_sha256 = std::string(64, 'b');
  auto bad = Import("local-bad", spec);
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument) << bad.status().ToString();
  EXPECT_TRUE(store_->FindVolumeByName("local-bad").status().IsNotFound());
  Unwrap(store_->Gc());
  EXPECT_EQ(Chunks(), before);
  // A local qcow2 with a digest goes through the check (and the spool) like a download.
  spec.path = *www_ / "disk.qcow2";
  spec.expected_sha256 = std::string(64, 'c');
  EXPECT_EQ(Import("local-qcow2-bad", spec).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(ScratchFiles(), 1) << "only fresh.img should be in the scratch directory";
  spec.expected_sha256 = Sha256Hex(ReadFile(spec.path));
  auto q = Unwrap(Import("local-qcow2", spec));
  EXPECT_TRUE(Exported(q.volume) == raw_);
}

TEST_F(SourcesTest, CliBuildFromUrl) {
  const std::string store = dir_ / "cli-store";
  const std::string digest = "sha256:" + Sha256Hex(ReadFile(*www_ / "disk.qcow2"));
  auto r = Unwrap(RunProgram({STELLARIUM_CLI_PATH, "build", "--store", store, "--name", "web",
                              "--from-url", server_->Url("/disk.qcow2"), "--sha256", digest}));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto e = Unwrap(RunProgram({STELLARIUM_CLI_PATH, "export", "--store", store, "--volume", "web", "-o",
                              dir_ / "web.raw"}));
  ASSERT_EQ(e.exit_code, 0) << e.output;
  EXPECT_TRUE(ReadFile(dir_ / "web.raw") == raw_);
  unlink((dir_ / "web.raw").c_str());

  auto bad = Unwrap(RunProgram({STELLARIUM_CLI_PATH, "build", "--store", store, "--name", "web2",
                                "--from-url", server_->Url("/disk.img"), "--sha256", std::string(64, 'c')}));
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_NE(bad.output.find("expected sha256:cccc"), std::string::npos) << bad.output;
  auto headers = Unwrap(RunProgram({STELLARIUM_CLI_PATH, "build", "--store", store, "--name", "priv",
                                    "--from-url", server_->Url("/private/disk.img"), "--header",
                                    "X-Token: let-me-in"}));
  EXPECT_EQ(headers.exit_code, 0) << headers.output;
  auto both = Unwrap(RunProgram({STELLARIUM_CLI_PATH, "build", "--store", store, "--name", "x", "--from-url",
                                 server_->Url("/disk.img"), "--from-image", *www_ / "disk.img"}));
  EXPECT_NE(both.exit_code, 0);
}

// ---- The CLI with local image files (issue 18: a local qcow2 was stored as its
// container bytes; --from-image now detects formats like --from-url) ----

ProgramResult Cli(const std::vector<std::string>& args) {
  std::vector<std::string> argv = {STELLARIUM_CLI_PATH};
  argv.insert(argv.end(), args.begin(), args.end());
  return Unwrap(RunProgram(argv));
}

class CliLocalImageTest : public SourcesTest, public ::testing::WithParamInterface<const char*> {};

// Regression: `stellarium build --from-image disk.qcow2` made a volume of the qcow2 file's
// bytes with exit 0. Every format is now the disk it contains.
TEST_P(CliLocalImageTest, BuildFromImageIsTheDiskTheFileContains) {
  const std::string store = dir_ / "cli-store";
  auto r = Cli({"build", "--store", store, "--name", "local", "--from-image", *www_ / GetParam(), "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("\"size_bytes\": " + std::to_string(kImageBytes)), std::string::npos) << r.output;
  auto e = Cli({"export", "--store", store, "--volume", "local", "-o", dir_ / "local.raw"});
  ASSERT_EQ(e.exit_code, 0) << e.output;
  EXPECT_TRUE(ReadFile(dir_ / "local.raw") == raw_) << GetParam() << " did not become the raw image";
  unlink((dir_ / "local.raw").c_str());
}

INSTANTIATE_TEST_SUITE_P(Formats, CliLocalImageTest,
                         ::testing::Values("disk.img", "disk.qcow2", "disk-compressed.qcow2", "disk.img.gz",
                                           "disk.img.xz", "disk.img.zst", "disk.qcow2.zst"),
                         [](const auto& info) {
                           std::string n = info.param;
                           for (char& c : n) if (c == '.' || c == '-') c = '_';
                           return n;
                         });

// Regression: a truncated qcow2 was accepted as a raw image. A truncated or malformed
// container, and a known container format we do not read, are refused naming the file
// (and, for a damaged one, the offset) and change nothing in the store.
TEST_F(SourcesTest, CliRefusesTruncatedAndUnsupportedContainersAndChangesNothing) {
  const std::string store = dir_ / "cli-store";
  ASSERT_EQ(Cli({"build", "--store", store, "--name", "ok", "--from-image", *www_ / "disk.img"}).exit_code, 0);
  const std::string qcow = ReadFile(*www_ / "disk.qcow2");
  const std::string gz = ReadFile(*www_ / "disk.img.gz");
  struct Bad {
    std::string file, bytes, says;
  };
  const std::vector<Bad> bad = {
      {"half.qcow2", qcow.substr(0, qcow.size() / 2), "file offset"},
      {"header.qcow2", qcow.substr(0, 40), "header is truncated at file offset 40"},
      {"half.img.gz", gz.substr(0, gz.size() / 2), "truncated at file offset"},
      {"disk.vmdk", "KDMV" + std::string(8188, '\1'), "VMDK images are not supported"},
      {"disk.vhd", "conectix" + std::string(8184, '\0'), "VHD images are not supported"},
      {"disk.vhdx", "vhdxfile" + std::string(8184, '\0'), "VHDX images are not supported"},
      {"disk.vdi", std::string(64, 'x') + "\x7f\x10\xda\xbe" + std::string(8124, '\0'),
       "VDI images are not supported"},
  };
  const std::string list_before = Cli({"list", "--store", store, "--json"}).output;
  auto chunks = [&] {
    return nlohmann::json::parse(Cli({"info", "--store", store, "--json"}).output)["chunks"].get<uint64_t>();
  };
  const uint64_t chunks_before = chunks();
  for (const Bad& b : bad) {
    SCOPED_TRACE(b.file);
    WriteFile(dir_ / b.file, b.bytes);
    auto r = Cli({"build", "--store", store, "--name", "bad", "--from-image", dir_ / b.file});
    EXPECT_EQ(r.exit_code, 1) << r.output;
    EXPECT_NE(r.output.find("INVALID_ARGUMENT: "), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("image " + (dir_ / b.file) + ": "), std::string::npos) << r.output;
    EXPECT_NE(r.output.find(b.says), std::string::npos) << r.output;
    unlink((dir_ / b.file).c_str());
  }
  EXPECT_EQ(Cli({"list", "--store", store, "--json"}).output, list_before);
  ASSERT_EQ(Cli({"gc", "--store", store}).exit_code, 0);
  EXPECT_EQ(chunks(), chunks_before) << "a refused import left chunks";
  EXPECT_EQ(Cli({"fsck", "--store", store}).exit_code, 0);
}

}  // namespace
}  // namespace stellarium
