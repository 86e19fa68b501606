"""The drift model (placement.solver.drift) and the drift rule that replaced the validation
guard: every candidate is judged on drift scenarios of tokens it was not fitted to and the best
expected time is kept whose worst scenario is within DRIFT_MARGIN of EPLB's
(placement.solver.optimizer._validate, placement.solver.drift.robust_choice)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from placement.cluster import Cluster
from placement.models import model_preset
from placement.routing_traces.trace import Trace
from placement.solver import SolveOptions, solve
from placement.solver.drift import (
    DRIFT_MARGIN,
    DRIFT_PRIOR,
    IMBALANCE_MARGIN,
    ScenarioFigures,
    amplification,
    drift_scenarios,
    estimate_drift,
    noise_tv,
    ranked_choices,
    robust_choice,
    share_drift,
)
from placement.solver.optimizer import (
    MIN_SPLIT_TOKENS,
    candidate_kinds,
    validation_split,
)
from placement.solver.problem import ProblemData


@pytest.fixture(autouse=True)
def _drift_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests judge the drift rule (the default rule is the validation guard:
    tests/solver/test_validation_guard.py)."""
    monkeypatch.setattr("placement.solver.optimizer.SELECTION_RULE", "drift")


PLAIN = ("eplb", "eplb, co-located replicas spread", "balance", "eplb-global")


def _cliques(cliques_by_window: list[list[list[int]]], tokens_per_window: int = 1000,
             seed: int = 1) -> Trace:
    """Two experts per token from one clique; every window has its own cliques (they fire
    apart, as often each); 8 experts on 4 source ranks."""
    rng = np.random.default_rng(seed)
    rows, window = [], []
    for w, cliques in enumerate(cliques_by_window):
        for t in range(tokens_per_window):
            rows.append(rng.choice(cliques[t % len(cliques)], 2, replace=False))
            window.append(w)
    ids = np.stack(rows)
    return Trace(num_experts=8, topk_ids=ids[:, None, :], window=np.asarray(window),
                 source_rank=rng.integers(0, 4, ids.shape[0]))


# 1 GB/s between nodes: the network sets the predicted time, so the time objective wants traffic
SLOW = dataclasses.replace(Cluster(2, 2, 3), network_gbps=1.0)
OPTS = SolveOptions(jobs=1, model="flame-moe-290m")


def _figs(time: list[float], imb: list[float], sends: float) -> ScenarioFigures:
    return ScenarioFigures(np.asarray(time), np.asarray(imb), sends)


# -- the drift model ------------------------------------------------------------------------


def test_share_drift_removes_sampling_noise_and_sees_a_real_shift() -> None:
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(16))
    same = np.stack([rng.multinomial(4000, p) for _ in range(6)])[:, None, :].astype(float)
    d, pairs = share_drift(same)
    assert pairs[0] == 5 and d[0] < 0.02  # the same shares: noise only
    q = np.roll(p, 3)
    moved = np.stack([rng.multinomial(4000, p if i % 2 else q) for i in range(6)])[:, None, :]
    d2, _ = share_drift(moved.astype(float))
    tv = 0.5 * np.abs(p - q).sum()
    assert d2[0] == pytest.approx(tv, abs=0.03)


def test_noise_tv_matches_simulated_samples() -> None:
    rng = np.random.default_rng(1)
    p = rng.dirichlet(np.ones(8))
    tv = [0.5 * np.abs(rng.multinomial(500, p) / 500 - rng.multinomial(500, p) / 500).sum()
          for _ in range(400)]
    assert float(noise_tv(p, np.asarray(500.0), np.asarray(500.0))) == pytest.approx(
        float(np.mean(tv)), rel=0.1)


def test_estimate_drift_uses_the_prior_for_one_window_and_shrinks_windows_toward_it() -> None:
    one = np.ones((1, 3, 8))
    m = estimate_drift(one)
    assert m.source == "prior" and np.allclose(m.drift, DRIFT_PRIOR)
    assert "prior" in m.describe()
    rng = np.random.default_rng(2)
    p = rng.dirichlet(np.ones(8))
    many = np.stack([rng.multinomial(100000, p) for _ in range(20)])[:, None, :].astype(float)
    w = estimate_drift(many)
    assert w.source == "windows"
    assert 0.0 < w.drift[0] < DRIFT_PRIOR  # stable windows pull the estimate below the prior
    assert w.settings()["drift_source"] == "windows"


