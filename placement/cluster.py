"""The cluster a plan is made for: nodes, GPUs, expert slots, memory and links.

GPUs are EP ranks ``0 .. G-1`` numbered node by node (node of GPU ``g`` is ``g // gpus_per_node``);
each MoE layer has ``P = G * slots_per_gpu`` physical slots and slot ``p`` lives on GPU
``p // slots_per_gpu`` (see ``docs/definitions.md``).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from placement.errors import ClusterError, InputError
from placement.hardware import (
    DEFAULT_GPU,
    GPU,
    GPU_PRESETS,
    SET_BY_CLUSTER,
    Efficiency,
    HardwareFigures,
    effective_figures,
    gpu_preset,
)

if TYPE_CHECKING:
    from placement.models import ModelShape

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["PRESETS", "Cluster", "MemoryModel", "load_cluster"]

GB = 1e9


@dataclass(frozen=True)
class MemoryModel:
    """What decides how many routed-expert slots fit on one GPU.

    ``slots_per_gpu = floor((gpu_memory_gb - reserved_gb) * 1e9 / bytes_per_expert / num_moe_layers)``
    where ``bytes_per_expert = 3 * hidden_size * moe_intermediate_size * bytes_per_param`` (gate,
    up and down projections) and every MoE layer holds the same number of slots per GPU.

    ``reserved_gb`` is everything else on the GPU. :meth:`for_model` builds it from a GPU and a
    model as ``non_expert_gb + kv_reserve_gb + runtime_gb`` (the weights that are not routed
    experts, the KV cache kept free, and the runtime's activations and buffers) and keeps that
    breakdown for :meth:`explain`; when given, the three must add up to ``reserved_gb``.
    """

    gpu_memory_gb: float
    reserved_gb: float
    hidden_size: int
    moe_intermediate_size: int
    bytes_per_param: float
    num_moe_layers: int
    non_expert_gb: float | None = None
    kv_reserve_gb: float | None = None
    runtime_gb: float | None = None
    gpu: str = ""
    model: str = ""

    def __post_init__(self) -> None:
        for name in ("gpu_memory_gb", "hidden_size", "moe_intermediate_size", "bytes_per_param",
                     "num_moe_layers"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ClusterError(f"Expected memory.{name} > 0, got {value!r}.")
        if not (math.isfinite(self.reserved_gb) and 0 <= self.reserved_gb):
            raise ClusterError(f"Expected memory.reserved_gb >= 0, got {self.reserved_gb!r}.")
        parts = [getattr(self, n) for n in _BREAKDOWN]
        given = [v for v in parts if v is not None]
        if given:
            if len(given) != len(parts):
                raise ClusterError(
                    f"Expected all of memory.{', memory.'.join(_BREAKDOWN)} or none of them."
                )
            for name, v in zip(_BREAKDOWN, parts, strict=True):
                if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                    raise ClusterError(f"Expected memory.{name} >= 0, got {v!r}.")
            if abs(sum(given) - self.reserved_gb) > 1e-6 * max(1.0, self.reserved_gb):
                raise ClusterError(
                    f"memory.reserved_gb ({self.reserved_gb:g}) is not non_expert_gb + "
                    f"kv_reserve_gb + runtime_gb ({sum(given):g})."
                )
        if self.reserved_gb >= self.gpu_memory_gb:
            raise ClusterError(
                f"memory.reserved_gb ({self.reserved_gb:g} GB) leaves nothing of "
                f"memory.gpu_memory_gb ({self.gpu_memory_gb:g} GB) for routed experts."
            )

    @classmethod
    def for_model(
        cls,
        gpu: GPU | str,
        model: ModelShape,
        *,
        kv_reserve_gb: float,
        runtime_reserve_gb: float | None = None,
    ) -> MemoryModel:
        """The budget of one ``gpu`` serving ``model`` with attention, dense layers and shared
        experts data-parallel (one copy of every non-routed weight per GPU).

        ``reserved = non-routed weights + kv_reserve_gb + runtime_reserve_gb`` (default runtime
        reserve: 10 % of the GPU's memory). Raises :class:`ClusterError` when that leaves no room
        for one slot (one expert in every MoE layer).
        """
        try:
            g = gpu if isinstance(gpu, GPU) else gpu_preset(gpu)
        except InputError as exc:
            raise ClusterError(str(exc)) from None
        for name, v in (("kv_reserve_gb", kv_reserve_gb), ("runtime_reserve_gb",
                                                           runtime_reserve_gb)):
            if v is not None and not (math.isfinite(v) and v >= 0):
                raise ClusterError(f"Expected {name} >= 0, got {v!r}.")
        runtime = round(0.1 * g.memory_gb, 6) if runtime_reserve_gb is None \
            else float(runtime_reserve_gb)
        weights = model.non_routed_weight_bytes / GB
        reserved = weights + float(kv_reserve_gb) + runtime
        per_slot = model.expert_bytes * model.num_moe_layers / GB
        free = g.memory_gb - reserved
        if free < per_slot:
            left = f"leave {free:.2f} GB" if free >= 0 else \
                f"exceed it by {-free:.2f} GB"
            raise ClusterError(
                f"no room for one expert slot on {g.name} ({g.memory_gb:g} GB): "
                f"{weights:.1f} GB non-routed weights of {model.name} + {float(kv_reserve_gb):g} "
                f"GB KV cache + {runtime:.1f} GB runtime reserve {left}; one slot needs "
                f"{per_slot:.2f} GB ({model.num_moe_layers} MoE layers x "
                f"{model.expert_bytes / 1e6:.1f} MB)."
            )
        return cls(
            gpu_memory_gb=float(g.memory_gb), reserved_gb=reserved,
            hidden_size=model.hidden_size, moe_intermediate_size=model.moe_intermediate_size,
            bytes_per_param=float(model.weight_bytes_per_param),
            num_moe_layers=model.num_moe_layers, non_expert_gb=weights,
            kv_reserve_gb=float(kv_reserve_gb), runtime_gb=runtime, gpu=g.name, model=model.name,
        )

    @property
    def bytes_per_expert(self) -> float:
        """Weights of one routed expert: ``3 * hidden * moe_intermediate * bytes_per_param``."""
        return 3.0 * self.hidden_size * self.moe_intermediate_size * self.bytes_per_param

    @property
    def slot_gb(self) -> float:
        """GB one slot takes on a GPU: one expert in every MoE layer."""
        return self.bytes_per_expert * self.num_moe_layers / GB

    @property
    def expert_budget_bytes(self) -> float:
        """GPU memory left for routed experts, bytes."""
        return (self.gpu_memory_gb - self.reserved_gb) * GB

    def max_slots_per_gpu(self) -> int:
        """Largest number of slots per GPU that fits in memory, for every MoE layer."""
        per_slot = self.bytes_per_expert * self.num_moe_layers
        return int(self.expert_budget_bytes // per_slot)

    def explain(self) -> str:
        """One line of arithmetic: how many slots fit, and why."""
        who = f"{self.gpu} " if self.gpu else "GPU "
        if self.non_expert_gb is not None:
            assert self.kv_reserve_gb is not None and self.runtime_gb is not None
            minus = (f"{self.non_expert_gb:.1f} GB non-routed weights"
                     + (f" of {self.model}" if self.model else "")
                     + f" - {self.kv_reserve_gb:g} GB KV cache - {self.runtime_gb:.1f} GB runtime")
        else:
            minus = f"{self.reserved_gb:g} GB reserved"
        free = self.gpu_memory_gb - self.reserved_gb
        return (
            f"slots per GPU: ({who}{self.gpu_memory_gb:g} GB - {minus}) = {free:.1f} GB for "
            f"routed experts / {self.slot_gb:.3f} GB per slot ({self.num_moe_layers} MoE layers "
            f"x {self.bytes_per_expert / 1e6:.1f} MB) = {self.max_slots_per_gpu()}"
        )

    def to_dict(self) -> dict[str, Any]:
        """The fields that are set (the breakdown and labels only when known)."""
        return {k: v for k, v in dataclasses.asdict(self).items()
                if v is not None and not (k in ("gpu", "model") and v == "")}


_BREAKDOWN = ("non_expert_gb", "kv_reserve_gb", "runtime_gb")


_SETTING_ALIASES = {"nodes": "num_nodes", "gpus": "gpus_per_node", "slots": "slots_per_gpu",
                    "preset": "name"}
"""Cluster-file keys users write from the command line's flags (``--nodes``) or by habit."""


def _unknown_settings(unknown: list[str], known: list[str]) -> str:
    """``Unknown cluster setting 'nodes': did you mean num_nodes? (settings: ...)``: each
    unknown key with the setting it most likely means (the flag's name, ``-`` for ``_``, or
    the closest spelling)."""
    parts = []
    for key in unknown:
        norm = key.replace("-", "_")
        best = _SETTING_ALIASES.get(norm) or (norm if norm in known else None)
        if best is None:
            close = difflib.get_close_matches(norm, known, n=1, cutoff=0.6)
            best = close[0] if close else None
        parts.append(f"{key!r}" + (f": did you mean {best}?" if best else ""))
    noun = "setting" if len(unknown) == 1 else "settings"
    return f"Unknown cluster {noun} {'; '.join(parts)} (settings: {', '.join(known)})."


@dataclass(frozen=True)
class Cluster:
    """An expert-parallel deployment.

    Args:
        num_nodes: nodes joined by the inter-node network.
        gpus_per_node: GPUs per node, joined by NVLink.
        slots_per_gpu: routed-expert slots per GPU in every MoE layer.
        memory: optional memory model; when given, ``slots_per_gpu`` must fit in it.
        nvlink_gbps: achieved per-GPU NVLink all-to-all bandwidth, GB/s, one direction; None:
            the GPU's (:meth:`figures`).
        network_gbps: achieved per-GPU inter-node bandwidth, GB/s, one direction; None: the
            GPU's.
        gpu_tflops: achieved throughput of one GPU for the expert GEMMs, TFLOP/s, whatever the
            precision; None: the GPU's peak at the model's precision x the GEMM share.
        usd_per_gpu_hour: price of one GPU for one hour; None: the GPU's.
        name: a label for reports.
        gpu: the GPU, a :data:`placement.hardware.GPU_PRESETS` name, or "" (then
            :data:`placement.hardware.DEFAULT_GPU` where figures are needed).

    The four hardware settings are None unless the user set them (flags, TOML, an old plan
    file); :meth:`figures` fills the others from the GPU, so the solver's predicted time and the
    cost model use the same numbers for the same cluster.
    """

    num_nodes: int
    gpus_per_node: int
    slots_per_gpu: int
    memory: MemoryModel | None = None
    nvlink_gbps: float | None = None
    network_gbps: float | None = None
    gpu_tflops: float | None = None
    usd_per_gpu_hour: float | None = None
    name: str = ""
    gpu: str = ""

    def __post_init__(self) -> None:
        if self.gpu:
            try:
                object.__setattr__(self, "gpu", gpu_preset(self.gpu).name)
            except InputError as exc:
                raise ClusterError(str(exc)) from None
        for name in ("num_nodes", "gpus_per_node", "slots_per_gpu"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ClusterError(f"Expected {name} >= 1 (an integer), got {value!r}.")
            object.__setattr__(self, name, int(value))
        for name in ("nvlink_gbps", "network_gbps", "gpu_tflops", "usd_per_gpu_hour"):
            value = getattr(self, name)
            if value is None:
                continue
            low = name == "usd_per_gpu_hour"
            if isinstance(value, bool) or not (isinstance(value, (int, float))
                                               and math.isfinite(value)
                                               and (value >= 0 if low else value > 0)):
                raise ClusterError(f"Expected {name} {'>=' if low else '>'} 0, got {value!r}.")
            object.__setattr__(self, name, float(value))
        if self.memory is not None:
            fit = self.memory.max_slots_per_gpu()
            if fit < 1:
                need = self.memory.bytes_per_expert * self.memory.num_moe_layers / GB
                have = self.memory.expert_budget_bytes / GB
                raise ClusterError(
                    f"GPU memory too small for one expert per MoE layer: one slot needs "
                    f"{need:.2f} GB, only {have:.2f} GB is left after reserved memory "
                    f"(short by {need - have:.2f} GB)."
                )
            if self.slots_per_gpu > fit:
                need = self.slots_per_gpu * self.memory.bytes_per_expert * self.memory.num_moe_layers
                raise ClusterError(
                    f"slots_per_gpu={self.slots_per_gpu} needs {need / GB:.2f} GB per GPU but only "
                    f"{self.memory.expert_budget_bytes / GB:.2f} GB is free for experts "
                    f"(at most {fit} slots fit; short by "
                    f"{(need - self.memory.expert_budget_bytes) / GB:.2f} GB)."
                )

    # -- shape -------------------------------------------------------------------------------
    @property
    def num_gpus(self) -> int:
        """G, the EP size."""
        return self.num_nodes * self.gpus_per_node

    @property
    def num_slots(self) -> int:
        """P = G * slots_per_gpu physical expert slots per MoE layer."""
        return self.num_gpus * self.slots_per_gpu

    @property
    def shape(self) -> str:
        """``"4x8x9"`` (nodes x GPUs per node x slots per GPU)."""
        return f"{self.num_nodes}x{self.gpus_per_node}x{self.slots_per_gpu}"

    def gpu_of_slot(self) -> np.ndarray:
        """``[P]`` GPU of every physical slot."""
        return np.arange(self.num_slots) // self.slots_per_gpu

    def node_of_gpu(self) -> np.ndarray:
        """``[G]`` node of every GPU."""
        return np.arange(self.num_gpus) // self.gpus_per_node

    def node_of_slot(self) -> np.ndarray:
        """``[P]`` node of every physical slot."""
        return self.gpu_of_slot() // self.gpus_per_node

    def check_fits(self, num_experts: int) -> None:
        """Raise :class:`ClusterError` unless every one of ``num_experts`` experts has a slot."""
        if self.num_slots < num_experts:
            raise ClusterError(
                f"cluster {self.shape} has {self.num_slots} slots per layer but the model has "
                f"{num_experts} experts: short by {num_experts - self.num_slots} slots "
                f"(raise slots_per_gpu to {math.ceil(num_experts / self.num_gpus)} or add GPUs)."
            )

    def with_slots(self, slots_per_gpu: int) -> Cluster:
        """A copy with another number of slots per GPU."""
        return dataclasses.replace(self, slots_per_gpu=slots_per_gpu)

    # -- hardware ----------------------------------------------------------------------------
    def figures(self, precision: str = "fp8", efficiency: Efficiency | None = None,
                gpu: GPU | str | None = None) -> HardwareFigures:
        """The hardware figures of this cluster's predicted times: the settings the user gave
        (``gpu_tflops``, ``nvlink_gbps``, ``network_gbps``, ``usd_per_gpu_hour``), the others
        from ``gpu`` (default: :attr:`gpu`, else :data:`~placement.hardware.DEFAULT_GPU`)
        through :func:`~placement.hardware.effective_figures` at ``precision`` and
        ``efficiency`` (default :class:`~placement.hardware.Efficiency`).

        The solver's time objective, the cost model, the frontier, the sweep and the report all
        call this, so one cluster means one set of numbers everywhere.
        """
        return _figures(self, precision, efficiency or _DEFAULT_EFFICIENCY,
                        gpu if gpu is not None else (self.gpu or DEFAULT_GPU))

    def price(self, gpu: GPU | str | None = None) -> float:
        """$ per GPU-hour: :attr:`usd_per_gpu_hour` when set, else the GPU's."""
        if self.usd_per_gpu_hour is not None:
            return self.usd_per_gpu_hour
        g = gpu if gpu is not None else (self.gpu or DEFAULT_GPU)
        try:
            return (g if isinstance(g, GPU) else gpu_preset(g)).usd_per_gpu_hour
        except InputError as exc:
            raise ClusterError(str(exc)) from None

    # -- serialisation -----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON/TOML-ready dict; :meth:`from_dict` reads it back. The hardware settings are
        written only where set (the others come from the GPU when read)."""
        out: dict[str, Any] = {
            "num_nodes": self.num_nodes,
            "gpus_per_node": self.gpus_per_node,
            "slots_per_gpu": self.slots_per_gpu,
        }
        for k in _HARDWARE:
            v = getattr(self, k)
            if v is not None:
                out[k] = v
        if self.name:
            out["name"] = self.name
        if self.gpu:
            out["gpu"] = self.gpu
        if self.memory is not None:
            out["memory"] = self.memory.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Cluster:
        """Build from a dict as :meth:`to_dict` writes it (also the TOML file's layout).

        A ``memory`` table may stand in for ``slots_per_gpu``: then the slots are as many as fit.
        """
        if not isinstance(data, dict):
            raise ClusterError(f"Expected a table of cluster settings, got {type(data).__name__}.")
        data = dict(data)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ClusterError(_unknown_settings(unknown, sorted(known)))
        memory = data.pop("memory", None)
        mem: MemoryModel | None = None
        if memory is not None:
            if not isinstance(memory, dict):
                raise ClusterError("Expected memory to be a table.")
            mknown = {f.name for f in dataclasses.fields(MemoryModel)}
            required = {f.name for f in dataclasses.fields(MemoryModel)
                        if f.default is dataclasses.MISSING}
            missing = sorted(required - set(memory))
            extra = sorted(set(memory) - mknown)
            if missing:
                raise ClusterError(f"memory table lacks: {', '.join(missing)}.")
            if extra:
                raise ClusterError(f"Unknown memory setting(s): {', '.join(extra)}.")
            mem = MemoryModel(**memory)
        for req in ("num_nodes", "gpus_per_node"):
            if req not in data:
                raise ClusterError(f"Cluster setting {req} is missing.")
        if "slots_per_gpu" not in data:
            if mem is None:
                raise ClusterError("Cluster setting slots_per_gpu is missing (or give a memory table).")
            data["slots_per_gpu"] = max(mem.max_slots_per_gpu(), 1)
        return cls(memory=mem, **data)

    @classmethod
    def from_toml(cls, path: str | Path) -> Cluster:
        """Read a cluster TOML file (the keys of :meth:`to_dict`, optionally under ``[cluster]``)."""
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ClusterError(f"{path}: no such file.") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ClusterError(f"{path}: not valid TOML ({exc}).") from None
        if "cluster" in data and isinstance(data["cluster"], dict):
            data = data["cluster"]
        try:
            return cls.from_dict(data)
        except ClusterError as exc:
            raise ClusterError(f"{path}: {exc}") from None
        except TypeError as exc:
            raise ClusterError(f"{path}: {exc}") from None

    @classmethod
    def preset(cls, name: str) -> Cluster:
        """One of :data:`PRESETS` by name."""
        try:
            return PRESETS[name]
        except KeyError:
            raise ClusterError(
                f"Unknown cluster preset {name!r}; choose one of: {', '.join(sorted(PRESETS))}."
            ) from None

    @classmethod
    def for_gpu(cls, gpu: GPU | str, num_nodes: int, gpus_per_node: int, slots_per_gpu: int,
                *, name: str = "", memory: MemoryModel | None = None, precision: str = "fp8",
                efficiency: Efficiency | None = None) -> Cluster:
        """A cluster of ``gpu``. A preset GPU at the default shares is named only (its figures
        come from :meth:`figures`); a GPU that is not a preset, or other ``efficiency`` shares,
        set the four hardware settings from
        :func:`~placement.hardware.effective_figures` at ``precision`` (and ``gpu`` is left
        empty for a GPU that is not a preset: pass it to the cost model yourself)."""
        try:
            g = gpu if isinstance(gpu, GPU) else gpu_preset(gpu)
        except InputError as exc:
            raise ClusterError(str(exc)) from None
        preset = GPU_PRESETS.get(g.name) == g
        if preset and efficiency is None:
            return cls(num_nodes, gpus_per_node, slots_per_gpu, memory=memory, name=name,
                       gpu=g.name)
        try:
            f = effective_figures(g, precision, efficiency)
        except InputError as exc:
            raise ClusterError(str(exc)) from None
        return cls(num_nodes, gpus_per_node, slots_per_gpu, memory=memory,
                   nvlink_gbps=f.nvlink_gbps, network_gbps=f.network_gbps, gpu_tflops=f.tflops,
                   usd_per_gpu_hour=f.usd_per_gpu_hour, name=name,
                   gpu=g.name if preset else "")

    def summary(self) -> str:
        """One line for people."""
        label = f"{self.name}: " if self.name else ""
        return (
            f"{label}{self.num_nodes} node(s) x {self.gpus_per_node} GPU(s), "
            f"{self.slots_per_gpu} slot(s)/GPU = {self.num_slots} slots per layer"
        )


_HARDWARE = ("nvlink_gbps", "network_gbps", "gpu_tflops", "usd_per_gpu_hour")
"""The hardware settings of a cluster (None: from the GPU)."""

_DEFAULT_EFFICIENCY = Efficiency()


@functools.lru_cache(maxsize=256)
def _figures(cluster: Cluster, precision: str, efficiency: Efficiency,
             gpu: GPU | str) -> HardwareFigures:
    """:meth:`Cluster.figures` (cached: the solver asks for every candidate it scores)."""
    try:
        g = gpu if isinstance(gpu, GPU) else gpu_preset(gpu)
    except InputError as exc:
        raise ClusterError(str(exc)) from None
    if cluster.gpu_tflops is not None:
        # the user's figure stands for every precision: the GPU's peak is not needed
        tflops = cluster.gpu_tflops
        base = effective_figures(g, _any_precision(g), efficiency)
    else:
        base = effective_figures(g, precision, efficiency)
        tflops = base.tflops
    values = {"tflops": tflops, "nvlink_gbps": cluster.nvlink_gbps,
              "network_gbps": cluster.network_gbps, "usd_per_gpu_hour": cluster.usd_per_gpu_hour}
    sources = dict(base.sources)
    out = {}
    for k in ("tflops", "nvlink_gbps", "network_gbps", "usd_per_gpu_hour"):
        mine = values[k] if k != "tflops" else cluster.gpu_tflops
        if mine is not None:
            out[k] = float(mine)
            sources[k] = SET_BY_CLUSTER
        else:
            out[k] = float(getattr(base, k))
    return HardwareFigures(gpu=g.name, precision=precision, hbm_tbps=base.hbm_tbps,
                           sources=tuple(sources.items()), **out)


def _any_precision(g: GPU) -> str:
    return "fp8" if g.fp8_tflops > 0 else "bf16"


PRESETS: dict[str, Cluster] = {
    "deepseek-prefill": Cluster(4, 8, 9, name="deepseek-prefill", gpu="h800"),
    "deepseek-decode": Cluster(18, 8, 2, name="deepseek-decode", gpu="h800"),
    "gb200-nvl72": Cluster(1, 72, 4, name="gb200-nvl72", gpu="gb200"),
    "h100-2x8": Cluster(2, 8, 18, name="h100-2x8", gpu="h100"),
    "h200-2x8": Cluster(2, 8, 18, name="h200-2x8", gpu="h200"),
}
"""Deployments users run. DeepSeek's prefill (EP32, 9 slots) and decode (EP144, 2 slots) as
published; a GB200 NVL72 domain with 4 slots per GPU (288 slots); 2 nodes of 8 H100/H200 with 18
slots per GPU (288 slots). Each names its GPU only: its links, TFLOP/s and price are the GPU's
(:meth:`Cluster.figures`)."""


_FLAGS = {"num_nodes": "--nodes", "gpus_per_node": "--gpus-per-node",
          "slots_per_gpu": "--slots-per-gpu"}
"""The command-line flag of every cluster field (``--nodes`` sets ``num_nodes``)."""


def load_cluster(
    *,
    preset: str | None = None,
    path: str | Path | None = None,
    num_nodes: int | None = None,
    gpus_per_node: int | None = None,
    slots_per_gpu: int | None = None,
) -> Cluster:
    """A cluster from a preset name, a TOML file or flags; flags override the first two."""
    if preset is not None and path is not None:
        raise ClusterError("Give either a cluster preset or a cluster file, not both.")
    base: Cluster | None = None
    if preset is not None:
        base = Cluster.preset(preset)
    elif path is not None:
        base = Cluster.from_toml(path)
    overrides: dict[str, Any] = {
        k: v
        for k, v in (("num_nodes", num_nodes), ("gpus_per_node", gpus_per_node),
                     ("slots_per_gpu", slots_per_gpu))
        if v is not None
    }
    if base is None:
        missing = [k for k in ("num_nodes", "gpus_per_node", "slots_per_gpu") if k not in overrides]
        if missing:
            flags = ", ".join(_FLAGS[m] for m in missing)
            raise ClusterError(f"Cluster not fully given: missing {flags} (or use --cluster/--preset).")
        return Cluster(**overrides)
    return dataclasses.replace(base, **overrides) if overrides else base
