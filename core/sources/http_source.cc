#include "core/sources/http_source.h"

#include <curl/curl.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <thread>

#include "core/sha256.h"
#include "core/thread_name.h"

namespace stellarium {
namespace {

// A waiting consumer is woken when this much arrived, when the transfer ended, or after
// kBatchWait with whatever arrived.
constexpr size_t kBatchBytes = 1u << 20;
constexpr std::chrono::milliseconds kBatchWait{20};

void GlobalInitOnce() {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

std::string Trim(std::string s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.pop_back();
  size_t i = 0;
  while (i < s.size() && std::isspace(static_cast<unsigned char>(s[i]))) ++i;
  return s.substr(i);
}

bool StartsWithNoCase(const std::string& s, const char* prefix) {
  size_t n = std::strlen(prefix);
  if (s.size() < n) return false;
  for (size_t i = 0; i < n; ++i) {
    if (std::tolower(static_cast<unsigned char>(s[i])) != std::tolower(static_cast<unsigned char>(prefix[i])))
      return false;
  }
  return true;
}

}  // namespace

std::string RedactUrl(const std::string& url) {
  std::string out = url;
  size_t scheme = out.find("://");
  if (scheme != std::string::npos) {
    size_t host = scheme + 3;
    size_t end = out.find_first_of("/?#", host);
    size_t at = out.rfind('@', end == std::string::npos ? out.size() : end);
    if (at != std::string::npos && at >= host) out.erase(host, at + 1 - host);
  }
  size_t q = out.find('?');
  if (q != std::string::npos) {
    size_t frag = out.find('#', q);
    out.replace(q, frag == std::string::npos ? std::string::npos : frag - q, "?<redacted>");
  }
  return out;
}

Result<std::string> ParseSha256Digest(const std::string& text, const std::string& what) {
  std::string hex = text;
  if (StartsWithNoCase(hex, "sha256:")) hex = hex.substr(7);
  bool ok = hex.size() == 64 && std::all_of(hex.begin(), hex.end(), [](char c) {
              return std::isxdigit(static_cast<unsigned char>(c));
            });
  if (!ok) {
    return Status::InvalidArgument(what + ": expected digest \"" + text +
                                   "\" is not sha256:<64 hex digits>");
  }
  std::transform(hex.begin(), hex.end(), hex.begin(), [](char c) { return std::tolower(c); });
  return hex;
}

// The transfer: a curl thread produces into ring_, Next() consumes.
class HttpImageSource::Impl {
 public:
  explicit Impl(HttpSourceOptions o) : opts_(std::move(o)), what_("url " + RedactUrl(opts_.url)) {
    ring_.resize(std::max<size_t>(opts_.buffer_bytes, 1u << 20));
  }

  ~Impl() {
    {
      std::lock_guard lock(mu_);
      cancelled_ = true;
    }
    space_cv_.notify_all();
    if (thread_.joinable()) thread_.join();
    if (headers_) curl_slist_free_all(headers_);
    if (curl_) curl_easy_cleanup(curl_);
  }

