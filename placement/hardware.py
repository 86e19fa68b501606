"""GPU presets: memory, HBM bandwidth, dense TFLOP/s by precision, links per GPU and a price.

Figures are the vendors' spec-sheet peaks for one GPU of the usual 8-GPU board (SXM / HGX), or of
a GB200 NVL72 rack, *without* sparsity. What a real serving step reaches is a share of these; the
shares live with the cost model (:class:`placement.cost.Efficiency`), not here. Links are per GPU
and per direction: NVLink inside the node (or the NVL72 domain) and the inter-node NIC (one
400 Gb/s ConnectX-7, 50 GB/s, per GPU on every board below). Prices are list-style defaults for
reports (DeepSeek's own $2 per H800-hour; the others rough 2025 rental prices): pass your own.

This module sits below the cluster and the cost model and imports neither.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from placement.errors import InputError

__all__ = ["GPU", "GPU_PRESETS", "PRECISIONS", "gpu_preset"]

PRECISIONS: tuple[str, ...] = ("fp4", "fp8", "bf16")
"""Precisions a GPU's dense TFLOP/s are given for."""


@dataclass(frozen=True)
class GPU:
    """One GPU model.

    Args:
        name: preset name (``"h800"``).
        memory_gb: HBM capacity, GB (1e9 bytes).
        hbm_tbps: HBM bandwidth, TB/s.
        fp8_tflops, bf16_tflops, fp4_tflops: dense tensor-core peak, TFLOP/s (0: unsupported).
        nvlink_gbps: NVLink bandwidth per GPU, one direction, GB/s.
        network_gbps: inter-node network per GPU, one direction, GB/s.
        usd_per_gpu_hour: default price of one GPU for one hour.
        num_sms: streaming multiprocessors (communication kernels may take some of them).
        note: where the figures come from.
    """

    name: str
    memory_gb: float
    hbm_tbps: float
    fp8_tflops: float
    bf16_tflops: float
    nvlink_gbps: float
    network_gbps: float
    usd_per_gpu_hour: float
    fp4_tflops: float = 0.0
    num_sms: int = 132
    note: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        for name in ("memory_gb", "hbm_tbps", "fp8_tflops", "bf16_tflops", "nvlink_gbps",
                     "network_gbps"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise InputError(f"Expected gpu.{name} > 0, got {v!r}.")
        for name in ("usd_per_gpu_hour", "fp4_tflops"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise InputError(f"Expected gpu.{name} >= 0, got {v!r}.")
        if isinstance(self.num_sms, bool) or not isinstance(self.num_sms, int) or self.num_sms < 1:
            raise InputError(f"Expected gpu.num_sms >= 1 (an integer), got {self.num_sms!r}.")

    def tflops(self, precision: str) -> float:
        """Dense peak TFLOP/s at ``precision`` (``fp4``, ``fp8`` or ``bf16``)."""
        if precision not in PRECISIONS:
            raise InputError(f"Expected precision in {', '.join(PRECISIONS)}, got {precision!r}.")
        value = float(getattr(self, f"{precision}_tflops"))
        if value <= 0:
            raise InputError(f"GPU {self.name} has no {precision.upper()} tensor cores.")
        return value

    def summary(self) -> str:
        """One line."""
        fp4 = f", FP4 {self.fp4_tflops:g}" if self.fp4_tflops else ""
        return (
            f"{self.name}: {self.memory_gb:g} GB HBM at {self.hbm_tbps:g} TB/s, dense TFLOP/s "
            f"FP8 {self.fp8_tflops:g}, BF16 {self.bf16_tflops:g}{fp4}; NVLink "
            f"{self.nvlink_gbps:g} GB/s, network {self.network_gbps:g} GB/s per GPU; "
            f"${self.usd_per_gpu_hour:g}/GPU-hour"
        )


GPU_PRESETS: dict[str, GPU] = {
    g.name: g
    for g in (
        GPU("h800", 80, 3.35, 1979, 989, 200, 50, 2.0, note=(
            "H800 SXM5: H100's compute and HBM3, NVLink cut to 400 GB/s both ways (DeepEP "
            "measures ~160 GB/s); one CX7 400 Gb/s NIC per GPU; $2/h as DeepSeek assumes")),
        GPU("h100", 80, 3.35, 1979, 989, 450, 50, 2.5, note=(
            "H100 SXM5: NVLink 4 900 GB/s both ways; one CX7 400 Gb/s NIC per GPU")),
        GPU("h200", 141, 4.8, 1979, 989, 450, 50, 3.0, note=(
            "H200 SXM: H100 compute, 141 GB HBM3e at 4.8 TB/s; one CX7 400 Gb/s NIC per GPU")),
        GPU("b200", 180, 8.0, 4500, 2250, 900, 50, 3.5, fp4_tflops=9000, num_sms=148, note=(
            "B200 (HGX/DGX B200): 180 GB HBM3e at 8 TB/s, NVLink 5 1.8 TB/s both ways; "
            "one CX7 400 Gb/s NIC per GPU")),
        GPU("gb200", 186, 8.0, 5000, 2500, 900, 50, 4.0, fp4_tflops=10000, num_sms=148, note=(
            "GB200 NVL72, per GPU: 13.4 TB HBM3e / 72, NVLink 5 1.8 TB/s both ways across the "
            "72-GPU domain; one CX7 400 Gb/s NIC per GPU between racks")),
    )
}
"""Spec-sheet figures (dense, no sparsity) of the GPUs MoE models are served on."""


def gpu_preset(name: str) -> GPU:
    """A preset by name (case-insensitive); :class:`InputError` naming the choices otherwise."""
    try:
        return GPU_PRESETS[name.lower()]
    except (KeyError, AttributeError):
        raise InputError(
            f"Unknown GPU {name!r}; choose one of: {', '.join(GPU_PRESETS)}."
        ) from None
