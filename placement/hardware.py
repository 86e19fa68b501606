"""GPU presets: memory, HBM bandwidth, dense TFLOP/s by precision, links per GPU and a price.

Figures are the vendors' spec-sheet peaks for one GPU of the usual 8-GPU board (SXM / HGX), or of
a GB200 NVL72 rack, *without* sparsity. What a real serving step reaches is a share of these
(:class:`Efficiency`, DeepSeek's kernels on H800); :func:`effective_figures` applies the shares
and returns the :class:`HardwareFigures` that every command uses: the solver's predicted MoE
layer time (:mod:`placement.moe_time`), the cost model (:mod:`placement.cost`), the frontier, the
sweep and the report all take their numbers from :meth:`placement.cluster.Cluster.figures`,
which fills what the user did not set from the cluster's GPU (:data:`DEFAULT_GPU` when it names
none) through :func:`effective_figures`. Links are per GPU
and per direction: NVLink inside the node (or the NVL72 domain) and the inter-node NIC (one
400 Gb/s ConnectX-7, 50 GB/s, per GPU on every board below). Prices are list-style defaults for
reports (DeepSeek's own $2 per H800-hour; the others rough 2025 rental prices): pass your own.

This module sits below the cluster and the cost model and imports neither.

    >>> f = effective_figures("h800", "fp8")
    >>> round(f.tflops), f.nvlink_gbps, f.network_gbps
    (1187, 160.0, 40.0)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from placement.errors import InputError

__all__ = [
    "DEFAULT_GPU",
    "GPU",
    "GPU_PRESETS",
    "PRECISIONS",
    "SET_BY_CLUSTER",
    "Efficiency",
    "HardwareFigures",
    "effective_figures",
    "gpu_preset",
]

DEFAULT_GPU = "h800"
"""The GPU of a cluster that names none (DeepSeek's deployments run on H800)."""

PRECISIONS: tuple[str, ...] = ("fp4", "fp8", "bf16")
"""Precisions a GPU's dense TFLOP/s are given for."""


def _check_share(name: str, v: float) -> None:
    if isinstance(v, bool) or not (isinstance(v, (int, float)) and math.isfinite(v) and 0 < v <= 1):
        raise InputError(f"Expected efficiency.{name} in (0, 1], got {v!r}.")


@dataclass(frozen=True)
class Efficiency:
    """Shares of a GPU's peaks that the kernels of a serving step reach.

    The defaults are DeepSeek's own kernels on H800, as their READMEs publish them (and are
    applied to every GPU: an assumption):

    Args:
        gemm: compute-bound GEMMs, share of dense FP8/BF16 peak. DeepGEMM (Feb 2025 README):
            1,093-1,297 TFLOPS for the prefill MoE grouped GEMMs and 990-1,358 for dense
            GEMMs with M=4096, of 1,979: 0.6.
        attention: core attention, share of BF16 peak. FlashMLA: 580 of 989 TFLOPS: 0.59.
        memory: memory-bound GEMMs (weights read), share of HBM bandwidth. DeepGEMM with
            M=64-128 (decode shapes): 1.5-2.7 TB/s, median about 2.3, of 3.35: 0.7.
        kv_read: KV cache read by core attention. FlashMLA: 3,000 of 3,350 GB/s: 0.9.
        network: inter-node all-to-all, share of the NIC. DeepEP low-latency kernels at EP128-256:
            39-40 GB/s of a 400 Gb/s (50 GB/s) NIC; normal kernels 43-58 GB/s: 0.8.
        nvlink: intra-node all-to-all, share of NVLink. DeepEP intranode: 153-158 GB/s on
            H800 (~200 GB/s per direction): 0.8.
        comm_sms: SMs the prefill all-to-all kernels hold while the two micro-batches overlap
            (DeepSeek's prefill profile: 24 of 132; decode's low-latency kernels hold none).
    """

    gemm: float = 0.6
    attention: float = 0.59
    memory: float = 0.7
    kv_read: float = 0.9
    network: float = 0.8
    nvlink: float = 0.8
    comm_sms: int = 24

    def __post_init__(self) -> None:
        for name in ("gemm", "attention", "memory", "kv_read", "network", "nvlink"):
            _check_share(name, getattr(self, name))
        if isinstance(self.comm_sms, bool) or not isinstance(self.comm_sms, int) \
                or self.comm_sms < 0:
            raise InputError(f"Expected efficiency.comm_sms >= 0 (an integer), got "
                             f"{self.comm_sms!r}.")

    def lines(self) -> list[str]:
        """The shares, one assumption per line."""
        return [
            f"compute-bound GEMMs at {self.gemm:g} of dense peak (DeepGEMM on H800: "
            "1.1-1.3 of 1.98 PFLOPS FP8)",
            f"core attention at {self.attention:g} of BF16 peak (FlashMLA on H800: 580 of "
            "989 TFLOPS)",
            f"memory-bound GEMMs at {self.memory:g} of HBM bandwidth (DeepGEMM, M=64-128: "
            "1.5-2.7 of 3.35 TB/s)",
            f"KV cache reads at {self.kv_read:g} of HBM bandwidth (FlashMLA: 3.0 of 3.35 TB/s)",
            f"all-to-all at {self.network:g} of the NIC and {self.nvlink:g} of NVLink (DeepEP: "
            "39-58 GB/s of 50; 153-158 of ~200 GB/s)",
            f"prefill all-to-all holds {self.comm_sms} SMs (DeepSeek's prefill profile: 24 of "
            "132)",
        ]


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


@dataclass(frozen=True)
class HardwareFigures:
    """The achieved figures of one GPU that a predicted time is made of, and where each comes
    from.

    Args:
        gpu: the GPU's name (``"h800"``).
        precision: the precision of ``tflops`` (the model's matmul precision).
        tflops: compute-bound GEMM throughput at ``precision``, TFLOP/s (peak x ``gemm`` share).
        hbm_tbps: HBM bandwidth of memory-bound GEMMs, TB/s (peak x ``memory`` share).
        nvlink_gbps: intra-node all-to-all bandwidth per GPU, one direction, GB/s.
        network_gbps: inter-node all-to-all bandwidth per GPU, one direction, GB/s.
        usd_per_gpu_hour: price of one GPU for one hour.
        sources: per figure name, where it comes from (``"h800 FP8 peak 1979 x 0.6"``,
            ``"set by the cluster"``).
    """

    gpu: str
    precision: str
    tflops: float
    hbm_tbps: float
    nvlink_gbps: float
    network_gbps: float
    usd_per_gpu_hour: float
    sources: tuple[tuple[str, str], ...] = field(default=(), compare=False)

    @property
    def explicit(self) -> tuple[str, ...]:
        """Names of the figures the user set (not from the GPU preset)."""
        return tuple(k for k, v in self.sources if v == SET_BY_CLUSTER)

    def origin(self) -> str:
        """Where ``tflops``, ``nvlink_gbps`` and ``network_gbps`` come from, in a few words:
        ``h800 peaks x DeepSeek's kernel shares: GEMM 0.6, NVLink 0.8, NIC 0.8``."""
        src = dict(self.sources)
        shown = ("tflops", "nvlink_gbps", "network_gbps")
        mine = [k for k in shown if src.get(k) == SET_BY_CLUSTER]
        rest = [k for k in shown if k not in mine]
        shares = ", ".join(src[k].split(" x ", 1)[1] for k in rest if " x " in src.get(k, ""))
        parts = []
        if mine:
            parts.append(", ".join(_FIELD_KEYS[k] for k in mine) + " set by the cluster")
        if rest:
            what = "the rest: " if mine else ""
            parts.append(f"{what}{self.gpu} peaks x DeepSeek's kernel shares"
                         + (f": {shares}" if shares else ""))
        return "; ".join(parts)

    def summary(self) -> str:
        """``h800 1187 TFLOP/s fp8, NVLink 160 GB/s, network 40 GB/s (where from)``."""
        return (f"{self.gpu} {self.tflops:.0f} TFLOP/s {self.precision}, NVLink "
                f"{self.nvlink_gbps:g} GB/s, network {self.network_gbps:g} GB/s ({self.origin()})")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the figures, and ``sources`` (figure name -> where from)."""
        return {"gpu": self.gpu, "precision": self.precision, "tflops": self.tflops,
                "hbm_tbps": self.hbm_tbps, "nvlink_gbps": self.nvlink_gbps,
                "network_gbps": self.network_gbps, "usd_per_gpu_hour": self.usd_per_gpu_hour,
                "sources": dict(self.sources), "summary": self.summary()}


SET_BY_CLUSTER = "set by the cluster"
"""The source of a figure the user set (cluster flag, TOML key or plan file)."""

_FIELD_KEYS = {"tflops": "gpu_tflops", "nvlink_gbps": "nvlink_gbps",
               "network_gbps": "network_gbps", "usd_per_gpu_hour": "usd_per_gpu_hour"}


def effective_figures(
    gpu: GPU | str,
    precision: str = "fp8",
    efficiency: Efficiency | None = None,
) -> HardwareFigures:
    """The figures ``gpu`` reaches with DeepSeek's kernels (``efficiency``, default
    :class:`Efficiency`)::

        tflops       = peak(precision) x gemm
        hbm_tbps     = HBM peak x memory
        nvlink_gbps  = NVLink x nvlink
        network_gbps = NIC x network

    On H800 at FP8: 1187 TFLOP/s, 2.35 TB/s, 160 GB/s and 40 GB/s (DeepGEMM and DeepEP's
    published figures).
    """
    g = gpu if isinstance(gpu, GPU) else gpu_preset(gpu)
    e = efficiency or Efficiency()
    peak = g.tflops(precision)
    return HardwareFigures(
        gpu=g.name, precision=precision, tflops=peak * e.gemm, hbm_tbps=g.hbm_tbps * e.memory,
        nvlink_gbps=g.nvlink_gbps * e.nvlink, network_gbps=g.network_gbps * e.network,
        usd_per_gpu_hour=g.usd_per_gpu_hour,
        sources=(
            ("tflops", f"{g.name} {precision.upper()} peak {peak:g} x GEMM {e.gemm:g}"),
            ("hbm_tbps", f"{g.name} HBM {g.hbm_tbps:g} TB/s x memory {e.memory:g}"),
            ("nvlink_gbps", f"{g.name} NVLink {g.nvlink_gbps:g} GB/s x NVLink {e.nvlink:g}"),
            ("network_gbps", f"{g.name} NIC {g.network_gbps:g} GB/s x NIC {e.network:g}"),
            ("usd_per_gpu_hour", f"{g.name} price"),
        ),
    )
