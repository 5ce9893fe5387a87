#!/usr/bin/env bash
# The README's demo: what Stellarium is for, on one machine, through the real CSI driver.
#
#   1. an ext4 disk image of real content (files of /usr/share, then /usr/lib, copied into
#      a fresh ext4 until about three quarters of it are used). Files start on block
#      boundaries, so an image built again from the same files shares its data blocks
#      with this one whatever the layout;
#   2. stellarium-csi and its fd holder started on a store and a unix socket of their own,
#      as the node DaemonSet runs them;
#   3. CreateVolume from the image (StorageClass parameter image=), with the import's
#      progress and its summary: zero blocks (never stored), duplicate blocks (stored
#      once), bytes on disk against the image's size; then a second version of the image
#      (one file added), which stores only what changed;
#   4. a snapshot, and N clones of it (CreateVolume from the snapshot), timed;
#   5. every clone staged as a pod's volume would be (NodeStageVolume: a file in the
#      driver's FUSE mount, a loop device on it, an ext4 mount), timed, and the store's
#      size on disk before and after;
#   6. one clone published into a pod's directory and two files read back and compared;
#   7. everything unpublished, unstaged and deleted, the driver stopped.
# Whatever the demo set up is undone when it stops, also on a failure or Ctrl-C: mounts,
# loop devices, the driver, its holder and the work directory.
#
# Usage (as root: staging uses loop devices and mounts):
#   scripts/demo.sh [BUILD_DIR]             (default: $BUILD_DIR or ./build)
# Environment:
#   DEMO_CLONES=100       clones to create and stage
#   DEMO_IMAGE_MIB=1024   size of the ext4 image, MiB (at least 64)
#   DEMO_WORK_DIR         where the work directory is made ($TMPDIR or /tmp; needs 2.5 times the
#                         image size free)
#   STELLARIUM_CSI_BIN, STELLARIUM_CSI_CLIENT_BIN, STELLARIUM_FD_HOLDER_BIN: the binaries
#                         (default: found by name under BUILD_DIR)
# Every line goes to stdout (errors to stderr), so `scripts/demo.sh >demo.log 2>&1` keeps
# the whole run. Exit status 0 when every step worked.
#
# Duration: under a minute on a quiet 2-core machine (figures: docs/BENCHMARKS.md, "The
# demo").
set -euo pipefail
work_parent=$(realpath -m "${DEMO_WORK_DIR:-${TMPDIR:-/tmp}}")  # before the cd below
cd "$(dirname "$0")/.."
export LC_ALL=C

build=${1:-${BUILD_DIR:-build}}
clones=${DEMO_CLONES:-100}
image_mib=${DEMO_IMAGE_MIB:-1024}

fail() { echo "demo: $*" >&2; exit 1; }

[[ "$clones" =~ ^[1-9][0-9]{0,3}$ ]] || fail "DEMO_CLONES='$clones': a number from 1 to 9999"
[[ "$image_mib" =~ ^[1-9][0-9]{1,5}$ ]] && [ "$image_mib" -ge 64 ] ||
  fail "DEMO_IMAGE_MIB='$image_mib': a number of MiB from 64"
[ "$(id -u)" -eq 0 ] || fail "run as root (NodeStageVolume uses loop devices and mounts)"

# A binary from the environment, else found by name under the build directory.
find_bin() {
  local name=$1 given=$2 found
  if [ -n "$given" ]; then
    [ -x "$given" ] || fail "$given is not an executable ($name)"
    echo "$given"
    return
  fi
  found=$(find "$build" -name "$name" -type f -perm -u+x -not -path '*/CMakeFiles/*' \
    -print -quit 2>/dev/null)
  [ -n "$found" ] || fail "$name not found under $build: run scripts/setup.sh first (or pass the build dir)"
  echo "$found"
}
driver_bin=$(find_bin stellarium-csi "${STELLARIUM_CSI_BIN:-}")
client_bin=$(find_bin stellarium-csi-client "${STELLARIUM_CSI_CLIENT_BIN:-}")
holder_bin=$(find_bin stellarium-fd-holder "${STELLARIUM_FD_HOLDER_BIN:-}")
for tool in mkfs.ext4 mount umount losetup curl sha256sum du find; do
  command -v "$tool" >/dev/null || fail "$tool is missing: run scripts/setup.sh first"
