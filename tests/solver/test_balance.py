"""Balance building blocks: replica counts, bounds, packing, local search, exact model."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
import pytest
from solver_helpers import brute_force_best

from placement.solver.balance import (
    LayerState,
    count_bound,
    improve,
    lpt_assign,
    robust_counts,
    scaled_loads,
)
from placement.solver.cpsat import ExactResult, solve_exact, solve_patterns


def _w(rng: np.random.Generator, S: int, E: int, G: int, alpha: float = 0.7) -> np.ndarray:
    return scaled_loads(rng.dirichlet(np.full(E, alpha), size=S), G)


def _check_phy(phy: np.ndarray, E: int, G: int, spg: int) -> None:
    assert phy.shape == (G, spg)
    assert set(phy.reshape(-1).tolist()) == set(range(E))  # every expert has a replica
    for g in range(G):
        assert len(set(phy[g].tolist())) == spg  # no GPU holds an expert twice


def test_scaled_loads_mean_is_one() -> None:
    w = scaled_loads(np.array([[0.5, 0.25, 0.25], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]), 4)
    assert w.shape == (2, 3)  # the empty scenario is dropped
    np.testing.assert_allclose(w.sum(axis=1), [4.0, 4.0])


def test_robust_counts_minimise_the_worst_replica(rng: np.random.Generator) -> None:
    E, P, K = 5, 9, 4
    w = _w(rng, 3, E, 3)
    cnt = robust_counts(w, P, K, "max")
    assert cnt.sum() == P and cnt.min() >= 1 and cnt.max() <= K
    best = min(
        (w / np.array(c)).max()
        for c in itertools.product(range(1, K + 1), repeat=E) if sum(c) == P
    )
    assert (w / cnt).max() == pytest.approx(best)


def test_robust_counts_follow_the_worst_scenario() -> None:
    # expert 0 is cold on average but hot in scenario 1: it must get the spare replica
    w = np.array([[0.0, 2.0, 1.0, 1.0], [2.6, 1.4, 0.0, 0.0]])
    assert robust_counts(w, 5, 4, "max").tolist() == [2, 1, 1, 1]
    assert robust_counts(w.sum(axis=0, keepdims=True), 5, 4, "max").tolist() == [1, 2, 1, 1]


@pytest.mark.parametrize("seed", range(5))
def test_lpt_and_local_search_give_valid_placements(seed: int) -> None:
    rng = np.random.default_rng(seed)
    E, G, spg = 12, 4, 4
    w = _w(rng, 3, E, G)
    cnt = robust_counts(w, G * spg, G)
    phy = lpt_assign(w, cnt, G, spg)
    _check_phy(phy, E, G, spg)
    st = LayerState.build(w, phy)
    before = st.objective()
    st = improve(st, rounds=3, max_moves=200, seed=seed)
    _check_phy(st.phy, E, G, spg)
    assert st.objective() <= before + 1e-12
    # the incremental loads agree with a fresh computation
    fresh = LayerState.build(w, st.phy)
    np.testing.assert_allclose(st.loads, fresh.loads)
    np.testing.assert_array_equal(st.cnt, np.bincount(st.phy.reshape(-1), minlength=E))


@pytest.mark.parametrize("model", [solve_exact, solve_patterns])
@pytest.mark.parametrize(("E", "G", "spg", "S", "seed"),
                         [(6, 3, 3, 2, 0), (6, 3, 3, 1, 1), (8, 4, 3, 2, 2), (7, 4, 3, 3, 3)])
def test_exact_models_match_brute_force(model: Callable[..., ExactResult], E: int, G: int,
                                        spg: int, S: int, seed: int) -> None:
    w = _w(np.random.default_rng(seed), S, E, G)
    best = brute_force_best(w, G, spg)
    res = model(w, G, spg, max_deterministic_time=20.0)
    assert res.optimal
    assert res.phy is not None
    _check_phy(res.phy, E, G, spg)
    assert LayerState.build(w, res.phy).objective() == pytest.approx(best, abs=1e-4)
    assert res.bound <= best + 1e-9  # a valid bound
    assert res.bound == pytest.approx(best, abs=1e-4)


@pytest.mark.parametrize("robust", ["max", "mean"])
def test_bounds_never_exceed_the_optimum(robust: str) -> None:
    for seed in range(4):
        w = _w(np.random.default_rng(100 + seed), 2, 6, 3, alpha=0.3)
        best = brute_force_best(w, 3, 3, robust)
        assert count_bound(w, 9, 3, robust) <= best + 1e-12


def test_local_search_reaches_the_brute_force_optimum_often() -> None:
    hits = 0
    for seed in range(6):
        w = _w(np.random.default_rng(200 + seed), 2, 8, 4)
        best = brute_force_best(w, 4, 3)
        cnt = robust_counts(w, 12, 4)
        st = improve(LayerState.build(w, lpt_assign(w, cnt, 4, 3)), rounds=60, max_moves=200,
                     seed=seed)
        assert best - 1e-9 <= st.objective() <= 1.05 * best
        hits += st.objective() <= best + 1e-9
    assert hits >= 4


def test_mean_objective_matches_brute_force() -> None:
    w = _w(np.random.default_rng(9), 3, 7, 4)
    best = brute_force_best(w, 4, 3, "mean")
    res = solve_patterns(w, 4, 3, robust="mean", max_deterministic_time=20.0)
    assert res.optimal and res.phy is not None
    assert LayerState.build(w, res.phy, "mean").objective() == pytest.approx(best, abs=1e-4)


def test_sixteen_experts_four_gpus_proven_optimal() -> None:
    # a skewed 16-expert layer (two hot experts) seen in two scenarios, 4 GPUs x 5 slots
    shares = np.array([
        [0.20, 0.14, 0.09, 0.08, 0.07, 0.06, 0.06, 0.05, 0.05, 0.04, 0.04, 0.04, 0.03, 0.02,
         0.02, 0.01],
        [0.16, 0.18, 0.07, 0.09, 0.06, 0.07, 0.05, 0.06, 0.04, 0.05, 0.04, 0.03, 0.04, 0.03,
         0.02, 0.01],
    ])
    w = scaled_loads(shares, 4)
    cnt = robust_counts(w, 20, 4)
    hint = improve(LayerState.build(w, lpt_assign(w, cnt, 4, 5)), rounds=5, max_moves=200,
                   seed=0).phy
    # a deterministic work limit, not a wall-clock one (speed belongs to the benchmarks)
    res = solve_exact(w, 4, 5, hint=hint, max_deterministic_time=5.0)
    assert res.optimal
