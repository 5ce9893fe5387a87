#include "csi/loop_block_device.h"

#include "core/sha256.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/loop.h>
#include <spdlog/spdlog.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <array>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <sstream>
#include <thread>

namespace stellarium::csi {
namespace {

namespace fs = std::filesystem;

constexpr size_t kDigestBytes = 16;  // SHA-256 truncated: a changed-block detector
using Digest = std::array<uint8_t, kDigestBytes>;
constexpr size_t kIoBytes = 1 << 20;  // export and write-back work in 1 MiB pieces
constexpr int kLoopMajor = 7;

Digest DigestOf(const char* data, size_t len) {
  ChunkId full = Sha256(data, len);
  Digest d;
  std::memcpy(d.data(), full.data(), kDigestBytes);
  return d;
}

bool IsZero(const char* data, size_t len) { return IsAllZero(data, len); }

class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  Fd(Fd&& o) noexcept : fd_(o.fd_) { o.fd_ = -1; }
  Fd& operator=(Fd&& o) noexcept {
    if (this != &o) {
      Close();
      fd_ = o.fd_;
      o.fd_ = -1;
    }
    return *this;
  }
  ~Fd() { Close(); }
  int get() const { return fd_; }
  bool ok() const { return fd_ >= 0; }
  void Close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
};

Status PwriteAll(int fd, const char* data, size_t len, uint64_t offset, const std::string& what) {
  while (len > 0) {
    ssize_t n = ::pwrite(fd, data, len, static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status::FromErrno(errno, "write " + what);
    }
    data += n;
    len -= static_cast<size_t>(n);
    offset += static_cast<uint64_t>(n);
  }
  return Status::Ok();
}

Status PreadAll(int fd, char* data, size_t len, uint64_t offset, const std::string& what) {
  while (len > 0) {
    ssize_t n = ::pread(fd, data, len, static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status::FromErrno(errno, "read " + what);
    }
    if (n == 0) {  // past the end of a file that was not grown yet: zeros
      std::memset(data, 0, len);
      return Status::Ok();
    }
    data += n;
    len -= static_cast<size_t>(n);
    offset += static_cast<uint64_t>(n);
  }
  return Status::Ok();
}

// Writes `data` to `path` atomically (temp file, fsync, rename).
Status WriteFileAtomic(const std::string& path, const std::string& data) {
  std::string tmp = path + ".tmp";
  Fd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  if (!fd.ok()) return Status::FromErrno(errno, "create " + tmp);
  RETURN_IF_ERROR(PwriteAll(fd.get(), data.data(), data.size(), 0, tmp));
  if (::fsync(fd.get()) != 0) return Status::FromErrno(errno, "fsync " + tmp);
  fd.Close();
  if (::rename(tmp.c_str(), path.c_str()) != 0) return Status::FromErrno(errno, "rename " + tmp);
  return Status::Ok();
}

Result<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status::NotFound("cannot read " + path);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Opens /dev/loopN, creating the node when /dev is not a devtmpfs.
Result<Fd> OpenLoopDevice(int n, int flags) {
  std::string path = "/dev/loop" + std::to_string(n);
  int fd = ::open(path.c_str(), flags | O_CLOEXEC);
  if (fd < 0 && errno == ENOENT) {
    if (::mknod(path.c_str(), S_IFBLK | 0660, makedev(kLoopMajor, n)) != 0 && errno != EEXIST) {
      return Status::FromErrno(errno, "mknod " + path);
    }
    fd = ::open(path.c_str(), flags | O_CLOEXEC);
  }
  if (fd < 0) return Status::FromErrno(errno, "open " + path);
  return Fd(fd);
}

int LoopNumber(const std::string& device) {
  const std::string prefix = "/dev/loop";
  if (device.rfind(prefix, 0) != 0) return -1;
  try {
    return std::stoi(device.substr(prefix.size()));
  } catch (...) {
    return -1;
  }
}

// The file a loop device is bound to, from sysfs ("" when unbound).
std::string LoopBackingFile(int n) {
  std::ifstream in("/sys/block/loop" + std::to_string(n) + "/loop/backing_file");
  std::string line;
  if (in) std::getline(in, line);
  return line;
}

struct Attachment {
  std::string volume_id;
  std::shared_ptr<Volume> volume;
  std::string image_path, sums_path, meta_path;
  std::string device;
  Fd image_fd;   // the exported file
  Fd device_fd;  // held open so the binding is ours until Detach
  bool read_only = false;
  uint64_t size = 0;
  uint32_t block_size = 0;
  std::vector<Digest> sums;  // digest of each block as the store has it
};

class LoopBlockDeviceProvider : public BlockDeviceProvider {
 public:
  LoopBlockDeviceProvider(Store* store, std::string dir) : store_(store), dir_(std::move(dir)) {}

