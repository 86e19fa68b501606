"""Model shapes: what the planner and the cost model need to know of an MoE model.

Presets come from the models' published configurations (``config.json``). This module sits below
the solver, the validator and the cost model: any of them may use it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from placement.errors import InputError

__all__ = ["MODEL_PRESETS", "ModelShape", "guess_model", "model_preset"]


@dataclass(frozen=True)
class ModelShape:
    """The shape of an MoE model, as far as the routed experts go.

    Args:
        name: preset name.
        hidden_size: model (token) dimension.
        moe_intermediate_size: FFN dimension of one routed expert.
        top_k: routed experts per token.
        num_experts: routed experts per MoE layer.
        num_moe_layers: MoE layers.
        num_hidden_layers: all decoder layers, dense ones included.
        dispatch_bytes_per_element: bytes per element sent in dispatch (FP8: 1).
        combine_bytes_per_element: bytes per element sent in combine (BF16: 2).
        aliases: lower-case strings that, found in a model name, mean this model.
    """

    name: str
    hidden_size: int
    moe_intermediate_size: int
    top_k: int
    num_experts: int
    num_moe_layers: int
    num_hidden_layers: int
    dispatch_bytes_per_element: float = 1.0
    combine_bytes_per_element: float = 2.0
    aliases: tuple[str, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        for name in ("hidden_size", "moe_intermediate_size", "top_k", "num_experts",
                     "num_moe_layers", "num_hidden_layers"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise InputError(f"Expected {name} >= 1 (an integer), got {v!r}.")
        if self.num_moe_layers > self.num_hidden_layers:
            raise InputError(
                f"Expected num_moe_layers <= num_hidden_layers, got {self.num_moe_layers} > "
                f"{self.num_hidden_layers}."
            )
        for name in ("dispatch_bytes_per_element", "combine_bytes_per_element"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise InputError(f"Expected {name} > 0, got {v!r}.")

    @property
    def expert_flops_per_assignment(self) -> float:
        """FLOPs of one token in one routed expert: ``3 GEMMs x 2 x hidden x moe_intermediate``."""
        return 6.0 * self.hidden_size * self.moe_intermediate_size

    def summary(self) -> str:
        """One line."""
        return (
            f"{self.name}: hidden {self.hidden_size}, expert FFN {self.moe_intermediate_size}, "
            f"top-{self.top_k} of {self.num_experts}, {self.num_moe_layers} MoE of "
            f"{self.num_hidden_layers} layers, {self.dispatch_bytes_per_element:g}/"
            f"{self.combine_bytes_per_element:g} bytes per element (dispatch/combine)"
        )


MODEL_PRESETS: dict[str, ModelShape] = {
    m.name: m
    for m in (
        ModelShape("deepseek-v3", 7168, 2048, 8, 256, 58, 61,
                   aliases=("deepseek-v3", "deepseek-r1", "deepseek_v3", "deepseekv3")),
        ModelShape("qwen3-235b-a22b", 4096, 1536, 8, 128, 94, 94, aliases=("qwen3-235b",)),
        ModelShape("qwen3-30b-a3b", 2048, 768, 8, 128, 48, 48, aliases=("qwen3-30b",)),
        ModelShape("mixtral-8x7b", 4096, 14336, 2, 8, 32, 32, aliases=("mixtral-8x7b",)),
        ModelShape("deepseek-moe-16b", 2048, 1408, 6, 64, 27, 28, aliases=("deepseek-moe",)),
        ModelShape("qwen1.5-moe-a2.7b", 2048, 1408, 4, 60, 24, 24, aliases=("qwen1.5-moe",)),
        ModelShape("olmoe-1b-7b", 2048, 1024, 8, 64, 16, 16, aliases=("olmoe",)),
        ModelShape("flame-moe-290m", 1024, 704, 6, 64, 8, 10, aliases=("flame-moe-290m",)),
    )
}
"""Shapes from the models' published configurations (``config.json``); FLAME-MoE-290M from its
training scripts (hidden 1024, expert FFN 704, top-6 in the shared trace, decoder layers 1-9 MoE
with ids up to 9)."""


def model_preset(name: str) -> ModelShape:
    """A preset by name; :class:`InputError` naming the choices otherwise."""
    try:
        return MODEL_PRESETS[name]
    except KeyError:
        raise InputError(
            f"Unknown model {name!r}; choose one of: {', '.join(sorted(MODEL_PRESETS))}."
        ) from None


def guess_model(
    *names: str | None, num_experts: int | None = None, top_k: int | None = None
) -> ModelShape | None:
    """The preset a model name points to, else the only preset with that expert count (and
    top-k when known), else None."""
    for n in names:
        if not n:
            continue
        low = n.lower()
        for m in MODEL_PRESETS.values():
            if m.name == low or any(a in low for a in m.aliases):
                return m
    if num_experts is None:
        return None
    hits = [m for m in MODEL_PRESETS.values() if m.num_experts == num_experts
            and (top_k is None or m.top_k == top_k)]
    return hits[0] if len(hits) == 1 else None
