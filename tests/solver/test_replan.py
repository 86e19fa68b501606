"""Re-planning under a migration budget (placement.solver.replan)."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
from solver_helpers import brute_force_best, counts_trace

from placement.cluster import Cluster
from placement.errors import InputError
from placement.moves import count_moves
from placement.plan import Plan
from placement.routing_traces import Trace, synthesize
from placement.solver import ProblemData, SolveOptions, baseline_plan, solve
from placement.solver.replan import ReplanOptions, plan_objectives, replan

C = Cluster(2, 2, 3)  # 4 GPUs, 12 slots
E = 8


def _shares(rng: np.random.Generator, W: int, L: int) -> np.ndarray:
    x = rng.lognormal(0.0, 1.0, size=(W, L, E))
    return x / x.sum(axis=-1, keepdims=True)


@pytest.fixture
def instance() -> tuple[Plan, list[Trace]]:
    """Deployed: EPLB of one traffic mix; traces now: two windows of another (3 layers)."""
    rng = np.random.default_rng(5)
    old = counts_trace(_shares(rng, 1, 3))
    deployed = baseline_plan(ProblemData.from_traces(old, C), SolveOptions(method="eplb"), "eplb")
    now = counts_trace(_shares(rng, 2, 3))
    return deployed, [now]


def _opts(moves: int, **kw: object) -> ReplanOptions:
    return ReplanOptions(max_moves=moves, jobs=1, **kw)  # type: ignore[arg-type]


def _mean_after(deployed: Plan, traces: list[Trace], moves: int, **kw: object) -> float:
    return float(np.mean(replan(deployed, traces, _opts(moves, **kw)).objective_after))


def test_budget_zero_is_the_deployed_plan(instance: tuple[Plan, list[Trace]]) -> None:
    deployed, traces = instance
    r = replan(deployed, traces, _opts(0))
    assert r.plan is deployed and r.unchanged and r.total_moves == 0
    np.testing.assert_array_equal(r.objective_before, r.objective_after)


@pytest.mark.parametrize("budget", [1, 2, 3, 5, 8, 40])
def test_budget_is_kept_and_moves_are_counted_exactly(
    instance: tuple[Plan, list[Trace]], budget: int
) -> None:
    deployed, traces = instance
    r = replan(deployed, traces, _opts(budget))
    mc = count_moves(np.asarray(deployed.phy2log), np.asarray(r.plan.phy2log), C, E)
    assert r.total_moves == mc.total <= budget
    np.testing.assert_array_equal(r.moves.moves, mc.moves)
    assert (r.objective_after <= r.objective_before + 1e-12).all()
    # the objective reported is the plan's own, recomputed
    obj = plan_objectives(np.asarray(r.plan.phy2log), ProblemData.from_traces(traces, C))
    np.testing.assert_allclose(r.objective_after, obj["worst_window_imbalance_even"])


def test_per_layer_budget(instance: tuple[Plan, list[Trace]]) -> None:
    deployed, traces = instance
    r = replan(deployed, traces, _opts(2, per_layer=True))
    assert (r.moves.moves <= 2).all() and r.total_moves > 2


def test_monotone_in_the_budget_and_converges_to_the_optimizer(
    instance: tuple[Plan, list[Trace]],
) -> None:
    deployed, traces = instance
    values = [_mean_after(deployed, traces, b) for b in (0, 1, 2, 3, 4, 5, 6, 8, 10, 13, 16, 20, 25)]
    assert all(b <= a + 1e-12 for a, b in itertools.pairwise(values)), values
    assert values[-1] < values[0]
    problem = ProblemData.from_traces(traces, C)
    best = solve(problem, options=SolveOptions(jobs=1)).plan.objectives[
        "worst_window_imbalance_even"]
    big = replan(deployed, traces, _opts(10_000))
    assert float(np.mean(big.objective_after)) <= float(np.mean(best)) + 1e-9
    assert big.objective_target is not None
    np.testing.assert_allclose(big.objective_target, best)
    # and the optimizer is exact here: every layer at the brute-force optimum
    shares = problem.scenario_shares()
    for i in range(problem.num_layers):
        bf = brute_force_best(shares[:, i, :] * C.num_gpus, C.num_gpus, C.slots_per_gpu)
        assert big.objective_after[i] == pytest.approx(bf, abs=1e-9)


def test_deterministic_and_independent_of_jobs(instance: tuple[Plan, list[Trace]]) -> None:
    deployed, traces = instance
    a = replan(deployed, traces, _opts(6))
    b = replan(deployed, traces, _opts(6))
    c = replan(deployed, traces, dataclasses.replace(_opts(6), jobs=2))
    np.testing.assert_array_equal(a.plan.phy2log, b.plan.phy2log)
    np.testing.assert_array_equal(a.plan.phy2log, c.plan.phy2log)


def test_bytes_budget_buys_whole_moves(instance: tuple[Plan, list[Trace]]) -> None:
    deployed, traces = instance
    o = ReplanOptions(max_bytes=2.9e6, bytes_per_expert=1e6, jobs=1)
    assert o.budget_moves == 2
    r = replan(deployed, traces, o)
    assert r.total_moves <= 2 and r.bytes_moved == r.total_moves * 1e6
    assert ReplanOptions(max_bytes=3e6, bytes_per_expert=1e6).budget_moves == 3


def test_without_target_only_the_descent(instance: tuple[Plan, list[Trace]]) -> None:
    deployed, traces = instance
    r = replan(deployed, traces, _opts(4, target=False))
    assert r.objective_target is None and r.total_moves <= 4
    assert float(np.mean(r.objective_after)) < float(np.mean(r.objective_before))


def test_plan_records_the_replan(
    instance: tuple[Plan, list[Trace]],
) -> None:
    deployed, traces = instance
    r = replan(deployed, traces, _opts(3))
    p = r.plan
    assert p.method == "replan" and p.status == "REPLANNED"
    assert p.settings["budget_moves"] == 3 and p.settings["moves"] == r.total_moves
    assert int((np.asarray(p.phy2log) != np.asarray(deployed.phy2log)).sum()) == \
        int(r.moves.changed_slots.sum()) >= r.total_moves
    assert "budget: 3 move(s) in total" in r.summary().splitlines()


def test_layers_outside_the_traces_stay() -> None:
    rng = np.random.default_rng(2)
    deployed = baseline_plan(ProblemData.from_traces(counts_trace(_shares(rng, 1, 3)), C),
                             SolveOptions(method="eplb"), "eplb")
    part = counts_trace(_shares(rng, 2, 3)).select_layers([1])
    r = replan(deployed, [part], _opts(50))
    np.testing.assert_array_equal(np.asarray(r.plan.phy2log)[[0, 2]],
                                  np.asarray(deployed.phy2log)[[0, 2]])
    assert r.moves.moves[[0, 2]].tolist() == [0, 0] and r.total_moves > 0
    assert r.messages == ("2 layer(s) of the deployed plan are not in the traces and stay as "
                          "they are.",)


def test_token_level_traces() -> None:
    t = synthesize("olmoe", num_tokens=1536, num_windows=3, num_source_ranks=8, num_layers=2,
                   seed=1)
    c = Cluster(2, 4, 9)
    deployed = baseline_plan(ProblemData.from_traces(t.select_windows([0]), c),
                             SolveOptions(method="eplb"), "eplb")
    r = replan(deployed, [t.select_windows([1, 2])], ReplanOptions(max_moves=20, jobs=1))
    assert r.total_moves <= 20
    assert "cross_node_sends_per_token" in r.plan.objectives
    assert float(np.mean(r.objective_after)) < float(np.mean(r.objective_before))


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(max_moves=-1), "Expected max_moves >= 0 (an integer), got -1."),
    (dict(), "Give the budget as exactly one of max_moves or max_bytes."),
    (dict(max_moves=1, max_bytes=1.0), "Give the budget as exactly one of max_moves or "
     "max_bytes."),
    (dict(max_bytes=-5.0, bytes_per_expert=1.0), "Expected max_bytes >= 0, got -5.0."),
    (dict(max_bytes=5.0), "max_bytes needs bytes_per_expert (the size of one expert's "
     "weights; give the model)."),
    (dict(max_moves=1, robust="p90"), "Expected robust in ('max', 'mean'), got 'p90'."),
    (dict(max_moves=1, jobs=0), "Expected jobs >= 1, got 0."),
])
def test_bad_options(kwargs: dict, message: str) -> None:
    with pytest.raises(InputError) as exc:
        ReplanOptions(**kwargs)
    assert str(exc.value) == message


def test_traces_that_do_not_fit_the_plan(instance: tuple[Plan, list[Trace]]) -> None:
    deployed, _ = instance
    rng = np.random.default_rng(0)
    other = Trace(num_experts=E, counts=np.rint(_shares(rng, 1, 1) * 1e5), layer_ids=[7])
    with pytest.raises(InputError, match="the traces have layer"):
        replan(deployed, [other], _opts(1))
    nine = Trace(num_experts=9, counts=np.ones((1, 3, 9)))
    with pytest.raises(InputError, match="9 experts per layer but the deployed plan has 8"):
        replan(deployed, [nine], _opts(1))


def test_plan_objectives_match_the_solver() -> None:
    t = synthesize("olmoe", num_tokens=1024, num_windows=2, num_source_ranks=8, num_layers=2,
                   seed=3)
    c = Cluster(2, 4, 9)
    problem = ProblemData.from_traces(t, c)
    plan = solve(problem, options=SolveOptions(jobs=1)).plan
    mine = plan_objectives(np.asarray(plan.phy2log), problem)
    for k, v in plan.objectives.items():
        if k != "predicted_moe_layer_time":  # the solver's plans add the cost model's figure
            np.testing.assert_allclose(mine[k], v, err_msg=k)


def test_a_given_target_plan_is_the_one_solved(instance: tuple[Plan, list[Trace]]) -> None:
    deployed, traces = instance
    tplan = solve(ProblemData.from_traces(traces, C),
                  options=SolveOptions(jobs=1, time_limit=24 * 3600.0)).plan
    a = replan(deployed, traces, _opts(7))
    b = replan(deployed, traces, _opts(7), target_plan=tplan)
    np.testing.assert_array_equal(a.plan.phy2log, b.plan.phy2log)
    other = dataclasses.replace(tplan, layer_ids=np.array([5, 6, 7]))
    with pytest.raises(InputError, match="the target plan lacks layer"):
        replan(deployed, traces, _opts(7), target_plan=other)


def test_copies_proxy_is_the_static_rules_cross_node_copies() -> None:
    """The descent's traffic term: an assignment from node n to expert e crosses nodes under the
    static rule exactly when node n holds no replica of e."""
    from placement.solver.replan import _node_shares, _State

    t = synthesize("olmoe", num_tokens=512, num_windows=2, num_source_ranks=8, num_layers=2,
                   seed=5)
    c = Cluster(2, 4, 9)
    problem = ProblemData.from_traces(t, c)
    plan = baseline_plan(problem, SolveOptions(method="eplb"), "eplb")
    want = plan_objectives(np.asarray(plan.phy2log), problem)["cross_node_copies_per_token"]
    shares = _node_shares(problem)
    for i in range(2):
        st = _State(np.asarray(plan.phy2log)[i], np.ones((1, 64)), 8, 9, "max", shares[i], 4)
        assert st.copies == pytest.approx(want[i])
        # and it follows a change exactly (a slot whose expert has a replica to spare)
        j = int(np.flatnonzero(st.cnt[st.phy[0]] >= 2)[0])
        st.replace(0, j, int(np.flatnonzero(st.H[0] == 0)[0]))
        row = st.phy.reshape(-1)[None]
        again = plan_objectives(np.concatenate([row, row]), problem)
        assert st.copies == pytest.approx(again["cross_node_copies_per_token"][i])
