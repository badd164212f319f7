# The HTTP gateway (`python -m gateway`): HTTP 8000, Prometheus /metrics on the same port.
#   docker build -f docker/gateway.Dockerfile -t fabula-gateway .      (or: make images)
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm
ARG NODE_IMAGE=node:24.12.0-bookworm-slim

# --- build-web: the web editor (web/, docs/web.md), built from the committed lockfile ---
FROM ${NODE_IMAGE} AS build-web
WORKDIR /web
COPY web/package.json web/package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY web/index.html web/vite.config.ts web/tsconfig.json ./
COPY web/src/ src/
RUN npm run build

# --- build: a venv with the pinned dependencies, the generated protos and Fabula itself ---
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY docker/requirements.py docker/constraints.txt docker/
# Dependencies first, in their own layer: code changes do not reinstall them.
RUN python -m venv /opt/fabula \
 && python docker/requirements.py gateway > /tmp/requirements.txt \
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
 && /opt/fabula/bin/python -c "import gateway.__main__, gateway.main, fabula.editor.v1.editor_pb2_grpc"
# The built editor travels inside /opt/fabula, the one folder the runtime stage takes.
COPY --from=build-web /web/dist /opt/fabula/web

# --- runtime: the venv only, as an unprivileged user ---
FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 fabula \
 && useradd --system --uid 10001 --gid fabula --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin fabula
COPY --from=build /opt/fabula /opt/fabula
# HOME and the working directory are writable emptyDirs in Kubernetes (read-only root filesystem).
ENV PATH=/opt/fabula/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 HOME=/tmp \
    FABULA_GATEWAY_WEB_DIR=/opt/fabula/web
WORKDIR /var/lib/fabula
USER 10001:10001
EXPOSE 8000
ENTRYPOINT ["python", "-m", "gateway"]
