#!/usr/bin/env bash
# The soft-RoCE manager lane: the connection manager (peercm_cm_manager::Node with real rdma-core verbs)
# on real rdma_rxe HCAs, the real-rxe counterparts of tests/integration/tests/interconnects_sim.rs.
#
#   scripts/softroce/manager-lane.sh [--only NAME[,NAME...]]
#
#   - builds target/release/manager-lane (crate peercm-tests-lanes; the guests run it over 9p);
#   - boots three VMs once for every scenario (run-lane.sh --nodes 3 --mgmt --tcp-backup):
#       n1: node a (the dialer), rxe0 on cable 0 and rxe1 on cable 1;
#       n2: node b (the acceptor), rxe0 and rxe1 on the same cables;
#       n3: no rxe at all (the node without RDMA), reachable over management links only.
#     The managers' TCP bootstrap sessions run over the management links (mgmt*, no rxe), so
#     cutting a cable never cuts them;
#   - n1 runs `manager-lane --role leader`, which drives and judges every scenario; n2 and n3
#     only receive and check records (see the binary's docs);
#   - prints every scenario line with its figures, the wall time and a closing line
#         soft-RoCE manager lane: N passed, M failed
#     which scripts/test.sh adds to its count. Exits non-zero if anything failed, including "no
#     RDMA device in the guest" (every scenario then FAILs as not run).
#
# Env: PEERCM_MANAGER_LANE_TIMEOUT (s per VM, default 600), PEERCM_MANAGER_SCENARIO_TIMEOUT (s per
# scenario, default 90), PEERCM_MANAGER_LANE_RECORDS (mirror records per stream, default 2000),
# PEERCM_MANAGER_LANE_LINK_TIMEOUT_MS (the nodes' session link timeout, default 1500; peercm's
# own default is 500), PEERCM_MANAGER_LANE_REGION_WRITES (one-sided writes in
# region_writes_under_host_cable_pull, default 100000), PEERCM_MANAGER_REGION_TIMEOUT (s that
# scenario may take, default 300), PEERCM_MANAGER_LANE_NO_BUILD=1 (use the binary as it is),
# PEERCM_MANAGER_LANE_BIN (another binary, outside /tmp), PEERCM_SOFTROCE_CACHE. Needs root and
# scripts/softroce/setup.sh (once).
set -euo pipefail
# shellcheck source=common.sh
. "$(dirname "$0")/common.sh"

only=""
while [ $# -gt 0 ]; do
  case "$1" in
    --only) only=${2:?--only needs scenario names}; shift 2 ;;
    -h | --help) sed -n '2,28p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done

vm_timeout=${PEERCM_MANAGER_LANE_TIMEOUT:-600}
scenario_timeout=${PEERCM_MANAGER_SCENARIO_TIMEOUT:-90}
records=${PEERCM_MANAGER_LANE_RECORDS:-2000}
link_timeout=${PEERCM_MANAGER_LANE_LINK_TIMEOUT_MS:-1500}
region_writes=${PEERCM_MANAGER_LANE_REGION_WRITES:-100000}
region_timeout=${PEERCM_MANAGER_REGION_TIMEOUT:-300}
t0=$(now_ms)

if [ "${PEERCM_MANAGER_LANE_NO_BUILD:-0}" != 1 ]; then
  say "building manager-lane (release)"
  (cd "$REPO_DIR" && cargo build --release --quiet -p peercm-tests-lanes --bin manager-lane) ||
    die "cargo build failed"
fi
ML=${PEERCM_MANAGER_LANE_BIN:-$REPO_DIR/target/release/manager-lane}
[ -x "$ML" ] || die "$ML missing (build it, or unset PEERCM_MANAGER_LANE_NO_BUILD)"
ML=$(readlink -f "$ML")
# The guests cannot see the host's /tmp: copy a binary built there next to the cache.
if under_tmp "$ML"; then
  mkdir -p "$SOFTROCE_CACHE/bin"
  cp -f "$ML" "$SOFTROCE_CACHE/bin/manager-lane"
  ML=$SOFTROCE_CACHE/bin/manager-lane
  say "binary is under /tmp; running a copy from $SOFTROCE_CACHE/bin"
fi
t_built=$(now_ms)

lane=$SOFTROCE_CACHE/lanes/manager
mkdir -p "$lane"
rm -f "$lane"/n*.sh "$lane/manager.conf"
{
  printf 'ML=%q\n' "$ML"
  printf 'ONLY=%q\n' "$only"
  printf 'SCENARIO_TIMEOUT=%q\n' "$scenario_timeout"
  printf 'RECORDS=%q\n' "$records"
  printf 'LINK_TIMEOUT_MS=%q\n' "$link_timeout"
  printf 'REGION_WRITES=%q\n' "$region_writes"
  printf 'REGION_TIMEOUT=%q\n' "$region_timeout"
  printf 'PORT_B=7700 PORT_NORDMA=7704 PORT_BACKUP=7705\n'
} >"$lane/manager.conf"

