"""``placement export`` / ``placement import``: exit codes and exact lines."""

from __future__ import annotations

import json

import numpy as np
import pytest

from placement.cluster import Cluster
from placement.plan import Plan


def _plan(tmp_path, name="plan.json"):
    """4 nodes x 2 GPUs x 3 slots, 16 experts (8 redundant), MoE layers 1-3 of 4."""
    c = Cluster(4, 2, 3)
    rng = np.random.default_rng(7)
    rows = []
    while len(rows) < 3:
        row = np.concatenate([rng.permutation(16), rng.choice(16, 8, replace=False)])
        row = row[rng.permutation(24)]
        g = np.sort(row.reshape(8, 3), axis=1)
        if (g[:, 1:] != g[:, :-1]).all():
            rows.append(row)
    plan = Plan(cluster=c, num_experts=16, layer_ids=[1, 2, 3], phy2log=np.asarray(rows),
                num_hidden_layers=4, model="tiny")
    path = tmp_path / name
    plan.save(path)
    return plan, path


def test_export_sglang_lines(run, tmp_path):
    _, plan_path = _plan(tmp_path)
    out = tmp_path / "init.json"
    r = run("export", plan_path, "--format", "sglang", "-o", out)
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines() == [
        f"wrote {out}: SGLang physical_to_logical_map, 4 rows (decoder layers) x 24 slots",
        "note: layer 0 is below the first planned layer 1: taken as dense, written as trivial "
        "rows arange(24) % 16 (pass --dense-layers to say otherwise)",
        "launch SGLang (python -m sglang.launch_server ...) with:",
        "  --tp-size 8 --ep-size 8 --nnodes 4",
        "  --ep-num-redundant-experts 8",
        "  --ep-dispatch-algorithm static",
        f"  --init-expert-location {out.resolve()}",
    ]
    assert r.stderr.splitlines() == [
        "warning: do not add --enable-eplb: SGLang would rebalance online and overwrite this "
        "placement."
    ]
    assert len(json.loads(out.read_text())["physical_to_logical_map"]) == 4


def test_export_trtllm_with_mtp(run, tmp_path):
    _, plan_path = _plan(tmp_path)
    out = tmp_path / "lb.yaml"
    r = run("export", plan_path, "--format", "trtllm", "--mtp-layers", "4", "-o", out)
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0] == (f"wrote {out}: TensorRT-LLM load balancer, num_slots 24, 4 layers (1-4), "
                        "layer_updates_per_iter 0 (static)")
    assert "note: MTP layer 4 gets a copy of layer 3's assignment (TensorRT-LLM fails at "\
           "start-up without one)" in lines
    assert f"    load_balancer: {out.resolve()}" in lines
    assert lines[-1] == ("run with EP size 8 (trtllm-serve MODEL --tp_size 8 --ep_size 8 "
                         "--extra_llm_api_options OPTIONS.yaml); num_slots 24 = 8 x 3")


def test_export_then_import_round_trip(run, tmp_path):
    plan, plan_path = _plan(tmp_path)
    for fmt, name, extra in [("sglang", "a.pt", []), ("eplb", "b.npz", []),
                             ("vllm-ascend", "c.json", ["--first-k-dense", "1"]),
                             ("trtllm", "d.yaml", [])]:
        out = tmp_path / name
        assert run("export", plan_path, "--format", fmt, "-o", out).exit_code == 0
        back = tmp_path / f"{name}.plan.json"
        r = run("import", out, "--nodes", 4, "--gpus-per-node", 2, "-o", back, *extra)
        assert r.exit_code == 0, r.output
        assert r.stdout.splitlines()[0] == (
            f"imported {out} ({fmt}): 3 MoE layers (1-3), 16 experts, 24 slots (8 redundant), "
            "cluster 4x2x3"
        )
        assert r.stdout.splitlines()[-1] == f"wrote {back}"
        got = Plan.load(back)
        assert np.array_equal(got.phy2log, plan.phy2log) and got.layer_ids.tolist() == [1, 2, 3]


