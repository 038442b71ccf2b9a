#!/usr/bin/env bash
# Idempotent set-up of the TFX 1.21 runtime.
#
# On a host with glibc >= 2.39 and Python 3.10-3.13: a plain venv.
# Otherwise (for example Debian 12): a Debian 13 root filesystem built with
# debootstrap, outside the repository, with the venv inside it. Everything is
# then run through scripts/run, which enters whichever runtime was set up.
# Re-running only does what is missing; a changed requirements.txt or
# constraints.txt triggers a re-install of the Python packages.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

pip_install_args() {
  local args=(-r "$FUNNEL_REPO/requirements.txt")
  [ -s "$FUNNEL_REPO/constraints.txt" ] && args+=(-c "$FUNNEL_REPO/constraints.txt")
  printf '%s\n' "${args[@]}"
}

setup_host_venv() {
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
  [ "$(id -u)" = 0 ] || die "the Debian 13 root filesystem runtime needs root (chroot, mount)"
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

case "$(detect_runtime)" in
  venv) setup_host_venv ;;
  rootfs) setup_rootfs ;;
  *) die "FUNNEL_RUNTIME must be 'venv' or 'rootfs'" ;;
esac
log "runtime ready ($(detect_runtime))"
