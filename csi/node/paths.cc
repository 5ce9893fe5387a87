#include "csi/node/paths.h"

#include <climits>
#include <cstdlib>
#include <sys/stat.h>

namespace stellarium::node {
namespace {

// Splits "/a/b/c" into {"a","b","c"}; empty components ("//") are dropped.
std::vector<std::string> Components(const std::string& path) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= path.size()) {
    size_t end = path.find('/', start);
    if (end == std::string::npos) end = path.size();
    if (end > start) out.push_back(path.substr(start, end - start));
    start = end + 1;
  }
  return out;
}

std::string RealPath(const std::string& path) {
  char buf[PATH_MAX];
  if (::realpath(path.c_str(), buf) == nullptr) return "";
  return buf;
}

// realpath() of the longest existing prefix, with the missing tail appended as is.
Result<std::string> ResolveExistingPrefix(const std::string& what, const std::string& path) {
  std::vector<std::string> parts = Components(path);
  for (size_t keep = parts.size() + 1; keep-- > 0;) {
    std::string prefix = "/";
    for (size_t i = 0; i < keep; ++i) prefix += (i ? "/" : "") + parts[i];
    std::string real = RealPath(prefix);
    if (real.empty()) continue;
    if (keep < parts.size()) {
      // The first missing component must really be missing: a dangling symlink there
      // would be followed by a later mkdir or mount.
      struct stat st;
      std::string next = (real == "/" ? "" : real) + "/" + parts[keep];
      if (::lstat(next.c_str(), &st) == 0) {
        return Status::PermissionDenied(what + " " + path + ": " + next +
                                        " is a symlink that cannot be resolved");
      }
    }
    for (size_t i = keep; i < parts.size(); ++i) {
      if (real.back() != '/') real += '/';
      real += parts[i];
    }
    return real;
  }
  return Status::InvalidArgument(what + " " + path + ": cannot be resolved");
}

}  // namespace

bool IsUnder(const std::string& path, const std::string& root) {
  if (root == "/") return !path.empty() && path[0] == '/';
  if (path.size() < root.size() || path.compare(0, root.size(), root) != 0) return false;
  return path.size() == root.size() || path[root.size()] == '/';
}

Status CheckPathLength(const std::string& what, const std::string& path) {
  if (path.size() >= PATH_MAX) {
    return Status::InvalidArgument(what + " is " + std::to_string(path.size()) +
                                   " bytes long; a path may have at most " +
                                   std::to_string(PATH_MAX - 1));
  }
  size_t start = 0;
  while (start < path.size()) {
    size_t end = path.find('/', start);
    if (end == std::string::npos) end = path.size();
    if (end - start > NAME_MAX) {
      return Status::InvalidArgument(what + " " + path + ": its component at byte " +
                                     std::to_string(start) + " is " + std::to_string(end - start) +
                                     " bytes long; a file name may have at most " +
                                     std::to_string(NAME_MAX));
    }
    start = end + 1;
  }
  return Status::Ok();
}

Result<std::string> ResolveUnderAnyRoot(const std::string& what, const std::string& path,
                                        const std::vector<std::string>& roots) {
  if (path.empty()) return Status::InvalidArgument(what + " is empty");
  if (path.find('\0') != std::string::npos) {
    return Status::InvalidArgument(what + " contains a NUL byte");
  }
  RETURN_IF_ERROR(CheckPathLength(what, path));
  if (path[0] != '/') {
    return Status::InvalidArgument(what + " " + path + ": must be an absolute path");
  }
  for (const std::string& part : Components(path)) {
    if (part == "..") {
      return Status::InvalidArgument(what + " " + path + ": '..' components are not allowed");
    }
  }
  if (roots.empty()) {
    return Status::PermissionDenied(what + " " + path + ": no root is configured for it");
  }
  ASSIGN_OR_RETURN(std::string resolved, ResolveExistingPrefix(what, path));
  std::string allowed;
  for (const std::string& root : roots) {
    std::string real_root = RealPath(root);
    if (real_root.empty()) continue;  // a root that does not exist holds nothing
    if (IsUnder(resolved, real_root)) return resolved;
    if (!allowed.empty()) allowed += ", ";
    allowed += root;
  }
  if (allowed.empty()) {
    for (const std::string& root : roots) allowed += (allowed.empty() ? "" : ", ") + root;
  }
  std::string message = what + " " + path;
  if (resolved != path) message += " (resolves to " + resolved + ")";
  return Status::PermissionDenied(message + ": not under " + allowed);
}

Result<std::string> ResolveUnderRoot(const std::string& what, const std::string& path,
                                     const std::string& root) {
  return ResolveUnderAnyRoot(what, path, std::vector<std::string>{root});
}

Result<std::string> ResolveNodePath(const std::string& what, const std::string& path,
                                    const NodePathRules& rules) {
  ASSIGN_OR_RETURN(std::string resolved, ResolveUnderRoot(what, path, rules.kubelet_dir));
  auto refuse = [&](const std::string& why) -> Result<std::string> {
    std::string message = what + " " + path;
    if (resolved != path) message += " (resolves to " + resolved + ")";
    return Status::PermissionDenied(message + ": " + why);
  };
  // Resolved as the request path was; a directory that does not exist yet is compared
  // as the path it will have.
  auto real = [](const std::string& dir) {
    std::string r = RealPath(dir);
    return r.empty() ? dir : r;
  };
  const std::string kubelet = real(rules.kubelet_dir);
  if (resolved == kubelet) {
    return refuse("is the kubelet directory " + rules.kubelet_dir +
                  " itself; staging and target paths lie below it");
  }
  for (const char* name : {"plugins", "plugins_registry"}) {
    if (resolved == real(kubelet + "/" + name)) {
      return refuse(std::string("is the kubelet's ") + name +
                    " directory, where it finds drivers' sockets");
    }
  }
  for (const std::string& own : rules.own_dirs) {
    const std::string dir = real(own);
    if (IsUnder(resolved, dir)) return refuse("lies in the driver's own directory " + own);
    if (IsUnder(dir, resolved)) {
      return refuse("holds the driver's own directory " + own + ", which a mount would hide");
    }
  }
  return resolved;
}

}  // namespace stellarium::node
