#include "core/sources/format.h"

#include <fcntl.h>
#include <lzma.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>
#include <zstd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "core/image_source.h"
#include "core/process.h"

namespace stellarium {
namespace {

constexpr size_t kPeekBytes = 512;
constexpr int kMaxNesting = 2;  // e.g. gzip around qcow2; deeper is refused

bool HasPrefix(const std::string& s, std::string_view magic, size_t at = 0) {
  return s.size() >= at + magic.size() && std::string_view(s).substr(at, magic.size()) == magic;
}

uint64_t Be64(const std::string& s, size_t at) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = (v << 8) | static_cast<uint8_t>(s[at + i]);
  return v;
}
uint32_t Be32(const std::string& s, size_t at) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v = (v << 8) | static_cast<uint8_t>(s[at + i]);
  return v;
}

// Replays the bytes read for detection, then the rest of the inner source.
class PrefixedSource : public ImageSource {
 public:
  PrefixedSource(std::unique_ptr<ImageSource> inner, std::string head, uint64_t hole_after)
      : inner_(std::move(inner)), head_(std::move(head)), hole_(hole_after) {}
  std::string Describe() const override { return inner_->Describe(); }
  std::optional<uint64_t> Size() const override { return inner_->Size(); }
  Result<size_t> Next(char* buf, size_t max, bool* hole) override {
    *hole = false;
    if (pos_ < head_.size()) {
      size_t n = std::min(max, head_.size() - pos_);
      std::memcpy(buf, head_.data() + pos_, n);
      pos_ += n;
      return n;
    }
    if (hole_ > 0) {
      size_t n = static_cast<size_t>(std::min<uint64_t>(max, hole_));
      hole_ -= n;
      *hole = true;
      return n;
    }
    return inner_->Next(buf, max, hole);
  }

 private:
  std::unique_ptr<ImageSource> inner_;
  std::string head_;
  size_t pos_ = 0;
  uint64_t hole_;
};

// Reads up to kPeekBytes of data (stopping at a hole or the end) and returns a source
// that replays them.
Result<std::unique_ptr<ImageSource>> Peek(std::unique_ptr<ImageSource> src, std::string* head) {
  head->clear();
  uint64_t hole_after = 0;
  char buf[kPeekBytes];
  while (head->size() < kPeekBytes) {
    bool hole = false;
    ASSIGN_OR_RETURN(size_t n, src->Next(buf, kPeekBytes - head->size(), &hole));
    if (n == 0) break;
    if (hole) {
      hole_after = n;
      break;
    }
    head->append(buf, n);
  }
  return std::unique_ptr<ImageSource>(new PrefixedSource(std::move(src), *head, hole_after));
}

// One decompression step over a codec. consumed/produced count bytes; `end` says the
// codec reached the end of a stream (a gzip member; the whole xz or zstd input).
struct Step {
  size_t consumed = 0, produced = 0;
  bool end = false;
};

class DecompressingSource : public ImageSource {
 public:
  DecompressingSource(std::unique_ptr<ImageSource> inner, const char* codec, uint64_t max_raw)
      : inner_(std::move(inner)), codec_(codec), max_raw_(max_raw), what_("image " + inner_->Describe()) {
    in_.resize(1u << 20);
  }
  std::string Describe() const override { return inner_->Describe(); }
  std::optional<uint64_t> Size() const override { return std::nullopt; }

  Result<size_t> Next(char* buf, size_t max, bool* hole) override {
    *hole = false;
    while (!finished_ && max > 0) {
      if (in_pos_ == in_len_ && !in_eof_) RETURN_IF_ERROR(Refill());
      ASSIGN_OR_RETURN(Step r, Decode(in_.data() + in_pos_, in_len_ - in_pos_, in_eof_, buf, max));
      in_pos_ += r.consumed;
      out_total_ += r.produced;
      if (max_raw_ && out_total_ > max_raw_) {
        return Status::OutOfRange(what_ + ": decompressed image is larger than the maximum image size " +
                                  std::to_string(max_raw_));
      }
      if (r.end) {
        // Read on to the inner source's end: it may hold another member, and its end
        // is where a download checks its digest.
        if (in_pos_ == in_len_ && !in_eof_) RETURN_IF_ERROR(Refill());
        if (in_pos_ == in_len_ && in_eof_) {
          finished_ = true;
        } else {
          RETURN_IF_ERROR(NextMember(in_.data() + in_pos_, in_len_ - in_pos_));
        }
      }
      if (r.produced > 0) return r.produced;
      if (r.end) continue;
      if (r.consumed == 0) {
        if (in_eof_) {
          return Status::InvalidArgument(what_ + ": " + codec_ + " stream is truncated after " +
                                         std::to_string(out_total_) + " decompressed bytes");
        }
        RETURN_IF_ERROR(Refill());
      }
    }
    return size_t{0};
  }

