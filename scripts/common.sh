# Shared settings for the runtime scripts. Sourced, not executed.
#
# FUNNEL_HOME     where the runtime lives (outside the repository); default:
#                 /var/cache/funnelstack for root, else
#                 ${XDG_CACHE_HOME:-$HOME/.cache}/funnelstack
# FUNNEL_ROOTFS   the Debian 13 root filesystem used on hosts whose glibc is
#                 older than 2.39 or whose python3 is not 3.12-3.13 (see
#                 FUNNEL_PYTHON_MIN below); default: $FUNNEL_HOME/rootfs-trixie
# FUNNEL_RUNTIME  force "venv" (plain virtualenv on the host) or "rootfs";
#                 default: detected from the host's glibc and Python.

FUNNEL_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# Root's runtime lives outside its home directory so that commands also run from
# there: a directory that holds the rootfs cannot be made visible inside it
# (check_rootfs_location). Only root can use the rootfs runtime at all.
if [ "$(id -u)" = 0 ]; then
  FUNNEL_HOME=${FUNNEL_HOME:-/var/cache/funnelstack}
else
  FUNNEL_HOME=${FUNNEL_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/funnelstack}
fi
FUNNEL_ROOTFS=${FUNNEL_ROOTFS:-$FUNNEL_HOME/rootfs-trixie}
FUNNEL_HOST_VENV=$FUNNEL_HOME/venv
# Path of the venv as seen from inside the root filesystem.
FUNNEL_ROOTFS_VENV=/opt/funnelstack-venv

log() { printf '[funnelstack] %s\n' "$*" >&2; }
die() { printf '[funnelstack] error: %s\n' "$*" >&2; exit 1; }

version_ge() {  # version_ge A B: true when version A >= version B
  [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" = "$2" ]
}

# The Pythons a plain venv is made with: those for which every pin in constraints.txt
# has a wheel. 3.10 and 3.11 lack numpy 2.4.6 (>= 3.11), matplotlib 3.11.2 (>= 3.11),
# keras-rs 0.4 (>= 3.11) and scipy 1.18.1 (>= 3.12); 3.14 lacks tfx 1.21 and
# tensorflow-model-analysis 0.52 (both < 3.14) and a TensorFlow 2.21 wheel. Other
# hosts get the Debian 13 runtime (Python 3.13). The code itself is kept 3.10-clean
# (tests/test_python_versions.py).
FUNNEL_PYTHON_MIN=3.12
FUNNEL_PYTHON_MAX=3.13

host_python_version() {  # major.minor of the host's python3, or "none"
  python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || echo none
}

python_supported() {  # python_supported 3.12: within FUNNEL_PYTHON_MIN..FUNNEL_PYTHON_MAX
  [ "$1" != none ] && version_ge "$1" "$FUNNEL_PYTHON_MIN" && version_ge "$FUNNEL_PYTHON_MAX" "$1"
}

detect_runtime() {
  if [ -n "${FUNNEL_RUNTIME:-}" ]; then echo "$FUNNEL_RUNTIME"; return; fi
  local glibc
  glibc=$(getconf GNU_LIBC_VERSION 2>/dev/null | awk '{print $2}')
  if [ -n "$glibc" ] && version_ge "$glibc" 2.39 && python_supported "$(host_python_version)"; then
    echo venv
  else
    echo rootfs
  fi
}

# A fingerprint of what the environment must contain; setup re-installs when it changes.
requirements_fingerprint() {
  cat "$FUNNEL_REPO/requirements.txt" "$FUNNEL_REPO/requirements-test.txt" \
      "$FUNNEL_REPO/constraints.txt" 2>/dev/null | sha256sum | cut -c1-16
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
  rootfs_real=$(realpath -m "$FUNNEL_ROOTFS")
  for dir in "${FUNNEL_SHARED_DIRS[@]}"; do
    path_within "$rootfs_real" "$dir" \
      && die "the rootfs ($FUNNEL_ROOTFS) lies inside $dir, which is bound into it; set FUNNEL_HOME or FUNNEL_ROOTFS to a path outside it"
  done
  for dir in "${FUNNEL_SHARED_DIRS[@]}"; do path_within "$PWD" "$dir" && return 0; done
  # The current directory is bound in as well, so that relative paths mean the same
  # inside. One that holds the rootfs (/, the home directory of the default
  # FUNNEL_HOME) cannot be: the rootfs would contain itself.
  path_within "$PWD" "$rootfs_real" \
    && die "the current directory ($PWD) lies inside the runtime ($FUNNEL_ROOTFS); run from a directory of your own"
  path_within "$rootfs_real" "$PWD" \
    && die "the current directory ($PWD) holds the runtime ($FUNNEL_ROOTFS), so it cannot be made visible inside it; run from another directory (the one with your data, say), or set FUNNEL_HOME to a path outside $PWD"
  FUNNEL_SHARED_DIRS+=("$PWD")
}

path_within() {  # path_within PATH DIR: PATH is DIR or lies below it
  local prefix
  prefix=$(realpath -m "$2")
  prefix=${prefix%/}/   # "/" stays "/", "/work" becomes "/work/"
  case "$(realpath -m "$1")/" in "$prefix"*) return 0 ;; esac
  return 1
}

rootfs_mounts() {  # the mount points inside the rootfs, parents before children
  findmnt -rn -o TARGET | { grep -F "$FUNNEL_ROOTFS/" || true; }
}
