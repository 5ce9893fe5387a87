#include "core/local/db.h"

#include <fcntl.h>
#include <rocksdb/filter_policy.h>
#include <rocksdb/merge_operator.h>
#include <rocksdb/table.h>
#include <rocksdb/table_properties.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <thread>

#include "core/format.h"

namespace stellarium {
namespace {

// The chunk index's merge operator. A record and an operand have the same shape
// (format::ChunkRecord: a reference count or count delta, and a locator or 0).
// Merging adds the counts and keeps the first non-zero locator: the earliest write of
// a chunk's bytes wins, and bytes a racing writer stored under another locator become
// unreferenced data that gc reclaims. Associative, so RocksDB may combine operands in
// any grouping (their order is kept). Persisted by name in the OPTIONS file; never
// rename. See docs/FORMAT.md "chunks".
class ChunkMergeOperator : public rocksdb::AssociativeMergeOperator {
 public:
  bool Merge(const rocksdb::Slice& key, const rocksdb::Slice* existing, const rocksdb::Slice& value,
             std::string* new_value, rocksdb::Logger* logger) const override {
    format::ChunkRecord a, b;
    if (existing != nullptr && !format::DecodeChunkRecord(existing->ToStringView(), &a))
      return false;
    if (!format::DecodeChunkRecord(value.ToStringView(), &b)) return false;
    a.count += b.count;
    if (a.locator == 0) a.locator = b.locator;
    *new_value = format::EncodeChunkRecord(a);
    return true;
  }
  const char* Name() const override { return "stellarium.chunk_v2"; }
};

const char* CfName(int i) {
  static const char* kNames[] = {format::kCfMeta,   format::kCfChunks,  format::kCfMaps,
                                 format::kCfLayers, format::kCfVolumes, format::kCfSnapshots,
                                 format::kCfImages, format::kCfNames,   format::kCfData};
  return kNames[i];
}

rocksdb::ColumnFamilyOptions CfOptions(int i, const std::shared_ptr<rocksdb::Cache>& cache) {
  rocksdb::ColumnFamilyOptions o;
  rocksdb::BlockBasedTableOptions t;
  t.block_cache = cache;
  t.filter_policy.reset(rocksdb::NewBloomFilterPolicy(10, false));
  o.compression = rocksdb::kLZ4Compression;
  switch (static_cast<Cf>(i)) {
    case Cf::kChunks:
      // The index: random 32-byte keys with a few bytes each, asked "is this chunk
      // stored?" for every imported block and "where is it?" for every read. Small
      // blocks and no compression (hashes do not compress) keep a lookup cheap.
      t.block_size = 4 * 1024;
      o.compression = rocksdb::kNoCompression;
      // A cache of its own: streaming chunk bytes through the shared cache must not
      // evict the index (about 45 bytes per chunk: 64 MiB hold 1.4 million chunks).
      t.block_cache = rocksdb::NewLRUCache(64 << 20);
      t.cache_index_and_filter_blocks = false;
      o.write_buffer_size = 32 << 20;
      o.merge_operator = std::make_shared<ChunkMergeOperator>();
      // A memtable bloom filter answers most "no"s without walking the skiplist.
      o.memtable_prefix_bloom_size_ratio = 0.05;
      o.memtable_whole_key_filtering = true;
      // A chunk met again and again (a block of 0xff, a repeated pattern) collects one
      // operand per reference; every lookup of it would merge them all. Past this many
      // in a memtable, RocksDB stores the merged record instead.
      o.max_successive_merges = 16;
      break;
    case Cf::kData:
      // Chunk bytes keyed by locator, written in increasing key order: compactions
      // mostly move files without rewriting them, and a sequential volume read reads
      // neighbouring keys. lz4 per 32 KiB SST block; see docs/BENCHMARKS.md for the
      // codec and block-size measurements behind this choice.
      t.block_size = 32 * 1024;
      o.write_buffer_size = 64 << 20;
      o.max_write_buffer_number = 3;
      o.target_file_size_base = 128 << 20;
      o.level0_file_num_compaction_trigger = 8;
      o.level0_slowdown_writes_trigger = 24;
      o.level0_stop_writes_trigger = 40;
      o.max_bytes_for_level_base = 2ull << 30;
      // Only whole-key point reads of existing keys: a bloom filter would not help.
      t.filter_policy.reset();
      break;
    case Cf::kMaps:
      o.write_buffer_size = 32 << 20;
      // Read only through iterators (a range of a layer): a bloom filter would not help.
      t.filter_policy.reset();
      break;
    default:
      o.write_buffer_size = 4 << 20;
      break;
  }
  o.table_factory.reset(rocksdb::NewBlockBasedTableFactory(t));
  return o;
}

}  // namespace

Status FromRocks(const rocksdb::Status& s, const std::string& context) {
  if (s.ok()) return Status::Ok();
  std::string msg = context + ": " + s.ToString();
  if (s.IsNotFound()) return Status::NotFound(msg);
  if (s.IsCorruption()) return Status::Corruption(msg);
  if (s.IsInvalidArgument()) return Status::InvalidArgument(msg);
  if (s.IsNoSpace()) return Status::ResourceExhausted(msg);
  if (s.IsBusy() || s.IsTryAgain()) return Status::Aborted(msg);
  if (s.IsIOError()) return Status::Unavailable(msg);
  return Status::Internal(msg);
}

namespace {

// A number in a sysfs file of the block device queue that holds `dir` (a partition's
// queue is its disk's), or 0.
uint64_t QueueValue(const std::string& dir, const char* name) {
  struct stat st;
  if (::stat(dir.c_str(), &st) != 0 || major(st.st_dev) == 0) return 0;
  const std::string dev =
      "/sys/dev/block/" + std::to_string(major(st.st_dev)) + ":" + std::to_string(minor(st.st_dev));
  for (const std::string& queue : {dev + "/queue/", dev + "/../queue/"}) {
    std::ifstream f(queue + name);
    uint64_t v = 0;
    if (f >> v) return v;
  }
  return 0;
}

}  // namespace

Result<std::unique_ptr<Db>> Db::Open(const std::string& dir, const DbOptions& o) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::exists(dir, ec)) {
    if (!o.create_if_missing || o.read_only) return Status::NotFound("store " + dir + ": does not exist");
    fs::create_directories(dir, ec);
    if (ec) return Status::FromErrno(ec.value(), "store " + dir + ": create directory");
  } else if (!fs::is_directory(dir, ec)) {
    return Status::InvalidArgument("store " + dir + ": not a directory");
  }

  std::unique_ptr<Db> db(new Db());
  db->dir_ = dir;
  // posix_fadvise(WILLNEED) reads at most max(the device's read-ahead window, its
  // largest request) of a range per call, so Prefetch asks in pieces of that size,
  // between 128 KiB (the kernel's default window) and 2 MiB (where larger pieces
  // stopped helping here, docs/BENCHMARKS.md).
  db->prefetch_piece_ = std::clamp<uint64_t>(
      std::max(QueueValue(dir, "read_ahead_kb"), QueueValue(dir, "max_sectors_kb")) << 10,
      128 << 10, 2 << 20);
  if (!o.read_only) {
    RETURN_IF_ERROR(db->TakeLock());
    // Table files of imports that never got ingested (a crash, a kill) are garbage.
    db->import_dir_ = dir + "/import";
    fs::remove_all(db->import_dir_, ec);
    fs::create_directories(db->import_dir_, ec);
    if (ec) return Status::FromErrno(ec.value(), "store " + dir + ": create " + db->import_dir_);
  }
  RETURN_IF_ERROR(db->OpenRocks(o));
  RETURN_IF_ERROR(db->CheckFormat(!o.read_only));
  return db;
}