 protected:
  virtual Result<Step> Decode(const char* in, size_t in_len, bool in_eof, char* out, size_t out_len) = 0;
  // Called when a stream ended but input remains: start the next member or refuse.
  virtual Status NextMember(const char* in, size_t in_len) {
    return Status::InvalidArgument(what_ + ": trailing data after the " + std::string(codec_) + " stream");
  }
  Status Malformed(const std::string& detail) const {
    return Status::InvalidArgument(what_ + ": malformed " + std::string(codec_) + " data (" + detail +
                                   ") after " + std::to_string(out_total_) + " decompressed bytes");
  }
  const std::string& what() const { return what_; }

 private:
  // Moves unread input to the front and reads more from the inner source.
  Status Refill() {
    if (in_pos_ > 0) {
      std::memmove(in_.data(), in_.data() + in_pos_, in_len_ - in_pos_);
      in_len_ -= in_pos_;
      in_pos_ = 0;
    }
    if (in_len_ == in_.size()) in_.resize(in_.size() * 2);
    bool hole = false;
    ASSIGN_OR_RETURN(size_t n, inner_->Next(in_.data() + in_len_, in_.size() - in_len_, &hole));
    if (n == 0) {
      in_eof_ = true;
      return Status::Ok();
    }
    if (hole) std::memset(in_.data() + in_len_, 0, n);
    in_len_ += n;
    return Status::Ok();
  }

  std::unique_ptr<ImageSource> inner_;
  const char* codec_;
  uint64_t max_raw_;
  std::string what_;
  std::vector<char> in_;
  size_t in_pos_ = 0, in_len_ = 0;
  bool in_eof_ = false, finished_ = false;
  uint64_t out_total_ = 0;
};

class GzipSource : public DecompressingSource {
 public:
  GzipSource(std::unique_ptr<ImageSource> inner, uint64_t max_raw)
      : DecompressingSource(std::move(inner), "gzip", max_raw) {
    std::memset(&z_, 0, sizeof(z_));
    ok_ = inflateInit2(&z_, 15 + 16) == Z_OK;  // 16: gzip wrapper only
  }
  ~GzipSource() override {
    if (ok_) inflateEnd(&z_);
  }

 protected:
  Result<Step> Decode(const char* in, size_t in_len, bool in_eof, char* out, size_t out_len) override {
    if (!ok_) return Status::Internal(what() + ": inflateInit2 failed");
    z_.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in));
    z_.avail_in = static_cast<uInt>(std::min<size_t>(in_len, 1u << 30));
    z_.next_out = reinterpret_cast<Bytef*>(out);
    z_.avail_out = static_cast<uInt>(std::min<size_t>(out_len, 1u << 30));
    const uInt avail_in = z_.avail_in, avail_out = z_.avail_out;
    int rc = inflate(&z_, Z_NO_FLUSH);
    Step s;
    s.consumed = avail_in - z_.avail_in;
    s.produced = avail_out - z_.avail_out;
    if (rc == Z_STREAM_END) {
      s.end = true;
    } else if (rc != Z_OK && rc != Z_BUF_ERROR) {
      return Malformed(z_.msg ? z_.msg : "inflate error " + std::to_string(rc));
    }
    return s;
  }
  Status NextMember(const char* in, size_t in_len) override {
    // gzip allows concatenated members (pigz, `cat a.gz b.gz`).
    if (in_len < 2 || static_cast<uint8_t>(in[0]) != 0x1f || static_cast<uint8_t>(in[1]) != 0x8b) {
      return Status::InvalidArgument(what() + ": trailing data after the gzip stream");
    }
    inflateReset(&z_);
    return Status::Ok();
  }

 private:
  z_stream z_;
  bool ok_ = false;
};

class XzSource : public DecompressingSource {
 public:
  XzSource(std::unique_ptr<ImageSource> inner, uint64_t max_raw)
      : DecompressingSource(std::move(inner), "xz", max_raw) {
    // 1 GiB of decoder memory covers every preset (xz -9e needs 65 MiB).
    ok_ = lzma_stream_decoder(&s_, 1ull << 30, LZMA_CONCATENATED) == LZMA_OK;
  }
  ~XzSource() override { lzma_end(&s_); }

