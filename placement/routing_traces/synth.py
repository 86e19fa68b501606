"""Synthetic token-level routing traces with the structure of real MoE routing.

The generative model (all numpy, vectorised over tokens; a loop over layers and token chunks):

1. popularity: every layer has a log-popularity per expert, ``skew * N(0, 1)`` (lognormal
   popularity: a few experts take many times the mean), or one matched to a real trace
   (``like``);
2. topics: ``num_topics`` latent topics, each with its own log-affinity per expert and layer,
   ``topic_strength * N(0, 1)``; every sequence of ``seq_len`` tokens has one topic, so experts
   that a topic likes fire together (co-activation);
3. drift: each window has its own topic mix, ``softmax(log mix + drift * N(0, 1))``, so expert
   shares move between windows;
4. source ranks: each sequence lives on one EP rank, uniform or, with probability
   ``rank_topic_correlation``, drawn from its topic's preferred ranks;
5. routing: a token's score for expert ``e`` is popularity + topic affinity + Gumbel noise, and
   its top-k by score is a sample of k experts without replacement, proportional to
   ``exp(popularity + affinity)``. With ``n_group > 1`` routing is group-limited as DeepSeek-V3
   does it: experts fall in ``n_group`` equal groups, the token keeps the ``topk_group`` groups
   whose two best scores sum highest, then takes its top-k inside them.

Same config, sizes and seed give the same trace (``np.random.default_rng(seed)``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from placement.errors import InputError
from placement.routing_traces.trace import Trace

__all__ = ["BUNDLED_RECIPES", "PRESETS", "SynthConfig", "make_bundled", "synthesize"]

_CHUNK = 32_768  # tokens routed at a time (bounds memory at chunk x E floats)
_CALIBRATION_TOKENS = 2048  # tokens routed per step when matching popularity (``like``)
_CALIBRATION_STEPS = 5


@dataclass(frozen=True)
class SynthConfig:
    """A model's routing shape and the knobs of the synthetic routing.

    Attributes:
        name: the preset's name (``deepseek-v3``).
        num_experts: E, routed experts per MoE layer.
        top_k: k, experts per token.
        layer_ids: ``[L]`` decoder-layer index of every MoE layer.
        num_hidden_layers: decoder layers, dense ones included.
        n_group: expert groups for group-limited routing (1 = none).
        topk_group: groups a token may use (``<= n_group``).
        skew: standard deviation of the experts' log-popularity (0 = uniform).
        num_topics: latent topics.
        topic_strength: standard deviation of a topic's log-affinity per expert.
        drift: standard deviation of each window's log topic-mix perturbation (0 = none).
        seq_len: tokens per sequence (one topic and one source rank per sequence).
        rank_topic_correlation: probability that a sequence's source rank follows its topic.
        model: the model's name, recorded in the trace.
    """

    name: str
    num_experts: int
    top_k: int
    layer_ids: tuple[int, ...]
    num_hidden_layers: int
    n_group: int = 1
    topk_group: int = 1
    skew: float = 0.5
    num_topics: int = 32
    topic_strength: float = 2.0
    drift: float = 0.5
    seq_len: int = 16
    rank_topic_correlation: float = 0.0
    model: str | None = None

    def __post_init__(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise InputError(msg)

        object.__setattr__(self, "layer_ids", tuple(int(i) for i in self.layer_ids))
        for name in ("num_experts", "top_k", "num_hidden_layers", "n_group", "topk_group",
                     "num_topics", "seq_len"):
            v = getattr(self, name)
            need(bool(isinstance(v, int | np.integer) and not isinstance(v, bool) and v >= 1),
                 f"Expected {name} to be an integer >= 1, got {v!r}.")
        for name in ("skew", "topic_strength", "drift"):
            v = getattr(self, name)
            need(isinstance(v, int | float) and math.isfinite(v) and v >= 0,
                 f"Expected {name} >= 0, got {v!r}.")
        need(0.0 <= self.rank_topic_correlation <= 1.0,
             f"Expected rank_topic_correlation in [0, 1], got {self.rank_topic_correlation!r}.")
        need(len(self.layer_ids) >= 1, "Expected at least one MoE layer in layer_ids.")
        need(len(set(self.layer_ids)) == len(self.layer_ids) and min(self.layer_ids) >= 0,
             f"Expected distinct layer_ids >= 0, got {self.layer_ids}.")
        need(max(self.layer_ids) < self.num_hidden_layers,
             f"Expected num_hidden_layers > {max(self.layer_ids)} (the last MoE layer id), "
             f"got {self.num_hidden_layers}.")
        need(self.num_experts % self.n_group == 0,
             f"Expected num_experts ({self.num_experts}) divisible by n_group, "
             f"got n_group={self.n_group}.")
        need(self.topk_group <= self.n_group,
             f"Expected topk_group <= n_group ({self.n_group}), got {self.topk_group}.")
        per_group = self.num_experts // self.n_group
        need(self.top_k <= self.topk_group * per_group,
             f"Expected top_k <= experts in the usable groups ({self.topk_group * per_group}), "
             f"got {self.top_k}.")
        need(self.n_group == 1 or per_group >= 2,
             f"Expected at least 2 experts per group, got {per_group}.")

    @property
    def num_layers(self) -> int:
        """L, MoE layers."""
        return len(self.layer_ids)

    def replace(self, **changes: object) -> SynthConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


def _preset(name: str, E: int, k: int, first: int, layers: int, nhl: int, model: str,
            **kw: object) -> SynthConfig:
    return SynthConfig(name=name, num_experts=E, top_k=k,
                       layer_ids=tuple(range(first, first + layers)), num_hidden_layers=nhl,
                       model=model, **kw)  # type: ignore[arg-type]


PRESETS: dict[str, SynthConfig] = {
    "deepseek-v3": _preset("deepseek-v3", 256, 8, 3, 58, 61, "DeepSeek-V3",
                           n_group=8, topk_group=4),
    "kimi-k2": _preset("kimi-k2", 384, 8, 1, 60, 61, "Kimi-K2"),
    "qwen3-235b": _preset("qwen3-235b", 128, 8, 0, 94, 94, "Qwen3-235B-A22B"),
    "qwen3-30b": _preset("qwen3-30b", 128, 8, 0, 48, 48, "Qwen3-30B-A3B"),
    "mixtral": _preset("mixtral", 8, 2, 0, 32, 32, "Mixtral-8x7B",
                       skew=0.3, topic_strength=1.5, num_topics=16),
    "olmoe": _preset("olmoe", 64, 8, 0, 16, 16, "OLMoE-1B-7B"),
}
"""Synthetic model presets by name."""


def _categorical(rng: np.random.Generator, probs: np.ndarray) -> np.ndarray:
    """One draw per row of ``probs [n, K]`` (rows sum to 1)."""
    cum = np.cumsum(probs, axis=1)
    u = rng.random((probs.shape[0], 1)) * cum[:, -1:]
    return np.minimum((u >= cum).sum(axis=1), probs.shape[1] - 1)


def _route(scores: np.ndarray, k: int, n_group: int, topk_group: int) -> np.ndarray:
    """Top-k expert ids ``[n, k]`` of ``scores [n, E]``, best first, group-limited if asked.

    Group-limited (DeepSeek-V3): a group's score is the sum of its two best expert scores; a
    token keeps its ``topk_group`` best groups and picks its top-k inside them.
    """
    n, E = scores.shape
    if n_group > 1 and topk_group < n_group:
        g = scores.reshape(n, n_group, E // n_group)
        top2 = -np.partition(-g, 1, axis=2)[:, :, :2]
        group_score = top2.sum(axis=2)                                  # [n, G]
        keep = np.argpartition(-group_score, topk_group - 1, axis=1)[:, :topk_group]
        mask = np.zeros((n, n_group), dtype=bool)
        np.put_along_axis(mask, keep, True, axis=1)
        scores = np.where(np.repeat(mask, E // n_group, axis=1), scores, -np.inf)
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
    return np.take_along_axis(top, order, axis=1)


def _layer_map(n_from: int, n_to: int) -> np.ndarray:
    """Index into ``n_from`` layers for each of ``n_to`` layers, by relative position."""
    if n_to == 1:
        return np.zeros(1, dtype=np.int64)
    return np.rint(np.linspace(0, n_from - 1, n_to)).astype(np.int64)


def synthesize(
    preset: str | SynthConfig,
    *,
    num_tokens: int = 4096,
    num_windows: int = 1,
    num_source_ranks: int | None = None,
    seed: int = 0,
    like: Trace | None = None,
    num_layers: int | None = None,
    skew: float | None = None,
    drift: float | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Trace:
    """A synthetic token-level :class:`Trace`.

    Args:
        preset: a name in :data:`PRESETS` or a :class:`SynthConfig`.
        num_tokens: T, tokens in all (split evenly over the windows).
        num_windows: W, windows, each with its own topic mix.
        num_source_ranks: R, EP ranks the tokens come from (None: not recorded).
        seed: random seed; same inputs and seed give the same trace.
        like: a trace (any kind) whose per-layer expert popularity to match (same number of
            experts; layers matched by relative position when the counts differ); ``skew`` is
            then not used.
        num_layers: keep only the first ``num_layers`` MoE layers.
        skew, drift: override the preset's.
        progress: called as ``progress(done, total)`` after every layer.

    Returns: ``topk_ids [T, L, k]`` with ``window [T]``, ``source_rank [T]`` (when asked),
    the preset's ``layer_ids`` and ``num_hidden_layers``.
    """
    # 1. the configuration, validated in one place
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise InputError(
                f"Unknown synthetic preset {preset!r} (known: {', '.join(sorted(PRESETS))})."
            )
        cfg = PRESETS[preset]
    else:
        cfg = preset
    changes: dict[str, object] = {}
    if skew is not None:
        changes["skew"] = float(skew)
    if drift is not None:
        changes["drift"] = float(drift)
    if num_layers is not None:
        if not 1 <= num_layers <= cfg.num_layers:
            raise InputError(f"Expected num_layers in [1, {cfg.num_layers}], got {num_layers}.")
        changes["layer_ids"] = cfg.layer_ids[:num_layers]
    if changes:
        cfg = cfg.replace(**changes)
    if num_tokens < 1:
        raise InputError(f"Expected num_tokens >= 1, got {num_tokens}.")
    if not 1 <= num_windows <= num_tokens:
        raise InputError(
            f"Expected num_windows in [1, num_tokens={num_tokens}], got {num_windows}."
        )
    if num_source_ranks is not None and num_source_ranks < 1:
        raise InputError(f"Expected num_source_ranks >= 1, got {num_source_ranks}.")
    if like is not None and like.num_experts != cfg.num_experts:
        raise InputError(
            f"--like trace has {like.num_experts} experts but preset {cfg.name} has "
            f"{cfg.num_experts}; they must match."
        )

    rng = np.random.default_rng(seed)
    T, L, E, k, K, W = num_tokens, cfg.num_layers, cfg.num_experts, cfg.top_k, cfg.num_topics, \
        num_windows

    # 2. popularity, topic affinities, topic mix per window
    base = cfg.skew * rng.standard_normal((L, E))
    affinity = cfg.topic_strength * rng.standard_normal((L, K, E))
    mix0 = rng.dirichlet(np.ones(K))
    mix_logits = np.log(mix0)[None, :] + cfg.drift * rng.standard_normal((W, K))
    mix = np.exp(mix_logits - mix_logits.max(axis=1, keepdims=True))
    mix /= mix.sum(axis=1, keepdims=True)

    # 3. tokens -> windows -> sequences -> topic and source rank
    window = (np.arange(T, dtype=np.int64) * W) // T                  # [T], W near-equal runs
    start_of_window = np.searchsorted(window, np.arange(W))
    local = np.arange(T) - start_of_window[window]
    new_seq = (local % cfg.seq_len) == 0
    seq = np.cumsum(new_seq) - 1                                       # [T]
    seq_window = window[new_seq]                                       # [S]
    seq_topic = _categorical(rng, mix[seq_window])                     # [S]
    topic = seq_topic[seq]
    source_rank = None
    if num_source_ranks is not None:
        R = num_source_ranks
        uniform = (np.arange(seq_topic.size) + rng.integers(R)) % R     # round robin
        pref = rng.dirichlet(np.full(R, 0.3), size=K)                  # [K, R]
        by_topic = _categorical(rng, pref[seq_topic])
        follow = rng.random(seq_topic.size) < cfg.rank_topic_correlation
        source_rank = np.where(follow, by_topic, uniform)[seq]

    # 4. match popularity to a real trace: a fixed point on a sample of the tokens (their
    #    topics, fresh noise): b += log(target / routed share) until the shares agree
    if like is not None:
        target = like.counts()[_layer_map(like.num_layers, L)]
        target = target / np.maximum(target.sum(axis=1, keepdims=True), 1e-300)
        target = np.maximum(target, 1e-4 / E)
        target /= target.sum(axis=1, keepdims=True)
        cal = np.linspace(0, T - 1, min(T, _CALIBRATION_TOKENS)).astype(np.int64)
        cal_gumbel = rng.gumbel(size=(cal.size, E))
        base = np.log(target)
        floor = 0.25 / (cal.size * k)
        for layer in range(L):
            for _ in range(_CALIBRATION_STEPS):
                ids = _route(base[layer][None, :] + affinity[layer][topic[cal]] + cal_gumbel, k,
                             cfg.n_group, cfg.topk_group)
                got = np.bincount(ids.reshape(-1), minlength=E) / ids.size
                base[layer] += np.log(target[layer]) - np.log(np.maximum(got, floor))

    # 5. route every layer, a chunk of tokens at a time
    out = np.empty((T, L, k), dtype=np.int16 if E < 2**15 else np.int32)
    for layer in range(L):
        for s in range(0, T, _CHUNK):
            t = slice(s, min(T, s + _CHUNK))
            scores = base[layer][None, :] + affinity[layer][topic[t]]
            scores += rng.gumbel(size=scores.shape)
            out[t, layer] = _route(scores, k, cfg.n_group, cfg.topk_group)
        if progress is not None:
            progress(layer + 1, L)
    return Trace(
        num_experts=E,
        topk_ids=out,
        layer_ids=cfg.layer_ids,
        source_rank=source_rank,
        window=window,
        window_names=[f"w{i}" for i in range(W)],
        model=f"synthetic {cfg.model or cfg.name}",
        num_hidden_layers=cfg.num_hidden_layers,
    )


BUNDLED_RECIPES: dict[str, dict[str, Any]] = {
    "deepseek-v3": dict(preset="deepseek-v3", num_tokens=4096, num_windows=2,
                        num_source_ranks=32, seed=0),
    "mixtral": dict(preset="mixtral", num_tokens=2048, num_windows=2, num_source_ranks=8,
                    seed=0),
    "qwen3-235b": dict(preset="qwen3-235b", num_tokens=1024, num_windows=2,
                       num_source_ranks=16, seed=0),
    "deepseek-v3-workloads": dict(preset="deepseek-v3", num_tokens=49152, num_windows=6,
                                  num_source_ranks=32, seed=1, aggregate=True),
}
"""How each shipped trace (``placement/routing_traces/data/NAME.npz``) is made:
``synthesize(**recipe)``, kept as per-window expert counts when the recipe says ``aggregate``
(what an engine's recorder gives: six drifting "workloads" of 8,192 tokens each);
``placement trace make-bundled`` rewrites them all."""


def make_bundled(out_dir: Path | None = None) -> list[Path]:
    """Write every :data:`BUNDLED_RECIPES` trace to ``out_dir`` (default: the package data
    directory) and return the paths. Deterministic: the same recipe gives the same arrays."""
    from placement.routing_traces.native import write_native

    out_dir = Path(__file__).resolve().parent / "data" if out_dir is None else Path(out_dir)
    paths = []
    for name, recipe in sorted(BUNDLED_RECIPES.items()):
        path = out_dir / f"{name}.npz"
        args = dict(recipe)
        aggregate = bool(args.pop("aggregate", False))
        trace = synthesize(**args)
        if aggregate:
            trace = Trace(num_experts=trace.num_experts, counts=trace.window_counts(),
                          layer_ids=trace.layer_ids, window_names=trace.window_names,
                          model=trace.model, num_hidden_layers=trace.num_hidden_layers,
                          top_k=trace.top_k)
        write_native(trace, path)
        paths.append(path)
    return paths
