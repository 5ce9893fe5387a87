#include "core/provision.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>

#include "core/image_source.h"
#include "core/sources/http_source.h"
#include "core/tree_image.h"

namespace stellarium {
namespace {

namespace fs = std::filesystem;

uint64_t RoundUp(uint64_t value, uint64_t unit) { return (value + unit - 1) / unit * unit; }

std::string Range(const ProvisionRequest& r) {
  return "[" + std::to_string(r.required_bytes) + ", " +
         (r.limit_bytes ? std::to_string(r.limit_bytes) : std::string("no limit")) + "]";
}

const char* KindName(SourceKind kind) {
  switch (kind) {
    case SourceKind::kBlank:
      return "blank";
    case SourceKind::kSnapshot:
      return "snapshot";
    case SourceKind::kVolume:
      return "volume";
    default:
      return "image";
  }
}

// Rule 3 of the header: "" when the existing volume's source matches the request's.
std::string SourceDifference(const VolumeInfo& v, const ProvisionSource& s) {
  const std::string have = v.source_kind.empty()
                               ? std::string("it is blank")
                               : "its source is " + v.source_kind + " " + v.source_id;
  switch (s.kind) {
    case SourceKind::kBlank:
      return v.source_kind.empty() ? "" : have + ", not blank";
    case SourceKind::kSnapshot:
    case SourceKind::kVolume:
    case SourceKind::kImage:
      if (v.source_kind == KindName(s.kind) && v.source_id == s.id) return "";
      return have + ", not " + KindName(s.kind) + " " + s.id;
    default:
      return v.source_kind == "image" ? "" : have + ", not an image";
  }
}

// The first of the header's four rules the existing volume breaks; "" when none.
std::string Difference(const VolumeInfo& v, const ProvisionRequest& r) {
  if (v.size_bytes < r.required_bytes || (r.limit_bytes && v.size_bytes > r.limit_bytes)) {
    return "its size " + std::to_string(v.size_bytes) + " bytes is outside the requested " +
           Range(r);
  }
  if (r.block_size && v.block_size != r.block_size) {
    return "its block size is " + std::to_string(v.block_size) + ", not " +
           std::to_string(r.block_size);
  }
  if (std::string why = SourceDifference(v, r.source); !why.empty()) return why;
  if (v.attributes != r.attributes) {
    // Name the key only: a value may hold a URL's credentials.
    for (const auto& [key, value] : r.attributes) {
      auto it = v.attributes.find(key);
      if (it == v.attributes.end()) return "it has no attribute '" + key + "'";
      if (it->second != value) return "its attribute '" + key + "' differs";
    }
    for (const auto& [key, value] : v.attributes) {
      if (!r.attributes.count(key)) return "it has the attribute '" + key + "' as well";
    }
  }
  return "";
}

// The volume's size for a source of `source_bytes`: the CSI capacity_range rule.
Result<uint64_t> Fit(const ProvisionRequest& r, uint64_t source_bytes, uint32_t block_size,
                     const std::string& what) {
  const uint64_t size = RoundUp(std::max(r.required_bytes, source_bytes), block_size);
  if (r.limit_bytes && size > r.limit_bytes) {
    return Status::OutOfRange(what + " needs " + std::to_string(size) +
                              " bytes, more than the limit of " + std::to_string(r.limit_bytes) +
                              " bytes");
  }
  return size;
}

std::string ScratchDir(const Store& store, const ProvisionRequest& r) {
  if (!r.scratch_dir.empty()) return r.scratch_dir;
  // A store in a cluster has no directory of its own here.
  if (store.options().path.rfind("rados://", 0) == 0) return fs::temp_directory_path().string();
  fs::path store_dir = fs::absolute(store.options().path).lexically_normal();
  if (!store_dir.has_filename()) store_dir = store_dir.parent_path();  // a trailing '/'
  return store_dir.parent_path().string();
}

// A temporary file in the scratch directory, removed when it goes (or sooner, by Unlink).
class ScratchFile {
 public:
  ~ScratchFile() { Unlink(); }
  static Result<std::unique_ptr<ScratchFile>> Create(const std::string& dir,
                                                     const std::string& stem) {
    std::error_code ec;
    fs::create_directories(dir, ec);
    if (ec) return Status::FromErrno(ec.value(), "scratch directory " + dir);
    std::string path = dir + "/stellarium-" + stem + "-XXXXXX";
    int fd = ::mkostemp(path.data(), O_CLOEXEC);
    if (fd < 0) return Status::FromErrno(errno, "scratch directory " + dir + ": temporary file");
    ::close(fd);
    auto f = std::unique_ptr<ScratchFile>(new ScratchFile());
    f->path_ = path;
    return f;
  }
  const std::string& path() const { return path_; }
  void Unlink() {
    if (!path_.empty()) ::unlink(path_.c_str());
    path_.clear();
  }

