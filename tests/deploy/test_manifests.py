"""Every overlay renders, every object is valid Kubernetes, and the policies of docs/deploy.md
hold for every container: hardened, probed, bounded, reachable only by whom it should be."""

from __future__ import annotations

import importlib
import json
import os

import kubernetes_validate
import pytest
from pydantic_settings import BaseSettings

from tests.deploy.kube import (_VARIABLE, GPU_SERVICES, KUBERNETES_VERSION, OVERLAYS, SERVICES, container_env,
                               containers, mount_for, named, objects, pod_spec, process_name, render,
                               secret_templates, settings_process, workloads)

# Ids spelled as paths: a bare "gpu" would be taken for the marker that skips tests without CUDA.
pytestmark = pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda overlay: f"overlays/{overlay}")

SETTINGS_MODULES = {"editor": "services.editor.settings", "text": "services.text.settings",
                    "image": "services.image.settings", "gateway": "gateway.settings"}


def settings_class(process: str) -> type[BaseSettings]:
    """The process's settings class: the one in its settings module with its env prefix."""
    prefix = f"FABULA_{process.upper()}_"
    try:
        module = importlib.import_module(SETTINGS_MODULES[process])
    except ModuleNotFoundError as error:
        pytest.fail(f"{SETTINGS_MODULES[process]} does not exist ({error}); the manifests configure it",
                    pytrace=False)
    found = [value for value in vars(module).values()
             if isinstance(value, type) and issubclass(value, BaseSettings)
             and value.model_config.get("env_prefix") == prefix]
    assert len(found) == 1, f"{module.__name__}: expected one settings class with prefix {prefix}"
    return found[0]


FABULA_PROCESSES = ("editor", "text", "image", "gateway")


def fabula_containers(overlay: str):
    """(process, container) for the four Fabula processes' main containers (not Redis's)."""
    for container in containers(overlay):
        if (container.workload["kind"] == "Deployment" and not container.init
                and process_name(container.workload) in FABULA_PROCESSES):
            yield process_name(container.workload), container


def test_every_object_matches_the_kubernetes_schema(overlay: str) -> None:
    errors = []
    for obj in render(overlay):
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            errors.append(f"{obj['kind']} {obj['metadata']['name']}: {error.message} at "
                          f"{'.'.join(str(part) for part in error.path)}")
    assert not errors, "\n".join(errors)


def test_every_object_lives_in_the_fabula_namespace(overlay: str) -> None:
    stray = [f"{obj['kind']} {obj['metadata']['name']}" for obj in render(overlay)
             if obj["kind"] != "Namespace" and obj["metadata"].get("namespace") != "fabula"]
    assert not stray
    assert named(overlay, "Namespace", "fabula")["metadata"]["labels"][
        "pod-security.kubernetes.io/enforce"] == "restricted"


def test_every_container_is_hardened(overlay: str) -> None:
    problems = []
    for container in containers(overlay):
        pod, spec = container.pod, container.spec
        pod_security, security = pod.get("securityContext", {}), spec.get("securityContext", {})
        effective = {**pod_security, **security}
        checks = {
            "runAsNonRoot": effective.get("runAsNonRoot") is True,
            "a non-zero runAsUser": effective.get("runAsUser", 0) >= 10000,
            "allowPrivilegeEscalation false": security.get("allowPrivilegeEscalation") is False,
            "readOnlyRootFilesystem": security.get("readOnlyRootFilesystem") is True,
            "capabilities drop ALL": security.get("capabilities", {}).get("drop") == ["ALL"]
            and not security.get("capabilities", {}).get("add"),
            "seccomp RuntimeDefault": effective.get("seccompProfile", {}).get("type") == "RuntimeDefault",
            "no privileged": not security.get("privileged", False),
            "no service account token": pod.get("automountServiceAccountToken") is False,
            "no host namespaces": not any(pod.get(key) for key in ("hostNetwork", "hostPID", "hostIPC")),
            "a pinned image tag": ":" in spec["image"] and not spec["image"].endswith(":latest"),
        }
        for resource in ("cpu", "memory"):
            for bound in ("requests", "limits"):
                checks[f"{bound}.{resource}"] = resource in spec.get("resources", {}).get(bound, {})
        problems += [f"{container.where}: needs {what}" for what, ok in checks.items() if not ok]
    assert not problems, "\n".join(problems)


