"""The four commands of the README chained as a user runs them: on SGLang counts files (made from
shipped data, and the real ones where the real-data folder is present) and on the real FLAME-MoE
token-level trace that ships with the package."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest


def test_deepseek_counts_solve_validate_export_compare(run, deepseek_counts_dir: Path,
                                                       tmp_path: Path) -> None:
    d = deepseek_counts_dir
    fit_a, fit_b, held = ((d / f"{n}.json" for n in ("prefill_in512", "prefill_in1024",
                                                     "prefill_in2048"))
                          if d.name == "deepseek_v3_sglang" else sorted(d.glob("*.json"))[:3])
    plan = tmp_path / "plan.json"
    r = run("solve", fit_a, fit_b, "--preset",
             "deepseek-prefill", "--time-limit", "20", "-o", plan)
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines()[-1] == f"saved plan to {plan}"

    r = run("validate", plan, held, "--dispatch", "even", "--json")
    assert r.exit_code == 0, r.output
    v = json.loads(r.stdout)
    # the shipped synthetic workloads drift more between windows than the real ones
    assert len(v["layers"]) == 58
    assert 1.0 <= v["imbalance_even"] < (1.3 if d.name == "deepseek_v3_sglang" else 1.6)
    assert v["cross_node_sends_per_token"] is None  # counts carry no traffic

    out = tmp_path / "init_expert_location.json"
    r = run("export", plan, "--format", "sglang", "-o", out)
    assert r.exit_code == 0, r.output
    data = json.loads(out.read_text())
    assert list(data) == ["physical_to_logical_map"]
    m = np.asarray(data["physical_to_logical_map"])
    assert m.shape == (61, 288)
    for row in range(3):
        np.testing.assert_array_equal(m[row], np.arange(288) % 256)
    assert "--ep-num-redundant-experts 32" in r.stdout

    report = tmp_path / "report"
    r = run("compare", held, plan, "--baseline", "eplb", "-o", report)
    assert r.exit_code == 0, r.output
    md = (report / "report.md").read_text()
    assert "| eplb (baseline) |" in md
    # counts give balance figures only (per-layer imbalance, tokens per GPU): no traffic plots
    assert (report / "report.html").read_text().count("data:image/png;base64,") == 2


@pytest.mark.slow
def test_token_trace_split_by_window(run, tmp_path: Path) -> None:
    flame = "bundled:flame-moe"
    plan = tmp_path / "plan.json"
    r = run("solve", f"{flame}#first-half", "--nodes", "4", "--gpus-per-node", "2",
             "--slots-per-gpu", "10", "--time-limit", "20", "-o", plan)
    assert r.exit_code == 0, r.output
    r = run("compare", f"{flame}#second-half", plan, "--baseline", "eplb", "-o", tmp_path / "rep")
    assert r.exit_code == 0, r.output
    # baselines were planned from the plan's own input (the first half), not the held-out half
    assert "first-half" in (tmp_path / "rep" / "report.md").read_text()
    r = run("compare", f"{flame}#first-half", plan, "--baseline", "eplb", "-o", tmp_path / "r2")
    assert r.exit_code == 1
    assert r.stderr.startswith("error: ")