Status Db::TakeLock() {
  const std::string lock_path = dir_ + "/LOCK.stellarium";
  lock_fd_ = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (lock_fd_ < 0) return Status::FromErrno(errno, "store " + dir_ + ": open lock file");
  if (::flock(lock_fd_, LOCK_EX | LOCK_NB) != 0) {
    char buf[32] = {0};
    ssize_t n = ::pread(lock_fd_, buf, sizeof(buf) - 1, 0);
    std::string holder = n > 0 ? std::string(buf, n) : "unknown";
    while (!holder.empty() && (holder.back() == '\n')) holder.pop_back();
    return Status::FailedPrecondition("store " + dir_ + ": already open by another process (pid " +
                                      holder + "); stop it or use another --store");
  }
  std::string pid = std::to_string(::getpid()) + "\n";
  if (::ftruncate(lock_fd_, 0) != 0 || ::pwrite(lock_fd_, pid.data(), pid.size(), 0) < 0) {
    return Status::FromErrno(errno, "store " + dir_ + ": write lock file");
  }
  return Status::Ok();
}

Status Db::OpenRocks(const DbOptions& o) {
  rocksdb::DBOptions dbo;
  dbo.create_if_missing = o.create_if_missing && !o.read_only;
  dbo.create_missing_column_families = !o.read_only;
  dbo.atomic_flush = true;  // families flush together: one consistent cut on disk
  dbo.max_background_jobs = 2;
  // Volumes are read sequentially more often than not, and chunk bytes lie in write
  // order: let the kernel read ahead in SST files (RocksDB's default asks it not to).
  dbo.advise_random_on_open = false;
  // With mmap_reads, table files are read through mmap: a block is read where it lies
  // in the page cache instead of being copied out by pread (StoreOptions::mmap_reads).
  dbo.allow_mmap_reads = o.mmap_reads;
  dbo.bytes_per_sync = 1 << 20;
  dbo.keep_log_file_num = 3;
  dbo.max_total_wal_size = 256 << 20;
  // All memtables together stay under this, which bounds an import's memory whatever
  // the image size (docs/BENCHMARKS.md, "memory").
  dbo.db_write_buffer_size = 128 << 20;
  auto cache = rocksdb::NewLRUCache(32 << 20);
  std::vector<rocksdb::ColumnFamilyDescriptor> cfs;
  for (int i = 0; i < static_cast<int>(Cf::kCount); ++i) {
    cfs.emplace_back(CfName(i), CfOptions(i, cache));
  }
  rocksdb::DB* raw = nullptr;
  rocksdb::Status s;
  if (!o.read_only) {
    s = rocksdb::DB::Open(dbo, dir_ + "/db", cfs, &handles_, &raw);
  } else {
    // A secondary keeps every table file open, so the primary's compactions cannot take
    // a file from under it; its own info log goes to a directory of its own.
    dbo.max_open_files = -1;
    char tmpl[] = "/tmp/stellarium-readonly-XXXXXX";
    if (::mkdtemp(tmpl) == nullptr) return Status::FromErrno(errno, "store " + dir_ + ": read-only view");
    secondary_dir_ = tmpl;
    s = rocksdb::DB::OpenAsSecondary(dbo, dir_ + "/db", secondary_dir_, cfs, &handles_, &raw);
    if (s.ok()) s = raw->TryCatchUpWithPrimary();
  }
  if (!s.ok()) {
    delete raw;
    return FromRocks(s, "store " + dir_ + (o.read_only ? ": open read-only" : ": open"));
  }
  db_.reset(raw);
  return Status::Ok();
}

