// A streaming qcow2 reader: an ImageSource that reads a qcow2 file front to back, once,
// from any forward-only source (a download, a decompressor, a local file) and yields the
// raw guest image in increasing guest-offset order, as Store::ImportImage wants it.
//
// Why: converting a download with `qemu-img convert` costs three passes (spool, convert,
// import) and the scratch space of the whole image. Most qcow2 files (everything
// `qemu-img convert` writes, most cloud images) have the L1 table near the start, each
// L2 table before the data it maps, and data clusters in guest order: those are emitted
// as they stream by, straight into the caller's buffer. Whatever arrives before it can be
// emitted (data before its L2 table, data ahead of the guest offset being emitted,
// bytes an unread table may still refer to) waits in a ReorderBuffer (memory up to
// `reorder_memory_bytes`, then a scratch file): any valid layout is read correctly, the
// worst one (L1 table at the end) by spooling the file once, as before.
//
// The format is QEMU's docs/interop/qcow2.txt; docs/IMAGES.md says what is supported:
//   - versions 2 and 3, cluster sizes 512 B .. 2 MiB, the v3 header's compression type
//     (zlib = raw deflate, zstd), compressed clusters (byte ranges that may straddle and
//     share host clusters), the v3 "reads as zeros" flag, extended L2 entries
//     (subclusters);
//   - the refcount table and blocks are read only to learn when no unread table can
//     still refer to a host cluster (so its bytes need not be kept); snapshots, bitmaps
//     and clusters the active L1 table does not reach are skipped.
// Refused with INVALID_ARGUMENT naming the source: a backing file, encryption, an
// external data file, the corrupt bit, unknown incompatible features or compression
// types, malformed tables (reserved bits, unaligned offsets, an L1 table too small for
// the virtual size, tables or data in the header cluster or overlapping a table), tables
// or data past the end of the file (a truncated image), corrupt compressed clusters, and
// data the image's refcounts wrongly said nothing else refers to.
//
// The inner source is always read to its end, also after the last guest byte, because a
// download checks its digest there (a mismatch fails Next() instead of end-of-stream).
//
// Thread-safety: one reader at a time, like any ImageSource.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "core/store.h"

namespace stellarium {

// What a qcow2 read did, for tests and benchmarks; updated as the source is read.
struct Qcow2Stats {
  uint64_t file_bytes = 0;           // bytes of the qcow2 file read so far
  uint64_t direct_bytes = 0;         // guest data read straight into the caller's buffer
  uint64_t buffered_bytes = 0;       // bytes put in the reorder buffer (memory or disk)
  uint64_t spilled_bytes = 0;        // of those, written to the scratch file
  uint64_t peak_buffered_bytes = 0;  // most bytes held at once
  uint64_t peak_memory_bytes = 0;    // most buffer memory at once
  uint64_t compressed_clusters = 0;  // clusters decompressed
};

struct Qcow2Options {
  // Where the reorder buffer's scratch file goes once memory is full ("" = $TMPDIR or
  // /var/tmp). The file is unlinked when created.
  std::string scratch_dir;
  uint64_t reorder_memory_bytes = 64ull << 20;
  // Memory for L2 tables read before the data they map and for the index of that data
  // (about 8 + 64 bytes per allocated cluster). The usual layout needs a few L2 tables
  // at a time; a file whose L2 tables all come before the data needs them all. Beyond
  // this the image is refused (INVALID_ARGUMENT).
  uint64_t max_table_memory_bytes = 512ull << 20;
  Qcow2Stats* stats = nullptr;  // optional; not owned; must outlive the source
};

// The virtual size from a qcow2 header (`head`: the first bytes of the file, 512 are
// plenty), with the checks that need no more than the header: version, backing file,
// encryption, external data file, feature bits, cluster size, compression type.
// INVALID_ARGUMENT naming `what` ("image /x.qcow2") otherwise.
Result<uint64_t> Qcow2VirtualSize(const std::string& head, const std::string& what);

// Wraps `file`, a stream of a qcow2 file from its first byte, whose first bytes are
// `head`. Size() is the virtual size. Errors as above.
Result<std::unique_ptr<ImageSource>> OpenQcow2Source(std::unique_ptr<ImageSource> file,
                                                     const std::string& head,
                                                     const Qcow2Options& options);

}  // namespace stellarium
