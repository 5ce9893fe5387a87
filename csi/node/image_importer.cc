#include "csi/node/image_importer.h"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "core/sha256.h"
#include "core/sources/http_source.h"
#include "core/sources/open.h"
#include "core/thread_name.h"

namespace stellarium::node {
namespace {

using Clock = std::chrono::steady_clock;

constexpr char kRecordsFile[] = "images.yaml";
constexpr int kRecordsVersion = 1;  // persisted; bump on an incompatible change
// How long before its deadline a waiting caller gives up and answers ABORTED, so the
// answer reaches the sidecar before the sidecar's own timeout.
constexpr auto kDeadlineMargin = std::chrono::milliseconds(1000);
// How often a waiting caller checks whether its RPC was cancelled.
constexpr auto kCancelPoll = std::chrono::milliseconds(200);

std::string HexOf(const std::string& text) { return ToHex(Sha256(text.data(), text.size())); }

// The single-flight key: what makes two requests the same download.
std::string SourceKey(const UrlSource& s) {
  return s.url + "\n" + s.sha256 + "\n" + std::to_string(s.block_size);
}
// The key of images.yaml: one record per URL and block size.
std::string UrlKey(const UrlSource& s) { return HexOf(s.url + "\n" + std::to_string(s.block_size)); }

std::string Mib(uint64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.1f MiB", static_cast<double>(bytes) / (1 << 20));
  return buf;
}

// "37% (370.0 MiB of 1000.0 MiB)" or "370.0 MiB" when the total is unknown.
std::string DescribeProgress(uint64_t done, std::optional<uint64_t> total) {
  if (!total || *total == 0) return Mib(done) + " downloaded";
  const int pct = static_cast<int>(std::min<uint64_t>(100, done * 100 / *total));
  return std::to_string(pct) + "% (" + Mib(done) + " of " + Mib(*total) + ")";
}

// Writes all of `data` to `fd` (then fsyncs it when `sync`) and closes it.
Status WriteAndClose(int fd, const std::string& data, bool sync, const std::string& what) {
  size_t off = 0;
  while (off < data.size()) {
    ssize_t n = ::write(fd, data.data() + off, data.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      Status st = Status::FromErrno(errno, "write " + what);
      ::close(fd);
      return st;
    }
    off += static_cast<size_t>(n);
  }
  if (sync && ::fsync(fd) != 0) {
    Status st = Status::FromErrno(errno, "fsync " + what);
    ::close(fd);
    return st;
  }
  if (::close(fd) != 0) return Status::FromErrno(errno, "close " + what);
  return Status::Ok();
}

// Writes `pem` to a new 0600 file under `dir`; returns its path.
Result<std::string> WriteCaBundle(const std::string& dir, const std::string& pem) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return Status::Internal("create " + dir + ": " + ec.message());
  std::string path = dir + "/ca-XXXXXX";
  int fd = ::mkstemp(path.data());  // mode 0600
  if (fd < 0) return Status::FromErrno(errno, "create a CA bundle file in " + dir);
  Status st = WriteAndClose(fd, pem, false, "CA bundle " + path);
  if (!st.ok()) {
    ::unlink(path.c_str());
    return st;
  }
  return path;
}

}  // namespace

struct ImageImporter::Job {
  std::string key, source_id, url;  // url: redacted
  UrlSource source;
  std::atomic<bool> cancel{false};
  Clock::time_point started = Clock::now();
  std::atomic<int64_t> last_log_ns{0};
  std::atomic<uint64_t> downloaded{0};
  std::atomic<int64_t> download_total{-1};  // -1: unknown
  // GUARDED_BY(ImageImporter::mu_):
  bool done = false;
  Status status;
  ImportedImage image;
  std::optional<uint64_t> raw_size;  // the image's size, once known
  int waiters = 0;                   // callers waiting now
  int joins = 0;                     // callers that ever waited

