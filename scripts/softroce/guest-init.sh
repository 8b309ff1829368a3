#!/bin/bash
# peercm soft-RoCE guest init: PID 1 inside each lane VM after the initramfs switch_roots into
# the host's root filesystem (read-only 9p; /tmp and /run are tmpfs; the lane dir is a read-write
# 9p share mounted at the same absolute path it has on the host). run-lane.sh copies this file
# into the lane dir, so it is a normal script, not baked into the initramfs.
#
# It reads peercm.node and peercm.lane from the kernel command line and the node's NIC plan from
# "$LANE/nodes/$NODE.conf" (written by run-lane.sh), then:
#   - brings up lo and every ethK (renaming NICs by MAC if probe order differs),
#   - assigns 10.77.<cable>.<nodenum>/24, loads rdma_rxe and rdma_ucm, creates rxeK on ethK,
#   - waits for every port ACTIVE and its RoCEv2 IPv4-mapped GID,
#   - writes "$LANE/out/$NODE.env" (KEY=VALUE lines, sourceable),
#   - runs "$LANE/$NODE.sh" (bash, under timeout; if absent the node idles until the others are
#     done) with that environment, output to
#     "$LANE/out/$NODE.log", exit code to "$LANE/out/$NODE.rc" (written then renamed),
#   - signals "$LANE/sync/done.$NODE" (and "$LANE/sync/abort" if it failed), powers the VM off.
# As PID 1 it runs the real work ("--main") in a child shell, so nothing can make PID 1 exit
# (which would panic the kernel): whatever happens, an rc file is written and the VM powers off.
set -euo pipefail
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/tmp LANG=C LC_ALL=C

NODE="" LANE=""
read -r -a cmdline </proc/cmdline
for a in "${cmdline[@]}"; do
  case "$a" in
    peercm.node=*) NODE=${a#peercm.node=} ;;
    peercm.lane=*) LANE=${a#peercm.lane=} ;;
  esac
done

UP=""
uptime_s() { local _r; read -r UP _r </proc/uptime; } # sets UP (seconds since boot), no fork
log() { uptime_s; printf 'guest-init[%s %ss]: %s\n' "${NODE:-?}" "$UP" "$*" >/dev/console; }
# Write a file atomically on the lane share (readers on the host or in other VMs never see it half written).
put() { # put PATH CONTENT
  printf '%s\n' "$2" >"$1.tmp.$NODE.$$" && mv -f "$1.tmp.$NODE.$$" "$1"
}

if [ "${1:-}" != "--main" ]; then
  # PID 1: supervise, then power off. No command here may abort the script.
  set +e
  bash "$0" --main
  rc=$?
  if [ -n "$LANE" ] && [ -d "$LANE/out" ] && [ -n "$NODE" ] && [ ! -f "$LANE/out/$NODE.rc" ]; then
    log "setup failed (exit $rc) before the node script ran"
    put "$LANE/out/$NODE.rc" "$((rc == 0 ? 200 : rc))"
    put "$LANE/sync/abort" "$NODE setup-failed rc=$rc"
  fi
  sync
  timeout 5 busybox poweroff -f
  sleep 10
  echo o >/proc/sysrq-trigger
  sleep 3600
fi

# ---------------------------------------------------------------------------------------------
# --main: everything below runs in a child of PID 1.
fail() {
  log "FATAL: $*"
  [ -d "$LANE/out" ] && printf 'guest-init: setup failed: %s\n' "$*" >>"$LANE/out/$NODE.log"
  exit 200
}

if [ -z "$NODE" ] || [ -z "$LANE" ]; then
  fail "peercm.node/peercm.lane missing from /proc/cmdline"
fi
conf=$LANE/nodes/$NODE.conf
[ -f "$conf" ] || fail "$conf missing"
# shellcheck source=/dev/null
. "$conf"
for v in NODE_NUM NICS NODE_TIMEOUT LANE_NODES LANE_SCRIPT_NODES; do
  [ -n "${!v:-}" ] || fail "$conf does not set $v"
done

uptime_s
t_init=$UP
log "guest-init started"
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts 2>/dev/null || true
mount -t tmpfs -o mode=1777 tmpfs /dev/shm 2>/dev/null || true
echo "$NODE" >/proc/sys/kernel/hostname 2>/dev/null || true
ulimit -l unlimited 2>/dev/null || log "warning: cannot raise RLIMIT_MEMLOCK"
ln -sfn "$LANE" /run/lane # stable alias for the lane dir inside the guest
# --- NICs: find each by MAC, make sure NIC k is named ethK -----------------------------------
nic_by_mac() {
  local d
  for d in /sys/class/net/*; do
    local a=""
    read -r a <"$d/address" 2>/dev/null || continue
    if [ "$a" = "$1" ]; then echo "${d##*/}"; return 0; fi
  done
  return 1
}
# Optional management NICs (run-lane.sh --mgmt): plain IP, no rxe, named mgmt0, mgmt1, ... Renamed
# first, so the cable NICs below can take the ethK names they may have had.
MGMT_NICS=${MGMT_NICS:-0}
for ((k = 0; k < MGMT_NICS; k++)); do
  mac_var=MGMT_MAC_$k
  cur=$(nic_by_mac "${!mac_var}") || fail "no management NIC with MAC ${!mac_var}"
  if [ "$cur" != "mgmt$k" ]; then timeout 5 ip link set dev "$cur" name "mgmt$k" || fail "rename $cur to mgmt$k"; fi
