// ReadAheadBlockIo: a BlockIo wrapper that reads ahead of sequential readers, used by
// both node exposures that serve a volume from user space (the vhost-user-blk back-end
// and the FUSE file under a loop device). Plain C++ over core's BlockIo.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "core/block_io.h"
#include "core/status.h"

namespace stellarium::node {

// Optionally implemented by a BlockIo that holds bytes in memory of its own (the
// read-ahead layer): it hands a read over in pieces instead of copying it into one
// buffer, so a request of scattered guest pages is filled from its memory directly
// rather than through a bounce buffer. Same contract as BlockIo::Read otherwise.
class PieceReader {
 public:
  // Called with consecutive pieces of the range: `at` is the piece's offset within
  // it; together the pieces cover it exactly once.
  using Sink = std::function<void(uint64_t at, const char* data, size_t n)>;
  virtual Status ReadPieces(uint64_t offset, size_t len, const Sink& sink) = 0;

 protected:
  ~PieceReader() = default;
};

// A BlockIo that reads ahead of sequential readers.
//
// Why: a sequential reader (a guest reading its disk over vhost-user-blk, a loop device
// on a FUSE file reading for a pod) often waits for each request before it makes the
// next, so without read-ahead every request pays the store's whole read (disk, RocksDB
// iteration, a SHA-256 check per chunk) in series with the reader's own work. Here, once two reads
// have continued a first one (a stream: each starts within two read sizes of where the stream
// ended, so requests served out of order still count; up to 4 streams are followed), the ranges
// just beyond it are read from the inner BlockIo by helper threads into windows while the reader
// consumes what it got; a read that lies inside windows is a memcpy (or waits for a window already
// being read instead of reading the range a second time). The distance read ahead starts at four
// times the read's size and doubles with every read that continues the stream, up to max_bytes; a
// window is freed as soon as its bytes have been read once. Random reads do not read ahead (three
// in a row would have to land next to each other).
//
// Writes are never shadowed: every Write goes to the inner BlockIo (nothing dirty is
// held here). Before it does, windows overlapping it are dropped, windows overlapping
// it that are still being read are marked stale (their bytes are thrown away when that
// read ends), and while it runs no window overlapping it is started. So a read that
// starts after a Write returned never gets bytes from before that Write. Flush passes
// through. This holds for writes made through this object: a volume served here must
// not be written through another handle at the same time (the driver stages a volume
// with one exposure, and each exposure reads and writes it through one object).
//
// Memory: at most max_bytes of windows (queued, being read or read) at any time; a
// window dropped while a reader still copies from it lives until that copy ends.
//
// Errors: a window whose read fails is dropped silently; the reader that wanted it
// reads the range itself and gets the error (DATA_LOSS stays visible).
//
// Thread-safety: every method may be called from several threads at once.
struct ReadAheadOptions {
  uint64_t max_bytes = 8 << 20;  // read ahead of each stream, and cached in all
  uint64_t window = 1 << 20;     // the most bytes one helper read covers
  uint32_t threads = 3;          // helper threads (started at the first read-ahead)
};

class ReadAheadBlockIo : public BlockIo, public PieceReader {
 public:
  ReadAheadBlockIo(std::shared_ptr<BlockIo> inner, const ReadAheadOptions& options);
  // Waits for the windows being read.
  ~ReadAheadBlockIo() override;
  ReadAheadBlockIo(const ReadAheadBlockIo&) = delete;
  ReadAheadBlockIo& operator=(const ReadAheadBlockIo&) = delete;

  uint64_t size() const override { return inner_->size(); }
  uint32_t block_size() const override { return inner_->block_size(); }
  bool read_only() const override { return inner_->read_only(); }
  Status Read(uint64_t offset, size_t len, char* out) override;
  Status Write(uint64_t offset, const char* data, size_t len) override;
  Status Flush() override { return inner_->Flush(); }
  // Read, handing bytes found in windows to `sink` straight from the windows (a read
  // passed to the inner BlockIo arrives as one piece).
  Status ReadPieces(uint64_t offset, size_t len, const Sink& sink) override;