  std::optional<uint64_t> Total() const {
    int64_t t = download_total.load();
    return t < 0 ? std::nullopt : std::optional<uint64_t>(static_cast<uint64_t>(t));
  }
  std::string Progress() const { return DescribeProgress(downloaded.load(), Total()); }

  // Logs progress at most every kProgressLogSeconds (or now when `force`).
  void MaybeLog(bool force) {
    const auto now = Clock::now();
    const int64_t now_ns = now.time_since_epoch().count();
    int64_t last = last_log_ns.load();
    const int64_t every = std::chrono::nanoseconds(std::chrono::seconds(kProgressLogSeconds)).count();
    if (!force && (last == 0 || now_ns - last < every)) {
      if (last == 0) last_log_ns.compare_exchange_strong(last, now_ns);
      return;
    }
    if (!force && !last_log_ns.compare_exchange_strong(last, now_ns)) return;
    const double secs = std::chrono::duration<double>(now - started).count();
    const double mbs = secs > 0 ? static_cast<double>(downloaded.load()) / 1e6 / secs : 0;
    spdlog::info("import of {}: {}, {:.1f} MB/s, {:.0f} s", url, Progress(), mbs, secs);
  }
};

ImageImporter::ImageImporter(Store* store, ImporterOptions options)
    : store_(store), options_(std::move(options)) {}

ImageImporter::~ImageImporter() {
  std::unique_lock lock(mu_);
  shutting_down_ = true;
  for (auto& [key, job] : running_) job->cancel = true;
  cv_.wait(lock, [&] { return live_threads_ == 0; });
}

bool ImageImporter::IsAnchorName(const std::string& name) { return name.rfind(kAnchorPrefix, 0) == 0; }

Result<std::optional<ImageInfo>> ImageImporter::FindImage(const std::string& digest) {
  if (digest.empty()) return std::optional<ImageInfo>();
  ASSIGN_OR_RETURN(std::vector<ImageInfo> images, store_->ListImages());
  for (const auto& img : images) {
    if (img.digest == digest) return std::optional<ImageInfo>(img);
  }
  return std::optional<ImageInfo>();
}