def test_amplification_scales_the_blocks_to_the_drift() -> None:
    pool = np.array([100.0, 100.0, 100.0, 100.0])
    blocks = np.array([[30.0, 20.0, 25.0, 25.0], [20.0, 30.0, 25.0, 25.0]])  # TV 0.05 each
    assert amplification(0.10, blocks, pool) == pytest.approx(2.0)
    assert amplification(0.01, blocks, pool) == 1.0  # never shrunk below what is seen


def test_drift_scenarios_amplify_block_deviations() -> None:
    c = Cluster(1, 2, 4)
    model = model_preset("flame-moe-290m")
    loads = np.array([[60.0, 40.0], [40.0, 60.0]])
    zero = {k: np.zeros((2, 2)) for k in ("intra_send", "intra_recv", "net_send", "net_recv")}
    f1 = drift_scenarios(loads, zero, np.zeros(2), np.array([100, 100]), 1.0, c, model,
                         "two-batch")
    f2 = drift_scenarios(loads, zero, np.zeros(2), np.array([100, 100]), 2.0, c, model,
                         "two-batch")
    np.testing.assert_allclose(f1.imbalance, [1.2, 1.2])
    np.testing.assert_allclose(f2.imbalance, [1.4, 1.4])  # 50 + 2 x 10 over a mean of 50
    assert (f2.time > f1.time).all()


# -- the rule -------------------------------------------------------------------------------


def test_robust_choice_keeps_the_best_expected_time_within_the_worst_case_margin() -> None:
    eplb = _figs([1.0, 1.0, 1.0], [1.1, 1.1, 1.1], 1.0)
    fast_but_fragile = _figs([0.5, 0.5, 1.0 + 2 * DRIFT_MARGIN], [1.1, 1.1, 1.1], 0.5)
    steady = _figs([0.8, 0.8, 0.8], [1.1, 1.1, 1.1], 0.7)
    unbalanced = _figs([0.7, 0.7, 0.7], [1.1 * (1 + 2 * IMBALANCE_MARGIN)] * 3, 0.6)
    chatty = _figs([0.75, 0.75, 0.75], [1.1, 1.1, 1.1], 1.2)  # more sends than EPLB
    figs = [fast_but_fragile, steady, unbalanced, chatty, eplb]
    win, ok = robust_choice(figs, [False, False, False, False, True], 4, [4], 0.01)
    assert win == 1 and ok == [1, 4]
    # within the margin in its worst scenario: the fragile one's better expectation wins
    figs[0] = _figs([0.5, 0.5, 1.0 + 0.5 * DRIFT_MARGIN], [1.1, 1.1, 1.1], 0.5)
    assert robust_choice(figs, [False] * 4 + [True], 4, [4], 0.01)[0] == 0
    # nothing admitted: EPLB's layer
    assert robust_choice([chatty, eplb], [False, True], 1, [1], 0.01) == (1, [1])


def test_robust_choice_measures_imbalance_against_the_better_reference() -> None:
    eplb = _figs([1.0], [1.2], 1.0)
    glob = _figs([1.0], [1.1], 1.0)
    cand = _figs([0.9], [1.15], 0.8)  # better than EPLB's balance, not EPLB-global's
    win, ok = robust_choice([cand, glob, eplb], [False, True, True], 2, [1, 2], 0.01)
    assert 0 not in ok and win == 1


def test_a_gain_below_the_cost_models_resolution_does_not_displace_eplb() -> None:
    # EPLB's co-located replicas spread: 0.1 % faster, the same balance and sends (qwen3-235b
    # drift 0.25, plan on w1-3: its re-fit was 27 % slower than EPLB's on the next window)
    eplb = _figs([1.0, 1.0], [1.1, 1.1], 1.0)
    spread = _figs([0.999, 0.999], [1.1, 1.1], 1.0)
    assert robust_choice([spread, eplb], [True, True], 1, [1], 0.01) == (1, [1])
    # a gain of the resolution in any part of the objective is worth the change
    for fig in (_figs([0.98, 0.98], [1.1, 1.1], 1.0), _figs([1.0, 1.0], [1.08, 1.08], 1.0),
                _figs([1.0, 1.0], [1.1, 1.1], 0.98)):
        assert robust_choice([fig, eplb], [True, True], 1, [1], 0.01)[1] == [0, 1]


