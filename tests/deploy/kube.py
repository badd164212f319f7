"""Rendering the kustomize overlays and reading what they give each container.

Everything here works on the rendered YAML, the exact objects `kubectl apply -k` would send.
"""

from __future__ import annotations

import base64
import functools
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
OVERLAYS = ("cpu", "gpu")
KUBECTL = "/usr/bin/kubectl"
# The Kubernetes version whose schema every object must satisfy (kubectl's own on the build machines).
KUBERNETES_VERSION = "1.32.0"

WORKLOAD_KINDS = ("Deployment", "StatefulSet", "Job")
# The gRPC services and the one process allowed to call them.
SERVICES = ("editor", "text", "image")
GPU_SERVICES = ("text", "image")


def kubectl() -> str:
    found = shutil.which("kubectl") or (KUBECTL if Path(KUBECTL).exists() else None)
    if found is None:
        pytest.fail("kubectl (1.32, with kustomize 5.5) is needed to render k8s/overlays; install it "
                    "to /usr/bin/kubectl or put it on PATH", pytrace=False)
    return found


@functools.cache
def render(overlay: str) -> tuple[dict, ...]:
    """The objects `kubectl kustomize k8s/overlays/<overlay>` produces (cached per session)."""
    result = subprocess.run([kubectl(), "kustomize", str(K8S / "overlays" / overlay)],
                            capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        pytest.fail(f"kubectl kustomize k8s/overlays/{overlay} failed:\n{result.stderr}", pytrace=False)
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def rendered_text(overlay: str) -> str:
    return yaml.safe_dump_all(list(render(overlay)), sort_keys=False)


def objects(overlay: str, kind: str) -> list[dict]:
    return [obj for obj in render(overlay) if obj["kind"] == kind]


def named(overlay: str, kind: str, name: str) -> dict:
    matches = [obj for obj in objects(overlay, kind) if obj["metadata"]["name"] == name]
    assert len(matches) == 1, f"{overlay}: expected one {kind} {name}, found {len(matches)}"
    return matches[0]


def pod_spec(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


def workloads(overlay: str) -> list[dict]:
    return [obj for obj in render(overlay) if obj["kind"] in WORKLOAD_KINDS]


@dataclass(frozen=True)
class Container:
    overlay: str
    workload: dict
    spec: dict
    init: bool

    @property
    def where(self) -> str:
        kind = "initContainer" if self.init else "container"
        return f"{self.overlay}: {self.workload['kind']} {self.workload['metadata']['name']} {kind} {self.spec['name']}"

    @property
    def pod(self) -> dict:
        return pod_spec(self.workload)


def containers(overlay: str) -> Iterator[Container]:
    for workload in workloads(overlay):
        spec = pod_spec(workload)
        for container in spec.get("initContainers", []):
            yield Container(overlay, workload, container, init=True)
        for container in spec["containers"]:
            yield Container(overlay, workload, container, init=False)


@functools.cache
def secret_templates() -> dict[str, dict]:
    """The Secrets an operator creates before applying the GPU overlay (k8s/base/*/secret.template.yaml)."""
    templates = (yaml.safe_load(path.read_text()) for path in sorted(K8S.glob("base/*/secret.template.yaml")))
    return {template["metadata"]["name"]: template for template in templates}


def _operator_secret(overlay: str, name: str) -> dict:
    """A Secret the overlay refers to: its own, or else its template filled in as the operator would
    (a random-looking 64-character value per key, like `openssl rand -hex 32`)."""
    if any(obj["metadata"]["name"] == name for obj in objects(overlay, "Secret")):
        return named(overlay, "Secret", name)
    if name not in secret_templates():
        raise AssertionError(f"{overlay}: Secret {name} is neither in the overlay nor templated")
    template = secret_templates()[name]
    return {**template, "stringData": {key: f"{key}-{'0123456789abcdef' * 4}"[-64:]
                                       for key in template["stringData"]}}


def _data(obj: dict) -> dict[str, str]:
    if obj["kind"] == "Secret":
        decoded = {key: base64.b64decode(value).decode() for key, value in obj.get("data", {}).items()}
        return {**decoded, **obj.get("stringData", {})}
    return dict(obj.get("data", {}))


_VARIABLE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def container_env(overlay: str, container: dict) -> dict[str, str]:
    """The environment Kubernetes gives `container`: envFrom first, then env (which wins), with
    $(VAR) references expanded as the kubelet does. A reference to an object that is neither in the
    overlay nor (Secrets) templated is an error, so the result is complete."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        kind, ref = ("ConfigMap", source["configMapRef"]) if "configMapRef" in source \
            else ("Secret", source["secretRef"])
        found = named(overlay, kind, ref["name"]) if kind == "ConfigMap" else _operator_secret(overlay, ref["name"])
        env.update({source.get("prefix", "") + key: value for key, value in _data(found).items()})
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = _VARIABLE.sub(lambda m: env.get(m.group(1), m.group(0)), item["value"])
            continue
        source = item["valueFrom"]
        kind, ref = ("ConfigMap", source["configMapKeyRef"]) if "configMapKeyRef" in source \
            else ("Secret", source["secretKeyRef"])
        found = named(overlay, kind, ref["name"]) if kind == "ConfigMap" else _operator_secret(overlay, ref["name"])
        env[item["name"]] = _data(found)[ref["key"]]
    return env


def process_name(workload: dict) -> str:
    """"fabula-editor" → "editor"."""
    return workload["metadata"]["name"].removeprefix("fabula-")


def settings_process(workload: dict) -> str:
    """The Fabula process whose settings a workload's containers read: the engine-build Job runs
    the image service's build_all with the image service's ConfigMap."""
    process = process_name(workload)
    return "image" if process == "build-engines" else process


def mount_for(container: dict, path: str) -> dict | None:
    """The volumeMount under which `path` lies (the deepest one), or None."""
    found = [mount for mount in container.get("volumeMounts", [])
             if path == mount["mountPath"] or path.startswith(mount["mountPath"].rstrip("/") + "/")]
    return max(found, key=lambda mount: len(mount["mountPath"]), default=None)


_SERIES = re.compile(r"^\s*([A-Za-z_:][A-Za-z0-9_:]*)\s*(\{|$)")


@functools.cache
def prometheus_adapter_rules() -> dict[str, dict]:
    """{custom metric name served to the HPAs: its rule} from the GPU overlay's prometheus-adapter values."""
    values = yaml.safe_load((K8S / "overlays" / "gpu" / "prometheus-adapter-values.yaml").read_text())
    rules = {}
    for rule in values["rules"]["custom"]:
        match = _SERIES.match(rule["seriesQuery"].strip("'\""))
        assert match, f"prometheus-adapter: cannot read the series of {rule['seriesQuery']!r}"
        series = match.group(1)
        # Without name.as the adapter serves the series under its own name (for a gauge).
        name = rule.get("name", {}).get("as") or series
        rules[name] = {**rule, "series": series}
    return rules


def autoscaled_series(overlay: str) -> dict[str, set[str]]:
    """{process: the Prometheus series its HorizontalPodAutoscaler scales on}, through prometheus-adapter."""
    found: dict[str, set[str]] = {}
    for hpa in objects(overlay, "HorizontalPodAutoscaler"):
        target = hpa["spec"]["scaleTargetRef"]
        process = target["name"].removeprefix("fabula-")
        for metric in hpa["spec"].get("metrics", []):
            if metric["type"] in ("Pods", "Object", "External"):
                name = metric[metric["type"].lower()]["metric"]["name"]
                rule = prometheus_adapter_rules().get(name)
                found.setdefault(process, set()).add(rule["series"] if rule else name)
    return found
