"""Readers: every format built in tmp_path in the engine's exact layout, and broken files."""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from placement.errors import TraceFormatError
from placement.routing_traces import (
    Trace,
    bundled_trace_path,
    bundled_traces,
    load_trace,
    write_native,
)

# -------------------------------------------------------------------------------------------
# builders in the engines' layouts
# -------------------------------------------------------------------------------------------
LAYERS, E, P, K_REAL, K_BUF = 4, 6, 8, 3, 8  # layer 0 is dense


def _p2l() -> np.ndarray:
    """``[layers, P]`` physical -> logical: E experts plus two redundant copies per layer."""
    rows = []
    for layer in range(LAYERS):
        perm = np.roll(np.arange(E), layer)
        rows.append(np.concatenate([perm, [perm[1], perm[4]]]))
    return np.asarray(rows)


def _physical_ids(rng: np.random.Generator, tokens: int) -> np.ndarray:
    """``[layers, tokens, 8]`` physical ids as SGLang's per_token buffer holds them."""
    ids = np.full((LAYERS, tokens, K_BUF), -1, dtype=np.int32)
    for layer in range(1, LAYERS):
        for t in range(tokens):
            ids[layer, t, :K_REAL] = rng.choice(P, size=K_REAL, replace=False)
    return ids


def _physical_count(ids: np.ndarray) -> np.ndarray:
    out = np.zeros((LAYERS, P), dtype=np.int32)
    for layer in range(LAYERS):
        x = ids[layer].reshape(-1)
        out[layer] = np.bincount(x[x >= 0], minlength=P)
    return out


def _detail_dump(path: Path, rank: int, passes: list[tuple[int, np.ndarray]],
                 per_token: bool) -> None:
    """One rank's ``per_pass`` / ``per_token`` dump, as ``_DetailAccumulator.dump`` writes it."""
    records: list[dict[str, Any]] = []
    for fpid, ids in passes:
        rec: dict[str, Any] = dict(forward_pass_id=fpid, rank=rank, gatherer_key="primary",
                                   global_physical_count=torch.tensor(_physical_count(ids)))
        if per_token:
            n = ids.shape[1]
            rec.update(input_ids=list(range(n)), positions=list(range(n)), extend_seq_lens=[n],
                       forward_mode=1, topk_ids_of_layer=torch.tensor(ids), misc_objects=[])
        records.append(rec)
    torch.save(dict(records=records, last_physical_to_logical_map=torch.tensor(_p2l())), path)


def _run_dir(tmp_path: Path, per_token: bool) -> tuple[Path, list[tuple[int, int, np.ndarray]]]:
    """Two ranks, three forward passes each (pass ids 7, 8, 9)."""
    rng = np.random.default_rng(5)
    d = tmp_path / ("per_token" if per_token else "per_pass")
    d.mkdir()
    log: list[tuple[int, int, np.ndarray]] = []
    for rank in (1, 0):
        passes = [(fpid, _physical_ids(rng, 3 + fpid % 3 + rank)) for fpid in (7, 8, 9)]
        _detail_dump(d / f"expert_distribution_recorder_1700000000.0_{rank}.pt", rank, passes,
                     per_token)
        log += [(fpid, rank, ids) for fpid, ids in passes]
    return d, log


def _write_json(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data))
    return path


def _logical_count(rng: np.random.Generator, dense: tuple[int, ...] = (0, 1)) -> np.ndarray:
    a = rng.integers(1, 100, size=(6, 8)).astype(float)
    a[list(dense)] = 0
    return a


