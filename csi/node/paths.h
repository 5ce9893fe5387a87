// Path checks for every path that arrives in a request (staging and target paths, image
// paths from StorageClass parameters). A request path is accepted only if it is
// absolute, has no ".." component, and, after every symlink in it is resolved, still
// lies under one of the configured roots (--kubelet-dir, --import-root). The resolved
// path is what callers then use, so a symlink swapped in later does not move a mount.
//
// Thread-safety: pure functions over the filesystem.
#pragma once

#include <string>
#include <vector>

#include "core/status.h"

namespace stellarium::node {

// Resolves `path` (which may not exist yet: its missing tail is kept as written) and
// checks it is `root` or below it. INVALID_ARGUMENT for a relative path, a ".."
// component or an empty path; PERMISSION_DENIED when it escapes the root.
// `what` names the field in messages ("staging_target_path").
Result<std::string> ResolveUnderRoot(const std::string& what, const std::string& path,
                                     const std::string& root);

// As above for a list of roots; the first root containing the path wins.
Result<std::string> ResolveUnderAnyRoot(const std::string& what, const std::string& path,
                                        const std::vector<std::string>& roots);

// True when `path` is `root` or lies below it (both already resolved, no trailing '/').
bool IsUnder(const std::string& path, const std::string& root);

}  // namespace stellarium::node
