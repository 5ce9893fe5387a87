// stellarium-csi-client: a small CSI client for people and scripts (the README's demo,
// scripts/demo.sh). It speaks plain CSI v1 over a unix socket, so it works against any
// CSI driver, and prints each result as "key=value" lines that a shell can read.
//
//   stellarium-csi-client --endpoint unix:///tmp/csi.sock create-volume --name v1
//       --size 1G --param image=/images/base.img   (one line)
//   stellarium-csi-client ... create-snapshot --name s1 --volume vol-...
//   stellarium-csi-client ... create-volume --name v2 --snapshot snap-...
//   stellarium-csi-client ... stage --id vol-... --staging-path /var/lib/kubelet/...
//   stellarium-csi-client ... publish --id vol-... --staging-path ... --target ...
//
// Exit status: 0 on success, 1 when the driver returns an error (printed as
// "error=CODE: message" on stderr), 2 for a bad command line.
#include <grpcpp/grpcpp.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdint>
#include <iostream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "csi.grpc.pb.h"
#include "csi/status_map.h"

namespace {

using namespace ::csi::v1;
using stellarium::csi::GrpcCodeName;


// "64K", "1G", "4096" -> bytes (binary units).
int64_t ParseBytes(const std::string& text) {
  size_t pos = 0;
  double value = std::stod(text, &pos);
  std::string unit = text.substr(pos);
  int64_t mult = 1;
  if (!unit.empty()) {
    char u = static_cast<char>(std::toupper(static_cast<unsigned char>(unit[0])));
    if (u == 'K') mult = 1ll << 10;
    else if (u == 'M') mult = 1ll << 20;
    else if (u == 'G') mult = 1ll << 30;
    else if (u == 'T') mult = 1ll << 40;
    else throw std::invalid_argument("bad size unit in '" + text + "'");
  }
  return static_cast<int64_t>(value * static_cast<double>(mult));
}

std::map<std::string, std::string> ParsePairs(const std::vector<std::string>& pairs) {
  std::map<std::string, std::string> out;
  for (const auto& p : pairs) {
    auto eq = p.find('=');
    if (eq == std::string::npos) throw std::invalid_argument("expected key=value, got '" + p + "'");
    out[p.substr(0, eq)] = p.substr(eq + 1);
  }
  return out;
}

void PrintVolume(const Volume& v) {
  std::cout << "volume_id=" << v.volume_id() << "\n"
            << "capacity_bytes=" << v.capacity_bytes() << "\n";
  if (v.content_source().has_snapshot()) {
    std::cout << "source_snapshot_id=" << v.content_source().snapshot().snapshot_id() << "\n";
  } else if (v.content_source().has_volume()) {
    std::cout << "source_volume_id=" << v.content_source().volume().volume_id() << "\n";
  }
  for (const auto& [k, val] : v.volume_context()) std::cout << "context." << k << "=" << val << "\n";
  for (const auto& topo : v.accessible_topology()) {
    for (const auto& [k, val] : topo.segments()) std::cout << "topology." << k << "=" << val << "\n";
  }
}

void PrintSnapshot(const Snapshot& s) {
  std::cout << "snapshot_id=" << s.snapshot_id() << "\n"
            << "source_volume_id=" << s.source_volume_id() << "\n"
            << "size_bytes=" << s.size_bytes() << "\n"
            << "ready_to_use=" << (s.ready_to_use() ? "true" : "false") << "\n"
            << "creation_time=" << s.creation_time().seconds() << "\n";
}

int Fail(const grpc::Status& st) {
  std::cerr << "error=" << GrpcCodeName(st.error_code()) << ": " << st.error_message() << "\n";
  return 1;
}

VolumeCapability Capability(bool block, bool read_only, const std::string& fs_type,
                            const std::vector<std::string>& flags) {
  VolumeCapability cap;
  if (block) {
    cap.mutable_block();
  } else {
    cap.mutable_mount()->set_fs_type(fs_type);
    for (const auto& f : flags) cap.mutable_mount()->add_mount_flags(f);
  }
  cap.mutable_access_mode()->set_mode(read_only ? VolumeCapability::AccessMode::SINGLE_NODE_READER_ONLY
                                                : VolumeCapability::AccessMode::SINGLE_NODE_WRITER);
  return cap;
}

// Every option of every subcommand; each subcommand reads the ones it declared.
struct Args {
  std::string name, id, snapshot, volume, size, limit, staging, target, fs_type = "ext4";
  std::vector<std::string> params, flags, context;
  bool block = false, read_only = false;
  int max_entries = 0;
  std::string token;
};

// The driver's three services on one channel; each call gets the --timeout deadline.
struct Client {
  Client(const std::string& endpoint, int timeout_s)
      : channel(grpc::CreateChannel(endpoint, grpc::InsecureChannelCredentials())),
        identity(Identity::NewStub(channel)),
        controller(Controller::NewStub(channel)),
        node(Node::NewStub(channel)),
        timeout(timeout_s) {}
  std::unique_ptr<grpc::ClientContext> Context() const {
    auto c = std::make_unique<grpc::ClientContext>();
    c->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(timeout));
    return c;
  }
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<Identity::Stub> identity;
  std::unique_ptr<Controller::Stub> controller;
  std::unique_ptr<Node::Stub> node;
  int timeout;
};

