"""The engine formats: one :class:`EngineFormat` per engine file ``placement`` writes and reads.

A format is a module that defines an object with the attributes and methods below (see
:mod:`placement.engines.sglang` for one), plus one :func:`register_format` line at the end of
this module. ``placement export --format`` and ``placement import --format`` take their choices
and help from here, :data:`placement.engines.FORMATS` lists the names, and
:func:`placement.filekinds.identify` learns the format's kind of file.

Export runs ``build`` -> ``check`` -> ``write`` -> ``usage``; import runs ``detect`` (on a
:class:`~placement.filekinds.Probe`: no full read) -> ``read``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from placement.engines import eplb, sglang, trtllm, vllm_ascend
from placement.engines._common import Built, EngineFile, ExportRequest, Usage
from placement.errors import InputError
from placement.filekinds import FileKind, Probe, register_kind, unregister_kind
from placement.plan import Plan

__all__ = [
    "NO_FORMAT",
    "EngineFormat",
    "format_names",
    "formats",
    "get_format",
    "register_format",
    "unregister_format",
]


class EngineFormat(Protocol):
    """What :func:`~placement.engines.export_plan` and :func:`~placement.engines.import_plan`
    ask of an engine format."""

    @property
    def name(self) -> str:
        """The ``--format`` choice (``"sglang"``)."""
        ...

    @property
    def engine(self) -> str:
        """Who reads the file and how, for help (``"SGLang --init-expert-location"``)."""
        ...

    @property
    def suffixes(self) -> tuple[str, ...]:
        """File name endings an export may use (lower case, with the dot); the first is the
        usual one."""
        ...

    @property
    def suffix_reason(self) -> str:
        """Why other endings are refused (may be empty)."""
        ...

    @property
    def options(self) -> frozenset[str]:
        """Export options beyond the common ones that it takes (``"mtp_layers"``,
        ``"mtp_copy_from"``)."""
        ...

    @property
    def kind(self) -> FileKind:
        """Its kind of file (role ``"engine"``)."""
        ...

    def detect(self, probe: Probe) -> bool:
        """Whether a file is one of this format's (from keys and first bytes)."""
        ...

    def build(self, plan: Plan, request: ExportRequest, path: Path) -> Built:
        """The file's content for ``plan`` (pure), with a description and notes."""
        ...

    def check(self, built: Built, plan: Plan) -> None:
        """Raise :class:`~placement.errors.PlanError` / ``EngineFormatError`` unless the
        engine would accept ``built`` (run before anything is written)."""
        ...

    def write(self, built: Built, path: Path) -> None:
        """Write ``built`` to ``path`` atomically (the suffix may pick the container)."""
        ...

    def read(self, path: Path, container: str, data: Any, text: str) -> EngineFile:
        """An :class:`EngineFile` from a loaded file (``container``: ``json``, ``yaml``,
        ``torch`` or ``npz``; ``text``: the file's text for JSON/YAML)."""
        ...

    def usage(self, plan: Plan, path: Path) -> Usage:
        """How to start the engine with the file, and what would undo the placement."""
        ...


_FORMATS: dict[str, EngineFormat] = {}


def register_format(fmt: EngineFormat) -> None:
    """Add (or replace) a format; its files become known to
    :func:`placement.filekinds.identify`."""
    _FORMATS[fmt.name] = fmt
    register_kind(fmt.kind, fmt.detect)


def unregister_format(name: str) -> None:
    """Remove a format (tests)."""
    fmt = _FORMATS.pop(name, None)
    if fmt is not None:
        unregister_kind(fmt.kind.name)


def formats() -> tuple[EngineFormat, ...]:
    """The registered formats, in registration order."""
    return tuple(_FORMATS.values())


def format_names() -> tuple[str, ...]:
    """Their names (the ``--format`` choices)."""
    return tuple(_FORMATS)


NO_FORMAT: dict[str, str] = {
    "vllm": "upstream vLLM loads no static expert placement file (its --enable-eplb rebalances "
            "online with EPLB's algorithm): serve the plan with SGLang (--format sglang) or "
            "TensorRT-LLM (--format trtllm), on Ascend NPUs with vLLM-Ascend (--format "
            "vllm-ascend), or judge vLLM's online EPLB against the plan with placement compare "
            "--baseline eplb.",
}
"""Engines users ask for that take no placement file, and what to do instead (the message of
``--format NAME``)."""


def get_format(name: str) -> EngineFormat:
    """The format ``name``, or :class:`InputError` naming the choices (or, for an engine that
    loads no placement file, :data:`NO_FORMAT`, saying what to use)."""
    if name in NO_FORMAT and name not in _FORMATS:
        raise InputError(f"--format {name}: {NO_FORMAT[name]}")
    try:
        return _FORMATS[name]
    except KeyError:
        raise InputError(
            f"Unknown engine format {name!r}; choose one of: {', '.join(_FORMATS)}."
        ) from None


# the formats, one line each (their order is the order of the CLI choices)
register_format(sglang.FORMAT)
register_format(trtllm.FORMAT)
register_format(eplb.FORMAT)
register_format(vllm_ascend.FORMAT)
