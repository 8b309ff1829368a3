#!/usr/bin/env bash
# Soft-RoCE smoke test: two VMs, two HCAs each (see run-lane.sh for the topology). On both
# cables: ibv_devinfo on each node, ib_write_bw 64 KiB (server n2, client n1), ib_send_lat 64 B;
# then a host-side cut of cable 0 at n1 (QEMU set_link off) that n1 must see as PORT_ERR / port
# DOWN on rxe0 while rxe1 stays ACTIVE, the restore (set_link on -> PORT_ACTIVE), and a latency
# run over the restored cable. Prints the measured figures; exits non-zero if anything fails.
#
#   scripts/softroce/smoke.sh            # env: PEERCM_SOFTROCE_CACHE, PEERCM_SMOKE_TIMEOUT (s, default 150)
set -euo pipefail
# shellcheck source=common.sh
. "$(dirname "$0")/common.sh"

lane=$SOFTROCE_CACHE/lanes/smoke
mkdir -p "$lane"
rm -f "$lane"/n*.sh

# ---- n2: servers ---------------------------------------------------------------------------
cat >"$lane/n2.sh" <<'NODE'
set -euo pipefail
. "$LANE_LIB"
[ "$CABLES" = "0 1" ] || { echo "unexpected cables '$CABLES'"; exit 1; }
timeout 10 ibv_devices
for c in $CABLES; do
  dev=DEV_$c gidx=GID_IDX_$c
  out=$(timeout 10 ibv_devinfo -d "${!dev}")
  echo "$out"
  grep -q 'PORT_ACTIVE' <<<"$out" || { echo "${!dev} not PORT_ACTIVE"; exit 1; }
  lane_result "devinfo_c$c" "${!dev} $(awk '/state:/{print $2; exit}' <<<"$out") gid_idx=${!gidx}"
done
lane_barrier devinfo 60

# serve TOOL PORT CABLE ARGS...: run one perftest server on CABLE's HCA, tell n1 when it listens.
serve() {
  local tool=$1 port=$2 c=$3 dev gid pid rc=0
  shift 3
  dev=DEV_$c gid=GID_IDX_$c
  timeout 60 "$tool" -F -d "${!dev}" -x "${!gid}" -p "$port" "$@" >"$LANE/out/n2.$tool.$port.log" 2>&1 &
  pid=$!
  lane_wait_listen "$port" 30
  lane_signal "ready-$port"
  wait "$pid" || rc=$?
  cat "$LANE/out/n2.$tool.$port.log"
  [ "$rc" = 0 ] || { echo "$tool server on cable $c exited $rc"; return 1; }
}
for c in $CABLES; do
  serve ib_write_bw $((18515 + c)) "$c" -s 65536 -n 200
  serve ib_send_lat $((18525 + c)) "$c" -s 64 -n 500
done
# after n1's cable-0 cut and restore: latency over the restored cable
serve ib_send_lat 18535 0 -s 64 -n 300
echo "n2: all servers done"
NODE

# ---- n1: clients, fault injection ------------------------------------------------------------
cat >"$lane/n1.sh" <<'NODE'
set -euo pipefail
. "$LANE_LIB"
[ "$CABLES" = "0 1" ] || { echo "unexpected cables '$CABLES'"; exit 1; }
devs=$(timeout 10 ibv_devices)
echo "$devs"
if ! grep -q rxe0 <<<"$devs" || ! grep -q rxe1 <<<"$devs"; then echo "no rxe0/rxe1 device found"; exit 1; fi
for c in $CABLES; do
  dev=DEV_$c gidx=GID_IDX_$c
  out=$(timeout 10 ibv_devinfo -d "${!dev}")
  echo "$out"
  grep -q 'PORT_ACTIVE' <<<"$out" || { echo "${!dev} not PORT_ACTIVE"; exit 1; }
  lane_result "devinfo_c$c" "${!dev} $(awk '/state:/{print $2; exit}' <<<"$out") gid_idx=${!gidx}"
done
lane_barrier devinfo 60

# client TOOL PORT CABLE ARGS...: run one perftest client against n2 over CABLE; output on stdout.
client() {
  local tool=$1 port=$2 c=$3 dev gid peer
  shift 3
  dev=DEV_$c gid=GID_IDX_$c peer=PEER_IP_$c
  lane_wait "ready-$port" 60
  timeout 60 "$tool" -F -d "${!dev}" -x "${!gid}" -p "$port" "$@" "${!peer}" 2>&1
}
for c in $CABLES; do
  out=$(client ib_write_bw $((18515 + c)) "$c" -s 65536 -n 200) || { echo "$out"; echo "ib_write_bw cable $c failed"; exit 1; }
  echo "$out"
  bw=$(awk '$1 == 65536 && NF >= 5 {print $4}' <<<"$out")
  [ -n "$bw" ] || { echo "no ib_write_bw result on cable $c"; exit 1; }
  lane_result "write_bw_c$c" "$bw MB/s (64 KiB x 200, peak $(awk '$1 == 65536 && NF >= 5 {print $3}' <<<"$out"))"

  out=$(client ib_send_lat $((18525 + c)) "$c" -s 64 -n 500) || { echo "$out"; echo "ib_send_lat cable $c failed"; exit 1; }
  echo "$out"
  lat=$(awk '$1 == 64 && NF >= 7 {printf "min %s typical %s avg %s us", $3, $5, $6}' <<<"$out")
  [ -n "$lat" ] || { echo "no ib_send_lat result on cable $c"; exit 1; }
  lane_result "send_lat_c$c" "$lat (64 B x 500)"
