#include "core/import/data_writer.h"

#include "core/thread_name.h"

namespace stellarium::import {

void DataWriter::Start(Channel<std::unique_ptr<DataWork>>* in,
                       Channel<std::unique_ptr<DataWork>>* free) {
  for (unsigned t = 0; t < kThreads; ++t) {
    threads_.emplace_back([this, in, free] {
      NameThisThread("stl-imp-data");
      Run(in, free);
    });
  }
}

void DataWriter::Run(Channel<std::unique_ptr<DataWork>>* in,
                     Channel<std::unique_ptr<DataWork>>* free) {
  std::unique_ptr<BulkBatch> batch = s_.backend->NewBulkBatch(what_);
  ChunkBytes& bytes = s_.backend->bytes();
  auto write = [&](DataWork& d) -> Status {
    for (size_t k = 0; k < d.locators.size(); ++k) {
      RETURN_IF_ERROR(
          bytes.Put(batch.get(), d.locators[k], std::string_view(d.bytes.data() + k * bs_, bs_)));
    }
    return batch->Ingest();
  };
  std::unique_ptr<DataWork> d;
  while (in->Pop(&d)) {
    if (!control_->stopped()) {
      Status st = write(*d);
      if (!st.ok()) control_->Fail(st);
    }
    Done(d->period);
    d->Clear();
    free->Push(std::move(d));
  }
}

void DataWriter::Done(uint64_t period) {
  {
    std::lock_guard l(mu_);
    done_after_.insert(period);
    while (!done_after_.empty() && *done_after_.begin() == done_) {
      done_after_.erase(done_after_.begin());
      ++done_;
    }
  }
  cv_.notify_all();
}

void DataWriter::WaitFor(uint64_t n) {
  std::unique_lock l(mu_);
  cv_.wait(l, [&] { return done_ >= n || control_->stopped(); });
}

}  // namespace stellarium::import