 protected:
  Result<Step> Decode(const char* in, size_t in_len, bool in_eof, char* out, size_t out_len) override {
    if (!ok_) return Status::Internal(what() + ": lzma_stream_decoder failed");
    s_.next_in = reinterpret_cast<const uint8_t*>(in);
    s_.avail_in = in_len;
    s_.next_out = reinterpret_cast<uint8_t*>(out);
    s_.avail_out = out_len;
    lzma_ret rc = lzma_code(&s_, in_eof ? LZMA_FINISH : LZMA_RUN);
    Step s;
    s.consumed = in_len - s_.avail_in;
    s.produced = out_len - s_.avail_out;
    switch (rc) {
      case LZMA_OK:
        break;
      case LZMA_STREAM_END:
        s.end = true;
        break;
      case LZMA_BUF_ERROR:
        if (in_eof) {
          return Status::InvalidArgument(what() + ": xz stream is truncated");
        }
        break;
      case LZMA_MEMLIMIT_ERROR:
        return Malformed("needs more than 1 GiB of decoder memory");
      case LZMA_FORMAT_ERROR:
        return Malformed("not an xz stream");
      case LZMA_OPTIONS_ERROR:
        return Malformed("unsupported options");
      case LZMA_DATA_ERROR:
        return Malformed("corrupt data");
      default:
        return Malformed("lzma error " + std::to_string(static_cast<int>(rc)));
    }
    return s;
  }

 private:
  lzma_stream s_ = LZMA_STREAM_INIT;
  bool ok_ = false;
};

class ZstdSource : public DecompressingSource {
 public:
  ZstdSource(std::unique_ptr<ImageSource> inner, uint64_t max_raw)
      : DecompressingSource(std::move(inner), "zstd", max_raw), ctx_(ZSTD_createDCtx()) {}
  ~ZstdSource() override { ZSTD_freeDCtx(ctx_); }

 protected:
  Result<Step> Decode(const char* in, size_t in_len, bool in_eof, char* out, size_t out_len) override {
    Step s;
    if (in_len == 0 && in_eof) {
      // A frame is complete exactly when the last call returned 0.
      if (last_ != 0) return Status::InvalidArgument(what() + ": zstd stream is truncated");
      s.end = true;
      return s;
    }
    ZSTD_inBuffer ib{in, in_len, 0};
    ZSTD_outBuffer ob{out, out_len, 0};
    size_t rc = ZSTD_decompressStream(ctx_, &ob, &ib);
    if (ZSTD_isError(rc)) return Malformed(ZSTD_getErrorName(rc));
    last_ = rc;
    s.consumed = ib.pos;
    s.produced = ob.pos;
    return s;
  }

 private:
  ZSTD_DCtx* ctx_;
  size_t last_ = 1;
};

// A qcow2 image: the header fields we check before spending a download on it.
struct Qcow2Header {
  uint32_t version = 0;
  uint64_t size = 0;
};

Result<Qcow2Header> ParseQcow2Header(const std::string& head, const std::string& what) {
  if (head.size() < 72) return Status::InvalidArgument(what + ": qcow2 header is truncated");
  Qcow2Header h;
  h.version = Be32(head, 4);
  if (h.version != 2 && h.version != 3) {
    return Status::InvalidArgument(what + ": qcow2 version " + std::to_string(h.version) +
                                   " is not supported (2 or 3)");
  }
  if (Be64(head, 8) != 0) {
    return Status::InvalidArgument(what + ": qcow2 image has a backing file; import a standalone image "
                                   "(qemu-img convert -O qcow2 flattens it)");
  }
  uint32_t cluster_bits = Be32(head, 20);
  if (cluster_bits < 9 || cluster_bits > 21) {
    return Status::InvalidArgument(what + ": qcow2 cluster_bits " + std::to_string(cluster_bits) +
                                   " is out of range (malformed header)");
  }
  h.size = Be64(head, 24);
  if (h.size == 0) return Status::InvalidArgument(what + ": qcow2 virtual size is 0");
  if (Be32(head, 32) != 0) {
    return Status::InvalidArgument(what + ": qcow2 image is encrypted; encrypted images are not supported");
  }
  if (h.version == 3) {
    if (head.size() < 104) return Status::InvalidArgument(what + ": qcow2 v3 header is truncated");
    uint64_t incompatible = Be64(head, 72);
    if (incompatible & (1u << 2)) {
      return Status::InvalidArgument(what + ": qcow2 image uses an external data file; not supported");
    }
  }
  return h;
}

std::string ScratchDir(const std::string& configured) {
  if (!configured.empty()) return configured;
  const char* t = std::getenv("TMPDIR");
  return t && *t ? t : "/var/tmp";
}

