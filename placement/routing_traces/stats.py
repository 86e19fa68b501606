"""What a user checks first about a trace: shape, skew, co-activation and drift.

:func:`inspect_trace` computes a :class:`TraceStats` (per-layer figures, NaN where a layer has no
routed token); :func:`format_trace_stats` renders it as text (pure; the CLI prints it) and
:meth:`TraceStats.to_dict` as JSON-ready data.

Definitions (per traced layer, then min / mean / max over layers):

* max/mean load: the busiest expert's tokens over the mean expert's (1 = perfectly even);
* hot-10% share: share of the layer's assignments that go to its hottest ``ceil(E / 10)``
  experts (0.1 = even);
* co-activation (token-level only): of all pairwise co-activation mass (tokens routed to both
  experts i < j), the share held by the top 1% (5%) of pairs; the same share under independent
  routing, where pair (i, j) gets mass proportional to ``n_i * n_j``; and their ratio, the lift;
* drift: total-variation distance ``0.5 * sum_e |share_a(e) - share_b(e)|`` between the expert
  shares of two windows, averaged over layers; given for every pair of windows (up to
  :data:`MAX_PAIRWISE_WINDOWS` windows) and for each window against the whole trace. It
  includes sampling noise: small windows drift more.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np

from placement._util import format_ids
from placement.routing_traces.sharded import ShardedTrace
from placement.routing_traces.trace import Trace

if TYPE_CHECKING:
    from placement.parallel import Backend

__all__ = [
    "MAX_PAIRWISE_WINDOWS",
    "TraceStats",
    "activation_rate_top_k",
    "describe_trace",
    "format_trace_stats",
    "infer_top_k",
    "inspect_trace",
]

MAX_PAIRWISE_WINDOWS = 64
_TOP_PAIRS = (0.01, 0.05)


@dataclass(frozen=True)
class TraceStats:
    """Figures about one trace (per-layer tuples are ``[L]``, NaN where undefined)."""

    source: str | None
    model: str | None
    kind: str
    num_layers: int
    num_experts: int
    top_k: int | None
    top_k_source: str | None
    num_tokens: int | None
    num_assignments: float
    num_windows: int
    num_source_ranks: int | None
    layer_ids: tuple[int, ...]
    num_hidden_layers: int | None
    dense_layer_ids: tuple[int, ...]
    window_names: tuple[str, ...]
    window_assignments: tuple[float, ...]
    layer_max_over_mean: tuple[float, ...]
    layer_hot10_share: tuple[float, ...]
    layer_coact_top1_share: tuple[float, ...] | None
    layer_coact_top1_share_independent: tuple[float, ...] | None
    layer_coact_top5_share: tuple[float, ...] | None
    layer_coact_top5_share_independent: tuple[float, ...] | None
    window_tv_vs_all: tuple[float, ...] | None
    drift_tv_pairwise_mean: float | None
    drift_tv_pairwise_max: float | None
    model_guess: str | None = None
    """The model preset guessed as ``placement solve`` guesses it (the model name, else the
    only preset with the trace's expert count and top-k), or None."""

    # summaries ------------------------------------------------------------------------------
    @staticmethod
    def summary(values: tuple[float, ...] | None) -> dict[str, float | None] | None:
        """``{"min", "mean", "max"}`` over the finite values (None when there are none)."""
        if values is None:
            return None
        a = np.asarray(values, dtype=np.float64)
        a = a[np.isfinite(a)]
        if a.size == 0:
            return {"min": None, "mean": None, "max": None}
        return {"min": float(a.min()), "mean": float(a.mean()), "max": float(a.max())}

    def coact_lift(self, which: str = "top1") -> float | None:
        """Mean over layers of observed / independent top-pair share (None for counts)."""
        obs = getattr(self, f"layer_coact_{which}_share")
        ind = getattr(self, f"layer_coact_{which}_share_independent")
        if obs is None or ind is None:
            return None
        with np.errstate(divide="ignore", invalid="ignore"):
            lift = np.asarray(obs) / np.asarray(ind)
        lift = lift[np.isfinite(lift)]
        return float(lift.mean()) if lift.size else None

    def to_dict(self) -> dict[str, Any]:
        """Every field (NaN -> None) plus ``skew``, ``coactivation`` and ``drift`` summaries."""
        out: dict[str, Any] = {f.name: _clean(getattr(self, f.name)) for f in fields(self)}
        out["skew"] = {
            "max_over_mean": self.summary(self.layer_max_over_mean),
            "hot10_share": self.summary(self.layer_hot10_share),
        }
        if self.layer_coact_top1_share is None:
            out["coactivation"] = None
        else:
            out["coactivation"] = {
                f"top{p}": {
                    "share": _mean(getattr(self, f"layer_coact_top{p}_share")),
                    "share_independent": _mean(
                        getattr(self, f"layer_coact_top{p}_share_independent")),
                    "lift": self.coact_lift(f"top{p}"),
                }
                for p in (1, 5)
            }
        out["drift"] = None if self.window_tv_vs_all is None else {
            "tv_pairwise_mean": self.drift_tv_pairwise_mean,
            "tv_pairwise_max": self.drift_tv_pairwise_max,
            "tv_vs_all": self.summary(self.window_tv_vs_all),
        }
        return out


def _clean(v: Any) -> Any:
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, tuple):
        return [_clean(x) for x in v]
    return v


