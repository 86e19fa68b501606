"""Token-level traces with short windows plan on shrunk shares; small layers must still report
the exact model's bound of the plain objective (a regression: it used to fall back to the weaker
replica-count bound)."""

from __future__ import annotations

import numpy as np

from placement import Cluster, SolveOptions, Trace, solve
from placement.metrics import even_gpu_loads, imbalance


def test_small_token_layers_carry_an_exact_valid_bound() -> None:
    rng = np.random.default_rng(5)
    T, L, E, k = 240, 2, 8, 2
    pop = rng.dirichlet(np.full(E, 0.5), size=L)
    ids = np.stack([np.stack([rng.choice(E, k, replace=False, p=pop[layer]) for layer in range(L)])
                    for _ in range(T)])
    trace = Trace(num_experts=E, topk_ids=ids, window=np.repeat(np.arange(6), T // 6),
                  source_rank=rng.integers(0, 4, T))
    cluster = Cluster(2, 2, 3)
    plan = solve(trace, cluster, SolveOptions(balance_tolerance=0.0, seed=0)).plan
    assert plan.settings["bound_source"] == ["exact"] * L
    assert plan.lower_bound is not None
    # the bound is below the plan's own in-sample worst-window imbalance, recomputed here
    wc = trace.window_counts()
    worst = imbalance(even_gpu_loads(plan.phy2log, wc, cluster)).max(axis=0)
    np.testing.assert_allclose(plan.objectives["worst_window_imbalance_even"], worst)
    assert all(b <= v + 1e-9 for b, v in zip(plan.lower_bound, worst, strict=True))
