// Image formats: detect what a source holds from its first bytes and wrap it so that
// ImportImage always reads the raw disk image.
//
//   raw / ext4 (anything without a known magic)  read as is
//   gzip  (1f 8b)                                decompressed while streaming (zlib)
//   xz    (fd 37 7a 58 5a 00)                    decompressed while streaming (liblzma)
//   zstd  (28 b5 2f fd)                          decompressed while streaming (libzstd)
//   qcow2 ("QFI\xfb")                            spooled to a scratch file in
//                                                options.scratch_dir, then converted by
//                                                `qemu-img convert -f qcow2 -O raw` (argv,
//                                                no shell) into a sparse scratch file that
//                                                is read and deleted (docs/IMAGES.md)
// A compressed stream is detected again after decompression (raw.img.xz, disk.qcow2.gz).
// Known formats we do not import (vmdk, vhdx, vdi, vhd, bzip2, zip) and malformed data
// (a corrupt or truncated compressed stream, a qcow2 with a backing file, encryption or
// an external data file) are INVALID_ARGUMENT naming the source. Errors of the wrapped
// source (a dropped download, a digest mismatch) pass through unchanged.
//
// Thread-safety: a wrapped source has one reader at a time, like any ImageSource.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "core/store.h"

namespace stellarium {

enum class ImageFormat { kRaw, kGzip, kXz, kZstd, kQcow2 };

const char* ImageFormatName(ImageFormat format);  // "raw", "gzip", "xz", "zstd", "qcow2"

struct FormatOptions {
  // Where a qcow2 image is spooled and converted: a directory on the store's filesystem
  // with room for the qcow2 file plus its raw data. "" = $TMPDIR or /var/tmp.
  std::string scratch_dir;
  // Refuse images whose raw (decompressed / converted) size exceeds this; 0 = no limit.
  uint64_t max_raw_bytes = 0;
  // The source is this local file, read as is (no digest to check on the way): a qcow2
  // is then converted from it directly, without a spool copy.
  std::string local_path;
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
