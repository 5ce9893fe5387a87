// Shared setup of the end-to-end node tests: a real core Store in a temp directory, an
// ext4 image with a known file built by mkfs.ext4 -d, imported as a volume.
#pragma once

#include <gtest/gtest.h>

#include <memory>
#include <string>

#include "core/store.h"
#include "tests/node/test_util.h"

namespace stellarium::testing {

struct ImportedExt4 {
  std::string image_path;    // the raw ext4 image that was imported
  std::string known_name;    // file name inside the ext4 image ("known.bin")
  std::string known_sha256;  // hex digest of its content
  std::string known_content;
  VolumeInfo volume;
};

// Builds a `size_mib` ext4 image under `dir` holding known.bin (300 KiB of pattern
// bytes) and imports it into `store` as volume `name`. Fails the test on error.
ImportedExt4 ImportKnownExt4(Store& store, const std::string& dir, const std::string& name,
                             uint64_t size_mib);

// sha256 of a string, hex.
std::string Sha256Hex(const std::string& data);

}  // namespace stellarium::testing