def _mean(values: tuple[float, ...] | None) -> float | None:
    s = TraceStats.summary(values)
    return None if s is None else s["mean"]


def _tuple(a: np.ndarray) -> tuple[float, ...]:
    return tuple(float(x) for x in a.tolist())


# -------------------------------------------------------------------------------------------
# computation
# -------------------------------------------------------------------------------------------
def _skew(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``counts [L, E]`` -> (max/mean ``[L]``, hot-10% share ``[L]``), NaN for empty layers."""
    E = counts.shape[1]
    total = counts.sum(axis=1)
    n_hot = max(1, math.ceil(E / 10))
    hot = -np.partition(-counts, n_hot - 1, axis=1)[:, :n_hot].sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        max_over_mean = np.where(total > 0, counts.max(axis=1) / (total / E), np.nan)
        share = np.where(total > 0, hot / total, np.nan)
    return max_over_mean, share


def _top_share(values: np.ndarray, n: int) -> float:
    total = values.sum()
    if total <= 0:
        return math.nan
    return float(-np.partition(-values, n - 1)[:n].sum() / total)


def pair_counts(ids: np.ndarray, num_experts: int) -> tuple[np.ndarray, np.ndarray]:
    """``ids [T, L, k]`` (-1 = none) -> per layer, ``[L, E * E]`` tokens routed to both experts
    i < j (flat index ``i * E + j``, upper triangle only) and ``[L, E]`` tokens routed to each
    expert. A token listing an expert twice counts it once. Numpy only: one ``bincount`` of the
    ``k (k - 1) / 2`` pairs of every token per layer (the bins of one layer stay in cache)."""
    T, L, k = ids.shape
    E = num_experts
    pairs = np.zeros((L, E * E), dtype=np.int64)
    single = np.zeros((L, E), dtype=np.int64)
    if T == 0:
        return pairs, single
    # 1. sorted per token, repeats dropped, laid out [L, k, T] so that every slot is contiguous
    x = np.sort(ids, axis=2).astype(np.int32)
    x[:, :, 1:][x[:, :, 1:] == x[:, :, :-1]] = -1
    x = np.ascontiguousarray(x.transpose(1, 2, 0))
    ia, ib = np.triu_indices(k, 1)
    # 2. per layer: sorted ids make a < b for every valid pair
    for layer in range(L):
        xl = x[layer]
        single[layer] = np.bincount(xl[xl >= 0], minlength=E)
        if len(ia):
            a, b = xl[ia], xl[ib]  # [pairs, T]
            valid = (a >= 0) & (b >= 0)
            pairs[layer] = np.bincount((a * E + b)[valid], minlength=E * E)
    return pairs, single


def _coactivation(trace: Trace | ShardedTrace, counts: tuple[np.ndarray, np.ndarray] | None = None
                  ) -> dict[str, np.ndarray]:
    """Per layer: share of pair mass in the top 1% / 5% pairs, observed and independent (a
    sharded trace's pair counts are summed chunk by chunk); ``counts``: the ``(pairs [L, E * E],
    single [L, E])`` counts already gathered."""
    E = trace.num_experts
    iu = np.triu_indices(E, k=1)
    n_pairs = len(iu[0])
    out = {f"{w}{p}": np.full(trace.num_layers, np.nan)
           for w in ("obs", "ind") for p in (1, 5)}
    if n_pairs == 0:
        return out
    if counts is not None:
        pairs, single = counts
    elif isinstance(trace, ShardedTrace):
        pairs = np.zeros((trace.num_layers, E * E), dtype=np.int64)
        single = np.zeros((trace.num_layers, E), dtype=np.int64)
        for ids, _src in trace.iter_token_chunks(max(1, (1 << 20) // trace.num_layers)):
            chunk_pairs, chunk_single = pair_counts(np.asarray(ids), E)
            pairs += chunk_pairs
            single += chunk_single
    else:
        pairs, single = pair_counts(trace.topk_ids, E)
    upper = iu[0] * E + iu[1]
    for layer in range(trace.num_layers):
        obs = pairs[layer][upper].astype(np.float64)
        d = single[layer].astype(np.float64)
        ind = (d[:, None] * d[None, :])[iu]
        for frac, p in zip(_TOP_PAIRS, (1, 5), strict=True):
            n = max(1, math.ceil(frac * n_pairs))
            out[f"obs{p}"][layer] = _top_share(obs, n)
            out[f"ind{p}"][layer] = _top_share(ind, n)
    return out


def _drift(wc: np.ndarray) -> tuple[np.ndarray, float | None, float | None]:
    """``wc [W, L, E]`` -> (TV of each window vs the whole trace ``[W]``, pairwise mean, max).

    TVs are averaged over the layers where both distributions have mass.
    """
    W = wc.shape[0]
    tot = wc.sum(axis=2, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        shares = np.where(tot > 0, wc / tot, np.nan)                  # [W, L, E]
        pooled = wc.sum(axis=0)
        pooled = pooled / pooled.sum(axis=1, keepdims=True)           # [L, E]
    tv_all = 0.5 * np.abs(shares - pooled[None]).sum(axis=2)           # [W, L]
    tv_all = np.where(tot[:, :, 0] > 0, tv_all, np.nan)
    vs_all = np.array([_nanmean(row) for row in tv_all])
    if W > MAX_PAIRWISE_WINDOWS:
        return vs_all, None, None
    pair: list[float] = []
    for i in range(W - 1):
        tv = 0.5 * np.abs(shares[i][None] - shares[i + 1:]).sum(axis=2)  # [W-i-1, L]
        pair.extend(_nanmean(row) for row in tv)
    p = np.asarray(pair)
    p = p[np.isfinite(p)]
    if p.size == 0:
        return vs_all, None, None
    return vs_all, float(p.mean()), float(p.max())


def _nanmean(a: np.ndarray) -> float:
    a = a[np.isfinite(a)]
    return float(a.mean()) if a.size else math.nan


def activation_rate_top_k(wc: np.ndarray) -> int | None:
    """``wc [W, L, E]`` -> k when the counts are activation rates (shares of tokens, not
    whole counts) whose every window and layer sums to the same whole number ``k``: each token
    picks k experts. None otherwise."""
    if wc.size == 0 or np.all(wc == np.round(wc)):
        return None
    sums = wc.sum(axis=2).reshape(-1)
    sums = sums[sums > 0]
    if sums.size == 0:
        return None
    k = round(float(np.median(sums)))
    if 1 <= k <= wc.shape[2] and np.allclose(sums, k, rtol=1e-3, atol=1e-3):
        return k
    return None


def infer_top_k(trace: Trace | ShardedTrace, wc: np.ndarray | None = None) -> tuple[int | None, str | None]:
    """Experts per token and how it is known: ``(k, source)``, source one of ``"trace"``
    (token-level, or a counts file that records it), ``"activation rates"`` (see
    :func:`activation_rate_top_k`) or ``"model preset NAME"`` (the trace's model name, when
    that preset has the trace's expert count); ``(None, None)`` when nothing tells."""
    if trace.top_k is not None:
        return trace.top_k, "trace"
    k = activation_rate_top_k(trace.window_counts() if wc is None else wc)
    if k is not None:
        return k, "activation rates"
    from placement.models import guess_model

    if trace.model:
        m = guess_model(trace.model)
        if m is not None and m.num_experts == trace.num_experts:
            return m.top_k, f"model preset {m.name}"
    m = guess_model(num_experts=trace.num_experts)  # as solve guesses the model
    if m is not None:
        return m.top_k, f"model {m.name}, guessed from {trace.num_experts} experts"
    return None, None


def inspect_trace(trace: Trace | ShardedTrace, *, source: str | None = None,
                  coactivation: bool = True, top_k: int | None = None,
                  backend: Backend | None = None) -> TraceStats:
    """Shape, per-layer skew, co-activation (token-level traces) and drift of ``trace``.

    Args:
        trace: any trace; a sharded one is read once, shard by shard (counts and
            co-activation, :func:`~placement.routing_traces.statistics.gather_statistics`).
        source: where it came from, for the report.
        coactivation: compute co-activation (``[E, E]`` per layer; skip for speed).
        top_k: experts per token, for a counts trace that does not say (see
            :func:`infer_top_k` for what is tried otherwise); must agree with a trace that
            does.
        backend: where a sharded trace's shards are read (:mod:`placement.parallel`;
            default: this process).
    """
    from placement.errors import InputError

    gathered: tuple[np.ndarray, np.ndarray] | None = None
    if isinstance(trace, ShardedTrace):
        # one streaming pass, a task per shard on `backend`: counts and co-activation
        from placement.routing_traces.statistics import gather_statistics

        st = gather_statistics(trace, backend, sample_tokens=1, coactivation=coactivation)
        wc = st.window_counts.astype(np.float64)                       # [W, L, E]
        if st.coactivation is not None:
            co3 = st.coactivation
            gathered = (co3.reshape(co3.shape[0], -1), np.einsum("lii->li", co3))
    else:
        wc = trace.window_counts()                                     # [W, L, E]
    k: int | None
    k_source: str | None
    if top_k is not None:
        if top_k < 1:
            raise InputError(f"Expected top_k >= 1, got {top_k}.")
        if trace.top_k is not None and trace.top_k != top_k:
            raise InputError(f"--top-k {top_k} contradicts the trace, which routes each token "
                             f"to {trace.top_k} experts.")
        k, k_source = top_k, "--top-k"
    else:
        k, k_source = infer_top_k(trace, wc)
    counts = wc.sum(axis=0)
    max_over_mean, hot10 = _skew(counts)
    co = _coactivation(trace, gathered) if (trace.is_token_level and coactivation) else None
    if trace.num_windows > 1:
        vs_all, pair_mean, pair_max = _drift(wc)
        tv_vs_all: tuple[float, ...] | None = _tuple(vs_all)
    else:
        tv_vs_all, pair_mean, pair_max = None, None, None
    from placement.models import guess_model

    guess = guess_model(trace.model, num_experts=trace.num_experts, top_k=k)
    return TraceStats(
        model_guess=None if guess is None else guess.name,
        source=source,
        model=trace.model,
        kind=trace.kind,
        num_layers=trace.num_layers,
        num_experts=trace.num_experts,
        top_k=k,
        top_k_source=k_source,
        num_tokens=trace.num_tokens,
        num_assignments=float(counts.sum()),
        num_windows=trace.num_windows,
        num_source_ranks=trace.num_source_ranks,
        layer_ids=tuple(int(i) for i in trace.layer_ids.tolist()),
        num_hidden_layers=trace.num_hidden_layers,
        dense_layer_ids=tuple(trace.dense_layer_ids),
        window_names=tuple(trace.window_names),
        window_assignments=_tuple(wc.sum(axis=(1, 2))),
        layer_max_over_mean=_tuple(max_over_mean),
        layer_hot10_share=_tuple(hot10),
        layer_coact_top1_share=None if co is None else _tuple(co["obs1"]),
        layer_coact_top1_share_independent=None if co is None else _tuple(co["ind1"]),
        layer_coact_top5_share=None if co is None else _tuple(co["obs5"]),
        layer_coact_top5_share_independent=None if co is None else _tuple(co["ind5"]),
        window_tv_vs_all=tv_vs_all,
        drift_tv_pairwise_mean=pair_mean,
        drift_tv_pairwise_max=pair_max,
    )


# -------------------------------------------------------------------------------------------
# text
# -------------------------------------------------------------------------------------------
def _ids(ids: tuple[int, ...]) -> str:
    """``3-60`` for a run, else a short list."""
    return format_ids(ids, max_chars=60)


def _num(v: float | None, digits: int = 2) -> str:
    if v is None or not math.isfinite(v):
        return "-"
    return f"{v:.{digits}f}"


def _count(v: float) -> str:
    """A count as a whole number with thousands separators (activation rates and split counts
    are fractional; their sum is shown to the nearest whole assignment)."""
    return f"{round(float(v)):,}"


def _names(names: tuple[str, ...], width: int = 64) -> str:
    """As many names as fit in about ``width`` characters, then how many more."""
    shown: list[str] = []
    for i, name in enumerate(names):
        if shown and len(", ".join([*shown, name])) > width:
            return ", ".join(shown) + f", ... ({len(names) - i} more)"
        shown.append(name)
    return ", ".join(shown)


def format_trace_stats(stats: TraceStats, *, per_layer: bool = False) -> str:
    """The report ``placement trace inspect`` prints (no trailing newline)."""
    s = stats
    lines: list[str] = []
    if s.source:
        lines.append(f"trace         {s.source}")
    if s.model:
        model = s.model
    elif s.model_guess is not None:  # the guess solve makes, and says
        model = (f"{s.model_guess} (guessed from {s.num_experts} experts per layer"
                 + (f", top-{s.top_k}" if s.top_k is not None and s.top_k_source == "trace"
                    else "") + ")")
    else:
        model = "unknown"
    lines.append(f"model         {model}")
    if s.kind == "tokens":
        lines.append(f"routing       token-level: {s.num_tokens:,} tokens, top-{s.top_k}")
    elif s.top_k_source == "activation rates":
        lines.append(f"routing       aggregated activation rates (shares of tokens), top-"
                     f"{s.top_k} (each window and layer sums to {s.top_k})")
    elif s.top_k is None:
        lines.append("routing       aggregated counts, top-k unknown (give --top-k K)")
    else:
        why = "" if s.top_k_source in (None, "trace") else f" ({s.top_k_source})"
        lines.append(f"routing       aggregated counts, top-{s.top_k}{why}")
    layers = f"{s.num_layers} MoE (ids {_ids(s.layer_ids)})"
    if s.num_hidden_layers is not None:
        dense = _ids(s.dense_layer_ids)
        layers += f" of {s.num_hidden_layers} decoder layers; dense: {dense}"
    lines.append(f"layers        {layers}")
    lines.append(f"experts       {s.num_experts} per layer")
    lines.append(f"windows       {s.num_windows}: {_names(s.window_names)}")
    lines.append(f"source ranks  {s.num_source_ranks if s.num_source_ranks else 'not recorded'}")
    lines.append(f"assignments   {_count(s.num_assignments)} (all layers)")
    lines.append("")
    lines.append(f"{'per-layer skew':<28}{'min':>8}{'mean':>8}{'max':>8}")
    for label, vals in (("max/mean expert load", s.layer_max_over_mean),
                        ("hottest 10% experts' share", s.layer_hot10_share)):
        sm = TraceStats.summary(vals) or {}
        lines.append(f"  {label:<26}{_num(sm.get('min')):>8}{_num(sm.get('mean')):>8}"
                     f"{_num(sm.get('max')):>8}")
    lines.append("")
    if s.layer_coact_top1_share is None and s.kind == "tokens":
        lines.append("co-activation  not computed (--no-coactivation)")
    elif s.layer_coact_top1_share is None:
        lines.append("co-activation  needs token-level routing (this trace holds counts)")
    else:
        lines.append("co-activation (share of pair mass in the top pairs, mean over layers)")
        for p in (1, 5):
            obs = _mean(getattr(s, f"layer_coact_top{p}_share"))
            ind = _mean(getattr(s, f"layer_coact_top{p}_share_independent"))
            lines.append(f"  top {p}% pairs  {_num(obs, 3)}  independent {_num(ind, 3)}  "
                         f"lift {_num(s.coact_lift(f'top{p}'))}x")
    lines.append("")
    if s.window_tv_vs_all is None:
        lines.append("drift         one window")
    else:
        lines.append("drift (total variation of expert shares, mean over layers)")
        if s.drift_tv_pairwise_mean is not None:
            lines.append(f"  window pairs      mean {_num(s.drift_tv_pairwise_mean, 3)}  "
                         f"max {_num(s.drift_tv_pairwise_max, 3)}")
        sm = TraceStats.summary(s.window_tv_vs_all) or {}
        lines.append(f"  window vs all     min {_num(sm.get('min'), 3)}  "
                     f"mean {_num(sm.get('mean'), 3)}  max {_num(sm.get('max'), 3)}")
    if per_layer:
        lines.append("")
        head = f"{'layer':>6}{'max/mean':>10}{'hot10%':>8}"
        if s.layer_coact_top1_share is not None:
            head += f"{'top1% pairs':>13}{'indep':>8}"
        lines.append(head)
        for i, lid in enumerate(s.layer_ids):
            row = (f"{lid:>6}{_num(s.layer_max_over_mean[i]):>10}"
                   f"{_num(s.layer_hot10_share[i], 3):>8}")
            if s.layer_coact_top1_share is not None:
                indep = s.layer_coact_top1_share_independent
                row += (f"{_num(s.layer_coact_top1_share[i], 3):>13}"
                        f"{_num(indep[i] if indep else None, 3):>8}")
            lines.append(row)
    return "\n".join(lines)


def describe_trace(trace: Trace | ShardedTrace) -> str:
    """One line: ``synthetic DeepSeek-V3, 4,096 tokens x 58 MoE layers, top-8 of 256 experts,
    2 windows, 32 source ranks``."""
    what = (f"{trace.num_tokens:,} tokens" if trace.is_token_level
            else f"counts ({_count(trace.num_assignments)} assignments)")
    k = f"top-{trace.top_k} of " if trace.top_k is not None else ""
    ranks = f", {trace.num_source_ranks} source ranks" if trace.num_source_ranks else ""
    windows = f"{trace.num_windows} window{'s' if trace.num_windows != 1 else ''}"
    head = f"{trace.model}, " if trace.model else ""
    return (f"{head}{what} x {trace.num_layers} MoE layers, {k}{trace.num_experts} experts, "
            f"{windows}{ranks}")
