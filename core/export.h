// ExportVolume: writes a volume's contents to a raw image file, sparse (all-zero blocks
// become holes). Used by `stellarium export` and by tests that check a volume's bytes.
#pragma once

#include <string>

#include "core/store.h"

namespace stellarium {

struct ExportSummary {
  uint64_t bytes = 0;        // the volume's size
  uint64_t data_bytes = 0;   // bytes written (non-zero blocks)
};

// Creates or truncates `path`. The file is complete only on success; on error it is
// removed.
Result<ExportSummary> ExportVolume(Volume& volume, const std::string& path,
                                   const ProgressFn& progress = nullptr);

}  // namespace stellarium