def test_writable_paths_are_emptydirs_or_volumes(overlay: str) -> None:
    """With a read-only root, /tmp (HOME in the images) must be a mounted emptyDir."""
    for container in containers(overlay):
        mounts = {mount["mountPath"]: mount["name"] for mount in container.spec.get("volumeMounts", [])}
        assert "/tmp" in mounts, f"{container.where}: /tmp is not writable"
        volumes = {volume["name"]: volume for volume in container.pod["volumes"]}
        assert "emptyDir" in volumes[mounts["/tmp"]], container.where


def test_grpc_services_have_native_grpc_probes_on_their_port(overlay: str) -> None:
    for process, container in fabula_containers(overlay):
        if process == "gateway":
            continue
        port = int(container_env(overlay, container.spec)[f"FABULA_{process.upper()}_PORT"])
        assert {p["name"]: p["containerPort"] for p in container.spec["ports"]}["grpc"] == port
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container.spec[probe]["grpc"] == {"port": port}, f"{container.where}: {probe}"
        startup = container.spec["startupProbe"]
        window_s = startup["periodSeconds"] * startup["failureThreshold"]
        # Model servers load and warm models before SERVING; the editor migrates its database.
        assert window_s >= (600 if process in GPU_SERVICES else 120), f"{container.where}: startup window"


