# Titanium Cluster: the `cluster` command (supervisor, workers, simulator) in a slim image.
#
#   docker build -t titanium-cluster .
#   docker run --rm -e DISCORD_TOKEN titanium-cluster up --shards auto
#   docker run --rm -p 8080:8080 titanium-cluster up --simulate
#
# Two stages: the build stage installs the project and its dependencies into a virtual
# environment; the final stage copies only that environment onto a clean base (no pip
# cache, no build tools, no source tree). Every dependency ships CPython 3.12 wheels for
# linux x86_64 and aarch64, so neither stage needs a compiler; on a platform without
# wheels, add `apt-get install build-essential` to the build stage only.
#
# ENTRYPOINT is the exec form: `cluster` is PID 1 and receives SIGTERM itself, so
# `docker stop` and Kubernetes drain it (shards close resumably, sessions saved, the
# Redis lease released) and it exits 0. Its workers are its own children and it reaps
# them; no init process is needed.

ARG PYTHON_IMAGE=python:3.12-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/titanium-cluster
WORKDIR /src
# Only what the package build needs (see .dockerignore): the build is not invalidated
# by tests, docs or deploy files.
COPY pyproject.toml README.md ./
COPY protocol ./protocol
COPY worker ./worker
COPY cluster ./cluster
COPY simulator ./simulator
COPY titanium_client ./titanium_client
# A regular (non-editable) install: the final stage needs no /src.
RUN /opt/titanium-cluster/bin/pip install --no-cache-dir . \
    && /opt/titanium-cluster/bin/python -m compileall -q /opt/titanium-cluster/lib

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="titanium-cluster" \
      org.opencontainers.image.description="A Discord gateway cluster: supervisor, shard workers, ZeroMQ event relay"
# A fixed uid/gid (not root), so Kubernetes' runAsNonRoot can check it and volumes can
# be prepared for it.
RUN groupadd --system --gid 10001 titanium \
    && useradd --system --uid 10001 --gid titanium --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin titanium \
    && install -d -o titanium -g titanium -m 0700 /var/lib/titanium-cluster
COPY --from=build /opt/titanium-cluster /opt/titanium-cluster
# Inside a container the loopback defaults of `cluster up` are unreachable from outside,
# so the image listens on every interface: HTTP (/health, /livez, /status, /metrics) on
# 8080, the PUB socket on 5555, the control socket on 5556. Off loopback `cluster up`
# requires CURVE on the ZeroMQ sockets and a bearer token on HTTP (only /health and
# /livez stay open): mount them and name them with CLUSTER_CURVE_SECRET,
# CLUSTER_CURVE_CLIENTS and CLUSTER_HTTP_TOKEN_FILE (deploy/kubernetes/statefulset.yaml
# and deploy/compose.yaml do); without them `cluster up` stops with one line saying so.
# Flags override all of these.
ENV PATH=/opt/titanium-cluster/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CLUSTER_HEALTH=0.0.0.0:8080 \
    CLUSTER_PUB=tcp://0.0.0.0:5555 \
    CLUSTER_CONTROL=tcp://0.0.0.0:5556 \
    CLUSTER_STATE_DIR=/var/lib/titanium-cluster
USER 10001:10001
WORKDIR /var/lib/titanium-cluster
EXPOSE 8080 5555 5556
ENTRYPOINT ["cluster"]
CMD ["up"]
