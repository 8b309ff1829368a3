#!/usr/bin/env bash
# Generic soft-RoCE lane runner: boots 2 or 3 QEMU/TCG VMs (Debian kernel with rdma_rxe), cables
# them point to point, runs one script per node and collects the results.
#
#   scripts/softroce/run-lane.sh [--nodes 2|3] [--timeout SECS] [--mgmt] [--tcp-backup] LANE_DIR
#
# LANE_DIR (outside /tmp: the guests cover the host's /tmp with tmpfs) holds n1.sh, n2.sh and,
# with --nodes 3, optionally n3.sh (without it n3 idles until n1 and n2 are done). Each runs
# under bash inside its VM with NODE, LANE, LANE_LIB, LANE_NODES, CABLES and, per cable <c>,
# DEV_<c> NETDEV_<c> IP_<c> PEER_IP_<c> PEER_NODE_<c> GID_IDX_<c> GID_<c>. --timeout (default
# 120 s) bounds each VM; node scripts get 15 s less. --mgmt adds management links (plain IP, no
# rxe on them, never cut by lane_cable) for bootstrap/control traffic that must survive cable
# cuts: n1.mgmt0 <-> n2.mgmt0 (10.77.99.<node>/24) and, with --nodes 3, n1.mgmt1 <-> n3.mgmt0
# (10.77.98.<node>/24) and n2.mgmt1 <-> n3.mgmt1 (10.77.97.<node>/24). Node scripts get
# MGMT_NETDEV, MGMT_IP and PEER_MGMT_IP (their first management link), MGMT_PEERS, and per
# management peer <p> MGMT_NETDEV_<p>, MGMT_IP_TO_<p> and PEER_MGMT_IP_<p>. --tcp-backup (needs
# --nodes 3 --mgmt) leaves out cables 2 and 3: n3 has no rxe device at all and reaches n1 and n2
# over the management links only (a TCP-only backup partner). Env: PEERCM_SOFTROCE_CACHE (guest
# image cache), PEERCM_LANE_ABORT_GRACE (s, default 15: how long the others may run after a
# failure).
#
# Topology (cable numbers; IPs are 10.77.<cable>.<node number>/24):
#     n1.eth0 <-- cable 0 --> n2.eth0
#     n1.eth1 <-- cable 1 --> n2.eth1
#     n1.eth2 <-- cable 2 --> n3.eth0      (--nodes 3 only, not with --tcp-backup)
#     n2.eth2 <-- cable 3 --> n3.eth1      (--nodes 3 only, not with --tcp-backup)
#     n1.mgmt0 <-- mgmt ---> n2.mgmt0      (--mgmt only; plain IP, no rxe)
#     n1.mgmt1 <-- mgmt ---> n3.mgmt0      (--mgmt --nodes 3)
#     n2.mgmt1 <-- mgmt ---> n3.mgmt1      (--mgmt --nodes 3)
# rxeK sits on ethK. Cables are QEMU `-netdev dgram` over host unix datagram sockets (no host IP
# traffic at all). Each VM has a QEMU monitor on a unix socket for fault injection, which node
# scripts request through "$LANE/ctl/" (see lane-lib.sh and docs/softroce-lane.md).
#
# Results: LANE_DIR/out/<node>.{log,rc,env,console,qemu.log,results}, out/ctl.log, out/summary.
# Exit status: 0 only if every VM powered off in time and every node script exited 0.
# Needs: scripts/softroce/setup.sh once (Debian packages). Never uses KVM, never any host network.
set -euo pipefail
# shellcheck source=common.sh
. "$(dirname "$0")/common.sh"

usage() { sed -n '2,38p' "$0" | sed 's/^# \{0,1\}//'; }

nodes=2
vm_timeout=120
mgmt=0
tcp_backup=0
lane=""
while [ $# -gt 0 ]; do
  case "$1" in
    --nodes) nodes=${2:?--nodes needs 2 or 3}; shift 2 ;;
    --timeout) vm_timeout=${2:?--timeout needs seconds}; shift 2 ;;
    --mgmt) mgmt=1; shift ;;
    --tcp-backup) tcp_backup=1; shift ;;
    -h | --help) usage; exit 0 ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) [ -z "$lane" ] || die "only one LANE_DIR allowed"; lane=$1; shift ;;
  esac