// The format version: written on creation, checked on every open.
Status Db::CheckFormat(bool create) {
  const std::string what = "store " + dir_;
  ASSIGN_OR_RETURN(auto ver, Get(Cf::kMeta, std::string(format::kMetaFormat), what));
  if (!ver) {
    if (!create) return Status::FailedPrecondition(what + ": not initialized yet");
    rocksdb::WriteBatch b;
    b.Put(cf(Cf::kMeta), std::string(format::kMetaFormat),
          format::EncodeFormatVersion(format::kFormatVersion));
    return Write(&b, WriteMode::kSync, what + ": initialize");
  }
  const uint32_t v = format::DecodeFormatVersion(*ver);
  if (v != format::kFormatVersion) {
    return Status::FailedPrecondition(what + ": format version " + std::to_string(v) +
                                      ", this build reads version " +
                                      std::to_string(format::kFormatVersion) +
                                      " (docs/FORMAT.md \"Versions\": export the volumes "
                                      "with the build that wrote them and re-import)");
  }
  return Status::Ok();
}

Db::~Db() {
  if (db_) {
    if (!read_only()) {
      rocksdb::FlushOptions fo;
      db_->Flush(fo, handles_);
      db_->SyncWAL();
    }
    for (auto* h : handles_) db_->DestroyColumnFamilyHandle(h);
    db_->Close();
    db_.reset();
  }
  if (lock_fd_ >= 0) ::close(lock_fd_);  // releases the flock
  if (!secondary_dir_.empty()) {
    std::error_code ec;
    std::filesystem::remove_all(secondary_dir_, ec);
  }
}

