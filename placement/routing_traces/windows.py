"""Choosing windows of a trace: the planning part and the held-out part of one file."""

from __future__ import annotations

import difflib

from placement._util import parse_range
from placement.errors import InputError
from placement.routing_traces.trace import Trace

__all__ = ["parse_window_spec", "select_window_spec"]


def parse_window_spec(spec: str, window_names: tuple[str, ...]) -> list[int]:
    """Window indices from a spec: ``"0-15"``, ``"0,2,5-7"``, ``"first-half"``,
    ``"second-half"``, ``"even"``, ``"odd"``, or window names separated by commas.

    Indices count from 0 in the trace's window order; ranges include both ends.
    """
    W = len(window_names)
    s = spec.strip()
    named = {
        "first-half": list(range(W // 2)),
        "second-half": list(range(W // 2, W)),
        "even": list(range(0, W, 2)),
        "odd": list(range(1, W, 2)),
    }
    if s in named:
        out = named[s]
    else:
        out = []
        for part in (p.strip() for p in s.split(",")):
            if not part:
                raise InputError(f"Expected a window spec like '0-15' or '0,2,4', got {spec!r}.")
            if part in window_names:
                out.append(window_names.index(part))
                continue
            try:
                a, b = parse_range(part, spec, "windows")
            except InputError as exc:
                if "backwards" in str(exc):
                    raise InputError(f"Expected an increasing window range, got {part!r}.") \
                        from None
                close = difflib.get_close_matches(part, [*named, *window_names], n=1,
                                                  cutoff=0.6)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise InputError(
                    f"Unknown window {part!r} in {spec!r}{hint}: give an index, a range, "
                    f"{', '.join(named)} or one of the trace's window names."
                ) from None
            out.extend(range(a, b + 1))
    bad = [i for i in out if not 0 <= i < W]
    if bad:
        raise InputError(f"window {bad[0]} out of range: the trace has {W} window(s) (0-{W - 1}).")
    if not out:
        raise InputError(f"window spec {spec!r} selects no window (the trace has {W}).")
    return sorted(set(out))


def select_window_spec(trace: Trace, spec: str | None) -> Trace:
    """``trace`` restricted to the windows ``spec`` names (all of them when None)."""
    if spec is None:
        return trace
    return trace.select_windows(parse_window_spec(spec, trace.window_names))
