"""inspect_trace on every shipped trace and every real trace of the real-data folder (skipped
where it is absent), its figures recomputed from the raw files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from shared_data import shared_path

from placement.errors import InputError
from placement.routing_traces import (
    Trace,
    format_trace_stats,
    inspect_trace,
    load_trace,
    synthesize,
)
from placement.routing_traces.readers import bundled_trace_path, bundled_traces
from placement.routing_traces.stats import MAX_PAIRWISE_WINDOWS, TraceStats

TRACES = shared_path("traces")
DEEPSEEK_WORKLOADS = [
    "decode_in1000out1000", "decode_in1800out100", "decode_in2000out100", "decode_in500out1500",
    "prefill_in1000out1000", "prefill_in1024", "prefill_in1800out100", "prefill_in2000out100",
    "prefill_in2048", "prefill_in4096", "prefill_in500out1500", "prefill_in512",
]
NPZ_FILES = [
    "flame_moe_290m_tokens.npz",
    "mixtral_8x7b_decode_tokens.npz",
    "moelens_deepseek-base_domain_counts.npz",
    "moelens_deepseek-chat_domain_counts.npz",
    "moelens_olmoe_domain_counts.npz",
    "moelens_qwen_domain_counts.npz",
    "qwen3_30b_a3b_activation_rates.npz",
]
# every trace file of the real-data folder, listed explicitly (a new one must be added here)
SHARED_TRACE_FILES = [f"deepseek_v3_sglang/{w}.json" for w in DEEPSEEK_WORKLOADS] + NPZ_FILES


# -------------------------------------------------------------------------------------------
# independent numpy, straight from the files
# -------------------------------------------------------------------------------------------
def _raw_window_counts(path: Path) -> tuple[np.ndarray, np.ndarray | None, int]:
    """``[W, L, E]`` counts, token ids ``[T, L, k]`` (or None) and E, from the raw file."""
    if path.is_dir():
        arrays = [np.asarray(json.loads(f.read_text())["logical_count"])
                  for f in sorted(path.glob("*.json"))]
        a = np.stack(arrays).astype(float)
        return a[:, a.any(axis=(0, 2))], None, a.shape[2]
    if path.suffix == ".json":
        a = np.asarray(json.loads(path.read_text())["logical_count"], dtype=float)
        return a[None, a.any(axis=1)], None, a.shape[1]
    with np.load(path, allow_pickle=False) as z:
        if "counts" in z.files:
            c = z["counts"].astype(float)
            return (c if c.ndim == 3 else c[None]), None, c.shape[-1]
        ids = z["topk_ids"].astype(np.int64)
        E = int(z["num_experts"])
        window = z["window"] if "window" in z.files else np.zeros(len(ids), int)
    wins = np.unique(window)
    out = np.zeros((len(wins), ids.shape[1], E))
    for wi, w in enumerate(wins):
        for layer in range(ids.shape[1]):
            x = ids[window == w, layer].reshape(-1)
            out[wi, layer] = np.bincount(x[x >= 0], minlength=E)
    return out, ids, E


def _shares(c: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return c / c.sum(axis=-1, keepdims=True)


def _tv_layers(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over layers (with mass on both sides) of the TV of two ``[L, E]`` count arrays."""
    tv = 0.5 * np.abs(_shares(a) - _shares(b)).sum(axis=-1)
    ok = (a.sum(axis=-1) > 0) & (b.sum(axis=-1) > 0)
    return float(tv[ok].mean()) if ok.any() else math.nan


