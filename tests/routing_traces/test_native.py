"""Native trace format v1: round trips and a parametrized set of broken files."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from placement.errors import TraceFormatError
from placement.routing_traces import Trace, read_native, write_native


def test_token_trace_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    t = Trace(
        num_experts=9,
        topk_ids=rng.integers(-1, 9, size=(40, 3, 2)),
        layer_ids=[2, 4, 6],
        source_rank=rng.integers(0, 4, size=40),
        window=np.repeat([5, 7], 20),
        topk_weights=rng.random((40, 3, 2)),
        window_names=["x", "y"],
        model="tiny",
        num_hidden_layers=8,
    )
    write_native(t, tmp_path / "t.npz")
    back = read_native(tmp_path / "t.npz")
    np.testing.assert_array_equal(back.topk_ids, t.topk_ids)
    np.testing.assert_array_equal(back.source_rank, t.source_rank)
    np.testing.assert_array_equal(back.window, t.window)
    np.testing.assert_allclose(back.topk_weights, t.topk_weights)  # type: ignore[arg-type]
    np.testing.assert_array_equal(back.layer_ids, [2, 4, 6])
    assert (back.window_names, back.model, back.num_hidden_layers) == (("x", "y"), "tiny", 8)
    assert back.dense_layer_ids == (0, 1, 3, 5, 7)


def test_token_trace_without_window_keeps_its_name(tmp_path: Path) -> None:
    t = Trace(num_experts=3, topk_ids=np.zeros((2, 1, 1), int), window_names=["only"])
    write_native(t, tmp_path / "t.npz")
    assert read_native(tmp_path / "t.npz").window_names == ("only",)


def test_counts_trace_round_trip_with_ranks(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    c = rng.integers(0, 50, size=(3, 4, 2, 6)).astype(float)
    t = Trace(num_experts=6, counts=c, layer_ids=[1, 3], num_hidden_layers=4, top_k=2,
              window_names=["a", "b", "c"])
    write_native(t, tmp_path / "c.npz", compress=False)
    with np.load(tmp_path / "c.npz", allow_pickle=False) as z:
        np.testing.assert_array_equal(z["counts"], c.sum(axis=1))  # plain readers see counts
        np.testing.assert_array_equal(z["rank_counts"], c)
    back = read_native(tmp_path / "c.npz")
    np.testing.assert_array_equal(back.window_rank_counts(), c)
    assert (back.top_k, back.num_hidden_layers, back.window_names) == (2, 4, ("a", "b", "c"))


def _npz(path: Path, **arrays: np.ndarray) -> None:
    np.savez(path, **arrays)  # type: ignore[arg-type]


def _good(path: Path) -> None:
    _npz(path, topk_ids=np.zeros((4, 2, 1), np.int64), num_experts=np.array(3))


def _truncated(path: Path) -> None:
    _good(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _corrupt_member(path: Path) -> None:
    np.savez_compressed(path, topk_ids=np.random.default_rng(0).integers(0, 4, (3000, 2, 1)),
                        num_experts=np.array(4))
    data = bytearray(path.read_bytes())
    data[200:260] = b"\0" * 60
    path.write_bytes(bytes(data))


def _object_array(path: Path) -> None:
    np.savez(path, topk_ids=np.array([{"a": 1}], dtype=object), num_experts=np.array(3))


def _npy(path: Path) -> None:
    buf = io.BytesIO()
    np.save(buf, np.zeros(3))
    path.write_bytes(buf.getvalue())


def _zip_without_npy(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("hello.txt", "hi")


BROKEN: list[tuple[str, Callable[[Path], object], str]] = [
    ("missing", lambda p: None, "no such file"),
    ("text", lambda p: p.write_text("hello"), "not a .npz archive"),
    ("npy", _npy, "not a .npz archive"),
    ("truncated", _truncated, "truncated or corrupt"),
    ("corrupt-member", _corrupt_member, "truncated or corrupt"),
    ("pickled-objects", _object_array, "pickled Python objects"),
    ("no-routing", lambda p: _npz(p, foo=np.zeros(2)), "needs topk_ids"),
    ("zip-without-arrays", _zip_without_npy, "not a placement trace"),
    ("no-num-experts", lambda p: _npz(p, topk_ids=np.zeros((2, 1, 1), int)), "lacks num_experts"),
    ("string-num-experts",
     lambda p: _npz(p, topk_ids=np.zeros((2, 1, 1), int), num_experts=np.array("abc")),
     "malformed field"),
    ("vector-num-experts",
     lambda p: _npz(p, topk_ids=np.zeros((2, 1, 1), int), num_experts=np.array([3, 4])),
     "num_experts to be a scalar"),
    ("future-version",
     lambda p: _npz(p, topk_ids=np.zeros((2, 1, 1), int), num_experts=np.array(3),
                    format_version=np.array(2)), "version 2 is not supported"),
    ("ids-out-of-range",
     lambda p: _npz(p, topk_ids=np.full((2, 1, 1), 3), num_experts=np.array(3)), "found 3"),
    ("negative-counts", lambda p: _npz(p, counts=-np.ones((2, 3))), "negative"),
    ("nan-counts", lambda p: _npz(p, counts=np.full((2, 3), np.nan)), "NaN"),
    ("1d-counts", lambda p: _npz(p, counts=np.ones(3)), "Expected counts"),
    ("rank-counts-disagree",
     lambda p: _npz(p, counts=np.ones((1, 2, 3)), rank_counts=np.ones((1, 2, 2, 3))),
     "rank_counts does not sum"),
    ("bad-layer-ids",
     lambda p: _npz(p, counts=np.ones((2, 3)), layer_ids=np.array([1, 1])), "repeated"),
]


@pytest.mark.parametrize(("name", "make", "fragment"), BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_native_files(tmp_path: Path, name: str, make: Callable[[Path], object],
                             fragment: str) -> None:
    path = tmp_path / f"{name}.npz"
    make(path)
    with pytest.raises(TraceFormatError) as err:
        read_native(path)
    assert fragment in str(err.value)
    assert str(path) in str(err.value)
