// Provision: the one way a new volume is made from what a user names. The `stellarium`
// CLI (build, clone) and the CSI driver's CreateVolume both call it, so a volume made from
// the same thing is sized, read and compared the same way whichever door it came in by.
// The callers only translate their arguments (CLI flags, a CreateVolumeRequest) into a
// ProvisionRequest.
//
// What it owns:
//   - Sizing, with the CSI capacity_range semantics: the volume is at least
//     `required_bytes` and at least its source's size, rounded up to the block size, and
//     at most `limit_bytes` (0 = no limit); a source that cannot fit is OUT_OF_RANGE. A
//     blank volume without a required size is kDefaultBlankVolumeBytes (or the limit, if
//     smaller). A directory tree's image is its default size (tree_image.h) kept inside
//     [required, limit]. The CLI's `--size X` is the range [X, X rounded up to the block
//     size] (ExactSize).
//   - The sources: blank; a snapshot or a volume (O(1) clones); an image already in the
//     store, by digest; a local image file and an http(s) URL, both through the same
//     format detection (core/sources/open.h: raw/ext4 sparse-aware, qcow2 also with
//     compressed clusters, gzip, xz, zstd; a truncated or malformed container and a
//     known but unsupported one such as VMDK are INVALID_ARGUMENT naming the file); a
//     directory tree, built into a temporary ext4 image (core/tree_image.h).
//   - Temporary files: a tree's image and a qcow2's reorder-buffer spill go to
//     `scratch_dir` (default: the store directory's parent), are unlinked as soon as they
//     are open and in every error path, so nothing is left behind, not even by a crash
//     after the import started.
//   - Idempotency by name, the one rule (FindExisting). When a volume named `name`
//     exists it is the answer if and only if
//       1. its size lies in [required_bytes, limit_bytes] (limit 0 = no upper bound);
//       2. its block size equals the request's, when the request names one (0 = any);
//       3. its source matches: none for a blank request; the same snapshot or volume
//          id for a clone; the same digest for an image named by digest; any image for
//          a file, URL or tree (their digest is known only after reading them: the
//          attributes say which file, URL or tree it was);
//       4. its attributes equal the request's (the caller's record of what was asked
//          for: the CLI's "source", the StorageClass parameters).
//     Otherwise the call is ALREADY_EXISTS naming the volume and what differs. Deciding
//     reads no source: no file is opened, no tree built, nothing downloaded.
//
// Errors: INVALID_ARGUMENT for a bad request or source (empty name, bad block size, a
// block size other than the clone source's, a malformed image); NOT_FOUND for a missing
// source; OUT_OF_RANGE when the volume cannot fit [required, limit]; ALREADY_EXISTS as
// above; others from the store and the sources. A failed call leaves no volume (an
// import's chunks go at the store's next Gc()).
//
// Also here, for every caller that names objects or block sizes: ValidateName (the CLI's
// rule for volume and snapshot names) and ParseBlockSize ("4096", "4k", "64KiB").
//
// Thread-safety: Provision may run concurrently on one store for different names; two
// calls for the same name must be serialized by the caller (the CSI driver holds a lock
// per name; the CLI is one process per store).
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>

#include "core/sources/open.h"
#include "core/store.h"

