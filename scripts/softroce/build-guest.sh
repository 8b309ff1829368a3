#!/usr/bin/env bash
# Builds the soft-RoCE guest: an uncompressed vmlinux (QEMU boots its PVH entry directly, which
# saves ~3.4 s of in-guest decompression under TCG) and a tiny initramfs (static busybox, the
# virtio/9p modules, an /init that mounts the host's root read-only over 9p and the per-run lane
# dir read-write, then switch_roots into "$LANE/guest-init.sh").
#
#   scripts/softroce/build-guest.sh            # build if inputs changed, print the output paths
#   scripts/softroce/build-guest.sh --force    # rebuild unconditionally
#
# Output (cache dir, default target/softroce/, env PEERCM_SOFTROCE_CACHE; never under /tmp):
#   guest/vmlinux  guest/initramfs.cpio.gz  guest/kver  guest/stamp
# The kernel is the newest /boot/vmlinuz-* that has rdma_rxe under /lib/modules/<ver> (Debian's
# linux-image-amd64), not necessarily the running host kernel. RDMA modules (ib_core, rdma_rxe,
# rdma_ucm, ...) are not in the initramfs: the guest modprobes them from the host's /lib/modules,
# which it sees over 9p.
set -euo pipefail
# shellcheck source=common.sh
. "$(dirname "$0")/common.sh"

force=0
case "${1:-}" in
  --force) force=1 ;;
  "") ;;
  -h | --help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) die "unknown argument: $1 (usage: build-guest.sh [--force])" ;;
esac

under_tmp "$SOFTROCE_CACHE" && die "cache dir $SOFTROCE_CACHE is under /tmp, which the guests cannot see; set PEERCM_SOFTROCE_CACHE elsewhere"

# Modules inserted by /init, in this order (dependencies first).
INITRD_MODULES=(virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci
  failover net_failover virtio_net netfs fscache 9pnet 9pnet_virtio 9p)

for c in xz cpio gzip modinfo busybox; do
  command -v "$c" >/dev/null 2>&1 || die "$c not found: run scripts/softroce/setup.sh"
done
BUSYBOX=$(command -v busybox)
file_is_static() { ! ldd "$1" >/dev/null 2>&1; }
[ -x /bin/busybox ] && BUSYBOX=/bin/busybox
file_is_static "$BUSYBOX" || die "$BUSYBOX is dynamically linked: install busybox-static (scripts/softroce/setup.sh)"

# Pick the guest kernel: newest version with rdma_rxe modules.
kver=""
while read -r v; do
  if [ -f "/boot/vmlinuz-$v" ] && [ -d "/lib/modules/$v/kernel/drivers/infiniband/sw/rxe" ]; then
    kver=$v
  fi
done < <(find /boot -maxdepth 1 -name 'vmlinuz-*' -printf '%f\n' 2>/dev/null | sed 's/^vmlinuz-//' | sort -V)
[ -n "$kver" ] || die "no /boot/vmlinuz-<ver> with /lib/modules/<ver>/kernel/drivers/infiniband/sw/rxe; run scripts/softroce/setup.sh (installs linux-image-amd64)"
bzimage=/boot/vmlinuz-$kver

# Resolve module files (may be .ko, .ko.xz or .ko.zst).
mod_files=()
for m in "${INITRD_MODULES[@]}"; do
  f=$(modinfo -k "$kver" -F filename "$m" 2>/dev/null | head -n1) || true
  case "$f" in
    "") die "module $m not found for kernel $kver" ;;
    "(builtin)") continue ;;
  esac
  [ -f "$f" ] || die "module file $f missing"
  mod_files+=("$m=$f")
done

out=$SOFTROCE_CACHE/guest
mkdir -p "$out"

# Inputs that decide whether to rebuild: this script, the kernel, the modules, busybox.
stamp_input() {
  printf 'builder %s\n' "$(sha256sum "$0" | cut -d' ' -f1)"
  printf 'kver %s\n' "$kver"
  stat -L -c 'file %n %s %Y' "$bzimage" "$BUSYBOX"
  for mf in "${mod_files[@]}"; do stat -L -c 'file %n %s %Y' "${mf#*=}"; done
}
want=$(stamp_input | sha256sum | cut -d' ' -f1)

exec 9>"$out/.lock"
flock -w 300 9 || die "timed out waiting for another build-guest.sh ($out/.lock)"

if [ "$force" = 0 ] && [ -f "$out/stamp" ] && [ "$(cat "$out/stamp")" = "$want" ] &&
  [ -s "$out/vmlinux" ] && [ -s "$out/initramfs.cpio.gz" ]; then
  say "up to date: kernel $kver ($out)"
  printf '%s\n' "$out/vmlinux" "$out/initramfs.cpio.gz"
  exit 0
