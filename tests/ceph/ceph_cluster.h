// A real Ceph cluster for tests: one per test program, started by
// scripts/ceph-test-cluster.sh (a monitor and BlueStore OSDs as plain processes on
// 127.0.0.1) the first time a test asks for it, and stopped when the program's tests are
// done. Should the program die first (a crash, a SIGKILL from a timeout), the script's
// watchdog stops the cluster within a second, and the next start in the same directory
// stops whatever is still recorded there.
//
// CephTest is the base fixture: it skips, saying why, when the Ceph packages are not
// installed; it fails when they are and the cluster does not start. Each test gets its
// own client and an IoCtx on the cluster's pool in a RADOS namespace of its own, so
// tests never see each other's objects; a test that needs a whole pool (to measure what
// it stores, say) asks for one with NewPool.
//
// The cluster's directory is $STELLARIUM_CEPH_CLUSTER_DIR, or <program>.ceph next to the
// test program (one cluster per program and build tree).
//
// Thread-safety: CephCluster::Shared may be called from any thread. A CephTest's
// members are used by its test's threads as librados allows (a Rados and an IoCtx are
// thread-safe).
#pragma once

#include <gtest/gtest.h>

#include <memory>
#include <rados/librados.hpp>
#include <string>
#include <vector>

namespace stellarium::testing {

struct CephClusterOptions {
  int osds = 1;      // 1 to 3
  bool mgr = false;  // a ceph-mgr: needed for pool usage figures (`rados df`)
};

class CephCluster {
 public:
  // The program's cluster, started on the first call with `options` (later calls get
  // that cluster, whatever they pass). Null when there is none; then *skip says whether
  // that is because Ceph is not installed (true) or because the start failed (false),
  // and *why says which tool is missing or what failed.
  static CephCluster* Shared(const CephClusterOptions& options, bool* skip, std::string* why);

  const std::string& dir() const { return dir_; }
  const std::string& conf() const { return conf_; }            // ceph.conf path
  const std::string& client_id() const { return client_id_; }  // cephx user, no "client."
  const std::string& pool() const { return pool_; }

  // A newly connected client: its own session, address and cephx ticket. Null, with
  // the librados error in *error, when it cannot connect.
  std::unique_ptr<librados::Rados> Connect(std::string* error) const;

  // Stops the cluster; idempotent. Called once the program's tests are done.
  void Stop();

  // Runs scripts/ceph-test-cluster.sh with `args` (an argv vector, no shell); returns its
  // exit status (-1: could not run it) and its stdout in *out. Its stderr is this
  // program's.
  static int RunScript(const std::vector<std::string>& args, std::string* out);

 private:
  CephCluster() = default;
  bool Start(const CephClusterOptions& options, std::string* why);

  std::string dir_;
  std::string conf_;
  std::string client_id_;
  std::string pool_;
  bool running_ = false;
};

class CephTest : public ::testing::Test {
 protected:
  void SetUp() override;
  void TearDown() override;

  CephCluster& cluster() { return *cluster_; }
  librados::Rados& rados() { return *rados_; }
  // The cluster's pool, in this test's namespace.
  librados::IoCtx& io() { return io_; }
  const std::string& ns() const { return ns_; }

  // Another client (its own connection and address, as another node would have), or
  // null after a test failure saying why.
  std::unique_ptr<librados::Rados> NewClient();
  // An IoCtx of `client` on the cluster's pool, in this test's namespace.
  librados::IoCtx IoCtxOf(librados::Rados& client);
  // A new pool (8 PGs, application "stellarium") for this test alone, deleted after it;
  // empty after a test failure saying why.
  std::string NewPool();
  // A monitor command (JSON, as `ceph` sends them); returns librados's result, the
  // command's output in *out and its status line in *status (either may be null).
  int MonCommand(const std::string& json, std::string* out, std::string* status);

  // The cluster the program wants (the first test to start it decides); a derived
  // fixture sets it in its constructor.
  CephClusterOptions options_;

 private:
  CephCluster* cluster_ = nullptr;
  std::unique_ptr<librados::Rados> rados_;
  librados::IoCtx io_;
  std::string ns_;
  std::vector<std::string> pools_;
};

}  // namespace stellarium::testing
