#!/usr/bin/env bash
# Three-node soft-RoCE check: boots n1, n2 and the backup peer n3 (see run-lane.sh for the
# topology), pings across all four cables, and runs ib_send_lat 64 B between n3 and n1 over
# cable 2 and between n3 and n2 over cable 3 (servers on n3). Exits non-zero if anything fails.
#
#   scripts/softroce/three-node.sh        # env: PEERCM_SOFTROCE_CACHE, PEERCM_SMOKE_TIMEOUT (s, default 150)
set -euo pipefail
# shellcheck source=common.sh
. "$(dirname "$0")/common.sh"

lane=$SOFTROCE_CACHE/lanes/three-node
mkdir -p "$lane"
rm -f "$lane"/n*.sh

# n1 and n2: ping every peer on every cable, then one latency client run against n3.
cat >"$lane/n1.sh" <<'NODE'
set -euo pipefail
. "$LANE_LIB"
lane_barrier up 60
for c in $CABLES; do
  peer=PEER_IP_$c
  timeout 15 busybox ping -c 2 -W 3 "${!peer}"
  lane_result "ping_c$c" ok
done
# the client for cable CABLE: n1 uses cable 2, n2 cable 3
c=$((NODE_NUM == 1 ? 2 : 3))
dev=DEV_$c gid=GID_IDX_$c peer=PEER_IP_$c
lane_wait "lat-ready-$c" 60
out=$(timeout 60 ib_send_lat -F -d "${!dev}" -x "${!gid}" -p $((18600 + c)) -s 64 -n 300 "${!peer}" 2>&1) ||
  { echo "$out"; echo "ib_send_lat over cable $c failed"; exit 1; }
echo "$out"
lat=$(awk '$1 == 64 && NF >= 7 {printf "min %s typical %s avg %s us", $3, $5, $6}' <<<"$out")
[ -n "$lat" ] || { echo "no ib_send_lat result"; exit 1; }
lane_result "send_lat_c$c" "$NODE<->${!peer} $lat (64 B x 300)"
lane_barrier end 60
NODE
cp "$lane/n1.sh" "$lane/n2.sh"

# n3: one latency server per cable, one after the other.
cat >"$lane/n3.sh" <<'NODE'
set -euo pipefail
. "$LANE_LIB"
lane_barrier up 60
for c in $CABLES; do
  peer=PEER_IP_$c
  timeout 15 busybox ping -c 2 -W 3 "${!peer}"
  lane_result "ping_c$c" ok
done
for c in $CABLES; do
  dev=DEV_$c gid=GID_IDX_$c port=$((18600 + c))
  timeout 60 ib_send_lat -F -d "${!dev}" -x "${!gid}" -p "$port" -s 64 -n 300 >"/tmp/lat$c.log" 2>&1 &
  pid=$!
  lane_wait_listen "$port" 30
  lane_signal "lat-ready-$c"
  wait "$pid" || { cat "/tmp/lat$c.log"; echo "server on cable $c failed"; exit 1; }
  cat "/tmp/lat$c.log"
done
lane_barrier end 60
NODE

t0=$(now_ms)
rc=0
"$SOFTROCE_DIR/run-lane.sh" --nodes 3 --timeout "${PEERCM_SMOKE_TIMEOUT:-150}" "$lane" || rc=$?
t1=$(now_ms)
echo "== soft-RoCE three-node figures =="
for n in n1 n2 n3; do
  if [ -f "$lane/out/$n.results" ]; then sed "s/^/$n /" "$lane/out/$n.results"; fi
done
printf 'three-node wall time: %.1f s\n' "$(awk -v a="$t0" -v b="$t1" 'BEGIN{print (b-a)/1000}')"
[ "$rc" = 0 ] || die "lane failed (exit $rc); logs in $lane/out/"
for k in "n1 ping_c2" "n1 send_lat_c2" "n2 ping_c3" "n2 send_lat_c3" "n3 ping_c2" "n3 ping_c3"; do
  grep -q "^${k#* } " "$lane/out/${k%% *}.results" 2>/dev/null || die "${k%% *} did not record ${k#* }"
done
echo "soft-RoCE three-node: ok"
