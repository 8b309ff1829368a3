# Helpers for soft-RoCE lane node scripts. Source it from n1.sh/n2.sh/n3.sh:
#     . "$LANE_LIB"          # (= "$LANE/lane-lib.sh"; run-lane.sh copies it there)
# shellcheck shell=bash
#
# Sync between nodes goes through files in "$LANE/sync/" on the shared lane dir; host-side fault
# injection through request files in "$LANE/ctl/" that run-lane.sh polls (see
# docs/softroce-lane.md for the protocol). Every wait has a timeout and returns non-zero on
# expiry, so `set -e` scripts fail instead of hanging.

: "${LANE:?LANE is not set (run node scripts through run-lane.sh)}"
: "${NODE:?NODE is not set}"
LANE_POLL=${LANE_POLL:-0.05}

# Fork-free time and sleep: under TCG every spawned process costs milliseconds of the one vCPU.
lane_ms() { local t=${EPOCHREALTIME/./}; echo "${t:0:-3}"; }
# lane_now: sets LANE_NOW to the current time in ms (no subshell).
lane_now() { local t=${EPOCHREALTIME/./}; LANE_NOW=${t:0:-3}; }
if [ -z "${LANE_SLEEP_FD:-}" ]; then
  _lane_fifo=$(mktemp -u /tmp/.lane-sleep.XXXXXX)
  mkfifo "$_lane_fifo" && exec {LANE_SLEEP_FD}<>"$_lane_fifo" && rm -f "$_lane_fifo"
  unset _lane_fifo
fi
# lane_sleep SECONDS (fractions allowed)
lane_sleep() { read -r -t "$1" -u "$LANE_SLEEP_FD" _ || true; }
lane_log() {
  local up _r
  read -r up _r </proc/uptime
  printf '[%s %ss] %s\n' "$NODE" "$up" "$*" >&2
}

# lane_put PATH CONTENT: write PATH atomically (temp file then rename).
lane_put() {
  printf '%s\n' "$2" >"$1.tmp.$NODE.$$" && mv -f "$1.tmp.$NODE.$$" "$1"
}

# lane_signal NAME: announce NAME to every node (creates $LANE/sync/NAME).
lane_signal() {
  lane_put "$LANE/sync/$1" "$NODE $(lane_ms)"
}

# lane_wait NAME [TIMEOUT_S=60]: wait until some node has signalled NAME. Fails at once when
# another node's script has failed ($LANE/sync/abort exists, written by guest-init.sh).
lane_wait() {
  local name=$1 t=${2:-60} deadline
  lane_now
  deadline=$((LANE_NOW + t * 1000))
  while [ ! -e "$LANE/sync/$name" ]; do
    if [ -e "$LANE/sync/abort" ]; then
      lane_log "lane_wait: '$name' abandoned, a node failed (sync/abort: $(head -n1 "$LANE/sync/abort" 2>/dev/null))"
      return 1
    fi
    lane_now
    if [ "$LANE_NOW" -ge "$deadline" ]; then
      lane_log "lane_wait: timed out after ${t}s waiting for '$name'"
      return 1
    fi
    lane_sleep "$LANE_POLL"
  done
}

