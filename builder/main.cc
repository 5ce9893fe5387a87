// stellarium: the command-line tool over core. Build volumes from directory trees,
// image files or URLs, clone, snapshot, list, inspect, export, delete, gc and fsck.
// Every command exits 0 on success and 1 with a one-line error on stderr otherwise (fsck:
// 2 when the store has errors); a failed command leaves the store as it was.
//
// One function per subcommand (Run*), each translating its flags into calls of core's
// entry points: core/provision.h makes every new volume (build, clone), core/store.h does
// the rest. main() only wires the flags (Add*) and calls the parsed subcommand's Run*.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <nlohmann/json.hpp>

#include "core/admin.h"
#include "core/export.h"
#include "core/provision.h"
#include "core/sha256.h"
#include "core/sigbus.h"
#include "core/sources/http_source.h"
#include "core/store.h"

namespace {

using namespace stellarium;
using json = nlohmann::json;
namespace fs = std::filesystem;

// ---- Output ----

std::string HumanBytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024 && u < 4) b /= 1024, ++u;
  char buf[32];
  snprintf(buf, sizeof(buf), u == 0 ? "%.0f %s" : "%.2f %s", b, units[u]);
  return buf;
}

// A progress bar on stderr when it is a terminal; silent otherwise.
ProgressFn MakeProgressBar(const std::string& label) {
  if (!isatty(STDERR_FILENO)) return nullptr;
  auto start =
      std::make_shared<std::chrono::steady_clock::time_point>(std::chrono::steady_clock::now());
  return [label, start](const Progress& p) {
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - *start).count();
    double rate = secs > 0 ? p.done_bytes / secs / 1e6 : 0;
    if (p.total_bytes > 0) {
      int pct = static_cast<int>(100.0 * p.done_bytes / p.total_bytes);
      int fill = pct * 30 / 100;
      fprintf(stderr, "\r%s [%s%s] %3d%% %s / %s  %.0f MB/s ", label.c_str(),
              std::string(fill, '=').c_str(), std::string(30 - fill, ' ').c_str(), pct,
              HumanBytes(p.done_bytes).c_str(), HumanBytes(p.total_bytes).c_str(), rate);
      if (p.done_bytes >= p.total_bytes) fprintf(stderr, "\n");
    } else {
      fprintf(stderr, "\r%s %s  %.0f MB/s ", label.c_str(), HumanBytes(p.done_bytes).c_str(), rate);
    }
    fflush(stderr);
  };
}

int Fail(const Status& s) {
  std::cerr << "stellarium: " << s.ToString() << "\n";
  return 1;
}

json VolumeJson(const VolumeInfo& v) {
  json j = {{"id", v.id},
            {"name", v.name},
            {"size_bytes", v.size_bytes},
            {"block_size", v.block_size},
            {"source_kind", v.source_kind},
            {"source_id", v.source_id},
            {"created_unix_ns", v.created_unix_ns}};
  if (!v.attributes.empty()) j["attributes"] = v.attributes;
  return j;
}

json SnapshotJson(const SnapshotInfo& s) {
  return {{"id", s.id},
          {"name", s.name},
          {"source_volume_id", s.source_volume_id},
          {"size_bytes", s.size_bytes},
          {"block_size", s.block_size},
          {"created_unix_ns", s.created_unix_ns}};
}

json ImageJson(const ImageInfo& i) {
  return {{"digest", i.digest},
          {"size_bytes", i.size_bytes},
          {"block_size", i.block_size},
          {"origin", i.origin}};
}