done
[ -e /dev/fuse ] || fail "/dev/fuse is missing: the driver's block devices need FUSE"
[ -d "$work_parent" ] || fail "DEMO_WORK_DIR=$work_parent is not a directory"
free_kib=$(df -Pk "$work_parent" | awk 'NR == 2 { print $4 }')
need_kib=$((image_mib * 1024 * 5 / 2))
[ "$free_kib" -ge "$need_kib" ] ||
  fail "$work_parent has $((free_kib / 1024)) MiB free; the demo needs about $((need_kib / 1024)) MiB (set DEMO_WORK_DIR)"

work=$(mktemp -d "$work_parent/stellarium-demo-XXXXXX")
[[ "$work" =~ ^/[^[:space:]]+$ ]] ||
  { rmdir "$work"; fail "DEMO_WORK_DIR: '$work' has blanks, which the mount table escapes"; }
sock=$work/csi.sock
kubelet=$work/kubelet
state=$work/state
images=$work/images
driver_pid=""
holder_pid=""
started_ms=0

# ---- cleanup: also after a failure or Ctrl-C ----

# "mount point, filesystem type, device number" of every mount (the type follows the "-"
# that ends mountinfo's optional fields).
mount_table() {
  awk '{ for (i = 7; i < NF && $i != "-"; i++) {} print $5, $(i + 1), $3 }' /proc/self/mountinfo
}
# The demo's own mounts, deepest first.
own_mounts() { mount_table | awk -v w="$work/" 'index($1, w) == 1 { print $1 }' | sort -r; }
# Loop devices whose backing file is under a directory, by default the work directory
# (from sysfs: `losetup -a` may block on a FUSE-backed device while the driver is down).
own_loops() {
  local f under=${1:-$work}
  for f in /sys/block/loop*/loop/backing_file; do
    [ -r "$f" ] || continue
    case "$(cat "$f" 2>/dev/null)" in "$under"/*) basename "$(dirname "$(dirname "$f")")" ;; esac
  done
}
# What is still mounted or attached (empty when nothing): a lazily unmounted loop device
# is released asynchronously, so this waits up to 5 s for it.
leftovers() {
  local i left
  for i in $(seq 50); do
    left=$(echo $(own_mounts) $(own_loops))
    [ -z "$left" ] && break
    sleep 0.1
  done
  echo "$left"
}

stop_process() {  # pid, what: SIGTERM, then SIGKILL after 30 s
  local pid=$1 i
  kill -TERM "$pid" 2>/dev/null || return 0
  for i in $(seq 300); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    echo "demo: $2 did not stop on SIGTERM within 30 s: SIGKILL" >&2
    kill -KILL "$pid" 2>/dev/null
  fi
  wait "$pid" 2>/dev/null
  return 0
}

cleanup() {
  local rc=$? id path dev m conn left
  set +e
  # The teardown runs to its end: a second Ctrl-C must not leave devices behind (the
  # clients below inherit the ignored signal and finish their calls).
  trap '' INT TERM
  if [ "$rc" -ne 0 ] && [ "$rc" -ne 130 ] && [ "$rc" -ne 143 ] && [ -n "$driver_pid" ] &&
    [ -s "$work/driver.log" ]; then
    echo "demo: the driver's last log lines:" >&2
    tail -n 25 "$work/driver.log" | sed 's/^/  /' >&2
  fi
  if [ -n "$driver_pid" ] && kill -0 "$driver_pid" 2>/dev/null; then
    [ "$rc" -ne 0 ] && echo "demo: undoing what was staged and published (a few seconds)" >&2
    # Both calls are idempotent: a volume that is not published or staged answers OK.
    while read -r id path; do
      "$client_bin" --endpoint "unix://$sock" --timeout 60 unpublish --id "$id" --target "$path" >/dev/null 2>&1
    done < <(cat "$work/published" 2>/dev/null)
    while read -r id path; do
      "$client_bin" --endpoint "unix://$sock" --timeout 60 unstage --id "$id" --staging-path "$path" >/dev/null 2>&1
    done < <(cat "$work/staged" 2>/dev/null)
    stop_process "$driver_pid" stellarium-csi
  fi
  [ -n "$holder_pid" ] && stop_process "$holder_pid" stellarium-fd-holder
  # Left over only after a failure: with the driver and its holder gone, end the FUSE
  # connection (I/O then fails instead of waiting), then unmount and detach.
  for m in $(own_mounts); do
    conn=$(mount_table | awk -v m="$m" '$1 == m && $2 ~ /^fuse/ { split($3, d, ":"); print d[2] }')
    [ -n "$conn" ] && [ -w "/sys/fs/fuse/connections/$conn/abort" ] &&
      echo 1 > "/sys/fs/fuse/connections/$conn/abort"
  done
  for m in $(own_mounts); do umount -l "$m"; done
  for dev in $(own_loops); do losetup -d "/dev/$dev"; done
  left=$(leftovers)
  if [ -n "$left" ]; then
    echo "demo: could not remove: $left" >&2
    [ "$rc" -eq 0 ] && rc=1
  else
    rm -rf --one-file-system "$work"
  fi
  case "$rc" in
    0) ;;
    130 | 143) echo "demo: stopped (exit status $rc); what it made is removed" >&2 ;;
    *) echo "demo: FAILED (exit status $rc)" >&2 ;;
  esac
  exit "$rc"
}
trap cleanup EXIT
trap 'echo "demo: interrupted" >&2; exit 130' INT
trap 'echo "demo: terminated" >&2; exit 143' TERM

# ---- output helpers ----

now_ms() { local t=${EPOCHREALTIME//[.,]/}; echo $((t / 1000)); }
secs() { printf '%d.%01d s' $(($1 / 1000)) $(($1 % 1000 / 100)); }  # ms -> "1.2 s"
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
step() {
  printf '\n== %s  [%s]\n' "$*" "$(secs $(($(now_ms) - started_ms)))"
}
# Runs the client; its output is printed and kept in $out. Exits the demo on failure.
call() {
  echo "+ stellarium-csi-client $*"
  if ! out=$("$client_bin" --endpoint "unix://$sock" "$@" 2>&1); then
    printf '%s\n' "$out" | sed 's/^/  /' >&2
    fail "stellarium-csi-client $1 failed (above)"
  fi
  if [ -n "$out" ]; then printf '%s\n' "$out" | sed 's/^/  /'; fi
}
# The same, quietly (for the N clones): the output is only kept in $out.
call_quiet() {
  if ! out=$("$client_bin" --endpoint "unix://$sock" "$@" 2>&1); then
    printf '%s\n' "$out" | sed 's/^/  /' >&2
    fail "stellarium-csi-client $* failed (above)"
  fi
}
field() { printf '%s\n' "$out" | awk -v k="$1=" 'index($0, k) == 1 { print substr($0, length(k) + 1) }'; }
# A value from the driver's Prometheus metrics (the store's figures).
metric() {
  curl -sf --max-time 10 "http://127.0.0.1:$metrics_port/metrics" |
    awk -v n="$1" '$1 == n { printf "%.0f\n", $2; found = 1 } END { if (!found) exit 1 }' ||
    fail "metric $1 not served on 127.0.0.1:$metrics_port"
}
# The store's size on disk as the driver reports it: the bytes of its files. (`du` would
# also count the space RocksDB reserves ahead for its write-ahead log and manifest, a
# constant tens of MiB that no volume uses.)
store_bytes() { metric stellarium_store_disk_bytes; }
# The driver's own time per call of one RPC, from its log: "median X ms, max Y ms".
rpc_latency() {
  grep -o "rpc=$1 .*code=OK latency_ms=[0-9.]*" "$work/driver.log" | tail -n "$2" |
    sed 's/.*latency_ms=//' | sort -n |
    awk '{ v[NR] = $1 } END { printf "median %.1f ms, max %.1f ms", v[int((NR + 1) / 2)], v[NR] }'
}

started_ms=$(now_ms)
echo "Stellarium demo: a ${image_mib} MiB ext4 image, $clones clones, driver $driver_bin"
echo "work directory: $work"

# ---- 1. the image ----

step "an ext4 image of real content (files of /usr/share and /usr/lib)"
mkdir -p "$images" "$work/mnt" "$kubelet" "$state"
: > "$work/staged"
: > "$work/published"
# Whole top-level entries, in name order, while they fit three quarters of the image (the
# rest stays free: zero blocks, as in a real disk image).
budget_kib=$((image_mib * 1024 * 3 / 4))
picked=()
used_kib=0
inodes=0
for src in /usr/share /usr/lib; do
  [ -d "$src" ] || continue
  while IFS=$'\t' read -r kib entry; do
    [ $((used_kib + kib)) -le "$budget_kib" ] || continue
    n=$(du -s --inodes "$entry" | cut -f1)
    picked+=("$entry")
    used_kib=$((used_kib + kib))
    inodes=$((inodes + n))
  done < <(du -sk "$src"/* 2>/dev/null)
done
[ "${#picked[@]}" -gt 0 ] || fail "found nothing under /usr/share or /usr/lib to put in the image"
mkfs.ext4 -q -F -b 4096 -N $((inodes + inodes / 4 + 1024)) -L stellarium-demo \
  "$images/base.img" "${image_mib}M" > "$work/mkfs.out" 2>&1 ||
  { cat "$work/mkfs.out" >&2; fail "mkfs.ext4 of $images/base.img failed"; }
mount -o loop "$images/base.img" "$work/mnt" || fail "cannot loop-mount $images/base.img"
for entry in "${picked[@]}"; do
  mkdir -p "$work/mnt$(dirname "$entry")"
  cp -a "$entry" "$work/mnt$(dirname "$entry")/" ||
    fail "copying $entry into the image failed (is the image too small? DEMO_IMAGE_MIB)"
done
echo "Hello from a Stellarium volume" > "$work/mnt/stellarium-demo.txt"
# The largest file copied is read back from a clone at the end and compared.
ref=$(find "$work/mnt" -xdev -type f -printf '%s %P\n' |
  awk '$1 > max { max = $1; path = substr($0, index($0, " ") + 1) } END { print path }')
ref_sum=$(sha256sum "/$ref" | cut -d' ' -f1)
files=$(find "$work/mnt" -xdev | wc -l)
df_used=$(df -Pk "$work/mnt" | awk 'NR == 2 { print $3 }')
umount "$work/mnt" || fail "cannot unmount $work/mnt"
echo "$images/base.img: ${image_mib} MiB, $files files and directories, $((df_used / 1024)) MiB used"

# ---- 2. the driver ----

step "start stellarium-fd-holder and stellarium-csi on $sock"
# Each in a session of its own, as in a pod: Ctrl-C reaches the demo only, whose cleanup
# then unstages through the driver before stopping it. (A child of this non-interactive
# script is no process group leader, so setsid execs the program: $! is its pid.)
setsid "$holder_bin" --socket "$state/fd-holder.sock" >> "$work/holder.log" 2>&1 &
holder_pid=$!
# A free port for the metrics (the store's figures below come from them).
for _ in $(seq 50); do
  metrics_port=$((20000 + RANDOM % 30000))
  (exec 3<>"/dev/tcp/127.0.0.1/$metrics_port") 2>/dev/null || break
done
setsid "$driver_bin" --endpoint "unix://$sock" --node-id demo-node --store "$work/store" \
  --state-dir "$state" --kubelet-dir "$kubelet" --import-root "$images" \
  --metrics-address "127.0.0.1:$metrics_port" --log-level info >> "$work/driver.log" 2>&1 &
driver_pid=$!
for _ in $(seq 100); do
  [ -S "$sock" ] && break
  kill -0 "$driver_pid" 2>/dev/null || fail "stellarium-csi exited at start (its log above)"
  sleep 0.1
done
[ -S "$sock" ] || fail "stellarium-csi did not open $sock within 10 s"
[ "$(readlink "/proc/$driver_pid/exe")" = "$(readlink -f "$driver_bin")" ] ||
  fail "process $driver_pid is not $driver_bin (setsid forked?): cannot manage the driver"
call probe
echo "(driver log: $work/driver.log; metrics: http://127.0.0.1:$metrics_port/metrics)"

# ---- 3. the import ----

step "CreateVolume from the image (StorageClass parameter image=$images/base.img)"
referenced0=$(metric stellarium_store_referenced_bytes)
echo "+ stellarium-csi-client create-volume --name golden --param image=$images/base.img"
rchar() { awk '$1 == "rchar:" { print $2 }' "/proc/$driver_pid/io" 2>/dev/null || echo 0; }
read0=$(rchar)
t0=$(now_ms)
"$client_bin" --endpoint "unix://$sock" create-volume --name golden \
  --param "image=$images/base.img" > "$work/create.out" 2>&1 &
create_pid=$!
# Progress: what the driver has read so far (its /proc/PID/io), twice a second.
last=$t0
while kill -0 "$create_pid" 2>/dev/null; do
  sleep 0.1
  if [ $(($(now_ms) - last)) -ge 500 ] && kill -0 "$create_pid" 2>/dev/null; then
    last=$(now_ms)
    got=$(($(rchar) - read0))
    echo "  importing: $(mib "$got") of ${image_mib} MiB read by the driver, $(secs $((last - t0)))"
  fi
done
wait "$create_pid" || { sed 's/^/  /' "$work/create.out" >&2; fail "CreateVolume from the image failed"; }
import_ms=$(($(now_ms) - t0))
out=$(cat "$work/create.out")
printf '%s\n' "$out" | sed 's/^/  /'
golden=$(field volume_id)
[ -n "$golden" ] || fail "CreateVolume answered no volume_id"

# The driver's log line for the import gives its size and new chunks; the store's
# metrics give the blocks it maps (zero blocks have no map entry).
line=$(grep -F "volume $golden (golden): imported" "$work/driver.log") ||
  fail "the driver logged no import for $golden"
raw=$(sed -n 's/.*imported .* (\([0-9]*\) bytes, \([0-9]*\) new chunks.*/\1/p' <<<"$line")
new=$(sed -n 's/.*imported .* (\([0-9]*\) bytes, \([0-9]*\) new chunks.*/\2/p' <<<"$line")
[ -n "$raw" ] && [ -n "$new" ] || fail "cannot read the driver's import line: $line"
block=$(field context.stellarium.io/block-size)
[[ "$block" =~ ^[1-9][0-9]*$ ]] || fail "CreateVolume answered no block size"
blocks=$((raw / block))
referenced1=$(metric stellarium_store_referenced_bytes)
mapped=$(((referenced1 - referenced0) / block))
zero=$((blocks - mapped))
dup=$((mapped - new))
stored=$(store_bytes)
echo
echo "import summary (golden, $(secs "$import_ms")):"
printf '  %-22s %12s  (%s)\n' "raw size" "$raw" "$(mib "$raw")"
printf '  %-22s %12s  of %d bytes\n' "blocks" "$blocks" "$block"
printf '  %-22s %12s  %s\n' "zero blocks" "$zero" "never stored"
printf '  %-22s %12s  %s\n' "duplicate blocks" "$dup" "stored once"
printf '  %-22s %12s  (%s before compression)\n' "new chunks" "$new" "$(mib $((new * block)))"
awk -v s="$stored" -v r="$raw" 'BEGIN {
  printf "  %-22s %12d  (%.1f MiB on disk for %.1f MiB raw: %.2f of the image)\n",
         "store on disk", s, s / 1048576, r / 1048576, s / r }'