Result<ImportedImage> ImageImporter::Get(const UrlSource& source, uint64_t capacity,
                                         std::chrono::system_clock::time_point deadline,
                                         const std::function<bool()>& cancelled) {
  const std::string what = "url " + RedactUrl(source.url);
  // A verified digest seen before, whose image is still here: a clone, no request.
  if (!source.sha256.empty()) {
    std::optional<Record> known;
    {
      std::lock_guard lock(records_mu_);
      RETURN_IF_ERROR(LoadRecordsLocked());
      for (const auto& [key, rec] : records_) {
        if (rec.sha256 == source.sha256 && rec.block_size == source.block_size) known = rec;
      }
    }
    if (known) {
      ASSIGN_OR_RETURN(std::optional<ImageInfo> img, FindImage(known->image));
      if (img) {
        spdlog::info("{}: sha256:{} was imported before as image {}: cloning it", what, source.sha256,
                     img->digest);
        {
          std::lock_guard lock(mu_);
          ++reused_;
        }
        if (capacity && img->size_bytes > capacity) {
          return Status::OutOfRange(what + ": image is " + std::to_string(img->size_bytes) +
                                    " bytes, larger than the requested capacity " + std::to_string(capacity));
        }
        return ImportedImage{img->digest, img->size_bytes, img->block_size, false};
      }
    }
  }

  const std::string key = SourceKey(source);
  std::unique_lock lock(mu_);
  if (shutting_down_) return Status::Unavailable(what + ": the driver is shutting down");
  std::shared_ptr<Job> job;
  if (auto it = running_.find(key); it != running_.end()) {
    job = it->second;
  } else {
    if (static_cast<int>(running_.size()) >= options_.max_concurrent_imports) {
      return Status::Aborted(what + ": this node is already running " + std::to_string(running_.size()) +
                             " image imports (max_concurrent_imports " +
                             std::to_string(options_.max_concurrent_imports) + "); retry later");
    }
    job = std::make_shared<Job>();
    job->key = key;
    job->source_id = HexOf(key).substr(0, 12);
    job->url = RedactUrl(source.url);
    job->source = source;
    running_[key] = job;
    ++live_threads_;
    std::thread([this, job] {
      NameThisThread("stl-import");
      Run(job);
    }).detach();
  }
  ++job->joins;
  ++job->waiters;
  // Unbounded deadlines (none set) come as a far-future time point.
  const auto now_sys = std::chrono::system_clock::now();
  const bool bounded = deadline < now_sys + std::chrono::hours(24 * 365);
  const auto wake = bounded ? deadline - kDeadlineMargin : now_sys + std::chrono::hours(24 * 365);
  auto oversize = [&] { return capacity && job->raw_size && *job->raw_size > capacity; };
  bool gave_up = false;
  while (!job->done && !oversize()) {
    const auto now = std::chrono::system_clock::now();
    if (now >= wake || (cancelled && cancelled())) {
      gave_up = true;
      break;
    }
    cv_.wait_until(lock, std::min(now + kCancelPoll, wake));
  }
  --job->waiters;
  if (job->done) {
    if (!job->status.ok()) return job->status;
    ImportedImage img = job->image;
    lock.unlock();
    if (capacity && img.size_bytes > capacity) {
      return Status::OutOfRange(what + ": image is " + std::to_string(img.size_bytes) +
                                " bytes, larger than the requested capacity " + std::to_string(capacity));
    }
    return img;
  }
  if (oversize()) {
    const uint64_t size = *job->raw_size;
    if (job->joins == 1) {
      // Nobody else asked for it: stop the download, and let a later call start afresh.
      job->cancel = true;
      running_.erase(job->key);
    }
    return Status::OutOfRange(what + ": image is " + std::to_string(size) +
                              " bytes, larger than the requested capacity " + std::to_string(capacity));
  }
  (void)gave_up;
  return Status::Aborted("import of " + job->url + " in progress: " + job->Progress() +
                         "; retry to wait for it");
}

void ImageImporter::Run(std::shared_ptr<Job> job) {
  Result<ImportedImage> result = Import(*job);
  if (result.ok()) {
    spdlog::info("import of {}: done: image {} ({} bytes){}", job->url, result->digest, result->size_bytes,
                 result->downloaded ? "" : ", unchanged at the server: no download");
  } else {
    spdlog::warn("import of {}: failed: {}", job->url, result.status().ToString());
  }
  std::lock_guard lock(mu_);
  job->done = true;
  if (result.ok()) {
    job->image = *result;
    ++succeeded_;
  } else {
    job->status = result.status();
    ++failed_;
  }
  if (auto it = running_.find(job->key); it != running_.end() && it->second == job) running_.erase(it);
  --live_threads_;
  cv_.notify_all();
  // Nothing of *this is touched after the lock is released: the destructor may run.
}

