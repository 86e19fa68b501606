"""Exceptions raised by ``placement``.

Every error a user can cause derives from :class:`PlacementError`; the CLI prints its message as one
line and exits with status 1. Anything else escaping the library is a bug.

    PlacementError
    ├── InputError            bad input: a file, an argument or a value the user gave
    │   ├── TraceFormatError  a trace file that is missing, malformed or inconsistent
    │   ├── ClusterError      a cluster that cannot hold the model (slots, memory)
    │   ├── PlanError         a plan that breaks its invariants or a plan file that is malformed
    │   └── EngineFormatError an engine file (SGLang, TensorRT-LLM, EPLB, vLLM-Ascend) that is wrong
    ├── CapabilityError       the data cannot answer the question (e.g. traffic from aggregated counts)
    ├── SolverError           a solver failed in a way the user cannot fix by changing input
    └── WorkerError           a worker (a process or a Ray task) failed or was lost
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "CapabilityError",
    "ClusterError",
    "EngineFormatError",
    "InputError",
    "PlacementError",
    "PlanError",
    "SolverError",
    "TraceFormatError",
    "WorkerError",
]


class PlacementError(Exception):
    """Base class of every error ``placement`` raises on purpose."""


class InputError(PlacementError, ValueError):
    """Input given by the user is invalid. Subclasses say which kind of input."""


class _FileError(InputError):
    """An input error that may be tied to a file; the path leads the message."""

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        self.path = None if path is None else Path(path)
        self.reason = message
        super().__init__(f"{self.path}: {message}" if self.path is not None else message)


class TraceFormatError(_FileError):
    """A trace file (or in-memory trace data) is missing, malformed or inconsistent."""


class ClusterError(InputError):
    """A cluster description is invalid or too small for the model."""


class PlanError(_FileError):
    """A plan breaks one of its invariants, or a plan file cannot be read."""


class EngineFormatError(_FileError):
    """An engine placement file cannot be read or written in the requested format."""


class CapabilityError(PlacementError):
    """The data cannot give what was asked (for example co-activation from aggregated counts)."""


class SolverError(PlacementError):
    """A solver failed for a reason other than the input."""


class WorkerError(PlacementError):
    """A piece of parallel work (:mod:`placement.parallel`) failed in its worker for a reason
    other than the user's input, or the worker was lost."""
