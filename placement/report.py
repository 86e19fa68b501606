"""Compare plans against baselines on held-out traces, and write the report (Markdown, HTML, PNG).

:func:`compare` replays every plan (the user's and baselines made on the fly for the same
cluster, from data other than the held-out traces) on every held-out trace and estimates what
it means in tokens/s and dollars (:mod:`placement.cost`); :func:`write_report` writes
``report.md``, a self-contained ``report.html`` (figures embedded as base64 PNG) and the PNG
figures. The ``format_*`` functions are pure (comparison -> text).
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from placement._io import atomic_write_bytes, atomic_write_text
from placement.cluster import Cluster
from placement.cost import (
    CostEstimate,
    CostOptions,
    ModelShape,
    deepseek_reference_comparison,
    estimate_cost,
    format_reference_comparison,
)
from placement.errors import InputError
from placement.plan import Plan
from placement.routing_traces.trace import Trace
from placement.validation import RULES, ValidationResult, replay

__all__ = [
    "BASELINES",
    "Comparison",
    "SummaryRow",
    "compare",
    "format_comparison",
    "format_summary_table",
    "render_html",
    "render_markdown",
    "write_report",
]

BASELINES: tuple[str, ...] = ("eplb", "eplb-global", "contiguous")
"""Baselines :func:`compare` can make: DeepSeek's EPLB (hierarchical when it applies, or
global) and the engines' contiguous default (needs no data)."""

NA_TRAFFIC = "n/a (needs token-level trace)"
NA = "n/a"

Progress = Callable[[str], None]


# -------------------------------------------------------------------------------------------
# data
# -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SummaryRow:
    """One plan's figures, averaged over the held-out traces (None: not measurable).

    ``*_ratio`` fields are the value divided by the reference plan's (EPLB's).
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
    def layer_ids(self) -> np.ndarray:
        """``[L]`` replayed decoder-layer ids (those of the first trace)."""
        return self.results[0][0].layer_ids

    @property
    def has_traffic(self) -> bool:
        """Whether any held-out trace is token-level."""
        return any(self.traces_token_level)

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
        tps = usd = None
        compute_only = True
        if cmp.costs is not None:
            spt = _mean([c.seconds_per_token for c in cmp.costs[i]])
            if spt is not None and spt > 0:
                tps = 1.0 / spt
                c0 = cmp.costs[i][0]
                usd = c0.cluster.num_gpus * c0.usd_per_gpu_hour / 3600.0 / tps * 1e6
            compute_only = all(c.compute_only for c in cmp.costs[i])
        rows.append(SummaryRow(
            label=label, method=cmp.plans[i].method, baseline=cmp.baseline[i], imbalance=imb,
            sends_per_token=sends, copies_per_token=copies, cross_node_gb_per_million_tokens=gb,
            tokens_per_s=tps, usd_per_million_tokens=usd, compute_only=compute_only,
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
    like: Plan | Trace,
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
    traces: Sequence[Trace],
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
) -> Comparison:
    """Replay ``plans`` and freshly made ``baselines`` on the held-out ``traces``.

    Args:
        traces: held-out traces (token-level for traffic; counts give balance only).
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
        progress: called with a line before each replay.
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
    like: Plan | Trace = plans[0] if plans else traces[0]
    for b in baselines:
        if progress is not None:
            progress(f"planning baseline {b}")
        plans.append(_baseline_plan(b, cluster, like, baseline_inputs))
        names.append(b)
        flags.append(True)
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
            if progress is not None:
                progress(f"replaying {names[i]} on {tnames[j]}")
            row.append(replay(
                p, t, dispatch=dispatch, device=device, plan_name=names[i], trace_name=tnames[j],
                hidden_size=None if model is None else model.hidden_size,
                dispatch_bytes_per_element=1.0 if model is None
                else model.dispatch_bytes_per_element,
                combine_bytes_per_element=2.0 if model is None
                else model.combine_bytes_per_element,
            ))
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


