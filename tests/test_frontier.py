"""The balance/traffic frontier: several trade-offs of one input, judged held out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from placement.cluster import Cluster
from placement.errors import InputError
from placement.frontier import format_frontier, frontier, frontier_figure
from placement.routing_traces import synthesize
from placement.routing_traces.trace import Trace
from placement.solver import SolveOptions
from placement.validation import replay


@pytest.fixture(scope="module")
def halves() -> tuple[Trace, Trace]:
    t = synthesize("olmoe", num_tokens=2048, num_windows=4, num_source_ranks=8, num_layers=2,
                   seed=2)
    return t.select_windows([0, 1]), t.select_windows([2, 3])


def test_frontier_points_and_their_held_out_figures(halves: tuple[Trace, Trace],
                                                    tmp_path: Path) -> None:
    plan_from, held = halves
    cluster = Cluster(2, 4, 10)
    fr = frontier(plan_from, held, cluster, tolerances=(0.0, 0.2),
                  options=SolveOptions(jobs=1))
    labels = [p.label for p in fr.points]
    assert labels == ["optimizer (balance)", "optimizer (traffic, tolerance 0)",
                      "optimizer (traffic, tolerance 0.2)", "optimizer (time)", "eplb",
                      "eplb-global", "sglang-vec", "contiguous"]
    # every point is the replay of its plan on the held-out trace
    for p in fr.points:
        r = replay(p.plan, held)
        assert p.imbalance == pytest.approx(r.mean_imbalance)
        assert p.sends == pytest.approx(r.mean_cross_node_sends_per_token)
        assert p.predicted_time > 0
    loose = fr.point("optimizer (traffic, tolerance 0.2)")
    assert loose.plan.settings["balance_tolerance"] == 0.2
    assert fr.heldout_tokens == held.num_tokens
    text = format_frontier(fr)
    assert text.splitlines()[0].startswith("held-out (1024 tokens, static dispatch), 2x4x10")
    assert len(text.splitlines()) == 2 + len(fr.points)
    fig = frontier_figure(fr)
    out = tmp_path / "frontier.png"
    fig.savefig(out)
    assert out.stat().st_size > 1000
    d = fr.to_dict()
    assert d["points"][4]["label"] == "eplb"
    assert np.isfinite(d["points"][0]["cross_node_sends_per_token"])


def test_frontier_needs_token_level_traces(halves: tuple[Trace, Trace]) -> None:
    plan_from, held = halves
    counts = Trace(num_experts=64, counts=held.window_counts(), layer_ids=held.layer_ids)
    with pytest.raises(InputError, match="token-level"):
        frontier(plan_from, counts, Cluster(2, 4, 10))
    with pytest.raises(InputError, match="tolerances >= 0"):
        frontier(plan_from, held, Cluster(2, 4, 10), tolerances=(-0.1,))
    with pytest.raises(InputError, match="Unknown baseline"):
        frontier(plan_from, held, Cluster(2, 4, 10), baselines=("magic",))
