// CsiDriverTest: a real stellarium-csi server (csi/server.h) in the test process, on a
// unix socket in a fresh temporary directory, with its own store, state directory,
// kubelet directory and import root, and real gRPC stubs talking to it through the
// socket. Helpers build requests the way the sidecars and the kubelet do.
#pragma once

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "csi.grpc.pb.h"
#include "csi/node/block_device/fd_holder.h"
#include "csi/options.h"
#include "csi/server.h"

namespace stellarium::csi::testing {

namespace v1 = ::csi::v1;
using Mode = v1::VolumeCapability::AccessMode;

// True when this process may create loop devices and mount (root, /dev/loop-control).
bool CanUseLoopDevices();
// Why the lifecycle tests skip, for GTEST_SKIP().
std::string LoopSkipReason();

class CsiDriverTest : public ::testing::Test {
 protected:
  void SetUp() override;
  void TearDown() override;

  // Starts (or restarts after StopServer) the server on the same directories.
  void StartServer();
  void StopServer();

  Options MakeOptions() const;
  Driver& driver() { return server_->driver(); }

  static v1::VolumeCapability MountCap(Mode::Mode mode = Mode::SINGLE_NODE_WRITER,
                                       const std::vector<std::string>& flags = {});
  static v1::VolumeCapability BlockCap(Mode::Mode mode = Mode::SINGLE_NODE_WRITER);

  v1::CreateVolumeRequest VolumeRequest(const std::string& name, int64_t required_bytes = 0,
                                        const std::map<std::string, std::string>& params = {});
  // CreateVolume; on failure returns the status and leaves *volume untouched.
  grpc::Status CreateVolume(const v1::CreateVolumeRequest& req, v1::Volume* volume = nullptr);
  // Creates a blank volume and returns its id (fails the test on error).
  std::string MustCreateVolume(const std::string& name, int64_t bytes = 64 << 20);
  std::string MustCreateSnapshot(const std::string& name, const std::string& volume_id);
  grpc::Status DeleteVolume(const std::string& id);

  grpc::Status Stage(const std::string& id, const std::string& staging,
                     const v1::VolumeCapability& cap);
  grpc::Status Unstage(const std::string& id, const std::string& staging);
  grpc::Status Publish(const std::string& id, const std::string& staging, const std::string& target,
                       const v1::VolumeCapability& cap, bool readonly = false);
  grpc::Status Unpublish(const std::string& id, const std::string& target);

  // Paths under the kubelet directory ("staging/<name>", "pods/<name>/mount").
  std::string StagingPath(const std::string& name);
  std::string TargetPath(const std::string& name);
  // An ext4 image under the import root holding `files` (path -> contents).
  std::string MakeExt4Image(const std::string& name,
                            const std::map<std::string, std::string>& files);
  // A directory tree under the import root.
  std::string MakeTree(const std::string& name, const std::map<std::string, std::string>& files);

  // Mount points (from /proc/self/mountinfo) and loop devices backed by files under
  // the test's directory: both must be empty when a test ends cleanly.
  std::vector<std::string> MountsUnderRoot() const;
  std::vector<std::string> LoopsUnderRoot() const;

  std::unique_ptr<grpc::ClientContext> Ctx() const;

  std::string root_;      // the test's temporary directory
  std::string kubelet_;   // root_/kubelet
  std::string images_;    // root_/images (the import root)
  std::string endpoint_;  // unix://root_/csi.sock
  // The driver's state and store directories, relative to root_: a test may move them
  // (e.g. under the kubelet directory) before SetUp.
  std::string state_subdir_ = "state";
  std::string store_subdir_ = "store";
  std::string state_dir_;        // root_/state_subdir_
  std::string metrics_address_;  // set before SetUp() to serve metrics
  bool controller_expansion_ = true;  // Options::controller_expansion
  // Options::gc_interval_seconds: no background gc unless a test asks for it.
  uint64_t gc_interval_seconds_ = 0;
  std::unique_ptr<Server> server_;
  // The fd holder the node DaemonSet runs next to the driver, here on a thread, so
  // staged volumes survive StopServer/StartServer (docs/EXPOSURE.md, "Driver restarts").
  std::unique_ptr<node::FdHolderServer> holder_;
  std::thread holder_thread_;
  int holder_stop_ = -1;
  std::unique_ptr<v1::Identity::Stub> identity_;
  std::unique_ptr<v1::Controller::Stub> controller_;
  std::unique_ptr<v1::Node::Stub> node_;
};

}  // namespace stellarium::csi::testing
