// What a process that reads the store through mmap (StoreOptions::mmap_reads) says when
// a read of a mapped page fails: the kernel delivers SIGBUS, which by default ends the
// process without a word. ExplainSigbus installs a handler that writes a message to
// stderr and then lets the process die of SIGBUS as before (so exit statuses, core
// dumps and a supervisor's restart are unchanged).
//
// Thread-safety: call once, early in main, before other threads start.
#pragma once

namespace stellarium {

// `message` must stay valid for the life of the process (a string literal); it is
// written with write(2) only, which is async-signal-safe.
void ExplainSigbus(const char* message);

}  // namespace stellarium
