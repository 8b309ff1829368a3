#!/usr/bin/env bash
# The one-sided write benchmark (issue 9): peercm's write_remote against perftest and iperf3,
# side by side in ONE boot of two soft-RoCE VMs, interleaved round by round. A benchmark, not a
# test: it prints figures and ratios and is not part of scripts/test.sh.
#
#   scripts/softroce/bench-lane.sh [--rounds N]
#
# Per round, on each cable c (rxe0 on cable 0, rxe1 on cable 1), n1 measuring against n2:
#   1. ib_write_bw -s 65536 -n BW_ITERS over rxe<c>;
#   2. peercm: a fresh node pair that sees only rxe<c> (one rail; bootstrap TCP over the
#      management link), BW_ITERS write_remote of 64 KiB with the session's window outstanding;
#   3. ib_write_lat -s 64 -n LAT_ITERS over rxe<c>;
#   4. peercm: a fresh pair again, LAT_ITERS write_remote of 64 B one at a time (call -> Acked);
#   5. the same writes on a bare rdma-link RdmaLink, no peercm node (bench-lane --transport
#      raw-link): rxe's and the link thread's share of the time, without manager and session;
#   6. ib_send_lat -s 64 -e (completion events instead of busy polling; where the time goes).
# Then TCP over cable 0's IP: iperf3 (-l 64K, TCP_SECS s) and a TCP-only peercm pair writing
# TCP_WRITES x 64 KiB (window as above, then 64 B latency).
#
# Prints one line per figure and a final table (ratios: median over the rounds, and range);
# writes target/softroce/bench/summary.{json,md} (bench-lane --role summary). Raw outputs are
# in target/softroce/lanes/bench/out/bench/.
#
# Env: PEERCM_BENCH_ROUNDS (3), PEERCM_BENCH_BW_ITERS (400), PEERCM_BENCH_LAT_ITERS (1000),
# PEERCM_BENCH_TCP_WRITES (1500), PEERCM_BENCH_TCP_SECS (3), PEERCM_BENCH_BUSY_POLL_US (0: the
# link threads block on the completion channel; else every RDMA node's [verbs] busy_poll_us),
# PEERCM_BENCH_TIMEOUT (s per VM, 900), PEERCM_BENCH_NO_BUILD=1, PEERCM_BENCH_BIN (another
# binary, outside /tmp), PEERCM_SOFTROCE_CACHE. Needs root and scripts/softroce/setup.sh (once).
set -euo pipefail
# shellcheck source=common.sh
. "$(dirname "$0")/common.sh"

rounds=${PEERCM_BENCH_ROUNDS:-3}
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds=${2:?--rounds needs a number}; shift 2 ;;
    -h | --help) sed -n '2,28p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done
case "$rounds" in '' | *[!0-9]* | 0) die "--rounds must be a positive number" ;; esac

if [ "${PEERCM_BENCH_NO_BUILD:-0}" != 1 ]; then
  say "building bench-lane (release)"
  (cd "$REPO_DIR" && cargo build --release --quiet -p peercm-tests-lanes --bin bench-lane) ||
    die "cargo build failed"
fi
BL=${PEERCM_BENCH_BIN:-${CARGO_TARGET_DIR:-$REPO_DIR/target}/release/bench-lane}
[ -x "$BL" ] || die "$BL missing (build it, or unset PEERCM_BENCH_NO_BUILD)"
BL=$(readlink -f "$BL")
if under_tmp "$BL"; then
  mkdir -p "$SOFTROCE_CACHE/bin"
  cp -f "$BL" "$SOFTROCE_CACHE/bin/bench-lane"
  BL=$SOFTROCE_CACHE/bin/bench-lane
fi

