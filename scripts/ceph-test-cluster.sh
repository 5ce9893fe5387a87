#!/usr/bin/env bash
# A throw-away Ceph cluster of plain processes on 127.0.0.1, for tests and demos: one
# ceph-mon, optionally one ceph-mgr, and 1 to 3 ceph-osd with BlueStore on a sparse file,
# cephx on, msgr2 only, everything (data, keys, logs, pid files, sockets) under DIR. No
# systemd, no containers; any user who can write DIR can run it.
#
# Usage:
#   ceph-test-cluster.sh start DIR [--osds N] [--mgr] [--pool NAME] [--size R]
#                                  [--osd-gib G] [--owner-pid PID]
#       Stops whatever an earlier start left running in DIR, wipes DIR (only when it is
#       empty or was made by this script), starts a fresh cluster on a free port and
#       creates a replicated pool (8 PGs, application "stellarium" enabled). Prints, on
#       stdout, the lines of `env`. On any failure it stops what it started, prints the
#       end of the failing daemon's log and exits non-zero.
#       --osds N        OSDs to run (1 to 3; default 1)
#       --mgr           also run a ceph-mgr: usage figures (`ceph df`, `rados df`) come from
#                       it, and mgr commands (`ceph osd df`) wait for one
#       --pool NAME     the pool to create (default stellarium)
#       --size R        replicas per object (default 1; at most N)
#       --osd-gib G     each OSD's capacity: a sparse file of G GiB (default 10)
#       --owner-pid PID stop the cluster when process PID ends (a test program that is
#                       killed or crashes does not leave daemons behind)
#   ceph-test-cluster.sh stop DIR
#       Stops the daemons (SIGTERM, SIGKILL after 5 s) and deletes the cluster's data;
#       DIR/log stays for post-mortems. Succeeds when nothing runs.
#   ceph-test-cluster.sh env DIR
#       Prints KEY=VALUE lines for the running cluster: CEPH_CONF (the ceph.conf path,
#       which the ceph and rados tools and librados also read from the environment),
#       CEPH_ID (the cephx user, without "client."), CEPH_KEYRING, CEPH_POOL,
#       CEPH_MON_HOST. Use: export $(ceph-test-cluster.sh env DIR)
#
# DIR must be a path without blanks or shell metacharacters (it goes into ceph.conf).
set -euo pipefail

prog=ceph-test-cluster.sh
here=$(cd "$(dirname "$0")" && pwd)
self="$here/$(basename "$0")"
marker=.ceph-test-cluster
pool_app=stellarium
stop_grace_s=5
ready_timeout_s=90

die() { echo "$prog: $*" >&2; exit 1; }
say() { echo "$prog: $*" >&2; }
now_ms() { date +%s%3N; }

usage() {
  sed -n '2,/^set -euo/p' "$self" | sed -e '$d' -e 's/^# \{0,1\}//' >&2
  exit 2
}

# ---------------------------------------------------------------- processes
# The pids of this cluster's processes: those named by DIR/run/*.pid and, to catch a
# daemon killed before it wrote its pid file, every process whose arguments name this
# cluster's ceph.conf. A pid counts only while its command line still names the conf
# (a recycled pid belongs to someone else).
cluster_pids() {
  local dir=$1 conf="$1/ceph.conf" pid state
  {
    cat "$dir"/run/*.pid 2>/dev/null || true
    echo
    grep -lxzF -- "$conf" /proc/[0-9]*/cmdline 2>/dev/null | cut -d/ -f3 || true
  } | while read -r pid; do
    [[ "$pid" =~ ^[0-9]+$ ]] && [ "$pid" != "$$" ] || continue
    grep -qxzF -- "$conf" "/proc/$pid/cmdline" 2>/dev/null || continue
    # A zombie has already ended; only its parent's wait is missing.
    state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null || true)
    [ "$state" = Z ] || echo "$pid"
  done | sort -un
}

# Those of the given pids that still run.
pids_left() { grep -xF -f <(echo "$2") <(cluster_pids "$1") || true; }

# Waits up to $3 ms for the pids $2 to end; fails when some still run.
wait_gone() {
  local deadline=$(($(now_ms) + $3))
  while [ -n "$(pids_left "$1" "$2")" ]; do
    [ "$(now_ms)" -lt "$deadline" ] || return 1
    sleep 0.05
  done
}

