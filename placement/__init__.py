"""placement: expert placement and routing optimizer for Mixture-of-Experts inference.

Data flows one way: routing traces -> solver -> plan -> validate / export / report.

    from placement import Cluster, load_trace, solve, replay, export_plan

The names below are loaded on first use (``placement.solve`` imports the solver then), so that
``import placement`` and the command line start fast; ``from placement import X`` works as usual.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY: dict[str, str] = {
    "PRESETS": "placement.cluster",
    "Cluster": "placement.cluster",
    "MemoryModel": "placement.cluster",
    "load_cluster": "placement.cluster",
    "CostEstimate": "placement.cost",
    "CostOptions": "placement.cost",
    "ModelShape": "placement.cost",
    "estimate_cost": "placement.cost",
    "model_preset": "placement.cost",
    "ExportResult": "placement.engines",
    "ImportResult": "placement.engines",
    "export_plan": "placement.engines",
    "import_plan": "placement.engines",
    "CapabilityError": "placement.errors",
    "ClusterError": "placement.errors",
    "EngineFormatError": "placement.errors",
    "InputError": "placement.errors",
    "PlacementError": "placement.errors",
    "PlanError": "placement.errors",
    "SolverError": "placement.errors",
    "TraceFormatError": "placement.errors",
    "Plan": "placement.plan",
    "static_dispatch": "placement.plan",
    "Comparison": "placement.report",
    "compare": "placement.report",
    "write_report": "placement.report",
    "Trace": "placement.routing_traces",
    "inspect_trace": "placement.routing_traces",
    "load_trace": "placement.routing_traces",
    "read_native": "placement.routing_traces",
    "synthesize": "placement.routing_traces",
    "write_native": "placement.routing_traces",
    "METHODS": "placement.solver",
    "ProblemData": "placement.solver",
    "SolveOptions": "placement.solver",
    "SolveResult": "placement.solver",
    "solve": "placement.solver",
    "ValidationResult": "placement.validation",
    "replay": "placement.validation",
}

__all__ = [
    "METHODS",
    "PRESETS",
    "CapabilityError",
    "Cluster",
    "ClusterError",
    "Comparison",
    "CostEstimate",
    "CostOptions",
    "EngineFormatError",
    "ExportResult",
    "ImportResult",
    "InputError",
    "MemoryModel",
    "ModelShape",
    "PlacementError",
    "Plan",
    "PlanError",
    "ProblemData",
    "SolveOptions",
    "SolveResult",
    "SolverError",
    "Trace",
    "TraceFormatError",
    "ValidationResult",
    "__version__",
    "compare",
    "estimate_cost",
    "export_plan",
    "import_plan",
    "inspect_trace",
    "load_cluster",
    "load_trace",
    "model_preset",
    "read_native",
    "replay",
    "solve",
    "static_dispatch",
    "synthesize",
    "write_native",
    "write_report",
]


def __getattr__(name: str) -> Any:
    """Import the module that defines ``name`` on first use, then keep the value here."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'placement' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from placement.cluster import PRESETS, Cluster, MemoryModel, load_cluster
    from placement.cost import CostEstimate, CostOptions, ModelShape, estimate_cost, model_preset
    from placement.engines import ExportResult, ImportResult, export_plan, import_plan
    from placement.errors import (
        CapabilityError,
        ClusterError,
        EngineFormatError,
        InputError,
        PlacementError,
        PlanError,
        SolverError,
        TraceFormatError,
    )
    from placement.plan import Plan, static_dispatch
    from placement.report import Comparison, compare, write_report
    from placement.routing_traces import (
        Trace,
        inspect_trace,
        load_trace,
        read_native,
        synthesize,
        write_native,
    )
    from placement.solver import METHODS, ProblemData, SolveOptions, SolveResult, solve
    from placement.validation import ValidationResult, replay
