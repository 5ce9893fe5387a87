// The streaming qcow2 reader (qcow2.h). Written from QEMU's docs/interop/qcow2.txt.
//
// How it works. The file is read once, front to back (pos_ is the next file offset).
// Every byte read is filed as it passes:
//   - bytes of a table we know of (the L1 table, L2 tables, the refcount table and
//     blocks) go into that table; a complete table is parsed at once;
//   - other bytes are kept in the ReorderBuffer if they may still be needed: when a
//     pending *claim* covers them (the host range of a guest cluster whose L2 entry was
//     read and which is not emitted yet), or when a table we have not read yet might
//     still refer to them (MayBeClaimedLater); else they are dropped.
// Next() emits the guest image in order from gpos_: holes for unallocated and zero
// clusters; for a data cluster, straight from the stream into the caller's buffer when
// its host offset is the next byte of the file (the usual layout), from the reorder
// buffer when it was passed already, and after reading on (Pump) when it lies ahead;
// compressed clusters are gathered from the reorder buffer and decompressed. A table
// that is not read yet but is needed to go on is also reached by reading on.
//
// "May a table we have not read yet still refer to these bytes?" is answered with what
// the image tells: nothing once every L2 table of the active L1 is read; for a host
// cluster whose refcount block was read (and the image is not dirty), nothing once as
// many references to it were seen as its refcount says; for a standard cluster whose L2
// entry has the copied flag (refcount exactly 1), nothing once that one entry is emitted.
// Otherwise the bytes are kept. So an image whose refcounts are wrong can make a later
// reference find its bytes gone: that is an error (INVALID_ARGUMENT), never wrong data.
#include "core/sources/qcow2.h"

#include <libdeflate.h>
#include <zlib.h>
#include <zstd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <optional>
#include <unordered_map>
#include <vector>

#include "core/sources/reorder_buffer.h"

