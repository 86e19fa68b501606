"""File helpers: atomic writes (a file is written whole or not at all) and safe .npz reads."""

from __future__ import annotations

import contextlib
import errno
import io
import json
import math
import os
import re
import shutil
import stat
import tempfile
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

from placement import _signals

__all__ = [
    "DEFAULT_MAX_EXPERTS",
    "DEFAULT_READ_LIMIT",
    "INFLATE_RATIO",
    "MAX_EXPERTS_ENV",
    "READ_LIMIT_ENV",
    "STALE_S",
    "allowed_bytes",
    "atomic_open",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_npz",
    "clean_stale",
    "ensure_dir",
    "format_bytes",
    "json_loads",
    "max_experts",
    "output_target",
    "read_limit",
    "read_npz",
    "temp_prefix",
    "too_large",
]


STALE_S = 60.0
"""A temporary file or directory of ours whose owner process is gone is removed by a later
write beside it once it is this old (seconds); one of an older naming (no pid), after a day."""

_TMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[A-Za-z0-9_]{6,}\.tmp$")
_OLD_TMP = re.compile(r"^\.(?P<name>.+)\.[A-Za-z0-9_]{8}\.tmp$")


def temp_prefix(name: str) -> str:
    """The start of the name of a temporary file or directory written for ``name``:
    ``.NAME.PID.`` (then random characters and ``.tmp``); the pid lets a later run tell a
    temporary of a process that is gone (:func:`clean_stale`)."""
    return f".{name}.{os.getpid()}."


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(directory: str | Path, name: str) -> list[Path]:
    """Remove the temporaries that a write of ``name`` into ``directory`` left behind: ours
    only (``.NAME.PID.XXXXXXXX.tmp``, files or directories), whose process ``PID`` is no longer
    alive and which are older than :data:`STALE_S` (an older naming without the pid: a day).
    Returns what was removed; never raises."""
    removed: list[Path] = []
    now = time.time()
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for e in entries:
        m = _TMP.match(e.name)
        if m is not None and m["name"] == name:
            stale = int(m["pid"]) != os.getpid() and not _pid_alive(int(m["pid"]))
            age = STALE_S
        else:
            m = _OLD_TMP.match(e.name)
            stale = m is not None and m["name"] == name
            age = 86400.0
        if not stale:
            continue
        try:
            st = e.stat(follow_symlinks=False)
            if now - st.st_mtime < age:
                continue
            if stat.S_ISDIR(st.st_mode):
                shutil.rmtree(e.path)
            else:
                os.unlink(e.path)
            removed.append(Path(e.path))
        except OSError:
            continue
    return removed


def output_target(path: str | Path) -> Path:
    """Where a write to ``path`` lands: the file a symlink points to (followed to the end),
    else ``path``."""
    path = Path(path)
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def ensure_dir(directory: Path, shown: str | Path) -> None:
    """Make ``directory`` when it is missing and its parent exists (one level: the report
    directory of ``-o DIR``); a longer chain of missing directories is refused (one
    ``OSError`` naming ``shown``, the path the user gave)."""
    if directory.is_dir():
        return
    if directory.exists():
        raise OSError(errno.ENOTDIR, f"{directory} is not a directory", str(shown))
    if not directory.parent.is_dir():
        raise OSError(errno.ENOENT, f"directory {directory.parent} does not exist (create it "
                      f"first: mkdir -p {directory.parent})", str(shown))
    try:
        directory.mkdir(exist_ok=True)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot create directory {directory} ({exc.strerror})",
                      str(shown)) from None