lane=$SOFTROCE_CACHE/lanes/bench
mkdir -p "$lane"
rm -f "$lane"/n*.sh "$lane/bench.conf"
{
  printf 'BL=%q\n' "$BL"
  printf 'ROUNDS=%q\n' "$rounds"
  printf 'BW_ITERS=%q\n' "${PEERCM_BENCH_BW_ITERS:-400}"
  printf 'LAT_ITERS=%q\n' "${PEERCM_BENCH_LAT_ITERS:-1000}"
  printf 'TCP_WRITES=%q\n' "${PEERCM_BENCH_TCP_WRITES:-1500}"
  printf 'TCP_SECS=%q\n' "${PEERCM_BENCH_TCP_SECS:-3}"
  printf 'BUSY_POLL_US=%q\n' "${PEERCM_BENCH_BUSY_POLL_US:-0}"
} >"$lane/bench.conf"

# One script for both nodes: n2 serves (perftest servers, iperf3 -s, peercm receivers), n1
# measures. Every step has a unique tag; n2 signals ready-<tag> once it listens, n1 signals
# stop-<tag> when its side is done. A failed step is logged and the run goes on.
cat >"$lane/n1.sh" <<'NODE'
set -uo pipefail
. "$LANE_LIB"
. "$LANE/bench.conf"
[ "$CABLES" = "0 1" ] || { echo "$NODE: unexpected cables '$CABLES'"; exit 1; }
: "${PEER_MGMT_IP:?no management link}"
raw=$LANE/out/bench
mkdir -p "$raw"
step=0
fails=0

# perftest TOOL TAG CABLE ARGS...: one perftest server (n2) / client (n1) run on CABLE's HCA.
perftest() {
  local tool=$1 tag=$2 c=$3 dev gid peer port pid rc=0
  shift 3
  step=$((step + 1)) port=$((18600 + step))
  dev=DEV_$c gid=GID_IDX_$c peer=PEER_IP_$c
  if [ "$NODE" = n2 ]; then
    timeout 120 "$tool" -F -d "${!dev}" -x "${!gid}" -p "$port" "$@" >"$raw/$tag.$tool.server.txt" 2>&1 &
    pid=$!
    lane_wait_listen "$port" 30 && lane_signal "ready-$tag.$tool"
    wait "$pid" || rc=$?
  else
    lane_wait "ready-$tag.$tool" 120 || return 1
    timeout 120 "$tool" -F -d "${!dev}" -x "${!gid}" -p "$port" "$@" "${!peer}" >"$raw/$tag.$tool.txt.tmp" 2>&1 || rc=$?
    mv "$raw/$tag.$tool.txt.tmp" "$raw/$tag.$tool.txt"
    lane_log "$tag $tool: $(tail -n 2 "$raw/$tag.$tool.txt" | head -n 1)"
  fi
  [ "$rc" = 0 ] || { echo "$NODE: $tag $tool exited $rc"; fails=$((fails + 1)); }
}

# peercm KIND TAG TRANSPORT CABLE PHASES [ITERS]: a fresh node pair, receiver on n2, sender on n1.
peercm() {
  local kind=$1 tag=$2 tr=$3 c=$4 phases=$5 iters=${6:-$BW_ITERS} port pid rc=0 hca=() listen peer
  step=$((step + 1)) port=$((7800 + step))
  if [ "$tr" != tcp ]; then
    local dev=DEV_$c gidx=GID_IDX_$c
    hca=(--hca "${!dev}" --gid-index "${!gidx}")
    listen=$MGMT_IP peer=$PEER_MGMT_IP
  else
    listen=$IP_0 peer=$PEER_IP_0
  fi
  local common=(--transport "$tr" "${hca[@]}" --label "$tag.$kind" --connect-timeout 60 --phase-timeout 150
    --bw-writes "$iters" --lat-writes "$LAT_ITERS" --busy-poll-us "$BUSY_POLL_US" --abort-file "$LANE/sync/abort")
  if [ "$NODE" = n2 ]; then
    timeout 300 "$BL" --role receiver "${common[@]}" --listen "$listen:$port" \
      --stop-file "$LANE/sync/stop-$tag.$kind" --json "$raw/$tag.$kind.receiver.json" \
      >"$raw/$tag.$kind.receiver.txt" 2>&1 &
    pid=$!
    lane_wait_listen "$port" 60 && lane_signal "ready-$tag.$kind"
    wait "$pid" || rc=$?
  else
    lane_wait "ready-$tag.$kind" 120 || return 1
    timeout 300 "$BL" --role sender "${common[@]}" --peer "$peer:$port" --phases "$phases" \
      --json "$raw/$tag.$kind.json" >"$raw/$tag.$kind.txt" 2>&1 || rc=$?
    lane_signal "stop-$tag.$kind"
    lane_log "$tag $kind: $(grep -E 'mib_per_s|median_us|FAILED' "$raw/$tag.$kind.txt" | tr '\n' ' ')"
  fi
  [ "$rc" = 0 ] || { echo "$NODE: $tag peercm $kind exited $rc"; fails=$((fails + 1)); }
}