def test_ranked_choices_orders_the_admitted_by_the_rule_and_ends_with_eplb() -> None:
    eplb = _figs([1.0, 1.0], [1.1, 1.1], 1.0)
    best = _figs([0.7, 0.7], [1.1, 1.1], 0.6)
    second = _figs([0.8, 0.8], [1.1, 1.1], 0.7)
    slower = _figs([1.05, 1.05], [1.1, 1.1], 0.9)  # admitted, but no faster than EPLB's
    rejected = _figs([0.5, 0.5], [1.1, 1.1], 1.5)  # more sends than EPLB's
    figs = [second, rejected, slower, best, eplb]
    assert ranked_choices(figs, [False] * 4 + [True], 4, [4], 0.01) == [3, 0, 4]
    assert robust_choice(figs, [False] * 4 + [True], 4, [4], 0.01)[0] == 3
    assert ranked_choices([rejected, eplb], [False, True], 1, [1], 0.01) == [1]


def test_a_partition_that_only_wins_in_sample_is_not_kept() -> None:
    # the cliques of the first window are not those of the second: a partition fitted to one
    # cuts nothing on the other, and the rule keeps a plain plan
    trace = _cliques([[[0, 1, 2, 3], [4, 5, 6, 7]], [[0, 1, 4, 5], [2, 3, 6, 7]]])
    res = solve(trace, SLOW, OPTS)
    st = res.plan.settings
    assert st["guard_fell_back"] == [1.0]
    assert st["choice"][0] in PLAIN
    assert st["drift_kept_kind"][0] != "traffic-aware"
    assert st["validation_time_ratio"][0] > 1.0 - DRIFT_MARGIN  # no gain held out
    assert res.guard_fell_back == [0]
    assert st["drift_source"] == "windows"
    text = res.summary()
    assert "drift: " in text and "drift rule: 1 layer(s) judged on drift scenarios" in text


def test_strong_co_activation_keeps_the_traffic_plan() -> None:
    # the same two cliques in both windows: the partition splits them by node on any tokens
    trace = _cliques([[[0, 1, 2, 3], [4, 5, 6, 7]]] * 2)
    res = solve(trace, SLOW, OPTS)
    st = res.plan.settings
    assert st["guard_fell_back"] == [0.0]
    assert st["choice"][0].startswith("partition")
    assert st["drift_kept_kind"] == ["traffic-aware"]
    assert st["drift_worst_time_ratio"][0] <= 1.0 + DRIFT_MARGIN
    assert st["drift_expected_time_ratio"][0] < 0.9
    assert res.guard_fell_back == []
    sends = res.plan.objectives["cross_node_sends_per_token"][0]
    assert sends == pytest.approx(0.5, abs=0.05)  # a token crosses only to reach a replica
    bal = solve(trace, SLOW, dataclasses.replace(OPTS, objective="balance")).plan
    assert sends < 0.85 * bal.objectives["cross_node_sends_per_token"][0]


def test_the_re_fit_takes_only_a_kind_the_rule_judged(monkeypatch: pytest.MonkeyPatch) -> None:
    # the rule admitted a plan of a kind the re-fit on all tokens does not have (a group packing
    # or node cap of the half only): no other plan of its family stands in for it, the next
    # admitted kind is the layer's
    import placement.solver.optimizer as opt

    trace = _cliques([[[0, 1, 2, 3], [4, 5, 6, 7]]] * 2)
    figs = {"drift_expected_time_ratio": 0.5}
    monkeypatch.setattr(opt, "_validate", lambda task, traffic: {
        "partition, cap 0.77 #3": {**figs, "guard_fell_back": 0.0}, "eplb-global": {
            **figs, "guard_fell_back": 1.0}, "eplb": {**figs, "guard_fell_back": 1.0}})
    st = solve(trace, SLOW, OPTS).plan.settings
    assert st["choice"] == ["eplb-global"]
    assert st["guard_fell_back"] == [1.0]
    monkeypatch.setattr(opt, "_validate", lambda task, traffic: {
        "partition, cap 0.77 #3": {**figs, "guard_fell_back": 0.0},
        "eplb": {**figs, "guard_fell_back": 1.0}})
    assert solve(trace, SLOW, OPTS).plan.settings["choice"] == ["eplb"]


