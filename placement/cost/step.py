"""The full serving step: attention, dense parts, routed experts, all-to-all, memory and batch.

One GPU of an expert-parallel deployment (attention, dense layers and shared experts
data-parallel, one copy per GPU; routed experts spread over the EP ranks), for one phase:

* prefill: ``b`` new prompt tokens per GPU per step, compute bound;
* decode: ``b`` sequences per GPU, one new token each per step, bound by memory bandwidth
  (weights and KV cache read every step) and by the all-to-all.

Every piece is a roofline: a GEMM with ``W`` weights over ``t`` tokens takes
``max(2 W t / (peak x e_gemm x sm_share), W x bytes / (HBM x e_memory))`` and core attention
``max(t x attention_flops(ctx) / (BF16 peak x e_attention x sm_share),
kv bytes read / (HBM x e_kv))``; the routed experts of the busiest GPU get ``t k imbalance``
tokens and read ``slots`` experts' weights; dispatch and combine move ``t x (sends or copies) x
hidden x bytes`` over the network (and NVLink) of the busiest GPU. Per MoE layer, per
micro-batch of ``t = b / 2`` tokens (``A0`` attention before the core, ``A1`` core attention and
output projection, ``S`` shared experts, ``M`` routed experts, ``D`` dispatch, ``C`` combine):

* ``overlap="none"`` (one batch, ``t = b``): ``A0 + A1 + S + M + D + C``;
* ``overlap="two-batch"``, prefill (DeepSeek's prefill schedule; the all-to-all kernels hold
  ``comm_sms`` of the SMs, so compute runs at ``1 - comm_sms / num_sms``):
  ``max(A + S, C) + max(A, D) + max(M, D) + max(M + S, C)``;
* ``overlap="two-batch"``, decode (DeepSeek's 5-stage decode pipeline; the low-latency
  all-to-all holds no SMs but the routed experts wait for their dispatch):
  ``2 x [max(S + A0, D) + M + max(A1, C)]``.

Dense layers run ``A + dense FFN`` per micro-batch, the LM head once per decode token. The step
is the sum over layers. Memory per GPU: weights (everything but the routed experts once, plus
``slots x num_moe_layers`` experts), a runtime reserve, and the KV cache gets the rest; the decode
batch is the most sequences of ``context`` tokens that fit, or fewer when a per-user speed is
required. Tokens/s: prefill ``b / step / (1 - cache_hit_rate)`` input tokens (cached prompt
tokens are counted, not computed), decode ``b / step`` output tokens, per GPU.

What it leaves out: kernel launch and scheduler overheads, elementwise kernels (norms, RoPE,
activation quantisation), attention imbalance between DP ranks, speculative decoding (MTP) and
the KV-cache transfer from prefill to decode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from placement._util import format_si
from placement.cluster import Cluster
from placement.errors import InputError
from placement.hardware import GPU, Efficiency, HardwareFigures, gpu_preset
from placement.models import ModelShape

__all__ = [
    "DEFAULT_PREFILL_TOKENS",
    "PHASES",
    "STEP_OVERLAPS",
    "Efficiency",
    "MoeLoad",
    "StepEstimate",
    "Workload",
    "estimate_step",
    "format_step",
]

PHASES: tuple[str, ...] = ("prefill", "decode")
"""Serving phases the step model knows."""

STEP_OVERLAPS: tuple[str, ...] = ("none", "two-batch")
"""No overlap, or DeepSeek's two micro-batches (the schedule depends on the phase)."""

DEFAULT_PREFILL_TOKENS = 16384
"""New prompt tokens per GPU per prefill step when not given: the batch of DeepSeek's published
prefill profile (``deepseek-ai/profile-data``: EP32, 4K prompts, 16K tokens per GPU)."""

GB = 1e9


