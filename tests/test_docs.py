"""The README and docs/ stay in step with the code: the set-up commands with CI, the links with
the files."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def test_readme_test_command_is_what_ci_runs() -> None:
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    cmds = re.findall(r"^(python3 -m venv .venv && .+)$", readme, re.M)
    assert len(cmds) == 2, cmds
    install, test = cmds
    assert install.endswith("pip install . && placement demo")
    # CI: the same install, then ruff and mypy, then the same test command
    ci_line = next(line for line in ci.splitlines() if line.startswith("pip install torch"))
    prefix = "python3 -m venv .venv && . .venv/bin/activate && "
    assert test.startswith(prefix)
    steps = test[len(prefix):].split(" && ")
    ci_steps = ci_line.split(" && ")
    assert [s for s in ci_steps if not s.startswith(("ruff", "mypy"))] == steps


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_links_resolve(page: Path) -> None:
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
        if target.startswith(("http://", "https://", "data:")) or target.endswith(".png"):
            continue
        path = (page.parent / target).resolve()
        assert path.exists(), f"{page.name} links to {target}, which does not exist"


def test_readme_is_the_short_version() -> None:
    text = (REPO / "README.md").read_text()
    assert len(text) < 18_000  # its examples run as written and show their real (trimmed) output
    for heading in ("## Quickstart", "## The four commands", "## A worked example",
                    "## Documentation"):
        assert heading in text
