"""DeepSeek's published serving figures beside what the cost model predicts for them.

DeepSeek's inference-system overview (open-infra-index, "Day 6", 2025-03-01) gives, for 24 hours
of DeepSeek-V3/R1 on H800 nodes: 608B input tokens of which 342B (56.3 %) hit the on-disk KV
cache, 168B output tokens at 20-22 tokens/s per request with an average KV-cache length of 4,989
tokens per output token, and about 73.7k input tokens/s (cache hits included) per prefill node and
14.8k output tokens/s per decode node; prefill runs EP32 on 4 nodes with 9 routed experts per GPU
(32 redundant), decode EP144 on 18 nodes with 2 per GPU (32 redundant), both with two
micro-batches overlapping compute and all-to-all.

The comparison puts the full-step model (:mod:`placement.cost.step`) at those operating points:

* prefill: prompts of ``P`` tokens with 56.3 % served from the cache, 16K new tokens per GPU per
  step (DeepSeek's prefill profile); ``P`` follows from the published totals: ``r = 608 / 168``
  input tokens per output token and ``P + D / 2 = 4,989`` with ``P = r D`` give
  ``P = 4,989 r / (r + 1/2)`` = 4,383;
* decode: 4,989 tokens of KV cache per sequence and as many sequences per GPU as keep 21 tokens/s
  per sequence (the middle of the published 20-22) and fit in memory;
* both: uniform routing with the busiest GPU at :data:`DEEPSEEK_IMBALANCE` times the mean, the
  imbalance DeepSeek's own EPLB reaches held-out on the DeepSeek-V3 SGLang traces at that shape
  (plan made on one workload, judged on each other workload of the phase, mean over pairs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from placement._util import format_si
from placement.cluster import PRESETS, Cluster
from placement.cost.moe import CostEstimate, CostOptions, uniform_traffic
from placement.cost.step import (
    Efficiency,
    MoeLoad,
    StepEstimate,
    Workload,
    estimate_step,
)
from placement.errors import InputError
from placement.models import MODEL_PRESETS, ModelShape
from placement.moe_time import layer_times

__all__ = [
    "DEEPSEEK_IMBALANCE",
    "DEEPSEEK_PUBLISHED",
    "DEEPSEEK_SERVICE",
    "REFERENCE_EXPLANATION",
    "ReferencePoint",
    "deepseek_reference_comparison",
    "deepseek_workload",
    "fleet_nodes",
    "format_reference_comparison",
]

DEEPSEEK_PUBLISHED: dict[str, tuple[str, float, str]] = {
    "prefill": ("deepseek-prefill", 73.7e3, "input"),
    "decode": ("deepseek-decode", 14.8e3, "output"),
}
"""Phase -> (cluster preset, published tokens/s per H800 node, which tokens). DeepSeek's
inference-system overview: prefill EP32 on 4 nodes (9 routed experts per GPU, 32 redundant),
decode EP144 on 18 nodes (2 per GPU), about 73.7k input / 14.8k output tokens/s per node."""

DEEPSEEK_SERVICE: dict[str, float] = {
    "input_tokens": 608e9,
    "cache_hit_tokens": 342e9,
    "output_tokens": 168e9,
    "kv_tokens_per_output_token": 4989.0,
    "tokens_per_s_per_user_low": 20.0,
    "tokens_per_s_per_user_high": 22.0,
    "prefill_tokens_per_gpu": 16384.0,
    "average_nodes": 226.75,
    "peak_nodes": 278.0,
}
"""The 24-hour statistics of DeepSeek's overview (and the prefill profile's batch)."""

DEEPSEEK_IMBALANCE: dict[str, float] = {"prefill": 1.31, "decode": 1.73}
"""Max/mean tokens per GPU of DeepSeek's EPLB (hierarchical, 8 groups) planned on one workload
of the real DeepSeek-V3 SGLang statistics (not shipped) and judged on each other workload of the same phase
(even split over replicas), mean over the pairs and the 58 MoE layers: 4 x 8 GPUs with 9 slots on
the 8 prefill workloads, 18 x 8 with 2 slots on the 4 decode workloads.
``benchmarks/bench_sweep.py --reference`` measures them again; a test checks them against the
data when it is there."""


def deepseek_workload(phase: str) -> Workload:
    """The operating point of DeepSeek's published ``phase`` (see the module docstring)."""
    s = DEEPSEEK_SERVICE
    if phase == "prefill":
        r = s["input_tokens"] / s["output_tokens"]
        prompt = s["kv_tokens_per_output_token"] * r / (r + 0.5)
        return Workload("prefill", context=prompt, batch=int(s["prefill_tokens_per_gpu"]),
                        cache_hit_rate=s["cache_hit_tokens"] / s["input_tokens"])
    if phase == "decode":
        speed = (s["tokens_per_s_per_user_low"] + s["tokens_per_s_per_user_high"]) / 2
        return Workload("decode", context=s["kv_tokens_per_output_token"],
                        min_tokens_per_s_per_user=speed)
    raise InputError(f"Expected phase in {', '.join(DEEPSEEK_PUBLISHED)}, got {phase!r}.")


