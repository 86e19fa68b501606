"""The report documents: ``report.md``, a self-contained ``report.html`` and the PNG files."""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from placement._io import atomic_write_bytes, atomic_write_text
from placement.cost import deepseek_reference_comparison, format_reference_comparison
from placement.report.comparison import Comparison
from placement.report.figures import Figure, make_figures
from placement.report.tables import format_summary_table, summary_cells, summary_header, verdict

if TYPE_CHECKING:
    from placement.frontier import Frontier

__all__ = [
    "FRONTIER_FILES",
    "frontier_table",
    "render_html",
    "render_markdown",
    "shows_deepseek_reference",
    "write_report",
]

FRONTIER_FILES: tuple[str, ...] = ("frontier.png", "frontier.json")
"""What :func:`write_report` adds to the report directory when given a frontier."""

_FRONTIER_TITLE = "Balance against traffic: the frontier (held out)"


def frontier_table(fr: Frontier) -> tuple[list[str], list[list[str]]]:
    """``(header, rows)`` of the frontier section: every plan's held-out figures, and its
    sends and predicted MoE layer time as ratios to EPLB's."""
    from placement.solver.result import format_seconds

    ref = next((p for p in fr.points if p.label == "eplb"), None)
    header = ["plan", "imbalance (static)", "sends/token", "copies/token", "MoE layer time"]
    if ref is not None:
        header += ["sends/eplb", "time/eplb"]
    rows = []
    for p in fr.points:
        row = [p.label, f"{p.imbalance:.4f}", f"{p.sends:.4f}", f"{p.copies:.4f}",
               format_seconds(p.predicted_time)]
        if ref is not None:
            row += [f"{p.sends / ref.sends:.3f}" if ref.sends else "n/a",
                    f"{p.predicted_time / ref.predicted_time:.3f}" if ref.predicted_time
                    else "n/a"]
        rows.append(row)
    return header, rows


def _frontier_caption(fr: Frontier) -> str:
    return (f"The planning traces solved at several trade-offs (balance only; cross-node "
            f"sends at balance tolerances; the predicted MoE layer time) beside the baselines, "
            f"every plan judged on the held-out traces ({fr.heldout_tokens} tokens, static "
            f"dispatch). MoE layer time: {fr.overlap} overlap, model {fr.model.name}, hardware "
            f"{fr.figures.summary()}.")


def _frontier_markdown(fr: Frontier) -> list[str]:
    header, rows = frontier_table(fr)
    lines = [f"## {_FRONTIER_TITLE}", "", "| " + " | ".join(header) + " |",
             "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += ["", f"![frontier]({FRONTIER_FILES[0]})", "", _frontier_caption(fr), ""]
    return lines


def _frontier_png(fr: Frontier) -> bytes:
    import matplotlib.pyplot as plt

    from placement.frontier import frontier_figure

    fig = frontier_figure(fr)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


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


def shows_deepseek_reference(cmp: Comparison) -> bool:
    """Whether the report has the section of DeepSeek's published figures: they are for
    DeepSeek-V3 on DeepSeek's own deployments, so only a report on DeepSeek-V3 (or, the model
    unknown, on one of those deployments' cluster presets) has it; a Mixtral report on 2x2x3
    has nothing to learn from it."""
    from placement.cost.reference import DEEPSEEK_PUBLISHED

    if cmp.model is not None:
        return cmp.model.name == "deepseek-v3"
    presets = {preset for preset, _published, _which in DEEPSEEK_PUBLISHED.values()}
    return cmp.cluster.name in presets


def render_markdown(cmp: Comparison, figures: Sequence[Figure], *,
                    frontier: Frontier | None = None) -> str:
    """``report.md``: context, summary table, verdict, figures (linked PNGs), the frontier
    (when given: a table and ``frontier.png``), DeepSeek's published figures (for DeepSeek-V3,
    :func:`shows_deepseek_reference`)."""
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
    if frontier is not None:
        parts += _frontier_markdown(frontier)
    if shows_deepseek_reference(cmp):
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


def render_html(cmp: Comparison, figures: Sequence[Figure], *,
                frontier: Frontier | None = None, frontier_png: bytes | None = None) -> str:
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
    if frontier is not None:
        header, rows = frontier_table(frontier)
        body += [f"<h2>{html.escape(_FRONTIER_TITLE)}</h2>", _html_table(header, rows)]
        if frontier_png is not None:
            data = base64.b64encode(frontier_png).decode("ascii")
            body += ["<figure>", f'<img alt="frontier" src="data:image/png;base64,{data}">',
                     f"<figcaption>{html.escape(_frontier_caption(frontier))}</figcaption>",
                     "</figure>"]
    if shows_deepseek_reference(cmp):
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


def write_report(cmp: Comparison, out_dir: str | Path, *, layer: int | None = None,
                 frontier: Frontier | None = None) -> list[Path]:
    """Write ``report.md``, ``report.html`` and the PNG figures into ``out_dir``.

    ``layer``: decoder-layer id of the traffic matrix figure (default: the layer where the best
    plan and the reference differ most, :func:`~placement.report.figures.traffic_layer`).
    ``frontier`` (:func:`placement.frontier.frontier`): also ``frontier.png``, ``frontier.json``
    and a section in both documents. Every file is written atomically.
    Returns the paths written.
    """
    out = Path(out_dir)
    figures = make_figures(cmp, layer=layer)
    paths = []
    for f in figures:
        atomic_write_bytes(out / f.name, f.png)
        paths.append(out / f.name)
    png: bytes | None = None
    if frontier is not None:
        png = _frontier_png(frontier)
        atomic_write_bytes(out / FRONTIER_FILES[0], png)
        atomic_write_text(out / FRONTIER_FILES[1],
                          json.dumps(frontier.to_dict(), indent=2) + "\n")
        paths += [out / n for n in FRONTIER_FILES]
    atomic_write_text(out / "report.md", render_markdown(cmp, figures, frontier=frontier))
    atomic_write_text(out / "report.html", render_html(cmp, figures, frontier=frontier,
                                                       frontier_png=png))
    return [*paths, out / "report.md", out / "report.html"]
