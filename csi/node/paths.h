// Path checks for every path that arrives in a request (staging and target paths, image
// paths from StorageClass parameters). A request path is accepted only if it fits the
// OS's limits, is absolute, has no ".." component, and, after every symlink in it is
// resolved, still lies under one of the configured roots (--kubelet-dir, --import-root).
// A staging or target path must moreover lie strictly below the kubelet directory and
// away from what a mount there would hide (NodePathRules). The resolved path is what
// callers then use, so a symlink swapped in later does not move a mount.
//
// Thread-safety: pure functions over the filesystem.
#pragma once

#include <string>
#include <vector>

#include "core/status.h"

namespace stellarium::node {

// INVALID_ARGUMENT when `path` is longer than PATH_MAX - 1 bytes or has a component
// longer than NAME_MAX bytes (no syscall could take it); `what` names the field.
Status CheckPathLength(const std::string& what, const std::string& path);

// Resolves `path` (which may not exist yet: its missing tail is kept as written) and
// checks it is `root` or below it. INVALID_ARGUMENT for a relative path, a ".."
// component, an empty or too long path; PERMISSION_DENIED when it escapes the root.
// `what` names the field in messages ("staging_target_path").
Result<std::string> ResolveUnderRoot(const std::string& what, const std::string& path,
                                     const std::string& root);

// As above for a list of roots; the first root containing the path wins.
Result<std::string> ResolveUnderAnyRoot(const std::string& what, const std::string& path,
                                        const std::vector<std::string>& roots);

// True when `path` is `root` or lies below it (both already resolved, no trailing '/').
bool IsUnder(const std::string& path, const std::string& root);

// Where staging and target paths may be: strictly below the kubelet directory, and never
// where a mount would hide what the kubelet or the driver needs.
struct NodePathRules {
  std::string kubelet_dir;  // --kubelet-dir
  // The driver's own directories (its state directory, its store): a path may be
  // neither one of them, nor inside one, nor above one (a mount there would hide it).
  std::vector<std::string> own_dirs;
};

// ResolveUnderRoot(what, path, rules.kubelet_dir), then PERMISSION_DENIED when the
// resolved path is the kubelet directory itself, its `plugins` or `plugins_registry`
// directory (where the kubelet finds drivers' sockets), or at, in or above one of
// rules.own_dirs.
Result<std::string> ResolveNodePath(const std::string& what, const std::string& path,
                                    const NodePathRules& rules);

}  // namespace stellarium::node