@dataclass(frozen=True)
class ReferencePoint:
    """DeepSeek's published throughput of one phase beside the model's prediction.

    Attributes:
        phase: ``"prefill"`` or ``"decode"``.
        cluster: the deployment (preset ``deepseek-prefill`` / ``deepseek-decode``).
        published_per_node: published tokens/s per node (input for prefill, output for decode).
        estimate: the full-step prediction (its ``step`` holds the pieces); ``estimate``'s
            tokens/s are the step's.
        moe_only: the routed-expert part alone (the earlier bound, for contrast).
        sends_per_token: cross-node sends per token assumed (uniform routing).
        imbalance: max/mean tokens per GPU assumed.
    """

    phase: str
    cluster: Cluster
    published_per_node: float
    estimate: CostEstimate
    moe_only: CostEstimate
    sends_per_token: float
    imbalance: float

    @property
    def step(self) -> StepEstimate:
        """The full step."""
        assert self.estimate.step is not None
        return self.estimate.step

    @property
    def ratio(self) -> float:
        """Predicted / published tokens/s per node."""
        return self.estimate.tokens_per_s_per_node / self.published_per_node

    @property
    def moe_only_ratio(self) -> float:
        """The routed-expert bound / published tokens/s per node."""
        return self.moe_only.tokens_per_s_per_node / self.published_per_node


def _moe_only(cluster: Cluster, model: ModelShape, imbalance: float,
              options: CostOptions, efficiency: Efficiency | None = None) -> CostEstimate:
    G = cluster.num_gpus
    T = 1000.0 * G  # any batch: every figure is linear in it
    loads = np.full((1, G), T * model.top_k / G)
    loads[0, 0] *= imbalance
    traffic, _ = uniform_traffic(cluster, T, model.top_k)
    compute, dispatch, combine, layer = layer_times(
        loads, cluster, model, traffic=traffic, overlap=options.overlap,
        efficiency=options.efficiency,
        figures=cluster.figures(model.matmul_precision, efficiency),
    )
    price = cluster.price() if options.usd_per_gpu_hour is None \
        else options.usd_per_gpu_hour
    return CostEstimate(
        model=model, cluster=cluster, options=options, usd_per_gpu_hour=float(price),
        layer_ids=np.zeros(1, dtype=np.int64), tokens=np.array([T]), compute_s=compute,
        dispatch_s=dispatch, combine_s=combine, layer_s=layer,
    )


def deepseek_reference_comparison(
    model: ModelShape | None = None,
    *,
    imbalance: float | dict[str, float] | None = None,
    options: CostOptions | None = None,
    efficiency: Efficiency | None = None,
) -> tuple[ReferencePoint, ...]:
    """The model's prediction for DeepSeek's own deployments beside their published figures.

    Args:
        model: the model (default DeepSeek-V3).
        imbalance: max/mean tokens per GPU, one for both phases or one per phase (default
            :data:`DEEPSEEK_IMBALANCE`).
        options: the overlap (``two-batch`` as DeepSeek) and price; ``options.efficiency``
            scales the routed-expert bound only.
        efficiency: kernel efficiencies of the full step (default
            :class:`~placement.cost.step.Efficiency`).
    """
    model = model or MODEL_PRESETS["deepseek-v3"]
    options = options or CostOptions()
    if imbalance is None:
        imb = dict(DEEPSEEK_IMBALANCE)
    elif isinstance(imbalance, dict):
        imb = {p: float(imbalance.get(p, DEEPSEEK_IMBALANCE[p])) for p in DEEPSEEK_PUBLISHED}
    else:
        imb = {p: float(imbalance) for p in DEEPSEEK_PUBLISHED}
    for v in imb.values():
        if not (math.isfinite(v) and v >= 1):
            raise InputError(f"Expected imbalance >= 1, got {v}.")
    out = []
    for phase, (preset, published, _which) in DEEPSEEK_PUBLISHED.items():
        c = PRESETS[preset]
        w = deepseek_workload(phase)
        if options.overlap != w.overlap:
            w = Workload(w.phase, w.context, w.batch, w.min_tokens_per_s_per_user,
                         w.cache_hit_rate, options.overlap, w.runtime_reserve_gb)
        moe = MoeLoad.uniform(c, model.top_k, imb[phase])
        step = estimate_step(model, c, w, gpu=c.gpu or "h800", efficiency=efficiency, moe=moe,
                             usd_per_gpu_hour=options.usd_per_gpu_hour)
        bound = _moe_only(c, model, imb[phase], options, efficiency)
        full = CostEstimate(
            model=model, cluster=c, options=options, usd_per_gpu_hour=step.usd_per_gpu_hour,
            layer_ids=bound.layer_ids, tokens=bound.tokens, compute_s=bound.compute_s,
            dispatch_s=bound.dispatch_s, combine_s=bound.combine_s, layer_s=bound.layer_s,
            step=step,
        )
        out.append(ReferencePoint(phase, c, published, full, bound, moe.mean_sends_per_token,
                                  imb[phase]))
    return tuple(out)