done
[ -n "$lane" ] || { usage >&2; exit 2; }
case "$nodes" in 2 | 3) ;; *) die "--nodes must be 2 or 3, not '$nodes'" ;; esac
if [ "$tcp_backup" = 1 ] && { [ "$nodes" != 3 ] || [ "$mgmt" != 1 ]; }; then
  die "--tcp-backup needs --nodes 3 --mgmt (n3 is then reachable over the management links only)"
fi
if ! [[ "$vm_timeout" =~ ^[0-9]+$ ]] || [ "$vm_timeout" -lt 20 ]; then die "--timeout must be an integer >= 20 (seconds)"; fi
[ -d "$lane" ] || die "lane dir $lane does not exist"
lane=$(abs_dir "$lane")
under_tmp "$lane" && die "lane dir $lane is under /tmp, which the guests cover with tmpfs; use a dir elsewhere (e.g. under $SOFTROCE_CACHE)"
[[ "$lane" =~ ^[A-Za-z0-9._/+-]+$ ]] || die "lane dir path '$lane' may only contain [A-Za-z0-9._/+-] (it goes on the kernel command line and into QEMU options)"
[ ${#lane} -le 400 ] || die "lane dir path is too long for the kernel command line"

node_list=(n1 n2)
[ "$nodes" = 3 ] && node_list+=(n3)
for n in n1 n2; do
  [ -f "$lane/$n.sh" ] || die "$lane/$n.sh missing (n1.sh and n2.sh are required)"
done
if [ "$nodes" = 3 ] && [ ! -f "$lane/n3.sh" ]; then
  say "no n3.sh: n3 boots as a passive peer and idles until n1 and n2 finish"
fi

for c in qemu-system-x86_64 socat timeout flock; do
  command -v "$c" >/dev/null 2>&1 || die "$c not found: run scripts/softroce/setup.sh"
done
QBOOT=/usr/share/qemu/qboot.rom
[ -r "$QBOOT" ] || die "$QBOOT missing: run scripts/softroce/setup.sh"

exec 8>"$lane/.run-lane.lock"
flock -n 8 || die "another run-lane.sh is using $lane"

# --- guest image ---------------------------------------------------------------------------
"$SOFTROCE_DIR/build-guest.sh" >/dev/null
KERNEL=$SOFTROCE_CACHE/guest/vmlinux
INITRD=$SOFTROCE_CACHE/guest/initramfs.cpio.gz
if [ ! -s "$KERNEL" ] || [ ! -s "$INITRD" ]; then die "guest image missing under $SOFTROCE_CACHE/guest"; fi

# --- topology ------------------------------------------------------------------------------
# cable c: endpoint A = CA_NODE[c].eth CA_NIC[c], endpoint B = CB_NODE[c].eth CB_NIC[c]
CA_NODE=(n1 n1 n1 n2) CA_NIC=(0 1 2 2)
CB_NODE=(n2 n2 n3 n3) CB_NIC=(0 1 0 1)
ncables=2
if [ "$nodes" = 3 ] && [ "$tcp_backup" = 0 ]; then ncables=4; fi
node_num() { echo "${1#n}"; }
mac_of() { printf '52:54:00:77:%02x:%02x' "$1" "$(node_num "$2")"; } # mac_of CABLE NODE
# Management links (--mgmt): link j joins MA_NODE[j] and MB_NODE[j] on 10.77.<MGMT_NET[j]>.<node>/24,
# MAC 52:54:00:77:<MGMT_NET[j] in hex>:<node>, QEMU netdev id m<j>. A node names its management
# NICs mgmt0, mgmt1, ... in link order.
MA_NODE=(n1 n1 n2) MB_NODE=(n2 n3 n3) MGMT_NET=(99 98 97)
nmgmt=0
if [ "$mgmt" = 1 ]; then nmgmt=$((nodes == 3 ? 3 : 1)); fi
declare -A MGMT_LINKS # node -> "0 1 ..." management link numbers

# --- lane dir ------------------------------------------------------------------------------
rm -rf "$lane/out" "$lane/sync" "$lane/ctl" "$lane/nodes"
mkdir -p "$lane/out" "$lane/sync" "$lane/ctl" "$lane/nodes"
cp "$SOFTROCE_DIR/guest-init.sh" "$SOFTROCE_DIR/lane-lib.sh" "$lane/"
node_timeout=$((vm_timeout - 15))

script_nodes=()
for n in "${node_list[@]}"; do
  if [ -f "$lane/$n.sh" ]; then script_nodes+=("$n"); fi
done
declare -A NETDEVS # node -> "c0 c1 ..." netdev ids (netdev id cK = cable K)
for n in "${node_list[@]}"; do
  nics=0
  conf=$lane/nodes/$n.conf
  {
    echo "# generated by run-lane.sh"
    echo "NODE_NUM=$(node_num "$n")"
    echo "NODE_TIMEOUT=$node_timeout"
    echo "LANE_NODES=\"${node_list[*]}\""
    echo "LANE_SCRIPT_NODES=\"${script_nodes[*]}\""
  } >"$conf"
  for ((c = 0; c < ncables; c++)); do
    if [ "${CA_NODE[c]}" = "$n" ]; then
      k=${CA_NIC[c]} peer=${CB_NODE[c]}
    elif [ "${CB_NODE[c]}" = "$n" ]; then
      k=${CB_NIC[c]} peer=${CA_NODE[c]}
    else
      continue
    fi
    {
      echo "NIC_CABLE_$k=$c"
      echo "NIC_MAC_$k=$(mac_of "$c" "$n")"
      echo "NIC_IP_$k=10.77.$c.$(node_num "$n")"
      echo "NIC_PEER_IP_$k=10.77.$c.$(node_num "$peer")"
      echo "NIC_PEER_NODE_$k=$peer"
    } >>"$conf"
    NETDEVS[$n]="${NETDEVS[$n]:-} c$c"
    nics=$((nics + 1))
  done
  echo "NICS=$nics" >>"$conf"
  k=0
  for ((j = 0; j < nmgmt; j++)); do
    if [ "${MA_NODE[j]}" = "$n" ]; then
      peer=${MB_NODE[j]}
    elif [ "${MB_NODE[j]}" = "$n" ]; then
      peer=${MA_NODE[j]}
    else
      continue
    fi
    {
      echo "MGMT_MAC_$k=$(mac_of "${MGMT_NET[j]}" "$n")"
      echo "MGMT_IP_$k=10.77.${MGMT_NET[j]}.$(node_num "$n")"
      echo "MGMT_PEER_IP_$k=10.77.${MGMT_NET[j]}.$(node_num "$peer")"
      echo "MGMT_PEER_NODE_$k=$peer"
    } >>"$conf"
    MGMT_LINKS[$n]="${MGMT_LINKS[$n]:-} $j"
    k=$((k + 1))
  done
  echo "MGMT_NICS=$k" >>"$conf"
done

# --- host-only runtime dir (sockets, monitors) ---------------------------------------------
run=$(mktemp -d /tmp/peercm-rxe.XXXXXX)
declare -A VM_PID VM_START VM_END VM_STATUS
ctl_pid=""
cleanup() {
  local p
  for p in "${VM_PID[@]}"; do
    kill -0 "$p" 2>/dev/null && kill "$p" 2>/dev/null
  done
  if [ -n "$ctl_pid" ]; then kill "$ctl_pid" 2>/dev/null || true; fi
  for p in "${VM_PID[@]}" $ctl_pid; do wait "$p" 2>/dev/null || true; done
  rm -rf "$run"
}
trap cleanup EXIT
trap 'say "interrupted"; exit 130' INT TERM

CMDLINE="console=ttyS0 panic=-1 quiet mitigations=off tsc=reliable no_timer_check 8250.nr_uarts=1 audit=0 apparmor=0 security=none random.trust_cpu=on"

start_vm() {
  local n=$1 c peer args=()
  args=(-M pc -accel tcg -bios "$QBOOT" -nic none -m 512 -smp 1 -nographic -no-reboot
    -kernel "$KERNEL" -initrd "$INITRD"
    -append "$CMDLINE peercm.node=$n peercm.lane=$lane"
    -fsdev "local,id=fsh,path=/,security_model=none,readonly=on,multidevs=remap"
    -device "virtio-9p-pci,fsdev=fsh,mount_tag=host"
    -fsdev "local,id=fsl,path=$lane,security_model=none"
    -device "virtio-9p-pci,fsdev=fsl,mount_tag=lane")
  for c in ${NETDEVS[$n]:-}; do
    c=${c#c}
    if [ "${CA_NODE[c]}" = "$n" ]; then peer=${CB_NODE[c]}; else peer=${CA_NODE[c]}; fi
    args+=(-netdev "dgram,id=c$c,local.type=unix,local.path=$run/c$c-$n.sock,remote.type=unix,remote.path=$run/c$c-$peer.sock"
      -device "virtio-net-pci,netdev=c$c,mac=$(mac_of "$c" "$n")")
  done
  for j in ${MGMT_LINKS[$n]:-}; do
    if [ "${MA_NODE[j]}" = "$n" ]; then peer=${MB_NODE[j]}; else peer=${MA_NODE[j]}; fi
    args+=(-netdev "dgram,id=m$j,local.type=unix,local.path=$run/m$j-$n.sock,remote.type=unix,remote.path=$run/m$j-$peer.sock"
      -device "virtio-net-pci,netdev=m$j,mac=$(mac_of "${MGMT_NET[j]}" "$n")")
  done
  args+=(-monitor "unix:$run/$n.mon,server,nowait" -serial "file:$lane/out/$n.console")
  VM_START[$n]=$(now_ms)
  timeout -k 5 "$vm_timeout" qemu-system-x86_64 "${args[@]}" </dev/null >"$lane/out/$n.qemu.log" 2>&1 &
  VM_PID[$n]=$!
}

# --- fault injection: node scripts drop request files in $lane/ctl -------------------------
monitor() { # monitor NODE COMMAND -> QEMU's reply (HMP prints nothing on success)
  printf '%s\n' "$2" | timeout 5 socat -t 0.05 - "UNIX-CONNECT:$run/$1.mon" 2>&1 |
    tr -d '\r' | grep -v -e '^QEMU .* monitor' -e '^(qemu)' || true
}
ctl_handle() { # ctl_handle REQUEST_NAME (protocol: lane-lib.sh lane_ctl, docs/softroce-lane.md)
  local req=$1 n="" cmd="" reply status tok=""
  case "$req" in
    n[1-3]-cable[0-9]*-off | n[1-3]-cable[0-9]*-on)
      n=${req%%-*}
      local rest=${req#*-cable} c state
      c=${rest%-*} state=${rest##*-}
      if [[ " ${NETDEVS[$n]:-} " == *" c$c "* ]]; then cmd="set_link c$c $state"; fi ;;
    n[1-3]-stop) n=${req%%-*} cmd=stop ;;
    n[1-3]-cont) n=${req%%-*} cmd=cont ;;
  esac
  read -r tok <"$lane/ctl/$req" || true
  rm -f "$lane/ctl/$req"
  tok=${tok%%[[:space:]]*}
  if [ -z "$cmd" ] || [ -z "${VM_PID[${n:-x}]:-}" ]; then
    status="error ${tok:--} $(now_ms) unknown or invalid request '$req'"
  else
    reply=$(monitor "$n" "$cmd")
    if [ -n "$reply" ]; then
      status="error ${tok:--} $(now_ms) $n: $cmd: $(echo "$reply" | tr '\n' ' ')"
    else
      status="ok ${tok:--} $(now_ms) $n: $cmd"
    fi
  fi
  printf '%s %s -> %s\n' "$(now_ms)" "$req" "$status" >>"$lane/out/ctl.log"
  printf '%s\n' "$status" >"$lane/ctl/.$req.ack.tmp" && mv -f "$lane/ctl/.$req.ack.tmp" "$lane/ctl/$req.ack"
}
ctl_loop() {
  set +e
  local f name nap
  # sleep without forking: read with a timeout from a FIFO nobody writes to
  mkfifo "$run/.nap" && exec {nap}<>"$run/.nap"
  while :; do
    for f in "$lane"/ctl/*; do
      [ -f "$f" ] || continue
      name=${f##*/}
      case "$name" in *.ack | *.tmp*) continue ;; esac
      ctl_handle "$name"
    done
    read -r -t 0.02 -u "$nap" _
  done
}

