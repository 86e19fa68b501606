"""A simple cost model of the routed-expert part of an MoE layer: time, tokens/s and dollars.

For every replayed layer, from the GPU loads and the all-to-all traffic a replay measured
(:class:`~placement.validation.ValidationResult`), the cluster's link bandwidths and GPU
throughput (:class:`~placement.cluster.Cluster`) and the model's shape (:class:`ModelShape`)::

    compute  = max_g load[g] * 6 * hidden * moe_intermediate / (gpu_tflops * 1e12 * efficiency)
    dispatch = max_g max(intra_send[g] * hidden * b_dispatch / (nvlink_gbps * 1e9),
                         net_send[g]   * hidden * b_dispatch / (network_gbps * 1e9))
    combine  = max_g max(intra_recv[g] * hidden * b_combine / (nvlink_gbps * 1e9),
                         net_recv[g]   * hidden * b_combine / (network_gbps * 1e9))
    layer    = compute + dispatch + combine            (overlap "none")
             = max(compute, dispatch + combine)        (overlap "two-batch": DeepSeek's two
                                                        micro-batches hide one behind the other)

``load[g]`` counts expert-token assignments on GPU g (each costs three GEMMs, gate, up and down,
of ``2 * hidden * moe_intermediate`` FLOPs); ``intra_send[g]`` the token copies GPU g sends to
other GPUs of its node; ``net_send[g]`` its cross-node sends (one per token and remote node,
DeepEP normal mode) and ``*_recv[g]`` what it receives, which it sends back in combine. NVLink
and the network work at the same time, so a GPU's phase takes the longer of the two.

Then, with ``T[l]`` tokens in layer ``l`` and the model's ``num_moe_layers``::

    seconds per token = mean_l(layer[l] / T[l]) * num_moe_layers
    tokens/s          = 1 / seconds per token                  (the whole cluster)
    $ per 1M tokens   = num_gpus * usd_per_gpu_hour / 3600 / tokens_per_s * 1e6

What it leaves out: attention and MLA, the KV cache, dense layers and shared experts, launch
latencies and scheduling. It is an upper bound on throughput set by the MoE part alone: use it to
compare plans (ratios), not as a forecast of a deployment's absolute figures (see
:func:`deepseek_reference_comparison`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from placement.cluster import PRESETS, Cluster
from placement.errors import InputError
from placement.models import MODEL_PRESETS, ModelShape, guess_model, model_preset
from placement.moe_time import OVERLAPS, layer_times
from placement.validation import ValidationResult

__all__ = [
    "DEEPSEEK_PUBLISHED",
    "MODEL_PRESETS",
    "OVERLAPS",
    "CostEstimate",
    "CostOptions",
    "ModelShape",
    "ReferencePoint",
    "deepseek_reference_comparison",
    "estimate_cost",
    "format_cost",
    "format_reference_comparison",
    "guess_model",
    "layer_times",
    "model_preset",
    "uniform_traffic",
]

@dataclass(frozen=True)
class CostOptions:
    """Settings of :func:`estimate_cost`.

    Args:
        overlap: ``"two-batch"`` (default: DeepSeek's dual micro-batch overlap) or ``"none"``.
        efficiency: share of ``cluster.gpu_tflops`` the expert GEMMs reach, in (0, 1].
        usd_per_gpu_hour: price per GPU-hour (default: the cluster's).
    """

    overlap: str = "two-batch"
    efficiency: float = 1.0
    usd_per_gpu_hour: float | None = None

    def __post_init__(self) -> None:
        if self.overlap not in OVERLAPS:
            raise InputError(f"Expected overlap in {', '.join(OVERLAPS)}, got {self.overlap!r}.")
        if not (math.isfinite(self.efficiency) and 0 < self.efficiency <= 1):
            raise InputError(f"Expected efficiency in (0, 1], got {self.efficiency}.")
        if self.usd_per_gpu_hour is not None and not (
            math.isfinite(self.usd_per_gpu_hour) and self.usd_per_gpu_hour >= 0
        ):
            raise InputError(f"Expected usd_per_gpu_hour >= 0, got {self.usd_per_gpu_hour}.")


@dataclass(frozen=True)
class CostEstimate:
    """Estimated time of the routed-expert part per layer, and what it means per token.

    Attributes:
        model, cluster: what was estimated.
        options: the settings used.
        usd_per_gpu_hour: the price used.
        layer_ids: ``[L]``.
        tokens: ``[L]`` tokens of the replayed batch in every layer.
        compute_s, dispatch_s, combine_s, layer_s: ``[L]`` seconds for the batch; dispatch and
            combine are None when traffic is unknown (aggregated trace: compute only).
    """

    model: ModelShape
    cluster: Cluster
    options: CostOptions
    usd_per_gpu_hour: float
    layer_ids: np.ndarray
    tokens: np.ndarray
    compute_s: np.ndarray
    dispatch_s: np.ndarray | None
    combine_s: np.ndarray | None
    layer_s: np.ndarray

    @property
    def compute_only(self) -> bool:
        """True when traffic was unknown and only expert compute is counted."""
        return self.dispatch_s is None

    @property
    def seconds_per_token(self) -> float:
        """``mean_l(layer_s / tokens) * num_moe_layers``: one token through every MoE layer."""
        ok = self.tokens > 0
        if not ok.any():
            return float("nan")
        return float(np.mean(self.layer_s[ok] / self.tokens[ok])) * self.model.num_moe_layers

    @property
    def tokens_per_s(self) -> float:
        """Tokens per second of the whole cluster (MoE part only: an upper bound)."""
        s = self.seconds_per_token
        return 1.0 / s if s > 0 else float("nan")

    @property
    def tokens_per_s_per_node(self) -> float:
        """:attr:`tokens_per_s` divided by the number of nodes."""
        return self.tokens_per_s / self.cluster.num_nodes

    @property
    def usd_per_million_tokens(self) -> float:
        """``num_gpus * usd_per_gpu_hour / 3600 / tokens_per_s * 1e6``."""
        return self.cluster.num_gpus * self.usd_per_gpu_hour / 3600.0 / self.tokens_per_s * 1e6

    @property
    def communication_share(self) -> float | None:
        """Share of the layer time that communication takes when nothing overlaps."""
        if self.dispatch_s is None or self.combine_s is None:
            return None
        comm = float((self.dispatch_s + self.combine_s).sum())
        total = comm + float(self.compute_s.sum())
        return comm / total if total > 0 else None

    def summary(self) -> str:
        """A readable summary (see :func:`format_cost`)."""
        return format_cost(self)


def estimate_cost(
    result: ValidationResult, model: ModelShape, options: CostOptions | None = None
) -> CostEstimate:
    """Cost of a replay's layers (see the module docstring for the formulas).

    Tokens per layer are the replay's; for an aggregated trace without a known top-k they are
    the assignments divided by ``model.top_k``. Traffic is counted when the replay measured it.
    """
    options = options or CostOptions()
    c = result.cluster
    loads = result.gpu_loads
    if result.tokens is not None:
        tokens = np.asarray(result.tokens, dtype=np.float64)
    else:
        tokens = loads.sum(axis=1) / model.top_k
    compute, dispatch, combine, layer = layer_times(
        loads, c, model, traffic=result.per_gpu_traffic(), overlap=options.overlap,
        efficiency=options.efficiency,
    )
    price = c.usd_per_gpu_hour if options.usd_per_gpu_hour is None else options.usd_per_gpu_hour
    return CostEstimate(
        model=model, cluster=c, options=options, usd_per_gpu_hour=float(price),
        layer_ids=np.asarray(result.layer_ids), tokens=tokens, compute_s=compute,
        dispatch_s=dispatch, combine_s=combine, layer_s=layer,
    )


def _si(x: float) -> str:
    if not math.isfinite(x):
        return "n/a"
    for unit, scale in (("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.1f}{unit}"
    return f"{x:.0f}"


def format_cost(est: CostEstimate) -> str:
    """Text summary of a cost estimate."""
    lines = [
        f"model {est.model.name} on {est.cluster.summary()}",
        f"overlap {est.options.overlap}, GEMM efficiency {est.options.efficiency:g} of "
        f"{est.cluster.gpu_tflops:g} TFLOP/s, NVLink {est.cluster.nvlink_gbps:g} GB/s, network "
        f"{est.cluster.network_gbps:g} GB/s per GPU",
        f"estimated tokens/s (MoE part only, upper bound): {_si(est.tokens_per_s)} for the "
        f"cluster, {_si(est.tokens_per_s_per_node)} per node",
        f"estimated $ per million tokens: {est.usd_per_million_tokens:.4f} at "
        f"${est.usd_per_gpu_hour:g} per GPU-hour",
    ]
    share = est.communication_share
    if share is None:
        lines.append("communication: not counted (needs a token-level trace): compute only")
    else:
        lines.append(f"communication share of layer time without overlap: {share:.1%}")
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------
# DeepSeek's published figures
# -------------------------------------------------------------------------------------------
DEEPSEEK_PUBLISHED: dict[str, tuple[str, float, str]] = {
    "prefill": ("deepseek-prefill", 73.7e3, "input"),
    "decode": ("deepseek-decode", 14.8e3, "output"),
}
"""Phase -> (cluster preset, published tokens/s per H800 node, which tokens). DeepSeek's
inference-system overview: prefill EP32 on 4 nodes (9 routed experts per GPU, 32 redundant),
decode EP144 on 18 nodes (2 per GPU), about 73.7k input / 14.8k output tokens/s per node."""


def uniform_traffic(
    cluster: Cluster, tokens: float, top_k: int
) -> tuple[dict[str, np.ndarray], float]:
    """Per-GPU traffic ``[1, G]`` when every token picks its k experts uniformly at random.

    A token's k experts land on node n with probability ``1 - (1 - 1/N)^k`` (k draws with
    replacement, experts spread evenly over N nodes), so it crosses to
    ``s = (N - 1) * (1 - (1 - 1/N)^k)`` remote nodes; it sends ``k * (gpn - 1) / G`` copies to
    other GPUs of its node. Sources are spread evenly (``tokens / G`` per GPU), so every GPU
    receives what it sends. Returns ``(traffic, s)``.
    """
    N, G, gpn = cluster.num_nodes, cluster.num_gpus, cluster.gpus_per_node
    s = (N - 1) * (1.0 - (1.0 - 1.0 / N) ** top_k)
    intra = top_k * (gpn - 1) / G
    per = tokens / G
    one = np.ones((1, G))
    return {
        "intra_send": one * per * intra, "intra_recv": one * per * intra,
        "net_send": one * per * s, "net_recv": one * per * s,
    }, s


@dataclass(frozen=True)
class ReferencePoint:
    """DeepSeek's published throughput of one phase beside the model's estimate.

    Attributes:
        phase: ``"prefill"`` or ``"decode"``.
        cluster: the deployment (preset ``deepseek-prefill`` / ``deepseek-decode``).
        published_per_node: published tokens/s per node (input for prefill, output for decode).
        estimate: the model's estimate for uniform routing with the given imbalance.
        compute_only: the same without communication.
        sends_per_token: cross-node sends per token assumed (uniform routing).
        imbalance: max/mean tokens per GPU assumed.
    """

    phase: str
    cluster: Cluster
    published_per_node: float
    estimate: CostEstimate
    compute_only: CostEstimate
    sends_per_token: float
    imbalance: float

    @property
    def ratio(self) -> float:
        """Estimated / published tokens/s per node (> 1: the model is an upper bound)."""
        return self.estimate.tokens_per_s_per_node / self.published_per_node


def _synthetic_estimate(
    cluster: Cluster, model: ModelShape, imbalance: float, options: CostOptions, with_comm: bool
) -> tuple[CostEstimate, float]:
    G = cluster.num_gpus
    T = 1000.0 * G  # any batch: every figure is linear in it
    loads = np.full((1, G), T * model.top_k / G)
    loads[0, 0] *= imbalance
    traffic, s = uniform_traffic(cluster, T, model.top_k)
    compute, dispatch, combine, layer = layer_times(
        loads, cluster, model, traffic=traffic if with_comm else None,
        overlap=options.overlap, efficiency=options.efficiency,
    )
    price = cluster.usd_per_gpu_hour if options.usd_per_gpu_hour is None \
        else options.usd_per_gpu_hour
    est = CostEstimate(
        model=model, cluster=cluster, options=options, usd_per_gpu_hour=float(price),
        layer_ids=np.zeros(1, dtype=np.int64), tokens=np.array([T]), compute_s=compute,
        dispatch_s=dispatch, combine_s=combine, layer_s=layer,
    )
    return est, s


def deepseek_reference_comparison(
    model: ModelShape | None = None,
    *,
    imbalance: float = 1.0,
    options: CostOptions | None = None,
) -> tuple[ReferencePoint, ...]:
    """The model's estimate for DeepSeek's own deployments beside their published figures.

    Assumptions: DeepSeek-V3's shape, the ``deepseek-prefill`` and ``deepseek-decode`` cluster
    presets, uniform routing (:func:`uniform_traffic`) and ``imbalance`` max/mean tokens per GPU.
    The estimate counts routed-expert compute and the all-to-all only, so it should come out
    ABOVE the published figures; how far above shows how much of a real step the rest (attention,
    MLA, KV cache, dense layers, scheduling; for decode, memory-bound small batches) takes.
    """
    model = model or MODEL_PRESETS["deepseek-v3"]
    options = options or CostOptions()
    if not (math.isfinite(imbalance) and imbalance >= 1):
        raise InputError(f"Expected imbalance >= 1, got {imbalance}.")
    out = []
    for phase, (preset, published, _which) in DEEPSEEK_PUBLISHED.items():
        c = PRESETS[preset]
        est, s = _synthetic_estimate(c, model, imbalance, options, True)
        comp, _ = _synthetic_estimate(c, model, imbalance, options, False)
        out.append(ReferencePoint(phase, c, published, est, comp, s, imbalance))
    return tuple(out)


REFERENCE_EXPLANATION = (
    "The cost model counts only the routed experts' GEMMs and the dispatch/combine all-to-all; "
    "it leaves out attention and MLA, the KV cache, dense layers and shared experts, kernel "
    "launches and scheduling, and (in decode) the memory-bound small batches. Its tokens/s are "
    "an upper bound set by the MoE part, so they sit above DeepSeek's published figures; use "
    "them for RATIOS between plans on the same cluster (a plan that cuts the slowest GPU's load "
    "or the cross-node bytes by x % cuts this bound's time by up to x %), not as a forecast."
)


def format_reference_comparison(points: tuple[ReferencePoint, ...]) -> str:
    """Markdown: a table of published vs estimated tokens/s per node, and what the gap means."""
    lines = [
        "| phase | cluster | published tokens/s per node | estimated (MoE part) | "
        "estimated, compute only | estimate / published | cross-node sends per token |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for p in points:
        which = DEEPSEEK_PUBLISHED[p.phase][2]
        lines.append(
            f"| {p.phase} | {p.cluster.name} ({p.cluster.num_nodes} x {p.cluster.gpus_per_node} "
            f"GPUs, {p.cluster.slots_per_gpu} slots/GPU) | {_si(p.published_per_node)} {which} | "
            f"{_si(p.estimate.tokens_per_s_per_node)} | "
            f"{_si(p.compute_only.tokens_per_s_per_node)} | {p.ratio:.2f} | "
            f"{p.sends_per_token:.2f} |"
        )
    opts = points[0].estimate.options if points else CostOptions()
    c = points[0].cluster if points else None
    if c is not None:
        lines.append("")
        lines.append(
            f"Assumed: DeepSeek-V3 shape, uniform routing, imbalance {points[0].imbalance:g}, "
            f"overlap {opts.overlap}, {c.gpu_tflops:g} TFLOP/s per GPU x efficiency "
            f"{opts.efficiency:g}, NVLink {c.nvlink_gbps:g} GB/s, network {c.network_gbps:g} "
            "GB/s per GPU, FP8 dispatch and BF16 combine."
        )
    lines.append("")
    lines.append(REFERENCE_EXPLANATION)
    return "\n".join(lines)
