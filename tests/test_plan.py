from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from placement import Cluster, Plan, PlanError, static_dispatch
from placement.plan import compute_log2phy, compute_logcnt

SMALL = Cluster(2, 2, 3)  # 4 GPUs, 12 slots; GPUs 0-1 on node 0, 2-3 on node 1


def small_plan(**kwargs: object) -> Plan:
    p2l = np.array([[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1], [9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 9, 5]])
    args: dict = dict(cluster=SMALL, num_experts=10, layer_ids=[3, 4], phy2log=p2l,
                      num_hidden_layers=5)
    args.update(kwargs)
    return Plan(**args)


def test_derived_tables() -> None:
    plan = small_plan()
    np.testing.assert_array_equal(plan.logcnt[0], [2, 2, 1, 1, 1, 1, 1, 1, 1, 1])
    l2p = plan.log2phy
    assert l2p.shape == (2, 10, 2)
    np.testing.assert_array_equal(l2p[0, 0], [0, 10])
    np.testing.assert_array_equal(l2p[0, 2], [2, -1])
    np.testing.assert_array_equal(l2p[1, 5], [4, 11])
    assert plan.dense_layer_ids == (0, 1, 2)
    assert plan.num_redundant == 2


def test_log2phy_is_inverse_of_phy2log_on_random_plans() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        E, P, L = 7, 12, 3
        p2l = np.stack([np.concatenate([rng.permutation(E), rng.integers(0, E, P - E)])
                        for _ in range(L)])
        l2p = compute_log2phy(p2l, E)
        cnt = compute_logcnt(p2l, E)
        for layer in range(L):
            for e in range(E):
                slots = l2p[layer, e][l2p[layer, e] >= 0]
                np.testing.assert_array_equal(slots, np.flatnonzero(p2l[layer] == e))
                assert cnt[layer, e] == len(slots)


def brute_static(p2l: np.ndarray, c: Cluster, E: int) -> np.ndarray:
    """The rule's preference order, checked per entry (choice among equals not fixed)."""
    out = np.zeros((p2l.shape[0], c.num_gpus, E), dtype=int)
    for layer in range(p2l.shape[0]):
        for g in range(c.num_gpus):
            for e in range(E):
                slots = np.flatnonzero(p2l[layer] == e)
                gpus = slots // c.slots_per_gpu
                nodes = gpus // c.gpus_per_node
                if (gpus == g).any():
                    out[layer, g, e] = 0
                elif (nodes == g // c.gpus_per_node).any():
                    out[layer, g, e] = 1
                else:
                    out[layer, g, e] = 2
    return out


def test_static_dispatch_prefers_gpu_then_node_then_anywhere() -> None:
    rng = np.random.default_rng(1)
    c = Cluster(3, 2, 4)
    E = 16
    for _ in range(10):
        p2l = np.stack([np.concatenate([rng.permutation(E), rng.permutation(E)[: c.num_slots - E]])])
        disp = static_dispatch(p2l, c, E)
        level = brute_static(p2l, c, E)
        gpu = disp // c.slots_per_gpu
        node = gpu // c.gpus_per_node
        src = np.arange(c.num_gpus)[None, :, None]
        assert (p2l[0][disp[0]] == np.arange(E)[None, :]).all()
        np.testing.assert_array_equal(level == 0, gpu == src)
        np.testing.assert_array_equal(level <= 1, node == src // c.gpus_per_node)


def test_static_dispatch_spreads_remote_sources_evenly() -> None:
    # expert 0 has replicas on GPU 0 and GPU 1 only (node 0); the 2 GPUs of node 1 split over both
    c = Cluster(2, 2, 2)
    p2l = np.array([[0, 1, 0, 2, 3, 1, 2, 3]])
    disp = static_dispatch(p2l, c, 4)
    assert sorted(disp[0, 2:, 0].tolist()) == [0, 2]


def test_invariants_name_the_problem() -> None:
    with pytest.raises(PlanError, match="expert 9 has no replica in layer 3"):
        small_plan(phy2log=np.array([[0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 2]] * 2))
    with pytest.raises(PlanError, match="GPU 0 holds two replicas of expert 0 in layer 3"):
        small_plan(phy2log=np.array([[0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 1]] * 2))
    with pytest.raises(PlanError, match="has 11 slots per layer but cluster 2x2x3 has 12"):
        small_plan(phy2log=np.zeros((2, 11), dtype=int))
    with pytest.raises(PlanError, match=r"Expected phy2log values in \[0, 10\), found 10"):
        small_plan(phy2log=np.array([[10, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]] * 2))
    with pytest.raises(PlanError, match="Expected 2 layer_ids"):
        small_plan(layer_ids=[3])
    with pytest.raises(PlanError, match="short by"):
        Plan(cluster=Cluster(1, 2, 2), num_experts=5, layer_ids=[0], phy2log=np.zeros((1, 4), int))
    bad = small_plan().dispatch.copy()
    bad[0, 1, 3] = 4
    with pytest.raises(PlanError, match="dispatch sends expert 3 from GPU 1 in layer 3 to slot 4"):
        small_plan(dispatch=bad)


def test_colocated_replicas_only_when_allowed() -> None:
    p2l = np.array([[0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 1]] * 2)
    plan = small_plan(phy2log=p2l, allow_colocated_replicas=True)
    assert plan.logcnt[0, 0] == 2


def test_plan_is_immutable() -> None:
    plan = small_plan()
    with pytest.raises(ValueError):
        plan.phy2log[0, 0] = 5
    with pytest.raises(AttributeError):
        plan.method = "x"  # type: ignore[misc]


def test_save_load_round_trip(tmp_path: Path) -> None:
    plan = small_plan(method="eplb", objectives={"imbalance": [1.2, 1.1]}, lower_bound=[1.0, 1.0],
                      status="OPTIMAL", settings={"seed": 3})
    path = tmp_path / "sub" / "plan.json"
    plan.save(path)
    back = Plan.load(path)
    np.testing.assert_array_equal(back.phy2log, plan.phy2log)
    np.testing.assert_array_equal(back.dispatch, plan.dispatch)
    assert (back.method, back.status, back.settings, back.num_hidden_layers) == (
        "eplb", "OPTIMAL", {"seed": 3}, 5)
    assert back.gap == pytest.approx([1 - 1 / 1.2, 1 - 1 / 1.1])
    assert back.cluster == plan.cluster
    assert not list(tmp_path.glob("sub/.*tmp"))


def _plan_dict() -> dict:
    return small_plan().to_dict()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(format="other"), "not a placement plan"),
        (lambda d: d.update(version=9), "version 9 is not supported"),
        (lambda d: d.pop("phy2log"), "lacks 'phy2log'"),
        (lambda d: d["cluster"].update(num_nodes=0), "bad cluster in plan"),
        (lambda d: d.update(phy2log=[[0, 1], [2]]), "ragged"),
        (lambda d: d.update(objectives={"imbalance": [1.0]}), "Expected 2 values of objective"),
    ],
)
def test_broken_plan_files(tmp_path: Path, mutate, message: str) -> None:
    d = _plan_dict()
    mutate(d)
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(d))
    with pytest.raises(PlanError, match=message) as info:
        Plan.load(path)
    assert str(info.value).startswith(str(path))


def test_unreadable_plan_files(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match="no such file"):
        Plan.load(tmp_path / "missing.json")
    (tmp_path / "trunc.json").write_text('{"format": "placement-plan", ')
    with pytest.raises(PlanError, match="not valid JSON"):
        Plan.load(tmp_path / "trunc.json")
