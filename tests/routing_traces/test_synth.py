"""Synthetic traces: shapes, determinism, group-limited routing, skew, co-activation, drift,
source ranks, popularity matching (``like``) and the shipped files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from placement.errors import InputError
from placement.routing_traces import (
    SYNTH_PRESETS,
    SynthConfig,
    Trace,
    bundled_trace_path,
    read_native,
    synthesize,
)
from placement.routing_traces.synth import BUNDLED_RECIPES, make_bundled


def _tv(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-row total-variation distance of two ``[L, E]`` count arrays."""
    a = a / a.sum(axis=-1, keepdims=True)
    b = b / b.sum(axis=-1, keepdims=True)
    return 0.5 * np.abs(a - b).sum(axis=-1)


def _lift(t: Trace, layer: int) -> float:
    """Observed / independent share of the top 1% expert pairs (brute-force co-activation)."""
    E = t.num_experts
    onehot = np.zeros((t.topk_ids.shape[0], E))
    np.put_along_axis(onehot, t.topk_ids[:, layer].astype(np.int64), 1.0, axis=1)
    c = onehot.T @ onehot
    iu = np.triu_indices(E, 1)
    n = max(1, int(np.ceil(0.01 * len(iu[0]))))
    obs = np.sort(c[iu])[::-1]
    d = np.diag(c)
    ind = np.sort((d[:, None] * d[None, :])[iu])[::-1]
    return float((obs[:n].sum() / obs.sum()) / (ind[:n].sum() / ind.sum()))


@pytest.mark.parametrize("name", sorted(SYNTH_PRESETS))
def test_preset_shapes(name: str) -> None:
    cfg = SYNTH_PRESETS[name]
    t = synthesize(name, num_tokens=64, num_windows=2, num_source_ranks=4, num_layers=2, seed=1)
    assert t.topk_ids.shape == (64, 2, cfg.top_k)
    np.testing.assert_array_equal(t.layer_ids, cfg.layer_ids[:2])
    assert t.num_hidden_layers == cfg.num_hidden_layers and t.num_experts == cfg.num_experts
    assert t.num_windows == 2 and t.num_source_ranks == 4
    ids = t.topk_ids
    assert ids.min() >= 0 and ids.max() < cfg.num_experts
    srt = np.sort(ids, axis=2)
    assert (np.diff(srt, axis=2) > 0).all()  # no expert twice in a token


def test_named_presets_match_the_models() -> None:
    ds = SYNTH_PRESETS["deepseek-v3"]
    assert (ds.num_layers, ds.num_experts, ds.top_k) == (58, 256, 8)
    assert (ds.n_group, ds.topk_group) == (8, 4)
    assert ds.layer_ids == tuple(range(3, 61)) and ds.num_hidden_layers == 61
    kimi = SYNTH_PRESETS["kimi-k2"]
    assert (kimi.num_layers, kimi.num_experts, kimi.layer_ids[0], kimi.num_hidden_layers) == \
        (60, 384, 1, 61)
    assert (SYNTH_PRESETS["qwen3-235b"].num_layers, SYNTH_PRESETS["qwen3-235b"].num_experts) == \
        (94, 128)
    assert (SYNTH_PRESETS["mixtral"].num_experts, SYNTH_PRESETS["mixtral"].top_k) == (8, 2)
    assert (SYNTH_PRESETS["olmoe"].num_layers, SYNTH_PRESETS["olmoe"].num_experts) == (16, 64)


def test_deterministic_for_a_seed() -> None:
    kw: dict[str, Any] = dict(num_tokens=300, num_windows=3, num_source_ranks=5, num_layers=3)
    a = synthesize("deepseek-v3", seed=7, **kw)
    b = synthesize("deepseek-v3", seed=7, **kw)
    c = synthesize("deepseek-v3", seed=8, **kw)
    np.testing.assert_array_equal(a.topk_ids, b.topk_ids)
    np.testing.assert_array_equal(a.source_rank, b.source_rank)
    np.testing.assert_array_equal(a.window, b.window)
    assert not np.array_equal(a.topk_ids, c.topk_ids)


