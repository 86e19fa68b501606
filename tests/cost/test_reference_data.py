"""The reference comparison's inputs: DeepSeek's published statistics and the imbalance measured
on the real DeepSeek-V3 traces (skipped where the real-data folder is absent)."""

from __future__ import annotations

import glob

import numpy as np
import pytest
from shared_data import shared_path

from placement.cluster import PRESETS
from placement.cost import DEEPSEEK_IMBALANCE, deepseek_workload
from placement.errors import InputError
from placement.hardware import GPU_PRESETS, gpu_preset

DEEPSEEK = shared_path("traces", "deepseek_v3_sglang")


def test_operating_points_follow_the_published_statistics() -> None:
    pre = deepseek_workload("prefill")
    r = 608 / 168  # input tokens per output token
    assert pre.context == pytest.approx(4989 * r / (r + 0.5))
    assert round(pre.context) == 4383
    assert pre.cache_hit_rate == pytest.approx(0.5625)
    assert pre.batch == 16384
    dec = deepseek_workload("decode")
    assert (dec.context, dec.min_tokens_per_s_per_user) == (4989, 21.0)
    with pytest.raises(InputError, match="Expected phase in prefill, decode"):
        deepseek_workload("train")


def test_gpu_presets() -> None:
    assert list(GPU_PRESETS) == ["h800", "h100", "h200", "b200", "gb200"]
    h800 = gpu_preset("H800")
    assert (h800.memory_gb, h800.hbm_tbps, h800.fp8_tflops, h800.bf16_tflops) == \
        (80, 3.35, 1979, 989)
    assert h800.usd_per_gpu_hour == 2.0 and h800.network_gbps == 50
    assert gpu_preset("h200").memory_gb == 141 and gpu_preset("b200").tflops("fp4") == 9000
    with pytest.raises(InputError, match="GPU h800 has no FP4 tensor cores"):
        h800.tflops("fp4")
    with pytest.raises(InputError, match="Unknown GPU 'a100'; choose one of: h800, h100"):
        gpu_preset("a100")
    assert PRESETS["deepseek-decode"].gpu == "h800"


@pytest.mark.needs_shared("traces/deepseek_v3_sglang")
@pytest.mark.parametrize("phase", ["prefill", "decode"])
def test_reference_imbalance_is_what_eplb_reaches_held_out(phase: str) -> None:
    from placement.cluster import Cluster
    from placement.routing_traces import load_trace
    from placement.solver import SolveOptions, solve
    from placement.validation import replay

    shape = (4, 8, 9) if phase == "prefill" else (18, 8, 2)
    traces = [load_trace(f) for f in sorted(glob.glob(str(DEEPSEEK / f"{phase}_*.json")))]
    c = Cluster(*shape)
    held_out = []
    for i, t in enumerate(traces):
        plan = solve(t, c, SolveOptions(method="eplb")).plan
        held_out += [replay(plan, u, dispatch="even").mean_imbalance
                     for j, u in enumerate(traces) if j != i]
    assert float(np.mean(held_out)) == pytest.approx(DEEPSEEK_IMBALANCE[phase], abs=0.005)
