#!/usr/bin/env bash
# The soft-RoCE verbs lane: runs peercm's verbs scenario suite (verbs-shim scenarios::all()) on
# real rdma_rxe HCAs, one side per VM, and checks `peercm devices` inside and outside the VMs.
#
#   scripts/softroce/verbs-lane.sh [--only NAME[,NAME...]]
#
#   - builds target/release/verbs-lane (crate peercm-tests-lanes) and target/release/peercm (the
#     guests run them over 9p);
#   - host: `peercm devices` and `peercm devices --json` must exit 0 and say why verbs are
#     unavailable (the host has no RDMA), or list devices if it has some;
#   - boots n1 (client) and n2 (server) with run-lane.sh --mgmt: HCAs rxe0 on cable 0 and rxe1
#     on cable 1, and a management link (mgmt0, 10.77.99.0/24) that carries the scenario exchange,
#     so cutting a cable never cuts the bootstrap channel;
#   - in each guest: `peercm devices` (+ --json) must list rxe0 and rxe1, then
#     `verbs-lane --side client|server --hca rxe0:1:<gid> --hca rxe1:1:<gid>` runs every scenario
#     in lockstep with the other VM;
#   - prints both nodes' per-scenario lines, the lane wall time and a closing line
#         soft-RoCE lane: N passed, M failed
#     counting each scenario (passed = PASS on both sides) plus the two `peercm devices` checks.
# Exits non-zero if anything failed, including "no RDMA device in the guest".
#
# Env: PEERCM_VERBS_LANE_TIMEOUT (s per VM, default 900), PEERCM_VERBS_SCENARIO_TIMEOUT (s per
# scenario, default 150), PEERCM_VERBS_LANE_NO_BUILD=1 (use the binaries as they are),
# PEERCM_VERBS_LANE_BIN / PEERCM_BIN (other binaries, outside /tmp), PEERCM_SOFTROCE_CACHE.
# Needs root and scripts/softroce/setup.sh (once).
set -euo pipefail
# shellcheck source=common.sh
. "$(dirname "$0")/common.sh"

only=""
while [ $# -gt 0 ]; do
  case "$1" in
    --only) only=${2:?--only needs scenario names}; shift 2 ;;
    -h | --help) sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done

vm_timeout=${PEERCM_VERBS_LANE_TIMEOUT:-900}
scenario_timeout=${PEERCM_VERBS_SCENARIO_TIMEOUT:-150}
t0=$(now_ms)

if [ "${PEERCM_VERBS_LANE_NO_BUILD:-0}" != 1 ]; then
  say "building verbs-lane and peercm (release)"
  (cd "$REPO_DIR" && cargo build --release --quiet -p peercm-tests-lanes --bin verbs-lane -p peercm --bin peercm) ||
    die "cargo build failed"
fi
VL=${PEERCM_VERBS_LANE_BIN:-$REPO_DIR/target/release/verbs-lane}
PEERCM=${PEERCM_BIN:-$REPO_DIR/target/release/peercm}
for b in "$VL" "$PEERCM"; do
  [ -x "$b" ] || die "$b missing (build it, or unset PEERCM_VERBS_LANE_NO_BUILD)"
done
VL=$(readlink -f "$VL")
PEERCM=$(readlink -f "$PEERCM")
# The guests cannot see the host's /tmp: copy binaries built there next to the cache.
if under_tmp "$VL" || under_tmp "$PEERCM"; then
  mkdir -p "$SOFTROCE_CACHE/bin"
  cp -f "$VL" "$SOFTROCE_CACHE/bin/verbs-lane"
  cp -f "$PEERCM" "$SOFTROCE_CACHE/bin/peercm"
  VL=$SOFTROCE_CACHE/bin/verbs-lane
  PEERCM=$SOFTROCE_CACHE/bin/peercm
  say "binaries are under /tmp; running copies from $SOFTROCE_CACHE/bin"
fi
t_built=$(now_ms)

checks_passed=0 checks_failed=0
check() { # check NAME PASS|FAIL TEXT
  printf 'check %s: %s %s\n' "$1" "$2" "$3"
  if [ "$2" = PASS ]; then checks_passed=$((checks_passed + 1)); else checks_failed=$((checks_failed + 1)); fi
}

