// Store: the storage engine's public face. One Store is one directory on disk holding a
// content-addressed chunk store and the catalog of volumes, snapshots, layers and
// imported images (see docs/FORMAT.md for every byte of it).
//
// The model (docs/FORMAT.md section "Model" has the long version):
//   - A chunk is a block's content, keyed by its SHA-256, stored once, reference counted.
//     All-zero blocks are never stored.
//   - A layer is a sparse map block index -> chunk id with an optional parent layer.
//     Reads walk head -> parent -> ...; writes go to the head only.
//   - A volume is (name, virtual size, block size, head layer).
//   - Snapshot = freeze the head and give the volume a new empty head: O(1).
//   - Clone = a new volume whose empty head sits on a frozen layer: O(1).
//   - A frozen layer lives while anything (a volume's head, a snapshot, a child layer)
//     refers to it; deleting a snapshot or a volume never breaks a clone.
//   - An imported image is remembered by its content digest; importing the same bytes
//     again creates a clone of the first import and stores nothing new.
//
// Every create is idempotent by name: the same name with the same parameters returns
// the existing object; with other parameters it is ALREADY_EXISTS. Deleting what does
// not exist is OK. Every metadata operation commits in one synced RocksDB WriteBatch.
//
// Thread-safety: a Store is safe to use from many threads. Catalog operations are
// serialized internally (each is O(1)); I/O on different volumes runs in parallel.
// A store directory is opened by at most one process (FAILED_PRECONDITION otherwise).
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/block_io.h"
#include "core/catalog_info.h"
#include "core/status.h"