done
renames=0
for ((k = 0; k < NICS; k++)); do
  mac_var=NIC_MAC_$k
  cur=$(nic_by_mac "${!mac_var}") || fail "no NIC with MAC ${!mac_var}"
  if [ "$cur" != "eth$k" ]; then
    timeout 5 ip link set dev "$cur" name "tmpnic$k" || fail "rename $cur"
    renames=1
  fi
done
if [ "$renames" = 1 ]; then
  for ((k = 0; k < NICS; k++)); do
    if [ -e "/sys/class/net/tmpnic$k" ]; then
      timeout 5 ip link set dev "tmpnic$k" name "eth$k" || fail "rename tmpnic$k"
    fi
  done
fi
# One `ip -batch` and one `rdma -b` process instead of one per command: under TCG each
# exec of a dynamically linked binary over 9p costs a few hundred ms.
ipcmds="link set lo up"$'\n'
for ((k = 0; k < NICS; k++)); do
  ip_var=NIC_IP_$k
  ipcmds+="addr add ${!ip_var}/24 dev eth$k"$'\n'"link set eth$k up"$'\n'
done
for ((k = 0; k < MGMT_NICS; k++)); do
  ip_var=MGMT_IP_$k
  ipcmds+="addr add ${!ip_var}/24 dev mgmt$k"$'\n'"link set mgmt$k up"$'\n'
done
printf '%s' "$ipcmds" | timeout 10 ip -batch - || fail "ip -batch failed: $ipcmds"
log "nics up"

# --- soft-RoCE devices (none on a node without cables, e.g. n3 with run-lane.sh --tcp-backup) --
if [ "$NICS" -gt 0 ]; then
  timeout 30 modprobe -a rdma_rxe rdma_ucm ||
    fail "modprobe rdma_rxe rdma_ucm (modules come from the host's /lib/modules/$(uname -r) over 9p)"
  log "modules loaded"
  rdmacmds=""
  for ((k = 0; k < NICS; k++)); do
    rdmacmds+="link add rxe$k type rxe netdev eth$k"$'\n'
  done
  printf '%s' "$rdmacmds" | timeout 20 rdma -b - || fail "rdma link add failed: $rdmacmds"
fi

# Fork-free helpers: every process spawned under TCG costs milliseconds of the single vCPU.
mkfifo /tmp/.guest-init-sleep.$$ && exec 7<>/tmp/.guest-init-sleep.$$ && rm -f /tmp/.guest-init-sleep.$$
nap() { read -r -t "$1" -u 7 _ || true; }
wait_until() { # wait_until TIMEOUT_S COMMAND... (polls every 20 ms)
  local deadline t
  t=${EPOCHREALTIME/./}
  deadline=$((${t:0:-3} + $1 * 1000))
  shift
  until "$@"; do
    t=${EPOCHREALTIME/./}
    [ "${t:0:-3}" -lt "$deadline" ] || return 1
    nap 0.02
  done
}
# shellcheck disable=SC2317 # called through wait_until
port_active() {
  local s=""
  read -r s <"/sys/class/infiniband/$1/ports/1/state" 2>/dev/null || true
  [[ "$s" == *ACTIVE* ]]
}
# Sets GIDX to the index of the RoCE v2 GID mapping IPv4 address $2 (::ffff:a.b.c.d) on device $1.
GIDX=""
# shellcheck disable=SC2317 # called through wait_until
find_roce_v2_gid() {
  local dev=$1 ip=$2 want g i t a b c d v
  GIDX=""
  IFS=. read -r a b c d <<<"$ip"
  printf -v want '0000:0000:0000:0000:0000:ffff:%02x%02x:%02x%02x' "$a" "$b" "$c" "$d"
  for g in /sys/class/infiniband/"$dev"/ports/1/gids/*; do
    v=""
    read -r v <"$g" 2>/dev/null || continue
    [ "$v" = "$want" ] || continue
    i=${g##*/} t=""
    read -r t <"/sys/class/infiniband/$dev/ports/1/gid_attrs/types/$i" 2>/dev/null || continue
    case "$t" in *v2*) GIDX=$i; return 0 ;; esac
  done
  return 1
}