void PrintImportSummary(const VolumeInfo& v, const ImportSummary& s, bool as_json) {
  double mbs = s.seconds > 0 ? s.raw_bytes / s.seconds / 1e6 : 0;
  if (as_json) {
    json j = {{"volume", VolumeJson(v)},
              {"raw_bytes", s.raw_bytes},
              {"blocks", s.blocks},
              {"zero_blocks", s.zero_blocks},
              {"duplicate_blocks", s.duplicate_blocks},
              {"new_chunks", s.new_chunks},
              {"bytes_added", s.bytes_added},
              {"seconds", s.seconds},
              {"mb_per_s", mbs},
              {"image_digest", s.image_digest},
              {"reused_image", s.reused_image}};
    std::cout << j.dump(2) << "\n";
    return;
  }
  printf("volume      %s (%s)\n", v.name.c_str(), v.id.c_str());
  printf("raw size    %s (%llu blocks of %u)\n", HumanBytes(s.raw_bytes).c_str(),
         static_cast<unsigned long long>(s.blocks), v.block_size);
  printf("zero blocks %llu (not stored)\n", static_cast<unsigned long long>(s.zero_blocks));
  printf("duplicates  %llu blocks already in the store\n",
         static_cast<unsigned long long>(s.duplicate_blocks));
  printf("added       %s in %llu new chunks\n", HumanBytes(s.bytes_added).c_str(),
         static_cast<unsigned long long>(s.new_chunks));
  printf("time        %.2f s, %.0f MB/s\n", s.seconds, mbs);
  printf("image       sha256:%s%s\n", s.image_digest.c_str(),
         s.reused_image ? " (already imported: the volume is a clone)" : "");
}

// A build whose volume already existed: nothing was read, so there is no summary.
void PrintExisting(const VolumeInfo& v, bool as_json) {
  if (as_json) {
    std::cout << json{{"volume", VolumeJson(v)}, {"already_exists", true}}.dump(2) << "\n";
    return;
  }
  printf("volume %s (%s) already exists with these parameters: nothing imported\n", v.name.c_str(),
         v.id.c_str());
}

// ---- The store and the objects in it ----

struct Common {
  std::string store = "/var/lib/stellarium/store";  // a directory, or rados://POOL
  bool mmap_reads = true;  // --store-mmap-reads
  bool json = false;
  std::string ceph_conf = "/etc/ceph/ceph.conf", ceph_id = "admin", cache;  // rados:// only
  double writer_window_seconds = 1800;  // rados:// only: StoreOptions::rados_writer_window_ns
};

bool IsRados(const std::string& store) { return store.rfind("rados://", 0) == 0; }

Result<std::unique_ptr<Store>> OpenStore(const Common& c, bool create, bool read_only = false) {
  StoreOptions o;
  o.path = c.store;
  o.create_if_missing = create;
  o.mmap_reads = c.mmap_reads;
  o.read_only = read_only;
  o.ceph_conf = c.ceph_conf;
  o.ceph_id = c.ceph_id;
  o.cache_dir = c.cache;
  o.rados_writer_window_ns = static_cast<int64_t>(c.writer_window_seconds * 1e9);
  return Store::Open(o);
}

// Whether opening failed because another process (the CSI driver) holds the store.
bool HeldByAnother(const Status& s) {
  return s.code() == StatusCode::kFailedPrecondition &&
         s.message().find("already open by another process") != std::string::npos;
}

// For commands that only read (list, info, export, fsck): the store, or, when another
// process holds it, a read-only view of it as it is now (said on stderr).
Result<std::unique_ptr<Store>> OpenStoreToRead(const Common& c) {
  auto store = OpenStore(c, /*create=*/false);
  if (store.ok() || !HeldByAnother(store.status())) return store;
  fprintf(stderr, "stellarium: %s; reading a read-only view of it as it is now\n",
          store.status().message().c_str());
  return OpenStore(c, /*create=*/false, /*read_only=*/true);
}

// A store the failed command itself created, still empty, is removed again: a failed
// command leaves no trace (a store held by this process has no other user).
void DiscardIfEmptyNewStore(std::unique_ptr<Store> store, const std::string& path) {
  auto vols = store->ListVolumes();
  auto snaps = store->ListSnapshots();
  auto imgs = store->ListImages();
  if (!vols.ok() || !snaps.ok() || !imgs.ok() || !vols->empty() || !snaps->empty() ||
      !imgs->empty())
    return;
  store.reset();
  std::error_code ec;
  fs::remove_all(path, ec);
}

