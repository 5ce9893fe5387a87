// Builds an ext4 image from a directory tree with `mkfs.ext4 -d` (no root, no mounts).
// Used by core/provision.h (`stellarium build --from-dir`, the CSI driver's imageDir
// parameter), which owns the temporary file.
//
// The image is reproducible for the same tree and label: a fixed UUID and hash seed
// derived from the label, and a fixed mkfs time (E2FSPROGS_FAKE_TIME), so rebuilding an
// unchanged tree yields the same blocks and dedups to nothing new.
//
// Thread-safety: free functions; calls for different output paths may run in parallel.
#pragma once

#include <cstdint>
#include <string>

#include "core/status.h"

namespace stellarium {

struct TreeSize {
  uint64_t file_bytes = 0;   // data, rounded up to 4 KiB per file
  uint64_t inodes = 0;       // files, directories, links
};

// Walks `dir` (not following symlinks). NOT_FOUND / INVALID_ARGUMENT (not a directory).
Result<TreeSize> MeasureTree(const std::string& dir);

// The default image size for a tree: data + 25% + 16 MiB headroom, at least 32 MiB,
// rounded up to 1 MiB.
uint64_t DefaultImageSize(const TreeSize& t);

// Writes an ext4 image of `dir` to `out_path` (created or truncated; sparse), of `size`
// bytes (0 = DefaultImageSize). OUT_OF_RANGE, one line naming the tree and a size that
// fits, when the tree does not fit; the output file is removed on any error.
Status BuildExt4FromTree(const std::string& dir, uint64_t size, const std::string& label,
                         const std::string& out_path);

}  // namespace stellarium