echo "  dedup: $dup duplicate blocks and $zero zero blocks of $blocks not stored again"

step "a second version of the image (one file added) imported beside it"
cp --sparse=always "$images/base.img" "$images/v2.img" || fail "cannot copy $images/base.img"
mount -o loop "$images/v2.img" "$work/mnt" || fail "cannot loop-mount $images/v2.img"
echo "version 2" > "$work/mnt/stellarium-demo-v2.txt"
umount "$work/mnt" || fail "cannot unmount $work/mnt"
before=$(store_bytes)
t0=$(now_ms)
call create-volume --name golden-v2 --param "image=$images/v2.img"
v2_ms=$(($(now_ms) - t0))
golden_v2=$(field volume_id)
line=$(grep -F "volume $golden_v2 (golden-v2): imported" "$work/driver.log") ||
  fail "the driver logged no import for $golden_v2"
new_v2=$(sed -n 's/.* \([0-9]*\) new chunks.*/\1/p' <<<"$line")
after=$(store_bytes)
echo "golden-v2: $(mib "$raw") raw, $new_v2 new chunks, store grew by $(((after - before) / 1024)) KiB" \
  "($(secs "$v2_ms"))"

# ---- 4. clones ----

step "CreateSnapshot of golden, then $clones clones of it (CreateVolume from the snapshot)"
call create-snapshot --name golden-snap --volume "$golden"
snap=$(field snapshot_id)
[ -n "$snap" ] || fail "CreateSnapshot answered no snapshot_id"
store_before=$(store_bytes)
chunks_before=$(metric stellarium_store_chunks)
every=$(((clones + 9) / 10))
# "N/clones created, 1.2 s" every tenth of the clones (t0: when the loop started).
progress() {
  if [ $(($1 % every)) -eq 0 ] || [ "$1" -eq "$clones" ]; then
    echo "  $1/$clones $2, $(secs $(($(now_ms) - t0)))"
  fi
}
ids=()
t0=$(now_ms)
for i in $(seq -w 1 "$clones"); do
  call_quiet create-volume --name "clone-$i" --snapshot "$snap"
  id=$(field volume_id)
  [ -n "$id" ] || fail "CreateVolume clone-$i answered no volume_id"
  ids+=("$id")
  progress "${#ids[@]}" created
