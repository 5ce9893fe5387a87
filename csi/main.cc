// stellarium-csi: the CSI driver binary. Flags and YAML -> Options -> Server; serves
// until SIGTERM or SIGINT, then stops gracefully (running calls finish, the socket is
// removed, the store is closed). Exit codes: 0 after a clean stop, 1 when the server
// cannot start (store held by another process, socket in use, ...), 2 for a bad
// command line or configuration.
#include <signal.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <cstdio>
#include <iostream>

#include "core/sigbus.h"
#include "csi/logging.h"
#include "csi/options.h"
#include "csi/server.h"

namespace {

// With the store's table files mapped (--store-mmap-reads, the default), a disk read
// error under a mapped page arrives as SIGBUS: say what it most likely is.
constexpr char kSigbusMessage[] =
    "stellarium-csi: SIGBUS: a read of a memory-mapped file failed. With "
    "--store-mmap-reads=true (the default) this is most likely a disk read error under "
    "the store's table files: check the disk; --store-mmap-reads=false makes such errors "
    "fail the read instead of the driver.\n";

}  // namespace

int main(int argc, char** argv) {
  using namespace stellarium::csi;
  CommandLine cl = ParseCommandLine(argc, argv);
  if (cl.exit) {
    (cl.exit_code == 0 ? std::cout : std::cerr) << cl.output << std::flush;
    return cl.exit_code;
  }
  SetupLogging(cl.options.log_level, cl.options.log_format);
  if (cl.options.store_mmap_reads) stellarium::ExplainSigbus(kSigbusMessage);

  // Block the stop signals in every thread (gRPC's included) and wait for them here.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  auto server = Server::Start(cl.options);
  if (!server.ok()) {
    spdlog::error("cannot start: {}", server.status().message());
    return 1;
  }
  int signal = 0;
  sigwait(&stop_signals, &signal);
  spdlog::info("received {}, stopping", signal == SIGTERM ? "SIGTERM" : "SIGINT");
  (*server)->Shutdown();
  server->reset();
  spdlog::info("stopped");
  return 0;
}
