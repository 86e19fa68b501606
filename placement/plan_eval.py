"""The figures of a plan on a trace, in the vocabulary every command shares.

Used by ``placement diff`` (both plans on a trace), ``placement replan`` (before and after, on a
held-out trace) and the simulation (every window). Per layer, then the mean over layers:

* ``imbalance (static)`` for token-level traces (the engines' static dispatch rule, all tokens
  of the trace pooled), ``imbalance (even)`` for aggregated counts (an expert's tokens split
  evenly over its replicas);
* ``cross-node sends per token`` (distinct remote nodes, DeepEP normal mode) and ``cross-node
  copies per token`` (remote experts, low-latency mode): token-level traces only;
* ``predicted MoE layer time`` (:func:`placement.moe_time.layer_times`, two-batch overlap by
  default) when the model's shape is known: compute and all-to-all for token-level traces,
  compute only for counts. Stated two ways: per step of :data:`STEP_TOKENS_PER_GPU` tokens on
  every GPU (the latency users know, :func:`per_step_time`), and for all the trace's tokens (a
  whole-workload total: a counts trace of a day's traffic gives hundreds of milliseconds).

The replay is :func:`placement.validation.replay`, the one ``placement validate`` runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from placement.models import ModelShape
from placement.moe_time import layer_times
from placement.plan import Plan
from placement.routing_traces.trace import Trace
from placement.validation import replay

__all__ = ["STEP_TOKENS_PER_GPU", "PlanFigures", "per_step_time", "plan_figures"]

STEP_TOKENS_PER_GPU = 4096
"""The batch the per-step predicted time is stated for: tokens on every GPU in one step (a
prefill chunk; the figure scales linearly with it)."""


def per_step_time(layer_time: np.ndarray, tokens: np.ndarray, num_gpus: int,
                  tokens_per_gpu: int = STEP_TOKENS_PER_GPU) -> np.ndarray:
    """``[L]`` predicted MoE layer time of one step of ``tokens_per_gpu`` tokens on every GPU,
    from ``layer_time [L]``, the time of ``tokens [L]`` tokens (a whole trace): every term of
    :func:`~placement.moe_time.layer_times` (the busiest GPU's expert tokens, its all-to-all
    tokens) grows in proportion to the tokens at the trace's routing mix, so the step's time is
    ``layer_time x tokens_per_gpu x num_gpus / tokens`` (0 where a layer routes nothing)."""
    t = np.asarray(tokens, dtype=np.float64)
    scale = np.divide(float(tokens_per_gpu) * num_gpus, t, out=np.zeros_like(t), where=t > 0)
    return np.asarray(layer_time, dtype=np.float64) * scale


@dataclass(frozen=True)
class PlanFigures:
    """A plan's figures on a trace.

    Attributes:
        rule: ``"static"`` (token-level trace) or ``"even"`` (counts).
        layer_ids: ``[L]`` replayed layers.
        imbalance: ``[L]`` max / mean tokens per GPU.
        sends_per_token, copies_per_token: ``[L]`` cross-node sends / copies per token, or None
            (counts).
        layer_time: ``[L]`` predicted MoE layer time in seconds for all the trace's tokens (a
            whole-workload total), or None (model unknown).
        overlap: the overlap mode of ``layer_time``.
        compute_only: ``layer_time`` counts expert compute only (counts trace).
        num_tokens: tokens replayed (token-level), else None.
        tokens: ``[L]`` tokens routed in every layer (counts too), or None.
        num_gpus: GPUs of the plan's cluster.
    """

    rule: str
    layer_ids: np.ndarray
    imbalance: np.ndarray
    sends_per_token: np.ndarray | None
    copies_per_token: np.ndarray | None
    layer_time: np.ndarray | None
    overlap: str
    compute_only: bool
    num_tokens: int | None
    tokens: np.ndarray | None = None
    num_gpus: int = 1

    @property
    def label(self) -> str:
        """``"imbalance (static)"`` or ``"imbalance (even)"``."""
        return f"imbalance ({self.rule})"

    @staticmethod
    def _m(v: np.ndarray | None) -> float | None:
        return None if v is None or not v.size else float(np.mean(v))

    @property
    def mean_imbalance(self) -> float:
        """Imbalance, mean over layers."""
        return float(np.mean(self.imbalance)) if self.imbalance.size else float("nan")

    @property
    def mean_sends(self) -> float | None:
        """Cross-node sends per token, mean over layers."""
        return self._m(self.sends_per_token)

    @property
    def mean_copies(self) -> float | None:
        """Cross-node copies per token, mean over layers."""
        return self._m(self.copies_per_token)

    @property
    def mean_layer_time(self) -> float | None:
        """Predicted MoE layer time in seconds, mean over layers."""
        return self._m(self.layer_time)

    @property
    def step_time(self) -> np.ndarray | None:
        """``[L]`` predicted MoE layer time of one step of :data:`STEP_TOKENS_PER_GPU` tokens
        per GPU (:func:`per_step_time`), or None."""
        if self.layer_time is None or self.tokens is None:
            return None
        return per_step_time(self.layer_time, self.tokens, self.num_gpus)

    @property
    def mean_step_time(self) -> float | None:
        """Predicted MoE layer time per step, mean over layers."""
        return self._m(self.step_time)

    @property
    def mean_tokens(self) -> float | None:
        """Tokens per layer of the trace, mean over layers."""
        return self._m(self.tokens)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready means (snake_case labels of the figures vocabulary)."""
        return {
            f"imbalance_{self.rule}": self.mean_imbalance,
            "cross_node_sends_per_token": self.mean_sends,
            "cross_node_copies_per_token": self.mean_copies,
            "predicted_moe_layer_time_s": self.mean_layer_time,
            "predicted_moe_layer_time_per_step_s": self.mean_step_time,
            "step_tokens_per_gpu": STEP_TOKENS_PER_GPU,
            "overlap": self.overlap if self.layer_time is not None else None,
            "compute_only": self.compute_only if self.layer_time is not None else None,
            "num_tokens": self.num_tokens,
        }


def plan_figures(plan: Plan, trace: Trace, *, model: ModelShape | None = None,
                 overlap: str = "two-batch", device: str = "cpu") -> PlanFigures:
    """Replay ``trace`` against ``plan`` and return its figures (see the module docstring)."""
    rule = "static" if trace.is_token_level else "even"
    res = replay(plan, trace, dispatch=rule, device=device)
    t = None
    tokens = None if res.tokens is None else np.asarray(res.tokens, dtype=np.float64)
    if model is not None:
        if tokens is None:  # counts without top-k: the model's
            tokens = np.asarray(res.gpu_loads, dtype=np.float64).sum(axis=1) / model.top_k
        _c, _d, _b, t = layer_times(res.gpu_loads, plan.cluster, model,
                                    traffic=res.per_gpu_traffic(), overlap=overlap)
    return PlanFigures(
        rule=rule,
        layer_ids=np.asarray(res.layer_ids),
        imbalance=np.asarray(res.imbalance),
        sends_per_token=None if res.cross_node_sends_per_token is None
        else np.asarray(res.cross_node_sends_per_token),
        copies_per_token=None if res.cross_node_copies_per_token is None
        else np.asarray(res.cross_node_copies_per_token),
        layer_time=t,
        overlap=overlap,
        compute_only=not res.has_traffic,
        num_tokens=res.num_tokens,
        tokens=tokens,
        num_gpus=plan.cluster.num_gpus,
    )