namespace stellarium {

class StoreImpl;

inline constexpr uint32_t kDefaultBlockSize = 4096;
inline constexpr uint32_t kMinBlockSize = 4096;
inline constexpr uint32_t kMaxBlockSize = 1 << 20;

struct StoreOptions {
  // A directory (the local store; created if missing), or "rados://POOL[/NAMESPACE]" for
  // the store
  // on a Ceph RADOS pool that many nodes share (docs/FORMAT.md "The RADOS store"; needs
  // a build with librados).
  std::string path;
  // The RADOS store: the cluster's ceph.conf, the cephx user (its key from the keyring
  // the conf names), the node-local cache directory ("" = in memory, at most 256 MiB, for
  // this process only) and its bound.
  std::string ceph_conf = "/etc/ceph/ceph.conf";
  std::string ceph_id = "admin";
  std::string cache_dir = {};
  uint64_t cache_bytes = 4ull << 30;
  // The RADOS store: how long a writer may take between finding a chunk and naming it
  // in a block map; gc deletes an unreferenced chunk only that long after condemning it.
  int64_t rados_writer_window_ns = 30ll * 60 * 1000 * 1000 * 1000;
  // The RADOS store: how long this client's lease lasts unrenewed (it renews a quarter
  // of that); a dead client's importing layers are discarded once it has run out.
  int64_t rados_lease_ns = 60ll * 1000 * 1000 * 1000;
  uint32_t default_block_size = kDefaultBlockSize;
  // A volume whose layer chain grows past this many layers is flattened (its
  // ancestors' entries are copied into its head) so a read costs at most this many
  // map lookups.
  uint32_t max_chain_depth = 16;
  bool create_if_missing = true;
  // Read table files through mmap (RocksDB allow_mmap_reads) rather than pread: no copy
  // of each block out of the page cache, so reads through the node's exposures are
  // faster (docs/BENCHMARKS.md, "Node exposure", has the figures). The cost: a disk I/O
  // error under a mapped page is a SIGBUS that ends the process, where pread fails that
  // one read (UNAVAILABLE). Turn it off on disks that return read errors.
  bool mmap_reads = true;
  // How far ahead of a sequential reader the store asks the kernel to read chunk bytes
  // from disk (0: leave it to the kernel's own read-ahead). A reader is sequential here
  // when it asks for a long, dense run of chunks stored together (a volume read in
  // order after its import). See ChunkStore, "disk read-ahead".
  uint64_t disk_readahead_bytes = 64 << 20;
  // A read-only view of a store another process holds (the driver's, for the CLI's
  // info, list, export and fsck): as the store was at open, consistent, never written;
  // takes no lock. Every change is FAILED_PRECONDITION. Opened this way, a store that
  // no process holds is read as it is.
  bool read_only = false;
};

struct VolumeStats {
  uint64_t size_bytes = 0;
  uint32_t block_size = 0;
  uint64_t mapped_blocks = 0;   // non-zero blocks as seen through the whole chain
  uint64_t head_blocks = 0;     // blocks written since the last snapshot/clone
  uint64_t unique_bytes = 0;    // bytes of chunks referenced by nothing else
  uint32_t chain_depth = 0;     // layers a read may visit (1 = no parent)
};

struct StoreStats {
  uint64_t volumes = 0, snapshots = 0, images = 0, layers = 0;  // always exact
  // Estimated by GetStats(kEstimate): RocksDB's key-count estimate, and the raw value
  // bytes of the SST files plus the memtables (entries deleted but not yet compacted
  // away still count).
  uint64_t chunks = 0;          // distinct stored chunks
  uint64_t chunk_bytes = 0;     // their uncompressed size
  // Sum over map entries of the block size (logical data). Estimated as map entries
  // (zero markers included) times the store's default block size.
  uint64_t referenced_bytes = 0;
  uint64_t disk_bytes = 0;      // the store directory's size on disk
};

struct GcReport {
  uint64_t layers_reclaimed = 0;
  uint64_t map_entries_dropped = 0;
  uint64_t chunks_deleted = 0;
  // A shared store (RADOS) deletes a chunk nothing names only at a later pass than the
  // one that finds it unnamed: those found this pass, and those named again since.
  uint64_t chunks_condemned = 0, chunks_spared = 0;
  uint64_t bytes_freed = 0;     // uncompressed chunk bytes (measured by full passes only)
  uint64_t disk_bytes_before = 0, disk_bytes_after = 0;  // the store's size on disk
  bool full = false;            // the pass scanned everything (GcOptions::full)
  bool stopped = false;         // GcOptions::stop ended the pass early
  bool postponed = false;       // an import was running: its chunks' deletion waits
  double seconds = 0;
};

struct GcOptions {
  // A full pass scans the whole chunk index and every chunk's bytes: it finds all the
  // garbage there is (also bytes a failed import or a racing writer left). Otherwise
  // the pass looks only at what changed since the last one (dead layers, chunks whose
  // references were dropped), and scans in full only when the store cannot tell (the
  // first pass after open, an abandoned import, more changes than it keeps track of).
  bool full = true;
  // The fraction of its time the pass works; it sleeps between batches for the rest,
  // so that a store serving volumes keeps its speed. 1 = flat out.
  double duty = 1.0;
  // Set to end the pass early, between batches (the report then says stopped).
  const std::atomic<bool>* stop = nullptr;
  // No chunk is deleted while an import runs (it may be about to reference one). true:
  // the pass waits for running imports to end; false: it leaves the chunks to a later
  // pass (the report says postponed).
  bool wait_for_imports = true;
};

// What Fsck found. It checks everything it can reach in one pass: a chunk, a record or
// a table it cannot read is reported and the check goes on with the rest.
struct FsckReport {
  uint64_t chunks_checked = 0, map_entries = 0, layers = 0, volumes = 0, snapshots = 0;
  uint64_t chunks = 0;          // chunk index entries walked
  uint64_t dead_layers = 0;     // waiting for gc: not an error
  // One line per problem, causes first. A problem that follows from another (counts
  // that cannot be compared because a table could not be read) is not listed on its
  // own: its cause's line says what was not checked. A damaged chunk's line names the
  // volumes, snapshots and images whose data it is. At most kMaxErrorLines lines; the
  // counts below cover everything.
  std::vector<std::string> errors;
  static constexpr size_t kMaxErrorLines = 1000;
  // Problems by kind: "corrupt chunk" (bytes that do not match their SHA-256),
  // "unreadable chunk" (the store cannot read them), "missing chunk" (named by a map,
  // not stored), "reference count" (a chunk's or a layer's), "catalog" (records, names,
  // links between them), "unreadable table" (a scan that stopped on an error).
  std::map<std::string, uint64_t> problems;
  // "volume vol-... (name)", "snapshot snap-... (name)", "image <digest>": whose data
  // is damaged (a chunk of theirs is corrupt, unreadable or missing), sorted.
  std::vector<std::string> affected;
  bool ok() const { return errors.empty(); }
};

struct CreateVolumeRequest {
  std::string name;
  uint64_t size_bytes = 0;    // rounded up to the block size; 0 = the source's size
  uint32_t block_size = 0;    // 0 = the store default (ignored for clones: inherited)
  Attributes attributes;
};

// Progress of a long operation (import, export, gc, flatten). Called from one thread.
struct Progress {
  uint64_t done_bytes = 0;
  uint64_t total_bytes = 0;   // 0 when unknown
};
using ProgressFn = std::function<void(const Progress&)>;

// A source of image bytes for ImportImage: a file, a stream, a download.
// Extents are returned in increasing offset order; a hole reads as zeros and costs no
// read. Implementations: core/image_source.h.
class ImageSource {
 public:
  virtual ~ImageSource() = default;
  // Describes the source in errors and in the image record ("/data/x.img").
  virtual std::string Describe() const = 0;
  // Total size in bytes, if known before reading.
  virtual std::optional<uint64_t> Size() const = 0;
  // Reads the next up to `max` bytes into buf. Sets *hole when the returned range is
  // known to be zeros without reading (buf untouched). Returns 0 bytes at the end.
  virtual Result<size_t> Next(char* buf, size_t max, bool* hole) = 0;
};

struct ImportOptions {
  CreateVolumeRequest volume;   // the volume to create over the imported image
  // How the image size relates to the block size when it is not a multiple:
  // false (default) refuses with INVALID_ARGUMENT; true pads the tail with zeros.
  bool pad_to_block = false;
  unsigned hash_threads = 0;    // 0 = one per core
  ProgressFn progress;
  // Set to true from another thread to stop the import (it then fails with CANCELLED
  // and leaves nothing behind).
  const std::atomic<bool>* cancel = nullptr;
  // Tuning (0 = the default). An import makes its work durable in periods: new chunk
  // bytes every data_period_bytes (16 MiB), map entries and reference counts every
  // index_period_blocks map entries (512 Ki). Smaller periods hold less memory; a larger
  // index period leaves the chunk index in fewer tables. docs/FORMAT.md "Durability".
  uint64_t data_period_bytes = 0;
  uint64_t index_period_blocks = 0;
};

struct ImportSummary {
  uint64_t raw_bytes = 0;        // image size
  uint64_t blocks = 0;
  uint64_t zero_blocks = 0;      // never stored
  uint64_t duplicate_blocks = 0; // already in the store (or earlier in this image)
  uint64_t new_chunks = 0;
  uint64_t bytes_added = 0;      // uncompressed bytes of new chunks
  double seconds = 0;
  std::string image_digest;      // hex
  bool reused_image = false;     // the same image was already imported: a clone
};

struct ImportResult {
  VolumeInfo volume;
  ImportSummary summary;
};

// One volume opened for I/O. Stays valid while held, even across snapshots of the
// volume (which change its head); I/O fails with NOT_FOUND once the volume is deleted.
class Volume : public BlockIo {
 public:
  virtual const std::string& id() const = 0;
};

class Store {
 public:
  // Opens (or creates) the store at options.path. FAILED_PRECONDITION if another
  // process holds it (see StoreOptions::read_only); INVALID_ARGUMENT for bad options;
  // DATA_LOSS if the on-disk format is unreadable. Finishes recovery (imports
  // interrupted by a crash are discarded) before returning, unless read-only.
  static Result<std::unique_ptr<Store>> Open(const StoreOptions& options);
  ~Store();
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  const StoreOptions& options() const;