def test_the_rule_is_off_with_an_explicit_tolerance_or_another_objective() -> None:
    trace = _cliques([[[0, 1, 2, 3], [4, 5, 6, 7]]] * 2)
    for opts in (dataclasses.replace(OPTS, balance_tolerance=0.05),
                 dataclasses.replace(OPTS, objective="traffic")):
        st = solve(trace, SLOW, opts).plan.settings
        assert "guard_fell_back" not in st
        assert "drift" in st  # the model is still recorded


def test_the_rule_gives_the_same_plan_with_any_jobs() -> None:
    # two layers, each with its own cliques in both windows
    a1 = _cliques([[[0, 1, 2, 3], [4, 5, 6, 7]]] * 2, seed=1)
    a2 = _cliques([[[0, 1, 4, 5], [2, 3, 6, 7]]] * 2, seed=2)
    trace = Trace(num_experts=8, topk_ids=np.concatenate([a1.topk_ids, a2.topk_ids], axis=1),
                  window=a1.window, source_rank=a1.source_rank)
    a = solve(trace, SLOW, dataclasses.replace(OPTS, jobs=1)).plan
    b = solve(trace, SLOW, dataclasses.replace(OPTS, jobs=2)).plan
    np.testing.assert_array_equal(a.phy2log, b.phy2log)
    assert a.settings["choice"] == b.settings["choice"]
    assert a.settings["guard_fell_back"] == b.settings["guard_fell_back"]
    assert a.settings["drift"] == b.settings["drift"]
    assert len(a.settings["guard_fell_back"]) == 2


def test_validation_split_takes_the_first_windows_else_alternate_blocks() -> None:
    trace = _cliques([[[0, 1, 2, 3], [4, 5, 6, 7]]] * 3, tokens_per_window=200)
    masks = validation_split(ProblemData.from_traces(trace, SLOW))
    assert masks is not None and [bool(m.all()) for m in masks] == [True, True, False]
    assert not masks[2].any()
    one = Trace(num_experts=8, topk_ids=trace.topk_ids, window=np.zeros(600, dtype=np.int64),
                source_rank=trace.source_rank)
    (m,) = validation_split(ProblemData.from_traces(one, SLOW)) or [None]
    assert m is not None and abs(int(m.sum()) - 300) <= 10 and m[0] and not m[-1]
    few = _cliques([[[0, 1, 2, 3], [4, 5, 6, 7]]] * 2, tokens_per_window=MIN_SPLIT_TOKENS // 4)
    assert validation_split(ProblemData.from_traces(few, SLOW)) is None


def test_candidate_kinds_do_not_depend_on_the_tokens() -> None:
    labels = ["balance", "partition, cap 0, 0 everywhere", "partition, cap 0, 3 everywhere",
              "partition, cap 0.0412, 2 everywhere", "groups, node peak +1.3 %, 4 everywhere",
              "eplb-global", "eplb, co-located replicas spread", "eplb"]
    assert candidate_kinds(labels) == [
        "balance", "partition, cap 0 #0", "partition, cap 0 #1", "partition, cap room #0",
        "groups 0 #0", "eplb-global", "eplb-spread", "eplb"]


def test_solve_json_shows_the_kept_kind_and_its_drift_figures_per_layer() -> None:
    import json

    from placement.cli.solve_cmd import solve_summary_dict

    trace = _cliques([[[0, 1, 2, 3], [4, 5, 6, 7]]] * 2)
    res = solve(trace, SLOW, OPTS)
    d = json.loads(json.dumps(solve_summary_dict(res)))
    assert d["drift"].startswith("0.")
    per = d["per_layer"]
    assert per["kept_kind"] == ["traffic-aware"]
    assert len(per["drift"]) == 1 and per["drift"][0] > 0
    assert per["drift_worst_time_ratio"][0] <= 1.0 + DRIFT_MARGIN
    assert per["drift_sends_ratio"][0] < 1.0