Result<ImportedImage> ImageImporter::Import(Job& job) {
  const UrlSource& src = job.source;
  const std::string url_key = UrlKey(src);
  const std::string tmp_dir = options_.state_dir + "/tmp";

  ImageSourceSpec spec;
  spec.url = src.url;
  spec.expected_sha256 = src.sha256;
  spec.headers = src.headers;
  spec.max_size_bytes = options_.max_image_size;
  spec.scratch_dir = tmp_dir;
  std::error_code ec;
  std::filesystem::create_directories(tmp_dir, ec);
  if (ec) return Status::Internal("create " + tmp_dir + ": " + ec.message());

  struct Unlink {
    std::string path;
    ~Unlink() {
      if (!path.empty()) ::unlink(path.c_str());
    }
  } ca_file;
  if (!src.ca_bundle_pem.empty()) {
    ASSIGN_OR_RETURN(ca_file.path, WriteCaBundle(tmp_dir, src.ca_bundle_pem));
    spec.ca_bundle = ca_file.path;
  }

  // Without a digest: a conditional GET against what we imported from this URL before.
  std::optional<Record> prior;
  {
    std::lock_guard lock(records_mu_);
    RETURN_IF_ERROR(LoadRecordsLocked());
    if (auto it = records_.find(url_key); it != records_.end()) prior = it->second;
  }
  std::optional<ImageInfo> prior_image;
  if (prior) {
    ASSIGN_OR_RETURN(prior_image, FindImage(prior->image));
  }
  if (src.sha256.empty() && prior_image) {
    spec.if_none_match = prior->etag;
    spec.if_modified_since = prior->last_modified;
  }

  spec.on_data = [this, &job](uint64_t received, std::optional<uint64_t> total) {
    const uint64_t before = job.downloaded.exchange(received);
    downloaded_total_ += received - before;
    if (total) job.download_total = static_cast<int64_t>(*total);
    job.MaybeLog(false);
    return !job.cancel.load();
  };

  spec.cancel = &job.cancel;
  spdlog::info("import of {}: starting{}", job.url,
               spec.if_none_match.empty() && spec.if_modified_since.empty()
                   ? ""
                   : " (conditional: the image of an earlier import is kept if unchanged)");
  ASSIGN_OR_RETURN(OpenedImageSource opened, OpenImageSource(spec));
  if (opened.not_modified) {
    ImportedImage img{prior_image->digest, prior_image->size_bytes, prior_image->block_size, false};
    std::lock_guard lock(mu_);
    ++reused_;
    return img;
  }
  {
    std::lock_guard lock(mu_);
    job.raw_size = opened.source->Size();
    if (job.raw_size) cv_.notify_all();  // callers with a smaller capacity answer now
  }

  ImportOptions io;
  io.volume.name = std::string(kAnchorPrefix) + job.source_id + "-" +
                   std::to_string(std::chrono::system_clock::now().time_since_epoch().count());
  io.volume.block_size = src.block_size;
  io.volume.attributes = {{"stellarium.io/image-url", job.url}};
  io.pad_to_block = true;
  io.cancel = &job.cancel;
  ASSIGN_OR_RETURN(ImportResult imported, store_->ImportImage(*opened.source, io));
  job.MaybeLog(true);

  Record rec;
  rec.url = job.url;
  rec.sha256 = src.sha256;
  rec.etag = opened.etag;
  rec.last_modified = opened.last_modified;
  rec.image = imported.summary.image_digest;
  rec.size_bytes = imported.volume.size_bytes;
  rec.block_size = imported.volume.block_size;
  {
    std::lock_guard lock(records_mu_);
    records_[url_key] = rec;
    Status st = SaveRecordsLocked();
    if (!st.ok()) spdlog::warn("import of {}: {} (the next import of it downloads again)", job.url, st.ToString());
  }
  if (prior_image && prior_image->digest != rec.image) {
    // The URL now serves other bytes: the old image goes once nothing uses it.
    Status st = ReleaseIfUnused(prior_image->digest);
    if (!st.ok()) spdlog::warn("release image {}: {}", prior_image->digest, st.ToString());
  }
  return ImportedImage{rec.image, rec.size_bytes, rec.block_size, true};
}

Result<VolumeInfo> ImageImporter::CloneFrom(const ::stellarium::CreateVolumeRequest& request,
                                            const std::string& image_digest) {
  std::lock_guard lock(images_mu_);
  return store_->CreateVolumeFromImage(request, image_digest);
}

Status ImageImporter::ReleaseIfUnused(const std::string& image_digest) {
  std::lock_guard lock(images_mu_);
  ASSIGN_OR_RETURN(std::vector<VolumeInfo> volumes, store_->ListVolumes());
  std::vector<std::string> anchors;
  for (const auto& v : volumes) {
    if (v.source_kind != "image" || v.source_id != image_digest) continue;
    if (!IsAnchorName(v.name)) return Status::Ok();  // still in use
    anchors.push_back(v.id);
  }
  for (const auto& id : anchors) {
    RETURN_IF_ERROR(store_->DeleteVolume(id));
    spdlog::info("image {}: no volume uses it any more: anchor {} deleted", image_digest, id);
  }
  return Status::Ok();
}

