"""``placement diff``: exact lines, JSON counts against a brute-force count, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from placement.cluster import Cluster
from placement.engines import export_plan
from placement.plan import Plan
from placement.routing_traces import Trace, write_native

C = Cluster(2, 2, 3)
OLD = np.array([[0, 1, 2, 3, 4, 5, 6, 7, 0, 2, 1, 3],
                [0, 1, 2, 3, 4, 5, 6, 7, 2, 3, 5, 6]])
# layer 3: GPU 0 receives 5 (held on its node), GPU 2 receives 4 (not on node 1: cross-node),
# GPU 2 keeps 6 in another slot; layer 4 unchanged (layer 3 is not SGLang's trivial row, which
# an import would take as a dense layer)
NEW = np.array([[0, 1, 5, 3, 4, 5, 4, 7, 6, 2, 1, 3],
                [0, 1, 2, 3, 4, 5, 6, 7, 2, 3, 5, 6]])




def _save(path: Path, rows: np.ndarray, cluster: Cluster = C, experts: int = 8,
          ids: tuple[int, ...] = (3, 4)) -> str:
    Plan(cluster=cluster, num_experts=experts, layer_ids=np.array(ids), phy2log=rows,
         method="hand", num_hidden_layers=5).save(path)
    return str(path)


@pytest.fixture
def files(tmp_path: Path) -> tuple[str, str]:
    return _save(tmp_path / "old.json", OLD), _save(tmp_path / "new.json", NEW)


def test_text(run, files: tuple[str, str]) -> None:
    old, new = files
    r = run("diff", old, new)
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines() == [
        f"diff {old} -> {new}: 2 layer(s), cluster 2x2x3, 8 experts",
        "moves: 2 expert weight(s) (8.3% of 24 slots) in 1 layer(s); 1 cross-node",
        "bytes: 704.64 MB, 352.32 MB per expert weight (mixtral-8x7b, guessed: --model to set; "
        "3 x 4096 x 14336 x 2 B)",
        # 352.32 MB over the network at 40 GB/s (the default GPU, h800): 8.81 ms
        "transfer: 8.81 ms over NVLink 160 GB/s and the network 40 GB/s per GPU (GPU 2 receives "
        "1 weight(s), 1 cross-node); serving stall: 8.81 ms moving every layer at once, at most "
        "8.81 ms per layer moving one layer at a time",
        "changed slots: 3 (a move is an expert a GPU did not hold; slot-order changes inside a "
        "GPU move nothing)",
        "layer  moves cross-node changed slots",
        "    3      2          1             3",
        "(1 layer(s) identical)",
    ]


def test_json_counts_against_brute_force(run, files: tuple[str, str]) -> None:
    old, new = files
    r = run("diff", old, new, "--json", "--model", "deepseek-v3")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    per = 3 * 7168 * 2048 * 1.0
    assert (d["moves"], d["cross_node_moves"], d["changed_slots"]) == (2, 1, 3)
    assert d["bytes"] == 2 * per and d["bytes_per_expert"] == per
    assert d["transfer_s"] == pytest.approx(per / 40e9) == d["stall_per_layer_s"]
    assert d["model"] == "deepseek-v3" and d["model_guessed"] is False
    assert [(x["layer_id"], x["moves"], x["cross_node_moves"]) for x in d["layers"]] == \
        [(3, 2, 1), (4, 0, 0)]
    # an independent count: per GPU, cross off the old experts its new slots keep
    moves = 0
    for a, b in zip(OLD.reshape(-1, 3).tolist(), NEW.reshape(-1, 3).tolist(), strict=True):
        left = list(a)
        for e in b:
            if e in left:
                left.remove(e)
            else:
                moves += 1
    assert moves == d["moves"]


def test_engine_file_against_a_plan(run, files: tuple[str, str], tmp_path: Path) -> None:
    old, new = files
    export_plan(Plan.load(old), "sglang", tmp_path / "deployed.json")
    r = run("diff", str(tmp_path / "deployed.json"), new, "--nodes", "2", "--gpus-per-node",
             "2", "--slots-per-gpu", "3", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["moves"] == 2
    same = run("diff", new, new)
    assert same.stdout.splitlines()[1] == "moves: 0 expert weight(s) (0.0% of 24 slots) in 0 " \
                                          "layer(s); 0 cross-node"
    assert same.stdout.splitlines()[-1] == "the plans place every layer identically"


def test_with_a_trace(run, files: tuple[str, str], tmp_path: Path) -> None:
    old, new = files
    rng = np.random.default_rng(0)
    write_native(Trace(num_experts=8, topk_ids=rng.integers(0, 8, size=(40, 2, 2)),
                       layer_ids=[3, 4], source_rank=np.arange(40) % 4), tmp_path / "t.npz")
    r = run("diff", old, new, "--trace", str(tmp_path / "t.npz"))
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[-6] == f"on {tmp_path / 't.npz'} ({old} -> {new}):"
    assert lines[-5].startswith("  imbalance (static): ")
    assert lines[-4].startswith("  cross-node sends per token: ")
    assert lines[-2].startswith("  predicted MoE layer time (two-batch overlap), per step of "
                                "4,096 tokens per GPU: ")
    assert lines[-1].startswith("  predicted MoE layer time (two-batch overlap), all 40 tokens "
                                "of the trace (a total): ")
    d = json.loads(run("diff", old, new, "--trace", str(tmp_path / "t.npz"), "--json").stdout)
    assert set(d["trace"]["old"]) >= {"imbalance_static", "cross_node_sends_per_token"}


def test_plans_of_different_clusters(run, error, files: tuple[str, str], tmp_path: Path) -> None:
    old, _ = files
    other = _save(tmp_path / "other.json", OLD, cluster=Cluster(1, 4, 3))
    error(run("diff", old, other),
                    "error: the plans are for different clusters: "
                    f"{old} 2x2x3, {other} 1x4x3 (nodes x GPUs per node x slots per GPU); a "
                    "diff needs one cluster.")


def test_plans_of_different_experts(run, error, files: tuple[str, str], tmp_path: Path) -> None:
    old, _ = files
    rows = np.array([[0, 1, 2, 3, 4, 5, 6, 0, 1, 2, 3, 4]] * 2)
    other = _save(tmp_path / "seven.json", rows, experts=7)
    error(run("diff", old, other),
                    f"error: the plans place different experts: {old} 8 per layer, {other} 7.")


def test_bad_bytes_per_param(run, error, files: tuple[str, str]) -> None:
    old, new = files
    error(run("diff", old, new, "--bytes-per-param", "-1"),
                    "error: Expected bytes_per_param > 0, got -1.0.")
