// ImageSource implementations for Store::ImportImage.
//
// FileImageSource reads a regular file (a raw or ext4 image) and skips its holes with
// SEEK_DATA/SEEK_HOLE, so a sparse 10 GiB image with 100 MiB of data costs 100 MiB of
// reads. Errors name the file: a missing file is NOT_FOUND, a directory or a device is
// INVALID_ARGUMENT, a file that shrinks while it is read is ABORTED.
//
// Thread-safety: one reader at a time (ImportImage's reader thread).
#pragma once

#include <memory>
#include <string>

#include "core/store.h"

namespace stellarium {

Result<std::unique_ptr<ImageSource>> OpenFileImageSource(const std::string& path);

// An in-memory image, for tests and for small generated images.
std::unique_ptr<ImageSource> NewMemoryImageSource(std::string name, std::string bytes);

}  // namespace stellarium
