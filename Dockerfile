# calsync container image: `calsync serve` (scheduler and feed server) on port 8080.
#
# Build:  docker build -t calsync .
# Run:    see docs/docker.md. Configuration comes from CALSYNC_* environment
#         variables and *_FILE secret files. The image contains no secrets.
#
# tests/test_image_steps.py repeats this file's build, install and start steps
# outside Docker and checks that its ENV, EXPOSE, USER, VOLUME, HEALTHCHECK,
# ENTRYPOINT and CMD lines still match what it runs, so change the two together.

ARG PYTHON_IMAGE=python:3.12-slim-bookworm

# Stage 1: build the calsync wheel from the source tree.
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore

WORKDIR /src
COPY pyproject.toml README.md ./
COPY calsync ./calsync
# pip builds in an isolated environment with the setuptools that pyproject.toml requires.
RUN python -m pip wheel --no-deps --wheel-dir /wheels .

# Stage 2: the runtime image, with only the wheel and its dependencies.
FROM ${PYTHON_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PATH=/opt/calsync/bin:$PATH

# A fixed uid and gid, so that a volume or a secret file can be owned by the
# container's user on the host: chown 10001:10001.
RUN groupadd --system --gid 10001 calsync \
    && useradd --system --uid 10001 --gid calsync --no-create-home \
        --home-dir /data --shell /usr/sbin/nologin calsync \
    && install -d -o calsync -g calsync -m 0750 /data

# The dependencies come from PyPI at the newest versions that pyproject.toml
# allows. The tzdata package among them supplies the time zones, so the image
# needs no system zone files.
# NOTE: nothing pins the dependency versions yet, so builds on different days
# can install different versions. A constraints file would make builds repeatable.
COPY --from=builder /wheels /tmp/wheels
RUN python -m venv /opt/calsync \
    && /opt/calsync/bin/pip install /tmp/wheels/calsync-*.whl \
    && rm -rf /tmp/wheels

ENV CALSYNC_SYNC_STATE_DIR=/data \
    CALSYNC_SERVER_LISTEN=0.0.0.0:8080

VOLUME ["/data"]
WORKDIR /data
USER 10001:10001
EXPOSE 8080

# /healthz returns 200 while the process responds. The check reads the port
# from CALSYNC_SERVER_LISTEN, uses the standard library (slim images have no
# curl) and ignores proxy variables. A failed connection or an error status
# makes it exit 1.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('CALSYNC_SERVER_LISTEN', ':8080').rpartition(':')[2]; urllib.request.build_opener(urllib.request.ProxyHandler({})).open(f'http://127.0.0.1:{port}/healthz', timeout=4)"]

ENTRYPOINT ["calsync"]
CMD ["serve"]
