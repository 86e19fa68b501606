"""File helpers: atomic writes (a file is written whole or not at all) and safe .npz reads."""

from __future__ import annotations

import contextlib
import errno
import io
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
from typing import IO

import numpy as np

from placement import _signals

__all__ = [
    "STALE_S",
    "atomic_open",
    "atomic_write_bytes",
    "atomic_write_text",
    "clean_stale",
    "ensure_dir",
    "output_target",
    "read_npz",
    "temp_prefix",
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


def read_npz(
    path: Path, error: Callable[[str, Path], Exception], raw: bytes | None = None
) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` (``raw`` bytes when given, else the file ``path``), loaded with
    ``allow_pickle=False``; anything unreadable raises ``error(message, path)``."""
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
