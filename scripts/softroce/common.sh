# Shared helpers for the soft-RoCE lane scripts (sourced, not run).
# shellcheck shell=bash

SOFTROCE_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$SOFTROCE_DIR/../.." && pwd)
# Everything the guests must see lives outside /tmp: the guests cover the host's /tmp with tmpfs.
# A checkout under /tmp (as a CI clone may be) keeps its cache in /var/cache instead.
case "$REPO_DIR/" in
  /tmp/*) default_cache=/var/cache/peercm-softroce ;;
  *) default_cache=$REPO_DIR/target/softroce ;;
esac
export SOFTROCE_CACHE=${PEERCM_SOFTROCE_CACHE:-$default_cache}

sr_prog=$(basename "$0" .sh)
say() { printf '%s: %s\n' "$sr_prog" "$*" >&2; }
die() { printf '%s: error: %s\n' "$sr_prog" "$*" >&2; exit 1; }

# Milliseconds since the epoch (host side).
now_ms() { date +%s%3N; }

# Absolute, symlink-free path of an existing directory.
abs_dir() { (cd "$1" && pwd -P); }

# True when PATH is /tmp or below (the guests cannot see the host's /tmp).
under_tmp() {
  case "$1/" in
    /tmp/*) return 0 ;;
    *) return 1 ;;
  esac
}
