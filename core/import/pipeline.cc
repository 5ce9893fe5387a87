#include "core/import/pipeline.h"

#include <algorithm>
#include <chrono>
#include <thread>

#include "core/import/commit.h"
#include "core/import/data_writer.h"
#include "core/import/hasher.h"
#include "core/import/index_writer.h"
#include "core/import/placer.h"
#include "core/import/reader.h"

namespace stellarium::import {
namespace {

constexpr size_t kDataWorkInFlight = DataWriter::kThreads + 1;  // one being filled
constexpr size_t kIndexWorkInFlight = 8;

// What the source's size, when known up front, already rules out.
Status CheckKnownSize(std::optional<uint64_t> size, const ImportOptions& opts, uint32_t bs,
                      const std::string& what) {
  if (!size) return Status::Ok();
  if (*size == 0) return Status::InvalidArgument(what + ": image is empty");
  if (*size % bs != 0 && !opts.pad_to_block) {
    return Status::InvalidArgument(what + ": size " + std::to_string(*size) +
                                   " is not a multiple of block size " + std::to_string(bs) +
                                   " (pad the image, or choose a smaller block size)");
  }
  const uint64_t rounded = (*size + bs - 1) / bs * bs;
  if (opts.volume.size_bytes != 0 && opts.volume.size_bytes < rounded) {
    return Status::OutOfRange(what + ": image size " + std::to_string(rounded) +
                              " is larger than the requested volume size " +
                              std::to_string(opts.volume.size_bytes));
  }
  return Status::Ok();
}

template <typename T>
void Fill(Channel<std::unique_ptr<T>>* free, size_t n) {
  for (size_t i = 0; i < n; ++i) free->Push(std::make_unique<T>());
}

// Runs every stage to its end over the layer `commit` began; returns the placer's
// summary and the image's digest, or the first failure.
Status Stream(StoreImpl& s, ImageSource& source, const ImportOptions& opts, uint32_t bs,
              const std::string& what, ImportCommit& commit, ImportSummary* sum, ChunkId* digest) {
  // 1 MiB segments: a segment is still in the cache when a hasher takes it.
  const size_t blocks_per_segment = std::max<size_t>(4, (1u << 20) / bs);
  const unsigned threads =
      opts.hash_threads ? opts.hash_threads : std::max(1u, std::thread::hardware_concurrency());
  ImportControl control;
  Channel<std::unique_ptr<Segment>> free_q, work_q, done_q;
  Channel<std::unique_ptr<DataWork>> data_free, data_q;
  Channel<std::unique_ptr<IndexWork>> index_free, index_q;
  Fill(&free_q, 2 * threads + 2);
  Fill(&data_free, kDataWorkInFlight - 1);  // the placer holds one from the start
  Fill(&index_free, kIndexWorkInFlight);

  SegmentReader reader(source, bs, blocks_per_segment, opts.pad_to_block, what, &control);
  SegmentHasher hasher(s, bs, commit.base_chain(), what, &control);
  DataWriter data(s, bs, what, &control);
  IndexWriter index(s, commit.layer(), &data, what, &control);
  const uint64_t index_period =
      opts.index_period_blocks ? opts.index_period_blocks : s.backend->preferred_index_period_blocks();
  const uint64_t data_period =
      opts.data_period_bytes ? opts.data_period_bytes : s.backend->preferred_data_period_bytes();
  PlacerOptions po{bs, data_period, index_period, blocks_per_segment * bs,
                   source.Size(), opts.progress, opts.cancel};
  Placer placer(s, po, what, &control, &data_q, &data_free, &index_q, &index_free);

  // Held until the last table is ingested: the locators the hashers find, and the bytes
  // ingested before their index records name them, must not be swept meanwhile.
  std::optional<SweepLock::ImportPin> pin;
  pin.emplace(s.chunks->sweep_lock());
  reader.Start(&free_q, &work_q);
  hasher.Start(threads, &work_q, &done_q);
  data.Start(&data_q, &data_free);
  index.Start(&index_q, &index_free);
  placer.Run(&done_q, &free_q);
  free_q.Close();
  reader.Join();
  hasher.Join();
  if (!control.stopped()) {
    Status st = placer.Finish();
    if (!st.ok()) control.Fail(st);
  }
  data_q.Close();
  index_q.Close();
  data.Join();  // their tables are ingested, or dropped after a failure
  index.Join();
  control.Stop();
  pin.reset();

  if (!reader.status().ok()) return reader.status().Annotate("import");
  RETURN_IF_ERROR(control.status());
  *sum = placer.summary();
  *digest = placer.Digest();
  return Status::Ok();
}

}  // namespace

Result<ImportResult> Run(StoreImpl& s, ImageSource& source, const ImportOptions& opts) {
  const auto started = std::chrono::steady_clock::now();
  const CreateVolumeRequest& req = opts.volume;
  const uint32_t bs = req.block_size ? req.block_size : s.options.default_block_size;
  const std::string what = "image " + source.Describe();
  RETURN_IF_ERROR(ValidateBlockSize(bs).Annotate(what));
  if (req.name.empty()) return Status::InvalidArgument(what + ": volume name is empty");

  ImportCommit commit(s, req, bs, what);
  ASSIGN_OR_RETURN(auto done_before, commit.Existing());
  if (done_before) return *std::move(done_before);
  const std::optional<uint64_t> known_size = source.Size();
  RETURN_IF_ERROR(CheckKnownSize(known_size, opts, bs, what));
  RETURN_IF_ERROR(commit.Begin(known_size));

  ImportSummary sum;
  ChunkId digest;
  Status st = Stream(s, source, opts, bs, what, commit, &sum, &digest);
  if (!st.ok()) return commit.Abandon(st);
  if (sum.blocks == 0) return commit.Abandon(Status::InvalidArgument(what + ": image is empty"));
  sum.raw_bytes = known_size && !opts.pad_to_block ? *known_size : sum.blocks * bs;
  if (opts.progress) opts.progress(Progress{sum.raw_bytes, sum.raw_bytes});
  sum.image_digest = ToHex(digest);

  ImportResult result;
  ASSIGN_OR_RETURN(result.volume, commit.Finish(digest, sum.blocks, source.Describe(),
                                                &sum.reused_image));
  sum.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  result.summary = sum;
  return result;
}

}  // namespace stellarium::import

namespace stellarium {

Result<ImportResult> Store::ImportImage(ImageSource& source, const ImportOptions& options) {
  return import::Run(*impl_, source, options);
}

}  // namespace stellarium
