# syntax=docker/dockerfile:1
# enricher: the options-analytics daemon. Two stages: the first builds wheels for the package
# and every dependency, the second installs those wheels only (no compiler, no source tree, no
# pip cache in the final image). Build: `docker build -t enricher .`; run: see compose.yaml.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# .dockerignore lets in only pyproject.toml, README.md and the enricher/ package.
COPY . .
# All dependencies ship manylinux wheels for CPython 3.11, so no build-essential is needed.
RUN pip wheel . -w /wheels

FROM python:3.11-slim AS runtime
LABEL org.opencontainers.image.title="enricher" \
      org.opencontainers.image.description="Real-time options-analytics daemon for DeltaStream"
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    ENRICHER_HTTP_PORT=9108
# The wheels (enricher plus its exact resolved dependencies) are bind-mounted from the build
# stage, so they never become a layer of this image.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index /wheels/*.whl \
 && groupadd --system --gid 10001 enricher \
 && useradd --system --no-log-init --uid 10001 --gid enricher \
        --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin enricher
# Numeric, so that runtimes (Kubernetes runAsNonRoot) can tell it is not root: user enricher.
USER 10001:10001
EXPOSE 9108
# The daemon drains its queues and flushes MongoDB on SIGTERM (ENRICHER_GRACE_PERIOD, default 10 s);
# give it more than that: compose sets stop_grace_period 30s.
STOPSIGNAL SIGTERM
# Exec form: there is no shell to expand ${ENRICHER_HTTP_PORT:-9108}, so python reads the port
# itself. slim has no curl; urlopen raises (exit 1) on refusal, timeout or a non-2xx answer.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('ENRICHER_HTTP_PORT', '9108') + '/healthz', timeout=4).close()"]
# python is PID 1 unless the runtime adds an init (compose: `init: true`); the daemon handles
# SIGTERM and SIGINT itself, and the process pool ignores SIGINT.
ENTRYPOINT ["python", "-m", "enricher"]
CMD ["run"]
