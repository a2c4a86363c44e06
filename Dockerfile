# The cofounder-server image: `docker build -t cofounder-server .` (README, "Container image";
# docs/deploy.md). Wheels are built in the first stage and installed from it, offline, in the
# second, which has no compiler, no pip cache and no wheel files, and runs as a non-root user.
ARG PYTHON_VERSION=3.12

FROM python:${PYTHON_VERSION}-slim AS builder
WORKDIR /src
COPY clients/python clients/python
COPY server server
# The model SDKs and OpenTelemetry; `--build-arg EXTRAS=` builds the server alone.
ARG EXTRAS=anthropic,openai,otel
# Both local projects in one resolution: the server's cofounder-client is the one beside it.
RUN pip wheel --no-cache-dir --wheel-dir /wheels ./clients/python "./server${EXTRAS:+[${EXTRAS}]}"

FROM python:${PYTHON_VERSION}-slim
ARG EXTRAS=anthropic,openai,otel
RUN useradd --system --uid 10001 --user-group --no-create-home --home-dir /var/lib/cofounder \
        --shell /usr/sbin/nologin cofounder \
    && install -d -o cofounder -g cofounder -m 0750 /var/lib/cofounder
# The wheels are mounted, not copied: no layer of the image holds them. Versions are the
# builder's resolution (--no-index), hence no pins here.
# hadolint ignore=DL3013
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links /wheels "cofounder-server${EXTRAS:+[${EXTRAS}]}"
COPY deploy/docker/healthcheck.py /usr/local/lib/cofounder/healthcheck.py
# A container is reached from outside its network namespace: listen on every interface. The
# server still refuses a non-loopback address without --auth-tokens-file (or the explicit
# --allow-unauthenticated-non-loopback). Metrics have no authentication: keep 9464 internal.
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    COFOUNDER_LISTEN=0.0.0.0:50051 \
    COFOUNDER_METRICS_LISTEN=0.0.0.0:9464 \
    COFOUNDER_DATA_DIR=/var/lib/cofounder \
    COFOUNDER_LOG_FORMAT=json
USER 10001:10001
WORKDIR /var/lib/cofounder
EXPOSE 50051 9464
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "/usr/local/lib/cofounder/healthcheck.py"]
# Exec form: the server is PID 1 and receives SIGTERM itself, which drains (docs/deploy.md);
# with --workers N it is the supervisor, which drains every worker.
ENTRYPOINT ["cofounder-server"]