# Ends the given pids (one a line): SIGTERM, SIGKILL after stop_grace_s.
end_pids() {
  local dir=$1 pids=$2 left
  [ -n "$pids" ] || return 0
  # shellcheck disable=SC2086
  kill -TERM $pids 2>/dev/null || true
  wait_gone "$dir" "$pids" $((stop_grace_s * 1000)) && return 0
  left=$(pids_left "$dir" "$pids")
  say "$(echo "$left" | wc -l) process(es) ignored SIGTERM for ${stop_grace_s}s; SIGKILL"
  # shellcheck disable=SC2086
  kill -KILL $left 2>/dev/null || true
  wait_gone "$dir" "$left" 10000 || die "processes $(pids_left "$dir" "$left" | tr '\n' ' ')survive SIGKILL"
}

stop_cluster() {
  local dir=$1 pids mons others
  pids=$(cluster_pids "$dir")
  if [ -n "$pids" ]; then
    mons=$(for p in $pids; do [ "$(cat "/proc/$p/comm" 2>/dev/null)" = ceph-mon ] && echo "$p"; done || true)
    others=$(echo "$pids" | grep -vxF -f <(echo "${mons:-none}") || true)
    # OSDs first: a stopping OSD tells the monitor and waits for its answer (up to
    # osd_mon_shutdown_timeout, 5 s) when the monitor is gone already.
    end_pids "$dir" "$others"
    end_pids "$dir" "$mons"
    pids=$(cluster_pids "$dir")
    end_pids "$dir" "$pids"
  fi
  # The watchdog of an earlier start (unless this is it) ends with the cluster.
  if [ -f "$dir/watchdog.pid" ]; then
    local w
    w=$(cat "$dir/watchdog.pid" 2>/dev/null || true)
    if [ -n "$w" ] && [ "$w" != "$$" ] && grep -qxzF -- _watch "/proc/$w/cmdline" 2>/dev/null; then
      kill -TERM "$w" 2>/dev/null || true
    fi
    rm -f "$dir/watchdog.pid"
  fi
  rm -rf "$dir"/mon.* "$dir"/osd.* "$dir"/mgr.* "$dir"/run "$dir"/crash "$dir"/monmap \
    "$dir"/ceph.conf "$dir"/keyring "$dir"/env
}