  Status Start() {
    GlobalInitOnce();
    if (!StartsWithNoCase(opts_.url, "http://") && !StartsWithNoCase(opts_.url, "https://")) {
      return Status::InvalidArgument(what_ + ": only http:// and https:// URLs are supported");
    }
    if (!opts_.expected_sha256.empty()) {
      ASSIGN_OR_RETURN(expected_hex_, ParseSha256Digest(opts_.expected_sha256, what_));
    }
    hashing_ = !expected_hex_.empty() || opts_.compute_sha256;
    for (const std::string& h : opts_.headers) {
      size_t colon = h.find(':');
      if (colon == 0 || colon == std::string::npos || h.find_first_of("\r\n") != std::string::npos) {
        return Status::InvalidArgument(what_ + ": header \"" + h.substr(0, h.find(':')) +
                                       "\" is not of the form 'Name: value'");
      }
      headers_ = curl_slist_append(headers_, h.c_str());
    }
    for (const auto& [name, value] : {std::pair<const char*, const std::string&>{"If-None-Match", opts_.if_none_match},
                                      {"If-Modified-Since", opts_.if_modified_since}}) {
      if (value.empty()) continue;
      if (value.find_first_of("\r\n") != std::string::npos) {
        return Status::InvalidArgument(what_ + ": " + name + " value contains a line break");
      }
      headers_ = curl_slist_append(headers_, (std::string(name) + ": " + value).c_str());
    }
    curl_ = curl_easy_init();
    if (!curl_) return Status::Internal(what_ + ": curl_easy_init failed");
    curl_easy_setopt(curl_, CURLOPT_URL, opts_.url.c_str());
    curl_easy_setopt(curl_, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(curl_, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(curl_, CURLOPT_FOLLOWLOCATION, 1L);
    curl_easy_setopt(curl_, CURLOPT_MAXREDIRS, 10L);
    curl_easy_setopt(curl_, CURLOPT_FAILONERROR, 1L);
    curl_easy_setopt(curl_, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(curl_, CURLOPT_SSL_VERIFYHOST, 2L);
    if (!opts_.ca_bundle.empty()) curl_easy_setopt(curl_, CURLOPT_CAINFO, opts_.ca_bundle.c_str());
    if (headers_) curl_easy_setopt(curl_, CURLOPT_HTTPHEADER, headers_);
    curl_easy_setopt(curl_, CURLOPT_USERAGENT, "stellarium/" STELLARIUM_VERSION);
    curl_easy_setopt(curl_, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(curl_, CURLOPT_CONNECTTIMEOUT, opts_.connect_timeout_seconds);
    curl_easy_setopt(curl_, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(curl_, CURLOPT_LOW_SPEED_TIME, opts_.stall_timeout_seconds);
    curl_easy_setopt(curl_, CURLOPT_BUFFERSIZE, 512L * 1024);
    // Images are compressed by us (format.h) when they are compressed files; a
    // transfer-level Content-Encoding is decoded by curl so the digest covers the file.
    curl_easy_setopt(curl_, CURLOPT_ACCEPT_ENCODING, "");
    curl_easy_setopt(curl_, CURLOPT_ERRORBUFFER, errbuf_);
    curl_easy_setopt(curl_, CURLOPT_WRITEFUNCTION, &Impl::WriteCb);
    curl_easy_setopt(curl_, CURLOPT_WRITEDATA, this);
    curl_easy_setopt(curl_, CURLOPT_HEADERFUNCTION, &Impl::HeaderCb);
    curl_easy_setopt(curl_, CURLOPT_HEADERDATA, this);
    // Lets the destructor stop a transfer that is still connecting or waiting for data.
    curl_easy_setopt(curl_, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(curl_, CURLOPT_XFERINFOFUNCTION, &Impl::ProgressCb);
    curl_easy_setopt(curl_, CURLOPT_XFERINFODATA, this);

    thread_ = std::thread([this] { Run(); });
    std::unique_lock lock(mu_);
    started_cv_.wait(lock, [&] { return body_started_ || done_; });
    if (done_ && !final_.ok()) return final_;
    return Status::Ok();
  }

  // Hands the next bytes to the consumer. With bytes in the ring it copies those (the
  // ring is only filled while the consumer is busy elsewhere). With an empty ring it
  // waits, and meanwhile the curl thread copies straight into `buf` (one copy instead of
  // two) until a batch is there, so the consumer wakes once per batch rather than once
  // per network read.
  Result<size_t> Next(char* buf, size_t max) {
    std::unique_lock lock(mu_);
    if (used_ == 0 && !done_) {
      direct_buf_ = buf;
      direct_cap_ = max;
      direct_len_ = 0;
      direct_want_ = std::min(max, kBatchBytes);
      auto ready = [&] { return done_ || (!copying_ && (direct_len_ >= direct_want_ || used_ > 0)); };
      while (!ready()) {
        // On a slow link a partial batch is taken after a short while.
        if (data_cv_.wait_for(lock, kBatchWait) == std::cv_status::timeout && !copying_ && direct_len_ > 0) break;
      }
      direct_buf_ = nullptr;
    }
    size_t n = direct_len_;
    direct_len_ = 0;
    if (n == 0 && used_ == 0) {
      // done_ and drained: the transfer's verdict decides between EOF and an error.
      if (!final_.ok()) return final_;
      return size_t{0};
    }
    // Then what the ring holds (it only fills after the direct buffer was full, so the
    // order is kept). Only this thread moves head_, so the copy runs unlocked.
    size_t k = std::min(max - n, used_);
    const size_t head = head_, cap = ring_.size();
    lock.unlock();
    const size_t first = std::min(k, cap - head);
    std::memcpy(buf + n, ring_.data() + head, first);
    if (k > first) std::memcpy(buf + n + first, ring_.data(), k - first);
    lock.lock();
    head_ = (head_ + k) % cap;
    used_ -= k;
    const bool wake = space_want_ > 0 && cap - used_ >= space_want_;
    lock.unlock();
    if (wake) space_cv_.notify_one();
    return n + k;
  }

  std::optional<uint64_t> size() const {
    std::lock_guard lock(mu_);
    return content_length_;
  }
  std::string etag() const {
    std::lock_guard lock(mu_);
    return etag_;
  }
  std::string last_modified() const {
    std::lock_guard lock(mu_);
    return last_modified_;
  }
  std::string effective_url() const {
    std::lock_guard lock(mu_);
    return RedactUrl(effective_url_);
  }
  uint64_t received() const {
    std::lock_guard lock(mu_);
    return received_;
  }
  std::string sha256() const {
    std::lock_guard lock(mu_);
    return digest_hex_.empty() ? "" : "sha256:" + digest_hex_;
  }
  bool not_modified() const {
    std::lock_guard lock(mu_);
    return not_modified_;
  }
  const std::string& what() const { return what_; }

 private:
  static size_t HeaderCb(char* data, size_t size, size_t n, void* self_ptr) {
    auto* self = static_cast<Impl*>(self_ptr);
    std::string line(data, size * n);
    std::lock_guard lock(self->mu_);
    if (StartsWithNoCase(line, "HTTP/")) {
      // A new response (the first, or one after a redirect): forget the last one's.
      self->etag_.clear();
      self->last_modified_.clear();
      self->encoded_ = false;
    } else if (StartsWithNoCase(line, "content-encoding:")) {
      // curl decodes the body: Content-Length then counts encoded bytes, not ours.
      const std::string enc = Trim(line.substr(17));
      self->encoded_ = !enc.empty() && !StartsWithNoCase(enc, "identity");
    } else if (StartsWithNoCase(line, "etag:")) {
      self->etag_ = Trim(line.substr(5));
    } else if (StartsWithNoCase(line, "last-modified:")) {
      self->last_modified_ = Trim(line.substr(14));
    }
    return size * n;
  }

  static int ProgressCb(void* self_ptr, curl_off_t, curl_off_t, curl_off_t, curl_off_t) {
    auto* self = static_cast<Impl*>(self_ptr);
    std::lock_guard lock(self->mu_);
    if (self->opts_.cancel && self->opts_.cancel->load()) self->cancelled_ = true;
    if (!self->cancelled_) return 0;
    if (self->own_error_.ok()) {
      self->own_error_ = Status(StatusCode::kCancelled, self->what_ + ": download cancelled");
    }
    return 1;
  }

  static size_t WriteCb(char* data, size_t size, size_t n, void* self_ptr) {
    auto* self = static_cast<Impl*>(self_ptr);
    const size_t len = size * n;
    // Only this thread touches hash_ until Run() finishes it: hash outside the lock so
    // Next() keeps draining meanwhile.
    if (self->hashing_) self->hash_.Update(data, len);
    std::unique_lock lock(self->mu_);
    if (!self->body_started_) {
      self->body_started_ = true;
      curl_off_t cl = -1;
      if (!self->encoded_ &&
          curl_easy_getinfo(self->curl_, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &cl) == CURLE_OK && cl >= 0) {
        self->content_length_ = static_cast<uint64_t>(cl);
      }
      char* eff = nullptr;
      if (curl_easy_getinfo(self->curl_, CURLINFO_EFFECTIVE_URL, &eff) == CURLE_OK && eff) {
        self->effective_url_ = eff;
      }
      if (self->opts_.max_bytes && self->content_length_ && *self->content_length_ > self->opts_.max_bytes) {
        self->own_error_ = Status::OutOfRange(
            self->what_ + ": image of " + std::to_string(*self->content_length_) +
            " bytes is larger than the maximum image size " + std::to_string(self->opts_.max_bytes));
        return 0;
      }
      self->started_cv_.notify_all();
    }
    if (self->opts_.max_bytes && self->received_ + len > self->opts_.max_bytes) {
      self->own_error_ = Status::OutOfRange(self->what_ + ": image is larger than the maximum image size " +
                                            std::to_string(self->opts_.max_bytes));
      return 0;
    }
    self->received_ += len;
    if (self->opts_.on_data) {
      const uint64_t received = self->received_;
      const std::optional<uint64_t> total = self->content_length_;
      lock.unlock();
      const bool go_on = self->opts_.on_data(received, total);
      lock.lock();
      if (!go_on) {
        self->own_error_ = Status(StatusCode::kCancelled, self->what_ + ": download cancelled");
        return 0;
      }
    }
    size_t off = 0;
    while (off < len) {
      if (self->cancelled_) {
        self->own_error_ = Status(StatusCode::kCancelled, self->what_ + ": download cancelled");
        return 0;
      }
      const size_t cap = self->ring_.size();
      if (self->direct_buf_ && self->used_ == 0 && self->direct_len_ < self->direct_cap_) {
        // The consumer waits on an empty ring: copy straight into its buffer. It cannot
        // return while copying_ is set.
        const size_t k = std::min(len - off, self->direct_cap_ - self->direct_len_);
        char* dst = self->direct_buf_ + self->direct_len_;
        self->copying_ = true;
        lock.unlock();
        std::memcpy(dst, data + off, k);
        lock.lock();
        self->copying_ = false;
        self->direct_len_ += k;
        off += k;
        if (self->direct_len_ >= self->direct_want_) self->data_cv_.notify_one();
        continue;
      }
      if (self->used_ == cap) {
        // Full: wait until a good part is free, not for every byte the consumer takes.
        self->space_want_ = std::min(len - off, cap / 4);
        self->space_cv_.wait(lock, [&] { return cap - self->used_ >= self->space_want_ || self->cancelled_; });
        self->space_want_ = 0;
        continue;
      }
      // Only this thread writes past the used part, so the copy runs unlocked.
      const size_t tail = (self->head_ + self->used_) % cap;
      const size_t k = std::min({cap - self->used_, cap - tail, len - off});
      lock.unlock();
      std::memcpy(self->ring_.data() + tail, data + off, k);
      lock.lock();
      self->used_ += k;
      off += k;
      if (self->direct_buf_) self->data_cv_.notify_one();
    }
    return len;
  }

  void Run() {
    NameThisThread("stl-http");
    CURLcode rc = curl_easy_perform(curl_);
    long http = 0;
    curl_easy_getinfo(curl_, CURLINFO_RESPONSE_CODE, &http);
    std::lock_guard lock(mu_);
    if (rc == CURLE_OK && http == 304) {
      // Not Modified: no body, and nothing to hash or check against a digest.
      not_modified_ = true;
      final_ = Status::Ok();
      done_ = true;
      started_cv_.notify_all();
      data_cv_.notify_all();
      return;
    }
    final_ = Verdict(rc, http);
    if (final_.ok() && hashing_) {
      ChunkId d = hash_.Finish();
      digest_hex_ = ToHex(d);
      if (!expected_hex_.empty() && digest_hex_ != expected_hex_) {
        final_ = Status::InvalidArgument(what_ + ": sha256 of the downloaded " + std::to_string(received_) +
                                         " bytes is sha256:" + digest_hex_ + ", expected sha256:" +
                                         expected_hex_ + " (wrong digest, or the file at the URL changed)");
      }
    }
    done_ = true;
    started_cv_.notify_all();
    data_cv_.notify_all();
  }

  // REQUIRES: mu_ held. Maps curl's result to a Status naming the URL.
  Status Verdict(CURLcode rc, long http) {
    if (!own_error_.ok()) return own_error_;
    const std::string got = std::to_string(received_) + " bytes" +
                            (content_length_ ? " of " + std::to_string(*content_length_) : std::string());
    std::string detail = errbuf_[0] ? std::string(errbuf_) : std::string(curl_easy_strerror(rc));
    switch (rc) {
      case CURLE_OK:
        if (content_length_ && received_ != *content_length_) {
          return Status::Unavailable(what_ + ": transfer ended after " + got + "; the image is incomplete");
        }
        return Status::Ok();
      case CURLE_HTTP_RETURNED_ERROR: {
        std::string m = what_ + ": HTTP " + std::to_string(http);
        if (http == 404 || http == 410) return Status::NotFound(m + " (no such file on the server)");
        if (http == 401 || http == 403) return Status::PermissionDenied(m + " (check the credentials headers)");
        if (http >= 500) return Status::Unavailable(m + " (server error; retry later)");
        return Status::InvalidArgument(m);
      }
      case CURLE_UNSUPPORTED_PROTOCOL:
      case CURLE_URL_MALFORMAT:
      case CURLE_TOO_MANY_REDIRECTS:
        return Status::InvalidArgument(what_ + ": " + detail);
      case CURLE_PEER_FAILED_VERIFICATION:
      case CURLE_SSL_CACERT_BADFILE:
      case CURLE_SSL_CONNECT_ERROR:
        return Status::FailedPrecondition(what_ + ": TLS: " + detail +
                                          " (give the CA bundle that signed the server's certificate)");
      case CURLE_PARTIAL_FILE:
      case CURLE_RECV_ERROR:
      case CURLE_GOT_NOTHING:
      case CURLE_OPERATION_TIMEDOUT:
      case CURLE_SEND_ERROR:
        return Status::Unavailable(what_ + ": connection dropped after " + got + " (" + detail +
                                   "); the image is incomplete, retry the import");
      default:
        return Status::Unavailable(what_ + ": " + detail + " after " + got);
    }
  }

  const HttpSourceOptions opts_;
  const std::string what_;
  std::string expected_hex_;
  bool hashing_ = false;             // set before the curl thread starts
  CURL* curl_ = nullptr;
  curl_slist* headers_ = nullptr;
  char errbuf_[CURL_ERROR_SIZE] = {0};
  std::thread thread_;

  mutable std::mutex mu_;
  std::condition_variable started_cv_, data_cv_, space_cv_;
  // The ring: bytes [head_, head_ + used_) are the consumer's; it copies them out
  // unlocked, as the curl thread copies into the free part. ring_ never changes size.
  std::vector<char> ring_;
  size_t head_ = 0, used_ = 0;       // GUARDED_BY(mu_)
  size_t space_want_ = 0;            // GUARDED_BY(mu_): free bytes the full producer waits for
  // The consumer's buffer while it waits on an empty ring (Next()).
  char* direct_buf_ = nullptr;       // GUARDED_BY(mu_)
  size_t direct_cap_ = 0, direct_len_ = 0, direct_want_ = 0;  // GUARDED_BY(mu_)
  bool copying_ = false;             // GUARDED_BY(mu_): the curl thread writes into direct_buf_
  bool body_started_ = false;        // GUARDED_BY(mu_)
  bool done_ = false;                // GUARDED_BY(mu_)
  bool cancelled_ = false;           // GUARDED_BY(mu_)
  bool not_modified_ = false;        // GUARDED_BY(mu_): the answer was 304
  bool encoded_ = false;             // GUARDED_BY(mu_): a Content-Encoding was sent
  Status final_;                     // GUARDED_BY(mu_): valid once done_
  Status own_error_;                 // GUARDED_BY(mu_): why a callback stopped curl
  std::optional<uint64_t> content_length_;
  std::string etag_, last_modified_, effective_url_, digest_hex_;
  uint64_t received_ = 0;
  Sha256Stream hash_;               // the curl thread's only
};

HttpImageSource::HttpImageSource(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
HttpImageSource::~HttpImageSource() = default;

Result<std::unique_ptr<HttpImageSource>> HttpImageSource::Open(const HttpSourceOptions& options) {
  auto impl = std::make_unique<Impl>(options);
  RETURN_IF_ERROR(impl->Start());
  return std::unique_ptr<HttpImageSource>(new HttpImageSource(std::move(impl)));
}

std::string HttpImageSource::Describe() const { return impl_->what().substr(4); }
std::optional<uint64_t> HttpImageSource::Size() const { return impl_->size(); }
Result<size_t> HttpImageSource::Next(char* buf, size_t max, bool* hole) {
  *hole = false;
  if (max == 0) return size_t{0};
  return impl_->Next(buf, max);
}
std::string HttpImageSource::etag() const { return impl_->etag(); }
std::string HttpImageSource::last_modified() const { return impl_->last_modified(); }
std::string HttpImageSource::effective_url() const { return impl_->effective_url(); }
uint64_t HttpImageSource::bytes_received() const { return impl_->received(); }
std::string HttpImageSource::sha256() const { return impl_->sha256(); }
bool HttpImageSource::not_modified() const { return impl_->not_modified(); }

}  // namespace stellarium