Status Db::Write(rocksdb::WriteBatch* batch, WriteMode mode, const std::string& what) {
  if (read_only()) {
    return Status::FailedPrecondition(what + ": store " + dir_ + " is open read-only");
  }
  rocksdb::WriteOptions wo;
  wo.sync = mode == WriteMode::kSync;
  return FromRocks(db_->Write(wo, batch), what);
}

Result<std::optional<std::string>> Db::Get(Cf which, const rocksdb::Slice& key,
                                           const std::string& what) {
  std::string v;
  rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), cf(which), key, &v);
  if (s.IsNotFound()) return std::optional<std::string>();
  if (!s.ok()) return FromRocks(s, what);
  return std::optional<std::string>(std::move(v));
}

std::unique_ptr<rocksdb::Iterator> Db::NewIterator(Cf which, bool fill_cache) {
  rocksdb::ReadOptions ro;
  ro.fill_cache = fill_cache;
  return std::unique_ptr<rocksdb::Iterator>(db_->NewIterator(ro, cf(which)));
}

struct IngestBatch::Table {
  std::string path;
  std::unique_ptr<rocksdb::SstFileWriter> writer;
  uint64_t value_bytes = 0;
  bool direct = false;  // written with direct I/O: none of it is in the page cache
  ~Table() {
    writer.reset();
    ::unlink(path.c_str());
  }
};

std::unique_ptr<IngestBatch> Db::NewIngestBatch(const std::string& what) {
  return std::unique_ptr<IngestBatch>(new IngestBatch(this, what));
}

IngestBatch::IngestBatch(Db* db, std::string what) : db_(db), what_(std::move(what)) {
  tables_.resize(static_cast<size_t>(Cf::kCount));
  compressibility_.resize(static_cast<size_t>(Cf::kCount));
}

IngestBatch::~IngestBatch() = default;

Result<IngestBatch::Table*> IngestBatch::Open(Cf which) {
  auto& t = tables_[static_cast<size_t>(which)];
  if (t) return t.get();
  auto table = std::make_unique<Table>();
  table->path = db_->import_dir_ + "/" + std::to_string(::getpid()) + "-" +
                std::to_string(db_->next_table_++) + ".sst";
  rocksdb::ColumnFamilyHandle* cf = db_->cf(which);
  rocksdb::Options options = db_->raw()->GetOptions(cf);
  // Adaptive compression: after a table of this family that compression did not shrink
  // (random bytes, already compressed data), the next ones skip the compressor, except
  // every kProbeEvery-th, which checks whether the data has become compressible again.
  Compressibility& c = compressibility_[static_cast<size_t>(which)];
  if (options.compression != rocksdb::kNoCompression && c.incompressible &&
      ++c.skipped % kProbeEvery != 0) {
    options.compression = rocksdb::kNoCompression;
  }
  rocksdb::EnvOptions env(db_->raw()->GetDBOptions());
  // Chunk bytes go to disk with direct I/O: no copy into the page cache (a tenth of an
  // import's CPU), and an import does not push other data out of the cache. Where the
  // filesystem refuses O_DIRECT (ramfs, some FUSE filesystems), the store falls back to
  // buffered writes.
  env.use_direct_writes = which == Cf::kData && db_->direct_writes_.load();
  rocksdb::Status opened;
  for (;;) {
    table->writer = std::make_unique<rocksdb::SstFileWriter>(env, options, cf,
                                                             /*invalidate_page_cache=*/false);
    opened = table->writer->Open(table->path);
    if (opened.ok() || !env.use_direct_writes) break;
    db_->direct_writes_ = false;
    env.use_direct_writes = false;
  }
  RETURN_IF_ERROR(FromRocks(opened, what_ + ": create " + table->path));
  table->direct = env.use_direct_writes;
  t = std::move(table);
  return t.get();
}

Status IngestBatch::Put(Cf which, std::string_view key, std::string_view value) {
  return Add(which, key, value, /*merge=*/false);
}

