"""The computation of a comparison: every plan (the user's and baselines made for the same
cluster) replayed on every held-out trace, with cost estimates; :class:`Comparison` holds it and
its per-plan :class:`SummaryRow` figures."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from placement._util import Progress
from placement.cluster import Cluster
from placement.cost import CostEstimate, CostOptions, ModelShape, estimate_cost
from placement.errors import InputError
from placement.hardware import HardwareFigures
from placement.parallel import Backend
from placement.plan import Plan
from placement.routing_traces.sharded import ShardedTrace
from placement.routing_traces.trace import Trace
from placement.solver.registry import BASELINES as _REGISTRY_BASELINES
from placement.validation import RULES, ValidationResult, replay

__all__ = ["BASELINES", "Comparison", "SummaryRow", "compare", "moe_part_only"]

BASELINES: tuple[str, ...] = _REGISTRY_BASELINES
"""Baselines :func:`compare` can make: the solver registry's
(:data:`placement.solver.registry.BASELINES`: DeepSeek's EPLB, hierarchical when it applies, or
global, and the engines' contiguous default, which needs no data)."""



@dataclass(frozen=True)
class SummaryRow:
    """One plan's figures, averaged over the held-out traces (None: not measurable).

    ``tokens_per_s`` is the whole cluster's, ``tokens_per_s_per_node`` one node's (the report
    shows per node, as DeepSeek's published figures are); both, and ``usd_per_million_tokens``,
    come from the cost model, which counts the MoE part only while ``moe_only``: then they are
    an upper bound on throughput (a lower bound on $), good for ratios. ``*_ratio`` fields are
    the value divided by the reference plan's (EPLB's).
    """

    label: str
    method: str
    baseline: bool
    imbalance: float
    sends_per_token: float | None
    copies_per_token: float | None
    cross_node_gb_per_million_tokens: float | None
    tokens_per_s: float | None
    usd_per_million_tokens: float | None
    compute_only: bool
    tokens_per_s_per_node: float | None = None
    moe_only: bool = True
    imbalance_ratio: float | None = None
    sends_ratio: float | None = None
    gb_ratio: float | None = None
    tokens_per_s_ratio: float | None = None
    usd_ratio: float | None = None


@dataclass(frozen=True)
class Comparison:
    """Every plan replayed on every held-out trace.

    Attributes:
        labels: a name per plan (the user's plans first, then the baselines).
        plans: the plans.
        baseline: per plan, whether it is a baseline made by :func:`compare`.
        trace_names: a name per held-out trace.
        traces_token_level: per trace, whether it is token-level (traffic measurable).
        results: ``results[i][j]``: plan i replayed on trace j.
        costs: ``costs[i][j]`` estimates, or None when the model shape is unknown.
        model: the model shape used for bytes and cost.
        cost_options: the cost model's settings.
        reference: index of the plan ratios are taken to (EPLB), or None.
        dispatch: the dispatch rule of the replays.
        baseline_source: which data the baselines were planned from (for the report).
        messages: notes for the reader.
    """

    labels: tuple[str, ...]
    plans: tuple[Plan, ...]
    baseline: tuple[bool, ...]
    trace_names: tuple[str, ...]
    traces_token_level: tuple[bool, ...]
    results: tuple[tuple[ValidationResult, ...], ...]
    costs: tuple[tuple[CostEstimate, ...], ...] | None
    model: ModelShape | None
    cost_options: CostOptions
    reference: int | None
    dispatch: str = "static"
    baseline_source: str = ""
    messages: tuple[str, ...] = ()
    _rows: list[SummaryRow] = field(default_factory=list, init=False, repr=False, compare=False)

    @property
    def cluster(self) -> Cluster:
        """The cluster of the plans."""
        return self.plans[0].cluster

    @property
    def figures(self) -> HardwareFigures:
        """The hardware figures of the predicted times and tokens/s (the cluster's, at the
        model's precision and the cost options' kernel shares: the solver's numbers)."""
        o = self.cost_options
        precision = self.model.matmul_precision if self.model is not None else "fp8"
        return self.cluster.figures(precision, o.step_efficiency, gpu=o.gpu)

    @property
    def layer_ids(self) -> np.ndarray:
        """``[L]`` replayed decoder-layer ids (those of the first trace)."""
        return self.results[0][0].layer_ids

    @property
    def has_traffic(self) -> bool:
        """Whether any held-out trace is token-level."""
        return any(self.traces_token_level)

    @property
    def rules(self) -> tuple[str, ...]:
        """The dispatch rules the replays' loads used (in :data:`RULES` order): the one asked
        for, and ``even`` for counts without source ranks, which have no other."""
        used = {r.dispatch for row in self.results for r in row}
        return tuple(rule for rule in RULES if rule in used)

    @property
    def imbalance_label(self) -> str:
        """``"imbalance (static)"``: the figure's name, with the rule its loads used."""
        return f"imbalance ({'/'.join(self.rules)})"

    @property
    def dispatch_phrase(self) -> str:
        """``"dispatch static"``, or which rules the loads used when some could not use the
        one asked for."""
        if self.rules == (self.dispatch,):
            return f"dispatch {self.dispatch}"
        return (f"dispatch {' and '.join(self.rules)} ({self.dispatch} asked; counts without "
                "source ranks have only the even rule)")

    def rows(self) -> list[SummaryRow]:
        """One :class:`SummaryRow` per plan."""
        if not self._rows:
            self._rows.extend(_summary_rows(self))
        return list(self._rows)

    @property
    def best(self) -> int:
        """Index of the best plan that is not a baseline (highest estimated tokens/s, else
        lowest imbalance); the best baseline when every plan is one."""
        rows = self.rows()
        cand = [i for i, b in enumerate(self.baseline) if not b] or list(range(len(rows)))

        def key(i: int) -> tuple[float, float]:
            tps = rows[i].tokens_per_s
            return (-(tps if tps is not None and math.isfinite(tps) else 0.0), rows[i].imbalance)

        return min(cand, key=key)

    def mean_layer_values(self, i: int, what: str) -> np.ndarray | None:
        """``[L]`` per-layer ``imbalance`` or ``sends`` of plan i, averaged over traces (sends:
        over token-level traces only; None when there are none)."""
        vals = []
        for r in self.results[i]:
            v = r.imbalance if what == "imbalance" else r.cross_node_sends_per_token
            if v is not None:
                vals.append(v)
        return np.mean(vals, axis=0) if vals else None

    def loads(self, i: int) -> np.ndarray:
        """``[L, G]`` tokens per GPU of plan i, summed over traces."""
        return np.sum([r.gpu_loads for r in self.results[i]], axis=0)

    def matrix(self, i: int) -> np.ndarray | None:
        """``[L, G, G]`` token copies of plan i, summed over token-level traces."""
        ms = [r.matrix for r in self.results[i] if r.matrix is not None]
        return np.sum(ms, axis=0) if ms else None

    def node_sends(self, i: int) -> np.ndarray | None:
        """``[L, G, N]`` cross-node sends of plan i, summed over token-level traces."""
        ms = [r.node_sends for r in self.results[i] if r.node_sends is not None]
        return np.sum(ms, axis=0) if ms else None


def _mean(vals: Sequence[float | None]) -> float | None:
    v = [x for x in vals if x is not None and math.isfinite(x)]
    return float(np.mean(v)) if v else None


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not math.isfinite(a) or not math.isfinite(b) or b == 0:
        return None
    return a / b


def moe_part_only(est: CostEstimate) -> bool:
    """Whether an estimate counts the MoE part alone (routed-expert GEMMs and the all-to-all),
    so that its tokens/s are an upper bound and its $ a lower one: the estimate's ``moe_only``
    where the cost model says, else True (the cost model of :mod:`placement.cost` counts no
    more)."""
    return bool(getattr(est, "moe_only", True))


def _summary_rows(cmp: Comparison) -> list[SummaryRow]:
    rows = []
    model = cmp.model
    for i, label in enumerate(cmp.labels):
        res = cmp.results[i]
        imb = _mean([r.mean_imbalance for r in res]) or float("nan")
        sends = _mean([r.mean_cross_node_sends_per_token for r in res])
        copies = _mean([r.mean_cross_node_copies_per_token for r in res])
        gb = None
        if sends is not None and model is not None:
            per_token = sends * model.hidden_size * (
                model.dispatch_bytes_per_element + model.combine_bytes_per_element)
            gb = per_token * model.num_moe_layers * 1e6 / 1e9
        tps = per_node = usd = None
        compute_only = moe_only = True
        if cmp.costs is not None:
            # over traces: the mean time per token (so tokens/s is its inverse) and the mean $
            spt = _mean([c.seconds_per_token for c in cmp.costs[i]])
            if spt is not None and spt > 0:
                tps = 1.0 / spt
                per_node = tps / cmp.cluster.num_nodes
                usd = _mean([c.usd_per_million_tokens for c in cmp.costs[i]])
            compute_only = all(c.compute_only for c in cmp.costs[i])
            moe_only = all(moe_part_only(c) for c in cmp.costs[i])
        rows.append(SummaryRow(
            label=label, method=cmp.plans[i].method, baseline=cmp.baseline[i], imbalance=imb,
            sends_per_token=sends, copies_per_token=copies, cross_node_gb_per_million_tokens=gb,
            tokens_per_s=tps, usd_per_million_tokens=usd, compute_only=compute_only,
            tokens_per_s_per_node=per_node, moe_only=moe_only,
        ))
    if cmp.reference is not None:
        ref = rows[cmp.reference]
        rows = [
            SummaryRow(
                **{**r.__dict__,
                   "imbalance_ratio": _ratio(r.imbalance, ref.imbalance),
                   "sends_ratio": _ratio(r.sends_per_token, ref.sends_per_token),
                   "gb_ratio": _ratio(r.cross_node_gb_per_million_tokens,
                                      ref.cross_node_gb_per_million_tokens),
                   "tokens_per_s_ratio": _ratio(r.tokens_per_s, ref.tokens_per_s),
                   "usd_ratio": _ratio(r.usd_per_million_tokens, ref.usd_per_million_tokens)})
            for r in rows
        ]
    return rows


# -------------------------------------------------------------------------------------------
# compare
# -------------------------------------------------------------------------------------------
def _unique(labels: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for lab in labels:
        n = seen.get(lab, 0)
        seen[lab] = n + 1
        out.append(lab if n == 0 else f"{lab}#{n + 1}")
    return out


def _baseline_plan(
    name: str,
    cluster: Cluster,
    like: Plan | Trace | ShardedTrace,
    inputs: Sequence[Trace] | None,
) -> Plan:
    from placement.solver import SolveOptions, solve
    from placement.solver.baselines import contiguous_phy2log

    if name == "contiguous":
        L = int(like.layer_ids.shape[0])
        return Plan(
            cluster=cluster, num_experts=like.num_experts, layer_ids=like.layer_ids,
            phy2log=contiguous_phy2log(like.num_experts, cluster, L),
            num_hidden_layers=like.num_hidden_layers, model=like.model, method="contiguous",
            status="BASELINE",
        )
    if not inputs:
        raise InputError(
            f"baseline {name} needs traces to plan from: give --baseline-from TRACE (the data "
            "the plans were made from, not the held-out traces)."
        )
    return solve(list(inputs), cluster, SolveOptions(method=name)).plan


def compare(
    traces: Sequence[Trace | ShardedTrace],
    plans: Sequence[Plan],
    *,
    baselines: Sequence[str] = ("eplb",),
    baseline_inputs: Sequence[Trace] | None = None,
    cluster: Cluster | None = None,
    model: ModelShape | None = None,
    cost_options: CostOptions | None = None,
    dispatch: str = "static",
    labels: Sequence[str] | None = None,
    trace_names: Sequence[str] | None = None,
    baseline_source: str = "",
    device: str | None = None,
    progress: Progress | None = None,
    backend: Backend | None = None,
) -> Comparison:
    """Replay ``plans`` and freshly made ``baselines`` on the held-out ``traces``.

    Args:
        traces: held-out traces (token-level for traffic; counts give balance only); sharded
            traces are replayed shard by shard.
        plans: the plans to judge (same cluster shape).
        baselines: any of :data:`BASELINES`, made for the plans' cluster (or ``cluster``).
        baseline_inputs: traces EPLB baselines are planned from. Never the held-out traces
            unless the caller says so: there is no silent fallback.
        cluster: the cluster for the baselines when no plan is given (else must match).
        model: model shape for bytes, tokens/s and dollars (None: balance and traffic only).
        cost_options: cost model settings (overlap, efficiency, price).
        dispatch: dispatch rule of every replay (see :data:`placement.validation.RULES`).
        labels, trace_names: names for the report.
        baseline_source: a line saying where ``baseline_inputs`` came from.
        progress: ``progress(steps_done, steps)`` after each baseline made and each replay.
        backend: where a sharded trace's shards are replayed (:mod:`placement.parallel`;
            default: this process); an in-memory trace is replayed in this process.
    """
    traces = list(traces)
    plans = list(plans)
    if not traces:
        raise InputError("compare needs at least one held-out trace.")
    if dispatch not in RULES:
        raise InputError(f"Expected dispatch in {', '.join(RULES)}, got {dispatch!r}.")
    for b in baselines:
        if b not in BASELINES:
            raise InputError(f"Unknown baseline {b!r}; choose from {', '.join(BASELINES)}.")
    if not plans and not baselines:
        raise InputError("nothing to compare: give a plan file or a --baseline.")
    for j, t in enumerate(traces[1:], start=1):
        if not np.array_equal(t.layer_ids, traces[0].layer_ids):
            raise InputError(f"held-out trace {j + 1} has other layers than trace 1; compare "
                             "traces of the same layers.")
    # 1. one cluster shape
    if plans:
        shape = plans[0].cluster.shape
        for p in plans[1:]:
            if p.cluster.shape != shape:
                raise InputError(
                    f"plans are for different clusters ({shape} and {p.cluster.shape}); "
                    "compare plans made for one cluster."
                )
        if cluster is not None and cluster.shape != shape:
            raise InputError(
                f"the cluster options give {cluster.shape} but the plans are for {shape}."
            )
        cluster = plans[0].cluster
    elif cluster is None:
        raise InputError("no plan given: give cluster options (--preset or --nodes ...) for "
                         "the baselines.")
    # 2. baselines
    if labels is not None and len(labels) != len(plans):
        raise ValueError("Expected one label per plan.")
    names = list(labels) if labels is not None else [p.method for p in plans]
    flags = [False] * len(plans)
    like: Plan | Trace | ShardedTrace = plans[0] if plans else traces[0]
    steps = len(baselines) + (len(plans) + len(baselines)) * len(traces)
    done = 0

    def step() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, steps)

    for b in baselines:
        plans.append(_baseline_plan(b, cluster, like, baseline_inputs))
        names.append(b)
        flags.append(True)
        step()
    names = _unique(names)
    tnames = list(trace_names) if trace_names is not None else \
        [f"trace {j + 1}" for j in range(len(traces))]
    # 3. replays and costs
    options = cost_options or CostOptions()
    results: list[tuple[ValidationResult, ...]] = []
    costs: list[tuple[CostEstimate, ...]] = []
    for i, p in enumerate(plans):
        row = []
        for j, t in enumerate(traces):
            row.append(replay(
                p, t, dispatch=dispatch, device=device, plan_name=names[i], trace_name=tnames[j],
                hidden_size=None if model is None else model.hidden_size,
                dispatch_bytes_per_element=1.0 if model is None
                else model.dispatch_bytes_per_element,
                combine_bytes_per_element=2.0 if model is None
                else model.combine_bytes_per_element, backend=backend,
            ))
            step()
        results.append(tuple(row))
        if model is not None:
            costs.append(tuple(estimate_cost(r, model, options) for r in row))
    messages: list[str] = []
    if not any(t.is_token_level for t in traces):
        messages.append("the held-out traces hold aggregated counts: balance only; traffic "
                        "needs token-level traces, and tokens/s count expert compute only.")
    if model is None:
        messages.append("model shape unknown: no bytes, tokens/s or $ (give --model).")
    for r in results[0]:
        messages.extend(m for m in r.messages if m not in messages)
    # ratios are to the EPLB baseline (else the first baseline)
    first_baseline = len(plans) - len(baselines)
    ref: int | None = None
    if baselines:
        ref = first_baseline + (list(baselines).index("eplb") if "eplb" in baselines else 0)
    return Comparison(
        labels=tuple(names), plans=tuple(plans), baseline=tuple(flags),
        trace_names=tuple(tnames), traces_token_level=tuple(t.is_token_level for t in traces),
        results=tuple(results), costs=tuple(costs) if model is not None else None, model=model,
        cost_options=options, reference=ref, dispatch=dispatch,
        baseline_source=baseline_source, messages=tuple(messages),
    )
