"""Model shapes: what the planner and the cost model need to know of an MoE model.

Presets come from the models' published configurations (``config.json``). This module sits below
the solver, the validator and the cost model: any of them may use it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from placement.errors import InputError

__all__ = ["ATTENTION_KINDS", "MODEL_PRESETS", "ModelShape", "guess_model", "model_preset"]

ATTENTION_KINDS: tuple[str, ...] = ("", "mla", "gqa")
"""Attention kinds a :class:`ModelShape` knows: unknown, multi-head latent, grouped-query."""

_SHAPE_INTS: tuple[str, ...] = (
    "num_attention_heads", "num_key_value_heads", "head_dim", "q_lora_rank", "kv_lora_rank",
    "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim", "intermediate_size",
    "num_shared_experts", "shared_expert_intermediate_size", "vocab_size",
)


@dataclass(frozen=True)
class ModelShape:
    """The shape of an MoE model: the routed experts, and (for the step model) the rest.

    The first seven fields are all the planner needs. The others, with defaults, describe
    attention, the dense layers, the shared experts, the vocabulary and the precisions; the cost
    model's full step (:mod:`placement.cost`) needs them, and a shape without an attention kind
    (``attention=""``) can only be costed by its routed-expert part.

    Args:
        name: preset name.
        hidden_size: model (token) dimension.
        moe_intermediate_size: FFN dimension of one routed expert.
        top_k: routed experts per token.
        num_experts: routed experts per MoE layer.
        num_moe_layers: MoE layers.
        num_hidden_layers: all decoder layers, dense ones included (the first
            ``num_hidden_layers - num_moe_layers`` are dense).
        dispatch_bytes_per_element: bytes per element sent in dispatch (FP8: 1).
        combine_bytes_per_element: bytes per element sent in combine (BF16: 2).
        attention: ``"mla"`` (multi-head latent attention, DeepSeek-V3 / Kimi-K2), ``"gqa"``
            (grouped-query; multi-head when ``num_key_value_heads == num_attention_heads``) or
            ``""`` (unknown).
        num_attention_heads: query heads.
        num_key_value_heads: KV heads (GQA).
        head_dim: dimension of one head (GQA).
        q_lora_rank: MLA query compression rank (0: queries not compressed).
        kv_lora_rank: MLA latent KV dimension (what the KV cache stores, with the RoPE part).
        qk_nope_head_dim, qk_rope_head_dim, v_head_dim: MLA per-head dimensions.
        intermediate_size: FFN dimension of the dense layers.
        num_shared_experts: shared experts in every MoE layer.
        shared_expert_intermediate_size: FFN dimension of one shared expert (0: the routed one's).
        vocab_size: vocabulary (embedding and LM head rows).
        tie_word_embeddings: whether the LM head reuses the embedding matrix.
        weight_bytes_per_param: bytes per weight of the matrices (FP8: 1, BF16: 2); it also
            picks the tensor-core precision of the GEMMs.
        embedding_bytes_per_param: bytes per weight of the embedding and LM head (kept in BF16
            by FP8 checkpoints).
        kv_bytes_per_element: bytes per element of the KV cache (BF16: 2).
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
    attention: str = ""
    num_attention_heads: int = 0
    num_key_value_heads: int = 0
    head_dim: int = 0
    q_lora_rank: int = 0
    kv_lora_rank: int = 0
    qk_nope_head_dim: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0
    intermediate_size: int = 0
    num_shared_experts: int = 0
    shared_expert_intermediate_size: int = 0
    vocab_size: int = 0
    tie_word_embeddings: bool = False
    weight_bytes_per_param: float = 1.0
    embedding_bytes_per_param: float = 2.0
    kv_bytes_per_element: float = 2.0
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
        for name in ("dispatch_bytes_per_element", "combine_bytes_per_element",
                     "weight_bytes_per_param", "embedding_bytes_per_param",
                     "kv_bytes_per_element"):
            v = getattr(self, name)
            if isinstance(v, bool) or not (isinstance(v, (int, float)) and math.isfinite(v)
                                           and v > 0):
                raise InputError(f"Expected {name} > 0, got {v!r}.")
        for name in _SHAPE_INTS:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                raise InputError(f"Expected {name} >= 0 (an integer), got {v!r}.")
        if self.attention not in ATTENTION_KINDS:
            raise InputError(
                f"Expected attention in {', '.join(repr(a) for a in ATTENTION_KINDS)}, got "
                f"{self.attention!r}."
            )
        need: tuple[str, ...] = ()
        if self.attention == "mla":
            need = ("num_attention_heads", "kv_lora_rank", "qk_nope_head_dim", "v_head_dim")
        elif self.attention == "gqa":
            need = ("num_attention_heads", "num_key_value_heads", "head_dim")
        for name in need:
            if getattr(self, name) < 1:
                raise InputError(f"Expected {name} >= 1 for {self.attention} attention, got "
                                 f"{getattr(self, name)!r}.")
        if self.attention == "gqa" and self.num_attention_heads % self.num_key_value_heads:
            raise InputError(
                f"Expected num_attention_heads ({self.num_attention_heads}) to be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})."
            )
        if self.attention and self.num_dense_layers and self.intermediate_size < 1:
            raise InputError(
                f"Expected intermediate_size >= 1: the model has {self.num_dense_layers} dense "
                "layer(s)."
            )

    @property
    def expert_flops_per_assignment(self) -> float:
        """FLOPs of one token in one routed expert: ``3 GEMMs x 2 x hidden x moe_intermediate``."""
        return 6.0 * self.hidden_size * self.moe_intermediate_size

    # -- the rest of the model (the cost model's full step) ---------------------------------
    @property
    def num_dense_layers(self) -> int:
        """Decoder layers without routed experts: ``num_hidden_layers - num_moe_layers``."""
        return self.num_hidden_layers - self.num_moe_layers

    @property
    def has_attention(self) -> bool:
        """Whether the attention shape is known (the full step can be costed)."""
        return self.attention != ""

    def require_attention(self) -> None:
        """Raise :class:`InputError` unless the attention shape is known."""
        if not self.has_attention:
            raise InputError(
                f"model {self.name} has no attention shape (attention, heads, ...): the full "
                "step cannot be costed; give a preset that has one or set those fields."
            )

    @property
    def matmul_precision(self) -> str:
        """Tensor-core precision of the GEMMs, from ``weight_bytes_per_param``."""
        b = self.weight_bytes_per_param
        return "fp4" if b <= 0.5 else "fp8" if b <= 1 else "bf16"

    @property
    def expert_params(self) -> int:
        """Weights of one routed expert: ``3 * hidden * moe_intermediate`` (gate, up, down)."""
        return 3 * self.hidden_size * self.moe_intermediate_size

    @property
    def expert_bytes(self) -> float:
        """Bytes of one routed expert: ``expert_params * weight_bytes_per_param``."""
        return self.expert_params * self.weight_bytes_per_param

    @property
    def attention_params(self) -> int:
        """Weights of one layer's attention projections.

        MLA: ``hidden x q_lora + q_lora x H (nope + rope)`` (or ``hidden x H (nope + rope)``
        without query compression) ``+ hidden x (kv_lora + rope) + kv_lora x H (nope + v) +
        H v x hidden``. GQA: ``hidden x H d + 2 hidden x KV d + H d x hidden``.
        """
        h, H = self.hidden_size, self.num_attention_heads
        if self.attention == "mla":
            qk = self.qk_nope_head_dim + self.qk_rope_head_dim
            q = (h * self.q_lora_rank + self.q_lora_rank * H * qk) if self.q_lora_rank \
                else h * H * qk
            kv_a = h * (self.kv_lora_rank + self.qk_rope_head_dim)
            kv_b = self.kv_lora_rank * H * (self.qk_nope_head_dim + self.v_head_dim)
            return q + kv_a + kv_b + H * self.v_head_dim * h
        if self.attention == "gqa":
            d = self.head_dim
            return h * H * d + 2 * h * self.num_key_value_heads * d + H * d * h
        return 0

    @property
    def dense_mlp_params(self) -> int:
        """Weights of one dense layer's FFN: ``3 * hidden * intermediate``."""
        return 3 * self.hidden_size * self.intermediate_size

    @property
    def shared_expert_params(self) -> int:
        """Weights of one MoE layer's shared experts."""
        inter = self.shared_expert_intermediate_size or self.moe_intermediate_size
        return self.num_shared_experts * 3 * self.hidden_size * inter

    @property
    def router_params(self) -> int:
        """Weights of one MoE layer's router: ``hidden * num_experts``."""
        return self.hidden_size * self.num_experts

    @property
    def embedding_params(self) -> int:
        """Embedding and LM head weights (one matrix when tied)."""
        return self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)

    @property
    def non_routed_params(self) -> int:
        """Every matrix weight but the routed experts and the embeddings: attention in all
        layers, the dense layers' FFN, the shared experts and routers of the MoE layers."""
        return (self.num_hidden_layers * self.attention_params
                + self.num_dense_layers * self.dense_mlp_params
                + self.num_moe_layers * (self.shared_expert_params + self.router_params))

    @property
    def non_routed_weight_bytes(self) -> float:
        """Bytes every GPU holds besides its routed-expert slots when attention, the dense
        layers and the shared experts run data-parallel (one copy per GPU), embeddings included."""
        return (self.non_routed_params * self.weight_bytes_per_param
                + self.embedding_params * self.embedding_bytes_per_param)

    @property
    def kv_bytes_per_token_per_layer(self) -> float:
        """KV cache of one token in one layer: MLA ``(kv_lora + rope) x b``, GQA ``2 KV d x b``."""
        if self.attention == "mla":
            return (self.kv_lora_rank + self.qk_rope_head_dim) * self.kv_bytes_per_element
        if self.attention == "gqa":
            return 2 * self.num_key_value_heads * self.head_dim * self.kv_bytes_per_element
        return 0.0

    @property
    def kv_bytes_per_token(self) -> float:
        """KV cache of one token over all layers."""
        return self.kv_bytes_per_token_per_layer * self.num_hidden_layers

    def attention_flops(self, context: float, *, absorbed: bool) -> float:
        """Core-attention FLOPs of one query token in one layer over ``context`` keys.

        MLA absorbed (decode: scores and values in the latent space, as FlashMLA does):
        ``2 H ctx (2 kv_lora + rope)``; MLA unabsorbed (prefill, multi-head form):
        ``2 H ctx (nope + rope + v)``; GQA: ``4 H ctx d`` (``QK^T`` and ``PV``).
        """
        H = self.num_attention_heads
        if self.attention == "mla":
            per = (2 * self.kv_lora_rank + self.qk_rope_head_dim) if absorbed else \
                (self.qk_nope_head_dim + self.qk_rope_head_dim + self.v_head_dim)
            return 2.0 * H * context * per
        if self.attention == "gqa":
            return 4.0 * H * context * self.head_dim
        return 0.0

    @property
    def active_params(self) -> int:
        """Matrix weights one token passes through (routed top-k, shared, attention, dense, LM
        head; the embedding lookup is not a matrix product)."""
        return (self.non_routed_params + self.num_moe_layers * self.top_k * self.expert_params
                + self.vocab_size * self.hidden_size)

    def summary(self) -> str:
        """One line."""
        return (
            f"{self.name}: hidden {self.hidden_size}, expert FFN {self.moe_intermediate_size}, "
            f"top-{self.top_k} of {self.num_experts}, {self.num_moe_layers} MoE of "
            f"{self.num_hidden_layers} layers, {self.dispatch_bytes_per_element:g}/"
            f"{self.combine_bytes_per_element:g} bytes per element (dispatch/combine)"
        )


