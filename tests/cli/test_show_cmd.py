"""``placement show``: exit codes, exact lines, JSON, engine files and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from placement.cluster import Cluster
from placement.engines import export_plan
from placement.plan import Plan

C = Cluster(2, 2, 3)
ROWS = np.array([
    [0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 0],
    [0, 1, 2, 3, 4, 5, 6, 7, 2, 3, 5, 6],
])




@pytest.fixture
def plan_file(tmp_path: Path) -> str:
    plan = Plan(cluster=C, num_experts=8, layer_ids=np.array([3, 4]), phy2log=ROWS,
                method="hand", num_hidden_layers=5)
    plan.save(tmp_path / "plan.json")
    return str(tmp_path / "plan.json")


def test_all_layers(run, plan_file: str) -> None:
    r = run("show", plan_file)
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines() == [
        f"{plan_file}: placement plan, method hand, status UNKNOWN",
        "cluster: 2 node(s) x 2 GPU(s), 3 slot(s)/GPU = 12 slots per layer",
        "layers: 2 MoE layer(s) (3-4) of 5 decoder layers; 8 experts, 12 slots per layer "
        "(4 redundant)",
        "replicas per expert, all layers: 1 x 9, 2 x 6, 3 x 1 (expert-layer pairs)",
        "slots used: 12 of 12 per layer; 0 slot(s) in all hold a second replica on the same GPU",
        "layer  max replicated  most replicated (expert x replicas)",
        "    3    3          3  0x3 1x2 2x2",
        "    4    2          4  2x2 3x2 5x2 6x2",
        "(--layer N lists the experts of every GPU and node of layer N)",
    ]


def test_one_layer(run, plan_file: str) -> None:
    r = run("show", plan_file, "--layer", "3")
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines()[3:] == [
        "layer 3: replicas per expert 1 x 5, 2 x 2, 3 x 1; max 3",
        "most replicated (expert x replicas): 0x3 1x2 2x2",
        "slots used: 12 of 12; 0 hold a second replica on the same GPU",
        "node 0 (GPUs 0-1): 6 slots, 6 distinct experts",
        "  GPU 0: 0 1 2",
        "  GPU 1: 3 4 5",
        "node 1 (GPUs 2-3): 6 slots, 5 distinct experts",
        "  GPU 2: 6 7 0",
        "  GPU 3: 1 2 0",
    ]


def test_json(run, plan_file: str) -> None:
    r = run("show", plan_file, "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["kind"] == "plan" and d["cluster_shape"] == "2x2x3" and d["layer_ids"] == [3, 4]
    assert [x["layer_id"] for x in d["layers"]] == [3, 4]
    assert d["layers"][0]["replicas"] == [3, 2, 2, 1, 1, 1, 1, 1]
    assert d["layers"][0]["gpus"][3] == [1, 2, 0]
    d1 = json.loads(run("show", plan_file, "--json", "--layer", "4").stdout)
    assert [x["layer_id"] for x in d1["layers"]] == [4]


def test_engine_file_without_converting(run, plan_file: str, tmp_path: Path) -> None:
    export_plan(Plan.load(plan_file), "sglang", tmp_path / "loc.json")
    r = run("show", str(tmp_path / "loc.json"), "--nodes", "2", "--gpus-per-node", "2",
             "--slots-per-gpu", "3", "--layer", "4")
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0] == f"{tmp_path / 'loc.json'}: sglang engine file, method imported:sglang, " \
                       "status IMPORTED"
    assert lines[3].startswith("note: rows 0-2 equal the trivial row")
    assert lines[-1] == "  GPU 3: 3 5 6"


@pytest.mark.parametrize(("args", "line"), [
    (("--layer", "9"), "error: layer 9 is not in the plan (its MoE layers are 3-4)."),
    (("--nodes", "1", "--gpus-per-node", "4", "--slots-per-gpu", "3"),
     "error: {plan}: the plan is for cluster 2x2x3 (nodes x GPUs per node x slots per GPU), "
     "not the given 1x4x3."),
    (("--nodes", "2"), "error: Cluster not fully given: missing --gpus-per-node, "
     "--slots-per-gpu (or use --cluster/--preset)."),
])
def test_user_mistakes(run, error, plan_file: str, args: tuple[str, ...], line: str) -> None:
    error(run("show", plan_file, *args), line.format(plan=plan_file))


def test_engine_file_that_needs_a_cluster(run, plan_file: str, tmp_path: Path) -> None:
    export_plan(Plan.load(plan_file), "sglang", tmp_path / "loc.json")
    r = run("show", str(tmp_path / "loc.json"))
    assert r.exit_code == 1 and r.stdout == ""
    assert len(r.stderr.splitlines()) == 1
    assert "does not say how many GPUs hold its 12 slots" in r.stderr


def test_missing_file(run, error, tmp_path: Path) -> None:
    error(run("show", str(tmp_path / "no.json")),
                    f"error: {tmp_path / 'no.json'}: no such file.")
