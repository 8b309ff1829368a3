#!/usr/bin/env bash
# Installs what the soft-RoCE lane needs on a Debian 12 machine: QEMU (TCG), Debian's stock
# kernel (it ships rdma_rxe; the host kernel need not), static busybox for the initramfs, and
# rdma-core/perftest which the guests run from the host's root filesystem over 9p.
# socat talks to the QEMU monitors (host-side fault injection); cpio/gzip build the initramfs;
# iperf3 is the TCP reference of scripts/softroce/bench-lane.sh.
#
#   scripts/softroce/setup.sh
#
# Idempotent: only missing packages are installed, and `apt-get update` runs only then.
# Needs root (or sudo) only when something is missing.
set -euo pipefail

say() { printf 'softroce-setup: %s\n' "$*" >&2; }
die() { printf 'softroce-setup: error: %s\n' "$*" >&2; exit 1; }

PACKAGES=(qemu-system-x86 linux-image-amd64 busybox-static rdma-core ibverbs-providers
  ibverbs-utils perftest rdmacm-utils libibverbs-dev librdmacm-dev iproute2 kmod xz-utils
  cpio gzip socat iperf3)

command -v dpkg-query >/dev/null 2>&1 || die "dpkg-query not found: this script supports Debian only"

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
  say "all ${#PACKAGES[@]} packages already installed"
else
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
      SUDO="sudo"
    else
      die "missing packages: ${missing[*]}; run this script as root (or with sudo available) to install them"
    fi
  fi
  say "installing: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  for p in "${missing[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
      die "package $p still not installed after apt-get install"
  done
  say "installed ${#missing[@]} package(s)"
fi

# Sanity: the pieces the lane relies on.
[ -r /usr/share/qemu/qboot.rom ] || die "/usr/share/qemu/qboot.rom missing (qemu-system-x86 incomplete?)"
command -v qemu-system-x86_64 >/dev/null 2>&1 || die "qemu-system-x86_64 not on PATH"
[ -x /bin/busybox ] || die "/bin/busybox missing (busybox-static)"
found=""
while read -r v; do
  if [ -d "/lib/modules/$v/kernel/drivers/infiniband/sw/rxe" ]; then found=$v; fi
done < <(find /boot -maxdepth 1 -name 'vmlinuz-*' -printf '%f\n' 2>/dev/null | sed 's/^vmlinuz-//' | sort -V)
[ -n "$found" ] || die "no /boot/vmlinuz-* with rdma_rxe modules under /lib/modules (linux-image-amd64 incomplete?)"
say "ok: guest kernel candidate $found"
