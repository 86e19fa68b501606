"""Sharded traces: round trips, streaming counts, window selection and every broken manifest."""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from placement.errors import InputError, TraceFormatError
from placement.filekinds import identify
from placement.routing_traces import Trace, load_trace, synthesize, write_native
from placement.routing_traces.sharded import (
    MANIFEST,
    ShardedTrace,
    iter_shard_arrays,
    open_sharded,
    open_trace_source,
    reduce_shards,
    write_sharded,
)


@pytest.fixture(scope="module")
def trace() -> Trace:
    return synthesize("deepseek-v3", num_tokens=1000, num_windows=3, num_source_ranks=8,
                      num_layers=3, seed=1)


@pytest.fixture
def sharded(tmp_path: Path, trace: Trace) -> ShardedTrace:
    return write_sharded(trace, tmp_path / "sh", shard_tokens=300)


def _same(a: Trace, b: Trace) -> None:
    assert np.array_equal(a.topk_ids, b.topk_ids)
    assert np.array_equal(a.window_index, b.window_index)
    assert a.window_names == b.window_names
    for name in ("source_rank", "topk_weights"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None)
        if x is not None:
            assert np.array_equal(x, y)
    assert np.array_equal(a.layer_ids, b.layer_ids)
    assert (a.model, a.num_experts, a.num_hidden_layers) == (b.model, b.num_experts,
                                                            b.num_hidden_layers)


def test_round_trip(sharded: ShardedTrace, trace: Trace) -> None:
    assert [s.tokens for s in sharded.shards] == [300, 300, 300, 100]
    assert [s.first_token for s in sharded.shards] == [0, 300, 600, 900]
    assert sharded.num_tokens == 1000 and sharded.top_k == trace.top_k
    assert sharded.window_names == trace.window_names
    assert sharded.num_source_ranks == trace.num_source_ranks
    _same(sharded.to_trace(), trace)
    _same(load_trace(sharded.path), trace)  # every command that reads whole traces
    again = open_sharded(sharded.path, verify=True)
    assert again.manifest == sharded.manifest


def test_shards_memory_map(sharded: ShardedTrace, trace: Trace) -> None:
    s1 = sharded.shard(1)
    assert np.array_equal(s1.topk_ids, trace.topk_ids[300:600])
    assert isinstance(np.asarray(s1.topk_ids).base, np.memmap) or \
        isinstance(s1.topk_ids, np.memmap)


