// Image formats: detect what a source holds from its first bytes and wrap it so that
// ImportImage always reads the raw disk image.
//
//   raw / ext4 (anything without a known magic)  read as is
//   gzip  (1f 8b)                                decompressed while streaming (zlib)
//   xz    (fd 37 7a 58 5a 00)                    decompressed while streaming (liblzma)
//   zstd  (28 b5 2f fd)                          decompressed while streaming (libzstd)
//   qcow2 ("QFI\xfb")                            converted while streaming (qcow2.h):
//                                                data the reader cannot emit yet waits in
//                                                memory, then in an unlinked scratch file in
//                                                options.scratch_dir (docs/IMAGES.md)
// A compressed stream is detected again after decompression (raw.img.xz, disk.qcow2.gz).
// Known formats we do not import (vmdk, vhdx, vdi, vhd, bzip2, zip) and malformed data
// (a corrupt or truncated compressed stream or qcow2, a qcow2 with a backing file,
// encryption or an external data file) are INVALID_ARGUMENT naming the source. Errors of the wrapped
// source (a dropped download, a digest mismatch) pass through unchanged.
//
// Thread-safety: a wrapped source has one reader at a time, like any ImageSource.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "core/sources/qcow2.h"
#include "core/store.h"

namespace stellarium {

enum class ImageFormat { kRaw, kGzip, kXz, kZstd, kQcow2 };

const char* ImageFormatName(ImageFormat format);  // "raw", "gzip", "xz", "zstd", "qcow2"

struct FormatOptions {
  // Where a qcow2 image's reorder buffer goes once its memory is full (only for data
  // that arrives before it can be emitted; at most the size of the qcow2 file).
  // "" = $TMPDIR or /var/tmp.
  std::string scratch_dir;
  // Refuse images whose raw (decompressed / virtual) size exceeds this; 0 = no limit.
  uint64_t max_raw_bytes = 0;
  // Memory of a qcow2's reorder buffer before it spills to scratch_dir, and the limit on
  // its tables' memory (qcow2.h, Qcow2Options).
  uint64_t qcow2_reorder_memory_bytes = 64ull << 20;
  uint64_t qcow2_max_table_memory_bytes = 512ull << 20;
  // Optional (not owned): what the qcow2 reader did, updated while it reads.
  Qcow2Stats* qcow2_stats = nullptr;
};

// Looks at `head` (the first bytes of a stream, at least 8 for a verdict; 512 are read by
// OpenFormatted). Returns kRaw when no supported magic matches. An unsupported known
// format is INVALID_ARGUMENT naming `what`.
Result<ImageFormat> DetectImageFormat(const std::string& head, const std::string& what);

// Reads the first bytes of `source`, detects its format and returns a source of the raw
// image. `detected` (optional) receives the outermost format found.
Result<std::unique_ptr<ImageSource>> OpenFormatted(std::unique_ptr<ImageSource> source,
                                                   const FormatOptions& options,
                                                   ImageFormat* detected = nullptr);

}  // namespace stellarium
