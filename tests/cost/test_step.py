"""The full-step cost model on hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from placement.cluster import Cluster
from placement.cost import (
    Efficiency,
    MoeLoad,
    Workload,
    estimate_step,
    format_step,
)
from placement.errors import ClusterError, InputError
from placement.hardware import GPU
from placement.models import ModelShape

# 1 TFLOP/s at every precision, 1 TB/s HBM, NVLink 100 GB/s, network 10 GB/s, $3.6 per hour
GPU_TOY = GPU("toy", memory_gb=10, hbm_tbps=1.0, fp8_tflops=1, bf16_tflops=1, nvlink_gbps=100,
              network_gbps=10, usd_per_gpu_hour=3.6, num_sms=100)
# GQA: 4 heads of 250, 2 KV heads: q 1e6 + k,v 1e6 + o 1e6 = 3e6 attention weights;
# expert 3 * 1000 * 500 = 1.5e6; router 1000 * 4; KV 2 * 2 * 250 * 2 B = 2000 B per token
MODEL = ModelShape("toy", 1000, 500, 2, 4, 1, 1, attention="gqa", num_attention_heads=4,
                   num_key_value_heads=2, head_dim=250, vocab_size=1000)
ONE = Efficiency(gemm=1, attention=1, memory=1, kv_read=1, network=1, nvlink=1, comm_sms=0)
CLUSTER = Cluster(1, 2, 2, gpu="h800")  # 2 GPUs x 2 slots = 4 experts, one node


def test_model_arithmetic() -> None:
    assert MODEL.attention_params == 3_000_000
    assert MODEL.expert_params == 1_500_000 and MODEL.router_params == 4000
    assert MODEL.non_routed_params == 3_004_000
    assert MODEL.non_routed_weight_bytes == 3_004_000 + 2 * 1000 * 1000 * 2  # + BF16 embeddings
    assert MODEL.kv_bytes_per_token == 2000
    assert MODEL.attention_flops(100, absorbed=False) == 4 * 4 * 100 * 250


def test_deepseek_v3_shape_by_hand() -> None:
    from placement.models import model_preset

    ds = model_preset("deepseek-v3")
    # q_a 7168x1536 + q_b 1536x128x192 + kv_a 7168x576 + kv_b 512x128x256 + o 128x128x7168
    assert ds.attention_params == (7168 * 1536 + 1536 * 128 * 192 + 7168 * 576
                                   + 512 * 128 * 256 + 128 * 128 * 7168)
    assert ds.kv_bytes_per_token == (512 + 64) * 2 * 61  # 70,272 B
    assert ds.num_dense_layers == 3 and ds.shared_expert_params == 3 * 7168 * 2048
    # absorbed MLA: 2 H ctx (2 * 512 + 64); unabsorbed: 2 H ctx (128 + 64 + 128)
    assert ds.attention_flops(1, absorbed=True) == 2 * 128 * 1088
    assert ds.attention_flops(1, absorbed=False) == 2 * 128 * 320
    assert 36.5e9 < ds.active_params < 37.5e9  # "37B activated"
    k2 = model_preset("kimi-k2")
    assert (k2.num_experts, k2.num_attention_heads, k2.num_dense_layers) == (384, 64, 1)


def test_decode_without_overlap_by_hand() -> None:
    w = Workload("decode", context=100, batch=10, overlap="none")
    est = estimate_step(MODEL, CLUSTER, w, gpu=GPU_TOY, efficiency=ONE)
    # a0 = 2 * 2e6 * 10 / 1e12; core = max(10 * 4e5, 10 * 100 * 2000 B) = 4e-6; a1 = core +
    # 2 * 1.004e6 * 10 / 1e12; experts = 2 * 1.5e6 * 10 * 2 / 1e12; dispatch 10 copies of
    # 1000 B over NVLink (k (gpn - 1) / G = 1 per token), combine twice that; head 2e6 * 10 / 1e12
    moe = 4e-5 + (4e-6 + 2.008e-5) + 6e-5 + 1e-7 + 2e-7
    assert est.step_s == pytest.approx(moe + 2e-5)
    assert est.batch == 10 and est.batch_limit == "workload"
    assert est.tokens_per_s_per_gpu == pytest.approx(10 / (moe + 2e-5))
    assert est.tokens_per_s == pytest.approx(2 * 10 / (moe + 2e-5))
    assert est.tokens_per_s_per_user == pytest.approx(1 / (moe + 2e-5))
    # 2 GPUs x $3.6 / 3600 s = $0.002 per second
    assert est.usd_per_million_tokens == pytest.approx(0.002 / est.tokens_per_s * 1e6)
    assert est.parts["routed experts"] == pytest.approx(6e-5)
    assert est.parts["dispatch"] == pytest.approx(1e-7)
    assert est.parts["attention"] == pytest.approx(4e-5 + 2.008e-5)
    assert est.dominant == "attention"
    # memory: 10 GB - 7.004e6 B weights - 2 slots x 1.5e6 B - 1 GB reserve, 2000 B per token
    kv = 10e9 - 7.004e6 - 3e6 - 1e9
    assert est.memory["KV cache"] == pytest.approx(kv / 1e9)
    assert est.kv_tokens == pytest.approx(kv / 2000)
    assert est.max_batch_memory == int(kv / 2000 // 100)


def test_decode_two_batch_schedule_by_hand() -> None:
    w = Workload("decode", context=100, batch=10)
    est = estimate_step(MODEL, CLUSTER, w, gpu=GPU_TOY, efficiency=ONE)
    # micro-batches of 5: 2 x [max(S + A0, D) + M + max(A1, C)] + 2 heads
    a0, a1, m = 2e-5, 2e-6 + 1.004e-5, 3e-5
    assert est.step_s == pytest.approx(2 * (a0 + m + a1) + 2 * 1e-5)


def test_prefill_counts_cache_hits_but_does_not_compute_them() -> None:
    w = Workload("prefill", context=100, batch=20, cache_hit_rate=0.5, overlap="none")
    est = estimate_step(MODEL, CLUSTER, w, gpu=GPU_TOY, efficiency=ONE)
    assert w.attended_context == 75  # half the prompt cached, half of the new half before
    # a0 8e-5; core 20 x 4 x 4 x 75 x 250 FLOPs; a1 + o/router 4.016e-5; experts 1.2e-4;
    # dispatch 2e-7 + combine 4e-7; LM head for 0.4 prompts: its 2e6 B read
    step = 8e-5 + (6e-6 + 4.016e-5) + 1.2e-4 + 6e-7 + 2e-6
    assert est.step_s == pytest.approx(step)
    assert est.computed_tokens_per_s_per_gpu == pytest.approx(20 / step)
    assert est.tokens_per_s_per_gpu == pytest.approx(40 / step)  # cache hits count
    assert est.tokens_per_s_per_user is None


def test_prefill_two_batch_slows_compute_by_the_communication_sms() -> None:
    w = Workload("prefill", context=100, batch=20)
    half = estimate_step(MODEL, CLUSTER, w, gpu=GPU_TOY,
                         efficiency=Efficiency(1, 1, 1, 1, 1, 1, comm_sms=50))
    full = estimate_step(MODEL, CLUSTER, w, gpu=GPU_TOY, efficiency=ONE)
    # compute-bound pieces of the MoE layer take twice as long on half the SMs
    assert half.parts["routed experts"] == pytest.approx(2 * full.parts["routed experts"])
    assert half.step_s > full.step_s
    with pytest.raises(InputError, match="leaves no SM"):
        estimate_step(MODEL, CLUSTER, w, gpu=GPU_TOY,
                      efficiency=Efficiency(1, 1, 1, 1, 1, 1, comm_sms=100))


def test_batch_from_memory_and_from_the_speed_target() -> None:
    free = estimate_step(MODEL, CLUSTER, Workload("decode", context=1e6), gpu=GPU_TOY,
                         efficiency=ONE)
    assert free.batch_limit == "memory" and free.batch == free.max_batch_memory == 4
    slow = estimate_step(MODEL, CLUSTER, Workload("decode", context=100), gpu=GPU_TOY,
                         efficiency=ONE)
    target = 2.0 / slow.step_s  # twice the speed memory's batch gets
    fast = estimate_step(MODEL, CLUSTER, Workload("decode", context=100,
                                                   min_tokens_per_s_per_user=target),
                         gpu=GPU_TOY, efficiency=ONE)
    assert fast.batch_limit == "speed target" and fast.batch < slow.batch
    assert fast.tokens_per_s_per_user is not None
    assert fast.tokens_per_s_per_user >= target
    one_more = estimate_step(MODEL, CLUSTER, Workload("decode", context=100,
                                                       batch=fast.batch + 1),
                             gpu=GPU_TOY, efficiency=ONE)
    assert 1 / one_more.step_s < target  # the largest batch that keeps the speed
    never = estimate_step(MODEL, CLUSTER, Workload("decode", context=100,
                                                    min_tokens_per_s_per_user=1e9),
                          gpu=GPU_TOY, efficiency=ONE)
    assert not never.feasible and "below the 1e+09 required" in never.reason
    assert never.tokens_per_s == 0 and never.usd_per_million_tokens == float("inf")


def test_no_room_for_one_sequence() -> None:
    est = estimate_step(MODEL, CLUSTER, Workload("decode", context=1e7), gpu=GPU_TOY,
                        efficiency=ONE)
    assert not est.feasible and est.reason.startswith("no room for one sequence: 8.99 GB left")
    assert "not feasible: no room for one sequence" in format_step(est)


def test_imbalance_and_traffic_of_the_busiest_gpu() -> None:
    c = Cluster(2, 1, 2, gpu="h800")  # two nodes of one GPU
    w = Workload("decode", context=100, batch=10, overlap="none")
    even = estimate_step(MODEL, c, w, gpu=GPU_TOY, efficiency=ONE)
    # uniform: k (N - 1) / N = 1 cross-node copy per token over 10 GB/s
    assert even.parts["dispatch"] == pytest.approx(10 * 1 * 1000 / 10e9)
    hot = estimate_step(MODEL, c, w, gpu=GPU_TOY, efficiency=ONE,
                        moe=MoeLoad.uniform(c, 2, imbalance=1.5))
    assert hot.parts["routed experts"] == pytest.approx(1.5 * even.parts["routed experts"])
    assert hot.parts["dispatch"] == pytest.approx(1.5 * even.parts["dispatch"])


def test_moe_load_from_gpu_loads() -> None:
    c = Cluster(2, 2, 1)
    # node 0 holds 3/4 of the load: a top-1 token lands there with probability 3/4
    loads = np.array([[2.0, 1.0, 0.5, 0.5]])
    moe = MoeLoad.from_loads(loads, c, top_k=1)
    assert moe.imbalance[0] == pytest.approx(2.0)
    assert moe.mean_sends_per_token == pytest.approx(0.5 * (0.75 + 0.25))
    # GPU (0, i) receives from node 1's GPU i: b q_0 = 0.75 per token
    assert moe.sends[0] == pytest.approx(0.75)
    assert moe.source == "independent"
    uni = MoeLoad.uniform(Cluster(4, 8, 9), 8)
    assert uni.mean_sends_per_token == pytest.approx(3 * (1 - 0.75 ** 8))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"phase": "train"}, "Expected phase in prefill, decode"),
        ({"overlap": "full"}, "Expected overlap in none, two-batch"),
        ({"context": 0}, "Expected context >= 1"),
        ({"batch": 0}, "Expected batch >= 1"),
        ({"min_tokens_per_s_per_user": -1.0}, "Expected min_tokens_per_s_per_user > 0"),
        ({"phase": "prefill", "min_tokens_per_s_per_user": 20.0}, "applies to decode only"),
        ({"cache_hit_rate": 0.5}, "applies to prefill only"),
        ({"phase": "prefill", "cache_hit_rate": 1.0}, r"Expected cache_hit_rate in \[0, 1\)"),
        ({"runtime_reserve_gb": -1.0}, "Expected runtime_reserve_gb >= 0"),
    ],
)
def test_bad_workloads(kwargs: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        Workload(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"gemm": 0.0}, r"Expected efficiency.gemm in \(0, 1\]"),
        ({"network": 1.5}, r"Expected efficiency.network in \(0, 1\]"),
        ({"comm_sms": -1}, "Expected efficiency.comm_sms >= 0"),
    ],
)
def test_bad_efficiencies(kwargs: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        Efficiency(**kwargs)


def test_inputs_the_step_needs() -> None:
    no_attention = ModelShape("bare", 1000, 500, 2, 4, 1, 1)
    with pytest.raises(InputError, match="model bare has no attention shape"):
        estimate_step(no_attention, CLUSTER, gpu=GPU_TOY)
    with pytest.raises(InputError, match="No GPU given"):
        estimate_step(MODEL, Cluster(1, 2, 2))
    with pytest.raises(InputError, match="Unknown GPU 'tpu'"):
        estimate_step(MODEL, CLUSTER, gpu="tpu")
    with pytest.raises(ClusterError, match="short by 2 slots"):
        estimate_step(MODEL, Cluster(1, 2, 1), gpu=GPU_TOY)
    with pytest.raises(InputError, match=r"Expected num_attention_heads .* multiple"):
        ModelShape("x", 8, 8, 2, 4, 1, 1, attention="gqa", num_attention_heads=3,
                   num_key_value_heads=2, head_dim=4)
    with pytest.raises(InputError, match="Expected kv_lora_rank >= 1 for mla attention"):
        ModelShape("x", 8, 8, 2, 4, 1, 1, attention="mla", num_attention_heads=2,
                   qk_nope_head_dim=4, v_head_dim=4)
    with pytest.raises(InputError, match="Expected intermediate_size >= 1"):
        ModelShape("x", 8, 8, 2, 4, 1, 2, attention="gqa", num_attention_heads=2,
                   num_key_value_heads=2, head_dim=4)