  // Counters, for tests and benchmarks.
  struct Stats {
    uint64_t reads_from_windows = 0;  // reads answered from windows
    uint64_t reads_waited = 0;        // of those, reads that waited for a window's read
    uint64_t reads_loaded = 0;        // of those, reads that read a queued window themselves
    uint64_t reads_through = 0;       // reads passed to the inner BlockIo
    uint64_t windows_read = 0;        // windows read into memory
    uint64_t windows_discarded = 0;   // dropped unread (a write, an error, eviction)
    uint64_t bytes_held = 0;          // current bytes of windows
  };
  Stats stats() const;

 private:
  enum class WindowState { kQueued, kLoading, kReady };
  struct Window {
    uint64_t len = 0;
    WindowState state = WindowState::kQueued;
    bool stale = false;            // a write overlapped it while it was being read
    uint64_t consumed = 0;         // bytes handed to readers
    std::shared_ptr<char[]> data;  // set when ready; never changed after
  };
  // A sequence of reads, each starting near where the one before ended.
  struct Stream {
    uint64_t end = 0;    // where the furthest read of the stream ended
    uint64_t len = 0;    // the size of its latest read
    uint32_t count = 0;  // reads that continued it
    uint64_t last_use = 0;
  };

  // How far from a stream's end a read may start and still belong to it: requests
  // running at once may arrive a request or two out of order.
  static uint64_t Slack(uint64_t read_len) { return 2 * read_len; }

  // REQUIRES: mu_ held. Finds or starts the stream a read of [offset, offset+len)
  // belongs to; returns it if the read continued it.
  Stream* NoteRead(uint64_t offset, uint64_t len);
  // REQUIRES: mu_ held. Queues windows ahead of `s` (within the memory bound and
  // the volume's `size`).
  void Schedule(const Stream& s, uint64_t read_len, uint64_t size);
  // REQUIRES: mu_ held. Makes room for `bytes` more by dropping windows (queued or
  // read, never being read) no stream is about to read. False if there is no room.
  bool MakeRoom(uint64_t bytes);
  // REQUIRES: lock holds mu_; the window at `offset` is kQueued. Reads it (unlocking
  // meanwhile) and leaves it ready, or drops it.
  void Load(std::unique_lock<std::mutex>& lock, uint64_t offset);
  // REQUIRES: mu_ held.
  void Drop(std::map<uint64_t, Window>::iterator it);
  bool Writing(uint64_t from, uint64_t to) const;  // REQUIRES: mu_ held
  void Helper();
  // Read and ReadPieces: the bytes go to `out` if set, else to `sink`.
  Status ReadTo(uint64_t offset, size_t len, char* out, const Sink* sink);

  std::shared_ptr<BlockIo> inner_;
  ReadAheadOptions options_;
  mutable std::mutex mu_;
  std::condition_variable changed_;            // a window finished, was dropped, or was queued
  std::map<uint64_t, Window> windows_;         // GUARDED_BY(mu_); by offset, disjoint
  std::deque<uint64_t> queued_;                // GUARDED_BY(mu_); window offsets to read
  uint64_t bytes_ = 0;                         // GUARDED_BY(mu_); sum of windows' len
  std::vector<Stream> streams_;                // GUARDED_BY(mu_)
  uint64_t clock_ = 0;                         // GUARDED_BY(mu_); for Stream::last_use
  std::multimap<uint64_t, uint64_t> writing_;  // GUARDED_BY(mu_); writes running: from -> to
  Stats stats_;                                // GUARDED_BY(mu_)
  bool stopping_ = false;                      // GUARDED_BY(mu_)
  std::vector<std::thread> helpers_;           // GUARDED_BY(mu_); started lazily
};

}  // namespace stellarium::node