// A qcow2 stream: spooled to a scratch file, converted with qemu-img to a sparse raw
// scratch file on the first Next(), then read from there. Both files are removed as soon
// as they are no longer needed (the raw one right after it is opened).
class Qcow2Source : public ImageSource {
 public:
  Qcow2Source(std::unique_ptr<ImageSource> inner, Qcow2Header header, std::string scratch_dir,
              std::string local_path)
      : inner_(std::move(inner)), header_(header), scratch_dir_(std::move(scratch_dir)),
        local_path_(std::move(local_path)), what_("image " + inner_->Describe()) {}
  ~Qcow2Source() override {
    if (!spool_path_.empty()) ::unlink(spool_path_.c_str());
    if (!raw_path_.empty()) ::unlink(raw_path_.c_str());
  }
  std::string Describe() const override { return inner_->Describe(); }
  std::optional<uint64_t> Size() const override { return header_.size; }

  Result<size_t> Next(char* buf, size_t max, bool* hole) override {
    if (!raw_) RETURN_IF_ERROR(Convert());
    return raw_->Next(buf, max, hole);
  }

 private:
  Status MakeScratch(const char* kind, std::string* path, int* fd) {
    std::string tmpl = scratch_dir_ + "/stellarium-" + kind + "-XXXXXX";
    std::vector<char> name(tmpl.begin(), tmpl.end());
    name.push_back('\0');
    *fd = ::mkstemp(name.data());
    if (*fd < 0) return Status::FromErrno(errno, what_ + ": scratch file in " + scratch_dir_);
    *path = name.data();
    return Status::Ok();
  }

  Status Spool() {
    int fd = -1;
    RETURN_IF_ERROR(MakeScratch("qcow2", &spool_path_, &fd));
    std::vector<char> buf(4u << 20);
    uint64_t off = 0;
    Status st;
    while (st.ok()) {
      bool hole = false;
      auto n = inner_->Next(buf.data(), buf.size(), &hole);
      if (!n.ok()) {
        st = n.status();
        break;
      }
      if (*n == 0) break;
      if (!hole) {
        for (size_t done = 0; done < *n;) {
          ssize_t w = ::pwrite(fd, buf.data() + done, *n - done, static_cast<off_t>(off + done));
          if (w < 0 && errno == EINTR) continue;
          if (w < 0) {
            st = Status::FromErrno(errno, what_ + ": write scratch file " + spool_path_);
            break;
          }
          done += static_cast<size_t>(w);
        }
      }
      off += *n;
    }
    if (st.ok() && ::ftruncate(fd, static_cast<off_t>(off)) != 0) {
      st = Status::FromErrno(errno, what_ + ": truncate scratch file " + spool_path_);
    }
    ::close(fd);
    return st;
  }

  Status Convert() {
    if (local_path_.empty()) RETURN_IF_ERROR(Spool());
    int fd = -1;
    RETURN_IF_ERROR(MakeScratch("raw", &raw_path_, &fd));
    ::close(fd);
    // -f qcow2: never probe the format; the output is sparse (zeros become holes).
    auto run = RunProgram({"qemu-img", "convert", "-q", "-f", "qcow2", "-O", "raw",
                           local_path_.empty() ? spool_path_ : local_path_, raw_path_});
    if (!spool_path_.empty()) ::unlink(spool_path_.c_str());
    spool_path_.clear();
    if (!run.ok()) {
      if (run.status().IsNotFound()) {
        return Status::FailedPrecondition(what_ + ": qcow2 needs qemu-img, which is not installed "
                                          "(Debian package qemu-utils)");
      }
      return run.status().Annotate(what_);
    }
    if (run->exit_code != 0) {
      std::string out = run->output;
      while (!out.empty() && (out.back() == '\n' || out.back() == '\r')) out.pop_back();
      return Status::InvalidArgument(what_ + ": malformed qcow2 image (qemu-img convert: " + out + ")");
    }
    ASSIGN_OR_RETURN(raw_, OpenFileImageSource(raw_path_));
    ::unlink(raw_path_.c_str());  // the open file stays readable; nothing is left behind
    raw_path_.clear();
    if (!raw_->Size() || *raw_->Size() != header_.size) {
      return Status::InvalidArgument(what_ + ": qcow2 converted to " +
                                     std::to_string(raw_->Size().value_or(0)) + " bytes, header says " +
                                     std::to_string(header_.size));
    }
    return Status::Ok();
  }

  std::unique_ptr<ImageSource> inner_;
  Qcow2Header header_;
  std::string scratch_dir_;
  std::string local_path_;  // convert from here instead of spooling, when set
  std::string what_;
  std::string spool_path_, raw_path_;
  std::unique_ptr<ImageSource> raw_;
};