// One subcommand: what it does with the parsed arguments; returns the exit status.
using Command = int (*)(const Client&, const Args&);
struct Subcommand {
  CLI::App* app;
  Command run;
};

// ---- controller subcommands ----

int CreateVolume(const Client& c, const Args& a) {
  CreateVolumeRequest req;
  req.set_name(a.name);
  if (!a.size.empty()) req.mutable_capacity_range()->set_required_bytes(ParseBytes(a.size));
  if (!a.limit.empty()) req.mutable_capacity_range()->set_limit_bytes(ParseBytes(a.limit));
  if (!a.snapshot.empty()) {
    req.mutable_volume_content_source()->mutable_snapshot()->set_snapshot_id(a.snapshot);
  }
  if (!a.volume.empty()) {
    req.mutable_volume_content_source()->mutable_volume()->set_volume_id(a.volume);
  }
  for (const auto& [k, v] : ParsePairs(a.params)) (*req.mutable_parameters())[k] = v;
  *req.add_volume_capabilities() = Capability(a.block, false, "", {});
  CreateVolumeResponse resp;
  grpc::Status st = c.controller->CreateVolume(c.Context().get(), req, &resp);
  if (!st.ok()) return Fail(st);
  PrintVolume(resp.volume());
  return 0;
}

int DeleteVolume(const Client& c, const Args& a) {
  DeleteVolumeRequest req;
  req.set_volume_id(a.id);
  DeleteVolumeResponse resp;
  grpc::Status st = c.controller->DeleteVolume(c.Context().get(), req, &resp);
  if (!st.ok()) return Fail(st);
  std::cout << "deleted=" << a.id << "\n";
  return 0;
}

int CreateSnapshot(const Client& c, const Args& a) {
  CreateSnapshotRequest req;
  req.set_name(a.name);
  req.set_source_volume_id(a.volume);
  CreateSnapshotResponse resp;
  grpc::Status st = c.controller->CreateSnapshot(c.Context().get(), req, &resp);
  if (!st.ok()) return Fail(st);
  PrintSnapshot(resp.snapshot());
  return 0;
}

int DeleteSnapshot(const Client& c, const Args& a) {
  DeleteSnapshotRequest req;
  req.set_snapshot_id(a.id);
  DeleteSnapshotResponse resp;
  grpc::Status st = c.controller->DeleteSnapshot(c.Context().get(), req, &resp);
  if (!st.ok()) return Fail(st);
  std::cout << "deleted=" << a.id << "\n";
  return 0;
}

int ListVolumes(const Client& c, const Args& a) {
  ListVolumesRequest req;
  req.set_max_entries(a.max_entries);
  req.set_starting_token(a.token);
  ListVolumesResponse resp;
  grpc::Status st = c.controller->ListVolumes(c.Context().get(), req, &resp);
  if (!st.ok()) return Fail(st);
  for (const auto& e : resp.entries()) {
    std::cout << e.volume().volume_id() << " " << e.volume().capacity_bytes() << "\n";
  }
  if (!resp.next_token().empty()) std::cout << "next_token=" << resp.next_token() << "\n";
  return 0;
}

int ListSnapshots(const Client& c, const Args& a) {
  ListSnapshotsRequest req;
  req.set_source_volume_id(a.volume);
  ListSnapshotsResponse resp;
  grpc::Status st = c.controller->ListSnapshots(c.Context().get(), req, &resp);
  if (!st.ok()) return Fail(st);
  for (const auto& e : resp.entries()) {
    std::cout << e.snapshot().snapshot_id() << " " << e.snapshot().source_volume_id() << " "
              << e.snapshot().size_bytes() << "\n";
  }
  return 0;
}

// ---- node subcommands ----

