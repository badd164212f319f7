"""What every benchmark shares: the machine's description, result files, RESULTS.md, percentiles."""

from __future__ import annotations

import json
import os
import platform
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
RESULTS_MD = BENCH_DIR / "RESULTS.md"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    return None


def machine() -> str:
    """One line: CPU model, cores, memory, OS, Python (results are only comparable on one machine)."""
    memory = _memory_gib()
    parts = [_cpu_model(), f"{os.cpu_count()} cores"]
    if memory is not None:
        parts.append(f"{memory:.0f} GiB")
    parts += [platform.platform(), f"Python {platform.python_version()}"]
    return ", ".join(parts)


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of `values` (fraction 0.5 for p50, 0.99 for p99)."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(fraction * len(ordered) + 0.5)))
    return ordered[rank - 1]


def write_result(area: str, result: dict[str, Any], command: str, merge: bool = False) -> Path:
    """Write bench/results/<area>.json: the machine and date (figures compare only on one machine),
    the figures, the ratios measured side by side in the same run, the command and a summary.
    `regenerate_results_md` builds bench/RESULTS.md from these files.

    With `merge` (a run of some parts of an area), figures and ratios are added to the existing
    file's, which keeps the others; `runs` records each part's command, date and summary."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{area}.json"
    if merge and path.exists():
        document = json.loads(path.read_text())
        date = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        document["figures"] = {**document.get("figures", {}), **result.get("figures", {})}
        document["ratios"] = {**document.get("ratios", {}), **result.get("ratios", {})}
        document.setdefault("runs", []).append({"command": command, "date": date, "machine": machine(),
                                                "summary": result.get("summary", "")})
        path.write_text(json.dumps(document, indent=2, sort_keys=False) + "\n")
        return path
    document = {
        "machine": machine(),
        "date": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "figures": result.get("figures", {}),
        "ratios": result.get("ratios", {}),
        "command": command,
        "summary": result.get("summary", ""),
    }
    path.write_text(json.dumps(document, indent=2, sort_keys=False) + "\n")
    return path


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def _section(area: str, document: dict[str, Any]) -> str:
    lines = [f"## {area}", "",
             f"Command: `{document.get('command', f'python -m bench {area}')}`  ",
             f"Machine: {document.get('machine', '?')}  ",
             f"Date: {document.get('date', '?')}", ""]
    if document.get("summary"):
        lines += [document["summary"].strip(), ""]
    # A part run since (`--only`) replaced some figures: its latest run says how they were measured.
    latest = {run["command"]: run for run in document.get("runs", [])}
    for command, run in latest.items():
        lines += [f"Merged from `{command}` ({run.get('date', '?')}, {run.get('machine', '?')}): "
                  f"{run.get('summary', '').strip()}", ""]
    for title, key in (("Ratios", "ratios"), ("Figures", "figures")):
        values = document.get(key) or {}
        if values:
            lines += [f"| {title.lower()[:-1]} | value |", "| --- | --- |"]
            lines += [f"| `{name}` | {_number(value)} |" for name, value in values.items()]
            lines.append("")
    return "\n".join(lines)


def regenerate_results_md() -> Path:
    """Rebuild bench/RESULTS.md from every bench/results/*.json, one section per area."""
    sections = []
    for path in sorted(RESULTS_DIR.glob("*.json")):
        try:
            document = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            sections.append(f"## {path.stem}\n\n(unreadable result file: {error})\n")
            continue
        sections.append(_section(path.stem, document))
    header = ("# Benchmark results\n\n"
              "Generated by `python -m bench` (`make bench`) from `bench/results/*.json`; do not edit by hand.\n"
              "Ratios are measured side by side in one run, so they mean more than absolute figures on a "
              "shared, noisy machine.\n")
    RESULTS_MD.write_text(header + "\n" + "\n".join(sections))
    return RESULTS_MD
