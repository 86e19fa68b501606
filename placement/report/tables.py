"""The comparison as text: the summary table (Markdown and terminal), the verdict sentences."""

from __future__ import annotations

import math

from placement.report.comparison import Comparison

__all__ = ["NA", "NA_TRAFFIC", "format_comparison", "format_summary_table", "summary_cells",
           "summary_header", "verdict"]

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


def _bound(cmp: Comparison) -> str:
    """`` (MoE-part bound)`` where the cost model counts the MoE part alone."""
    rows = cmp.rows()
    return " (MoE-part bound)" if rows and all(r.moe_only for r in rows) else ""


def summary_header(cmp: Comparison) -> tuple[str, ...]:
    """The summary table's column names (the imbalance column names the dispatch rule its
    loads used; tokens/s are per node)."""
    b = _bound(cmp)
    return ("plan", "method", cmp.imbalance_label, "cross-node sends per token",
            "cross-node GB per 1M tokens", f"tokens/s per node{b}", f"$ per 1M tokens{b}")


def summary_cells(cmp: Comparison) -> list[list[str]]:
    """The summary table's cells, one list per plan (ratios to the reference in brackets)."""
    out = []
    traffic_na = NA_TRAFFIC if not cmp.has_traffic else NA
    for r in cmp.rows():
        sends = num(r.sends_per_token, ".3f")
        gb = num(r.cross_node_gb_per_million_tokens, ".1f")
        tps = si(r.tokens_per_s_per_node)
        if r.tokens_per_s_per_node is not None and r.compute_only:
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
    header = summary_header(cmp)
    lines = ["| " + " | ".join(header) + " |",
             "|---|---|" + "---:|" * (len(header) - 2)]
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
    if b.tokens_per_s_per_node is not None and ref.tokens_per_s_per_node is not None \
            and b.tokens_per_s_ratio:
        kind = "expert compute only" if b.compute_only else "expert compute and all-to-all"
        what = "MoE-part throughput" if b.moe_only else "throughput"
        text = (
            f"Estimated {what} {si(b.tokens_per_s_per_node)} vs "
            f"{si(ref.tokens_per_s_per_node)} tokens/s per node ({b.tokens_per_s_ratio:.3f}x; "
            f"{kind}); $ per million tokens {num(b.usd_per_million_tokens, '.4g')} vs "
            f"{num(ref.usd_per_million_tokens, '.4g')} ({_pct(b.usd_ratio)})."
        )
        if b.moe_only:
            text += (" These are the MoE part's bound (attention, KV cache and scheduling left "
                     "out): trust the ratio, not the absolute figure.")
        out.append(text)
    return out


def format_comparison(cmp: Comparison) -> str:
    """Text summary for a terminal: one line per plan, then the verdict."""
    c = cmp.cluster
    lines = [
        f"compared {len(cmp.plans)} plan(s) on {len(cmp.trace_names)} held-out trace(s), "
        f"cluster {c.shape} ({c.num_gpus} GPUs), {cmp.dispatch_phrase}",
    ]
    head = ["plan", cmp.imbalance_label, "sends/token", "GB/1M tok", "tokens/s/node",
            "$/1M tok"]
    table = [head]
    for r in cmp.rows():
        table.append([
            r.label,
            _with_ratio(num(r.imbalance, ".4f"), r.imbalance_ratio),
            _with_ratio(num(r.sends_per_token, ".3f"), r.sends_ratio),
            _with_ratio(num(r.cross_node_gb_per_million_tokens, ".1f"), r.gb_ratio),
            _with_ratio(si(r.tokens_per_s_per_node), r.tokens_per_s_ratio),
            _with_ratio(num(r.usd_per_million_tokens, ".4g"), r.usd_ratio),
        ])
    widths = [max(len(row[c]) for row in table) for c in range(len(head))]
    for row in table:
        cells = [row[0].ljust(widths[0])] + [x.rjust(w) for x, w in zip(row[1:], widths[1:],
                                                                        strict=True)]
        lines.append("  ".join(cells).rstrip())
    if cmp.costs is not None and _bound(cmp):
        lines.append("(tokens/s per node and $ per 1M tokens: the cost model's bound from the "
                     "MoE part alone)")
    lines.extend(verdict(cmp))
    for m in cmp.messages:
        lines.append(f"note: {m}")
    return "\n".join(lines)
