"""One cluster, one set of hardware figures: the solver's predicted time and the cost model agree.

For every preset cluster the figures the solver's time objective asks for (every
:meth:`Cluster.figures` call during a solve), the ones the plan records, the full step's and the
routed-expert cost's are the same, and a plan's MoE layer time is the same number from the
solver's side (the plan's ``predicted_moe_layer_time``) and the cost model's side
(:func:`estimate_cost` of a replay of the plan on its own trace). Settings the user gives
override the GPU's on both sides.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from placement.cluster import PRESETS, Cluster
from placement.cost import CostOptions, MoeLoad, Workload, estimate_cost, estimate_step
from placement.hardware import DEFAULT_GPU, Efficiency, HardwareFigures, effective_figures
from placement.models import model_preset
from placement.plan import Plan
from placement.routing_traces import synthesize
from placement.routing_traces.trace import Trace
from placement.solver import SolveOptions, solve
from placement.validation import replay

MODEL = model_preset("deepseek-v3")


@pytest.fixture(scope="module")
def trace() -> Trace:
    # one window: the solver's in-sample figures pool the same tokens a replay sees
    return synthesize("deepseek-v3", num_tokens=1024, num_windows=1, num_source_ranks=32,
                      num_layers=2, seed=5)


def _spy(monkeypatch: pytest.MonkeyPatch) -> list[HardwareFigures]:
    seen: list[HardwareFigures] = []
    real = Cluster.figures

    def figures(self: Cluster, *args: object, **kwargs: object) -> HardwareFigures:
        out = real(self, *args, **kwargs)  # type: ignore[arg-type]
        seen.append(out)
        return out

    monkeypatch.setattr(Cluster, "figures", figures)
    return seen


def _solve(trace: Trace, cluster: Cluster) -> Plan:
    opts = SolveOptions(jobs=1, model="deepseek-v3", time_limit=600.0)
    return solve(trace, cluster, opts).plan


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_the_solver_and_the_cost_model_use_the_same_figures(
        name: str, trace: Trace, monkeypatch: pytest.MonkeyPatch) -> None:
    cluster = PRESETS[name]
    # a preset names its GPU only: no number of its own
    assert (cluster.gpu_tflops, cluster.nvlink_gbps, cluster.network_gbps,
            cluster.usd_per_gpu_hour) == (None, None, None, None)
    expected = effective_figures(cluster.gpu, MODEL.matmul_precision, Efficiency())
    seen = _spy(monkeypatch)
    plan = _solve(trace, cluster)
    # 1. every figure the solve asked for (objective, evaluation) is the GPU's at FP8
    assert seen and all(f == expected for f in seen)
    assert plan.settings["hardware"]["tflops"] == pytest.approx(expected.tflops)
    # 2. the full step and the routed-expert cost use the same ones
    step = estimate_step(MODEL, cluster, Workload("prefill", context=4096),
                         moe=MoeLoad.uniform(cluster, MODEL.top_k))
    assert step.figures == expected
    res = replay(plan, trace)
    est = estimate_cost(res, MODEL)
    assert est.figures == expected and est.usd_per_gpu_hour == expected.usd_per_gpu_hour
    # 3. the same MoE layer time for the plan from both paths
    solver_time = np.asarray(plan.objectives["predicted_moe_layer_time"])
    np.testing.assert_allclose(est.layer_s, solver_time, rtol=1e-9)


def test_the_old_fixed_figures_are_gone() -> None:
    # H800 at FP8: DeepGEMM's 0.6 of 1979 TFLOP/s, not the old 400
    f = PRESETS["deepseek-prefill"].figures("fp8")
    assert (round(f.tflops, 1), f.nvlink_gbps, f.network_gbps) == (1187.4, 160.0, 40.0)
    gb = PRESETS["gb200-nvl72"].figures("fp8")
    assert (gb.tflops, gb.nvlink_gbps, gb.network_gbps) == (3000.0, 720.0, 40.0)
    assert Cluster(1, 8, 2).figures().gpu == DEFAULT_GPU == "h800"


def test_settings_the_user_gives_override_on_both_sides(trace: Trace,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    base = PRESETS["deepseek-prefill"]
    slow = dataclasses.replace(base, network_gbps=5.0, gpu_tflops=300.0)
    f = slow.figures(MODEL.matmul_precision)
    assert (f.network_gbps, f.tflops, f.nvlink_gbps) == (5.0, 300.0, 160.0)
    assert f.explicit == ("tflops", "network_gbps")
    assert f.summary() == ("h800 300 TFLOP/s fp8, NVLink 160 GB/s, network 5 GB/s (gpu_tflops, "
                           "network_gbps set by the cluster; the rest: h800 peaks x DeepSeek's "
                           "kernel shares: NVLink 0.8)")
    seen = _spy(monkeypatch)
    plan = _solve(trace, slow)
    assert seen and all(x == f for x in seen)
    est = estimate_cost(replay(plan, trace), MODEL)
    np.testing.assert_allclose(est.layer_s, plan.objectives["predicted_moe_layer_time"],
                               rtol=1e-9)
    fast = estimate_cost(replay(dataclasses.replace(plan, cluster=base), trace), MODEL)
    assert (est.layer_s > fast.layer_s).all()  # a slower network, a slower layer
    step = estimate_step(MODEL, slow, Workload("prefill", context=4096),
                         moe=MoeLoad.uniform(slow, MODEL.top_k))
    assert step.figures == f
    # a price set by the cluster is the cost model's price
    priced = dataclasses.replace(base, usd_per_gpu_hour=9.0)
    assert priced.price() == 9.0 and estimate_cost(replay(plan, trace), MODEL,
                                                   CostOptions()).usd_per_gpu_hour == 2.0
    assert estimate_step(MODEL, priced, Workload("decode")).usd_per_gpu_hour == 9.0


def test_old_plan_files_keep_their_figures_as_settings() -> None:
    old = {"num_nodes": 4, "gpus_per_node": 8, "slots_per_gpu": 9, "nvlink_gbps": 160.0,
           "network_gbps": 40.0, "gpu_tflops": 400.0, "usd_per_gpu_hour": 2.0, "gpu": "h800"}
    c = Cluster.from_dict(old)
    f = c.figures("fp8")
    assert (f.tflops, f.nvlink_gbps, f.network_gbps, c.price()) == (400.0, 160.0, 40.0, 2.0)
    assert set(f.explicit) == {"tflops", "nvlink_gbps", "network_gbps", "usd_per_gpu_hour"}
    assert c.to_dict() == old
    # a new cluster writes no figure it did not set
    assert "gpu_tflops" not in PRESETS["deepseek-prefill"].to_dict()
    # placement.cost.Efficiency is still the one Efficiency
    from placement.cost import Efficiency as CostEfficiency

    assert CostEfficiency is Efficiency
