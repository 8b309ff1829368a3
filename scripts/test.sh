#!/usr/bin/env bash
# The whole peercm test suite. This is what CI runs (.ci/run calls exactly this).
#
#    1. setup (idempotent installs)
#    2. cargo fmt --check
#    3. cargo clippy -D warnings, then `cargo +<MSRV> check` (when that toolchain is installed)
#    4. dependency audit: cargo machete (no unused dependencies)
#    5. cargo doc -D warnings, with all features and with the product's features
#    6. cargo test (unit, property, chaos, loopback-TCP integration)
#    7. soft-RoCE lanes: the verbs scenario suite on rdma_rxe in two QEMU/TCG VMs, plus
#       `peercm devices` in and outside the VMs (scripts/softroce/verbs-lane.sh), then the
#       connection manager's scenarios on rxe in three VMs (scripts/softroce/manager-lane.sh;
#       docs/softroce-lane.md). Needs root; scripts/softroce/setup.sh installs QEMU and Debian's
#       kernel once. If the lanes cannot run here the suite FAILS, unless PEERCM_SKIP_SOFTROCE=1.
#    8. fuzz targets: build, then run each briefly
#    9. peercm demo (the main job) must pass
#   10. no `unsafe` outside verbs-shim
#
# Ends with one line "peercm: N passed, N failed" counting every test run (each lane scenario
# that passed on both sides counts once).
# Environment: PEERCM_FUZZ_SECONDS (per target, default 15), PEERCM_SKIP_FUZZ=1 (local only;
# CI never sets it), PEERCM_CHAOS_SEEDS (seeds for the randomized session test),
# PEERCM_IC_CHAOS_SEEDS (seeds for the randomized interconnect test, default 300),
# PEERCM_SKIP_SOFTROCE=1 (skip the soft-RoCE lanes; local only, refused when CI=true).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_TERM_COLOR=never
start=$(date +%s)
log_dir=$(mktemp -d)
trap 'rm -rf "$log_dir"' EXIT

step() { printf '\n==> %s\n' "$*"; }

step "setup"
bash scripts/setup.sh

if [ "${CI:-}" = "true" ] && [ "${PEERCM_SKIP_FUZZ:-0}" = "1" ]; then
  echo "test: PEERCM_SKIP_FUZZ is not allowed in CI" >&2
  exit 1
fi
if [ "${CI:-}" = "true" ] && [ "${PEERCM_SKIP_SOFTROCE:-0}" = "1" ]; then
  echo "test: PEERCM_SKIP_SOFTROCE is not allowed in CI" >&2
  exit 1
fi

step "cargo fmt --check"
cargo fmt --all -- --check
(cd cm/proto/fuzz && cargo fmt -- --check) # outside the workspace

step "cargo clippy --all-targets -D warnings"
cargo clippy --workspace --all-targets --quiet -- -D warnings

# The minimum supported Rust version is [workspace.package] rust-version (clippy.toml's msrv
# makes clippy flag newer std APIs). Checked with that very toolchain when rustup has it; it is
# not installed by scripts/setup.sh (which stays offline); to install it: `rustup toolchain install <MSRV> --profile minimal`.
msrv=$(sed -n 's/^rust-version = "\([0-9.]*\)"$/\1/p' Cargo.toml)
if rustup toolchain list 2>/dev/null | grep -q "^$msrv-"; then
  step "cargo +$msrv check (MSRV)"
  CARGO_TARGET_DIR=target/msrv cargo +"$msrv" check --workspace --all-targets --quiet
else
  step "cargo +$msrv check (MSRV): SKIPPED, toolchain $msrv not installed"
fi

# The dependency audit is cargo-machete, which reads the sources and needs no network.
# cargo-deny is not used: its advisory database is fetched from GitHub at run time, and neither
# this machine nor CI has network access to GitHub. Machete is imprecise: a dependency used only
# through a macro or a feature is a false positive, listed with the reason under
# [package.metadata.cargo-machete] ignored = [...] in that crate's Cargo.toml. It reads every .rs
# file under a crate's folder, nested crates included, so no crate folder holds another one
# (tests/integration and tests/lanes sit side by side); the fuzz crate under cm/proto uses only
# what proto itself uses.
step "dependency audit: cargo machete"
cargo machete --skip-target-dir

# Docs twice: with every feature (test support included), and with the features the product
# build uses (tests/lanes left out: it turns on the fault-injection and scenarios features).
step "cargo doc -D warnings (all features)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --all-features --quiet

step "cargo doc -D warnings (product features)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --exclude peercm-tests-lanes --no-deps --quiet

