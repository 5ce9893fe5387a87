// The import pipeline behind Store::ImportImage: an image source becomes a layer of
// chunks and a volume over it. Each stage is a type of its own, in a file of its own:
//
//   SegmentReader (reader.h)  thread stl-imp-read: the source, 1 MiB segments, holes
//   SegmentHasher (hasher.h)  one thread per core, stl-imp-hash: zero test, SHA-256,
//                             the base image's view, where the store has each chunk
//   Placer (placer.h)         the importing thread: in image order, new vs known,
//                             locators, map entries, counts, digest, summary, progress
//   DataWriter (data_writer.h) two threads, stl-imp-data: new chunk bytes, a data
//                             period (16 MiB) at a time, ingested
//   IndexWriter (index_writer.h) thread stl-imp-index: map entries and index records,
//                             an index period at a time, ingested after the bytes
//   ImportCommit (commit.h)   the importing thread: the catalog steps (name check,
//                             begin, abandon, finish)
//
// Ingesting (BulkBatch) makes a batch durable and visible in one step, so the index
// never names bytes that are not in the store, and map entries never exist without the
// counts they hold. After the last ingest the commit stage, in one synced batch, makes
// the layer the image's and creates the volume. A crash before that leaves a layer in
// kImporting, which the next Open() declares dead; gc then drops its map entries with
// the references they hold, and the chunk bytes nothing names. The import holds the
// chunk store's sweep lock shared from its first index lookup to its last ingest, so gc
// waits for a running import rather than deleting bytes it is about to index.
//
// Memory is bounded by the segments, data periods and index work in flight, the index
// period's table of chunks and the table of ids this import has met.
#pragma once

#include "core/store_impl.h"

namespace stellarium::import {

// Store::ImportImage (store.h has the contract).
Result<ImportResult> Run(StoreImpl& store, ImageSource& source, const ImportOptions& options);

}  // namespace stellarium::import
