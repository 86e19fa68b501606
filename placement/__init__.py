"""placement: expert placement and routing optimizer for Mixture-of-Experts inference.

Data flows one way: routing traces -> solver -> plan -> validate / export / report.

    from placement import Cluster, load_trace, solve, replay, export_plan
"""

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

__version__ = "0.1.0"

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
