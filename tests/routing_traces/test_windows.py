from __future__ import annotations

import numpy as np
import pytest

from placement import InputError, Trace
from placement.routing_traces.windows import parse_window_spec, select_window_spec

NAMES = ("a", "b", "c", "d", "e")


@pytest.mark.parametrize(
    ("spec", "want"),
    [
        ("0-2", [0, 1, 2]),
        ("0,2,4", [0, 2, 4]),
        ("3, 0-1", [0, 1, 3]),
        ("first-half", [0, 1]),
        ("second-half", [2, 3, 4]),
        ("even", [0, 2, 4]),
        ("odd", [1, 3]),
        ("b,e", [1, 4]),
        ("2", [2]),
    ],
)
def test_specs(spec: str, want: list[int]) -> None:
    assert parse_window_spec(spec, NAMES) == want


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("0-9", "window 5 out of range: the trace has 5 window"),
        ("x", "Unknown window 'x'"),
        ("3-1", "increasing window range"),
        ("0,,1", "Expected a window spec"),
    ],
)
def test_bad_specs(spec: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        parse_window_spec(spec, NAMES)


def test_a_misspelt_window_name_gets_the_closest() -> None:
    with pytest.raises(InputError) as exc:
        parse_window_spec("secnd-half", NAMES)
    assert str(exc.value) == (
        "Unknown window 'secnd-half' in 'secnd-half' (did you mean 'second-half'?): give an "
        "index, a range, first-half, second-half, even, odd or one of the trace's window names.")
    names = ("decode_in1000out1000", "prefill_in4096")
    with pytest.raises(InputError, match=r"\(did you mean 'prefill_in4096'\?\)"):
        parse_window_spec("prefil_in4096", names)


def test_select_on_token_trace() -> None:
    ids = np.arange(12).reshape(6, 1, 2) % 4
    t = Trace(num_experts=4, topk_ids=ids, window=np.array([0, 0, 1, 1, 2, 2]))
    part = select_window_spec(t, "1-2")
    assert part.num_tokens == 4 and part.num_windows == 2
    assert select_window_spec(t, None) is t


def test_load_trace_window_suffix(tmp_path) -> None:
    from placement import TraceFormatError, load_trace, write_native

    ids = np.arange(12).reshape(6, 1, 2) % 4
    t = Trace(num_experts=4, topk_ids=ids, window=np.array([0, 0, 1, 1, 2, 2]))
    path = tmp_path / "t.npz"
    write_native(t, path)
    assert load_trace(f"{path}#0-1").num_tokens == 4
    assert load_trace(f"{path}#second-half").num_windows == 2
    both = load_trace([f"{path}#0", f"{path}#2"])
    assert both.num_tokens == 4 and both.num_windows == 2
    with pytest.raises(TraceFormatError, match=r"t.npz: window 7 out of range"):
        load_trace(f"{path}#7")
    assert load_trace("bundled:mixtral#1").num_windows == 1
