"""Start-up stays light: ``placement --help`` and ``import placement`` load none of the heavy
libraries, and the lazy tables agree with what they stand for. (How fast it is, is measured by
benchmarks, not asserted here.)"""

from __future__ import annotations

import importlib
import subprocess
import sys

import click
import pytest

import placement
from placement.cli import main

HEAVY = ("torch", "matplotlib", "ortools", "scipy", "pymetis", "yaml", "safetensors", "ray")


def _modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys\nprint(' '.join(sys.modules))"],
                         capture_output=True, text=True, check=True)
    return set(out.stdout.split())


@pytest.mark.parametrize("code", [
    "import placement",
    "import placement.validation, placement.cost, placement.report, placement.engines",
    "from placement.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass",
    "from placement.cli import main\ntry:\n    main(['trace', 'inspect', 'bundled:mixtral'])\n"
    "except SystemExit:\n    pass",
])
def test_heavy_libraries_are_not_imported(code: str) -> None:
    loaded = _modules_after(code)
    assert not [m for m in HEAVY if m in loaded]


def test_lazy_names_cover_all() -> None:
    assert set(placement._LAZY) | {"__version__"} == set(placement.__all__)
    for name, module in placement._LAZY.items():
        assert getattr(importlib.import_module(module), name) is getattr(placement, name)


def test_lazy_commands_say_what_they_are() -> None:
    ctx = click.Context(main)
    assert set(main.lazy) <= set(main.list_commands(ctx))
    for name, (_module, short) in main.lazy.items():
        cmd = main.get_command(ctx, name)
        assert cmd is not None, name
        assert cmd.get_short_help_str(200) == short, name