// A volume named by id ("vol-...") or by name.
Result<VolumeInfo> ResolveVolume(Store& store, const std::string& ref) {
  if (ref.rfind("vol-", 0) == 0) {
    auto v = store.GetVolume(ref);
    if (v.ok() || !v.status().IsNotFound()) return v;
  }
  return store.FindVolumeByName(ref);
}

Result<SnapshotInfo> ResolveSnapshot(Store& store, const std::string& ref) {
  if (ref.rfind("snap-", 0) == 0) {
    auto v = store.GetSnapshot(ref);
    if (v.ok() || !v.status().IsNotFound()) return v;
  }
  return store.FindSnapshotByName(ref);
}

// ---- build ----

struct BuildArgs {
  std::string from_dir, from_image, from_url;
  std::string sha256, ca_bundle, scratch_dir;
  std::vector<std::string> headers;
  std::string name, size, block_size = "4096";
  bool pad = false;
};

// The flags as a ProvisionRequest. Attribute "source" records what was built from
// (compared when the same name is built again).
Result<ProvisionRequest> BuildRequest(const BuildArgs& a) {
  ProvisionRequest r;
  RETURN_IF_ERROR(ValidateName(a.name, "volume name"));
  r.name = a.name;
  ASSIGN_OR_RETURN(r.block_size, ParseBlockSize(a.block_size, "--block-size"));
  r.pad_to_block = a.pad;
  r.scratch_dir = a.scratch_dir;
  r.progress = MakeProgressBar("import");
  if (!a.size.empty() && a.from_dir.empty()) {
    return Status::InvalidArgument("build: --size applies to --from-dir only");
  }
  if (!a.from_dir.empty()) {
    r.source.kind = SourceKind::kTree;
    r.source.tree_dir = fs::absolute(a.from_dir).string();
    r.source.tree_label = a.name;
    r.attributes["source"] = "dir:" + fs::absolute(a.from_dir).string();
    if (!a.size.empty()) {
      ASSIGN_OR_RETURN(uint64_t size, ParseSize(a.size));
      ExactSize(size, r.block_size, &r);
    }
  } else if (!a.from_image.empty()) {
    r.source.kind = SourceKind::kImageFile;
    r.source.image.path = a.from_image;
    r.attributes["source"] = "image:" + fs::absolute(a.from_image).string();
  } else if (!a.from_url.empty()) {
    r.source.kind = SourceKind::kUrl;
    r.source.image.url = a.from_url;
    r.source.image.expected_sha256 = a.sha256;
    r.source.image.ca_bundle = a.ca_bundle;
    r.source.image.headers = a.headers;
    r.attributes["source"] = "url:" + RedactUrl(a.from_url);
    if (!a.sha256.empty()) r.attributes["sha256"] = a.sha256;
  } else {
    return Status::InvalidArgument("build: give --from-dir, --from-image or --from-url");
  }
  return r;
}

int RunBuild(const Common& c, const BuildArgs& a) {
  auto request = BuildRequest(a);
  if (!request.ok()) return Fail(request.status());
  const bool new_store = !IsRados(c.store) && !fs::exists(c.store);
  auto store = OpenStore(c, /*create=*/true);
  if (!store.ok()) return Fail(store.status());
  ProvisionHooks hooks;
  if (isatty(STDERR_FILENO))
    hooks.note = [](const std::string& line) { fprintf(stderr, "%s\n", line.c_str()); };
  auto r = Provision(**store, *request, hooks);
  if (!r.ok()) {
    if (new_store) DiscardIfEmptyNewStore(std::move(*store), c.store);
    return Fail(r.status());
  }
  if (r->existed || !r->import) {
    PrintExisting(r->volume, c.json);
  } else {
    PrintImportSummary(r->volume, *r->import, c.json);
  }
  return 0;
}

// ---- clone, snapshot ----

struct CloneArgs {
  std::string from_snapshot, from_volume, name, size;
};