done
create_ms=$(($(now_ms) - t0))
echo "$clones clones created in $(secs "$create_ms") (each call a new client process;" \
  "the driver's time per CreateVolume: $(rpc_latency CreateVolume "$clones"))"

# ---- 5. staging ----

step "NodeStageVolume of the $clones clones (FUSE file + loop device + ext4 mount each)"
t0=$(now_ms)
n=0
for id in "${ids[@]}"; do
  n=$((n + 1))
  path=$kubelet/plugins/kubernetes.io/csi/pv/pv-clone-$n/globalmount
  mkdir -p "$path"
  echo "$id $path" >> "$work/staged"
  call_quiet stage --id "$id" --staging-path "$path"
  progress "$n" staged
done
stage_ms=$(($(now_ms) - t0))
echo "$clones clones staged in $(secs "$stage_ms") (the driver's time per NodeStageVolume:" \
  "$(rpc_latency NodeStageVolume "$clones"))"
loops=$(own_loops "$state" | wc -l)
mounts=$(mount_table | awk -v p="$kubelet/plugins/" 'index($1, p) == 1 && $2 == "ext4"' | wc -l)
echo "on this node now: $loops loop devices on files of the driver's FUSE mount, $mounts ext4 mounts"
[ "$loops" -eq "$clones" ] && [ "$mounts" -eq "$clones" ] ||
  fail "expected $clones loop devices and $clones ext4 mounts"
