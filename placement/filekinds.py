"""What a file is, told by its content (never by its name), and what to say when it is not what a
command wanted.

:class:`Probe` reads the facts about one path lazily and at most once: the container (``npz``,
``torch`` zip, bare pickle, ``json``, text, ...), the member names of an archive, the strings of a
pickle (found with :mod:`pickletools`, nothing is run or imported), parsed JSON/YAML/TOML, and
:meth:`Probe.keys`. :func:`identify` asks every registered kind whether the probe is one of its
files; :func:`mismatch` words the one-line answer when a file is of the wrong kind::

    t.npz: a routing trace (native .npz), not a placement plan: make a plan from it with
    placement solve t.npz --preset NAME -o plan.json.

Kinds are registered where the readers live: the trace readers
(:mod:`placement.routing_traces.readers`), the engine formats (:mod:`placement.engines.registry`)
and the few kinds below (plans, cluster files, ...). :func:`identify` imports those two registry
modules on first use, so every kind is known whoever asks. A leaf module: the standard library,
numpy-free, :mod:`placement.errors` only.
"""

from __future__ import annotations

import importlib
import io
import json
import pickletools
import stat
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "INVALID",
    "ROLES",
    "FileKind",
    "Probe",
    "identify",
    "kinds",
    "mismatch",
    "register_kind",
    "split_spec",
]

ROLES = ("trace", "plan", "engine", "other")
"""What a file is for: routing data, a plan of ours, an engine's placement file, or else."""

WANTED = {
    "trace": "a routing trace",
    "plan": "a placement plan",
    "engine": "an engine placement file",
}

class _Invalid:
    def __repr__(self) -> str:
        return "INVALID"

    def __bool__(self) -> bool:
        return False


INVALID: Any = _Invalid()
"""What :attr:`Probe.json` (``yaml``, ``toml``, ``data``) is when the text does not parse."""

_TEXT_LIMIT = 512 * 1024 * 1024  # larger files are not read whole to be identified


@dataclass(frozen=True)
class FileKind:
    """A kind of file ``placement`` knows.

    Args:
        name: a short id (``"native-trace"``, ``"sglang"``, ``"plan"``...).
        role: one of :data:`ROLES`.
        label: what it is, as a phrase (``"a routing trace (native .npz)"``).
        hint: what to do with it when a command wanted something else; ``{path}`` stands for
            the file as the user wrote it. Empty: the role's usual advice.
    """

    name: str
    role: str
    label: str
    hint: str = ""

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"Expected role in {ROLES}, got {self.role!r}.")


def split_spec(text: str) -> tuple[str, str | None]:
    """``"trace.npz#0-15"`` -> ``("trace.npz", "0-15")``, unless the whole text names a file
    (or there is no ``#``): then ``(text, None)``."""
    base, sep, spec = text.rpartition("#")
    if not sep or not base or Path(text).exists():
        return text, None
    return base, spec