def _top_pair_share(ids: np.ndarray, E: int, layer: int, frac: float) -> tuple[float, float]:
    """Share of co-activation mass in the top ``frac`` of pairs: observed, independent."""
    x = ids[:, layer]
    onehot = np.zeros((len(x), E + 1))
    np.put_along_axis(onehot, np.where(x >= 0, x, E), 1.0, axis=1)
    onehot = onehot[:, :E]
    c = onehot.T @ onehot
    iu = np.triu_indices(E, 1)
    n = max(1, math.ceil(frac * len(iu[0])))
    obs = np.sort(c[iu])[::-1]
    d = np.diag(c)
    ind = np.sort((d[:, None] * d[None, :])[iu])[::-1]
    if obs.sum() == 0:
        return math.nan, math.nan
    return float(obs[:n].sum() / obs.sum()), float(ind[:n].sum() / ind.sum())


SOURCES = [
    # shipped: always run
    *(pytest.param(f"bundled:{n}", id=f"bundled:{n}") for n in bundled_traces()),
    pytest.param("sglang_counts_dir", id="generated-sglang-dir"),
    # real: skipped (one line) where the real-data folder is absent
    *(pytest.param(n, id=n, marks=pytest.mark.needs_shared(f"traces/{n}"))
      for n in [*SHARED_TRACE_FILES, "deepseek_v3_sglang"]),
]


@pytest.mark.needs_shared("traces")
def test_every_shared_trace_is_listed() -> None:
    """A new file in the real-data folder must be added to the list (nothing goes untested)."""
    found = {str(p.relative_to(TRACES)) for p in TRACES.rglob("*")
             if p.is_file() and p.suffix in (".json", ".npz")}
    assert found == set(SHARED_TRACE_FILES)


@pytest.mark.parametrize("name", SOURCES)
def test_inspect_trace_figures(name: str, request: pytest.FixtureRequest) -> None:
    if name.startswith("bundled:"):
        path, source = bundled_trace_path(name), name
    elif name == "sglang_counts_dir":
        path = source = request.getfixturevalue(name)
    else:
        path = source = TRACES / name
    stats = inspect_trace(load_trace(source), source=str(name))
    wc, ids, E = _raw_window_counts(path)
    W, L, _ = wc.shape
    # 1. shape
    assert (stats.num_windows, stats.num_layers, stats.num_experts) == (W, L, E)
    assert stats.num_tokens == (None if ids is None else ids.shape[0])
    # counts: top-k from activation rates (rows sum to k), the model preset the name points to,
    # or the model guessed from the expert count (SGLang's DeepSeek-V3 dumps name no model)
    inferred = {"qwen3_30b_a3b_activation_rates.npz": (8, "activation rates"),
                "moelens_olmoe_domain_counts.npz": (8, "model preset olmoe-1b-7b"),
                "moelens_qwen_domain_counts.npz": (4, "model qwen1.5-moe-a2.7b, guessed from 60 "
                                                      "experts")}
    if name.startswith("deepseek_v3_sglang") or name == "sglang_counts_dir":
        inferred[name] = (8, "model deepseek-v3, guessed from 256 experts")
    if ids is not None or name == "bundled:deepseek-v3-workloads":  # top-k stored in the file
        want_k = (8 if ids is None else ids.shape[2], "trace")
    else:
        want_k = inferred.get(name, (None, None))
    assert (stats.top_k, stats.top_k_source) == want_k
    np.testing.assert_allclose(stats.num_assignments, wc.sum())
    np.testing.assert_allclose(stats.window_assignments, wc.sum(axis=(1, 2)))
    if name.endswith(".json") or name in ("deepseek_v3_sglang", "sglang_counts_dir"):
        assert stats.num_hidden_layers == 61 and stats.dense_layer_ids == (0, 1, 2)
        assert stats.layer_ids == tuple(range(3, 61))
    # 2. skew per layer
    c = wc.sum(axis=0)
    tot = c.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        max_over_mean = c.max(axis=1) / c.mean(axis=1)
    hot = np.sort(c, axis=1)[:, ::-1][:, :math.ceil(E / 10)].sum(axis=1) / np.where(tot, tot, 1)
    hot[tot == 0] = np.nan
    np.testing.assert_allclose(stats.layer_max_over_mean, max_over_mean, equal_nan=True)
    np.testing.assert_allclose(stats.layer_hot10_share, hot, equal_nan=True)
    # 3. drift
    if W == 1:
        assert stats.window_tv_vs_all is None and stats.drift_tv_pairwise_mean is None
    else:
        vs_all = [_tv_layers(wc[w], c) for w in range(W)]
        pairs = [_tv_layers(wc[i], wc[j]) for i in range(W) for j in range(i + 1, W)]
        np.testing.assert_allclose(stats.window_tv_vs_all, vs_all)  # type: ignore[arg-type]
        assert W <= MAX_PAIRWISE_WINDOWS
        assert stats.drift_tv_pairwise_mean is not None
        assert stats.drift_tv_pairwise_max is not None
        np.testing.assert_allclose(stats.drift_tv_pairwise_mean, np.nanmean(pairs))
        np.testing.assert_allclose(stats.drift_tv_pairwise_max, np.nanmax(pairs))
    # 4. co-activation (token-level only)
    if ids is None:
        assert stats.layer_coact_top1_share is None
    else:
        for frac, field in ((0.01, "top1"), (0.05, "top5")):
            exp = np.array([_top_pair_share(ids, E, layer, frac) for layer in range(L)])
            np.testing.assert_allclose(getattr(stats, f"layer_coact_{field}_share"),
                                       exp[:, 0], equal_nan=True)
            np.testing.assert_allclose(getattr(stats, f"layer_coact_{field}_share_independent"),
                                       exp[:, 1], equal_nan=True)
    # 5. JSON-ready and printable
    d = stats.to_dict()
    json.dumps(d, allow_nan=False)
    for key in ("num_layers", "num_experts", "top_k", "num_tokens", "num_windows"):
        assert key in d
    assert format_trace_stats(stats, per_layer=True).count("\n") > 10