Status IngestBatch::Merge(Cf which, std::string_view key, std::string_view operand) {
  return Add(which, key, operand, /*merge=*/true);
}

Status IngestBatch::Add(Cf which, std::string_view key, std::string_view value, bool merge) {
  ASSIGN_OR_RETURN(Table * t, Open(which));
  t->value_bytes += value.size();
  rocksdb::Slice k(key.data(), key.size()), v(value.data(), value.size());
  return FromRocks(merge ? t->writer->Merge(k, v) : t->writer->Put(k, v),
                   what_ + ": write " + t->path);
}

uint64_t IngestBatch::value_bytes(Cf which) const {
  const auto& t = tables_[static_cast<size_t>(which)];
  return t ? t->value_bytes : 0;
}

namespace {

// Reads what ingesting a table file touches into the page cache, two reads in all: its
// first data block (ingestion reads the smallest key) and its end (the last data block,
// index, properties and footer; RocksDB reads at most this much of a table's tail at
// open). For a file written with direct I/O none of it is cached, and through mmap
// (allow_mmap_reads) each page touched would be a page fault and a synchronous disk
// read on the import's path. Best effort: a failure leaves RocksDB to read it itself.
void WarmForIngest(const std::string& path, uint64_t size) {
  constexpr uint64_t kHead = 64 << 10, kTail = 512 << 10;
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return;
  thread_local std::vector<char> buf;
  auto read = [&](uint64_t off, uint64_t n) {
    buf.resize(n);
    for (uint64_t done = 0; done < n;) {
      ssize_t r = ::pread(fd, buf.data() + done, n - done, static_cast<off_t>(off + done));
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) return;
      done += static_cast<uint64_t>(r);
    }
  };
  const uint64_t tail = std::min(size, kTail);
  if (size - tail > 0) read(0, std::min(size - tail, kHead));
  read(size - tail, tail);
  ::close(fd);
}

}  // namespace

Status IngestBatch::IngestWith(IngestBatch* other) {
  if (db_->read_only()) {
    return Status::FailedPrecondition(what_ + ": store " + db_->dir() + " is open read-only");
  }
  std::vector<rocksdb::IngestExternalFileArg> args;
  for (size_t i = 0; i < tables_.size(); ++i) {
    rocksdb::IngestExternalFileArg arg;
    arg.column_family = db_->cf(static_cast<Cf>(i));
    arg.options.move_files = true;           // a hard link into the database, no copy
    arg.options.write_global_seqno = false;  // no rewrite of the file
    for (IngestBatch* b : {this, other}) {
      if (b == nullptr || !b->tables_[i]) continue;
      Table& t = *b->tables_[i];
      rocksdb::ExternalSstFileInfo info;
      RETURN_IF_ERROR(FromRocks(t.writer->Finish(&info), b->what_ + ": finish " + t.path));
      t.writer.reset();
      if (t.direct) WarmForIngest(t.path, info.file_size);
      // Shrunk by less than a tenth: not worth compressing (RocksDB stored most blocks
      // as they were anyway).
      b->compressibility_[i].incompressible = info.file_size * 10 > t.value_bytes * 9;
      arg.external_files.push_back(t.path);
    }
    if (!arg.external_files.empty()) args.push_back(std::move(arg));
  }
  Status st;
  if (!args.empty()) st = FromRocks(db_->raw()->IngestExternalFiles(args), what_ + ": ingest");
  // Unlinks our names; the database keeps its own.
  for (IngestBatch* b : {this, other}) {
    if (b == nullptr) continue;
    for (auto& t : b->tables_) t.reset();
  }
  return st;
}

