"""Problem data and options of a solve: immutable inputs, validated in one place."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from placement.cluster import Cluster
from placement.errors import InputError
from placement.models import MODEL_PRESETS, ModelShape, guess_model, model_preset
from placement.moe_time import OVERLAPS
from placement.parallel import Backend
from placement.routing_traces.trace import Trace

if TYPE_CHECKING:
    from placement.routing_traces.statistics import TraceStatistics

__all__ = [
    "DEFAULT_MODEL",
    "OBJECTIVES",
    "ROBUST_MODES",
    "ProblemData",
    "SolveOptions",
    "resolve_model",
]

ROBUST_MODES = ("max", "mean")

OBJECTIVES: tuple[str, ...] = ("time", "balance", "traffic")
"""What the optimizer minimises per layer (:mod:`placement.solver.objective`)."""

DEFAULT_MODEL = "deepseek-v3"
"""The model shape the predicted time uses when the traces' model is unknown (what matters is
the ratio of an expert's FLOPs per token to its bytes per token: DeepSeek-V3's is typical of
large MoE models)."""


@dataclass(frozen=True)
class SolveOptions:
    """Settings of :func:`placement.solver.solve`.

    Args:
        method: a name of :data:`placement.solver.METHODS`: ``"optimizer"`` (default),
            ``"eplb"``, ``"eplb-global"`` or ``"contiguous"``.
        objective: what the optimizer minimises per layer: ``"time"`` (default: the predicted
            MoE layer time of :func:`placement.moe_time.layer_times` for the cluster's
            bandwidths and the model's shape), ``"balance"`` (peak GPU load) or ``"traffic"``
            (cross-node sends within ``balance_tolerance`` of the best balance).
        model: the model shape of the predicted time: a :class:`ModelShape` or a preset name;
            None guesses it from the traces' model name, expert count and top-k, else uses
            :data:`DEFAULT_MODEL` (:func:`resolve_model`).
        overlap: how communication and compute overlap in the predicted time
            (:data:`placement.moe_time.OVERLAPS`; DeepSeek's two micro-batches by default).
        num_groups: expert groups for EPLB's hierarchical policy (default: 8 when the expert
            count is a multiple of 8, as DeepSeek-V3's ``n_group``, else 1).
        balance_tolerance: how much peak GPU load above the balance-only plan's the optimizer
            may give up for less cross-node traffic, as a fraction (0.05 = 5 %); None: the
            objective decides (``"traffic"``: 0.05; ``"time"``: never balance worse than the
            balance-only plan or EPLB's, whichever is worse).
        max_nodes_per_token: node-limited routing (DeepSeek-V3 uses 4), or None.
        time_limit: safety net, seconds for the whole solve (the search is bounded by work,
            not time); a layer still running when it fires returns what it has, and the plan
            may then differ between machines.
        jobs: layers solved in parallel (default: the machine's CPU cores; the plan does not
            depend on it).
        backend: where the per-layer solves run (:mod:`placement.parallel`: ``Local``,
            ``Processes``, ``Ray``); None: ``jobs`` processes of this machine. The plan does not
            depend on it.
        seed: seed of every randomised step; same input and seed, same plan.
        robust: how scenarios (windows, traces) combine: ``"max"`` (worst case) or ``"mean"``.
        dispatch: the engine's dispatch rule the plan is for: ``"static"`` (default) or ``"lp"``
            (SGLang's LPLB; :func:`placement.solver.lp_dispatch.plan_for_lp`).
    """

    method: str = "optimizer"
    objective: str = "time"
    model: str | ModelShape | None = None
    overlap: str = "two-batch"
    num_groups: int | None = None
    balance_tolerance: float | None = None
    max_nodes_per_token: int | None = None
    time_limit: float = 600.0
    jobs: int = field(default_factory=lambda: os.cpu_count() or 1)
    seed: int = 0
    robust: str = "max"
    backend: Backend | None = field(default=None, compare=False)
    dispatch: str = "static"

    def __post_init__(self) -> None:
        from placement.solver.registry import METHODS

        if self.method not in METHODS:
            raise InputError(f"Unknown method {self.method!r}; choose one of: {', '.join(METHODS)}.")
        if self.objective not in OBJECTIVES:
            raise InputError(
                f"Expected objective in {', '.join(OBJECTIVES)}, got {self.objective!r}."
            )
        if isinstance(self.model, str) and self.model not in MODEL_PRESETS:
            raise InputError(
                f"Unknown model {self.model!r}; choose one of: {', '.join(sorted(MODEL_PRESETS))}."
            )
        if self.model is not None and not isinstance(self.model, (str, ModelShape)):
            raise InputError(f"Expected model to be a preset name or a ModelShape, got {self.model!r}.")
        if self.overlap not in OVERLAPS:
            raise InputError(f"Expected overlap in {', '.join(OVERLAPS)}, got {self.overlap!r}.")
        if self.num_groups is not None and self.num_groups < 1:
            raise InputError(f"Expected num_groups >= 1, got {self.num_groups}.")
        tol = self.balance_tolerance
        if tol is not None and not (math.isfinite(tol) and tol >= 0):
            raise InputError(f"Expected balance_tolerance >= 0, got {tol}.")
        if self.max_nodes_per_token is not None and self.max_nodes_per_token < 1:
            raise InputError(f"Expected max_nodes_per_token >= 1, got {self.max_nodes_per_token}.")
        if not (math.isfinite(self.time_limit) and self.time_limit > 0):
            raise InputError(f"Expected time_limit > 0 seconds, got {self.time_limit}.")
        if self.jobs < 1:
            raise InputError(f"Expected jobs >= 1, got {self.jobs}.")
        if self.robust not in ROBUST_MODES:
            raise InputError(f"Expected robust in {ROBUST_MODES}, got {self.robust!r}.")
        if self.dispatch not in ("static", "lp"):
            raise InputError(f"Expected dispatch in static, lp, got {self.dispatch!r}.")
        if self.backend is not None and not isinstance(self.backend, Backend):
            raise InputError(f"Expected backend to be a placement.parallel Backend, got "
                             f"{self.backend!r}.")

    def groups_for(self, num_experts: int) -> int:
        """The number of expert groups EPLB uses for ``num_experts`` experts."""
        if self.num_groups is not None:
            return self.num_groups
        return 8 if num_experts % 8 == 0 else 1


def _same_model(items: Sequence[Any], cluster: Cluster) -> None:
    """Check that ``items`` (traces, or their statistics) all trace the experts and layers of
    the first, and that ``cluster`` holds the experts."""
    first = items[0]
    for i, t in enumerate(items[1:], start=1):
        if t.num_experts != first.num_experts:
            raise InputError(
                f"trace {i} has {t.num_experts} experts, trace 0 has {first.num_experts}."
            )
        if not np.array_equal(t.layer_ids, first.layer_ids):
            raise InputError(f"trace {i} traces other layers than trace 0.")
    cluster.check_fits(first.num_experts)


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
        num_hidden_layers, model: of the traces, when known.
        source_gpus: per scenario, ``[T]`` the source GPU of every token of
            ``token_traces`` (the source rank modulo G, or the token's index in its whole trace
            modulo G, as the validator assigns them); None: computed from the scenario alone.
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
    source_gpus: tuple[np.ndarray, ...] | None = field(default=None, compare=False)
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

    def token_sources(self) -> tuple[np.ndarray, ...]:
        """Per scenario, ``[T]`` the source GPU of every token (token-level problems)."""
        from placement.metrics import source_gpus

        if self.token_traces is None:
            return ()
        if self.source_gpus is not None:
            return self.source_gpus
        G = self.cluster.num_gpus
        return tuple(source_gpus(int(t.num_tokens or 0), t.source_rank, G)
                     for t in self.token_traces)

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
            source_gpus=self.source_gpus,
        )

    @classmethod
    def _assemble(cls, cluster: Cluster, inputs: Sequence[Any], counts: list[np.ndarray],
                  names: list[str], tokens: list[Trace] | None,
                  sources: list[np.ndarray] | None) -> ProblemData:
        """The problem of :meth:`from_traces` and :meth:`from_statistics`: ``inputs`` (the
        traces, or their statistics; checked by :func:`_same_model`) give the model's shape,
        ``counts``/``names`` one scenario each, ``tokens``/``sources`` their tokens (None for
        aggregated inputs)."""
        first = inputs[0]
        sc = np.stack(counts)
        if not (sc.sum(axis=-1) > 0).any():
            raise InputError("The traces route no tokens.")
        top_ks = {t.top_k for t in inputs if t.top_k is not None}
        return cls(
            cluster=cluster,
            num_experts=first.num_experts,
            layer_ids=np.asarray(first.layer_ids),
            scenario_counts=sc,
            scenario_names=tuple(names),
            token_traces=tuple(tokens) if tokens is not None else None,
            top_k=top_ks.pop() if len(top_ks) == 1 else None,
            num_hidden_layers=first.num_hidden_layers,
            model=first.model,
            source_gpus=tuple(sources) if sources is not None else None,
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
        _same_model(tr, cluster)
        from placement.metrics import source_gpus

        counts: list[np.ndarray] = []
        names: list[str] = []
        tokens: list[Trace] = []
        sources: list[np.ndarray] = []
        token_level = all(t.is_token_level for t in tr)
        G = cluster.num_gpus
        for i, t in enumerate(tr):
            wc = t.window_counts()
            src = source_gpus(int(t.num_tokens or 0), t.source_rank, G) if token_level else None
            for w in range(t.num_windows):
                counts.append(wc[w])
                label = t.window_names[w]
                names.append(label if len(tr) == 1 else f"{i}:{label}")
                if token_level and src is not None:
                    if t.num_windows > 1:
                        tokens.append(t.select_windows([w]))
                        sources.append(src[t.window_index == w])
                    else:
                        tokens.append(t)
                        sources.append(src)
        return cls._assemble(cluster, tr, counts, names, tokens if token_level else None,
                             sources if token_level else None)

    @classmethod
    def from_statistics(cls, statistics: TraceStatistics | Sequence[TraceStatistics],
                        cluster: Cluster) -> ProblemData:
        """Build the problem from the statistics of one or several traces
        (:func:`placement.routing_traces.statistics.gather_statistics`), as
        :meth:`from_traces` does from the traces: each window is one scenario, its counts
        exact, its tokens the window's sample (source GPUs as the validator assigns them: the
        source rank modulo G, else the token's index in its trace modulo G). With a sample that
        holds every token, the problem is the one :meth:`from_traces` builds.
        """
        st = [statistics] if not isinstance(statistics, Sequence) else list(statistics)
        if not st:
            raise InputError("Expected at least one trace's statistics to plan from.")
        _same_model(st, cluster)
        G = cluster.num_gpus
        token_level = all(s.is_token_level for s in st)
        counts: list[np.ndarray] = []
        names: list[str] = []
        tokens: list[Trace] = []
        sources: list[np.ndarray] = []
        for i, s in enumerate(st):
            for w in range(s.num_windows):
                counts.append(np.asarray(s.window_counts[w], dtype=np.float64))
                label = s.window_names[w]
                names.append(label if len(st) == 1 else f"{i}:{label}")
                if token_level:
                    assert s.sample_window is not None and s.sample_index is not None
                    tokens.append(s.sample_trace(w))
                    mask = s.sample_window == w
                    src = (s.sample_source_rank[mask] if s.sample_source_rank is not None
                           else s.sample_index[mask])
                    sources.append(np.asarray(src, dtype=np.int64) % G)
        return cls._assemble(cluster, st, counts, names, tokens if token_level else None,
                             sources if token_level else None)


def resolve_model(options: SolveOptions, problem: ProblemData) -> tuple[ModelShape, str]:
    """The model shape of the predicted time, and where it came from.

    ``options.model`` when given; else the preset the traces' model name points to, or the only
    preset with their expert count and top-k; else :data:`DEFAULT_MODEL`'s shape.
    """
    m = options.model
    if isinstance(m, ModelShape):
        return m, "given"
    if isinstance(m, str):
        return model_preset(m), "given"
    guess = guess_model(problem.model, num_experts=problem.num_experts, top_k=problem.top_k)
    if guess is not None:
        return guess, "guessed"
    return model_preset(DEFAULT_MODEL), "default"