Result<std::unique_ptr<ImageSource>> Wrap(std::unique_ptr<ImageSource> src, const FormatOptions& opts,
                                          ImageFormat* detected, int depth) {
  const std::string what = "image " + src->Describe();
  std::string head;
  ASSIGN_OR_RETURN(auto peeked, Peek(std::move(src), &head));
  ASSIGN_OR_RETURN(ImageFormat fmt, DetectImageFormat(head, what));
  if (detected && depth == 0) *detected = fmt;
  if (fmt != ImageFormat::kRaw && depth >= kMaxNesting) {
    return Status::InvalidArgument(what + ": " + ImageFormatName(fmt) + " nested " +
                                   std::to_string(depth) + " levels deep; not supported");
  }
  switch (fmt) {
    case ImageFormat::kRaw:
      if (opts.max_raw_bytes && peeked->Size() && *peeked->Size() > opts.max_raw_bytes) {
        return Status::OutOfRange(what + ": image of " + std::to_string(*peeked->Size()) +
                                  " bytes is larger than the maximum image size " +
                                  std::to_string(opts.max_raw_bytes));
      }
      return peeked;
    case ImageFormat::kGzip:
      return Wrap(std::make_unique<GzipSource>(std::move(peeked), opts.max_raw_bytes), opts, detected, depth + 1);
    case ImageFormat::kXz:
      return Wrap(std::make_unique<XzSource>(std::move(peeked), opts.max_raw_bytes), opts, detected, depth + 1);
    case ImageFormat::kZstd:
      return Wrap(std::make_unique<ZstdSource>(std::move(peeked), opts.max_raw_bytes), opts, detected, depth + 1);
    case ImageFormat::kQcow2: {
      ASSIGN_OR_RETURN(Qcow2Header h, ParseQcow2Header(head, what));
      if (opts.max_raw_bytes && h.size > opts.max_raw_bytes) {
        return Status::OutOfRange(what + ": qcow2 virtual size " + std::to_string(h.size) +
                                  " is larger than the maximum image size " + std::to_string(opts.max_raw_bytes));
      }
      return std::unique_ptr<ImageSource>(new Qcow2Source(std::move(peeked), h, ScratchDir(opts.scratch_dir),
                                                          depth == 0 ? opts.local_path : ""));
    }
  }
  return Status::Internal(what + ": unhandled format");
}

}  // namespace

const char* ImageFormatName(ImageFormat format) {
  switch (format) {
    case ImageFormat::kRaw: return "raw";
    case ImageFormat::kGzip: return "gzip";
    case ImageFormat::kXz: return "xz";
    case ImageFormat::kZstd: return "zstd";
    case ImageFormat::kQcow2: return "qcow2";
  }
  return "unknown";
}

Result<ImageFormat> DetectImageFormat(const std::string& head, const std::string& what) {
  using namespace std::string_view_literals;
  if (HasPrefix(head, "\x1f\x8b"sv)) return ImageFormat::kGzip;
  if (HasPrefix(head, "\xfd" "7zXZ\x00"sv)) return ImageFormat::kXz;
  if (HasPrefix(head, "\x28\xb5\x2f\xfd"sv)) return ImageFormat::kZstd;
  if (HasPrefix(head, "QFI\xfb"sv)) return ImageFormat::kQcow2;
  auto unsupported = [&](const char* name) {
    return Status::InvalidArgument(what + ": " + std::string(name) +
                                   " images are not supported (raw, ext4, qcow2, or gzip/xz/zstd of those)");
  };
  if (HasPrefix(head, "KDMV"sv) || HasPrefix(head, "# Disk DescriptorFile"sv)) return unsupported("VMDK");
  if (HasPrefix(head, "vhdxfile"sv)) return unsupported("VHDX");
  if (HasPrefix(head, "conectix"sv)) return unsupported("VHD");
  if (HasPrefix(head, "\x7f\x10\xda\xbe"sv, 64)) return unsupported("VDI");
  if (HasPrefix(head, "QED\x00"sv)) return unsupported("QED");
  if (HasPrefix(head, "BZh"sv) && head.size() > 3 && head[3] >= '1' && head[3] <= '9') {
    return unsupported("bzip2-compressed");
  }
  if (HasPrefix(head, "PK\x03\x04"sv)) return unsupported("zip");
  return ImageFormat::kRaw;
}

Result<std::unique_ptr<ImageSource>> OpenFormatted(std::unique_ptr<ImageSource> source,
                                                   const FormatOptions& options, ImageFormat* detected) {
  return Wrap(std::move(source), options, detected, 0);
}

}  // namespace stellarium
