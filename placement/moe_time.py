"""Predicted time of one MoE layer from its per-GPU loads and all-to-all traffic.

A pure function of arrays, below the solver (which plans by it) and the cost model (which turns
it into tokens/s and dollars, :mod:`placement.cost`); the formulas are in :func:`layer_times`::

    compute  = max_g load[g] * 6 * hidden * moe_intermediate / (tflops * 1e12 * efficiency)
    dispatch = max_g max(intra_send[g] * hidden * b_dispatch / (nvlink_gbps * 1e9),
                         net_send[g]   * hidden * b_dispatch / (network_gbps * 1e9))
    combine  = max_g max(intra_recv[g] * hidden * b_combine / (nvlink_gbps * 1e9),
                         net_recv[g]   * hidden * b_combine / (network_gbps * 1e9))
    layer    = compute + dispatch + combine            (overlap "none")
             = max(compute, dispatch + combine)        (overlap "two-batch")

``tflops``, ``nvlink_gbps`` and ``network_gbps`` are the cluster's hardware figures at the
model's matmul precision (:meth:`placement.cluster.Cluster.figures`: what the user set, the rest
from the GPU preset at DeepSeek's kernel shares), the same numbers the cost model's full step
uses; on H800 at FP8: 1187 TFLOP/s, 160 and 40 GB/s.
"""

from __future__ import annotations

import numpy as np

from placement.cluster import Cluster
from placement.errors import InputError
from placement.hardware import HardwareFigures
from placement.models import ModelShape

__all__ = ["OVERLAPS", "layer_times"]

OVERLAPS: tuple[str, ...] = ("none", "two-batch")
"""How communication and compute overlap: not at all, or DeepSeek's two micro-batches."""


def layer_times(
    loads: np.ndarray,
    cluster: Cluster,
    model: ModelShape,
    *,
    traffic: dict[str, np.ndarray] | None = None,
    overlap: str = "two-batch",
    efficiency: float = 1.0,
    figures: HardwareFigures | None = None,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray]:
    """Per-layer seconds (see the module docstring for the formulas).

    Args:
        loads: ``[L, G]`` expert-token assignments per GPU.
        traffic: ``intra_send``, ``intra_recv``, ``net_send``, ``net_recv`` tokens, ``[L, G]``
            each (:meth:`ValidationResult.per_gpu_traffic`), or None: compute only.
        efficiency: a further share of the figures' GEMM TFLOP/s, in (0, 1] (1: as they are).
        figures: the hardware figures (default ``cluster.figures(model.matmul_precision)``).
    Returns:
        ``(compute [L], dispatch [L] or None, combine [L] or None, layer [L])``.
    """
    if overlap not in OVERLAPS:
        raise InputError(f"Expected overlap in {', '.join(OVERLAPS)}, got {overlap!r}.")
    loads = np.asarray(loads, dtype=np.float64)
    f = figures if figures is not None else cluster.figures(model.matmul_precision)
    flops = f.tflops * 1e12 * efficiency
    compute = loads.max(axis=1) * model.expert_flops_per_assignment / flops
    if traffic is None:
        return compute, None, None, compute
    h = float(model.hidden_size)
    nv, net = f.nvlink_gbps * 1e9, f.network_gbps * 1e9
    bd, bc = model.dispatch_bytes_per_element, model.combine_bytes_per_element
    dispatch = np.maximum(traffic["intra_send"] * h * bd / nv,
                          traffic["net_send"] * h * bd / net).max(axis=1)
    combine = np.maximum(traffic["intra_recv"] * h * bc / nv,
                         traffic["net_recv"] * h * bc / net).max(axis=1)
    comm = dispatch + combine
    layer = compute + comm if overlap == "none" else np.maximum(compute, comm)
    return compute, dispatch, combine, layer