log "rxe devices created"
envf=$LANE/out/$NODE.env
{
  echo "NODE=$NODE"
  echo "NODE_NUM=$NODE_NUM"
  echo "LANE=$LANE"
  echo "LANE_NODES=\"$LANE_NODES\""
  echo "LANE_SCRIPT_NODES=\"$LANE_SCRIPT_NODES\""
  echo "NODE_TIMEOUT=$NODE_TIMEOUT"
  echo "KERNEL=$(uname -r)"
  if [ "$MGMT_NICS" -gt 0 ]; then
    echo "MGMT_NETDEV=mgmt0"
    echo "MGMT_IP=$MGMT_IP_0"
    echo "PEER_MGMT_IP=$MGMT_PEER_IP_0"
    peers=""
    for ((k = 0; k < MGMT_NICS; k++)); do
      ip_var=MGMT_IP_$k peer_ip_var=MGMT_PEER_IP_$k peer_var=MGMT_PEER_NODE_$k
      peers="${peers:+$peers }${!peer_var}"
      echo "MGMT_NETDEV_${!peer_var}=mgmt$k"
      echo "MGMT_IP_TO_${!peer_var}=${!ip_var}"
      echo "PEER_MGMT_IP_${!peer_var}=${!peer_ip_var}"
    done
    echo "MGMT_PEERS=\"$peers\""
  fi
} >"$envf.tmp"
cables=""
for ((k = 0; k < NICS; k++)); do
  cable_var=NIC_CABLE_$k ip_var=NIC_IP_$k peer_var=NIC_PEER_IP_$k peern_var=NIC_PEER_NODE_$k
  c=${!cable_var}
  wait_until 15 port_active "rxe$k" || fail "rxe$k port not ACTIVE: $(cat "/sys/class/infiniband/rxe$k/ports/1/state" 2>&1)"
  wait_until 15 find_roce_v2_gid "rxe$k" "${!ip_var}" || fail "rxe$k: no RoCE v2 GID for ${!ip_var}"
  gidx=$GIDX
  read -r gid <"/sys/class/infiniband/rxe$k/ports/1/gids/$gidx"
  cables="${cables:+$cables }$c"
  {
    echo "DEV_$c=rxe$k"
    echo "NETDEV_$c=eth$k"
    echo "IP_$c=${!ip_var}"
    echo "PEER_IP_$c=${!peer_var}"
    echo "PEER_NODE_$c=${!peern_var}"
    echo "GID_IDX_$c=$gidx"
    echo "GID_$c=$gid"
  } >>"$envf.tmp"
done
uptime_s
t_ready=$UP
{
  echo "CABLES=\"$cables\""
  echo "T_INIT=$t_init"
  echo "T_READY=$t_ready"
} >>"$envf.tmp"
mv -f "$envf.tmp" "$envf" || fail "write $envf"
log "ready at ${t_ready}s: cables $cables"

# --- the node's script -----------------------------------------------------------------------
set -a
# shellcheck source=/dev/null
. "$envf"
set +a
export LANE_LIB=$LANE/lane-lib.sh NODE_TIMEOUT LANE_SCRIPT_NODES
cd /tmp || true
rc=0
script=$LANE/$NODE.sh
if [ ! -f "$script" ]; then
  # No script for this node (e.g. n3 without n3.sh): stay up as a passive peer until every
  # other node's script has finished.
  script=/run/idle-node.sh
  cat >"$script" <<'IDLE'
. "$LANE_LIB"
echo "no $NODE.sh: idling until the other nodes finish"
for n in $LANE_SCRIPT_NODES; do
  [ "$n" = "$NODE" ] || lane_wait_done "$n" "$((NODE_TIMEOUT - 5))"
done
IDLE
fi
timeout -k 5 "$NODE_TIMEOUT" bash "$script" </dev/null >>"$LANE/out/$NODE.log" 2>&1 || rc=$?
if [ "$rc" = 124 ]; then
  echo "guest-init: $NODE.sh timed out after ${NODE_TIMEOUT}s" >>"$LANE/out/$NODE.log"
fi
put "$LANE/out/$NODE.rc" "$rc"
put "$LANE/sync/done.$NODE" "$rc"
# A failed node makes every lane_wait/lane_barrier elsewhere fail fast instead of timing out.
if [ "$rc" != 0 ] && [ ! -e "$LANE/sync/abort" ]; then put "$LANE/sync/abort" "$NODE rc=$rc"; fi
log "script exit $rc"
exit 0