ImporterStats ImageImporter::Stats() const {
  ImporterStats s;
  std::lock_guard lock(mu_);
  for (const auto& [key, job] : running_) {
    ImportProgress p;
    p.source_id = job->source_id;
    p.url = job->url;
    p.downloaded_bytes = job->downloaded.load();
    p.download_total = job->Total();
    p.waiters = job->waiters;
    s.running.push_back(std::move(p));
  }
  s.downloaded_bytes_total = downloaded_total_.load();
  s.imports_succeeded = succeeded_;
  s.imports_failed = failed_;
  s.reused = reused_;
  return s;
}

// ---- images.yaml ----

Status ImageImporter::LoadRecordsLocked() {
  if (records_loaded_) return Status::Ok();
  records_loaded_ = true;
  const std::string path = options_.state_dir + "/" + kRecordsFile;
  std::ifstream in(path);
  if (!in) return Status::Ok();  // first start
  std::stringstream text;
  text << in.rdbuf();
  try {
    YAML::Node root = YAML::Load(text.str());
    if (!root["version"] || root["version"].as<int>() != kRecordsVersion) {
      spdlog::warn("{}: unknown version; starting with no remembered image sources", path);
      return Status::Ok();
    }
    for (const auto& n : root["sources"]) {
      Record r;
      const std::string key = n["key"].as<std::string>();
      r.url = n["url"].as<std::string>("");
      r.sha256 = n["sha256"].as<std::string>("");
      r.etag = n["etag"].as<std::string>("");
      r.last_modified = n["last_modified"].as<std::string>("");
      r.image = n["image"].as<std::string>();
      r.size_bytes = n["size_bytes"].as<uint64_t>(0);
      r.block_size = n["block_size"].as<uint32_t>(0);
      records_[key] = r;
    }
  } catch (const YAML::Exception& e) {
    // A cache: losing it costs a download, never data.
    spdlog::warn("{}: unreadable ({}); starting with no remembered image sources", path, e.what());
    records_.clear();
  }
  return Status::Ok();
}

Status ImageImporter::SaveRecordsLocked() {
  YAML::Emitter out;
  out << YAML::BeginMap << YAML::Key << "version" << YAML::Value << kRecordsVersion;
  out << YAML::Key << "sources" << YAML::Value << YAML::BeginSeq;
  for (const auto& [key, r] : records_) {
    out << YAML::BeginMap;
    out << YAML::Key << "key" << YAML::Value << key;
    out << YAML::Key << "url" << YAML::Value << r.url;
    out << YAML::Key << "sha256" << YAML::Value << r.sha256;
    out << YAML::Key << "etag" << YAML::Value << YAML::DoubleQuoted << r.etag;
    out << YAML::Key << "last_modified" << YAML::Value << YAML::DoubleQuoted << r.last_modified;
    out << YAML::Key << "image" << YAML::Value << r.image;
    out << YAML::Key << "size_bytes" << YAML::Value << r.size_bytes;
    out << YAML::Key << "block_size" << YAML::Value << r.block_size;
    out << YAML::EndMap;
  }
  out << YAML::EndSeq << YAML::EndMap;
  const std::string path = options_.state_dir + "/" + kRecordsFile;
  const std::string tmp = path + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return Status::FromErrno(errno, "write " + tmp);
  RETURN_IF_ERROR(WriteAndClose(fd, std::string(out.c_str()) + "\n", true, tmp));
  if (::rename(tmp.c_str(), path.c_str()) != 0) return Status::FromErrno(errno, "rename " + tmp);
  return Status::Ok();
}

}  // namespace stellarium::node
