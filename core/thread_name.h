// Thread names. Every thread the project starts names itself after its role ("stl-..."),
// so that `top -H`, `ps -L`, /proc/PID/task/*/comm, perf and gdb tell a hashing worker
// from a FUSE worker. The names are listed in docs/troubleshooting.md.
//
// Thread-safety: names the calling thread only.
#pragma once

namespace stellarium {

// Names the calling thread. Linux keeps 15 characters; a longer name is cut there.
void NameThisThread(const char* name);

}  // namespace stellarium