def test_import_vllm_ascend_needs_node_split(run, tmp_path):
    _, plan_path = _plan(tmp_path)
    out = tmp_path / "m.json"
    run("export", plan_path, "--format", "vllm-ascend", "-o", out)
    r = run("import", out, "-o", tmp_path / "p.json")
    assert r.exit_code == 1
    assert r.stderr == (f"error: {out}: the file places 24 slots on 8 devices; say how they "
                        "split into nodes with --nodes or --gpus-per-node (or give "
                        "--preset/--cluster).\n")
    assert not (tmp_path / "p.json").exists()


def test_import_wrong_slots_for_cluster(run, tmp_path):
    _, plan_path = _plan(tmp_path)
    out = tmp_path / "a.json"
    run("export", plan_path, "--format", "sglang", "-o", out)
    r = run("import", out, "--preset", "deepseek-prefill", "-o", tmp_path / "p.json")
    assert r.exit_code == 1
    assert r.stderr == (f"error: {out}: holds 24 slots per layer but cluster 4x8x9 has 288 "
                        "(32 GPUs x 9).\n")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("num_slots: 24\ninitial_global_assignments:\n  1: [0, 1\n", "not valid YAML"),
        ("num_slots: 24\ninitial_global_assignments:\n  1: [0, 1]\n",
         "layer 1 has 2 slots but num_slots is 24"),
        ("num_slots: 24\ninitial_global_assignments:\n  1: [" + ", ".join(["0"] * 23) + ", 2]\n",
         "not a valid placement: expert 1 has no replica in layer 1"),
    ],
)
def test_import_broken_yaml(run, tmp_path, content, message):
    path = tmp_path / "lb.yaml"
    path.write_text(content)
    r = run("import", path, "--nodes", 4, "--gpus-per-node", 2, "--slots-per-gpu", 3,
            "-o", tmp_path / "p.json")
    assert r.exit_code == 1
    assert r.stderr.startswith(f"error: {path}: ") and message in r.stderr
    assert r.stderr.count("\n") == 1


def test_export_unknown_format_is_a_usage_error(run, tmp_path):
    _, plan_path = _plan(tmp_path)
    r = run("export", plan_path, "--format", "vlm", "-o", tmp_path / "x.json")
    assert r.exit_code == 2
    assert "Invalid value for '--format': 'vlm' is not one of" in r.stderr


def test_export_missing_plan(run, tmp_path):
    r = run("export", tmp_path / "nope.json", "--format", "sglang", "-o", tmp_path / "x.json")
    assert r.exit_code == 1
    assert r.stderr == f"error: {tmp_path / 'nope.json'}: no such file.\n"


def test_export_subset_needs_fill(run, tmp_path):
    _, plan_path = _plan(tmp_path)
    r = run("export", plan_path, "--format", "sglang", "--num-hidden-layers", 4,
            "--dense-layers", "0-1", "-o", tmp_path / "x.json")
    assert r.exit_code == 1
    assert r.stderr == ("error: layer 1 is declared dense but the plan places experts "
                        "there.\n")
    r = run("export", plan_path, "--format", "sglang", "--mtp-layers", "4", "-o",
            tmp_path / "x.json")
    assert r.exit_code == 1
    assert r.stderr == "error: --mtp-layers applies to the trtllm format only.\n"


def test_import_dense_options_conflict(run, tmp_path):
    _, plan_path = _plan(tmp_path)
    out = tmp_path / "e.npz"
    run("export", plan_path, "--format", "eplb", "-o", out)
    r = run("import", out, "--dense-layers", "0", "--first-k-dense", 1, "-o",
            tmp_path / "p.json")
    assert r.exit_code == 2
    assert r.stderr == ("error: Give either --dense-layers or --first-k-dense, not both (see "
                        "'placement import --help').\n")
    r = run("import", out, "--layer-ids", "x", "-o", tmp_path / "p.json")
    assert r.exit_code == 1
    assert r.stderr == "error: Expected layer ids like '3-60' or '0,1,2', got 'x'.\n"