  // ---- Volumes ----
  // A blank volume (reads as zeros). INVALID_ARGUMENT: empty name, zero size, bad block
  // size. ALREADY_EXISTS: the name exists with another size, block size or attributes.
  Result<VolumeInfo> CreateVolume(const CreateVolumeRequest& req);
  // A clone of a snapshot: O(1). NOT_FOUND: no such snapshot. OUT_OF_RANGE: size
  // smaller than the snapshot's.
  Result<VolumeInfo> CreateVolumeFromSnapshot(const CreateVolumeRequest& req,
                                              const std::string& snapshot_id);
  // A clone of a volume's current contents: O(1). NOT_FOUND / OUT_OF_RANGE as above.
  Result<VolumeInfo> CloneVolume(const CreateVolumeRequest& req, const std::string& volume_id);
  // A clone of an already imported image (by hex digest): O(1).
  Result<VolumeInfo> CreateVolumeFromImage(const CreateVolumeRequest& req,
                                           const std::string& image_digest);
  // Imports an image and creates a volume over it. Idempotent by volume name: if the
  // volume exists with the same attributes it is returned without reading the source.
  // If the image's content was imported before, nothing new is stored and the volume
  // is a clone of it. On any error nothing is left behind (no volume; chunks of a
  // failed import are reclaimed by the next Gc()).
  Result<ImportResult> ImportImage(ImageSource& source, const ImportOptions& options);

