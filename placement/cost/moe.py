"""The cost of a replay: the routed-expert part by default, the full serving step on request.

By default (``CostOptions.workload`` None) :func:`estimate_cost` costs the routed-expert part of
every MoE layer alone, as below. With a :class:`~placement.cost.step.Workload` (and the GPU from
``CostOptions.gpu`` or the cluster) it costs the full serving step instead
(:func:`~placement.cost.step.estimate_step`: attention, dense parts, memory, batch), with the
replay's measured imbalance and traffic in the MoE layers.

The routed-expert part:

For every replayed layer, from the GPU loads and the all-to-all traffic a replay measured
(:class:`~placement.validation.ValidationResult`), the cluster's hardware figures
(:meth:`~placement.cluster.Cluster.figures` at the model's precision and the full step's kernel
shares: the numbers the solver's predicted time uses) and the model's shape
(:class:`ModelShape`)::

    compute  = max_g load[g] * 6 * hidden * moe_intermediate / (tflops * 1e12 * efficiency)
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

What that part leaves out: attention and MLA, the KV cache, dense layers and shared experts,
launch latencies and scheduling. It is an upper bound on throughput set by the MoE part alone:
use it to compare plans (ratios); the full step (``workload``) is the forecast (see
:func:`~placement.cost.reference.deepseek_reference_comparison`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from placement._util import format_si
from placement.cluster import Cluster
from placement.cost.step import Efficiency, MoeLoad, StepEstimate, Workload, estimate_step
from placement.errors import InputError
from placement.hardware import HardwareFigures, gpu_preset
from placement.models import ModelShape
from placement.moe_time import OVERLAPS, layer_times
from placement.validation import ValidationResult

__all__ = [
    "CostEstimate",
    "CostOptions",
    "estimate_cost",
    "format_cost",
    "uniform_traffic",
]

@dataclass(frozen=True)
class CostOptions:
    """Settings of :func:`estimate_cost`.

    Args:
        overlap: ``"two-batch"`` (default: DeepSeek's dual micro-batch overlap) or ``"none"``.
        efficiency: a further share of the cluster's GEMM TFLOP/s (already the GPU's peak x
            the GEMM share of ``step_efficiency``), in (0, 1] (the routed-expert part only;
            1: the figures as they are).
        usd_per_gpu_hour: price per GPU-hour (default: the cluster's, or the GPU's for the full
            step).
        workload: cost the full serving step of this phase and context instead of the
            routed-expert part (its ``overlap`` is used then); None: the routed-expert part.
        gpu: GPU preset name for the full step (default: ``cluster.gpu``).
        step_efficiency: kernel efficiencies (default
            :class:`~placement.hardware.Efficiency`): of the full step, and the shares of the
            hardware figures of the routed-expert part.
    """

    overlap: str = "two-batch"
    efficiency: float = 1.0
    usd_per_gpu_hour: float | None = None
    workload: Workload | None = None
    gpu: str | None = None
    step_efficiency: Efficiency | None = None

    def __post_init__(self) -> None:
        if self.gpu is not None:
            gpu_preset(self.gpu)
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
        step: the full serving step when ``options.workload`` was given; then the per-token
            figures (tokens/s, $ per 1M tokens, communication share) are the step's.
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
    step: StepEstimate | None = None

    @property
    def figures(self) -> HardwareFigures:
        """The hardware figures of the routed-expert part (the solver's, for this cluster)."""
        return self.cluster.figures(self.model.matmul_precision, self.options.step_efficiency,
                                    gpu=self.options.gpu)

    @property
    def compute_only(self) -> bool:
        """True when traffic was unknown and only expert compute is counted."""
        return self.dispatch_s is None

    @property
    def seconds_per_token(self) -> float:
        """``mean_l(layer_s / tokens) * num_moe_layers``: one token through every MoE layer
        (the full step's ``1 / tokens_per_s`` when the step was costed)."""
        if self.step is not None:
            t = self.step.tokens_per_s
            return 1.0 / t if t > 0 else float("inf")
        ok = self.tokens > 0
        if not ok.any():
            return float("nan")
        return float(np.mean(self.layer_s[ok] / self.tokens[ok])) * self.model.num_moe_layers

    @property
    def tokens_per_s(self) -> float:
        """Tokens per second of the whole cluster (MoE part only: an upper bound; or the full
        step's prediction)."""
        if self.step is not None:
            return self.step.tokens_per_s
        s = self.seconds_per_token
        return 1.0 / s if s > 0 else float("nan")

    @property
    def tokens_per_s_per_node(self) -> float:
        """:attr:`tokens_per_s` divided by the number of nodes."""
        return self.tokens_per_s / self.cluster.num_nodes

    @property
    def usd_per_million_tokens(self) -> float:
        """``num_gpus * usd_per_gpu_hour / 3600 / tokens_per_s * 1e6``."""
        if self.step is not None:
            return self.step.usd_per_million_tokens
        return self.cluster.num_gpus * self.usd_per_gpu_hour / 3600.0 / self.tokens_per_s * 1e6

    @property
    def communication_share(self) -> float | None:
        """Share of the layer time (the step's time, when costed) that communication takes when
        nothing overlaps."""
        if self.step is not None:
            total = self.step.communication_s + self.step.compute_s
            return self.step.communication_s / total if total > 0 else None
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
    figures = c.figures(model.matmul_precision, options.step_efficiency, gpu=options.gpu)
    compute, dispatch, combine, layer = layer_times(
        loads, c, model, traffic=result.per_gpu_traffic(), overlap=options.overlap,
        efficiency=options.efficiency, figures=figures,
    )
    price = c.price(options.gpu) if options.usd_per_gpu_hour is None \
        else options.usd_per_gpu_hour
    step = None
    if options.workload is not None:
        step = estimate_step(
            model, c, options.workload, gpu=options.gpu, efficiency=options.step_efficiency,
            moe=MoeLoad.from_replay(result, model.top_k), usd_per_gpu_hour=options.usd_per_gpu_hour,
        )
        price = step.usd_per_gpu_hour
    return CostEstimate(
        model=model, cluster=c, options=options, usd_per_gpu_hour=float(price),
        layer_ids=np.asarray(result.layer_ids), tokens=tokens, compute_s=compute,
        dispatch_s=dispatch, combine_s=combine, layer_s=layer, step=step,
    )




def format_cost(est: CostEstimate) -> str:
    """Text summary of a cost estimate."""
    if est.step is not None:
        from placement.cost.step import format_step

        return format_step(est.step)
    f = est.figures
    lines = [
        f"model {est.model.name} on {est.cluster.summary()}",
        f"hardware: {f.summary()}",
        f"overlap {est.options.overlap}, GEMM efficiency {est.options.efficiency:g} of "
        f"{f.tflops:.0f} TFLOP/s, NVLink {f.nvlink_gbps:g} GB/s, network "
        f"{f.network_gbps:g} GB/s per GPU",
        f"estimated tokens/s (MoE part only, upper bound): {format_si(est.tokens_per_s)} for the "
        f"cluster, {format_si(est.tokens_per_s_per_node)} per node",
        f"estimated $ per million tokens: {est.usd_per_million_tokens:.4f} at "
        f"${est.usd_per_gpu_hour:g} per GPU-hour",
    ]
    share = est.communication_share
    if share is None:
        lines.append("communication: not counted (needs a token-level trace): compute only")
    else:
        lines.append(f"communication share of layer time without overlap: {share:.1%}")
    return "\n".join(lines)


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