namespace stellarium {
namespace {

uint64_t Be64(const char* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = (v << 8) | static_cast<uint8_t>(p[i]);
  return v;
}
uint32_t Be32(const char* p) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v = (v << 8) | static_cast<uint8_t>(p[i]);
  return v;
}
std::string Hex(uint64_t v) {
  char b[24];
  std::snprintf(b, sizeof(b), "0x%llx", static_cast<unsigned long long>(v));
  return b;
}

constexpr uint64_t kIncompatDirty = 1, kIncompatCorrupt = 2, kIncompatDataFile = 4,
                   kIncompatCompressionType = 8, kIncompatExtendedL2 = 16;
constexpr uint64_t kKnownIncompat = kIncompatDirty | kIncompatCorrupt | kIncompatDataFile |
                                    kIncompatCompressionType | kIncompatExtendedL2;
constexpr uint64_t kOffsetMask = 0x00fffffffffffe00ull;  // bits 9-55 of table entries
constexpr uint64_t kCopied = 1ull << 63, kCompressedBit = 1ull << 62;
constexpr uint64_t kL1Reserved = 0x7f000000000001ffull;   // bits 0-8, 56-62
constexpr uint64_t kStdReserved = 0x3f000000000001feull;  // bits 1-8, 56-61
constexpr uint64_t kMaxL1Bytes = 32ull << 20;             // qemu's limits, which keep
constexpr uint64_t kMaxRefcountTableBytes = 8ull << 20;   // our tables' memory bounded
constexpr uint32_t kMaxSnapshots = 65536;
constexpr size_t kPumpBytes = 1u << 20;           // largest piece read for filing
constexpr uint64_t kReadAheadBytes = 256u << 10;  // read-ahead for compressed data
constexpr uint64_t kClaimBytes = 64;              // memory of one claim in the index

enum class Compression { kZlib, kZstd };

struct Header {
  uint32_t version = 0;
  uint32_t cluster_bits = 0;
  uint64_t size = 0;
  uint32_t l1_size = 0;
  uint64_t l1_offset = 0;
  uint64_t rt_offset = 0;
  uint32_t rt_clusters = 0;
  uint64_t incompatible = 0;
  uint32_t refcount_order = 4;
  Compression compression = Compression::kZlib;
  bool extended_l2 = false;
  // Derived.
  uint64_t cluster_size = 0;
  uint64_t l2_entries = 0;  // entries per L2 table
  uint64_t clusters = 0;    // guest clusters covering the virtual size
  uint64_t l1_needed = 0;   // L1 entries covering the virtual size
};

Result<Header> ParseHeader(const std::string& head, const std::string& what) {
  auto bad = [&](const std::string& m) { return Status::InvalidArgument(what + ": " + m); };
  auto truncated = [&](size_t need) {
    return bad("qcow2 header is truncated at file offset " + std::to_string(head.size()) +
               " (it has " + std::to_string(need) + " bytes)");
  };
  if (head.size() < 72) return truncated(72);
  const char* p = head.data();
  Header h;
  h.version = Be32(p + 4);
  if (h.version != 2 && h.version != 3) {
    return bad("qcow2 version " + std::to_string(h.version) + " is not supported (2 or 3)");
  }
  if (Be64(p + 8) != 0) {
    return bad(
        "qcow2 image has a backing file; import a standalone image "
        "(qemu-img convert -O qcow2 flattens it)");
  }
  h.cluster_bits = Be32(p + 20);
  if (h.cluster_bits < 9 || h.cluster_bits > 21) {
    return bad("qcow2 cluster_bits " + std::to_string(h.cluster_bits) +
               " is out of range (malformed header)");
  }
  h.cluster_size = 1ull << h.cluster_bits;
  h.size = Be64(p + 24);
  if (h.size == 0) return bad("qcow2 virtual size is 0");
  if (Be32(p + 32) != 0) {
    return bad("qcow2 image is encrypted; encrypted images are not supported");
  }
  h.l1_size = Be32(p + 36);
  h.l1_offset = Be64(p + 40);
  h.rt_offset = Be64(p + 48);
  h.rt_clusters = Be32(p + 56);
  const uint32_t nb_snapshots = Be32(p + 60);
  const uint64_t snapshots_offset = Be64(p + 64);
  if (h.version == 3) {
    if (head.size() < 104) return truncated(104);
    h.incompatible = Be64(p + 72);
    h.refcount_order = Be32(p + 96);
    const uint32_t header_length = Be32(p + 100);
    if (header_length < 104 || header_length % 8 != 0 || header_length > h.cluster_size) {
      return bad("qcow2 header_length " + std::to_string(header_length) + " is malformed");
    }
    if (h.incompatible & kIncompatDataFile) {
      return bad("qcow2 image uses an external data file; not supported");
    }
    if (h.incompatible & kIncompatCorrupt) {
      return bad("qcow2 image is marked corrupt; repair it first (qemu-img check -r all)");
    }
    if (h.incompatible & ~kKnownIncompat) {
      return bad("qcow2 image uses unknown incompatible features (bits " +
                 Hex(h.incompatible & ~kKnownIncompat) + "); not supported");
    }
    if (h.refcount_order > 6) {
      return bad("qcow2 refcount_order " + std::to_string(h.refcount_order) + " is malformed");
    }
    const uint8_t type =
        header_length > 104 && head.size() > 104 ? static_cast<uint8_t>(p[104]) : 0;
    if (h.incompatible & kIncompatCompressionType) {
      if (type == 1) {
        h.compression = Compression::kZstd;
      } else {
        return bad("qcow2 compression type " + std::to_string(type) +
                   " is not supported (zlib or zstd)");
      }
    } else if (type != 0) {
      return bad("qcow2 compression type " + std::to_string(type) +
                 " without the compression type feature bit (malformed header)");
    }
    h.extended_l2 = (h.incompatible & kIncompatExtendedL2) != 0;
    if (h.extended_l2 && h.cluster_bits < 14) {
      return bad("qcow2 extended L2 entries need clusters of 16 KiB or more (malformed header)");
    }
  }
  h.l2_entries = h.cluster_size / (h.extended_l2 ? 16 : 8);
  h.clusters = h.size / h.cluster_size + (h.size % h.cluster_size != 0);
  h.l1_needed = (h.clusters + h.l2_entries - 1) / h.l2_entries;
  if (h.l1_size < h.l1_needed) {
    return bad("qcow2 L1 table has " + std::to_string(h.l1_size) +
               " entries, the virtual size needs " + std::to_string(h.l1_needed) +
               " (malformed header)");
  }
  if (uint64_t{h.l1_size} * 8 > kMaxL1Bytes) {
    return bad("qcow2 L1 table of " + std::to_string(h.l1_size) + " entries is larger than 32 MiB");
  }
  if (h.l1_offset % h.cluster_size != 0 || h.l1_offset < h.cluster_size ||
      h.l1_offset > (1ull << 56)) {
    return bad("qcow2 L1 table offset " + std::to_string(h.l1_offset) +
               " is not a cluster boundary after the header (malformed header)");
  }
  if (h.rt_offset % h.cluster_size != 0 || h.rt_offset < h.cluster_size ||
      h.rt_offset > (1ull << 56) || h.rt_clusters == 0 ||
      uint64_t{h.rt_clusters} * h.cluster_size > kMaxRefcountTableBytes) {
    return bad("qcow2 refcount table (offset " + std::to_string(h.rt_offset) + ", " +
               std::to_string(h.rt_clusters) + " clusters) is malformed");
  }
  if (nb_snapshots > kMaxSnapshots ||
      (nb_snapshots > 0 &&
       (snapshots_offset % h.cluster_size != 0 || snapshots_offset < h.cluster_size))) {
    return bad("qcow2 snapshot table (" + std::to_string(nb_snapshots) + " snapshots at offset " +
               std::to_string(snapshots_offset) + ") is malformed");
  }
  return h;
}

std::string DefaultScratchDir(const std::string& configured) {
  if (!configured.empty()) return configured;
  const char* t = std::getenv("TMPDIR");
  return t && *t ? t : "/var/tmp";
}

// One decoded L2 entry.
struct Entry {
  enum Kind { kZero, kData, kCompressed } kind = kZero;  // kZero: unallocated or zeros
  uint64_t host = 0;    // data: host cluster offset (0 = none); compressed: first byte
  uint64_t end = 0;     // compressed: end of its byte range (sector-rounded)
  uint32_t alloc = 0;   // extended L2: allocated subclusters (kData only)
  bool copied = false;  // the cluster's refcount is exactly one
};

// The bytes of the file a guest cluster needs and that are not emitted yet.
struct Claim {
  uint64_t end = 0;
  uint64_t guest = 0;      // guest cluster index
  bool exclusive = false;  // nothing else refers to these bytes (copied flag)
};

constexpr uint64_t kNoGuest = ~0ull;

class Qcow2Source : public ImageSource {
 public:
  Qcow2Source(std::unique_ptr<ImageSource> file, const Header& h, const Qcow2Options& o)
      : file_(std::move(file)),
        h_(h),
        what_("image " + file_->Describe()),
        cs_(h.cluster_size),
        cb_(h.cluster_bits),
        entry_bytes_(h.extended_l2 ? 16 : 8),
        buffer_(DefaultScratchDir(o.scratch_dir), o.reorder_memory_bytes, what_),
        max_table_memory_(o.max_table_memory_bytes),
        refcounts_trusted_((h.incompatible & kIncompatDirty) == 0),
        refcount_bits_(1u << h.refcount_order),
        rb_entries_(h.cluster_size * 8 / (1u << h.refcount_order)),
        stats_(o.stats) {
    in_.resize(kPumpBytes);
    max_claim_ = cs_;
  }
  ~Qcow2Source() override {
    if (zlib_ready_) inflateEnd(&z_);
    if (deflate_) libdeflate_free_decompressor(deflate_);
    if (zstd_) ZSTD_freeDCtx(zstd_);
  }

  // Registers the header cluster, the L1 table and the refcount table.
  Status Init() {
    metadata_[0] = cs_;
    RETURN_IF_ERROR(RegisterTable(Table::kL1, h_.l1_offset, h_.l1_needed * 8,
                                  RoundUp(uint64_t{h_.l1_size} * 8), {}));
    const uint64_t rt_bytes = uint64_t{h_.rt_clusters} * cs_;
    return RegisterTable(Table::kRefcountTable, h_.rt_offset, rt_bytes, rt_bytes, {});
  }