# -------------------------------------------------------------------------------------------
# text
# -------------------------------------------------------------------------------------------
def _num(x: float | None, fmt: str) -> str:
    return NA if x is None or not math.isfinite(x) else format(x, fmt)


def _si(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return NA
    for unit, scale in (("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.1f}{unit}"
    return f"{x:.0f}"


def _with_ratio(text: str, ratio: float | None) -> str:
    return text if ratio is None or text == NA else f"{text} ({ratio:.3f}x)"


SUMMARY_HEADER = (
    "plan", "method", "imbalance (max/mean)", "cross-node sends per token",
    "cross-node GB per 1M tokens", "est. tokens/s", "$ per 1M tokens",
)


def summary_cells(cmp: Comparison) -> list[list[str]]:
    """The summary table's cells, one list per plan (ratios to the reference in brackets)."""
    out = []
    traffic_na = NA_TRAFFIC if not cmp.has_traffic else NA
    for r in cmp.rows():
        sends = _num(r.sends_per_token, ".3f")
        gb = _num(r.cross_node_gb_per_million_tokens, ".1f")
        tps = _si(r.tokens_per_s)
        if r.tokens_per_s is not None and r.compute_only:
            tps += " (compute only)"
        out.append([
            r.label + (" (baseline)" if r.baseline else ""),
            r.method,
            _with_ratio(_num(r.imbalance, ".4f"), r.imbalance_ratio),
            _with_ratio(sends, r.sends_ratio) if r.sends_per_token is not None else traffic_na,
            _with_ratio(gb, r.gb_ratio) if r.cross_node_gb_per_million_tokens is not None
            else (traffic_na if r.sends_per_token is None else NA),
            _with_ratio(tps, r.tokens_per_s_ratio),
            _with_ratio(_num(r.usd_per_million_tokens, ".4g"), r.usd_ratio),
        ])
    return out


def format_summary_table(cmp: Comparison) -> str:
    """The summary as a Markdown table (one row per plan)."""
    lines = ["| " + " | ".join(SUMMARY_HEADER) + " |",
             "|---|---|" + "---:|" * (len(SUMMARY_HEADER) - 2)]
    for cells in summary_cells(cmp):
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _pct(r: float | None) -> str:
    if r is None:
        return NA
    return f"{(r - 1) * 100:+.1f}%"


def _verdict(cmp: Comparison) -> list[str]:
    """Plain sentences: the best plan against the reference."""
    if cmp.reference is None:
        return ["No baseline to compare against (give --baseline eplb)."]
    rows = cmp.rows()
    b, ref = rows[cmp.best], rows[cmp.reference]
    if cmp.best == cmp.reference:
        return [f"{ref.label} is the only plan; figures are absolute."]
    out = [
        f"{b.label} against {ref.label} on the held-out data: imbalance {b.imbalance:.4f} vs "
        f"{ref.imbalance:.4f} ({_pct(b.imbalance_ratio)})."
    ]
    if b.sends_per_token is not None and ref.sends_per_token is not None:
        out.append(
            f"Cross-node sends per token {b.sends_per_token:.3f} vs {ref.sends_per_token:.3f} "
            f"({_pct(b.sends_ratio)} in the data each token sends over the network)."
        )
    else:
        out.append(f"Traffic: {NA_TRAFFIC}.")
    if b.tokens_per_s is not None and ref.tokens_per_s is not None and b.tokens_per_s_ratio:
        kind = "expert compute only" if b.compute_only else "expert compute and all-to-all"
        out.append(
            f"Estimated MoE-part throughput {_si(b.tokens_per_s)} vs {_si(ref.tokens_per_s)} "
            f"tokens/s ({b.tokens_per_s_ratio:.3f}x; {kind}); $ per million tokens "
            f"{_num(b.usd_per_million_tokens, '.4g')} vs {_num(ref.usd_per_million_tokens, '.4g')}"
            f" ({_pct(b.usd_ratio)}). The cost model is an upper bound that leaves out attention, "
            "KV cache and scheduling: trust the ratio, not the absolute figure."
        )
    return out


def format_comparison(cmp: Comparison) -> str:
    """Text summary for a terminal: one line per plan, then the verdict."""
    c = cmp.cluster
    lines = [
        f"compared {len(cmp.plans)} plan(s) on {len(cmp.trace_names)} held-out trace(s), "
        f"cluster {c.shape} ({c.num_gpus} GPUs), dispatch {cmp.dispatch}",
    ]
    head = ["plan", "imbalance", "sends/token", "GB/1M tok", "tokens/s", "$/1M tok"]
    table = [head]
    for r in cmp.rows():
        table.append([
            r.label,
            _with_ratio(_num(r.imbalance, ".4f"), r.imbalance_ratio),
            _with_ratio(_num(r.sends_per_token, ".3f"), r.sends_ratio),
            _with_ratio(_num(r.cross_node_gb_per_million_tokens, ".1f"), r.gb_ratio),
            _with_ratio(_si(r.tokens_per_s), r.tokens_per_s_ratio),
            _with_ratio(_num(r.usd_per_million_tokens, ".4g"), r.usd_ratio),
        ])
    widths = [max(len(row[c]) for row in table) for c in range(len(head))]
    for row in table:
        cells = [row[0].ljust(widths[0])] + [x.rjust(w) for x, w in zip(row[1:], widths[1:],
                                                                        strict=True)]
        lines.append("  ".join(cells).rstrip())
    lines.extend(_verdict(cmp))
    for m in cmp.messages:
        lines.append(f"note: {m}")
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------
# figures
# -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Figure:
    """A rendered figure: file name, title, caption and PNG bytes."""

    name: str
    title: str
    caption: str
    png: bytes


def _busiest_layer(cmp: Comparison, i: int) -> int:
    ns = cmp.node_sends(i)
    if ns is not None:
        return int(np.argmax(ns.sum(axis=(1, 2))))
    return int(np.argmax(cmp.loads(i).sum(axis=1)))


def _layer_index(cmp: Comparison, layer: int | None, i: int) -> int:
    if layer is None:
        return _busiest_layer(cmp, i)
    ids = cmp.layer_ids.tolist()
    if layer not in ids:
        raise InputError(f"--layer {layer} was not replayed (replayed layers: "
                         f"{ids[0]}-{ids[-1]} of {len(ids)}).")
    return ids.index(layer)


def _png(fig: object) -> bytes:
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")  # type: ignore[attr-defined]
    plt.close(fig)  # type: ignore[arg-type]
    return buf.getvalue()


def _node_lines(ax: object, G: int, gpn: int, *, both: bool, color: str = "white") -> None:
    many = G // gpn > 8  # thin lines when there are many nodes
    kw = {"color": color, "linewidth": 0.5 if many else 1.2, "alpha": 0.6 if many else 1.0}
    for b in range(gpn, G, gpn):
        ax.axvline(b - 0.5, **kw)  # type: ignore[attr-defined]
        if both:
            ax.axhline(b - 0.5, **kw)  # type: ignore[attr-defined]


def make_figures(cmp: Comparison, *, layer: int | None = None) -> list[Figure]:
    """The report's figures (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import TwoSlopeNorm

    figs: list[Figure] = []
    lids = cmp.layer_ids
    c = cmp.cluster
    G, gpn = c.num_gpus, c.gpus_per_node
    styles = ["-", "--", "-.", ":"]

    # 1. per-layer imbalance
    fig, ax = plt.subplots(figsize=(9, 4.2))
    for i, lab in enumerate(cmp.labels):
        v = cmp.mean_layer_values(i, "imbalance")
        assert v is not None
        ax.plot(lids, v, styles[i % 4], marker="o", markersize=3, linewidth=1.5,
                label=f"{lab} (mean {v.mean():.3f})")
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_xlabel("decoder layer")
    ax.set_ylabel("imbalance: max / mean tokens per GPU")
    ax.set_title("Per-layer imbalance on the held-out traces (lower is better, 1 = perfect)")
    ax.grid(alpha=0.3)
    ax.legend()
    figs.append(Figure("imbalance.png", "Per-layer imbalance",
                       "Max / mean tokens per GPU in every replayed layer, averaged over the "
                       "held-out traces.", _png(fig)))

    # 2. per-layer cross-node sends
    if cmp.has_traffic:
        fig, ax = plt.subplots(figsize=(9, 4.2))
        for i, lab in enumerate(cmp.labels):
            v = cmp.mean_layer_values(i, "sends")
            if v is not None:
                ax.plot(lids, v, styles[i % 4], marker="o", markersize=3, linewidth=1.5,
                        label=f"{lab} (mean {v.mean():.3f})")
        top = max((float(np.max(v)) for i in range(len(cmp.labels))
                   if (v := cmp.mean_layer_values(i, "sends")) is not None), default=1.0)
        ax.set_ylim(0, max(top, 1e-9) * 1.3)
        ax.set_xlabel("decoder layer")
        ax.set_ylabel("cross-node sends per token\n(distinct remote nodes)")
        ax.set_title(f"Per-layer cross-node sends per token ({c.num_nodes} nodes; lower is "
                     "better)")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", ncol=min(3, len(cmp.labels)))
        figs.append(Figure("cross_node_sends.png", "Per-layer cross-node sends",
                           "Distinct remote nodes a token is sent to, per layer, on the "
                           "token-level held-out traces.", _png(fig)))

    # 3. heat map of tokens per GPU per layer: best plan and the reference
    show = [cmp.best] + ([cmp.reference] if cmp.reference not in (None, cmp.best) else [])
    rel = []
    for i in show:
        ld = cmp.loads(i)
        mean = ld.mean(axis=1, keepdims=True)
        rel.append(np.divide(ld, mean, out=np.ones_like(ld), where=mean > 0))
    # diverging scale centred on 1 (an even share): red GPUs are overloaded, blue ones idle
    dev = max(float(np.max(np.abs(r - 1.0))) for r in rel) or 0.1
    fig, axes = plt.subplots(1, len(show), figsize=(6.2 * len(show), 5.4), squeeze=False,
                             layout="constrained")
    im = None
    for ax, i, r in zip(axes[0], show, rel, strict=True):
        norm = TwoSlopeNorm(vmin=max(0.0, 1.0 - dev), vcenter=1.0, vmax=1.0 + dev)
        im = ax.imshow(r, aspect="auto", cmap="RdBu_r", norm=norm, origin="lower",
                       extent=(-0.5, G - 0.5, -0.5, len(lids) - 0.5), interpolation="nearest")
        _node_lines(ax, G, gpn, both=False, color="black")
        ticks = np.linspace(0, len(lids) - 1, min(len(lids), 8)).round().astype(int)
        ax.set_yticks(ticks)
        ax.set_yticklabels([str(int(lids[t])) for t in ticks])
        ax.set_xlabel("GPU (EP rank)")
        ax.set_ylabel("decoder layer")
        ax.set_title(f"{cmp.labels[i]} (hottest GPU {r.max():.2f}x the mean)")
    assert im is not None
    fig.colorbar(im, ax=axes[0].tolist(), label="tokens per GPU / layer mean (1 = even share)")
    fig.suptitle(f"Tokens per GPU per layer on the held-out traces (red = overloaded; black "
                 f"lines: node boundaries, {gpn} GPUs per node)")
    figs.append(Figure("tokens_per_gpu.png", "Tokens per GPU per layer",
                       "Expert-token assignments per GPU, divided by the layer's mean: the "
                       "reddest cell is the GPU every other GPU waits for in its layer.", _png(fig)))

    # 4. GPU x GPU traffic of one layer
    if cmp.has_traffic:
        li = _layer_index(cmp, layer, cmp.best)
        mats = [(i, cmp.matrix(i)) for i in show]
        mats = [(i, m) for i, m in mats if m is not None]
        per_tok = []
        for i, m in mats:
            tok = sum(float(r.tokens[li]) for r in cmp.results[i] if r.tokens is not None
                      and r.matrix is not None)
            assert m is not None
            per_tok.append(m[li] / max(tok, 1.0))
        vmax = max(float(np.max(m)) for m in per_tok) or 1.0
        fig, axes = plt.subplots(1, len(mats), figsize=(6.2 * len(mats), 5.6), squeeze=False,
                                 layout="constrained")
        for ax, (i, _), m in zip(axes[0], mats, per_tok, strict=True):
            im = ax.imshow(m, cmap="viridis", vmin=0.0, vmax=vmax, interpolation="nearest")
            _node_lines(ax, G, gpn, both=True)
            sends = cmp.mean_layer_values(i, "sends")
            s = float(sends[li]) if sends is not None else float("nan")
            ax.set_xlabel("destination GPU (holds the expert)")
            ax.set_ylabel("source GPU (holds the token)")
            ax.set_title(f"{cmp.labels[i]}: cross-node sends per token {s:.3f}")
        fig.colorbar(im, ax=axes[0].tolist(), label="expert copies per token (dispatch)")
        fig.suptitle(f"GPU x GPU all-to-all of decoder layer {int(lids[li])}; white lines: "
                     "node blocks (off-block = cross-node)")
        figs.append(Figure("traffic_matrix.png", f"Traffic matrix of layer {int(lids[li])}",
                           "Expert-token copies from every source GPU to every destination GPU "
                           "per token of the layer (dispatch; combine sends the same back, the "
                           "transpose). Diagonal blocks stay inside a node (NVLink), the rest "
                           "crosses the network.", _png(fig)))
    return figs


# -------------------------------------------------------------------------------------------
# documents
# -------------------------------------------------------------------------------------------
def _context_lines(cmp: Comparison) -> list[str]:
    c = cmp.cluster
    lines = [
        f"- Cluster: {c.summary()}; NVLink {c.nvlink_gbps:g} GB/s, network {c.network_gbps:g} "
        f"GB/s, {c.gpu_tflops:g} TFLOP/s per GPU.",
        "- Held-out traces: " + ", ".join(
            f"{n} ({'token-level' if tl else 'aggregated counts'})"
            for n, tl in zip(cmp.trace_names, cmp.traces_token_level, strict=True)) + ".",
        f"- Replayed layers: {len(cmp.layer_ids)} ({int(cmp.layer_ids[0])}-"
        f"{int(cmp.layer_ids[-1])}); dispatch rule: {cmp.dispatch}.",
    ]
    if cmp.model is not None:
        lines.append(f"- Model: {cmp.model.summary()}.")
        o = cmp.cost_options
        lines.append(f"- Cost model: overlap {o.overlap}, GEMM efficiency {o.efficiency:g}, "
                     f"price ${cmp.costs[0][0].usd_per_gpu_hour:g} per GPU-hour."
                     if cmp.costs else f"- Cost model: overlap {o.overlap}.")
    if any(cmp.baseline):
        lines.append(f"- Baselines made for this cluster: "
                     f"{', '.join(lab for lab, b in zip(cmp.labels, cmp.baseline, strict=True) if b)}"
                     + (f", planned from {cmp.baseline_source}" if cmp.baseline_source else "")
                     + ".")
    return lines


def render_markdown(cmp: Comparison, figures: Sequence[Figure]) -> str:
    """``report.md``: context, summary table, verdict, figures (linked PNGs), reference."""
    ref = cmp.labels[cmp.reference] if cmp.reference is not None else None
    parts = ["# Expert placement: held-out comparison", ""]
    parts += _context_lines(cmp)
    parts += ["", "## Summary", "", format_summary_table(cmp), ""]
    if ref is not None:
        parts.append(f"Brackets: ratio to {ref} (below 1 is better for imbalance, traffic and $; "
                     "above 1 is better for tokens/s). Cross-node GB count dispatch and combine "
                     "over all MoE layers of the model.")
        parts.append("")
    parts += ["## What it means", ""]
    parts += [f"- {s}" for s in _verdict(cmp)]
    parts.append("")
    for f in figures:
        parts += [f"## {f.title}", "", f"![{f.title}]({f.name})", "", f.caption, ""]
    parts += ["## DeepSeek's published figures vs this cost model", ""]
    parts.append(format_reference_comparison(deepseek_reference_comparison(
        options=cmp.cost_options)))
    parts.append("")
    if cmp.messages:
        parts += ["## Notes", ""] + [f"- {m}" for m in cmp.messages] + [""]
    return "\n".join(parts)


_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222}table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #bbb;
padding:4px 8px}td{text-align:right}td:first-child,td:nth-child(2){text-align:left}
th{background:#eee}img{max-width:100%}figcaption{color:#555;font-size:90%}"""


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    out = ["<table>", "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"]
    for r in rows:
        out.append("<tr>" + "".join(f"<td>{html.escape(x)}</td>" for x in r) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _md_table_to_html(md: str) -> tuple[str, str]:
    """Split a Markdown block into (table as HTML, following text as paragraphs)."""
    rows = [ln for ln in md.splitlines() if ln.startswith("|")]
    rest = [ln for ln in md.splitlines() if ln and not ln.startswith("|")]
    cells = [[c.strip() for c in ln.strip("|").split("|")] for ln in rows]
    table = _html_table(cells[0], [r for r in cells[2:]]) if cells else ""
    return table, "".join(f"<p>{html.escape(p)}</p>" for p in rest)


def render_html(cmp: Comparison, figures: Sequence[Figure]) -> str:
    """``report.html``: the same content, self-contained (figures as base64 PNG data URIs)."""
    ref = cmp.labels[cmp.reference] if cmp.reference is not None else None
    body = ["<h1>Expert placement: held-out comparison</h1>", "<ul>"]
    body += [f"<li>{html.escape(ln[2:])}</li>" for ln in _context_lines(cmp)]
    body += ["</ul>", "<h2>Summary</h2>", _html_table(SUMMARY_HEADER, summary_cells(cmp))]
    if ref is not None:
        body.append(f"<p>Brackets: ratio to {html.escape(ref)} (below 1 is better for imbalance, "
                    "traffic and $; above 1 is better for tokens/s).</p>")
    body += ["<h2>What it means</h2>", "<ul>"]
    body += [f"<li>{html.escape(s)}</li>" for s in _verdict(cmp)]
    body.append("</ul>")
    for f in figures:
        data = base64.b64encode(f.png).decode("ascii")
        body += [f"<h2>{html.escape(f.title)}</h2>", "<figure>",
                 f'<img alt="{html.escape(f.title)}" src="data:image/png;base64,{data}">',
                 f"<figcaption>{html.escape(f.caption)}</figcaption>", "</figure>"]
    body.append("<h2>DeepSeek's published figures vs this cost model</h2>")
    table, text = _md_table_to_html(format_reference_comparison(
        deepseek_reference_comparison(options=cmp.cost_options)))
    body += [table, text]
    if cmp.messages:
        body += ["<h2>Notes</h2>", "<ul>"] + [f"<li>{html.escape(m)}</li>" for m in cmp.messages]
        body.append("</ul>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<title>Expert placement comparison</title>"
            f"<style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def write_report(cmp: Comparison, out_dir: str | Path, *, layer: int | None = None) -> list[Path]:
    """Write ``report.md``, ``report.html`` and the PNG figures into ``out_dir``.

    ``layer``: decoder-layer id of the traffic matrix figure (default: the busiest layer of the
    best plan). Every file is written atomically. Returns the paths written.
    """
    out = Path(out_dir)
    figures = make_figures(cmp, layer=layer)
    paths = []
    for f in figures:
        atomic_write_bytes(out / f.name, f.png)
        paths.append(out / f.name)
    atomic_write_text(out / "report.md", render_markdown(cmp, figures))
    atomic_write_text(out / "report.html", render_html(cmp, figures))
    return [*paths, out / "report.md", out / "report.html"]
