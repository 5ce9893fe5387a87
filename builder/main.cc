// stellarium: the command-line tool over core. Build volumes from directory trees or
// image files, clone, snapshot, list, inspect, export, delete, gc and fsck.
// Every command exits 0 on success and 1 with a one-line error on stderr otherwise;
// a failed command leaves the store as it was.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <nlohmann/json.hpp>

#include "core/export.h"
#include "core/image_source.h"
#include "core/sha256.h"
#include "core/sigbus.h"
#include "core/sources/open.h"
#include "core/store.h"
#include "core/tree_image.h"

namespace {

using namespace stellarium;
using json = nlohmann::json;

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
  auto start = std::make_shared<std::chrono::steady_clock::time_point>(std::chrono::steady_clock::now());
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

// With the store's table files mapped (--store-mmap-reads, the default), a disk read
// error under a mapped page arrives as SIGBUS: say what it most likely is.
constexpr char kSigbusMessage[] =
    "stellarium: SIGBUS: a read of a memory-mapped file failed. With --store-mmap-reads=true "
    "(the default) this is most likely a disk read error under the store's table files: "
    "check the disk; with --store-mmap-reads=false such errors fail the command with an "
    "I/O error instead.\n";

bool g_mmap_reads = true;  // --store-mmap-reads

std::unique_ptr<Store> OpenStoreOrExit(const std::string& path, bool create) {
  StoreOptions o;
  o.path = path;
  o.create_if_missing = create;
  o.mmap_reads = g_mmap_reads;
  auto s = Store::Open(o);
  if (!s.ok()) {
    Fail(s.status());
    std::exit(1);
  }
  return std::move(s).value();
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

void PrintSummary(const ImportResult& r, bool as_json) {
  const ImportSummary& s = r.summary;
  double mbs = s.seconds > 0 ? s.raw_bytes / s.seconds / 1e6 : 0;
  if (as_json) {
    json j = {{"volume", VolumeJson(r.volume)},
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
  printf("volume      %s (%s)\n", r.volume.name.c_str(), r.volume.id.c_str());
  printf("raw size    %s (%llu blocks of %u)\n", HumanBytes(s.raw_bytes).c_str(),
         static_cast<unsigned long long>(s.blocks), r.volume.block_size);
  printf("zero blocks %llu (not stored)\n", static_cast<unsigned long long>(s.zero_blocks));
  printf("duplicates  %llu blocks already in the store\n", static_cast<unsigned long long>(s.duplicate_blocks));
  printf("added       %s in %llu new chunks\n", HumanBytes(s.bytes_added).c_str(),
         static_cast<unsigned long long>(s.new_chunks));
  printf("time        %.2f s, %.0f MB/s\n", s.seconds, mbs);
  printf("image       sha256:%s%s\n", s.image_digest.c_str(),
         s.reused_image ? " (already imported: the volume is a clone)" : "");
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
  std::string store_path = "/var/lib/stellarium/store";
  bool as_json = false;
  auto add_store = [&](CLI::App* c) {
    c->add_option("--store", store_path, "store directory")->capture_default_str();
    c->add_option("--store-mmap-reads", g_mmap_reads,
                  "read the store's table files through mmap (faster; a disk read error then "
                  "ends the command with SIGBUS instead of failing it)")
        ->default_str("true");
  };

  // build
  auto* build = app.add_subcommand("build", "import a directory tree or an image file as a volume");
  std::string from_dir, from_image, name, size_text;
  uint32_t block_size = kDefaultBlockSize;
  bool pad = false;
  add_store(build);
  auto* fd = build->add_option("--from-dir", from_dir, "directory tree to turn into an ext4 image");
  auto* fi = build->add_option("--from-image", from_image, "raw or ext4 image file (sparse-aware)");
  fd->excludes(fi);
  std::string from_url, url_sha256, ca_bundle, scratch_dir;
  std::vector<std::string> url_headers;
  auto* fu = build->add_option("--from-url", from_url,
                               "http(s) URL of a raw, ext4, qcow2 or gzip/xz/zstd-compressed image (streamed)");
  fu->excludes(fd)->excludes(fi);
  build->add_option("--sha256", url_sha256, "expected sha256:<hex> of the downloaded file")->needs(fu);
  build->add_option("--ca-bundle", ca_bundle, "PEM file of CAs trusted for https (default: the system's)")
      ->needs(fu);
  build->add_option("--header", url_headers, "extra request header 'Name: value' (repeatable)")->needs(fu);
  build->add_option("--scratch-dir", scratch_dir,
                    "where a qcow2 whose data comes before its tables spills its reorder buffer "
                    "(default: the store's parent directory)")
      ->needs(fu);
  build->add_option("--name", name, "volume name")->required();
  build->add_option("--size", size_text, "image size for --from-dir (default: tree + headroom)");
  build->add_option("--block-size", block_size, "block size: a power of two, 4096..1048576")
      ->capture_default_str();
  build->add_flag("--pad", pad, "pad an image whose size is not a multiple of the block size");
  build->add_flag("--json", as_json, "print the summary as JSON");

  // clone
  auto* clone = app.add_subcommand("clone", "clone a snapshot or a volume (O(1))");
  std::string from_snapshot, from_volume, clone_size;
  add_store(clone);
  auto* cs = clone->add_option("--from-snapshot", from_snapshot, "snapshot id or name");
  auto* cv = clone->add_option("--from-volume", from_volume, "volume id or name");
  cs->excludes(cv);
  clone->add_option("--name", name, "new volume name")->required();
  clone->add_option("--size", clone_size, "size (default: the source's)");
  clone->add_flag("--json", as_json, "print JSON");

  // snapshot
  auto* snapshot = app.add_subcommand("snapshot", "snapshot a volume (O(1))");
  std::string volume_ref;
  add_store(snapshot);
  snapshot->add_option("--volume", volume_ref, "volume id or name")->required();
  snapshot->add_option("--name", name, "snapshot name")->required();
  snapshot->add_flag("--json", as_json, "print JSON");

  auto* list = app.add_subcommand("list", "list volumes, snapshots and images");
  add_store(list);
  list->add_flag("--json", as_json, "print JSON");

  auto* info = app.add_subcommand("info", "show a volume or snapshot, or the store");
  std::string info_ref;
  add_store(info);
  info->add_option("ref", info_ref, "volume or snapshot id or name (omit for the store)");
  info->add_flag("--json", as_json, "print JSON");

  auto* exp = app.add_subcommand("export", "write a volume to a sparse raw image");
  std::string output;
  add_store(exp);
  exp->add_option("--volume", volume_ref, "volume id or name")->required();
  exp->add_option("--output,-o", output, "output file")->required();

  auto* del = app.add_subcommand("delete", "delete a volume or a snapshot (space returns at gc)");
  std::string del_volume, del_snapshot;
  add_store(del);
  auto* dv = del->add_option("--volume", del_volume, "volume id or name");
  auto* ds = del->add_option("--snapshot", del_snapshot, "snapshot id or name");
  dv->excludes(ds);

  auto* gc = app.add_subcommand("gc", "reclaim unreferenced layers and chunks");
  add_store(gc);
  gc->add_flag("--json", as_json, "print JSON");

  auto* fsck = app.add_subcommand("fsck", "check every chunk, reference count and link");
  add_store(fsck);
  fsck->add_flag("--json", as_json, "print JSON");

  CLI11_PARSE(app, argc, argv);
  if (g_mmap_reads) ExplainSigbus(kSigbusMessage);

  if (build->parsed() && !from_url.empty()) {
    if (!size_text.empty()) return Fail(Status::InvalidArgument("build: --size applies to --from-dir only"));
    {
      Status bs = ValidateBlockSize(block_size);
      if (!bs.ok()) return Fail(bs);
    }
    ImageSourceSpec spec;
    spec.url = from_url;
    spec.expected_sha256 = url_sha256;
    spec.ca_bundle = ca_bundle;
    spec.headers = url_headers;
    spec.scratch_dir = scratch_dir.empty()
                           ? std::filesystem::absolute(store_path).parent_path().string()
                           : scratch_dir;
    auto opened = OpenImageSource(spec);  // bad input fails before the store is touched
    if (!opened.ok()) return Fail(opened.status());
    auto store = OpenStoreOrExit(store_path, true);
    Attributes attrs;
    attrs["source"] = "url:" + opened->source->Describe();
    if (!url_sha256.empty()) attrs["sha256"] = url_sha256;
    ImportOptions io;
    io.volume.name = name;
    io.volume.block_size = block_size;
    io.volume.attributes = attrs;
    io.pad_to_block = pad;
    io.progress = MakeProgressBar("import");
    auto r = store->ImportImage(*opened->source, io);
    if (!r.ok()) return Fail(r.status());
    PrintSummary(*r, as_json);
    return 0;
  }

  if (build->parsed()) {
    if (from_dir.empty() && from_image.empty()) return Fail(Status::InvalidArgument("build: give --from-dir, --from-image or --from-url"));
    {
      Status bs = ValidateBlockSize(block_size);
      if (!bs.ok()) return Fail(bs);
    }
    std::string image_path = from_image;
    std::string tmp;
    Attributes attrs;
    if (!from_dir.empty()) {
      uint64_t size = 0;
      if (!size_text.empty()) {
        auto sz = ParseSize(size_text);
        if (!sz.ok()) return Fail(sz.status());
        size = *sz;
      }
      char tmpl[] = "/tmp/stellarium-build-XXXXXX";
      int fdt = mkstemp(tmpl);
      if (fdt < 0) return Fail(Status::FromErrno(errno, "temporary image"));
      close(fdt);
      tmp = tmpl;
      if (isatty(STDERR_FILENO)) fprintf(stderr, "making ext4 from %s ...\n", from_dir.c_str());
      Status s = BuildExt4FromTree(from_dir, size, name, tmp);
      if (!s.ok()) {
        unlink(tmp.c_str());
        return Fail(s);
      }
      image_path = tmp;
      attrs["source"] = "dir:" + std::filesystem::absolute(from_dir).string();
    } else {
      if (!size_text.empty()) return Fail(Status::InvalidArgument("build: --size applies to --from-dir only"));
      attrs["source"] = "image:" + std::filesystem::absolute(from_image).string();
    }
    auto src = OpenFileImageSource(image_path);
    if (!src.ok()) {
      if (!tmp.empty()) unlink(tmp.c_str());
      return Fail(src.status());
    }
    auto store = OpenStoreOrExit(store_path, true);
    ImportOptions io;
    io.volume.name = name;
    io.volume.block_size = block_size;
    io.volume.attributes = attrs;
    io.pad_to_block = pad;
    io.progress = MakeProgressBar("import");
    auto r = store->ImportImage(**src, io);
    src->reset();
    if (!tmp.empty()) unlink(tmp.c_str());
    if (!r.ok()) return Fail(r.status());
    PrintSummary(*r, as_json);
    return 0;
  }

  auto store = OpenStoreOrExit(store_path, false);

  if (clone->parsed()) {
    if (from_snapshot.empty() && from_volume.empty()) return Fail(Status::InvalidArgument("clone: give --from-snapshot or --from-volume"));
    CreateVolumeRequest req;
    req.name = name;
    if (!clone_size.empty()) {
      auto sz = ParseSize(clone_size);
      if (!sz.ok()) return Fail(sz.status());
      req.size_bytes = *sz;
    }
    Result<VolumeInfo> v = Status::Internal("unreached");
    if (!from_snapshot.empty()) {
      auto snap = ResolveSnapshot(*store, from_snapshot);
      if (!snap.ok()) return Fail(snap.status());
      v = store->CreateVolumeFromSnapshot(req, snap->id);
    } else {
      auto src = ResolveVolume(*store, from_volume);
      if (!src.ok()) return Fail(src.status());
      v = store->CloneVolume(req, src->id);
    }
    if (!v.ok()) return Fail(v.status());
    if (as_json) std::cout << VolumeJson(*v).dump(2) << "\n";
    else printf("%s %s\n", v->id.c_str(), v->name.c_str());
    return 0;
  }

  if (snapshot->parsed()) {
    auto vol = ResolveVolume(*store, volume_ref);
    if (!vol.ok()) return Fail(vol.status());
    auto s = store->CreateSnapshot(name, vol->id);
    if (!s.ok()) return Fail(s.status());
    if (as_json) std::cout << SnapshotJson(*s).dump(2) << "\n";
    else printf("%s %s\n", s->id.c_str(), s->name.c_str());
    return 0;
  }

  if (list->parsed()) {
    auto vols = store->ListVolumes();
    if (!vols.ok()) return Fail(vols.status());
    auto snaps = store->ListSnapshots();
    if (!snaps.ok()) return Fail(snaps.status());
    auto imgs = store->ListImages();
    if (!imgs.ok()) return Fail(imgs.status());
    if (as_json) {
      json j = {{"volumes", json::array()}, {"snapshots", json::array()}, {"images", json::array()}};
      for (const auto& v : *vols) j["volumes"].push_back(VolumeJson(v));
      for (const auto& s : *snaps) j["snapshots"].push_back(SnapshotJson(s));
      for (const auto& i : *imgs) {
        j["images"].push_back({{"digest", i.digest}, {"size_bytes", i.size_bytes},
                               {"block_size", i.block_size}, {"origin", i.origin}});
      }
      std::cout << j.dump(2) << "\n";
      return 0;
    }
    printf("%-22s %-24s %12s %8s  %s\n", "VOLUME", "NAME", "SIZE", "BLOCK", "SOURCE");
    for (const auto& v : *vols) {
      printf("%-22s %-24s %12s %8u  %s %s\n", v.id.c_str(), v.name.c_str(), HumanBytes(v.size_bytes).c_str(),
             v.block_size, v.source_kind.c_str(), v.source_id.substr(0, 22).c_str());
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

  if (info->parsed()) {
    if (info_ref.empty()) {
      auto st = store->GetStats();
      if (!st.ok()) return Fail(st.status());
      double dedup = st->chunk_bytes ? static_cast<double>(st->referenced_bytes) / st->chunk_bytes : 0;
      if (as_json) {
        std::cout << json{{"volumes", st->volumes}, {"snapshots", st->snapshots},
                          {"images", st->images}, {"layers", st->layers},
                          {"chunks", st->chunks}, {"chunk_bytes", st->chunk_bytes},
                          {"referenced_bytes", st->referenced_bytes},
                          {"disk_bytes", st->disk_bytes}, {"dedup_ratio", dedup}}.dump(2)
                  << "\n";
      } else {
        printf("store        %s\n", store_path.c_str());
        printf("volumes      %llu, snapshots %llu, images %llu, layers %llu\n",
               (unsigned long long)st->volumes, (unsigned long long)st->snapshots,
               (unsigned long long)st->images, (unsigned long long)st->layers);
        printf("chunks       %llu (%s)\n", (unsigned long long)st->chunks, HumanBytes(st->chunk_bytes).c_str());
        printf("referenced   %s (dedup ratio %.2f)\n", HumanBytes(st->referenced_bytes).c_str(), dedup);
        printf("on disk      %s\n", HumanBytes(st->disk_bytes).c_str());
      }
      return 0;
    }
    auto vol = ResolveVolume(*store, info_ref);
    if (vol.ok()) {
      auto st = store->GetVolumeStats(vol->id);
      if (!st.ok()) return Fail(st.status());
      if (as_json) {
        json j = VolumeJson(*vol);
        j["stats"] = {{"mapped_blocks", st->mapped_blocks}, {"head_blocks", st->head_blocks},
                      {"unique_bytes", st->unique_bytes}, {"chain_depth", st->chain_depth}};
        std::cout << j.dump(2) << "\n";
      } else {
        printf("volume       %s (%s)\n", vol->name.c_str(), vol->id.c_str());
        printf("size         %s, block size %u\n", HumanBytes(vol->size_bytes).c_str(), vol->block_size);
        printf("source       %s %s\n", vol->source_kind.empty() ? "blank" : vol->source_kind.c_str(), vol->source_id.c_str());
        printf("mapped       %llu blocks (%s), %llu written since last snapshot/clone\n",
               (unsigned long long)st->mapped_blocks, HumanBytes(double(st->mapped_blocks) * vol->block_size).c_str(),
               (unsigned long long)st->head_blocks);
        printf("unique       %s\n", HumanBytes(st->unique_bytes).c_str());
        printf("chain depth  %u\n", st->chain_depth);
      }
      return 0;
    }
    auto snap = ResolveSnapshot(*store, info_ref);
    if (snap.ok()) {
      if (as_json) std::cout << SnapshotJson(*snap).dump(2) << "\n";
      else printf("snapshot     %s (%s) of volume %s, %s\n", snap->name.c_str(), snap->id.c_str(),
                  snap->source_volume_id.c_str(), HumanBytes(snap->size_bytes).c_str());
      return 0;
    }
    return Fail(Status::NotFound("no volume or snapshot named " + info_ref));
  }

  if (exp->parsed()) {
    auto vol = ResolveVolume(*store, volume_ref);
    if (!vol.ok()) return Fail(vol.status());
    auto h = store->OpenVolume(vol->id, /*read_only=*/true);
    if (!h.ok()) return Fail(h.status());
    auto r = ExportVolume(**h, output, MakeProgressBar("export"));
    if (!r.ok()) return Fail(r.status());
    printf("exported %s to %s (%s, %s of data)\n", vol->name.c_str(), output.c_str(),
           HumanBytes(r->bytes).c_str(), HumanBytes(r->data_bytes).c_str());
    return 0;
  }

  if (del->parsed()) {
    if (!del_volume.empty()) {
      auto vol = ResolveVolume(*store, del_volume);
      if (!vol.ok()) return Fail(vol.status());
      Status s = store->DeleteVolume(vol->id);
      if (!s.ok()) return Fail(s);
      printf("deleted volume %s\n", vol->id.c_str());
    } else if (!del_snapshot.empty()) {
      auto snap = ResolveSnapshot(*store, del_snapshot);
      if (!snap.ok()) return Fail(snap.status());
      Status s = store->DeleteSnapshot(snap->id);
      if (!s.ok()) return Fail(s);
      printf("deleted snapshot %s\n", snap->id.c_str());
    } else {
      return Fail(Status::InvalidArgument("delete: give --volume or --snapshot"));
    }
    return 0;
  }

  if (gc->parsed()) {
    auto r = store->Gc();
    if (!r.ok()) return Fail(r.status());
    if (as_json) {
      std::cout << json{{"layers_reclaimed", r->layers_reclaimed},
                        {"map_entries_dropped", r->map_entries_dropped},
                        {"chunks_deleted", r->chunks_deleted},
                        {"bytes_freed", r->bytes_freed}}.dump(2)
                << "\n";
    } else {
      printf("gc: %llu layers, %llu map entries, %llu chunks (%s) reclaimed\n",
             (unsigned long long)r->layers_reclaimed, (unsigned long long)r->map_entries_dropped,
             (unsigned long long)r->chunks_deleted, HumanBytes(r->bytes_freed).c_str());
    }
    return 0;
  }

  if (fsck->parsed()) {
    auto r = store->Fsck();
    if (!r.ok()) return Fail(r.status());
    if (as_json) {
      std::cout << json{{"ok", r->ok()}, {"errors", r->errors}, {"chunks_checked", r->chunks_checked},
                        {"map_entries", r->map_entries}, {"layers", r->layers},
                        {"dead_layers", r->dead_layers}, {"volumes", r->volumes},
                        {"snapshots", r->snapshots}}.dump(2)
                << "\n";
    } else {
      for (const auto& e : r->errors) printf("error: %s\n", e.c_str());
      printf("fsck: %llu chunks, %llu map entries, %llu layers (%llu awaiting gc), %llu volumes, "
             "%llu snapshots: %zu errors\n",
             (unsigned long long)r->chunks_checked, (unsigned long long)r->map_entries,
             (unsigned long long)r->layers, (unsigned long long)r->dead_layers,
             (unsigned long long)r->volumes, (unsigned long long)r->snapshots, r->errors.size());
    }
    return r->ok() ? 0 : 2;
  }
  return 0;
}
