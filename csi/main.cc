// stellarium-csi: the CSI driver binary. Flags and YAML -> Options -> Server; serves
// until SIGTERM or SIGINT, then stops gracefully (running calls finish, the socket is
// removed, the store is closed). Exit codes: 0 after a clean stop, 1 when the server
// cannot start (store held by another process, socket in use, ...), 2 for a bad
// command line or configuration.
#include <signal.h>
#include <spdlog/spdlog.h>

#include <cstdio>
#include <iostream>

#include "csi/logging.h"
#include "csi/options.h"
#include "csi/server.h"

int main(int argc, char** argv) {
  using namespace stellarium::csi;
  CommandLine cl = ParseCommandLine(argc, argv);
  if (cl.exit) {
    (cl.exit_code == 0 ? std::cout : std::cerr) << cl.output << std::flush;
    return cl.exit_code;
  }
  SetupLogging(cl.options.log_level, cl.options.log_format);

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