@dataclass(frozen=True)
class Workload:
    """What a deployment serves, and how the step is scheduled.

    Args:
        phase: ``"prefill"`` or ``"decode"``.
        context: tokens per sequence: decode, the KV cache length each sequence attends to;
            prefill, the prompt length (a new token attends to its cached prefix and the new
            tokens before it: ``context x (1 + cache_hit_rate) / 2`` on average).
        batch: prefill, new tokens per GPU per step (default :data:`DEFAULT_PREFILL_TOKENS`);
            decode, sequences per GPU (default: as many as fit in memory and meet
            ``min_tokens_per_s_per_user``).
        min_tokens_per_s_per_user: decode only: the per-sequence speed the batch must keep
            (``1 / step``), or None.
        cache_hit_rate: prefill only: share of prompt tokens served from the prefix cache
            (counted in the input throughput, not computed; attended to all the same).
        overlap: ``"two-batch"`` (DeepSeek's micro-batch overlap) or ``"none"``.
        runtime_reserve_gb: GPU memory kept for activations, communication buffers and the
            runtime (default: 10 % of the GPU's memory).
    """

    phase: str = "decode"
    context: float = 4096.0
    batch: int | None = None
    min_tokens_per_s_per_user: float | None = None
    cache_hit_rate: float = 0.0
    overlap: str = "two-batch"
    runtime_reserve_gb: float | None = None

    def __post_init__(self) -> None:
        if self.phase not in PHASES:
            raise InputError(f"Expected phase in {', '.join(PHASES)}, got {self.phase!r}.")
        if self.overlap not in STEP_OVERLAPS:
            raise InputError(f"Expected overlap in {', '.join(STEP_OVERLAPS)}, got "
                             f"{self.overlap!r}.")
        if not (isinstance(self.context, (int, float)) and math.isfinite(self.context)
                and self.context >= 1):
            raise InputError(f"Expected context >= 1 token, got {self.context!r}.")
        if self.batch is not None and (isinstance(self.batch, bool)
                                       or not isinstance(self.batch, (int, np.integer))
                                       or self.batch < 1):
            raise InputError(f"Expected batch >= 1 (an integer), got {self.batch!r}.")
        s = self.min_tokens_per_s_per_user
        if s is not None and not (math.isfinite(s) and s > 0):
            raise InputError(f"Expected min_tokens_per_s_per_user > 0, got {s!r}.")
        if s is not None and self.phase != "decode":
            raise InputError("min_tokens_per_s_per_user applies to decode only.")
        if not (math.isfinite(self.cache_hit_rate) and 0 <= self.cache_hit_rate < 1):
            raise InputError(f"Expected cache_hit_rate in [0, 1), got {self.cache_hit_rate!r}.")
        if self.cache_hit_rate and self.phase != "prefill":
            raise InputError("cache_hit_rate applies to prefill only.")
        r = self.runtime_reserve_gb
        if r is not None and not (math.isfinite(r) and r >= 0):
            raise InputError(f"Expected runtime_reserve_gb >= 0, got {r!r}.")

    @property
    def attended_context(self) -> float:
        """Mean keys one computed token attends to (see ``context``)."""
        if self.phase == "decode":
            return float(self.context)
        return float(self.context) * (1.0 + self.cache_hit_rate) / 2.0

    def reserve_gb(self, gpu: GPU) -> float:
        """The runtime reserve on ``gpu``, GB."""
        return 0.1 * gpu.memory_gb if self.runtime_reserve_gb is None else self.runtime_reserve_gb

    def summary(self) -> str:
        """One line."""
        if self.phase == "prefill":
            what = (f"prefill of {self.context:g}-token prompts"
                    + (f", {self.cache_hit_rate:.1%} of prompt tokens from the prefix cache"
                       if self.cache_hit_rate else "")
                    + f", {self.batch or DEFAULT_PREFILL_TOKENS} new tokens per GPU per step")
        else:
            what = f"decode at {self.context:g} tokens of KV cache per sequence"
            if self.batch is not None:
                what += f", at most {self.batch} sequences per GPU"
            if self.min_tokens_per_s_per_user is not None:
                what += f", at least {self.min_tokens_per_s_per_user:g} tokens/s per sequence"
        return f"{what}; overlap {self.overlap}"


def _ro(a: np.ndarray) -> np.ndarray:
    a = np.array(a, dtype=np.float64, copy=True).reshape(-1)
    a.flags.writeable = False
    return a


