"""Plan views (placement.plan_show) and reading plans or engine files (placement.plan_source)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from placement.cluster import Cluster
from placement.engines import export_plan
from placement.errors import ClusterError, InputError, PlanError
from placement.plan import Plan
from placement.plan_show import describe_plan, format_plan_view
from placement.plan_source import read_plan

C = Cluster(2, 2, 3)
# layer 3: GPU 0 {0, 1, 2}, GPU 1 {3, 4, 0}, GPU 2 {5, 6, 0}, GPU 3 {7, 1, 1}: expert 0 x3,
# expert 1 x3 (twice on GPU 3: one co-located slot)
# layer 4: every expert once, then 4 redundant slots: 2, 3 and 5, 6
ROWS = np.array([
    [0, 1, 2, 3, 4, 0, 5, 6, 0, 7, 1, 1],
    [0, 1, 2, 3, 4, 5, 6, 7, 2, 3, 5, 6],
])


@pytest.fixture
def plan() -> Plan:
    return Plan(cluster=C, num_experts=8, layer_ids=np.array([3, 4]), phy2log=ROWS,
                method="hand", model="tiny", allow_colocated_replicas=True, num_hidden_layers=5)


def test_layer_view_counts(plan: Plan) -> None:
    v = describe_plan(plan)
    a, b = v.layers
    assert a.layer_id == 3 and a.histogram == {1: 6, 3: 2}
    assert a.most_replicated() == [(0, 3), (1, 3)]
    assert a.colocated == 1
    assert [x.tolist() for x in a.node_experts(2)] == [[0, 1, 2, 3, 4], [0, 1, 5, 6, 7]]
    assert b.histogram == {1: 4, 2: 4} and b.most_replicated(2) == [(2, 2), (3, 2)]
    assert b.colocated == 0
    assert a.gpus.tolist() == [[0, 1, 2], [3, 4, 0], [5, 6, 0], [7, 1, 1]]


def test_text_of_all_layers(plan: Plan) -> None:
    text = format_plan_view(describe_plan(plan, source="p.json"))
    assert text.splitlines() == [
        "p.json: placement plan, method hand, status UNKNOWN, model tiny",
        "cluster: 2 node(s) x 2 GPU(s), 3 slot(s)/GPU = 12 slots per layer",
        "layers: 2 MoE layer(s) (3-4) of 5 decoder layers; 8 experts, 12 slots per layer "
        "(4 redundant)",
        "replicas per expert, all layers: 1 x 10, 2 x 4, 3 x 2 (expert-layer pairs)",
        "slots used: 12 of 12 per layer; 1 slot(s) in all hold a second replica on the same GPU",
        "layer  max replicated  most replicated (expert x replicas)",
        "    3    3          2  0x3 1x3",
        "    4    2          4  2x2 3x2 5x2 6x2",
        "(--layer N lists the experts of every GPU and node of layer N)",
    ]


def test_text_of_one_layer(plan: Plan) -> None:
    text = format_plan_view(describe_plan(plan, layer=3))
    assert text.splitlines()[3:] == [
        "layer 3: replicas per expert 1 x 6, 3 x 2; max 3",
        "most replicated (expert x replicas): 0x3 1x3",
        "slots used: 12 of 12; 1 hold a second replica on the same GPU",
        "node 0 (GPUs 0-1): 6 slots, 5 distinct experts",
        "  GPU 0: 0 1 2",
        "  GPU 1: 3 4 0",
        "node 1 (GPUs 2-3): 6 slots, 5 distinct experts",
        "  GPU 2: 5 6 0",
        "  GPU 3: 7 1 1",
    ]


def test_unknown_layer(plan: Plan) -> None:
    with pytest.raises(InputError) as exc:
        describe_plan(plan, layer=9)
    assert str(exc.value) == "layer 9 is not in the plan (its MoE layers are 3-4)."


def test_json(plan: Plan) -> None:
    d = describe_plan(plan, layer=4).to_dict()
    assert d["cluster_shape"] == "2x2x3" and d["num_redundant"] == 4
    assert d["layer_ids"] == [3, 4] and len(d["layers"]) == 1
    lay = d["layers"][0]
    assert lay["layer_id"] == 4 and lay["replicas"] == [1, 1, 2, 2, 1, 2, 2, 1]
    assert lay["replica_histogram"] == {"1": 4, "2": 4}
    assert lay["nodes"][1] == {"node": 1, "gpus": [2, 3], "experts": [2, 3, 5, 6, 7]}
    assert lay["gpus"] == ROWS[1].reshape(4, 3).tolist()


# --- reading files -------------------------------------------------------------------------
def test_read_plan_file(plan: Plan, tmp_path: Path) -> None:
    plan.save(tmp_path / "p.json")
    src = read_plan(tmp_path / "p.json")
    assert src.kind == "plan" and src.description == "placement plan"
    np.testing.assert_array_equal(src.plan.phy2log, plan.phy2log)
    with pytest.raises(PlanError) as exc:
        read_plan(tmp_path / "p.json", Cluster(1, 4, 3))
    assert str(exc.value) == (f"{tmp_path / 'p.json'}: the plan is for cluster 2x2x3 (nodes x GPUs "
                              "per node x slots per GPU), not the given 1x4x3.")


@pytest.mark.parametrize(("fmt", "name", "needs_cluster"), [
    ("sglang", "loc.json", True),
    ("eplb", "eplb.npz", False),
    ("vllm-ascend", "map.json", True),
    ("trtllm", "lb.yaml", True),
])
def test_read_engine_files(plan: Plan, tmp_path: Path, fmt: str, name: str,
                           needs_cluster: bool) -> None:
    path = tmp_path / name
    export_plan(plan, fmt, path)
    src = read_plan(path, C)
    assert src.kind == fmt
    np.testing.assert_array_equal(src.plan.phy2log, plan.phy2log)
    # vLLM-Ascend files are indexed by MoE layer: without the model's decoder-layer count the
    # rows are MoE layers 0 and 1
    assert src.plan.layer_ids.tolist() == ([0, 1] if fmt == "vllm-ascend" else [3, 4])
    if needs_cluster:
        with pytest.raises(ClusterError):
            read_plan(path)
    else:
        assert read_plan(path).plan.cluster.shape == "2x2x3"


def test_read_missing_and_odd_files(tmp_path: Path) -> None:
    with pytest.raises(PlanError) as exc:
        read_plan(tmp_path / "nope.json")
    assert str(exc.value) == f"{tmp_path / 'nope.json'}: no such file."
    with pytest.raises(PlanError, match="is a directory"):
        read_plan(tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "placement-plan", "version": 1}')
    with pytest.raises(PlanError) as exc:
        read_plan(bad)
    assert str(exc.value) == f"{bad}: plan file lacks 'num_experts'."


def test_read_a_trace_instead_of_a_plan(tmp_path: Path) -> None:
    from placement.routing_traces import Trace, write_native

    write_native(Trace(num_experts=8, counts=np.ones((1, 2, 8))), tmp_path / "t.npz")
    with pytest.raises(PlanError) as exc:
        read_plan(tmp_path / "t.npz")
    assert str(exc.value).startswith(f"{tmp_path / 't.npz'}: a routing trace")
    assert "not a placement plan" in str(exc.value)