# ---------------------------------------------------------------- helpers
check_dir_name() {
  case "$1" in
    "" | *[[:space:]\;\#\$\`\'\"\\\(\)\[\]\{\}\<\>\&\|\*\?=,]*)
      die "'$1': give a directory path without blanks or shell metacharacters" ;;
  esac
}

# A TCP port nothing listens on (checked in /proc/net/tcp and tcp6), below the range
# the kernel hands out to outgoing connections.
free_port() {
  local port hex tries=0
  while [ $tries -lt 200 ]; do
    port=$((20000 + RANDOM % 12000))
    hex=$(printf '%04X' "$port")
    if ! awk -v p=":$hex" 'NR > 1 && $4 == "0A" && substr($2, length($2) - 4) == p { f = 1 }
                            END { exit f ? 0 : 1 }' /proc/net/tcp /proc/net/tcp6 2>/dev/null; then
      echo "$port"
      return 0
    fi
    tries=$((tries + 1))
  done
  die "no free TCP port found"
}

new_uuid() { cat /proc/sys/kernel/random/uuid; }

log_tail() {
  local f=$1
  if [ -s "$f" ]; then
    echo "---- last lines of $f:" >&2
    tail -n 25 "$f" >&2
  fi
}

write_conf() {
  local dir=$1 fsid=$2 port=$3 size=$4 osd_gib=$5
  cat >"$dir/ceph.conf" <<EOF
# Written by $prog: a throw-away test cluster. Everything lives under $dir.
[global]
fsid = $fsid
mon host = [v2:127.0.0.1:$port]
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind msgr1 = false
ms bind msgr2 = true
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
keyring = $dir/keyring
run dir = $dir/run
crash dir = $dir/crash
mon cluster log file = $dir/log/cluster.log
osd pool default size = $size
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
osd crush initial weight = 1.0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon warn on insecure global id reclaim allowed = false
# Test machines often have less than the default 30 % free.
mon data avail warn = 5

[mon]
# A taken port fails at once (not after 3 tries 5 s apart): start picks another.
ms bind retry count = 1
mon data = $dir/\$name
pid file = $dir/run/\$name.pid
log file = $dir/log/\$name.log
admin socket = $dir/run/\$name.asok

[mgr]
mgr data = $dir/\$name
pid file = $dir/run/\$name.pid
log file = $dir/log/\$name.log
admin socket = $dir/run/\$name.asok

[osd]
osd data = $dir/\$name
pid file = $dir/run/\$name.pid
log file = $dir/log/\$name.log
admin socket = $dir/run/\$name.asok
osd objectstore = bluestore
bluestore block create = true
bluestore block size = $((osd_gib << 30))
bluestore fsck on mkfs = false
bluestore fsck on mount = false
osd memory target = 939524096

[client]
log file = $dir/log/client.log
EOF
}

# ---------------------------------------------------------------- start
cmd_start() {
  [ $# -ge 1 ] || usage
  local dir=$1
  shift
  local osds=1 mgr=0 pool=stellarium size=1 owner="" osd_gib=10
  while [ $# -gt 0 ]; do
    case "$1" in
      --osds) [ $# -ge 2 ] || die "--osds needs a number"; osds=$2; shift ;;
      --mgr) mgr=1 ;;
      --pool) [ $# -ge 2 ] || die "--pool needs a name"; pool=$2; shift ;;
      --size) [ $# -ge 2 ] || die "--size needs a number"; size=$2; shift ;;
      --osd-gib) [ $# -ge 2 ] || die "--osd-gib needs a number"; osd_gib=$2; shift ;;
      --owner-pid) [ $# -ge 2 ] || die "--owner-pid needs a pid"; owner=$2; shift ;;
      *) die "start: unknown argument '$1'" ;;
    esac
    shift
  done
  case "$osds" in 1 | 2 | 3) ;; *) die "--osds $osds: give 1, 2 or 3" ;; esac
  case "$size" in [1-3]) ;; *) die "--size $size: give 1, 2 or 3" ;; esac
  [ "$size" -le "$osds" ] || die "--size $size: more replicas than OSDs ($osds)"
  [[ "$osd_gib" =~ ^[0-9]+$ ]] && [ "$osd_gib" -ge 2 ] && [ "$osd_gib" -le 4096 ] ||
    die "--osd-gib $osd_gib: give a size in GiB from 2 to 4096"
  [[ "$pool" =~ ^[A-Za-z0-9_.-]+$ ]] || die "--pool '$pool': use letters, digits, '_', '.', '-'"
  if [ -n "$owner" ]; then
    [[ "$owner" =~ ^[0-9]+$ ]] && [ -d "/proc/$owner" ] || die "--owner-pid $owner: no such process"
  fi
  for tool in ceph-mon ceph-osd ceph-authtool monmaptool ceph rados; do
    command -v "$tool" >/dev/null || die "$tool not found: install ceph-mon, ceph-osd and ceph-common"
  done
  [ "$mgr" -eq 0 ] || command -v ceph-mgr >/dev/null || die "ceph-mgr not found: install ceph-mgr"

  check_dir_name "$dir"
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  check_dir_name "$dir"
  if [ -n "$(ls -A "$dir")" ] && [ ! -f "$dir/$marker" ]; then
    die "$dir is not empty and was not made by $prog; refusing to wipe it"
  fi
  # What an earlier start left behind (a killed test program, a failed start).
  stop_cluster "$dir"
  find "$dir" -mindepth 1 -delete
  touch "$dir/$marker"
  mkdir -p "$dir/run" "$dir/log" "$dir/crash"

  local t0 fsid port i
  t0=$(now_ms)
  # From here on a failure stops what was started.
  starting_dir=$dir
  trap 'if [ $? -ne 0 ]; then say "start failed; stopping"; stop_cluster "$starting_dir"; fi' EXIT

  if [ -n "$owner" ]; then
    local start_time
    start_time=$(awk '{print $22}' "/proc/$owner/stat")
    setsid "$self" _watch "$dir" "$owner" "$start_time" </dev/null >/dev/null 2>&1 &
    echo $! >"$dir/watchdog.pid"
  fi

  # Keys for every daemon and the admin client, in one keyring the mon imports.
  local kr="$dir/keyring"
  ceph-authtool --create-keyring "$kr" --gen-key -n mon. --cap mon 'allow *' >/dev/null
  ceph-authtool "$kr" --gen-key -n client.admin --cap mon 'allow *' --cap osd 'allow *' \
    --cap mgr 'allow *' --cap mds 'allow *' >/dev/null
  ceph-authtool "$kr" --gen-key -n mgr.x --cap mon 'allow profile mgr' --cap osd 'allow *' \
    --cap mds 'allow *' >/dev/null
  for ((i = 0; i < osds; i++)); do
    ceph-authtool "$kr" --gen-key -n "osd.$i" --cap mon 'allow profile osd' \
      --cap mgr 'allow profile osd' --cap osd 'allow *' >/dev/null
  done

  fsid=$(new_uuid)
  local uuids=()
  for ((i = 0; i < osds; i++)); do uuids+=("$(new_uuid)"); done

  # OSD mkfs (the slow part: BlueStore creates its file and its RocksDB) needs no
  # monitor when told not to fetch its config from one: run it for every OSD in the
  # background while the monitor comes up (and perhaps moves to another port).
  port=$(free_port)
  write_conf "$dir" "$fsid" "$port" "$size" "$osd_gib"
  local mkfs_pids=()
  for ((i = 0; i < osds; i++)); do
    mkdir -p "$dir/osd.$i"
    ceph-osd -c "$dir/ceph.conf" -i "$i" --mkfs --no-mon-config --osd-uuid "${uuids[$i]}" \
      >"$dir/log/osd.$i.mkfs.log" 2>&1 &
    mkfs_pids+=($!)
  done

  # The monitor: its port is fixed in the monmap, so a port taken between the check
  # and the bind means a new monmap and another try.
  local attempt mon_ok=0
  for attempt in 1 2 3; do
    rm -rf "$dir/mon.a" "$dir/monmap"
    monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$port]" "$dir/monmap" >/dev/null
    ceph-mon -c "$dir/ceph.conf" --mkfs -i a --monmap "$dir/monmap" --keyring "$kr" \
      >"$dir/log/mon.a.mkfs.log" 2>&1 || { log_tail "$dir/log/mon.a.mkfs.log"; die "ceph-mon --mkfs failed"; }
    # ceph-mon forks; the parent exits once the daemon has bound its port (or failed).
    if ceph-mon -c "$dir/ceph.conf" -i a >>"$dir/log/mon.a.start.log" 2>&1; then
      mon_ok=1
      break
    fi
    say "ceph-mon did not start on port $port (attempt $attempt)"
    log_tail "$dir/log/mon.a.start.log"
    log_tail "$dir/log/mon.a.log"
    port=$(free_port)
    write_conf "$dir" "$fsid" "$port" "$size" "$osd_gib"
  done
  [ "$mon_ok" -eq 1 ] || die "ceph-mon did not start"
  say "mon up on 127.0.0.1:$port ($(($(now_ms) - t0)) ms)"

  # OSD ids, the pool and its application: one ceph process reads the commands from
  # stdin (each ceph start costs about 0.2 s). The PGs get created once OSDs boot.
  {
    for ((i = 0; i < osds; i++)); do echo "osd new ${uuids[$i]} $i"; done
    echo "osd pool create $pool 8 8 replicated"
    echo "osd pool application enable $pool $pool_app"
  } | timeout 60 ceph -c "$dir/ceph.conf" >"$dir/log/setup.log" 2>&1 ||
    { log_tail "$dir/log/setup.log"; die "cluster setup commands failed"; }

  if [ "$mgr" -eq 1 ]; then
    mkdir -p "$dir/mgr.x"
    ceph-mgr -c "$dir/ceph.conf" -i x >>"$dir/log/mgr.x.start.log" 2>&1 ||
      { log_tail "$dir/log/mgr.x.start.log"; log_tail "$dir/log/mgr.x.log"; die "ceph-mgr did not start"; }
  fi

  for ((i = 0; i < osds; i++)); do
    wait "${mkfs_pids[$i]}" || { log_tail "$dir/log/osd.$i.mkfs.log"; die "ceph-osd --mkfs of osd.$i failed"; }
  done
  say "OSD mkfs done ($(($(now_ms) - t0)) ms)"
  # Each ceph-osd returns once its daemon has initialised (about 3 s): start them at once.
  local start_pids=()
  for ((i = 0; i < osds; i++)); do
    ceph-osd -c "$dir/ceph.conf" -i "$i" >>"$dir/log/osd.$i.start.log" 2>&1 &
    start_pids+=($!)
  done
  for ((i = 0; i < osds; i++)); do
    wait "${start_pids[$i]}" || {
      log_tail "$dir/log/osd.$i.start.log"
      log_tail "$dir/log/osd.$i.log"
      die "ceph-osd osd.$i did not start"
    }
  done

  # Ready when a write to the new pool completes (its PGs are active). Meanwhile, a
  # daemon that dies fails the start at once.
  local probe="$dir/run/ready-probe" rados_pid deadline
  echo ready >"$probe"
  timeout "$ready_timeout_s" rados -c "$dir/ceph.conf" -p "$pool" put ready-probe "$probe" \
    >"$dir/log/ready.log" 2>&1 &
  rados_pid=$!
  deadline=$(($(now_ms) + ready_timeout_s * 1000))
  while kill -0 "$rados_pid" 2>/dev/null; do
    for f in "$dir"/run/*.pid; do
      [ -f "$f" ] || continue
      if ! kill -0 "$(cat "$f")" 2>/dev/null; then
        local name
        name=$(basename "$f" .pid)
        log_tail "$dir/log/$name.log"
        die "$name exited during start"
      fi
    done
    [ "$(now_ms)" -lt "$deadline" ] || break
    sleep 0.1
  done
  wait "$rados_pid" || { log_tail "$dir/log/ready.log"; die "the pool $pool did not accept a write within ${ready_timeout_s}s"; }
  rados -c "$dir/ceph.conf" -p "$pool" rm ready-probe >/dev/null 2>&1 || true
  rm -f "$probe"

  {
    echo "CEPH_CONF=$dir/ceph.conf"
    echo "CEPH_ID=admin"
    echo "CEPH_KEYRING=$kr"
    echo "CEPH_POOL=$pool"
    echo "CEPH_MON_HOST=v2:127.0.0.1:$port"
  } >"$dir/env"
  trap - EXIT
  say "ready: $osds OSD(s)$([ "$mgr" -eq 1 ] && echo ', mgr'), pool $pool ($(($(now_ms) - t0)) ms)"
  cat "$dir/env"
}

cmd_stop() {
  [ $# -eq 1 ] || usage
  local dir=$1
  [ -d "$dir" ] || return 0
  dir=$(cd "$dir" && pwd)
  if [ -n "$(ls -A "$dir")" ] && [ ! -f "$dir/$marker" ]; then
    die "$dir was not made by $prog; not touching it"
  fi
  stop_cluster "$dir"
}

cmd_env() {
  [ $# -eq 1 ] || usage
  local dir=$1
  [ -f "$dir/env" ] || die "$dir: no cluster was started there (or it was stopped)"
  [ -n "$(cluster_pids "$(cd "$dir" && pwd)")" ] || die "$dir: the cluster is not running"
  cat "$dir/env"
}

# Hidden: the watchdog of `start --owner-pid`. Polls the owner (pid and start time, so
# a recycled pid does not count) and stops the cluster once it is gone.
cmd_watch() {
  local dir=$1 owner=$2 start_time=$3
  while [ "$(awk '{print $22}' "/proc/$owner/stat" 2>/dev/null || true)" = "$start_time" ]; do
    [ -f "$dir/watchdog.pid" ] && [ "$(cat "$dir/watchdog.pid" 2>/dev/null)" = "$$" ] || exit 0
    sleep 1
  done
  stop_cluster "$dir"
}

[ $# -ge 1 ] || usage
sub=$1
shift
case "$sub" in
  start) cmd_start "$@" ;;
  stop) cmd_stop "$@" ;;
  env) cmd_env "$@" ;;
  _watch) cmd_watch "$@" ;;
  -h | --help | help) usage ;;
  *) die "unknown command '$sub' (start, stop, env)" ;;
esac