  std::string Name() const override { return "loop"; }

  Result<std::vector<AttachedDevice>> Recover() override;
  Result<AttachedDevice> Attach(const std::string& volume_id, bool read_only) override;
  Status Detach(const std::string& volume_id) override;
  Status Sync(const std::string& volume_id) override;
  Result<uint64_t> Resize(const std::string& volume_id) override;
  std::optional<AttachedDevice> Find(const std::string& volume_id) override;

 private:
  std::string PathFor(const std::string& volume_id, const char* ext) const {
    return dir_ + "/" + volume_id + ext;
  }
  std::shared_ptr<Attachment> Get(const std::string& volume_id) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = attached_.find(volume_id);
    return it == attached_.end() ? nullptr : it->second;
  }
  static AttachedDevice Describe(const Attachment& a) {
    return {a.volume_id, a.device, a.read_only, a.size};
  }

  Status Export(Attachment& a);
  Status BindLoop(Attachment& a);
  Status WriteBack(Attachment& a);
  Status SaveSums(const Attachment& a);
  Status SaveMeta(const Attachment& a);
  Status Adopt(const std::string& volume_id);
  void RemoveFiles(const std::string& volume_id);

  Store* const store_;
  const std::string dir_;
  std::mutex mu_;
  std::map<std::string, std::shared_ptr<Attachment>> attached_;  // GUARDED_BY(mu_)
};

