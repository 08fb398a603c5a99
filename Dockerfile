# syntax=docker/dockerfile:1
# lbhealthd: `docker build -t lbhealthd .`
# The same image runs the daemon (the default command) and the host agent:
#   docker run -v /etc/lbhealthd:/etc/lbhealthd:ro -v /run/haproxy:/run/haproxy lbhealthd
#   docker run lbhealthd agent --listen 0.0.0.0:9111 --agent-port 9112
# Kubernetes manifests: docs/kubernetes/.

# Build the wheels (lbhealthd's and its dependencies') in a throw-away stage, so the image gets
# neither the sources nor the build tools. Extras: aws (the ELBv2 driver) and fast (uvloop, for
# daemon.event_loop); not demo (matplotlib), which a sidecar never runs.
FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
COPY pyproject.toml README.md ./
COPY lbhealthd ./lbhealthd
RUN pip wheel --no-cache-dir --wheel-dir /wheels '.[aws,fast]'

FROM python:3.11-slim
LABEL org.opencontainers.image.title="lbhealthd" \
      org.opencontainers.image.description="Load-aware health checks that drain overloaded servers from a load balancer and restore them when they recover" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0"
# No .pyc files at run time: the root file system is read-only under Kubernetes.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
# Runtime dependencies only (no test or demo extras); the wheels are mounted, not copied into
# a layer.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links /wheels 'lbhealthd[aws,fast]'
# A fixed numeric uid/gid, so Kubernetes' runAsNonRoot can verify it and volumes can be shared
# by group (fsGroup). The state and runtime directories match the config's defaults.
RUN groupadd --system --gid 10001 lbhealthd \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/lbhealthd \
       --no-create-home --shell /usr/sbin/nologin lbhealthd \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/lbhealthd /run/lbhealthd \
    && install -d -m 0755 /etc/lbhealthd
USER 10001:10001
# daemon.http (/metrics /healthz /status); it listens on 127.0.0.1 unless the config says otherwise.
EXPOSE 9110
# No HEALTHCHECK: the same image runs `run` and `agent`, which listen on different ports, and
# Kubernetes ignores it in favour of its own probes (see docs/kubernetes/). With plain Docker, use
# --health-cmd with the address of your config.
# lbhealthd runs as PID 1: it handles SIGTERM/SIGINT/SIGHUP itself and starts no child processes.
ENTRYPOINT ["lbhealthd"]
CMD ["run", "-c", "/etc/lbhealthd/config.yaml"]
