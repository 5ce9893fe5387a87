// ImageImporter: volumes from http(s) URLs, one import per image per node.
//
// Why: in a cluster many PVCs are made from the same image URL at once, and the CSI
// sidecar gives each CreateVolume a short deadline (external-provisioner: 10 s by
// default) that a multi-GiB download cannot meet. So an import is not tied to the RPC
// that asked for it:
//   - a single-flight table keyed by the source (URL, expected digest, block size): the
//     first caller starts the import on a background thread; concurrent callers for the
//     same source wait for that import instead of downloading again;
//   - a caller waits at most until shortly before its gRPC deadline; then it gets
//     ABORTED ("import of <url> in progress: 37% ...") and the import goes on; the
//     sidecar's retry joins the same import (never a second download);
//   - the imported image is held by an internal *anchor* volume (name prefix
//     kAnchorPrefix, hidden from ListVolumes) and every CSI volume is an O(1) clone of
//     it (Store::CreateVolumeFromImage). The anchors of an image are deleted when the
//     last CSI volume made from it is deleted (ReleaseIfUnused), so the image is
//     forgotten with its last user, as core does for images imported directly;
//   - a record per source (state_dir/images.yaml: URL -> ETag, Last-Modified, source
//     sha256, image digest) makes later calls cheap: with an expected digest, a source
//     whose sha256 was verified before and whose image is still in the store is a clone
//     without any request; without a digest, a conditional GET (If-None-Match /
//     If-Modified-Since) is sent and a 304 is a clone without a download.
//
// Limits: `max_image_size` (0 = none) stops a download as soon as it is known to be
// larger (OUT_OF_RANGE); `max_concurrent_imports` imports run at once, a caller that
// would start one more gets ABORTED (retry later). A caller whose capacity is smaller
// than the image gets OUT_OF_RANGE as soon as the image size is known (up front from
// Content-Length for raw images, else when the import ends); if it was the import's only
// caller the download is stopped.
//
// Progress: long imports log bytes, percent (when the size is known) and MB/s every
// kProgressLogSeconds; Snapshot() feeds the Prometheus metrics (csi/metrics.h).
//
// Thread-safety: all methods may be called from any thread. The destructor cancels the
// imports still running and joins their threads (a cancelled import leaves nothing
// behind, core's ImportImage contract).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "core/status.h"
#include "core/store.h"

namespace stellarium::node {

// Names of anchor volumes start with this; CSI names with it are refused.
inline constexpr char kAnchorPrefix[] = "stellarium.io/image-anchor/";
inline constexpr int kProgressLogSeconds = 5;

// Where an image comes from, as CreateVolume's parameters and secrets say.
struct UrlSource {
  std::string url;                   // http:// or https://
  std::string sha256;                // lowercase 64 hex of the source bytes; "" = none
  std::string ca_bundle_pem;         // PEM text of trusted CAs; "" = the system's
  std::vector<std::string> headers;  // "Name: value"
  uint32_t block_size = 0;           // the image's block size (never 0)
};

struct ImporterOptions {
  std::string state_dir;             // images.yaml and tmp/ (CA bundles, qcow2 scratch)
  uint64_t max_image_size = 0;       // bytes, 0 = no limit
  int max_concurrent_imports = 2;    // >= 1
};

// An image ready to be cloned.
struct ImportedImage {
  std::string digest;                // core's image content digest (hex)
  uint64_t size_bytes = 0;
  uint32_t block_size = 0;
  bool downloaded = false;           // false: found in the store (digest or 304)
};

// One running import, for metrics and logs.
struct ImportProgress {
  std::string source_id;             // 12 hex digits of the source key's sha256
  std::string url;                   // redacted
  uint64_t downloaded_bytes = 0;
  std::optional<uint64_t> download_total;  // Content-Length when known
  int waiters = 0;                   // CreateVolume calls waiting for it right now
};

struct ImporterStats {
  std::vector<ImportProgress> running;
  uint64_t downloaded_bytes_total = 0;  // over every import since start
  uint64_t imports_succeeded = 0, imports_failed = 0, reused = 0;
};

class ImageImporter {
 public:
  ImageImporter(Store* store, ImporterOptions options);
  ~ImageImporter();
  ImageImporter(const ImageImporter&) = delete;
  ImageImporter& operator=(const ImageImporter&) = delete;

  // Returns the image of `source`, importing it (or joining the import running for it)
  // when the store does not have it. Waits until shortly before `deadline` or until
  // `cancelled()` returns true; then ABORTED with the import's progress. `capacity`
  // (0 = none) is the caller's largest acceptable image size: OUT_OF_RANGE above it.
  // Errors of the import (a wrong digest, a dropped connection, a malformed image)
  // are returned to every caller waiting for it; the next call starts a new import.
  Result<ImportedImage> Get(const UrlSource& source, uint64_t capacity,
                            std::chrono::system_clock::time_point deadline,
                            const std::function<bool()>& cancelled);

  // Store::CreateVolumeFromImage, serialized with ReleaseIfUnused so that an anchor is
  // never deleted between finding an image and cloning it. NOT_FOUND when the image
  // was forgotten meanwhile (the caller retries, which imports again).
  Result<VolumeInfo> CloneFrom(const ::stellarium::CreateVolumeRequest& request,
                               const std::string& image_digest);

  // Deletes the anchors of `image_digest` when no other volume is made from it.
  Status ReleaseIfUnused(const std::string& image_digest);

  ImporterStats Stats() const;

  static bool IsAnchorName(const std::string& volume_name);

 private:
  struct Job;
  // What images.yaml remembers of one source (URL at one block size). Persisted on
  // disk (state_dir/images.yaml, docs/IMAGES.md); never rename a field.
  struct Record {
    std::string url;             // redacted, for people reading the file
    std::string sha256;          // hex of the source bytes, when a digest was verified
    std::string etag, last_modified;
    std::string image;           // core's image digest (hex)
    uint64_t size_bytes = 0;
    uint32_t block_size = 0;
  };

  void Run(std::shared_ptr<Job> job);
  Result<ImportedImage> Import(Job& job);
  // The store's image with this digest and block size, if it still exists.
  Result<std::optional<ImageInfo>> FindImage(const std::string& digest);
  // REQUIRES: records_mu_ held.
  Status LoadRecordsLocked();
  Status SaveRecordsLocked();

  Store* const store_;
  const ImporterOptions options_;

  mutable std::mutex mu_;
  std::condition_variable cv_;                              // a job changed state
  std::map<std::string, std::shared_ptr<Job>> running_;    // GUARDED_BY(mu_), by source key
  int live_threads_ = 0;                                   // GUARDED_BY(mu_)
  bool shutting_down_ = false;                             // GUARDED_BY(mu_)
  uint64_t succeeded_ = 0, failed_ = 0, reused_ = 0;       // GUARDED_BY(mu_)
  std::atomic<uint64_t> downloaded_total_{0};

  std::mutex records_mu_;
  bool records_loaded_ = false;                            // GUARDED_BY(records_mu_)
  std::map<std::string, Record> records_;                  // GUARDED_BY(records_mu_), by URL key

  std::mutex images_mu_;  // CloneFrom vs ReleaseIfUnused
};

}  // namespace stellarium::node