namespace stellarium {

// The size of a blank volume when the request names none (the CSI spec leaves it to the
// plugin).
inline constexpr uint64_t kDefaultBlankVolumeBytes = 1ull << 30;

// Names the CLI accepts for volumes and snapshots: 1 to kMaxNameBytes bytes, no '/', no
// control character (bytes 0x00-0x1f and 0x7f, U+0080-U+009F), not "." or "..". The
// catalog stores any byte string; this rule keeps names printable in one line of
// `list`, usable as a file name and bounded in every message.
inline constexpr size_t kMaxNameBytes = 1024;
// INVALID_ARGUMENT naming `what` ("volume name") and the first offending byte.
Status ValidateName(const std::string& name, const std::string& what);

// Parses a block size as the StorageClass parameter blockSize and the CLI's --block-size
// take it ("4096", "4k", "4K", "64KiB", "1M") and checks it (ValidateBlockSize).
// INVALID_ARGUMENT naming `what` otherwise.
Result<uint32_t> ParseBlockSize(const std::string& text, const std::string& what);

enum class SourceKind {
  kBlank,      // zeros
  kSnapshot,   // id: the snapshot's id
  kVolume,     // id: the volume's id
  kImage,      // id: the hex digest of an image already in the store
  kImageFile,  // image.path: a local file of any format OpenImageSource takes
  kUrl,        // image.url and its options (digest, CA bundle, headers)
  kTree,       // tree_dir: a directory, built into ext4 labelled tree_label
};

struct ProvisionSource {
  SourceKind kind = SourceKind::kBlank;
  std::string id;
  ImageSourceSpec image;
  std::string tree_dir;
  // The ext4 label, which also seeds the image's UUID and hash seed: the same tree with
  // the same label builds the same blocks (tree_image.h).
  std::string tree_label = "stellarium";
};

struct ProvisionRequest {
  std::string name;
  uint64_t required_bytes = 0;  // 0 = none
  uint64_t limit_bytes = 0;     // 0 = none
  uint32_t block_size = 0;      // 0 = the source's (clones, images) or the store default
  Attributes attributes;        // stored with the volume, compared on a re-create
  ProvisionSource source;
  // An image whose size is not a multiple of the block size: false refuses it
  // (INVALID_ARGUMENT), true pads its tail with zeros.
  bool pad_to_block = false;
  std::string scratch_dir;                    // temporary files; "" = the store directory's parent
  ProgressFn progress;                        // an import's progress (ImportOptions::progress)
  const std::atomic<bool>* cancel = nullptr;  // stops an import (CANCELLED); not owned
};

// The range [bytes, bytes rounded up to block_size]: "exactly this size" (the CLI's --size).
void ExactSize(uint64_t bytes, uint32_t block_size, ProvisionRequest* request);

// An image in the store, as a URL's importer hands it over.
struct ProvisionedImage {
  std::string digest;  // hex
  uint64_t size_bytes = 0;
  uint32_t block_size = 0;
};

// What a caller may add around the steps (the CSI driver; the CLI passes none). Each is
// called only when a new volume is being made, never for an existing one.
struct ProvisionHooks {
  // kVolume: called with the source's id just before it is cloned (the driver flushes a
  // volume staged on its node so the clone holds its latest writes).
  std::function<Status(const std::string& volume_id)> before_volume_clone;
  // kImageFile, kTree: maps the path as given to the path to read (the driver confines
  // paths to its import roots). Unset: the path as given.
  std::function<Result<std::string>(const std::string& path)> resolve_path;
  // kUrl: returns the URL's image, already in the store, instead of reading the URL here
  // (the driver imports each URL once per node on its own threads). Unset: the URL is
  // read and imported by this call.
  std::function<Result<ProvisionedImage>()> url_image;
  // kImage, and kUrl with url_image: makes the clone (default
  // Store::CreateVolumeFromImage; the driver serializes it with forgetting images).
  std::function<Result<VolumeInfo>(const CreateVolumeRequest& request, const std::string& digest)>
      clone_image;
  // Called with one line before a step that may take a while (building a tree's image).
  std::function<void(const std::string& line)> note;
};

struct ProvisionResult {
  VolumeInfo volume;
  bool existed = false;                    // the name's existing volume was the answer
  std::optional<ImportSummary> import;     // set when this call read an image
  ImageFormat format = ImageFormat::kRaw;  // what the file or URL held (import only)
};

// The name-idempotency rule above: the existing volume when it matches, nullopt when
// the name is free, ALREADY_EXISTS naming what differs. Reads no source.
Result<std::optional<VolumeInfo>> FindExisting(Store& store, const ProvisionRequest& request);

// Makes the volume `request` describes, or returns the existing one (FindExisting).
Result<ProvisionResult> Provision(Store& store, const ProvisionRequest& request,
                                  const ProvisionHooks& hooks = {});

}  // namespace stellarium
