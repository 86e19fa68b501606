"""Problem data and options of a solve: immutable inputs, validated in one place."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from placement.cluster import Cluster
from placement.errors import InputError
from placement.routing_traces.trace import Trace

__all__ = ["ROBUST_MODES", "ProblemData", "SolveOptions"]

ROBUST_MODES = ("max", "mean")


@dataclass(frozen=True)
class SolveOptions:
    """Settings of :func:`placement.solver.solve`.

    Args:
        method: ``"optimizer"`` (default), ``"eplb"``, ``"eplb-global"`` or ``"contiguous"``.
        num_groups: expert groups for EPLB's hierarchical policy (default: 8 when the expert
            count is a multiple of 8, as DeepSeek-V3's ``n_group``, else 1).
        balance_tolerance: how much peak GPU load above the best achievable the optimizer may give
            up for less cross-node traffic, as a fraction (0.05 = 5 %).
        max_nodes_per_token: node-limited routing (DeepSeek-V3 uses 4), or None.
        time_limit: seconds for the whole solve; the best plan found by then is returned.
        jobs: layers solved in parallel (default: the machine's CPU cores; the plan does not
            depend on it).
        seed: seed of every randomised step; same input and seed, same plan.
        robust: how scenarios (windows, traces) combine: ``"max"`` (worst case) or ``"mean"``.
    """

    method: str = "optimizer"
    num_groups: int | None = None
    balance_tolerance: float = 0.05
    max_nodes_per_token: int | None = None
    time_limit: float = 60.0
    jobs: int = field(default_factory=lambda: os.cpu_count() or 1)
    seed: int = 0
    robust: str = "max"

    def __post_init__(self) -> None:
        from placement.solver import METHODS  # registry lives with solve()

        if self.method not in METHODS:
            raise InputError(f"Unknown method {self.method!r}; choose one of: {', '.join(METHODS)}.")
        if self.num_groups is not None and self.num_groups < 1:
            raise InputError(f"Expected num_groups >= 1, got {self.num_groups}.")
        if not (math.isfinite(self.balance_tolerance) and self.balance_tolerance >= 0):
            raise InputError(f"Expected balance_tolerance >= 0, got {self.balance_tolerance}.")
        if self.max_nodes_per_token is not None and self.max_nodes_per_token < 1:
            raise InputError(f"Expected max_nodes_per_token >= 1, got {self.max_nodes_per_token}.")
        if not (math.isfinite(self.time_limit) and self.time_limit > 0):
            raise InputError(f"Expected time_limit > 0 seconds, got {self.time_limit}.")
        if self.jobs < 1:
            raise InputError(f"Expected jobs >= 1, got {self.jobs}.")
        if self.robust not in ROBUST_MODES:
            raise InputError(f"Expected robust in {ROBUST_MODES}, got {self.robust!r}.")

    def groups_for(self, num_experts: int) -> int:
        """The number of expert groups EPLB uses for ``num_experts`` experts."""
        if self.num_groups is not None:
            return self.num_groups
        return 8 if num_experts % 8 == 0 else 1


@dataclass(frozen=True)
class ProblemData:
    """What a solve plans from: the cluster and the traffic scenarios.

    Every (trace, window) pair given is one scenario; a plan is made to hold up on all of them.

    Attributes:
        cluster: the cluster.
        num_experts: E.
        layer_ids: ``[L]`` decoder-layer ids of the planned MoE layers.
        scenario_counts: ``[S, L, E]`` tokens routed to every expert in every scenario.
        scenario_names: a name per scenario.
        token_traces: per scenario, the token-level trace of that scenario (None for aggregated).
        top_k: experts per token, when known.
    """

    cluster: Cluster
    num_experts: int
    layer_ids: np.ndarray
    scenario_counts: np.ndarray
    scenario_names: tuple[str, ...]
    token_traces: tuple[Trace, ...] | None = None
    top_k: int | None = None
    num_hidden_layers: int | None = None
    model: str | None = None
    extras: dict[str, object] = field(default_factory=dict, compare=False)

    @property
    def num_layers(self) -> int:
        """L."""
        return int(self.layer_ids.shape[0])

    @property
    def num_scenarios(self) -> int:
        """S."""
        return int(self.scenario_counts.shape[0])

    @property
    def is_token_level(self) -> bool:
        """Whether traffic (not only balance) can be planned for."""
        return self.token_traces is not None

    def scenario_shares(self) -> np.ndarray:
        """``[S, L, E]`` every scenario's counts normalised to sum 1 per layer."""
        c = self.scenario_counts
        tot = c.sum(axis=-1, keepdims=True)
        return np.divide(c, tot, out=np.zeros_like(c), where=tot > 0)

    def layer(self, index: int) -> ProblemData:
        """The problem restricted to one layer (index ``0..L-1``)."""
        return ProblemData(
            cluster=self.cluster,
            num_experts=self.num_experts,
            layer_ids=self.layer_ids[index:index + 1],
            scenario_counts=self.scenario_counts[:, index:index + 1],
            scenario_names=self.scenario_names,
            token_traces=None if self.token_traces is None
            else tuple(t.select_layers([index]) for t in self.token_traces),
            top_k=self.top_k,
            num_hidden_layers=self.num_hidden_layers,
            model=self.model,
        )

    @classmethod
    def from_traces(cls, traces: Trace | Sequence[Trace], cluster: Cluster) -> ProblemData:
        """Build the problem from one or several traces of the same model.

        Each window of each trace becomes one scenario. Raises :class:`InputError` when the traces
        disagree on experts or layers, or the cluster cannot hold the experts.
        """
        tr = [traces] if isinstance(traces, Trace) else list(traces)
        if not tr:
            raise InputError("Expected at least one trace to plan from.")
        first = tr[0]
        for i, t in enumerate(tr[1:], start=1):
            if t.num_experts != first.num_experts:
                raise InputError(
                    f"trace {i} has {t.num_experts} experts, trace 0 has {first.num_experts}."
                )
            if not np.array_equal(t.layer_ids, first.layer_ids):
                raise InputError(f"trace {i} traces other layers than trace 0.")
        cluster.check_fits(first.num_experts)
        counts: list[np.ndarray] = []
        names: list[str] = []
        tokens: list[Trace] = []
        token_level = all(t.is_token_level for t in tr)
        for i, t in enumerate(tr):
            wc = t.window_counts()
            for w in range(t.num_windows):
                counts.append(wc[w])
                label = t.window_names[w]
                names.append(label if len(tr) == 1 else f"{i}:{label}")
                if token_level:
                    tokens.append(t.select_windows([w]) if t.num_windows > 1 else t)
        sc = np.stack(counts)
        if not (sc.sum(axis=-1) > 0).any():
            raise InputError("The traces route no tokens.")
        top_ks = {t.top_k for t in tr if t.top_k is not None}
        return cls(
            cluster=cluster,
            num_experts=first.num_experts,
            layer_ids=np.asarray(first.layer_ids),
            scenario_counts=sc,
            scenario_names=tuple(names),
            token_traces=tuple(tokens) if token_level else None,
            top_k=top_ks.pop() if len(top_ks) == 1 else None,
            num_hidden_layers=first.num_hidden_layers,
            model=first.model,
        )
