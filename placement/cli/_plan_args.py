"""Arguments the plan commands share: an optional cluster (for engine files) and a plan file."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from placement.cluster import Cluster, load_cluster
from placement.errors import InputError
from placement.models import ModelShape, guess_model, model_preset
from placement.plan import Plan

__all__ = ["check_one_model", "model_for", "optional_cluster"]

_KEYS = ("cluster_preset", "cluster_file", "num_nodes", "gpus_per_node", "slots_per_gpu")


def optional_cluster(kwargs: dict[str, Any]) -> Cluster | None:
    """Pop the cluster options (:func:`placement.cli._app.cluster_options`) from a command's
    kwargs: the cluster they describe, or None when none is given."""
    vals = {k: kwargs.pop(k, None) for k in _KEYS}
    if all(v is None for v in vals.values()):
        return None
    return load_cluster(preset=vals["cluster_preset"], path=vals["cluster_file"],
                        num_nodes=vals["num_nodes"], gpus_per_node=vals["gpus_per_node"],
                        slots_per_gpu=vals["slots_per_gpu"])


def model_for(name: str | None, *plans: Plan, trace_model: str | None = None) -> ModelShape | None:
    """``--model NAME``, else a guess from the plans' (and trace's) model names and expert
    count (None when ambiguous)."""
    if name is not None:
        return model_preset(name)
    names = [p.model for p in plans] + [trace_model]
    E = plans[0].num_experts if plans else None
    return guess_model(*names, num_experts=E)


def check_one_model(named: Sequence[tuple[str, Any]]) -> None:
    """Raise :class:`InputError` naming both files when the traces ``named`` (``(argument,
    trace)`` pairs: :class:`~placement.routing_traces.trace.Trace` or sharded) are not of one
    model: other expert counts, or other MoE layers."""
    from placement._util import format_ids

    if len(named) < 2:
        return
    first_name, first = named[0]
    for name, t in named[1:]:
        if t.num_experts != first.num_experts:
            raise InputError(
                f"{name} has {t.num_experts} experts per layer but {first_name} has "
                f"{first.num_experts}: the traces must be of one model.")
        a, b = [int(x) for x in first.layer_ids], [int(x) for x in t.layer_ids]
        if a != b:
            raise InputError(
                f"{name} traces MoE layers {format_ids(b, 40)} but {first_name} "
                f"{format_ids(a, 40)}: the traces must be of one model's layers.")
