#include "core/db.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <rocksdb/filter_policy.h>
#include <rocksdb/merge_operator.h>
#include <rocksdb/table.h>

#include <cstring>
#include <filesystem>

#include "core/format.h"

namespace stellarium {
namespace {

// The chunks column family's merge operator. A chunk record is an i64 LE reference
// count followed by the block's bytes; an operand has the same shape (a count delta,
// then the bytes or nothing). Merging adds the counts and keeps the first bytes seen
// (all bytes under one key are equal: the key is their SHA-256). Associative, so
// RocksDB may combine operands in any grouping. Persisted by name in the OPTIONS file;
// never rename. See docs/FORMAT.md "chunks".
class ChunkMergeOperator : public rocksdb::AssociativeMergeOperator {
 public:
  bool Merge(const rocksdb::Slice& key, const rocksdb::Slice* existing,
             const rocksdb::Slice& value, std::string* new_value,
             rocksdb::Logger* logger) const override {
    int64_t count = 0;
    std::string_view data;
    if (existing != nullptr && existing->size() >= 8) {
      count = format::DecodeI64(std::string_view(existing->data(), 8));
      data = std::string_view(existing->data() + 8, existing->size() - 8);
    }
    if (value.size() >= 8) {
      count += format::DecodeI64(std::string_view(value.data(), 8));
      if (data.empty()) data = std::string_view(value.data() + 8, value.size() - 8);
    }
    new_value->clear();
    new_value->reserve(8 + data.size());
    *new_value = format::EncodeI64(count);
    new_value->append(data);
    return true;
  }
  const char* Name() const override { return "stellarium.chunk_v1"; }
};

const char* CfName(int i) {
  static const char* kNames[] = {format::kCfMeta,      format::kCfChunks, format::kCfMaps,
                                 format::kCfLayers,    format::kCfVolumes, format::kCfSnapshots,
                                 format::kCfImages,    format::kCfNames};
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
      // Chunk values are blocks of 4 KiB..1 MiB. lz4 per SST block; see
      // docs/BENCHMARKS.md for the codec measurements behind this choice.
      t.block_size = 16 * 1024;
      // Keys are random hashes, so every compaction rewrites whole levels: fewer,
      // larger compactions keep an import's write amplification low.
      o.write_buffer_size = 64 << 20;
      o.max_write_buffer_number = 3;
      o.target_file_size_base = 256 << 20;
      o.merge_operator = std::make_shared<ChunkMergeOperator>();
      // "Is this chunk stored?" is asked for every imported block: a memtable bloom
      // filter answers most "no"s without walking the skiplist.
      o.memtable_prefix_bloom_size_ratio = 0.05;
      o.memtable_whole_key_filtering = true;
      o.level0_file_num_compaction_trigger = 8;
      o.level0_slowdown_writes_trigger = 24;
      o.level0_stop_writes_trigger = 40;
      o.max_bytes_for_level_base = 2ull << 30;
      break;
    case Cf::kMaps:
      o.write_buffer_size = 32 << 20;
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

Result<std::unique_ptr<Db>> Db::Open(const std::string& dir, bool create_if_missing) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::exists(dir, ec)) {
    if (!create_if_missing) return Status::NotFound("store " + dir + ": does not exist");
    fs::create_directories(dir, ec);
    if (ec) return Status::FromErrno(ec.value(), "store " + dir + ": create directory");
  } else if (!fs::is_directory(dir, ec)) {
    return Status::InvalidArgument("store " + dir + ": not a directory");
  }

  std::unique_ptr<Db> db(new Db());
  db->dir_ = dir;
  std::string lock_path = dir + "/LOCK.stellarium";
  db->lock_fd_ = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (db->lock_fd_ < 0) return Status::FromErrno(errno, "store " + dir + ": open lock file");
  if (::flock(db->lock_fd_, LOCK_EX | LOCK_NB) != 0) {
    char buf[32] = {0};
    ssize_t n = ::pread(db->lock_fd_, buf, sizeof(buf) - 1, 0);
    std::string holder = n > 0 ? std::string(buf, n) : "unknown";
    while (!holder.empty() && (holder.back() == '\n')) holder.pop_back();
    return Status::FailedPrecondition("store " + dir +
                                      ": already open by another process (pid " + holder +
                                      "); stop it or use another --store");
  }
  std::string pid = std::to_string(::getpid()) + "\n";
  if (::ftruncate(db->lock_fd_, 0) != 0 ||
      ::pwrite(db->lock_fd_, pid.data(), pid.size(), 0) < 0) {
    return Status::FromErrno(errno, "store " + dir + ": write lock file");
  }

  rocksdb::DBOptions dbo;
  dbo.create_if_missing = create_if_missing;
  dbo.create_missing_column_families = true;
  dbo.atomic_flush = true;  // non-WAL import writes reach disk as one consistent cut
  dbo.max_background_jobs = 2;
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
  rocksdb::Status s = rocksdb::DB::Open(dbo, dir + "/db", cfs, &db->handles_, &raw);
  if (!s.ok()) return FromRocks(s, "store " + dir + ": open");
  db->db_.reset(raw);

  // Format version: written on creation, checked on every open.
  ASSIGN_OR_RETURN(auto ver, db->Get(Cf::kMeta, std::string(format::kMetaFormat), "store " + dir));
  if (!ver) {
    rocksdb::WriteBatch b;
    b.Put(db->cf(Cf::kMeta), std::string(format::kMetaFormat),
          format::EncodeU64(format::kFormatVersion).substr(0, 4));
    RETURN_IF_ERROR(db->Write(&b, WriteMode::kSync, "store " + dir + ": initialize"));
  } else {
    uint32_t v = 0;
    if (ver->size() == 4) std::memcpy(&v, ver->data(), 4);
    if (v != format::kFormatVersion) {
      return Status::FailedPrecondition("store " + dir + ": format version " +
                                        std::to_string(v) + ", this build reads version " +
                                        std::to_string(format::kFormatVersion));
    }
  }
  return db;
}

Db::~Db() {
  if (db_) {
    rocksdb::FlushOptions fo;
    db_->Flush(fo, handles_);
    db_->SyncWAL();
    for (auto* h : handles_) db_->DestroyColumnFamilyHandle(h);
    db_->Close();
    db_.reset();
  }
  if (lock_fd_ >= 0) ::close(lock_fd_);  // releases the flock
}

Status Db::Write(rocksdb::WriteBatch* batch, WriteMode mode, const std::string& what) {
  rocksdb::WriteOptions wo;
  wo.sync = mode == WriteMode::kSync;
  wo.disableWAL = mode == WriteMode::kNoWal;
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

Status Db::FlushAll() {
  rocksdb::FlushOptions fo;
  fo.wait = true;
  return FromRocks(db_->Flush(fo, handles_), "store " + dir_ + ": flush");
}

Status Db::SyncWal() { return FromRocks(db_->FlushWAL(true), "store " + dir_ + ": sync WAL"); }

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
