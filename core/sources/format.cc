#include "core/sources/format.h"

#include <lzma.h>
#include <zlib.h>
#include <zstd.h>

#include <cstring>
#include <vector>

#include "core/sources/qcow2.h"

namespace stellarium {
namespace {

constexpr size_t kPeekBytes = 512;
constexpr int kMaxNesting = 2;  // e.g. gzip around qcow2; deeper is refused

bool HasPrefix(const std::string& s, std::string_view magic, size_t at = 0) {
  return s.size() >= at + magic.size() && std::string_view(s).substr(at, magic.size()) == magic;
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
        if (in_eof_) return Truncated();
        RETURN_IF_ERROR(Refill());
      }
    }
    return size_t{0};
  }

 protected:
  virtual Result<Step> Decode(const char* in, size_t in_len, bool in_eof, char* out, size_t out_len) = 0;
  // Called when a stream ended but input remains: start the next member or refuse.
  virtual Status NextMember(const char* in, size_t in_len) {
    return Status::InvalidArgument(what_ + ": trailing data after the " + std::string(codec_) +
                                   " stream at file offset " + std::to_string(InputOffset()));
  }
  Status Malformed(const std::string& detail) const {
    return Status::InvalidArgument(what_ + ": malformed " + std::string(codec_) + " data (" +
                                   detail + ") in the bytes from file offset " +
                                   std::to_string(InputOffset()) + ", after " +
                                   std::to_string(out_total_) + " decompressed bytes");
  }
  Status Truncated() const {
    return Status::InvalidArgument(what_ + ": " + codec_ + " stream is truncated at file offset " +
                                   std::to_string(InputOffset()) +
                                   " (the end of the file), after " + std::to_string(out_total_) +
                                   " decompressed bytes");
  }
  const std::string& what() const { return what_; }

 private:
  // Where in the compressed file the decoder is: bytes read minus those not yet decoded.
  uint64_t InputOffset() const { return in_read_ - (in_len_ - in_pos_); }

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
    in_read_ += n;
    return Status::Ok();
  }

  std::unique_ptr<ImageSource> inner_;
  const char* codec_;
  uint64_t max_raw_;
  std::string what_;
  std::vector<char> in_;
  size_t in_pos_ = 0, in_len_ = 0;
  bool in_eof_ = false, finished_ = false;
  uint64_t in_read_ = 0;  // bytes read from the inner source
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
      return DecompressingSource::NextMember(in, in_len);
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
        if (in_eof) return Truncated();
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
      if (last_ != 0) return Truncated();
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
      ASSIGN_OR_RETURN(uint64_t size, Qcow2VirtualSize(head, what));
      if (opts.max_raw_bytes && size > opts.max_raw_bytes) {
        return Status::OutOfRange(what + ": qcow2 virtual size " + std::to_string(size) +
                                  " is larger than the maximum image size " + std::to_string(opts.max_raw_bytes));
      }
      Qcow2Options q;
      q.scratch_dir = opts.scratch_dir;
      q.reorder_memory_bytes = opts.qcow2_reorder_memory_bytes;
      q.max_table_memory_bytes = opts.qcow2_max_table_memory_bytes;
      q.stats = opts.qcow2_stats;
      return OpenQcow2Source(std::move(peeked), head, q);
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