int Stage(const Client& c, const Args& a) {
  NodeStageVolumeRequest req;
  req.set_volume_id(a.id);
  req.set_staging_target_path(a.staging);
  *req.mutable_volume_capability() = Capability(a.block, a.read_only, a.fs_type, a.flags);
  for (const auto& [k, v] : ParsePairs(a.context)) (*req.mutable_volume_context())[k] = v;
  NodeStageVolumeResponse resp;
  grpc::Status st = c.node->NodeStageVolume(c.Context().get(), req, &resp);
  if (!st.ok()) return Fail(st);
  std::cout << "staged=" << a.staging << "\n";
  return 0;
}

int Unstage(const Client& c, const Args& a) {
  NodeUnstageVolumeRequest req;
  req.set_volume_id(a.id);
  req.set_staging_target_path(a.staging);
  NodeUnstageVolumeResponse resp;
  grpc::Status st = c.node->NodeUnstageVolume(c.Context().get(), req, &resp);
  if (!st.ok()) return Fail(st);
  std::cout << "unstaged=" << a.staging << "\n";
  return 0;
}

int Publish(const Client& c, const Args& a) {
  NodePublishVolumeRequest req;
  req.set_volume_id(a.id);
  req.set_staging_target_path(a.staging);
  req.set_target_path(a.target);
  req.set_readonly(a.read_only);
  *req.mutable_volume_capability() = Capability(a.block, false, a.fs_type, a.flags);
  NodePublishVolumeResponse resp;
  grpc::Status st = c.node->NodePublishVolume(c.Context().get(), req, &resp);
  if (!st.ok()) return Fail(st);
  std::cout << "published=" << a.target << "\n";
  return 0;
}

int Unpublish(const Client& c, const Args& a) {
  NodeUnpublishVolumeRequest req;
  req.set_volume_id(a.id);
  req.set_target_path(a.target);
  NodeUnpublishVolumeResponse resp;
  grpc::Status st = c.node->NodeUnpublishVolume(c.Context().get(), req, &resp);
  if (!st.ok()) return Fail(st);
  std::cout << "unpublished=" << a.target << "\n";
  return 0;
}

int Stats(const Client& c, const Args& a) {
  NodeGetVolumeStatsRequest req;
  req.set_volume_id(a.id);
  req.set_volume_path(a.target);
  NodeGetVolumeStatsResponse resp;
  grpc::Status st = c.node->NodeGetVolumeStats(c.Context().get(), req, &resp);
  if (!st.ok()) return Fail(st);
  for (const auto& u : resp.usage()) {
    std::string unit = u.unit() == VolumeUsage::INODES ? "inodes" : "bytes";
    std::cout << unit << ".total=" << u.total() << "\n"
              << unit << ".used=" << u.used() << "\n"
              << unit << ".available=" << u.available() << "\n";
  }
  std::cout << "abnormal=" << (resp.volume_condition().abnormal() ? "true" : "false") << "\n";
  return 0;
}

int Probe(const Client& c, const Args&) {
  ProbeResponse pr;
  grpc::Status st = c.identity->Probe(c.Context().get(), ProbeRequest(), &pr);
  if (!st.ok()) return Fail(st);
  GetPluginInfoResponse info;
  st = c.identity->GetPluginInfo(c.Context().get(), GetPluginInfoRequest(), &info);
  if (!st.ok()) return Fail(st);
  NodeGetInfoResponse ni;
  st = c.node->NodeGetInfo(c.Context().get(), NodeGetInfoRequest(), &ni);
  if (!st.ok()) return Fail(st);
  std::cout << "ready=" << (!pr.has_ready() || pr.ready().value() ? "true" : "false") << "\n"
            << "name=" << info.name() << "\n"
            << "vendor_version=" << info.vendor_version() << "\n"
            << "node_id=" << ni.node_id() << "\n";
  return 0;
}

// ---- the command line ----

// create-volume, delete-volume, create-snapshot, delete-snapshot.
void AddCreateDeleteCommands(CLI::App& app, Args& a, std::vector<Subcommand>* out) {
  auto* create_volume = app.add_subcommand("create-volume", "CreateVolume");
  create_volume->add_option("--name", a.name, "volume name (idempotency key)")->required();
  create_volume->add_option("--size", a.size, "required capacity, e.g. 1G");
  create_volume->add_option("--limit", a.limit, "capacity limit, e.g. 2G");
  create_volume->add_option("--snapshot", a.snapshot, "create from this snapshot id");
  create_volume->add_option("--volume", a.volume, "clone this volume id");
  create_volume->add_option("--param", a.params, "StorageClass parameter key=value (repeatable)");
  create_volume->add_flag("--block", a.block, "ask for block access (default: mount)");
  out->push_back({create_volume, CreateVolume});

  auto* delete_volume = app.add_subcommand("delete-volume", "DeleteVolume");
  delete_volume->add_option("--id", a.id, "volume id")->required();
  out->push_back({delete_volume, DeleteVolume});

  auto* create_snapshot = app.add_subcommand("create-snapshot", "CreateSnapshot");
  create_snapshot->add_option("--name", a.name, "snapshot name")->required();
  create_snapshot->add_option("--volume", a.volume, "source volume id")->required();
  out->push_back({create_snapshot, CreateSnapshot});

  auto* delete_snapshot = app.add_subcommand("delete-snapshot", "DeleteSnapshot");
  delete_snapshot->add_option("--id", a.id, "snapshot id")->required();
  out->push_back({delete_snapshot, DeleteSnapshot});
}

