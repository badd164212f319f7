"""The images and the manifests agree with the code: each image installs every distribution its
process imports, with the pins the tests ran against, and starts the process the manifests run."""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import importlib.util
import re
import sys
import tomllib
from pathlib import Path

import pytest

from tests.deploy.kube import ROOT, containers, process_name



def _load_requirements_script():
    """docker/requirements.py, which the Dockerfiles run; docker/ is not a package."""
    spec = importlib.util.spec_from_file_location("fabula_image_requirements", ROOT / "docker" / "requirements.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


image_requirements = _load_requirements_script()

LOCAL_PACKAGES = {"gateway", "services", "fabula", "fabula_wire", "fabula_sdk"}
PROTO_ROOT = ROOT / "build" / "proto"
ENTRY_MODULES = {
    "gateway": ["gateway.__main__", "gateway.main"],
    "editor": ["services.editor.__main__", "services.editor.app"],
    "text": ["services.text.__main__", "services.text.generator", "services.text.server"],
    "image": ["services.image.__main__", "services.image.backends.tensorrt.build_all"],
}
# Importable only on GPU machines, from the images' GPU extras.
GPU_ONLY_MODULES = {"tensorrt": "tensorrt"}


def _module_file(name: str) -> Path | None:
    parts = name.split(".")
    for base in (ROOT, ROOT / "wire", PROTO_ROOT):
        for candidate in (base.joinpath(*parts).with_suffix(".py"), base.joinpath(*parts, "__init__.py")):
            if candidate.exists():
                return candidate
    return None


def _imports(path: Path, module: str) -> set[str]:
    """Every module `path` imports anywhere (top level, functions, TYPE_CHECKING blocks)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # "from a.b import c": c is a module or an attribute of a.b; owning_distribution walks up
            # from a.b.c. a.b alone may be a namespace package (google, opentelemetry) no one owns.
            if base.split(".")[0] in LOCAL_PACKAGES or any(alias.name == "*" for alias in node.names):
                found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def third_party_imports(entries: list[str]) -> set[str]:
    """Dotted names of the non-local, non-stdlib modules reachable from `entries`."""
    seen: set[str] = set()
    todo = list(entries)
    external: set[str] = set()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        path = _module_file(module)
        if path is None:
            continue  # "from package import name" where name is not a module
        for imported in _imports(path, module):
            top = imported.split(".")[0]
            if top in LOCAL_PACKAGES:
                todo.append(imported)
            elif top and top not in sys.stdlib_module_names and top != "__future__":
                external.add(imported)
    return external


@functools.cache
def _file_owners() -> dict[str, str]:
    """Module path ("opentelemetry/instrumentation/fastapi") → the installed distribution owning it.
    By file, not by top-level name: namespace packages (opentelemetry, google) span many."""
    owners = {}
    for dist in importlib.metadata.distributions():
        for file in dist.files or []:
            path = str(file)
            if path.endswith("/__init__.py"):
                owners[path.removesuffix("/__init__.py")] = dist.metadata["Name"]
            elif path.endswith((".py", ".so")):
                directory, _, filename = path.rpartition("/")
                stem = filename.split(".")[0]
                owners[f"{directory}/{stem}" if directory else stem] = dist.metadata["Name"]
    return owners


def owning_distribution(module: str) -> str | None:
    """The distribution providing `module`, or its closest parent package that is a real module."""
    parts = module.split(".")
    for length in range(len(parts), 0, -1):
        owner = _file_owners().get("/".join(parts[:length]))
        if owner:
            return image_requirements.canonical(owner)
    return None


def _installed_closure(requirements: list[str]) -> set[str]:
    """The canonical names of `requirements` and of everything they pull in (as installed here)."""
    closure: set[str] = set()
    todo = [image_requirements.requirement_name(spec) for spec in requirements]
    while todo:
        name = todo.pop()
        if name in closure:
            continue
        closure.add(name)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue  # a GPU-only extra, absent on this machine
        todo += [image_requirements.requirement_name(spec) for spec in requires if "extra ==" not in spec]
    return closure


def _top_level_imports(path: Path) -> set[str]:
    """Modules a file imports unconditionally (at module level, outside try/if)."""
    found: set[str] = set()
    for node in ast.parse(path.read_text(), str(path)).body:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.add(node.module)
    return found


def behind_lazy_exports(modules: set[str]) -> set[str]:
    """What the names imported from a library's lazy namespace need (`from diffusers import
    DPMSolverSDEScheduler`): diffusers and transformers re-export classes lazily and hide optional
    dependencies behind them (torchsde), which no import statement in Fabula names. Each such name
    is resolved here to the module that defines it, whose unconditional imports from other
    distributions are then needed too."""
    needed: set[str] = set()
    for dotted in sorted(modules):
        parent, _, attribute = dotted.rpartition(".")
        if not parent or importlib.util.find_spec(parent.split(".")[0]) is None:
            continue
        try:
            if importlib.util.find_spec(dotted) is not None:
                continue  # a module, followed as such
        except (ImportError, ValueError):
            pass
        try:
            value = getattr(importlib.import_module(parent), attribute)
        except Exception:  # noqa: BLE001 - GPU-only or broken optional parts: nothing to follow
            continue
        defined_in = getattr(value, "__module__", None)
        library = parent.split(".")[0]
        if not isinstance(defined_in, str) or defined_in == parent or defined_in.split(".")[0] != library:
            continue
        file = getattr(sys.modules.get(defined_in), "__file__", None)
        if not file or not file.endswith(".py"):
            continue
        needed |= {name for name in _top_level_imports(Path(file))
                   if name.split(".")[0] not in (library, "__future__") and name.split(".")[0] not in sys.stdlib_module_names}
    return needed


@pytest.mark.parametrize("process", sorted(ENTRY_MODULES))
def test_image_installs_every_distribution_its_process_imports(process: str) -> None:
    missing_code = [entry for entry in ENTRY_MODULES[process] if _module_file(entry) is None]
    if missing_code:
        pytest.fail(f"{process}: {missing_code} not found; the {process} image starts it", pytrace=False)
    installed = _installed_closure(image_requirements.requirements_for(process, gpu=True))
    # The Dockerfiles install these too, without their dependencies (docker/requirements.py).
    installed |= {image_requirements.requirement_name(spec) for spec in image_requirements.MODEL_DATA.get(process, [])}
    problems = []
    imported = third_party_imports(ENTRY_MODULES[process])
    for module in sorted(imported | behind_lazy_exports(imported)):
        owner = GPU_ONLY_MODULES.get(module.split(".")[0]) or owning_distribution(module)
        if owner is None:
            problems.append(f"{module}: no installed distribution provides it")
        elif owner not in installed:
            problems.append(f"{module}: from {owner}, not in docker/requirements.py's {process} list")
    assert not problems, f"{process} image would lack:\n" + "\n".join(problems)


def test_constraints_pin_what_pyproject_pins() -> None:
    """docker/constraints.txt is the tested environment; it must agree with every pin in
    pyproject.toml (after a dependency change: `make constraints`)."""
    constraints = {}
    for line in (ROOT / "docker" / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            constraints[image_requirements.canonical(name)] = version
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    # What `make install` installs; other extras (bench, tensorrt) are never in the tested venv.
    installed_specs = [*project["dependencies"], *project["optional-dependencies"]["dev"],
                       *project["optional-dependencies"]["deploy"]]
    stale = []
    for spec in installed_specs:
        name = image_requirements.requirement_name(spec)
        pin = re.search(r"==\s*([^\s;,]+)", spec)
        if pin and constraints.get(name) != pin.group(1):
            stale.append(f"{spec} (constraints.txt: {constraints.get(name)})")
    assert not stale, "docker/constraints.txt is stale; run `make constraints`:\n" + "\n".join(stale)


def test_model_data_pins_match_the_makefile() -> None:
    makefile = (ROOT / "Makefile").read_text()
    line = next(line for line in makefile.splitlines() if "--no-deps" in line and "install" in line)
    pins = set(re.findall(r"[\w.-]+==[\w.]+", line))
    shipped = {pin for pins_ in image_requirements.MODEL_DATA.values() for pin in pins_}
    assert shipped == pins


def _dockerfile_stages(process: str) -> dict[str, list[str]]:
    """{stage name: its instructions}, continuation lines joined."""
    text = (ROOT / "docker" / f"{process}.Dockerfile").read_text().replace("\\\n", " ")
    stages: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("FROM "):
            current = line.split()[-1]
            stages[current] = []
        elif current and line and not line.startswith("#"):
            stages[current].append(line)
    return stages


def _runtime_stages(process: str) -> dict[str, list[str]]:
    return {name: lines for name, lines in _dockerfile_stages(process).items() if not name.startswith("build")}


@pytest.mark.parametrize("overlay", ["cpu", "gpu"], ids=lambda overlay: f"overlays/{overlay}")
def test_manifests_run_what_the_images_start(overlay: str) -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    for container in containers(overlay):
        process = process_name(container.workload)
        if process in ("postgres", "redis"):  # third-party images
            continue
        image_process = "image" if process == "build-engines" else process
        image, tag = container.spec["image"].rsplit(":", 1)
        assert image == f"fabula-{image_process}"
        stage = tag.removeprefix(f"{version}-") if image_process in ("text", "image") else "runtime"
        assert tag == (version if stage == "runtime" else f"{version}-{stage}"), container.where
        assert stage != "cpu" or overlay == "cpu", f"{container.where}: a CPU image in the GPU overlay"
        lines = _runtime_stages(image_process)[stage]
        entrypoint = [line for line in lines if line.startswith("ENTRYPOINT ")][-1]
        if process != "build-engines":
            assert container.spec["command"] == ast.literal_eval(entrypoint.removeprefix("ENTRYPOINT ")), \
                container.where
        exposed = {int(port) for line in lines if line.startswith("EXPOSE ") for port in line.split()[1:]}
        assert {port["containerPort"] for port in container.spec.get("ports", [])} <= exposed, container.where
        user = [line for line in lines if line.startswith("USER ")][-1]
        uid = container.pod["securityContext"]["runAsUser"]
        assert user == f"USER {uid}:{container.pod['securityContext']['runAsGroup']}", container.where


@pytest.mark.parametrize("process", sorted(ENTRY_MODULES))
def test_every_runtime_stage_is_small_and_unprivileged(process: str) -> None:
    for name, lines in _runtime_stages(process).items():
        assert lines[-1].startswith("ENTRYPOINT"), f"{process}:{name}"
        assert any(line.startswith("USER 10001") for line in lines), f"{process}:{name} runs as root"
        # Only the finished venv comes across from the build stage: no compilers, no protoc, no sources.
        copies = [line for line in lines if line.startswith("COPY")]
        assert copies and all(line.startswith("COPY --from=build") and "/opt/fabula /opt/fabula" in line
                              for line in copies), f"{process}:{name}: {copies}"


def test_requirements_script_knows_every_process() -> None:
    assert set(image_requirements.PROCESS_DISTRIBUTIONS) == set(ENTRY_MODULES)