int RunClone(Store& store, const Common& c, const CloneArgs& a) {
  if (a.from_snapshot.empty() && a.from_volume.empty()) {
    return Fail(Status::InvalidArgument("clone: give --from-snapshot or --from-volume"));
  }
  Status named = ValidateName(a.name, "volume name");
  if (!named.ok()) return Fail(named);
  ProvisionRequest r;
  r.name = a.name;
  uint32_t source_block_size = 0;
  if (!a.from_snapshot.empty()) {
    auto snap = ResolveSnapshot(store, a.from_snapshot);
    if (!snap.ok()) return Fail(snap.status());
    r.source.kind = SourceKind::kSnapshot;
    r.source.id = snap->id;
    source_block_size = snap->block_size;
  } else {
    auto vol = ResolveVolume(store, a.from_volume);
    if (!vol.ok()) return Fail(vol.status());
    r.source.kind = SourceKind::kVolume;
    r.source.id = vol->id;
    source_block_size = vol->block_size;
  }
  if (!a.size.empty()) {
    auto size = ParseSize(a.size);
    if (!size.ok()) return Fail(size.status());
    ExactSize(*size, source_block_size, &r);
  }
  auto v = Provision(store, r);
  if (!v.ok()) return Fail(v.status());
  if (c.json)
    std::cout << VolumeJson(v->volume).dump(2) << "\n";
  else
    printf("%s %s\n", v->volume.id.c_str(), v->volume.name.c_str());
  return 0;
}

struct SnapshotArgs {
  std::string volume, name;
};

int RunSnapshot(Store& store, const Common& c, const SnapshotArgs& a) {
  Status named = ValidateName(a.name, "snapshot name");
  if (!named.ok()) return Fail(named);
  auto vol = ResolveVolume(store, a.volume);
  if (!vol.ok()) return Fail(vol.status());
  auto s = store.CreateSnapshot(a.name, vol->id);
  if (!s.ok()) return Fail(s.status());
  if (c.json)
    std::cout << SnapshotJson(*s).dump(2) << "\n";
  else
    printf("%s %s\n", s->id.c_str(), s->name.c_str());
  return 0;
}

// ---- list, info ----

int RunList(Store& store, const Common& c) {
  auto vols = store.ListVolumes();
  if (!vols.ok()) return Fail(vols.status());
  auto snaps = store.ListSnapshots();
  if (!snaps.ok()) return Fail(snaps.status());
  auto imgs = store.ListImages();
  if (!imgs.ok()) return Fail(imgs.status());
  if (c.json) {
    json j = {{"volumes", json::array()}, {"snapshots", json::array()}, {"images", json::array()}};
    for (const auto& v : *vols) j["volumes"].push_back(VolumeJson(v));
    for (const auto& s : *snaps) j["snapshots"].push_back(SnapshotJson(s));
    for (const auto& i : *imgs) j["images"].push_back(ImageJson(i));
    std::cout << j.dump(2) << "\n";
    return 0;
  }
  printf("%-22s %-24s %12s %8s  %s\n", "VOLUME", "NAME", "SIZE", "BLOCK", "SOURCE");
  for (const auto& v : *vols) {
    printf("%-22s %-24s %12s %8u  %s %s\n", v.id.c_str(), v.name.c_str(),
           HumanBytes(v.size_bytes).c_str(), v.block_size, v.source_kind.c_str(),
           v.source_id.substr(0, 22).c_str());
  }
  printf("\n%-22s %-24s %12s  %s\n", "SNAPSHOT", "NAME", "SIZE", "VOLUME");
  for (const auto& s : *snaps) {
    printf("%-22s %-24s %12s  %s\n", s.id.c_str(), s.name.c_str(), HumanBytes(s.size_bytes).c_str(),
           s.source_volume_id.c_str());
  }
  printf("\n%-18s %12s %8s  %s\n", "IMAGE", "SIZE", "BLOCK", "ORIGIN");
  for (const auto& i : *imgs) {
    printf("%-18s %12s %8u  %s\n", i.digest.substr(0, 16).c_str(), HumanBytes(i.size_bytes).c_str(),
           i.block_size, i.origin.c_str());
  }
  return 0;
}

