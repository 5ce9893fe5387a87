#!/bin/sh
# image_run.sh: runs a command in an unpacked root file system the way a container
# runtime runs it in the image: in a private mount namespace (every mount made here or by
# the command disappears with it), with /proc and /sys, an empty environment but for
# PATH and HOME, and only the writable mounts a pod spec would give it.
#
# Usage (as root; the caller wraps it in `unshare --mount --propagation private`):
#   image_run.sh ROOT [OPTION]... -- COMMAND [ARG]...
#     --ro             read-only root file system (readOnlyRootFilesystem: true)
#     --rw SRC:DST     bind the host directory SRC at DST (a hostPath volume)
#     --tmpfs DST      an empty tmpfs at DST (an emptyDir volume)
#     --dev            the host's /dev at /dev (the node plugin's /dev hostPath); without
#                      it, the device nodes of the root file system (null, zero, ...)
#     --user UID:GID   run COMMAND as this user (chroot --userspec); default root
set -eu

die() { echo "image_run.sh: $*" >&2; exit 125; }

[ $# -ge 3 ] || die "usage: image_run.sh ROOT [OPTION]... -- COMMAND [ARG]..."
root=$1
shift
[ -d "$root/usr/bin" ] || die "$root is not a root file system"
# The caller must have made a private mount namespace: nothing here may leak to the host.
[ "$(readlink /proc/self/ns/mnt)" != "$(readlink /proc/1/ns/mnt)" ] ||
  die "run me under unshare --mount --propagation private"

# The root becomes a mount point of its own, so that it can be made read-only at the end
# without touching the directory it lives in.
mount --bind "$root" "$root"
mount -t proc proc "$root/proc"
mount -t sysfs -o ro sysfs "$root/sys"

ro=0
user=""
while [ $# -gt 0 ] && [ "$1" != "--" ]; do
  case "$1" in
    --ro) ro=1 ;;
    --rw)
      src=${2%%:*}
      dst=${2#*:}
      [ -d "$src" ] || die "--rw $2: $src is not a directory"
      mkdir -p "$root$dst"
      mount --bind "$src" "$root$dst"
      shift ;;
    --tmpfs)
      mkdir -p "$root$2"
      mount -t tmpfs -o mode=1777 tmpfs "$root$2"
      shift ;;
    --dev) mount --rbind /dev "$root/dev" ;;
    --user) user=$2; shift ;;
    *) die "unknown option '$1'" ;;
  esac
  shift
done
[ "${1:-}" = "--" ] || die "missing -- before the command"
shift
[ $# -ge 1 ] || die "no command"

if [ "$ro" -eq 1 ]; then
  mount -o remount,bind,ro "$root"
fi
set -- env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/ "$@"
if [ -n "$user" ]; then
  exec chroot --userspec="$user" "$root" "$@"
fi
exec chroot "$root" "$@"