store_after=$(store_bytes)
chunks_after=$(metric stellarium_store_chunks)
echo "store on disk: $(mib "$store_before") before the clones, $(mib "$store_after") with" \
  "$clones clones staged: grew by $(((store_after - store_before) / 1024)) KiB" \
  "($((chunks_after - chunks_before)) new chunks)"

# ---- 6. a pod reads a clone ----

step "NodePublishVolume of clone 1 into a pod's directory, and the pod reads it"
staging1=$kubelet/plugins/kubernetes.io/csi/pv/pv-clone-1/globalmount
target=$kubelet/pods/demo-pod/volumes/kubernetes.io~csi/pv-clone-1/mount
mkdir -p "$(dirname "$target")"
echo "${ids[0]} $target" >> "$work/published"
call publish --id "${ids[0]}" --staging-path "$staging1" --target "$target"
echo "+ cat $target/stellarium-demo.txt"
hello=$(cat "$target/stellarium-demo.txt") || fail "cannot read $target/stellarium-demo.txt"
echo "  $hello"
[ "$hello" = "Hello from a Stellarium volume" ] || fail "stellarium-demo.txt reads '$hello'"
got_sum=$(sha256sum "$target/$ref" | cut -d' ' -f1) || fail "cannot read $target/$ref"
echo "+ sha256sum $target/$ref"
echo "  $got_sum (the original /$ref: $ref_sum)"
[ "$got_sum" = "$ref_sum" ] || fail "/$ref read back from the clone differs from the original"
echo "read back: identical to the original"
call stats --id "${ids[0]}" --path "$target"