  // OK if the volume does not exist. FAILED_PRECONDITION while it is open for I/O.
  // Space comes back at the next Gc().
  Status DeleteVolume(const std::string& volume_id);
  Result<VolumeInfo> GetVolume(const std::string& volume_id);
  Result<VolumeInfo> FindVolumeByName(const std::string& name);  // NOT_FOUND if absent
  Result<std::vector<VolumeInfo>> ListVolumes();                 // sorted by id
  // Grows the virtual size (metadata only). OUT_OF_RANGE when it would shrink.
  Result<VolumeInfo> ResizeVolume(const std::string& volume_id, uint64_t new_size_bytes);
  Result<VolumeStats> GetVolumeStats(const std::string& volume_id);
  // Opens a volume for I/O. NOT_FOUND if absent.
  Result<std::shared_ptr<Volume>> OpenVolume(const std::string& volume_id, bool read_only = false);
  // Copies the ancestors' blocks into the volume's head so its chain depth is 1.
  // Runs in bounded batches; reads stay correct throughout. Runs by itself when a
  // snapshot or clone makes a chain deeper than max_chain_depth.
  Status FlattenVolume(const std::string& volume_id);

  // ---- Snapshots ----
  // O(1). NOT_FOUND: no such volume. ALREADY_EXISTS: the name is used for another volume.
  Result<SnapshotInfo> CreateSnapshot(const std::string& name, const std::string& volume_id);
  // OK if absent. Never breaks clones made from the snapshot.
  Status DeleteSnapshot(const std::string& snapshot_id);
  Result<SnapshotInfo> GetSnapshot(const std::string& snapshot_id);
  Result<SnapshotInfo> FindSnapshotByName(const std::string& name);
  Result<std::vector<SnapshotInfo>> ListSnapshots();  // sorted by id

  // ---- Images ----
  Result<std::vector<ImageInfo>> ListImages();

  // ---- Maintenance ----
  // Reclaims layers nothing refers to and chunks whose reference count reached zero,
  // in bounded batches: volumes stay readable and writable throughout. Writers are held
  // back only while a batch of chunks is deleted (milliseconds); a running import holds
  // the deletion of chunks back until it ends (GcOptions::wait_for_imports).
  Result<GcReport> Gc(const GcOptions& options = {});
  // Whether something happened since the last pass that an incremental pass would
  // reclaim (constant time): for a background collector deciding when to run.
  bool HasGarbage() const;
  // Checks every chunk's hash, every reference count and every link of the catalog.
  // Read-only; waits for a running gc pass. Errors are listed in the report, not
  // returned as a Status. Volume writes while it runs can show as count mismatches: run
  // it on a quiet store, or on a read-only view (StoreOptions::read_only), which is one
  // consistent picture.
  Result<FsckReport> Fsck();
  // kExact scans the block maps and every chunk (time grows with the data: for the
  // CLI and tests); kEstimate answers from RocksDB's table statistics in constant
  // time (for metrics scraped every few seconds); see StoreStats for which fields.
  enum class StatsDetail { kExact, kEstimate };
  Result<StoreStats> GetStats(StatsDetail detail = StatsDetail::kExact);
  // Waits until the database's background flushes and compactions are done (for
  // benchmarks that measure a settled store).
  Status WaitIdle();
  // Makes every completed write durable.
  Status Sync();

 private:
  explicit Store(std::unique_ptr<StoreImpl> impl);
  std::unique_ptr<StoreImpl> impl_;
};

// Parses "4096", "64K", "64KiB", "1M", "10G" into bytes. INVALID_ARGUMENT otherwise.
Result<uint64_t> ParseSize(const std::string& text);
// Checks a block size: a power of two in [4 KiB, 1 MiB].
Status ValidateBlockSize(uint32_t block_size);

}  // namespace stellarium
