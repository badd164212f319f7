# The editor service (accounts + encrypted story storage): gRPC 50051, metrics 9101.
#   docker build -f docker/editor.Dockerfile -t fabula-editor .      (or: make images)
# 3.11.14 or later: the editor parses uploaded tar archives. 3.11.14 carries CPython's tarfile fix
# for CVE-2025-8194 (a header with a negative size or offset made the reader loop for ever,
# gh-130577), on top of 3.11.13's fixes of the extraction-filter bypasses (CVE-2024-12718,
# CVE-2025-4138, CVE-2025-4330, CVE-2025-4435, CVE-2025-4517). The editor never extracts and never
# reads in stream mode ("r|"), and its own header bounds (services/editor/archive.py) apply on
# any interpreter.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# --- build: a venv with the pinned dependencies, the generated protos and Fabula itself ---
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY docker/requirements.py docker/constraints.txt docker/
# Dependencies first, in their own layer: code changes do not reinstall them.
RUN python -m venv /opt/fabula \
 && python docker/requirements.py editor > /tmp/requirements.txt \
 && /opt/fabula/bin/pip install -c docker/constraints.txt -r /tmp/requirements.txt
# protoc runs from a throwaway venv; its output goes straight into the runtime venv.
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
 && /opt/fabula/bin/python -c "import services.editor.cli, services.editor.app, fabula.editor.v1.editor_pb2_grpc"

# --- runtime: the venv only, as an unprivileged user ---
FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 fabula \
 && useradd --system --uid 10001 --gid fabula --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin fabula
COPY --from=build /opt/fabula /opt/fabula
# HOME and the working directory are writable emptyDirs in Kubernetes (read-only root filesystem).
ENV PATH=/opt/fabula/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 HOME=/tmp
WORKDIR /var/lib/fabula
USER 10001:10001
EXPOSE 50051 9101
ENTRYPOINT ["python", "-m", "services.editor"]