@dataclass(frozen=True)
class MoeLoad:
    """What the busiest GPU of every MoE layer does, per token of one GPU's batch.

    Attributes:
        imbalance: ``[L]`` max / mean expert-token assignments per GPU.
        sends: ``[L]`` cross-node sends (one per token and remote node: DeepEP normal mode)
            the busiest GPU sends or receives, per token of a GPU's batch.
        copies: ``[L]`` cross-node copies (one per remote expert: low-latency mode), the same way.
        intra: ``[L]`` NVLink copies (to other GPUs of the node), the same way.
        mean_sends_per_token: cross-node sends per token, mean over layers (the figure).
        source: ``"replay"`` (measured on a token-level replay), ``"uniform"`` (experts chosen
            uniformly at random, hot GPU receiving ``imbalance`` x the mean) or
            ``"independent"`` (from the GPU loads, every token's experts drawn independently).
    """

    imbalance: np.ndarray
    sends: np.ndarray
    copies: np.ndarray
    intra: np.ndarray
    mean_sends_per_token: float
    source: str

    def __post_init__(self) -> None:
        n = None
        for name in ("imbalance", "sends", "copies", "intra"):
            a = _ro(getattr(self, name))
            if n is None:
                n = a.shape[0]
            if a.shape[0] != n or n == 0 or not np.isfinite(a).all() or (a < 0).any():
                raise InputError(f"Expected moe.{name} to be {n} finite values >= 0.")
            object.__setattr__(self, name, a)
        if (self.imbalance < 1 - 1e-9).any():
            raise InputError("Expected moe.imbalance >= 1 in every layer.")

    @property
    def num_layers(self) -> int:
        """L, the layers measured (their mean stands for every MoE layer of the model)."""
        return int(self.imbalance.shape[0])

    @property
    def mean_imbalance(self) -> float:
        """Imbalance, mean over layers."""
        return float(self.imbalance.mean())

    @classmethod
    def uniform(cls, cluster: Cluster, top_k: int, imbalance: float = 1.0) -> MoeLoad:
        """Experts drawn uniformly at random (with replacement) over ``N`` nodes of ``gpn`` GPUs.

        A token reaches ``s = (N - 1)(1 - (1 - 1/N)^k)`` remote nodes, sends ``k (N - 1) / N``
        copies off its node and ``k (gpn - 1) / G`` to other GPUs of its node; the busiest GPU
        receives ``imbalance`` times the mean.
        """
        if not (math.isfinite(imbalance) and imbalance >= 1):
            raise InputError(f"Expected imbalance >= 1, got {imbalance}.")
        N, G, gpn = cluster.num_nodes, cluster.num_gpus, cluster.gpus_per_node
        s = (N - 1) * (1.0 - (1.0 - 1.0 / N) ** top_k)
        copies = top_k * (N - 1) / N
        intra = top_k * (gpn - 1) / G
        one = np.ones(1)
        return cls(one * imbalance, one * s * imbalance, one * copies * imbalance,
                   one * intra * imbalance, s, "uniform")

    @classmethod
    def from_loads(cls, gpu_loads: np.ndarray, cluster: Cluster, top_k: int) -> MoeLoad:
        """From per-GPU loads ``[L, G]`` alone (aggregated traces): a token's k experts are
        drawn independently, each landing on node ``n`` with the node's share ``p_n`` of the
        load, so it reaches node ``n`` with ``q_n = 1 - (1 - p_n)^k``.

        GPU ``(n, i)`` receives from the GPUs ``(m, i)`` of every other node ``b q_n`` tokens
        each and sends ``b sum_{m != n} q_m``; copies scale with the GPU's load.
        """
        loads = np.asarray(gpu_loads, dtype=np.float64)
        if loads.ndim != 2 or loads.shape[1] != cluster.num_gpus:
            raise InputError(f"Expected gpu_loads [L, {cluster.num_gpus}], got {loads.shape}.")
        N, gpn, G = cluster.num_nodes, cluster.gpus_per_node, cluster.num_gpus
        tot = loads.sum(axis=1, keepdims=True)
        share = np.divide(loads, tot, out=np.full_like(loads, 1.0 / G), where=tot > 0)
        p = share.reshape(-1, N, gpn).sum(axis=2)  # [L, N]
        q = 1.0 - (1.0 - p) ** top_k
        send = q.sum(axis=1, keepdims=True) - q  # [L, N]: a node-n source's remote nodes
        recv = (N - 1) * q
        sends = np.maximum(send, recv).max(axis=1)
        mean_sends = float(((N - 1) / N * q.sum(axis=1)).mean()) if N > 1 else 0.0
        # copies: a token of GPU g sends k (1 - p_own) copies off node; GPU g receives its load
        # share of all copies, of which (1 - 1/N) come from other nodes
        hot = share.max(axis=1) * G  # = imbalance
        copies = np.maximum(top_k * (1.0 - p.min(axis=1)), top_k * hot * (N - 1) / N) \
            if N > 1 else np.zeros(loads.shape[0])
        intra = top_k * hot * (gpn - 1) / G
        imb = np.where(tot[:, 0] > 0, hot, 1.0)
        return cls(imb, sends if N > 1 else np.zeros(loads.shape[0]), copies, intra,
                   mean_sends, "independent")

    @classmethod
    def from_replay(cls, result: Any, top_k: int) -> MoeLoad:
        """From a :class:`~placement.validation.ValidationResult`: measured traffic when the
        replay is token-level, else :meth:`from_loads`."""
        c: Cluster = result.cluster
        traffic = result.per_gpu_traffic()
        if traffic is None or result.tokens is None:
            return cls.from_loads(result.gpu_loads, c, top_k)
        G = c.num_gpus
        per_gpu = np.maximum(np.asarray(result.tokens, dtype=np.float64) / G, 1e-12)  # [L]
        sends = np.maximum(traffic["net_send"], traffic["net_recv"]).max(axis=1) / per_gpu
        m = np.asarray(result.matrix, dtype=np.float64)  # [L, G, G]
        node = c.node_of_gpu()
        off = (node[:, None] != node[None, :])[None]
        cross = np.where(off, m, 0.0)
        copies = np.maximum(cross.sum(axis=2), cross.sum(axis=1)).max(axis=1) / per_gpu
        intra = np.maximum(traffic["intra_send"], traffic["intra_recv"]).max(axis=1) / per_gpu
        per_tok = result.cross_node_sends_per_token
        mean_sends = float(np.mean(per_tok)) if per_tok is not None else 0.0
        return cls(np.maximum(result.imbalance, 1.0), sends, copies, intra, mean_sends, "replay")


