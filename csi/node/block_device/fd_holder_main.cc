// stellarium-fd-holder: keeps the driver's /dev/fuse fd (and anything else the driver
// deposits) open while the driver restarts. Runs next to stellarium-csi on each node
// (a second container of the node DaemonSet, sharing the state directory); see
// csi/node/block_device/fd_holder.h and docs/EXPOSURE.md, "Driver restarts".
//
//   stellarium-fd-holder --socket /var/lib/stellarium/state/fd-holder.sock
//
// Stops on SIGTERM or SIGINT; everything it holds is closed then, so stop it only
// after the driver (or when no volume is staged). Exit codes: 0 after a stop, 1 when
// it cannot listen, 2 for a bad command line.
#include <signal.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <string>

#include "csi/node/block_device/fd_holder.h"

namespace {

constexpr char kUsage[] =
    "usage: stellarium-fd-holder --socket PATH\n"
    "  Holds file descriptors for stellarium-csi across its restarts, on the unix\n"
    "  socket PATH (created mode 0600; the driver uses <state_dir>/fd-holder.sock).\n";

}  // namespace

int main(int argc, char** argv) {
  std::string socket_path;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      std::fputs(kUsage, stdout);
      return 0;
    } else if (a == "--socket" && i + 1 < argc) {
      socket_path = argv[++i];
    } else if (a.rfind("--socket=", 0) == 0) {
      socket_path = a.substr(9);
    } else {
      std::fprintf(stderr, "stellarium-fd-holder: unknown argument '%s'\n%s", a.c_str(), kUsage);
      return 2;
    }
  }
  if (socket_path.empty() || socket_path[0] != '/') {
    std::fprintf(stderr, "stellarium-fd-holder: --socket must be an absolute path\n%s", kUsage);
    return 2;
  }
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGTERM);
  sigaddset(&stop, SIGINT);
  sigprocmask(SIG_BLOCK, &stop, nullptr);
  int sfd = signalfd(-1, &stop, SFD_CLOEXEC);
  if (sfd < 0) {
    std::perror("stellarium-fd-holder: signalfd");
    return 1;
  }
  auto server = stellarium::node::FdHolderServer::Listen(socket_path);
  if (!server.ok()) {
    std::fprintf(stderr, "stellarium-fd-holder: %s\n", server.status().message().c_str());
    return 1;
  }
  std::fprintf(stderr, "stellarium-fd-holder: holding fds on %s\n", socket_path.c_str());
  stellarium::Status st = (*server)->Run(sfd);
  std::fprintf(stderr, "stellarium-fd-holder: stopping, closing %zu held fd(s)\n",
               (*server)->held());
  server->reset();
  close(sfd);
  if (!st.ok()) {
    std::fprintf(stderr, "stellarium-fd-holder: %s\n", st.message().c_str());
    return 1;
  }
  return 0;
}
