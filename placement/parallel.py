"""Where independent pieces of work run: one ordered map over a backend.

Every parallel loop of ``placement`` (per-layer solves, per-shard statistics and replay) is
:func:`ordered_map` over a :class:`Backend`: the results come back in the order of the inputs,
whatever order the workers finish in, so the merged result is the same on every backend and with
any number of workers.

* :class:`Local` runs in this process, one piece after another;
* :class:`Processes` runs on a process pool of this machine (``jobs``);

A work function must be a module-level function whose argument and result pickle (small
descriptions of work, such as a shard's path and index, rather than the data).

A leaf module: the standard library and :mod:`placement.errors` only.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import TypeVar

from placement._util import Progress
from placement.errors import InputError, PlacementError, WorkerError

__all__ = ["Backend", "Local", "Processes", "backend_for_jobs", "ordered_map"]

T = TypeVar("T")
R = TypeVar("R")


class Backend:
    """Where :func:`ordered_map` runs its pieces (see the subclasses)."""

    #: short name for summaries (``"local"``, ``"processes(2)"``)
    name: str = "backend"

    def map(self, fn: Callable[[T], R], items: Sequence[T], progress: Progress | None) -> list[R]:
        raise NotImplementedError


@dataclass(frozen=True)
class Local(Backend):
    """Run every piece in this process, in order."""

    @property
    def name(self) -> str:  # type: ignore[override]
        return "local"

    def map(self, fn: Callable[[T], R], items: Sequence[T], progress: Progress | None) -> list[R]:
        out: list[R] = []
        for k, item in enumerate(items):
            out.append(fn(item))
            if progress is not None:
                progress(k + 1, len(items))
        return out


@dataclass(frozen=True)
class Processes(Backend):
    """Run the pieces on a pool of ``workers`` processes of this machine."""

    workers: int

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise InputError(f"Expected workers >= 1, got {self.workers}.")

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"processes({self.workers})"

    def map(self, fn: Callable[[T], R], items: Sequence[T], progress: Progress | None) -> list[R]:
        total = len(items)
        out: list[R | None] = [None] * total
        done = 0
        with ProcessPoolExecutor(max_workers=min(self.workers, total)) as pool:
            index: dict[Future[R], int] = {pool.submit(fn, item): k for k, item in enumerate(items)}
            pending = set(index)
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in finished:
                    try:
                        out[index[f]] = f.result()
                    except PlacementError:
                        raise
                    except Exception as exc:  # a worker died: a bug, not the user's doing
                        raise WorkerError(f"a worker failed: {exc!r}") from exc
                    done += 1
                    if progress is not None:
                        progress(done, total)
        return out  # type: ignore[return-value]


def backend_for_jobs(jobs: int, pieces: int) -> Backend:
    """:class:`Local` for one job (or one piece), else :class:`Processes` of at most ``jobs``,
    ``pieces`` and the machine's cores."""
    if jobs < 1:
        raise InputError(f"Expected jobs >= 1, got {jobs}.")
    n = max(1, min(jobs, pieces, os.cpu_count() or 1))
    return Local() if n == 1 else Processes(n)


def ordered_map(fn: Callable[[T], R], items: Sequence[T], backend: Backend | None = None,
                progress: Progress | None = None) -> list[R]:
    """``[fn(x) for x in items]`` on ``backend`` (default :class:`Local`), results in input order.

    ``progress(done, total)`` is called with ``(0, total)`` first and as pieces finish.
    """
    items = list(items)
    if progress is not None:
        progress(0, len(items))
    if not items:
        return []
    return (backend or Local()).map(fn, items, progress)
