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
  compute only for counts.

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

__all__ = ["PlanFigures", "plan_figures"]


@dataclass(frozen=True)
class PlanFigures:
    """A plan's figures on a trace.

    Attributes:
        rule: ``"static"`` (token-level trace) or ``"even"`` (counts).
        layer_ids: ``[L]`` replayed layers.
        imbalance: ``[L]`` max / mean tokens per GPU.
        sends_per_token, copies_per_token: ``[L]`` cross-node sends / copies per token, or None
            (counts).
        layer_time: ``[L]`` predicted MoE layer time in seconds for the trace's tokens, or None
            (model unknown).
        overlap: the overlap mode of ``layer_time``.
        compute_only: ``layer_time`` counts expert compute only (counts trace).
        num_tokens: tokens replayed (token-level), else None.
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

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready means (snake_case labels of the figures vocabulary)."""
        return {
            f"imbalance_{self.rule}": self.mean_imbalance,
            "cross_node_sends_per_token": self.mean_sends,
            "cross_node_copies_per_token": self.mean_copies,
            "predicted_moe_layer_time_s": self.mean_layer_time,
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
    if model is not None:
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
    )
