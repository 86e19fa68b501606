"""The cost model on hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from placement.cluster import PRESETS, Cluster
from placement.cost import (
    MODEL_PRESETS,
    CostOptions,
    ModelShape,
    Workload,
    deepseek_reference_comparison,
    estimate_cost,
    fleet_nodes,
    format_cost,
    format_reference_comparison,
    guess_model,
    layer_times,
    model_preset,
    uniform_traffic,
)
from placement.errors import InputError
from placement.validation import ValidationResult

# 2 nodes x 2 GPUs; 1e12 FLOP/s; NVLink 100 GB/s; network 10 GB/s; $3.6 per GPU-hour
CLUSTER = Cluster(2, 2, 1, nvlink_gbps=100.0, network_gbps=10.0, gpu_tflops=1.0,
                  usd_per_gpu_hour=3.6)
# 6 * 1000 * 500 = 3e6 FLOPs per assignment; FP8 dispatch, BF16 combine
MODEL = ModelShape("toy", 1000, 500, 2, 4, 4, 4)


def _result(**kw: object) -> ValidationResult:
    # source 0 sends 10 to itself, 5 to GPU 1 (same node), 3 to GPU 2 (other node, 2 tokens);
    # source 3 keeps 20 and sends 7 to GPU 1 (other node, 4 tokens)
    matrix = np.zeros((1, 4, 4))
    matrix[0, 0, 0], matrix[0, 0, 1], matrix[0, 0, 2] = 10, 5, 3
    matrix[0, 3, 3], matrix[0, 3, 1] = 20, 7
    node_sends = np.zeros((1, 4, 2))
    node_sends[0, 0, 1] = 2
    node_sends[0, 3, 0] = 4
    args: dict = dict(cluster=CLUSTER, layer_ids=np.array([5]), dispatch="static",
                      gpu_loads=matrix.sum(axis=1), tokens=np.array([20.0]), matrix=matrix,
                      node_sends=node_sends, num_tokens=20)
    args.update(kw)
    return ValidationResult(**args)


def test_per_gpu_traffic_of_the_hand_case() -> None:
    per = _result().per_gpu_traffic()
    assert per is not None
    np.testing.assert_array_equal(per["intra_send"], [[5, 0, 0, 0]])
    np.testing.assert_array_equal(per["intra_recv"], [[0, 5, 0, 0]])
    np.testing.assert_array_equal(per["net_send"], [[2, 0, 0, 4]])
    # GPU 0 (local index 0) -> node 1 lands on GPU 2; GPU 3 (local 1) -> node 0 on GPU 1
    np.testing.assert_array_equal(per["net_recv"], [[0, 4, 2, 0]])


def test_layer_times_by_hand() -> None:
    est = estimate_cost(_result(), MODEL, CostOptions(overlap="none"))
    # compute: max load 20 (GPU 3) * 3e6 / 1e12
    assert est.compute_s[0] == pytest.approx(6e-5)
    # dispatch: GPU 3 sends 4 tokens * 1000 * 1 B over 10 GB/s = 4e-7 (NVLink 5e-8 at GPU 0)
    assert est.dispatch_s is not None and est.dispatch_s[0] == pytest.approx(4e-7)
    # combine: GPU 1 sends back 4 * 1000 * 2 B over 10 GB/s = 8e-7
    assert est.combine_s is not None and est.combine_s[0] == pytest.approx(8e-7)
    assert est.layer_s[0] == pytest.approx(6e-5 + 1.2e-6)
    # 20 tokens, 4 MoE layers: 6.12e-5 / 20 * 4 s per token
    assert est.seconds_per_token == pytest.approx(1.224e-5)
    assert est.tokens_per_s == pytest.approx(1 / 1.224e-5)
    assert est.tokens_per_s_per_node == pytest.approx(1 / 1.224e-5 / 2)
    # 4 GPUs * $3.6 / 3600 s = $0.004 per second
    assert est.usd_per_million_tokens == pytest.approx(0.004 * 1.224e-5 * 1e6)
    assert est.communication_share == pytest.approx(1.2e-6 / (6e-5 + 1.2e-6))


def test_two_batch_overlap_takes_the_longer() -> None:
    est = estimate_cost(_result(), MODEL)  # default two-batch
    assert est.layer_s[0] == pytest.approx(6e-5)  # compute bound
    fast = Cluster(2, 2, 1, nvlink_gbps=100.0, network_gbps=10.0, gpu_tflops=1000.0)
    est = estimate_cost(_result(cluster=fast), MODEL, CostOptions(efficiency=0.5))
    assert est.compute_s[0] == pytest.approx(20 * 3e6 / 5e14)
    assert est.layer_s[0] == pytest.approx(1.2e-6)  # communication bound
    assert est.usd_per_gpu_hour == 2.0  # the cluster's default price


def test_price_override_and_compute_only() -> None:
    res = _result(matrix=None, node_sends=None, tokens=None, num_tokens=None, trace_kind="counts")
    est = estimate_cost(res, MODEL, CostOptions(usd_per_gpu_hour=7.2))
    assert est.compute_only and est.dispatch_s is None and est.communication_share is None
    assert est.tokens[0] == pytest.approx(45 / 2)  # 45 assignments / top-2
    assert est.seconds_per_token == pytest.approx(6e-5 / 22.5 * 4)
    assert est.usd_per_million_tokens == pytest.approx(4 * 7.2 / 3600 * 6e-5 / 22.5 * 4 * 1e6)
    assert "communication: not counted" in format_cost(est)


def test_layer_times_without_traffic_and_bad_overlap() -> None:
    compute, d, c, layer = layer_times(np.array([[1.0, 3.0], [2.0, 2.0]]), CLUSTER, MODEL)
    np.testing.assert_allclose(compute, [9e-6, 6e-6])
    assert d is None and c is None
    np.testing.assert_allclose(layer, compute)
    with pytest.raises(InputError, match="Expected overlap in none, two-batch"):
        layer_times(np.ones((1, 4)), CLUSTER, MODEL, overlap="full")


def test_uniform_traffic() -> None:
    traffic, s = uniform_traffic(PRESETS["deepseek-prefill"], 3200.0, 8)
    assert s == pytest.approx(3 * (1 - 0.75 ** 8))
    np.testing.assert_allclose(traffic["net_send"], 100 * s)
    np.testing.assert_allclose(traffic["intra_send"], 100 * 8 * 7 / 32)


def test_deepseek_reference_comparison() -> None:
    points = deepseek_reference_comparison()
    assert [p.phase for p in points] == ["prefill", "decode"]
    pre, dec = points
    assert pre.published_per_node == 73.7e3 and dec.published_per_node == 14.8e3
    assert pre.cluster.num_gpus == 32 and dec.cluster.num_gpus == 144
    # the routed-expert bound is the earlier model, at the hardware figures of the solver's
    # predicted time: H800 FP8 1979 TFLOP/s x 0.6 (DeepGEMM), 1000 tokens per GPU
    flat = deepseek_reference_comparison(imbalance=1.0)
    assert flat[0].moe_only.compute_s[0] == pytest.approx(
        1000 * 8 * 6 * 7168 * 2048 / (1979e12 * 0.6))
    # two-batch overlap: the longer of compute and the all-to-all, 58 MoE layers per token
    b = flat[0].moe_only
    assert b.tokens_per_s == pytest.approx(
        32 * 1000 / (58 * max(b.compute_s[0], b.dispatch_s[0] + b.combine_s[0])))
    # 1.29x (1.06x at the old 400 TFLOP/s) and 2.78x (bound by the network) the published
    assert flat[0].moe_only_ratio == pytest.approx(1.29, abs=0.005)
    assert flat[1].moe_only_ratio == pytest.approx(2.78, abs=0.005)
    # decode meets the published figure within 25 %; the operating point is DeepSeek's
    assert 0.75 <= dec.ratio <= 1.25
    assert dec.step.batch_limit == "speed target"
    assert dec.step.tokens_per_s_per_user is not None
    assert 21.0 <= dec.step.tokens_per_s_per_user < 22.0
    assert dec.step.workload.context == 4989
    assert pre.step.workload.cache_hit_rate == pytest.approx(342 / 608)
    assert pre.step.batch == 16384
    assert dec.sends_per_token == pytest.approx(17 * (1 - (17 / 18) ** 8))
    # prefill: the service average sits well below what the model says the hardware does
    assert pre.ratio > 1.25
    # fleet check: node-days the published traffic needs at the predicted per-node figures
    f = fleet_nodes(points)
    assert f["decode"] == pytest.approx(168e9 / (dec.estimate.tokens_per_s_per_node * 86400))
    assert f["prefill"] == pytest.approx(608e9 / (pre.estimate.tokens_per_s_per_node * 86400))
    assert f["total"] == pytest.approx(f["decode"] + f["prefill"]) and f["total"] < 226.75
    # more imbalance, less throughput
    worse = deepseek_reference_comparison(imbalance=2.0)
    assert worse[1].estimate.tokens_per_s < dec.estimate.tokens_per_s
    text = format_reference_comparison(points)
    assert text.splitlines()[0].startswith("| phase | deployment | published tokens/s per node |")
    assert "| prefill | deepseek-prefill (4 x 8 H800, 9 slots/GPU) | 73.7k input |" in text
    assert f"| {dec.ratio:.2f} |" in text
    assert "24-hour averages of a live service" in text
    with pytest.raises(InputError, match="Expected imbalance >= 1"):
        deepseek_reference_comparison(imbalance=0.5)


def test_estimate_cost_with_a_workload_costs_the_full_step() -> None:
    model = model_preset("deepseek-v3")
    c = Cluster(2, 8, 16, gpu="h800")
    rng = np.random.default_rng(0)
    loads = rng.uniform(900, 1100, size=(3, 16))
    res = ValidationResult(cluster=c, layer_ids=np.array([3, 4, 5]), dispatch="even",
                           gpu_loads=loads, tokens=loads.sum(axis=1) / 8, trace_kind="counts")
    part = estimate_cost(res, model)
    full = estimate_cost(res, model, CostOptions(workload=Workload("decode", context=2048)))
    assert part.step is None and full.step is not None
    assert full.tokens_per_s == full.step.tokens_per_s < part.tokens_per_s
    assert full.usd_per_million_tokens == pytest.approx(full.step.usd_per_million_tokens)
    assert full.step.moe.source == "independent"
    assert full.step.moe.imbalance == pytest.approx(loads.max(axis=1) / loads.mean(axis=1))
    assert format_cost(full).startswith("model deepseek-v3 (MLA attention, FP8 weights)")
    with pytest.raises(InputError, match="Unknown GPU 'x'"):
        CostOptions(gpu="x")


def test_presets_and_guess() -> None:
    ds = model_preset("deepseek-v3")
    assert (ds.hidden_size, ds.moe_intermediate_size, ds.top_k, ds.num_moe_layers,
            ds.num_hidden_layers) == (7168, 2048, 8, 58, 61)
    assert guess_model("DeepSeek-V3-0324") is ds
    assert guess_model(None, num_experts=256) is ds
    assert guess_model("FLAME-MoE-290M", num_experts=64) is MODEL_PRESETS["flame-moe-290m"]
    assert guess_model("Mixtral-8x7B-Instruct").name == "mixtral-8x7b"  # type: ignore[union-attr]
    assert guess_model(None, num_experts=64) is None  # ambiguous
    assert guess_model("unknown", num_experts=999) is None
    with pytest.raises(InputError, match="Unknown model 'gpt'; choose one of: deepseek-moe-16b"):
        model_preset("gpt")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"hidden_size": 0}, "Expected hidden_size >= 1"),
        ({"top_k": 1.5}, "Expected top_k >= 1"),
        ({"num_moe_layers": 9}, "Expected num_moe_layers <= num_hidden_layers"),
        ({"combine_bytes_per_element": 0.0}, "Expected combine_bytes_per_element > 0"),
    ],
)
def test_bad_model_shapes(kwargs: dict, message: str) -> None:
    args: dict = dict(name="x", hidden_size=8, moe_intermediate_size=8, top_k=2, num_experts=4,
                      num_moe_layers=2, num_hidden_layers=2)
    args.update(kwargs)
    with pytest.raises(InputError, match=message):
        ModelShape(**args)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"overlap": "always"}, "Expected overlap in none, two-batch"),
        ({"efficiency": 0.0}, r"Expected efficiency in \(0, 1\]"),
        ({"efficiency": 1.5}, r"Expected efficiency in \(0, 1\]"),
        ({"usd_per_gpu_hour": -1.0}, "Expected usd_per_gpu_hour >= 0"),
    ],
)
def test_bad_options(kwargs: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        CostOptions(**kwargs)
