"""Named sampling presets, shipped as data files (`presets/*.json`), validated at start-up."""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from services.text.params import SamplingParams
from services.toolkit.errors import InvalidArgument


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    sampling: SamplingParams


def load_presets(extra_dir: Path | None = None) -> dict[str, Preset]:
    """The shipped presets, plus (overriding by name) any in `extra_dir`. A broken file fails
    start-up with the file and field named, rather than a request later."""
    files = sorted(p for p in resources.files("services.text.presets").iterdir() if p.name.endswith(".json"))
    if extra_dir is not None:
        files += sorted(extra_dir.glob("*.json"))
    presets: dict[str, Preset] = {}
    for file in files:
        data = json.loads(file.read_text(encoding="utf-8"))
        try:
            sampling = SamplingParams.from_mapping(data.get("sampling", {}), f"{file.name}: sampling.")
        except InvalidArgument as error:
            raise ValueError(f"invalid preset file {file}: {error.message}") from None
        presets[data["name"]] = Preset(data["name"], data.get("description", ""), sampling)
    return presets


def find(presets: dict[str, Preset], name: str, field: str = "spec.preset") -> Preset:
    if name not in presets:
        raise InvalidArgument(field, name, f"no such preset; known: {', '.join(sorted(presets))}")
    return presets[name]