# lane_barrier NAME [TIMEOUT_S=60] [NODE...]: every listed node (default: every node that has a
# script, $LANE_SCRIPT_NODES; an idle n3 without n3.sh takes no part) reaches NAME before any
# goes on.
lane_barrier() {
  local name=$1 t=${2:-60} n nodes
  shift $(($# < 2 ? $# : 2))
  nodes=${*:-${LANE_SCRIPT_NODES:-$LANE_NODES}}
  lane_signal "$name.$NODE"
  for n in $nodes; do
    lane_wait "$name.$n" "$t" || return 1
  done
}

# lane_wait_done NODE [TIMEOUT_S=60]: wait until NODE's script has finished (any exit code).
lane_wait_done() { lane_wait "done.$1" "${2:-60}"; }

# lane_ctl REQUEST [TIMEOUT_S=15]: ask the host runner for REQUEST and wait for its ack.
# REQUEST is one of  <node>-cable<k>-off | <node>-cable<k>-on | <node>-stop | <node>-cont.
# The request file holds a token; the host answers in REQUEST.ack with the line
#   "ok|error <token> <host_ms> <detail>"
# (acks are overwritten, never deleted: the token tells this request's ack from an old one).
# Prints the ack line; returns non-zero on error or timeout. Costs one exec (mv) in the guest.
lane_ctl() {
  local req=$1 t=${2:-15} deadline ack tok line=""
  ack="$LANE/ctl/$req.ack"
  tok="$NODE.$$.${EPOCHREALTIME/./}"
  lane_put "$LANE/ctl/$req" "$tok"
  lane_now
  deadline=$((LANE_NOW + t * 1000))
  while :; do
    if [ -e "$ack" ]; then
      read -r line <"$ack" || true
      [[ "$line" == *" $tok "* ]] && break
    fi
    lane_now
    if [ "$LANE_NOW" -ge "$deadline" ]; then
      lane_log "lane_ctl: no ack for '$req' after ${t}s (is the host runner polling?)"
      return 1
    fi
    lane_sleep "$LANE_POLL"
  done
  printf '%s\n' "$line"
  case "$line" in ok\ *) return 0 ;; *) lane_log "lane_ctl: '$req' failed: $line"; return 1 ;; esac
}

# lane_cable off|on CABLE [NODE]: cut or restore CABLE at NODE's end (default: this node) with
# QEMU's `set_link` on the host (the NIC loses carrier; rxe raises PORT_ERR on that HCA).
lane_cable() { lane_ctl "${3:-$NODE}-cable$2-$1" >/dev/null; }

# lane_vm stop|cont NODE: freeze or resume NODE's whole VM (QEMU monitor stop/cont).
lane_vm() { lane_ctl "$2-$1" >/dev/null; }

# lane_port_state DEV: prints the port's state word (ACTIVE, DOWN, ...).
lane_port_state() {
  local s=""
  read -r s <"/sys/class/infiniband/$1/ports/1/state" 2>/dev/null || { echo MISSING; return 1; }
  echo "${s#*: }"
}

# lane_wait_port DEV STATE [TIMEOUT_S=10]: wait until DEV's port 1 is in STATE; prints ms waited.
lane_wait_port() {
  local dev=$1 want=$2 t=${3:-10} start deadline
  start=$(lane_ms)
  deadline=$((start + t * 1000))
  until [ "$(lane_port_state "$dev")" = "$want" ]; do
    lane_now
    if [ "$LANE_NOW" -ge "$deadline" ]; then
      lane_log "lane_wait_port: $dev still $(lane_port_state "$dev") after ${t}s (wanted $want)"
      return 1
    fi
    lane_sleep "$LANE_POLL"
  done
  echo $(($(lane_ms) - start))
}

# lane_wait_listen PORT [TIMEOUT_S=20]: wait until a local TCP socket listens on PORT
# (e.g. a perftest server's out-of-band port) before signalling clients.
lane_wait_listen() {
  local port=$1 t=${2:-20} deadline
  lane_now
  deadline=$((LANE_NOW + t * 1000))
  until timeout 5 ss -Hltn "sport = :$port" 2>/dev/null | grep -q .; do
    lane_now
    if [ "$LANE_NOW" -ge "$deadline" ]; then
      lane_log "lane_wait_listen: nothing listens on tcp port $port after ${t}s"
      return 1
    fi
    lane_sleep "$LANE_POLL"
  done
}

# lane_abort [REASON]: make every other node's lane_wait fail now (a node that exits non-zero
# does this automatically when its script ends).
lane_abort() {
  [ -e "$LANE/sync/abort" ] || lane_put "$LANE/sync/abort" "$NODE ${1:-aborted}"
}

# lane_result KEY VALUE...: record a figure in $LANE/out/$NODE.results ("KEY VALUE..." lines).
lane_result() {
  local k=$1
  shift
  printf '%s %s\n' "$k" "$*" >>"$LANE/out/$NODE.results"
}
