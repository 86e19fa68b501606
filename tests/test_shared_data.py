"""Real-data tests skip with one line where the real-data folder is absent, and fail instead under
PLACEMENT_REQUIRE_SHARED=1 (what CI sets when ../shared is present)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# one test of each way to ask for real data: a marker, a fixture, a parametrised fixture
TESTS = ["tests/cost/test_reference_data.py::test_reference_imbalance_is_what_eplb_reaches_held_out",
         "tests/solver/test_eplb.py::test_every_full_case_is_listed",
         "tests/cli/test_trace_cmd.py::test_inspect_counts_directory_as_windows"]


def _pytest(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TESTS],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PLACEMENT_SHARED_DIR": str(tmp_path / "absent"), **env})


@pytest.mark.slow
def test_absent_real_data_skips_with_one_line(tmp_path: Path) -> None:
    r = _pytest(tmp_path, PLACEMENT_REQUIRE_SHARED="0")
    assert r.returncode == 0, r.stdout + r.stderr
    skips = [line for line in r.stdout.splitlines() if line.startswith("SKIPPED")]
    # 2 phases, 1 case list, 1 real directory (the bundled one runs); same lines are grouped
    assert sum(int(re.match(r"SKIPPED \[(\d+)\]", line)[1]) for line in skips) == 4  # type: ignore[index]
    for line in skips:
        assert f"real data not here: {tmp_path / 'absent'}/" in line
        assert "CI has it as ../shared beside the checkout" in line
    assert "real-data tests: 4 skipped" in r.stdout
    assert "1 passed, 4 skipped" in r.stdout


@pytest.mark.slow
def test_required_real_data_fails_instead_of_skipping(tmp_path: Path) -> None:
    r = _pytest(tmp_path, PLACEMENT_REQUIRE_SHARED="1")
    assert r.returncode == 1
    assert "PLACEMENT_REQUIRE_SHARED=1 forbids skipping real-data tests" in r.stdout
    assert "1 passed" in r.stdout and "skipped" not in r.stdout.splitlines()[-1]


def test_flame_moe_ships_with_its_notice_and_licence() -> None:
    """The real FLAME-MoE trace is Apache-2.0 data: it ships as bundled:flame-moe with its notice
    and licence beside it, and the wheel takes all three (package-data)."""
    from placement.routing_traces import load_trace
    from placement.routing_traces.readers import bundled_trace_path

    path = bundled_trace_path("flame-moe")
    notice = path.with_suffix(".NOTICE").read_text()
    assert "Apache License, Version 2.0" in notice and "FLAME-MoE" in notice
    assert "github.com/cmu-flame/FLAME-MoE" in notice
    assert "Apache License" in path.with_suffix(".LICENSE").read_text()
    pyproject = (REPO / "pyproject.toml").read_text()
    for pattern in ('"data/*.npz"', '"data/*.NOTICE"', '"data/*.LICENSE"'):
        assert pattern in pyproject
    t = load_trace("bundled:flame-moe")
    assert t.model == "FLAME-MoE-290M" and t.topk_ids.shape == (2048, 8, 6)
    assert t.num_experts == 64 and list(t.layer_ids) == list(range(2, 10))


def test_nothing_points_outside_the_repository() -> None:
    """The code and the docs cite docs/definitions.md, never a file beside the checkout."""
    offenders = []
    for path in [*(REPO / "placement").rglob("*.py"), REPO / "README.md",
                 *(REPO / "docs").glob("*.md")]:
        text = path.read_text()
        for needle in ("shared/docs/", "/work/", "../shared/traces", "../shared/reference"):
            if needle in text and not (path.name == "development.md" and needle.startswith("../")):
                offenders.append(f"{path.relative_to(REPO)}: {needle}")
    assert not offenders