REFERENCE_EXPLANATION = (
    "The prediction is the full serving step at DeepSeek's published operating point: "
    "attention (MLA), dense layers, shared and routed experts as rooflines at the shares of "
    "peak DeepSeek's own kernels publish (DeepGEMM, FlashMLA, DeepEP), the all-to-all under "
    "DeepSeek's two-micro-batch schedules, the KV cache in what memory is left, and the "
    "busiest GPU at EPLB's held-out imbalance on real DeepSeek-V3 traces. The published figures "
    "are 24-hour averages of a live service, not peak capacity: a prediction above them means "
    "the service ran below what the hardware allows at that operating point. The routed-expert "
    "bound (the earlier model) is shown for contrast only."
)


def fleet_nodes(points: tuple[ReferencePoint, ...]) -> dict[str, float]:
    """Nodes the published 24 hours of traffic need at the predicted per-node throughputs:
    ``tokens / (tokens/s per node x 86,400 s)`` per phase (``prefill`` from the 608B input
    tokens, ``decode`` from the 168B output tokens), and their ``total``, to hold beside the
    226.75 nodes DeepSeek reports on average (an independent published figure)."""
    s = DEEPSEEK_SERVICE
    tokens = {"prefill": s["input_tokens"], "decode": s["output_tokens"]}
    out = {p.phase: tokens[p.phase] / (p.estimate.tokens_per_s_per_node * 86400.0)
           for p in points if p.estimate.tokens_per_s_per_node > 0}
    out["total"] = sum(out.values())
    return out




def format_reference_comparison(points: tuple[ReferencePoint, ...]) -> str:
    """Markdown: published vs predicted tokens/s per node, the operating points, every
    assumption, and what the gap means."""
    lines = [
        "| phase | deployment | published tokens/s per node | predicted (full step) | "
        "predicted / published | batch per GPU | step | largest piece | routed-expert bound "
        "(earlier model) |",
        "|---|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for p in points:
        which = DEEPSEEK_PUBLISHED[p.phase][2]
        s = p.step
        unit = "seq" if p.phase == "decode" else "tok"
        c = p.cluster
        lines.append(
            f"| {p.phase} | {c.name} ({c.num_nodes} x {c.gpus_per_node} "
            f"{(c.gpu or 'h800').upper()}, {c.slots_per_gpu} slots/GPU) | "
            f"{format_si(p.published_per_node)} {which} | {format_si(p.estimate.tokens_per_s_per_node)} | "
            f"{p.ratio:.2f} | {s.batch} {unit} ({s.batch_limit}) | {s.step_s * 1e3:.1f} ms | "
            f"{s.dominant} | {format_si(p.moe_only.tokens_per_s_per_node)} ({p.moe_only_ratio:.2f}) |"
        )
    if points:
        lines.append("")
        lines.append("Operating points and assumptions:")
        lines.append("")
        for p in points:
            s = p.step
            lines.append(f"- {p.phase}: {s.workload.summary()}; uniform routing, "
                         f"{p.sends_per_token:.2f} cross-node sends per token, busiest GPU at "
                         f"imbalance {p.imbalance:g}.")
            mem = s.memory
            lines.append(
                f"  memory per GPU: {mem['non-routed weights']:.1f} GB non-routed weights + "
                f"{mem['routed experts']:.1f} GB routed experts + {mem['runtime reserve']:.1f} GB "
                f"runtime, {mem['KV cache']:.1f} GB KV cache ({format_si(mem['kv_tokens'])} tokens); "
                "pieces (ms per step, unoverlapped): "
                + ", ".join(f"{k} {v * 1e3:.1f}" for k, v in s.parts.items()) + "."
            )
        eff = points[0].step.efficiency
        g = points[0].step.gpu
        lines.append(f"- hardware: {g.summary()}.")
        lines.append("- kernel efficiencies: " + "; ".join(eff.lines()) + ".")
        m = points[0].step.model
        lines.append(
            f"- model: {m.name}, {m.attention.upper()} attention ({m.num_attention_heads} heads, "
            f"KV cache {m.kv_bytes_per_token / 1e3:.1f} kB per token in BF16), "
            f"{m.matmul_precision.upper()} GEMMs, FP8 dispatch and BF16 combine; no speculative "
            "decoding (MTP)."
        )
    if {p.phase for p in points} == set(DEEPSEEK_PUBLISHED):
        f = fleet_nodes(points)
        svc = DEEPSEEK_SERVICE
        lines.append(
            f"- fleet check: at these predictions the published 24 hours (608B input, 168B output "
            f"tokens) need {f['prefill']:.1f} prefill + {f['decode']:.1f} decode = "
            f"{f['total']:.1f} nodes on average; DeepSeek reports {svc['average_nodes']:g} "
            f"(peak {svc['peak_nodes']:g}), so the fleet ran at about "
            f"{f['total'] / svc['average_nodes']:.0%} of the predicted capacity."
        )
    lines.append("")
    lines.append(REFERENCE_EXPLANATION)
    return "\n".join(lines)
