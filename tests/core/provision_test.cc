// core/provision.h on a real store: the one name-idempotency rule, sizing with a
// required/limit range, image files of any format, trees through a scratch directory
// that is left empty, and the name and block-size rules the CLI applies.
#include "core/provision.h"

#include <filesystem>
#include <random>

#include "core/export.h"
#include "core/process.h"
#include "core/tree_image.h"
#include "tests/core/test_util.h"

namespace stellarium {
namespace {

using testing::TempDir;
using testing::Unwrap;
namespace fs = std::filesystem;

constexpr uint64_t kMiB = 1 << 20;

class ProvisionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    StoreOptions o;
    o.path = dir_ / "store";
    store_ = Unwrap(Store::Open(o));
  }
  ProvisionRequest Blank(const std::string& name, uint64_t required, uint64_t limit = 0) {
    ProvisionRequest r;
    r.name = name;
    r.required_bytes = required;
    r.limit_bytes = limit;
    return r;
  }
  std::string RandomImage(const std::string& name, uint64_t bytes) {
    std::mt19937_64 rng(bytes);
    const std::string path = dir_ / name;
    testing::WriteFile(path, testing::RandomBytes(rng, bytes));
    return path;
  }
  std::string Exported(const VolumeInfo& v) {
    auto vol = Unwrap(store_->OpenVolume(v.id, true));
    const std::string out = dir_ / "export.raw";
    EXPECT_TRUE(ExportVolume(*vol, out).ok());
    return testing::ReadFile(out);
  }
  TempDir dir_;
  std::unique_ptr<Store> store_;
};

TEST_F(ProvisionTest, SameNameWithinTheRangeIsTheExistingVolumeElseAlreadyExistsSayingWhy) {
  ProvisionRequest first = Blank("v", 8 * kMiB);
  first.attributes = {{"k", "1"}};
  auto made = Unwrap(Provision(*store_, first));
  EXPECT_FALSE(made.existed);
  EXPECT_EQ(made.volume.size_bytes, 8 * kMiB);

  ProvisionRequest ranged = first;
  ranged.required_bytes = 4 * kMiB;
  ranged.limit_bytes = 16 * kMiB;
  auto again = Unwrap(Provision(*store_, ranged));
  EXPECT_TRUE(again.existed);
  EXPECT_EQ(again.volume.id, made.volume.id);

  struct Case {
    std::string why;
    std::function<void(ProvisionRequest*)> change;
  };
  const std::string snap = Unwrap(store_->CreateSnapshot("s", made.volume.id)).id;
  const std::vector<Case> cases = {
      {"size 8388608 bytes is outside the requested [16777216",
       [](auto* r) { r->required_bytes = 16 * kMiB; }},
      {"outside the requested [0, 4194304]",
       [](auto* r) { r->required_bytes = 0, r->limit_bytes = 4 * kMiB; }},
      {"block size is 4096, not 65536", [](auto* r) { r->block_size = 65536; }},
      {"attribute 'k' differs", [](auto* r) { r->attributes["k"] = "2"; }},
      {"it has the attribute 'k' as well", [](auto* r) { r->attributes.clear(); }},
      {"it is blank, not snapshot " + snap,
       [&](auto* r) { r->source.kind = SourceKind::kSnapshot, r->source.id = snap; }},
      {"it is blank, not an image", [](auto* r) { r->source.kind = SourceKind::kImageFile; }},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.why);
    ProvisionRequest r = first;
    c.change(&r);
    auto st = Provision(*store_, r);
    ASSERT_EQ(st.status().code(), StatusCode::kAlreadyExists) << st.status().ToString();
    EXPECT_NE(st.status().message().find("volume v already exists (" + made.volume.id + ")"),
              std::string::npos)
        << st.status().message();
    EXPECT_NE(st.status().message().find(c.why), std::string::npos) << st.status().message();
  }
  EXPECT_EQ(Unwrap(store_->ListVolumes()).size(), 1u);
}

TEST_F(ProvisionTest, ClonesAreSizedInsideTheRangeAndRefusedOutsideIt) {
  auto src = Unwrap(Provision(*store_, Blank("src", 8 * kMiB))).volume;
  const std::string snap = Unwrap(store_->CreateSnapshot("s", src.id)).id;
  ProvisionRequest r = Blank("small", 4 * kMiB);  // below the source: the source's size
  r.source.kind = SourceKind::kSnapshot;
  r.source.id = snap;
  EXPECT_EQ(Unwrap(Provision(*store_, r)).volume.size_bytes, 8 * kMiB);
  r.name = "big";
  r.required_bytes = 10 * kMiB + 1;  // rounded up to the block size
  EXPECT_EQ(Unwrap(Provision(*store_, r)).volume.size_bytes, 10 * kMiB + 4096);
  r.name = "capped";
  r.required_bytes = 0;
  r.limit_bytes = 4 * kMiB;
  EXPECT_EQ(Provision(*store_, r).status().code(), StatusCode::kOutOfRange);
  r.source.kind = SourceKind::kVolume;
  r.source.id = src.id;
  EXPECT_EQ(Provision(*store_, r).status().code(), StatusCode::kOutOfRange);
  r.limit_bytes = 0;
  r.block_size = 65536;
  EXPECT_EQ(Provision(*store_, r).status().code(), StatusCode::kInvalidArgument);
  r.source.id = "vol-0000000000000000";
  r.block_size = 0;
  EXPECT_EQ(Provision(*store_, r).status().code(), StatusCode::kNotFound);
  EXPECT_TRUE(store_->FindVolumeByName("capped").status().IsNotFound());
  // ExactSize: the CLI's --size, exactly that size rounded up to the block size.
  ExactSize(9 * kMiB + 1, 4096, &r);
  r.name = "exact";
  r.source.id = src.id;
  EXPECT_EQ(Unwrap(Provision(*store_, r)).volume.size_bytes, 9 * kMiB + 4096);
}