  std::string Describe() const override { return file_->Describe(); }
  std::optional<uint64_t> Size() const override { return h_.size; }

  Result<size_t> Next(char* buf, size_t max, bool* hole) override {
    *hole = false;
    if (!failed_.ok()) return failed_;
    auto r = NextImpl(buf, max, hole);
    if (!r.ok()) failed_ = r.status();
    UpdateStats();
    return r;
  }

 private:
  struct Table {
    enum Kind { kL1, kL2, kRefcountTable, kRefcountBlock } kind;
    uint64_t len = 0;   // bytes we parse
    uint64_t span = 0;  // bytes of the file it occupies (whole clusters)
    bool parsed = false;
    std::vector<char> bytes;
    std::vector<uint64_t> users;  // L2: the L1 indices pointing to it; block: its index
  };
  // What the guest offset being emitted needs next.
  struct Span {
    enum Kind { kWait, kZero, kData, kCompressed } kind = kZero;
    uint64_t len = 0;   // guest bytes
    uint64_t host = 0;  // kData: file offset of the first byte
    uint64_t wait = 0;  // kWait: the table's offset; the file must be read past wait_end
    uint64_t wait_end = 0;
    bool wait_l1 = false;
    Entry entry;  // kCompressed
  };

  uint64_t RoundUp(uint64_t n) const { return (n + cs_ - 1) / cs_ * cs_; }
  std::string At(uint64_t guest_offset) const {
    return "guest offset " + std::to_string(guest_offset);
  }
  Status Malformed(const std::string& detail) const {
    return Status::InvalidArgument(what_ + ": malformed qcow2 image: " + detail);
  }
  Status PastEnd(const std::string& thing, uint64_t off) const {
    return Status::InvalidArgument(what_ + ": qcow2 " + thing + " at file offset " +
                                   std::to_string(off) + " lies past the end of the file (" +
                                   std::to_string(pos_) + " bytes): the image is truncated");
  }
  Status NotKept(uint64_t guest, uint64_t off) const {
    return Malformed("the data of " + At(guest) + " at file offset " + std::to_string(off) +
                     " was read before the table that maps it, and not kept because the image's "
                     "refcounts or copied flags said nothing else refers to it, or it overlaps a "
                     "table (qemu-img check -r all may repair it)");
  }

  // ---- Tables ----

  bool OverlapsMetadata(uint64_t start, uint64_t end) const {
    auto it = metadata_.upper_bound(start);
    if (it != metadata_.end() && it->first < end) return true;
    if (it == metadata_.begin()) return false;
    --it;
    return it->second > start;
  }

  bool OverlapsClaims(uint64_t start, uint64_t end) const {
    for (auto it = claims_.lower_bound(start > max_claim_ ? start - max_claim_ : 0);
         it != claims_.end() && it->first < end; ++it) {
      if (it->second.end > start) return true;
    }
    return false;
  }

  // Checks a table's place. For the L1 and L2 tables a bad place is an error; the
  // refcount structures are only a hint, so a bad block is ignored (false).
  Result<bool> PlaceTable(Table::Kind kind, uint64_t start, uint64_t span,
                          const std::string& name) {
    const bool hint = kind == Table::kRefcountBlock;
    if (start % cs_ != 0 || start < cs_ || start > (1ull << 56)) {
      if (hint) return false;
      return Malformed(name + " offset " + std::to_string(start) +
                       " is not a cluster boundary after the header");
    }
    if (OverlapsMetadata(start, start + span) || OverlapsClaims(start, start + span)) {
      if (hint) return false;
      return Malformed(name + " at file offset " + std::to_string(start) +
                       " overlaps another table");
    }
    metadata_[start] = start + span;
    return true;
  }

  // Starts reading a table whose place is checked. Bytes of it already passed are taken
  // from the reorder buffer; a complete table is parsed at once.
  Status StartTable(Table::Kind kind, uint64_t start, uint64_t len, uint64_t span,
                    std::vector<uint64_t> users, const std::string& name) {
    Table t;
    t.kind = kind;
    t.len = len;
    t.span = span;
    t.users = std::move(users);
    uint64_t filled = 0;
    if (start < pos_) {
      filled = std::min(len, pos_ - start);
      t.bytes.resize(len);
      ASSIGN_OR_RETURN(bool ok, buffer_.Get(start, filled, t.bytes.data()));
      if (!ok) {
        if (kind == Table::kRefcountBlock) {
          metadata_.erase(start);
          return Status::Ok();
        }
        return Malformed(
            name + " at file offset " + std::to_string(start) +
            " was read before the table that points to it and was not kept (it overlaps data)");
      }
      buffer_.Drop(start, std::min(span, pos_ - start));
    }
    if (filled == len) {
      t.parsed = true;
      RETURN_IF_ERROR(TableRead(start, t));
      if (start + span <= pos_) return Status::Ok();
    }
    pending_.emplace(start, std::move(t));
    return Status::Ok();
  }

  Status RegisterTable(Table::Kind kind, uint64_t start, uint64_t len, uint64_t span,
                       std::vector<uint64_t> users) {
    const std::string name = kind == Table::kL1              ? "L1 table"
                             : kind == Table::kRefcountTable ? "refcount table"
                                                             : "refcount block";
    ASSIGN_OR_RETURN(bool placed, PlaceTable(kind, start, span, name));
    if (!placed) return Status::Ok();
    return StartTable(kind, start, len, span, std::move(users), name);
  }

  Status TableRead(uint64_t start, Table& t) {
    switch (t.kind) {
      case Table::kL1:
        return L1Read(t);
      case Table::kL2:
        return L2Read(t);
      case Table::kRefcountTable:
        if (all_tables_read_) return Status::Ok();
        rt_.resize(t.len / 8);
        for (size_t i = 0; i < rt_.size(); ++i) rt_[i] = Be64(t.bytes.data() + 8 * i);
        rt_read_ = true;
        for (size_t i = 0; i < rt_.size(); ++i) {
          const uint64_t off = rt_[i];
          if (off == 0 || (off & 511) != 0) continue;  // none, or malformed: unknown counts
          RETURN_IF_ERROR(RegisterTable(Table::kRefcountBlock, off, cs_, cs_, {i}));
        }
        return Status::Ok();
      case Table::kRefcountBlock:
        // Refcounts are a hint: beyond the memory limit a block is just not known.
        if (!all_tables_read_ && TableMemory() + t.len <= max_table_memory_) {
          rb_bytes_ += t.len;
          rb_[t.users[0]] = std::move(t.bytes);
        }
        return Status::Ok();
    }
    return Status::Ok();
  }

