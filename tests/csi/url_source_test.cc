// Volumes from http(s) URLs through the real driver: a real stellarium-csi server on a
// unix socket (CsiDriverTest), real gRPC calls, a real store, and a real local HTTP
// server (tests/sources/http_server.py on 127.0.0.1) that counts requests, can hold a
// body midway (to make calls overlap for sure) and can drop a connection. Images are
// made with the real qemu-img and zstd.
#include <spawn.h>
#include <sys/wait.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <thread>

#include "core/sha256.h"
#include "csi/node/image_importer.h"
#include "tests/csi/csi_fixture.h"
#include "tests/sources/local_http_server.h"

namespace stellarium::csi::testing {
namespace {

namespace fs = std::filesystem;
using ::stellarium::testing::LocalHttpServer;

constexpr uint64_t kImageBytes = 8 << 20;

// Runs argv (no shell); true on exit status 0.
bool RunTool(std::vector<std::string> args) {
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid;
  if (posix_spawnp(&pid, argv[0], nullptr, nullptr, argv.data(), environ) != 0) return false;
  int status = 0;
  if (waitpid(pid, &status, 0) != pid) return false;
  return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

bool HaveTool(const std::string& name) {
  for (const char* dir : {"/usr/bin/", "/bin/", "/usr/local/bin/"}) {
    if (::access((dir + name).c_str(), X_OK) == 0) return true;
  }
  return false;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

std::string Sha256Hex(const std::string& data) { return ToHex(Sha256(data.data(), data.size())); }

class UrlSourceTest : public CsiDriverTest {
 protected:
  void SetUp() override {
    metrics_address_ = "127.0.0.1:0";
    CsiDriverTest::SetUp();
    served_ = root_ + "/served";
    fs::create_directories(served_);
    raw_ = MakeRawImage("disk.img", kImageBytes, 1);
    http_ = std::make_unique<LocalHttpServer>(STELLARIUM_TEST_SERVER, served_);
    ASSERT_NE(http_->port(), 0) << http_->error();
  }
  void TearDown() override {
    http_.reset();
    CsiDriverTest::TearDown();
  }

  // A raw image under the served directory: pseudo-random blocks with zero runs.
  std::string MakeRawImage(const std::string& name, uint64_t bytes, uint32_t seed) {
    std::mt19937_64 rng(seed);
    std::string data(bytes, '\0');
    for (uint64_t off = 0; off < bytes; off += 4096) {
      if ((off / 4096) % 5 == 3) continue;  // every fifth block stays zero
      for (uint64_t i = off; i < off + 4096 && i < bytes; i += 8) {
        uint64_t v = rng();
        std::memcpy(&data[i], &v, std::min<uint64_t>(8, bytes - i));
      }
    }
    std::ofstream(served_ + "/" + name, std::ios::binary) << data;
    return data;
  }

  // Restarts the driver with changed options (same directories, same store).
  void RestartWith(const std::function<void(Options*)>& change) {
    StopServer();
    // The fixture's StartServer() takes MakeOptions() as is; this is it with a change.
    Options o = MakeOptions();
    change(&o);
    auto channel = grpc::CreateChannel(endpoint_, grpc::InsecureChannelCredentials());
    controller_ = v1::Controller::NewStub(channel);
    node_ = v1::Node::NewStub(channel);
    identity_ = v1::Identity::NewStub(channel);
    auto server = Server::Start(o);
    ASSERT_TRUE(server.ok()) << server.status().ToString();
    server_ = std::move(server).value();
  }

  v1::CreateVolumeRequest UrlRequest(const std::string& name, const std::string& path,
                                     const std::string& sha256 = "", int64_t required = 0) {
    std::map<std::string, std::string> params = {{"url", http_->Url(path)}};
    if (!sha256.empty()) params["sha256"] = sha256;
    return VolumeRequest(name, required, params);
  }

  grpc::Status CreateWithDeadline(const v1::CreateVolumeRequest& req, std::chrono::seconds timeout,
                                  v1::Volume* volume = nullptr) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + timeout);
    v1::CreateVolumeResponse resp;
    grpc::Status st = controller_->CreateVolume(&ctx, req, &resp);
    if (st.ok() && volume) *volume = resp.volume();
    return st;
  }

  // The volume's bytes, as a reader of the volume sees them.
  std::string ReadVolume(const std::string& id) {
    auto vol = driver().store->OpenVolume(id, true);
    EXPECT_TRUE(vol.ok()) << vol.status().ToString();
    if (!vol.ok()) return "";
    std::string data((*vol)->size(), '\0');
    Status st = (*vol)->Read(0, data.size(), data.data());
    EXPECT_TRUE(st.ok()) << st.ToString();
    return data;
  }

  // The value of a metric line "<name>{...} value" summed over its label sets; -1 if absent.
  double Metric(const std::string& name) {
    std::string text =
        LocalHttpServer::Get("http://127.0.0.1:" + std::to_string(server_->metrics_port()) + "/metrics");
    double sum = -1;
    std::istringstream lines(text);
    std::string line;
    while (std::getline(lines, line)) {
      if (line.rfind(name, 0) != 0) continue;
      const char next = line.size() > name.size() ? line[name.size()] : '\0';
      if (next != ' ' && next != '{') continue;
      sum = (sum < 0 ? 0 : sum) + std::stod(line.substr(line.rfind(' ') + 1));
    }
    return sum;
  }

  // Polls until `pred` holds (the state it waits for is reached by other threads).
  // Fails the test after a generous bound, which is a hang detector, not a timing check.
  void WaitFor(const std::function<bool()>& pred, const std::string& what) {
    for (int i = 0; i < 1200; ++i) {
      if (pred()) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    FAIL() << "never happened: " << what;
  }

  size_t StoreVolumes() {
    auto v = driver().store->ListVolumes();
    EXPECT_TRUE(v.ok());
    return v.ok() ? v->size() : 0;
  }
  uint64_t StoreChunks() {
    auto s = driver().store->GetStats();
    EXPECT_TRUE(s.ok());
    return s.ok() ? s->chunks : 0;
  }

  // The volume holds the image, then zeros up to its size.
  void ExpectHoldsImage(const std::string& id, const std::string& image) {
    std::string data = ReadVolume(id);
    ASSERT_GE(data.size(), image.size());
    EXPECT_TRUE(data.compare(0, image.size(), image) == 0) << "volume " << id << " differs from the image";
    EXPECT_EQ(data.find_first_not_of('\0', image.size()), std::string::npos);
  }

  std::string served_;
  std::string raw_;
  std::unique_ptr<LocalHttpServer> http_;
};

TEST_F(UrlSourceTest, RawQcow2AndZstdImagesFromUrlsReadBackIdentical) {
  if (!HaveTool("qemu-img") || !HaveTool("zstd")) GTEST_SKIP() << "needs qemu-img and zstd (qemu-utils, zstd)";
  ASSERT_TRUE(RunTool({"qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", served_ + "/disk.img",
                   served_ + "/disk.qcow2"}));
  ASSERT_TRUE(RunTool({"zstd", "-q", "-f", served_ + "/disk.img", "-o", served_ + "/disk.img.zst"}));
  int n = 0;
  for (const char* path : {"/disk.img", "/disk.qcow2", "/disk.img.zst"}) {
    SCOPED_TRACE(path);
    const std::string digest = "sha256:" + Sha256Hex(ReadFile(served_ + path));
    v1::Volume v;
    grpc::Status st = CreateVolume(UrlRequest("vol-" + std::to_string(n++), path, digest), &v);
    ASSERT_TRUE(st.ok()) << st.error_message();
    EXPECT_EQ(v.capacity_bytes(), static_cast<int64_t>(kImageBytes));
    EXPECT_EQ(v.volume_context().at("stellarium.io/source-kind"), "image");
    ExpectHoldsImage(v.volume_id(), raw_);
    EXPECT_EQ(http_->BodyRequests(path), 1);
  }
}

TEST_F(UrlSourceTest, WrongDigestFailsAndLeavesNothingAfterGc) {
  const uint64_t chunks_before = StoreChunks();
  const std::string wrong = "sha256:" + std::string(64, 'a');
  grpc::Status st = CreateVolume(UrlRequest("vol-bad", "/disk.img", wrong));
  ASSERT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << st.error_message();
  EXPECT_NE(st.error_message().find("expected sha256:" + std::string(64, 'a')), std::string::npos)
      << st.error_message();
  EXPECT_NE(st.error_message().find("/disk.img"), std::string::npos) << st.error_message();
  EXPECT_EQ(StoreVolumes(), 0u);
  ASSERT_TRUE(driver().store->Gc().ok());
  EXPECT_EQ(StoreChunks(), chunks_before);
  auto images = driver().store->ListImages();
  ASSERT_TRUE(images.ok());
  EXPECT_TRUE(images->empty());
}

TEST_F(UrlSourceTest, DroppedConnectionFailsCleanlyAndRetrySucceeds) {
  ASSERT_TRUE(http_->DropAfter("/disk.img", 3 << 20));
  grpc::Status st = CreateVolume(UrlRequest("vol-a", "/disk.img"));
  ASSERT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE) << st.error_message();
  EXPECT_NE(st.error_message().find("incomplete"), std::string::npos) << st.error_message();
  EXPECT_EQ(StoreVolumes(), 0u);
  v1::Volume v;
  st = CreateVolume(UrlRequest("vol-a", "/disk.img"), &v);
  ASSERT_TRUE(st.ok()) << st.error_message();
  ExpectHoldsImage(v.volume_id(), raw_);
  EXPECT_EQ(http_->BodyRequests("/disk.img"), 2);
}

TEST_F(UrlSourceTest, TenConcurrentCallsForOneUrlDownloadItOnce) {
  const std::string digest = Sha256Hex(raw_);
  ASSERT_TRUE(http_->Hold("/disk.img", 1 << 20));
  std::vector<std::thread> threads;
  std::vector<grpc::Status> results(10);
  std::vector<v1::Volume> volumes(10);
  for (int i = 0; i < 10; ++i) {
    threads.emplace_back([&, i] {
      results[i] = CreateVolume(UrlRequest("vol-" + std::to_string(i), "/disk.img", digest), &volumes[i]);
    });
  }
  // All ten wait for the one import, which the server holds midway.
  WaitFor([&] { return Metric("stellarium_image_import_waiters") == 10; }, "ten callers waiting");
  EXPECT_EQ(Metric("stellarium_image_imports_in_progress"), 1);
  // The held first MiB arrives in its own time: wait for it, then see it exported.
  WaitFor([&] { return Metric("stellarium_image_import_downloaded_bytes") >= (1 << 20); },
          "the first MiB counted");
  EXPECT_EQ(Metric("stellarium_image_import_size_bytes"), static_cast<double>(kImageBytes));
  ASSERT_TRUE(http_->Release("/disk.img"));
  for (auto& t : threads) t.join();
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(results[i].ok()) << i << ": " << results[i].error_message();
  EXPECT_EQ(http_->BodyRequests("/disk.img"), 1);
  EXPECT_EQ(http_->Requests("/disk.img"), 1);
  for (int i = 1; i < 10; ++i) EXPECT_NE(volumes[i].volume_id(), volumes[0].volume_id());
  ExpectHoldsImage(volumes[0].volume_id(), raw_);
  ExpectHoldsImage(volumes[9].volume_id(), raw_);
  EXPECT_EQ(Metric("stellarium_image_import_bytes_total"), static_cast<double>(kImageBytes));
  // One image, stored once: ten clones add no chunks.
  auto images = driver().store->ListImages();
  ASSERT_TRUE(images.ok());
  EXPECT_EQ(images->size(), 1u);
}

TEST_F(UrlSourceTest, CallNearItsDeadlineGetsAbortedAndItsRetryJoinsTheSameImport) {
  ASSERT_TRUE(http_->Hold("/disk.img", 1 << 20));
  grpc::Status st = CreateWithDeadline(UrlRequest("vol-a", "/disk.img"), std::chrono::seconds(3));
  ASSERT_EQ(st.error_code(), grpc::StatusCode::ABORTED) << st.error_message();
  EXPECT_NE(st.error_message().find("in progress"), std::string::npos) << st.error_message();
  EXPECT_NE(st.error_message().find("MiB"), std::string::npos) << st.error_message();  // progress
  EXPECT_EQ(StoreVolumes(), 0u);
  // The import goes on without its caller; the retry waits for it.
  EXPECT_EQ(Metric("stellarium_image_imports_in_progress"), 1);
  grpc::Status retry;
  v1::Volume v;
  std::thread t([&] { retry = CreateVolume(UrlRequest("vol-a", "/disk.img"), &v); });
  WaitFor([&] { return Metric("stellarium_image_import_waiters") == 1; }, "the retry waiting");
  ASSERT_TRUE(http_->Release("/disk.img"));
  t.join();
  ASSERT_TRUE(retry.ok()) << retry.error_message();
  ExpectHoldsImage(v.volume_id(), raw_);
  EXPECT_EQ(http_->BodyRequests("/disk.img"), 1);
  // Idempotent: the same name again is the same volume.
  v1::Volume again;
  ASSERT_TRUE(CreateVolume(UrlRequest("vol-a", "/disk.img"), &again).ok());
  EXPECT_EQ(again.volume_id(), v.volume_id());
  EXPECT_EQ(http_->Requests("/disk.img"), 1);
}

TEST_F(UrlSourceTest, StoppingTheDriverCancelsAStalledImportAndLeavesNothing) {
  ASSERT_TRUE(http_->Hold("/disk.img", 1 << 20));
  grpc::Status st = CreateWithDeadline(UrlRequest("vol-a", "/disk.img"), std::chrono::seconds(2));
  ASSERT_EQ(st.error_code(), grpc::StatusCode::ABORTED) << st.error_message();
  // No bytes flow while the server holds the body: the stop must not wait for them.
  StopServer();
  ASSERT_TRUE(http_->Release("/disk.img"));
  StartServer();
  EXPECT_EQ(StoreVolumes(), 0u);
  ASSERT_TRUE(driver().store->Gc().ok());
  EXPECT_EQ(StoreChunks(), 0u);
  v1::Volume v;
  st = CreateVolume(UrlRequest("vol-a", "/disk.img"), &v);
  ASSERT_TRUE(st.ok()) << st.error_message();
  ExpectHoldsImage(v.volume_id(), raw_);
}

TEST_F(UrlSourceTest, SameUrlAndDigestLaterIsACloneWithoutAnyRequest) {
  const std::string digest = Sha256Hex(raw_);
  v1::Volume a, b;
  ASSERT_TRUE(CreateVolume(UrlRequest("vol-a", "/disk.img", digest), &a).ok());
  ASSERT_EQ(http_->Requests("/disk.img"), 1);
  ASSERT_TRUE(CreateVolume(UrlRequest("vol-b", "/disk.img", digest, 16 << 20), &b).ok());
  EXPECT_EQ(http_->Requests("/disk.img"), 1);
  EXPECT_EQ(b.capacity_bytes(), 16 << 20);
  ExpectHoldsImage(b.volume_id(), raw_);
  // Remembered across a restart of the driver (images.yaml and the store).
  StopServer();
  StartServer();
  v1::Volume c;
  ASSERT_TRUE(CreateVolume(UrlRequest("vol-c", "/disk.img", digest), &c).ok());
  EXPECT_EQ(http_->Requests("/disk.img"), 1);
  ExpectHoldsImage(c.volume_id(), raw_);
}

TEST_F(UrlSourceTest, WithoutDigestAnUnchangedEtagMeansNoSecondDownload) {
  v1::Volume a, b, c;
  ASSERT_TRUE(CreateVolume(UrlRequest("vol-a", "/disk.img"), &a).ok());
  ASSERT_TRUE(CreateVolume(UrlRequest("vol-b", "/disk.img"), &b).ok());
  EXPECT_EQ(http_->BodyRequests("/disk.img"), 1);
  EXPECT_EQ(http_->Requests("/disk.img"), 2);  // the second was a conditional GET: 304
  ExpectHoldsImage(b.volume_id(), raw_);
  // New bytes at the URL (a new ETag): downloaded again, and the volume has them.
  const std::string changed = MakeRawImage("disk.img", kImageBytes, 2);
  ASSERT_TRUE(CreateVolume(UrlRequest("vol-c", "/disk.img"), &c).ok());
  EXPECT_EQ(http_->BodyRequests("/disk.img"), 2);
  ExpectHoldsImage(c.volume_id(), changed);
  ExpectHoldsImage(a.volume_id(), raw_);
}

TEST_F(UrlSourceTest, ImageLargerThanTheCapacityIsOutOfRange) {
  grpc::Status st = CreateVolume(UrlRequest("vol-a", "/disk.img", "", 4 << 20));
  ASSERT_EQ(st.error_code(), grpc::StatusCode::OUT_OF_RANGE) << st.error_message();
  EXPECT_NE(st.error_message().find("larger than the requested capacity"), std::string::npos)
      << st.error_message();
  auto req = UrlRequest("vol-b", "/disk.img");
  req.mutable_capacity_range()->set_limit_bytes(4 << 20);
  st = CreateVolume(req);
  ASSERT_EQ(st.error_code(), grpc::StatusCode::OUT_OF_RANGE) << st.error_message();
  // The download was stopped (nobody else wanted it) and left nothing.
  WaitFor([&] { return Metric("stellarium_image_imports_in_progress") == 0; }, "imports ended");
  EXPECT_EQ(StoreVolumes(), 0u);
  EXPECT_EQ(Metric("stellarium_image_imports_total{result=\"ok\"}"), 0);
}

TEST_F(UrlSourceTest, CallRightAfterARefusedOneStartsAFreshImport) {
  // Regression: the refused call stops its download; a call for the same URL made at
  // once must not join that stopped import (and fail with CANCELLED).
  ASSERT_TRUE(http_->Hold("/disk.img", 1 << 20));
  grpc::Status st = CreateVolume(UrlRequest("vol-a", "/disk.img", "", 4 << 20));
  ASSERT_EQ(st.error_code(), grpc::StatusCode::OUT_OF_RANGE) << st.error_message();
  ASSERT_TRUE(http_->Release("/disk.img"));
  v1::Volume v;
  st = CreateVolume(UrlRequest("vol-b", "/disk.img", "", 16 << 20), &v);
  ASSERT_TRUE(st.ok()) << st.error_message();
  ExpectHoldsImage(v.volume_id(), raw_);
  EXPECT_EQ(v.capacity_bytes(), 16 << 20);
}

TEST_F(UrlSourceTest, ImageOverMaxImageSizeIsRefused) {
  RestartWith([](Options* o) { o->max_image_size = 4 << 20; });
  grpc::Status st = CreateVolume(UrlRequest("vol-a", "/disk.img"));
  ASSERT_EQ(st.error_code(), grpc::StatusCode::OUT_OF_RANGE) << st.error_message();
  EXPECT_NE(st.error_message().find("maximum image size 4194304"), std::string::npos) << st.error_message();
  EXPECT_EQ(StoreVolumes(), 0u);
  // A zstd stream hides its size: the limit stops it while decompressing.
  if (HaveTool("zstd")) {
    ASSERT_TRUE(RunTool({"zstd", "-q", "-f", served_ + "/disk.img", "-o", served_ + "/disk.img.zst"}));
    st = CreateVolume(UrlRequest("vol-b", "/disk.img.zst"));
    ASSERT_EQ(st.error_code(), grpc::StatusCode::OUT_OF_RANGE) << st.error_message();
    EXPECT_EQ(StoreVolumes(), 0u);
  }
}

TEST_F(UrlSourceTest, ImportsBeyondTheNodeLimitAreAborted) {
  RestartWith([](Options* o) { o->max_concurrent_imports = 1; });
  MakeRawImage("other.img", kImageBytes, 3);
  ASSERT_TRUE(http_->Hold("/disk.img", 1 << 20));
  grpc::Status first;
  std::thread t([&] { first = CreateVolume(UrlRequest("vol-a", "/disk.img")); });
  WaitFor([&] { return Metric("stellarium_image_import_waiters") == 1; }, "the first import running");
  grpc::Status st = CreateVolume(UrlRequest("vol-b", "/other.img"));
  EXPECT_EQ(st.error_code(), grpc::StatusCode::ABORTED) << st.error_message();
  EXPECT_NE(st.error_message().find("max_concurrent_imports 1"), std::string::npos) << st.error_message();
  EXPECT_EQ(http_->Requests("/other.img"), 0);
  ASSERT_TRUE(http_->Release("/disk.img"));
  t.join();
  ASSERT_TRUE(first.ok()) << first.error_message();
  EXPECT_TRUE(CreateVolume(UrlRequest("vol-b", "/other.img")).ok());
}

TEST_F(UrlSourceTest, BadUrlParametersAreInvalidArgumentNamingTheParameter) {
  struct Case {
    std::map<std::string, std::string> params;
    std::string expect;
  } cases[] = {
      {{{"url", "ftp://127.0.0.1/disk.img"}}, "parameter url"},
      {{{"url", "file:///etc/passwd"}}, "parameter url"},
      {{{"url", http_->Url("/disk.img")}, {"sha256", "sha256:abc"}}, "parameter sha256"},
      {{{"sha256", std::string(64, 'a')}}, "parameter sha256 needs the parameter url"},
      {{{"url", http_->Url("/disk.img")}, {"image", "x.img"}}, "exclusive"},
  };
  for (const auto& c : cases) {
    grpc::Status st = CreateVolume(VolumeRequest("vol-x", 0, c.params));
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << st.error_message();
    EXPECT_NE(st.error_message().find(c.expect), std::string::npos) << st.error_message();
  }
  auto req = UrlRequest("vol-x", "/disk.img");
  (*req.mutable_secrets())["password"] = "hunter2";
  grpc::Status st = CreateVolume(req);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(st.error_message().find("secret key 'password'"), std::string::npos) << st.error_message();
  EXPECT_EQ(st.error_message().find("hunter2"), std::string::npos) << "a secret value leaked";
  EXPECT_EQ(http_->Requests("/disk.img"), 0);
  EXPECT_EQ(StoreVolumes(), 0u);
}

TEST_F(UrlSourceTest, HeadersFromSecretsReachTheServer) {
  fs::create_directories(served_ + "/private");
  fs::copy_file(served_ + "/disk.img", served_ + "/private/disk.img");
  grpc::Status st = CreateVolume(UrlRequest("vol-a", "/private/disk.img"));
  EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED) << st.error_message();
  auto req = UrlRequest("vol-a", "/private/disk.img");
  (*req.mutable_secrets())["header.X-Token"] = "let-me-in";
  v1::Volume v;
  st = CreateVolume(req, &v);
  ASSERT_TRUE(st.ok()) << st.error_message();
  ExpectHoldsImage(v.volume_id(), raw_);
  auto req2 = UrlRequest("vol-b", "/private/disk.img", Sha256Hex(raw_));
  (*req2.mutable_secrets())["headers"] = "X-Token: let-me-in\nX-Other: 1\n";
  ASSERT_TRUE(CreateVolume(req2).ok());
}

TEST_F(UrlSourceTest, DeletingTheLastVolumeOfAnImageForgetsIt) {
  const std::string digest = Sha256Hex(raw_);
  v1::Volume a, b;
  ASSERT_TRUE(CreateVolume(UrlRequest("vol-a", "/disk.img", digest), &a).ok());
  ASSERT_TRUE(CreateVolume(UrlRequest("vol-b", "/disk.img", digest), &b).ok());
  // The CO sees its two volumes, not the driver's image anchor.
  v1::ListVolumesResponse list;
  ASSERT_TRUE(controller_->ListVolumes(Ctx().get(), v1::ListVolumesRequest(), &list).ok());
  EXPECT_EQ(list.entries_size(), 2);
  ASSERT_TRUE(DeleteVolume(a.volume_id()).ok());
  ASSERT_EQ(driver().store->ListImages()->size(), 1u);
  ASSERT_TRUE(DeleteVolume(b.volume_id()).ok());
  EXPECT_EQ(StoreVolumes(), 0u);
  EXPECT_TRUE(driver().store->ListImages()->empty());
  ASSERT_TRUE(driver().store->Gc().ok());
  EXPECT_EQ(StoreChunks(), 0u);
  // Asked again, it is downloaded again.
  ASSERT_TRUE(CreateVolume(UrlRequest("vol-c", "/disk.img", digest)).ok());
  EXPECT_EQ(http_->BodyRequests("/disk.img"), 2);
}

TEST(UrlSourceOptionsTest, ImportLimitsFromFlagsAndYaml) {
  auto parse = [](std::vector<std::string> args) {
    args.insert(args.begin(), "stellarium-csi");
    args.push_back("--node-id=n1");
    std::vector<const char*> argv;
    for (auto& a : args) argv.push_back(a.c_str());
    return ParseCommandLine(static_cast<int>(argv.size()), argv.data());
  };
  CommandLine cl = parse({"--max-image-size", "10G", "--max-concurrent-imports", "4"});
  ASSERT_FALSE(cl.exit) << cl.output;
  EXPECT_EQ(cl.options.max_image_size, 10ull << 30);
  EXPECT_EQ(cl.options.max_concurrent_imports, 4);
  cl = parse({});
  EXPECT_EQ(cl.options.max_image_size, 0u);
  EXPECT_EQ(cl.options.max_concurrent_imports, 2);
  cl = parse({"--max-image-size", "ten"});
  EXPECT_EQ(cl.exit_code, 2);
  EXPECT_NE(cl.output.find("--max-image-size 'ten'"), std::string::npos) << cl.output;
  cl = parse({"--max-concurrent-imports", "0"});
  EXPECT_EQ(cl.exit_code, 2);
  EXPECT_NE(cl.output.find("max_concurrent_imports 0"), std::string::npos) << cl.output;

  Options o;
  ASSERT_TRUE(LoadYaml("max_image_size: 512M\nmax_concurrent_imports: 3\n", "test", &o).ok());
  EXPECT_EQ(o.max_image_size, 512ull << 20);
  EXPECT_EQ(o.max_concurrent_imports, 3);
  Options reloaded;
  ASSERT_TRUE(LoadYaml(DumpYaml(o), "dump", &reloaded).ok());
  EXPECT_EQ(reloaded.max_image_size, o.max_image_size);
  EXPECT_EQ(reloaded.max_concurrent_imports, 3);
  Status st = LoadYaml("max_image_size: lots\n", "test", &o);
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("max_image_size 'lots'"), std::string::npos) << st.message();
}

}  // namespace
}  // namespace stellarium::csi::testing
