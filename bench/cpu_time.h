// CPU time for the benchmarks: how many core-seconds a row used, next to its wall-clock
// time, so that a run shows when a figure is bounded by the machine's cores rather than
// by waiting. On C cores a row that needs S core-seconds cannot finish in less than S / C
// seconds, whatever the code does with its threads.
#pragma once

#include <sys/resource.h>
#include <sys/types.h>
#include <unistd.h>

#include <fstream>
#include <sstream>
#include <string>

namespace stellarium::bench {

inline double Seconds(const timeval& tv) {
  return static_cast<double>(tv.tv_sec) + static_cast<double>(tv.tv_usec) / 1e6;
}

// User + system seconds of this process's threads and of the children it has waited for.
inline double SelfAndChildrenCpu() {
  rusage self{}, children{};
  getrusage(RUSAGE_SELF, &self);
  getrusage(RUSAGE_CHILDREN, &children);
  return Seconds(self.ru_utime) + Seconds(self.ru_stime) + Seconds(children.ru_utime) +
         Seconds(children.ru_stime);
}

// User + system seconds of another running process (its threads, from /proc/PID/stat);
// 0 when it cannot be read.
inline double ProcessCpu(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (pid <= 0 || !std::getline(f, line)) return 0;
  const size_t close = line.rfind(')');  // the command name may hold spaces
  if (close == std::string::npos) return 0;
  std::istringstream rest(line.substr(close + 2));
  std::string field;
  double utime = 0, stime = 0;
  for (int i = 3; i <= 15 && rest >> field; ++i) {  // fields 14, 15: utime, stime (ticks)
    if (i == 14) utime = std::stod(field);
    if (i == 15) stime = std::stod(field);
  }
  return (utime + stime) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

// Core-seconds the whole machine has spent not idle since boot (/proc/stat's first line:
// everything but idle and iowait). A pass's difference counts the kernel's own threads
// (loop workers, softirqs) too, which per-process figures miss.
inline double MachineBusy() {
  std::ifstream f("/proc/stat");
  std::string cpu;
  f >> cpu;
  double busy = 0, v = 0;
  for (int i = 0; i < 8 && f >> v; ++i) {  // user nice system idle iowait irq softirq steal
    if (i != 3 && i != 4) busy += v;
  }
  return busy / static_cast<double>(sysconf(_SC_CLK_TCK));
}

}  // namespace stellarium::bench
