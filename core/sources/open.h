// OpenImageSource: the one entry point that turns "where the image is" into an
// ImageSource of the raw disk image for Store::ImportImage. The CLI (`stellarium build
// --from-image / --from-url`) and the CSI driver (StorageClass parameters) both call it.
//
//   spec.path  a local file (sparse-aware; OpenFileImageSource)      } exactly one
//   spec.url   an http:// or https:// URL (HttpImageSource, streamed) } of the two
// then the format is detected and unwrapped (format.h: raw/ext4, gzip, xz, zstd, qcow2).
//
// The expected digest is of the bytes as stored at the source (the compressed or qcow2
// file, as `sha256sum` prints it), checked at the end of the read: a mismatch makes
// Next() fail, so the import is abandoned and leaves nothing behind. For a local file it
// is checked the same way, while the file is read.
//
// Errors name the source. INVALID_ARGUMENT: neither or both of path/url, a malformed
// digest or header, an unsupported or malformed format. Others as in http_source.h and
// image_source.h.
//
// Thread-safety: a free function; the returned source has one reader at a time.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/sources/format.h"
#include "core/store.h"

namespace stellarium {

struct ImageSourceSpec {
  std::string path;                  // local image file
  std::string url;                   // http(s) URL
  std::string expected_sha256;       // "sha256:<hex>" of the source bytes; "" = unchecked
  std::string ca_bundle;             // https only: PEM CA bundle; "" = the system's
  std::vector<std::string> headers;  // http(s) only: "Name: value"
  uint64_t max_size_bytes = 0;       // limit on downloaded and on raw bytes; 0 = none
  uint64_t max_raw_bytes = 0;        // a further limit on raw bytes only; 0 = none
  std::string scratch_dir;           // qcow2 reorder-buffer spill (format.h); "" = $TMPDIR
  // http(s) only: a conditional request (http_source.h). When the server answers 304
  // the result has not_modified set and no source.
  std::string if_none_match, if_modified_since;
  // http(s) only: download progress and cancellation (HttpSourceOptions::on_data).
  std::function<bool(uint64_t received, std::optional<uint64_t> content_length)> on_data;
  // http(s) only: stops the transfer when set (HttpSourceOptions::cancel). Not owned.
  const std::atomic<bool>* cancel = nullptr;
};

// What OpenImageSource found, for logs, caching and the CLI's summary.
struct OpenedImageSource {
  std::unique_ptr<ImageSource> source;  // the raw image
  ImageFormat format = ImageFormat::kRaw;
  std::string etag, last_modified;      // http(s) only; "" when the server sent none
  std::optional<uint64_t> transfer_size;  // Content-Length or the file size
  bool not_modified = false;            // 304 to a conditional request: source is null
};

Result<OpenedImageSource> OpenImageSource(const ImageSourceSpec& spec);

}  // namespace stellarium
