// What the catalog says about a volume, a snapshot and an imported image: the plain
// descriptions Store's API returns (store.h) and the catalog records carry on disk
// (format.h encodes them inside its records).
//
// Thread-safety: plain values.
#pragma once

#include <cstdint>
#include <map>
#include <string>

namespace stellarium {

using Attributes = std::map<std::string, std::string>;

struct VolumeInfo {
  std::string id;            // "vol-" + 16 hex digits; stable for the volume's life
  std::string name;          // unique among volumes
  uint64_t size_bytes = 0;   // virtual size, a multiple of block_size
  uint32_t block_size = 0;
  std::string source_kind;   // "" (blank), "snapshot", "volume" or "image"
  std::string source_id;     // snapshot id, volume id or image digest (hex)
  int64_t created_unix_ns = 0;
  Attributes attributes;     // caller's parameters, compared on idempotent re-create
};

struct SnapshotInfo {
  std::string id;            // "snap-" + 16 hex digits
  std::string name;          // unique among snapshots
  std::string source_volume_id;
  uint64_t size_bytes = 0;   // the volume's size when the snapshot was taken
  uint32_t block_size = 0;
  int64_t created_unix_ns = 0;
};

struct ImageInfo {
  std::string digest;        // hex content digest (see docs/FORMAT.md, "images")
  uint64_t size_bytes = 0;
  uint32_t block_size = 0;
  std::string origin;        // where it was imported from (a path), informational
  int64_t created_unix_ns = 0;
};

}  // namespace stellarium
