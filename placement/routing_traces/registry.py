"""The trace readers: one :class:`TraceReader` per kind of routing file, tried in order.

A reader says whether a file is one of its own (``sniff``, from a
:class:`~placement.filekinds.Probe`: no full read) and reads it (``read``). A reader whose files
come one per rank of a run (SGLang's ``per_pass`` / ``per_token`` dumps) also ``combine`` s the
parts of one directory into a trace. A new reader is a module that defines one, plus one
:func:`register_reader` line in :mod:`placement.routing_traces.readers`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from placement.filekinds import FileKind, Probe, register_kind, unregister_kind
from placement.routing_traces.trace import Trace

__all__ = ["Reader", "TraceReader", "readers", "register_reader", "unregister_reader"]


class TraceReader(Protocol):
    """What :func:`placement.routing_traces.load_trace` asks of a reader."""

    @property
    def kind(self) -> FileKind:
        """The kind of file it reads (role ``"trace"``)."""
        ...

    def sniff(self, probe: Probe) -> bool:
        """Whether ``probe`` is one of its files (cheap: names, keys, first bytes)."""
        ...

    def read(self, probe: Probe) -> Any:
        """A :class:`Trace`, or one part of a run when :attr:`combine` is set."""
        ...

    @property
    def combine(self) -> Callable[[Sequence[Any]], Trace] | None:
        """Parts of one run (one file per rank) to one trace; None for whole traces."""
        ...


@dataclass(frozen=True)
class Reader:
    """A :class:`TraceReader` made of functions."""

    kind: FileKind
    sniff: Callable[[Probe], bool]
    read: Callable[[Probe], Any]
    combine: Callable[[Sequence[Any]], Trace] | None = None


_READERS: list[TraceReader] = []


def register_reader(reader: TraceReader) -> None:
    """Add a reader (replacing one of the same kind name); its kind becomes known to
    :func:`placement.filekinds.identify`."""
    _READERS[:] = [r for r in _READERS if r.kind.name != reader.kind.name]
    _READERS.append(reader)
    register_kind(reader.kind, reader.sniff)


def unregister_reader(name: str) -> None:
    """Remove the reader of kind ``name`` (tests)."""
    _READERS[:] = [r for r in _READERS if r.kind.name != name]
    unregister_kind(name)


def readers() -> tuple[TraceReader, ...]:
    """The registered readers, in the order they are tried."""
    return tuple(_READERS)
