#!/usr/bin/env bash
# `make image`: the pipeline image (docs/image.md).
#   With a Docker engine that answers `docker info`: docker build of the Dockerfile,
#   tagged $IMAGE, with --build-arg BASE_IMAGE=$BASE_IMAGE when set.
#   Without one (and without any registry): scripts/build_image.py writes a
#   `docker load` archive at $IMAGE_ARCHIVE from the project's Debian 13 root
#   filesystem, which is set up first if missing (scripts/setup.sh).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
IMAGE=${IMAGE:-funnelstack:latest}
IMAGE_ARCHIVE=${IMAGE_ARCHIVE:-$FUNNEL_REPO/out/funnelstack-image.tar}

if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
  build_args=()
  [ -n "${BASE_IMAGE:-}" ] && build_args+=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
  log "docker build -t $IMAGE ${build_args[*]}"
  exec docker build "${build_args[@]}" -t "$IMAGE" "$FUNNEL_REPO"
fi

log "no Docker engine answers 'docker info': writing the image as an archive from the project's Debian 13 root filesystem"
FUNNEL_RUNTIME=rootfs "$FUNNEL_REPO/scripts/setup.sh" 2>&1 | grep -v 'up to date\|runtime ready' >&2 || true
[ "${PIPESTATUS[0]}" = 0 ] || die "set-up of the root filesystem failed"
base_arg=()
[ -n "${BASE_IMAGE:-}" ] && base_arg=(--base-image "$BASE_IMAGE") \
  && log "BASE_IMAGE=$BASE_IMAGE is recorded as the base name only: without an engine the content is the project's rootfs"
exec python3 "$FUNNEL_REPO/scripts/build_image.py" --rootfs "$FUNNEL_ROOTFS" \
  --tag "$IMAGE" --output "$IMAGE_ARCHIVE" "${base_arg[@]}"
