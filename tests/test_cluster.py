from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from placement import PRESETS, Cluster, ClusterError, MemoryModel, load_cluster


def test_shape_and_slot_geometry() -> None:
    c = Cluster(2, 4, 3)
    assert (c.num_gpus, c.num_slots, c.shape) == (8, 24, "2x4x3")
    np.testing.assert_array_equal(c.gpu_of_slot()[:7], [0, 0, 0, 1, 1, 1, 2])
    np.testing.assert_array_equal(c.node_of_gpu(), [0, 0, 0, 0, 1, 1, 1, 1])
    assert c.node_of_slot()[11] == 0 and c.node_of_slot()[12] == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(num_nodes=0, gpus_per_node=8, slots_per_gpu=9), "Expected num_nodes >= 1"),
        (dict(num_nodes=1, gpus_per_node=-1, slots_per_gpu=9), "Expected gpus_per_node >= 1"),
        (dict(num_nodes=1, gpus_per_node=8, slots_per_gpu=1.5), "Expected slots_per_gpu >= 1"),
        (dict(num_nodes=1, gpus_per_node=8, slots_per_gpu=2, network_gbps=0.0), "network_gbps > 0"),
        (dict(num_nodes=1, gpus_per_node=8, slots_per_gpu=2, usd_per_gpu_hour=-1.0), "usd_per_gpu_hour"),
    ],
)
def test_invalid_cluster_names_field(kwargs: dict, message: str) -> None:
    with pytest.raises(ClusterError, match=message):
        Cluster(**kwargs)


def test_fewer_slots_than_experts_says_by_how_much() -> None:
    with pytest.raises(ClusterError, match=r"short by 32 slots"):
        Cluster(1, 8, 28).check_fits(256)
    Cluster(4, 8, 8).check_fits(256)


def test_memory_model_yields_slots_and_rejects_too_small() -> None:
    # DeepSeek-V3 FP8 expert: 3 * 7168 * 2048 bytes = 44.04 MB, 58 layers -> 2.554 GB per slot
    mem = MemoryModel(80.0, 50.0, 7168, 2048, 1.0, 58)
    assert mem.bytes_per_expert == 3 * 7168 * 2048
    assert mem.max_slots_per_gpu() == int(30e9 // (3 * 7168 * 2048 * 58))
    Cluster(4, 8, mem.max_slots_per_gpu(), memory=mem)
    with pytest.raises(ClusterError, match="short by"):
        Cluster(4, 8, mem.max_slots_per_gpu() + 1, memory=mem)
    with pytest.raises(ClusterError, match="too small for one expert"):
        Cluster(4, 8, 1, memory=MemoryModel(80.0, 79.0, 7168, 2048, 1.0, 58))
    with pytest.raises(ClusterError, match="leaves nothing"):
        MemoryModel(80.0, 80.0, 7168, 2048, 1.0, 58)


def test_presets_are_the_published_deployments() -> None:
    assert PRESETS["deepseek-prefill"].shape == "4x8x9"
    assert PRESETS["deepseek-decode"].shape == "18x8x2"
    assert PRESETS["gb200-nvl72"].num_gpus == 72
    for name in ("h100-2x8", "h200-2x8"):
        assert (PRESETS[name].num_nodes, PRESETS[name].gpus_per_node) == (2, 8)
    with pytest.raises(ClusterError, match="Unknown cluster preset 'nope'"):
        Cluster.preset("nope")


def test_toml_round_trip_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        "[cluster]\nnum_nodes = 2\ngpus_per_node = 8\nnetwork_gbps = 25.0\n"
        "[cluster.memory]\ngpu_memory_gb = 80.0\nreserved_gb = 40.0\nhidden_size = 7168\n"
        "moe_intermediate_size = 2048\nbytes_per_param = 1.0\nnum_moe_layers = 58\n"
    )
    c = Cluster.from_toml(path)
    assert c.slots_per_gpu == c.memory.max_slots_per_gpu() if c.memory else False
    assert c.network_gbps == 25.0
    assert Cluster.from_dict(c.to_dict()) == c
    # the one figure set stands; the others are the default GPU's (h800)
    f = c.figures("fp8")
    assert (f.network_gbps, f.nvlink_gbps, f.explicit) == (25.0, 160.0, ("network_gbps",))
    assert "network_gbps" in c.to_dict() and "nvlink_gbps" not in c.to_dict()
    bad = tmp_path / "bad.toml"
    bad.write_text("num_nodes = 2\ngpus_per_node = 8\nslots_per_gpu = 2\nwarp = 9\n")
    with pytest.raises(ClusterError, match=r"bad.toml: Unknown cluster setting 'warp' \(settings: "
                                           r"gpu, gpu_tflops, gpus_per_node, "):
        Cluster.from_toml(bad)
    # a key spelt as the command line's flag, or misspelt: the setting it means
    typo = tmp_path / "typo.toml"
    typo.write_text("nodes = 2\ngpus-per-node = 8\nslot_per_gpu = 2\n")
    with pytest.raises(ClusterError) as exc:
        Cluster.from_toml(typo)
    assert str(exc.value).endswith(
        "typo.toml: Unknown cluster settings 'gpus-per-node': did you mean gpus_per_node?; "
        "'nodes': did you mean num_nodes?; 'slot_per_gpu': did you mean slots_per_gpu? "
        "(settings: gpu, gpu_tflops, gpus_per_node, memory, name, network_gbps, num_nodes, "
        "nvlink_gbps, slots_per_gpu, usd_per_gpu_hour).")
    broken = tmp_path / "broken.toml"
    broken.write_text("num_nodes = [")
    with pytest.raises(ClusterError, match="not valid TOML"):
        Cluster.from_toml(broken)
    with pytest.raises(ClusterError, match="no such file"):
        Cluster.from_toml(tmp_path / "missing.toml")


