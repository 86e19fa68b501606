"""The cost model: from a replay or a deployment to seconds, tokens/s and $ per million tokens.

Two levels, one package:

* :mod:`placement.cost.moe`: the routed-expert part of every MoE layer from a replay's loads and
  traffic (:func:`estimate_cost`; an upper bound good for ratios between plans);
* :mod:`placement.cost.step`: the full serving step of one GPU, attention, dense parts, memory,
  KV cache and batch included (:func:`estimate_step`, or :func:`estimate_cost` with
  ``CostOptions(workload=...)``);
* :mod:`placement.cost.reference`: DeepSeek's published figures beside the full step
  (:func:`deepseek_reference_comparison`).

Model shapes (:mod:`placement.models`) and GPU presets (:mod:`placement.hardware`) are
re-exported here.
"""

from placement.cost.moe import (
    CostEstimate,
    CostOptions,
    estimate_cost,
    format_cost,
    uniform_traffic,
)
from placement.cost.reference import (
    DEEPSEEK_IMBALANCE,
    DEEPSEEK_PUBLISHED,
    DEEPSEEK_SERVICE,
    REFERENCE_EXPLANATION,
    ReferencePoint,
    deepseek_reference_comparison,
    deepseek_workload,
    fleet_nodes,
    format_reference_comparison,
)
from placement.cost.step import (
    DEFAULT_PREFILL_TOKENS,
    PHASES,
    STEP_OVERLAPS,
    Efficiency,
    MoeLoad,
    StepEstimate,
    Workload,
    estimate_step,
    format_step,
)
from placement.hardware import GPU, GPU_PRESETS, gpu_preset
from placement.models import MODEL_PRESETS, ModelShape, guess_model, model_preset
from placement.moe_time import OVERLAPS, layer_times

__all__ = [
    "DEEPSEEK_IMBALANCE",
    "DEEPSEEK_PUBLISHED",
    "DEEPSEEK_SERVICE",
    "DEFAULT_PREFILL_TOKENS",
    "GPU",
    "GPU_PRESETS",
    "MODEL_PRESETS",
    "OVERLAPS",
    "PHASES",
    "REFERENCE_EXPLANATION",
    "STEP_OVERLAPS",
    "CostEstimate",
    "CostOptions",
    "Efficiency",
    "ModelShape",
    "MoeLoad",
    "ReferencePoint",
    "StepEstimate",
    "Workload",
    "deepseek_reference_comparison",
    "deepseek_workload",
    "estimate_cost",
    "estimate_step",
    "fleet_nodes",
    "format_cost",
    "format_reference_comparison",
    "format_step",
    "gpu_preset",
    "guess_model",
    "layer_times",
    "model_preset",
    "uniform_traffic",
]
