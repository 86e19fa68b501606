"""docs/cost-model.md shows the reference table the code prints today."""

from __future__ import annotations

from pathlib import Path

from placement.cost import deepseek_reference_comparison, format_reference_comparison

DOC = Path(__file__).resolve().parents[2] / "docs" / "cost-model.md"


def test_the_documented_reference_table_is_current() -> None:
    doc = DOC.read_text(encoding="utf-8")
    table = format_reference_comparison(deepseek_reference_comparison())
    for line in table.splitlines():
        if line.startswith(("|", "- ")):
            assert line in doc, f"docs/cost-model.md is out of date; expected:\n{line}"
