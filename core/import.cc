// ImportImage: the import pipeline.
//
//   reader thread  -> segments (a few MiB of the image, holes marked, never read)
//   workers        -> per block: zero test, SHA-256; then the segment's new chunks,
//                     map entries and reference counts in one batch written without
//                     the WAL (one worker per core, writing concurrently)
//   this thread    -> in image order: the image's content digest, the summary, progress
//
// Durability: data batches skip the WAL (the store uses atomic_flush), so after the
// last batch the importer flushes every memtable and only then commits, in one synced
// batch, the layer's state, the image record and the volume. A crash before that commit
// leaves a layer in kImporting, which the next Open() declares dead; gc then drops its
// map entries and references. Memory is bounded by the number of segments in flight.
#include <condition_variable>
#include <chrono>
#include <deque>
#include <map>
#include <queue>
#include <thread>
#include <unordered_map>
#include <unordered_set>

#include "core/store_impl.h"

namespace stellarium {

using format::LayerRecord;
using format::LayerState;

namespace {

struct Segment {
  uint64_t seq = 0;
  uint64_t first_block = 0;
  size_t nblocks = 0;
  std::string buf;                 // nblocks * block size
  std::vector<uint32_t> hole_bytes;  // per block: bytes known to be zero without reading
  std::vector<ChunkId> ids;
  std::vector<uint8_t> zero;       // per block: 1 when all zero
  std::vector<uint8_t> is_new;     // per block: 1 when this import stored its chunk
  uint64_t dup = 0;                // blocks already stored (or in the base image)
};

// A bounded hand-off queue between pipeline stages.
template <typename T>
class Channel {
 public:
  void Push(T v) {
    std::lock_guard l(mu_);
    q_.push_back(std::move(v));
    cv_.notify_one();
  }
  // False when closed and drained.
  bool Pop(T* out) {
    std::unique_lock l(mu_);
    cv_.wait(l, [&] { return !q_.empty() || closed_; });
    if (q_.empty()) return false;
    *out = std::move(q_.front());
    q_.pop_front();
    return true;
  }
  void Close() {
    std::lock_guard l(mu_);
    closed_ = true;
    cv_.notify_all();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<T> q_;
  bool closed_ = false;
};

struct SeqLess {
  bool operator()(const std::unique_ptr<Segment>& a, const std::unique_ptr<Segment>& b) const {
    return a->seq > b->seq;
  }
};

}  // namespace

Result<ImportResult> Store::ImportImage(ImageSource& source, const ImportOptions& opts) {
  StoreImpl& s = *impl_;
  const auto started = std::chrono::steady_clock::now();
  const CreateVolumeRequest& req = opts.volume;
  const uint32_t bs = req.block_size ? req.block_size : s.options.default_block_size;
  const std::string what = "image " + source.Describe();
  RETURN_IF_ERROR(ValidateBlockSize(bs).Annotate(what));
  if (req.name.empty()) return Status::InvalidArgument(what + ": volume name is empty");

  // Idempotent by volume name: an existing volume with the same attributes is the answer.
  {
    std::lock_guard lock(s.catalog_mu);
    ASSIGN_OR_RETURN(auto id, s.db->Get(Cf::kNames, format::VolumeNameKey(req.name), what));
    if (id) {
      ASSIGN_OR_RETURN(auto rec, s.LoadVolume(*id));
      if (rec && rec->info.source_kind == "image" && rec->info.attributes == req.attributes &&
          rec->info.block_size == bs && (req.size_bytes == 0 || rec->info.size_bytes ==
                                         (req.size_bytes + bs - 1) / bs * bs)) {
        ImportResult r;
        r.volume = rec->info;
        r.summary.image_digest = rec->info.source_id;
        r.summary.reused_image = true;
        return r;
      }
      return Status::AlreadyExists("volume " + req.name + " already exists (" + *id +
                                   ") with other parameters");
    }
  }
  std::optional<uint64_t> known_size = source.Size();
  if (known_size) {
    if (*known_size == 0) return Status::InvalidArgument(what + ": image is empty");
    if (*known_size % bs != 0 && !opts.pad_to_block) {
      return Status::InvalidArgument(what + ": size " + std::to_string(*known_size) +
                                     " is not a multiple of block size " + std::to_string(bs) +
                                     " (pad the image, or choose a smaller block size)");
    }
    uint64_t rounded = (*known_size + bs - 1) / bs * bs;
    if (req.size_bytes != 0 && req.size_bytes < rounded) {
      return Status::OutOfRange(what + ": image size " + std::to_string(rounded) +
                                " is larger than the requested volume size " +
                                std::to_string(req.size_bytes));
    }
  }

  // The layer being filled; dead at the next open if we crash before committing.
  // When an image of the same size and block size was imported before, the new layer
  // sits on top of it and stores only the blocks that differ: a new version of an image
  // costs its changed blocks, not a second block map.
  uint64_t layer;
  std::vector<uint64_t> base_chain;
  {
    std::lock_guard lock(s.catalog_mu);
    uint64_t base = 0;
    if (known_size) {
      const uint64_t rounded = (*known_size + bs - 1) / bs * bs;
      int64_t newest = -1;
      auto it = s.db->NewIterator(Cf::kImages);
      for (it->SeekToFirst(); it->Valid(); it->Next()) {
        auto img = format::DecodeImage(it->key().ToStringView(), it->value().ToStringView());
        if (!img.ok() || img->info.block_size != bs || img->info.size_bytes != rounded) continue;
        if (img->info.created_unix_ns <= newest) continue;
        auto chain = s.LoadChain(img->layer);
        if (!chain.ok() || chain->size() >= std::max<size_t>(2, s.options.max_chain_depth / 2)) continue;
        newest = img->info.created_unix_ns;
        base = img->layer;
        base_chain = std::move(chain).value();
      }
    }
    CatalogTxn txn;
    if (base != 0) {
      ASSIGN_OR_RETURN(LayerRecord * b, s.TxnLayer(&txn, base));
      ++b->refs;
    }
    layer = s.NewLayer(&txn, base, LayerState::kImporting, bs, 0);
    RETURN_IF_ERROR(s.Commit(&txn, what + ": begin import"));
  }
  // Until this import's unlogged writes are flushed, a logged write must not rely on
  // a chunk it stored (StoreImpl::unflushed_imports).
  UnflushedImport unflushed(&s);
  auto abandon = [&](Status st) -> Status {
    if (s.db->FlushAll().ok()) unflushed.Flushed();
    std::lock_guard lock(s.catalog_mu);
    CatalogTxn txn;
    Status c = s.KillLayer(&txn, layer);
    if (c.ok()) c = s.Commit(&txn, what + ": abandon import");
    if (!c.ok()) return st.Annotate("(cleanup failed: " + c.message() + ")");
    return st;
  };

  const size_t blocks_per_segment = std::max<size_t>(4, (4u << 20) / bs);
  const size_t seg_bytes = blocks_per_segment * bs;
  unsigned threads = opts.hash_threads ? opts.hash_threads
                                       : std::max(1u, std::thread::hardware_concurrency());
  const size_t max_in_flight = 2 * threads + 2;

  Channel<std::unique_ptr<Segment>> free_q, work_q, done_q;
  for (size_t i = 0; i < max_in_flight; ++i) free_q.Push(std::make_unique<Segment>());

  std::atomic<bool> stop{false};
  Status read_status;
  uint64_t total_read = 0;

  std::thread reader([&] {
    uint64_t seq = 0, block = 0;
    bool eof = false;
    while (!eof && !stop.load()) {
      std::unique_ptr<Segment> seg;
      if (!free_q.Pop(&seg)) break;
      seg->seq = seq++;
      seg->first_block = block;
      seg->buf.resize(seg_bytes);
      seg->hole_bytes.assign(blocks_per_segment, 0);
      size_t filled = 0;
      while (filled < seg_bytes) {
        bool hole = false;
        auto n = source.Next(seg->buf.data() + filled, seg_bytes - filled, &hole);
        if (!n.ok()) {
          read_status = n.status();
          stop = true;
          break;
        }
        if (*n == 0) {
          eof = true;
          break;
        }
        if (hole) {
          // Count the hole per block; zero-fill only blocks it covers partly.
          for (size_t off = filled; off < filled + *n;) {
            size_t b = off / bs;
            size_t end = std::min<size_t>((b + 1) * bs, filled + *n);
            seg->hole_bytes[b] += end - off;
            if (end - off != bs) std::memset(seg->buf.data() + off, 0, end - off);
            off = end;
          }
        }
        filled += *n;
      }
      if (stop.load()) break;
      total_read += filled;
      if (filled % bs != 0) {
        if (!opts.pad_to_block) {
          read_status = Status::InvalidArgument(
              what + ": size " + std::to_string(total_read) + " is not a multiple of block size " +
              std::to_string(bs) + " (pad the image, or choose a smaller block size)");
          stop = true;
          break;
        }
        size_t padded = (filled + bs - 1) / bs * bs;
        std::memset(seg->buf.data() + filled, 0, padded - filled);
        filled = padded;
      }
      seg->nblocks = filled / bs;
      block += seg->nblocks;
      if (seg->nblocks == 0) break;
      work_q.Push(std::move(seg));
    }
    work_q.Close();
  });

  // Shared by the workers: chunks this import is writing right now, so that two
  // segments holding the same new block store it once. An id leaves the set when its
  // batch is written; Contains() sees it from then on. (A worker that checked Contains()
  // just before another's batch landed and the set just after may store the block a
  // second time: harmless, the same bytes under the same key, but counted twice in the
  // summary's new_chunks.)
  std::mutex inflight_mu;
  std::unordered_set<std::string> inflight;
  std::mutex status_mu;
  Status write_status;
  auto fail = [&](Status st) {
    std::lock_guard l(status_mu);
    if (write_status.ok()) write_status = std::move(st);
    stop = true;
  };

  // Worker: hash every block, then write the segment's new chunks, map entries and
  // reference counts in one unlogged batch. Workers write concurrently (the map keys of
  // different segments never collide).
  auto process = [&](Segment& seg) -> Status {
    seg.ids.resize(seg.nblocks);
    seg.zero.assign(seg.nblocks, 0);
    seg.is_new.assign(seg.nblocks, 0);
    seg.dup = 0;
    for (size_t i = 0; i < seg.nblocks; ++i) {
      const char* p = seg.buf.data() + i * bs;
      if (seg.hole_bytes[i] == bs || IsAllZero(p, bs)) {
        seg.zero[i] = 1;
      } else {
        seg.ids[i] = Sha256(p, bs);
      }
    }
    // The base image's view of this segment, when the import is a delta over it.
    std::unordered_map<uint64_t, std::string> base_view;
    if (!base_chain.empty()) {
      RETURN_IF_ERROR(s.ResolveRange(base_chain, seg.first_block, seg.first_block + seg.nblocks,
                                     [&](uint64_t b, std::string_view v) {
                                       base_view.emplace(b, std::string(v));
                                       return Status::Ok();
                                     }));
    }
    std::shared_lock sweep(s.chunks->sweep_lock());
    // First decide which blocks bring new chunks, then place those next to each other.
    enum Kind : uint8_t { kSkip, kZeroOverBase, kDup, kNew };
    std::vector<uint8_t> kind(seg.nblocks, kSkip);
    std::vector<uint64_t> hint(seg.nblocks, 0);  // where each chunk's bytes are
    std::vector<std::string> mine;  // ids this segment put in `inflight`
    for (size_t i = 0; i < seg.nblocks; ++i) {
      auto in_base = base_view.find(seg.first_block + i);
      bool base_has_data = in_base != base_view.end() && !format::IsZeroMarker(in_base->second);
      if (seg.zero[i]) {
        if (base_has_data) kind[i] = kZeroOverBase;
        continue;
      }
      const ChunkId& id = seg.ids[i];
      if (base_has_data && format::MapValueId(in_base->second) == AsBytes(id)) {
        ++seg.dup;  // the base image has this very block here: nothing to write
        continue;
      }
      ASSIGN_OR_RETURN(hint[i], s.chunks->Locate(id));
      kind[i] = kDup;
      if (hint[i] == 0) {
        std::string key(AsBytes(id));
        std::lock_guard l(inflight_mu);
        if (inflight.insert(key).second) {
          kind[i] = kNew;
          mine.push_back(std::move(key));
        }
      }
    }
    Placement place = s.chunks->Reserve(mine.size());
    Txn batch;
    for (size_t i = 0; i < seg.nblocks; ++i) {
      const std::string key = format::MapKey(layer, seg.first_block + i);
      const ChunkId& id = seg.ids[i];
      switch (kind[i]) {
        case kSkip:
          continue;
        case kZeroOverBase:
          batch.Put(s.db->cf(Cf::kMaps), key, "");
          continue;
        case kNew:
          seg.is_new[i] = 1;
          hint[i] = s.chunks->AddRef(&batch, id, std::string_view(seg.buf.data() + i * bs, bs), &place);
          break;
        case kDup:
          ++seg.dup;
          s.chunks->AddRef(&batch, id, {});
          break;
      }
      batch.Put(s.db->cf(Cf::kMaps), key, format::EncodeMapValue(id, hint[i]));
    }
    Status w = s.db->Write(&batch, WriteMode::kNoWal, what + ": write chunks");
    std::lock_guard l(inflight_mu);
    for (const auto& k : mine) inflight.erase(k);
    return w;
  };

  std::vector<std::thread> workers;
  std::atomic<unsigned> workers_left{threads};
  for (unsigned t = 0; t < threads; ++t) {
    workers.emplace_back([&] {
      std::unique_ptr<Segment> seg;
      while (work_q.Pop(&seg)) {
        if (!stop.load()) {
          Status st = process(*seg);
          if (!st.ok()) fail(st);
        }
        done_q.Push(std::move(seg));
      }
      if (--workers_left == 0) done_q.Close();
    });
  }

  // In image order: the content digest, the summary, progress and cancellation.
  ImportSummary sum;
  Sha256Stream digest;
  digest.Update(format::kImageDigestTag.data(), format::kImageDigestTag.size());
  uint64_t next_seq = 0;
  std::priority_queue<std::unique_ptr<Segment>, std::vector<std::unique_ptr<Segment>>, SeqLess> pending;
  const ChunkId kZeroId{};
  auto last_progress = std::chrono::steady_clock::now();

  std::unique_ptr<Segment> seg;
  while (done_q.Pop(&seg)) {
    pending.push(std::move(seg));
    while (!pending.empty() && pending.top()->seq == next_seq) {
      std::unique_ptr<Segment> cur = std::move(const_cast<std::unique_ptr<Segment>&>(pending.top()));
      pending.pop();
      ++next_seq;
      if (!stop.load()) {
        for (size_t i = 0; i < cur->nblocks; ++i) {
          ++sum.blocks;
          if (cur->zero[i]) {
            ++sum.zero_blocks;
            digest.Update(kZeroId.data(), kZeroId.size());
            continue;
          }
          digest.Update(cur->ids[i].data(), kChunkIdSize);
          if (cur->is_new[i]) {
            ++sum.new_chunks;
            sum.bytes_added += bs;
          }
        }
        sum.duplicate_blocks += cur->dup;
        if (opts.cancel && opts.cancel->load()) fail(Status(StatusCode::kCancelled, what + ": import cancelled"));
      }
      sum.raw_bytes += cur->nblocks * bs;
      auto now = std::chrono::steady_clock::now();
      if (opts.progress && now - last_progress > std::chrono::milliseconds(200)) {
        last_progress = now;
        opts.progress(Progress{sum.raw_bytes, known_size.value_or(0)});
      }
      free_q.Push(std::move(cur));
    }
  }
  stop = true;
  free_q.Close();
  reader.join();
  for (auto& t : workers) t.join();

  if (!read_status.ok()) return abandon(read_status.Annotate("import"));
  if (!write_status.ok()) return abandon(write_status);
  if (sum.blocks == 0) return abandon(Status::InvalidArgument(what + ": image is empty"));
  sum.raw_bytes = known_size && !opts.pad_to_block ? *known_size : sum.blocks * bs;
  if (opts.progress) opts.progress(Progress{sum.raw_bytes, sum.raw_bytes});

  // Content digest: tag, block size, size, then the per-block ids (fed above).
  ChunkId image_digest;
  {
    Sha256Stream full;
    full.Update(format::kImageDigestTag.data(), format::kImageDigestTag.size());
    std::string hdr = format::EncodeU64(bs).substr(0, 4) + format::EncodeU64(sum.blocks * bs);
    full.Update(hdr.data(), hdr.size());
    ChunkId body = digest.Finish();
    full.Update(body.data(), body.size());
    image_digest = full.Finish();
  }
  sum.image_digest = ToHex(image_digest);

  // Make the unlogged data durable before anything refers to it.
  Status fs = s.db->FlushAll();
  if (!fs.ok()) return abandon(fs);
  unflushed.Flushed();

  ImportResult result;
  {
    std::lock_guard lock(s.catalog_mu);
    CatalogTxn txn;
    ASSIGN_OR_RETURN(auto existing_img, s.db->Get(Cf::kImages, AsBytes(image_digest), what));
    uint64_t base = layer;
    ASSIGN_OR_RETURN(LayerRecord * mine, s.TxnLayer(&txn, layer));
    if (existing_img) {
      // Same bytes imported before: our copy goes (gc), the volume clones the first.
      ASSIGN_OR_RETURN(auto img, format::DecodeImage(AsBytes(image_digest), *existing_img));
      RETURN_IF_ERROR(s.KillLayer(&txn, layer));
      base = img.layer;
      sum.reused_image = true;
    } else {
      mine->state = LayerState::kFrozen;
      mine->image_digest = std::string(AsBytes(image_digest));
      format::ImageRecord img;
      img.layer = layer;
      img.info.size_bytes = sum.blocks * bs;
      img.info.block_size = bs;
      img.info.origin = source.Describe();
      img.info.created_unix_ns = NowUnixNs();
      txn.batch.Put(s.db->cf(Cf::kImages), AsBytes(image_digest), format::EncodeImage(img));
    }
    format::VolumeRecord rec;
    bool existing = false;
    Status st = s.StageVolume(&txn, req, base, bs, sum.blocks * bs, "image", sum.image_digest, &rec,
                              &existing);
    if (st.ok() && existing) st = Status::Aborted("volume " + req.name + " was created concurrently");
    if (!st.ok()) {
      CatalogTxn dead;
      if (s.KillLayer(&dead, layer).ok()) (void)s.Commit(&dead, what + ": abandon import");
      return st;
    }
    RETURN_IF_ERROR(s.Commit(&txn, what + ": commit import"));
    result.volume = rec.info;
  }
  sum.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  result.summary = sum;
  return result;
}

}  // namespace stellarium
