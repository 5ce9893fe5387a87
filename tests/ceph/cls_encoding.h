// Ceph's encoding of object-class calls: the bytes that `exec` sends to a class method
// on the OSD, and the bytes some methods answer. Ceph installs no client headers for the
// classes it ships (lock, refcount, cas, cmpomap, numops), so the requests are encoded
// here, following each class's request structs in Ceph's sources (src/cls/<class>/) and
// Ceph's encoding rules: integers little-endian; a string or a byte buffer is a u32
// length and the bytes; a bool is one byte; an optional value is a presence byte and,
// when present, the value; a map is a u32 count and its pairs in key order; a versioned
// struct opens with u8 version, u8 oldest compatible version and a u32 length of what
// follows (ENCODE_START). Decoders skip what a newer version appends, so these layouts
// stay valid against newer OSDs.
//
// Thread-safety: an encoder or decoder is used by one thread.
#pragma once

#include <cstdint>
#include <functional>
#include <list>
#include <map>
#include <optional>
#include <rados/librados.hpp>
#include <string>
#include <string_view>

namespace stellarium::testing {

class ClsEncoder {
 public:
  ClsEncoder& U8(uint8_t v) {
    out_.push_back(static_cast<char>(v));
    return *this;
  }
  ClsEncoder& Bool(bool v) { return U8(v ? 1 : 0); }
  ClsEncoder& U32(uint32_t v) { return Le(v, 4); }
  ClsEncoder& U64(uint64_t v) { return Le(v, 8); }
  ClsEncoder& S64(int64_t v) { return Le(static_cast<uint64_t>(v), 8); }
  ClsEncoder& String(std::string_view s) {
    U32(static_cast<uint32_t>(s.size()));
    out_.append(s);
    return *this;
  }
  // A map<string, bytes> (also Ceph's flat_map), in key order.
  ClsEncoder& StringMap(const std::map<std::string, std::string>& m) {
    U32(static_cast<uint32_t>(m.size()));
    for (const auto& [k, v] : m) String(k).String(v);
    return *this;
  }
  ClsEncoder& OptionalString(const std::optional<std::string>& v) {
    Bool(v.has_value());
    if (v) String(*v);
    return *this;
  }
  // A versioned struct: `fields` encodes its members.
  ClsEncoder& Struct(uint8_t version, uint8_t compat,
                     const std::function<void(ClsEncoder&)>& fields) {
    ClsEncoder inner;
    fields(inner);
    U8(version).U8(compat).U32(static_cast<uint32_t>(inner.out_.size()));
    out_ += inner.out_;
    return *this;
  }

  librados::bufferlist Finish() const {
    librados::bufferlist bl;
    bl.append(out_.data(), out_.size());
    return bl;
  }
  const std::string& bytes() const { return out_; }

 private:
  ClsEncoder& Le(uint64_t v, int n) {
    for (int i = 0; i < n; ++i) out_.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
    return *this;
  }
  std::string out_;
};

// Reads what ClsEncoder writes; after a short or malformed input ok() is false and every
// read returns zero values.
class ClsDecoder {
 public:
  explicit ClsDecoder(std::string bytes) : in_(std::move(bytes)) {}
  bool ok() const { return ok_; }
  bool AtEnd() const { return pos_ == in_.size(); }

  uint8_t U8() { return static_cast<uint8_t>(Le(1)); }
  uint32_t U32() { return static_cast<uint32_t>(Le(4)); }
  uint64_t U64() { return Le(8); }
  std::string String() {
    const uint32_t n = U32();
    if (!Need(n)) return {};
    std::string s = in_.substr(pos_, n);
    pos_ += n;
    return s;
  }
  std::list<std::string> StringList() {
    std::list<std::string> out;
    for (uint32_t n = U32(); ok_ && n > 0; --n) out.push_back(String());
    return out;
  }
  // A versioned struct's header; returns its version. The caller reads the members.
  uint8_t StructHeader() {
    const uint8_t version = U8();
    U8();  // oldest compatible version
    const uint32_t len = U32();
    if (!Need(len)) return 0;
    return version;
  }