def test_load_cluster_sources() -> None:
    assert load_cluster(preset="deepseek-prefill", slots_per_gpu=10).slots_per_gpu == 10
    assert load_cluster(num_nodes=1, gpus_per_node=4, slots_per_gpu=4).num_slots == 16
    with pytest.raises(ClusterError, match="missing --slots-per-gpu"):
        load_cluster(num_nodes=1, gpus_per_node=4)
    with pytest.raises(ClusterError, match="not both"):
        load_cluster(preset="deepseek-prefill", path="x.toml")



def test_memory_budget_of_a_gpu_and_a_model_by_hand() -> None:
    from placement.models import model_preset

    ds = model_preset("deepseek-v3")
    # per GPU (attention, dense layers, shared experts data-parallel), FP8 matrices:
    # 61 x 187,105,280 attention + 3 x 3 x 7168 x 18432 dense FFN + 58 x (3 x 7168 x 2048 shared
    # + 7168 x 256 router) = 15,263,268,864 B, plus BF16 embedding and LM head 2 x 129280 x 7168 x 2
    weights = 61 * 187_105_280 + 3 * 3 * 7168 * 18432 + 58 * (3 * 7168 * 2048 + 7168 * 256)
    assert weights == 15_263_268_864
    assert ds.non_routed_weight_bytes == weights + 2 * 129280 * 7168 * 2 == 18_969_985_024
    mem = MemoryModel.for_model("h200", ds, kv_reserve_gb=40)
    # runtime reserve: 10 % of 141 GB; one slot: 58 layers x 44,040,192 B = 2.554 GB
    assert mem.runtime_gb == pytest.approx(14.1)
    assert mem.reserved_gb == pytest.approx(18.969985024 + 40 + 14.1)
    assert mem.max_slots_per_gpu() == int((141 - 73.069985024) // (58 * 44_040_192 / 1e9)) == 26
    assert mem.explain() == (
        "slots per GPU: (h200 141 GB - 19.0 GB non-routed weights of deepseek-v3 - 40 GB KV "
        "cache - 14.1 GB runtime) = 67.9 GB for routed experts / 2.554 GB per slot (58 MoE "
        "layers x 44.0 MB) = 26"
    )
    # DeepSeek's prefill: 9 routed experts per H800 with 30 GB of KV cache and 8 GB runtime
    h800 = MemoryModel.for_model("h800", ds, kv_reserve_gb=30, runtime_reserve_gb=8)
    assert h800.max_slots_per_gpu() == 9
    Cluster(4, 8, 9, memory=h800)
    with pytest.raises(ClusterError, match=re.escape(
            "no room for one expert slot on h800 (80 GB): 19.0 GB non-routed weights of "
            "deepseek-v3 + 60 GB KV cache")):
        MemoryModel.for_model("h800", ds, kv_reserve_gb=60)
    with pytest.raises(ClusterError, match="Unknown GPU 'a100'"):
        MemoryModel.for_model("a100", ds, kv_reserve_gb=10)
    with pytest.raises(ClusterError, match="Expected kv_reserve_gb >= 0"):
        MemoryModel.for_model("h200", ds, kv_reserve_gb=-1)


def test_memory_breakdown_is_checked_and_round_trips() -> None:
    with pytest.raises(ClusterError, match="is not non_expert_gb \\+ kv_reserve_gb \\+ runtime_gb"):
        MemoryModel(80.0, 50.0, 7168, 2048, 1.0, 58, non_expert_gb=19.0, kv_reserve_gb=20.0,
                    runtime_gb=8.0)
    with pytest.raises(ClusterError, match=re.escape("Expected all of memory.non_expert_gb")):
        MemoryModel(80.0, 50.0, 7168, 2048, 1.0, 58, non_expert_gb=19.0)
    plain = MemoryModel(80.0, 50.0, 7168, 2048, 1.0, 58)
    assert plain.to_dict() == {"gpu_memory_gb": 80.0, "reserved_gb": 50.0, "hidden_size": 7168,
                               "moe_intermediate_size": 2048, "bytes_per_param": 1.0,
                               "num_moe_layers": 58}
    assert plain.explain().startswith("slots per GPU: (GPU 80 GB - 50 GB reserved) = 30.0 GB")
    mem = MemoryModel(80.0, 50.0, 7168, 2048, 1.0, 58, non_expert_gb=19.0, kv_reserve_gb=23.0,
                      runtime_gb=8.0, gpu="h800", model="deepseek-v3")
    c = Cluster(4, 8, 9, memory=mem, gpu="h800")
    assert Cluster.from_dict(c.to_dict()) == c
    assert c.to_dict()["gpu"] == "h800" and c.to_dict()["memory"]["kv_reserve_gb"] == 23.0


def test_clusters_know_their_gpu() -> None:
    assert PRESETS["deepseek-prefill"].gpu == "h800" and PRESETS["gb200-nvl72"].gpu == "gb200"
    c = Cluster.for_gpu("h200", 2, 8, 18)
    # a preset GPU is named only: its figures come from the GPU at DeepSeek's kernel shares
    assert (c.gpu, c.nvlink_gbps, c.network_gbps, c.gpu_tflops, c.usd_per_gpu_hour) == (
        "h200", None, None, None, None)
    f = c.figures("fp8")
    assert (f.gpu, f.nvlink_gbps, f.network_gbps, f.usd_per_gpu_hour) == ("h200", 360.0, 40.0, 3.0)
    assert f.tflops == pytest.approx(1979 * 0.6) and c.price() == 3.0
    assert Cluster.for_gpu("h800", 4, 8, 9).figures().nvlink_gbps == 160.0  # as DeepEP measures
    assert Cluster(1, 8, 2, gpu="H100").gpu == "h100"
    with pytest.raises(ClusterError, match="Unknown GPU 'tpu'; choose one of: h800"):
        Cluster(1, 8, 2, gpu="tpu")
    with pytest.raises(ClusterError, match="Unknown GPU 'tpu'"):
        Cluster.for_gpu("tpu", 1, 8, 2)
