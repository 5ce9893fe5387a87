// What the RADOS store's design relies on, shown against a real cluster through the
// librados C++ API: put-if-absent, guarded (compare-and-set) omap updates, all-or-nothing
// multi-op writes, the object classes Ceph ships (lock, refcount, cas, cmpomap, numops)
// called with `exec`, omap paging, ranged and multi-range reads, asynchronous writes of
// large and small objects, and fencing a client with the monitors' blocklist.
//
// The throughput cases print their figures (a test never asserts a speed); what they
// assert is that every operation completed and the data reads back.
#include <sys/time.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "tests/ceph/ceph_cluster.h"
#include "tests/ceph/cls_encoding.h"

namespace stellarium::testing {
namespace {

using librados::bufferlist;
using Clock = std::chrono::steady_clock;

// A blocklisted client's operations fail with EBLOCKLISTED, which Ceph defines as
// ESHUTDOWN.
constexpr int kEblocklisted = ESHUTDOWN;

bufferlist Bytes(const std::string& s) {
  bufferlist bl;
  bl.append(s.data(), s.size());
  return bl;
}

std::string Str(bufferlist& bl) { return bl.to_str(); }

int WriteFull(librados::IoCtx& io, const std::string& oid, const std::string& data) {
  bufferlist bl = Bytes(data);
  return io.write_full(oid, bl);
}

std::string Pattern(size_t n, uint32_t seed) {
  std::string s(n, '\0');
  uint32_t x = seed * 2654435761u + 1;
  for (size_t i = 0; i < n; ++i) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    s[i] = static_cast<char>(x);
  }
  return s;
}

double Seconds(Clock::time_point since) {
  return std::chrono::duration<double>(Clock::now() - since).count();
}

// The omap of `oid`, in one call: the tests' objects hold fewer keys than one call
// returns at most (1024); *rc is -EFBIG when there are more.
std::map<std::string, std::string> Omap(librados::IoCtx& io, const std::string& oid, int* rc) {
  std::map<std::string, bufferlist> vals;
  bool more = false;
  *rc = io.omap_get_vals2(oid, "", 1024, &vals, &more);
  if (*rc == 0 && more) *rc = -EFBIG;
  std::map<std::string, std::string> out;
  for (auto& [k, v] : vals) out[k] = v.to_str();
  return out;
}

// Expects `oid` to hold exactly `data`, `xattrs` and `omap`.
void ExpectObject(librados::IoCtx& io, const std::string& oid, const std::string& data,
                  const std::map<std::string, std::string>& xattrs,
                  const std::map<std::string, std::string>& omap) {
  bufferlist got;
  EXPECT_EQ(static_cast<int>(data.size()), io.read(oid, got, 0, 0)) << oid;
  EXPECT_EQ(data, Str(got)) << oid;
  std::map<std::string, bufferlist> attrs;
  EXPECT_EQ(0, io.getxattrs(oid, attrs)) << oid;
  std::map<std::string, std::string> got_xattrs;
  for (auto& [k, v] : attrs) got_xattrs[k] = v.to_str();
  EXPECT_EQ(xattrs, got_xattrs) << oid;
  int rc = 0;
  EXPECT_EQ(omap, Omap(io, oid, &rc)) << oid;
  EXPECT_EQ(0, rc) << oid;
}

// Runs asynchronous operations with up to `depth` in flight: `submit(i, completion)`
// starts operation i. Returns the first error (0 when all succeeded).
int RunAio(size_t count, size_t depth,
           const std::function<int(size_t, librados::AioCompletion*)>& submit) {
  std::deque<librados::AioCompletion*> inflight;
  int first_error = 0;
  auto reap = [&]() {
    librados::AioCompletion* c = inflight.front();
    inflight.pop_front();
    c->wait_for_complete();
    if (const int rc = c->get_return_value(); rc < 0 && first_error == 0) first_error = rc;
    c->release();
  };
  for (size_t i = 0; i < count; ++i) {
    if (inflight.size() >= depth) reap();
    librados::AioCompletion* c = librados::Rados::aio_create_completion();
    if (const int rc = submit(i, c); rc < 0) {
      c->release();
      if (first_error == 0) first_error = rc;
      break;
    }
    inflight.push_back(c);
  }
  while (!inflight.empty()) reap();
  return first_error;
}

class RadosProbeTest : public CephTest {};

// ---- put-if-absent, compare-and-set, atomic multi-op writes ----

TEST_F(RadosProbeTest, ExclusiveCreateOfAnExistingObjectReturnsEexistAndKeepsItsData) {
  librados::ObjectWriteOperation first;
  first.create(true);
  first.write_full(Bytes("first"));
  ASSERT_EQ(0, io().operate("chunk", &first));

  librados::ObjectWriteOperation second;
  second.create(true);
  second.write_full(Bytes("second"));
  EXPECT_EQ(-EEXIST, io().operate("chunk", &second));

  bufferlist got;
  ASSERT_EQ(5, io().read("chunk", got, 0, 0));
  EXPECT_EQ("first", Str(got));
}

TEST_F(RadosProbeTest, OmapCompareAndSetFailsWithEcanceledWhenStale) {
  ASSERT_EQ(0, io().omap_set("catalog", {{"name", Bytes("v1")}}));

  // Writer A read "v1" and sets "v2"; writer B read "v1" too and loses.
  auto cas = [&](const std::string& expect, const std::string& value) {
    librados::ObjectWriteOperation op;
    int cmp_rc = 0;
    op.omap_cmp({{"name", {Bytes(expect), LIBRADOS_CMPXATTR_OP_EQ}}}, &cmp_rc);
    op.omap_set({{"name", Bytes(value)}});
    return io().operate("catalog", &op);
  };
  EXPECT_EQ(0, cas("v1", "v2"));
  EXPECT_EQ(-ECANCELED, cas("v1", "v3"));

  int rc = 0;
  EXPECT_EQ((std::map<std::string, std::string>{{"name", "v2"}}), Omap(io(), "catalog", &rc));
  EXPECT_EQ(0, rc);
}

TEST_F(RadosProbeTest, OmapCmpOnAnAbsentKeyComparesWithAnEmptyValue) {
  ASSERT_EQ(0, io().omap_set("catalog", {{"other", Bytes("x")}}));
  // Put-if-absent for one omap key: guard "key == empty".
  auto insert = [&](const std::string& value) {
    librados::ObjectWriteOperation op;
    int cmp_rc = 0;
    op.omap_cmp({{"name", {bufferlist(), LIBRADOS_CMPXATTR_OP_EQ}}}, &cmp_rc);
    op.omap_set({{"name", Bytes(value)}});
    return io().operate("catalog", &op);
  };
  EXPECT_EQ(0, insert("first"));
  EXPECT_EQ(-ECANCELED, insert("second"));
  int rc = 0;
  EXPECT_EQ("first", Omap(io(), "catalog", &rc)["name"]);

  // On an object that does not exist, a guard fails with ENOENT, not ECANCELED.
  librados::ObjectWriteOperation op;
  int cmp_rc = 0;
  op.omap_cmp({{"name", {bufferlist(), LIBRADOS_CMPXATTR_OP_EQ}}}, &cmp_rc);
  op.omap_set({{"name", Bytes("v")}});
  EXPECT_EQ(-ENOENT, io().operate("absent", &op));
}

TEST_F(RadosProbeTest, AFailedOmapGuardAppliesNoOtherOpOfTheWriteOp) {
  ASSERT_EQ(0, io().omap_set("pack", {{"version", Bytes("1")}}));
  ASSERT_EQ(0, WriteFull(io(), "pack", "old bytes"));

  auto guarded = [&](const std::string& expect) {
    librados::ObjectWriteOperation op;
    int cmp_rc = 0;
    op.omap_cmp({{"version", {Bytes(expect), LIBRADOS_CMPXATTR_OP_EQ}}}, &cmp_rc);
    op.write(0, Bytes("NEW"));
    op.setxattr("state", Bytes("sealed"));
    op.omap_set({{"version", Bytes("2")}, {"entry", Bytes("e")}});
    return io().operate("pack", &op);
  };
  ASSERT_EQ(-ECANCELED, guarded("0"));
  ExpectObject(io(), "pack", "old bytes", {}, {{"version", "1"}});
  ASSERT_EQ(0, guarded("1"));
  ExpectObject(io(), "pack", "NEW bytes", {{"state", "sealed"}},
               {{"entry", "e"}, {"version", "2"}});
}

TEST_F(RadosProbeTest, AWriteOpWhoseLastOpFailsAppliesNoneOfItsOps) {
  ASSERT_EQ(0, WriteFull(io(), "obj", "old data"));
  ASSERT_EQ(0, io().omap_set("obj", {{"k", Bytes("old")}}));
  // Data, xattr and omap changes, then a class call that fails (no lock is held).
  librados::ObjectWriteOperation op;
  op.write_full(Bytes("new data, longer"));
  op.setxattr("a", Bytes("1"));
  op.omap_set({{"k", Bytes("new")}, {"k2", Bytes("v")}});
  bufferlist assert_locked = AssertLockedRequest("vol", LockType::kExclusive, "c", "");
  op.exec("lock", "assert_locked", assert_locked);
  EXPECT_EQ(-EBUSY, io().operate("obj", &op));
  ExpectObject(io(), "obj", "old data", {}, {{"k", "old"}});
}

TEST_F(RadosProbeTest, ClassCallsInAWriteOpSeeTheObjectAsItWasBeforeTheOp) {
  // A class method reads the stored object, not the changes of the ops before it in
  // the same write op: after create + write_full in one op, a class call still finds
  // no object (ENOENT), and the whole op fails, creating nothing.
  {
    librados::ObjectWriteOperation op;
    op.create(true);
    op.write_full(Bytes("payload"));
    bufferlist get = RefcountRequest("vol-a");
    op.exec("refcount", "get", get);
    EXPECT_EQ(-ENOENT, io().operate("fresh", &op));
    uint64_t size = 0;
    time_t mtime = 0;
    EXPECT_EQ(-ENOENT, io().stat("fresh", &size, &mtime));
  }
  // On an existing object, a class comparison after an omap_set of the same op sees
  // the value from before the op (so does a plain omap_cmp).
  ASSERT_EQ(0, io().omap_set("kv", {{"n", Bytes(U64Value(1))}}));
  auto set_then_compare = [&](uint64_t compare_with) {
    librados::ObjectWriteOperation op;
    op.omap_set({{"n", Bytes(U64Value(2))}});
    bufferlist check =
        CmpOmapRequest(CmpMode::kU64, CmpOp::kEq, {{"n", U64Value(compare_with)}}, std::nullopt);
    op.exec("cmpomap", "cmp_vals", check);
    return io().operate("kv", &op);
  };
  EXPECT_EQ(-ECANCELED, set_then_compare(2));
  EXPECT_EQ(0, set_then_compare(1));
  int rc = 0;
  EXPECT_EQ(U64Value(2), Omap(io(), "kv", &rc)["n"]);
}

TEST_F(RadosProbeTest, ConcurrentCompareAndSetIncrementsLoseNoUpdate) {
  // Four clients (four "nodes") increment one counter by read + guarded write, retrying
  // on ECANCELED: the final value is the number of increments.
  constexpr int kClients = 4;
  constexpr int kIncrements = 40;
  ASSERT_EQ(0, io().omap_set("counter", {{"n", Bytes("0")}}));
  std::atomic<int> conflicts{0};
  std::atomic<int> errors{0};
  std::vector<std::unique_ptr<librados::Rados>> clients;
  for (int c = 0; c < kClients; ++c) {
    clients.push_back(NewClient());
    ASSERT_TRUE(clients.back() != nullptr);
  }
  const auto t0 = Clock::now();
  std::vector<std::thread> threads;
  for (int c = 0; c < kClients; ++c) {
    threads.emplace_back([&, c] {
      librados::IoCtx io = IoCtxOf(*clients[c]);
      for (int i = 0; i < kIncrements; ++i) {
        for (;;) {
          std::map<std::string, bufferlist> vals;
          if (io.omap_get_vals_by_keys("counter", {"n"}, &vals) != 0) {
            ++errors;
            return;
          }
          const std::string seen = vals["n"].to_str();
          librados::ObjectWriteOperation op;
          int cmp_rc = 0;
          op.omap_cmp({{"n", {Bytes(seen), LIBRADOS_CMPXATTR_OP_EQ}}}, &cmp_rc);
          op.omap_set({{"n", Bytes(std::to_string(std::stoi(seen) + 1))}});
          const int rc = io.operate("counter", &op);
          if (rc == 0) break;
          if (rc != -ECANCELED) {
            ++errors;
            return;
          }
          ++conflicts;
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  const double s = Seconds(t0);
  EXPECT_EQ(0, errors.load());
  int rc = 0;
  EXPECT_EQ(std::to_string(kClients * kIncrements), Omap(io(), "counter", &rc)["n"]);
  std::printf("[ figures  ] %d guarded increments by %d clients in %.2f s (%.0f/s), %d retries\n",
              kClients * kIncrements, kClients, s, kClients * kIncrements / s, conflicts.load());
}

// ---- the lock class ----

TEST_F(RadosProbeTest, LockClassRefusesASecondClientAndListsTheHoldersAddress) {
  auto b = NewClient();
  ASSERT_TRUE(b != nullptr);
  librados::IoCtx io_b = IoCtxOf(*b);

  // The lock creates the object when it does not exist.
  ASSERT_EQ(0, io().lock_exclusive("vol-1", "writer", "node-a", "staged rw", nullptr, 0));
  uint64_t size = 1;
  time_t mtime = 0;
  EXPECT_EQ(0, io().stat("vol-1", &size, &mtime));
  EXPECT_EQ(0u, size);

  EXPECT_EQ(-EBUSY, io_b.lock_exclusive("vol-1", "writer", "node-b", "", nullptr, 0));
  // The same client and cookie again: EEXIST, unless it asks to renew.
  EXPECT_EQ(-EEXIST, io().lock_exclusive("vol-1", "writer", "node-a", "", nullptr, 0));
  EXPECT_EQ(0, io().lock_exclusive("vol-1", "writer", "node-a", "", nullptr,
                                   LIBRADOS_LOCK_FLAG_MAY_RENEW));
  // Another cookie of the same client is another locker: refused too.
  EXPECT_EQ(-EBUSY, io().lock_exclusive("vol-1", "writer", "node-a-2", "", nullptr, 0));

  int exclusive = -1;
  std::string tag = "x";
  std::list<librados::locker_t> lockers;
  ASSERT_EQ(1, io_b.list_lockers("vol-1", "writer", &exclusive, &tag, &lockers));
  EXPECT_EQ(1, exclusive);
  EXPECT_EQ("", tag);
  ASSERT_EQ(1u, lockers.size());
  const librados::locker_t& holder = lockers.front();
  EXPECT_EQ("client." + std::to_string(rados().get_instance_id()), holder.client);
  EXPECT_EQ("node-a", holder.cookie);
  // The holder's address as the OSD saw it: "v1:" + what the client's get_addrs() says
  // (a client binds no port: 127.0.0.1:0/<nonce>), even on a msgr2-only cluster.
  const std::string addrs = rados().get_addrs();
  EXPECT_EQ("v1:" + addrs, holder.address);
  std::printf("[ figures  ] locker %s cookie %s address %s; holder's get_addrs() %s\n",
              holder.client.c_str(), holder.cookie.c_str(), holder.address.c_str(), addrs.c_str());

  // Unlocking needs the holder's own client and cookie.
  EXPECT_EQ(-ENOENT, io_b.unlock("vol-1", "writer", "node-a"));
  EXPECT_EQ(0, io().unlock("vol-1", "writer", "node-a"));
  EXPECT_EQ(0, io_b.lock_exclusive("vol-1", "writer", "node-b", "", nullptr, 0));
}

TEST_F(RadosProbeTest, BreakLockNeedsTheHoldersClientNameAndCookie) {
  auto b = NewClient();
  ASSERT_TRUE(b != nullptr);
  librados::IoCtx io_b = IoCtxOf(*b);
  ASSERT_EQ(0, io().lock_exclusive("vol-2", "writer", "node-a", "", nullptr, 0));
  const std::string holder = "client." + std::to_string(rados().get_instance_id());

  EXPECT_EQ(-ENOENT, io_b.break_lock("vol-2", "writer", holder, "wrong-cookie"));
  EXPECT_EQ(-ENOENT, io_b.break_lock("vol-2", "writer", "client.1", "node-a"));
  EXPECT_EQ(-EBUSY, io_b.lock_exclusive("vol-2", "writer", "node-b", "", nullptr, 0));
  EXPECT_EQ(0, io_b.break_lock("vol-2", "writer", holder, "node-a"));
  EXPECT_EQ(0, io_b.lock_exclusive("vol-2", "writer", "node-b", "", nullptr, 0));
  // The old holder learns it lost the lock only when it asks (or its guarded write fails).
  EXPECT_EQ(-ENOENT, io().unlock("vol-2", "writer", "node-a"));
}

TEST_F(RadosProbeTest, ALockWithADurationExpiresByItself) {
  auto b = NewClient();
  ASSERT_TRUE(b != nullptr);
  librados::IoCtx io_b = IoCtxOf(*b);
  timeval one_second{1, 0};
  ASSERT_EQ(0, io().lock_exclusive("vol-3", "writer", "node-a", "", &one_second, 0));
  EXPECT_EQ(-EBUSY, io_b.lock_exclusive("vol-3", "writer", "node-b", "", nullptr, 0));
  std::this_thread::sleep_for(std::chrono::milliseconds(1300));
  EXPECT_EQ(0, io_b.lock_exclusive("vol-3", "writer", "node-b", "", nullptr, 0));
  int exclusive = 0;
  std::string tag;
  std::list<librados::locker_t> lockers;
  ASSERT_EQ(1, io().list_lockers("vol-3", "writer", &exclusive, &tag, &lockers));
  EXPECT_EQ("node-b", lockers.front().cookie);
}

TEST_F(RadosProbeTest, AssertLockedInAWriteOpGuardsTheWriteWithTheLock) {
  auto b = NewClient();
  ASSERT_TRUE(b != nullptr);
  librados::IoCtx io_b = IoCtxOf(*b);

  // Take the lock with a tag through exec, in the same op as the first write.
  {
    librados::ObjectWriteOperation op;
    bufferlist lock = LockRequest("writer", LockType::kExclusive, "node-a", "gen-7", "", 0, 0);
    op.exec("lock", "lock", lock);
    op.write_full(Bytes("a0"));
    ASSERT_EQ(0, io().operate("vol-4", &op));
  }
  auto guarded_write = [](librados::IoCtx& io, const std::string& cookie, const std::string& data) {
    librados::ObjectWriteOperation op;
    bufferlist check = AssertLockedRequest("writer", LockType::kExclusive, cookie, "gen-7");
    op.exec("lock", "assert_locked", check);
    op.write_full(Bytes(data));
    return io.operate("vol-4", &op);
  };
  EXPECT_EQ(0, guarded_write(io(), "node-a", "a1"));
  // Another client, even with the holder's cookie, does not hold the lock.
  EXPECT_EQ(-EBUSY, guarded_write(io_b, "node-a", "b1"));
  // A lock request with another tag is refused while the lock is held.
  {
    librados::ObjectWriteOperation op;
    bufferlist lock = LockRequest("writer", LockType::kExclusive, "node-b", "gen-8", "", 0, 0);
    op.exec("lock", "lock", lock);
    EXPECT_EQ(-EBUSY, io_b.operate("vol-4", &op));
  }
  // Once B breaks A's lock, A's guarded writes fail.
  ASSERT_EQ(0, io_b.break_lock("vol-4", "writer",
                               "client." + std::to_string(rados().get_instance_id()), "node-a"));
  EXPECT_EQ(-EBUSY, guarded_write(io(), "node-a", "a2"));
  bufferlist got;
  ASSERT_EQ(2, io().read("vol-4", got, 0, 0));
  EXPECT_EQ("a1", Str(got));
}

// ---- refcount, cas, cmpomap, numops ----

TEST_F(RadosProbeTest, RefcountClassRemovesTheObjectOnTheLastPut) {
  bufferlist read_req = RefcountReadRequest();
  auto tags = [&]() {
    bufferlist out;
    const int rc = io().exec("pack", "refcount", "read", read_req, out);
    bool ok = false;
    auto list = DecodeRefcountRead(out, &ok);
    EXPECT_TRUE(ok);
    return rc == 0 ? list : std::list<std::string>{"<error " + std::to_string(rc) + ">"};
  };
  // "get" needs the object to exist (and to exist before the op: see
  // ClassCallsInAWriteOpSeeTheObjectAsItWasBeforeTheOp).
  bufferlist get_a = RefcountRequest("vol-a");
  bufferlist out;
  EXPECT_EQ(-ENOENT, io().exec("pack", "refcount", "get", get_a, out));
  ASSERT_EQ(0, WriteFull(io(), "pack", "packed chunks"));
  ASSERT_EQ(0, io().exec("pack", "refcount", "get", get_a, out));
  bufferlist get_b = RefcountRequest("vol-b");
  ASSERT_EQ(0, io().exec("pack", "refcount", "get", get_b, out));
  ASSERT_EQ(0, io().exec("pack", "refcount", "get", get_b, out));  // a tag counts once
  EXPECT_EQ((std::list<std::string>{"vol-a", "vol-b"}), tags());

  bufferlist put_a = RefcountRequest("vol-a");
  ASSERT_EQ(0, io().exec("pack", "refcount", "put", put_a, out));
  ASSERT_EQ(0, io().exec("pack", "refcount", "put", put_a, out));  // idempotent
  EXPECT_EQ((std::list<std::string>{"vol-b"}), tags());
  bufferlist put_b = RefcountRequest("vol-b");
  ASSERT_EQ(0, io().exec("pack", "refcount", "put", put_b, out));
  uint64_t size = 0;
  time_t mtime = 0;
  EXPECT_EQ(-ENOENT, io().stat("pack", &size, &mtime));
}

TEST_F(RadosProbeTest, RefcountClassKeepsEveryTagEverPutAndCannotPutItAgain) {
  // To make puts idempotent the class remembers every tag put, in the object's
  // "refcount" xattr, forever: the xattr grows with each tag, and a tag taken again
  // after its put can never be put again.
  bufferlist out;
  ASSERT_EQ(0, WriteFull(io(), "pack", "packed chunks"));
  bufferlist get_keep = RefcountRequest("keep");
  ASSERT_EQ(0, io().exec("pack", "refcount", "get", get_keep, out));
  bufferlist attr;
  const int size_before = io().getxattr("pack", "refcount", attr);
  for (int i = 0; i < 50; ++i) {
    bufferlist tag = RefcountRequest("tag-" + std::to_string(i));
    ASSERT_EQ(0, io().exec("pack", "refcount", "get", tag, out));
    ASSERT_EQ(0, io().exec("pack", "refcount", "put", tag, out));
  }
  EXPECT_GE(io().getxattr("pack", "refcount", attr), size_before + 50 * 9);

  bufferlist again = RefcountRequest("tag-7");
  ASSERT_EQ(0, io().exec("pack", "refcount", "get", again, out));
  ASSERT_EQ(0, io().exec("pack", "refcount", "put", again, out));
  bufferlist read_req = RefcountReadRequest();
  ASSERT_EQ(0, io().exec("pack", "refcount", "read", read_req, out));
  bool ok = false;
  EXPECT_EQ((std::list<std::string>{"keep", "tag-7"}), DecodeRefcountRead(out, &ok));
  EXPECT_TRUE(ok);
}

TEST_F(RadosProbeTest, TwoClassCallsOnTheSameStateInOneWriteOpLoseTheFirstOnesChange) {
  // Each class call reads the object as stored before the op: the second "get" of one
  // op starts from the tags without the first's and writes them back without it.
  ASSERT_EQ(0, WriteFull(io(), "pack", "packed chunks"));
  bufferlist get_x = RefcountRequest("x");
  bufferlist get_y = RefcountRequest("y");
  librados::ObjectWriteOperation op;
  op.exec("refcount", "get", get_x);
  op.exec("refcount", "get", get_y);
  ASSERT_EQ(0, io().operate("pack", &op));
  bufferlist out;
  bufferlist read_req = RefcountReadRequest();
  ASSERT_EQ(0, io().exec("pack", "refcount", "read", read_req, out));
  bool ok = false;
  EXPECT_EQ((std::list<std::string>{"y"}), DecodeRefcountRead(out, &ok));
}

TEST_F(RadosProbeTest, CasClassCountsReferencesBySourceObjectAndRemovesTheChunkOnTheLastPut) {
  const int64_t pool_id = io().get_id();
  const CasSource a{"map-a", pool_id, ns()};
  const CasSource b{"map-b", pool_id, ns()};
  bufferlist out;
  bufferlist create_a = CasCreateOrGetRefRequest(a, 0, "chunk bytes");
  ASSERT_EQ(0, io().exec("sha256-1", "cas", "chunk_create_or_get_ref", create_a, out));
  bufferlist got;
  ASSERT_EQ(11, io().read("sha256-1", got, 0, 0));
  EXPECT_EQ("chunk bytes", Str(got));

  // A second reference, verifying the bytes: other bytes under the same name are refused.
  bufferlist wrong = CasCreateOrGetRefRequest(b, kCasVerify, "other bytes");
  EXPECT_EQ(-ENOMSG, io().exec("sha256-1", "cas", "chunk_create_or_get_ref", wrong, out));
  bufferlist create_b = CasCreateOrGetRefRequest(b, kCasVerify, "chunk bytes");
  ASSERT_EQ(0, io().exec("sha256-1", "cas", "chunk_create_or_get_ref", create_b, out));

  bufferlist put_a = CasRefRequest(a);
  ASSERT_EQ(0, io().exec("sha256-1", "cas", "chunk_put_ref", put_a, out));
  EXPECT_EQ(-ENOLINK, io().exec("sha256-1", "cas", "chunk_put_ref", put_a, out));
  uint64_t size = 0;
  time_t mtime = 0;
  EXPECT_EQ(0, io().stat("sha256-1", &size, &mtime));
  bufferlist put_b = CasRefRequest(b);
  ASSERT_EQ(0, io().exec("sha256-1", "cas", "chunk_put_ref", put_b, out));
  EXPECT_EQ(-ENOENT, io().stat("sha256-1", &size, &mtime));
}

TEST_F(RadosProbeTest, CmpomapClassComparesAndSetsU64ValuesPerKey) {
  ASSERT_EQ(0, io().omap_set("index", {{"a", Bytes(U64Value(5))}, {"b", Bytes(U64Value(9))}}));
  bufferlist out;

  // cmp_set_vals GT: each key is set where the given value is greater than the stored
  // one (a missing key compares with the default, here 0); the others stay. No error.
  bufferlist raise =
      CmpOmapRequest(CmpMode::kU64, CmpOp::kGt,
                     {{"a", U64Value(7)}, {"b", U64Value(8)}, {"c", U64Value(1)}}, U64Value(0));
  ASSERT_EQ(0, io().exec("index", "cmpomap", "cmp_set_vals", raise, out));
  int rc = 0;
  auto omap = Omap(io(), "index", &rc);
  EXPECT_EQ(U64Value(7), omap["a"]);
  EXPECT_EQ(U64Value(9), omap["b"]);
  EXPECT_EQ(U64Value(1), omap["c"]);

  // cmp_vals in a write op is a guard over many keys: ECANCELED, and nothing applied,
  // when one comparison fails.
  auto guarded = [&](uint64_t expect_b) {
    librados::ObjectWriteOperation op;
    bufferlist check = CmpOmapRequest(
        CmpMode::kU64, CmpOp::kEq, {{"a", U64Value(7)}, {"b", U64Value(expect_b)}}, std::nullopt);
    op.exec("cmpomap", "cmp_vals", check);
    op.omap_set({{"d", Bytes("set")}});
    return io().operate("index", &op);
  };
  EXPECT_EQ(-ECANCELED, guarded(8));
  EXPECT_EQ(0u, Omap(io(), "index", &rc).count("d"));
  EXPECT_EQ(0, guarded(9));
  EXPECT_EQ("set", Omap(io(), "index", &rc)["d"]);

  // cmp_rm_keys EQ: removes each key whose value equals the given one (delete an index
  // entry only while its count is still 0).
  ASSERT_EQ(0, io().omap_set("index", {{"zero", Bytes(U64Value(0))}}));
  bufferlist remove = CmpOmapRequest(CmpMode::kU64, CmpOp::kEq,
                                     {{"zero", U64Value(0)}, {"a", U64Value(0)}}, std::nullopt,
                                     /*has_default_field=*/false);
  ASSERT_EQ(0, io().exec("index", "cmpomap", "cmp_rm_keys", remove, out));
  omap = Omap(io(), "index", &rc);
  EXPECT_EQ(0u, omap.count("zero"));
  EXPECT_EQ(1u, omap.count("a"));
}

TEST_F(RadosProbeTest, NumopsClassAddsToADecimalOmapValue) {
  bufferlist out;
  bufferlist add_one = NumopsRequest("refs", "1");
  for (int i = 0; i < 3; ++i) ASSERT_EQ(0, io().exec("counts", "numops", "add", add_one, out));
  bufferlist sub_one = NumopsRequest("refs", "-1");
  ASSERT_EQ(0, io().exec("counts", "numops", "add", sub_one, out));
  int rc = 0;
  EXPECT_EQ("2", Omap(io(), "counts", &rc)["refs"]);
  // Values are doubles printed with 10 significant digits: counts past 10^10 lose
  // their last digits.
  bufferlist big = NumopsRequest("big", "12345678901");
  ASSERT_EQ(0, io().exec("counts", "numops", "add", big, out));
  EXPECT_EQ("1.23456789e+10", Omap(io(), "counts", &rc)["big"]);
}

// ---- omap paging, ranged reads ----

TEST_F(RadosProbeTest, OmapGetVals2PagesThroughKeysInOrder) {
  constexpr int kKeys = 2500;
  std::map<std::string, bufferlist> batch;
  for (int i = 0; i < kKeys; ++i) {
    char key[16];
    std::snprintf(key, sizeof(key), "k%06d", i);
    batch[key] = Bytes(std::to_string(i));
  }
  const auto t0 = Clock::now();
  ASSERT_EQ(0, io().omap_set("big-omap", batch));
  const double set_s = Seconds(t0);

  std::vector<std::string> seen;
  std::string after;
  int pages = 0;
  bool more = true;
  while (more) {
    std::map<std::string, bufferlist> page;
    ASSERT_EQ(0, io().omap_get_vals2("big-omap", after, 1000, &page, &more));
    ++pages;
    ASSERT_LE(page.size(), 1000u);
    for (auto& [k, v] : page) seen.push_back(k);
    if (!page.empty()) after = page.rbegin()->first;
    ASSERT_TRUE(!page.empty() || !more);
  }
  EXPECT_EQ(3, pages);
  ASSERT_EQ(static_cast<size_t>(kKeys), seen.size());
  EXPECT_TRUE(std::is_sorted(seen.begin(), seen.end()));
  EXPECT_EQ("k000000", seen.front());
  EXPECT_EQ("k002499", seen.back());

  // The OSD answers at most osd_max_omap_entries_per_request (1024 by default) entries a
  // call, whatever the caller asks for, and says there is more.
  std::map<std::string, bufferlist> capped;
  ASSERT_EQ(0, io().omap_get_vals2("big-omap", "", 100000, &capped, &more));
  EXPECT_EQ(1024u, capped.size());
  EXPECT_TRUE(more);

  // A prefix filter with paging.
  std::map<std::string, bufferlist> prefixed;
  ASSERT_EQ(0, io().omap_get_vals2("big-omap", "", "k0012", 1000, &prefixed, &more));
  EXPECT_EQ(100u, prefixed.size());
  EXPECT_FALSE(more);
  std::printf("[ figures  ] %d omap keys set in one op in %.3f s\n", kKeys, set_s);
}

TEST_F(RadosProbeTest, RangesOfALargeObjectReadAloneOrManyInOneOp) {
  constexpr size_t kSize = 8 << 20;
  const std::string data = Pattern(kSize, 1);
  ASSERT_EQ(0, WriteFull(io(), "pack-large", data));

  bufferlist one;
  ASSERT_EQ(4096, io().read("pack-large", one, 4096, 5 << 20));
  EXPECT_EQ(data.substr(5 << 20, 4096), Str(one));
  // Past the end: a short read, then an empty one.
  bufferlist tail;
  EXPECT_EQ(100, io().read("pack-large", tail, 4096, kSize - 100));
  bufferlist none;
  EXPECT_EQ(0, io().read("pack-large", none, 4096, kSize + 4096));

  // 64 scattered ranges in one op: one round trip, each range with its own result.
  constexpr int kRanges = 64;
  std::vector<bufferlist> parts(kRanges);
  std::vector<int> rvals(kRanges, 1);
  std::vector<uint64_t> offsets;
  for (int i = 0; i < kRanges; ++i) offsets.push_back((i * 131 % kRanges) * (kSize / kRanges) + 17);
  librados::ObjectReadOperation op;
  for (int i = 0; i < kRanges; ++i) op.read(offsets[i], 4000, &parts[i], &rvals[i]);
  const auto t0 = Clock::now();
  bufferlist unused;
  ASSERT_EQ(0, io().operate("pack-large", &op, &unused));
  const double multi_s = Seconds(t0);
  for (int i = 0; i < kRanges; ++i) {
    EXPECT_EQ(0, rvals[i]) << i;
    EXPECT_EQ(data.substr(offsets[i], 4000), Str(parts[i])) << i;
  }
  const auto t1 = Clock::now();
  for (int i = 0; i < kRanges; ++i) {
    bufferlist p;
    ASSERT_EQ(4000, io().read("pack-large", p, 4000, offsets[i]));
  }
  const double single_s = Seconds(t1);
  std::printf("[ figures  ] %d ranges of 4000 B: one op %.1f ms, one op each %.1f ms\n", kRanges,
              multi_s * 1e3, single_s * 1e3);
}

// ---- throughput (figures printed, not asserted) ----

TEST_F(RadosProbeTest, AioWritesOf4MiBObjectsVs4KiBObjects) {
  struct Run {
    size_t object_size;
    size_t count;
    size_t depth;
    bool exclusive;
  };
  const Run runs[] = {{4 << 20, 48, 8, false},
                      {4 << 20, 48, 16, false},
                      {4 << 10, 2000, 16, false},
                      {4 << 10, 2000, 16, true}};
  int run_no = 0;
  for (const Run& run : runs) {
    const std::string prefix = "aio" + std::to_string(run_no++) + "-";
    const std::string payload = Pattern(run.object_size, run_no);
    const bufferlist bl = Bytes(payload);
    std::vector<librados::ObjectWriteOperation> ops(run.count);
    const auto t0 = Clock::now();
    const int rc = RunAio(run.count, run.depth, [&](size_t i, librados::AioCompletion* c) {
      if (run.exclusive) ops[i].create(true);
      ops[i].write_full(bl);
      return io().aio_operate(prefix + std::to_string(i), c, &ops[i]);
    });
    const double write_s = Seconds(t0);
    ASSERT_EQ(0, rc);

    std::vector<bufferlist> back(run.count);
    const auto t1 = Clock::now();
    const int read_rc = RunAio(run.count, run.depth, [&](size_t i, librados::AioCompletion* c) {
      return io().aio_read(prefix + std::to_string(i), c, &back[i], run.object_size, 0);
    });
    const double read_s = Seconds(t1);
    ASSERT_EQ(0, read_rc);
    for (size_t i = 0; i < run.count; i += run.count / 8) {
      ASSERT_EQ(payload, back[i].to_str()) << prefix << i;
    }
    const double mb = static_cast<double>(run.object_size * run.count) / 1e6;
    std::printf(
        "[ figures  ] %zu objects of %zu KiB%s, %zu in flight: write %.0f obj/s %.1f MB/s, "
        "read %.0f obj/s %.1f MB/s\n",
        run.count, run.object_size >> 10, run.exclusive ? " (exclusive create)" : "", run.depth,
        run.count / write_s, mb / write_s, run.count / read_s, mb / read_s);
  }
}

TEST_F(RadosProbeTest, OmapSetRateOneKeyPerOpAndManyKeysPerOp) {
  // One key per op, 16 in flight, spread over 16 objects (an index sharded by digest
  // prefix) and all on one object.
  for (const int shards : {16, 1}) {
    constexpr size_t kOps = 1500;
    std::vector<librados::ObjectWriteOperation> ops(kOps);
    const auto t0 = Clock::now();
    const int rc = RunAio(kOps, 16, [&](size_t i, librados::AioCompletion* c) {
      ops[i].omap_set({{"key" + std::to_string(i), Bytes(Pattern(40, i))}});
      return io().aio_operate("shard-" + std::to_string(shards) + "-" + std::to_string(i % shards),
                              c, &ops[i]);
    });
    const double s = Seconds(t0);
    ASSERT_EQ(0, rc);
    std::printf(
        "[ figures  ] omap_set, 1 key per op, 16 in flight over %d object(s): %.0f keys/s\n",
        shards, kOps / s);
  }
  // Many keys per op (an import's index batch).
  constexpr int kBatches = 8;
  constexpr int kKeysPerBatch = 4096;
  const auto t0 = Clock::now();
  for (int b = 0; b < kBatches; ++b) {
    std::map<std::string, bufferlist> batch;
    for (int k = 0; k < kKeysPerBatch; ++k) {
      batch[Pattern(32, b * kKeysPerBatch + k)] = Bytes(Pattern(24, k));
    }
    ASSERT_EQ(0, io().omap_set("batched-" + std::to_string(b % 4), batch));
  }
  const double s = Seconds(t0);
  std::printf("[ figures  ] omap_set, %d keys per op, one op at a time: %.0f keys/s\n",
              kKeysPerBatch, kBatches * kKeysPerBatch / s);
}

// ---- the fixture's own pools ----

TEST_F(RadosProbeTest, AFreshPoolHoldsOnlyWhatTheTestWrote) {
  const auto t0 = Clock::now();
  const std::string pool = NewPool();
  ASSERT_FALSE(pool.empty());
  librados::IoCtx fresh;
  ASSERT_EQ(0, rados().ioctx_create(pool.c_str(), fresh));
  ASSERT_EQ(0, WriteFull(fresh, "only", "x"));
  const double ready_s = Seconds(t0);
  ASSERT_EQ(0, WriteFull(io(), "elsewhere", "y"));

  std::set<std::string> names;
  for (auto it = fresh.nobjects_begin(); it != fresh.nobjects_end(); ++it)
    names.insert(it->get_oid());
  EXPECT_EQ((std::set<std::string>{"only"}), names);
  std::set<std::string> apps;
  ASSERT_EQ(0, fresh.application_list(&apps));
  EXPECT_EQ((std::set<std::string>{"stellarium"}), apps);
  std::printf("[ figures  ] new pool to first completed write: %.0f ms\n", ready_s * 1e3);
}

// ---- fencing ----

TEST_F(RadosProbeTest, ABlocklistedClientCanNoLongerWrite) {
  auto b = NewClient();
  ASSERT_TRUE(b != nullptr);
  librados::IoCtx io_b = IoCtxOf(*b);
  ASSERT_EQ(0, WriteFull(io_b, "vol-5", "from b"));

  const std::string addrs = b->get_addrs();
  std::string out;
  std::string status;
  const auto t0 = Clock::now();
  const std::string add =
      nlohmann::json{{"prefix", "osd blocklist"}, {"blocklistop", "add"}, {"addr", addrs}}.dump();
  ASSERT_EQ(0, MonCommand(add, &out, &status)) << add << ": " << status;
  const double add_s = Seconds(t0);
  // The fencing client makes sure the OSDs act on the new map before it proceeds: its own
  // next ops carry the new epoch, so an OSD serves them only once it has that map.
  ASSERT_EQ(0, rados().wait_for_latest_osdmap());
  ASSERT_EQ(0, WriteFull(io(), "vol-5", "from a"));

  const auto t1 = Clock::now();
  EXPECT_EQ(-kEblocklisted, WriteFull(io_b, "vol-5", "late write from b"));
  const double fail_s = Seconds(t1);
  bufferlist b_read;
  EXPECT_EQ(-kEblocklisted, io_b.read("vol-5", b_read, 0, 0));
  bufferlist got;
  ASSERT_EQ(6, io().read("vol-5", got, 0, 0));
  EXPECT_EQ("from a", Str(got));

  // `osd blocklist ls` answers two JSON arrays: addresses, then address ranges.
  std::string list;
  ASSERT_EQ(0, MonCommand(R"({"prefix":"osd blocklist ls","format":"json"})", &list, &status));
  std::istringstream list_in(list);
  nlohmann::json entries;
  list_in >> entries;
  bool listed = false;
  for (const auto& entry : entries) listed |= entry.value("addr", "") == addrs;
  EXPECT_TRUE(listed) << list;
  std::printf(
      "[ figures  ] blocklist add %s: %.0f ms; b's next write failed after %.0f ms; "
      "status \"%s\"; ls %s\n",
      addrs.c_str(), add_s * 1e3, fail_s * 1e3, status.c_str(), list.c_str());

  const std::string rm =
      nlohmann::json{{"prefix", "osd blocklist"}, {"blocklistop", "rm"}, {"addr", addrs}}.dump();
  EXPECT_EQ(0, MonCommand(rm, &out, &status)) << status;
}

TEST_F(RadosProbeTest, FencingADeadLockHolderBlocklistsItThenBreaksItsLock) {
  // B holds the volume's lock and stops answering; A fences B as RBD does: blocklist
  // B's address, break B's lock, take it, and write guarded by it.
  auto b = NewClient();
  ASSERT_TRUE(b != nullptr);
  librados::IoCtx io_b = IoCtxOf(*b);
  ASSERT_EQ(0, io_b.lock_exclusive("vol-6", "writer", "node-b", "", nullptr, 0));

  int exclusive = 0;
  std::string tag;
  std::list<librados::locker_t> lockers;
  ASSERT_EQ(1, io().list_lockers("vol-6", "writer", &exclusive, &tag, &lockers));
  const librados::locker_t holder = lockers.front();
  ASSERT_EQ(0, rados().blocklist_add(holder.address, 0));  // 0: the default expiry (1 h)
  ASSERT_EQ(0, rados().wait_for_latest_osdmap());
  ASSERT_EQ(0, io().break_lock("vol-6", "writer", holder.client, holder.cookie));
  ASSERT_EQ(0, io().lock_exclusive("vol-6", "writer", "node-a", "", nullptr, 0));

  librados::ObjectWriteOperation a_write;
  bufferlist check_a = AssertLockedRequest("writer", LockType::kExclusive, "node-a", "");
  a_write.exec("lock", "assert_locked", check_a);
  a_write.write_full(Bytes("a owns it"));
  EXPECT_EQ(0, io().operate("vol-6", &a_write));

  // B, back from the dead, cannot write: neither plainly nor through its lock.
  EXPECT_EQ(-kEblocklisted, WriteFull(io_b, "vol-6", "b was here"));
  librados::ObjectWriteOperation b_write;
  bufferlist check_b = AssertLockedRequest("writer", LockType::kExclusive, "node-b", "");
  b_write.exec("lock", "assert_locked", check_b);
  b_write.write_full(Bytes("b was here"));
  EXPECT_EQ(-kEblocklisted, io_b.operate("vol-6", &b_write));
  bufferlist got;
  ASSERT_EQ(9, io().read("vol-6", got, 0, 0));
  EXPECT_EQ("a owns it", Str(got));

  std::string out;
  std::string status;
  const std::string rm =
      nlohmann::json{{"prefix", "osd blocklist"}, {"blocklistop", "rm"}, {"addr", holder.address}}
          .dump();
  EXPECT_EQ(0, MonCommand(rm, &out, &status)) << status;
}

}  // namespace
}  // namespace stellarium::testing