@pytest.mark.needs_shared("traces/deepseek_v3_sglang")
def test_real_figures_are_what_the_readme_says() -> None:
    """DeepSeek-V3 workloads: hot experts take several times the mean load."""
    stats = inspect_trace(load_trace(TRACES / "deepseek_v3_sglang"))
    summary = TraceStats.summary(stats.layer_max_over_mean)
    assert summary is not None and summary["mean"] is not None and summary["mean"] > 4


def test_text_report_exact_lines() -> None:
    ids = np.array([[[0, 1]], [[0, 1]], [[2, 3]], [[0, 2]]])
    t = Trace(num_experts=4, topk_ids=ids, layer_ids=[2], num_hidden_layers=3,
              window=np.array([0, 0, 1, 1]), window_names=["a", "b"], model="toy")
    text = format_trace_stats(inspect_trace(t, source="toy.npz"), per_layer=True)
    lines = text.splitlines()
    assert lines[:8] == [
        "trace         toy.npz",
        "model         toy",
        "routing       token-level: 4 tokens, top-2",
        "layers        1 MoE (ids 2) of 3 decoder layers; dense: 0-1",
        "experts       4 per layer",
        "windows       2: a, b",
        "source ranks  not recorded",
        "assignments   8 (all layers)",
    ]
    # counts [3, 2, 2, 1]: max/mean 3 / 2 = 1.5; hottest 1 expert = 3/8
    assert "  max/mean expert load          1.50    1.50    1.50" in lines
    assert "  hottest 10% experts' share    0.38    0.38    0.38" in lines
    # window a: [2, 2, 0, 0]/4, b: [1, 0, 2, 1]/4 -> TV 0.5 * (1 + 2 + 2 + 1) / 4 = 0.75
    assert "  window pairs      mean 0.750  max 0.750" in lines
    # pairs (0,1) x2, (2,3), (0,2): top 1% = 1 pair of 6 -> 2/4 = 0.5
    assert any(line.startswith("  top 1% pairs  0.500") for line in lines)
    assert lines[-1].split()[0] == "2"


