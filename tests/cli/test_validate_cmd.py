"""``placement validate``: exit codes, exact lines, JSON and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from placement.cluster import Cluster
from placement.metrics import imbalance
from placement.plan import Plan, static_dispatch
from placement.routing_traces import Trace, write_native

# 2 nodes x 1 GPU x 2 slots, experts 0-2; layer 4: GPU 0 holds 0, 1; GPU 1 holds 2, 0
PHY2LOG = np.array([[0, 1, 2, 0]])
IDS = np.array([[[0, 1]], [[2, 1]], [[0, 2]], [[1, -1]]])  # 4 tokens, top-2
SRC = np.array([0, 1, 1, 0])


@pytest.fixture
def files(tmp_path: Path) -> tuple[str, str]:
    plan = Plan(cluster=Cluster(2, 1, 2), num_experts=3, layer_ids=np.array([4]),
                phy2log=PHY2LOG, method="hand")
    plan.save(tmp_path / "plan.json")
    write_native(Trace(num_experts=3, topk_ids=IDS, layer_ids=[4], source_rank=SRC),
                 tmp_path / "held.npz")
    return str(tmp_path / "plan.json"), str(tmp_path / "held.npz")


def test_summary_lines(run, files: tuple[str, str]) -> None:
    plan, held = files
    # by hand: static rule; expert 0 is on both GPUs (local), 1 on GPU 0, 2 on GPU 1.
    # token 0 (GPU 0): 0->0, 1->0          local
    # token 1 (GPU 1): 2->1, 1->0          one copy to node 0
    # token 2 (GPU 1): 0->1, 2->1          local
    # token 3 (GPU 0): 1->0                local
    # loads GPU 0: 4 (0, 1, 1, 1), GPU 1: 3 -> imbalance 4 / 3.5
    table = static_dispatch(PHY2LOG, Cluster(2, 1, 2), 3)
    assert table[0, 1, 0] == 3 and table[0, 0, 0] == 0
    r = run("validate", plan, held, "--hidden-size", "10")
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines() == [
        f"replayed trace {held} against plan {plan}: 1 layer(s), 4 tokens, dispatch static, "
        "device cpu",
        "cluster: 2 node(s) x 1 GPU(s), 2 slot(s)/GPU = 4 slots per layer",
        f"imbalance (static): {4 / 3.5:.4f} (max/mean tokens per GPU, mean over layers; worst "
        f"layer 4: {4 / 3.5:.4f})",
        "cross-node sends per token: 0.2500 (distinct remote nodes; DeepEP normal mode)",
        "cross-node copies per token: 0.2500 (remote experts; DeepEP low-latency mode)",
        "intra-node copies per token: 0.0000",
        "cross-node bytes per token per layer: dispatch 2 B, combine 5 B (hidden 10, 1/2 bytes "
        "per element)",
    ]


def test_json(run, files: tuple[str, str]) -> None:
    plan, held = files
    r = run("validate", plan, held, "--json", "--dispatch", "even", "--device", "cpu")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    # even: expert 0 split 1/2 over GPUs 0 and 1
    loads = np.array([[0.5 + 1 + 1 + 0 + 0.5 + 1, 0.5 + 1 + 0.5 + 1]])
    assert d["layers"][0]["tokens_per_gpu"] == pytest.approx(loads[0].tolist())
    assert d["imbalance_even"] == pytest.approx(float(imbalance(loads)[0]))
    assert d["layers"][0]["imbalance_even"] == d["imbalance_even"]
    assert "imbalance" not in d  # every figure names its rule
    # token 0 (node 0): expert 0 on node 1 with prob 1/2; token 1: expert 1 on node 0;
    # token 2: expert 0 on node 0 with prob 1/2
    assert d["cross_node_sends_per_token"] == pytest.approx((0.5 + 1 + 0.5) / 4)
    assert d["cross_node_copies_per_token"] == pytest.approx((0.5 + 1 + 0.5) / 4)
    assert d["dispatch"] == "even" and d["layers"][0]["layer_id"] == 4


def test_aggregated_trace(run, tmp_path: Path, files: tuple[str, str]) -> None:
    plan, _ = files
    write_native(Trace(num_experts=3, counts=np.array([[[4.0, 2.0, 2.0]]]), layer_ids=[4]),
                 tmp_path / "counts.npz")
    r = run("validate", plan, str(tmp_path / "counts.npz"))
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[2] == ("imbalance (even): 1.0000 (max/mean tokens per GPU, mean over layers; "
                        "worst layer 4: 1.0000)")
    assert lines[3] == "traffic: n/a (needs token-level trace); this trace holds aggregated counts"
    r = run("validate", plan, str(tmp_path / "counts.npz"), "--json")
    d = json.loads(r.stdout)
    assert d["cross_node_sends_per_token"] is None and d["cross_node_copies_per_token"] is None


def test_layer_mismatch_is_one_line(run, error, tmp_path: Path, files: tuple[str, str]) -> None:
    plan, _ = files
    write_native(Trace(num_experts=3, topk_ids=IDS, layer_ids=[9]), tmp_path / "other.npz")
    error(run("validate", plan, str(tmp_path / "other.npz")),
                    "error: the trace has layer(s) 9 that the plan lacks (plan layers 4, "
                    "trace layers 9).")


def test_expert_mismatch_is_one_line(run, error, tmp_path: Path, files: tuple[str, str]) -> None:
    plan, _ = files
    write_native(Trace(num_experts=4, topk_ids=IDS, layer_ids=[4]), tmp_path / "e4.npz")
    error(run("validate", plan, str(tmp_path / "e4.npz")),
                    "error: the trace has 4 experts per layer but the plan has 3: they are for "
                    "different models.")


def test_missing_plan_and_usage_errors(run, error, tmp_path: Path, files: tuple[str, str]) -> None:
    _, held = files
    missing = str(tmp_path / "nope.json")
    error(run("validate", missing, held), f"error: {missing}: no such file.")
    r = run("validate", files[0], held, "--dispatch", "nearest")
    assert r.exit_code == 2
    r = run("validate", files[0])
    assert r.exit_code == 2


def test_lp_dispatch_by_hand(run, files: tuple[str, str]) -> None:
    plan, held = files
    # counts: expert 0: 2 (tokens 0, 2), 1: 3 on GPU 0 only, 2: 2 on GPU 1 only. The LP splits
    # expert 0's 2 tokens 0.5 / 1.5 over GPU 0 / GPU 1: loads 3.5 and 3.5.
    # sends: token 0 (node 0) reaches node 1 w.p. 0.75, token 1 node 0, token 2 node 0 w.p. 0.25
    r = run("validate", plan, held, "--dispatch", "lp")
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0].endswith("1 layer(s), 4 tokens, dispatch lp, device cpu")
    assert lines[2:5] == [
        "imbalance (lp): 1.0000 (max/mean tokens per GPU, mean over layers; worst layer 4: "
        "1.0000)",
        "imbalance per batch (lp): 1.0000 (busiest GPU / mean, summed over batches, mean over "
        "layers: what the LP minimises)",
        "cross-node sends per token: 0.5000 (distinct remote nodes; DeepEP normal mode)",
    ]
    assert ("note: lp: one LP per batch of 4096 tokens and layer (1 batch(es)); sends are "
            "expected values of SGLang's per-token sampling.") in lines
    r = run("validate", plan, held, "--dispatch", "lp", "--batch-tokens", "2", "--json")
    d = json.loads(r.stdout)
    assert d["dispatch"] == "lp" and d["batch_imbalance_lp"] >= 1.0


def test_dynamic_dispatch_is_seeded(run, files: tuple[str, str]) -> None:
    plan, held = files
    one = run("validate", plan, held, "--dispatch", "dynamic", "--seed", "3", "--json")
    two = run("validate", plan, held, "--dispatch", "dynamic", "--seed", "3", "--json")
    assert one.exit_code == 0, one.output
    a, b = json.loads(one.stdout), json.loads(two.stdout)
    assert a["layers"] == b["layers"] and a["dispatch"] == "dynamic"
    # every expert of a token is counted once, wherever it went
    assert sum(a["layers"][0]["tokens_per_gpu"]) == 7