int InfoStore(Store& store, const Common& c) {
  auto st = store.GetStats();
  if (!st.ok()) return Fail(st.status());
  double dedup = st->chunk_bytes ? static_cast<double>(st->referenced_bytes) / st->chunk_bytes : 0;
  if (c.json) {
    std::cout << json{{"volumes", st->volumes},
                      {"snapshots", st->snapshots},
                      {"images", st->images},
                      {"layers", st->layers},
                      {"chunks", st->chunks},
                      {"chunk_bytes", st->chunk_bytes},
                      {"referenced_bytes", st->referenced_bytes},
                      {"disk_bytes", st->disk_bytes},
                      {"dedup_ratio", dedup}}
                     .dump(2)
              << "\n";
    return 0;
  }
  printf("store        %s\n", c.store.c_str());
  printf("volumes      %llu, snapshots %llu, images %llu, layers %llu\n",
         (unsigned long long)st->volumes, (unsigned long long)st->snapshots,
         (unsigned long long)st->images, (unsigned long long)st->layers);
  printf("chunks       %llu (%s)\n", (unsigned long long)st->chunks,
         HumanBytes(st->chunk_bytes).c_str());
  printf("referenced   %s (dedup ratio %.2f)\n", HumanBytes(st->referenced_bytes).c_str(), dedup);
  printf("on disk      %s\n", HumanBytes(st->disk_bytes).c_str());
  return 0;
}

int InfoVolume(Store& store, const VolumeInfo& vol, const Common& c) {
  auto st = store.GetVolumeStats(vol.id);
  if (!st.ok()) return Fail(st.status());
  if (c.json) {
    json j = VolumeJson(vol);
    j["stats"] = {{"mapped_blocks", st->mapped_blocks},
                  {"head_blocks", st->head_blocks},
                  {"unique_bytes", st->unique_bytes},
                  {"chain_depth", st->chain_depth}};
    std::cout << j.dump(2) << "\n";
    return 0;
  }
  printf("volume       %s (%s)\n", vol.name.c_str(), vol.id.c_str());
  printf("size         %s, block size %u\n", HumanBytes(vol.size_bytes).c_str(), vol.block_size);
  printf("source       %s %s\n", vol.source_kind.empty() ? "blank" : vol.source_kind.c_str(),
         vol.source_id.c_str());
  printf("mapped       %llu blocks (%s), %llu written since last snapshot/clone\n",
         (unsigned long long)st->mapped_blocks,
         HumanBytes(double(st->mapped_blocks) * vol.block_size).c_str(),
         (unsigned long long)st->head_blocks);
  printf("unique       %s\n", HumanBytes(st->unique_bytes).c_str());
  printf("chain depth  %u\n", st->chain_depth);
  return 0;
}

int RunInfo(Store& store, const Common& c, const std::string& ref) {
  if (ref.empty()) return InfoStore(store, c);
  auto vol = ResolveVolume(store, ref);
  if (vol.ok()) return InfoVolume(store, *vol, c);
  auto snap = ResolveSnapshot(store, ref);
  if (!snap.ok()) return Fail(Status::NotFound("no volume or snapshot named " + ref));
  if (c.json) {
    std::cout << SnapshotJson(*snap).dump(2) << "\n";
  } else {
    printf("snapshot     %s (%s) of volume %s, %s\n", snap->name.c_str(), snap->id.c_str(),
           snap->source_volume_id.c_str(), HumanBytes(snap->size_bytes).c_str());
  }
  return 0;
}

// ---- export, delete, gc, fsck ----

int RunExport(Store& store, const Common& c, const std::string& volume_ref,
              const std::string& output) {
  auto vol = ResolveVolume(store, volume_ref);
  if (!vol.ok()) return Fail(vol.status());
  auto h = store.OpenVolume(vol->id, /*read_only=*/true);
  if (!h.ok()) return Fail(h.status());
  auto r = ExportVolume(**h, output, MakeProgressBar("export"));
  if (!r.ok()) return Fail(r.status());
  printf("exported %s to %s (%s, %s of data)\n", vol->name.c_str(), output.c_str(),
         HumanBytes(r->bytes).c_str(), HumanBytes(r->data_bytes).c_str());
  return 0;
}