def test_group_limited_routing() -> None:
    t = synthesize("deepseek-v3", num_tokens=2000, num_layers=4, seed=2)
    groups = t.topk_ids // (256 // 8)
    used = np.array([[len(set(row)) for row in layer] for layer in groups.transpose(1, 0, 2)])
    assert used.max() <= 4
    # the same model without the group limit does use more than 4 groups: the check can fail
    free = synthesize(SYNTH_PRESETS["deepseek-v3"].replace(n_group=1, topk_group=1),
                      num_tokens=2000, num_layers=4, seed=2)
    free_groups = free.topk_ids // 32
    assert max(len(set(row)) for row in free_groups[:, 0]) > 4


def test_skew_is_present_and_controllable() -> None:
    skewed = synthesize("olmoe", num_tokens=8000, seed=3).counts()
    flat = synthesize(SYNTH_PRESETS["olmoe"].replace(skew=0.0, topic_strength=0.0),
                      num_tokens=8000, seed=3).counts()
    ratio = skewed.max(axis=1) / skewed.mean(axis=1)
    flat_ratio = flat.max(axis=1) / flat.mean(axis=1)
    assert ratio.mean() > 2.0
    assert flat_ratio.max() < 1.3


def test_coactivation_from_topics() -> None:
    with_topics = synthesize("olmoe", num_tokens=4000, num_layers=2, seed=4)
    without = synthesize(SYNTH_PRESETS["olmoe"].replace(topic_strength=0.0), num_tokens=4000,
                         num_layers=2, seed=4)
    assert _lift(with_topics, 0) > 1.3
    assert _lift(without, 0) < 1.15


def test_drift_between_windows() -> None:
    kw: dict[str, Any] = dict(num_tokens=16000, num_windows=2, num_layers=4, seed=5)
    moving = synthesize("olmoe", drift=2.0, **kw).window_counts()
    still = synthesize("olmoe", drift=0.0, **kw).window_counts()
    assert _tv(moving[0], moving[1]).mean() > 2 * _tv(still[0], still[1]).mean()
    assert _tv(moving[0], moving[1]).mean() > 0.15


def test_source_ranks() -> None:
    t = synthesize("mixtral", num_tokens=1024, num_windows=2, num_source_ranks=8, seed=6)
    assert t.source_rank is not None
    ranks, counts = np.unique(t.source_rank, return_counts=True)
    np.testing.assert_array_equal(ranks, np.arange(8))
    assert counts.max() <= 2 * counts.min()  # sequences are spread round robin
    assert synthesize("mixtral", num_tokens=64).source_rank is None
    # with full rank-topic correlation, a rank's expert mix differs more from the others'
    cfg = SYNTH_PRESETS["olmoe"].replace(rank_topic_correlation=1.0)
    corr = synthesize(cfg, num_tokens=8000, num_source_ranks=4, num_layers=1, seed=6)
    free = synthesize("olmoe", num_tokens=8000, num_source_ranks=4, num_layers=1, seed=6)
    def rank_tv(t: Trace) -> float:
        rc = t.rank_counts()[:, 0]
        return float(np.mean([_tv(rc[r], rc.sum(axis=0)) for r in range(4)]))
    assert rank_tv(corr) > rank_tv(free)


def test_like_matches_popularity() -> None:
    rng = np.random.default_rng(0)
    # a target with 5 layers of Zipf-like popularity (feasible: no share above 1/k); the
    # preset keeps 3 layers
    target = np.stack([rng.permutation(1.0 / np.arange(1, 65) ** 0.6) * 1e6 for _ in range(5)])
    like = Trace(num_experts=64, counts=target)
    t = synthesize("olmoe", num_tokens=8000, num_layers=3, like=like, seed=1)
    matched = _tv(t.counts(), target[[0, 2, 4]])  # layers matched by relative position
    unmatched = _tv(synthesize("olmoe", num_tokens=8000, num_layers=3, seed=1).counts(),
                    target[[0, 2, 4]])
    assert matched.max() < 0.05
    assert unmatched.min() > 0.2
    with pytest.raises(InputError, match="experts"):
        synthesize("deepseek-v3", num_tokens=10, like=like)


