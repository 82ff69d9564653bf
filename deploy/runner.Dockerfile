# syntax=docker/dockerfile:1.7
# The runner of a GPU host: a CUDA PyTorch base (its torch and CUDA libraries are kept) plus
# this project with the `swift` extra (ms-swift 4.6.0), run as a non-root user.
#   docker build -f deploy/runner.Dockerfile -t swift-trainer-runner .
# NVIDIA's container toolkit exposes the GPUs (compose reserves them for the runner).

ARG BASE_IMAGE=pytorch/pytorch:2.8.0-cuda12.8-cudnn9-runtime

FROM ${BASE_IMAGE} AS runner
COPY --from=ghcr.io/astral-sh/uv:0.9 /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PYTHON_DOWNLOADS=never UV_SYSTEM_PYTHON=1
WORKDIR /src
COPY pyproject.toml uv.lock README.md ./
COPY src ./src
# The locked versions, except torch and its CUDA wheels, which the base image provides.
RUN --mount=type=cache,target=/root/.cache/uv \
    uv export --locked --no-dev --extra swift --extra otlp --no-emit-project \
        --no-emit-package torch --no-hashes -o /tmp/requirements.txt \
    && uv pip install -r /tmp/requirements.txt \
    && uv pip install --no-deps . \
    && rm -rf /src /tmp/requirements.txt
RUN groupadd --system --gid 10001 swift \
    && useradd --system --uid 10001 --gid swift --home-dir /var/lib/swift-trainer swift \
    && mkdir -p /var/lib/swift-trainer/outputs \
    && chown -R swift:swift /var/lib/swift-trainer
ENV PYTHONUNBUFFERED=1 \
    SWIFT_TRAINER_DATA_DIR=/var/lib/swift-trainer \
    OUTPUT_ROOT=/var/lib/swift-trainer/outputs \
    HEALTHCHECK_URL=http://127.0.0.1:9100/metrics
USER swift
WORKDIR /var/lib/swift-trainer
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['HEALTHCHECK_URL'], timeout=4)"]
ENTRYPOINT ["swift-trainer"]
CMD ["runner", "--metrics-port", "9100"]
