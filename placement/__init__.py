"""placement: expert placement and routing optimizer for Mixture-of-Experts inference.

Data flows one way: routing traces -> solver -> plan -> validate / export / report.
"""

from placement.cluster import PRESETS, Cluster, MemoryModel, load_cluster
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
from placement.routing_traces import Trace, read_native, write_native

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "CapabilityError",
    "Cluster",
    "ClusterError",
    "EngineFormatError",
    "InputError",
    "MemoryModel",
    "PlacementError",
    "Plan",
    "PlanError",
    "SolverError",
    "Trace",
    "TraceFormatError",
    "load_cluster",
    "read_native",
    "static_dispatch",
    "write_native",
]
