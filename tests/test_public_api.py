"""The public API is explicit: adding or removing a name is a deliberate change to this list."""

from __future__ import annotations

import importlib
from importlib.metadata import version

import placement

PUBLIC = {
    "METHODS", "PRESETS", "CapabilityError", "Cluster", "ClusterError", "Comparison",
    "CostEstimate", "CostOptions", "EngineFormatError", "ExportResult", "ImportResult",
    "InputError", "MemoryModel", "ModelShape", "PlacementError", "Plan", "PlanError",
    "ProblemData", "SolveOptions", "SolveResult", "SolverError", "Trace", "TraceFormatError",
    "ValidationResult", "__version__", "compare", "estimate_cost", "export_plan", "import_plan",
    "inspect_trace", "load_cluster", "load_trace", "model_preset", "read_native", "replay",
    "solve", "static_dispatch", "synthesize", "write_native", "write_report",
    # hardware and models
    "GPU", "GPU_PRESETS", "gpu_preset", "MODEL_PRESETS",
    # the solver's registry
    "BASELINES", "OBJECTIVES", "SolverMethod",
    # plans over time and deployment planning (their functions live in their modules)
    "ReplanOptions", "ReplanResult", "replan", "PlanDiff", "diff_plans", "PlanView",
    "describe_plan", "PlanSource", "read_plan", "SimulateOptions", "SimulationResult",
    "SweepOptions", "SweepResult", "Frontier",
    "WorkerError",
    # where work runs; big traces; one set of hardware figures
    "Backend", "Local", "Processes", "Ray", "ShardedTrace", "open_sharded", "write_sharded",
    "open_trace_source", "convert_trace", "TraceStatistics", "gather_statistics",
    "DEFAULT_SAMPLE_TOKENS", "Efficiency", "HardwareFigures", "effective_figures",
}


def test_module_named_functions_stay_in_their_modules() -> None:
    """``placement.sweep`` is the module whatever was imported first (a function of that name
    exported here would be shadowed by the submodule)."""
    import placement.frontier
    import placement.simulate
    import placement.sweep

    for mod in ("sweep", "simulate", "frontier"):
        assert mod not in placement.__all__
        assert callable(getattr(importlib.import_module(f"placement.{mod}"), mod))


def test_all_is_pinned() -> None:
    assert set(placement.__all__) == PUBLIC
    assert len(placement.__all__) == len(PUBLIC)
    for name in placement.__all__:
        assert hasattr(placement, name), name


def test_version_matches_distribution() -> None:
    assert placement.__version__ == version("placement")


def test_errors_form_one_hierarchy() -> None:
    for name in ("InputError", "TraceFormatError", "ClusterError", "PlanError",
                 "EngineFormatError", "CapabilityError", "SolverError", "WorkerError"):
        assert issubclass(getattr(placement, name), placement.PlacementError)
    for name in ("TraceFormatError", "ClusterError", "PlanError", "EngineFormatError"):
        assert issubclass(getattr(placement, name), placement.InputError)


def test_subpackages_declare_all() -> None:
    for mod in ("placement.routing_traces", "placement.solver", "placement.engines",
                "placement.validation", "placement.report", "placement.cost", "placement.plan",
                "placement.cluster", "placement.metrics", "placement.errors", "placement.models",
                "placement.moe_time", "placement.parallel", "placement.hardware",
                "placement.sweep", "placement.simulate", "placement.frontier",
                "placement.plan_diff", "placement.plan_show", "placement.plan_source"):
        m = importlib.import_module(mod)
        assert m.__all__, mod
        for name in m.__all__:
            assert hasattr(m, name), f"{mod}.{name}"


def test_data_flows_one_way() -> None:
    """Upstream modules never import downstream ones (traces -> solver -> plan -> the rest)."""
    import ast
    from pathlib import Path

    root = Path(placement.__file__).parent
    downstream = {
        "routing_traces": ("placement.solver", "placement.validation", "placement.report",
                           "placement.engines", "placement.cost", "placement.demo"),
        "solver": ("placement.validation", "placement.report", "placement.engines",
                   "placement.cost", "placement.demo"),
        "models.py": ("placement.routing_traces", "placement.solver", "placement.plan",
                      "placement.validation", "placement.report", "placement.engines",
                      "placement.cost", "placement.demo"),
        "moe_time.py": ("placement.routing_traces", "placement.solver", "placement.plan",
                        "placement.validation", "placement.report", "placement.engines",
                        "placement.cost", "placement.demo"),
        "parallel.py": ("placement.routing_traces", "placement.solver", "placement.plan",
                        "placement.validation", "placement.report", "placement.engines",
                        "placement.cost", "placement.cluster", "placement.demo"),
        "plan.py": ("placement.solver", "placement.validation", "placement.report",
                    "placement.engines"),
    }
    for part, banned in downstream.items():
        files = [root / part] if part.endswith(".py") else list((root / part).rglob("*.py"))
        for f in files:
            for node in ast.walk(ast.parse(f.read_text())):
                names = []
                if isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module]
                elif isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                for n in names:
                    assert not n.startswith(banned), f"{f.relative_to(root)} imports {n}"