 private:
  ScratchFile() = default;
  std::string path_;
};

// A tree's temporary image, described (in errors and as the image's origin) by its tree.
class TreeImageSource : public ImageSource {
 public:
  TreeImageSource(std::unique_ptr<ImageSource> image, std::string dir)
      : image_(std::move(image)), dir_(std::move(dir)) {}
  std::string Describe() const override { return dir_ + " (built as ext4)"; }
  std::optional<uint64_t> Size() const override { return image_->Size(); }
  Result<size_t> Next(char* buf, size_t max, bool* hole) override {
    return image_->Next(buf, max, hole);
  }

 private:
  std::unique_ptr<ImageSource> image_;
  std::string dir_;
};

CreateVolumeRequest VolumeRequestOf(const ProvisionRequest& r) {
  CreateVolumeRequest c;
  c.name = r.name;
  c.block_size = r.block_size;
  c.attributes = r.attributes;
  return c;
}

Status CheckSameBlockSize(const ProvisionRequest& r, uint32_t source_block_size,
                          const std::string& what) {
  if (r.block_size && r.block_size != source_block_size) {
    return Status::InvalidArgument("volume " + r.name + ": block size " +
                                   std::to_string(r.block_size) + " differs from " + what + "'s " +
                                   std::to_string(source_block_size));
  }
  return Status::Ok();
}

// Imports `source` as the volume. A source whose size is known is sized before the
// import; one that is not (a compressed stream) is stopped at the limit while it is read
// and grown to required_bytes after. That growth is a second commit: a crash between the
// two leaves the volume at the image's size, and a retry asking for more is then
// ALREADY_EXISTS (the volume can be expanded or deleted).
Result<ProvisionResult> ImportInto(Store& store, const ProvisionRequest& r, ImageSource& source) {
  const uint32_t bs = r.block_size ? r.block_size : store.options().default_block_size;
  RETURN_IF_ERROR(ValidateBlockSize(bs).Annotate("image " + source.Describe()));
  ImportOptions io;
  io.volume = VolumeRequestOf(r);
  io.pad_to_block = r.pad_to_block;
  io.progress = r.progress;
  io.cancel = r.cancel;
  const std::optional<uint64_t> known = source.Size();
  if (known) {
    ASSIGN_OR_RETURN(io.volume.size_bytes, Fit(r, *known, bs, "image " + source.Describe()));
  }
  ASSIGN_OR_RETURN(ImportResult imported, store.ImportImage(source, io));
  ProvisionResult out;
  out.import = imported.summary;
  out.volume = imported.volume;
  if (!known && r.limit_bytes && out.volume.size_bytes > r.limit_bytes) {
    // Only padding can take a stream past the limit it was read under.
    RETURN_IF_ERROR(store.DeleteVolume(out.volume.id));
    return Status::OutOfRange(
        "image " + source.Describe() + " needs " + std::to_string(out.volume.size_bytes) +
        " bytes, more than the limit of " + std::to_string(r.limit_bytes) + " bytes");
  }
  if (!known && out.volume.size_bytes < r.required_bytes) {
    ASSIGN_OR_RETURN(out.volume, store.ResizeVolume(out.volume.id, RoundUp(r.required_bytes, bs)));
  }
  return out;
}

Result<ProvisionResult> FromImageSpec(Store& store, const ProvisionRequest& r,
                                      const ProvisionHooks& hooks) {
  ImageSourceSpec spec = r.source.image;
  if (r.source.kind == SourceKind::kImageFile && hooks.resolve_path) {
    ASSIGN_OR_RETURN(spec.path, hooks.resolve_path(spec.path));
  }
  if (spec.scratch_dir.empty()) spec.scratch_dir = ScratchDir(store, r);
  std::error_code ec;  // a qcow2 may spill there; if it cannot be made, that read says so
  fs::create_directories(spec.scratch_dir, ec);
  if (r.limit_bytes && !spec.max_raw_bytes) spec.max_raw_bytes = r.limit_bytes;
  ASSIGN_OR_RETURN(OpenedImageSource opened, OpenImageSource(spec));
  ASSIGN_OR_RETURN(ProvisionResult out, ImportInto(store, r, *opened.source));
  out.format = opened.format;
  return out;
}

Result<ProvisionResult> FromTree(Store& store, const ProvisionRequest& r,
                                 const ProvisionHooks& hooks) {
  std::string dir = r.source.tree_dir;
  if (hooks.resolve_path) {
    ASSIGN_OR_RETURN(dir, hooks.resolve_path(dir));
  }
  const uint32_t bs = r.block_size ? r.block_size : store.options().default_block_size;
  RETURN_IF_ERROR(ValidateBlockSize(bs).Annotate("directory " + dir));
  ASSIGN_OR_RETURN(TreeSize tree, MeasureTree(dir));
  // The tree's default size kept inside [required, limit]; mkfs decides whether it fits.
  uint64_t size = RoundUp(std::max(DefaultImageSize(tree), r.required_bytes), bs);
  if (r.limit_bytes && size > r.limit_bytes) size = r.limit_bytes / bs * bs;
  if (size == 0 || size < r.required_bytes) {
    return Status::OutOfRange("directory " + dir +
                              ": no image size that is a multiple of the block size " +
                              std::to_string(bs) + " lies in " + Range(r));
  }
  ASSIGN_OR_RETURN(auto image, ScratchFile::Create(ScratchDir(store, r), "tree"));
  if (hooks.note) hooks.note("making ext4 from " + dir + " ...");
  RETURN_IF_ERROR(BuildExt4FromTree(dir, size, r.source.tree_label, image->path()));
  ASSIGN_OR_RETURN(std::unique_ptr<ImageSource> file, OpenFileImageSource(image->path()));
  image->Unlink();  // the open file is all the import needs
  TreeImageSource source(std::move(file), dir);
  return ImportInto(store, r, source);
}

Result<ProvisionResult> FromImage(Store& store, const ProvisionRequest& r,
                                  const ProvisionHooks& hooks, const ProvisionedImage& image,
                                  const std::string& what) {
  RETURN_IF_ERROR(CheckSameBlockSize(r, image.block_size, what));
  CreateVolumeRequest c = VolumeRequestOf(r);
  c.block_size = image.block_size;
  ASSIGN_OR_RETURN(c.size_bytes, Fit(r, image.size_bytes, image.block_size, what));
  ProvisionResult out;
  if (hooks.clone_image) {
    ASSIGN_OR_RETURN(out.volume, hooks.clone_image(c, image.digest));
  } else {
    ASSIGN_OR_RETURN(out.volume, store.CreateVolumeFromImage(c, image.digest));
  }
  return out;
}

Result<ProvisionedImage> FindImage(Store& store, const std::string& digest) {
  ASSIGN_OR_RETURN(std::vector<ImageInfo> images, store.ListImages());
  for (const auto& img : images) {
    if (img.digest == digest) return ProvisionedImage{img.digest, img.size_bytes, img.block_size};
  }
  return Status::NotFound("image " + digest + " not found");
}

Result<ProvisionResult> FromSnapshot(Store& store, const ProvisionRequest& r) {
  ASSIGN_OR_RETURN(SnapshotInfo snap, store.GetSnapshot(r.source.id));
  const std::string what = "source snapshot " + snap.id;
  RETURN_IF_ERROR(CheckSameBlockSize(r, snap.block_size, what));
  CreateVolumeRequest c = VolumeRequestOf(r);
  ASSIGN_OR_RETURN(c.size_bytes, Fit(r, snap.size_bytes, snap.block_size, what));
  ProvisionResult out;
  ASSIGN_OR_RETURN(out.volume, store.CreateVolumeFromSnapshot(c, snap.id));
  return out;
}

Result<ProvisionResult> FromVolume(Store& store, const ProvisionRequest& r,
                                   const ProvisionHooks& hooks) {
  ASSIGN_OR_RETURN(VolumeInfo source, store.GetVolume(r.source.id));
  const std::string what = "source volume " + source.id;
  RETURN_IF_ERROR(CheckSameBlockSize(r, source.block_size, what));
  CreateVolumeRequest c = VolumeRequestOf(r);
  ASSIGN_OR_RETURN(c.size_bytes, Fit(r, source.size_bytes, source.block_size, what));
  if (hooks.before_volume_clone) RETURN_IF_ERROR(hooks.before_volume_clone(source.id));
  ProvisionResult out;
  ASSIGN_OR_RETURN(out.volume, store.CloneVolume(c, source.id));
  return out;
}

Result<ProvisionResult> Blank(Store& store, const ProvisionRequest& r) {
  const uint32_t bs = r.block_size ? r.block_size : store.options().default_block_size;
  uint64_t size = r.required_bytes ? r.required_bytes : kDefaultBlankVolumeBytes;
  if (!r.required_bytes && r.limit_bytes) size = std::min(size, r.limit_bytes);
  size = RoundUp(size, bs);
  if (r.limit_bytes && size > r.limit_bytes) {
    return Status::OutOfRange("volume " + r.name + ": no multiple of the block size " +
                              std::to_string(bs) + " lies in " + Range(r));
  }
  CreateVolumeRequest c = VolumeRequestOf(r);
  c.size_bytes = size;
  ProvisionResult out;
  ASSIGN_OR_RETURN(out.volume, store.CreateVolume(c));
  return out;
}

}  // namespace

Status ValidateName(const std::string& name, const std::string& what) {
  if (name.empty()) return Status::InvalidArgument(what + " is empty");
  const std::string shown = name.size() > 64 ? name.substr(0, 64) + "..." : name;
  if (name.size() > kMaxNameBytes) {
    return Status::InvalidArgument(what + " is " + std::to_string(name.size()) +
                                   " bytes long; at most " + std::to_string(kMaxNameBytes) +
                                   " are allowed");
  }
  if (name == "." || name == "..")
    return Status::InvalidArgument(what + " '" + name + "' is not allowed");
  for (size_t i = 0; i < name.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(name[i]);
    const bool c1 = c == 0xc2 && i + 1 < name.size() &&
                    static_cast<unsigned char>(name[i + 1]) >= 0x80 &&
                    static_cast<unsigned char>(name[i + 1]) <= 0x9f;  // U+0080..U+009F
    if (c < 0x20 || c == 0x7f || c1) {
      char hex[8];
      std::snprintf(hex, sizeof(hex), "0x%02x", c);
      return Status::InvalidArgument(what + " contains the control character " + hex + " at byte " +
                                     std::to_string(i));
    }
    if (c == '/') {
      return Status::InvalidArgument(what + " '" + shown + "' contains '/' at byte " +
                                     std::to_string(i));
    }
  }
  return Status::Ok();
}

Result<uint32_t> ParseBlockSize(const std::string& text, const std::string& what) {
  Result<uint64_t> size = ParseSize(text);
  if (!size.ok() || *size > kMaxBlockSize) {
    return Status::InvalidArgument(what + " '" + text + "': must be a power of two from 4K to 1M");
  }
  const uint32_t bs = static_cast<uint32_t>(*size);
  Status st = ValidateBlockSize(bs);
  if (!st.ok()) return Status::InvalidArgument(what + ": " + st.message());
  return bs;
}

void ExactSize(uint64_t bytes, uint32_t block_size, ProvisionRequest* request) {
  request->required_bytes = bytes;
  request->limit_bytes = RoundUp(bytes, block_size);
}

Result<std::optional<VolumeInfo>> FindExisting(Store& store, const ProvisionRequest& r) {
  Result<VolumeInfo> found = store.FindVolumeByName(r.name);
  if (!found.ok()) {
    if (found.status().IsNotFound()) return std::optional<VolumeInfo>();
    return found.status();
  }
  const std::string why = Difference(*found, r);
  if (why.empty()) return std::optional<VolumeInfo>(*found);
  return Status::AlreadyExists("volume " + r.name + " already exists (" + found->id +
                               ") with other parameters: " + why);
}

Result<ProvisionResult> Provision(Store& store, const ProvisionRequest& r,
                                  const ProvisionHooks& hooks) {
  if (r.name.empty()) return Status::InvalidArgument("volume name is empty");
  if (r.limit_bytes && r.required_bytes > r.limit_bytes) {
    return Status::OutOfRange("volume " + r.name + ": the required size exceeds the limit " +
                              Range(r));
  }
  if (r.block_size) RETURN_IF_ERROR(ValidateBlockSize(r.block_size).Annotate("volume " + r.name));
  ASSIGN_OR_RETURN(std::optional<VolumeInfo> existing, FindExisting(store, r));
  if (existing) {
    ProvisionResult out;
    out.volume = *existing;
    out.existed = true;
    return out;
  }
  switch (r.source.kind) {
    case SourceKind::kBlank:
      return Blank(store, r);
    case SourceKind::kSnapshot:
      return FromSnapshot(store, r);
    case SourceKind::kVolume:
      return FromVolume(store, r, hooks);
    case SourceKind::kImage: {
      ASSIGN_OR_RETURN(ProvisionedImage image, FindImage(store, r.source.id));
      return FromImage(store, r, hooks, image, "image " + image.digest);
    }
    case SourceKind::kUrl:
      if (hooks.url_image) {
        ASSIGN_OR_RETURN(ProvisionedImage image, hooks.url_image());
        return FromImage(store, r, hooks, image, "url " + RedactUrl(r.source.image.url));
      }
      return FromImageSpec(store, r, hooks);
    case SourceKind::kImageFile:
      return FromImageSpec(store, r, hooks);
    case SourceKind::kTree:
      return FromTree(store, r, hooks);
  }
  return Status::Internal("volume " + r.name + ": unknown source kind");
}

}  // namespace stellarium
