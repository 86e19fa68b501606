from __future__ import annotations

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
    bad = tmp_path / "bad.toml"
    bad.write_text("num_nodes = 2\ngpus_per_node = 8\nslots_per_gpu = 2\nwarp = 9\n")
    with pytest.raises(ClusterError, match=r"bad.toml: Unknown cluster setting\(s\): warp"):
        Cluster.from_toml(bad)
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

