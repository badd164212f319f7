# The image service (diffusers image generation, TensorRT engines on GPU): gRPC 50053, metrics 9103.
# Two targets from one file:
#   cpu — slim Python base, CPU build of torch, the tiny default model (kind, minikube, laptops)
#   gpu — CUDA base, CUDA build of torch and the `tensorrt` extra (GPU node pools; the default)
#   docker build -f docker/image.Dockerfile --target gpu -t fabula-image:gpu .     (or: make images)
# The CUDA major version of CUDA_IMAGE, TORCH_CUDA_INDEX and the tensorrt-cuXX wheels must agree.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
ARG TORCH_CUDA_INDEX=https://download.pytorch.org/whl/cu128
ARG TENSORRT_VERSION=10.13.3.9

# --- build-cpu: a venv with the pinned dependencies, the generated protos and Fabula itself ---
FROM ${PYTHON_IMAGE} AS build-cpu
ARG TORCH_CPU_INDEX
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY docker/requirements.py docker/constraints.txt docker/
# The constraint torch==X admits X+cpu from the CPU index, which pip prefers over PyPI's CUDA build.
RUN python -m venv /opt/fabula \
 && python docker/requirements.py image > /tmp/requirements.txt \
 && python docker/requirements.py image --model-data > /tmp/model-data.txt \
 && /opt/fabula/bin/pip install --extra-index-url "$TORCH_CPU_INDEX" -c docker/constraints.txt -r /tmp/requirements.txt \
 && /opt/fabula/bin/pip install --no-deps -r /tmp/model-data.txt
COPY protos/ protos/
RUN python -m venv /opt/protoc \
 && /opt/protoc/bin/pip install -c docker/constraints.txt grpcio-tools==1.85.1 \
 && site="$(/opt/fabula/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
 && find protos -name '*.proto' -exec /opt/protoc/bin/python -m grpc_tools.protoc -Iprotos \
      --python_out="$site" --grpc_python_out="$site" {} +
COPY services/ services/
COPY gateway/ gateway/
COPY wire/ wire/
COPY sdk/ sdk/
RUN /opt/fabula/bin/pip install --no-deps . \
 && /opt/fabula/bin/python -c "import services.image.cli, fabula.image.v1.image_pb2_grpc"

# --- cpu: the venv only, as an unprivileged user ---
FROM ${PYTHON_IMAGE} AS cpu
RUN groupadd --system --gid 10001 fabula \
 && useradd --system --uid 10001 --gid fabula --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin fabula
COPY --from=build-cpu /opt/fabula /opt/fabula
# HOME (model caches) and the working directory are writable emptyDirs in Kubernetes.
ENV PATH=/opt/fabula/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 HOME=/tmp
WORKDIR /var/lib/fabula
USER 10001:10001
EXPOSE 50053 9103
ENTRYPOINT ["python", "-m", "services.image"]

# --- build-gpu: the same venv on the CUDA base, with CUDA torch and TensorRT ---
FROM ${CUDA_IMAGE} AS build-gpu
ARG TORCH_CUDA_INDEX
ARG TENSORRT_VERSION
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1 DEBIAN_FRONTEND=noninteractive
# Ubuntu's own Python (3.12 on 24.04); apt versions float with the base image tag, which is pinned.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY docker/requirements.py docker/constraints.txt docker/
RUN python3 -m venv /opt/fabula \
 && python3 docker/requirements.py image --gpu > /tmp/requirements.txt \
 && python3 docker/requirements.py image --model-data > /tmp/model-data.txt \
 && echo "tensorrt==${TENSORRT_VERSION}" > /tmp/gpu-constraints.txt \
 && /opt/fabula/bin/pip install --extra-index-url "$TORCH_CUDA_INDEX" -c docker/constraints.txt \
      -c /tmp/gpu-constraints.txt -r /tmp/requirements.txt \
 && /opt/fabula/bin/pip install --no-deps -r /tmp/model-data.txt
COPY protos/ protos/
RUN python3 -m venv /opt/protoc \
 && /opt/protoc/bin/pip install -c docker/constraints.txt grpcio-tools==1.85.1 \
 && site="$(/opt/fabula/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
 && find protos -name '*.proto' -exec /opt/protoc/bin/python -m grpc_tools.protoc -Iprotos \
      --python_out="$site" --grpc_python_out="$site" {} +
COPY services/ services/
COPY gateway/ gateway/
COPY wire/ wire/
COPY sdk/ sdk/
RUN /opt/fabula/bin/pip install --no-deps . \
 && /opt/fabula/bin/python -c "import services.image.cli, fabula.image.v1.image_pb2_grpc, tensorrt"

# --- gpu: the venv and the Python it was made with, as an unprivileged user ---
FROM ${CUDA_IMAGE} AS gpu
ENV DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 fabula \
 && useradd --system --uid 10001 --gid fabula --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin fabula
COPY --from=build-gpu /opt/fabula /opt/fabula
ENV PATH=/opt/fabula/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 HOME=/tmp
WORKDIR /var/lib/fabula
USER 10001:10001
EXPOSE 50053 9103
ENTRYPOINT ["python", "-m", "services.image"]