def _trtllm_dir(path: Path, ranks: int = 2, iters: tuple[int, ...] = (10, 11),
                layers: tuple[int, ...] = (3, 4), E: int = 5, k: int = 2,
                seed: int = 0) -> np.ndarray:
    """``meta_info.json`` + ``rank{r}.safetensors`` as ``ExpertStatistic`` writes them."""
    rng = np.random.default_rng(seed)
    path.mkdir(exist_ok=True)
    (path / "meta_info.json").write_text(json.dumps({"num_experts": E,
                                                     "num_experts_per_token": k}))
    expected = np.zeros((len(iters), ranks, len(layers), E))
    for r in range(ranks):
        tensors = {}
        for wi, it in enumerate(iters):
            for li, layer in enumerate(layers):
                counts = torch.bincount(torch.from_numpy(rng.integers(0, E, size=20 * k)),
                                        minlength=E)
                tensors[f"{it}_{layer}"] = counts
                expected[wi, r, li] = counts.numpy()
        save_file(tensors, str(path / f"rank{r}.safetensors"))
    return expected


class _Evil:
    """Unpickling this runs ``touch MARKER``: a reader must refuse it."""

    marker = ""

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


# -------------------------------------------------------------------------------------------
# SGLang JSON and stat dumps
# -------------------------------------------------------------------------------------------
def test_sglang_json_keeps_the_full_layer_axis(tmp_path: Path) -> None:
    a = _logical_count(np.random.default_rng(0))
    t = load_trace(_write_json(tmp_path / "w.json", {"logical_count": a.tolist()}))
    assert t.kind == "counts" and t.num_experts == 8
    np.testing.assert_array_equal(t.layer_ids, [2, 3, 4, 5])
    assert t.num_hidden_layers == 6 and t.dense_layer_ids == (0, 1)
    np.testing.assert_array_equal(t.counts(), a[2:])
    assert t.window_names == ("w",)


