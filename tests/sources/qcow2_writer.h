// WriteQcow2: writes a raw image as a qcow2 file with a chosen layout, for the streaming
// reader's tests. qemu-img only writes a few layouts (L1 early, each L2 before its data,
// data in guest order); the format allows any, and the reader must read any. The tests
// check every file this makes with `qemu-img check` (so it is valid by qemu's standard)
// and compare the reader's output with `qemu-img convert -O raw` of it.
//
// Written from docs/interop/qcow2.txt: version 2 or 3 header, refcount_order 4, one
// refcount table cluster, exact refcounts, copied flags where a refcount is 1,
// compressed clusters as raw deflate packed byte after byte (so neighbours share a
// sector and straddle host clusters, as qemu packs them).
#pragma once

#include <zlib.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <numeric>
#include <random>
#include <string>
#include <vector>

namespace stellarium::testing {

struct Qcow2Layout {
  uint32_t cluster_bits = 12;
  int version = 3;
  enum class Order { kGuest, kReverse, kShuffled } data_order = Order::kGuest;
  // Where each L2 table goes: before the first data cluster it maps, after the last,
  // all before all data, or all after all data.
  enum class L2Place { kBeforeData, kAfterData, kFirst, kAtEnd } l2 = L2Place::kBeforeData;
  bool last_l2_at_end = false;    // the last L2 table after all data, whatever `l2` says
  bool l1_at_end = false;         // else right after the header
  bool refcounts_at_end = false;  // refcount table and blocks; else after the header
  bool compress = false;          // clusters that deflate smaller are stored compressed
  // Guest clusters with equal content share one host cluster (refcount > 1, no copied
  // flag), so an L2 table read late may refer to data read long before.
  bool share_duplicates = false;
  bool zero_flag = false;  // v3: all-zero clusters as "reads as zeros" entries
  bool dirty = false;      // v3: set the dirty bit (refcounts not to be trusted)
  // Malformed on purpose: shared clusters keep refcount 1 and the copied flag.
  bool wrong_refcounts = false;
  uint64_t seed = 1;
};

inline void PutBe64(std::string& s, uint64_t at, uint64_t v) {
  for (int i = 7; i >= 0; --i, v >>= 8) s[at + i] = static_cast<char>(v & 0xff);
}
inline void PutBe32(std::string& s, uint64_t at, uint32_t v) {
  for (int i = 3; i >= 0; --i, v >>= 8) s[at + i] = static_cast<char>(v & 0xff);
}
inline void PutBe16(std::string& s, uint64_t at, uint16_t v) {
  s[at] = static_cast<char>(v >> 8);
  s[at + 1] = static_cast<char>(v & 0xff);
}

// Raw deflate, as qcow2's zlib compression type stores clusters.
inline std::string Deflate(const std::string& in) {
  z_stream z;
  std::memset(&z, 0, sizeof(z));
  deflateInit2(&z, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -12, 9, Z_DEFAULT_STRATEGY);
  std::string out(deflateBound(&z, in.size()), '\0');
  z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data()));
  z.avail_in = static_cast<uInt>(in.size());
  z.next_out = reinterpret_cast<Bytef*>(out.data());
  z.avail_out = static_cast<uInt>(out.size());
  deflate(&z, Z_FINISH);
  out.resize(z.total_out);
  deflateEnd(&z);
  return out;
}

