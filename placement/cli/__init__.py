"""The ``placement`` command line: a thin shell over the library.

Each command lives in its own module and registers itself on :data:`main`; pure ``format_*``
functions turn results into text, and the commands only print.
"""

from placement.cli import (  # noqa: F401  (modules register their commands on import)
    capture_cmd,
    compare_cmd,
    demo_cmd,
    engines_cmd,
    solve_cmd,
    sweep_cmd,
    trace_cmd,
    validate_cmd,
)
from placement.cli._app import main

__all__ = ["main"]
