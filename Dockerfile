# syntax=docker/dockerfile:1
# Two images from one file (README, "Docker"):
#   train  CUDA PyTorch, decord, TensorRT; runs `make train` / `make export` (docker build --target train)
#   serve  TorchServe, Java 17, ONNX Runtime GPU, CPU PyTorch, one model archive; the default target
#          (SERVE_* build arguments: CUDA PyTorch and TensorRT as well, for the TensorRT backend)
# Both install the project with the Makefile's own `make setup`, so the images run the commands
# the test suite runs outside Docker. Versions are build arguments; the defaults are one
# consistent CUDA 13 set (ONNX Runtime GPU 1.2x+ and the cu130 PyTorch wheels need CUDA 13 + cuDNN 9).

ARG CUDA_VERSION=13.0.1
ARG UBUNTU_VERSION=24.04
ARG PYTHON_VERSION=3.11
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130
ARG UV_VERSION=0.9.5

FROM ghcr.io/astral-sh/uv:${UV_VERSION} AS uv

# ---------------------------------------------------------------- python: CUDA runtime + cuDNN + Python
FROM nvidia/cuda:${CUDA_VERSION}-cudnn-runtime-ubuntu${UBUNTU_VERSION} AS python
ARG PYTHON_VERSION
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_PYTHON_PREFERENCE=only-managed
# Packages come from the Ubuntu release the CUDA_VERSION/UBUNTU_VERSION base pins; exact apt
# versions would break every time the archive moves on.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates make \
    && rm -rf /var/lib/apt/lists/*
# Any PYTHON_VERSION on any Ubuntu base: uv installs a standalone CPython under /opt/python.
COPY --from=uv /uv /usr/local/bin/uv
RUN uv python install "${PYTHON_VERSION}"
WORKDIR /app
# What `pip install -e .` needs; configs and the rest follow in the stages that use them.
COPY pyproject.toml Makefile README.md ./
COPY training training
COPY export export
COPY serving serving
COPY benchmarks benchmarks

# ---------------------------------------------------------------- train: docker build --target train
FROM python AS train
ARG PYTHON_VERSION
ARG TORCH_VERSION
ARG TORCH_INDEX_URL
# CUDA torch from TORCH_INDEX_URL; the `tensorrt` extra builds engines at export time.
RUN PIP_EXTRA_INDEX_URL="${TORCH_INDEX_URL}" \
    make setup PYTHON="$(uv python find "${PYTHON_VERSION}")" TORCH_VERSION="${TORCH_VERSION}" EXTRAS=serve,tensorrt
COPY configs configs
RUN useradd --no-log-init --create-home --uid 10001 --user-group trainer \
    && mkdir -p runs data \
    && chown trainer:trainer runs data
# numeric, so that a cluster's "run as non-root" check can verify it
USER 10001:10001
ENV PATH=/app/.venv/bin:${PATH}
# docker run ... <image> train CONFIG=configs/ucf101_10.yaml RUN=/runs/ucf101_10 GPUS=8
# docker run ... <image> export RUN=/runs/ucf101_10
ENTRYPOINT ["make"]
CMD ["train"]

# ---------------------------------------------------------------- serve-build: the serving venv
FROM python AS serve-build
ARG PYTHON_VERSION
ARG TORCH_VERSION
# By default the server runs the model in ONNX Runtime, on the GPU where the container has one
# (ONNX Runtime GPU finds it through the driver); PyTorch only preprocesses and averages scores,
# so its CPU wheel (~200 MB) stands in for the CUDA one (several GB). The TensorRT backend
# needs CUDA PyTorch (its buffers are torch CUDA tensors) and TensorRT:
#   --build-arg SERVE_TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130
#   --build-arg SERVE_TORCH_VERSION=2.13.0 --build-arg SERVE_EXTRAS=serve,tensorrt
ARG SERVE_TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG SERVE_TORCH_VERSION=${TORCH_VERSION}+cpu
ARG SERVE_EXTRAS=serve
RUN PIP_EXTRA_INDEX_URL="${SERVE_TORCH_INDEX_URL}" \
    make setup PYTHON="$(uv python find "${PYTHON_VERSION}")" TORCH_VERSION="${SERVE_TORCH_VERSION}" EXTRAS="${SERVE_EXTRAS}"

# ---------------------------------------------------------------- serve: the default target
FROM python AS serve
# A folder inside the build context holding model.mar, model.onnx and manifest.json (make export).
ARG EXPORT_DIR=runs/synthetic/export
# Unpinned apt package, as in the python stage: the base image pins the release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends openjdk-17-jre-headless \
    && rm -rf /var/lib/apt/lists/*
COPY --from=serve-build /app /app
# The model stays root-owned (read-only to the server); only RUN/serve (config, logs,
# unpacked archive, key file) is the server user's.
COPY ${EXPORT_DIR}/ /srv/run/export/
RUN useradd --no-log-init --create-home --uid 10001 --user-group torchserve \
    && mkdir -p /srv/run/serve \
    && chown torchserve:torchserve /srv/run/serve
USER 10001:10001
WORKDIR /srv/run
ENV PATH=/app/.venv/bin:${PATH}
# Inference only. Management, gRPC and the metrics stay on the container's loopback (metrics
# take no key); a Prometheus outside needs `--metrics-host 0.0.0.0` after the image name and
# `-p 127.0.0.1:8082:8082` (or a port only the scraper reaches).
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=10s --start-period=180s --retries=3 \
    CMD ["/app/.venv/bin/python", "-m", "serving", "health", "--inference-port", "8080"]
# Inference listens on every interface of the container (with its key, as everywhere:
# `docker exec <container> python -m serving key` prints it), stays in the foreground, renews
# the keys before they expire and stops TorchServe on SIGTERM (docker stop).
ENTRYPOINT ["/app/.venv/bin/python", "-m", "serving", "start", "--run", "/srv/run", "--host", "0.0.0.0", "--foreground"]
CMD ["--model-name", "action"]
