#include "core/sigbus.h"

#include <signal.h>
#include <unistd.h>

#include <cstring>

namespace stellarium {
namespace {

const char* g_message = nullptr;
size_t g_length = 0;

void OnSigbus(int sig) {
  ssize_t ignored = ::write(STDERR_FILENO, g_message, g_length);
  (void)ignored;
  ::signal(sig, SIG_DFL);
  ::raise(sig);  // delivered with the default action once this handler returns
}

}  // namespace

void ExplainSigbus(const char* message) {
  g_message = message;
  g_length = std::strlen(message);
  ::signal(SIGBUS, OnSigbus);
}

}  // namespace stellarium