  Status L1Read(Table& t) {
    l1_.resize(h_.l1_needed);
    std::map<uint64_t, std::vector<uint64_t>> l2s;  // L2 offset -> L1 indices
    for (uint64_t i = 0; i < h_.l1_needed; ++i) {
      const uint64_t e = Be64(t.bytes.data() + 8 * i);
      l1_[i] = e & kOffsetMask;
      if (e & kL1Reserved) {
        return Malformed("L1 entry " + std::to_string(i) + " (" + Hex(e) +
                         ") has reserved bits set");
      }
      if (l1_[i] != 0) l2s[l1_[i]].push_back(i);
    }
    t.bytes = {};
    l1_read_ = true;
    l2_unread_ = l2s.size();
    // Place every L2 table before reading any, so that no claim may overlap one.
    for (const auto& [off, users] : l2s) {
      RETURN_IF_ERROR(PlaceTable(Table::kL2, off, cs_, L2Name(users[0])).status());
    }
    for (auto& [off, users] : l2s) {
      RETURN_IF_ERROR(StartTable(Table::kL2, off, cs_, cs_, users, L2Name(users[0])));
    }
    if (l2_unread_ == 0) AllTablesRead();
    return Status::Ok();
  }
  std::string L2Name(uint64_t l1_index) const {
    return "L2 table for " + At(l1_index * h_.l2_entries * cs_);
  }

  Status L2Read(Table& t) {
    for (size_t u = 0; u < t.users.size(); ++u) {
      const uint64_t l1i = t.users[u];
      l2_[l1i] = u + 1 == t.users.size() ? std::move(t.bytes) : t.bytes;
      l2_bytes_ += cs_;
      RETURN_IF_ERROR(AddClaims(l1i));
      if (TableMemory() > max_table_memory_) {
        return Status::InvalidArgument(
            what_ + ": qcow2 image needs more than " + std::to_string(max_table_memory_ >> 20) +
            " MiB of memory for L2 tables read ahead of the data they map (its L2 tables come long "
            "before "
            "their data); not supported, rewrite it with qemu-img convert -O qcow2");
      }
    }
    if (--l2_unread_ == 0) AllTablesRead();
    return Status::Ok();
  }

  // Decodes the L2 entry of guest cluster g (at p), checking it.
  Result<Entry> Decode(uint64_t g, const char* p) const {
    const uint64_t d = Be64(p);
    auto bad = [&](const std::string& m) {
      return Malformed("L2 entry for " + At(g * cs_) + " (" + Hex(d) + ") " + m);
    };
    Entry e;
    if (d & kCompressedBit) {
      if (d & kCopied) return bad("is compressed and has the copied flag");
      const uint32_t x = 70 - cb_;  // 62 - (cluster_bits - 8)
      e.kind = Entry::kCompressed;
      e.host = d & ((1ull << x) - 1);
      const uint64_t sectors = (d >> x) & ((1ull << (62 - x)) - 1);
      if (e.host >> 56) return bad("has a compressed offset beyond 56 bits");
      if (h_.extended_l2 && Be64(p + 8) != 0)
        return bad("is compressed and has a subcluster bitmap");
      if (e.host < cs_) return bad("points into the header cluster");
      e.end = (e.host & ~511ull) + (sectors + 1) * 512;
      return e;
    }
    if (d & kStdReserved) return bad("has reserved bits set");
    e.host = d & kOffsetMask;
    e.copied = (d & kCopied) != 0;
    if (e.host % cs_ != 0) return bad("has a host offset that is not cluster aligned");
    if (e.host == 0 && e.copied)
      return bad("has host offset 0 with the copied flag (external data files are not supported)");
    if (e.host != 0 && e.host < cs_) return bad("points into the header cluster");
    if (h_.extended_l2) {
      if (d & 1) return bad("has the zero flag, which extended L2 entries do not use");
      const uint64_t bitmap = Be64(p + 8);
      const uint32_t alloc = static_cast<uint32_t>(bitmap),
                     zero = static_cast<uint32_t>(bitmap >> 32);
      if (alloc & zero) return bad("has subclusters both allocated and zero");
      if (alloc != 0 && e.host == 0) return bad("has allocated subclusters but no host cluster");
      e.alloc = alloc;
      e.kind = alloc != 0 ? Entry::kData : Entry::kZero;
      return e;
    }
    if (d & 1) {
      if (h_.version == 2) return bad("has the zero flag, which version 2 images do not have");
      e.kind = Entry::kZero;  // reads as zeros; a host cluster may be preallocated
      return e;
    }
    e.kind = e.host != 0 ? Entry::kData : Entry::kZero;
    return e;
  }

  // The claim of a data or compressed entry: [start, claim.end).
  std::pair<uint64_t, Claim> ClaimOf(const Entry& e, uint64_t g) const {
    Claim c;
    c.guest = g;
    if (e.kind == Entry::kCompressed) {
      c.end = e.end;
      return {e.host, c};
    }
    c.exclusive = e.copied;
    if (!h_.extended_l2) {
      c.end = e.host + cs_;
      return {e.host, c};
    }
    const uint64_t sub = cs_ / 32;
    const uint64_t lo = static_cast<uint64_t>(__builtin_ctz(e.alloc));
    const uint64_t hi = 32 - static_cast<uint64_t>(__builtin_clz(e.alloc));
    c.end = e.host + hi * sub;
    return {e.host + lo * sub, c};
  }

