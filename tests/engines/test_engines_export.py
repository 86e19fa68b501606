"""Plans to engine files: each format is read back the way its engine reads it (steps copied
from the engine's source, see the module docstrings) and compared with the plan."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from placement.cluster import Cluster
from placement.engines import (
    build_eplb,
    build_sglang,
    build_trtllm,
    build_vllm_ascend,
    export_plan,
    trtllm_default_row,
)
from placement.errors import InputError, PlanError
from placement.plan import Plan


def sglang_load(path):
    """SGLang's compute_initial_expert_location_metadata + init_by_mapping, reduced to the file
    handling: suffix picks the loader, the dict is passed as keyword arguments."""
    p = str(path)
    if p.endswith(".pt"):
        data = torch.load(p, weights_only=True)
    elif p.endswith(".json"):
        data = json.loads(path.read_text())
    else:
        data = json.loads(p)

    def init_by_mapping(server_args, model_config, physical_to_logical_map):
        if not isinstance(physical_to_logical_map, torch.Tensor):
            physical_to_logical_map = torch.tensor(physical_to_logical_map)
        return physical_to_logical_map

    assert "physical_to_logical_map" in data
    return init_by_mapping(None, None, **data)


def trtllm_load(path, ep_size, num_experts):
    """TensorRT-LLM: yaml.safe_load -> MoeLoadBalancerConfig(**data) -> setup(ep) -> per layer
    get_layer_initial_global_assignments + the fused-MoE asserts."""
    data = yaml.safe_load(path.read_text())
    assert set(data) <= {"num_slots", "initial_global_assignments", "layer_updates_per_iter"}
    assert data["num_slots"] % ep_size == 0
    out = {}
    for layer_idx, assignments in data["initial_global_assignments"].items():
        assert isinstance(layer_idx, int)
        assert len(assignments) == data["num_slots"] >= num_experts
        assert set(assignments) == set(range(num_experts))
        out[layer_idx] = assignments
    return data, out


def vllm_ascend_load(path, num_experts):
    """vLLM-Ascend ExpertLoadBalancer: _expert_file_to_tensor + generate_expert_placement_map."""
    data = json.loads(path.read_text())
    layers_num = data["moe_layer_count"]
    ranks = data["layer_list"][0]["device_count"]
    tensor = torch.tensor([[d["device_expert"] for d in layer["device_list"]]
                           for layer in data["layer_list"]], dtype=torch.int32)
    placement = torch.full((layers_num, ranks, num_experts), -1, dtype=torch.int32)
    for layer_id in range(layers_num):
        for gpu_id in range(ranks):
            e_ids = tensor[layer_id, gpu_id]
            placement[layer_id, gpu_id, e_ids] = torch.arange(len(e_ids), dtype=torch.int32)
    redundant = len(tensor[0][0]) * ranks - num_experts
    return data, tensor, placement, redundant


# ---------------------------------------------------------------------------------------------
# SGLang
# ---------------------------------------------------------------------------------------------
def test_sglang_deepseek_contiguous_plan_has_61_rows_288_columns():
    c = Cluster(4, 8, 9)
    p2l = np.tile(np.arange(288) % 256, (58, 1))
    plan = Plan(cluster=c, num_experts=256, layer_ids=np.arange(3, 61), phy2log=p2l,
                num_hidden_layers=61)
    rows = build_sglang(plan)["physical_to_logical_map"]
    assert rows.shape == (61, 288)
    assert (rows[:3] == np.arange(288) % 256).all()
    assert np.array_equal(rows[3:], p2l)


@pytest.mark.parametrize("suffix", [".json", ".pt"])
def test_sglang_file_as_sglang_reads_it(named_plan, tmp_path, suffix):
    plan = named_plan("deepseek")
    path = tmp_path / f"init{suffix}"
    res = export_plan(plan, "sglang", path)
    m = sglang_load(path)
    assert tuple(m.shape) == (61, 288) and m.dtype == torch.int64
    assert (m[:3] == torch.arange(288) % 256).all()
    assert np.array_equal(m[3:].numpy(), plan.phy2log)
    # P = E + redundant, divisible by the EP size, every logical expert has a slot per row
    assert 288 == 256 + plan.num_redundant and 288 % plan.cluster.num_gpus == 0
    for row in m:
        assert set(row.tolist()) == set(range(256))
    assert res.layer_ids == tuple(range(61))
    assert "--ep-num-redundant-experts 32" in res.usage[2]
    assert res.usage[1] == "  --tp-size 32 --ep-size 32 --nnodes 4"
    assert res.usage[-1] == f"  --init-expert-location {path.resolve()}"
    assert any("--enable-eplb" in w for w in res.warnings)


def test_sglang_json_holds_only_the_map(named_plan, tmp_path):
    path = tmp_path / "init.json"
    export_plan(named_plan("multinode"), "sglang", path)
    assert list(json.loads(path.read_text())) == ["physical_to_logical_map"]


def test_sglang_needs_num_hidden_layers_when_layers_are_not_0_to_l(tmp_path):
    c = Cluster(1, 2, 4)
    plan = Plan(cluster=c, num_experts=8, layer_ids=[2, 3], phy2log=np.tile(np.arange(8), (2, 1)))
    with pytest.raises(PlanError, match="--num-hidden-layers N"):
        export_plan(plan, "sglang", tmp_path / "x.json")
    assert not (tmp_path / "x.json").exists()
    res = export_plan(plan, "sglang", tmp_path / "x.json", num_hidden_layers=4)
    assert json.loads((tmp_path / "x.json").read_text())["physical_to_logical_map"][0] == \
        list(range(8))
    assert res.layer_ids == (0, 1, 2, 3)


def test_sglang_subset_plan_refused_then_filled(tmp_path):
    c = Cluster(1, 2, 4)
    rng = np.random.default_rng(0)
    p2l = np.stack([rng.permutation(8) for _ in range(2)])
    plan = Plan(cluster=c, num_experts=8, layer_ids=[1, 2], phy2log=p2l, num_hidden_layers=5)
    with pytest.raises(PlanError, match=r"decoder layers 3-4 of 5"):
        export_plan(plan, "sglang", tmp_path / "x.json")
    res = export_plan(plan, "sglang", tmp_path / "x.json", fill_missing="trivial")
    m = sglang_load(tmp_path / "x.json").numpy()
    assert (m[[0, 3, 4]] == np.arange(8)).all() and np.array_equal(m[1:3], p2l)
    assert any("MoE layers 3-4 are not in the plan" in n for n in res.notes)
    # declaring them dense is the other way out
    export_plan(plan, "sglang", tmp_path / "y.json", dense_layers=[0, 3, 4])


@pytest.mark.parametrize("name", ["x.txt", "x.yaml", "x"])
def test_sglang_suffix_must_be_json_or_pt(named_plan, tmp_path, name):
    with pytest.raises(InputError, match="inline JSON"):
        export_plan(named_plan("single"), "sglang", tmp_path / name)


# ---------------------------------------------------------------------------------------------
# TensorRT-LLM
# ---------------------------------------------------------------------------------------------
def test_trtllm_file_as_trtllm_reads_it(named_plan, tmp_path):
    plan = named_plan("deepseek")
    path = tmp_path / "lb.yaml"
    res = export_plan(plan, "trtllm", path, mtp_layers=[61])
    data, rows = trtllm_load(path, plan.cluster.num_gpus, 256)
    assert data["layer_updates_per_iter"] == 0 and data["num_slots"] == 288
    assert sorted(rows) == list(range(3, 62))
    for i, lid in enumerate(range(3, 61)):
        assert rows[lid] == plan.phy2log[i].tolist()
    assert rows[61] == rows[60]
    assert any("MTP layer 61 gets a copy of layer 60" in n for n in res.notes)
    assert res.usage[:4] == (
        "put this in the LLM API options YAML (--extra_llm_api_options / --config):",
        "  moe_config:", "    backend: WIDEEP", f"    load_balancer: {path.resolve()}",
    )


def test_trtllm_mtp_layer_checks(named_plan):
    plan = named_plan("deepseek")
    with pytest.raises(PlanError, match="are MoE layers"):
        build_trtllm(plan, mtp_layers=(60,))
    with pytest.raises(PlanError, match="follow the decoder layers"):
        build_trtllm(plan, mtp_layers=(1,))
    with pytest.raises(PlanError, match="not in the plan"):
        build_trtllm(plan, mtp_layers=(61,), mtp_copy_from=0)
    cfg = build_trtllm(plan, mtp_layers=(61,), mtp_copy_from=3)
    assert cfg["initial_global_assignments"][61] == plan.phy2log[0].tolist()


def test_trtllm_default_row_matches_trtllm_formula():
    E, ep, P = 10, 4, 12
    local = P // ep
    want = [(r * E // ep + i) % E for r in range(ep) for i in range(local)]
    assert trtllm_default_row(P, E, ep).tolist() == want


def test_trtllm_fill_uses_trtllm_default(tmp_path):
    c = Cluster(1, 4, 3)
    rng = np.random.default_rng(1)
    p2l = np.stack([rng.permutation(12) for _ in range(2)])
    plan = Plan(cluster=c, num_experts=12, layer_ids=[0, 1], phy2log=p2l, num_hidden_layers=3)
    cfg = build_trtllm(plan, fill_missing="trivial")
    assert cfg["initial_global_assignments"][2] == trtllm_default_row(12, 12, 4).tolist()


# ---------------------------------------------------------------------------------------------
# EPLB
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".pt", ".npz"])
def test_eplb_tensors(named_plan, tmp_path, suffix):
    plan = named_plan("multinode")
    path = tmp_path / f"eplb{suffix}"
    export_plan(plan, "eplb", path)
    if suffix == ".pt":
        data = {k: v.numpy() for k, v in torch.load(path, weights_only=True).items()}
    else:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    assert np.array_equal(data["phy2log"], plan.phy2log)
    assert np.array_equal(data["logcnt"], plan.logcnt)
    # log2phy: every expert's slots, -1 padded, each slot holding that expert
    l2p = data["log2phy"]
    for layer in range(plan.num_layers):
        for e in range(plan.num_experts):
            slots = [s for s in l2p[layer, e] if s >= 0]
            assert len(slots) == plan.logcnt[layer, e]
            assert all(plan.phy2log[layer, s] == e for s in slots)
    assert (l2p >= -1).all() and (l2p == -1).any()
    assert data["layer_ids"].tolist() == plan.layer_ids.tolist()
    assert int(data["num_gpus"]) == 8 and int(data["num_nodes"]) == 2
    assert all(v.dtype == np.int64 for v in data.values())


def test_eplb_suffix(named_plan, tmp_path):
    with pytest.raises(InputError, match=r"\.pt or \.npz"):
        export_plan(named_plan("single"), "eplb", tmp_path / "x.json")


def test_build_eplb_matches_plan_views(named_plan):
    plan = named_plan("subset")
    t = build_eplb(plan)
    assert np.array_equal(t["log2phy"], plan.log2phy)
    assert int(t["num_hidden_layers"]) == 10


# ---------------------------------------------------------------------------------------------
# vLLM-Ascend
# ---------------------------------------------------------------------------------------------
def test_vllm_ascend_file_as_vllm_ascend_reads_it(named_plan, tmp_path):
    plan = named_plan("deepseek")
    path = tmp_path / "map.json"
    res = export_plan(plan, "vllm-ascend", path)
    data, tensor, placement, redundant = vllm_ascend_load(path, 256)
    assert data["moe_layer_count"] == 58 and tuple(tensor.shape) == (58, 32, 9)
    assert redundant == 32
    assert [layer["layer_id"] for layer in data["layer_list"]] == list(range(58))
    # MoE instance i (decoder layer 3 + i), rank r, expert e -> local slot; the global slot
    # r * 9 + local holds e in the plan
    for i in range(58):
        for r in range(32):
            for e in np.flatnonzero(placement[i, r].numpy() >= 0):
                assert plan.phy2log[i, r * 9 + int(placement[i, r, e])] == e
    assert res.layer_ids == tuple(range(58))
    assert "expert_map_path" in res.usage[1]


def test_vllm_ascend_subset_refused_unless_filled(tmp_path):
    c = Cluster(1, 2, 4)
    p2l = np.tile(np.arange(8), (1, 1))
    plan = Plan(cluster=c, num_experts=8, layer_ids=[1], phy2log=p2l[::-1], num_hidden_layers=3)
    with pytest.raises(PlanError, match="decoder layer 2 of 3"):
        build_vllm_ascend(plan)
    obj = build_vllm_ascend(plan, fill_missing="trivial")
    assert obj["moe_layer_count"] == 2


# ---------------------------------------------------------------------------------------------
# general
# ---------------------------------------------------------------------------------------------
def test_unknown_format(named_plan, tmp_path):
    with pytest.raises(InputError, match="Unknown engine format 'vlm'"):
        export_plan(named_plan("single"), "vlm", tmp_path / "x.json")
    # upstream vLLM takes no placement file: say so, and what to use
    with pytest.raises(InputError, match="--format vllm: upstream vLLM loads no static expert "
                                         "placement file"):
        export_plan(named_plan("single"), "vllm", tmp_path / "x.json")


def test_mtp_only_for_trtllm(named_plan, tmp_path):
    with pytest.raises(InputError, match="trtllm format only"):
        export_plan(named_plan("deepseek"), "sglang", tmp_path / "x.json", mtp_layers=[61])


def test_num_hidden_layers_disagreeing_with_plan(named_plan, tmp_path):
    with pytest.raises(PlanError, match="plan says 61"):
        export_plan(named_plan("deepseek"), "sglang", tmp_path / "x.json", num_hidden_layers=62)


def test_failed_export_leaves_existing_file(named_plan, tmp_path):
    path = tmp_path / "lb.yaml"
    path.write_text("old\n")
    with pytest.raises(PlanError):
        export_plan(named_plan("deepseek"), "trtllm", path, mtp_layers=[3])
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["lb.yaml"]
