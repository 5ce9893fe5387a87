#include "core/process.h"

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

namespace stellarium {

Result<ProgramResult> RunProgram(const std::vector<std::string>& argv,
                                 const std::vector<std::string>& env) {
  if (argv.empty()) return Status::InvalidArgument("RunProgram: empty argument vector");
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) return Status::FromErrno(errno, "run " + argv[0] + ": pipe");
  // A pipe on the child's side tells the parent whether execvp succeeded.
  int exec_fds[2];
  if (::pipe2(exec_fds, O_CLOEXEC) != 0) {
    ::close(fds[0]);
    ::close(fds[1]);
    return Status::FromErrno(errno, "run " + argv[0] + ": pipe");
  }
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);

  pid_t pid = ::fork();
  if (pid < 0) return Status::FromErrno(errno, "run " + argv[0] + ": fork");
  if (pid == 0) {
    ::dup2(fds[1], STDOUT_FILENO);
    ::dup2(fds[1], STDERR_FILENO);
    int devnull = ::open("/dev/null", O_RDONLY);
    if (devnull >= 0) ::dup2(devnull, STDIN_FILENO);
    for (const auto& e : env) ::putenv(const_cast<char*>(e.c_str()));
    ::execvp(args[0], args.data());
    int err = errno;
    (void)!::write(exec_fds[1], &err, sizeof(err));
    ::_exit(127);
  }
  ::close(fds[1]);
  ::close(exec_fds[1]);
  ProgramResult r;
  char buf[4096];
  for (;;) {
    ssize_t n = ::read(fds[0], buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    if (r.output.size() < (1 << 20)) r.output.append(buf, static_cast<size_t>(n));
  }
  ::close(fds[0]);
  int exec_err = 0;
  ssize_t en = ::read(exec_fds[0], &exec_err, sizeof(exec_err));
  ::close(exec_fds[0]);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (en == static_cast<ssize_t>(sizeof(exec_err))) {
    if (exec_err == ENOENT) {
      return Status::NotFound("program " + argv[0] + " is not installed (not found in PATH)");
    }
    return Status::FromErrno(exec_err, "run " + argv[0]);
  }
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

Status RunProgramOk(const std::vector<std::string>& argv, const std::vector<std::string>& env,
                    std::string* output) {
  ASSIGN_OR_RETURN(ProgramResult r, RunProgram(argv, env));
  if (output) *output = r.output;
  if (r.exit_code != 0) {
    std::string out = r.output;
    while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
    return Status::Internal(argv[0] + " exited with " +
                            (r.exit_code < 0 ? std::string("a signal") : std::to_string(r.exit_code)) +
                            (out.empty() ? "" : ": " + out));
  }
  return Status::Ok();
}

}  // namespace stellarium
