#include "core/sources/open.h"

#include "core/image_source.h"
#include "core/sha256.h"
#include "core/sources/http_source.h"

namespace stellarium {
namespace {

// Hashes a local file's bytes as they are read and fails at the end on a mismatch, the
// same contract HttpImageSource keeps for downloads. Holes are hashed as zeros.
class DigestCheckingSource : public ImageSource {
 public:
  DigestCheckingSource(std::unique_ptr<ImageSource> inner, std::string expected_hex)
      : inner_(std::move(inner)), expected_(std::move(expected_hex)) {}
  std::string Describe() const override { return inner_->Describe(); }
  std::optional<uint64_t> Size() const override { return inner_->Size(); }
  Result<size_t> Next(char* buf, size_t max, bool* hole) override {
    ASSIGN_OR_RETURN(size_t n, inner_->Next(buf, max, hole));
    if (n == 0) {
      if (checked_) return n;
      checked_ = true;
      std::string got = ToHex(hash_.Finish());
      if (got != expected_) {
        return Status::InvalidArgument("image " + Describe() + ": sha256 of the " + std::to_string(total_) +
                                       " bytes read is sha256:" + got + ", expected sha256:" + expected_);
      }
      return n;
    }
    if (*hole) {
      static const std::string kZeros(64 << 10, '\0');
      for (size_t left = n; left > 0;) {
        size_t k = std::min(left, kZeros.size());
        hash_.Update(kZeros.data(), k);
        left -= k;
      }
    } else {
      hash_.Update(buf, n);
    }
    total_ += n;
    return n;
  }

 private:
  std::unique_ptr<ImageSource> inner_;
  std::string expected_;
  Sha256Stream hash_;
  uint64_t total_ = 0;
  bool checked_ = false;
};

}  // namespace

Result<OpenedImageSource> OpenImageSource(const ImageSourceSpec& spec) {
  if (spec.path.empty() == spec.url.empty()) {
    return Status::InvalidArgument("image source: give exactly one of a path and a URL" +
                                   (spec.path.empty() ? std::string() : " (got path " + spec.path + " and URL " +
                                                                           RedactUrl(spec.url) + ")"));
  }
  OpenedImageSource out;
  std::unique_ptr<ImageSource> raw;
  if (!spec.url.empty()) {
    HttpSourceOptions h;
    h.url = spec.url;
    h.ca_bundle = spec.ca_bundle;
    h.headers = spec.headers;
    h.expected_sha256 = spec.expected_sha256;
    h.max_bytes = spec.max_size_bytes;
    h.if_none_match = spec.if_none_match;
    h.if_modified_since = spec.if_modified_since;
    h.on_data = spec.on_data;
    h.cancel = spec.cancel;
    ASSIGN_OR_RETURN(auto http, HttpImageSource::Open(h));
    out.etag = http->etag();
    out.last_modified = http->last_modified();
    out.transfer_size = http->Size();
    if (http->not_modified()) {
      out.not_modified = true;
      return out;
    }
    raw = std::move(http);
  } else {
    if (!spec.ca_bundle.empty() || !spec.headers.empty() || !spec.if_none_match.empty() ||
        !spec.if_modified_since.empty()) {
      return Status::InvalidArgument("image " + spec.path +
                                     ": a CA bundle, headers and conditional requests apply to URLs only");
    }
    ASSIGN_OR_RETURN(raw, OpenFileImageSource(spec.path));
    out.transfer_size = raw->Size();
    if (spec.max_size_bytes && out.transfer_size && *out.transfer_size > spec.max_size_bytes) {
      return Status::OutOfRange("image " + spec.path + ": size " + std::to_string(*out.transfer_size) +
                                " is larger than the maximum image size " + std::to_string(spec.max_size_bytes));
    }
    if (!spec.expected_sha256.empty()) {
      ASSIGN_OR_RETURN(std::string hex, ParseSha256Digest(spec.expected_sha256, "image " + spec.path));
      raw = std::make_unique<DigestCheckingSource>(std::move(raw), std::move(hex));
    }
  }
  FormatOptions f;
  f.scratch_dir = spec.scratch_dir;
  f.max_raw_bytes = spec.max_size_bytes;
  if (spec.max_raw_bytes && (!f.max_raw_bytes || spec.max_raw_bytes < f.max_raw_bytes)) {
    f.max_raw_bytes = spec.max_raw_bytes;
  }
  ASSIGN_OR_RETURN(out.source, OpenFormatted(std::move(raw), f, &out.format));
  return out;
}

}  // namespace stellarium