int RunDelete(Store& store, const Common& c, const std::string& volume_ref,
              const std::string& snapshot_ref) {
  if (volume_ref.empty() && snapshot_ref.empty()) {
    return Fail(Status::InvalidArgument("delete: give --volume or --snapshot"));
  }
  if (!volume_ref.empty()) {
    auto vol = ResolveVolume(store, volume_ref);
    if (!vol.ok()) return Fail(vol.status());
    Status s = store.DeleteVolume(vol->id);
    if (!s.ok()) return Fail(s);
    printf("deleted volume %s\n", vol->id.c_str());
    return 0;
  }
  auto snap = ResolveSnapshot(store, snapshot_ref);
  if (!snap.ok()) return Fail(snap.status());
  Status s = store.DeleteSnapshot(snap->id);
  if (!s.ok()) return Fail(s);
  printf("deleted snapshot %s\n", snap->id.c_str());
  return 0;
}

// gc on the store, or, when another process holds it, by that process through the
// store's admin socket (core/admin.h).
int RunGc(const Common& c) {
  Result<GcReport> r = Status::Internal("gc did not run");
  auto store = OpenStore(c, /*create=*/false);
  if (store.ok()) {
    r = (*store)->Gc();
  } else if (HeldByAnother(store.status())) {
    fprintf(stderr, "stellarium: %s; asking it to collect\n", store.status().message().c_str());
    r = RequestGc(c.store);
  } else {
    r = store.status();
  }
  if (!r.ok()) return Fail(r.status());
  if (c.json) {
    std::cout << json{{"layers_reclaimed", r->layers_reclaimed},
                      {"map_entries_dropped", r->map_entries_dropped},
                      {"chunks_deleted", r->chunks_deleted},
                      {"bytes_freed", r->bytes_freed},
                      {"disk_bytes_before", r->disk_bytes_before},
                      {"disk_bytes_after", r->disk_bytes_after}}
                     .dump(2)
              << "\n";
  } else {
    printf("gc: %llu layers, %llu map entries, %llu chunks (%s) reclaimed\n",
           (unsigned long long)r->layers_reclaimed, (unsigned long long)r->map_entries_dropped,
           (unsigned long long)r->chunks_deleted, HumanBytes(r->bytes_freed).c_str());
  }
  return 0;
}

// Exit status: 0 no problem, 1 fsck could not run, 2 problems found (listed).
int RunFsck(Store& store, const Common& c) {
  auto r = store.Fsck();
  if (!r.ok()) return Fail(r.status());
  if (c.json) {
    std::cout << json{{"ok", r->ok()},
                      {"errors", r->errors},
                      {"problems", r->problems},
                      {"affected", r->affected},
                      {"chunks", r->chunks},
                      {"chunks_checked", r->chunks_checked},
                      {"map_entries", r->map_entries},
                      {"layers", r->layers},
                      {"dead_layers", r->dead_layers},
                      {"volumes", r->volumes},
                      {"snapshots", r->snapshots}}
                     .dump(2)
              << "\n";
    return r->ok() ? 0 : 2;
  }
  for (const auto& e : r->errors) printf("error: %s\n", e.c_str());
  printf("fsck: %llu chunks (%llu checked), %llu map entries, %llu layers (%llu awaiting gc), "
         "%llu volumes, %llu snapshots\n",
         (unsigned long long)r->chunks, (unsigned long long)r->chunks_checked,
         (unsigned long long)r->map_entries, (unsigned long long)r->layers,
         (unsigned long long)r->dead_layers, (unsigned long long)r->volumes,
         (unsigned long long)r->snapshots);
  if (r->ok()) {
    printf("fsck: no problems\n");
    return 0;
  }
  std::string counts;
  for (const auto& [kind, n] : r->problems) {
    counts += (counts.empty() ? "" : ", ") + std::to_string(n) + " " + kind;
  }
  printf("problems: %s\n", counts.c_str());
  for (const auto& who : r->affected) printf("damaged: %s\n", who.c_str());
  return 2;
}

