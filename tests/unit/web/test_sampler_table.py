"""The generation panel's sampler tables (web/src/panels/GenerationPanel.tsx) and default step
order (web/src/panels/model.ts) state the same controls, ranges and choices as the text service
(services/text/params.py), so the panel never offers a value the service refuses, refuses one it
takes, or leaves a control out."""

from __future__ import annotations

import re
from pathlib import Path

from services.text.params import DEFAULT_ORDER, SAMPLING_FIELDS, Choice, Range

PANELS = Path(__file__).resolve().parents[3] / "web" / "src" / "panels"
ENTRY = re.compile(r'\{ name: "(?P<name>\w+)", label: "[^"]+", (?P<fields>[^{}]*?), doc: ')
CHOICE = re.compile(r'\{ name: "(?P<name>\w+)", label: "[^"]+", doc: "[^"]+",\s*options: \[(?P<options>[^\]]*)\] \}')
NUMBER = {"MAX_TOKEN_COUNT": float(1 << 20)}


def panel_controls() -> dict[str, dict[str, object]]:
    source = (PANELS / "GenerationPanel.tsx").read_text()
    controls = {}
    for match in ENTRY.finditer(source):
        fields = dict(part.split(": ", 1) for part in match["fields"].split(", "))
        controls[match["name"]] = {key: NUMBER.get(value, value) for key, value in fields.items()}
    return controls


def test_every_numeric_sampling_control_is_in_the_panel_with_the_services_range() -> None:
    controls = panel_controls()
    numeric = {name: field for name, field in SAMPLING_FIELDS.items() if isinstance(field.allowed, Range)}
    assert set(controls) == set(numeric)
    for name, field in numeric.items():
        allowed, control = field.allowed, controls[name]
        assert float(control["min"]) == allowed.low and float(control["max"]) == allowed.high, name
        assert (control.get("lowOpen") == "true") == allowed.low_open, name
        assert not allowed.high_open, name
        assert (control.get("integer") == "true") == allowed.integer, name
        assert float(control.get("minAboveLow", 0)) == allowed.min_above_low, name
        assert float(control["off"]) == field.neutral, name


def test_every_choice_control_is_in_the_panel_with_the_services_names() -> None:
    source = (PANELS / "GenerationPanel.tsx").read_text()
    panel = {m["name"]: re.findall(r'"(\w+)"', m["options"]) for m in CHOICE.finditer(source)}
    choices = {name: field for name, field in SAMPLING_FIELDS.items() if isinstance(field.allowed, Choice)}
    assert set(panel) == set(choices)
    for name, field in choices.items():
        assert panel[name] == [member.value for member in type(field.neutral)], name


def test_the_default_step_order_is_the_services() -> None:
    source = (PANELS / "model.ts").read_text()
    order = re.search(r"export const DEFAULT_ORDER = \[(?P<names>[^\]]*)\]", source)["names"]
    assert re.findall(r'"(\w+)"', order) == [name.key for name, _ in DEFAULT_ORDER]