  // Records the references of a freshly read L2 table (of L1 index l1i).
  Status AddClaims(uint64_t l1i) {
    const std::vector<char>& t = l2_[l1i];
    const uint64_t first = l1i * h_.l2_entries;
    const uint64_t count = std::min(h_.l2_entries, h_.clusters - first);
    for (uint64_t j = 0; j < count; ++j) {
      const uint64_t g = first + j;
      ASSIGN_OR_RETURN(Entry e, Decode(g, t.data() + j * entry_bytes_));
      if (e.host == 0) continue;  // unallocated
      // A zero cluster with a host offset is preallocated: a reference, nothing to read.
      auto [start, c] = e.kind == Entry::kZero
                            ? std::pair<uint64_t, Claim>{e.host, Claim{e.host + cs_, g, false}}
                            : ClaimOf(e, g);
      if (OverlapsMetadata(start, c.end)) {
        return Malformed("L2 entry for " + At(g * cs_) + " points to file offset " +
                         std::to_string(e.host) + ", which holds a table");
      }
      // References that are not exclusive count towards their clusters' refcounts.
      if (!(e.kind == Entry::kData && e.copied)) {
        const uint64_t last = e.kind == Entry::kCompressed ? (e.end - 1) >> cb_ : e.host >> cb_;
        for (uint64_t hc = e.host >> cb_; hc <= last; ++hc) ++seen_[hc];
      }
      if (e.kind == Entry::kZero) continue;
      if (start < pos_ && !buffer_.Has(start, std::min(c.end, pos_) - start))
        return NotKept(g * cs_, start);
      max_claim_ = std::max(max_claim_, c.end - start);
      claims_.emplace(start, c);
    }
    return Status::Ok();
  }

  void AllTablesRead() {
    all_tables_read_ = true;
    for (auto it = pending_.begin(); it != pending_.end();) {
      const bool refcounts =
          it->second.kind == Table::kRefcountTable || it->second.kind == Table::kRefcountBlock;
      it = refcounts ? pending_.erase(it) : std::next(it);
    }
    rt_.clear();
    rb_.clear();
    rb_bytes_ = 0;
    seen_.clear();
    // Nothing new can be claimed: keep only what pending claims cover.
    for (const auto& [s, e] : buffer_.Ranges()) DropUnclaimed(s, e);
  }

  // Memory held for tables: L2 tables not emitted yet, the claim index, refcount blocks.
  uint64_t TableMemory() const { return l2_bytes_ + claims_.size() * kClaimBytes + rb_bytes_; }

  // ---- Refcounts ----

  // The refcount of host cluster hc, if known and trusted.
  std::optional<uint64_t> Refcount(uint64_t hc) const {
    if (!refcounts_trusted_ || !rt_read_) return std::nullopt;
    const uint64_t b = hc / rb_entries_;
    if (b >= rt_.size() || (rt_[b] & 511) != 0) return std::nullopt;
    if (rt_[b] == 0) return 0;
    auto it = rb_.find(b);
    if (it == rb_.end()) return std::nullopt;
    const uint64_t i = hc % rb_entries_;
    const char* p = it->second.data();
    if (refcount_bits_ >= 8) {
      const uint32_t n = refcount_bits_ / 8;
      uint64_t v = 0;
      for (uint32_t k = 0; k < n; ++k) v = (v << 8) | static_cast<uint8_t>(p[i * n + k]);
      return v;
    }
    const uint64_t bit = i * refcount_bits_;
    return (static_cast<uint8_t>(p[bit / 8]) >> (bit % 8)) & ((1u << refcount_bits_) - 1);
  }

  // May a table not read yet still refer to host cluster hc?
  bool MayBeClaimedLater(uint64_t hc) const {
    if (all_tables_read_ || hc == 0) return false;
    std::optional<uint64_t> rc = Refcount(hc);
    if (!rc) return true;
    auto it = seen_.find(hc);
    return (it == seen_.end() ? 0 : it->second) < *rc;
  }

  // Forgets refcount knowledge about host clusters well behind the stream (it would only
  // let old kept bytes go sooner; they go anyway once every table is read).
  void Prune() {
    const uint64_t cover = rb_entries_ * cs_;
    const uint64_t behind = pos_ / cover;
    while (!rb_.empty() && rb_.begin()->first + 2 <= behind) {
      rb_bytes_ -= rb_.begin()->second.size();
      rb_.erase(rb_.begin());
    }
    while (!seen_.empty() && seen_.begin()->first / rb_entries_ + 2 <= behind)
      seen_.erase(seen_.begin());
  }

  // ---- Filing passed bytes ----

  // Keeps what may still be needed of [off, off+n), bytes that are no table (data ==
  // nullptr: zeros). Claims of guest clusters [g_lo, g_hi] do not count: those bytes are
  // being emitted now; `exclusive`: they belong to a copied (refcount 1) cluster.
  Status Keep(uint64_t off, const char* data, uint64_t n, uint64_t g_lo, uint64_t g_hi,
              bool exclusive) {
    const uint64_t end = off + n;
    // Contiguous pieces are put as one extent.
    uint64_t run_start = 0, run_end = 0;
    auto flush = [&]() -> Status {
      const uint64_t s = run_start, e = run_end;
      run_start = run_end = 0;
      if (e == s) return Status::Ok();
      return buffer_.Put(s, data ? data + (s - off) : nullptr, e - s);
    };
    auto put = [&](uint64_t s, uint64_t e) -> Status {
      if (run_end > run_start && s == run_end) {
        run_end = e;
        return Status::Ok();
      }
      RETURN_IF_ERROR(flush());
      run_start = s;
      run_end = e;
      return Status::Ok();
    };
    for (uint64_t u = off; u < end;) {
      const uint64_t v = std::min(end, ((u >> cb_) + 1) << cb_);
      if (!exclusive && MayBeClaimedLater(u >> cb_)) {
        RETURN_IF_ERROR(put(u, v));
      } else {
        uint64_t covered = u;
        for (auto it = claims_.lower_bound(u > max_claim_ ? u - max_claim_ : 0);
             it != claims_.end() && it->first < v; ++it) {
          if (it->second.guest >= g_lo && it->second.guest <= g_hi) continue;
          const uint64_t s = std::max(it->first, covered), e = std::min(it->second.end, v);
          if (e > s) {
            RETURN_IF_ERROR(put(s, e));
            covered = e;
          }
        }
      }
      u = v;
    }
    return flush();
  }

