#include "core/image_source.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace stellarium {
namespace {

class FileImageSource : public ImageSource {
 public:
  FileImageSource(std::string path, int fd, uint64_t size)
      : path_(std::move(path)), fd_(fd), size_(size) {}
  ~FileImageSource() override { ::close(fd_); }

  std::string Describe() const override { return path_; }
  std::optional<uint64_t> Size() const override { return size_; }

  Result<size_t> Next(char* buf, size_t max, bool* hole) override {
    *hole = false;
    if (pos_ >= size_ || max == 0) return size_t{0};
    if (pos_ >= data_end_) {
      // Find the next data extent; everything before it is a hole.
      off_t data = ::lseek(fd_, static_cast<off_t>(pos_), SEEK_DATA);
      if (data < 0) {
        if (errno == ENXIO) {
          data = static_cast<off_t>(size_);  // only a hole remains
        } else if (errno == EINVAL) {
          data = static_cast<off_t>(pos_);   // the filesystem cannot tell: read it all
          data_end_ = size_;
        } else {
          return Status::FromErrno(errno, "image " + path_ + ": seek");
        }
      }
      if (static_cast<uint64_t>(data) > pos_) {
        size_t n = static_cast<size_t>(std::min<uint64_t>(max, data - pos_));
        pos_ += n;
        *hole = true;
        return n;
      }
      if (data_end_ <= pos_) {
        off_t h = ::lseek(fd_, data, SEEK_HOLE);
        data_end_ = h < 0 ? size_ : std::min<uint64_t>(size_, static_cast<uint64_t>(h));
      }
    }
    size_t want = static_cast<size_t>(std::min<uint64_t>(max, data_end_ - pos_));
    size_t got = 0;
    while (got < want) {
      ssize_t n = ::pread(fd_, buf + got, want - got, static_cast<off_t>(pos_ + got));
      if (n < 0) {
        if (errno == EINTR) continue;
        return Status::FromErrno(errno, "image " + path_ + ": read at offset " + std::to_string(pos_ + got));
      }
      if (n == 0) {
        return Status::Aborted("image " + path_ + ": file is shorter than " + std::to_string(size_) +
                               " bytes (truncated while reading?)");
      }
      got += static_cast<size_t>(n);
    }
    pos_ += got;
    return got;
  }

 private:
  std::string path_;
  int fd_;
  uint64_t size_;
  uint64_t pos_ = 0;
  uint64_t data_end_ = 0;
};

class MemoryImageSource : public ImageSource {
 public:
  MemoryImageSource(std::string name, std::string bytes)
      : name_(std::move(name)), bytes_(std::move(bytes)) {}
  std::string Describe() const override { return name_; }
  std::optional<uint64_t> Size() const override { return bytes_.size(); }
  Result<size_t> Next(char* buf, size_t max, bool* hole) override {
    *hole = false;
    size_t n = std::min(max, bytes_.size() - pos_);
    std::memcpy(buf, bytes_.data() + pos_, n);
    pos_ += n;
    return n;
  }

 private:
  std::string name_, bytes_;
  size_t pos_ = 0;
};

}  // namespace

Result<std::unique_ptr<ImageSource>> OpenFileImageSource(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Status::FromErrno(errno, "image " + path);
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    int e = errno;
    ::close(fd);
    return Status::FromErrno(e, "image " + path);
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return Status::InvalidArgument("image " + path + ": not a regular file" +
                                   (S_ISDIR(st.st_mode) ? " (it is a directory; use --from-dir)" : ""));
  }
  return std::unique_ptr<ImageSource>(new FileImageSource(path, fd, static_cast<uint64_t>(st.st_size)));
}

std::unique_ptr<ImageSource> NewMemoryImageSource(std::string name, std::string bytes) {
  return std::make_unique<MemoryImageSource>(std::move(name), std::move(bytes));
}

}  // namespace stellarium
