"""``placement demo``: the whole pipeline on a bundled trace."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from placement import Cluster, InputError
from placement.cli import main
from placement.demo import format_demo, run_demo


@pytest.mark.slow
def test_demo_on_bundled_mixtral(tmp_path: Path) -> None:
    res = run_demo(tmp_path, source="bundled:mixtral", cluster=Cluster(2, 2, 3))
    for name in ("plan.json", "init_expert_location.json", "report/report.md",
                 "report/report.html"):
        assert (tmp_path / name).is_file(), name
    m = json.loads((tmp_path / "init_expert_location.json").read_text())
    assert len(m["physical_to_logical_map"][0]) == 12
    text = format_demo(res)
    assert text.splitlines()[0] == "held-out (w1), the engines' static dispatch:"
    assert "cross-node sends per token" in text
    assert res.planning_windows == ("w0",) and res.heldout_windows == ("w1",)
    # the report names the held-out data by what it is (the trace and its windows)
    md = (tmp_path / "report" / "report.md").read_text()
    assert "- Held-out traces: bundled:mixtral#second-half (token-level)." in md
    assert "planned from bundled:mixtral#first-half." in md
    assert res.validation.trace_name == "bundled:mixtral#second-half"


def test_demo_cli_default_trace_is_counts(tmp_path: Path) -> None:
    r = CliRunner().invoke(main, ["demo", "-o", str(tmp_path / "d"), "--time-limit", "20"])
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0].startswith("cluster: deepseek-prefill: 4 node(s) x 8 GPU(s)")
    assert any(line.startswith("held-out (w3, w4, w5), expert tokens split evenly") for line in lines)
    assert (tmp_path / "d" / "report" / "report.html").is_file()


def test_demo_needs_two_windows(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="at least 2 windows"):
        run_demo(tmp_path, source="bundled:mixtral#0", cluster=Cluster(2, 2, 3))


def test_default_out_dir_is_outside_any_checkout(monkeypatch, tmp_path: Path) -> None:
    from placement.demo import default_out_dir

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    d = default_out_dir()
    assert d.parent == tmp_path and d.name.startswith("placement-demo-")
    repo = Path(__file__).resolve().parents[1]
    assert repo not in d.resolve().parents
