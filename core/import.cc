// ImportImage: the import pipeline.
//
//   reader thread  -> segments (1 MiB of the image, holes marked, never read)
//   workers        -> per block: zero test, SHA-256 (many blocks at once,
//                     core/sha256.h), the base image's entry (a delta import), and one
//                     MultiGet of the chunk index for the segment (one worker per core)
//   this thread    -> in image order: which blocks bring new chunks (the first
//                     occurrence, in image order, of a chunk the store lacks) and their
//                     locators (consecutive, in image order), the map entries and the
//                     reference counts; the image's content digest, the summary,
//                     progress
//   data writers   -> a data period's new chunk bytes (16 MiB) into a table file,
//                     ingested (two threads, a period each)
//   index writer   -> the map entries into a table file; at the end of an index period
//                     (512 Ki map entries, and at the end) the chunk index records (a
//                     chunk's references of the period summed into one operand) into
//                     another (two, each half staged by a thread, for a large period),
//                     all ingested together once the data periods before them are
//
// Ingesting (Db's IngestBatch: table files built in key order, no memtable, no WAL)
// makes a table durable and visible in one step. So the index never names bytes that
// are not in the store, and map entries never exist without the counts they hold.
//
// Durability: after the last ingest the importer commits, in one synced batch, the
// layer's state, the image record and the volume. A crash before that commit leaves a
// layer in kImporting, which the next Open() declares dead; gc then drops its map
// entries with the references they hold, and the chunk bytes nothing names. The import
// holds the chunk store's sweep lock shared from its first index lookup to its last
// ingest, so gc (which takes it exclusively) waits for a running import rather than
// deleting bytes the import is about to index.
// Memory is bounded by the segments, data periods and index work in flight, the index
// period's table of chunks and the table of ids this import has met (kKnownCap).
#include <absl/container/flat_hash_map.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <map>
#include <queue>
#include <set>
#include <thread>
#include <unordered_map>

#include "core/store_impl.h"
#include "core/thread_name.h"

