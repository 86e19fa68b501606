"""Small helpers every part of ``placement`` shares: integer-array checks, id ranges both ways
(``"3-60,62"`` <-> ``(3, ..., 60, 62)``), numbers with k/M suffixes and the progress callback
type.

A leaf module: numpy and :mod:`placement.errors` only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from placement.errors import InputError

__all__ = ["Progress", "format_ids", "format_si", "int_array", "parse_ids", "parse_range"]

Progress = Callable[[int, int], None]
"""``progress(done, total)``: what long-running library functions call as work finishes (the CLI
passes a progress bar, see :func:`placement.cli._app.progress_bar`)."""


def int_array(
    value: Any,
    name: str,
    ndim: int | None = None,
    *,
    error: Callable[..., Exception] = InputError,
    path: str | Path | None = None,
    whole_floats: bool = False,
    allow_empty: bool = True,
) -> np.ndarray:
    """``value`` as an integer numpy array (its own dtype), or ``error(message[, path])``.

    Args:
        value: an array, a nested list, or a tensor-like with ``.numpy()``.
        name: the field, for messages (``"Expected topk_ids to hold integers, got float64."``).
        ndim: the number of dimensions it must have (any when None).
        error: the exception class (``TraceFormatError``, ``PlanError``, ...); called with the
            message, and with ``path`` as second argument when one is given.
        whole_floats: accept floats that are all whole numbers (JSON writers sometimes write
            ``3.0``), converted to int64.
        allow_empty: accept an array without elements.
    """

    def fail(message: str) -> Exception:
        return error(message) if path is None else error(message, path)

    if hasattr(value, "detach") and hasattr(value, "numpy"):  # a torch tensor
        value = value.detach().cpu().numpy()
    try:
        a = np.asarray(value)
    except (ValueError, TypeError):
        raise fail(f"{name} is ragged or not numbers.") from None
    if a.dtype == object:
        raise fail(f"{name} is ragged or not numbers.")
    if not allow_empty and a.size == 0:
        raise fail(f"{name} is empty.")
    if a.dtype == bool or not np.issubdtype(a.dtype, np.integer):
        whole = (whole_floats and np.issubdtype(a.dtype, np.floating)
                 and bool(np.all(np.isfinite(a))) and bool(np.all(a == np.round(a))))
        if not whole:
            raise fail(f"Expected {name} to be an integer array, got dtype {a.dtype}.")
        a = a.astype(np.int64)
    if ndim is not None and a.ndim != ndim:
        raise fail(f"Expected {name} with {ndim} dimension{'s' if ndim != 1 else ''}, "
                   f"got shape {a.shape}.")
    return a


def parse_ids(spec: str | Iterable[int] | None, what: str = "layer ids") -> tuple[int, ...] | None:
    """``"3-60,62"`` -> ``(3, 4, ..., 60, 62)``; an iterable of ints is checked and sorted; None
    stays None. Raises :class:`InputError` on anything else (negative ids, reversed ranges,
    repeats, junk), naming ``what``."""
    if spec is None:
        return None
    if not isinstance(spec, str):
        ids = [int(i) for i in spec]
    else:
        ids = []
        for part in spec.replace(" ", "").split(","):
            if not part:
                continue
            lo, hi = parse_range(part, spec, what)
            ids.extend(range(lo, hi + 1))
    if any(i < 0 for i in ids):
        raise InputError(f"Expected {what} >= 0, got {spec!r}.")
    if len(set(ids)) != len(ids):
        raise InputError(f"{what.capitalize()} repeat in {spec!r}.")
    return tuple(sorted(ids))


def parse_range(part: str, spec: str = "", what: str = "layer ids") -> tuple[int, int]:
    """One item of a range spec: ``"3-60"`` -> ``(3, 60)``, ``"7"`` -> ``(7, 7)`` (both ends
    included); :class:`InputError` for junk or a range that runs backwards (``spec`` is the
    whole spec, for the message)."""
    spec = spec or part
    lo_s, sep, hi_s = part.partition("-")
    try:
        lo = int(lo_s)
        hi = int(hi_s) if sep else lo
    except ValueError:
        raise InputError(f"Expected {what} like '3-60' or '0,1,2', got {spec!r}.") from None
    if hi < lo:
        raise InputError(f"Range {part!r} runs backwards in {spec!r}.")
    return lo, hi


def format_ids(ids: Iterable[int], max_chars: int | None = None) -> str:
    """``[0, 1, 2, 5, 7, 8]`` -> ``"0-2, 5, 7-8"`` (``"none"`` when empty); with ``max_chars``,
    cut at a range boundary and end in ``", ..."`` when longer."""
    vals = sorted(int(i) for i in ids)
    if not vals:
        return "none"
    parts: list[str] = []
    start = prev = vals[0]
    for v in vals[1:]:
        if v == prev + 1:
            prev = v
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = v
    parts.append(str(start) if start == prev else f"{start}-{prev}")
    text = ", ".join(parts)
    if max_chars is None or len(text) <= max_chars:
        return text
    shown: list[str] = []
    for p in parts:
        if len(", ".join([*shown, p])) + 5 > max_chars:
            break
        shown.append(p)
    return ", ".join(shown) + ", ..."


def format_si(x: float | None) -> str:
    """``x`` with a k or M suffix and one decimal (``73.7k``), whole below 1,000; ``n/a`` for
    None, NaN and infinities."""
    if x is None or not math.isfinite(x):
        return "n/a"
    for unit, scale in (("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.1f}{unit}"
    return f"{x:.0f}"