Status Db::WaitIdle() {
  for (;;) {
    bool busy = false;
    for (auto* h : handles_) {
      uint64_t v = 0;
      for (const char* p : {"rocksdb.compaction-pending", "rocksdb.num-running-compactions",
                            "rocksdb.num-running-flushes", "rocksdb.mem-table-flush-pending"}) {
        if (db_->GetIntProperty(h, p, &v) && v > 0) busy = true;
      }
    }
    if (!busy) return Status::Ok();
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

Status Db::SyncWal() {
  if (read_only()) return Status::Ok();  // wrote nothing
  return FromRocks(db_->FlushWAL(true), "store " + dir_ + ": sync WAL");
}

Result<uint64_t> Db::EstimateKeys(Cf which) {
  uint64_t n = 0;
  if (!db_->GetIntProperty(cf(which), "rocksdb.estimate-num-keys", &n)) {
    return Status::Internal("store " + dir_ + ": no key estimate for a column family");
  }
  return n;
}

Result<uint64_t> Db::EstimateValueBytes(Cf which) {
  rocksdb::TablePropertiesCollection tables;
  RETURN_IF_ERROR(FromRocks(db_->GetPropertiesOfAllTables(cf(which), &tables),
                            "store " + dir_ + ": table properties"));
  uint64_t bytes = 0;
  for (const auto& [file, props] : tables) bytes += props->raw_value_size;
  uint64_t mem = 0;
  if (db_->GetIntProperty(cf(which), "rocksdb.cur-size-all-mem-tables", &mem)) bytes += mem;
  return bytes;
}

namespace {

// The first 8 bytes of a key as a big-endian number (a shorter key padded with zeros):
// keys in RocksDB's order map to numbers in the same order.
uint64_t KeyNumber(std::string_view key) {
  uint64_t v = 0;
  for (size_t i = 0; i < 8; ++i) v = (v << 8) | (i < key.size() ? static_cast<uint8_t>(key[i]) : 0);
  return v;
}

}  // namespace

uint64_t Db::Prefetch(Cf which, std::string_view first, std::string_view last) {
  const uint64_t lo = KeyNumber(first), hi = KeyNumber(last);
  if (hi < lo) return 0;
  std::vector<TableSpan> hits;
  {
    std::lock_guard<std::mutex> lock(tables_mu_);
    if (tables_.empty()) tables_.resize(static_cast<size_t>(Cf::kCount));
    Tables& t = tables_[static_cast<size_t>(which)];
    const auto now = std::chrono::steady_clock::now();
    if (now - t.at > kTablesMaxAge) {
      rocksdb::ColumnFamilyMetaData meta;
      db_->GetColumnFamilyMetaData(cf(which), &meta);
      t.spans.clear();
      for (const auto& level : meta.levels) {
        for (const auto& f : level.files) {
          t.spans.push_back(
              {KeyNumber(f.smallestkey), KeyNumber(f.largestkey), f.size, f.db_path + f.name});
        }
      }
      t.at = now;
    }
    for (const auto& span : t.spans) {
      if (span.smallest <= hi && span.largest >= lo && span.size > 0) hits.push_back(span);
    }
  }
  uint64_t asked = 0;
  for (const auto& span : hits) {
    // Where keys lie in the table, were they spread evenly over it.
    const double keys = static_cast<double>(span.largest - span.smallest) + 1;
    auto place = [&](uint64_t k) {
      return static_cast<uint64_t>(static_cast<double>(k - span.smallest) / keys *
                                   static_cast<double>(span.size));
    };
    const uint64_t a = place(std::max(lo, span.smallest));
    const uint64_t b = std::min(hi, span.largest) == span.largest
                           ? span.size
                           : place(std::min(hi, span.largest) + 1);
    const uint64_t from = a > kPrefetchMargin ? a - kPrefetchMargin : 0;
    const uint64_t to = std::min(span.size, b + kPrefetchMargin);
    int fd = ::open(span.path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {  // compacted away: list the tables again next time
      std::lock_guard<std::mutex> lock(tables_mu_);
      tables_[static_cast<size_t>(which)].at = {};
      continue;
    }
    // One advice per prefetch_piece_: the kernel reads at most that much of each.
    for (uint64_t off = from; off < to; off += prefetch_piece_) {
      const uint64_t n = std::min(prefetch_piece_, to - off);
      if (::posix_fadvise(fd, static_cast<off_t>(off), static_cast<off_t>(n),
                          POSIX_FADV_WILLNEED) == 0)
        asked += n;
    }
    ::close(fd);
  }
  return asked;
}

uint64_t Db::DiskBytes() const {
  namespace fs = std::filesystem;
  uint64_t total = 0;
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(dir_, ec);
       !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
    if (it->is_regular_file(ec)) total += it->file_size(ec);
  }
  return total;
}

}  // namespace stellarium