def test_gateway_probes_are_http_and_liveness_ignores_the_services(overlay: str) -> None:
    container = dict(fabula_containers(overlay))["gateway"]
    port = int(container_env(overlay, container.spec)["FABULA_GATEWAY_PORT"])
    assert {p["name"]: p["containerPort"] for p in container.spec["ports"]}["http"] == port
    paths = {probe: container.spec[probe]["httpGet"]["path"]
             for probe in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert paths == {"startupProbe": "/health/live", "readinessProbe": "/health",
                     "livenessProbe": "/health/live"}
    from gateway.main import create_app

    assert set(paths.values()) <= set(create_app().openapi()["paths"])


def test_termination_grace_outlasts_the_drain(overlay: str) -> None:
    for process, container in fabula_containers(overlay):
        env = container_env(overlay, container.spec)
        grace_period = container.pod["terminationGracePeriodSeconds"]
        if process == "gateway":
            pre_stop = container.spec["lifecycle"]["preStop"]["sleep"]["seconds"]
            drain_s = pre_stop + 10  # uvicorn's timeout_graceful_shutdown in gateway/__main__.py
        else:
            prefix = f"FABULA_{process.upper()}_"
            drain_s = float(env[f"{prefix}DRAIN_DELAY_S"]) + float(env[f"{prefix}GRACE_S"])
        assert grace_period > drain_s, f"{container.where}: {grace_period}s <= drain {drain_s}s"


def test_prometheus_scrapes_the_real_metrics_port(overlay: str) -> None:
    for process, container in fabula_containers(overlay):
        env = container_env(overlay, container.spec)
        annotations = container.workload["spec"]["template"]["metadata"]["annotations"]
        port = env["FABULA_GATEWAY_PORT"] if process == "gateway" else env[f"FABULA_{process.upper()}_METRICS_PORT"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/port"] == port and annotations["prometheus.io/path"] == "/metrics"
        assert int(port) in {p["containerPort"] for p in container.spec["ports"]}, container.where


def test_model_servers_have_an_in_memory_dev_shm(overlay: str) -> None:
    for process, container in fabula_containers(overlay):
        if process not in GPU_SERVICES:
            continue
        mounts = {m["mountPath"]: m["name"] for m in container.spec["volumeMounts"]}
        volume = {v["name"]: v for v in container.pod["volumes"]}[mounts["/dev/shm"]]
        assert volume["emptyDir"]["medium"] == "Memory" and volume["emptyDir"]["sizeLimit"]


PROCESSES = pytest.mark.parametrize("process", ["editor", "text", "image", "gateway"])
PREFIXES = {f"FABULA_{process.upper()}_": process for process in ("editor", "text", "image", "gateway")}


def configured_containers(overlay: str):
    """(process whose settings it reads, container) for every container running Fabula code: the
    four processes' Deployments and the engine-build Job (the image service's settings)."""
    for container in containers(overlay):
        if (container.workload["kind"] in ("Deployment", "Job") and not container.init
                and settings_process(container.workload) in FABULA_PROCESSES):
            yield settings_process(container.workload), container


def test_config_keys_are_real_settings(overlay: str) -> None:
    """Every FABULA_<PROCESS>_ variable a container gets names a field of that process's settings
    class (pydantic-settings would silently ignore a misspelt or stale one), belongs to the process
    the container runs, and any other FABULA_ variable exists only to be expanded into one."""
    problems = []
    for process, container in configured_containers(overlay):
        env = container_env(overlay, container.spec)
        fields = set(settings_class(process).model_fields)
        referenced = {name for item in container.spec.get("env", []) if "value" in item
                      for name in _VARIABLE.findall(item["value"])}
        for key in env:
            owner = next((p for prefix, p in PREFIXES.items() if key.startswith(prefix)), None)
            if owner is None:
                if key.startswith("FABULA_") and key not in referenced:
                    problems.append(f"{container.where}: {key} is no setting of any process and expanded nowhere")
            elif owner != process:
                problems.append(f"{container.where}: {key} configures {owner}, but this container runs {process}")
            elif key.removeprefix(f"FABULA_{process.upper()}_").lower() not in fields:
                problems.append(f"{container.where}: {key} is not a field of {settings_class(process).__name__} "
                                f"(fields: {', '.join(sorted(fields))})")
        if container.workload["kind"] == "Deployment":
            for key in ("HOST", "PORT"):
                if f"FABULA_{process.upper()}_{key}" not in env:
                    problems.append(f"{container.where}: sets no FABULA_{process.upper()}_{key}")
    assert not problems, "\n".join(problems)


def _manifest_settings(overlay: str, process: str, container, monkeypatch) -> BaseSettings:
    for key in [key for key in os.environ if key.startswith("FABULA_")]:
        monkeypatch.delenv(key)
    for key, value in container_env(overlay, container.spec).items():
        monkeypatch.setenv(key, value)
    return settings_class(process)()


@PROCESSES
def test_settings_parse_from_the_manifest_environment(overlay: str, process: str, monkeypatch) -> None:
    """The values, not only the names: each settings class accepts exactly what the pod gets."""
    container = dict(fabula_containers(overlay))[process]
    settings = _manifest_settings(overlay, process, container, monkeypatch)
    assert settings.host == "0.0.0.0"
    if process == "image":
        from services.image.backends.tensorrt.backend import profiles

        assert profiles(settings), "no TensorRT engine profile"  # each one parses


def test_the_engine_job_builds_what_the_image_service_looks_up(overlay: str) -> None:
    """Engines are found by path (engine dir / model / cache key of model, profile, precision): the
    Job must see the image Deployment's exact FABULA_IMAGE_ settings and the same engine volume."""
    jobs = [c for c in containers(overlay) if process_name(c.workload) == "build-engines"]
    if overlay == "cpu":
        assert not jobs, "the CPU overlay has no TensorRT and builds no engines"
        return
    (job,) = jobs
    image = dict(fabula_containers(overlay))["image"]
    job_env, image_env = (container_env(overlay, c.spec) for c in (job, image))
    # Building engines serves no calls and signs no images: the caller-token keys and the image
    # signing key are the settings it does without.
    image_keys = {k: v for k, v in image_env.items()
                  if k.startswith("FABULA_IMAGE_") and k not in ("FABULA_IMAGE_CALLER_KEYS", "FABULA_IMAGE_SIGNING_KEY")}
    assert {k: v for k, v in job_env.items() if k.startswith("FABULA_IMAGE_")} == image_keys
    assert image_keys["FABULA_IMAGE_BACKEND"] == "tensorrt"
    assert job.spec["command"] == ["python", "-m", "services.image.backends.tensorrt.build_all"]
    assert not job.spec.get("args"), "build_all's flags (--model, --dry-run) are for hand runs; the Job builds all"
    engine_dir = image_env.get("FABULA_IMAGE_ENGINE_DIR")
    assert engine_dir, "the image pods need FABULA_IMAGE_ENGINE_DIR on the engine volume the Job writes"
    claims = []
    for c, writable in ((job, True), (image, False)):
        mount = mount_for(c.spec, engine_dir)
        assert mount is not None, f"{c.where}: {engine_dir} is on no volume"
        assert bool(mount.get("readOnly")) != writable, f"{c.where}: {engine_dir} must be {'rw' if writable else 'ro'}"
        volume = {v["name"]: v for v in c.pod["volumes"]}[mount["name"]]
        claims.append(volume["persistentVolumeClaim"]["claimName"])
    assert claims[0] == claims[1], f"the Job writes engines to {claims[0]}, the image pods read {claims[1]}"


def _path_settings(process: str, settings) -> dict[str, tuple[list[str], bool]]:
    """{setting: (absolute paths it names, whether the process writes there)}."""
    if process == "text":
        sources = [s for s in settings.models.values() if s.startswith("/")]
        found = {"cache_dir": ([str(settings.cache_dir)], True), "models": (sources, False)}
        if settings.presets_dir:
            found["presets_dir"] = ([str(settings.presets_dir)], False)
        return found
    if process == "image":
        options = settings.model_options().values()
        sources = [o.source for o in options if o.source.startswith("/")]
        sources += [o.config for o in options if o.config and o.config.startswith("/")]
        return {"cache_dir": ([str(settings.cache_dir)], True), "engine_dir": ([str(settings.engines_path)], False),
                "models": (sources, False)}
    return {}


def test_paths_in_settings_are_on_volumes(overlay: str, monkeypatch) -> None:
    """The root filesystem is read-only: every folder a process writes (caches) is a writable
    volume mount, and every folder it reads (models, engines) is mounted at all."""
    problems = []
    for process, container in configured_containers(overlay):
        settings = _manifest_settings(overlay, process, container, monkeypatch)
        volumes = {volume["name"]: volume for volume in container.pod.get("volumes", [])}
        for name, (paths, writes) in _path_settings(process, settings).items():
            for path in paths:
                mount = mount_for(container.spec, path)
                if mount is None:
                    problems.append(f"{container.where}: {name}={path} is on the read-only root filesystem")
                elif writes and (mount.get("readOnly") or not ({"emptyDir", "persistentVolumeClaim"}
                                                                & set(volumes[mount["name"]]))):
                    problems.append(f"{container.where}: {name}={path} is written, but {mount['name']} "
                                    "is not a writable emptyDir or volume")
    assert not problems, "\n".join(problems)


def _quantity(text: str) -> float:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
    for unit, factor in units.items():
        if str(text).endswith(unit):
            return float(str(text)[: -len(unit)]) * factor
    return float(text)


def test_emptydirs_fit_the_pod_limits(overlay: str) -> None:
    """Disk-backed emptyDirs count against the pod's ephemeral-storage limit and in-memory ones
    against its memory limit: a sizeLimit above them is a lie, and the kubelet evicts the pod first."""
    problems = []
    for workload in workloads(overlay):
        pod = pod_spec(workload)
        limits = [c.get("resources", {}).get("limits", {}) for c in pod["containers"]]
        for medium, resource in (("", "ephemeral-storage"), ("Memory", "memory")):
            dirs = [v for v in pod.get("volumes", []) if "emptyDir" in v and v["emptyDir"].get("medium", "") == medium]
            if not dirs:
                continue
            unbounded = [v["name"] for v in dirs if "sizeLimit" not in v["emptyDir"]]
            total = sum(_quantity(v["emptyDir"].get("sizeLimit", 0)) for v in dirs)
            limit = sum(_quantity(lim.get(resource, 0)) for lim in limits)
            if unbounded:
                problems.append(f"{overlay}: {workload['metadata']['name']}: emptyDirs {unbounded} have no sizeLimit")
            if medium == "" and total > limit:
                problems.append(f"{overlay}: {workload['metadata']['name']}: disk emptyDirs ({total / 2**30:g}Gi) "
                                f"exceed the {resource} limit ({limit / 2**30:g}Gi)")
            if medium == "Memory" and total >= limit:
                problems.append(f"{overlay}: {workload['metadata']['name']}: in-memory emptyDirs leave no memory")
    assert not problems, "\n".join(problems)


def test_gpus_only_for_the_model_servers(overlay: str) -> None:
    for container in containers(overlay):
        limits = container.spec.get("resources", {}).get("limits", {})
        process = process_name(container.workload)
        wants_gpu = overlay == "gpu" and (process in GPU_SERVICES or process == "build-engines")
        assert ("nvidia.com/gpu" in limits) == wants_gpu, container.where
        if wants_gpu:
            pod = container.pod
            assert pod["nodeSelector"] and any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
            if container.workload["kind"] == "Deployment":
                keys = {c["topologyKey"] for c in pod["topologySpreadConstraints"]}
                assert {"kubernetes.io/hostname", "topology.kubernetes.io/zone"} <= keys


def test_network_policies_cover_every_pod(overlay: str) -> None:
    policies = objects(overlay, "NetworkPolicy")
    deny_all = [p for p in policies if p["spec"]["podSelector"] == {} and not p["spec"].get("ingress")]
    assert deny_all and "Ingress" in deny_all[0]["spec"]["policyTypes"], "no default-deny ingress policy"
    for workload in workloads(overlay):
        if workload["kind"] == "Job":
            continue  # a Job serves nothing; the default deny covers it
        labels = workload["spec"]["template"]["metadata"]["labels"]
        own = [p for p in policies if p["spec"]["podSelector"]
               and p["spec"]["podSelector"]["matchLabels"].items() <= labels.items()]
        assert own, f"{overlay}: no NetworkPolicy selects {workload['metadata']['name']}"
        for rule in (rule for policy in own for rule in policy["spec"]["ingress"]):
            assert rule.get("from") and rule.get("ports"), f"{workload['metadata']['name']}: an open rule"


def _allowed_sources(overlay: str, app: str) -> dict[str, set[str]]:
    """{port name: sources} that may reach pods named `app`, sources as "pod:<name>" / "ns:<name>"."""
    allowed: dict[str, set[str]] = {}
    for policy in objects(overlay, "NetworkPolicy"):
        if policy["spec"]["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/name") != app:
            continue
        for rule in policy["spec"]["ingress"]:
            sources = {f"pod:{peer['podSelector']['matchLabels']['app.kubernetes.io/name']}" if "podSelector" in peer
                       else f"ns:{peer['namespaceSelector']['matchLabels']['kubernetes.io/metadata.name']}"
                       for peer in rule["from"]}
            for port in rule["ports"]:
                allowed.setdefault(port["port"], set()).update(sources)
    return allowed


def test_only_the_gateway_reaches_the_services_and_only_the_editor_postgres(overlay: str) -> None:
    for service in SERVICES:
        assert _allowed_sources(overlay, f"fabula-{service}") == {
            "grpc": {"pod:fabula-gateway"}, "metrics": {"ns:monitoring"}}, service
    assert _allowed_sources(overlay, "fabula-postgres") == {"postgres": {"pod:fabula-editor"}}
    assert _allowed_sources(overlay, "fabula-redis") == {"redis": {"pod:fabula-gateway"}}
    assert _allowed_sources(overlay, "fabula-gateway") == {"http": {"ns:ingress-nginx", "ns:monitoring"}}


def test_every_long_running_workload_has_a_disruption_budget(overlay: str) -> None:
    budgets = objects(overlay, "PodDisruptionBudget")
    for workload in workloads(overlay):
        if workload["kind"] == "Job":
            continue
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert [b for b in budgets if b["spec"]["selector"]["matchLabels"].items() <= labels.items()], \
            f"{overlay}: no PodDisruptionBudget for {workload['metadata']['name']}"


def test_gateway_balances_over_headless_services(overlay: str) -> None:
    """One long-lived HTTP/2 connection would pin every call to one pod: the gateway resolves each
    headless Service to all ready pods ("dns:///") and round-robins over them."""
    gateway = dict(fabula_containers(overlay))["gateway"]
    env = container_env(overlay, gateway.spec)
    for service in SERVICES:
        address = env[f"FABULA_GATEWAY_{service.upper()}_ADDRESS"]
        svc = named(overlay, "Service", f"fabula-{service}")
        assert svc["spec"]["clusterIP"] == "None", f"{service}: Service must be headless"
        expected = f"dns:///fabula-{service}.{svc['metadata']['namespace']}.svc.cluster.local:{svc['spec']['ports'][0]['port']}"
        assert address == expected
    from gateway import clients

    assert ("grpc.lb_policy_name", "round_robin") in clients._CHANNEL_OPTIONS


def test_gateway_keeps_its_rate_limits_in_the_overlay_redis(overlay: str) -> None:
    """Every gateway replica counts against the same limits: one Redis, reached by its Service."""
    gateway = dict(fabula_containers(overlay))["gateway"]
    env = container_env(overlay, gateway.spec)
    svc = named(overlay, "Service", "fabula-redis")
    port = svc["spec"]["ports"][0]["port"]
    assert env["FABULA_GATEWAY_REDIS_URL"] == f"redis://fabula-redis.{svc['metadata']['namespace']}.svc.cluster.local:{port}/0"
    assert named(overlay, "Deployment", "fabula-redis")["spec"]["replicas"] == 1
    assert "FORWARDED_ALLOW_IPS" not in env, "uvicorn's proxy headers are off; the gateway reads them itself"


def test_services_and_ingress_point_at_named_ports(overlay: str) -> None:
    for svc in objects(overlay, "Service"):
        selected = [w for w in workloads(overlay) if svc["spec"]["selector"].items()
                    <= w["spec"]["template"]["metadata"]["labels"].items()]
        assert len(selected) == 1, svc["metadata"]["name"]
        port_names = {p["name"] for c in pod_spec(selected[0])["containers"] for p in c.get("ports", [])}
        assert {p["targetPort"] for p in svc["spec"]["ports"]} <= port_names
    (ingress,) = objects(overlay, "Ingress")
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "fabula-gateway", "port": {"name": "http"}}


def test_secrets_are_generated_or_templated(overlay: str) -> None:
    """Every Secret a pod uses is in the overlay (cpu) or described by a template (gpu)."""
    templates = {}
    for name, template in secret_templates().items():
        kubernetes_validate.validate(template, KUBERNETES_VERSION, strict=True)
        assert not any(template["stringData"].values()), f"{name}: a template carries no secret value"
        templates[name] = set(template["stringData"])
    present = {s["metadata"]["name"]: s for s in objects(overlay, "Secret")}
    for container in containers(overlay):
        refs = [(item["valueFrom"]["secretKeyRef"]["name"], item["valueFrom"]["secretKeyRef"]["key"])
                for item in container.spec.get("env", []) if "secretKeyRef" in item.get("valueFrom", {})]
        refs += [(volume["secret"]["secretName"], None) for volume in container.pod.get("volumes", [])
                 if "secret" in volume]
        for name, key in refs:
            if overlay == "cpu":
                assert name in present, f"{container.where}: Secret {name} missing"
            else:
                assert name not in present, f"gpu: Secret {name} must come from its template, not kustomize"
                assert name in templates and (key is None or key in templates[name]), f"{container.where}: {name}/{key}"
    assert json.dumps(sorted(templates)) == json.dumps(["fabula-caller-keys", "fabula-editor-secrets",
                                                        "fabula-image-signing", "fabula-postgres"])
