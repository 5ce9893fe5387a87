// HttpImageSource: an ImageSource that streams an http:// or https:// URL with libcurl.
//
// Why: a cluster's images live behind URLs. We import them by streaming straight into
// the CAS (no scratch copy): a curl thread writes the body into a bounded in-memory
// buffer and Next() drains it, so memory stays at `buffer_bytes` whatever the size.
// While Next() waits on an empty buffer the curl thread copies straight into the
// caller's buffer instead (one copy per byte, not two), and Next() is woken once per
// batch (1 MiB, the end of the body, or 20 ms with whatever arrived), not once per
// network read; a full buffer wakes the curl thread when a quarter of it is free.
//
// What must stay true:
//   - TLS peer and host verification are always on; `ca_bundle` replaces the system CAs.
//   - Only http and https are spoken, also across redirects.
//   - A transfer that ends early (connection dropped, Content-Length not reached, bad
//     chunked encoding) is an error from Next(), never a short image that looks complete.
//   - With an expected digest, the SHA-256 of every downloaded byte is checked when the
//     body ends; on a mismatch Next() returns INVALID_ARGUMENT instead of end-of-stream,
//     so ImportImage abandons the import and leaves nothing behind.
//   - Errors name the URL (userinfo and query string redacted: they may hold secrets).
//
// Status codes: a URL that is not http(s) or a malformed digest is INVALID_ARGUMENT;
// HTTP 404/410 NOT_FOUND; 401/403 PERMISSION_DENIED; other 4xx INVALID_ARGUMENT; 5xx,
// refused or dropped connections and stalls UNAVAILABLE (retry later); a failed TLS
// verification FAILED_PRECONDITION; a body larger than max_bytes OUT_OF_RANGE.
//
// Thread-safety: one consumer calls Next() (ImportImage's reader thread); the accessors
// may be called from any thread once Open() returned.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/store.h"

namespace stellarium {

struct HttpSourceOptions {
  std::string url;                   // http:// or https://
  std::string ca_bundle;             // PEM file of trusted CAs; "" = the system's
  std::vector<std::string> headers;  // extra request headers, each "Name: value"
  std::string expected_sha256;       // "sha256:<64 hex>" or "<64 hex>"; "" = unchecked
  // Hash the body even without an expected digest (for sha256()). Off by default: the
  // hash costs a core-second per ~1.5 GB that the importer's own hashing could use.
  bool compute_sha256 = false;
  uint64_t max_bytes = 0;            // refuse bodies larger than this; 0 = no limit
  // A conditional request (RFC 9110 section 13): with either set, a server whose copy
  // still matches answers 304 Not Modified and Open() returns a source with
  // not_modified() true and an empty body. If-None-Match wins where both are sent.
  std::string if_none_match;         // an ETag from an earlier response, quotes included
  std::string if_modified_since;     // a Last-Modified value from an earlier response
  size_t buffer_bytes = 16u << 20;   // the bounded buffer between curl and Next()
  // Called on the transfer's thread as body bytes arrive, with the running total and
  // the Content-Length when known (for progress reports). Returning false stops the
  // transfer: Next() then fails with CANCELLED. Must not block.
  std::function<bool(uint64_t received, std::optional<uint64_t> content_length)> on_data;
  // Set to true from another thread to stop the transfer, also while no data flows
  // (checked about once a second): Next() then fails with CANCELLED. Not owned.
  const std::atomic<bool>* cancel = nullptr;
  long connect_timeout_seconds = 30;
  // A transfer that moves less than 1 byte/s for this long is dropped (UNAVAILABLE).
  long stall_timeout_seconds = 120;
};

class HttpImageSource : public ImageSource {
 public:
  // Starts the transfer and waits for the response headers (and the first bytes of the
  // body), so an HTTP error, a refused connection or a too large Content-Length fails
  // here rather than on the first Next().
  static Result<std::unique_ptr<HttpImageSource>> Open(const HttpSourceOptions& options);
  ~HttpImageSource() override;  // stops the transfer if it is still running

  std::string Describe() const override;             // the redacted URL
  std::optional<uint64_t> Size() const override;     // Content-Length when given
  Result<size_t> Next(char* buf, size_t max, bool* hole) override;

  // Validators of the response, for caching an import by URL (docs/IMAGES.md). Empty
  // when the server sent none.
  std::string etag() const;
  std::string last_modified() const;
  // The final URL after redirects (redacted) and the number of body bytes received.
  std::string effective_url() const;
  uint64_t bytes_received() const;
  // "sha256:<hex>" of the whole body; empty until Next() returned end-of-stream, and
  // empty unless a digest was expected or compute_sha256 was set.
  std::string sha256() const;
  // The server answered 304 to a conditional request: the caller's copy is current.
  bool not_modified() const;

  class Impl;

 private:
  explicit HttpImageSource(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// "https://user:pw@host/p?tok=1" -> "https://host/p?<redacted>". For errors and logs.
std::string RedactUrl(const std::string& url);

// Checks "sha256:<64 hex>" (the prefix is optional) and returns the lowercase hex.
// INVALID_ARGUMENT naming `what` otherwise.
Result<std::string> ParseSha256Digest(const std::string& text, const std::string& what);

}  // namespace stellarium