step "cargo test"
set +e
cargo test --workspace 2>&1 | tee "$log_dir/test.log"
test_rc=${PIPESTATUS[0]}
set -e
passed=$(awk '/^test result:/ { for (i = 1; i <= NF; i++) if ($(i+1) ~ /^passed/) s += $i } END { print s + 0 }' "$log_dir/test.log")
failed=$(awk '/^test result:/ { for (i = 1; i <= NF; i++) if ($(i+1) ~ /^failed/) s += $i } END { print s + 0 }' "$log_dir/test.log")
if [ "$test_rc" -ne 0 ]; then
  echo "peercm: $passed passed, $((failed > 0 ? failed : 1)) failed"
  exit 1
fi

if [ "${PEERCM_SKIP_SOFTROCE:-0}" = "1" ]; then
  step "soft-RoCE lane: SKIPPED (PEERCM_SKIP_SOFTROCE=1)"
else
  step "soft-RoCE lane"
  lane_blocker=""
  if [ "$(id -u)" -ne 0 ]; then
    lane_blocker="it needs root (QEMU exports / to the guests over 9p), and this runs as $(id -un)"
  elif ! bash scripts/softroce/setup.sh; then
    lane_blocker="scripts/softroce/setup.sh failed (QEMU, Debian's linux-image-amd64 or busybox-static missing and not installable)"
  fi
  if [ -n "$lane_blocker" ]; then
    echo "test: the soft-RoCE lane cannot run here: $lane_blocker." >&2
    echo "test: run the suite as root on Debian, or set PEERCM_SKIP_SOFTROCE=1 to skip the lane locally (refused when CI=true)." >&2
    echo "peercm: $passed passed, $((failed + 1)) failed"
    exit 1
  fi
  # Both lanes run even if the first fails; each closing line "<lane>: N passed, M failed" is
  # added to the count, and a lane that printed none (or exited non-zero) counts as 1 failure.
  lanes_failed=0
  for lane in verbs manager; do
    case "$lane" in
      verbs) label="soft-RoCE lane" ;;
      manager) step "soft-RoCE manager lane"; label="soft-RoCE manager lane" ;;
    esac
    set +e
    bash "scripts/softroce/$lane-lane.sh" 2>&1 | tee "$log_dir/softroce-$lane.log"
    lane_rc=${PIPESTATUS[0]}
    set -e
    lane_counts=$(sed -n "s/^$label: \([0-9]*\) passed, \([0-9]*\) failed.*/\1 \2/p" "$log_dir/softroce-$lane.log" | tail -n1)
    lane_passed=${lane_counts% *} lane_failed=${lane_counts#* }
    passed=$((passed + ${lane_passed:-0}))
    if [ "$lane_rc" -ne 0 ] || [ -z "$lane_counts" ] || [ "${lane_failed:-1}" -ne 0 ]; then
      echo "test: the $label failed (exit $lane_rc); logs under target/softroce/lanes/$lane/out/" >&2
      lanes_failed=$((lanes_failed + (${lane_failed:-0} > 0 ? ${lane_failed:-0} : 1)))
    fi
  done
  if [ "$lanes_failed" -gt 0 ]; then
    echo "peercm: $passed passed, $((failed + lanes_failed)) failed"
    exit 1
  fi
fi

if [ "${PEERCM_SKIP_FUZZ:-0}" = "1" ]; then
  step "fuzz targets: SKIPPED (PEERCM_SKIP_FUZZ=1)"
else
  step "fuzz targets"
  secs=${PEERCM_FUZZ_SECONDS:-15}
  export log_dir
  (
    cd cm/proto/fuzz
    cargo +nightly fuzz build -O 2>&1 | tail -n 3
    for t in $(cargo +nightly fuzz list); do
      if ! cargo +nightly fuzz run -O "$t" -- -max_total_time="$secs" -print_final_stats=1 >"$log_dir/fuzz-$t.log" 2>&1; then
        tail -n 40 "$log_dir/fuzz-$t.log"
        echo "fuzz target $t found a failure (artifact under cm/proto/fuzz/artifacts/$t)"
        exit 1
      fi
      runs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log_dir/fuzz-$t.log" | grep -oE '[0-9]+$' || echo '?')
      echo "fuzz $t: ${secs}s, $runs inputs, no failure"
    done
  )
  passed=$((passed + $(cd cm/proto/fuzz && cargo +nightly fuzz list | wc -l)))
fi

step "peercm demo"
cargo run --quiet -p peercm -- demo
passed=$((passed + 1))

step "unsafe only in verbs-shim"
if grep -rn --include='*.rs' -E '\bunsafe\b' cm fallback-tcp clients tests | grep -v '^cm/proto/fuzz/target' | grep -vE '//.*unsafe|forbid\(unsafe_code\)|"unsafe'; then
  echo "unsafe code found outside verbs-shim"
  echo "peercm: $passed passed, 1 failed"
  exit 1
fi

echo
echo "suite took $(( $(date +%s) - start )) s"
echo "peercm: $passed passed, $failed failed"