@dataclass(frozen=True)
class StepEstimate:
    """One GPU's serving step, and what it means for the deployment.

    Attributes:
        model, gpu, cluster, workload, efficiency, moe: what was estimated.
        usd_per_gpu_hour: the price used.
        feasible: False when not even one sequence (decode) or token (prefill) fits in memory,
            or the speed target cannot be met; then the figures are zero / infinite.
        reason: why it is not feasible ("" otherwise).
        batch: prefill, new tokens per GPU per step; decode, sequences per GPU.
        batch_limit: what set the batch: ``"workload"``, ``"memory"`` or ``"speed target"``.
        max_batch_memory: the most the KV cache holds (sequences or new tokens).
        step_s: seconds per step.
        parts: seconds per step of every piece, as if run one after the other (``attention``,
            ``core attention``, ``shared experts``, ``routed experts``, ``dense FFN``,
            ``LM head``, ``dispatch``, ``combine``).
        memory: GB per GPU: ``gpu``, ``non-routed weights``, ``routed experts``, ``runtime
            reserve``, ``KV cache``; and ``kv_tokens`` (tokens the KV cache holds).
        figures: the hardware figures of the GEMMs and the all-to-all
            (:meth:`~placement.cluster.Cluster.figures`: the solver's numbers for this cluster).
    """

    model: ModelShape
    gpu: GPU
    cluster: Cluster
    workload: Workload
    efficiency: Efficiency
    moe: MoeLoad
    usd_per_gpu_hour: float
    feasible: bool
    reason: str
    batch: int
    batch_limit: str
    max_batch_memory: int
    step_s: float
    parts: dict[str, float] = field(default_factory=dict)
    memory: dict[str, float] = field(default_factory=dict)
    figures: HardwareFigures | None = None

    @property
    def computed_tokens_per_s_per_gpu(self) -> float:
        """Tokens one GPU computes per second (prefill: new tokens; decode: output tokens)."""
        return self.batch / self.step_s if self.feasible and self.step_s > 0 else 0.0

    @property
    def tokens_per_s_per_gpu(self) -> float:
        """The phase's tokens per GPU per second: prefill input tokens (cache hits included),
        decode output tokens."""
        hit = self.workload.cache_hit_rate if self.workload.phase == "prefill" else 0.0
        return self.computed_tokens_per_s_per_gpu / (1.0 - hit)

    @property
    def tokens_per_s(self) -> float:
        """For the whole cluster."""
        return self.tokens_per_s_per_gpu * self.cluster.num_gpus

    @property
    def tokens_per_s_per_node(self) -> float:
        """Per node."""
        return self.tokens_per_s_per_gpu * self.cluster.gpus_per_node

    @property
    def usd_per_million_tokens(self) -> float:
        """``num_gpus x usd_per_gpu_hour / 3600 / tokens_per_s x 1e6`` (inf when infeasible)."""
        t = self.tokens_per_s
        return self.cluster.num_gpus * self.usd_per_gpu_hour / 3600.0 / t * 1e6 if t > 0 \
            else float("inf")

    @property
    def tokens_per_s_per_user(self) -> float | None:
        """Decode: tokens per second each sequence sees (``1 / step``); None for prefill."""
        if self.workload.phase != "decode" or not self.feasible:
            return None
        return 1.0 / self.step_s

    @property
    def kv_tokens(self) -> float:
        """Tokens the KV cache of one GPU holds."""
        return self.memory.get("kv_tokens", 0.0)

    @property
    def communication_s(self) -> float:
        """Dispatch and combine seconds per step, as if nothing overlapped."""
        return self.parts.get("dispatch", 0.0) + self.parts.get("combine", 0.0)

    @property
    def compute_s(self) -> float:
        """Every compute piece's seconds per step, as if nothing overlapped."""
        return sum(v for k, v in self.parts.items() if k not in ("dispatch", "combine"))

    @property
    def dominant(self) -> str:
        """The largest piece of the step."""
        return max(self.parts, key=lambda k: self.parts[k]) if self.parts else ""

    def summary(self) -> str:
        """A readable summary (see :func:`format_step`)."""
        return format_step(self)


