#!/usr/bin/env bash
# The CSI driver on a rados:// store, as one node's store, with a real Ceph cluster
# (scripts/ceph-test-cluster.sh) and real gRPC, FUSE, loop devices and ext4 mounts:
# CreateVolume from an image file, a clone of it, NodeStageVolume of the clone (a
# known file reads back), a write that survives unstage and stage again, DeleteVolume
# of both; then the pool holds no block map and, once collected, no chunk.
# Needs root; skips (exit 77) without the Ceph daemons.
# Environment: STELLARIUM_CSI_BIN, STELLARIUM_CSI_CLIENT_BIN, STELLARIUM_CLI_BIN,
# STELLARIUM_SOURCE_DIR.
set -euo pipefail
for p in ceph-mon ceph-osd rados; do
  command -v "$p" >/dev/null || { echo "Ceph is not installed ($p not on PATH)"; exit 77; }
done
cluster="$STELLARIUM_SOURCE_DIR/scripts/ceph-test-cluster.sh"
work=$(mktemp -d /tmp/driver-on-rados.XXXXXX)
drv=""
cleanup() {
  [ -n "$drv" ] && kill "$drv" 2>/dev/null && wait "$drv" 2>/dev/null || true
  mountpoint -q "$work/kubelet/stage" && umount "$work/kubelet/stage" || true
  "$cluster" stop "$work/ceph" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "FAIL: $*"; [ -f "$work/driver.log" ] && tail -20 "$work/driver.log"; exit 1; }

mkdir -p "$work/kubelet/stage" "$work/images" "$work/tree"
env_lines=$("$cluster" start "$work/ceph" --owner-pid $$)
export $env_lines
store="rados://$CEPH_POOL/driver"
ceph_flags=(--ceph-conf "$CEPH_CONF" --ceph-id "$CEPH_ID")
head -c 3000000 /dev/urandom > "$work/tree/data.bin"
echo "a known file" > "$work/tree/known.txt"
mke2fs -q -t ext4 -d "$work/tree" "$work/images/disk.img" 32M

"$STELLARIUM_CSI_BIN" --endpoint "unix://$work/csi.sock" --store "$store" "${ceph_flags[@]}" \
  --cache "$work/cache" --state-dir "$work/state" --kubelet-dir "$work/kubelet" \
  --import-root "$work/images" --gc-interval-seconds 0 >"$work/driver.log" 2>&1 &
drv=$!
for _ in $(seq 100); do [ -S "$work/csi.sock" ] && break; sleep 0.1; done
[ -S "$work/csi.sock" ] || fail "the driver did not start"
client() { "$STELLARIUM_CSI_CLIENT_BIN" --endpoint "unix://$work/csi.sock" "$@"; }
vol_id() { grep -oE '^volume_id=vol-[0-9a-f]+' | cut -d= -f2; }

id=$(client create-volume --name golden --param "image=$work/images/disk.img" | vol_id)
[ -n "$id" ] || fail "CreateVolume from the image"
again=$(client create-volume --name golden --param "image=$work/images/disk.img" | vol_id)
[ "$again" = "$id" ] || fail "CreateVolume is not idempotent by name ($again, $id)"
clone=$(client create-volume --name clone --volume "$id" | vol_id)
[ -n "$clone" ] && [ "$clone" != "$id" ] || fail "the clone"

objects() {  # objects of the driver's namespace whose names start with $1
  rados -p "$CEPH_POOL" -N driver --id "$CEPH_ID" ls > "$work/ls" || fail "rados ls"
  grep -c "^$1" "$work/ls" || true
}
[ "$(objects 'stellarium\.pack\.')" -gt 0 ] || fail "the import left no pack object in the pool"

client stage --id "$clone" --staging-path "$work/kubelet/stage" >/dev/null
cmp "$work/tree/data.bin" "$work/kubelet/stage/data.bin" || fail "data.bin differs through the clone"
[ "$(cat "$work/kubelet/stage/known.txt")" = "a known file" ] || fail "known.txt differs"
echo "written on the clone" > "$work/kubelet/stage/new.txt"
sync -f "$work/kubelet/stage/new.txt"
client unstage --id "$clone" --staging-path "$work/kubelet/stage" >/dev/null
client stage --id "$clone" --staging-path "$work/kubelet/stage" >/dev/null
[ "$(cat "$work/kubelet/stage/new.txt")" = "written on the clone" ] || fail "the write did not survive unstage"
client unstage --id "$clone" --staging-path "$work/kubelet/stage" >/dev/null

client delete-volume --id "$clone" >/dev/null
client delete-volume --id "$id" >/dev/null
client list-volumes | grep -q "vol-" && fail "volumes left after DeleteVolume"
kill "$drv"; wait "$drv" 2>/dev/null || true; drv=""
# Collected from another process (gc deletes a chunk a writer window after condemning it).
for _ in 1 2 3; do
  "$STELLARIUM_CLI_BIN" gc --store "$store" "${ceph_flags[@]}" --writer-window 1 >/dev/null
  sleep 1.2
done
packs=$(objects 'stellarium\.pack\.')
maps=$(objects 'stellarium\.map')
[ "$packs" = 0 ] && [ "$maps" = 0 ] || fail "after collection: $packs packs, $maps map objects"
"$STELLARIUM_CLI_BIN" fsck --store "$store" "${ceph_flags[@]}" >/dev/null || fail "fsck"
echo "driver on rados: OK"
