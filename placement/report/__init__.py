"""Compare plans against baselines on held-out traces, and write the report (Markdown, HTML, PNG).

:func:`compare` replays every plan (the user's and baselines made on the fly for the same
cluster, from data other than the held-out traces) on every held-out trace and estimates what
it means in tokens/s and dollars (:mod:`placement.cost`); :func:`write_report` writes
``report.md``, a self-contained ``report.html`` (figures embedded as base64 PNG) and the PNG
figures. The ``format_*`` functions are pure (comparison -> text).

Modules: :mod:`~placement.report.comparison` (the computation: :func:`compare`,
:class:`Comparison`), :mod:`~placement.report.tables` (the tables and sentences),
:mod:`~placement.report.figures` (matplotlib, imported when figures are drawn) and
:mod:`~placement.report.render` (Markdown, HTML, files).
"""

from placement.report.comparison import BASELINES, Comparison, SummaryRow, compare
from placement.report.figures import Figure, make_figures
from placement.report.render import render_html, render_markdown, write_report
from placement.report.tables import (
    NA,
    NA_TRAFFIC,
    format_comparison,
    format_summary_table,
    summary_cells,
)

__all__ = [
    "BASELINES",
    "NA",
    "NA_TRAFFIC",
    "Comparison",
    "Figure",
    "SummaryRow",
    "compare",
    "format_comparison",
    "format_summary_table",
    "make_figures",
    "render_html",
    "render_markdown",
    "summary_cells",
    "write_report",
]
