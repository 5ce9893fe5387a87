// RunProgram: runs an external program (mkfs.ext4, e2fsck, losetup, ...) with an
// argument vector, never through a shell, and captures its output for error messages.
//
// Thread-safety: safe from any thread (fork + execvp, output read through a pipe).
#pragma once

#include <string>
#include <vector>

#include "core/status.h"

namespace stellarium {

struct ProgramResult {
  int exit_code = -1;      // -1 when killed by a signal
  std::string output;      // stdout and stderr, interleaved
};

// Runs argv[0] (searched in PATH) with argv; `env` entries ("K=V") are added to the
// environment. Fails only when the program cannot be started (NOT_FOUND when it is not
// installed); a non-zero exit is reported in the result.
Result<ProgramResult> RunProgram(const std::vector<std::string>& argv,
                                 const std::vector<std::string>& env = {});

// Like RunProgram, but a non-zero exit is an error carrying the program's output.
Status RunProgramOk(const std::vector<std::string>& argv, const std::vector<std::string>& env = {},
                    std::string* output = nullptr);

}  // namespace stellarium