# ---- host: peercm devices must exit 0 and give the reason verbs are unavailable -------------
host_txt=$("$PEERCM" devices 2>&1) && host_rc=0 || host_rc=$?
host_json=$("$PEERCM" devices --json 2>&1) && host_json_rc=0 || host_json_rc=$?
host_reason=$(sed -n 's/^RDMA verbs unavailable: //p' <<<"$host_txt" | head -n1)
if [ "$host_rc" != 0 ] || [ "$host_json_rc" != 0 ]; then
  check peercm-devices-host FAIL "exit $host_rc (text) / $host_json_rc (--json): $(head -c 300 <<<"$host_txt")"
elif [ -n "$host_reason" ] && grep -q '"available": false' <<<"$host_json" && grep -q '"reason":' <<<"$host_json"; then
  check peercm-devices-host PASS "exit 0, verbs unavailable on the host: $host_reason"
elif grep -q '^RDMA verbs available' <<<"$host_txt" && grep -q '"available": true' <<<"$host_json"; then
  check peercm-devices-host PASS "exit 0, this host has RDMA: $(grep -c '^hca_id:' <<<"$host_txt") device(s)"
else
  check peercm-devices-host FAIL "unexpected output: $(tr '\n' ' ' <<<"$host_txt" | head -c 300) / $(tr '\n' ' ' <<<"$host_json" | head -c 300)"
fi

# ---- the lane -------------------------------------------------------------------------------
lane=$SOFTROCE_CACHE/lanes/verbs
mkdir -p "$lane"
rm -f "$lane"/n*.sh "$lane/verbs.conf"
{
  printf 'VL=%q\n' "$VL"
  printf 'PEERCM=%q\n' "$PEERCM"
  printf 'ONLY=%q\n' "$only"
  printf 'SCENARIO_TIMEOUT=%q\n' "$scenario_timeout"
  printf 'VL_PORT=18600\n'
} >"$lane/verbs.conf"

# Both nodes run the same script; NODE_NUM picks the side.
cat >"$lane/n1.sh" <<'NODE'
set -euo pipefail
. "$LANE_LIB"
. "$LANE/verbs.conf"
[ "$CABLES" = "0 1" ] || { echo "unexpected cables '$CABLES'"; exit 1; }
: "${PEER_MGMT_IP:?no management link (run-lane.sh --mgmt)}"
out=$LANE/out/$NODE
fail=0

# 1. peercm devices (text and JSON) must list both HCAs, ACTIVE.
t=$(lane_ms)
rc=0; timeout 60 "$PEERCM" devices >"$out.devices.txt" 2>&1 || rc=$?
rcj=0; timeout 60 "$PEERCM" devices --json >"$out.devices.json" 2>"$out.devices.json.err" || rcj=$?
cat "$out.devices.txt"
devs_ok=1
for d in "$DEV_0" "$DEV_1"; do
  grep -Eq "^hca_id:[[:space:]]+$d\$" "$out.devices.txt" || { echo "peercm devices does not list $d"; devs_ok=0; }
  grep -q "\"name\": \"$d\"" "$out.devices.json" || { echo "peercm devices --json does not list $d"; devs_ok=0; }
done
grep -q '"available": true' "$out.devices.json" || { echo "peercm devices --json: not available"; devs_ok=0; }
grep -q 'PORT_ACTIVE' "$out.devices.txt" || { echo "peercm devices: no PORT_ACTIVE port"; devs_ok=0; }
if [ "$rc" = 0 ] && [ "$rcj" = 0 ] && [ "$devs_ok" = 1 ]; then
  lane_result devices "PASS $DEV_0 $DEV_1 listed, ACTIVE, available ($(($(lane_ms) - t)) ms for both runs)"
else
  lane_result devices "FAIL exit $rc/$rcj, listed ok=$devs_ok"
  fail=1
fi

# 2. the scenario suite, one side per VM, exchange over the management link.
args=(--hca "$DEV_0:1:$GID_IDX_0" --hca "$DEV_1:1:$GID_IDX_1" --json "$out.verbs.json"
  --abort-file "$LANE/sync/abort" --scenario-timeout "$SCENARIO_TIMEOUT" --connect-timeout 120)
[ -z "$ONLY" ] || args+=(--only "$ONLY")
if [ "$NODE" = n1 ]; then
  args+=(--side client --peer "$PEER_MGMT_IP:$VL_PORT")
