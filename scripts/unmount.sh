#!/usr/bin/env bash
# Unmount everything scripts/run mounted inside the root filesystem.
# Run this before deleting the rootfs: a bind-mounted work tree inside it
# would otherwise be deleted with it.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
[ -d "$FUNNEL_ROOTFS" ] || exit 0
rootfs_mounts | sort -r | while read -r target; do
  umount -l "$target" && log "unmounted $target"
done
