"""placement: expert placement and routing optimizer for Mixture-of-Experts inference.

Data flows one way: routing traces -> solver -> plan -> validate / export / report.

    from placement import Cluster, load_trace, solve, replay, export_plan

The names below are loaded on first use (``placement.solve`` imports the solver then), so that
``import placement`` and the command line start fast; ``from placement import X`` works as usual.

Functions named like their module stay there, so that a name never means two things:
``placement.sweep.sweep``, ``placement.simulate.simulate``, ``placement.frontier.frontier``.
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
    "WorkerError": "placement.errors",
    "GPU": "placement.hardware",
    "GPU_PRESETS": "placement.hardware",
    "gpu_preset": "placement.hardware",
    "MODEL_PRESETS": "placement.models",
    "BASELINES": "placement.solver",
    "OBJECTIVES": "placement.solver",
    "SolverMethod": "placement.solver",
    "ReplanOptions": "placement.solver.replan",
    "ReplanResult": "placement.solver.replan",
    "replan": "placement.solver.replan",
    "PlanDiff": "placement.plan_diff",
    "diff_plans": "placement.plan_diff",
    "PlanView": "placement.plan_show",
    "describe_plan": "placement.plan_show",
    "PlanSource": "placement.plan_source",
    "read_plan": "placement.plan_source",
    "SimulateOptions": "placement.simulate",
    "SimulationResult": "placement.simulate",
    "SweepOptions": "placement.sweep",
    "SweepResult": "placement.sweep",
    "Frontier": "placement.frontier",
    "Backend": "placement.parallel",
    "Local": "placement.parallel",
    "Processes": "placement.parallel",
    "Ray": "placement.parallel",
    "ShardedTrace": "placement.routing_traces.sharded",
    "open_sharded": "placement.routing_traces.sharded",
    "write_sharded": "placement.routing_traces.sharded",
    "open_trace_source": "placement.routing_traces.sharded",
    "convert_trace": "placement.routing_traces.convert",
    "TraceStatistics": "placement.routing_traces.statistics",
    "gather_statistics": "placement.routing_traces.statistics",
    "DEFAULT_SAMPLE_TOKENS": "placement.routing_traces.statistics",
    "Efficiency": "placement.hardware",
    "HardwareFigures": "placement.hardware",
    "effective_figures": "placement.hardware",
    "ValidationResult": "placement.validation",
    "replay": "placement.validation",
}

__all__ = [
    "BASELINES",
    "DEFAULT_SAMPLE_TOKENS",
    "GPU",
    "GPU_PRESETS",
    "METHODS",
    "MODEL_PRESETS",
    "OBJECTIVES",
    "PRESETS",
    "Backend",
    "CapabilityError",
    "Cluster",
    "ClusterError",
    "Comparison",
    "CostEstimate",
    "CostOptions",
    "Efficiency",
    "EngineFormatError",
    "ExportResult",
    "Frontier",
    "HardwareFigures",
    "ImportResult",
    "InputError",
    "Local",
    "MemoryModel",
    "ModelShape",
    "PlacementError",
    "Plan",
    "PlanDiff",
    "PlanError",
    "PlanSource",
    "PlanView",
    "ProblemData",
    "Processes",
    "Ray",
    "ReplanOptions",
    "ReplanResult",
    "ShardedTrace",
    "SimulateOptions",
    "SimulationResult",
    "SolveOptions",
    "SolveResult",
    "SolverError",
    "SolverMethod",
    "SweepOptions",
    "SweepResult",
    "Trace",
    "TraceFormatError",
    "TraceStatistics",
    "ValidationResult",
    "WorkerError",
    "__version__",
    "compare",
    "convert_trace",
    "describe_plan",
    "diff_plans",
    "effective_figures",
    "estimate_cost",
    "export_plan",
    "gather_statistics",
    "gpu_preset",
    "import_plan",
    "inspect_trace",
    "load_cluster",
    "load_trace",
    "model_preset",
    "open_sharded",
    "open_trace_source",
    "read_native",
    "read_plan",
    "replan",
    "replay",
    "solve",
    "static_dispatch",
    "synthesize",
    "write_native",
    "write_report",
    "write_sharded",
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
        WorkerError,
    )
    from placement.frontier import Frontier
    from placement.hardware import (
        GPU,
        GPU_PRESETS,
        Efficiency,
        HardwareFigures,
        effective_figures,
        gpu_preset,
    )
    from placement.models import MODEL_PRESETS
    from placement.parallel import Backend, Local, Processes, Ray
    from placement.plan import Plan, static_dispatch
    from placement.plan_diff import PlanDiff, diff_plans
    from placement.plan_show import PlanView, describe_plan
    from placement.plan_source import PlanSource, read_plan
    from placement.report import Comparison, compare, write_report
    from placement.routing_traces import (
        Trace,
        inspect_trace,
        load_trace,
        read_native,
        synthesize,
        write_native,
    )
    from placement.routing_traces.convert import convert_trace
    from placement.routing_traces.sharded import (
        ShardedTrace,
        open_sharded,
        open_trace_source,
        write_sharded,
    )
    from placement.routing_traces.statistics import (
        DEFAULT_SAMPLE_TOKENS,
        TraceStatistics,
        gather_statistics,
    )
    from placement.simulate import SimulateOptions, SimulationResult
    from placement.solver import (
        BASELINES,
        METHODS,
        OBJECTIVES,
        ProblemData,
        SolveOptions,
        SolveResult,
        SolverMethod,
        solve,
    )
    from placement.solver.replan import ReplanOptions, ReplanResult, replan
    from placement.sweep import SweepOptions, SweepResult
    from placement.validation import ValidationResult, replay
