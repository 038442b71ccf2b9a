# The pipeline image: the project's packages on Debian 13 with the Python
# environment of requirements.txt + constraints.txt. Kubeflow runs every step
# in it (TFX's launcher replaces the entrypoint); `docker run IMAGE ...` runs
# the CLI (python -m tfx_pipeline).
#
#   docker build --build-arg BASE_IMAGE=debian:trixie-slim -t funnelstack:latest .
#
# Without a Docker engine or registry, `make image` writes the same image from
# the project's own Debian 13 root filesystem (scripts/build_image.py). That
# builder reads the ENV, WORKDIR, COPY, ENTRYPOINT and CMD lines below, so keep
# them in the simple forms used here (KEY=VALUE pairs, absolute paths, JSON
# arrays; no variable references).
ARG BASE_IMAGE=debian:trixie-slim
FROM ${BASE_IMAGE}

# The packages scripts/setup.sh bootstraps the rootfs runtime with.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 python3-venv python3-dev python3-pip build-essential ca-certificates git \
 && rm -rf /var/lib/apt/lists/*

# The same venv path as the rootfs runtime (scripts/common.sh FUNNEL_ROOTFS_VENV).
COPY requirements.txt constraints.txt /opt/funnelstack/
RUN python3 -m venv /opt/funnelstack-venv \
 && /opt/funnelstack-venv/bin/pip install --no-cache-dir --upgrade pip \
 && /opt/funnelstack-venv/bin/pip install --no-cache-dir \
      -r /opt/funnelstack/requirements.txt -c /opt/funnelstack/constraints.txt

# `python` is the venv's, and the project imports from any working directory:
# Kubeflow's launcher runs `python -m tfx.orchestration...` in a directory of its own.
ENV PATH=/opt/funnelstack-venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    VIRTUAL_ENV=/opt/funnelstack-venv \
    PYTHONPATH=/opt/funnelstack \
    LANG=C.UTF-8
WORKDIR /opt/funnelstack

COPY keras_models/ /opt/funnelstack/keras_models/
COPY transform/ /opt/funnelstack/transform/
COPY tfx_pipeline/ /opt/funnelstack/tfx_pipeline/
COPY serving/ /opt/funnelstack/serving/

ENTRYPOINT ["python", "-m", "tfx_pipeline"]
CMD ["--help"]
