"""SGLang deepseek_vec port: SGLang's own outputs reproduced exactly, a case worked by hand, the
plan of ``--method sglang-vec``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from solver_helpers import counts_trace

from placement.cluster import Cluster
from placement.errors import InputError
from placement.solver import SolveOptions, solve
from placement.solver.problem import ProblemData
from placement.solver.sglang_vec import rebalance_experts, sglang_vec_hierarchical


@pytest.fixture(scope="module")
def reference(shared_dir: Path) -> dict[str, np.ndarray]:
    path = shared_dir / "reference" / "sglang_deepseek_vec_reference.npz"
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


CASES = ["decode4__P288_g8_n18_G144", "decode4__P288_g8_n4_G32", "prefill4__P288_g8_n4_G32_hier",
         "small__P24_G4", "small__P24_g4_n2_G4_hier"]


def test_every_case_is_listed(reference: dict[str, np.ndarray]) -> None:
    assert sorted({k.rsplit("__", 1)[0] for k in reference}) == CASES


@pytest.mark.parametrize("case", CASES)
def test_reference_case(reference: dict[str, np.ndarray], case: str) -> None:
    P, local, groups, nodes, hier = (int(x) for x in reference[f"{case}__params"])
    phy2log, log2phy, logcnt = rebalance_experts(
        reference[f"{case}__tokens_per_expert"], P, local, groups, nodes, bool(hier))
    np.testing.assert_array_equal(phy2log, reference[f"{case}__phy2log"])
    np.testing.assert_array_equal(log2phy, reference[f"{case}__log2phy"])
    np.testing.assert_array_equal(logcnt, reference[f"{case}__logcnt"])


def test_flat_case_by_hand() -> None:
    # 4 experts, 6 slots on 2 GPUs of 3, two steps: expert 0 hot in step 0, expert 3 in step 1.
    # Replica 1: expert 0 (sum of step peaks 5 + 9 = 14 beats 10 + 4.5 for expert 3);
    # replica 2: expert 3 (10/3 + 9 = 12.3 for expert 0, 5 + 4.5 = 9.5 for expert 3).
    # GPUs: replicas by load per copy (5.5, 5.5, 5, 5, 3, 2) dealt in snake order.
    tpe = np.array([[[10, 2, 1, 1]], [[1, 1, 1, 9]]])
    phy2log, log2phy, logcnt = rebalance_experts(tpe, 6, 3, 1, 1, hierarchical=False)
    np.testing.assert_array_equal(logcnt, [[2, 1, 1, 2]])
    np.testing.assert_array_equal(phy2log, [[0, 3, 1, 0, 3, 2]])
    assert log2phy.shape == (1, 4, 3)
    for e in range(4):
        got = log2phy[0, e][log2phy[0, e] >= 0]
        assert sorted(got.tolist()) == np.flatnonzero(phy2log[0] == e).tolist()


def test_hierarchical_keeps_groups_on_nodes() -> None:
    rng = np.random.default_rng(0)
    tpe = rng.integers(0, 100, size=(3, 2, 16))
    phy2log, log2phy, logcnt = rebalance_experts(tpe, 24, 3, 4, 2, hierarchical=True)
    for layer in range(2):
        nodes = phy2log[layer].reshape(2, 12) // 4  # the group of every slot, per node
        # every group's experts (and their copies) sit on one node: two whole groups per node
        assert {len(set(row.tolist())) for row in nodes} == {2}
        assert set(nodes[0].tolist()).isdisjoint(nodes[1].tolist())
        np.testing.assert_array_equal(np.bincount(phy2log[layer], minlength=16), logcnt[layer])
        for e in range(16):
            got = log2phy[layer, e][log2phy[layer, e] >= 0]
            assert sorted(got.tolist()) == np.flatnonzero(phy2log[layer] == e).tolist()


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((np.ones((2, 8)), 12, 3, 1, 1, False), "steps, layers, experts"),
        ((np.ones((1, 2, 8)), 6, 3, 1, 1, False), "num_physical_experts >= 8"),
        ((np.ones((1, 2, 8)), 12, 5, 1, 1, False), "multiple of"),
        ((np.ones((1, 2, 8)), 12, 3, 3, 2, True), "num_groups=3"),
        ((-np.ones((1, 2, 8)), 12, 3, 1, 1, False), "non-negative"),
    ],
)
def test_bad_inputs(args: tuple, match: str) -> None:
    with pytest.raises(InputError, match=match):
        rebalance_experts(*args)


def test_policy_choice() -> None:
    assert sglang_vec_hierarchical(8, 4) and not sglang_vec_hierarchical(1, 1)
    assert not sglang_vec_hierarchical(8, 3)


def test_solve_method_uses_the_windows_as_steps() -> None:
    rng = np.random.default_rng(1)
    shares = rng.dirichlet(np.ones(16), size=(3, 2))  # [W, L, E]
    trace = counts_trace(shares)
    cluster = Cluster(2, 2, 6)  # 24 slots, 2 nodes
    problem = ProblemData.from_traces(trace, cluster)
    for groups, hier in ((4, True), (1, False)):
        res = solve(problem, options=SolveOptions(method="sglang-vec", num_groups=groups, jobs=1))
        plan = res.plan
        expect, _, _ = rebalance_experts(problem.scenario_counts.astype(np.int64), 24, 6, groups,
                                         2, hier)
        # the plan keeps every GPU's experts (sorted within the GPU)
        np.testing.assert_array_equal(np.sort(np.asarray(plan.phy2log).reshape(2, 4, 6), axis=-1),
                                      np.sort(expect.reshape(2, 4, 6), axis=-1))
        assert plan.method == "sglang-vec"
        assert plan.settings["policy"] == ("hierarchical" if hier else "flat")
