"""The comparison as text: the summary table (Markdown and terminal), the verdict sentences."""

from __future__ import annotations

import math

from placement.report.comparison import Comparison

__all__ = ["NA", "NA_TRAFFIC", "SUMMARY_HEADER", "format_comparison", "format_summary_table",
           "summary_cells", "verdict"]

NA_TRAFFIC = "n/a (needs token-level trace)"
NA = "n/a"


def num(x: float | None, fmt: str) -> str:
    return NA if x is None or not math.isfinite(x) else format(x, fmt)


def si(x: float | None) -> str:
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
        sends = num(r.sends_per_token, ".3f")
        gb = num(r.cross_node_gb_per_million_tokens, ".1f")
        tps = si(r.tokens_per_s)
        if r.tokens_per_s is not None and r.compute_only:
            tps += " (compute only)"
        out.append([
            r.label + (" (baseline)" if r.baseline else ""),
            r.method,
            _with_ratio(num(r.imbalance, ".4f"), r.imbalance_ratio),
            _with_ratio(sends, r.sends_ratio) if r.sends_per_token is not None else traffic_na,
            _with_ratio(gb, r.gb_ratio) if r.cross_node_gb_per_million_tokens is not None
            else (traffic_na if r.sends_per_token is None else NA),
            _with_ratio(tps, r.tokens_per_s_ratio),
            _with_ratio(num(r.usd_per_million_tokens, ".4g"), r.usd_ratio),
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


def verdict(cmp: Comparison) -> list[str]:
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
            f"Estimated MoE-part throughput {si(b.tokens_per_s)} vs {si(ref.tokens_per_s)} "
            f"tokens/s ({b.tokens_per_s_ratio:.3f}x; {kind}); $ per million tokens "
            f"{num(b.usd_per_million_tokens, '.4g')} vs {num(ref.usd_per_million_tokens, '.4g')}"
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
            _with_ratio(num(r.imbalance, ".4f"), r.imbalance_ratio),
            _with_ratio(num(r.sends_per_token, ".3f"), r.sends_ratio),
            _with_ratio(num(r.cross_node_gb_per_million_tokens, ".1f"), r.gb_ratio),
            _with_ratio(si(r.tokens_per_s), r.tokens_per_s_ratio),
            _with_ratio(num(r.usd_per_million_tokens, ".4g"), r.usd_ratio),
        ])
    widths = [max(len(row[c]) for row in table) for c in range(len(head))]
    for row in table:
        cells = [row[0].ljust(widths[0])] + [x.rjust(w) for x, w in zip(row[1:], widths[1:],
                                                                        strict=True)]
        lines.append("  ".join(cells).rstrip())
    lines.extend(verdict(cmp))
    for m in cmp.messages:
        lines.append(f"note: {m}")
    return "\n".join(lines)