# --- run -----------------------------------------------------------------------------------
t0=$(now_ms)
say "booting ${node_list[*]} (timeout ${vm_timeout}s, lane $lane)"
for n in "${node_list[@]}"; do start_vm "$n"; done
ctl_loop &
ctl_pid=$!

# When a node fails, guest-init.sh writes sync/abort; nodes blocked in lane_wait then fail fast.
# Nodes blocked elsewhere (e.g. a server waiting for a client that died) get ABORT_GRACE seconds
# to finish before their VMs are stopped, so a failed run does not sit out the full timeout.
ABORT_GRACE=${PEERCM_LANE_ABORT_GRACE:-15}
abort_deadline=""
declare -A VM_ABORTED
remaining=("${node_list[@]}")
while [ ${#remaining[@]} -gt 0 ]; do
  if [ -z "$abort_deadline" ] && [ -e "$lane/sync/abort" ]; then
    abort_deadline=$(($(now_ms) + ABORT_GRACE * 1000))
    say "a node failed (sync/abort: $(head -n1 "$lane/sync/abort")); stopping the others in ${ABORT_GRACE}s unless they finish"
  fi
  if [ -n "$abort_deadline" ] && [ "$(now_ms)" -gt "$abort_deadline" ]; then
    for n in "${remaining[@]}"; do
      if kill -0 "${VM_PID[$n]}" 2>/dev/null && [ -z "${VM_ABORTED[$n]:-}" ]; then
        VM_ABORTED[$n]=1
        kill "${VM_PID[$n]}" 2>/dev/null || true
      fi
    done
  fi
  still=()
  for n in "${remaining[@]}"; do
    if kill -0 "${VM_PID[$n]}" 2>/dev/null; then
      still+=("$n")
    else
      VM_END[$n]=$(now_ms)
      st=0
      wait "${VM_PID[$n]}" || st=$?
      VM_STATUS[$n]=$st
    fi
  done
  remaining=("${still[@]}")
  [ ${#remaining[@]} -eq 0 ] || sleep 0.1
done
t1=$(now_ms)
kill "$ctl_pid" 2>/dev/null || true
wait "$ctl_pid" 2>/dev/null || true
ctl_pid=""

# --- summary -------------------------------------------------------------------------------
fail=0
summary=$lane/out/summary
{
  printf '%-4s %-8s %-7s %8s %8s  %s\n' node vm rc wall_s ready_s devices
  for n in "${node_list[@]}"; do
    st=${VM_STATUS[$n]}
    if [ -n "${VM_ABORTED[$n]:-}" ]; then
      vm=ABORTED fail=1
    else
      case "$st" in
        0) vm=ok ;;
        124 | 137) vm=TIMEOUT fail=1 ;;
        *) vm="exit$st" fail=1 ;;
      esac
    fi
    rc=missing
    if [ -f "$lane/out/$n.rc" ]; then rc=$(head -n1 "$lane/out/$n.rc"); fi
    [ "$rc" = 0 ] || fail=1
    wall=$(awk -v a="${VM_START[$n]}" -v b="${VM_END[$n]}" 'BEGIN{printf "%.2f", (b-a)/1000}')
    ready=- devs=-
    if [ -f "$lane/out/$n.env" ]; then
      ready=$(sed -n 's/^T_READY=//p' "$lane/out/$n.env")
      devs=$(awk -F= '/^CABLES=/{gsub(/"/,"",$2); nc=split($2,cs," ")} /^DEV_|^NETDEV_|^IP_|^GID_IDX_/{v[$1]=$2}
        END{if(nc==0) printf "no rxe (management links only)"; for(i=1;i<=nc;i++){c=cs[i]; printf "%scable%s:%s/%s/%s/gid%s", (i>1?" ":""), c, v["DEV_" c], v["NETDEV_" c], v["IP_" c], v["GID_IDX_" c]}}' "$lane/out/$n.env")
    fi
    printf '%-4s %-8s %-7s %8s %8s  %s\n' "$n" "$vm" "$rc" "$wall" "$ready" "$devs"
  done
  printf 'total wall %.2f s\n' "$(awk -v a="$t0" -v b="$t1" 'BEGIN{print (b-a)/1000}')"
} >"$summary"
cat "$summary" >&2

if [ "$fail" != 0 ]; then
  for n in "${node_list[@]}"; do
    rc=$(head -n1 "$lane/out/$n.rc" 2>/dev/null || echo missing)
    if [ "$rc" != 0 ] || [ "${VM_STATUS[$n]}" != 0 ]; then
      say "--- $n: last lines of out/$n.console ---"
      tail -n 15 "$lane/out/$n.console" >&2 2>/dev/null || true
      say "--- $n: last lines of out/$n.log ---"
      tail -n 25 "$lane/out/$n.log" >&2 2>/dev/null || true
    fi
  done
  say "FAILED (details in $lane/out/)"
  exit 1
fi
say "ok"