// stage, unstage, publish, unpublish.
void AddNodeCommands(CLI::App& app, Args& a, std::vector<Subcommand>* out) {
  auto* stage = app.add_subcommand("stage", "NodeStageVolume");
  stage->add_option("--id", a.id, "volume id")->required();
  stage->add_option("--staging-path", a.staging, "staging target path")->required();
  stage->add_option("--fs-type", a.fs_type, "filesystem")->capture_default_str();
  stage->add_option("--mount-flag", a.flags, "mount flag (repeatable)");
  stage->add_option("--context", a.context, "volume_context key=value (repeatable)");
  stage->add_flag("--block", a.block, "block access");
  stage->add_flag("--read-only", a.read_only, "SINGLE_NODE_READER_ONLY access");
  out->push_back({stage, Stage});

  auto* unstage = app.add_subcommand("unstage", "NodeUnstageVolume");
  unstage->add_option("--id", a.id, "volume id")->required();
  unstage->add_option("--staging-path", a.staging, "staging target path")->required();
  out->push_back({unstage, Unstage});

  auto* publish = app.add_subcommand("publish", "NodePublishVolume");
  publish->add_option("--id", a.id, "volume id")->required();
  publish->add_option("--staging-path", a.staging, "staging target path")->required();
  publish->add_option("--target", a.target, "target path")->required();
  publish->add_option("--fs-type", a.fs_type, "filesystem")->capture_default_str();
  publish->add_option("--mount-flag", a.flags, "mount flag (repeatable)");
  publish->add_flag("--block", a.block, "block access");
  publish->add_flag("--read-only", a.read_only, "publish read-only");
  out->push_back({publish, Publish});

  auto* unpublish = app.add_subcommand("unpublish", "NodeUnpublishVolume");
  unpublish->add_option("--id", a.id, "volume id")->required();
  unpublish->add_option("--target", a.target, "target path")->required();
  out->push_back({unpublish, Unpublish});
}

// list-volumes, list-snapshots, stats, probe.
void AddQueryCommands(CLI::App& app, Args& a, std::vector<Subcommand>* out) {
  auto* list_volumes = app.add_subcommand("list-volumes", "ListVolumes");
  list_volumes->add_option("--max-entries", a.max_entries, "page size (0 = all)");
  list_volumes->add_option("--starting-token", a.token, "next_token of the previous page");
  out->push_back({list_volumes, ListVolumes});

  auto* list_snapshots = app.add_subcommand("list-snapshots", "ListSnapshots");
  list_snapshots->add_option("--volume", a.volume, "only snapshots of this volume");
  out->push_back({list_snapshots, ListSnapshots});

  auto* stats = app.add_subcommand("stats", "NodeGetVolumeStats");
  stats->add_option("--id", a.id, "volume id")->required();
  stats->add_option("--path", a.target, "a path the volume is published or staged at")->required();
  out->push_back({stats, Stats});

  out->push_back({app.add_subcommand("probe", "Probe, GetPluginInfo and NodeGetInfo"), Probe});
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"stellarium-csi-client: call a CSI driver over its unix socket"};
  app.require_subcommand(1);
  std::string endpoint = "unix:///var/lib/kubelet/plugins/csi.stellarium.io/csi.sock";
  int timeout_s = 600;
  app.add_option("--endpoint", endpoint, "the driver's socket, unix:///path")->capture_default_str();
  app.add_option("--timeout", timeout_s, "seconds to wait for each call")->capture_default_str();
  Args args;
  std::vector<Subcommand> subcommands;
  AddCreateDeleteCommands(app, args, &subcommands);
  AddNodeCommands(app, args, &subcommands);
  AddQueryCommands(app, args, &subcommands);

  CLI11_PARSE(app, argc, argv);

  const Client client(endpoint, timeout_s);
  try {
    for (const Subcommand& s : subcommands) {
      if (*s.app) return s.run(client, args);
    }
  } catch (const std::exception& e) {
    std::cerr << "stellarium-csi-client: " << e.what() << "\n";
    return 2;
  }
  return 0;
}