  // Files the bytes [off, off+n) just read (data == nullptr: zeros).
  Status File(uint64_t off, const char* data, uint64_t n) {
    const uint64_t end = off + n;
    uint64_t cur = off;
    while (cur < end) {
      pos_ = cur;
      auto next = pending_.upper_bound(cur);
      if (next != pending_.begin()) {
        auto it = std::prev(next);
        const uint64_t ts = it->first;
        Table& t = it->second;
        if (cur < ts + t.span) {
          uint64_t stop = std::min(end, ts + t.span);
          if (cur < ts + t.len) {
            stop = std::min(stop, ts + t.len);
            t.bytes.resize(t.len);  // allocated when its first byte arrives
            if (data) {
              std::memcpy(t.bytes.data() + (cur - ts), data + (cur - off), stop - cur);
            } else {
              std::memset(t.bytes.data() + (cur - ts), 0, stop - cur);
            }
          }
          cur = pos_ = stop;
          if (!t.parsed && cur >= ts + t.len) {
            t.parsed = true;
            RETURN_IF_ERROR(TableRead(ts, t));
          }
          auto again = pending_.find(ts);
          if (again != pending_.end() && cur >= ts + again->second.span) pending_.erase(again);
          continue;
        }
      }
      const uint64_t stop = next == pending_.end() ? end : std::min(end, next->first);
      RETURN_IF_ERROR(
          Keep(cur, data ? data + (cur - off) : nullptr, stop - cur, kNoGuest, kNoGuest, false));
      cur = stop;
    }
    pos_ = end;
    return Status::Ok();
  }

  // Reads on from the file and files what comes, at most `limit` bytes.
  Status Pump(uint64_t limit) {
    bool hole = false;
    ASSIGN_OR_RETURN(size_t k,
                     file_->Next(in_.data(), std::min<uint64_t>(limit, in_.size()), &hole));
    if (k == 0) {
      eof_ = true;
      return Status::Ok();
    }
    RETURN_IF_ERROR(File(pos_, hole ? nullptr : in_.data(), k));
    Prune();
    return Status::Ok();
  }
  // Reads on until the file offset `target` (or the end of the file), in pieces of at
  // least `min_piece` bytes.
  Status PumpTo(uint64_t target, uint64_t min_piece = 0) {
    while (pos_ < target && !eof_) RETURN_IF_ERROR(Pump(std::max(target - pos_, min_piece)));
    return Status::Ok();
  }

  // Drops the kept bytes of [start, end) that no pending claim covers.
  void DropUnclaimed(uint64_t start, uint64_t end) {
    uint64_t covered = start;
    for (auto it = claims_.lower_bound(start > max_claim_ ? start - max_claim_ : 0);
         it != claims_.end() && it->first < end; ++it) {
      if (it->second.end <= covered) continue;
      if (it->first > covered) buffer_.Drop(covered, it->first - covered);
      covered = std::max(covered, it->second.end);
      if (covered >= end) return;
    }
    if (covered < end) buffer_.Drop(covered, end - covered);
  }

  // ---- Emitting ----

  // The span of guest bytes at `at` within one cluster (or one unallocated L2 range).
  Result<Span> Piece(uint64_t at) const {
    Span s;
    const uint64_t g = at >> cb_, in = at & (cs_ - 1);
    if (!l1_read_) {
      s.kind = Span::kWait;
      s.wait = h_.l1_offset;
      s.wait_end = h_.l1_offset + h_.l1_needed * 8;
      s.wait_l1 = true;
      return s;
    }
    const uint64_t l1i = g / h_.l2_entries;
    if (l1_[l1i] == 0) {
      s.kind = Span::kZero;
      s.len = std::min(h_.size, ((l1i + 1) * h_.l2_entries) << cb_) - at;
      return s;
    }
    auto it = l2_.find(l1i);
    if (it == l2_.end()) {
      s.kind = Span::kWait;
      s.wait = l1_[l1i];
      s.wait_end = l1_[l1i] + cs_;
      return s;
    }
    ASSIGN_OR_RETURN(Entry e, Decode(g, it->second.data() + (g % h_.l2_entries) * entry_bytes_));
    s.len = cs_ - in;
    switch (e.kind) {
      case Entry::kZero:
        s.kind = Span::kZero;
        break;
      case Entry::kCompressed:
        s.kind = Span::kCompressed;
        s.entry = e;
        break;
      case Entry::kData:
        s.kind = Span::kData;
        s.host = e.host + in;
        if (h_.extended_l2) {
          // A run of subclusters with the same allocation state.
          const uint32_t sub_bits = cb_ - 5;
          uint32_t sc = static_cast<uint32_t>(in >> sub_bits), end = sc + 1;
          const bool allocated = (e.alloc >> sc) & 1;
          while (end < 32 && ((e.alloc >> end) & 1) == allocated) ++end;
          s.kind = allocated ? Span::kData : Span::kZero;
          s.len = (uint64_t{end} << sub_bits) - in;
        }
        break;
    }
    s.len = std::min(s.len, h_.size - at);
    return s;
  }

  // What to do at gpos_: zero and data spans are extended over following clusters (data
  // while the host bytes are contiguous), up to max bytes.
  Result<Span> Resolve(uint64_t max) const {
    ASSIGN_OR_RETURN(Span s, Piece(gpos_));
    if (s.kind == Span::kWait || s.kind == Span::kCompressed) return s;
    while (s.len < max && gpos_ + s.len < h_.size) {
      ASSIGN_OR_RETURN(Span n, Piece(gpos_ + s.len));
      if (n.kind != s.kind || (s.kind == Span::kData && n.host != s.host + s.len)) break;
      s.len += n.len;
    }
    s.len = std::min(s.len, max);
    return s;
  }

  // Moves the emission point on by n bytes; claims of clusters now emitted are done.
  void Advance(uint64_t n) {
    const uint64_t from = gpos_ >> cb_;
    gpos_ += n;
    const uint64_t to = gpos_ >= h_.size ? h_.clusters : gpos_ >> cb_;  // [from, to) are done
    for (uint64_t g = from; g < to;) {
      const uint64_t l1i = g / h_.l2_entries, l1_end = (l1i + 1) * h_.l2_entries;
      const uint64_t stop = std::min(to, l1_end);
      auto it = l2_.find(l1i);
      if (it != l2_.end()) {
        for (; g < stop; ++g) {
          auto e = Decode(g, it->second.data() + (g % h_.l2_entries) * entry_bytes_);
          if (e.ok() && e->kind != Entry::kZero) ClaimDone(*e, g);
        }
        if (to >= l1_end) {
          l2_.erase(it);
          l2_bytes_ -= cs_;
        }
      }
      g = stop;
    }
  }