TEST_F(ProvisionTest, AnExistingImageVolumeIsTheAnswerWithoutReadingTheFile) {
  const std::string path = RandomImage("disk.img", 4 * kMiB);
  ProvisionRequest r;
  r.name = "img";
  r.source.kind = SourceKind::kImageFile;
  r.source.image.path = path;
  r.attributes = {{"source", path}};
  auto made = Unwrap(Provision(*store_, r));
  ASSERT_TRUE(made.import.has_value());
  EXPECT_EQ(made.format, ImageFormat::kRaw);
  ASSERT_EQ(::unlink(path.c_str()), 0);
  auto again = Unwrap(Provision(*store_, r));
  EXPECT_TRUE(again.existed);
  EXPECT_FALSE(again.import.has_value());
  EXPECT_EQ(again.volume.id, made.volume.id);
}

TEST_F(ProvisionTest, CompressedImagesAreGrownToRequiredAndStoppedAtTheLimit) {
  const std::string path = RandomImage("disk.img", 4 * kMiB);
  const std::string raw = testing::ReadFile(path);
  ASSERT_TRUE(RunProgramOk({"gzip", path}).ok());
  ProvisionRequest r;
  r.name = "grown";
  r.required_bytes = 6 * kMiB;
  r.source.kind = SourceKind::kImageFile;
  r.source.image.path = path + ".gz";
  auto made = Unwrap(Provision(*store_, r));
  EXPECT_EQ(made.format, ImageFormat::kGzip);
  EXPECT_EQ(made.volume.size_bytes, 6 * kMiB);
  const std::string out = Exported(made.volume);
  EXPECT_TRUE(out.substr(0, raw.size()) == raw);
  EXPECT_EQ(out.find_first_not_of('\0', raw.size()), std::string::npos);

  r.name = "capped";
  r.required_bytes = 0;
  r.limit_bytes = 2 * kMiB;
  EXPECT_EQ(Provision(*store_, r).status().code(), StatusCode::kOutOfRange);
  EXPECT_TRUE(store_->FindVolumeByName("capped").status().IsNotFound());
}

TEST_F(ProvisionTest, TreesAreBuiltInTheScratchDirectoryWhichIsLeftEmpty) {
  const std::string tree = dir_ / "tree";
  fs::create_directories(tree + "/sub");
  testing::WriteFile(tree + "/sub/file", std::string(100000, 'x'));
  const std::string scratch = dir_ / "scratch";
  ProvisionRequest r;
  r.name = "tree";
  r.source.kind = SourceKind::kTree;
  r.source.tree_dir = tree;
  r.scratch_dir = scratch;
  std::vector<std::string> notes;
  ProvisionHooks hooks;
  hooks.note = [&](const std::string& line) { notes.push_back(line); };
  auto made = Unwrap(Provision(*store_, r, hooks));
  EXPECT_EQ(made.volume.size_bytes, DefaultImageSize(Unwrap(MeasureTree(tree))));
  EXPECT_EQ(notes.size(), 1u);
  EXPECT_TRUE(fs::is_empty(scratch));
  auto images = Unwrap(store_->ListImages());
  ASSERT_EQ(images.size(), 1u);
  EXPECT_EQ(images[0].origin, tree + " (built as ext4)");

  // Too small: one line naming the tree, and the scratch directory is empty again.
  r.name = "tiny";
  ExactSize(64 << 10, 4096, &r);
  auto st = Provision(*store_, r);
  EXPECT_EQ(st.status().code(), StatusCode::kOutOfRange) << st.status().ToString();
  EXPECT_NE(st.status().message().find("directory " + tree + " does not fit"), std::string::npos)
      << st.status().message();
  EXPECT_TRUE(fs::is_empty(scratch));
}

TEST(ProvisionRulesTest, NamesFollowTheRule) {
  for (const std::string& ok : std::vector<std::string>{"a", "pvc-1", "with space", "über", "...",
                                                        ".a", std::string(kMaxNameBytes, 'x')}) {
    EXPECT_TRUE(ValidateName(ok, "name").ok()) << ok;
  }
  for (const std::string& bad :
       std::vector<std::string>{"", ".", "..", "a/b", "/", "a\nb", "a\tb", std::string("a\0b", 3),
                                "a\x7f", "a\xc2\x85", std::string(kMaxNameBytes + 1, 'x')}) {
    Status st = ValidateName(bad, "volume name");
    EXPECT_EQ(st.code(), StatusCode::kInvalidArgument) << bad;
    EXPECT_EQ(st.message().rfind("volume name", 0), 0u) << st.message();
    EXPECT_LT(st.message().size(), 200u) << "the message bounds the name it quotes";
  }
}

TEST(ProvisionRulesTest, BlockSizesTakeTheUsualUnits) {
  EXPECT_EQ(Unwrap(ParseBlockSize("4096", "x")), 4096u);
  EXPECT_EQ(Unwrap(ParseBlockSize("4k", "x")), 4096u);
  EXPECT_EQ(Unwrap(ParseBlockSize("4K", "x")), 4096u);
  EXPECT_EQ(Unwrap(ParseBlockSize("64KiB", "x")), 65536u);
  EXPECT_EQ(Unwrap(ParseBlockSize("1M", "x")), 1u << 20);
  for (const std::string& bad :
       std::vector<std::string>{"", "3000", "2K", "2M", "8G", "4q", "-4K"}) {
    auto r = ParseBlockSize(bad, "--block-size");
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << bad;
    EXPECT_EQ(r.status().message().rfind("--block-size", 0), 0u) << r.status().message();
  }
}

}  // namespace
}  // namespace stellarium
