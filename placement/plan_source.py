"""A plan from a file: a ``placement`` plan, or any engine placement file, told by content.

``placement show``, ``diff`` and ``replan`` read what is deployed without converting it first:
a plan JSON (``"format": "placement-plan"``), or an SGLang, TensorRT-LLM, EPLB or vLLM-Ascend file
read by :func:`placement.engines.import_plan` (which detects the format). Engine files that do
not say their cluster (SGLang's map has slots but no GPU count) need one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from placement.cluster import Cluster
from placement.engines import import_plan
from placement.errors import PlanError
from placement.filekinds import identify, mismatch
from placement.plan import Plan

__all__ = ["PlanSource", "read_plan"]


@dataclass(frozen=True)
class PlanSource:
    """A plan and where it came from.

    Attributes:
        plan: the plan.
        path: the file.
        kind: ``"plan"`` for a plan file, else the engine format (``"sglang"``, ``"trtllm"``,
            ``"eplb"``, ``"vllm-ascend"``).
        notes: what the import assumed (engine files).
    """

    plan: Plan
    path: Path
    kind: str
    notes: tuple[str, ...] = ()

    @property
    def description(self) -> str:
        """``"placement plan"`` or ``"sglang engine file"``."""
        return "placement plan" if self.kind == "plan" else f"{self.kind} engine file"


def read_plan(path: str | Path, cluster: Cluster | None = None) -> PlanSource:
    """Read a plan file or an engine placement file, told by content
    (:func:`placement.filekinds.identify`).

    Args:
        path: the file.
        cluster: for engine files, the cluster they run on (needed when the file does not say);
            for plan files, a cluster the plan must be for (checked, not applied).
    Raises:
        PlanError, EngineFormatError, ClusterError: the file is missing, malformed, of another
            kind (a trace, say), or does not fit ``cluster``.
    """
    p = Path(path)
    if not p.exists():
        raise PlanError("no such file.", p)
    if p.is_dir():
        raise PlanError("is a directory, not a plan or engine file.", p)
    kind = identify(p)
    if kind is not None and kind.role == "engine":
        result = import_plan(p, cluster)
        return PlanSource(plan=result.plan, path=p, kind=result.fmt,
                          notes=tuple(result.notes))
    if kind is not None and kind.role != "plan":
        raise PlanError(mismatch(kind, "plan", p), p)
    plan = Plan.load(p)
    if cluster is not None and cluster.shape != plan.cluster.shape:
        raise PlanError(f"the plan is for cluster {plan.cluster.shape} (nodes x GPUs per "
                        f"node x slots per GPU), not the given {cluster.shape}.", p)
    return PlanSource(plan=plan, path=p, kind="plan")