done

# ---- cable-0 cut at n1's end (host: QEMU monitor set_link c0 off) ----
if [ "$(lane_port_state "$DEV_0")" != ACTIVE ] || [ "$(lane_port_state "$DEV_1")" != ACTIVE ]; then
  echo "ports not ACTIVE before the cut"; exit 1
fi
timeout 60 stdbuf -oL ibv_asyncwatch -d "$DEV_0" >/tmp/async0.log 2>&1 &
watch0=$!
timeout 60 stdbuf -oL ibv_asyncwatch -d "$DEV_1" >/tmp/async1.log 2>&1 &
watch1=$!
for f in /tmp/async0.log /tmp/async1.log; do
  for _ in $(seq 100); do grep -q 'async event FD' "$f" && break; lane_sleep 0.05; done
  grep -q 'async event FD' "$f" || { cat "$f"; echo "ibv_asyncwatch did not start"; exit 1; }
done
t_req=$(lane_ms)
ack=$(lane_ctl "n1-cable0-off") || { echo "host did not cut cable 0"; exit 1; }
ack_ms=$(($(lane_ms) - t_req))
echo "host ack after $ack_ms ms: $ack"
lane_wait_port "$DEV_0" DOWN 10 >/dev/null || { echo "$DEV_0 never went DOWN after the cut"; exit 1; }
down_ms=$(($(lane_ms) - t_req))
for _ in $(seq 100); do grep -q IBV_EVENT_PORT_ERR /tmp/async0.log && break; lane_sleep 0.05; done
cat /tmp/async0.log
grep -q IBV_EVENT_PORT_ERR /tmp/async0.log || { echo "no IBV_EVENT_PORT_ERR on $DEV_0"; exit 1; }
st1=$(lane_port_state "$DEV_1")
[ "$st1" = ACTIVE ] || { echo "$DEV_1 is $st1 during the cable-0 cut (must stay ACTIVE)"; exit 1; }
if grep -q IBV_EVENT_PORT_ERR /tmp/async1.log; then echo "unexpected PORT_ERR on $DEV_1"; exit 1; fi
lane_result cut_c0 "$DEV_0 DOWN + IBV_EVENT_PORT_ERR; DOWN seen ${down_ms} ms after the request (host ack seen at ${ack_ms} ms); $DEV_1 $st1"

t_req=$(lane_ms)
ack=$(lane_ctl "n1-cable0-on") || { echo "host did not restore cable 0"; exit 1; }
ack_ms=$(($(lane_ms) - t_req))
echo "host ack after $ack_ms ms: $ack"
lane_wait_port "$DEV_0" ACTIVE 10 >/dev/null || { echo "$DEV_0 not ACTIVE after restore"; exit 1; }
up_ms=$(($(lane_ms) - t_req))
for _ in $(seq 100); do grep -q IBV_EVENT_PORT_ACTIVE /tmp/async0.log && break; lane_sleep 0.05; done
cat /tmp/async0.log
grep -q IBV_EVENT_PORT_ACTIVE /tmp/async0.log || { echo "no IBV_EVENT_PORT_ACTIVE on $DEV_0"; exit 1; }
lane_result restore_c0 "$DEV_0 ACTIVE + IBV_EVENT_PORT_ACTIVE; ACTIVE seen ${up_ms} ms after the request (host ack seen at ${ack_ms} ms); $DEV_1 $(lane_port_state "$DEV_1")"
kill "$watch0" "$watch1" 2>/dev/null || true
wait "$watch0" "$watch1" 2>/dev/null || true

out=$(client ib_send_lat 18535 0 -s 64 -n 300) || { echo "$out"; echo "ib_send_lat after restore failed"; exit 1; }
echo "$out"
lat=$(awk '$1 == 64 && NF >= 7 {printf "min %s typical %s avg %s us", $3, $5, $6}' <<<"$out")
[ -n "$lat" ] || { echo "no ib_send_lat result after restore"; exit 1; }
lane_result send_lat_c0_after_restore "$lat (64 B x 300)"
echo "n1: smoke done"
NODE

t0=$(now_ms)
rc=0
"$SOFTROCE_DIR/run-lane.sh" --nodes 2 --timeout "${PEERCM_SMOKE_TIMEOUT:-150}" "$lane" || rc=$?
t1=$(now_ms)

echo "== soft-RoCE smoke figures =="
for n in n1 n2; do
  if [ -f "$lane/out/$n.results" ]; then sed "s/^/$n /" "$lane/out/$n.results"; fi
done
[ -f "$lane/out/ctl.log" ] && sed 's/^/host-ctl /' "$lane/out/ctl.log"
printf 'smoke wall time: %.1f s\n' "$(awk -v a="$t0" -v b="$t1" 'BEGIN{print (b-a)/1000}')"

[ "$rc" = 0 ] || die "lane failed (exit $rc); logs in $lane/out/"
want=(devinfo_c0 devinfo_c1 write_bw_c0 write_bw_c1 send_lat_c0 send_lat_c1 cut_c0 restore_c0 send_lat_c0_after_restore)
for k in "${want[@]}"; do
  grep -q "^$k " "$lane/out/n1.results" 2>/dev/null || die "n1 did not record $k"
done
echo "soft-RoCE smoke: ok"