inline std::string WriteQcow2(const std::string& raw, const Qcow2Layout& l) {
  const uint64_t cs = 1ull << l.cluster_bits;
  const uint64_t clusters = (raw.size() + cs - 1) / cs, l2_entries = cs / 8;
  const uint64_t l1_entries = (clusters + l2_entries - 1) / l2_entries;
  auto content = [&](uint64_t g) {
    std::string c = raw.substr(g * cs, cs);
    c.resize(cs, '\0');
    return c;
  };
  // The payloads: one per distinct stored cluster, in guest order of first use.
  struct Payload {
    std::string bytes;
    bool compressed = false;
    uint64_t host = 0, nsec = 0;
    std::vector<uint64_t> users;  // guest clusters
  };
  std::vector<Payload> payloads;
  std::vector<int64_t> payload_of(clusters, -1);
  std::map<std::string, size_t> by_content;
  const uint64_t max_sectors = 1ull << (l.cluster_bits - 8);  // the nb_sectors field's range
  for (uint64_t g = 0; g < clusters; ++g) {
    std::string c = content(g);
    if (c.find_first_not_of('\0') == std::string::npos) continue;
    if (l.share_duplicates) {
      auto it = by_content.find(c);
      if (it != by_content.end()) {
        payload_of[g] = static_cast<int64_t>(it->second);
        payloads[it->second].users.push_back(g);
        continue;
      }
      by_content.emplace(c, payloads.size());
    }
    Payload p;
    if (l.compress) {
      std::string z = Deflate(c);
      if (z.size() < cs && (z.size() + 511) / 512 <= max_sectors) {  // as qemu: only if smaller
        p.bytes = std::move(z);
        p.compressed = true;
      }
    }
    if (!p.compressed) p.bytes = std::move(c);
    p.users.push_back(g);
    payload_of[g] = static_cast<int64_t>(payloads.size());
    payloads.push_back(std::move(p));
  }
  std::vector<size_t> order(payloads.size());
  std::iota(order.begin(), order.end(), 0);
  if (l.data_order == Qcow2Layout::Order::kReverse) std::reverse(order.begin(), order.end());
  if (l.data_order == Qcow2Layout::Order::kShuffled)
    std::shuffle(order.begin(), order.end(), std::mt19937_64(l.seed));

  // Place everything, cluster by cluster; compressed payloads are packed byte-wise.
  uint64_t cursor = cs;  // after the header cluster
  auto align = [&] { cursor = (cursor + cs - 1) / cs * cs; };
  auto take_clusters = [&](uint64_t n) {
    align();
    uint64_t at = cursor;
    cursor += n * cs;
    return at;
  };
  // Enough refcount blocks for any file this can make (each covers cs/2 clusters).
  const uint64_t l1_clusters = (l1_entries * 8 + cs - 1) / cs;
  const uint64_t bound = 2 + l1_clusters + l1_entries + 2 * payloads.size() + 64;
  const uint64_t rb_count = (bound + cs / 2 - 1) / (cs / 2) + 1;
  const uint64_t rt_clusters = (rb_count * 8 + cs - 1) / cs;
  uint64_t rt_at = 0, l1_at = 0;
  std::vector<uint64_t> rb_at(rb_count), l2_at(l1_entries, 0);
  auto place_refcounts = [&] {
    rt_at = take_clusters(rt_clusters);
    for (auto& b : rb_at) b = take_clusters(1);
  };
  if (!l.refcounts_at_end) place_refcounts();
  if (!l.l1_at_end) l1_at = take_clusters(l1_clusters);
  // Which L2 tables each payload's users need, and the last payload of each table.
  std::vector<int64_t> last_of_l2(l1_entries, -1);
  for (size_t k = 0; k < order.size(); ++k) {
    for (uint64_t g : payloads[order[k]].users)
      last_of_l2[g / l2_entries] = static_cast<int64_t>(k);
  }
  if (l.l2 == Qcow2Layout::L2Place::kFirst) {
    for (uint64_t i = 0; i < l1_entries; ++i) {
      if (last_of_l2[i] >= 0) l2_at[i] = take_clusters(1);
    }
  }
  for (size_t k = 0; k < order.size(); ++k) {
    Payload& p = payloads[order[k]];
    auto deferred = [&](uint64_t i) { return l.last_l2_at_end && i + 1 == l1_entries; };
    if (l.l2 == Qcow2Layout::L2Place::kBeforeData) {
      for (uint64_t g : p.users) {
        if (l2_at[g / l2_entries] == 0 && !deferred(g / l2_entries))
          l2_at[g / l2_entries] = take_clusters(1);
      }
    }
    if (p.compressed) {
      p.host = cursor;
      p.nsec = ((cursor + p.bytes.size() - 1) >> 9) - (cursor >> 9);
      cursor += p.bytes.size();
    } else {
      p.host = take_clusters(1);
    }
    if (l.l2 == Qcow2Layout::L2Place::kAfterData) {
      for (uint64_t i = 0; i < l1_entries; ++i) {
        if (last_of_l2[i] == static_cast<int64_t>(k) && l2_at[i] == 0 && !deferred(i))
          l2_at[i] = take_clusters(1);
      }
    }
  }
  for (uint64_t i = 0; i < l1_entries; ++i) {
    if (l2_at[i] == 0 && last_of_l2[i] >= 0) l2_at[i] = take_clusters(1);
  }
  if (l.l1_at_end) l1_at = take_clusters(l1_clusters);
  if (l.refcounts_at_end) place_refcounts();
  uint64_t file_size = (cursor + 511) / 512 * 512;

  // Refcounts.
  std::vector<uint64_t> rc((file_size + cs - 1) / cs, 0);
  auto ref = [&](uint64_t off, uint64_t len) {
    for (uint64_t c = off / cs; c <= (off + len - 1) / cs; ++c) ++rc[c];
  };
  ref(0, cs);
  ref(rt_at, rt_clusters * cs);
  if (rc.size() > rb_count * (cs / 2)) std::abort();  // the bound above was too small
  for (uint64_t b : rb_at) ref(b, cs);
  ref(l1_at, l1_clusters * cs);
  for (uint64_t a : l2_at) {
    if (a) ref(a, cs);
  }
  for (const Payload& p : payloads) {
    for (size_t u = 0; u < p.users.size(); ++u) {
      if (l.wrong_refcounts && u > 0) break;
      ref(p.host, p.compressed ? (p.nsec + 1) * 512 - (p.host & 511) : cs);
    }
  }

  std::string f(file_size, '\0');
  std::memcpy(f.data(), "QFI\xfb", 4);
  PutBe32(f, 4, static_cast<uint32_t>(l.version));
  PutBe32(f, 20, l.cluster_bits);
  PutBe64(f, 24, raw.size());
  PutBe32(f, 36, static_cast<uint32_t>(l1_entries));
  PutBe64(f, 40, l1_at);
  PutBe64(f, 48, rt_at);
  PutBe32(f, 56, static_cast<uint32_t>(rt_clusters));
  if (l.version == 3) {
    PutBe64(f, 72, l.dirty ? 1 : 0);
    PutBe32(f, 96, 4);
    PutBe32(f, 100, 112);
  }
  for (uint64_t b = 0; b < rb_count; ++b) PutBe64(f, rt_at + 8 * b, rb_at[b]);
  for (uint64_t c = 0; c < rc.size(); ++c) {
    PutBe16(f, rb_at[c / (cs / 2)] + 2 * (c % (cs / 2)), static_cast<uint16_t>(rc[c]));
  }
  const uint64_t copied = 1ull << 63;
  for (uint64_t i = 0; i < l1_entries; ++i) {
    if (l2_at[i]) PutBe64(f, l1_at + 8 * i, l2_at[i] | copied);
  }
  const uint32_t x = 62 - (l.cluster_bits - 8);
  for (uint64_t g = 0; g < clusters; ++g) {
    const uint64_t l2 = l2_at[g / l2_entries];
    const uint64_t at = l2 + 8 * (g % l2_entries);
    if (payload_of[g] < 0) {
      if (l.zero_flag && l2) PutBe64(f, at, 1);
      continue;
    }
    const Payload& p = payloads[static_cast<size_t>(payload_of[g])];
    if (p.compressed) {
      PutBe64(f, at, (1ull << 62) | (p.nsec << x) | p.host);
    } else {
      const bool one = rc[p.host / cs] == 1 || l.wrong_refcounts;
      PutBe64(f, at, p.host | (one ? copied : 0));
    }
  }
  for (const Payload& p : payloads) std::memcpy(f.data() + p.host, p.bytes.data(), p.bytes.size());
  return f;
}

}  // namespace stellarium::testing