 private:
  bool Need(size_t n) {
    if (!ok_ || in_.size() - pos_ < n) ok_ = false;
    return ok_;
  }
  uint64_t Le(int n) {
    if (!Need(static_cast<size_t>(n))) return 0;
    uint64_t v = 0;
    for (int i = 0; i < n; ++i) v |= uint64_t{static_cast<uint8_t>(in_[pos_ + i])} << (8 * i);
    pos_ += static_cast<size_t>(n);
    return v;
  }
  std::string in_;
  size_t pos_ = 0;
  bool ok_ = true;
};

// ---- requests of the classes Ceph ships (exec(class, method, request)) ----

// cls_lock (class "lock"): types as Ceph numbers them.
enum class LockType : uint8_t { kExclusive = 1, kShared = 2, kExclusiveEphemeral = 3 };
// Flags of a lock request: renew when this client and cookie hold it already.
constexpr uint8_t kLockMayRenew = 1;
constexpr uint8_t kLockMustRenew = 2;

// "lock": takes the lock `name` for the calling client with `cookie`. duration_s == 0:
// no expiry.
inline librados::bufferlist LockRequest(const std::string& name, LockType type,
                                        const std::string& cookie, const std::string& tag,
                                        const std::string& description, uint32_t duration_s,
                                        uint8_t flags) {
  return ClsEncoder()
      .Struct(1, 1,
              [&](ClsEncoder& e) {
                e.String(name).U8(static_cast<uint8_t>(type)).String(cookie).String(tag);
                e.String(description).U32(duration_s).U32(0).U8(flags);  // utime: sec, nsec
              })
      .Finish();
}

// "assert_locked": fails (EBUSY) unless the calling client holds `name` with `cookie`,
// type and tag.
inline librados::bufferlist AssertLockedRequest(const std::string& name, LockType type,
                                                const std::string& cookie, const std::string& tag) {
  return ClsEncoder()
      .Struct(1, 1,
              [&](ClsEncoder& e) {
                e.String(name).U8(static_cast<uint8_t>(type)).String(cookie).String(tag);
              })
      .Finish();
}

// "unlock": the calling client's lock `name` with `cookie`.
inline librados::bufferlist UnlockRequest(const std::string& name, const std::string& cookie) {
  return ClsEncoder().Struct(1, 1, [&](ClsEncoder& e) { e.String(name).String(cookie); }).Finish();
}

// cls_refcount (class "refcount"): "get" and "put" take {tag, implicit_ref}; "read"
// takes {implicit_ref} and answers {list<string> tags}.
inline librados::bufferlist RefcountRequest(const std::string& tag, bool implicit_ref = false) {
  return ClsEncoder()
      .Struct(1, 1, [&](ClsEncoder& e) { e.String(tag).Bool(implicit_ref); })
      .Finish();
}
inline librados::bufferlist RefcountReadRequest(bool implicit_ref = false) {
  return ClsEncoder().Struct(1, 1, [&](ClsEncoder& e) { e.Bool(implicit_ref); }).Finish();
}
inline std::list<std::string> DecodeRefcountRead(const librados::bufferlist& out, bool* ok) {
  ClsDecoder d(const_cast<librados::bufferlist&>(out).to_str());
  d.StructHeader();
  std::list<std::string> tags = d.StringList();
  *ok = d.ok();
  return tags;
}

// cls_cas (class "cas"): references to a chunk object are counted by source object (an
// hobject_t: key, name, snap, hash, max, namespace, pool).
struct CasSource {
  std::string name;
  int64_t pool = 0;
  std::string nspace;
  uint32_t hash = 0;
};
inline void EncodeHobject(ClsEncoder& e, const CasSource& s) {
  constexpr uint64_t kNoSnap = ~uint64_t{0} - 1;  // CEPH_NOSNAP: the head object
  e.Struct(4, 3, [&](ClsEncoder& h) {
    h.String("").String(s.name).U64(kNoSnap).U32(s.hash).Bool(false).String(s.nspace).S64(s.pool);
  });
}
// Flag of "chunk_create_or_get_ref": compare the data with the existing chunk's (ENOMSG
// when they differ).
constexpr uint64_t kCasVerify = 1;
// "chunk_create_or_get_ref": writes `data` when the object has no references yet, and
// adds a reference from `source`.
inline librados::bufferlist CasCreateOrGetRefRequest(const CasSource& source, uint64_t flags,
                                                     const std::string& data) {
  return ClsEncoder()
      .Struct(1, 1,
              [&](ClsEncoder& e) {
                EncodeHobject(e, source);
                e.U64(flags).String(data);
              })
      .Finish();
}
// "chunk_get_ref" and "chunk_put_ref": add or drop a reference from `source`.
inline librados::bufferlist CasRefRequest(const CasSource& source) {
  return ClsEncoder().Struct(1, 1, [&](ClsEncoder& e) { EncodeHobject(e, source); }).Finish();
}

// cls_cmpomap (class "cmpomap"): compare omap values with given ones. Mode: how values
// compare (bytes, or u64 decoded from 8 little-endian bytes); the input value is the
// left operand, the stored one the right.
enum class CmpMode : uint8_t { kString = 1, kU64 = 2 };
enum class CmpOp : uint8_t { kEq = 1, kNe = 2, kGt = 3, kGte = 4, kLt = 5, kLte = 6 };
// "cmp_vals" (read), "cmp_set_vals" and "cmp_rm_keys" (write) take {mode, op, values,
// default for missing keys}; cmp_rm_keys has no default.
inline librados::bufferlist CmpOmapRequest(CmpMode mode, CmpOp op,
                                           const std::map<std::string, std::string>& values,
                                           std::optional<std::string> default_value,
                                           bool has_default_field = true) {
  return ClsEncoder()
      .Struct(1, 1,
              [&](ClsEncoder& e) {
                e.U8(static_cast<uint8_t>(mode)).U8(static_cast<uint8_t>(op)).StringMap(values);
                if (has_default_field) e.OptionalString(default_value);
              })
      .Finish();
}
inline std::string U64Value(uint64_t v) { return ClsEncoder().U64(v).bytes(); }

// cls_numops (class "numops"): "add" and "mul" take {key, operand as decimal text} (no
// struct header) and store the result as decimal text with 10 significant digits.
inline librados::bufferlist NumopsRequest(const std::string& key, const std::string& operand) {
  return ClsEncoder().String(key).String(operand).Finish();
}

}  // namespace stellarium::testing