fi

say "building guest for kernel $kver into $out"
work=$(mktemp -d "$out/.build.XXXXXX")
trap 'rm -rf "$work"' EXIT

# 1. vmlinux: cut the bzImage at the xz magic FD 37 7A 58 5A 00 and decompress. xz complains
#    about the trailing data after the stream; the output is complete.
off=$(LC_ALL=C grep -obUaP '\xFD7zXZ\x00' "$bzimage" | head -n1 | cut -d: -f1) || true
[ -n "$off" ] || die "$bzimage: no xz payload found (not a Debian xz bzImage?)"
tail -c +"$((off + 1))" "$bzimage" | xz -dc >"$work/vmlinux" 2>/dev/null || true
[ "$(head -c 4 "$work/vmlinux" | od -An -tx1 | tr -d ' \n')" = "7f454c46" ] ||
  die "decompressed kernel from $bzimage is not an ELF file"
if command -v readelf >/dev/null 2>&1; then
  readelf -n "$work/vmlinux" 2>/dev/null | grep -q '0x00000012' ||
    die "$work/vmlinux has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY); QEMU cannot boot it directly"
fi

# 2. initramfs.
root=$work/root
mkdir -p "$root"/{bin,dev,proc,sys,newroot,lib/modules}
cp "$BUSYBOX" "$root/bin/busybox"
for a in sh mount umount mkdir insmod switch_root sleep cat poweroff echo timeout; do
  ln -s busybox "$root/bin/$a"
done
: >"$root/modules.order"
for mf in "${mod_files[@]}"; do
  m=${mf%%=*} f=${mf#*=}
  case "$f" in
    *.ko.xz) xz -dc "$f" >"$root/lib/modules/$m.ko" ;;
    *.ko.zst) command -v zstd >/dev/null 2>&1 || die "$f is zstd-compressed; install zstd"
      zstd -qdc "$f" >"$root/lib/modules/$m.ko" ;;
    *.ko.gz) gzip -dc "$f" >"$root/lib/modules/$m.ko" ;;
    *) cp "$f" "$root/lib/modules/$m.ko" ;;
  esac
  echo "$m" >>"$root/modules.order"
done

cat >"$root/init" <<'INIT'
#!/bin/sh
# peercm soft-RoCE initramfs /init (generated by scripts/softroce/build-guest.sh).
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
fail() { echo "initramfs: FATAL: $*"; sleep 1; poweroff -f; sleep 5; }
for m in $(cat /modules.order); do
  timeout 20 insmod "/lib/modules/$m.ko" || fail "insmod $m"
done
lane=""
for a in $(cat /proc/cmdline); do
  case "$a" in peercm.lane=*) lane=${a#peercm.lane=} ;; esac
done
[ -n "$lane" ] || fail "no peercm.lane= on the kernel command line"
timeout 30 mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=262144 host /newroot ||
  fail "mount host root over 9p"
mount -t tmpfs -o mode=1777 tmpfs /newroot/tmp || fail "tmpfs /tmp"
mount -t tmpfs -o mode=755 tmpfs /newroot/run || fail "tmpfs /run"
# The lane share is mounted at the same absolute path it has on the host (the host root is
# read-only, so no new mount point can be made; the lane dir itself is the mount point).
[ -d "/newroot$lane" ] || fail "lane dir $lane not visible in the host root"
timeout 30 mount -t 9p -o trans=virtio,version=9p2000.L,rw,msize=262144 lane "/newroot$lane" ||
  fail "mount lane dir over 9p"
[ -f "/newroot$lane/guest-init.sh" ] || fail "$lane/guest-init.sh missing"
mount --move /proc /newroot/proc || fail "move /proc"
mount --move /sys /newroot/sys || fail "move /sys"
mount --move /dev /newroot/dev || fail "move /dev"
exec switch_root /newroot /bin/bash "$lane/guest-init.sh"
INIT
chmod 755 "$root/init"

(cd "$root" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet -R 0:0) |
  gzip -1 >"$work/initramfs.cpio.gz"

echo "$kver" >"$work/kver"
mv -f "$work/vmlinux" "$out/vmlinux"
mv -f "$work/initramfs.cpio.gz" "$out/initramfs.cpio.gz"
mv -f "$work/kver" "$out/kver"
echo "$want" >"$out/stamp.tmp" && mv -f "$out/stamp.tmp" "$out/stamp"
say "built: $(du -h "$out/vmlinux" | cut -f1) vmlinux, $(du -h "$out/initramfs.cpio.gz" | cut -f1) initramfs"
printf '%s\n' "$out/vmlinux" "$out/initramfs.cpio.gz"
