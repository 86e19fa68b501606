"""The progress bar on a terminal: a line printed while it is up starts on a line of its own."""

from __future__ import annotations

import io
import re
from contextlib import redirect_stdout

import pytest
from rich.console import Console

from placement.cli._app import progress_bar

_CSI = re.compile(r"\x1b\[(\d*)([A-Za-z])|\x1b\[\?\d+[hl]")


def _screen(raw: str) -> list[str]:
    """What a terminal shows after ``raw``: carriage return, new line, erase line (``ESC[2K``)
    and cursor up (``ESC[nA``); other escape sequences (colours) are dropped."""
    lines, row, col = [""], 0, 0
    pos = 0
    while pos < len(raw):
        m = _CSI.match(raw, pos)
        if m:
            n, code = (m.group(1), m.group(2)) if m.group(2) else ("", "")
            if code == "K":
                lines[row] = ""
            elif code == "A":
                row = max(0, row - int(n or 1))
                col = min(col, len(lines[row]))
            pos = m.end()
            continue
        ch = raw[pos]
        pos += 1
        if ch == "\r":
            col = 0
        elif ch == "\n":
            row += 1
            col = 0
            if row == len(lines):
                lines.append("")
        else:
            line = lines[row]
            lines[row] = line[:col].ljust(col) + ch + line[col + 1:]
            col += 1
    return lines


@pytest.fixture
def terminal() -> tuple[io.StringIO, Console]:
    """One stream for the bar (a forced terminal) and for standard output (tests redirect
    stdout to it in their body: pytest resets sys.stdout between setup and call), as on a
    tty."""
    out = io.StringIO()
    return out, Console(file=out, force_terminal=True, width=80)


def test_a_line_after_the_bar_starts_clean(terminal: tuple[io.StringIO, Console]) -> None:
    out, console = terminal
    with redirect_stdout(out), progress_bar("solving layers", "layers", console=console) as bar:
        assert bar is not None
        bar(58, 58)
        bar.echo("solved in 8.4 s")
        assert not bar.live
        bar.echo("exported the SGLang placement file x.json")
    screen = [ln for ln in _screen(out.getvalue()) if ln.strip()]
    assert screen == ["solved in 8.4 s", "exported the SGLang placement file x.json"]


def test_the_bar_comes_back_for_more_work(terminal: tuple[io.StringIO, Console]) -> None:
    out, console = terminal
    with redirect_stdout(out), progress_bar("comparing", console=console) as bar:
        assert bar is not None
        bar(1, 2)
        bar.echo("first half done")
        bar(2, 2)
        assert bar.live
    assert [ln for ln in _screen(out.getvalue()) if ln.strip()] == ["first half done"]


def test_no_bar_off_a_terminal() -> None:
    with progress_bar("solving", console=Console(file=io.StringIO(), force_terminal=False)) as bar:
        assert bar is None
