# Shared settings for the runtime scripts. Sourced, not executed.
#
# FUNNEL_HOME     where the runtime lives (outside the repository);
#                 default: ${XDG_CACHE_HOME:-$HOME/.cache}/funnelstack
# FUNNEL_ROOTFS   the Debian 13 root filesystem used on hosts whose glibc is
#                 older than 2.39; default: $FUNNEL_HOME/rootfs-trixie
# FUNNEL_RUNTIME  force "venv" (plain virtualenv on the host) or "rootfs";
#                 default: detected from the host's glibc and Python.

FUNNEL_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
FUNNEL_HOME=${FUNNEL_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/funnelstack}
FUNNEL_ROOTFS=${FUNNEL_ROOTFS:-$FUNNEL_HOME/rootfs-trixie}
FUNNEL_HOST_VENV=$FUNNEL_HOME/venv
# Path of the venv as seen from inside the root filesystem.
FUNNEL_ROOTFS_VENV=/opt/funnelstack-venv

log() { printf '[funnelstack] %s\n' "$*" >&2; }
die() { printf '[funnelstack] error: %s\n' "$*" >&2; exit 1; }

version_ge() {  # version_ge A B: true when version A >= version B
  [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" = "$2" ]
}

detect_runtime() {
  if [ -n "${FUNNEL_RUNTIME:-}" ]; then echo "$FUNNEL_RUNTIME"; return; fi
  local glibc py
  glibc=$(getconf GNU_LIBC_VERSION 2>/dev/null | awk '{print $2}')
  py=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || echo 0)
  if [ -n "$glibc" ] && version_ge "$glibc" 2.39 && version_ge "$py" 3.10 && ! version_ge "$py" 3.14; then
    echo venv
  else
    echo rootfs
  fi
}

# A fingerprint of what the environment must contain; setup re-installs when it changes.
requirements_fingerprint() {
  cat "$FUNNEL_REPO/requirements.txt" "$FUNNEL_REPO/constraints.txt" 2>/dev/null | sha256sum | cut -c1-16
}

# Sets FUNNEL_SHARED_DIRS: host directories visible inside the rootfs at the same
# paths (/tmp, the repository's parent, FUNNEL_BIND entries, the current directory),
# and refuses a rootfs placed inside any of them: it would contain itself, mounts
# would nest without end, and deleting the rootfs could reach the host's files.
check_rootfs_location() {
  FUNNEL_SHARED_DIRS=(/tmp "$(dirname "$FUNNEL_REPO")")
  local extra dir rootfs_real
  IFS=: read -ra extra <<<"${FUNNEL_BIND:-}"
  for dir in "${extra[@]}"; do [ -n "$dir" ] && FUNNEL_SHARED_DIRS+=("$(realpath "$dir")"); done
  case "$PWD/" in "$(dirname "$FUNNEL_REPO")"/*|/tmp/*) ;; *) FUNNEL_SHARED_DIRS+=("$PWD") ;; esac
  rootfs_real=$(realpath -m "$FUNNEL_ROOTFS")
  for dir in "${FUNNEL_SHARED_DIRS[@]}"; do
    case "$rootfs_real/" in
      "$(realpath -m "$dir")"/*) die "the rootfs ($FUNNEL_ROOTFS) lies inside $dir, which is bound into it; set FUNNEL_HOME or FUNNEL_ROOTFS to a path outside it" ;;
    esac
  done
}

rootfs_mounts() {  # the mount points inside the rootfs, parents before children
  findmnt -rn -o TARGET | { grep -F "$FUNNEL_ROOTFS/" || true; }
}