# ---- 7. teardown ----

step "NodeUnpublishVolume, NodeUnstageVolume of every clone, DeleteVolume, DeleteSnapshot"
call unpublish --id "${ids[0]}" --target "$target"
: > "$work/published"
t0=$(now_ms)
while read -r id path; do call_quiet unstage --id "$id" --staging-path "$path"; done < "$work/staged"
: > "$work/staged"
echo "$clones clones unstaged in $(secs $(($(now_ms) - t0)))"
t0=$(now_ms)
for id in "${ids[@]}"; do call_quiet delete-volume --id "$id"; done
echo "$clones clones deleted in $(secs $(($(now_ms) - t0)))"
call delete-snapshot --id "$snap"
call delete-volume --id "$golden_v2"
call delete-volume --id "$golden"
call list-volumes
[ -z "$(field volume_id)" ] || fail "volumes are left after the deletes"
echo "no volumes left"

step "stop the driver (SIGTERM) and its holder"
stop_process "$driver_pid" stellarium-csi
driver_pid=""
stop_process "$holder_pid" stellarium-fd-holder
holder_pid=""
[ -e "$sock" ] && fail "the driver did not remove its socket $sock"
left=$(leftovers)
[ -z "$left" ] || fail "left mounted or attached after the driver stopped: $left"
echo "nothing of the demo is mounted or attached"
echo
echo "demo: OK in $(secs $(($(now_ms) - started_ms)))"
