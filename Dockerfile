# syntax=docker/dockerfile:1.7
# The slim image of handler, scheduler and api (and the simulated runner): built with uv from
# uv.lock, no compilers in the final stage, run as a non-root user.
#   docker build -t swift-trainer .

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm AS build
COPY --from=ghcr.io/astral-sh/uv:0.9 /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PYTHON_DOWNLOADS=never
WORKDIR /app
# Dependencies first (cached while only the source changes), then the project itself.
RUN --mount=type=cache,target=/root/.cache/uv \
    --mount=type=bind,source=uv.lock,target=uv.lock \
    --mount=type=bind,source=pyproject.toml,target=pyproject.toml \
    uv sync --locked --no-dev --extra otlp --no-install-project
COPY pyproject.toml uv.lock README.md ./
COPY src ./src
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --locked --no-dev --extra otlp --no-editable

FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime
RUN groupadd --system --gid 10001 swift \
    && useradd --system --uid 10001 --gid swift --home-dir /var/lib/swift-trainer swift \
    && mkdir -p /var/lib/swift-trainer \
    && chown swift:swift /var/lib/swift-trainer
COPY --from=build --chown=root:root /app/.venv /app/.venv
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    SWIFT_TRAINER_DATA_DIR=/var/lib/swift-trainer \
    OUTPUT_ROOT=/var/lib/swift-trainer/outputs \
    HEALTHCHECK_URL=http://127.0.0.1:9100/metrics
USER swift
WORKDIR /var/lib/swift-trainer
# Components without HTTP serve /metrics on --metrics-port 9100; the api overrides the URL
# with its readiness endpoint (HEALTHCHECK_URL).
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['HEALTHCHECK_URL'], timeout=4)"]
ENTRYPOINT ["swift-trainer"]
CMD ["api"]