namespace stellarium {

using format::LayerRecord;
using format::LayerState;

namespace {

// What a block is, decided by a worker.
enum BlockKind : uint8_t {
  kSkip,          // all zero with nothing under it, or the same chunk as the base image
  kZeroOverBase,  // all zero over a base image block with data: a zero marker
  kData,          // a chunk to reference (or to store, when the store lacks it)
};

struct Segment {
  uint64_t seq = 0;
  uint64_t first_block = 0;
  size_t nblocks = 0;
  std::string buf;                   // nblocks * block size
  std::vector<uint32_t> hole_bytes;  // per block: bytes known to be zero without reading
  std::vector<ChunkId> ids;
  std::vector<uint8_t> zero;      // per block: 1 when all zero
  std::vector<uint8_t> kind;      // per block: a BlockKind
  std::vector<uint64_t> located;  // per kData block: its locator in the store, or 0
  uint64_t same_as_base = 0;      // blocks the base image already has
};

struct ChunkIdHash {
  size_t operator()(const ChunkId& id) const {
    size_t h;
    std::memcpy(&h, id.data(), sizeof h);  // a SHA-256 is uniform already
    return h;
  }
};

// A chunk of the current index period: how many references the period adds, and for
// a chunk this import stores, the locator its bytes got (0 for a chunk stored before).
struct PeriodRef {
  int64_t count = 0;
  uint64_t stored_at = 0;
  uint64_t hint = 0;  // where the bytes are, for map entries
};

struct MapEntry {
  uint64_t block = 0;
  ChunkId id{};
  uint64_t hint = 0;
  bool zero = false;  // an explicit zero marker
};

// One data period: the new chunks' bytes (one block each, back to back) and their
// locators, written into one table by one of the data writers.
struct DataWork {
  uint64_t period = 0;  // data periods are numbered from 0 in image order
  std::string bytes;
  std::vector<uint64_t> locators;
  void Clear() {
    bytes.clear();
    locators.clear();
  }
};

// What the decisions about one segment produce for the index writer: map entries, and
// at the end of an index period the period's chunks and how many data periods must be
// ingested before them.
struct IndexWork {
  std::vector<MapEntry> maps;  // in block order
  bool end_index_period = false;
  uint64_t data_periods = 0;  // with end_index_period: data periods [0, this) first
  std::vector<std::pair<ChunkId, PeriodRef>> refs;
  void Clear() {
    maps.clear();
    end_index_period = false;
    refs.clear();
  }
};

// Chunk bytes are ingested every data period (a table of their own, straight into the
// bottom level), by kDataWriters threads in parallel; map entries and index records
// every index period (two tables ingested together, after the data periods they name).
// ImportOptions sets both periods. Few, large index tables keep the "is this chunk
// stored?" lookups cheap; the index period's chunk table is the memory it costs.
constexpr uint64_t kDefaultDataPeriodBytes = 16u << 20;
constexpr uint64_t kDefaultIndexPeriodBlocks = 512u << 10;
constexpr size_t kKnownCap = 512u << 10;  // ids remembered across index periods
constexpr size_t kPlacementRun = 16384;   // locators reserved at a time
constexpr unsigned kDataWriters = 2;
constexpr size_t kDataWorkInFlight = kDataWriters + 1;  // one being filled
constexpr size_t kIndexWorkInFlight = 8;
constexpr size_t kSplitRefs = 16384;  // index records staged by two threads from this many

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
          rec->info.block_size == bs &&
          (req.size_bytes == 0 || rec->info.size_bytes == (req.size_bytes + bs - 1) / bs * bs)) {
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
        if (!chain.ok() || chain->size() >= std::max<size_t>(2, s.options.max_chain_depth / 2))
          continue;
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
  auto abandon = [&](Status st) -> Status {
    std::lock_guard lock(s.catalog_mu);
    CatalogTxn txn;
    Status c = s.KillLayer(&txn, layer);
    if (c.ok()) c = s.Commit(&txn, what + ": abandon import");
    if (!c.ok()) return st.Annotate("(cleanup failed: " + c.message() + ")");
    return st;
  };

  // 1 MiB segments: a segment is still in the cache when a worker hashes it (4 MiB ones
  // cost 7% more CPU on a 1 GiB import).
  const size_t blocks_per_segment = std::max<size_t>(4, (1u << 20) / bs);
  const size_t seg_bytes = blocks_per_segment * bs;
  unsigned threads =
      opts.hash_threads ? opts.hash_threads : std::max(1u, std::thread::hardware_concurrency());
  const size_t max_in_flight = 2 * threads + 2;

  Channel<std::unique_ptr<Segment>> free_q, work_q, done_q;
  for (size_t i = 0; i < max_in_flight; ++i) free_q.Push(std::make_unique<Segment>());

  std::atomic<bool> stop{false};
  Status read_status;
  uint64_t total_read = 0;

  std::thread reader([&] {
    NameThisThread("stl-imp-read");
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

  std::mutex status_mu;
  Status write_status;
  auto fail = [&](Status st) {
    std::lock_guard l(status_mu);
    if (write_status.ok()) write_status = std::move(st);
    stop = true;
  };

  // Held shared until the last table is ingested: the locators the workers find, and
  // the bytes this import ingests before its index records name them, must not be
  // swept meanwhile.
  std::shared_lock sweep(s.chunks->sweep_lock());

  // Worker: per block, zero or not, its SHA-256, what the base image has there; then
  // where the store keeps each chunk (one MultiGet for the segment).
  auto process = [&](Segment& seg) -> Status {
    seg.ids.resize(seg.nblocks);
    seg.zero.assign(seg.nblocks, 0);
    seg.kind.assign(seg.nblocks, kSkip);
    seg.located.assign(seg.nblocks, 0);
    seg.same_as_base = 0;
    // The non-zero blocks' SHA-256s, many at once (core/sha256.h).
    std::vector<std::string_view> data;
    std::vector<size_t> data_block;
    data.reserve(seg.nblocks);
    data_block.reserve(seg.nblocks);
    for (size_t i = 0; i < seg.nblocks; ++i) {
      const char* p = seg.buf.data() + i * bs;
      if (seg.hole_bytes[i] == bs || IsAllZero(p, bs)) {
        seg.zero[i] = 1;
      } else {
        data.emplace_back(p, bs);
        data_block.push_back(i);
      }
    }
    std::vector<ChunkId> digests(data.size());
    Sha256Many(data.data(), data.size(), digests.data());
    for (size_t k = 0; k < data.size(); ++k) seg.ids[data_block[k]] = digests[k];
    // The base image's view of this segment, when the import is a delta over it.
    std::unordered_map<uint64_t, std::string> base_view;
    if (!base_chain.empty()) {
      RETURN_IF_ERROR(s.ResolveRange(base_chain, seg.first_block, seg.first_block + seg.nblocks,
                                     [&](uint64_t b, std::string_view v) {
                                       base_view.emplace(b, std::string(v));
                                       return Status::Ok();
                                     }));
    }
    std::vector<ChunkId> lookup;
    std::vector<size_t> lookup_block;
    for (size_t i = 0; i < seg.nblocks; ++i) {
      auto in_base = base_view.find(seg.first_block + i);
      bool base_has_data = in_base != base_view.end() && !format::IsZeroMarker(in_base->second);
      if (seg.zero[i]) {
        if (base_has_data) seg.kind[i] = kZeroOverBase;
        continue;
      }
      if (base_has_data && format::MapValueId(in_base->second) == AsBytes(seg.ids[i])) {
        ++seg.same_as_base;  // the base image has this very block here: nothing to write
        continue;
      }
      seg.kind[i] = kData;
      lookup.push_back(seg.ids[i]);
      lookup_block.push_back(i);
    }
    std::vector<uint64_t> found;
    RETURN_IF_ERROR(s.chunks->LocateMany(lookup, &found).Annotate(what));
    for (size_t k = 0; k < lookup.size(); ++k) seg.located[lookup_block[k]] = found[k];
    return Status::Ok();
  };

  std::vector<std::thread> workers;
  std::atomic<unsigned> workers_left{threads};
  for (unsigned t = 0; t < threads; ++t) {
    workers.emplace_back([&] {
      NameThisThread("stl-imp-hash");
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

  // Data writers: each data period's chunk bytes into a table, ingested; periods finish
  // in any order, and `data_done` counts those finished without a gap.
  Channel<std::unique_ptr<DataWork>> data_free, data_q;
  for (size_t i = 1; i < kDataWorkInFlight; ++i) data_free.Push(std::make_unique<DataWork>());
  std::mutex data_mu;
  std::condition_variable data_cv;
  uint64_t data_done = 0;              // GUARDED_BY(data_mu)
  std::set<uint64_t> data_done_after;  // GUARDED_BY(data_mu): finished past a gap
  std::vector<std::thread> data_writers;
  for (unsigned t = 0; t < kDataWriters; ++t) {
    data_writers.emplace_back([&] {
      NameThisThread("stl-imp-data");
      std::unique_ptr<IngestBatch> batch = s.db->NewIngestBatch(what);
      auto write = [&](DataWork& d) -> Status {
        for (size_t k = 0; k < d.locators.size(); ++k) {
          RETURN_IF_ERROR(s.chunks->StageBytes(batch.get(), d.locators[k],
                                               std::string_view(d.bytes.data() + k * bs, bs)));
        }
        return batch->Ingest();
      };
      std::unique_ptr<DataWork> d;
      while (data_q.Pop(&d)) {
        if (!stop.load()) {
          Status st = write(*d);
          if (!st.ok()) fail(st);
        }
        {
          std::lock_guard l(data_mu);
          data_done_after.insert(d->period);
          while (!data_done_after.empty() && *data_done_after.begin() == data_done) {
            data_done_after.erase(data_done_after.begin());
            ++data_done;
          }
        }
        data_cv.notify_all();
        d->Clear();
        data_free.Push(std::move(d));
      }
    });
  }

  // Index writer: the map entries into a table; at the end of an index period, once the
  // data periods before it are ingested, the index records, and both tables ingested
  // together: the index never names bytes that are not stored.
  Channel<std::unique_ptr<IndexWork>> index_free, index_q;
  for (size_t i = 0; i < kIndexWorkInFlight; ++i) index_free.Push(std::make_unique<IndexWork>());
  std::thread index_writer([&] {
    NameThisThread("stl-imp-index");
    std::unique_ptr<IngestBatch> batch = s.db->NewIngestBatch(what);
    std::unique_ptr<IngestBatch> upper = s.db->NewIngestBatch(what);  // the upper half's records
    auto write = [&](IndexWork& w) -> Status {
      for (const MapEntry& m : w.maps) {
        RETURN_IF_ERROR(
            batch->Put(Cf::kMaps, format::MapKeyOf(layer, m.block).view(),
                       m.zero ? std::string_view() : format::MapValueOf(m.id, m.hint).view()));
      }
      if (!w.end_index_period) return Status::Ok();
      // The period's index records, in key order, in two halves side by side: ids below
      // 0x80 by this thread, the others by a helper into a table of their own (at the
      // end of an import the other core is often idle; both tables are ingested with the
      // map entries in one step). A SHA-256 is uniform, so its first 8 bytes (as a
      // big-endian number) order nearly all pairs: comparing those first is a third of
      // the time of memcmp.
      using Ref = std::pair<ChunkId, PeriodRef>;
      auto stage = [&](std::vector<Ref>::iterator from, std::vector<Ref>::iterator to,
                       IngestBatch* into) -> Status {
        auto prefix = [](const ChunkId& id) {
          uint64_t p;
          std::memcpy(&p, id.data(), sizeof p);
          return __builtin_bswap64(p);
        };
        std::sort(from, to, [&](const Ref& a, const Ref& b) {
          const uint64_t pa = prefix(a.first), pb = prefix(b.first);
          if (pa != pb) return pa < pb;
          return a.first < b.first;
        });
        for (auto it = from; it != to; ++it) {
          RETURN_IF_ERROR(
              s.chunks->StageRefs(into, it->first, it->second.count, it->second.stored_at));
        }
        return Status::Ok();
      };
      if (w.refs.size() < kSplitRefs) {
        RETURN_IF_ERROR(stage(w.refs.begin(), w.refs.end(), batch.get()));
      } else {
        auto mid = std::partition(w.refs.begin(), w.refs.end(),
                                  [](const Ref& r) { return r.first[0] < 0x80; });
        Status upper_status;
        std::thread helper([&] {
          NameThisThread("stl-imp-index");
          upper_status = stage(mid, w.refs.end(), upper.get());
        });
        Status lower_status = stage(w.refs.begin(), mid, batch.get());
        helper.join();
        RETURN_IF_ERROR(lower_status);
        RETURN_IF_ERROR(upper_status);
      }
      {
        std::unique_lock l(data_mu);
        data_cv.wait(l, [&] { return data_done >= w.data_periods || stop.load(); });
      }
      if (stop.load()) return Status::Ok();  // the failure is reported already
      return batch->IngestWith(upper.get());
    };
    std::unique_ptr<IndexWork> w;
    while (index_q.Pop(&w)) {
      if (!stop.load()) {
        Status st = write(*w);
        if (!st.ok()) fail(st);
      }
      w->Clear();
      index_free.Push(std::move(w));
    }
  });

  // In image order: which chunks are new and where they go, the map entries and
  // reference counts (handed to the table thread a segment at a time), the content
  // digest, the summary, progress and cancellation.
  ImportSummary sum;
  Sha256Stream digest;
  digest.Update(format::kImageDigestTag.data(), format::kImageDigestTag.size());
  uint64_t next_seq = 0;
  std::priority_queue<std::unique_ptr<Segment>, std::vector<std::unique_ptr<Segment>>, SeqLess>
      pending;
  const ChunkId kZeroId{};
  auto last_progress = std::chrono::steady_clock::now();

  const uint64_t data_period_limit =
      opts.data_period_bytes ? opts.data_period_bytes : kDefaultDataPeriodBytes;
  const uint64_t index_period_limit =
      opts.index_period_blocks ? opts.index_period_blocks : kDefaultIndexPeriodBlocks;
  Placement placement;        // where the data period's new chunks go
  uint64_t data_periods = 0;  // handed to the data writers so far
  uint64_t index_period_blocks = 0;
  absl::flat_hash_map<ChunkId, PeriodRef, ChunkIdHash> period;  // the index period's chunks
  absl::flat_hash_map<ChunkId, uint64_t, ChunkIdHash> known;    // earlier periods': hint
  // The data period being filled. Its bytes fit its buffer from the start: no regrowth.
  std::unique_ptr<DataWork> data = std::make_unique<DataWork>();
  data->bytes.reserve(data_period_limit + seg_bytes);
  // The last period takes no fresh buffer: waiting for one would hold the last index
  // period back until a data writer is done, where both can run side by side.
  auto end_data_period = [&](bool last) -> Status {
    if (data->locators.empty()) return Status::Ok();
    data->period = data_periods++;
    data_q.Push(std::move(data));
    if (last) return Status::Ok();
    if (!data_free.Pop(&data)) return Status::Aborted(what + ": import stopped");
    data->bytes.reserve(data_period_limit + seg_bytes);
    placement = {};  // the next data table's keys start above everything so far
    return Status::Ok();
  };
  // Decides one segment's blocks and hands the results to the writers; `last` ends
  // every period.
  auto place = [&](Segment* seg, bool last) -> Status {
    std::unique_ptr<IndexWork> w;
    if (!index_free.Pop(&w)) return Status::Aborted(what + ": import stopped");
    for (size_t i = 0; seg != nullptr && i < seg->nblocks; ++i) {
      if (seg->kind[i] == kSkip) continue;
      MapEntry m;
      m.block = seg->first_block + i;
      ++index_period_blocks;
      if (seg->kind[i] == kZeroOverBase) {
        m.zero = true;
        w->maps.push_back(m);
        continue;
      }
      const ChunkId& id = seg->ids[i];
      auto [it, first] = period.try_emplace(id);
      PeriodRef& ref = it->second;
      if (first) {
        if (auto k = known.find(id); k != known.end()) {
          ref.hint = k->second;
        } else if (seg->located[i] != 0) {
          ref.hint = seg->located[i];
        } else {
          // The first time this import meets a chunk the store lacks: store it.
          if (placement.next == placement.end) placement = s.chunks->Reserve(kPlacementRun);
          ref.stored_at = ref.hint = placement.next++;
          data->locators.push_back(ref.stored_at);
          data->bytes.append(seg->buf.data() + i * bs, bs);
          ++sum.new_chunks;
          sum.bytes_added += bs;
        }
      }
      if (ref.count > 0 || ref.stored_at == 0) ++sum.duplicate_blocks;
      ++ref.count;
      m.id = id;
      m.hint = ref.hint;
      w->maps.push_back(m);
    }
    if (seg != nullptr) sum.duplicate_blocks += seg->same_as_base;
    const bool end_index = last || index_period_blocks >= index_period_limit;
    if (end_index || data->bytes.size() >= data_period_limit)
      RETURN_IF_ERROR(end_data_period(last));
    if (end_index) {
      w->end_index_period = true;
      w->data_periods = data_periods;
      index_period_blocks = 0;
      w->refs.assign(period.begin(), period.end());
      if (!last) {  // what later periods look up; after the last there are none
        if (known.size() + period.size() > kKnownCap) known.clear();
        for (const auto& [pid, ref] : period) known[pid] = ref.hint;
      }
      period.clear();
    }
    index_q.Push(std::move(w));
    return Status::Ok();
  };

  std::unique_ptr<Segment> seg;
  while (done_q.Pop(&seg)) {
    pending.push(std::move(seg));
    while (!pending.empty() && pending.top()->seq == next_seq) {
      std::unique_ptr<Segment> cur =
          std::move(const_cast<std::unique_ptr<Segment>&>(pending.top()));
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
        }
        Status st = place(cur.get(), false);
        if (!st.ok()) fail(st);
        if (opts.cancel && opts.cancel->load())
          fail(Status(StatusCode::kCancelled, what + ": import cancelled"));
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
  free_q.Close();
  reader.join();
  for (auto& t : workers) t.join();
  if (!stop.load()) {
    Status st = place(nullptr, true);  // the last periods end
    if (!st.ok()) fail(st);
  }
  data_q.Close();
  index_q.Close();
  for (auto& t : data_writers) t.join();  // their tables are ingested, or dropped after a
  index_writer.join();                    // failure
  stop = true;
  sweep.unlock();

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
    if (st.ok() && existing)
      st = Status::Aborted("volume " + req.name + " was created concurrently");
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
