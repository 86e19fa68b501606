"""The report documents: ``report.md``, a self-contained ``report.html`` and the PNG files."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path

from placement._io import atomic_write_bytes, atomic_write_text
from placement.cost import deepseek_reference_comparison, format_reference_comparison
from placement.report.comparison import Comparison
from placement.report.figures import Figure, make_figures
from placement.report.tables import format_summary_table, summary_cells, summary_header, verdict

__all__ = ["render_html", "render_markdown", "write_report"]


def _context_lines(cmp: Comparison) -> list[str]:
    c = cmp.cluster
    lines = [
        f"- Cluster: {c.summary()}; hardware {cmp.figures.summary()}.",
        "- Held-out traces: " + ", ".join(
            f"{n} ({'token-level' if tl else 'aggregated counts'})"
            for n, tl in zip(cmp.trace_names, cmp.traces_token_level, strict=True)) + ".",
        f"- Replayed layers: {len(cmp.layer_ids)} ({int(cmp.layer_ids[0])}-"
        f"{int(cmp.layer_ids[-1])}); {cmp.dispatch_phrase}.",
    ]
    if cmp.model is not None:
        lines.append(f"- Model: {cmp.model.summary()}.")
        o = cmp.cost_options
        lines.append(f"- Cost model: overlap {o.overlap}, GEMM efficiency {o.efficiency:g}, "
                     f"price ${cmp.costs[0][0].usd_per_gpu_hour:g} per GPU-hour."
                     if cmp.costs else f"- Cost model: overlap {o.overlap}.")
        if cmp.costs:
            scope = ("the MoE part alone (routed-expert GEMMs and the all-to-all): an upper bound "
                     "on throughput and a lower bound on $" if all(r.moe_only for r in cmp.rows())
                     else "the whole model")
            lines.append(f"- Tokens/s are per node (x {c.num_nodes} for the cluster) and, like "
                         f"$ per 1M tokens, count {scope}.")
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
    parts += [f"- {s}" for s in verdict(cmp)]
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
    body += ["</ul>", "<h2>Summary</h2>", _html_table(summary_header(cmp), summary_cells(cmp))]
    if ref is not None:
        body.append(f"<p>Brackets: ratio to {html.escape(ref)} (below 1 is better for imbalance, "
                    "traffic and $; above 1 is better for tokens/s).</p>")
    body += ["<h2>What it means</h2>", "<ul>"]
    body += [f"<li>{html.escape(s)}</li>" for s in verdict(cmp)]
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