# -------------------------------------------------------------------------------------------
# the formulas
# -------------------------------------------------------------------------------------------
class _Roofline:
    """Times of the step's pieces for one micro-batch (see the module docstring)."""

    def __init__(self, model: ModelShape, gpu: GPU, cluster: Cluster, workload: Workload,
                 eff: Efficiency, moe: MoeLoad) -> None:
        self.m, self.g, self.c, self.w, self.e, self.moe = model, gpu, cluster, workload, eff, moe
        # the GEMMs and the all-to-all: the cluster's figures, as the solver's predicted time
        f = cluster.figures(model.matmul_precision, eff, gpu=gpu)
        self.figures = f
        self.hbm = gpu.hbm_tbps * 1e12
        self.gemm_flops = f.tflops * 1e12  # achieved: peak x e.gemm, or the user's figure
        self.hbm_gemm = f.hbm_tbps * 1e12  # achieved: HBM x e.memory
        self.bf16 = gpu.tflops("bf16") * 1e12
        self.net = f.network_gbps * 1e9
        self.nvl = f.nvlink_gbps * 1e9
        two = workload.overlap == "two-batch"
        self.sm_share = 1.0 - eff.comm_sms / gpu.num_sms \
            if (two and workload.phase == "prefill") else 1.0
        if self.sm_share <= 0:
            raise InputError(f"efficiency.comm_sms ({eff.comm_sms}) leaves no SM of {gpu.name} "
                             "for compute.")
        h, H = model.hidden_size, model.num_attention_heads
        self.o_params = H * (model.v_head_dim if model.attention == "mla" else model.head_dim) * h
        self.pre_params = model.attention_params - self.o_params

    def gemm(self, params: float, tokens: float, *, share: float, bytes_per: float | None = None,
             flops: float | None = None) -> float:
        b = self.m.weight_bytes_per_param if bytes_per is None else bytes_per
        p = self.gemm_flops if flops is None else flops
        return max(2.0 * params * tokens / (p * share), params * b / self.hbm_gemm)

    def pieces(self, t: float, seqs: float, share: float) -> dict[str, np.ndarray | float]:
        """Seconds of every piece for a micro-batch of ``t`` tokens (``seqs`` sequences)."""
        m, w, e = self.m, self.w, self.e
        ctx = w.attended_context
        decode = w.phase == "decode"
        kv_layer = m.kv_bytes_per_token_per_layer
        a0 = self.gemm(self.pre_params, t, share=share)
        if not decode and w.cache_hit_rate and m.attention == "mla":
            # cached prefix tokens need their keys and values up-projected again (kv_b)
            cached = t * w.cache_hit_rate / (1.0 - w.cache_hit_rate)
            kv_b = m.kv_lora_rank * m.num_attention_heads * (m.qk_nope_head_dim + m.v_head_dim)
            a0 += 2.0 * kv_b * cached / (self.gemm_flops * share)
        core_flops = t * m.attention_flops(ctx, absorbed=decode) / (self.bf16 * e.attention * share)
        if decode:
            kv_read = seqs * w.context * kv_layer
        else:  # the cached prefix is read once, the new tokens' KV written once
            kv_read = t * (1.0 + w.cache_hit_rate / (1.0 - w.cache_hit_rate)) * kv_layer
        core = max(core_flops, kv_read / (self.hbm * e.kv_read))
        a1 = core + self.gemm(self.o_params + m.router_params, t, share=share)
        shared = self.gemm(m.shared_expert_params, t, share=share) if m.shared_expert_params \
            else 0.0
        moe = self.moe
        exp_flops = 2.0 * m.expert_params * t * m.top_k * moe.imbalance / \
            (self.gemm_flops * share)
        exp_read = self.c.slots_per_gpu * m.expert_bytes / self.hbm_gemm
        experts = np.maximum(exp_flops, exp_read)
        h = m.hidden_size
        cross = moe.copies if decode else moe.sends
        disp = np.maximum(t * cross * h * m.dispatch_bytes_per_element / self.net,
                          t * moe.intra * h * m.dispatch_bytes_per_element / self.nvl)
        comb = np.maximum(t * cross * h * m.combine_bytes_per_element / self.net,
                          t * moe.intra * h * m.combine_bytes_per_element / self.nvl)
        if self.c.num_gpus == 1:
            disp = comb = np.zeros_like(experts)
        dense = self.gemm(m.dense_mlp_params, t, share=1.0) if m.num_dense_layers else 0.0
        # dense layers run without all-to-all: attention at full SMs there
        core_dense = max(t * m.attention_flops(ctx, absorbed=decode) / (self.bf16 * e.attention),
                         kv_read / (self.hbm * e.kv_read))
        a_dense = (self.gemm(self.pre_params, t, share=1.0) + core_dense
                   + self.gemm(self.o_params, t, share=1.0))
        head_tokens = t if decode else seqs
        head = self.gemm(m.vocab_size * h, head_tokens, share=1.0,
                         bytes_per=m.embedding_bytes_per_param, flops=self.bf16 * e.gemm)
        return dict(a0=a0, a1=a1, core=core, shared=shared, experts=experts, disp=disp,
                    comb=comb, dense=dense, a_dense=a_dense, core_dense=core_dense, head=head)

    def step(self, batch: float) -> tuple[float, dict[str, float]]:
        """Seconds per step for ``batch`` (tokens for prefill, sequences for decode)."""
        m, w = self.m, self.w
        decode = w.phase == "decode"
        two = w.overlap == "two-batch"
        tokens = float(batch)
        if decode:
            seqs = float(batch)
        else:
            seqs = tokens / ((1.0 - w.cache_hit_rate) * float(w.context))
        mb = 2.0 if two else 1.0
        p = self.pieces(tokens / mb, seqs / mb, self.sm_share)
        a0, a1, shared = float(p["a0"]), float(p["a1"]), float(p["shared"])
        experts, disp, comb = (np.asarray(p[k], dtype=np.float64)
                               for k in ("experts", "disp", "comb"))
        a = a0 + a1
        if not two:
            moe_layer = a + shared + experts + disp + comb
        elif not decode:
            moe_layer = (np.maximum(a + shared, comb) + np.maximum(a, disp)
                         + np.maximum(experts, disp) + np.maximum(experts + shared, comb))
        else:
            moe_layer = 2.0 * (np.maximum(shared + a0, disp) + experts + np.maximum(a1, comb))
        dense_layer = mb * (float(p["a_dense"]) + float(p["dense"]))
        head = mb * float(p["head"])
        L, Ld = m.num_moe_layers, m.num_dense_layers
        step = float(moe_layer.mean()) * L + dense_layer * Ld + head
        core, core_dense = float(p["core"]), float(p["core_dense"])
        parts = {
            "attention": mb * (L * (a - core) + Ld * (float(p["a_dense"]) - core_dense)),
            "core attention": mb * (L * core + Ld * core_dense),
            "shared experts": mb * L * shared,
            "routed experts": mb * L * float(experts.mean()),
            "dense FFN": mb * Ld * float(p["dense"]),
            "LM head": head,
            "dispatch": mb * L * float(disp.mean()),
            "combine": mb * L * float(comb.mean()),
        }
        return step, {k: v for k, v in parts.items() if v > 0}


