#!/usr/bin/env bash
# Idempotent set-up of the TFX 1.21 runtime.
#
# On a host with glibc >= 2.39 and Python 3.12-3.13 (FUNNEL_PYTHON_MIN/MAX in
# common.sh: the Pythons every pin in constraints.txt has wheels for): a plain venv.
# Otherwise (for example Debian 12, or a host whose python3 is 3.11): a Debian 13
# root filesystem built with debootstrap, outside the repository, with the venv
# inside it. Everything is then run through scripts/run, which enters whichever
# runtime was set up.
# Re-running only does what is missing; a changed requirements.txt or
# constraints.txt triggers a re-install of the Python packages.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

pip_install_args() {
  local args=(-r "$FUNNEL_REPO/requirements.txt" -r "$FUNNEL_REPO/requirements-test.txt")
  [ -s "$FUNNEL_REPO/constraints.txt" ] && args+=(-c "$FUNNEL_REPO/constraints.txt")
  printf '%s\n' "${args[@]}"
}

# Refuses a venv on a Python the pinned packages have no wheels for, before making one.
check_venv_python() {
  local py
  if [ -x "$FUNNEL_HOST_VENV/bin/python" ]; then
    py=$("$FUNNEL_HOST_VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || echo none)
  else
    py=$(host_python_version)
  fi
  python_supported "$py" && return
  die "Python $py (python3 on PATH) cannot take funnelstack's pinned packages: a plain venv needs Python $FUNNEL_PYTHON_MIN-$FUNNEL_PYTHON_MAX (constraints.txt pins scipy 1.18.1, which needs >= 3.12, and tfx 1.21, which needs < 3.14). Put a python3 of $FUNNEL_PYTHON_MIN-$FUNNEL_PYTHON_MAX first on PATH, or unset FUNNEL_RUNTIME to use the Debian 13 runtime (needs root); see README.md, 'The runtime'."
}

setup_host_venv() {
  check_venv_python
  local marker="$FUNNEL_HOST_VENV/.installed-$(requirements_fingerprint)"
  if [ -f "$marker" ]; then log "venv up to date: $FUNNEL_HOST_VENV"; return; fi
  log "creating venv in $FUNNEL_HOST_VENV"
  python3 -m venv "$FUNNEL_HOST_VENV"
  mapfile -t args < <(pip_install_args)
  "$FUNNEL_HOST_VENV/bin/pip" install --upgrade pip
  "$FUNNEL_HOST_VENV/bin/pip" install "${args[@]}"
  rm -f "$FUNNEL_HOST_VENV"/.installed-*
  touch "$marker"
}

ensure_debootstrap() {
  command -v debootstrap >/dev/null && return
  [ "$(id -u)" = 0 ] || die "debootstrap is missing and installing it needs root"
  log "installing debootstrap"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
}

bootstrap_rootfs() {
  [ -f "$FUNNEL_ROOTFS/.funnelstack-bootstrapped" ] && return
  ensure_debootstrap
  local staging="$FUNNEL_ROOTFS.partial"
  # A half-built staging tree from an interrupted run is never mounted; start over.
  rm -rf "$staging"
  mkdir -p "$(dirname "$FUNNEL_ROOTFS")"
  log "building Debian 13 root filesystem in $FUNNEL_ROOTFS (about a minute)"
  debootstrap --variant=minbase \
    --include=python3,python3-venv,python3-dev,python3-pip,build-essential,ca-certificates,git \
    trixie "$staging" >"$FUNNEL_HOME/debootstrap.log" 2>&1 \
    || die "debootstrap failed; see $FUNNEL_HOME/debootstrap.log"
  mv "$staging" "$FUNNEL_ROOTFS"
  touch "$FUNNEL_ROOTFS/.funnelstack-bootstrapped"
}

sync_ca_certificates() {
  # Hosts behind an intercepting proxy trust extra CAs; the rootfs must too.
  local added=0 crt
  mkdir -p "$FUNNEL_ROOTFS/usr/local/share/ca-certificates"
  for crt in /usr/local/share/ca-certificates/*.crt; do
    [ -f "$crt" ] || continue
    if ! cmp -s "$crt" "$FUNNEL_ROOTFS/usr/local/share/ca-certificates/$(basename "$crt")"; then
      cp "$crt" "$FUNNEL_ROOTFS/usr/local/share/ca-certificates/"; added=1
    fi
  done
  [ "$added" = 1 ] && chroot "$FUNNEL_ROOTFS" /usr/sbin/update-ca-certificates >/dev/null
  return 0
}

setup_rootfs() {
  [ "$(id -u)" = 0 ] || die "the Debian 13 root filesystem runtime needs root (chroot, mount). It is used because this host cannot take a plain venv, which needs glibc >= 2.39 and Python $FUNNEL_PYTHON_MIN-$FUNNEL_PYTHON_MAX (here: $(getconf GNU_LIBC_VERSION 2>/dev/null || echo 'no glibc'), Python $(host_python_version))"
  check_rootfs_location
  mkdir -p "$FUNNEL_HOME"
  bootstrap_rootfs
  sync_ca_certificates
  local marker="$FUNNEL_ROOTFS$FUNNEL_ROOTFS_VENV/.installed-$(requirements_fingerprint)"
  if [ -f "$marker" ]; then log "rootfs venv up to date"; return; fi
  log "installing Python packages into the rootfs venv (a few minutes)"
  mapfile -t args < <(pip_install_args)
  FUNNEL_SKIP_SETUP=1 "$FUNNEL_REPO/scripts/run" bash -c '
      set -e
      [ -x "$0/bin/pip" ] || python3 -m venv "$0"
      "$0/bin/pip" install -q --upgrade pip
      "$0/bin/pip" install -q "$@"' "$FUNNEL_ROOTFS_VENV" "${args[@]}"
  rm -f "$FUNNEL_ROOTFS$FUNNEL_ROOTFS_VENV"/.installed-*
  touch "$marker"
}

# The project itself, installed in editable mode: the `funnelstack` command in the
# runtime's PATH, importing this work tree's code. Re-done when the work tree moves
# (a fresh clone elsewhere) or pyproject.toml changes; takes a few seconds.
install_project() {
  local venv=$1 root=$2   # the venv as seen from inside the runtime; the runtime's root ("" for venv)
  local marker="$root$venv/.project-$(printf '%s\n' "$FUNNEL_REPO" | cat - "$FUNNEL_REPO/pyproject.toml" | sha256sum | cut -c1-16)"
  [ -f "$marker" ] && return
  log "installing the funnelstack package (editable, from $FUNNEL_REPO)"
  local run=(env)
  [ -n "$root" ] && run=(env FUNNEL_SKIP_SETUP=1 "$FUNNEL_REPO/scripts/run")
  local output
  # setuptools warns about every editable install; its output matters only on failure.
  output=$("${run[@]}" "$venv/bin/pip" install -q --no-deps --no-build-isolation -e "$FUNNEL_REPO" 2>&1) \
    || { printf '%s\n' "$output" >&2; die "installing the funnelstack package failed"; }
  rm -f "$root$venv"/.project-*
  touch "$marker"
}

# `funnelstack` on the host's PATH: a two-line script that enters the runtime
# (scripts/run) from whatever directory it is called in. Written when
# FUNNEL_BIN_DIR (default /usr/local/bin) is writable, else a note says how to call it.
install_command() {
  local dir=${FUNNEL_BIN_DIR:-/usr/local/bin} wanted
  wanted=$(printf '#!/bin/sh\n# Written by %s/scripts/setup.sh: the funnelstack command in its runtime.\nexec "%s/scripts/run" funnelstack "$@"\n' "$FUNNEL_REPO" "$FUNNEL_REPO")
  [ -f "$dir/funnelstack" ] && [ "$(cat "$dir/funnelstack")" = "$wanted" ] && return
  if [ -d "$dir" ] && [ -w "$dir" ]; then
    printf '%s\n' "$wanted" >"$dir/funnelstack.partial" && chmod 755 "$dir/funnelstack.partial" \
      && mv "$dir/funnelstack.partial" "$dir/funnelstack"
    log "installed the funnelstack command in $dir"
  else
    log "note: $dir is not writable, so funnelstack is not on PATH; call $FUNNEL_REPO/scripts/run funnelstack"
  fi
}

case "$(detect_runtime)" in
  venv) setup_host_venv; install_project "$FUNNEL_HOST_VENV" "" ;;
  rootfs) setup_rootfs; install_project "$FUNNEL_ROOTFS_VENV" "$FUNNEL_ROOTFS" ;;
  *) die "FUNNEL_RUNTIME must be 'venv' or 'rootfs'" ;;
esac
install_command
log "runtime ready ($(detect_runtime))"
