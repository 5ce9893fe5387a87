#include "core/tree_image.h"

#include <fcntl.h>
#include <unistd.h>

#include <filesystem>

#include "core/process.h"
#include "core/sha256.h"

namespace stellarium {

namespace fs = std::filesystem;

Result<TreeSize> MeasureTree(const std::string& dir) {
  std::error_code ec;
  auto st = fs::symlink_status(dir, ec);
  if (ec || !fs::exists(st)) return Status::NotFound("directory " + dir + ": does not exist");
  if (!fs::is_directory(st)) return Status::InvalidArgument("directory " + dir + ": not a directory");
  TreeSize t;
  t.inodes = 1;
  for (auto it = fs::recursive_directory_iterator(dir, fs::directory_options::none, ec);
       it != fs::recursive_directory_iterator(); it.increment(ec)) {
    if (ec) return Status::FromErrno(ec.value(), "directory " + dir + ": walk");
    ++t.inodes;
    auto s = it->symlink_status(ec);
    if (!ec && fs::is_regular_file(s)) {
      uint64_t n = it->file_size(ec);
      if (!ec) t.file_bytes += (n + 4095) / 4096 * 4096;
    }
  }
  if (ec) return Status::FromErrno(ec.value(), "directory " + dir + ": walk");
  return t;
}

uint64_t DefaultImageSize(const TreeSize& t) {
  uint64_t need = t.file_bytes + t.file_bytes / 4 + (16ull << 20) + t.inodes * 512;
  need = std::max<uint64_t>(need, 32ull << 20);
  return (need + (1 << 20) - 1) / (1 << 20) * (1 << 20);
}

Status BuildExt4FromTree(const std::string& dir, uint64_t size, const std::string& label,
                         const std::string& out_path) {
  ASSIGN_OR_RETURN(TreeSize t, MeasureTree(dir));
  if (size == 0) size = DefaultImageSize(t);
  if (size % 4096 != 0) {
    return Status::InvalidArgument("image size " + std::to_string(size) + " is not a multiple of 4096");
  }
  int fd = ::open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return Status::FromErrno(errno, "image " + out_path);
  int rc = ::ftruncate(fd, static_cast<off_t>(size));
  int err = errno;
  ::close(fd);
  auto fail = [&](Status s) {
    ::unlink(out_path.c_str());
    return s;
  };
  if (rc != 0) return fail(Status::FromErrno(err, "image " + out_path + ": set size"));

  // Reproducible: UUID and hash seed from the label, a fixed creation time.
  ChunkId h = Sha256(label.data(), label.size());
  auto uuid = [&](int off) {
    std::string x = ToHex(h.data() + off, 16);
    return x.substr(0, 8) + "-" + x.substr(8, 4) + "-4" + x.substr(13, 3) + "-8" + x.substr(17, 3) +
           "-" + x.substr(20, 12);
  };
  uint64_t inodes = t.inodes + t.inodes / 4 + 1024;
  std::vector<std::string> argv = {"mkfs.ext4", "-q", "-F", "-b", "4096", "-m", "0",
                                   "-N", std::to_string(inodes), "-L", label.substr(0, 16),
                                   "-U", uuid(0), "-E", "hash_seed=" + uuid(16) + ",root_owner=0:0",
                                   "-d", dir, out_path};
  std::string out;
  Status s = RunProgramOk(argv, {"E2FSPROGS_FAKE_TIME=1700000000"}, &out);
  if (!s.ok()) {
    const uint64_t fits = DefaultImageSize(t);
    bool full = s.message().find("Could not allocate") != std::string::npos ||
                s.message().find("No space") != std::string::npos ||
                s.message().find("not enough") != std::string::npos;
    // Below the default size any refusal of mkfs (too little space for the data, the
    // inode table or the journal) means the same thing to the user: a larger size.
    if (full || size < fits) {
      return fail(Status::OutOfRange(
          "directory " + dir + " does not fit in an image of " + std::to_string(size) +
          " bytes: it holds about " + std::to_string(t.file_bytes) + " bytes of data in " +
          std::to_string(t.inodes) + " files and directories; an image of " + std::to_string(fits) +
          " bytes fits it"));
    }
    return fail(s.Annotate("build image from " + dir));
  }
  return Status::Ok();
}

}  // namespace stellarium