# One script for every node; the role follows from NODE.
cat >"$lane/n1.sh" <<'NODE'
set -euo pipefail
. "$LANE_LIB"
. "$LANE/manager.conf"
out=$LANE/out/$NODE
args=(--sync "$LANE/sync" --abort-file "$LANE/sync/abort" --scenario-timeout "$SCENARIO_TIMEOUT"
  --connect-timeout 120 --records "$RECORDS" --link-timeout-ms "$LINK_TIMEOUT_MS")
case "$NODE" in
  n1 | n2)
    [ "$CABLES" = "0 1" ] || { echo "$NODE: unexpected cables '$CABLES' (wanted rxe on cables 0 and 1)"; exit 1; }
    # Node a's and node b's region files live on the guest's /tmp, a tmpfs in RAM (512 MiB
    # per VM, tmpfs up to half of it): the 64 MiB region fits.
    args+=(--hca "$DEV_0:$NETDEV_0" --hca "$DEV_1:$NETDEV_1" --region-dir /tmp/peercm-lane-regions) ;;
esac
case "$NODE" in
  n1)
    : "${PEER_MGMT_IP_n2:?no management link to n2}" "${PEER_MGMT_IP_n3:?no management link to n3}"
    args+=(--role leader --peer "$PEER_MGMT_IP_n2:$PORT_B" --no-rdma-peer "$PEER_MGMT_IP_n3:$PORT_NORDMA"
      --backup "$PEER_MGMT_IP_n3:$PORT_BACKUP" --json "$out.manager.json"
      --region-writes "$REGION_WRITES" --region-timeout "$REGION_TIMEOUT")
    [ -z "$ONLY" ] || args+=(--only "$ONLY") ;;
  n2)
    args+=(--role partner --listen "$MGMT_IP_TO_n1:$PORT_B" --leader-done-file "$LANE/sync/done.n1") ;;
  n3)
    [ -z "$CABLES" ] || { echo "n3: expected no rxe cables, got '$CABLES'"; exit 1; }
    args+=(--role backup --listen "$MGMT_IP_TO_n1:$PORT_NORDMA" --listen "$MGMT_IP_TO_n1:$PORT_BACKUP"
      --leader-done-file "$LANE/sync/done.n1") ;;
esac
rc=0
RUST_BACKTRACE=1 RUST_LOG=${RUST_LOG:-info} timeout -k 5 $((NODE_TIMEOUT - 10)) "$ML" "${args[@]}" \
  >"$out.manager.txt" 2>"$out.manager.err" || rc=$?
cat "$out.manager.txt"
# partner_crash_switches_to_backup aborts node b's process on purpose (SIGABRT: 134).
if [ "$NODE" = n2 ] && [ "$rc" = 134 ] && [ -e "$LANE/sync/mlane.crashed.partner" ]; then
  echo "n2: manager-lane aborted as ordered ($(cat "$LANE/sync/mlane.crashed.partner"))"
  rc=0
fi
if [ "$NODE" = n1 ] && ! grep -q '^manager-lane: [0-9]* passed, [0-9]* failed$' "$out.manager.txt"; then
  echo "manager-lane printed no totals (exit $rc)"
  [ "$rc" != 0 ] || rc=1
fi
lane_result manager_exit "$rc"
exit "$rc"
NODE
cp "$lane/n1.sh" "$lane/n2.sh"
cp "$lane/n1.sh" "$lane/n3.sh"

rc=0
"$SOFTROCE_DIR/run-lane.sh" --nodes 3 --mgmt --tcp-backup --timeout "$vm_timeout" "$lane" || rc=$?
t1=$(now_ms)

# ---- report ---------------------------------------------------------------------------------
echo "== soft-RoCE manager lane =="
res=$lane/out/n1.manager.txt
if [ -f "$res" ]; then
  cat "$res"
else
  echo "n1: no manager-lane output (see $lane/out/n1.log)"
fi
for n in n1 n2 n3; do
  e=$lane/out/$n.manager.err
  [ -f "$e" ] || continue
  if grep -q panicked "$e"; then
    echo "$n: manager-lane stderr reports a panic:"
    grep -A3 panicked "$e" | head -n 12
  fi
done
passed=$(grep -c '^scenario [a-z0-9_]*: PASS' "$res" 2>/dev/null || true)
failed=$(grep -c '^scenario [a-z0-9_]*: FAIL' "$res" 2>/dev/null || true)
passed=${passed:-0} failed=${failed:-0}
if [ $((passed + failed)) -eq 0 ]; then
  echo "no scenario ran"
  failed=1
fi
[ "$rc" = 0 ] || [ "$failed" -gt 0 ] || failed=1 # the lane itself failed
printf 'build %.1f s, lane %.1f s, manager lane wall time %.1f s\n' \
  "$(awk -v a="$t0" -v b="$t_built" 'BEGIN{print (b-a)/1000}')" \
  "$(awk -v a="$t_built" -v b="$t1" 'BEGIN{print (b-a)/1000}')" \
  "$(awk -v a="$t0" -v b="$t1" 'BEGIN{print (b-a)/1000}')"
echo "soft-RoCE manager lane: $passed passed, $failed failed"
if [ "$rc" != 0 ] || [ "$failed" -gt 0 ]; then
  die "manager lane failed (run-lane exit $rc); logs in $lane/out/ (n*.log, n*.manager.err, n*.console)"
fi
echo "soft-RoCE manager lane: ok"
