#!/usr/bin/env bash
# The README's demo: starts stellarium-csi on a temporary store and socket, and walks a
# volume through the CSI calls Kubernetes makes, with the project's own CSI client:
#   create from an ext4 image (made with mkfs.ext4 -d from a temporary tree)
#   -> snapshot -> clone from the snapshot -> stage -> publish -> read a file
#   -> unpublish -> unstage -> delete
# then stops the driver and cleans up (mounts, loop devices, files), also on failure.
#
# Usage (as root: staging uses loop devices and mounts):
#   scripts/demo.sh [BUILD_DIR]        (default: $BUILD_DIR or ./build)
set -euo pipefail
cd "$(dirname "$0")/.."

build=${1:-${BUILD_DIR:-build}}
driver_bin=$build/csi/stellarium-csi
client_bin=$build/csi/stellarium-csi-client
for b in "$driver_bin" "$client_bin"; do
  [ -x "$b" ] || { echo "demo: $b not found: run scripts/setup.sh first (or pass the build dir)" >&2; exit 1; }
done
if [ "$(id -u)" -ne 0 ]; then
  echo "demo: run as root (NodeStageVolume uses loop devices and mounts)" >&2
  exit 1
fi

work=$(mktemp -d /tmp/stellarium-demo-XXXXXX)
sock=$work/csi.sock
kubelet=$work/kubelet
driver_pid=""

cleanup() {
  set +e
  if [ -n "$driver_pid" ] && kill -0 "$driver_pid" 2>/dev/null; then
    # Undo what the demo staged if it stopped half-way (the driver writes back and detaches).
    for t in "$kubelet"/pods/*/volumes/mount; do
      [ -e "$t" ] && "$client_bin" --endpoint "unix://$sock" unpublish --id "${clone:-x}" --target "$t" >/dev/null 2>&1
    done
    [ -n "${clone:-}" ] && "$client_bin" --endpoint "unix://$sock" unstage --id "$clone" \
      --staging-path "$staging" >/dev/null 2>&1
    kill -TERM "$driver_pid"
    wait "$driver_pid"
  fi
  # Whatever is still mounted or attached under the demo's directory goes too.
  grep -o " $work/[^ ]*" /proc/self/mountinfo | sort -r | while read -r m; do umount -l "$m"; done
  for f in /sys/block/loop*/loop/backing_file; do
    [ -e "$f" ] || continue
    case "$(cat "$f")" in "$work"/*) losetup -d "/dev/$(basename "$(dirname "$(dirname "$f")")")" ;; esac
  done
  rm -rf "$work"
}
trap cleanup EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
client() {
  echo "+ stellarium-csi-client $*" >&2
  "$client_bin" --endpoint "unix://$sock" "$@"
}
field() { sed -n "s/^$1=//p"; }

step "an ext4 image from a directory tree (mkfs.ext4 -d, no mount)"
mkdir -p "$work/images/tree/etc" "$kubelet"
echo "Hello from a Stellarium volume" > "$work/images/tree/hello.txt"
printf 'ID=stellarium-demo\n' > "$work/images/tree/etc/os-release"
mkfs.ext4 -q -F -d "$work/images/tree" "$work/images/base.img" 32M
ls -l "$work/images/base.img"

step "start stellarium-csi on $sock"
"$driver_bin" --endpoint "unix://$sock" --node-id demo-node --store "$work/store" \
  --state-dir "$work/state" --kubelet-dir "$kubelet" --import-root "$work/images" \
  --log-level info 2> "$work/driver.log" &
driver_pid=$!
for _ in $(seq 50); do [ -S "$sock" ] && break; sleep 0.1; done
client probe

step "CreateVolume from the image (StorageClass parameter image=...)"
golden=$(client create-volume --name golden --param "image=$work/images/base.img" | tee /dev/stderr | field volume_id)

step "CreateSnapshot (O(1))"
snap=$(client create-snapshot --name golden-snap --volume "$golden" | tee /dev/stderr | field snapshot_id)

step "CreateVolume from the snapshot (an O(1) clone)"
clone=$(client create-volume --name pod-volume --snapshot "$snap" | tee /dev/stderr | field volume_id)

step "NodeStageVolume: block device + ext4 mount at the staging path"
staging=$kubelet/plugins/kubernetes.io/csi/pv/pod-volume/globalmount
mkdir -p "$staging"
client stage --id "$clone" --staging-path "$staging"

step "NodePublishVolume: bind mount into the pod's directory"
target=$kubelet/pods/demo-pod/volumes/mount
mkdir -p "$(dirname "$target")"
client publish --id "$clone" --staging-path "$staging" --target "$target"

step "the pod reads a file from the volume"
echo "+ cat $target/hello.txt"
cat "$target/hello.txt"
client stats --id "$clone" --path "$target"

step "NodeUnpublishVolume, NodeUnstageVolume"
client unpublish --id "$clone" --target "$target"
client unstage --id "$clone" --staging-path "$staging"

step "DeleteVolume, DeleteSnapshot"
client delete-volume --id "$clone"
client delete-snapshot --id "$snap"
client delete-volume --id "$golden"
client list-volumes

step "stop the driver (SIGTERM) and clean up"
kill -TERM "$driver_pid"
wait "$driver_pid"
driver_pid=""
[ -e "$sock" ] && { echo "demo: the socket was not removed" >&2; exit 1; }
echo "driver log:"
sed 's/^/  /' "$work/driver.log"
echo
echo "demo: OK"