// ---- Flags ----

// With the store's table files mapped (--store-mmap-reads, the default), a disk read
// error under a mapped page arrives as SIGBUS: say what it most likely is.
constexpr char kSigbusMessage[] =
    "stellarium: SIGBUS: a read of a memory-mapped file failed. With --store-mmap-reads=true "
    "(the default) this is most likely a disk read error under the store's table files: "
    "check the disk; with --store-mmap-reads=false such errors fail the command with an "
    "I/O error instead.\n";

constexpr char kNameRule[] =
    "; 1 to 1024 bytes, no '/', no control characters (newline included), not '.' or '..'";

// A subcommand with the flags every command takes (--json only where `with_json`).
CLI::App* AddCommand(CLI::App& app, Common& c, const std::string& name, const std::string& help,
                     bool with_json = true) {
  CLI::App* cmd = app.add_subcommand(name, help);
  cmd->add_option("--store", c.store, "store directory, or rados://POOL for the store on a Ceph pool")
      ->capture_default_str();
  cmd->add_option("--ceph-conf", c.ceph_conf, "rados:// stores: the cluster's ceph.conf")
      ->capture_default_str();
  cmd->add_option("--ceph-id", c.ceph_id, "rados:// stores: the cephx user (its key from the keyring "
                  "ceph.conf names)")->capture_default_str();
  cmd->add_option("--cache", c.cache, "rados:// stores: node-local cache directory for chunks read "
                  "from the cluster (default: none)");
  cmd->add_option("--writer-window", c.writer_window_seconds,
                  "rados:// stores: seconds a writer may take between finding a chunk and naming "
                  "it; gc deletes an unnamed chunk only that long after condemning it")
      ->capture_default_str();
  cmd->add_option("--store-mmap-reads", c.mmap_reads,
                  "read the store's table files through mmap (faster; a disk read error then "
                  "ends the command with SIGBUS instead of failing it)")
      ->default_str("true");
  if (with_json) cmd->add_flag("--json", c.json, "print JSON");
  return cmd;
}

CLI::App* AddBuild(CLI::App& app, Common& c, BuildArgs& a) {
  CLI::App* cmd =
      AddCommand(app, c, "build", "import a directory tree, an image file or a URL as a volume");
  auto* fd = cmd->add_option("--from-dir", a.from_dir, "directory tree to turn into an ext4 image");
  auto* fi =
      cmd->add_option("--from-image", a.from_image,
                      "image file: raw or ext4 (sparse-aware), qcow2, or gzip/xz/zstd of those");
  auto* fu = cmd->add_option(
      "--from-url", a.from_url,
      "http(s) URL of a raw, ext4, qcow2 or gzip/xz/zstd-compressed image (streamed)");
  fd->excludes(fi)->excludes(fu);
  fi->excludes(fu);
  cmd->add_option("--sha256", a.sha256, "expected sha256:<hex> of the downloaded file")->needs(fu);
  cmd->add_option("--ca-bundle", a.ca_bundle,
                  "PEM file of CAs trusted for https (default: the system's)")
      ->needs(fu);
  cmd->add_option("--header", a.headers, "extra request header 'Name: value' (repeatable)")
      ->needs(fu);
  cmd->add_option(
      "--scratch-dir", a.scratch_dir,
      "where temporary files go: the ext4 image of --from-dir, the reorder buffer a qcow2 "
      "whose data comes before its tables spills (default: the store's parent directory)");
  cmd->add_option("--name", a.name, std::string("volume name") + kNameRule)->required();
  cmd->add_option("--size", a.size,
                  "image size for --from-dir (default: tree + headroom); 64M, 2G, ...");
  cmd->add_option("--block-size", a.block_size,
                  "block size: a power of two from 4K to 1M (4096, 4k, 64KiB)")
      ->capture_default_str();
  cmd->add_flag("--pad", a.pad, "pad an image whose size is not a multiple of the block size");
  return cmd;
}

