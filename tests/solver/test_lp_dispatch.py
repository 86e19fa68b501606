"""Planning for SGLang's lp dispatch: the layer score, the solver's per-layer choice, the
engine flag the plan carries."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from solver_helpers import counts_trace

from placement.cluster import Cluster
from placement.errors import InputError
from placement.solver import SolveOptions, solve
from placement.solver.lp_dispatch import lp_layer_scores
from placement.solver.problem import ProblemData


def test_layer_score_by_hand() -> None:
    # 2 GPUs x 2 slots, expert 0 hot (10 tokens), 1 and 2 one token each.
    # A: expert 0 on both GPUs -> the LP splits it 5 / 5: loads 6, 6 -> 1.0
    # B: both copies of expert 0 on GPU 0 -> loads 10, 2 -> 10 / 6
    cluster = Cluster(1, 2, 2)
    rows = np.array([[0, 1, 0, 2], [0, 0, 1, 2]])
    scores = lp_layer_scores(rows, np.array([[10.0, 1.0, 1.0]]), cluster, 3)
    np.testing.assert_allclose(scores, [1.0, 10 / 6])
    # worst vs mean of two scenarios (the second balanced for both)
    two = np.array([[10.0, 1.0, 1.0], [2.0, 1.0, 1.0]])
    assert lp_layer_scores(rows[1:], two, cluster, 3, "max")[0] == pytest.approx(10 / 6)
    assert lp_layer_scores(rows[1:], two, cluster, 3, "mean")[0] == pytest.approx(
        (10 / 6 + 2 / 2) / 2)


def test_solve_for_lp_never_scores_worse_than_for_static(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    shares = rng.dirichlet(np.full(16, 0.3), size=(3, 3))  # [W, L, E], skewed
    problem = ProblemData.from_traces(counts_trace(shares), Cluster(2, 2, 6))
    static = solve(problem, options=SolveOptions(jobs=1, objective="balance")).plan
    lp = solve(problem, options=SolveOptions(jobs=1, objective="balance", dispatch="lp")).plan
    assert lp.settings["dispatch"] == "lp" and "dispatch" not in static.settings
    assert len(lp.settings["lp_layer_source"]) == 3
    for layer in range(3):
        rows = np.stack([np.asarray(static.phy2log)[layer], np.asarray(lp.phy2log)[layer]])
        s_static, s_lp = lp_layer_scores(rows, problem.scenario_counts[:, layer],
                                         problem.cluster, 16)
        assert s_lp <= s_static + 1e-12
    # the engine flag follows the plan's rule
    from placement.engines.sglang import sglang_flags

    assert "--ep-dispatch-algorithm lp" in sglang_flags(lp, tmp_path / "p.json")
    assert "--ep-dispatch-algorithm static" in sglang_flags(static, tmp_path / "p.json")


def test_unknown_dispatch_is_refused() -> None:
    with pytest.raises(InputError, match="dispatch in static, lp"):
        SolveOptions(dispatch="dynamic")