_MLA_V3 = dict(attention="mla", q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128,
               qk_rope_head_dim=64, v_head_dim=128, intermediate_size=18432, num_shared_experts=1,
               weight_bytes_per_param=1.0)

MODEL_PRESETS: dict[str, ModelShape] = {
    m.name: m
    for m in (
        ModelShape("deepseek-v3", 7168, 2048, 8, 256, 58, 61, num_attention_heads=128,
                   num_key_value_heads=128, vocab_size=129280,
                   aliases=("deepseek-v3", "deepseek-r1", "deepseek_v3", "deepseekv3"),
                   **_MLA_V3),  # type: ignore[arg-type]
        ModelShape("kimi-k2", 7168, 2048, 8, 384, 60, 61, num_attention_heads=64,
                   num_key_value_heads=64, vocab_size=163840,
                   aliases=("kimi-k2", "kimi_k2", "kimik2"), **_MLA_V3),  # type: ignore[arg-type]
        ModelShape("qwen3-235b-a22b", 4096, 1536, 8, 128, 94, 94, attention="gqa",
                   num_attention_heads=64, num_key_value_heads=4, head_dim=128,
                   intermediate_size=12288, vocab_size=151936, weight_bytes_per_param=1.0,
                   aliases=("qwen3-235b",)),
        ModelShape("qwen3-30b-a3b", 2048, 768, 8, 128, 48, 48, attention="gqa",
                   num_attention_heads=32, num_key_value_heads=4, head_dim=128,
                   intermediate_size=6144, vocab_size=151936, weight_bytes_per_param=1.0,
                   aliases=("qwen3-30b",)),
        ModelShape("mixtral-8x7b", 4096, 14336, 2, 8, 32, 32, attention="gqa",
                   num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                   vocab_size=32000, weight_bytes_per_param=2.0, aliases=("mixtral-8x7b",)),
        ModelShape("deepseek-moe-16b", 2048, 1408, 6, 64, 27, 28, attention="gqa",
                   num_attention_heads=16, num_key_value_heads=16, head_dim=128,
                   intermediate_size=10944, num_shared_experts=2, vocab_size=102400,
                   weight_bytes_per_param=2.0, aliases=("deepseek-moe",)),
        ModelShape("qwen1.5-moe-a2.7b", 2048, 1408, 4, 60, 24, 24, attention="gqa",
                   num_attention_heads=16, num_key_value_heads=16, head_dim=128,
                   intermediate_size=5632, num_shared_experts=1,
                   shared_expert_intermediate_size=5632, vocab_size=151936,
                   weight_bytes_per_param=2.0, aliases=("qwen1.5-moe",)),
        ModelShape("olmoe-1b-7b", 2048, 1024, 8, 64, 16, 16, attention="gqa",
                   num_attention_heads=16, num_key_value_heads=16, head_dim=128,
                   vocab_size=50304, weight_bytes_per_param=2.0, aliases=("olmoe",)),
        ModelShape("flame-moe-290m", 1024, 704, 6, 64, 8, 10, weight_bytes_per_param=2.0,
                   aliases=("flame-moe-290m",)),
    )
}
"""Shapes from the models' published configurations (``config.json``: DeepSeek-V3 and Kimi-K2
MLA with 128 / 64 heads, 1 shared expert, 3 / 1 dense layers; Qwen3 and Mixtral GQA; weights in
the precision of the official serving release: FP8 for DeepSeek-V3, Kimi-K2 and Qwen3 (their
FP8 checkpoints), BF16 for the rest). FLAME-MoE-290M from its training scripts (hidden 1024,
expert FFN 704, top-6 in its trace ``bundled:flame-moe``, decoder layers 1-9 MoE with ids up to 9); its
attention shape is not published with the trace, so it can be costed by its experts only."""


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