class Probe:
    """Facts about one path, each read on first use and kept.

    ``container`` is one of ``missing``, ``dir``, ``empty``, ``npz``, ``zip`` (another or a
    broken zip archive; see :attr:`zip_error`), ``torch`` (a ``torch.save`` zip), ``pickle``
    (a bare pickle stream: legacy ``torch.save`` or ``pickle.dump``), ``npy``, ``safetensors``,
    ``json`` (text starting with ``{`` or ``[``, valid or not), ``text``, ``binary`` or
    ``special`` (a device, FIFO or socket: never opened, see :attr:`special`).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"Probe({str(self.path)!r}, container={self.container!r})"

    # -- the file ------------------------------------------------------------------------------
    @cached_property
    def exists(self) -> bool:
        return self.path.exists()

    @cached_property
    def is_dir(self) -> bool:
        return self.path.is_dir()

    @cached_property
    def special(self) -> str | None:
        """What the path is when it exists and is neither a regular file nor a directory
        (``"a character device"``, ``"a FIFO"``...): such a path is never opened (reading
        ``/dev/zero`` never ends, opening a FIFO waits for a writer)."""
        try:
            mode = self.path.stat().st_mode
        except (OSError, ValueError):
            return None
        if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
            return None
        for test, what in ((stat.S_ISCHR, "a character device"),
                           (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO"),
                           (stat.S_ISSOCK, "a socket")):
            if test(mode):
                return what
        return "not a regular file"

    @cached_property
    def size(self) -> int:
        try:
            return self.path.stat().st_size if self.exists and not self.is_dir else 0
        except OSError:
            return 0

    @cached_property
    def head(self) -> bytes:
        """The first 64 bytes (empty for a directory, a missing or a special file)."""
        if not self.exists or self.is_dir or self.special is not None:
            return b""
        try:
            with self.path.open("rb") as fh:
                return fh.read(64)
        except OSError:
            return b""

    @cached_property
    def raw(self) -> bytes:
        """The whole file (empty for a directory, a missing or a very large file)."""
        if (not self.exists or self.is_dir or self.special is not None
                or self.size > _TEXT_LIMIT):
            return b""
        try:
            return self.path.read_bytes()
        except OSError:
            return b""

    @cached_property
    def container(self) -> str:
        if not self.exists:
            return "missing"
        if self.is_dir:
            return "dir"
        if self.special is not None:
            return "special"
        head = self.head
        if not head or (self.size <= 4096 and not self.raw.strip()):
            return "empty"
        if head[:2] == b"PK":
            names = self.zip_names
            if names is None:
                return "zip"
            if any(n.endswith("data.pkl") for n in names):
                return "torch"
            if names and all(n.endswith(".npy") for n in names):
                return "npz"
            return "zip"
        if head.startswith(b"\x93NUMPY"):
            return "npy"
        if head[:1] == b"\x80":
            return "pickle"
        if len(head) >= 10 and head[8:10] == b'{"':
            return "safetensors"
        if self.text is None:
            return "binary"
        return "json" if self.text.lstrip()[:1] in ("{", "[") else "text"

    # -- archives and pickles --------------------------------------------------------------------
    @cached_property
    def _zip(self) -> tuple[tuple[str, ...] | None, str | None]:
        if self.head[:2] != b"PK":
            return None, None
        try:
            with zipfile.ZipFile(self.path) as zf:
                return tuple(zf.namelist()), None
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
            return None, str(exc) or type(exc).__name__

    @property
    def zip_names(self) -> tuple[str, ...] | None:
        """Member names of a zip archive (None when the file is no readable zip)."""
        return self._zip[0]

    @property
    def zip_error(self) -> str | None:
        """Why the zip archive cannot be read (None when it can, or is no zip)."""
        return self._zip[1]

    @cached_property
    def npz_keys(self) -> tuple[str, ...]:
        """Array names of an ``.npz`` (empty for anything else)."""
        if self.container != "npz" or self.zip_names is None:
            return ()
        return tuple(n[: -len(".npy")] for n in self.zip_names)

    @cached_property
    def pickle_strings(self) -> frozenset[str]:
        """The string constants of a pickle (``torch`` or ``pickle`` container): dict keys,
        module and class names. Read with :func:`pickletools.genops`: nothing is run."""
        data = b""
        if self.container == "torch" and self.zip_names is not None:
            name = next(n for n in self.zip_names if n.endswith("data.pkl"))
            try:
                with zipfile.ZipFile(self.path) as zf:
                    data = zf.read(name)
            except (zipfile.BadZipFile, OSError, EOFError, ValueError):
                return frozenset()
        elif self.container == "pickle":
            data = self.raw
        return _pickle_strings(data)

    # -- text ----------------------------------------------------------------------------------
    @cached_property
    def text(self) -> str | None:
        """The file as UTF-8 text (None when it is not text)."""
        raw = self.raw
        if not raw or b"\x00" in raw[:4096]:
            return None
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return None

    @cached_property
    def _json(self) -> tuple[Any, str | None]:
        if self.container != "json" or self.text is None:
            return INVALID, None
        try:
            return json.loads(self.text), None
        except json.JSONDecodeError as exc:
            return INVALID, f"{exc.msg} at line {exc.lineno} column {exc.colno}"
        except RecursionError:
            return INVALID, "nested too deep"

    @property
    def json(self) -> Any:
        """The parsed JSON (:data:`INVALID` when the text is not JSON)."""
        return self._json[0]

    @property
    def json_error(self) -> str | None:
        """Why the text is not valid JSON (None when it is, or the file is no JSON)."""
        return self._json[1]

    @cached_property
    def yaml(self) -> Any:
        """The parsed YAML of a text file that is not JSON (:data:`INVALID` otherwise)."""
        if self.container not in ("text", "json") or self.text is None or self.json is not INVALID:
            return INVALID
        import yaml

        try:
            return yaml.load(self.text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        except yaml.YAMLError:
            return INVALID

    @cached_property
    def toml(self) -> Any:
        """The parsed TOML of a text file (:data:`INVALID` otherwise)."""
        if self.container != "text" or self.text is None:
            return INVALID
        try:
            return tomllib.loads(self.text)
        except tomllib.TOMLDecodeError:
            return INVALID

    @cached_property
    def data(self) -> Any:
        """The parsed content of a text file: JSON, else YAML, else TOML (:data:`INVALID`)."""
        for value in (self.json, self.yaml, self.toml):
            if value is not INVALID:
                return value
        return INVALID

    def keys(self) -> frozenset[str]:
        """Names the file holds: the top-level keys of a JSON/YAML/TOML mapping, the arrays of
        an ``.npz``, the strings of a pickle (approximate: every string, not only keys)."""
        if self.container == "npz":
            return frozenset(self.npz_keys)
        if self.container in ("torch", "pickle"):
            return self.pickle_strings
        data = self.data
        if isinstance(data, dict):
            return frozenset(str(k) for k in data)
        return frozenset()

    # -- directories ---------------------------------------------------------------------------
    @cached_property
    def entries(self) -> tuple[str, ...]:
        """Names in a directory (hidden ones left out), sorted."""
        if not self.is_dir:
            return ()
        try:
            return tuple(sorted(p.name for p in self.path.iterdir() if not p.name.startswith(".")))
        except OSError:
            return ()


def _pickle_strings(data: bytes, streams: int = 4) -> frozenset[str]:
    """String arguments of the opcodes of up to ``streams`` pickles one after another in
    ``data`` (legacy ``torch.save`` writes several)."""
    out: set[str] = set()
    fh = io.BytesIO(data)
    for _ in range(streams):
        if fh.tell() >= len(data):
            break
        try:
            for _op, arg, _pos in pickletools.genops(fh):
                if isinstance(arg, str):
                    out.add(arg)
        except Exception:  # a truncated or odd stream: keep what was read
            break
    return frozenset(out)


# -------------------------------------------------------------------------------------------
# the registry of kinds
# -------------------------------------------------------------------------------------------
Detector = Callable[[Probe], bool]

_KINDS: list[tuple[FileKind, Detector]] = []
_PROVIDERS = ("placement.routing_traces.readers", "placement.engines.registry")
_loaded = False


def register_kind(kind: FileKind, detect: Detector) -> None:
    """Add (or replace, by name) a kind and the function that tells its files."""
    _KINDS[:] = [(k, d) for k, d in _KINDS if k.name != kind.name]
    _KINDS.append((kind, detect))


def unregister_kind(name: str) -> None:
    """Remove the kind ``name`` (tests)."""
    _KINDS[:] = [(k, d) for k, d in _KINDS if k.name != name]


def _load_providers() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for module in _PROVIDERS:
            importlib.import_module(module)


def kinds() -> tuple[FileKind, ...]:
    """Every known kind, in the order they are tried."""
    _load_providers()
    return tuple(k for k, _ in _KINDS)


def identify(source: str | Path | Probe) -> FileKind | None:
    """The kind of a file (or directory), or None when no registered kind claims it."""
    _load_providers()
    probe = source if isinstance(source, Probe) else Probe(source)
    for kind, detect in _KINDS:
        try:
            if detect(probe):
                return kind
        except Exception:  # a detector must never turn a user's file into a traceback
            continue
    return None


_ADVICE: dict[tuple[str, str], str] = {
    ("plan", "trace"): "judge a plan on a trace with placement validate {path} TRACE",
    ("engine", "trace"): "to judge the placement it holds, turn it into a plan with "
                         "placement import {path} --preset NAME -o plan.json",
    ("trace", "plan"): "make a plan from it with placement solve {path} --preset NAME "
                       "-o plan.json",
    ("engine", "plan"): "turn it into one with placement import {path} --preset NAME "
                        "-o plan.json",
    ("trace", "engine"): "make a plan from it with placement solve {path} --preset NAME "
                         "-o plan.json, then placement export the plan",
    ("plan", "engine"): "it is already a placement plan: validate, compare or export it as it is",
}


def mismatch(kind: FileKind, wanted: str, path: str | Path) -> str:
    """``"<what it is>, not <what was wanted>: <what to do>."`` for a file of the wrong kind
    (no path prefix: the error that carries it adds one). ``wanted`` is a role of
    :data:`ROLES` but ``"other"``."""
    if wanted not in WANTED:
        raise ValueError(f"Expected wanted in {tuple(WANTED)}, got {wanted!r}.")
    advice = kind.hint or _ADVICE.get((kind.role, wanted), "")
    text = f"{kind.label}, not {WANTED[wanted]}"
    if advice:
        text += ": " + advice.replace("{path}", str(path))
    return text + "."


# -------------------------------------------------------------------------------------------
# kinds that belong to no reader
# -------------------------------------------------------------------------------------------
PLAN_FORMAT = "placement-plan"


def _json_format(probe: Probe, value: str) -> bool:
    data = probe.json
    return isinstance(data, dict) and data.get("format") == value


register_kind(FileKind("plan", "plan", "a placement plan"),
              lambda p: _json_format(p, PLAN_FORMAT))
register_kind(
    FileKind("validation", "other", "the JSON output of placement validate",
             "judge the plan again with placement validate PLAN TRACE"),
    lambda p: _json_format(p, "placement-validation"),
)
register_kind(
    FileKind("trtllm-meta", "other", "a TensorRT-LLM meta_info.json",
             "pass the directory that holds it and rank*.safetensors"),
    lambda p: isinstance(p.json, dict) and "num_experts_per_token" in p.json,
)
register_kind(
    FileKind("trtllm-rank-file", "other", "a TensorRT-LLM statistics rank file (safetensors)",
             "pass the directory that holds it and meta_info.json"),
    lambda p: p.container == "safetensors",
)
register_kind(
    FileKind("npy", "other", "a bare .npy array",
             "a trace is a native .npz (placement trace convert writes one)"),
    lambda p: p.container == "npy",
)
register_kind(
    FileKind("cluster", "other", "a cluster file (TOML)", "give it as --cluster {path}"),
    lambda p: isinstance(p.toml, dict) and bool(
        {"num_nodes", "gpus_per_node", "cluster"} & set(p.toml)),
)
