#!/bin/bash
# Readiness check for TF Serving: exits 0 only when every model named on the
# command line has a version in state AVAILABLE, asked through TF Serving's
# REST model-status API (GET /v1/models/<name>) on $REST_PORT (default 8501).
# Plain bash (/dev/tcp), because the tensorflow/serving images have no curl.
#   model_ready.sh shared_bottom htlnet
set -u
port="${REST_PORT:-8501}"
for model in "$@"; do
  exec 3<>"/dev/tcp/127.0.0.1/${port}" || exit 1
  printf 'GET /v1/models/%s HTTP/1.0\r\nHost: localhost\r\n\r\n' "${model}" >&3
  status="$(cat <&3)"
  exec 3<&-
  grep -q '"state": *"AVAILABLE"' <<<"${status}" || { echo "${model}: not AVAILABLE" >&2; exit 1; }
done
