"""The deployment sweep: a sweep whose best point is known by construction, statuses, files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from placement.cost import Efficiency, Workload
from placement.errors import InputError
from placement.hardware import GPU
from placement.models import ModelShape
from placement.plan import Plan
from placement.routing_traces import Trace
from placement.solver import SolveOptions
from placement.sweep import SweepOptions, format_sweep, sweep, write_sweep

# A GPU whose HBM is so slow (1 GB/s) that decoding 8 sequences is bound by reading weights:
# every routed-expert slot costs its 1.5 MB (1.5 ms) in every step, compute and all-to-all are
# negligible (1 TFLOP/s, 10 GB/s network)
SLOW_HBM = GPU("slow-hbm", memory_gb=10, hbm_tbps=0.001, fp8_tflops=1000, bf16_tflops=1000,
               nvlink_gbps=100, network_gbps=10, usd_per_gpu_hour=3.6, num_sms=100)
MODEL = ModelShape("toy", 1000, 500, 2, 8, 1, 1, attention="gqa", num_attention_heads=4,
                   num_key_value_heads=2, head_dim=250, vocab_size=1000)
ONE = Efficiency(gemm=1, attention=1, memory=1, kv_read=1, network=1, nvlink=1, comm_sms=0)


def _uniform(seed: int) -> Trace:
    rng = np.random.default_rng(seed)
    counts = 1000 + rng.integers(0, 3, size=(2, 1, 8))  # all experts equally loaded
    return Trace(num_experts=8, counts=counts, layer_ids=[0], num_hidden_layers=1, top_k=2,
                 model="toy")


def _options(**kw: object) -> SweepOptions:
    args: dict = dict(redundant=(0, 4, 8), nodes=(1, 2), gpus_per_node=(4,), gpu=SLOW_HBM,
                      workload=Workload("decode", context=100, batch=8, overlap="none"),
                      solve=SolveOptions(jobs=1), efficiency=ONE)
    args.update(kw)
    return SweepOptions(**args)


def test_the_best_point_is_the_one_with_fewest_slots_per_gpu() -> None:
    # Balanced experts gain nothing from replicas, and with weight reads dominating the step a
    # GPU's tokens/s fall with its slots: 2 nodes x 4 GPUs with no redundant expert (1 slot per
    # GPU) is the best point by construction; 1 x 4 with none (2 slots) and 2 x 4 with 8 (2 slots)
    # tie behind it.
    res = sweep(_uniform(0), _uniform(1), MODEL, _options())
    best = res.best
    assert best is not None
    assert (best.shape, best.redundant, best.slots_per_gpu, best.method) == \
        ("2x4", 0, 1, "optimizer")
    by = {(p.shape, p.redundant, p.method): p for p in res.points}
    assert by[("1x4", 0, "eplb")].usd_per_million_tokens == pytest.approx(
        by[("2x4", 8, "eplb")].usd_per_million_tokens, rel=1e-3)
    assert best.usd_per_million_tokens is not None
    assert best.usd_per_million_tokens < by[("1x4", 0, "optimizer")].usd_per_million_tokens
    # EPLB's plan of the same point costs the same (weight reads dominate): within 1 %
    assert [(p.shape, p.redundant, p.method) for p in res.near_best()] == [("2x4", 0, "eplb")]
    # tokens/s per GPU fall with slots: 1 -> 2 -> 3 -> 4 slots
    tps: dict[int, list[float]] = {}
    for p in res.points:
        if p.feasible:
            tps.setdefault(p.slots_per_gpu, []).append(p.tokens_per_s_per_gpu or 0.0)
    assert sorted(tps) == [1, 2, 3, 4]
    assert all(max(tps[s + 1]) < min(tps[s]) for s in (1, 2, 3))
    # 12 slots do not divide over 8 GPUs
    skipped = by[("2x4", 4, "optimizer")]
    assert skipped.status == "skipped" and skipped.reason == "12 slots do not divide over 8 GPUs"
    assert skipped.tokens_per_s is None and skipped.step is None
    # held-out figures of a balanced trace
    assert by[("1x4", 0, "optimizer")].imbalance == pytest.approx(1.0, abs=0.01)
    assert by[("1x4", 0, "optimizer")].imbalance_rule == "even"
    assert by[("2x4", 0, "eplb")].estimated_sends_per_token is not None
    assert by[("2x4", 0, "eplb")].sends_per_token is None  # counts: not measured
    assert res.token_level is False
    assert len(res.points) == 2 * 3 * 2


def test_points_that_do_not_fit_in_memory() -> None:
    # 9.9914 GB of the 10 GB kept for the runtime: 8.6 MB for weights and KV cache, so the
    # 7.008 MB of non-routed weights leave room for one slot (1.5 MB) but not two
    w = Workload("decode", context=4, batch=8, overlap="none", runtime_reserve_gb=9.9914)
    res = sweep(_uniform(0), _uniform(1), MODEL, _options(workload=w, methods=("eplb",)))
    by = {(p.shape, p.redundant): p for p in res.points}
    assert by[("1x4", 0)].status == "no memory"
    assert by[("1x4", 0)].reason == "weights take 0.0 GB of the 0.0 GB usable (2 slots/GPU)"
    fits = by[("2x4", 0)]
    assert MODEL.non_routed_weight_bytes == 3e6 + 1000 * 8 + 2 * 1000 * 1000 * 2
    assert fits.feasible and fits.kv_tokens == pytest.approx((8.6e6 - 7.008e6 - 1.5e6) / 2000)
    assert fits.batch == 8
    assert res.best is fits


@pytest.mark.slow  # two spawned worker processes import torch
def test_sweep_writes_its_files_and_points_in_parallel_match(tmp_path: Path) -> None:
    one = sweep(_uniform(0), _uniform(1), MODEL, _options(), planned_from=["a.npz"],
                heldout_names=["b.npz"])
    two = sweep(_uniform(0), _uniform(1), MODEL, _options(jobs=2))
    assert [p.to_dict() | {"solve_s": 0} for p in one.points] == \
        [p.to_dict() | {"solve_s": 0} for p in two.points]
    paths = write_sweep(one, tmp_path / "out")
    assert sorted(p.name for p in paths) == sorted(
        ["sweep.md", "sweep.json", "tokens_per_s.png", "usd_per_million_tokens.png",
         "best-plan.json"])
    data = json.loads((tmp_path / "out" / "sweep.json").read_text())
    assert data["model"] == "toy" and data["gpu"] == "slow-hbm" and data["phase"] == "decode"
    assert data["planned_from"] == ["a.npz"] and data["heldout"] == ["b.npz"]
    best = data["points"][data["best"]]
    assert (best["nodes"], best["redundant_experts"], best["method"]) == (2, 0, "optimizer")
    assert set(best) >= {"imbalance_even", "cross_node_sends_per_token", "kv_cache_tokens_per_gpu",
                         "batch_per_gpu", "tokens_per_s", "usd_per_million_tokens"}
    assert (tmp_path / "out" / "tokens_per_s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    plan = Plan.load(tmp_path / "out" / "best-plan.json")
    assert plan.cluster.shape == "2x4x1" and plan.cluster.gpu == ""  # not a preset GPU
    md = (tmp_path / "out" / "sweep.md").read_text()
    assert md.startswith("# Deployment sweep\n")
    assert "| 2x4 | 4 | - | optimizer | skipped: 12 slots do not divide over 8 GPUs |" in md
    assert "**best: 2x4 optimizer with 0 redundant experts (1 slots/GPU)" in md
    text = format_sweep(one)
    assert text.splitlines()[0].startswith(
        "sweep of toy on slow-hbm (10 GB, $3.6/GPU-hour): 12 points (3 redundancy levels x 2 "
        "cluster shapes x 2 methods) in ")
    assert "2x4      4          -          optimizer  skipped: 12 slots do not divide over 8 GPUs" \
        in text


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"redundant": ()}, "Expected at least one value in redundant"),
        ({"nodes": (2, 2)}, "Expected distinct values in nodes"),
        ({"redundant": (-1,)}, "Expected every redundant value >= 0"),
        ({"methods": ("greedy",)}, "Unknown method 'greedy'"),
        ({"gpu": "tpu"}, "Unknown GPU 'tpu'"),
        ({"jobs": 0}, "Expected jobs >= 1"),
    ],
)
def test_bad_sweep_options(kwargs: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        _options(**kwargs)


def test_sweep_inputs_are_checked() -> None:
    with pytest.raises(InputError, match="Expected at least one held-out trace"):
        sweep(_uniform(0), [], MODEL, _options())
    other = ModelShape("other", 1000, 500, 2, 16, 1, 1, attention="gqa", num_attention_heads=4,
                       num_key_value_heads=2, head_dim=250, vocab_size=1000)
    with pytest.raises(InputError, match="model other has 16 experts but the traces have 8"):
        sweep(_uniform(0), _uniform(1), other, _options())
    bare = ModelShape("bare", 1000, 500, 2, 8, 1, 1)
    with pytest.raises(InputError, match="model bare has no attention shape"):
        sweep(_uniform(0), _uniform(1), bare, _options())


def test_token_level_held_out_traces_give_measured_sends() -> None:
    def tokens(seed: int) -> Trace:
        r = np.random.default_rng(seed)
        ids = np.stack([r.choice(8, size=2, replace=False) for _ in range(400)])
        return Trace(num_experts=8, topk_ids=ids[:, None, :], window=np.arange(400) // 200,
                     source_rank=r.integers(0, 8, size=400), num_hidden_layers=1, model="toy")

    res = sweep(tokens(0), tokens(1), MODEL, _options(redundant=(0,), nodes=(2,),
                                                      methods=("eplb",)))
    (p,) = res.points
    assert p.imbalance_rule == "static" and res.token_level
    assert p.sends_per_token is not None and 0 < p.sends_per_token <= 1
    assert p.copies_per_token is not None and p.estimated_sends_per_token is None
    assert p.step is not None and p.step.moe.source == "replay"
    assert p.step.moe.mean_sends_per_token == pytest.approx(p.sends_per_token)


def test_sglang_vec_is_a_method_of_the_sweep() -> None:
    res = sweep(_uniform(0), _uniform(1), MODEL, _options(methods=("eplb", "sglang-vec")))
    vec = [p for p in res.points if p.method == "sglang-vec"]
    assert len(vec) == len([p for p in res.points if p.method == "eplb"]) == 6
