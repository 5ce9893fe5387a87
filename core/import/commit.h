// ImportCommit: the import's catalog steps, on the importing thread, each one guarded
// catalog transaction:
//   - Existing(): idempotency by volume name (a volume of that name over an image, with
//     the same attributes, block size and size, is the answer; another is ALREADY_EXISTS);
//   - Begin(): the layer to fill, in state kImporting (dead at the next open if the
//     process dies before Finish). When an image of the same size and block size was
//     imported before, the new layer sits on it and the import stores only the blocks
//     that differ (a delta): base_chain() is then that image's chain;
//   - Abandon(): the layer dies (gc drops its entries and their references);
//   - Finish(): the layer becomes the image's (or, when the same content was imported
//     before, dies and the volume clones the first), the image record and the volume
//     are created, all in one synced batch.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "core/store_impl.h"

namespace stellarium::import {

class ImportCommit {
 public:
  ImportCommit(StoreImpl& store, const CreateVolumeRequest& req, uint32_t block_size,
               std::string what)
      : s_(store), req_(req), bs_(block_size), what_(std::move(what)) {}

  // The result of an import done before under this volume name, if any.
  Result<std::optional<ImportResult>> Existing();
  // known_size: the source's size when known before reading (a delta needs it).
  Status Begin(std::optional<uint64_t> known_size);
  uint64_t layer() const { return layer_; }
  const std::vector<uint64_t>& base_chain() const { return base_chain_; }
  // Returns st, annotated when the cleanup failed too.
  Status Abandon(Status st);
  // Commits the import of `blocks` blocks with content digest `digest`, from `origin`.
  Result<VolumeInfo> Finish(const ChunkId& digest, uint64_t blocks, const std::string& origin,
                            bool* reused_image);

 private:
  // The newest image of `size` bytes and this block size with a short enough chain.
  Result<uint64_t> FindBase(uint64_t size);

  StoreImpl& s_;
  const CreateVolumeRequest& req_;
  const uint32_t bs_;
  const std::string what_;
  uint64_t layer_ = 0;
  std::vector<uint64_t> base_chain_;
};

}  // namespace stellarium::import