Status LoopBlockDeviceProvider::Export(Attachment& a) {
  std::string tmp = a.image_path + ".tmp";
  Fd fd(::open(tmp.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  if (!fd.ok()) return Status::FromErrno(errno, "create " + tmp);
  if (::ftruncate(fd.get(), static_cast<off_t>(a.size)) != 0) {
    return Status::FromErrno(errno, "truncate " + tmp);
  }
  const uint64_t blocks = a.size / a.block_size;
  a.sums.assign(blocks, Digest{});
  std::vector<char> zero(a.block_size, 0);
  const Digest zero_digest = DigestOf(zero.data(), zero.size());
  const size_t piece = std::max<size_t>(kIoBytes / a.block_size, 1) * a.block_size;
  std::vector<char> buf(piece);
  for (uint64_t offset = 0; offset < a.size; offset += piece) {
    size_t len = static_cast<size_t>(std::min<uint64_t>(piece, a.size - offset));
    RETURN_IF_ERROR(a.volume->Read(offset, len, buf.data()).Annotate("export " + a.volume_id));
    for (size_t off = 0; off < len; off += a.block_size) {
      const char* block = buf.data() + off;
      uint64_t index = (offset + off) / a.block_size;
      if (IsZero(block, a.block_size)) {
        a.sums[index] = zero_digest;  // stays a hole in the file
        continue;
      }
      a.sums[index] = DigestOf(block, a.block_size);
      RETURN_IF_ERROR(PwriteAll(fd.get(), block, a.block_size, offset + off, tmp));
    }
  }
  if (::fsync(fd.get()) != 0) return Status::FromErrno(errno, "fsync " + tmp);
  fd.Close();
  if (::rename(tmp.c_str(), a.image_path.c_str()) != 0) {
    return Status::FromErrno(errno, "rename " + tmp);
  }
  return SaveSums(a);
}

Status LoopBlockDeviceProvider::SaveSums(const Attachment& a) {
  std::string data(reinterpret_cast<const char*>(a.sums.data()), a.sums.size() * kDigestBytes);
  return WriteFileAtomic(a.sums_path, data);
}

Status LoopBlockDeviceProvider::SaveMeta(const Attachment& a) {
  std::ostringstream out;
  out << "volume_id=" << a.volume_id << "\n"
      << "device=" << a.device << "\n"
      << "read_only=" << (a.read_only ? 1 : 0) << "\n"
      << "size=" << a.size << "\n"
      << "block_size=" << a.block_size << "\n";
  return WriteFileAtomic(a.meta_path, out.str());
}

Status LoopBlockDeviceProvider::BindLoop(Attachment& a) {
  int flags = a.read_only ? O_RDONLY : O_RDWR;
  a.image_fd = Fd(::open(a.image_path.c_str(), flags | O_CLOEXEC));
  if (!a.image_fd.ok()) return Status::FromErrno(errno, "open " + a.image_path);
  Fd control(::open("/dev/loop-control", O_RDWR | O_CLOEXEC));
  if (!control.ok()) {
    return Status::FromErrno(errno, "open /dev/loop-control (loop devices need root)");
  }
  // LOOP_CTL_GET_FREE and LOOP_CONFIGURE are two steps: another process may take the
  // device in between (EBUSY), so retry with the next free one.
  for (int attempt = 0; attempt < 64; ++attempt) {
    int n = ::ioctl(control.get(), LOOP_CTL_GET_FREE);
    if (n < 0) return Status::FromErrno(errno, "LOOP_CTL_GET_FREE");
    ASSIGN_OR_RETURN(Fd dev, OpenLoopDevice(n, flags));
    struct loop_config config;
    std::memset(&config, 0, sizeof(config));
    config.fd = static_cast<uint32_t>(a.image_fd.get());
    config.block_size = 0;
    config.info.lo_flags = a.read_only ? LO_FLAGS_READ_ONLY : 0;
    std::strncpy(reinterpret_cast<char*>(config.info.lo_file_name), a.image_path.c_str(),
                 LO_NAME_SIZE - 1);
    if (::ioctl(dev.get(), LOOP_CONFIGURE, &config) == 0) {
      a.device = "/dev/loop" + std::to_string(n);
      a.device_fd = std::move(dev);
      return Status::Ok();
    }
    if (errno != EBUSY) return Status::FromErrno(errno, "LOOP_CONFIGURE /dev/loop" + std::to_string(n));
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return Status::Unavailable("no free loop device after 64 attempts");
}

Result<AttachedDevice> LoopBlockDeviceProvider::Attach(const std::string& volume_id,
                                                       bool read_only) {
  if (auto existing = Get(volume_id)) {
    if (existing->read_only != read_only) {
      return Status::FailedPrecondition("volume " + volume_id + " is attached " +
                                        (existing->read_only ? "read-only" : "read-write") +
                                        " at " + existing->device);
    }
    return Describe(*existing);
  }
  std::error_code ec;
  fs::create_directories(dir_, ec);
  if (ec) return Status::Internal("create " + dir_ + ": " + ec.message());

  auto a = std::make_shared<Attachment>();
  a->volume_id = volume_id;
  a->read_only = read_only;
  a->image_path = PathFor(volume_id, ".img");
  a->sums_path = PathFor(volume_id, ".sums");
  a->meta_path = PathFor(volume_id, ".meta");
  ASSIGN_OR_RETURN(a->volume, store_->OpenVolume(volume_id, read_only));
  a->size = a->volume->size();
  a->block_size = a->volume->block_size();

  Status st = Export(*a);
  if (st.ok()) st = BindLoop(*a);
  if (st.ok()) st = SaveMeta(*a);
  if (!st.ok()) {
    if (a->device_fd.ok()) (void)::ioctl(a->device_fd.get(), LOOP_CLR_FD, 0);
    RemoveFiles(volume_id);
    return st.Annotate("attach " + volume_id);
  }
  spdlog::info("attached volume {} at {} ({}, {} bytes)", volume_id, a->device,
               read_only ? "read-only" : "read-write", a->size);
  AttachedDevice out = Describe(*a);
  std::lock_guard<std::mutex> lock(mu_);
  attached_[volume_id] = std::move(a);
  return out;
}

Status LoopBlockDeviceProvider::WriteBack(Attachment& a) {
  if (a.read_only) return Status::Ok();
  // Data written through the loop device sits in the backing file's page cache; a
  // flush of the device makes sure nothing is still queued in the loop driver.
  if (a.device_fd.ok()) ::fsync(a.device_fd.get());
  std::vector<char> zero(a.block_size, 0);
  const Digest zero_digest = DigestOf(zero.data(), zero.size());
  const size_t piece = std::max<size_t>(kIoBytes / a.block_size, 1) * a.block_size;
  std::vector<char> buf(piece);
  uint64_t written = 0;
  uint64_t offset = 0;
  const int fd = a.image_fd.get();
  while (offset < a.size) {
    // Skip holes the file never had data in; a hole where the store has data means the
    // block was discarded and must become zeros there too.
    off_t data = ::lseek(fd, static_cast<off_t>(offset), SEEK_DATA);
    uint64_t data_start = data < 0 ? a.size : std::min<uint64_t>(data, a.size);
    data_start -= data_start % a.block_size;
    for (uint64_t hole = offset; hole < data_start; hole += a.block_size) {
      uint64_t index = hole / a.block_size;
      if (a.sums[index] != zero_digest) {
        RETURN_IF_ERROR(a.volume->Write(hole, zero.data(), a.block_size));
        a.sums[index] = zero_digest;
        ++written;
      }
    }
    if (data_start >= a.size) break;
    size_t len = static_cast<size_t>(std::min<uint64_t>(piece, a.size - data_start));
    RETURN_IF_ERROR(PreadAll(fd, buf.data(), len, data_start, a.image_path));
    for (size_t off = 0; off < len; off += a.block_size) {
      uint64_t index = (data_start + off) / a.block_size;
      const char* block = buf.data() + off;
      Digest d = IsZero(block, a.block_size) ? zero_digest : DigestOf(block, a.block_size);
      if (d != a.sums[index]) {
        RETURN_IF_ERROR(a.volume->Write(data_start + off, block, a.block_size));
        a.sums[index] = d;
        ++written;
      }
    }
    offset = data_start + len;
  }
  RETURN_IF_ERROR(a.volume->Flush().Annotate("flush " + a.volume_id));
  if (written > 0) {
    RETURN_IF_ERROR(SaveSums(a));
    spdlog::debug("volume {}: wrote back {} changed blocks", a.volume_id, written);
  }
  return Status::Ok();
}

Status LoopBlockDeviceProvider::Sync(const std::string& volume_id) {
  auto a = Get(volume_id);
  if (!a) return Status::Ok();
  return WriteBack(*a).Annotate("sync " + volume_id);
}

Status LoopBlockDeviceProvider::Detach(const std::string& volume_id) {
  auto a = Get(volume_id);
  if (!a) {
    // A complete attachment that Recover() could not adopt may hold writes the store
    // does not have: never delete it here.
    if (fs::exists(PathFor(volume_id, ".meta"))) {
      return Status::FailedPrecondition(
          "volume " + volume_id + " has a device image in " + dir_ +
          " from an earlier run that could not be recovered (see the start-up log); it may "
          "hold writes the store lacks");
    }
    RemoveFiles(volume_id);  // leftovers of an attach that died before completing
    return Status::Ok();
  }
  RETURN_IF_ERROR(WriteBack(*a).Annotate("detach " + volume_id));
  if (a->device_fd.ok() && ::ioctl(a->device_fd.get(), LOOP_CLR_FD, 0) != 0 && errno != ENXIO) {
    return Status::FromErrno(errno, "LOOP_CLR_FD " + a->device + " (is it still mounted?)");
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    attached_.erase(volume_id);
  }
  a->device_fd.Close();
  a->image_fd.Close();
  RemoveFiles(volume_id);
  spdlog::info("detached volume {} from {}", volume_id, a->device);
  return Status::Ok();
}

Result<uint64_t> LoopBlockDeviceProvider::Resize(const std::string& volume_id) {
  auto a = Get(volume_id);
  if (!a) return Status::FailedPrecondition("volume " + volume_id + " is not attached");
  // Reopen so the handle sees the new size; the old handle is dropped after.
  ASSIGN_OR_RETURN(std::shared_ptr<Volume> reopened, store_->OpenVolume(volume_id, a->read_only));
  uint64_t new_size = reopened->size();
  if (new_size < a->size) {
    return Status::OutOfRange("volume " + volume_id + " shrank from " + std::to_string(a->size) +
                              " to " + std::to_string(new_size) + " bytes");
  }
  if (new_size == a->size) return a->size;
  if (::ftruncate(a->image_fd.get(), static_cast<off_t>(new_size)) != 0) {
    return Status::FromErrno(errno, "grow " + a->image_path);
  }
  std::vector<char> zero(a->block_size, 0);
  a->sums.resize(new_size / a->block_size, DigestOf(zero.data(), zero.size()));
  a->volume = std::move(reopened);
  a->size = new_size;
  RETURN_IF_ERROR(SaveSums(*a));
  RETURN_IF_ERROR(SaveMeta(*a));
  if (::ioctl(a->device_fd.get(), LOOP_SET_CAPACITY, 0) != 0) {
    return Status::FromErrno(errno, "LOOP_SET_CAPACITY " + a->device);
  }
  spdlog::info("volume {}: device {} grown to {} bytes", volume_id, a->device, new_size);
  return new_size;
}

std::optional<AttachedDevice> LoopBlockDeviceProvider::Find(const std::string& volume_id) {
  auto a = Get(volume_id);
  if (!a) return std::nullopt;
  return Describe(*a);
}

void LoopBlockDeviceProvider::RemoveFiles(const std::string& volume_id) {
  for (const char* ext : {".img", ".img.tmp", ".sums", ".sums.tmp", ".meta", ".meta.tmp"}) {
    ::unlink(PathFor(volume_id, ext).c_str());
  }
}

Status LoopBlockDeviceProvider::Adopt(const std::string& volume_id) {
  ASSIGN_OR_RETURN(std::string meta, ReadFile(PathFor(volume_id, ".meta")));
  std::map<std::string, std::string> kv;
  std::istringstream lines(meta);
  std::string line;
  while (std::getline(lines, line)) {
    auto eq = line.find('=');
    if (eq != std::string::npos) kv[line.substr(0, eq)] = line.substr(eq + 1);
  }
  auto a = std::make_shared<Attachment>();
  a->volume_id = volume_id;
  a->image_path = PathFor(volume_id, ".img");
  a->sums_path = PathFor(volume_id, ".sums");
  a->meta_path = PathFor(volume_id, ".meta");
  a->read_only = kv["read_only"] == "1";
  ASSIGN_OR_RETURN(a->volume, store_->OpenVolume(volume_id, a->read_only));
  a->block_size = a->volume->block_size();
  a->size = std::stoull(kv["size"].empty() ? "0" : kv["size"]);
  ASSIGN_OR_RETURN(std::string sums, ReadFile(a->sums_path));
  if (a->block_size == 0 || sums.size() != (a->size / a->block_size) * kDigestBytes) {
    return Status::Corruption(a->sums_path + ": does not match the recorded size");
  }
  a->sums.resize(sums.size() / kDigestBytes);
  std::memcpy(a->sums.data(), sums.data(), sums.size());

  int n = LoopNumber(kv["device"]);
  if (n >= 0 && LoopBackingFile(n) == a->image_path) {
    // Still bound (the driver restarted, the kernel kept the device): take it back.
    a->image_fd = Fd(::open(a->image_path.c_str(), (a->read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC));
    if (!a->image_fd.ok()) return Status::FromErrno(errno, "open " + a->image_path);
    ASSIGN_OR_RETURN(a->device_fd, OpenLoopDevice(n, a->read_only ? O_RDONLY : O_RDWR));
    a->device = kv["device"];
  } else {
    // The node rebooted or someone detached it: bind a new device to the same file,
    // which still holds every write not yet in the store.
    RETURN_IF_ERROR(BindLoop(*a));
    RETURN_IF_ERROR(SaveMeta(*a));
  }
  spdlog::info("recovered volume {} at {}", volume_id, a->device);
  std::lock_guard<std::mutex> lock(mu_);
  attached_[volume_id] = std::move(a);
  return Status::Ok();
}

Result<std::vector<AttachedDevice>> LoopBlockDeviceProvider::Recover() {
  std::error_code ec;
  fs::create_directories(dir_, ec);
  if (ec) return Status::Internal("create " + dir_ + ": " + ec.message());
  std::vector<std::string> complete, partial;
  for (const auto& entry : fs::directory_iterator(dir_, ec)) {
    std::string name = entry.path().filename().string();
    auto dot = name.find('.');
    if (dot == std::string::npos) continue;
    std::string id = name.substr(0, dot), ext = name.substr(dot);
    if (ext == ".meta") complete.push_back(id);
    else if (ext == ".img.tmp" || ext == ".sums.tmp") partial.push_back(id);
  }
  for (const auto& id : partial) {
    if (!fs::exists(PathFor(id, ".meta"))) RemoveFiles(id);  // attach died before binding
  }
  for (const auto& id : complete) {
    Status st = Adopt(id);
    if (!st.ok()) {
      // Keep the files: they may hold writes the store does not have yet.
      spdlog::error("cannot recover attached volume {}: {} (files kept in {})", id,
                    st.ToString(), dir_);
    }
  }
  std::vector<AttachedDevice> out;
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& [id, a] : attached_) out.push_back(Describe(*a));
  return out;
}

}  // namespace

std::unique_ptr<BlockDeviceProvider> NewLoopBlockDeviceProvider(Store* store,
                                                                 const std::string& dir) {
  return std::make_unique<LoopBlockDeviceProvider>(store, dir);
}

}  // namespace stellarium::csi