def estimate_step(
    model: ModelShape,
    cluster: Cluster,
    workload: Workload | None = None,
    *,
    gpu: GPU | str | None = None,
    efficiency: Efficiency | None = None,
    moe: MoeLoad | None = None,
    usd_per_gpu_hour: float | None = None,
) -> StepEstimate:
    """The serving step of one GPU of ``cluster`` (see the module docstring for the formulas).

    Args:
        model: the model (its attention shape must be known).
        cluster: nodes, GPUs per node and routed-expert slots per GPU.
        workload: phase, context, batch, speed target (default: decode at 4096 tokens).
        gpu: a :class:`~placement.hardware.GPU` or preset name (default: ``cluster.gpu``).
        efficiency: shares of the peaks (default :class:`Efficiency`).
        moe: per-layer imbalance and traffic (default: uniform routing, imbalance 1).
        usd_per_gpu_hour: price (default: the cluster's ``usd_per_gpu_hour`` when set, else the
            GPU's).

    The routed-expert GEMMs, the memory-bound GEMMs and the all-to-all take their numbers from
    ``cluster.figures(model.matmul_precision, efficiency, gpu)``, the figures of the solver's
    predicted time: a cluster's ``gpu_tflops``, ``nvlink_gbps`` and ``network_gbps``, when set,
    override the GPU's (attention and the KV cache always use the GPU's peaks).
    """
    # 1. inputs
    workload = workload or Workload()
    efficiency = efficiency or Efficiency()
    model.require_attention()
    g = _resolve_gpu(gpu, cluster)
    cluster.check_fits(model.num_experts)
    moe = moe or MoeLoad.uniform(cluster, model.top_k)
    price = cluster.price(g) if usd_per_gpu_hour is None else float(usd_per_gpu_hour)
    if not (math.isfinite(price) and price >= 0):
        raise InputError(f"Expected usd_per_gpu_hour >= 0, got {price!r}.")
    roof = _Roofline(model, g, cluster, workload, efficiency, moe)

    # 2. memory: what is left for the KV cache
    experts_b = cluster.slots_per_gpu * model.num_moe_layers * model.expert_bytes
    reserve_b = workload.reserve_gb(g) * GB
    kv_b = g.memory_gb * GB - model.non_routed_weight_bytes - experts_b - reserve_b
    kv_tokens = max(kv_b, 0.0) / model.kv_bytes_per_token
    memory = {
        "gpu": g.memory_gb, "non-routed weights": model.non_routed_weight_bytes / GB,
        "routed experts": experts_b / GB, "runtime reserve": reserve_b / GB,
        "KV cache": kv_b / GB, "kv_tokens": kv_tokens,
    }
    if workload.phase == "decode":
        cap = int(kv_tokens // workload.context)
    else:  # the prompts of the batch stay in the KV cache during the step
        cap = int(kv_tokens * (1.0 - workload.cache_hit_rate))
    common: dict[str, Any] = dict(model=model, gpu=g, cluster=cluster, workload=workload,
                                  efficiency=efficiency, moe=moe, usd_per_gpu_hour=price,
                                  max_batch_memory=max(cap, 0), memory=memory,
                                  figures=roof.figures)
    unit = "sequence" if workload.phase == "decode" else "prompt token"
    if cap < 1:
        need = (model.kv_bytes_per_token * (workload.context if workload.phase == "decode"
                                            else 1.0 / (1.0 - workload.cache_hit_rate))) / GB
        return StepEstimate(feasible=False, reason=(
            f"no room for one {unit}: {kv_b / GB:.2f} GB left for the KV cache, one needs "
            f"{need:.3f} GB"), batch=0, batch_limit="memory", step_s=float("inf"), **common)

    # 3. the batch
    if workload.phase == "prefill":
        want = workload.batch or DEFAULT_PREFILL_TOKENS
        batch, limit = (want, "workload") if want <= cap else (cap, "memory")
    else:
        batch, limit = (cap, "memory")
        if workload.batch is not None and workload.batch < cap:
            batch, limit = workload.batch, "workload"
        target = workload.min_tokens_per_s_per_user
        if target is not None and 1.0 / roof.step(batch)[0] < target:
            if 1.0 / roof.step(1)[0] < target:
                s1 = roof.step(1)[0]
                return StepEstimate(feasible=False, reason=(
                    f"even one sequence per GPU gets {1 / s1:.1f} tokens/s, below the "
                    f"{target:g} required"), batch=0, batch_limit="speed target",
                    step_s=s1, **common)
            lo, hi = 1, batch  # step(lo) meets the target, step(hi) does not
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if 1.0 / roof.step(mid)[0] >= target:
                    lo = mid
                else:
                    hi = mid
            batch, limit = lo, "speed target"
    step, parts = roof.step(batch)
    return StepEstimate(feasible=True, reason="", batch=int(batch), batch_limit=limit,
                        step_s=step, parts=parts, **common)


def _resolve_gpu(gpu: GPU | str | None, cluster: Cluster) -> GPU:
    if isinstance(gpu, GPU):
        return gpu
    name = gpu if gpu is not None else getattr(cluster, "gpu", None)
    if not name:
        raise InputError("No GPU given: pass gpu= (a preset name such as 'h800') or a cluster "
                         "with one.")
    return gpu_preset(name)


# -------------------------------------------------------------------------------------------
# text
# -------------------------------------------------------------------------------------------


def _ms(s: float) -> str:
    return f"{s * 1e3:.1f} ms" if math.isfinite(s) else "n/a"


def format_step(est: StepEstimate) -> str:
    """Text summary of a step estimate, every assumption included."""
    c, g, w, m = est.cluster, est.gpu, est.workload, est.model
    mem = est.memory
    lines = [
        f"model {m.name} ({m.attention.upper()} attention, {m.matmul_precision.upper()} weights) "
        f"on {c.num_nodes} x {c.gpus_per_node} {g.name.upper()}, {c.slots_per_gpu} routed "
        f"slot(s)/GPU ({c.num_slots - m.num_experts} redundant)",
        f"workload: {w.summary()}",
        f"memory per GPU: {mem['gpu']:g} GB = {mem['non-routed weights']:.1f} non-routed weights "
        f"+ {mem['routed experts']:.1f} routed experts + {mem['runtime reserve']:.1f} runtime "
        f"reserve + {mem['KV cache']:.1f} KV cache ({format_si(mem['kv_tokens'])} tokens at "
        f"{m.kv_bytes_per_token / 1e3:.1f} kB)",
        f"MoE: imbalance {est.moe.mean_imbalance:.3f}, cross-node sends per token "
        f"{est.moe.mean_sends_per_token:.2f} ({est.moe.source})",
    ]
    if not est.feasible:
        lines.append(f"not feasible: {est.reason}")
        return "\n".join(lines)
    unit = "sequences" if w.phase == "decode" else "new tokens"
    lines.append(f"batch: {est.batch} {unit} per GPU (set by {est.batch_limit}; memory allows "
                 f"{est.max_batch_memory})")
    user = est.tokens_per_s_per_user
    lines.append(f"step: {_ms(est.step_s)}" + (f" ({user:.1f} tokens/s per sequence)"
                                                 if user is not None else ""))
    lines.append("pieces (ms per step, unoverlapped): " + ", ".join(
        f"{k} {v * 1e3:.1f}" for k, v in est.parts.items()))
    which = "input (cache hits included)" if w.phase == "prefill" else "output"
    lines.append(f"predicted {which} tokens/s: {format_si(est.tokens_per_s)} for the cluster, "
                 f"{format_si(est.tokens_per_s_per_node)} per node")
    lines.append(f"$ per million {which.split()[0]} tokens: {est.usd_per_million_tokens:.4f} at "
                 f"${est.usd_per_gpu_hour:g} per GPU-hour")
    if est.figures is not None:
        lines.append(f"hardware of the GEMMs and the all-to-all: {est.figures.summary()}")
    lines.append("assumed: " + "; ".join(est.efficiency.lines()))
    return "\n".join(lines)
