// The `stellarium` CLI end to end: real ext4 images made by mkfs.ext4 -d, round trips
// through the store, dedup between images, bad input. Runs the built binary.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/process.h"
#include "core/sha256.h"
#include "tests/core/test_util.h"
#include "tests/spawn_util.h"

namespace stellarium {
namespace {

using json = nlohmann::json;
using testing::SpawnLogged;
using testing::TempDir;
using testing::Unwrap;
using testing::WaitLogged;

const char* kCli = STELLARIUM_CLI_PATH;

ProgramResult Cli(const std::vector<std::string>& args) {
  std::vector<std::string> argv = {kCli};
  argv.insert(argv.end(), args.begin(), args.end());
  return Unwrap(RunProgram(argv));
}

json CliJson(const std::vector<std::string>& args) {
  auto r = Cli(args);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  return json::parse(r.output, nullptr, /*allow_exceptions=*/false);
}

bool FilesEqual(const std::string& a, const std::string& b) {
  auto r = Unwrap(RunProgram({"cmp", "-s", a, b}));
  return r.exit_code == 0;
}

// A small but real tree: text files, a binary-ish file, nested dirs, a symlink.
void MakeTree(const std::string& root, int variant) {
  std::filesystem::create_directories(root + "/etc/conf.d");
  std::filesystem::create_directories(root + "/usr/share/data");
  std::mt19937_64 rng(7);
  for (int i = 0; i < 40; ++i) {
    std::ofstream(root + "/usr/share/data/file" + std::to_string(i) + ".bin")
        << testing::RandomBytes(rng, 1000 + 3000 * i);
  }
  std::ofstream(root + "/etc/conf.d/settings") << "variant=" << variant << "\n";
  std::filesystem::create_symlink("conf.d/settings", root + "/etc/settings");
}

std::string MakeExt4(const TempDir& d, const std::string& name, const std::string& tree) {
  std::string img = d / name;
  auto r = Unwrap(RunProgram({"mkfs.ext4", "-q", "-F", "-b", "4096", "-U",
                              "6c1d3a3e-8d0b-4c4e-9f0a-111111111111", "-E",
                              "hash_seed=6c1d3a3e-8d0b-4c4e-9f0a-222222222222", "-d", tree, img,
                              "64M"},
                             {"E2FSPROGS_FAKE_TIME=1700000000"}));
  EXPECT_EQ(r.exit_code, 0) << r.output;
  return img;
}

class CliTest : public ::testing::Test {
 protected:
  std::string Store() { return dir_ / "store"; }
  TempDir dir_;
};

TEST_F(CliTest, VersionAndHelp) {
  auto r = Cli({"--version"});
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_NE(r.output.find("stellarium"), std::string::npos);
  // How it hashes chunks, the same engine this test binary has (both link core).
  EXPECT_NE(r.output.find("(chunk hashing: " + Sha256ManyEngine() + ")"), std::string::npos)
      << r.output;
}

class RoundTripTest : public CliTest, public ::testing::WithParamInterface<int> {};

TEST_P(RoundTripTest, ImportExportIsByteIdentical) {
  std::string bs = std::to_string(GetParam());
  // A real ext4 image of a real tree from the system.
  std::string img = dir_ / "doc.img";
  auto mk = Unwrap(RunProgram({"mkfs.ext4", "-q", "-F", "-b", "4096", "-d", "/usr/share/doc/e2fsprogs",
                               img, "32M"}));
  ASSERT_EQ(mk.exit_code, 0) << mk.output;
  json s = CliJson({"build", "--store", Store(), "--from-image", img, "--name", "doc", "--block-size", bs, "--json"});
  EXPECT_EQ(s["raw_bytes"], 32u << 20);
  EXPECT_GT(s["zero_blocks"].get<uint64_t>(), 0u);
  auto e = Cli({"export", "--store", Store(), "--volume", "doc", "-o", dir_ / "out.img"});
  ASSERT_EQ(e.exit_code, 0) << e.output;
  EXPECT_TRUE(FilesEqual(img, dir_ / "out.img"));
  // And through a snapshot and a clone.
  ASSERT_EQ(Cli({"snapshot", "--store", Store(), "--volume", "doc", "--name", "s"}).exit_code, 0);
  ASSERT_EQ(Cli({"clone", "--store", Store(), "--from-snapshot", "s", "--name", "c"}).exit_code, 0);
  ASSERT_EQ(Cli({"export", "--store", Store(), "--volume", "c", "-o", dir_ / "clone.img"}).exit_code, 0);
  EXPECT_TRUE(FilesEqual(img, dir_ / "clone.img"));
  EXPECT_EQ(Cli({"fsck", "--store", Store()}).exit_code, 0);
}

INSTANTIATE_TEST_SUITE_P(BlockSizes, RoundTripTest, ::testing::Values(4096, 65536));

TEST_F(CliTest, BuildFromDirIsCleanExt4WithTheSameFiles) {
  std::string tree = dir_ / "tree";
  MakeTree(tree, 1);
  json s = CliJson({"build", "--store", Store(), "--from-dir", tree, "--name", "t", "--json"});
  ASSERT_TRUE(s.contains("volume"));
  ASSERT_EQ(Cli({"export", "--store", Store(), "--volume", "t", "-o", dir_ / "t.img"}).exit_code, 0);
  auto fsck = Unwrap(RunProgram({"e2fsck", "-fn", dir_ / "t.img"}));
  EXPECT_EQ(fsck.exit_code, 0) << fsck.output;
  // Extract the tree without mounting and compare it with the source.
  std::filesystem::create_directories(dir_ / "out");
  auto rd = Unwrap(RunProgram({"debugfs", "-R", "rdump / " + (dir_ / "out"), dir_ / "t.img"}));
  ASSERT_EQ(rd.exit_code, 0) << rd.output;
  auto diff = Unwrap(RunProgram({"diff", "-r", "--no-dereference", tree, dir_ / "out"}));
  // rdump adds lost+found, which the source does not have.
  std::string out = diff.output;
  EXPECT_EQ(out.find("Only in " + tree), std::string::npos) << out;
  EXPECT_EQ(out.find("differ"), std::string::npos) << out;
}

TEST_F(CliTest, SameImageTwiceAddsNoChunksAndOneChangedFileAddsLittle) {
  std::string t1 = dir_ / "t1", t2 = dir_ / "t2";
  MakeTree(t1, 1);
  MakeTree(t2, 2);  // differs in one small file
  std::string a = MakeExt4(dir_, "a.img", t1);
  std::string b = MakeExt4(dir_, "b.img", t2);
  json first = CliJson({"build", "--store", Store(), "--from-image", a, "--name", "a", "--json"});
  EXPECT_GT(first["new_chunks"].get<uint64_t>(), 20u);
  json again = CliJson({"build", "--store", Store(), "--from-image", a, "--name", "a2", "--json"});
  EXPECT_EQ(again["new_chunks"], 0u);
  EXPECT_EQ(again["bytes_added"], 0u);
  EXPECT_TRUE(again["reused_image"].get<bool>());
  json second = CliJson({"build", "--store", Store(), "--from-image", b, "--name", "b", "--json"});
  // Only the changed file's block and the metadata blocks that describe it.
  EXPECT_LE(second["new_chunks"].get<uint64_t>(), 8u) << second.dump();
  EXPECT_GE(second["new_chunks"].get<uint64_t>(), 1u);
  ASSERT_EQ(Cli({"export", "--store", Store(), "--volume", "b", "-o", dir_ / "b.out"}).exit_code, 0);
  EXPECT_TRUE(FilesEqual(b, dir_ / "b.out"));
}

TEST_F(CliTest, BadInputFailsClearlyAndLeavesTheStoreUnchanged) {
  std::string tree = dir_ / "tree";
  MakeTree(tree, 1);
  ASSERT_EQ(Cli({"build", "--store", Store(), "--from-dir", tree, "--name", "ok"}).exit_code, 0);
  json before = CliJson({"list", "--store", Store(), "--json"});

  auto missing = Cli({"build", "--store", Store(), "--from-image", dir_ / "missing.img", "--name", "m"});
  EXPECT_NE(missing.exit_code, 0);
  EXPECT_NE(missing.output.find("missing.img"), std::string::npos) << missing.output;

  auto isdir = Cli({"build", "--store", Store(), "--from-image", tree, "--name", "d"});
  EXPECT_NE(isdir.exit_code, 0);
  EXPECT_NE(isdir.output.find("not a regular file"), std::string::npos) << isdir.output;

  std::string odd = dir_ / "odd.img";
  std::ofstream(odd) << std::string(4096 + 10, 'x');
  auto unaligned = Cli({"build", "--store", Store(), "--from-image", odd, "--name", "o"});
  EXPECT_NE(unaligned.exit_code, 0);
  EXPECT_NE(unaligned.output.find("not a multiple of block size"), std::string::npos) << unaligned.output;

  auto badbs = Cli({"build", "--store", Store(), "--from-image", odd, "--name", "o", "--block-size", "1000"});
  EXPECT_NE(badbs.exit_code, 0);
  EXPECT_NE(badbs.output.find("block size 1000"), std::string::npos) << badbs.output;

  auto toosmall = Cli({"build", "--store", Store(), "--from-dir", tree, "--name", "s", "--size", "1M"});
  EXPECT_NE(toosmall.exit_code, 0);
  EXPECT_NE(toosmall.output.find("does not fit"), std::string::npos) << toosmall.output;

  std::string other_tree = dir_ / "other";
  MakeTree(other_tree, 3);
  auto reuse = Cli({"build", "--store", Store(), "--from-dir", other_tree, "--name", "ok"});
  EXPECT_NE(reuse.exit_code, 0);
  EXPECT_NE(reuse.output.find("already exists"), std::string::npos) << reuse.output;

  json after = CliJson({"list", "--store", Store(), "--json"});
  EXPECT_EQ(before, after);
  EXPECT_EQ(Cli({"gc", "--store", Store()}).exit_code, 0);
  json fsck = CliJson({"fsck", "--store", Store(), "--json"});
  EXPECT_TRUE(fsck["ok"].get<bool>()) << fsck.dump();
}

// Regression (issue 18): building the same volume again printed a summary of zeros
// ("raw size 0 B ... 0 MB/s") as if it had imported something.
TEST_F(CliTest, RebuildingTheSameVolumeSaysItExistsInsteadOfAZeroSummary) {
  std::string tree = dir_ / "tree";
  MakeTree(tree, 1);
  const std::vector<std::string> build = {"build", "--store", Store(), "--from-dir", tree, "--name", "t"};
  auto first = Cli(build);
  ASSERT_EQ(first.exit_code, 0) << first.output;
  const std::string id = CliJson({"list", "--store", Store(), "--json"})["volumes"][0]["id"];
  auto again = Cli(build);
  EXPECT_EQ(again.exit_code, 0) << again.output;
  EXPECT_NE(again.output.find("volume t (" + id + ") already exists"), std::string::npos) << again.output;
  EXPECT_EQ(again.output.find("raw size"), std::string::npos) << again.output;
  EXPECT_EQ(again.output.find("MB/s"), std::string::npos) << again.output;
  std::vector<std::string> as_json = build;
  as_json.push_back("--json");
  json j = CliJson(as_json);
  EXPECT_TRUE(j["already_exists"].get<bool>()) << j.dump();
  EXPECT_EQ(j["volume"]["id"], id);
  EXPECT_FALSE(j.contains("raw_bytes")) << j.dump();
  EXPECT_EQ(CliJson({"list", "--store", Store(), "--json"})["volumes"].size(), 1u);
}

// Regression (issue 18): --block-size 4k was refused while the StorageClass parameter
// blockSize takes 4K; both now go through one parser.
TEST_F(CliTest, BlockSizeTakesTheUnitsTheStorageClassTakes) {
  std::string img = dir_ / "d.img";
  auto mk = Unwrap(RunProgram({"mkfs.ext4", "-q", "-F", "-b", "4096", "-d", "/usr/share/doc/e2fsprogs", img, "8M"}));
  ASSERT_EQ(mk.exit_code, 0) << mk.output;
  const std::vector<std::pair<std::string, uint32_t>> cases = {
      {"4k", 4096}, {"4K", 4096}, {"64KiB", 65536}, {"1M", 1u << 20}, {"8192", 8192}};
  for (const auto& [text, want] : cases) {
    SCOPED_TRACE(text);
    json s = CliJson({"build", "--store", Store(), "--from-image", img, "--name", "bs-" + text, "--block-size", text,
                      "--json"});
    EXPECT_EQ(s["volume"]["block_size"], want) << s.dump();
  }
  for (const std::string& bad : std::vector<std::string>{"3000", "2M", "4q", ""}) {
    auto r = Cli({"build", "--store", Store(), "--from-image", img, "--name", "bad", "--block-size", bad});
    EXPECT_NE(r.exit_code, 0) << bad;
    EXPECT_NE(r.output.find("--block-size"), std::string::npos) << r.output;
  }
}

// Regression (issue 18): --size too small for a tree with many files made mkfs refuse its
// inode table, which came out as INTERNAL and mkfs's own multi-line message.
TEST_F(CliTest, TreeTooLargeForItsSizeIsOneLineNamingTheTreeAndASizeThatFits) {
  std::string tree = dir_ / "many";
  std::filesystem::create_directories(tree);
  for (int i = 0; i < 4000; ++i) std::ofstream(tree + "/f" + std::to_string(i)) << i;
  auto r = Cli({"build", "--store", Store(), "--from-dir", tree, "--name", "m", "--size", "1M"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.output.find("INTERNAL"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("mkfs"), std::string::npos) << r.output;
  EXPECT_EQ(std::count(r.output.begin(), r.output.end(), '\n'), 1) << r.output;
  EXPECT_NE(r.output.find("directory " + tree + " does not fit in an image of 1048576 bytes"), std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find(" bytes fits it"), std::string::npos) << r.output;
  EXPECT_FALSE(std::filesystem::exists(Store())) << "a failed first build leaves no store behind";
  // The size it names is enough.
  const size_t at = r.output.find("an image of ", r.output.find("files and directories"));
  ASSERT_NE(at, std::string::npos) << r.output;
  const std::string fits = std::to_string(std::stoull(r.output.substr(at + 12)));
  auto ok = Cli({"build", "--store", Store(), "--from-dir", tree, "--name", "m", "--size", fits});
  EXPECT_EQ(ok.exit_code, 0) << ok.output;
}

// Regression (issue 18): names with '/', "..", a newline (which broke the `list` table)
// or of 10,000 characters were accepted. The rule: 1 to 1024 bytes, no '/', no control
// characters, not "." or "..".
TEST_F(CliTest, NamesFollowTheDocumentedRule) {
  std::string tree = dir_ / "tree";
  MakeTree(tree, 1);
  ASSERT_EQ(Cli({"build", "--store", Store(), "--from-dir", tree, "--name", "ok"}).exit_code, 0);
  ASSERT_EQ(Cli({"snapshot", "--store", Store(), "--volume", "ok", "--name", "s"}).exit_code, 0);
  json before = CliJson({"list", "--store", Store(), "--json"});
  for (const std::string& bad : std::vector<std::string>{"a/b", "..", ".", "x\ny", "tab\there", "del\x7f",
                                                         std::string(1025, 'n'), ""}) {
    SCOPED_TRACE(bad.substr(0, 20));
    for (const auto& args : std::vector<std::vector<std::string>>{
             {"build", "--store", Store(), "--from-dir", tree, "--name", bad},
             {"clone", "--store", Store(), "--from-volume", "ok", "--name", bad},
             {"snapshot", "--store", Store(), "--volume", "ok", "--name", bad}}) {
      auto r = Cli(args);
      EXPECT_EQ(r.exit_code, 1) << args[0] << ": " << r.output;
      EXPECT_NE(r.output.find("INVALID_ARGUMENT"), std::string::npos) << args[0] << ": " << r.output;
      EXPECT_LT(r.output.size(), 300u) << "the message bounds the name it quotes";
    }
  }
  EXPECT_EQ(CliJson({"list", "--store", Store(), "--json"}), before);
  const std::string longest(1024, 'l');
  EXPECT_EQ(Cli({"clone", "--store", Store(), "--from-volume", "ok", "--name", longest}).exit_code, 0);
  EXPECT_EQ(Cli({"snapshot", "--store", Store(), "--volume", longest, "--name", "with space"}).exit_code, 0);
  auto help = Cli({"build", "--help"});
  EXPECT_NE(help.output.find("no '/'"), std::string::npos) << help.output;
}

// A store another process holds: commands that change it are refused (saying so);
// commands that only read it read a read-only view (issue 18: info/list/fsck on a live
// node), and say that too.
TEST_F(CliTest, StoreHeldByAnotherProcessIsRefused) {
  ASSERT_EQ(Cli({"build", "--store", Store(), "--from-dir", "/usr/share/doc/e2fsprogs", "--name", "x"}).exit_code, 0);
  StoreOptions o;
  o.path = Store();
  auto held = Unwrap(Store::Open(o));
  auto r = Cli({"snapshot", "--store", Store(), "--volume", "x", "--name", "s"});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("already open by another process"), std::string::npos) << r.output;
  auto list = Cli({"list", "--store", Store()});
  EXPECT_EQ(list.exit_code, 0) << list.output;
  EXPECT_NE(list.output.find("read-only view"), std::string::npos) << list.output;
  EXPECT_EQ(Unwrap(held->ListSnapshots()).size(), 0u);
}

// A SIGBUS (what a disk read error under a mapped table file raises; sent with kill,
// since a failing disk cannot be made on demand) ends the CLI by that signal, after a
// line that names the likely cause and --store-mmap-reads; with reads through pread
// (--store-mmap-reads=false) there is nothing to explain. The CLI is held mid-command by
// a URL whose server accepts the connection and never answers.
TEST_F(CliTest, SigbusIsExplainedWhenTheStoreIsMapped) {
  for (const std::string mmap : {"true", "false"}) {
    SCOPED_TRACE("--store-mmap-reads=" + mmap);
    int listener = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ASSERT_GE(listener, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(addr);
    ASSERT_EQ(::bind(listener, reinterpret_cast<sockaddr*>(&addr), len), 0);
    ASSERT_EQ(::listen(listener, 1), 0);
    ASSERT_EQ(::getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len), 0);
    const std::string url = "http://127.0.0.1:" + std::to_string(ntohs(addr.sin_port)) + "/x.img";
    const std::string log = dir_ / ("cli-" + mmap + ".log");
    const pid_t pid = SpawnLogged({kCli, "build", "--store", Store(), "--store-mmap-reads", mmap,
                                   "--from-url", url, "--name", "v"},
                                  log);
    ASSERT_GT(pid, 0);
    pollfd p{listener, POLLIN, 0};
    ASSERT_EQ(::poll(&p, 1, 20000), 1) << "the CLI did not connect";
    int conn = ::accept(listener, nullptr, nullptr);  // the CLI is waiting for an answer
    ASSERT_GE(conn, 0);
    ASSERT_EQ(::kill(pid, SIGBUS), 0);
    std::string out;
    const int status = WaitLogged(pid, log, &out);
    ::close(conn);
    ::close(listener);
    ASSERT_TRUE(WIFSIGNALED(status)) << "status " << status << "; log:\n" << out;
    EXPECT_EQ(WTERMSIG(status), SIGBUS);
    if (mmap == "true") {
      EXPECT_NE(out.find("stellarium: SIGBUS"), std::string::npos) << out;
      EXPECT_NE(out.find("--store-mmap-reads=false"), std::string::npos) << out;
    } else {
      EXPECT_EQ(out.find("SIGBUS"), std::string::npos) << out;
    }
  }
}

TEST_F(CliTest, DeleteEverythingThenGcLeavesZeroChunks) {
  ASSERT_EQ(Cli({"build", "--store", Store(), "--from-dir", "/usr/share/doc/e2fsprogs", "--name", "x"}).exit_code, 0);
  ASSERT_EQ(Cli({"snapshot", "--store", Store(), "--volume", "x", "--name", "s"}).exit_code, 0);
  ASSERT_EQ(Cli({"clone", "--store", Store(), "--from-snapshot", "s", "--name", "y"}).exit_code, 0);
  ASSERT_EQ(Cli({"delete", "--store", Store(), "--volume", "x"}).exit_code, 0);
  ASSERT_EQ(Cli({"delete", "--store", Store(), "--snapshot", "s"}).exit_code, 0);
  ASSERT_EQ(Cli({"delete", "--store", Store(), "--volume", "y"}).exit_code, 0);
  ASSERT_EQ(Cli({"gc", "--store", Store()}).exit_code, 0);
  json info = CliJson({"info", "--store", Store(), "--json"});
  EXPECT_EQ(info["chunks"], 0u);
  EXPECT_EQ(info["layers"], 0u);
}

}  // namespace
}  // namespace stellarium

namespace stellarium {
namespace {

// fsck's exit status and summary: 0 on a consistent store; 2 with the problems counted
// and the damaged volume named once chunk bytes no longer pass RocksDB's checksums.
TEST_F(CliTest, FsckExitsTwoAndNamesTheDamagedVolume) {
  std::mt19937_64 rng(3);
  testing::WriteFile(dir_ / "img", testing::RandomBytes(rng, 8 << 20));
  ASSERT_EQ(Cli({"build", "--store", Store(), "--from-image", dir_ / "img", "--name", "disk"})
                .exit_code, 0);
  auto clean = Cli({"fsck", "--store", Store()});
  EXPECT_EQ(clean.exit_code, 0) << clean.output;
  EXPECT_NE(clean.output.find("no problems"), std::string::npos) << clean.output;
  // The import's chunk bytes are one table file of about 8 MiB: damage two of its blocks.
  int flipped = 0;
  for (const auto& f : std::filesystem::recursive_directory_iterator(Store())) {
    if (f.path().extension() != ".sst" || f.file_size() < (4u << 20)) continue;
    std::fstream io(f.path(), std::ios::in | std::ios::out | std::ios::binary);
    for (uint64_t at : {f.file_size() / 3, 2 * f.file_size() / 3}) {
      char c;
      io.seekg(at);
      io.read(&c, 1);
      c ^= 0x5a;
      io.seekp(at);
      io.write(&c, 1);
      ++flipped;
    }
  }
  ASSERT_EQ(flipped, 2);
  auto bad = Cli({"fsck", "--store", Store()});
  EXPECT_EQ(bad.exit_code, 2) << bad.output;
  EXPECT_NE(bad.output.find("problems: "), std::string::npos) << bad.output;
  EXPECT_NE(bad.output.find("unreadable chunk"), std::string::npos) << bad.output;
  EXPECT_NE(bad.output.find("damaged: volume vol-"), std::string::npos) << bad.output;
  auto as_json = Cli({"fsck", "--store", Store(), "--json"});
  EXPECT_EQ(as_json.exit_code, 2);
  json j = json::parse(as_json.output, nullptr, /*allow_exceptions=*/false);
  EXPECT_FALSE(j.value("ok", true)) << as_json.output;
  EXPECT_GE(j["problems"].value("unreadable chunk", 0), 2) << as_json.output;
}

}  // namespace
}  // namespace stellarium