def _named(exc: OSError, path: Path) -> OSError:
    """``exc`` naming ``path`` when it names no file (a full disk names none)."""
    if exc.filename is not None:
        return exc
    return OSError(exc.errno, exc.strerror or str(exc), str(path))


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success rename it over ``path``.

    On any exception (a signal's :class:`KeyboardInterrupt` included) the temporary file is
    removed and ``path`` is left untouched. The output rules (docs/reliability.md):

    * a symlink is written through: its target is replaced, atomically in the target's
      directory, and the link stays;
    * an existing file keeps its mode (and its owner, when run as root);
    * a path that exists and is no regular file (``/dev/null``, a FIFO) is written straight
      to, never replaced;
    * a missing directory is made when its parent exists, else refused;
    * an ``OSError`` names ``path``; temporaries ``.NAME.PID.XXXXXXXX.tmp`` that a killed
      process left beside the file are removed (:func:`clean_stale`).
    """
    shown = Path(path)
    target = output_target(shown)
    binary = "b" in mode
    # 1. not a regular file: write to it as it is (a device, a FIFO), never replace it
    try:
        st: os.stat_result | None = target.stat()
    except OSError:
        st = None
    if st is not None and not stat.S_ISREG(st.st_mode) and not stat.S_ISDIR(st.st_mode):
        try:
            with (open(target, mode) if binary else open(target, mode, encoding=encoding)) as fh:
                yield fh
        except OSError as exc:
            raise _named(exc, shown) from None
        return
    # 2. a temporary file beside the target
    ensure_dir(target.parent, shown)
    clean_stale(target.parent, target.name)
    try:
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(target.name), suffix=".tmp",
                                   dir=target.parent)
    except OSError as exc:  # name the file the user asked for, not our temporary one
        raise OSError(exc.errno, f"cannot write the file ({exc.strerror})", str(shown)) from None
    _signals.track_temp(tmp)
    try:
        # 3. the mode (and owner) of the file it replaces, else the usual 0666 - umask
        if st is not None and stat.S_ISREG(st.st_mode):
            os.chmod(tmp, stat.S_IMODE(st.st_mode))
            if hasattr(os, "geteuid") and os.geteuid() == 0:
                with contextlib.suppress(OSError):
                    os.chown(tmp, st.st_uid, st.st_gid)
        else:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600
        fh = os.fdopen(fd, mode) if binary else os.fdopen(fd, mode, encoding=encoding)
        with fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise _named(exc, shown) from None
        raise
    finally:
        _signals.untrack_temp(tmp)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_open(path, "w") as fh:
        fh.write(text)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path, "wb", encoding=None) as fh:
        fh.write(data)


# ---------------------------------------------------------------------------------------------
# bounds on what a file may declare
# ---------------------------------------------------------------------------------------------
READ_LIMIT_ENV = "PLACEMENT_READ_LIMIT"
"""The environment variable that raises (or lowers) :func:`read_limit`: bytes, with an optional
K, M, G or T suffix (``PLACEMENT_READ_LIMIT=64G``)."""

DEFAULT_READ_LIMIT = 1 << 30
"""Bytes a file may unpack to whatever its size (1 GiB)."""

INFLATE_RATIO = 100
"""Beyond :func:`read_limit`, a file may unpack to at most this many times its own size (a
compressed trace unpacks to a few times its size; a zip bomb to a thousand)."""

MAX_EXPERTS_ENV = "PLACEMENT_MAX_EXPERTS"
"""The environment variable that raises :data:`DEFAULT_MAX_EXPERTS`."""

DEFAULT_MAX_EXPERTS = 1 << 16
"""Experts per layer a trace may declare (models have up to a few hundred)."""

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def _env_int(name: str, default: int, units: bool) -> int:
    text = os.environ.get(name, "").strip().upper().removesuffix("B").removesuffix("I")
    if not text:
        return default
    unit = text[-1] if units and text[-1] in _UNITS else ""
    try:
        value = float(text[: len(text) - len(unit)]) * _UNITS[unit]
    except ValueError:
        return default
    return int(value) if value >= 1 else default


def read_limit() -> int:
    """Bytes any input may unpack to regardless of its size: ``PLACEMENT_READ_LIMIT``, else
    :data:`DEFAULT_READ_LIMIT`."""
    return _env_int(READ_LIMIT_ENV, DEFAULT_READ_LIMIT, units=True)


def max_experts() -> int:
    """Experts per layer a trace may declare: ``PLACEMENT_MAX_EXPERTS``, else
    :data:`DEFAULT_MAX_EXPERTS`."""
    return _env_int(MAX_EXPERTS_ENV, DEFAULT_MAX_EXPERTS, units=False)


def allowed_bytes(file_size: int) -> int:
    """What a file of ``file_size`` bytes may unpack to: the larger of :func:`read_limit` and
    :data:`INFLATE_RATIO` times its size."""
    return max(read_limit(), INFLATE_RATIO * file_size)


def format_bytes(n: float) -> str:
    """``3221225472`` -> ``"3.0 GiB"``."""
    for unit, scale in (("PiB", 1 << 50), ("TiB", 1 << 40), ("GiB", 1 << 30),
                        ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


def too_large(what: str, need: int, allowed: int) -> str:
    """The one-line reason for a declared size beyond the bound, with how to raise it."""
    return (f"{what} would take {format_bytes(need)}, beyond the read limit of "
            f"{format_bytes(allowed)} for this file; if the file is genuine, raise the limit "
            f"({READ_LIMIT_ENV}{_suggest(need)}, see docs/reliability.md).")


def _suggest(need: int) -> str:
    gib = -(-need // (1 << 30))
    return f"={gib}G" if gib <= 1024 else ""


def json_loads(text: str | bytes) -> Any:
    """``json.loads``, with JSON nested deeper than Python can recurse reported as a
    :class:`json.JSONDecodeError` (one line), never a :class:`RecursionError`."""
    try:
        return json.loads(text)
    except RecursionError:
        doc = text if isinstance(text, str) else text.decode("utf-8", "replace")
        raise json.JSONDecodeError("nested too deeply", doc, 0) from None


def _npy_header(fh: IO[bytes]) -> tuple[tuple[int, ...], np.dtype]:
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        shape, _fortran, dtype = np.lib.format.read_array_header_1_0(fh)
    else:
        shape, _fortran, dtype = np.lib.format.read_array_header_2_0(fh)
    return tuple(int(d) for d in shape), dtype


def _npz_problem(path: Path, raw: bytes | None) -> str | None:
    """Why an ``.npz`` may not be unpacked (see :func:`check_npz`), or None."""
    size = len(raw) if raw is not None else path.stat().st_size
    allowed = allowed_bytes(size)
    try:
        with zipfile.ZipFile(io.BytesIO(raw) if raw is not None else path) as zf:
            infos = zf.infolist()
            total = sum(i.file_size for i in infos)
            if total > allowed:
                return too_large(f"its arrays ({len(infos)} members in a "
                                 f"{format_bytes(size)} file)", total, allowed)
            for info in infos:
                if not info.filename.endswith(".npy"):
                    continue
                name = info.filename[:-4]
                with zf.open(info) as fh:
                    try:
                        shape, dtype = _npy_header(fh)
                    except (ValueError, SyntaxError, TypeError, EOFError) as exc:
                        return f"array {name}: not a readable .npy header ({exc})."
                need = math.prod(shape) * max(int(dtype.itemsize), 1)
                if need > allowed:
                    return too_large(f"array {name} of shape {list(shape)}", need, allowed)
                if need > info.file_size:
                    return (f"array {name} declares shape {list(shape)} "
                            f"({format_bytes(need)}) but holds {format_bytes(info.file_size)}: "
                            "truncated or forged.")
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error, ValueError) as exc:
        return f"not a readable .npz archive (truncated or corrupt: {exc})."
    return None


def check_npz(path: Path, error: Callable[[str, Path], Exception],
              raw: bytes | None = None) -> None:
    """Refuse an ``.npz`` that declares more than it may hold, before a byte is unpacked: its
    members' sizes in the zip directory against :func:`allowed_bytes` of the file's size, and
    each member's ``.npy`` header (shape x item size) against the bound and against what the
    member holds. Raises ``error(message, path)``."""
    problem = _npz_problem(path, raw)
    if problem is not None:
        raise error(problem, path)


def read_npz(
    path: Path, error: Callable[[str, Path], Exception], raw: bytes | None = None
) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` (``raw`` bytes when given, else the file ``path``), loaded with
    ``allow_pickle=False`` after :func:`check_npz`; anything unreadable raises
    ``error(message, path)``."""
    check_npz(path, error, raw)
    try:
        with np.load(io.BytesIO(raw) if raw is not None else path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise error(
                "holds pickled Python objects; refusing to load them (allow_pickle=False).", path
            ) from None
        raise error(f"not a readable .npz archive ({exc}).", path) from None
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as exc:
        raise error(f"not a readable .npz archive (truncated or corrupt: {exc}).", path) from None