BAD_CONFIGS: list[tuple[dict[str, Any], str]] = [
    (dict(num_experts=0), "num_experts"),
    (dict(top_k=0), "top_k"),
    (dict(n_group=3), "divisible by n_group"),
    (dict(topk_group=9), "topk_group <= n_group"),
    (dict(top_k=200), "top_k <="),
    (dict(skew=-1.0), "skew >= 0"),
    (dict(drift=float("nan")), "drift >= 0"),
    (dict(rank_topic_correlation=1.5), "rank_topic_correlation"),
    (dict(layer_ids=()), "at least one MoE layer"),
    (dict(layer_ids=(3, 3)), "distinct layer_ids"),
    (dict(num_hidden_layers=10), "num_hidden_layers > 60"),
    (dict(seq_len=True), "seq_len"),
]


@pytest.mark.parametrize(("change", "fragment"), BAD_CONFIGS, ids=[b[1] for b in BAD_CONFIGS])
def test_config_validation(change: dict[str, Any], fragment: str) -> None:
    with pytest.raises(InputError) as err:
        SYNTH_PRESETS["deepseek-v3"].replace(**change)
    assert fragment in str(err.value)


@pytest.mark.parametrize(("kwargs", "fragment"), [
    (dict(preset="gpt-5"), "Unknown synthetic preset"),
    (dict(num_tokens=0), "num_tokens >= 1"),
    (dict(num_windows=0), "num_windows in [1"),
    (dict(num_source_ranks=0), "num_source_ranks >= 1"),
    (dict(num_layers=59), "num_layers in [1, 58]"),
])
def test_synthesize_argument_errors(kwargs: dict[str, Any], fragment: str) -> None:
    args: dict[str, Any] = dict(preset="deepseek-v3", num_tokens=16)
    args.update(kwargs)
    with pytest.raises(InputError) as err:
        synthesize(**args)
    assert fragment in str(err.value)


def test_config_is_frozen() -> None:
    cfg = SynthConfig(name="x", num_experts=4, top_k=2, layer_ids=[0, 1],  # type: ignore[arg-type]
                      num_hidden_layers=2)
    assert cfg.layer_ids == (0, 1)
    with pytest.raises(AttributeError):
        cfg.top_k = 3  # type: ignore[misc]


def test_deepseek_v3_full_size() -> None:
    t = synthesize("deepseek-v3", num_tokens=4096, num_windows=2, num_source_ranks=32)
    assert t.topk_ids.shape == (4096, 58, 8)
    assert t.num_windows == 2 and t.num_source_ranks == 32


@pytest.mark.slow
def test_shipped_traces_are_regenerated_exactly(tmp_path: Path) -> None:
    paths = make_bundled(tmp_path)
    assert sorted(p.stem for p in paths) == sorted(BUNDLED_RECIPES)
    for p in paths:
        fresh, shipped = read_native(p), read_native(bundled_trace_path(p.stem))
        assert fresh.is_token_level == shipped.is_token_level
        if not fresh.is_token_level:
            np.testing.assert_array_equal(fresh.window_counts(), shipped.window_counts())
            assert (fresh.model, fresh.window_names, fresh.top_k) == (
                shipped.model, shipped.window_names, shipped.top_k)
            continue
        np.testing.assert_array_equal(fresh.topk_ids, shipped.topk_ids)
        np.testing.assert_array_equal(fresh.source_rank, shipped.source_rank)
        np.testing.assert_array_equal(fresh.window, shipped.window)
        assert (fresh.model, fresh.window_names) == (shipped.model, shipped.window_names)
