// Encodings for the on-disk format; see format.h and docs/FORMAT.md.
#include "core/format.h"

#include <cstring>

namespace stellarium::format {
namespace {

constexpr uint8_t kRecordVersion = 1;

void PutFixed32(std::string* s, uint32_t v) {
  for (int i = 0; i < 4; ++i) s->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
void PutFixed64(std::string* s, uint64_t v) {
  for (int i = 0; i < 8; ++i) s->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
void PutVarint(std::string* s, uint64_t v) {
  while (v >= 0x80) {
    s->push_back(static_cast<char>(v | 0x80));
    v >>= 7;
  }
  s->push_back(static_cast<char>(v));
}
void PutString(std::string* s, std::string_view v) {
  PutVarint(s, v.size());
  s->append(v);
}

// Reads fields in order; any overrun marks the decoder failed.
class Reader {
 public:
  explicit Reader(std::string_view in) : in_(in) {}
  bool ok() const { return ok_; }
  bool empty() const { return in_.empty(); }
  size_t remaining() const { return in_.size(); }
  uint8_t U8() {
    if (in_.size() < 1) return Fail(), 0;
    uint8_t v = static_cast<uint8_t>(in_[0]);
    in_.remove_prefix(1);
    return v;
  }
  uint32_t Fixed32() {
    if (in_.size() < 4) return Fail(), 0;
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i) v |= uint32_t(static_cast<uint8_t>(in_[i])) << (8 * i);
    in_.remove_prefix(4);
    return v;
  }
  uint64_t Fixed64() {
    if (in_.size() < 8) return Fail(), 0;
    uint64_t v = 0;
    for (int i = 0; i < 8; ++i) v |= uint64_t(static_cast<uint8_t>(in_[i])) << (8 * i);
    in_.remove_prefix(8);
    return v;
  }
  uint64_t Varint() {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (in_.empty()) return Fail(), 0;
      uint8_t b = static_cast<uint8_t>(in_[0]);
      in_.remove_prefix(1);
      v |= uint64_t(b & 0x7f) << shift;
      if (!(b & 0x80)) return v;
    }
    return Fail(), 0;
  }
  std::string String() {
    uint64_t n = Varint();
    if (!ok_ || in_.size() < n) return Fail(), std::string();
    std::string v(in_.substr(0, n));
    in_.remove_prefix(n);
    return v;
  }

 private:
  void Fail() { ok_ = false; }
  std::string_view in_;
  bool ok_ = true;
};

uint64_t ZigZag(int64_t v) { return (static_cast<uint64_t>(v) << 1) ^ static_cast<uint64_t>(v >> 63); }
int64_t UnZigZag(uint64_t v) { return static_cast<int64_t>(v >> 1) ^ -static_cast<int64_t>(v & 1); }

Status Bad(const std::string& what) {
  return Status::Corruption(what + ": undecodable record (docs/FORMAT.md)");
}

void PutAttributes(std::string* s, const Attributes& a) {
  PutVarint(s, a.size());
  for (const auto& [k, v] : a) {
    PutString(s, k);
    PutString(s, v);
  }
}
Attributes ReadAttributes(Reader* r) {
  Attributes a;
  uint64_t n = r->Varint();
  for (uint64_t i = 0; i < n && r->ok(); ++i) {
    std::string k = r->String();
    a[k] = r->String();
  }
  return a;
}

}  // namespace

std::string LayerKey(uint64_t layer) {
  std::string k(8, '\0');
  for (int i = 0; i < 8; ++i) k[i] = static_cast<char>((layer >> (56 - 8 * i)) & 0xff);
  return k;
}

uint64_t DecodeLayerKey(std::string_view key) {
  uint64_t v = 0;
  for (int i = 0; i < 8 && i < static_cast<int>(key.size()); ++i)
    v = (v << 8) | static_cast<uint8_t>(key[i]);
  return v;
}

MapKeyBytes MapKeyOf(uint64_t layer, uint64_t block) {
  MapKeyBytes k;
  for (int i = 0; i < 8; ++i) {
    k.bytes[i] = static_cast<char>(layer >> (56 - 8 * i));
    k.bytes[8 + i] = static_cast<char>(block >> (56 - 8 * i));
  }
  return k;
}

std::string MapKey(uint64_t layer, uint64_t block) {
  return std::string(MapKeyOf(layer, block).view());
}

void DecodeMapKey(std::string_view key, uint64_t* layer, uint64_t* block) {
  *layer = DecodeLayerKey(key.substr(0, 8));
  *block = DecodeLayerKey(key.substr(8, 8));
}

std::string VolumeNameKey(std::string_view name) { return "v" + std::string(name); }
std::string SnapshotNameKey(std::string_view name) { return "s" + std::string(name); }

std::string EncodeU64(uint64_t v) {
  std::string s;
  PutFixed64(&s, v);
  return s;
}
uint64_t DecodeU64(std::string_view v) {
  Reader r(v);
  return r.Fixed64();
}

std::string EncodeFormatVersion(uint32_t version) {
  std::string s;
  PutFixed32(&s, version);
  return s;
}

uint32_t DecodeFormatVersion(std::string_view v) {
  Reader r(v);
  const uint32_t version = r.Fixed32();
  return r.ok() && v.size() == 4 ? version : 0;
}

std::string EncodeLayer(const LayerRecord& r) {
  std::string s;
  s.push_back(static_cast<char>(kRecordVersion));
  PutFixed64(&s, r.parent);
  s.push_back(static_cast<char>(r.state));
  PutFixed64(&s, r.refs);
  PutFixed32(&s, r.block_size);
  PutFixed64(&s, static_cast<uint64_t>(r.created_unix_ns));
  PutString(&s, r.image_digest);
  if (!r.owner.empty()) PutString(&s, r.owner);
  return s;
}

Result<LayerRecord> DecodeLayer(uint64_t id, std::string_view v) {
  Reader rd(v);
  LayerRecord r;
  r.id = id;
  uint8_t ver = rd.U8();
  r.parent = rd.Fixed64();
  uint8_t state = rd.U8();
  r.refs = rd.Fixed64();
  r.block_size = rd.Fixed32();
  r.created_unix_ns = static_cast<int64_t>(rd.Fixed64());
  r.image_digest = rd.String();
  if (!rd.empty()) r.owner = rd.String();
  if (!rd.ok() || ver < 1 || state < 1 || state > 4) {
    return Bad("layer " + std::to_string(id));
  }
  r.state = static_cast<LayerState>(state);
  return r;
}

std::string EncodeVolume(const VolumeRecord& r) {
  std::string s;
  s.push_back(static_cast<char>(kRecordVersion));
  PutString(&s, r.info.name);
  PutFixed64(&s, r.info.size_bytes);
  PutFixed32(&s, r.info.block_size);
  PutFixed64(&s, r.head);
  PutString(&s, r.info.source_kind);
  PutString(&s, r.info.source_id);
  PutFixed64(&s, static_cast<uint64_t>(r.info.created_unix_ns));
  PutAttributes(&s, r.info.attributes);
  return s;
}

Result<VolumeRecord> DecodeVolume(std::string_view id, std::string_view v) {
  Reader rd(v);
  VolumeRecord r;
  r.info.id = std::string(id);
  uint8_t ver = rd.U8();
  r.info.name = rd.String();
  r.info.size_bytes = rd.Fixed64();
  r.info.block_size = rd.Fixed32();
  r.head = rd.Fixed64();
  r.info.source_kind = rd.String();
  r.info.source_id = rd.String();
  r.info.created_unix_ns = static_cast<int64_t>(rd.Fixed64());
  r.info.attributes = ReadAttributes(&rd);
  if (!rd.ok() || ver < 1) return Bad("volume " + std::string(id));
  return r;
}

std::string EncodeSnapshot(const SnapshotRecord& r) {
  std::string s;
  s.push_back(static_cast<char>(kRecordVersion));
  PutString(&s, r.info.name);
  PutString(&s, r.info.source_volume_id);
  PutFixed64(&s, r.layer);
  PutFixed64(&s, r.info.size_bytes);
  PutFixed32(&s, r.info.block_size);
  PutFixed64(&s, static_cast<uint64_t>(r.info.created_unix_ns));
  return s;
}

Result<SnapshotRecord> DecodeSnapshot(std::string_view id, std::string_view v) {
  Reader rd(v);
  SnapshotRecord r;
  r.info.id = std::string(id);
  uint8_t ver = rd.U8();
  r.info.name = rd.String();
  r.info.source_volume_id = rd.String();
  r.layer = rd.Fixed64();
  r.info.size_bytes = rd.Fixed64();
  r.info.block_size = rd.Fixed32();
  r.info.created_unix_ns = static_cast<int64_t>(rd.Fixed64());
  if (!rd.ok() || ver < 1) return Bad("snapshot " + std::string(id));
  return r;
}

std::string EncodeImage(const ImageRecord& r) {
  std::string s;
  s.push_back(static_cast<char>(kRecordVersion));
  PutFixed64(&s, r.layer);
  PutFixed64(&s, r.info.size_bytes);
  PutFixed32(&s, r.info.block_size);
  PutString(&s, r.info.origin);
  PutFixed64(&s, static_cast<uint64_t>(r.info.created_unix_ns));
  return s;
}

Result<ImageRecord> DecodeImage(std::string_view digest_bytes, std::string_view v) {
  Reader rd(v);
  ImageRecord r;
  r.info.digest = ToHex(reinterpret_cast<const uint8_t*>(digest_bytes.data()),
                        digest_bytes.size());
  uint8_t ver = rd.U8();
  r.layer = rd.Fixed64();
  r.info.size_bytes = rd.Fixed64();
  r.info.block_size = rd.Fixed32();
  r.info.origin = rd.String();
  r.info.created_unix_ns = static_cast<int64_t>(rd.Fixed64());
  if (!rd.ok() || ver < 1) return Bad("image " + r.info.digest);
  return r;
}

std::string EncodeChunkRecord(const ChunkRecord& r) {
  std::string s;
  PutVarint(&s, ZigZag(r.count));
  PutVarint(&s, r.locator);
  return s;
}

bool DecodeChunkRecord(std::string_view v, ChunkRecord* r) {
  Reader in(v);
  r->count = UnZigZag(in.Varint());
  r->locator = in.Varint();
  return in.ok();
}

MapValueBytes MapValueOf(const ChunkId& id, uint64_t hint) {
  MapValueBytes v;
  std::memcpy(v.bytes, id.data(), kChunkIdSize);
  size_t n = kChunkIdSize;
  for (; hint >= 0x80; hint >>= 7) v.bytes[n++] = static_cast<char>(hint | 0x80);
  if (hint != 0 || n > kChunkIdSize) v.bytes[n++] = static_cast<char>(hint);
  v.size = static_cast<uint8_t>(n);
  return v;
}

std::string EncodeMapValue(const ChunkId& id, uint64_t hint) {
  return std::string(MapValueOf(id, hint).view());
}

MapValue DecodeMapValue(std::string_view v) {
  MapValue m;
  if (v.empty()) {
    m.kind = MapValue::kZero;
    return m;
  }
  if (v.size() < kChunkIdSize) return m;  // kMalformed
  std::memcpy(m.id.data(), v.data(), kChunkIdSize);
  if (v.size() > kChunkIdSize) {
    Reader in(v.substr(kChunkIdSize));
    m.hint = in.Varint();
    if (!in.ok()) return m;
  }
  m.kind = MapValue::kChunk;
  return m;
}

ImageDigest::ImageDigest() { body_.Update(kImageDigestTag.data(), kImageDigestTag.size()); }

void ImageDigest::AddBlock(const ChunkId& id) { body_.Update(id.data(), id.size()); }

ChunkId ImageDigest::Finish(uint32_t block_size, uint64_t size) {
  Sha256Stream full;
  full.Update(kImageDigestTag.data(), kImageDigestTag.size());
  std::string header;
  PutFixed32(&header, block_size);
  PutFixed64(&header, size);
  full.Update(header.data(), header.size());
  const ChunkId body = body_.Finish();
  full.Update(body.data(), body.size());
  return full.Finish();
}

std::string DataKey(uint64_t locator) { return LayerKey(locator); }
uint64_t DecodeDataKey(std::string_view key) { return DecodeLayerKey(key); }

namespace rados {
namespace {

std::string Hex(uint64_t v, int digits) {
  char buf[17];
  snprintf(buf, sizeof buf, "%0*llx", digits, static_cast<unsigned long long>(v));
  return buf;
}

bool ParseHex(std::string_view s, uint64_t* v) {
  if (s.empty() || s.size() > 16) return false;
  *v = 0;
  for (char c : s) {
    int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
    if (d < 0) return false;
    *v = *v << 4 | static_cast<uint64_t>(d);
  }
  return true;
}

}  // namespace

std::string CatalogKey(char table, std::string_view key) { return table + std::string(key); }

std::string MapObject(uint64_t layer, uint64_t shard) {
  return std::string(kMapObjectPrefix) + Hex(layer, 16) + "." + Hex(shard, 8);
}

std::string MapDirectoryObject(uint64_t layer) {
  return std::string(kMapDirectoryPrefix) + Hex(layer, 16);
}

bool DecodeMapDirectoryObject(std::string_view name, uint64_t* layer) {
  if (name.substr(0, kMapDirectoryPrefix.size()) != kMapDirectoryPrefix) return false;
  return ParseHex(name.substr(kMapDirectoryPrefix.size()), layer);
}

std::string MapBlockKey(uint64_t block) { return LayerKey(block); }

void AppendMapRecord(std::string* out, uint64_t block, std::string_view value) {
  out->append(LayerKey(block));
  PutString(out, value);
}

bool DecodeMapRecords(std::string_view data,
                      const std::function<void(uint64_t, std::string_view)>& fn) {
  while (!data.empty()) {
    if (data.size() < 9) return false;
    const uint64_t block = DecodeLayerKey(data.substr(0, 8));
    Reader rd(data.substr(8));
    const uint64_t n = rd.Varint();
    const size_t header = 8 + (data.size() - 8 - rd.remaining());
    if (!rd.ok() || data.size() < header + n) return false;
    fn(block, data.substr(header, n));
    data.remove_prefix(header + n);
  }
  return true;
}
uint64_t DecodeMapBlockKey(std::string_view key) { return DecodeLayerKey(key); }

bool DecodeMapObject(std::string_view name, uint64_t* layer, uint64_t* shard) {
  if (name.substr(0, kMapObjectPrefix.size()) != kMapObjectPrefix) return false;
  name.remove_prefix(kMapObjectPrefix.size());
  const size_t dot = name.find('.');
  return dot == 16 && ParseHex(name.substr(0, 16), layer) && ParseHex(name.substr(17), shard);
}

std::string IndexObject(uint8_t shard) { return "stellarium.index." + Hex(shard, 2); }
std::string IndexLocationKey(const ChunkId& id) { return std::string(AsBytes(id)) + "L"; }
std::string IndexCondemnedKey(const ChunkId& id) { return std::string(AsBytes(id)) + "C"; }

std::string PackObject(uint64_t pack) { return std::string(kPackObjectPrefix) + Hex(pack, 11); }

bool DecodePackObject(std::string_view name, uint64_t* pack) {
  if (name.substr(0, kPackObjectPrefix.size()) != kPackObjectPrefix) return false;
  return ParseHex(name.substr(kPackObjectPrefix.size()), pack);
}

std::string SlotGroupKey(uint32_t group) {
  std::string k = "s";
  for (int i = 3; i >= 0; --i) k.push_back(static_cast<char>(group >> (8 * i)));
  return k;
}

std::string EncodeSlotGroup(const std::vector<Slot>& slots) {
  std::string s;
  for (const Slot& slot : slots) {
    PutFixed32(&s, slot.offset);
    PutFixed32(&s, slot.stored);
    PutFixed32(&s, slot.raw);
    s.push_back(static_cast<char>(slot.codec));
    s.push_back(static_cast<char>(slot.present ? 1 : 0));
  }
  return s;
}

bool DecodeSlotGroup(std::string_view v, std::vector<Slot>* slots) {
  constexpr size_t kSize = 14;
  if (v.size() % kSize != 0 || v.size() / kSize > kSlotGroup) return false;
  Reader rd(v);
  slots->resize(v.size() / kSize);
  for (Slot& slot : *slots) {
    slot.offset = rd.Fixed32();
    slot.stored = rd.Fixed32();
    slot.raw = rd.Fixed32();
    slot.codec = rd.U8();
    slot.present = rd.U8() != 0;
  }
  return rd.ok();
}

std::string ClientObject(std::string_view client) { return "stellarium.client." + std::string(client); }

std::string EncodeI64(int64_t v) { return EncodeU64(static_cast<uint64_t>(v)); }
int64_t DecodeI64(std::string_view v) { return static_cast<int64_t>(DecodeU64(v)); }

}  // namespace rados

}  // namespace stellarium::format
