"""A plan from a file: a ``placement`` plan, or any engine placement file, told by content.

``placement show``, ``diff`` and ``replan`` read what is deployed without converting it first:
a plan JSON (``"format": "placement-plan"``), or an SGLang, TensorRT-LLM, EPLB or vLLM-Ascend file
read by :func:`placement.engines.import_plan` (which detects the format). Engine files that do
not say their cluster (SGLang's map has slots but no GPU count) need one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from placement.cluster import Cluster
from placement.engines import import_plan
from placement.errors import PlanError
from placement.plan import PLAN_FORMAT, Plan

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


def _plan_json(path: Path) -> dict | None:
    """The parsed JSON object when ``path`` is a plan file, else None."""
    try:
        with path.open("rb") as fh:
            if not fh.read(64).lstrip().startswith(b"{"):
                return None
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) and data.get("format") == PLAN_FORMAT else None


def read_plan(path: str | Path, cluster: Cluster | None = None) -> PlanSource:
    """Read a plan file or an engine placement file.

    Args:
        path: the file.
        cluster: for engine files, the cluster they run on (needed when the file does not say);
            for plan files, a cluster the plan must be for (checked, not applied).
    Raises:
        PlanError, EngineFormatError, ClusterError: the file is missing or malformed, or does not
            fit ``cluster``.
    """
    p = Path(path)
    if not p.exists():
        raise PlanError("no such file.", p)
    if p.is_dir():
        raise PlanError("is a directory, not a plan or engine file.", p)
    try:
        data = _plan_json(p)
    except OSError as exc:
        raise PlanError(f"cannot read ({exc.strerror or exc}).", p) from None
    if data is not None:
        try:
            plan = Plan.from_dict(data)
        except PlanError as exc:
            raise PlanError(exc.reason, p) from None
        if cluster is not None and cluster.shape != plan.cluster.shape:
            raise PlanError(f"the plan is for cluster {plan.cluster.shape} (nodes x GPUs per "
                            f"node x slots per GPU), not the given {cluster.shape}.", p)
        return PlanSource(plan=plan, path=p, kind="plan")
    result = import_plan(p, cluster)
    return PlanSource(plan=result.plan, path=p, kind=result.fmt, notes=tuple(result.notes))