# iperf TAG: iperf3 over cable 0's IP, 64 KiB writes, TCP_SECS seconds, one stream.
iperf() {
  local tag=$1 port pid rc=0
  step=$((step + 1)) port=$((5200 + step))
  if [ "$NODE" = n2 ]; then
    timeout 60 iperf3 -s -1 -B "$IP_0" -p "$port" >"$raw/$tag.iperf3.server.txt" 2>&1 &
    pid=$!
    lane_wait_listen "$port" 30 && lane_signal "ready-$tag.iperf3"
    wait "$pid" || rc=$?
  else
    lane_wait "ready-$tag.iperf3" 120 || return 1
    timeout 60 iperf3 -c "$PEER_IP_0" -p "$port" -l 64K -t "$TCP_SECS" -J >"$raw/$tag.iperf3.json.tmp" 2>&1 || rc=$?
    mv "$raw/$tag.iperf3.json.tmp" "$raw/$tag.iperf3.json"
  fi
  [ "$rc" = 0 ] || { echo "$NODE: $tag iperf3 exited $rc"; fails=$((fails + 1)); }
}

lane_barrier start 60 || exit 1
for r in $(seq 1 "$ROUNDS"); do
  for c in $CABLES; do
    tag=c$c.r$r
    perftest ib_write_bw "$tag" "$c" -s 65536 -n "$BW_ITERS"
    peercm peercm_bw "$tag" rdma "$c" bw
    perftest ib_write_lat "$tag" "$c" -s 64 -n "$LAT_ITERS"
    peercm peercm_lat "$tag" rdma "$c" lat
    peercm rawlink "$tag" raw-link "$c" both
    perftest ib_send_lat "$tag" "$c" -s 64 -n "$LAT_ITERS" -e
  done
  tag=tcp.r$r
  iperf "$tag"
  peercm peercm_tcp "$tag" tcp 0 both "$TCP_WRITES"
done
echo "$NODE: $step steps, $fails failed"
lane_result bench_steps "$step steps, $fails failed"
exit 0
NODE
cp "$lane/n1.sh" "$lane/n2.sh"

t0=$(now_ms)
load0=$(cut -d' ' -f1-3 /proc/loadavg)
rc=0
"$SOFTROCE_DIR/run-lane.sh" --nodes 2 --mgmt --timeout "${PEERCM_BENCH_TIMEOUT:-900}" "$lane" || rc=$?
t1=$(now_ms)

out=$SOFTROCE_CACHE/bench
mkdir -p "$out"
echo "== one-sided write benchmark (issue 9) =="
"$BL" --role summary --results "$lane/out/bench" --json "$out/summary.json" --markdown "$out/summary.md" ||
  { echo "bench-lane summary failed"; rc=1; }
[ -f "$lane/out/summary" ] && cat "$lane/out/summary"
conditions=$(printf '%s: %s rounds in %.1f s; host load average %s at the start, %s at the end (%s cores)' \
  "$(date -u '+%Y-%m-%d %H:%M UTC')" "$rounds" "$(awk -v a="$t0" -v b="$t1" 'BEGIN{print (b-a)/1000}')" \
  "$load0" "$(cut -d' ' -f1-3 /proc/loadavg)" "$(nproc)")
echo "$conditions"
[ ! -f "$out/summary.md" ] || printf '\n%s\n' "$conditions" >>"$out/summary.md"
[ "$rc" = 0 ] || die "bench lane failed (run-lane exit $rc); logs in $lane/out/"
echo "summary: $out/summary.json, $out/summary.md"