def test_optional_arrays(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    ids = rng.integers(-1, 5, size=(50, 2, 2))
    t = Trace(num_experts=5, topk_ids=ids, topk_weights=rng.random((50, 2, 2)),
              layer_ids=[3, 5], num_hidden_layers=7)
    st = write_sharded(t, tmp_path / "w", shard_tokens=16)
    assert st.has_source_rank is False and st.manifest.has_weights
    back = st.to_trace()
    _same(back, t)
    assert st.dense_layer_ids == (0, 1, 2, 4, 6)
    assert json.loads((st.path / MANIFEST).read_text())["dense_layer_ids"] == [0, 1, 2, 4, 6]


def test_chunks_and_counts_stream(sharded: ShardedTrace, trace: Trace) -> None:
    chunks = list(sharded.iter_chunks(128))
    assert max(c.num_tokens or 0 for c in chunks) <= 128
    assert sum(c.num_tokens or 0 for c in chunks) == 1000
    np.testing.assert_array_equal(sharded.window_rank_counts(), trace.window_rank_counts())
    np.testing.assert_array_equal(sharded.counts(), trace.counts())
    np.testing.assert_array_equal(sharded.window_counts(), trace.window_counts())
    ct = sharded.counts_trace()
    assert not ct.is_token_level and ct.top_k == trace.top_k
    np.testing.assert_array_equal(ct.window_rank_counts(), trace.window_rank_counts())


def test_write_from_chunks(tmp_path: Path, trace: Trace) -> None:
    chunks = (trace.select_windows([w]) for w in range(3))
    st = write_sharded(chunks, tmp_path / "c", shard_tokens=256)
    _same(st.to_trace(), trace)


@pytest.mark.parametrize("spec", ["1-2", "0", "second-half", "w2"])
def test_window_selection_filters_every_shard(sharded: ShardedTrace, trace: Trace,
                                              spec: str) -> None:
    sel = open_trace_source(f"{sharded.path}#{spec}")
    assert isinstance(sel, ShardedTrace)
    ref = load_trace(f"{sharded.path}#{spec}")
    assert sel.num_tokens == ref.num_tokens and sel.window_names == ref.window_names
    _same(sel.to_trace(), ref)
    np.testing.assert_array_equal(sel.window_rank_counts(), ref.window_rank_counts())


def test_selection_skips_shards(tmp_path: Path) -> None:
    t = Trace(num_experts=4, topk_ids=np.zeros((40, 1, 1), int), window=np.repeat([5, 9], 20))
    st = write_sharded(t, tmp_path / "s", shard_tokens=10)
    assert [s.window_range for s in st.shards] == [(0, 0), (0, 0), (1, 1), (1, 1)]
    assert [r.index for r in st.select_windows([1]).refs()] == [2, 3]
    assert st.select_windows([1]).shard(0).num_tokens == 0


def test_refs_pickle_and_reduce(sharded: ShardedTrace, trace: Trace) -> None:
    refs = [pickle.loads(pickle.dumps(r)) for r in sharded.refs()]
    total = reduce_shards(_tokens_of, refs, lambda a, b: a + b)
    assert total == 1000
    firsts = [next(iter_shard_arrays(r))["token"][0] for r in refs]
    assert firsts == [0, 300, 600, 900]


def _tokens_of(ref: Any) -> int:
    return sum(a["topk_ids"].shape[0] for a in iter_shard_arrays(ref, 64))


def test_identify_and_source(sharded: ShardedTrace, tmp_path: Path, trace: Trace) -> None:
    kind = identify(sharded.path)
    assert kind is not None and kind.name == "sharded-trace" and kind.role == "trace"
    write_native(trace, tmp_path / "t.npz")
    assert isinstance(open_trace_source(tmp_path / "t.npz"), Trace)


def test_replaces_only_sharded_dirs(tmp_path: Path, trace: Trace) -> None:
    out = tmp_path / "again"
    write_sharded(trace, out, shard_tokens=500)
    st = write_sharded(trace.select_windows([0]), out, shard_tokens=500)  # replaced
    assert st.num_tokens == trace.select_windows([0]).num_tokens
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again"]  # no temporary left
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    with pytest.raises(InputError, match="not a sharded trace and not empty"):
        write_sharded(trace, other)
    counts = Trace(num_experts=4, counts=np.ones((2, 4)))
    with pytest.raises(InputError, match="counts trace cannot be sharded"):
        write_sharded(counts, tmp_path / "n")


# -------------------------------------------------------------------------------------------
# broken manifests and shards: one clear line each
# -------------------------------------------------------------------------------------------
def _edit(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def f(m: dict[str, Any]) -> None:
        if value is _DROP:
            del m[key]
        else:
            m[key] = value
    return f


_DROP = object()


def _shard0(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def f(m: dict[str, Any]) -> None:
        m["shards"][0][key] = value
    return f


def _drop_shard(m: dict[str, Any]) -> None:
    m["shards"].pop()


def _drop_shard_and_count(m: dict[str, Any]) -> None:
    m["shards"].pop()
    m["num_shards"] = 3


MANIFEST_CASES = [
    ("missing field", _edit("num_experts", _DROP), "manifest.json lacks field 'num_experts'."),
    ("missing shards", _edit("shards", _DROP), "manifest.json lacks field 'shards'."),
    ("format", _edit("format", "other"),
     "manifest.json: format is 'other', expected 'placement-sharded-trace'."),
    ("version", _edit("version", 2),
     "manifest.json: version 2 is not supported (this version reads 1)."),
    ("num_experts", _edit("num_experts", "many"),
     "manifest.json: num_experts is 'many', expected an integer >= 1."),
    ("ids dtype field", _edit("ids_dtype", "float32"),
     "manifest.json: ids_dtype is 'float32', expected 'int16' or 'int32'."),
    ("shard count", _edit("num_shards", 5),
     "manifest.json: num_shards is 5 but shards lists 4."),
    ("shard dropped", _drop_shard, "manifest.json: num_shards is 4 but shards lists 3."),
    ("shard and count dropped", _drop_shard_and_count,
     "manifest.json: the shards hold 900 tokens but num_tokens is 1000."),
    ("first token", _shard0("first_token", 7),
     "manifest.json: shards[0].first_token is 7, expected 0 (the tokens of the shards before "
     "it)."),
    ("tokens", _shard0("tokens", -1), "manifest.json: shards[0].tokens is -1, expected an "
                                      "integer >= 1."),
    ("layer ids", _edit("layer_ids", [1, 1, 2]),
     "manifest.json: layer_ids is [1, 1, 2], expected no repeated layer id."),
]


@pytest.mark.parametrize("edit, line", [c[1:] for c in MANIFEST_CASES],
                         ids=[c[0] for c in MANIFEST_CASES])
def test_broken_manifest(sharded: ShardedTrace, edit: Callable[[dict[str, Any]], None],
                         line: str) -> None:
    mp = sharded.path / MANIFEST
    m = json.loads(mp.read_text())
    edit(m)
    mp.write_text(json.dumps(m))
    with pytest.raises(TraceFormatError) as err:
        open_sharded(sharded.path)
    assert str(err.value) == f"{sharded.path}: {line}"
    assert "\n" not in str(err.value)


def test_bad_checksum(sharded: ShardedTrace) -> None:
    p = sharded.path / "shard-00001.topk_ids.npy"
    raw = bytearray(p.read_bytes())
    raw[-1] ^= 1  # same size, other bytes
    p.write_bytes(bytes(raw))
    open_sharded(sharded.path)  # sizes and headers only: cheap
    with pytest.raises(TraceFormatError) as err:
        open_sharded(sharded.path, verify=True)
    assert str(err.value) == (f"{sharded.path}: shard-00001.topk_ids.npy: sha256 does not match "
                              "manifest.json (the file changed or is corrupt).")


def test_truncated_shard(sharded: ShardedTrace) -> None:
    p = sharded.path / "shard-00002.window.npy"
    p.write_bytes(p.read_bytes()[:-8])
    with pytest.raises(TraceFormatError, match=r"shard-00002.window.npy is \d+ bytes but "
                                                r"manifest.json says \d+ \(truncated"):
        open_sharded(sharded.path)


def test_missing_shard_file(sharded: ShardedTrace) -> None:
    (sharded.path / "shard-00003.source_rank.npy").unlink()
    with pytest.raises(TraceFormatError) as err:
        open_sharded(sharded.path)
    assert str(err.value) == f"{sharded.path}: shard 3: shard-00003.source_rank.npy is missing."


def test_wrong_dtype(sharded: ShardedTrace) -> None:
    p = sharded.path / "shard-00000.topk_ids.npy"
    a = np.load(p)
    np.save(p, a.astype(np.float32)[..., ::2].copy())  # same byte count: 2 x float32 = 4 x int16
    m = json.loads((sharded.path / MANIFEST).read_text())
    m["shards"][0]["files"]["topk_ids"]["bytes"] = p.stat().st_size
    (sharded.path / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(TraceFormatError) as err:
        open_sharded(sharded.path)
    assert str(err.value) == (f"{sharded.path}: shard-00000.topk_ids.npy holds float32, "
                              "expected int16 (topk_ids).")


def test_not_json(sharded: ShardedTrace) -> None:
    (sharded.path / MANIFEST).write_text('{"format": "placement-sharded-trace", ')
    with pytest.raises(TraceFormatError, match=r"manifest\.json is not valid JSON"):
        open_sharded(sharded.path)


def test_sample_is_bounded_and_deterministic(sharded: ShardedTrace, trace: Trace) -> None:
    assert sharded.sample(5000).num_tokens == 1000  # fits: the whole trace
    s = sharded.sample(300)
    stride = 4  # ceil(1000 / 300)
    assert s.num_tokens == 250
    assert np.array_equal(s.topk_ids, trace.topk_ids[::stride])
    assert np.array_equal(np.asarray(s.source_rank), np.asarray(trace.source_rank)[::stride])
    assert s.window_names == trace.window_names
    assert np.array_equal(sharded.sample(300).topk_ids, s.topk_ids)


def test_last_shard_header_of_another_length(tmp_path: Path, trace: Trace,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The last shard's rows are announced in its header after writing; a header of another
    length moves the rows (the file stays a valid .npy with the manifest's checksum)."""
    from placement.routing_traces import sharded as mod

    plain = mod._npy_header_bytes

    def longer(shape: tuple[int, ...], dtype: np.dtype) -> bytes:
        h = plain(shape, dtype)
        if shape[0] == 300:
            return h
        body = h[10:-1] + b" " * 64 + b"\n"  # same dict, 64 more bytes of padding
        return h[:8] + len(body).to_bytes(2, "little") + body

    monkeypatch.setattr(mod, "_npy_header_bytes", longer)
    st = write_sharded(trace, tmp_path / "h", shard_tokens=300)
    assert open_sharded(st.path, verify=True).shards[-1].tokens == 100
    _same(st.to_trace(), trace)
