#include "core/import/commit.h"

#include <algorithm>

namespace stellarium::import {

using format::LayerRecord;
using format::LayerState;

Result<std::optional<ImportResult>> ImportCommit::Existing() {
  std::lock_guard lock(s_.catalog_mu);
  ASSIGN_OR_RETURN(auto id, s_.IdOfName<format::VolumeRecord>(req_.name));
  if (!id) return std::optional<ImportResult>();
  ASSIGN_OR_RETURN(auto rec, s_.Load<format::VolumeRecord>(*id));
  if (rec && rec->info.source_kind == "image" && rec->info.attributes == req_.attributes &&
      rec->info.block_size == bs_ &&
      (req_.size_bytes == 0 || rec->info.size_bytes == (req_.size_bytes + bs_ - 1) / bs_ * bs_)) {
    ImportResult r;
    r.volume = rec->info;
    r.summary.image_digest = rec->info.source_id;
    r.summary.reused_image = true;
    return std::optional<ImportResult>(std::move(r));
  }
  return Status::AlreadyExists("volume " + req_.name + " already exists (" + *id +
                               ") with other parameters");
}

Result<uint64_t> ImportCommit::FindBase(uint64_t size) {
  uint64_t base = 0;
  int64_t newest = -1;
  RETURN_IF_ERROR(s_.catalog().Scan(Table::kImages, [&](std::string_view key, std::string_view v) {
    auto img = format::DecodeImage(key, v);
    if (!img.ok() || img->info.block_size != bs_ || img->info.size_bytes != size) return Status::Ok();
    if (img->info.created_unix_ns <= newest) return Status::Ok();
    auto chain = s_.LoadChain(img->layer);
    if (!chain.ok() || chain->size() >= std::max<size_t>(2, s_.options.max_chain_depth / 2))
      return Status::Ok();
    newest = img->info.created_unix_ns;
    base = img->layer;
    base_chain_ = std::move(chain).value();
    return Status::Ok();
  }));
  return base;
}

Status ImportCommit::Begin(std::optional<uint64_t> known_size) {
  std::lock_guard lock(s_.catalog_mu);
  uint64_t base = 0;
  if (known_size) {
    ASSIGN_OR_RETURN(base, FindBase((*known_size + bs_ - 1) / bs_ * bs_));
  }
  CatalogTxn txn(*s_.backend);
  if (base != 0) {
    ASSIGN_OR_RETURN(LayerRecord * b, s_.TxnLayer(&txn, base));
    ++b->refs;
  }
  layer_ = s_.NewLayer(&txn, base, LayerState::kImporting, bs_, 0);
  txn.layers[layer_].owner = s_.backend->client_id();  // recovery leaves a live owner's alone
  return s_.Commit(&txn, what_ + ": begin import");
}

Status ImportCommit::Abandon(Status st) {
  s_.full_gc_needed = true;  // bytes it ingested are named by no chunk: a full pass finds them
  std::lock_guard lock(s_.catalog_mu);
  CatalogTxn txn(*s_.backend);
  Status c = s_.KillLayer(&txn, layer_);
  if (c.ok()) c = s_.Commit(&txn, what_ + ": abandon import");
  if (!c.ok()) return st.Annotate("(cleanup failed: " + c.message() + ")");
  return st;
}

Result<VolumeInfo> ImportCommit::Finish(const ChunkId& digest, uint64_t blocks,
                                        const std::string& origin, bool* reused_image) {
  std::lock_guard lock(s_.catalog_mu);
  CatalogTxn txn(*s_.backend);
  ASSIGN_OR_RETURN(auto existing_img, s_.Load<format::ImageRecord>(AsBytes(digest), &txn));
  uint64_t base = layer_;
  ASSIGN_OR_RETURN(LayerRecord * mine, s_.TxnLayer(&txn, layer_));
  if (existing_img) {
    // Same bytes imported before: our copy goes (gc), the volume clones the first. Bytes
    // this import stored while another stored the same are named by no chunk.
    RETURN_IF_ERROR(s_.KillLayer(&txn, layer_));
    s_.full_gc_needed = true;
    base = existing_img->layer;
    *reused_image = true;
  } else {
    mine->state = LayerState::kFrozen;
    mine->image_digest = std::string(AsBytes(digest));
    mine->owner.clear();
    format::ImageRecord img;
    img.layer = layer_;
    img.info.size_bytes = blocks * bs_;
    img.info.block_size = bs_;
    img.info.origin = origin;
    img.info.created_unix_ns = NowUnixNs();
    s_.catalog().Put(txn.batch.get(), Table::kImages, AsBytes(digest), format::EncodeImage(img));
  }
  format::VolumeRecord rec;
  bool existing = false;
  Status st = s_.StageVolume(&txn, req_, base, bs_, blocks * bs_, "image", ToHex(digest), &rec,
                             &existing);
  if (st.ok() && existing) st = Status::Aborted("volume " + req_.name + " was created concurrently");
  if (!st.ok()) {
    s_.full_gc_needed = true;
    CatalogTxn dead(*s_.backend);
    if (s_.KillLayer(&dead, layer_).ok()) (void)s_.Commit(&dead, what_ + ": abandon import");
    return st;
  }
  RETURN_IF_ERROR(s_.Commit(&txn, what_ + ": commit import"));
  return rec.info;
}

}  // namespace stellarium::import
