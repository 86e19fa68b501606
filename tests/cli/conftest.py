"""What every CLI test uses: run a command in-process, and check a user error's one line."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from click.testing import CliRunner, Result

from placement.cli import main

Run = Callable[..., Result]
"""``run("validate", plan, trace, ...)``: arguments may be paths or numbers."""

ErrorCheck = Callable[..., None]
"""``error(result, line)``: exit status 1, nothing on stdout, exactly ``line`` on stderr."""


def _run(*args: Any) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def _error(result: Result, line: str | None = None, *, contains: str | None = None,
           code: int = 1) -> None:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    if line is not None:
        assert lines[0] == line
    if contains is not None:
        assert contains in lines[0]


@pytest.fixture
def run() -> Run:
    """Run ``placement ARGS...`` with click's test runner (stdout and stderr apart)."""
    return _run


@pytest.fixture
def error() -> ErrorCheck:
    """Check a one-line user error: ``error(result, "error: ...")`` for the exact line, or
    ``error(result, contains="...")``; ``code=2`` for usage errors."""
    return _error