def test_sglang_json_with_steps_is_windows(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    a = np.stack([_logical_count(rng) for _ in range(3)])
    t = load_trace(_write_json(tmp_path / "s.json", {"logical_count": a.tolist()}))
    assert t.num_windows == 3
    np.testing.assert_array_equal(t.window_counts(), a[:, 2:])


def test_format_is_told_by_content_not_name(tmp_path: Path) -> None:
    a = _logical_count(np.random.default_rng(2))
    t = load_trace(_write_json(tmp_path / "counts.npz", {"logical_count": a.tolist()}))
    np.testing.assert_array_equal(t.counts(), a[2:])
    write_native(t, tmp_path / "native.json")
    np.testing.assert_array_equal(load_trace(tmp_path / "native.json").counts(), a[2:])


def test_sglang_stat_dump_steps_become_windows(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    lc = np.stack([_logical_count(rng) for _ in range(4)]).astype(np.int32)
    lc[3] = 0  # a step the circular buffer never filled
    torch.save(dict(rank=0, logical_count=torch.tensor(lc),
                    average_utilization_rate_over_window=None), tmp_path / "stat.pt")
    t = load_trace(tmp_path / "stat.pt")
    assert t.window_names == ("0", "1", "2")
    np.testing.assert_array_equal(t.window_counts(), lc[:3, 2:])
    assert t.dense_layer_ids == (0, 1) and t.num_hidden_layers == 6


def test_directory_of_json_is_windows_named_by_stem(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    arrays = {name: _logical_count(rng) for name in ("b_decode", "a_prefill", "c_mixed")}
    for name, a in arrays.items():
        _write_json(tmp_path / f"{name}.json", {"logical_count": a.tolist()})
    (tmp_path / "README.md").write_text("not a trace")
    t = load_trace(tmp_path)
    assert t.window_names == ("a_prefill", "b_decode", "c_mixed")
    np.testing.assert_array_equal(t.window_counts()[1], arrays["b_decode"][2:])
    # a list keeps its own order
    lst = load_trace([tmp_path / "c_mixed.json", tmp_path / "a_prefill.json"])
    assert lst.window_names == ("c_mixed", "a_prefill")
    np.testing.assert_array_equal(lst.window_counts()[0], arrays["c_mixed"][2:])


def test_list_of_token_traces_concatenates_tokens(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    parts = []
    for i, name in enumerate(("one", "two")):
        t = Trace(num_experts=5, topk_ids=rng.integers(0, 5, size=(10 + i, 2, 2)),
                  source_rank=rng.integers(0, 3, size=10 + i), window=np.repeat([0, 1], [4, 6 + i]))
        write_native(t, tmp_path / f"{name}.npz")
        parts.append(t)
    t = load_trace([tmp_path / "one.npz", tmp_path / "two.npz"])
    assert t.num_tokens == 21 and t.num_windows == 4
    assert t.window_names == ("one:0", "one:1", "two:0", "two:1")
    np.testing.assert_array_equal(t.topk_ids, np.concatenate([p.topk_ids for p in parts]))
    np.testing.assert_array_equal(t.window_counts()[2:], parts[1].window_counts())


# -------------------------------------------------------------------------------------------
# SGLang per_token / per_pass dumps
# -------------------------------------------------------------------------------------------
def test_sglang_per_token_maps_physical_to_logical(tmp_path: Path) -> None:
    d, log = _run_dir(tmp_path, per_token=True)
    t = load_trace(d)
    p2l = _p2l()
    # expected tokens, by (forward pass, rank), physical ids mapped one by one
    rows, ranks, windows = [], [], []
    for fpid, rank, ids in sorted(log, key=lambda x: (x[0], x[1])):
        for tok in range(ids.shape[1]):
            rows.append([[p2l[layer, p] if p >= 0 else -1 for p in ids[layer, tok, :K_REAL]]
                         for layer in range(1, LAYERS)])
            ranks.append(rank)
            windows.append(fpid)
    assert t.is_token_level and t.top_k == K_REAL  # the recorder's 8 columns trimmed to 3
    np.testing.assert_array_equal(t.topk_ids, np.asarray(rows))
    np.testing.assert_array_equal(t.source_rank, ranks)
    np.testing.assert_array_equal(t.window, windows)
    assert t.window_names == ("7", "8", "9")
    np.testing.assert_array_equal(t.layer_ids, [1, 2, 3])
    assert (t.num_hidden_layers, t.dense_layer_ids, t.num_experts) == (LAYERS, (0,), E)


def test_sglang_per_pass_sums_physical_counts_per_logical(tmp_path: Path) -> None:
    d, log = _run_dir(tmp_path, per_token=False)
    t = load_trace(d)
    p2l = _p2l()
    expected = np.zeros((3, 2, LAYERS, E))
    for fpid, rank, ids in log:
        gpc = _physical_count(ids)
        for layer in range(LAYERS):
            for p in range(P):
                expected[fpid - 7, rank, layer, p2l[layer, p]] += gpc[layer, p]
    assert t.kind == "counts" and t.num_source_ranks == 2
    np.testing.assert_array_equal(t.window_rank_counts(), expected[:, :, 1:])
    assert t.window_names == ("7", "8", "9") and t.dense_layer_ids == (0,)


def test_single_rank_dump_file_reads_alone(tmp_path: Path) -> None:
    d, log = _run_dir(tmp_path, per_token=True)
    t = load_trace(sorted(d.iterdir())[0])  # ..._0.pt
    assert set(np.unique(t.source_rank).tolist()) == {0}  # type: ignore[arg-type]
    assert t.num_tokens == sum(ids.shape[1] for _, r, ids in log if r == 0)


# -------------------------------------------------------------------------------------------
# TensorRT-LLM
# -------------------------------------------------------------------------------------------
def test_trtllm_statistics_directory(tmp_path: Path) -> None:
    expected = _trtllm_dir(tmp_path / "stats")
    t = load_trace(tmp_path / "stats")
    np.testing.assert_array_equal(t.window_rank_counts(), expected)
    np.testing.assert_array_equal(t.layer_ids, [3, 4])
    assert (t.top_k, t.num_experts, t.window_names, t.num_source_ranks) == (2, 5, ("10", "11"), 2)


# -------------------------------------------------------------------------------------------
# pickles that want to run code
# -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("container", ["torch-zip", "raw-pickle"])
def test_pickle_with_code_is_refused_and_not_run(tmp_path: Path, container: str) -> None:
    marker = tmp_path / "PWNED"
    _Evil.marker = str(marker)
    path = tmp_path / "evil.pt"
    if container == "torch-zip":
        torch.save({"logical_count": _Evil()}, path)
    else:
        path.write_bytes(pickle.dumps({"logical_count": _Evil()}))
    with pytest.raises(TraceFormatError) as err:
        load_trace(path)
    assert "refusing to load" in str(err.value) and str(path) in str(err.value)
    assert not marker.exists()


# -------------------------------------------------------------------------------------------
# bundled traces
# -------------------------------------------------------------------------------------------
def test_bundled_traces_load() -> None:
    assert {"deepseek-v3", "mixtral", "qwen3-235b"} <= set(bundled_traces())
    t = load_trace("bundled:deepseek-v3")
    assert t.is_token_level and t.num_experts == 256 and t.top_k == 8
    np.testing.assert_array_equal(t.layer_ids, np.arange(3, 61))
    assert t.num_hidden_layers == 61 and t.num_windows >= 2 and t.num_source_ranks == 32
    assert bundled_trace_path("mixtral").stat().st_size < 1_000_000
    total = sum(bundled_trace_path(n).stat().st_size for n in bundled_traces())
    assert total < 5_000_000


# -------------------------------------------------------------------------------------------
# broken inputs
# -------------------------------------------------------------------------------------------
def _lc(a: Any) -> dict[str, Any]:
    return {"logical_count": a}


def _json(name: str, data: Any) -> Callable[[Path], Path]:
    return lambda d: _write_json(d / name, data)


def _raw(name: str, data: bytes) -> Callable[[Path], Path]:
    def make(d: Path) -> Path:
        (d / name).write_bytes(data)
        return d / name
    return make


def _pt(name: str, obj: Any) -> Callable[[Path], Path]:
    def make(d: Path) -> Path:
        torch.save(obj, d / name)
        return d / name
    return make


def _truncated_npz(d: Path) -> Path:
    write_native(Trace(num_experts=4, topk_ids=np.zeros((500, 3, 2), int)), d / "t.npz")
    data = (d / "t.npz").read_bytes()
    (d / "t.npz").write_bytes(data[: len(data) // 2])
    return d / "t.npz"


def _truncated_pt(d: Path) -> Path:
    torch.save({"logical_count": torch.ones(3, 4, dtype=torch.int32)}, d / "t.pt")
    data = (d / "t.pt").read_bytes()
    (d / "t.pt").write_bytes(data[: len(data) // 2])
    return d / "t.pt"


def _npy(d: Path) -> Path:
    np.save(d / "a.npy", np.zeros(3))
    return d / "a.npy"


def _evil_pt(d: Path) -> Path:
    _Evil.marker = str(d / "PWNED")
    torch.save({"logical_count": _Evil()}, d / "evil.pt")
    return d / "evil.pt"


def _record(**over: Any) -> dict[str, Any]:
    rec: dict[str, Any] = dict(forward_pass_id=0, rank=0,
                               global_physical_count=torch.ones(LAYERS, P, dtype=torch.int32))
    rec.update(over)
    return {k: v for k, v in rec.items() if v is not None}


def _dump(*records: dict[str, Any], p2l: Any = None) -> dict[str, Any]:
    return dict(records=list(records),
                last_physical_to_logical_map=torch.tensor(_p2l()) if p2l is None else p2l)


def _mixed_models(d: Path) -> Path:
    _write_json(d / "a.json", _lc(np.ones((3, 8)).tolist()))
    _write_json(d / "b.json", _lc(np.ones((3, 16)).tolist()))
    return d


def _mixed_layers(d: Path) -> Path:
    _write_json(d / "a.json", _lc(np.ones((3, 8)).tolist()))
    _write_json(d / "b.json", _lc(np.ones((4, 8)).tolist()))
    return d


def _mixed_kinds(d: Path) -> Path:
    _detail_dump(d / "r0.pt", 0, [(0, _physical_ids(np.random.default_rng(0), 2))], True)
    _write_json(d / "z.json", _lc(np.ones((3, 8)).tolist()))
    return d


def _mixed_modes(d: Path) -> Path:
    rng = np.random.default_rng(0)
    _detail_dump(d / "r0.pt", 0, [(0, _physical_ids(rng, 2))], True)
    _detail_dump(d / "r1.pt", 1, [(0, _physical_ids(rng, 2))], False)
    return d


def _trt(mutate: Callable[[Path], object]) -> Callable[[Path], Path]:
    def make(d: Path) -> Path:
        _trtllm_dir(d / "stats")
        mutate(d / "stats")
        return d / "stats"
    return make


def _trt_missing_rank(p: Path) -> None:
    (p / "rank1.safetensors").rename(p / "rank2.safetensors")


def _trt_tensors(tensors: dict[str, torch.Tensor]) -> Callable[[Path], object]:
    return lambda p: save_file(tensors, str(p / "rank1.safetensors"))


def _trt_meta(meta: Any) -> Callable[[Path], object]:
    return lambda p: (p / "meta_info.json").write_text(json.dumps(meta))


def _trt_no_ranks(p: Path) -> None:
    for f in p.glob("rank*.safetensors"):
        f.unlink()


def _subdir(name: str) -> Callable[[Path], Path]:
    def make(d: Path) -> Path:
        (d / name).mkdir()
        return d / name
    return make


def _list_with_dir(d: Path) -> list[Path]:
    _write_json(d / "a.json", _lc(np.ones((3, 8)).tolist()))
    (d / "sub").mkdir()
    return [d / "a.json", d / "sub"]


# (case id, builder of the source, fragment of the message, name that must appear in it)
BROKEN: list[tuple[str, Callable[[Path], Any], str, str | None]] = [
    ("missing", lambda d: d / "nope.json", "no such file", "nope.json"),
    ("empty-file", _raw("e.json", b""), "empty file", "e.json"),
    ("garbage", _raw("g.bin", b"\x01\x02garbage"), "unrecognised trace format", "g.bin"),
    ("truncated-npz", _truncated_npz, "truncated or corrupt", "t.npz"),
    ("truncated-pt", _truncated_pt, "truncated or corrupt", "t.pt"),
    ("bare-npy", _npy, "bare .npy", "a.npy"),
    ("bad-json", _raw("b.json", b"{\"logical_count\": [[1, 2],"), "not valid JSON", "b.json"),
    ("json-list", _json("l.json", [[1, 2]]), "Expected a JSON object", "l.json"),
    ("json-no-logical-count", _json("n.json", {"counts": [[1]]}), "without logical_count",
     "n.json"),
    ("ragged-rows", _json("r.json", _lc([[1, 2, 3], [1, 2]])), "ragged rows", "r.json"),
    ("nan", _raw("nan.json", b'{"logical_count": [[1, NaN], [0, 0]]}'), "NaN", "nan.json"),
    ("negative", _json("neg.json", _lc([[1, -2], [0, 0]])), "negative", "neg.json"),
    ("strings", _json("s.json", _lc([["a", "b"]])), "non-numbers", "s.json"),
    ("all-zero", _json("z.json", _lc([[0, 0], [0, 0]])), "all zero", "z.json"),
    ("4d", _json("4d.json", _lc([[[[1]]]])), "Expected logical_count", "4d.json"),
    ("placement-file", _json("p.json", {"physical_to_logical_map": [[0, 1]]}),
     "placement file", "p.json"),
    ("trt-meta-as-file", _json("meta_info.json", {"num_experts": 4, "num_experts_per_token": 2}),
     "TensorRT-LLM meta_info.json", "meta_info.json"),
    ("pickle-with-code", _evil_pt, "refusing to load", "evil.pt"),
    ("pt-not-a-dict", _pt("l.pt", [torch.ones(2)]), "Expected an SGLang recorder dump", "l.pt"),
    ("pt-unknown-keys", _pt("u.pt", {"weights": torch.ones(2)}), "not an SGLang recorder dump",
     "u.pt"),
    ("stat-nan", _pt("sn.pt", {"logical_count": torch.full((2, 3, 4), float("nan"))}), "NaN",
     "sn.pt"),
    ("bfloat16-counts", _pt("bf.pt", {"logical_count": torch.ones(2, 3, 4, dtype=torch.bfloat16)}),
     "cannot be read as numbers", "bf.pt"),
    ("physical-id-out-of-range",
     _pt("o.pt", _dump(_record(topk_ids_of_layer=torch.full((LAYERS, 2, 8), P,
                                                            dtype=torch.int32)))),
     "outside [-1, 8)", "o.pt"),
    ("float-topk-ids",
     _pt("f.pt", _dump(_record(topk_ids_of_layer=torch.zeros(LAYERS, 2, 8)))),
     "to be an integer array", "f.pt"),
    ("record-without-rank", _pt("nr.pt", _dump(_record(rank=None))), "lacks rank", "nr.pt"),
    ("physical-count-shape",
     _pt("sh.pt", _dump(_record(global_physical_count=torch.ones(LAYERS, P + 1)))),
     "global_physical_count of shape", "sh.pt"),
    ("physical-count-negative",
     _pt("ng.pt", _dump(_record(global_physical_count=-torch.ones(LAYERS, P)))),
     "negative counts", "ng.pt"),
    ("map-negative", _pt("mn.pt", _dump(_record(), p2l=-torch.ones(LAYERS, P, dtype=torch.int64))),
     "negative logical id", "mn.pt"),
    ("no-records", _pt("e.pt", _dump()), "no records", "e.pt"),
    ("safetensors-alone",
     lambda d: (save_file({"0_3": torch.ones(4)}, str(d / "rank0.safetensors")),
                d / "rank0.safetensors")[1],
     "pass the directory", "rank0.safetensors"),
    ("mixed-models-dir", _mixed_models, "has 16 experts but a.json has 8", "b.json"),
    ("mixed-layers-dir", _mixed_layers, "MoE layers", "b.json"),
    ("mixed-kinds-dir", _mixed_kinds, "is not one rank's SGLang per_pass", "z.json"),
    ("mixed-modes-dir", _mixed_modes, "is a per_pass dump but r0.pt is a per_token", "r1.pt"),
    ("empty-dir", _subdir("empty"), "empty directory", "empty"),
    ("list-with-dir", _list_with_dir, "is a directory", "sub"),
    ("trt-missing-rank", _trt(_trt_missing_rank), "missing rank1.safetensors", "stats"),
    ("trt-bad-key", _trt(_trt_tensors({"layer3": torch.ones(5)})), "unexpected key",
     "rank1.safetensors"),
    ("trt-wrong-shape", _trt(_trt_tensors({"10_3": torch.ones(4)})), "Expected 10_3 of shape",
     "rank1.safetensors"),
    ("trt-negative", _trt(_trt_tensors({"10_3": -torch.ones(5)})), "negative counts",
     "rank1.safetensors"),
    ("trt-meta-field", _trt(_trt_meta({"num_experts": 5})), "num_experts_per_token",
     "meta_info.json"),
    ("trt-meta-null", _trt(_trt_meta(None)), "Expected an object", "meta_info.json"),
    ("trt-no-ranks", _trt(_trt_no_ranks), "no rank*.safetensors", "stats"),
    ("trt-corrupt", _trt(lambda p: (p / "rank0.safetensors").write_bytes(b"\x05" * 20)),
     "not a readable safetensors", "rank0.safetensors"),
    ("unknown-bundled", lambda d: "bundled:nope", "no bundled trace 'nope'", None),
]


@pytest.mark.parametrize(("case", "make", "fragment", "where"), BROKEN,
                         ids=[b[0] for b in BROKEN])
def test_broken_inputs(tmp_path: Path, case: str, make: Callable[[Path], Any], fragment: str,
                       where: str | None) -> None:
    source = make(tmp_path)
    with pytest.raises(TraceFormatError) as err:
        load_trace(source)
    message = str(err.value)
    assert fragment in message
    assert "\n" not in message
    if where is not None:
        assert where in message
    assert not (tmp_path / "PWNED").exists()
