"""One vocabulary for figures (figures.md): the same label is the same number in every command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from placement.cluster import Cluster
from placement.routing_traces import synthesize, write_native
from placement.solver import SolveOptions, solve


def test_solve_and_validate_agree_in_sample(tmp_path: Path, run) -> None:
    """``imbalance (static)`` of a plan on the trace it was made from: all windows pooled, per
    layer, mean over layers; solve's figure and validate's are one number."""
    trace = synthesize("olmoe", num_tokens=512, num_windows=3, num_source_ranks=8, num_layers=3,
                       seed=5)
    write_native(trace, tmp_path / "t.npz")
    plan = solve(trace, Cluster(2, 4, 10), SolveOptions(method="eplb")).plan
    plan.save(tmp_path / "plan.json")
    r = run("validate", tmp_path / "plan.json", tmp_path / "t.npz", "--json")
    assert r.exit_code == 0, r.output
    v = json.loads(r.stdout)
    assert v["imbalance_static"] == pytest.approx(float(np.mean(plan.objectives["imbalance_static"])))
    assert v["cross_node_sends_per_token"] == pytest.approx(
        float(np.mean(plan.objectives["cross_node_sends_per_token"])))
    text = run("validate", tmp_path / "plan.json", tmp_path / "t.npz").stdout.splitlines()
    assert text[2].startswith(f"imbalance (static): {v['imbalance_static']:.4f} ")