CLI::App* AddClone(CLI::App& app, Common& c, CloneArgs& a) {
  CLI::App* cmd = AddCommand(app, c, "clone", "clone a snapshot or a volume (O(1))");
  auto* cs = cmd->add_option("--from-snapshot", a.from_snapshot, "snapshot id or name");
  auto* cv = cmd->add_option("--from-volume", a.from_volume, "volume id or name");
  cs->excludes(cv);
  cmd->add_option("--name", a.name, std::string("new volume name") + kNameRule)->required();
  cmd->add_option("--size", a.size, "size (default: the source's)");
  return cmd;
}

CLI::App* AddSnapshot(CLI::App& app, Common& c, SnapshotArgs& a) {
  CLI::App* cmd = AddCommand(app, c, "snapshot", "snapshot a volume (O(1))");
  cmd->add_option("--volume", a.volume, "volume id or name")->required();
  cmd->add_option("--name", a.name, std::string("snapshot name") + kNameRule)->required();
  return cmd;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"stellarium: deduplicated, instantly clonable volumes (core CLI)"};
  app.require_subcommand(1);
  // The version, and how this build hashes chunks (core/sha256.h): an image whose
  // multi-buffer library is missing or cannot start here says "openssl". Asked only for
  // --version (it sets up the library on this thread).
  app.set_version_flag("--version", std::function<std::string()>([] {
                         return std::string("stellarium ") + STELLARIUM_VERSION +
                                " (chunk hashing: " + Sha256ManyEngine() + ")";
                       }));
  Common common;
  BuildArgs build_args;
  CloneArgs clone_args;
  SnapshotArgs snapshot_args;
  std::string info_ref, volume_ref, output, del_volume, del_snapshot;

  CLI::App* build = AddBuild(app, common, build_args);
  CLI::App* clone = AddClone(app, common, clone_args);
  CLI::App* snapshot = AddSnapshot(app, common, snapshot_args);
  CLI::App* list = AddCommand(app, common, "list", "list volumes, snapshots and images");
  CLI::App* info = AddCommand(app, common, "info", "show a volume or snapshot, or the store");
  info->add_option("ref", info_ref, "volume or snapshot id or name (omit for the store)");
  CLI::App* exp = AddCommand(app, common, "export", "write a volume to a sparse raw image", false);
  exp->add_option("--volume", volume_ref, "volume id or name")->required();
  exp->add_option("--output,-o", output, "output file")->required();
  CLI::App* del = AddCommand(app, common, "delete",
                             "delete a volume or a snapshot (space returns at gc)", false);
  auto* dv = del->add_option("--volume", del_volume, "volume id or name");
  dv->excludes(del->add_option("--snapshot", del_snapshot, "snapshot id or name"));
  CLI::App* gc = AddCommand(app, common, "gc", "reclaim unreferenced layers and chunks");
  CLI::App* fsck = AddCommand(app, common, "fsck", "check every chunk, reference count and link");

  CLI11_PARSE(app, argc, argv);
  if (common.mmap_reads) ExplainSigbus(kSigbusMessage);
  if (build->parsed()) return RunBuild(common, build_args);
  if (gc->parsed()) return RunGc(common);
  // Every other command works on an existing store; those that only read also on a
  // store the CSI driver holds.
  const bool reads_only = list->parsed() || info->parsed() || exp->parsed() || fsck->parsed();
  auto opened = reads_only ? OpenStoreToRead(common) : OpenStore(common, /*create=*/false);
  if (!opened.ok()) return Fail(opened.status());
  Store& store = **opened;
  if (clone->parsed()) return RunClone(store, common, clone_args);
  if (snapshot->parsed()) return RunSnapshot(store, common, snapshot_args);
  if (list->parsed()) return RunList(store, common);
  if (info->parsed()) return RunInfo(store, common, info_ref);
  if (exp->parsed()) return RunExport(store, common, volume_ref, output);
  if (del->parsed()) return RunDelete(store, common, del_volume, del_snapshot);
  if (fsck->parsed()) return RunFsck(store, common);
  return 0;
}
