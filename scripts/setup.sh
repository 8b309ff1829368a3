#!/usr/bin/env bash
# Installs everything peercm's build, demo and tests need on a Debian machine. Idempotent: a
# package or tool already present is left alone, so running it twice costs a few seconds.
#
#   scripts/setup.sh           # build + test prerequisites
#
# Needs root (or sudo) only when something is actually missing.
set -euo pipefail

say() { printf 'setup: %s\n' "$*" >&2; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 && SUDO="sudo"
fi

# Debian packages: a C toolchain for crates with C parts (crc32c, libfuzzer-sys), and cmake +
# libclang for rdma-mummy-sys (it builds a libibverbs loader and generates its bindings).
DEB_PACKAGES=(gcc g++ make pkg-config cmake libclang-dev)

missing=()
for p in "${DEB_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  if [ "$(id -u)" -ne 0 ] && [ -z "$SUDO" ]; then
    die "need root to install ${missing[*]}; run as root or install them first"
  fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Rust: the machine's rustup toolchain (stable builds peercm; nightly builds the fuzz targets).
if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi
command -v cargo >/dev/null 2>&1 || die "cargo not found: install Rust (rustup) first"
rustc_minor=$(rustc --version | sed -E 's/^rustc 1\.([0-9]+).*/\1/')
[ "${rustc_minor:-0}" -ge 80 ] || die "rustc $(rustc --version) is too old: peercm needs 1.80 or newer"

if [ "${PEERCM_SKIP_FUZZ:-0}" != "1" ]; then
  if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    die "the fuzz targets need a nightly toolchain (rustup toolchain install nightly); set PEERCM_SKIP_FUZZ=1 to skip them locally"
  fi
  if ! cargo fuzz --version >/dev/null 2>&1; then
    say "installing cargo-fuzz from crates.io"
    cargo install cargo-fuzz --locked --quiet
  fi
fi
# cargo-machete: the dependency audit of scripts/test.sh.
if ! cargo machete --version >/dev/null 2>&1; then
  say "installing cargo-machete"
  cargo install cargo-machete --locked --quiet
fi
say "ready: $(cargo --version)"
