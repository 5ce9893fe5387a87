#include "core/thread_name.h"

#include <pthread.h>

#include <cstring>

namespace stellarium {

void NameThisThread(const char* name) {
  char cut[16] = {0};  // the kernel's limit: 15 characters and the terminating NUL
  std::strncpy(cut, name, sizeof(cut) - 1);
  pthread_setname_np(pthread_self(), cut);
}

}  // namespace stellarium