def test_counts_trace_and_single_window() -> None:
    t = Trace(num_experts=3, counts=np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]))
    s = inspect_trace(t)
    assert s.window_tv_vs_all is None and s.layer_coact_top1_share is None
    assert math.isnan(s.layer_max_over_mean[1])  # an empty layer has no skew
    d = s.to_dict()
    assert d["layer_max_over_mean"][1] is None and d["coactivation"] is None
    assert d["top_k"] is None and d["num_tokens"] is None and d["drift"] is None
    text = format_trace_stats(s)
    assert "routing       aggregated counts, top-k unknown (give --top-k K)" in text
    assert "co-activation  needs token-level routing" in text
    assert "drift         one window" in text


def test_model_and_top_k_guessed_as_solve_guesses_them() -> None:
    """An SGLang DeepSeek dump names no model: inspect says the guess solve makes (the only
    preset with 256 experts), and takes its top-k from it."""
    counts = np.ones((1, 2, 256))
    s = inspect_trace(Trace(num_experts=256, counts=counts))
    assert s.model is None and s.model_guess == "deepseek-v3"
    assert (s.top_k, s.top_k_source) == (8, "model deepseek-v3, guessed from 256 experts")
    lines = format_trace_stats(s).splitlines()
    assert lines[0] == "model         deepseek-v3 (guessed from 256 experts per layer)"
    assert lines[1] == ("routing       aggregated counts, top-8 (model deepseek-v3, guessed "
                        "from 256 experts)")
    assert s.to_dict()["model_guess"] == "deepseek-v3"
    # 64 experts: OLMoE or DeepSeek-MoE-16B, no guess
    s = inspect_trace(Trace(num_experts=64, counts=np.ones((1, 2, 64))))
    assert s.model_guess is None and s.top_k is None
    assert format_trace_stats(s).splitlines()[0] == "model         unknown"


def test_many_windows_skip_pairwise() -> None:
    t = synthesize("mixtral", num_tokens=MAX_PAIRWISE_WINDOWS + 1, num_windows=MAX_PAIRWISE_WINDOWS
                   + 1, num_layers=1)
    s = inspect_trace(t, coactivation=False)
    assert s.drift_tv_pairwise_mean is None
    assert s.window_tv_vs_all is not None and len(s.window_tv_vs_all) == MAX_PAIRWISE_WINDOWS + 1


def test_activation_rates_give_top_k_and_whole_assignments() -> None:
    # two windows x one layer of shares that sum to k = 2 (rounded as real data is)
    rates = np.array([[[0.7, 0.5, 0.500004, 0.3]], [[0.9, 0.6, 0.3, 0.2]]])
    t = Trace(num_experts=4, counts=rates, model="toy")
    s = inspect_trace(t)
    assert (s.top_k, s.top_k_source) == (2, "activation rates")
    lines = format_trace_stats(s).splitlines()
    assert lines[1] == "routing       aggregated activation rates (shares of tokens), top-2 " \
                       "(each window and layer sums to 2)"
    assert lines[6] == "assignments   4 (all layers)"
    # whole counts are never taken for rates; --top-k says it, and must agree with a trace
    whole = Trace(num_experts=4, counts=np.array([[1.0, 1.0, 0.0, 0.0]]))
    assert inspect_trace(whole).top_k is None
    assert inspect_trace(whole, top_k=2).top_k_source == "--top-k"
    tokens = Trace(num_experts=4, topk_ids=np.array([[[0, 1]]]))
    with pytest.raises(InputError, match="--top-k 3 contradicts the trace"):
        inspect_trace(tokens, top_k=3)


def test_skipped_coactivation_says_so() -> None:
    t = Trace(num_experts=4, topk_ids=np.array([[[0, 1]], [[2, 3]]]))
    text = format_trace_stats(inspect_trace(t, coactivation=False))
    assert "co-activation  not computed (--no-coactivation)" in text.splitlines()
