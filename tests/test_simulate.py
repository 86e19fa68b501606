"""The simulation over time (placement.simulate): timeline, figures, moves, inputs."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from placement.cluster import Cluster
from placement.errors import InputError
from placement.moves import count_moves
from placement.routing_traces import Trace, synthesize
from placement.simulate import SimulateOptions, _pooled, format_simulation, simulate
from placement.solver import ProblemData, SolveOptions, baseline_plan, solve
from placement.validation import replay

C = Cluster(2, 4, 9)  # 8 GPUs, 72 slots for 64 experts


@pytest.fixture(scope="module")
def trace() -> Trace:
    return synthesize("olmoe", num_tokens=8 * 512, num_windows=8, num_source_ranks=4,
                      num_layers=2, drift=1.5, seed=4)


@pytest.fixture(scope="module")
def result(trace: Trace):  # type: ignore[no-untyped-def]
    return simulate(trace, C, SimulateOptions(every=2, warmup=2, max_moves=6, jobs=1),
                    trace_name="synthetic")


def test_timeline_and_moves(trace: Trace, result) -> None:  # type: ignore[no-untyped-def]
    o = result.options
    assert (o.every, o.warmup, o.history, o.eplb_history, o.max_moves) == (2, 2, 2, 2, 6)
    eplb, static, rp = (result.run(p) for p in ("eplb", "static", "replan"))
    assert eplb.windows.tolist() == list(range(2, 8))
    assert eplb.replan_windows == (4, 6) and rp.replan_windows == (4, 6)
    assert static.replan_windows == () and static.total_moves == 0
    assert (rp.moves <= 6).all() and rp.moves.size == 2
    # EPLB's moves: between its plans from windows 0-1, 2-3 and 4-5, counted independently
    plans = [baseline_plan(ProblemData.from_traces(_pooled(trace, [t - 2, t - 1]), C),
                           SolveOptions(method="eplb"), "eplb") for t in (2, 4, 6)]
    want = [count_moves(np.asarray(a.phy2log), np.asarray(b.phy2log), C, 64).total
            for a, b in itertools.pairwise(plans)]
    assert eplb.moves.tolist() == want
    # EPLB window 5 is judged against the plan made at window 4 (from windows 2 and 3)
    r = replay(plans[1], trace.select_windows([5]), dispatch="static")
    np.testing.assert_allclose(eplb.imbalance[3], r.imbalance)
    assert r.cross_node_sends_per_token is not None and eplb.sends is not None
    np.testing.assert_allclose(eplb.sends[3], r.cross_node_sends_per_token)


def test_static_is_the_optimizer_of_the_first_windows(trace: Trace, result) -> None:  # type: ignore[no-untyped-def]
    plan = solve(ProblemData.from_traces(trace.select_windows([0, 1]), C),
                 options=SolveOptions(jobs=1, time_limit=3600.0)).plan
    static = result.run("static")
    for i, w in enumerate(range(2, 8)):
        r = replay(plan, trace.select_windows([w]), dispatch="static")
        np.testing.assert_allclose(static.imbalance[i], r.imbalance)
    assert static.mean_imbalance == pytest.approx(float(static.imbalance.mean()))
    assert static.worst_window_imbalance == pytest.approx(
        float(static.imbalance.max(axis=0).mean()))


def test_summary_and_json(result) -> None:  # type: ignore[no-untyped-def]
    lines = format_simulation(result).splitlines()
    assert lines[0] == "synthetic: 8 windows on 2 node(s) x 4 GPU(s), 9 slot(s)/GPU = 72 " \
                       "slots per layer"
    assert lines[1] == "plans made from windows 0-1, judged on windows 2-7 (6); re-plans every " \
                       "2 window(s)"
    assert lines[4].startswith("EPLB every 2 window(s) (last 2)")
    assert lines[-1] == ("moves: expert weights a GPU received that it did not hold, summed "
                         "over re-plans (144 slots in all)")
    d = result.to_dict()
    assert [p["policy"] for p in d["policies"]] == ["eplb", "static", "replan"]
    p = d["policies"][2]
    assert p["moves"] == sum(p["moves_per_replan"]) and p["replans"] == 2
    assert len(p["windows"]) == 6 and "mean_imbalance_static" in p
    assert d["policies"][0]["moves_vs_eplb"] == 1.0


def test_counts_traces_use_the_even_rule(trace: Trace) -> None:
    counts = Trace(num_experts=64, counts=trace.window_counts(), layer_ids=trace.layer_ids)
    r = simulate(counts, C, SimulateOptions(every=3, warmup=2, policies=("eplb", "static"),
                                           jobs=1))
    assert r.rule == "even" and r.run("eplb").sends is None
    assert r.run("eplb").replan_windows == (5,)
    assert "sends" not in format_simulation(r).splitlines()[3]


def test_deterministic(trace: Trace, result) -> None:  # type: ignore[no-untyped-def]
    again = simulate(trace, C, SimulateOptions(every=2, warmup=2, max_moves=6, jobs=2))
    for a, b in zip(result.runs, again.runs, strict=True):
        np.testing.assert_array_equal(a.imbalance, b.imbalance)
        np.testing.assert_array_equal(a.moves, b.moves)


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(every=0), "Expected every >= 1 (an integer), got 0."),
    (dict(max_moves=-2), "Expected max_moves >= 0 (an integer), got -2."),
    (dict(policies=("eplb", "oracle")), "Expected policies among eplb, static, replan, got "
     "eplb, oracle."),
    (dict(eplb_method="greedy"), "Expected eplb_method 'eplb' or 'eplb-global', got 'greedy'."),
])
def test_bad_options(kwargs: dict, message: str) -> None:
    with pytest.raises(InputError) as exc:
        SimulateOptions(**kwargs)
    assert str(exc.value) == message


def test_too_few_windows(trace: Trace) -> None:
    with pytest.raises(InputError) as exc:
        simulate(trace.select_windows([0, 1]), C, SimulateOptions(every=1, warmup=2))
    assert str(exc.value) == ("the trace has 2 window(s): too few to plan from 2 and judge on the "
                              "rest (it needs at least warmup + 1; use --warmup or a trace with "
                              "more windows).")