else
  args+=(--side server --listen "$MGMT_IP:$VL_PORT")
fi
rc=0
RUST_BACKTRACE=1 "$VL" "${args[@]}" >"$out.verbs.txt" 2>"$out.verbs.err" || rc=$?
cat "$out.verbs.err" "$out.verbs.txt"
if ! grep -q '^verbs-lane .*: [0-9]* passed, [0-9]* failed$' "$out.verbs.txt"; then
  echo "verbs-lane printed no totals (exit $rc)"
  [ "$rc" != 0 ] || rc=1
fi
lane_result verbs_exit "$rc"
[ "$rc" = 0 ] || fail=1
exit "$fail"
NODE
cp "$lane/n1.sh" "$lane/n2.sh"

rc=0
"$SOFTROCE_DIR/run-lane.sh" --nodes 2 --mgmt --timeout "$vm_timeout" "$lane" || rc=$?
t1=$(now_ms)

# ---- report ---------------------------------------------------------------------------------
echo "== soft-RoCE verbs lane =="
for n in n1 n2; do
  if [ -f "$lane/out/$n.verbs.txt" ]; then
    sed -n "s/^\(scenario \|verbs-lane \)/$n \1/p" "$lane/out/$n.verbs.txt"
  else
    echo "$n: no verbs-lane output (see $lane/out/$n.log)"
  fi
done

# peercm devices in the guests
g_fail=""
for n in n1 n2; do
  r=$(sed -n 's/^devices //p' "$lane/out/$n.results" 2>/dev/null | head -n1)
  case "$r" in PASS*) ;; *) g_fail="$g_fail $n:${r:-not run}" ;; esac
done
if [ -z "$g_fail" ]; then
  check peercm-devices-guests PASS "n1 and n2 list rxe0 and rxe1 ACTIVE (text and --json)"
else
  check peercm-devices-guests FAIL "$g_fail"
fi

# One verdict per scenario: PASS only if both sides passed it.
scen_passed=0 scen_failed=0
declare -A S1 S2
order=()
while read -r _ name side verdict _; do
  side=${side%:}
  [ -n "${S1[$name]+x}${S2[$name]+x}" ] || order+=("$name")
  if [ "$side" = client ]; then S1[$name]=$verdict; else S2[$name]=$verdict; fi
done < <(cat "$lane/out/n1.verbs.txt" "$lane/out/n2.verbs.txt" 2>/dev/null | grep '^scenario ' || true)
for name in "${order[@]}"; do
  if [ "${S1[$name]:-}" = PASS ] && [ "${S2[$name]:-}" = PASS ]; then
    scen_passed=$((scen_passed + 1))
  else
    scen_failed=$((scen_failed + 1))
  fi
done
if [ ${#order[@]} -eq 0 ]; then
  echo "no scenario ran"
  scen_failed=$((scen_failed + 1))
fi
for n in n1 n2; do
  [ -f "$lane/out/$n.verbs.err" ] || continue
  if grep -q panicked "$lane/out/$n.verbs.err"; then
    echo "$n: verbs-lane stderr reports a panic:"
    grep -A3 panicked "$lane/out/$n.verbs.err" | head -n 12
  fi
done

total_passed=$((scen_passed + checks_passed))
total_failed=$((scen_failed + checks_failed))
[ "$rc" = 0 ] || [ "$total_failed" -gt 0 ] || total_failed=1 # the lane itself failed
printf 'build %.1f s, lane %.1f s, verbs lane wall time %.1f s\n' \
  "$(awk -v a="$t0" -v b="$t_built" 'BEGIN{print (b-a)/1000}')" \
  "$(awk -v a="$t_built" -v b="$t1" 'BEGIN{print (b-a)/1000}')" \
  "$(awk -v a="$t0" -v b="$t1" 'BEGIN{print (b-a)/1000}')"
echo "soft-RoCE lane: $total_passed passed, $total_failed failed ($scen_passed/${#order[@]} scenarios on both sides, $checks_passed/$((checks_passed + checks_failed)) peercm devices checks)"
if [ "$rc" != 0 ] || [ "$total_failed" -gt 0 ]; then
  die "verbs lane failed (run-lane exit $rc); logs in $lane/out/ (n1.log, n2.log, n*.verbs.err, n*.console)"
fi
echo "soft-RoCE verbs lane: ok"