  void ClaimDone(const Entry& e, uint64_t g) {
    auto [start, c] = ClaimOf(e, g);
    auto [lo, hi] = claims_.equal_range(start);
    for (auto it = lo; it != hi; ++it) {
      if (it->second.guest == g) {
        claims_.erase(it);
        break;
      }
    }
    // Its bytes may go now, unless another claim covers them or (for a cluster with
    // other references) an unread table may still refer to them.
    const uint64_t end = std::min(c.end, pos_);
    for (uint64_t u = start; u < end;) {
      const uint64_t v = std::min(end, ((u >> cb_) + 1) << cb_);
      if (c.exclusive || !MayBeClaimedLater(u >> cb_)) DropUnclaimed(u, v);
      u = v;
    }
  }

  Status Decompress(const char* in, size_t in_len, char* out, uint64_t guest, uint64_t off) {
    auto corrupt = [&](const std::string& why) {
      return Malformed("compressed cluster for " + At(guest) + " at file offset " +
                       std::to_string(off) + " is corrupt or truncated (" + why + ")");
    };
    if (h_.compression == Compression::kZlib) {
      // libdeflate inflates a whole cluster two to three times faster than zlib. Anything
      // it does not take as a cluster exactly (a stream longer than the cluster, which
      // QEMU truncates; a corrupt one) goes through zlib, which decides as before.
      if (!deflate_) deflate_ = libdeflate_alloc_decompressor();
      size_t in_used = 0, out_len = 0;
      if (deflate_ &&
          libdeflate_deflate_decompress_ex(deflate_, in, in_len, out, cs_, &in_used, &out_len) ==
              LIBDEFLATE_SUCCESS &&
          out_len == cs_) {
        return Status::Ok();
      }
      if (!zlib_ready_) {
        std::memset(&z_, 0, sizeof(z_));
        if (inflateInit2(&z_, -15) != Z_OK)
          return Status::Internal(what_ + ": inflateInit2 failed");
        zlib_ready_ = true;
      } else {
        inflateReset(&z_);
      }
      z_.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in));
      z_.avail_in = static_cast<uInt>(in_len);
      z_.next_out = reinterpret_cast<Bytef*>(out);
      z_.avail_out = static_cast<uInt>(cs_);
      const int rc = inflate(&z_, Z_FINISH);
      // Decompression stops when the cluster is full; the rest of the range is padding
      // or the next cluster's data.
      if (z_.avail_out != 0) {
        return corrupt(rc == Z_STREAM_END ? "too short"
                       : z_.msg           ? z_.msg
                                          : "zlib error " + std::to_string(rc));
      }
      return Status::Ok();
    }
    if (!zstd_) {
      zstd_ = ZSTD_createDCtx();
      if (!zstd_) return Status::Internal(what_ + ": ZSTD_createDCtx failed");
    } else {
      ZSTD_DCtx_reset(zstd_, ZSTD_reset_session_only);
    }
    ZSTD_inBuffer ib{in, in_len, 0};
    ZSTD_outBuffer ob{out, static_cast<size_t>(cs_), 0};
    while (ob.pos < ob.size) {
      const size_t in_before = ib.pos, out_before = ob.pos;
      const size_t rc = ZSTD_decompressStream(zstd_, &ob, &ib);
      if (ZSTD_isError(rc)) return corrupt(ZSTD_getErrorName(rc));
      if (ib.pos == in_before && ob.pos == out_before) return corrupt("too short");
    }
    return Status::Ok();
  }

  Result<size_t> EmitCompressed(const Span& s, char* buf, size_t max) {
    const uint64_t g = gpos_ >> cb_, in = gpos_ & (cs_ - 1);
    const Entry& e = s.entry;
    const uint64_t len = std::min<uint64_t>(s.len, max);
    const bool whole = in == 0 && max >= cs_;  // decompress straight into buf
    if (cached_ != g) {
      const uint64_t end = std::min(e.end, pos_);  // the range may end past a padded file
      if (e.host >= end) return PastEnd("compressed cluster for " + At(gpos_), e.host);
      packed_.resize(end - e.host);
      ASSIGN_OR_RETURN(bool ok, buffer_.Get(e.host, packed_.size(), packed_.data()));
      if (!ok) return NotKept(gpos_, e.host);
      if (whole) {
        RETURN_IF_ERROR(Decompress(packed_.data(), packed_.size(), buf, gpos_, e.host));
      } else {
        cluster_.resize(cs_);
        RETURN_IF_ERROR(Decompress(packed_.data(), packed_.size(), cluster_.data(), gpos_, e.host));
        cached_ = g;
      }
      ++compressed_clusters_;
    }
    if (cached_ == g) std::memcpy(buf, cluster_.data() + in, len);
    Advance(len);
    if (cached_ != kNoGuest && gpos_ >> cb_ != cached_) cached_ = kNoGuest;
    return static_cast<size_t>(len);
  }

  // Emits s.len bytes of a data span whose first byte is at or behind pos_.
  Result<size_t> EmitData(const Span& s, char* buf, bool* hole) {
    if (s.host < pos_) {
      const uint64_t n = std::min(s.len, pos_ - s.host);
      ASSIGN_OR_RETURN(bool ok, buffer_.Get(s.host, n, buf));
      if (!ok) return NotKept(gpos_, s.host);
      Advance(n);
      return static_cast<size_t>(n);
    }
    // The next bytes of the file are the next guest bytes: read them straight into buf.
    bool file_hole = false;
    ASSIGN_OR_RETURN(size_t k, file_->Next(buf, s.len, &file_hole));
    if (k == 0) {
      eof_ = true;
      return PastEnd("data for " + At(gpos_), s.host);
    }
    pos_ += k;
    direct_bytes_ += k;
    // Keep a copy only if something else may need these bytes too.
    const uint64_t g_lo = gpos_ >> cb_, g_hi = (gpos_ + k - 1) >> cb_;
    for (uint64_t done = 0; done < k;) {
      const uint64_t gp = gpos_ + done, g = gp >> cb_;
      const uint64_t piece = std::min<uint64_t>(k - done, cs_ - (gp & (cs_ - 1)));
      const auto& l2 = l2_.at(g / h_.l2_entries);
      ASSIGN_OR_RETURN(Entry e, Decode(g, l2.data() + (g % h_.l2_entries) * entry_bytes_));
      RETURN_IF_ERROR(
          Keep(s.host + done, file_hole ? nullptr : buf + done, piece, g_lo, g_hi, e.copied));
      done += piece;
    }
    Prune();
    Advance(k);
    *hole = file_hole;
    return k;
  }

  // Reads the file to its end (where a download checks its digest) and frees the rest.
  Status Finish() {
    if (finished_) return Status::Ok();
    while (!eof_) {
      bool hole = false;
      ASSIGN_OR_RETURN(size_t k, file_->Next(in_.data(), in_.size(), &hole));
      if (k == 0) eof_ = true;
      pos_ += k;
    }
    finished_ = true;
    pending_.clear();
    claims_.clear();
    l2_.clear();
    rb_.clear();
    for (const auto& [s, e] : buffer_.Ranges()) buffer_.Drop(s, e - s);
    in_ = {};
    return Status::Ok();
  }

  Result<size_t> NextImpl(char* buf, size_t max, bool* hole) {
    if (max == 0) return size_t{0};
    if (gpos_ >= h_.size) {
      RETURN_IF_ERROR(Finish());
      return size_t{0};
    }
    for (;;) {
      ASSIGN_OR_RETURN(Span s, Resolve(max));
      switch (s.kind) {
        case Span::kWait:
          if (pos_ >= s.wait_end)
            return Status::Internal(what_ + ": qcow2 reader waits for a table it passed");
          RETURN_IF_ERROR(PumpTo(s.wait_end));
          if (pos_ < s.wait_end) {
            return PastEnd(
                s.wait_l1 ? std::string("L1 table") : L2Name((gpos_ >> cb_) / h_.l2_entries),
                s.wait);
          }
          continue;
        case Span::kZero:
          Advance(s.len);
          *hole = true;
          return static_cast<size_t>(s.len);
        case Span::kData:
          if (s.host > pos_) {
            RETURN_IF_ERROR(PumpTo(s.host));
            if (pos_ < s.host) return PastEnd("data for " + At(gpos_), s.host);
            continue;
          }
          return EmitData(s, buf, hole);
        case Span::kCompressed:
          if (cached_ != (gpos_ >> cb_) && s.entry.end > pos_ && !eof_) {
            RETURN_IF_ERROR(PumpTo(s.entry.end, kReadAheadBytes));
            continue;
          }
          return EmitCompressed(s, buf, max);
      }
    }
  }

  void UpdateStats() {
    if (!stats_) return;
    stats_->file_bytes = pos_;
    stats_->direct_bytes = direct_bytes_;
    stats_->buffered_bytes = buffer_.put_bytes();
    stats_->spilled_bytes = buffer_.spilled_bytes();
    stats_->peak_buffered_bytes = buffer_.peak_held_bytes();
    stats_->peak_memory_bytes = buffer_.peak_memory_bytes();
    stats_->compressed_clusters = compressed_clusters_;
  }

  std::unique_ptr<ImageSource> file_;
  const Header h_;
  const std::string what_;
  const uint64_t cs_;
  const uint32_t cb_;
  const uint64_t entry_bytes_;

  // The file.
  uint64_t pos_ = 0;  // bytes of the file read (and filed) so far
  bool eof_ = false;
  std::vector<char> in_;
  ReorderBuffer buffer_;

  // Tables.
  std::map<uint64_t, Table> pending_;      // by file offset: tables not completely passed
  std::map<uint64_t, uint64_t> metadata_;  // start -> end of the header cluster and every table
  bool l1_read_ = false;
  std::vector<uint64_t> l1_;  // L2 table offsets (0 = none) of the needed entries
  uint64_t l2_unread_ = 0;
  bool all_tables_read_ = false;
  std::unordered_map<uint64_t, std::vector<char>> l2_;  // L1 index -> L2 table, until emitted
  uint64_t l2_bytes_ = 0;
  const uint64_t max_table_memory_;

  // Refcounts (only while tables are unread).
  const bool refcounts_trusted_;
  const uint32_t refcount_bits_;
  const uint64_t rb_entries_;
  bool rt_read_ = false;
  std::vector<uint64_t> rt_;
  std::map<uint64_t, std::vector<char>> rb_;  // block index -> refcount block
  uint64_t rb_bytes_ = 0;
  std::map<uint64_t, uint64_t> seen_;  // host cluster -> references seen, but copied ones

  // Claims: file bytes that guest clusters not emitted yet need, by first byte.
  std::multimap<uint64_t, Claim> claims_;
  uint64_t max_claim_;  // longest claim, for overlap searches

  // Emission.
  uint64_t gpos_ = 0;
  uint64_t cached_ = kNoGuest;  // the guest cluster decompressed in cluster_
  std::vector<char> cluster_, packed_;
  libdeflate_decompressor* deflate_ = nullptr;
  z_stream z_;
  bool zlib_ready_ = false;
  ZSTD_DCtx* zstd_ = nullptr;
  bool finished_ = false;
  Status failed_;  // sticky: once Next() failed it keeps failing

  Qcow2Stats* stats_;
  uint64_t direct_bytes_ = 0, compressed_clusters_ = 0;
};

}  // namespace

Result<uint64_t> Qcow2VirtualSize(const std::string& head, const std::string& what) {
  ASSIGN_OR_RETURN(Header h, ParseHeader(head, what));
  return h.size;
}

Result<std::unique_ptr<ImageSource>> OpenQcow2Source(std::unique_ptr<ImageSource> file,
                                                     const std::string& head,
                                                     const Qcow2Options& options) {
  ASSIGN_OR_RETURN(Header h, ParseHeader(head, "image " + file->Describe()));
  auto src = std::make_unique<Qcow2Source>(std::move(file), h, options);
  RETURN_IF_ERROR(src->Init());
  return std::unique_ptr<ImageSource>(std::move(src));
}

}  // namespace stellarium
